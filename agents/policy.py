"""The LM policy with a value head, and the frozen reference model.

The value head is a linear layer on the policy's last hidden state, **zero-initialised** (the
usual choice when the critic does not start from the reward model): at the start V = 0 everywhere,
so the first advantages are the whitened returns and a random critic cannot inject noise into the
first policy updates. Sharing the trunk halves the forward cost (one forward gives log-probs and
values together); the price is that value gradients reach the LM, kept small by ``vf_coef``.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from contextlib import nullcontext
from typing import ContextManager, Iterable

import torch
from torch import nn
from transformers import PreTrainedModel

from .precision import precast_linear_weights, run_on
from .rollout import autocast_context, entropy_from_logprobs, mask_pad_logits, position_ids_from_mask


def hidden_size(model: PreTrainedModel) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))


def tensors_fingerprint(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A hash of names, dtypes, shapes and exact bytes of ``named`` tensors (order-independent).

    Identical weights give the same string in any process on any machine; one changed bit changes it.
    """
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(named, key=lambda kv: kv[0]):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class ValueHead(nn.Module):
    """Scalar value per position: (B, T, H) -> (B, T)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (...), fp32 even when called under autocast (the values feed GAE and the
        value loss; an H -> 1 product costs nothing next to the LM)."""
        with torch.autocast(hidden_states.device.type, enabled=False):
            return self.linear(hidden_states.float()).squeeze(-1)


