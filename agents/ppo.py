"""Token-level PPO with a KL penalty against a frozen reference model.

Reads top to bottom like CleanRL's ``ppo.py``, on the loop of :class:`~tokengym.agents.base.OnPolicyAgent`
(rollout -> experience -> update): :meth:`PPOAgent._targets` turns a rollout into per-token rewards with
the KL penalty, whitens them (optional), runs GAE on the value head and whitens the advantages;
:meth:`PPOAgent._loss` is the clipped policy loss, the clipped value loss and the entropy bonus.

What the implementation deliberately leaves to others or chose not to do:

* Sampling seeds differ per process (``seed + 1000 * rank``); what a ``torchrun`` run all-reduces is
  listed in ``tokengym.distributed``.
* The reward model (its head's initialisation, normalisation of its outputs, its training and losses)
  belongs to ``tokengym.rewards`` and ``tokengym.feedback``; PPO only reads its scores.
* An episode stops at the first stop token (``terminated``) or at ``max_new_tokens`` (``truncated``),
  rather than always running to the maximum length; everything after the stop token is padding
  outside the loss mask.
* The loss is a **token mean** over the minibatch (every generated token weighs the same, so long
  responses are not down-weighted as a per-sequence mean would do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .advantages import gae, masked_whiten
from .base import Experience, OnPolicyAgent
from .config import OnPolicyConfig, check_number
from .kl import kl_penalised_rewards
from .update import NonFiniteError  # noqa: F401  (importable from here, as before)


@dataclass
class PPOConfig(OnPolicyConfig):
    """PPO's knobs: the shared ones (:class:`~tokengym.agents.config.OnPolicyConfig`) and the two clip ranges."""

    clip_range: float = 0.2  # the policy ratio is clipped to [1 - clip_range, 1 + clip_range]
    clip_range_value: float = 0.2  # new values are clipped to old values +- clip_range_value
    # The main job's settings, measured on SmolLM2 with the learned sentiment reward (3 seeds each,
    # bench/results/main_job*.md; targets: held-out KL <= 6, reference perplexity <= +10 %, distinct-2
    # >= base - 0.02, gold >= base + 0.3).
    # * No entropy bonus and a KL target of 3: every seed ended past the KL budget with distinct-2 down
    #   0.04-0.06 (the policy collapses onto a few positive phrases). A bonus on the sampling entropy
    #   keeps the text varied, but it also keeps the policy's own entropy high, and the reference's
    #   perplexity of the samples grows with that entropy as well as with the KL: 0.015 put one seed's
    #   perplexity at +18 %, 0.02 doubled it on another (the text turns random). At 0.01 the perplexity
    #   falls on two seeds of three and rises 8 % on the third. 0.0125 is worse than either: the policy
    #   stays less certain, trains 9-10 rollouts before the stop, and one seed ends at KL 6.7.
    # * Batch 16 over a fixed 10 iterations ended anywhere between 3.3 and 6.0 nats: seeds drift at
    #   different speeds and the drift accelerates late. Batch 32 (2 minibatches of 16) halves the
    #   gradient noise and learns about twice as fast per iteration; the run then stops on the KL
    #   itself rather than on a count, with 12 iterations as the cap. The first rollout whose KL
    #   reaches kl_stop ends the run untrained-on. The rollout KL jumps by 1-2 nats late in a run, so
    #   the value matters only through the rollout it lands on: on the seeds measured, any stop from
    #   3.0 to 3.9 ends at gold +0.29 to +0.42 (one seed short of +0.3), and 4.0 lets those two seeds
    #   train one rollout more (gold +0.36 to +0.42, held-out KL 4.3 to 5.3, 11 of 12 targets: one
    #   seed's distinct-2 is 0.001 under its floor, inside the evaluation's own noise of ~0.007).
    batch_size: int = 32
    minibatch_size: int = 16
    ent_coef: float = 0.01
    kl_target: float = 2.0
    kl_stop: float | None = 4.0

    def validate(self) -> None:
        super().validate()
        for name in ("clip_range", "clip_range_value"):
            check_number(self, name, low=0, low_open=True)


