"""What every token-level on-policy agent shares: the loop, the experience, the update loop, metrics.

``learn`` repeats *rollout -> experience -> update*. :class:`OnPolicyAgent` does everything that does
not depend on the algorithm: the KV-cached rollout; the old log-probs and values, reference log-probs,
processed scores and per-token KL of a rollout (:meth:`~OnPolicyAgent._make_experience`); the
minibatch / epoch loop with gradient accumulation, non-finite guards and skips
(:meth:`~OnPolicyAgent._update`); the training forward (:meth:`~OnPolicyAgent._evaluate`); metrics,
sample tables, and checkpoints. The update loop lives in ``agents.update`` and the checkpoint files in
``agents.checkpoint``, each in a module of its own to keep the files short. An algorithm fills in two
methods:

* ``_targets(exp)`` -- the rewards, advantages and returns of a rollout;
* ``_loss(exp, idx, n_tokens)`` -- the loss of one micro-batch and the scalars to log.

Choices every agent shares:

* Each process samples with its own seed, ``seed + 1000 * rank``, while the weights start identical
  on every rank (``tokengym.distributed`` lists what is all-reduced in a ``torchrun`` run).
* An episode stops at its first stop token (``terminated``) or at ``max_new_tokens`` (``truncated``);
  everything after the stop token is padding outside the loss mask.
* Losses are a **token mean** over the minibatch: every generated token weighs the same, so long
  responses are not down-weighted as a per-sequence mean would do.
* Device and precision (``config.device``, ``config.dtype``, resolved by ``tokengym.hardware``): the
  policy, the frozen reference and the value head live on ``agent.device``, and so does every tensor
  of the experience and the update. Weights and Adam's state stay fp32 (master weights); with bf16
  (``agent.autocast_dtype``) the forwards of the rollout, the old log-probs, the reference log-probs
  and the training run under ``torch.autocast``, while log-softmax, log-probs, ratios, advantages and
  KL are fp32. Under autocast the old log-probs and values are recomputed with the training forward
  (the sampler's KV-cached bf16 steps differ from it, by up to ~1e-2 on a real model and 2e-5 on
  the one-layer test model), so the ratio on the first minibatch of the first epoch is still 1: the
  same forward runs on the same rows, and it is exactly 1.0 on every token with the test models on
  a CPU. ``tests/test_bf16.py`` allows 1e-3 on the mean and 1e-2 per token, for GPU attention
  kernels that may differ between the inference-mode forward and the training one.

Shapes in docstrings: B episodes, P prompt columns, T response columns, V vocabulary.

At ~440 lines this module is over the project's ~400-line guide on purpose: the device/precision
setup, the shared experience and the metrics belong with the loop that uses them; the update loop
and the checkpoint files, which read on their own, already live apart.
"""

from __future__ import annotations

import math
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from tokengym import distributed as dist
from tokengym.envs import BatchedTextEnv
from tokengym.rewards.postprocess import RunningMoments
from tokengym.hardware import resolve_device, resolve_dtype
from tokengym.utils import seed_everything

from . import checkpoint
from .advantages import masked_var, masked_whiten, where_mask
from .config import OnPolicyConfig
from .kl import AdaptiveKLController, FixedKLController, kl_penalised_rewards, kl_per_token
from .logger import MetricsLogger
from .policy import ActorCritic, response_forward, token_logprobs
from .precision import use_fp32_attention
from .rollout import CachedSampler, RolloutBatch
from .update import NonFiniteError, UpdateLoop


@dataclass
class Experience:
    """A rollout turned into training targets; every tensor is (B, T) unless noted."""

    batch: RolloutBatch
    old_logprobs: torch.Tensor  # log pi_old(a_t), the rollout policy's
    ref_logprobs: torch.Tensor  # log pi_ref(a_t)
    old_values: torch.Tensor  # V_old(s_t) from the value head
    rewards: torch.Tensor | None  # per-token rewards; None until the algorithm's ``_targets`` fills them
    advantages: torch.Tensor | None
    returns: torch.Tensor | None
    kl: torch.Tensor  # per-token KL estimate, masked
    scores: torch.Tensor  # (B,) task score after penalties/clipping/scaling