def response_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    temperature: float,
    want_hidden: bool = False,
    autocast_dtype: torch.dtype | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits that predict each response token, and optionally the hidden states there.

    input_ids, attention_mask: (B, P+T). Position ids follow the mask (left padding does not shift
    them). Logits are computed only at the T positions that predict response tokens (P-1 .. P+T-2),
    never over the prompt: that is most of the LM-head cost saved. Returns logits (B, T, V) in fp32
    even for a bf16/fp16 model, divided by the sampling temperature (the same as when sampling, so
    the first ratio is 1), and hidden (B, T, H) or None.

    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the model's forward, and only it, under
    ``torch.autocast``; the cast to fp32 and the temperature come after it. ``weights`` (from
    :meth:`ActorCritic.frozen_weights`) replaces those parameters for this forward: pre-cast copies
    of frozen weights, which autocast would otherwise cast again in every forward.
    """
    T = input_ids.shape[1] - prompt_len
    keep = torch.arange(prompt_len - 1, prompt_len + T - 1, device=input_ids.device)
    with autocast_context(input_ids.device, autocast_dtype):
        out = run_on(
            model, weights or {},
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
            logits_to_keep=keep, output_hidden_states=want_hidden, use_cache=False,
        )
    logits = out.logits.float()
    if temperature != 1.0:  # skip a pass over (B, T, V) floats, and its backward, in the common case
        logits = logits / temperature
    hidden = out.hidden_states[-1][:, prompt_len - 1 : prompt_len + T - 1] if want_hidden else None
    return logits, hidden


def next_token_logprobs(logits: torch.Tensor, vocab: int, pad_id: int | None = None) -> torch.Tensor:
    """fp32 log-probs of the whole next-token distribution, (B, T, V) from ``logits`` (B, T, >= V):
    the model's extra padding columns cut off and the pad token at -inf (see :func:`token_logprobs`)."""
    logits = logits[..., :vocab].float()
    if pad_id is not None:
        logits = mask_pad_logits(logits, pad_id)
    return torch.log_softmax(logits, dim=-1)


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, vocab: int, entropy: bool | None = True, pad_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 log-prob of ``tokens`` (B, T) under ``logits`` (B, T, V), and the entropy (B, T).

    ``entropy=None`` skips the entropy; ``entropy=False`` computes it for logging only, outside the
    autograd graph: a full-vocabulary entropy roughly doubles the cost of the log-prob step, and its
    backward is wasted when the entropy bonus is 0.

    ``pad_id`` removes the pad token from the distribution, as the sampler does (pad is never an
    action): without it these log-probs would differ from the sampled ones by ``log(1 - p(pad))``.
    The log-prob of a pad *position* is then -inf; callers mask those positions with ``where_mask``.

    Logits of a bf16 forward are cast to fp32 first: differences of these log-probs (ratios, KL) are
    where bf16's three significant digits would show up.
    """
    logp_all = next_token_logprobs(logits, vocab, pad_id)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if entropy is None:
        return logp, None
    with torch.set_grad_enabled(entropy and torch.is_grad_enabled()):
        ent = entropy_from_logprobs(logp_all)
    return logp, ent


class ActorCritic(nn.Module):
    """Causal LM policy + zero-initialised value head, and access to the frozen reference.

    With ``lora`` (a ``peft.LoraConfig``) the base weights are frozen and the reference is the
    same model with its adapters disabled: one set of weights in memory, and backward skips the
    weight gradients of the base. Without it the reference is a frozen deep copy.
    """

    def __init__(
        self, model: PreTrainedModel, vocab_size: int, lora: object | None = None, pad_token_id: int | None = None
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id  # excluded from the action distribution, as in the sampler
        if lora is not None:
            from peft import get_peft_model

            with warnings.catch_warnings():
                # peft reads ``model.is_gradient_checkpointing``, which transformers >= 4.5x deprecates
                # with a FutureWarning on every LoRA run; the attribute's value is still right.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                self.policy = get_peft_model(model, lora)
            self.reference: nn.Module | None = None
        else:
            self.policy = model
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.value_head = ValueHead(hidden_size(model))
        self._reference_fingerprint: str | None = None
        self._frozen_casts: dict[tuple, dict[str, torch.Tensor]] = {}
        self.policy.eval()  # dropout off for policy, reference and value: a random mask makes the ratio noise

    @property
    def uses_lora(self) -> bool:
        return self.reference is None

    def reference_context(self) -> ContextManager:
        return self.policy.disable_adapter() if self.uses_lora else nullcontext()

    def frozen_weights(self, model: nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor] | None:
        """``dtype`` copies of ``model``'s frozen Linear weights (LoRA's base, or the frozen reference
        copy), made once and kept: frozen weights never change, and autocast would cast them again in
        every forward (it caches only the casts of weights that take gradients). None in fp32."""
        if dtype is None:
            return None
        key = (id(model), dtype, next(model.parameters()).device)
        if key not in self._frozen_casts:
            # Normal tensors even when first asked for under inference mode: the training forward uses them.
            with torch.inference_mode(False), torch.no_grad():
                self._frozen_casts[key] = precast_linear_weights(model, dtype, include=lambda p: not p.requires_grad)
        return self._frozen_casts[key]

    def evaluate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, temperature: float,
        with_entropy: bool | None = True, autocast_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Policy log-probs, entropies (see :func:`token_logprobs`) and values of the response tokens, (B, T)
        fp32; ``autocast_dtype`` runs the forward under autocast (see :func:`response_forward`)."""
        logits, hidden = response_forward(self.policy, input_ids, attention_mask, prompt_len, temperature, True,
                                          autocast_dtype=autocast_dtype,
                                          weights=self.frozen_weights(self.policy, autocast_dtype))
        logp, entropy = token_logprobs(logits, input_ids[:, prompt_len:], self.vocab_size, entropy=with_entropy, pad_id=self.pad_token_id)
        return logp, entropy, self.value_head(hidden)

    @torch.inference_mode()
    def reference_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, temperature: float,
        autocast_dtype: torch.dtype | None = None, full: bool = False,
    ) -> torch.Tensor:
        """Log-probs of the response tokens under the frozen reference, (B, T) fp32. The agent passes its
        ``autocast_dtype``; without it (the evaluation's default) the forward is plain fp32. ``full``
        returns the reference's whole next-token distributions instead, (B, T, V): the evaluation
        computes the expected perplexity and KL from them (:func:`tokengym.agents.evaluation.evaluate_policy`)."""
        model = self.policy if self.uses_lora else self.reference
        with self.reference_context():
            logits, _ = response_forward(model, input_ids, attention_mask, prompt_len, temperature,
                                         autocast_dtype=autocast_dtype, weights=self.frozen_weights(model, autocast_dtype))
        if full:
            return next_token_logprobs(logits, self.vocab_size, self.pad_token_id)
        return token_logprobs(logits, input_ids[:, prompt_len:], self.vocab_size, entropy=None, pad_id=self.pad_token_id)[0]

    def reference_fingerprint(self) -> str:
        """Fingerprint of the frozen reference's weights (LoRA: the base weights the adapters sit on).

        Computed once: the reference never changes during a run. A checkpoint stores it so that a
        resume can refuse a reference that is not the model the run started from.
        """
        if getattr(self, "_reference_fingerprint", None) is None:
            if self.uses_lora:
                named = [(k, v) for k, v in self.policy.state_dict().items() if "lora_" not in k]
            else:
                named = list(self.reference.state_dict().items())
            self._reference_fingerprint = tensors_fingerprint(named)
        return self._reference_fingerprint

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
