"""The update loop every on-policy agent runs: epochs of shuffled minibatches, gradient accumulation
over micro-batches, the guards that skip a bad minibatch, and the learning-rate schedule.

:class:`UpdateLoop` is a base of :class:`~tokengym.agents.base.OnPolicyAgent`, in a module of its
own so that each file stays short; it uses the agent's ``config``, ``ac``, ``optimizer``,
``shuffle_gen`` and its algorithm's ``_loss``. In a ``torchrun`` run every collective here is
called by every rank in the same order (the ranks agree on each skip), so that none waits forever.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from tokengym import distributed as dist

from .advantages import masked_mean, masked_var

if TYPE_CHECKING:
    from .base import Experience


class NonFiniteError(FloatingPointError):
    """Training kept producing non-finite values; the message names the quantity."""


class UpdateLoop:
    """``_update(exp)``: the optimisation of one rollout, with the statistics it logs."""

    #: Scalars an algorithm's ``_loss`` returns besides ``pg_loss``, ``vf_loss`` and ``entropy`` that
    #: are always columns of the metrics (NaN in an iteration whose every minibatch was skipped),
    #: e.g. PPO's clip fractions. Other scalar terms are logged too, from their first step on.
    loss_stats: tuple[str, ...] = ()

    def _lr_now(self) -> float:
        """Learning rate of the iteration about to run (``self.iteration``, counted from 0).

        With ``anneal_lr`` it falls linearly over ``total_iterations``: ``lr * (1 - i / total)``,
        full on the first iteration, ``lr / total`` on the last, 0 for any iteration past the end.
        While the total is unknown (``step()`` driven by hand without setting ``total_iterations``)
        the rate stays at ``learning_rate`` and a warning says so once: guessing a length would
        either stop training early (the old default of 1 gave lr 0 from the 2nd iteration on) or not
        anneal at all without saying so.
        """
        if not self.config.anneal_lr:
            return self.config.learning_rate
        if self.total_iterations is None:
            self._warn_unknown_schedule("anneal_lr keeps the learning rate constant")
            return self.config.learning_rate
        frac = 1.0 - self.iteration / max(self.total_iterations, 1)
        return self.config.learning_rate * max(frac, 0.0)

    def _update(self, exp: Experience) -> dict[str, float]:
        """``ppo_epochs`` passes over ``exp`` in reshuffled minibatches of ``minibatch_size`` episodes, each
        an optimiser step over micro-batches of ``micro_batch_size``; returns the means of the logged scalars."""
        cfg = self.config
        self.last_lr = self._lr_now()  # logged as this iteration's "lr" (the rate its steps used)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr
        mask = exp.batch.response_mask
        B = len(exp.batch)
        keys = ("pg_loss", "vf_loss", "entropy", "approx_kl", *self.loss_stats, "ratio_mean", "ratio_var")
        log: dict[str, list[float]] = {k: [] for k in keys}
        first_ratio = None
        skipped = 0
        self.ac.policy.train(False)  # dropout stays off during the update too
        for epoch in range(cfg.ppo_epochs):
            # A new order every epoch, drawn by the CPU shuffle generator (the same order on every
            # device) and moved to the batch's device, where it indexes the experience.
            perm = torch.randperm(B, generator=self.shuffle_gen).to(mask.device)
            epoch_kls = []
            for start in range(0, B, cfg.minibatch_size):
                mb = perm[start : start + cfg.minibatch_size]
                # The per-rank mean token count: with gradients averaged over the ranks of a torchrun run,
                # the loss is the token mean over every rank's minibatch, as one process holding them all computes.
                n_tokens = dist.all_reduce_mean(mask[mb].sum())
                if n_tokens.item() == 0:
                    # No token on any rank (a minibatch of augmentation padding): nothing to learn, and an
                    # Adam step on zero gradients would still move the weights by its momentum.
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                mb_stats = {k: 0.0 for k in log}
                bad = None
                for s in range(0, len(mb), cfg.micro_batch_size):
                    idx = mb[s : s + cfg.micro_batch_size]
                    m = mask[idx]
                    loss, out = self._loss(exp, idx, n_tokens)
                    if not torch.isfinite(loss):
                        bad = "loss" if torch.isfinite(out["logp"]).all() else "policy log-probs"
                        break
                    loss.backward()
                    with torch.no_grad():
                        ratio, log_ratio = out["ratio"], out["log_ratio"]
                        w = m.sum() / n_tokens
                        # The scalars of the loss: pg_loss, vf_loss, entropy, and any the algorithm adds.
                        for k, v in out.items():
                            if v.dim() == 0:
                                mb_stats[k] = mb_stats.get(k, 0.0) + v.item()
                        mb_stats["approx_kl"] += (((ratio - 1) - log_ratio) * m).sum().item() / n_tokens.item()
                        mb_stats["ratio_mean"] += (masked_mean(ratio, m) * w).item()
                        mb_stats["ratio_var"] += (masked_var(ratio, m) * w).item()
                        if first_ratio is None:
                            first_ratio = masked_mean(ratio, m).item()
                if dist.world_size() > 1:  # every rank of a torchrun run takes the same skip decision
                    agreed = dist.all_reduce_mean(torch.tensor([float(bad is not None), mb_stats["ratio_mean"]]))
                    bad = bad or ("loss on another rank" if agreed[0] > 0 else None)
                    mb_stats["ratio_mean"] = agreed[1].item()
                if bad is None:
                    dist.all_reduce_grads(self.ac.trainable_parameters())
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.ac.trainable_parameters(), cfg.max_grad_norm)
                    if not torch.isfinite(grad_norm):
                        bad = "gradient norm"
                if bad is None and cfg.ratio_threshold is not None and mb_stats["ratio_mean"] > cfg.ratio_threshold:
                    bad = f"ratio mean {mb_stats['ratio_mean']:.2f} > ratio_threshold"
                if bad is not None:
                    self._skip_minibatch(bad)
                    skipped += 1
                    continue
                self.nonfinite_streak = 0
                self.optimizer.step()
                for k, v in mb_stats.items():
                    log.setdefault(k, []).append(v)
                epoch_kls.append(mb_stats["approx_kl"])
            if cfg.target_kl is not None and epoch_kls:
                if dist.all_reduce_mean(torch.tensor(float(np.mean(epoch_kls)))).item() > cfg.target_kl:
                    break  # early stop: the policy moved far enough from the rollout policy
        self.optimizer.zero_grad(set_to_none=True)
        out = {k: float(np.mean(v)) if v else float("nan") for k, v in log.items()}
        out["first_ratio"] = float("nan") if first_ratio is None else first_ratio
        out["skipped_minibatches"] = float(skipped)
        out["epochs_run"] = float(epoch + 1)
        return out

    def _skip_minibatch(self, what: str) -> None:
        """A non-finite loss or gradient (or an exploded ratio) skips the minibatch's step; a streak of
        ``max_nonfinite_updates`` skips in a row stops training with :class:`NonFiniteError`."""
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        warnings.warn(f"PPO: skipped a minibatch at iteration {self.iteration} because of a bad {what}", RuntimeWarning, stacklevel=2)
        if self.nonfinite_streak >= self.config.max_nonfinite_updates:
            raise NonFiniteError(
                f"{self.nonfinite_streak} consecutive minibatches skipped at iteration {self.iteration}: "
                f"the {what} kept going bad (lower the learning rate or check the reward)"
            )


__all__ = ["NonFiniteError", "UpdateLoop"]
