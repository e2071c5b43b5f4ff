"""KV-cached rollouts through :class:`~tokengym.envs.BatchedTextEnv`.

The sampler owns the model's KV cache: the prompt batch is encoded once, then each env step feeds
only the N newly sampled tokens. This is O(T) forwards of one column instead of the O(T^2) prefix
re-feeding of env loops in RL4LMs/TextRL, and matches ``model.generate`` token for token.
"""

from __future__ import annotations

import copy

from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ContextManager

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from tokengym.envs import BatchedTextEnv

from .precision import precast_linear_weights, run_on


@dataclass
class RolloutBatch:
    """One batch of finished episodes (B = num_envs, P = max_prompt_tokens, T = max_new_tokens).

    ``response_mask`` is 1 on every real response token *including* the stop token (it is an action
    and stays in the loss, so the policy learns when to stop), 0 on the right padding.
    """

    prompt_ids: torch.Tensor  # (B, P) int64, left-padded
    prompt_mask: torch.Tensor  # (B, P) int64
    response_ids: torch.Tensor  # (B, T) int64, right-padded with pad id
    response_mask: torch.Tensor  # (B, T) float32
    sample_logprobs: torch.Tensor  # (B, T) float32, log pi(a_t) under the sampling temperature
    scores: torch.Tensor  # (B,) float32 terminal reward from the env
    stopped: torch.Tensor  # (B,) bool: ended by a stop token (env.stop_token_ids)
    gold_scores: torch.Tensor | None = None  # (B,) float32 evaluation-only judge
    values: torch.Tensor | None = None  # (B, T) float32 V(s_t) from the sampler's value head, 0 on padding
    entropy: torch.Tensor | None = None  # (B, T) float32 entropy of the sampling distribution, 0 on padding
    prompt_texts: list[str] = field(default_factory=list)
    response_texts: list[str] = field(default_factory=list)
    prompt_ids_str: list[Any] = field(default_factory=list)

    @property
    def input_ids(self) -> torch.Tensor:
        """(B, P+T) prompt and response side by side."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P+T) 1 on real prompt and response tokens."""
        return torch.cat([self.prompt_mask, self.response_mask.long()], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1).long()

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def to(self, device: torch.device | str) -> RolloutBatch:
        """The batch with every tensor on ``device`` (itself when they all are already there).

        Attributes set after construction (``augmented``, ``real`` of the augmenter's batches) are
        carried over and moved too.
        """
        device = torch.device(device)
        tensors = [v for v in vars(self).values() if isinstance(v, torch.Tensor)]
        if all(t.device == device for t in tensors):
            return self
        move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        names = {f.name for f in fields(self)}
        out = RolloutBatch(**{n: move(getattr(self, n)) for n in names})
        for key, value in vars(self).items():
            if key not in names:
                setattr(out, key, move(value))
        return out


