"""Vanilla policy gradient: REINFORCE with a baseline, and advantage actor-critic (A2C).

Both run on :class:`~tokengym.agents.base.OnPolicyAgent` (the KV-cached rollout, the per-token
KL-penalised reward -- the KL penalty stays in the reward, as in PPO --, the KL controller, metrics,
checkpoints and the minibatch loop) and define only their targets and loss.

By default the whole batch is one minibatch and there is one epoch, i.e. one gradient step per
rollout: the importance ratio is exactly 1, so the unclipped surrogate ``-A * ratio`` has the textbook
gradient ``-A * grad log pi``. The loss is a token mean over the minibatch, as PPO's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from .advantages import gae, masked_whiten
from .base import Experience, OnPolicyAgent
from .config import OnPolicyConfig, whole_batch_defaults


def pg_terms(
    agent: OnPolicyAgent, exp: Experience, idx: torch.Tensor, n_tokens: torch.Tensor, clip_range: float | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Policy-gradient loss ``-A * ratio`` (clipped like PPO's when ``clip_range`` is given) minus the
    entropy bonus, token mean over the minibatch, for micro-batch ``idx`` (b episodes). Returns the
    loss and the logged scalars (``vf_loss`` is 0: no critic; ``clipfrac`` with ``clip_range``) with
    the (b, T) tensors of the forward."""
    f = agent._evaluate(exp, idx)
    m, ratio, adv = f["mask"], f["ratio"], exp.advantages[idx]
    losses = -adv * ratio
    stats = {}
    if clip_range is not None:
        losses = torch.max(losses, -adv * ratio.clamp(1 - clip_range, 1 + clip_range))
        with torch.no_grad():
            hit = (ratio - 1).abs() > clip_range
            stats["clipfrac"] = (hit.float() * m).sum().double() / n_tokens.double()
    pg_loss = (losses * m).sum() / n_tokens
    ent = (f["token_entropy"] * m).sum() / n_tokens
    loss = pg_loss - agent.config.ent_coef * ent if agent.config.ent_coef != 0 else pg_loss
    return loss, {"pg_loss": pg_loss, "vf_loss": torch.zeros((), device=pg_loss.device), "entropy": ent, **stats, **f}


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, T) ``G_t = sum_{t' >= t} gamma^(t'-t) r_t'`` over each response, 0 off ``mask``: GAE with
    V = 0 and lambda = 1."""
    returns, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    return returns


@dataclass
class ReinforceConfig(OnPolicyConfig):
    """REINFORCE: Monte-Carlo reward-to-go minus a state-independent baseline."""

    minibatch_size: int = 0  # 0 = the whole batch: one gradient step per rollout
    ppo_epochs: int = 1
    vf_coef: float = 0.0  # no critic
    whiten_advantages: bool = False  # vanilla: raw G_t - b (set True to divide by the batch std)
    # "moving_average": b = EMA of past batches' mean sequence return (the first batch uses its own mean);
    # "batch_mean": b = this batch's mean sequence return; "none": b = 0.
    baseline: Literal["moving_average", "batch_mean", "none"] = "moving_average"
    baseline_decay: float = 0.9

    def validate(self) -> None:
        whole_batch_defaults(self)
        super().validate()
        if self.baseline not in ("moving_average", "batch_mean", "none"):
            raise ValueError(f"baseline must be moving_average, batch_mean or none, got {self.baseline!r}")


class ReinforceAgent(OnPolicyAgent):
    """Vanilla policy gradient (Williams, 1992) with a baseline, on the per-token KL-penalised reward.

    Advantage of token t: ``G_t - b`` with ``G_t = sum_{t' >= t} gamma^(t'-t) r_t'`` (score on the last
    token, ``-beta * KL`` on every token), ``b`` per :class:`ReinforceConfig`. No clipping, no critic.
    The moving-average baseline is saved in checkpoints (``_extra_state``).
    """

    config: ReinforceConfig

    def __init__(self, env: Any, model: Any = None, config: ReinforceConfig | None = None, run_dir: str | None = None) -> None:
        super().__init__(env, model, config, run_dir)
        self.baseline_value: float | None = None

    @classmethod
    def default_config(cls) -> ReinforceConfig:
        return ReinforceConfig()

    def _targets(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T) KL-penalised rewards, advantages ``G_t - b`` and reward-to-go returns ``G_t``."""
        cfg, batch = self.config, exp.batch
        mask = batch.response_mask
        rewards = self._penalised_rewards(exp)
        returns = reward_to_go(rewards, mask, cfg.gamma)
        seq_mean = returns[:, 0].mean().item()
        if cfg.baseline == "none":
            b = 0.0
        elif cfg.baseline == "batch_mean" or self.baseline_value is None:
            b = seq_mean
        else:
            b = self.baseline_value
        if cfg.baseline == "moving_average" and not getattr(batch, "augmented", False):
            prev = seq_mean if self.baseline_value is None else self.baseline_value
            self.baseline_value = cfg.baseline_decay * prev + (1 - cfg.baseline_decay) * seq_mean
        advantages = (returns - b) * mask
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return rewards, advantages, returns

    def _loss(self, exp: Experience, idx: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return pg_terms(self, exp, idx, n_tokens)

    def _extra_state(self) -> dict[str, Any]:
        return {"baseline_value": self.baseline_value}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.baseline_value = state.get("baseline_value")


@dataclass
class A2CConfig(OnPolicyConfig):
    """A2C: the value head's advantages, one unclipped step per rollout (SB3's A2C defaults: lambda 1, vf 0.5)."""

    minibatch_size: int = 0  # 0 = the whole batch: one gradient step per rollout
    ppo_epochs: int = 1
    lam: float = 1.0  # n-step (Monte-Carlo) advantages, as SB3's A2C; set < 1 for GAE
    vf_coef: float = 0.5
    whiten_advantages: bool = False

    def validate(self) -> None:
        whole_batch_defaults(self)
        super().validate()


class A2CAgent(OnPolicyAgent):
    """Advantage actor-critic: GAE on the value head (as PPO's targets) with the unclipped loss
    ``-A * ratio + vf_coef * 0.5 * (V - R)^2 - ent_coef * H``."""

    config: A2CConfig

    @classmethod
    def default_config(cls) -> A2CConfig:
        return A2CConfig()

    def _targets(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T) KL-penalised rewards, GAE advantages on the value head, and returns ``A + V``."""
        cfg, mask = self.config, exp.batch.response_mask
        rewards = self._penalised_rewards(exp)
        advantages, returns = gae(rewards, exp.old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:  # the moments of every rank's tokens in a torchrun run
            advantages = masked_whiten(advantages, mask, distributed=True)
        return rewards, advantages, returns

    def _loss(self, exp: Experience, idx: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, out = pg_terms(self, exp, idx, n_tokens)
        vf_loss = 0.5 * (((out["values"] - exp.returns[idx]) ** 2) * out["mask"]).sum() / n_tokens
        out["vf_loss"] = vf_loss
        return loss + self.config.vf_coef * vf_loss, out


__all__ = ["A2CAgent", "A2CConfig", "ReinforceAgent", "ReinforceConfig", "pg_terms", "reward_to_go",
           "whole_batch_defaults"]
