"""Critic-free group agents: RLOO and GRPO.

Each rollout samples ``k = group_size`` responses to each of ``batch_size / k`` prompts: the env is
reset with ``options={"prompt_indices": ...}`` holding every drawn prompt index k times, consecutive
(rows ``g*k .. g*k+k-1`` are group ``g``). A prompt schedule (``agent.prompt_sampler``, e.g. a
curriculum) chooses the distinct prompts. The baseline comes from the group, so there is no value head
in the loss (``vf_coef = 0``). Everything else (rollout, KL controller, metrics, checkpoints) is
:class:`~tokengym.agents.base.OnPolicyAgent`'s.

* **RLOO** (Ahmadian et al., 2024): sequence reward ``R_i = score_i - beta * sum_t KL_it`` (the KL
  penalty stays in the per-token reward, as in PPO); advantage ``R_i - mean_{j != i} R_j`` on every
  token of response i; loss ``-A * ratio`` (REINFORCE; PPO clipping with ``clip=True``).
* **GRPO** (Shao et al., 2024): advantage ``(R_i - mean_g R) / (std_g R + eps)`` (``scale_rewards=False``
  drops the std, as Dr. GRPO); PPO's clipped surrogate; the KL is a loss term
  ``beta * k3(pi, pi_ref)`` per token (``kl_in_loss=True``, DeepSeekMath) or stays in the reward.

The loss is a token mean over the minibatch (as DAPO), not the per-sequence mean of the GRPO paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .advantages import masked_whiten
from .base import Experience, OnPolicyAgent
from .config import OnPolicyConfig, check_number, whole_batch_defaults
from .kl import kl_per_token
from .pg import pg_terms


@dataclass
class GroupConfig(OnPolicyConfig):
    """What RLOO and GRPO share: k samples per prompt, one step per rollout, no critic."""

    group_size: int = 4  # k samples per prompt
    minibatch_size: int = 0  # 0 = the whole batch (one gradient step per rollout)
    ppo_epochs: int = 1
    vf_coef: float = 0.0  # no critic
    whiten_advantages: bool = False
    clip_range: float = 0.2  # PPO's ratio clip (GRPO always; RLOO with clip=True)

    def validate(self) -> None:
        whole_batch_defaults(self)
        super().validate()
        check_number(self, "clip_range", low=0, low_open=True)
        if self.group_size < 2 or self.batch_size % self.group_size:
            raise ValueError(f"group_size ({self.group_size}) must be >= 2 and divide batch_size ({self.batch_size})")


@dataclass
class RLOOConfig(GroupConfig):
    clip: bool = False  # True: PPO's clipped surrogate (matters only with several steps per rollout)


@dataclass
class GRPOConfig(GroupConfig):
    kl_in_loss: bool = True  # beta * KL as a loss term (DeepSeekMath); False: in the reward, like RLOO
    kl_loss_estimator: Literal["k1", "k3"] = "k3"
    scale_rewards: bool = True  # divide by the group std (False = Dr. GRPO)
    std_eps: float = 1e-4


class GroupAgent(OnPolicyAgent):
    """Shared by RLOO and GRPO: k samples per prompt and per-group statistics.

    Shapes: B episodes in B/k groups of k, T response columns.
    """

    config: GroupConfig

    def _rollout_options(self) -> dict[str, Any]:
        k = self.config.group_size
        n = self.env.num_envs // k
        indices = self._prompt_indices(n)
        if indices is None:  # uniform, keyed by (seed, rank, iteration) like _prompt_indices
            rng = np.random.default_rng([self.config.seed, self.rank, self.iteration, 1])
            indices = rng.integers(len(self.env.prompts), size=n)
        return {"prompt_indices": np.repeat(indices, k)}

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B/k, k)."""
        return x.view(-1, self.config.group_size)

    def _sequence_rewards(self, exp: Experience) -> torch.Tensor:
        """(B,) score - beta * summed KL per response: the per-token rewards summed."""
        return exp.rewards.sum(1)

    def _group_advantages(self, r: torch.Tensor) -> torch.Tensor:
        """(B/k, k) sequence rewards -> (B/k, k) advantages."""
        raise NotImplementedError

    def _targets(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T) per-token KL-penalised rewards, the group advantage and the sequence reward on every token."""
        batch = exp.batch
        ids = batch.prompt_ids_str
        k = self.config.group_size
        if ids and any(len(set(ids[g : g + k])) != 1 for g in range(0, len(ids), k)):
            raise RuntimeError("a group of k consecutive episodes does not share one prompt")
        exp.rewards = self._penalised_rewards(exp)
        r = self._sequence_rewards(exp)
        adv = self._group_advantages(self._grouped(r)).reshape(-1)
        mask = batch.response_mask
        advantages = adv[:, None] * mask
        if self.config.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return exp.rewards, advantages, r[:, None] * mask


class RLOOAgent(GroupAgent):
    """REINFORCE Leave-One-Out: the baseline of a response is the mean reward of the other k-1."""

    config: RLOOConfig

    def __init__(self, env: Any, model: Any = None, config: RLOOConfig | None = None, run_dir: str | None = None) -> None:
        super().__init__(env, model, config, run_dir)
        self.loss_stats = ("clipfrac",) if self.config.clip else ()

    @classmethod
    def default_config(cls) -> RLOOConfig:
        return RLOOConfig()

    def _group_advantages(self, r: torch.Tensor) -> torch.Tensor:
        k = r.shape[1]
        return r - (r.sum(1, keepdim=True) - r) / (k - 1)

    def _loss(self, exp: Experience, idx: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return pg_terms(self, exp, idx, n_tokens, self.config.clip_range if self.config.clip else None)


class GRPOAgent(GroupAgent):
    """Group Relative Policy Optimisation: group-normalised advantages, clipped surrogate, KL loss."""

    config: GRPOConfig
    loss_stats = ("clipfrac",)

    @classmethod
    def default_config(cls) -> GRPOConfig:
        return GRPOConfig()

    def _sequence_rewards(self, exp: Experience) -> torch.Tensor:
        # With the KL as a loss term the advantage sees the task score only (no double penalty).
        return exp.scores.clone() if self.config.kl_in_loss else exp.rewards.sum(1)

    def _group_advantages(self, r: torch.Tensor) -> torch.Tensor:
        centred = r - r.mean(1, keepdim=True)
        if not self.config.scale_rewards:
            return centred
        return centred / (r.std(1, keepdim=True) + self.config.std_eps)

    def _loss(self, exp: Experience, idx: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        loss, out = pg_terms(self, exp, idx, n_tokens, cfg.clip_range)
        if cfg.kl_in_loss:
            # The mask goes in before k3's exponential (a pad position can overflow it to inf).
            kl = kl_per_token(out["logp"], exp.ref_logprobs[idx], cfg.kl_loss_estimator, mask=out["mask"])
            kl_loss = kl.sum() / n_tokens
            loss = loss + self.kl_ctl.beta * kl_loss
            out["kl_loss"] = kl_loss
        return loss, out


__all__ = ["GRPOAgent", "GRPOConfig", "GroupAgent", "GroupConfig", "RLOOAgent", "RLOOConfig"]
