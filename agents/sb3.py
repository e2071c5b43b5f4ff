"""stable-baselines3 interop: an LM policy for SB3's own algorithms, and a KL-penalty wrapper.

``LMActorCriticPolicy`` lets SB3's ``PPO``, ``A2C`` (and sb3-contrib's ``TRPO``) train a Hugging Face
causal LM on a tokengym env::

    env = KLPenaltyWrapper(gym.make("tokengym/TextGeneration-v0", tokenizer=tok, reward="vader"),
                           reference=copy.deepcopy(lm), policy=lm, beta=0.05)
    model = PPO(LMActorCriticPolicy, env, policy_kwargs={"lm": lm}, gamma=1.0, n_steps=64, batch_size=32)
    model.learn(2048)

* observation = the env's Dict (``input_ids``, ``attention_mask``; SB3 hands them over as float
  tensors, cast back to int64 here); the action distribution is ``Categorical`` over the vocabulary
  from the LM's next-token logits at the last real position; the value is a linear head
  (zero-initialised, so a random critic adds no noise to the first updates) on the final hidden
  state there.
* SB3 re-encodes the whole sequence at every step (no KV cache: SB3 policies see observations, not
  episodes), so it costs ~(P+T)/2 times more LM compute per generated token than tokengym's agents;
  the columns that are padding in every row of a batch are cut off first.
* The LM stays in eval mode (dropout off: a random mask would make the ratio noise) even when SB3
  calls ``set_training_mode(True)``.
* The distribution covers the env's whole action space, pad included (SB3 computes rollout and
  training log-probs with the same forward, so they agree either way): a sampled pad simply ends
  the episode, as the env treats pad as a stop token. tokengym's own sampler masks pad instead.
* ``make_vec_env("tokengym/TextGeneration-v0", n_envs=..., env_kwargs=...)`` works as for any env
  (it asks for ``render_mode="rgb_array"``, which the env draws).

``KLPenaltyWrapper`` adds ``-beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))`` to each step's reward
(``-beta * KL`` on every token), so SB3 optimises the same KL-regularised objective as tokengym's
agents (use ``gamma=1``). The reference log-probs use a per-episode KV cache (exact: the reference
is frozen); the policy's come from the ``LMActorCriticPolicy`` (reusing the forward SB3 just made to
pick the action), an HF model, or a callable ``(obs, action) -> log-prob``.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from .kl import KLEstimator, kl_per_token
from .policy import hidden_size
from .rollout import position_ids_from_mask


def _prefix_carriers(ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """Rows whose real-token sequence starts with another row's share that row's forward.

    With positions that follow the mask (left padding does not shift them), the hidden state at a
    row's last real token depends only on its sequence of real tokens, so a row that is a prefix of
    another (an earlier step of the same episode, which SB3 minibatches are full of) can read it off
    the longer row's forward.
    Returns the carrier rows, and for every row its carrier's index in that list and the number of
    real tokens it reads.
    """
    seqs = [tuple(r[m.bool()].tolist()) for r, m in zip(ids.cpu(), mask.cpu())]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    prefix_of: dict[tuple, int] = {}
    carriers: list[int] = []
    which = [0] * len(seqs)
    for i in order:
        s = seqs[i]
        if s not in prefix_of:
            carriers.append(i)
            for n in range(1, len(s) + 1):
                prefix_of.setdefault(s[:n], len(carriers) - 1)
        which[i] = prefix_of[s]
    return carriers, which, [len(s) for s in seqs]


def last_token_forward(
    lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab: int, temperature: float = 1.0,
    share_prefixes: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits ``(B, vocab)`` (fp32, divided by ``temperature``) and the final hidden state
    ``(B, H)`` at each row's last real token, for tokengym's ``[left-padded prompt | right-padded
    response]`` rows. Logits = the LM's output embedding applied to its final (normed) hidden state,
    which is how Llama/SmolLM2/GPT-2/Qwen/Mistral compute them. ``share_prefixes``: rows that are
    prefixes of another row reuse its forward (see :func:`_prefix_carriers`); same values, and the
    same gradients, as one forward per row.
    """
    ids, mask = input_ids.long(), attention_mask.long()
    B = len(ids)
    if share_prefixes and B > 1:
        carriers, which, n_real = _prefix_carriers(ids, mask)
    else:
        carriers, which, n_real = list(range(B)), list(range(B)), mask.sum(1).tolist()
    ids, mask = ids[carriers], mask[carriers]
    real = mask.any(0).nonzero()
    if len(real):  # drop columns that are padding in every row (positions follow the mask: nothing changes)
        ids, mask = ids[:, int(real[0]) : int(real[-1]) + 1], mask[:, int(real[0]) : int(real[-1]) + 1]
    out = lm.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    # column of each row's last real token inside its carrier: the n-th real column of the carrier
    real_rank = mask.cumsum(1)  # (C, L): how many real tokens up to and including each column
    rows = torch.as_tensor(which, device=ids.device)
    n = torch.as_tensor(n_real, device=ids.device)
    col = ((real_rank[rows] == n[:, None]) & (mask[rows] == 1)).float().argmax(1)
    hidden = out.last_hidden_state[rows, col]
    logits = lm.get_output_embeddings()(hidden).float()[:, :vocab] / temperature
    return logits, hidden