class OnPolicyAgent(UpdateLoop, ABC):
    """A causal-LM policy with a value head on its last hidden state, a frozen reference, one optimiser.

    Subclasses implement :meth:`_targets` and :meth:`_loss`; ``loss_stats`` names the extra scalars
    their ``_loss`` returns (see :class:`~tokengym.agents.update.UpdateLoop`).
    """

    def __init__(
        self,
        env: BatchedTextEnv,
        model: Any = None,
        config: OnPolicyConfig | None = None,
        run_dir: str | None = None,
    ) -> None:
        self.config = config if config is not None else self.default_config()
        self.config.validate()
        if env.num_envs != self.config.batch_size:
            raise ValueError(f"env.num_envs ({env.num_envs}) must equal config.batch_size ({self.config.batch_size})")
        self.env = env
        self.rank = dist.rank()
        self.device = resolve_device(self.config.device, setting="device")
        if self.device.type == "cuda" and self.device.index is None:
            # "cuda" means the current GPU (under torchrun, this rank's): named by index so that
            # tensor.device == agent.device compares equal.
            self.device = torch.device("cuda", torch.cuda.current_device())
        #: The compute precision (fp32 or bf16); the weights stay in the dtype they were given in.
        self.dtype = resolve_dtype(self.config.dtype, self.device, setting="dtype")
        #: None for fp32; the autocast dtype of every forward otherwise.
        self.autocast_dtype = None if self.dtype == torch.float32 else self.dtype
        # Every rank initialises with the same seed; sampling uses a per-rank seed (below).
        seed_everything(self.config.seed)
        if model is None or isinstance(model, str):
            from tokengym.models import load_causal_lm

            _, model = load_causal_lm(model if model is not None else env.model_spec)
        if model.get_input_embeddings().num_embeddings < env.vocab_size:
            raise ValueError(
                f"mismatched tokenizers: the model has {model.get_input_embeddings().num_embeddings} embeddings "
                f"but the env's vocabulary has {env.vocab_size} tokens"
            )
        if self.autocast_dtype is not None and self.device.type == "cpu":
            use_fp32_attention(model)  # CPU bf16 attention kernels are slower than fp32 ones (agents.precision)
        lora = None
        if self.config.lora_r > 0:
            from peft import LoraConfig

            lora = LoraConfig(
                r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=0.0,
                target_modules=list(self.config.lora_target_modules), bias="none",
            )
        # The sampler never emits pad (agents.rollout), so the training forward scores without it too.
        self.ac = ActorCritic(model, env.vocab_size, lora=lora, pad_token_id=env.pad_token_id)
        # Policy, reference and value head move together (in place: the model given is moved too),
        # before the broadcast (NCCL sends GPU tensors) and before Adam is built on the parameters.
        self.ac.to(self.device)
        dist.broadcast_module(self.ac)  # every rank starts from rank 0's weights, as DDP does
        self.ac.policy.config.use_cache = False
        self.sampler = CachedSampler(self.ac.policy, temperature=self.config.temperature, value_head=self.ac.value_head,
                                     autocast_dtype=self.autocast_dtype, frozen_weights=self.ac.frozen_weights)
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
        self.stopped_at_kl: float | None = None  # the rollout KL that ended the run under ``kl_stop``
        self.rolled_back = False  # whether ``kl_rollback`` returned the policy to the one before the last update
        self._before_update: dict[str, torch.Tensor] | None = None  # trainable weights before the last update
        self.run_dir = Path(run_dir) if run_dir else None
        self.logger = MetricsLogger(run_dir, enabled=self.rank == 0)
        # Optional prompt schedule (e.g. ``agents.aids.CurriculumScheduler``), called before each rollout
        # as ``prompt_sampler(n, progress, rng) -> n prompt indices``; None lets the env draw uniformly.
        self.prompt_sampler: Callable[[int, float, np.random.Generator], np.ndarray] | None = None

    @classmethod
    def default_config(cls) -> OnPolicyConfig:
        """The config an agent built without one uses (each algorithm returns its own config class)."""
        return OnPolicyConfig()

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
        while self.iteration < iterations and self.stopped_at_kl is None:
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
        """One iteration: a rollout, the experience built from it, the update, the KL controller.

        Under ``kl_stop``, the first rollout whose KL reaches the stop is measured and logged but not
        trained on (its row has ``updated`` 0); every later call does the same.
        """
        t0 = time.perf_counter()
        seed = None if self.env_seeded else self.config.seed + 1000 * self.rank
        self.env_seeded = True
        batch = self.sampler.rollout(self.env, seed=seed, generator=self.sample_gen, options=self._rollout_options())
        t_rollout = time.perf_counter() - t0
        exp = self._make_experience(batch)
        # The per-sequence summed KL, averaged over all ranks' episodes: what the controller and the stop see.
        mean_kl = dist.all_reduce_mean(exp.kl.sum(1).mean()).item()
        t1 = time.perf_counter()
        if self.stopped_at_kl is None and self.config.kl_stop is not None and mean_kl >= self.config.kl_stop:
            # The KL budget is spent. This rollout measured the *current* policy over it, so that
            # policy is the one to keep: training on the rollout would carry it further past the
            # budget (one update can add 2 nats late in a run). The stop is kept in the checkpoint,
            # so a resumed run stops here too; ``learn`` ends the loop on it.
            self.stopped_at_kl = mean_kl
            if (self.config.kl_rollback is not None and mean_kl > self.config.kl_rollback
                    and self._before_update is not None):
                # The last update jumped past the budget: keep the policy before it instead.
                params = dict(self.ac.named_parameters())
                with torch.no_grad():
                    for name, saved in self._before_update.items():
                        params[name].copy_(saved)
                self.rolled_back = True
        if self.stopped_at_kl is None:
            if self.config.kl_rollback is not None:
                self._before_update = {n: p.detach().clone() for n, p in self.ac.named_parameters() if p.requires_grad}
            stats = self.update(exp)
            self.kl_ctl.update(mean_kl, len(batch) * dist.world_size())
        else:
            stats = {}  # measured, not trained on: the row has no update statistics
        t_update = time.perf_counter() - t1
        self.iteration += 1
        metrics = self._metrics(exp, stats, mean_kl, t_rollout, t_update, time.perf_counter() - t0)
        metrics["updated"] = float(self.stopped_at_kl is None)
        metrics["rolled_back"] = float(self.rolled_back)
        self.logger.log(self.iteration, metrics)
        if self.config.sample_every and self.iteration % self.config.sample_every == 0:
            self.logger.log_samples(self.iteration, self.sample_table(exp))
        return metrics

    def update(self, exp: Experience) -> dict[str, float]:
        """The optimisation phase of one iteration (what :meth:`step` calls after the rollout and the
        experience): epochs of minibatch updates on ``exp``; returns the update's statistics."""
        return self._update(exp)

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
    # Experience: old log-probs and values, reference log-probs, scores, KL; then the algorithm's targets
    # ------------------------------------------------------------------------------------------
    def _process_scores(self, batch: RolloutBatch) -> torch.Tensor:
        """(B,) task scores after the missing-EOS penalty, running-std scaling and clipping."""
        scores = batch.scores.clone()
        if self.config.missing_eos_penalty is not None:  # a response that never stopped pays the penalty
            scores = torch.where(batch.stopped, scores, scores - self.config.missing_eos_penalty)
        if self.config.score_scaling:  # divide by the running std of the scores, mean kept
            # The reward wrappers' running moments (tokengym.rewards.postprocess), kept as a JSON-able
            # [count, mean, m2] list in the checkpoints.
            moments = RunningMoments(self.score_moments)
            # Only sampled rollouts feed the moments: augmented episodes (agents.aids) are edits of the
            # best outputs, and their scores would shift the statistics towards high scores.
            if not getattr(batch, "augmented", False):
                # Every rank's scores, so that all ranks of a torchrun run scale by the same moments.
                moments.update(dist.all_gather_cat(scores).double().cpu().numpy())
                self.score_moments = moments.state
            std = math.sqrt(moments.var) if moments.count > 1 else 1.0
            scores = scores / max(std, 1e-8)
        if self.config.score_clip is not None:
            scores = scores.clamp(-self.config.score_clip, self.config.score_clip)
        return scores

    @torch.inference_mode()
    def _make_experience(self, batch: RolloutBatch) -> Experience:
        """The rollout's old log-probs/values, reference log-probs, scores and per-token KL, and the
        algorithm's rewards, advantages and returns (:meth:`_targets`). ``batch`` may be on any device:
        it is moved to the agent's first, and every tensor of the experience is on ``self.device``."""
        cfg = self.config
        batch = batch.to(self.device)
        ids, attn, P = batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1]
        mask, mbs = batch.response_mask, cfg.micro_batch_size
        # Old log-probs and values come from a forward equal to the training forward (eval mode, fp32
        # log-softmax, the same temperature, no logits processors). The sampler ran exactly that forward,
        # one cached column at a time, so its numbers are reused (one forward of the batch saved);
        # batches it did not sample (augmented ones) or recompute_old_logprobs re-run it.
        # Half-precision cached and uncached forwards differ by ~1e-2 (fp32: ~1e-6), which would
        # show up as ratio noise and clipping, so low-precision policies always recompute: half-precision
        # weights, and fp32 weights under bf16 autocast alike.
        full_precision = next(self.ac.policy.parameters()).dtype in (torch.float32, torch.float64)
        full_precision = full_precision and self.autocast_dtype is None
        if batch.values is not None and not cfg.recompute_old_logprobs and full_precision:
            old_logp, old_values = where_mask(batch.sample_logprobs, mask), where_mask(batch.values, mask)
        else:
            old_logp, old_values = [], []
            for s in range(0, len(batch), mbs):
                lp, _, v = self.ac.evaluate(ids[s : s + mbs], attn[s : s + mbs], P, cfg.temperature, with_entropy=None,
                                            autocast_dtype=self.autocast_dtype)
                old_logp.append(lp)
                old_values.append(v)
            old_logp = where_mask(torch.cat(old_logp), mask)
            old_values = where_mask(torch.cat(old_values), mask)
        ref_logp = where_mask(torch.cat([
            self.ac.reference_logprobs(ids[s : s + mbs], attn[s : s + mbs], P, cfg.temperature, self.autocast_dtype)
            for s in range(0, len(batch), mbs)
        ]), mask)
        scores = self._process_scores(batch)
        kl = kl_per_token(old_logp, ref_logp, cfg.kl_estimator, mask=mask)
        exp = Experience(batch, old_logp, ref_logp, old_values, None, None, None, kl, scores)
        exp.rewards, exp.advantages, exp.returns = self._targets(exp)
        return exp

    @abstractmethod
    def _targets(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rewards, advantages, returns) of the rollout, each (B, T) and 0 off ``exp.batch.response_mask``.

        ``rewards`` are what the agent logs as ``rlhf_reward`` (summed per sequence); ``advantages``
        and ``returns`` are what its ``_loss`` uses. Runs under ``torch.inference_mode``.
        """

    def _penalised_rewards(self, exp: Experience) -> torch.Tensor:
        """(B, T) per-token rewards ``-beta * KL_t`` plus the score on the last real token
        (:func:`~tokengym.agents.kl.kl_penalised_rewards`), whitened with ``whiten_rewards``."""
        mask = exp.batch.response_mask
        rewards = kl_penalised_rewards(exp.kl, exp.scores, mask, self.kl_ctl.beta)
        if self.config.whiten_rewards:  # unit variance, mean kept; moments of every rank's tokens
            rewards = masked_whiten(rewards, mask, shift_mean=False, distributed=True)
        return rewards

    # ------------------------------------------------------------------------------------------
    # The training forward and the loss
    # ------------------------------------------------------------------------------------------
    def _evaluate(self, exp: Experience, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training forward of micro-batch ``idx`` (b episodes): (b, T) ``logp``, ``token_entropy``,
        ``values``, ``log_ratio``, ``ratio`` (vs the rollout's old log-probs), ``mask``, and (b, T, V) ``logits``."""
        P = exp.batch.prompt_ids.shape[1]
        ids, attn, m = exp.batch.input_ids[idx], exp.batch.attention_mask[idx], exp.batch.response_mask[idx]
        logits, hidden = response_forward(self.ac.policy, ids, attn, P, self.config.temperature, want_hidden=True,
                                          autocast_dtype=self.autocast_dtype,
                                          weights=self.ac.frozen_weights(self.ac.policy, self.autocast_dtype))
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

    @abstractmethod
    def _loss(self, exp: Experience, idx: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of micro-batch ``idx`` and what ``_update`` logs.

        The loss is a token *sum* divided by ``n_tokens`` (its minibatch's token count), so the
        micro-batches of a minibatch add up to the token mean. The dict holds the scalars ``pg_loss``,
        ``vf_loss``, ``entropy`` (plus any scalar term the algorithm adds: each is logged under its
        key) and the tensors of :meth:`_evaluate`.
        """

    # ------------------------------------------------------------------------------------------
    # Metrics and samples
    # ------------------------------------------------------------------------------------------
    def _metrics(self, exp: Experience, stats: dict[str, float], mean_kl: float, t_roll: float, t_upd: float, t_all: float) -> dict[str, float]:
        """One row of the metrics log: the rollout's statistics (means over every rank), the update's, timings."""
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
            **dist.all_reduce_mean_dict(stats),  # means over the ranks of a torchrun run
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
        """The first ``n`` episodes as rows of prompt, response, score, summed KL (and gold score)."""
        b = exp.batch
        return [
            {"prompt": b.prompt_texts[i], "response": b.response_texts[i], "score": float(b.scores[i]),
             "kl": float(exp.kl[i].sum()), **({"gold": float(b.gold_scores[i])} if b.gold_scores is not None else {})}
            for i in range(min(n, len(b)))
        ]

    # ------------------------------------------------------------------------------------------
    # Checkpoints (agents.checkpoint writes and reads them)
    # ------------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> None:
        """Write a checkpoint directory atomically (see :mod:`tokengym.agents.checkpoint`)."""
        checkpoint.save_checkpoint(self, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore everything ``save_checkpoint`` wrote; refuses a checkpoint of another model."""
        checkpoint.load_checkpoint(self, path)

    def save_pretrained(self, path: str | Path) -> None:
        """Save the trained policy (LoRA merged) so ``transformers`` loads it with ``from_pretrained``."""
        checkpoint.save_pretrained(self, path)

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


__all__ = ["Experience", "NonFiniteError", "OnPolicyAgent"]
