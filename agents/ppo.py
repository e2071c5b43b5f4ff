"""Token-level PPO with a KL penalty against a frozen reference model.

Reads top to bottom like CleanRL's ``ppo.py``: ``learn`` repeats *rollout -> score -> optimise*;
``_make_experience`` turns a rollout into per-token rewards, advantages and returns; ``_update``
is the clipped PPO update. Each item of ``shared/PPO_CHECKLIST.md`` is marked ``[cN]`` where it
is implemented. Items declined or delegated:

* [c11] per-process sampling seeds: ``seed + 1000 * rank`` (see ``tokengym.distributed``, which also
  lists what is all-reduced in a ``torchrun`` run [issue 8]).
* [c12-15] reward-model details live in ``tokengym.rewards`` / ``tokengym.feedback``.
* [c10] an episode stops at the first EOS (``terminated``) or at ``max_new_tokens`` (``truncated``);
  everything after the stop token is padding outside the loss mask.
* [c32] loss aggregation is a **token mean** over the minibatch (every generated token weighs the
  same, so long responses are not down-weighted as a per-sequence mean would do).
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm.auto import tqdm

from tokengym import distributed as dist
from tokengym.config import from_dict
from tokengym.envs import BatchedTextEnv
from tokengym.utils import atomic_directory, atomic_write_text, recover_directory, seed_everything

from .advantages import gae, masked_mean, masked_var, masked_whiten, where_mask
from .kl import AdaptiveKLController, FixedKLController, kl_per_token
from .logger import MetricsLogger
from .policy import ActorCritic, response_forward, token_logprobs
from .rollout import CachedSampler, RolloutBatch


class NonFiniteError(FloatingPointError):
    """Training kept producing non-finite values; the message names the quantity."""


@dataclass
class PPOConfig:
    """Every knob of the PPO agent; defaults follow the PPO-for-LM literature."""

    seed: int = 0
    batch_size: int = 16  # episodes per rollout (= num_envs)
    minibatch_size: int = 8  # episodes per optimiser step [c27]
    micro_batch_size: int = 8  # episodes per forward/backward inside a minibatch (grad accumulation)
    ppo_epochs: int = 4  # [c27]
    learning_rate: float = 1e-5
    anneal_lr: bool = True  # linear to 0 over the run [c28]
    adam_eps: float = 1e-5  # [c29]
    max_grad_norm: float = 1.0
    temperature: float = 1.0  # the same divides logits when sampling and scoring [c6]
    gamma: float = 1.0  # [c22]
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2  # value loss clipped around old values [c25]
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    kl_coef: float = 0.05  # initial beta
    adaptive_kl: bool = True  # [c18]
    kl_target: float = 6.0
    kl_horizon: int = 10000
    kl_estimator: Literal["k1", "k3"] = "k1"  # [c17]
    whiten_rewards: bool = False  # [c19]
    whiten_advantages: bool = True  # [c24]
    missing_eos_penalty: float | None = None  # subtracted from the score of a response without EOS [c9]
    score_clip: float | None = None  # [c20]
    score_scaling: bool = False  # divide scores by their running std [c20]
    target_kl: float | None = None  # early-stop an epoch when approx-KL exceeds it [c31]
    ratio_threshold: float | None = 10.0  # skip a minibatch whose mean ratio exceeds it [c31]
    max_nonfinite_updates: int = 3  # consecutive skipped minibatches before training stops
    # [c7, issue 7] True spends one more forward over the batch for old log-probs/values; False takes
    # them from the sampler, whose KV-cached steps are the same eval-mode fp32 forward (equal to ~1e-6).
    recompute_old_logprobs: bool = False
    lora_r: int = 0  # 0 = full fine-tuning; >0 trains LoRA adapters of this rank
    lora_alpha: int = 16
    lora_target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    sample_every: int = 5  # log a table of samples every K iterations
    checkpoint_every: int = 0  # 0 = only at the end

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PPOConfig":
        return from_dict(cls, data)

    def validate(self) -> None:
        """Refuse values the agent cannot run with, naming the field (before any model is loaded).

        The size fields are checked before the divisibility test so that ``minibatch_size=0`` says so
        instead of failing with a ZeroDivisionError, and ``ppo_epochs=0`` does not reach an update
        loop that never runs.
        """
        _check_int(self, "seed", minimum=0)  # numpy's seed sequences refuse negative entropy
        for name in ("batch_size", "minibatch_size", "micro_batch_size", "ppo_epochs", "max_nonfinite_updates"):
            _check_int(self, name, minimum=1)
        for name in ("lora_r", "sample_every", "checkpoint_every"):
            _check_int(self, name, minimum=0)
        _check_int(self, "kl_horizon", minimum=1)
        if self.lora_r > 0:
            _check_number(self, "lora_alpha", low=0, low_open=True)
        for name in ("learning_rate", "adam_eps", "max_grad_norm", "temperature", "clip_range", "clip_range_value"):
            _check_number(self, name, low=0, low_open=True)
        for name in ("gamma", "lam"):
            _check_number(self, name, low=0, high=1)
        for name in ("vf_coef", "kl_coef"):
            _check_number(self, name, low=0)
        _check_number(self, "ent_coef")
        _check_number(self, "kl_target", low=0, low_open=True)
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}")
        if self.missing_eos_penalty is not None:
            _check_number(self, "missing_eos_penalty")
        for name in ("score_clip", "target_kl"):
            if getattr(self, name) is not None:
                _check_number(self, name, low=0, low_open=True)
        if self.ratio_threshold is not None:  # the mean ratio starts at 1: a threshold <= 1 skips healthy steps
            _check_number(self, "ratio_threshold", low=1, low_open=True)
        if self.batch_size % self.minibatch_size or self.minibatch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of minibatch_size ({self.minibatch_size}), "
                f"which must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.whiten_rewards and self.minibatch_size < 8:
            raise ValueError("whiten_rewards needs minibatch_size >= 8 (moments of fewer samples are noise) [c19]")


def _check_int(cfg: Any, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(
    cfg: Any, name: str, low: float | None = None, high: float | None = None, low_open: bool = False
) -> None:
    """``getattr(cfg, name)`` must be a finite real number in [low, high] (``(low, high]`` with ``low_open``)."""
    value = getattr(cfg, name)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = ""
        if low is not None:
            bounds = f" {'>' if low_open else '>='} {low:g}"
        if high is not None:
            bounds += f"{' and' if bounds else ''} <= {high:g}"
        raise ValueError(f"{name} must be a finite number{bounds}, got {value!r}")


@dataclass
class Experience:
    """A rollout turned into PPO targets; every tensor is (B, T) unless noted."""

    batch: RolloutBatch
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor  # per-token KL estimate, masked
    scores: torch.Tensor  # (B,) task score after penalties/clipping


class PPOAgent:
    """Token-level PPO: policy = causal LM, value head on its last hidden state, frozen reference.

    Shapes in docstrings: B episodes, P prompt columns, T response columns, V vocabulary.
    """

    def __init__(
        self,
        env: BatchedTextEnv,
        model: Any = None,
        config: PPOConfig | None = None,
        run_dir: str | None = None,
    ) -> None:
        self.config = config or PPOConfig()
        self.config.validate()
        if env.num_envs != self.config.batch_size:
            raise ValueError(f"env.num_envs ({env.num_envs}) must equal config.batch_size ({self.config.batch_size})")
        self.env = env
        self.rank = dist.rank()
        # [c11] each process samples with its own seed; initialisation is seeded identically.
        seed_everything(self.config.seed)
        if model is None or isinstance(model, str):
            from tokengym.models import load_causal_lm

            _, model = load_causal_lm(model if model is not None else env.model_spec)
        if model.get_input_embeddings().num_embeddings < env.vocab_size:
            raise ValueError(
                f"mismatched tokenizers: the model has {model.get_input_embeddings().num_embeddings} embeddings "
                f"but the env's vocabulary has {env.vocab_size} tokens"
            )
        lora = None
        if self.config.lora_r > 0:
            from peft import LoraConfig

            lora = LoraConfig(
                r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=0.0,
                target_modules=list(self.config.lora_target_modules), bias="none",
            )
        # The sampler never emits pad (agents.rollout), so the training forward scores without it too.
        self.ac = ActorCritic(model, env.vocab_size, lora=lora, pad_token_id=env.pad_token_id)
        dist.broadcast_module(self.ac)  # [issue 8] every rank starts from rank 0's weights, as DDP does
        self.ac.policy.config.use_cache = False
        self.sampler = CachedSampler(self.ac.policy, temperature=self.config.temperature, value_head=self.ac.value_head)
        params = self.ac.trainable_parameters()
        # The fused kernel does Adam's element-wise passes in one (0.08 vs 0.47 s a step for 135M CPU parameters).
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        self.optimizer = torch.optim.Adam(params, lr=self.config.learning_rate, eps=self.config.adam_eps, fused=fused)
        self.kl_ctl: FixedKLController = (
            AdaptiveKLController(self.config.kl_coef, self.config.kl_target, self.config.kl_horizon)
            if self.config.adaptive_kl else FixedKLController(self.config.kl_coef)
        )
        self.sample_gen = torch.Generator().manual_seed(self.config.seed + 1000 * self.rank)
        self.shuffle_gen = torch.Generator().manual_seed(self.config.seed)
        self.env_seeded = False
        self.iteration = 0
        # Length of the run for the schedules (learning-rate annealing, prompt-curriculum progress):
        # None until ``learn(iterations)`` sets it, or the caller assigns it before driving ``step()``.
        self.total_iterations: int | None = None
        self.last_lr = self.config.learning_rate  # the learning rate of the latest update
        self._warned_unknown_schedule = False
        self.score_moments = [0.0, 0.0, 0.0]  # count, mean, M2 (Welford) for score scaling
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.run_dir = Path(run_dir) if run_dir else None
        self.logger = MetricsLogger(run_dir, enabled=self.rank == 0)
        # Optional prompt schedule (e.g. ``agents.aids.CurriculumScheduler``), called before each rollout
        # as ``prompt_sampler(n, progress, rng) -> n prompt indices``; None lets the env draw uniformly.
        self.prompt_sampler: Callable[[int, float, np.random.Generator], np.ndarray] | None = None

    # ------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------
    def learn(
        self, iterations: int, callback: Callable[[int, dict[str, float]], None] | None = None,
        progress: bool = True,
    ) -> list[dict[str, float]]:
        """Run ``iterations`` of generate -> score -> optimise; returns the metric rows.

        ``iterations`` is the total count (a resumed run continues up to it), and it is also the
        length of the schedules: ``total_iterations`` becomes ``max(total_iterations, iterations)``.
        """
        self.total_iterations = max(self.total_iterations or 0, iterations)
        bar = tqdm(total=iterations, initial=self.iteration, desc=type(self).__name__.removesuffix("Agent"), disable=not progress or self.rank != 0)
        while self.iteration < iterations:
            metrics = self.step()
            bar.update(1)
            bar.set_postfix(score=f"{metrics['score']:.3f}", kl=f"{metrics['kl']:.2f}", beta=f"{metrics['beta']:.3f}")
            if callback is not None:
                callback(self.iteration, metrics)
            every = self.config.checkpoint_every
            if self.run_dir and every and self.iteration % every == 0 and self.iteration < iterations:
                self.save_checkpoint(self.run_dir / "checkpoint")
        bar.close()
        if self.run_dir:
            self.save_checkpoint(self.run_dir / "checkpoint")
            if self.rank == 0:
                self.logger.plot()
        return self.logger.rows

    def step(self) -> dict[str, float]:
        """One iteration: a rollout, the experience built from it, the PPO update, the KL controller."""
        t0 = time.perf_counter()
        seed = None if self.env_seeded else self.config.seed + 1000 * self.rank
        self.env_seeded = True
        batch = self.sampler.rollout(self.env, seed=seed, generator=self.sample_gen, options=self._rollout_options())
        t_rollout = time.perf_counter() - t0
        exp = self._make_experience(batch)
        t1 = time.perf_counter()
        stats = self._update(exp)
        t_update = time.perf_counter() - t1
        # [c18] the controller sees the per-sequence summed KL, averaged over all ranks' episodes.
        mean_kl = dist.all_reduce_mean(exp.kl.sum(1).mean()).item()
        self.kl_ctl.update(mean_kl, len(batch) * dist.world_size())
        self.iteration += 1
        metrics = self._metrics(exp, stats, mean_kl, t_rollout, t_update, time.perf_counter() - t0)
        self.logger.log(self.iteration, metrics)
        if self.config.sample_every and self.iteration % self.config.sample_every == 0:
            self.logger.log_samples(self.iteration, self.sample_table(exp))
        return metrics

    def _prompt_indices(self, n: int) -> np.ndarray | None:
        """``n`` prompt indices from ``prompt_sampler`` (None without one). The generator is keyed by
        (seed, rank, iteration), so a resumed run draws the same prompts without saving RNG state."""
        if self.prompt_sampler is None:
            return None
        rng = np.random.default_rng([self.config.seed, self.rank, self.iteration])
        return np.asarray(self.prompt_sampler(n, self._progress(), rng), dtype=np.int64)

    def _progress(self) -> float:
        """Share of the run done before this iteration, 0 -> 1; 0 while the run's length is unknown."""
        if self.total_iterations is None:
            self._warn_unknown_schedule("the prompt schedule stays at progress 0")
            return 0.0
        return min(self.iteration / max(self.total_iterations, 1), 1.0)

    def _warn_unknown_schedule(self, consequence: str) -> None:
        if not self._warned_unknown_schedule:
            self._warned_unknown_schedule = True
            warnings.warn(
                f"{type(self).__name__}.step() without a known run length: {consequence}. Call learn(iterations), "
                "or set agent.total_iterations = N before the first step()", UserWarning, stacklevel=5,
            )

    def _rollout_options(self) -> dict[str, Any] | None:
        """Options of the env's ``reset`` for the next rollout; subclasses pin prompts here
        (``agents.group`` repeats each prompt k times)."""
        indices = self._prompt_indices(self.env.num_envs)
        return None if indices is None else {"prompt_indices": indices}

    # ------------------------------------------------------------------------------------------
    # Experience: scores, KL penalty, advantages
    # ------------------------------------------------------------------------------------------
    def _process_scores(self, batch: RolloutBatch) -> torch.Tensor:
        scores = batch.scores.clone()
        if self.config.missing_eos_penalty is not None:  # [c9]
            scores = torch.where(batch.stopped, scores, scores - self.config.missing_eos_penalty)
        if self.config.score_scaling:  # [c20] running std, mean kept
            n, mean, m2 = self.score_moments
            # Only sampled rollouts feed the moments: augmented episodes (agents.aids) are edits of the
            # best outputs, and their scores would shift the statistics towards high scores.
            if not getattr(batch, "augmented", False):
                for s in dist.all_gather_cat(scores).tolist():  # [issue 8] every rank's scores, same moments
                    n += 1
                    d = s - mean
                    mean += d / n
                    m2 += d * (s - mean)
                self.score_moments = [n, mean, m2]
            std = math.sqrt(m2 / n) if n > 1 else 1.0
            scores = scores / max(std, 1e-8)
        if self.config.score_clip is not None:
            scores = scores.clamp(-self.config.score_clip, self.config.score_clip)
        return scores

    @torch.inference_mode()
    def _make_experience(self, batch: RolloutBatch) -> Experience:
        cfg = self.config
        ids, attn, P = batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1]
        mask = batch.response_mask
        # [c7] old log-probs and values come from a forward equal to the training forward (eval mode,
        # fp32 log-softmax, the same temperature, no logits processors). The sampler ran exactly that
        # forward, one cached column at a time, so its numbers are reused (issue 7: one forward of the
        # batch saved); batches it did not sample (augmented ones) or recompute_old_logprobs re-run it.
        # Half-precision cached and uncached forwards differ by ~1e-2 (fp32: ~1e-6), which would
        # show up as ratio noise and clipping, so low-precision policies always recompute.
        full_precision = next(self.ac.policy.parameters()).dtype in (torch.float32, torch.float64)
        if batch.values is not None and not cfg.recompute_old_logprobs and full_precision:
            old_logp, old_values = where_mask(batch.sample_logprobs, mask), where_mask(batch.values, mask)
        else:
            old_logp, old_values = [], []
            for s in range(0, len(batch), cfg.micro_batch_size):
                lp, _, v = self.ac.evaluate(ids[s : s + cfg.micro_batch_size], attn[s : s + cfg.micro_batch_size], P, cfg.temperature, with_entropy=None)
                old_logp.append(lp)
                old_values.append(v)
            old_logp = where_mask(torch.cat(old_logp), mask)
            old_values = where_mask(torch.cat(old_values), mask)
        ref_logp = where_mask(torch.cat([
            self.ac.reference_logprobs(ids[s : s + cfg.micro_batch_size], attn[s : s + cfg.micro_batch_size], P, cfg.temperature)
            for s in range(0, len(batch), cfg.micro_batch_size)
        ]), mask)
        scores = self._process_scores(batch)
        # [c16] per-token reward: -beta * KL_t, plus the task score on the last real token [c23].
        kl = kl_per_token(old_logp, ref_logp, cfg.kl_estimator, mask=mask)
        rewards = -self.kl_ctl.beta * kl
        last = (batch.lengths - 1).clamp(min=0)
        rewards[torch.arange(len(batch)), last] += scores
        rewards = where_mask(rewards, mask)  # an episode without a token (augmentation padding) gets no score
        if cfg.whiten_rewards:  # [c19] population variance, mean kept
            rewards = masked_whiten(rewards, mask, shift_mean=False, distributed=True)  # global moments [issue 8]
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)  # [c22]
        if cfg.whiten_advantages:  # [c24]
            advantages = masked_whiten(advantages, mask, distributed=True)  # global moments [issue 8]
        return Experience(batch, old_logp, ref_logp, old_values, rewards, advantages, returns, kl, scores)

    # ------------------------------------------------------------------------------------------
    # The PPO update
    # ------------------------------------------------------------------------------------------
    def _lr_now(self) -> float:
        """Learning rate of the iteration about to run (``self.iteration``, counted from 0).

        With ``anneal_lr`` it falls linearly over ``total_iterations`` [c28]: ``lr * (1 - i / total)``,
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
        cfg = self.config
        self.last_lr = self._lr_now()  # logged as this iteration's "lr" (the rate its steps used)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr
        mask = exp.batch.response_mask
        B = len(exp.batch)
        log: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "entropy", "approx_kl", "clipfrac", "vf_clipfrac", "ratio_mean", "ratio_var")}
        first_ratio = None
        skipped = 0
        self.ac.policy.train(False)  # [c26] dropout stays off during the update too
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=self.shuffle_gen)  # [c27] reshuffle every epoch
            epoch_kls = []
            for start in range(0, B, cfg.minibatch_size):
                mb = perm[start : start + cfg.minibatch_size]
                # [issue 8] the per-rank mean token count: with gradients averaged over ranks the loss is
                # the token mean over every rank's minibatch, as one process holding them all computes.
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
                        ratio, log_ratio, v_old = out["ratio"], out["log_ratio"], exp.old_values[idx]
                        w = m.sum() / n_tokens
                        # Scalars of the loss: pg_loss, vf_loss, entropy, and any term a subclass adds.
                        for k, v in out.items():
                            if v.dim() == 0:
                                mb_stats[k] = mb_stats.get(k, 0.0) + v.item()
                        mb_stats["approx_kl"] += (((ratio - 1) - log_ratio) * m).sum().item() / n_tokens.item()
                        mb_stats["clipfrac"] += (((ratio - 1).abs() > cfg.clip_range).float() * m).sum().item() / n_tokens.item()
                        mb_stats["vf_clipfrac"] += (((out["values"] - v_old).abs() > cfg.clip_range_value).float() * m).sum().item() / n_tokens.item()
                        mb_stats["ratio_mean"] += (masked_mean(ratio, m) * w).item()
                        mb_stats["ratio_var"] += (masked_var(ratio, m) * w).item()
                        if first_ratio is None:
                            first_ratio = masked_mean(ratio, m).item()
                if dist.world_size() > 1:  # [issue 8] every rank takes the same skip decision
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
                    break  # [c31] early stop: the policy moved far enough from the rollout policy
        self.optimizer.zero_grad(set_to_none=True)
        out = {k: float(np.mean(v)) if v else float("nan") for k, v in log.items()}
        out["first_ratio"] = float("nan") if first_ratio is None else first_ratio
        out["skipped_minibatches"] = float(skipped)
        out["epochs_run"] = float(epoch + 1)
        return out

    def _evaluate(self, exp: Experience, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training forward of micro-batch ``idx``: (b, T) ``logp``, ``token_entropy``, ``values``,
        ``log_ratio``, ``ratio`` (vs the rollout's old log-probs), ``mask``, and (b, T, V) ``logits``."""
        P = exp.batch.prompt_ids.shape[1]
        ids, attn, m = exp.batch.input_ids[idx], exp.batch.attention_mask[idx], exp.batch.response_mask[idx]
        logits, hidden = response_forward(self.ac.policy, ids, attn, P, self.config.temperature, want_hidden=True)
        # The entropy joins the graph only when the loss uses it (ent_coef != 0). Else it is only logged,
        # and the sampler's (the rollout policy's) is logged: computing it here costs a full-vocabulary
        # pass per micro-batch and epoch (~4 % of a SmolLM2 update) for a number nothing optimises.
        rollout_entropy = exp.batch.entropy
        want = True if self.config.ent_coef != 0 else (None if rollout_entropy is not None else False)
        logp, entropy = token_logprobs(logits, ids[:, P:], self.ac.vocab_size, entropy=want, pad_id=self.ac.pad_token_id)
        if entropy is None:
            entropy = rollout_entropy[idx]
        log_ratio = where_mask(logp - exp.old_logprobs[idx], m)  # a -inf log-prob at a pad gives 0, not NaN
        return {"logp": logp, "token_entropy": entropy, "values": self.ac.value_head(hidden), "log_ratio": log_ratio,
                "ratio": torch.exp(log_ratio), "mask": m, "logits": logits}

    def _loss(self, exp: Experience, idx: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of micro-batch ``idx`` and what ``_update`` logs; other algorithms override this.

        The loss is a token *sum* divided by ``n_tokens`` (its minibatch's token count), so the
        micro-batches of a minibatch add up to the token mean [c32]. The dict holds the scalars
        ``pg_loss``, ``vf_loss``, ``entropy`` (plus any scalar term a subclass adds: each is logged
        under its key) and the tensors of :meth:`_evaluate`.
        """
        cfg = self.config
        f = self._evaluate(exp, idx)
        m, ratio, new_values = f["mask"], f["ratio"], f["values"]
        adv = exp.advantages[idx]
        # Clipped surrogate: the pessimistic bound of the unclipped and clipped objectives.
        pg_losses = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
        # [c25] value loss clipped around the old values, factor 0.5.
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
        return loss, {"pg_loss": pg_loss, "vf_loss": vf_loss, "entropy": ent, **f}

    def _skip_minibatch(self, what: str) -> None:
        """[issue 9] non-finite loss/gradients skip the update; a streak of them stops training."""
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        warnings.warn(f"PPO: skipped a minibatch at iteration {self.iteration} because of a bad {what}", RuntimeWarning, stacklevel=2)
        if self.nonfinite_streak >= self.config.max_nonfinite_updates:
            raise NonFiniteError(
                f"{self.nonfinite_streak} consecutive minibatches skipped at iteration {self.iteration}: "
                f"the {what} kept going bad (lower the learning rate or check the reward)"
            )

    # ------------------------------------------------------------------------------------------
    # Metrics and samples [c33]
    # ------------------------------------------------------------------------------------------
    def _metrics(self, exp: Experience, stats: dict[str, float], mean_kl: float, t_roll: float, t_upd: float, t_all: float) -> dict[str, float]:
        b, mask = exp.batch, exp.batch.response_mask
        tokens = mask.sum().item()
        var_ret = masked_var(exp.returns, mask).item()
        explained = 1 - masked_var(exp.returns - exp.old_values, mask).item() / var_ret if var_ret > 0 else float("nan")
        gather = lambda x: dist.all_reduce_mean(torch.as_tensor(float(x))).item()  # noqa: E731
        score = gather(b.scores.mean())
        out = {
            "score": score,
            "gold_score": gather(b.gold_scores.mean()) if b.gold_scores is not None else float("nan"),
            "kl": mean_kl,
            "beta": self.kl_ctl.beta,
            "rlhf_reward": gather(exp.rewards.sum(1).mean()),
            "kl_estimator_k3": float(self.config.kl_estimator == "k3"),
            **dist.all_reduce_mean_dict(stats),  # [issue 8] means over ranks
            "value_explained_var": explained,
            "response_length": gather(mask.sum(1).mean()),
            "eos_rate": gather(b.stopped.float().mean()),
            "lr": self.last_lr,
            "episodes_per_s": len(b) * dist.world_size() / t_all,
            "tokens_per_s": tokens * dist.world_size() / t_all,
            "rollout_s": t_roll,
            "update_s": t_upd,
            "iteration_s": t_all,
            "nonfinite_total": float(self.nonfinite_total),
        }
        return out

    def sample_table(self, exp: Experience, n: int = 4) -> list[dict[str, Any]]:
        b = exp.batch
        return [
            {"prompt": b.prompt_texts[i], "response": b.response_texts[i], "score": float(b.scores[i]),
             "kl": float(exp.kl[i].sum()), **({"gold": float(b.gold_scores[i])} if b.gold_scores is not None else {})}
            for i in range(min(n, len(b)))
        ]

    # ------------------------------------------------------------------------------------------
    # Checkpoints: written atomically; safetensors for weights, weights_only for the optimiser
    # ------------------------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.ac.policy.named_parameters() if v.requires_grad}

    def _extra_state(self) -> dict[str, Any]:
        """JSON-able state a subclass keeps between iterations (e.g. REINFORCE's moving baseline), saved in
        ``trainer_state.json`` so that a resumed run continues as the uninterrupted one would."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` returned."""

    def _rng_extra_state(self) -> dict[str, Any]:
        """JSON-able random streams a subclass or mixin owns (e.g. the augmenter's generator). They are
        per rank: saved with this rank's other streams and restored by :meth:`_load_rng_extra`."""
        return {}

    def _load_rng_extra(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_rng_extra_state` returned (keys missing from an older checkpoint are kept as they are)."""

    def _rank_rng_state(self) -> dict[str, Any]:
        """This rank's random streams: they differ between ranks (the shuffle stream does not)."""
        return {"sample": self.sample_gen.get_state(), "torch": torch.get_rng_state(),
                "env_rng": self.env.np_random.bit_generator.state, "numpy_rng": _jsonable(np.random.get_state()),
                "python_rng": _jsonable(random.getstate()), **self._rng_extra_state()}

    def save_checkpoint(self, path: str | Path) -> None:
        """Rank 0 writes the checkpoint atomically; in a distributed run it also writes every rank's
        random streams (gathered here) as ``rng_rank{r}.safetensors`` inside the same atomic directory."""
        rank_states = dist.all_gather_object(self._rank_rng_state()) if dist.world_size() > 1 else []
        if self.rank != 0:
            dist.barrier()
            return
        with atomic_directory(path, what="checkpoint") as tmp:
            for r, st in enumerate(rank_states):  # [issue 8]
                meta = {k: json.dumps(v) for k, v in st.items() if k not in _RNG_TENSORS}
                save_file({"sample": st["sample"], "torch": st["torch"]}, tmp / f"rng_rank{r}.safetensors",
                          metadata={"rank": str(r), **meta})
            if self.ac.uses_lora:
                save_file(self._trainable_state(), tmp / "policy.safetensors")
            else:
                save_model(self.ac.policy, str(tmp / "policy.safetensors"))
            save_file(self.ac.value_head.state_dict(), tmp / "value_head.safetensors")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            save_file({"sample": self.sample_gen.get_state(), "shuffle": self.shuffle_gen.get_state(),
                       "torch": torch.get_rng_state()}, tmp / "rng.safetensors")
            state = {
                "iteration": self.iteration,
                "total_iterations": self.total_iterations,
                "kl_controller": self.kl_ctl.state_dict(),
                "env_rng": self.env.np_random.bit_generator.state,
                "env_seeded": self.env_seeded,
                "numpy_rng": _jsonable(np.random.get_state()),
                "python_rng": _jsonable(random.getstate()),
                "rng_extra": self._rng_extra_state(),
                "score_moments": self.score_moments,
                "nonfinite_total": self.nonfinite_total,
                # The streak counts skipped minibatches in a row: a resume must not forget two
                # skips just before the save and let a third bad one pass as the first.
                "nonfinite_streak": self.nonfinite_streak,
                # A full fine-tuning checkpoint holds the policy but not the reference (a copy of the
                # model given to the agent): the fingerprint lets a resume check it got the same one.
                "reference_fingerprint": self.ac.reference_fingerprint(),
                "world_size": dist.world_size(),
                "config": asdict(self.config),
                "vocab_size": self.env.vocab_size,
                "model_class": type(self.ac.policy).__name__,
                "n_parameters": sum(p.numel() for p in self.ac.policy.parameters()),
                "agent_state": self._extra_state(),
            }
            atomic_write_text(tmp / "trainer_state.json", json.dumps(state, indent=1))
        dist.barrier()

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore everything ``save_checkpoint`` wrote; refuses a checkpoint of another model."""
        path = Path(path)
        recover_directory(path)  # a save killed between its two renames left the previous one aside
        state_file = path / "trainer_state.json"
        if not state_file.is_file():
            raise FileNotFoundError(f"{path} is not a tokengym checkpoint (no trainer_state.json)")
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
            if not isinstance(state, dict) or not {"vocab_size", "n_parameters", "model_class"} <= state.keys():
                raise ValueError("trainer_state.json lacks vocab_size / n_parameters / model_class")
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"checkpoint {path} is corrupt: {state_file.name}: {e}") from e
        n_params = sum(p.numel() for p in self.ac.policy.parameters())
        if state["vocab_size"] != self.env.vocab_size or state["n_parameters"] != n_params or state["model_class"] != type(self.ac.policy).__name__:
            raise ValueError(
                f"checkpoint {path} is from another model ({state['model_class']}, {state['n_parameters']} parameters, "
                f"vocab {state['vocab_size']}); this run has {type(self.ac.policy).__name__}, {n_params} parameters, "
                f"vocab {self.env.vocab_size}"
            )
        saved_ref = state.get("reference_fingerprint")  # absent from checkpoints of earlier versions
        if saved_ref is not None and saved_ref != self.ac.reference_fingerprint():
            what = "base weights under the LoRA adapters" if self.ac.uses_lora else "reference model"
            raise ValueError(
                f"checkpoint {path} was trained against another {what} (fingerprint {saved_ref}, this agent's is "
                f"{self.ac.reference_fingerprint()}): resume with the original model the run started from, "
                "not the trained policy (e.g. a save_pretrained export) or another model of the same shape, "
                "or the KL penalty would be measured against the wrong reference"
            )
        try:
            # Every file is read (the full policy's header checked against its size) before anything
            # is modified, so a truncated or corrupt checkpoint leaves this agent as it was.
            value_head = load_file(path / "value_head.safetensors")
            rng = load_file(path / "rng.safetensors")
            optimizer = torch.load(path / "optimizer.pt", weights_only=True)
            if self.ac.uses_lora:
                policy = load_file(path / "policy.safetensors")
            else:  # opening checks the header against the file size (catches a truncated file)
                with safe_open(str(path / "policy.safetensors"), framework="pt"):
                    policy = None
            self.optimizer.load_state_dict(optimizer)
            self.ac.value_head.load_state_dict(value_head)
            if self.ac.uses_lora:
                missing = self.ac.policy.load_state_dict(policy, strict=False)
                if missing.unexpected_keys:
                    raise ValueError(f"unexpected keys {missing.unexpected_keys[:3]}")
            else:
                load_model(self.ac.policy, str(path / "policy.safetensors"))
        except Exception as e:  # safetensors / torch.load raise several types for a truncated/corrupt file
            raise ValueError(f"checkpoint {path} is corrupt or incompatible: {type(e).__name__}: {e}") from e
        self.sample_gen.set_state(rng["sample"])
        self.shuffle_gen.set_state(rng["shuffle"])
        torch.set_rng_state(rng["torch"])
        self.iteration = state["iteration"]
        self.total_iterations = state["total_iterations"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.env.np_random.bit_generator.state = state["env_rng"]
        self.env_seeded = state["env_seeded"]
        np.random.set_state(_from_jsonable(state["numpy_rng"]))
        random.setstate(_from_jsonable(state["python_rng"]))
        self.score_moments = state["score_moments"]
        self.nonfinite_total = state["nonfinite_total"]
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        self._load_rng_extra(state.get("rng_extra", {}))
        self._load_extra_state(state.get("agent_state", {}))
        self._load_rank_rng(path, state)
        self.logger.truncate_after(self.iteration)

    def _load_rank_rng(self, path: Path, state: dict[str, Any]) -> None:
        """[issue 8] Restore this rank's random streams from ``rng_rank{rank}.safetensors``. Resuming
        with another number of ranks: a rank without its file derives fresh streams from
        (seed, rank, iteration), deterministic but not the ones an uninterrupted run would have used."""
        saved_world = int(state.get("world_size", 1))
        if saved_world != dist.world_size():
            warnings.warn(f"resuming a checkpoint of {saved_world} process(es) with {dist.world_size()}: "
                          "ranks without saved random streams derive new ones", RuntimeWarning, stacklevel=3)
        rank_file = path / f"rng_rank{self.rank}.safetensors"
        if rank_file.is_file():
            try:
                with safe_open(str(rank_file), framework="pt") as f:
                    meta = f.metadata()
                    sample, torch_rng = f.get_tensor("sample"), f.get_tensor("torch")
                env_rng, numpy_rng, python_rng = (json.loads(meta[k]) for k in ("env_rng", "numpy_rng", "python_rng"))
                extra = {k: json.loads(v) for k, v in meta.items() if k not in _RNG_CORE}
            except Exception as e:  # safetensors raises several types for a truncated/corrupt file
                raise ValueError(f"checkpoint {path} is corrupt: {rank_file.name}: {type(e).__name__}: {e}") from e
            self.sample_gen.set_state(sample)
            torch.set_rng_state(torch_rng)
            self.env.np_random.bit_generator.state = env_rng
            np.random.set_state(_from_jsonable(numpy_rng))
            random.setstate(_from_jsonable(python_rng))
            self._load_rng_extra(extra)
        elif self.rank > 0:  # the shared files hold rank 0's streams: derive this rank's
            key = [self.config.seed, self.rank, self.iteration]
            self.sample_gen.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))
            self.env.np_random.bit_generator.state = np.random.default_rng(key).bit_generator.state

    def save_pretrained(self, path: str | Path) -> None:
        """Save the trained policy (LoRA merged) so ``transformers`` loads it with ``from_pretrained``."""
        model = self.ac.policy
        if self.ac.uses_lora:
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        with atomic_directory(path, what="policy") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            self.env.tokenizer.save_pretrained(tmp)


# Keys of ``_rank_rng_state``: tensors saved as safetensors, and the core JSON streams; any other key
# is a subclass's (``_rng_extra_state``), saved as JSON metadata of the rank file.
_RNG_TENSORS = ("sample", "torch")
_RNG_CORE = (*_RNG_TENSORS, "env_rng", "numpy_rng", "python_rng", "rank")


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return {"__ndarray__": x.tolist(), "dtype": str(x.dtype)}
    if isinstance(x, tuple):
        return {"__tuple__": [_jsonable(v) for v in x]}
    return x


def _from_jsonable(x: Any) -> Any:
    if isinstance(x, dict) and "__ndarray__" in x:
        return np.asarray(x["__ndarray__"], dtype=x["dtype"])
    if isinstance(x, dict) and "__tuple__" in x:
        return tuple(_from_jsonable(v) for v in x["__tuple__"])
    return x