class LMActorCriticPolicy(ActorCriticPolicy):
    """An SB3 actor-critic policy whose actor is a causal LM (``policy_kwargs={"lm": model}``).

    ``lm`` is used as is (not copied): pass the same object to :class:`KLPenaltyWrapper` as the
    policy, or read the trained model from ``policy.lm``. ``temperature`` divides the logits.
    ``attn_implementation="eager"`` switches the LM's attention to one with a double backward, which
    sb3-contrib's ``TRPO`` needs (its Hessian-vector products; PyTorch's CPU flash attention has none).
    """

    def __init__(
        self, observation_space, action_space, lr_schedule, lm: nn.Module | None = None, temperature: float = 1.0,
        attn_implementation: str | None = None, **kwargs: Any,
    ) -> None:
        if lm is None:
            raise ValueError("LMActorCriticPolicy needs policy_kwargs={'lm': <a Hugging Face causal LM>}")
        if not isinstance(observation_space, gym.spaces.Dict) or "input_ids" not in observation_space.spaces:
            raise ValueError(f"LMActorCriticPolicy needs a tokengym Dict observation space, got {observation_space}")
        kwargs["ortho_init"] = False
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        self.vocab_size = int(action_space.n)
        if lm.get_input_embeddings().num_embeddings < self.vocab_size:
            raise ValueError(f"mismatched tokenizers: the LM has {lm.get_input_embeddings().num_embeddings} embeddings, the env {self.vocab_size} actions")
        if attn_implementation is not None:
            lm.set_attn_implementation(attn_implementation)
        self.lm = lm.eval()
        self.temperature = float(temperature)
        self.value_net = nn.Linear(hidden_size(lm), 1)  # "value" in the name: TRPO leaves it to the optimiser
        nn.init.zeros_(self.value_net.weight)
        nn.init.zeros_(self.value_net.bias)
        self.action_dist = CategoricalDistribution(self.vocab_size)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)
        self._cache: dict[bytes, torch.Tensor] = {}  # the last rollout forward's log-probs, for KLPenaltyWrapper

    def _build(self, lr_schedule) -> None:
        """Nothing to build before the LM is attached (done in ``__init__``)."""

    def set_training_mode(self, mode: bool) -> None:
        super().set_training_mode(mode)
        self.lm.eval()  # dropout stays off: a random mask would make the ratio noise
        self._cache.clear()  # parameters are about to change

    def _forward(self, obs: dict[str, torch.Tensor]) -> tuple[CategoricalDistribution, torch.Tensor]:
        logits, hidden = last_token_forward(self.lm, obs["input_ids"], obs["attention_mask"], self.vocab_size, self.temperature)
        if not self.training and not torch.is_grad_enabled():  # a rollout/predict forward: remember it
            self._cache = dict(zip(self._keys(obs["input_ids"], obs["attention_mask"]), torch.log_softmax(logits, -1).cpu()))
        return self.action_dist.proba_distribution(action_logits=logits), self.value_net(hidden.float())

    def forward(self, obs, deterministic: bool = False):
        dist, values = self._forward(obs)
        actions = dist.get_actions(deterministic=deterministic)
        return actions, values, dist.log_prob(actions)

    def evaluate_actions(self, obs, actions: torch.Tensor):
        dist, values = self._forward(obs)
        return values, dist.log_prob(actions.long().flatten()), dist.entropy()

    def get_distribution(self, obs) -> CategoricalDistribution:
        return self._forward(obs)[0]

    def predict_values(self, obs) -> torch.Tensor:
        return self._forward(obs)[1]

    @staticmethod
    def _keys(input_ids: Any, attention_mask: Any) -> list[bytes]:
        ids = np.asarray(torch.as_tensor(input_ids).long().cpu(), dtype=np.int64).reshape(-1, np.shape(input_ids)[-1])
        mask = np.asarray(torch.as_tensor(attention_mask).long().cpu(), dtype=np.int64).reshape(ids.shape)
        return [i.tobytes() + m.tobytes() for i, m in zip(ids, mask)]

    def action_logprob(self, obs: dict[str, np.ndarray], action: int) -> float:
        """log pi(action | obs) for one observation: the value of SB3's last rollout forward when it
        saw this observation (no second forward), else a fresh forward."""
        cached = self._cache.get(self._keys(obs["input_ids"], obs["attention_mask"])[0])
        if cached is not None:
            return float(cached[int(action)])
        with torch.no_grad():
            t = {k: torch.as_tensor(np.asarray(v, dtype=np.int64), device=self.device)[None] for k, v in obs.items()}
            logits, _ = last_token_forward(self.lm, t["input_ids"], t["attention_mask"], self.vocab_size, self.temperature)
        return float(torch.log_softmax(logits, -1)[0, int(action)])