def autocast_context(device: torch.device | str, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing when ``dtype`` is None (fp32).

    Only model forwards run inside it: their matmuls go to bf16 while the weights stay fp32. Callers
    cast the logits to fp32 before any log-softmax, so log-probs and everything computed from them
    (ratios, advantages, KL) stay in fp32.
    """
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def entropy_from_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """``-sum p log p`` over the last dimension. Tokens a model masks with a -inf logit have p = 0 and
    add 0 (the plain product would be 0 * -inf = NaN, in the value and in its gradient)."""
    return -(logp.exp() * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)


def mask_pad_logits(logits: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``logits`` with the pad column at -inf: pad is padding, never an action the policy may take.

    Its probability is then exactly 0 (``log_softmax`` renormalises over the other tokens), which is
    what ``generate(suppress_tokens=[pad])`` does. A training forward that scores these samples must
    apply the same mask, or its log-probs differ from the sampler's by ``log(1 - p(pad))``.
    """
    return logits.index_fill(-1, torch.tensor([pad_id], device=logits.device), float("-inf"))


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens: left padding does not shift them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class CachedSampler:
    """Samples tokens for a :class:`BatchedTextEnv` with one forward per step and a KV cache.

    Sampling uses the raw policy distribution divided by ``temperature`` (no top-k/top-p: the PPO
    log-probs must describe the distribution actually sampled, or the sampled KL estimate turns
    negative and gets exploited), with the pad token masked out (:func:`mask_pad_logits`).
    ``greedy=True`` takes the argmax (evaluation, or comparing with
    ``generate(eos_token_id=env.stop_token_ids, suppress_tokens=[pad])``).

    ``env`` is a :class:`BatchedTextEnv`, possibly wrapped, made with or without autoreset: the
    sampler steps ``env.unwrapped`` with autoreset disabled for the rollout, since an autoreset would
    start a new episode in a row behind its KV cache.

    With a ``value_head`` (``(B, H) -> (B,)`` on the last hidden state) the sampler also records
    V(s_t) at every step. Together with ``sample_logprobs`` (fp32 log-softmax, eval mode, the same
    temperature: the training forward run incrementally) that is everything PPO's "old" forward
    would compute, so the agent can skip that forward (one forward of the batch saved per
    iteration), as SB3 does.

    Devices: the model's forwards and the per-step records (log-probs, values, entropies) are on the
    model's device. The env, and the reward model inside it, run on the CPU: each step's actions go
    to it as numpy, and its token ids, scores and flags come back as numpy. The returned batch is on
    the CPU, next to the env's side of it and where callers turn it into numpy (the records are
    copied there once, at the end); the agents move it to their device (:meth:`RolloutBatch.to`).
    The token draw is on the CPU too, with the CPU ``generator``, so that a seed gives the same
    samples on every device.

    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forwards under ``torch.autocast``; the
    log-softmax stays fp32. KV-cached bf16 steps can differ from a full-sequence forward by ~1e-2 in
    log-prob, so an agent that samples under autocast recomputes the old log-probs with its training
    forward rather than reusing ``sample_logprobs``.
    """

    def __init__(
        self, model: PreTrainedModel, temperature: float = 1.0, greedy: bool = False, value_head: nn.Module | None = None,
        autocast_dtype: torch.dtype | None = None,
        frozen_weights: Callable[[nn.Module, torch.dtype], dict[str, torch.Tensor] | None] | None = None,
        prefill_memo: dict[bytes, Any] | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if prefill_memo is not None and value_head is not None:
            raise ValueError("prefill_memo is for sampling a frozen model; a value head means training")
        self.model, self.temperature, self.greedy, self.value_head = model, temperature, greedy, value_head
        #: ``prompt bytes -> (first-step logits, KV cache)`` shared by samplers of one *frozen* model: a
        #: batch of prompts sampled again (at another temperature, say) skips its prefill forward, which
        #: is as costly as the whole decode when the prompts are as long as the responses. The stored
        #: result is exactly what the forward would return, so the samples are unchanged.
        self.prefill_memo = prefill_memo
        self.autocast_dtype = autocast_dtype
        #: ``(model, dtype) -> casts of its frozen weights`` kept for the run (``ActorCritic.frozen_weights``):
        #: with it a rollout casts only the weights that train; without it, every Linear weight.
        self.frozen_weights = frozen_weights

    @torch.inference_mode()
    def rollout(
        self, env: BatchedTextEnv, seed: int | None = None, generator: torch.Generator | None = None,
        options: dict[str, Any] | None = None,
    ) -> RolloutBatch:
        """Reset ``env`` (seeded) and play every episode of the batch to its end."""
        base = getattr(env, "unwrapped", env)
        if not isinstance(base, BatchedTextEnv):
            raise TypeError(
                f"CachedSampler needs a tokengym BatchedTextEnv (gym.make_vec's default or vector_entry_point mode), "
                f"got {type(base).__name__}"
            )
        with base.autoreset_disabled():
            return self._rollout(base, seed, generator, options)

    def _rollout(
        self, env: BatchedTextEnv, seed: int | None, generator: torch.Generator | None, options: dict[str, Any] | None
    ) -> RolloutBatch:
        obs, _ = env.reset(seed=seed, options=options)
        P, T, B = env.max_prompt_tokens, env.max_new_tokens, env.num_envs
        device = next(self.model.parameters()).device
        if generator is None and seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
        ids = torch.as_tensor(obs["input_ids"][:, :P], device=device)
        mask = torch.as_tensor(obs["attention_mask"][:, :P], device=device)
        pos = position_ids_from_mask(mask)
        want_values = self.value_head is not None
        if self.autocast_dtype is None:
            model = self.model
        else:  # the forwards run on low-precision copies of the Linear weights, cast once (see precast_linear_weights)
            frozen = self.frozen_weights(self.model, self.autocast_dtype) if self.frozen_weights else None
            if frozen is None:
                casted = precast_linear_weights(self.model, self.autocast_dtype)
            else:  # the frozen ones are already cast for the run; the trainable ones changed since the last rollout
                casted = {**frozen, **precast_linear_weights(self.model, self.autocast_dtype,
                                                             include=lambda p: p.requires_grad)}

            def model(**kwargs: Any) -> Any:
                return run_on(self.model, casted, **kwargs)
        key = None
        if self.prefill_memo is not None:
            key = b"|".join([str(self.autocast_dtype).encode(), ids.cpu().numpy().tobytes(), mask.cpu().numpy().tobytes()])
        if key is not None and key in self.prefill_memo:
            # The decode steps below grow the cache in place: each rollout gets its own copy.
            out = copy.deepcopy(self.prefill_memo[key])
        else:
            with autocast_context(device, self.autocast_dtype):
                out = model(
                    input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                    output_hidden_states=want_values,
                )
            if key is not None:
                self.prefill_memo[key] = copy.deepcopy(out)
        vocab = env.vocab_size
        # The per-step records stay on the model's device during the rollout, copied to the CPU once at its end.
        logprobs = torch.zeros(B, T, dtype=torch.float32, device=device)
        values = torch.zeros(B, T, dtype=torch.float32, device=device) if want_values else None
        entropy = torch.zeros(B, T, dtype=torch.float32, device=device)
        # What the env reports (numpy) is collected on the CPU.
        scores = torch.zeros(B, dtype=torch.float32)
        gold = torch.zeros(B, dtype=torch.float32)
        stopped = torch.zeros(B, dtype=torch.bool)
        has_gold = env.gold_reward is not None
        pad = env.pad_token_id
        next_pos = pos[:, -1:] + 1
        for t in range(T):
            # fp32 log-softmax over the tokenizer's vocabulary (padded embedding rows are not actions).
            logits = out.logits[:, -1, :vocab].float()
            if self.temperature != 1.0:
                logits = logits / self.temperature
            if torch.isnan(logits).any() or torch.isposinf(logits).any():
                # Name the culprit instead of torch.multinomial's "probability tensor contains inf/nan".
                raise FloatingPointError(f"the policy produced non-finite logits at rollout step {t}: its weights went bad")
            logp = torch.log_softmax(mask_pad_logits(logits, pad), dim=-1)
            if self.greedy:
                action = logp.argmax(-1)
            else:  # drawn on the CPU with the CPU generator: the same seed samples alike on every device
                action = torch.multinomial(logp.exp().cpu(), 1, generator=generator).squeeze(1).to(device)
            active = torch.as_tensor(env.active).to(device)  # (B,) bool: rows whose episode still runs
            action = torch.where(active, action, torch.full_like(action, pad))
            logprobs[:, t] = torch.where(active, logp.gather(1, action[:, None]).squeeze(1), 0.0)
            # Logged as the policy's entropy: (B, V) here is ~1 % of the step, while the same in the
            # training forward costs a (b, T, V) pass and its memory traffic in every epoch.
            entropy[:, t] = torch.where(active, entropy_from_logprobs(logp), 0.0)
            if want_values:  # the state s_t is the prefix that predicts a_t: the last fed position
                v = self.value_head(out.hidden_states[-1][:, -1]).float()
                values[:, t] = torch.where(active, v, 0.0)
            final, reward, terminated, truncated, info = env.step(action.cpu().numpy())  # the env steps on the CPU
            ended = terminated | truncated
            if ended.any():
                rows = torch.as_tensor(np.flatnonzero(ended))
                scores[rows] = torch.as_tensor(reward[ended], dtype=torch.float32)
                stopped[rows] = torch.as_tensor(terminated[ended])
                if has_gold:
                    gold[rows] = torch.as_tensor(info["gold_score"][ended], dtype=torch.float32)
            if env.all_done:
                break
            # Feed only the new column; finished rows keep feeding pad (their outputs are ignored).
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)
            with autocast_context(device, self.autocast_dtype):
                out = model(
                    input_ids=action[:, None], attention_mask=mask, position_ids=next_pos,
                    cache=out.cache, use_cache=True, output_hidden_states=want_values,
                )
            next_pos = next_pos + 1
        response_ids = torch.as_tensor(final["input_ids"][:, P:])
        response_mask = torch.as_tensor(final["attention_mask"][:, P:], dtype=torch.float32)
        items = env.prompt_items()
        return RolloutBatch(
            prompt_ids=torch.as_tensor(obs["input_ids"][:, :P]), prompt_mask=torch.as_tensor(obs["attention_mask"][:, :P]),
            response_ids=response_ids, response_mask=response_mask, sample_logprobs=logprobs.cpu(),
            scores=scores, stopped=stopped, gold_scores=gold if has_gold else None,
            values=None if values is None else values.cpu(), entropy=entropy.cpu(),
            prompt_texts=[it["prompt"] for it in items], response_texts=env.response_texts(),
            prompt_ids_str=[it["id"] for it in items],
        )