class PPOAgent(OnPolicyAgent):
    """Token-level PPO: policy = causal LM, value head on its last hidden state, frozen reference.

    Shapes in docstrings: B episodes, T response columns; ``idx`` selects b episodes of a micro-batch.
    """

    config: PPOConfig
    loss_stats = ("clipfrac", "vf_clipfrac")  # logged every iteration (NaN when every step was skipped)

    @classmethod
    def default_config(cls) -> PPOConfig:
        return PPOConfig()

    def _targets(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T) rewards, advantages and returns of the rollout."""
        cfg, mask = self.config, exp.batch.response_mask
        # Per-token reward: -beta * KL_t on every token, plus the task score on the last real token.
        rewards = kl_penalised_rewards(exp.kl, exp.scores, mask, self.kl_ctl.beta)
        if cfg.whiten_rewards:  # unit variance (population variance), mean kept
            # The moments of every rank's tokens, so that each rank of a torchrun run whitens alike.
            rewards = masked_whiten(rewards, mask, shift_mean=False, distributed=True)
        # GAE on the value head; nothing after the last real token contributes or bootstraps.
        advantages, returns = gae(rewards, exp.old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:  # zero mean, unit variance over the batch's tokens (all ranks')
            advantages = masked_whiten(advantages, mask, distributed=True)
        return rewards, advantages, returns

    def _loss(self, exp: Experience, idx: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate + ``vf_coef`` * clipped value loss - ``ent_coef`` * entropy of micro-batch ``idx``.

        Each term is a token sum divided by ``n_tokens`` (the minibatch's token count), so the
        micro-batches of a minibatch add up to its token mean. Returns the loss and the logged
        scalars ``pg_loss``, ``vf_loss``, ``entropy``, ``clipfrac``, ``vf_clipfrac`` with the
        (b, T) tensors of :meth:`_evaluate`.
        """
        cfg = self.config
        f = self._evaluate(exp, idx)
        m, ratio, new_values = f["mask"], f["ratio"], f["values"]
        adv = exp.advantages[idx]
        # Clipped surrogate: the pessimistic bound of the unclipped and clipped objectives.
        pg_losses = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
        # Value loss clipped around the old values, factor 0.5 (a critic step as cautious as the policy's).
        v_old = exp.old_values[idx]
        v_clipped = v_old + (new_values - v_old).clamp(-cfg.clip_range_value, cfg.clip_range_value)
        ret = exp.returns[idx]
        vf_losses = torch.max((new_values - ret) ** 2, (v_clipped - ret) ** 2)
        pg_loss = (pg_losses * m).sum() / n_tokens
        vf_loss = 0.5 * (vf_losses * m).sum() / n_tokens
        ent = (f["token_entropy"] * m).sum() / n_tokens
        loss = pg_loss + cfg.vf_coef * vf_loss
        if cfg.ent_coef != 0:  # a logged-only entropy never reaches the loss, not even as 0 * H
            loss = loss - cfg.ent_coef * ent
        with torch.no_grad():  # shares of the minibatch's tokens whose ratio / value the clip bounds
            clipfrac = token_share((ratio - 1).abs() > cfg.clip_range, m, n_tokens)
            vf_clipfrac = token_share((new_values - v_old).abs() > cfg.clip_range_value, m, n_tokens)
        return loss, {"pg_loss": pg_loss, "vf_loss": vf_loss, "entropy": ent, "clipfrac": clipfrac,
                      "vf_clipfrac": vf_clipfrac, **f}


def token_share(hit: torch.Tensor, mask: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Scalar: the (b, T) bools ``hit`` counted on ``mask``, over ``n_tokens`` (float64, as the update's other statistics)."""
    return (hit.float() * mask).sum().double() / n_tokens.double()


__all__ = ["PPOAgent", "PPOConfig", "token_share"]