LogProbFn = Callable[[dict[str, np.ndarray], int], float]


class _LMLogProb:
    """log pi(a | s) of an HF causal LM for one episode's observations, with a KV cache over the episode.

    Exact only for a model that does not change during the episode (the frozen reference); for a
    policy being trained use ``cache=False``.
    """

    def __init__(self, lm: nn.Module, vocab: int, temperature: float, cache: bool) -> None:
        self.lm, self.vocab, self.temperature, self.use_cache = lm, vocab, temperature, cache
        self.reset()

    def reset(self) -> None:
        self.past, self.fed, self.logits, self.mask = None, None, None, None

    @torch.no_grad()
    def __call__(self, obs: dict[str, np.ndarray], action: int) -> float:
        device = next(self.lm.parameters()).device
        ids = torch.as_tensor(np.asarray(obs["input_ids"], dtype=np.int64), device=device)[None]
        mask = torch.as_tensor(np.asarray(obs["attention_mask"], dtype=np.int64), device=device)[None]
        n_real = int(mask.sum())
        if self.use_cache and self.past is not None and self.fed is not None and n_real == self.fed + 1:
            # One new real token since the last call: feed only it (the prefix is unchanged in the env).
            col = int(mask[0].nonzero()[-1])
            self.mask = torch.cat([self.mask, torch.ones(1, 1, dtype=torch.long, device=device)], 1)
            out = self.lm(input_ids=ids[:, col : col + 1], attention_mask=self.mask, position_ids=torch.tensor([[n_real - 1]], device=device),
                          cache=self.past, use_cache=True)
            logits = out.logits[:, -1]
        elif self.use_cache:
            cols = mask[0].nonzero()[:, 0]
            ids, mask = ids[:, cols], mask[:, cols]  # real tokens only: [prompt | response so far]
            out = self.lm(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True, logits_to_keep=1)
            logits, self.mask = out.logits[:, -1], mask
        else:
            logits, _ = last_token_forward(self.lm, ids, mask, self.vocab, 1.0)
            out = None
        self.past = out.cache if out is not None and self.use_cache else None
        self.fed = n_real
        logits = logits.float()[:, : self.vocab] / self.temperature
        return float(torch.log_softmax(logits, -1)[0, int(action)])


class KLPenaltyWrapper(gym.Wrapper):
    """Per-step KL penalty: ``reward_t -= beta * KL_t`` with ``KL_t`` an estimate of
    ``log pi(a_t|s_t) - log pi_ref(a_t|s_t)`` from the taken token (the per-token penalty of RLHF,
    k1 by default; ``estimator="k3"`` for the non-negative one).

    ``reference``: a frozen HF causal LM (e.g. a deep copy of the initial policy) or a callable
    ``(obs, action) -> log-prob``. ``policy``: the :class:`LMActorCriticPolicy` (or its SB3 model), the
    HF LM it wraps, or a callable; it may be set later (``wrapper.policy = model.policy``), before the
    first step. ``info`` of every step holds ``kl`` and ``kl_penalty``; the last step of an episode
    adds ``episode_kl`` (summed) and ``score`` (the env's reward before the penalty).

    ``length_end_terminates=True`` (default) reports the end at ``max_new_tokens`` as ``terminated``
    (with ``info["truncated_by_length"]``): SB3 bootstraps ``gamma * V(s_end)`` into the reward of a
    *truncated* step (it reads truncation as a time limit), but the response length limit really ends
    the episode (nothing after the last token bootstraps), as in tokengym's agents.
    """

    def __init__(
        self, env: gym.Env, reference: nn.Module | LogProbFn, policy: Any = None, beta: float = 0.05,
        estimator: KLEstimator = "k1", temperature: float = 1.0, length_end_terminates: bool = True,
    ) -> None:
        super().__init__(env)
        self.vocab_size = int(env.action_space.n)
        self.beta, self.estimator, self.temperature = float(beta), estimator, float(temperature)
        self.length_end_terminates = length_end_terminates
        kl_per_token(torch.zeros(1), torch.zeros(1), estimator)  # validates the estimator name
        self._ref = reference if not isinstance(reference, nn.Module) else _LMLogProb(reference.eval(), self.vocab_size, self.temperature, cache=True)
        self.policy = policy
        self._obs: dict[str, np.ndarray] | None = None
        self.episode_kl = 0.0

    @property
    def policy(self) -> Any:
        return self._policy_spec

    @policy.setter
    def policy(self, policy: Any) -> None:
        self._policy_spec = policy
        policy = getattr(policy, "policy", policy)  # an SB3 model -> its policy
        if isinstance(policy, LMActorCriticPolicy):
            self._pi: LogProbFn | None = policy.action_logprob
        elif isinstance(policy, nn.Module):
            self._pi = _LMLogProb(policy, self.vocab_size, self.temperature, cache=False)
        else:
            self._pi = policy

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._obs, self.episode_kl = obs, 0.0
        if isinstance(self._ref, _LMLogProb):
            self._ref.reset()
        return obs, info

    def step(self, action: Any):
        if self._pi is None:
            raise RuntimeError("KLPenaltyWrapper has no policy: pass policy=... or set wrapper.policy before stepping")
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        a = int(np.asarray(action).reshape(()))
        logp, ref_logp = self._pi(self._obs, a), self._ref(self._obs, a)
        kl = float(kl_per_token(torch.tensor([logp]), torch.tensor([ref_logp]), self.estimator)[0])
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._obs = obs
        self.episode_kl += kl
        info = {**info, "kl": kl, "kl_penalty": self.beta * kl}
        if terminated or truncated:
            info["episode_kl"] = self.episode_kl
            info.setdefault("score", float(reward))
        if truncated and self.length_end_terminates:
            terminated, truncated = True, False
            info["truncated_by_length"] = True
        return obs, float(reward) - self.beta * kl, terminated, truncated, info


__all__ = ["KLPenaltyWrapper", "LMActorCriticPolicy", "last_token_forward"]
