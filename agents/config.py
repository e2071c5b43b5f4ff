"""The configuration every on-policy agent shares, its validation, and the field checks.

The defaults are the main job's (``tokengym train``: SmolLM2-135M-Instruct with LoRA, the learned
sentiment reward, 12 iterations on 2 CPU cores), with the reason for each value next to it. An
algorithm's config (:class:`~tokengym.agents.PPOConfig`, ``ReinforceConfig``, ``GRPOConfig`` ...)
adds the fields only it uses and re-declares the defaults it needs to be different (one gradient
step per rollout, no critic ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from tokengym.config import from_dict
from tokengym.hardware import resolve_device, resolve_dtype


@dataclass
class OnPolicyConfig:
    """Every knob shared by the token-level agents (PPO, REINFORCE, A2C, RLOO, GRPO)."""

    seed: int = 0
    # A batch of 16 sizes the main job for a few minutes on 2 CPU cores; a batch of 32 with 2 epochs
    # (lr 3e-4) or 4 epochs (lr 2e-4) moved the KL to under 1 nat in 7 and 4 iterations, too slow for
    # the 12-iteration run's KL budget of 6 nats.
    batch_size: int = 16  # episodes per rollout (= num_envs)
    minibatch_size: int = 8  # episodes per optimiser step: 2 minibatches per epoch
    micro_batch_size: int = 8  # episodes per forward/backward inside a minibatch (gradient accumulation)
    ppo_epochs: int = 4  # passes over each rollout, reshuffled each time (4: the usual PPO setting)
    # 3e-4 for LoRA r=16: at 1e-3 the first epochs clip 40 % of the tokens and the ratio variance
    # reaches ~17; at 5e-4 the KL to the reference passes 10 nats by iteration 11. At 3e-4 the KL grows
    # ~0.4 nats per iteration, so 12 iterations end near the budget of 6.
    learning_rate: float = 3e-4
    # The rate above was chosen as a constant; True falls linearly to 0 over the run (learn(iterations)).
    anneal_lr: bool = False
    adam_eps: float = 1e-5  # the value PPO implementations for LMs use (larger than torch's 1e-8)
    max_grad_norm: float = 1.0
    temperature: float = 1.0  # divides the logits when sampling and when scoring, so the first ratio is 1
    gamma: float = 1.0  # no discount inside a response: the score comes at its end
    lam: float = 0.95
    # The value head shares the LM's trunk, so its gradients reach the LM: kept small.
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    # beta starts at 0.1 and adapts towards the KL target (PPO's main job: 2) with a horizon of 32
    # episodes: with the main job's batch of 32 the adaptive controller may change beta by up to
    # +-0.2 * 32/32 = 20 % per iteration, so it can halve or double beta within 4 iterations; a horizon
    # of thousands of episodes (the usual setting for runs of 100k episodes) cannot move in a run of
    # 256-384. The KL starts at 0 (below target), so beta first decays; a low target makes the
    # controller push back while the KL is still well inside the budget.
    kl_coef: float = 0.1  # initial beta
    adaptive_kl: bool = True  # beta follows the KL (Ziegler et al., 2019); False keeps it fixed
    kl_target: float = 3.0
    kl_horizon: int = 32
    # The KL budget as a stopping rule: the run ends at the first rollout whose KL (per response,
    # summed over its tokens, mean over the batch; the number the controller sees) reaches it, and
    # that rollout is not trained on, so the policy kept is the one the rollout measured.
    # Seeds drift away from the reference at different speeds, and the drift accelerates late in a
    # run, so a fixed iteration count lands the final KL anywhere in a wide range; stopping on the KL
    # itself spends the same budget on every seed, with ``iterations`` as the cap. None = no stop.
    kl_stop: float | None = None
    # The stop keeps the policy its crossing rollout measured, and late in a run one update can move
    # the KL from under the stop to past the budget (3.7 -> 6.1 nats seen). With kl_rollback set, a
    # crossing rollout that measured more than it returns the policy to the one before the last update,
    # whose own rollout was under the stop, so the KL kept is bounded by the stop, not by the last jump.
    # It costs a copy of the trainable weights per iteration (LoRA's are small). None = keep the last.
    kl_rollback: float | None = None
    kl_estimator: Literal["k1", "k3"] = "k1"  # per-token KL in the reward: k1 unbiased, k3 never negative
    whiten_rewards: bool = False  # unit variance of the per-token rewards, mean kept
    whiten_advantages: bool = True  # zero mean, unit variance over the batch's response tokens
    missing_eos_penalty: float | None = None  # subtracted from the score of a response that never stopped
    score_clip: float | None = None  # scores clipped to [-score_clip, score_clip]
    score_scaling: bool = False  # divide scores by their running std (the mean is kept)
    target_kl: float | None = None  # early-stop the epochs when an epoch's approx-KL exceeds it
    ratio_threshold: float | None = 10.0  # skip a minibatch whose mean ratio exceeds it (a blown-up step)
    max_nonfinite_updates: int = 3  # consecutive skipped minibatches before training stops
    # True spends one more forward over the batch for the old log-probs and values; False takes them
    # from the sampler, whose KV-cached steps are the same eval-mode fp32 forward (equal to ~1e-6).
    # Under bf16 autocast they are always recomputed: cached and full bf16 forwards differ by more.
    recompute_old_logprobs: bool = False
    # LoRA r=16: one set of base weights serves policy and reference, and backward skips the frozen
    # base's weight gradients (0 = full fine-tuning, the reference is then a frozen copy).
    lora_r: int = 16
    lora_alpha: int = 32  # scale alpha / r = 2
    lora_target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    sample_every: int = 2  # a table of samples every 2 iterations (3-6 in the main job, which stops at 7-12)
    # A checkpoint every 5 iterations (0 = only at the end): an interrupted 12-iteration run loses at
    # most 4 iterations, and a save (LoRA adapters, optimiser, random streams) is cheap next to one.
    checkpoint_every: int = 5
    # Where the model runs: "auto" is CUDA when torch sees a GPU, else the CPU; a device asked for by
    # name ("cpu", "cuda", "cuda:1") is used or refused, never replaced (tokengym.hardware).
    device: str = "auto"
    # Compute precision: "fp32", or "bf16" = autocast (the weights and Adam stay fp32, the matmuls of
    # every forward run in bf16, log-probs, ratios, advantages and KL in fp32). "auto" picks bf16 on a
    # GPU that supports it and on a CPU where it measured faster, since emulated bf16 is ~100x slower.
    dtype: str = "auto"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """A config from a mapping (a config file's section); unknown keys and wrong types name the key."""
        return from_dict(cls, data)

    def validate(self) -> None:
        """Refuse values the agent cannot run with, naming the field (before any model is loaded).

        The size fields are checked before the divisibility test so that ``minibatch_size=0`` says so
        instead of failing with a ZeroDivisionError, and ``ppo_epochs=0`` does not reach an update
        loop that never runs.
        """
        check_int(self, "seed", minimum=0)  # numpy's seed sequences refuse negative entropy
        # A GPU asked for on a machine without one is refused here, before any model is loaded.
        device = resolve_device(self.device, setting="device")
        if self.dtype != "auto":  # "auto" is always valid; resolving it may run a short benchmark, left to the agent
            resolve_dtype(self.dtype, device, setting="dtype")
        for name in ("batch_size", "minibatch_size", "micro_batch_size", "ppo_epochs", "max_nonfinite_updates"):
            check_int(self, name, minimum=1)
        for name in ("lora_r", "sample_every", "checkpoint_every"):
            check_int(self, name, minimum=0)
        check_int(self, "kl_horizon", minimum=1)
        if self.lora_r > 0:
            check_number(self, "lora_alpha", low=0, low_open=True)
        for name in ("learning_rate", "adam_eps", "max_grad_norm", "temperature"):
            check_number(self, name, low=0, low_open=True)
        for name in ("gamma", "lam"):
            check_number(self, name, low=0, high=1)
        for name in ("vf_coef", "kl_coef"):
            check_number(self, name, low=0)
        check_number(self, "ent_coef")
        check_number(self, "kl_target", low=0, low_open=True)
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}")
        if self.missing_eos_penalty is not None:
            check_number(self, "missing_eos_penalty")
        for name in ("score_clip", "target_kl", "kl_stop", "kl_rollback"):
            if getattr(self, name) is not None:
                check_number(self, name, low=0, low_open=True)
        if self.ratio_threshold is not None:  # the mean ratio starts at 1: a threshold <= 1 skips healthy steps
            check_number(self, "ratio_threshold", low=1, low_open=True)
        if self.batch_size % self.minibatch_size or self.minibatch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of minibatch_size ({self.minibatch_size}), "
                f"which must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.whiten_rewards and self.minibatch_size < 8:
            raise ValueError("whiten_rewards needs minibatch_size >= 8 (moments of fewer samples are noise)")


def whole_batch_defaults(cfg: OnPolicyConfig) -> None:
    """``minibatch_size=0`` means the whole batch (one gradient step per rollout); the micro-batch
    shrinks to fit it. Called by the configs whose default is one step per rollout, before validating."""
    if cfg.minibatch_size == 0:
        cfg.minibatch_size = cfg.batch_size
    cfg.micro_batch_size = min(cfg.micro_batch_size, cfg.minibatch_size)


def check_int(cfg: Any, name: str, minimum: int) -> None:
    """``getattr(cfg, name)`` must be an integer (not a bool) >= ``minimum``."""
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_number(
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


# The names the agents used before these helpers had a module of their own.
_check_int, _check_number = check_int, check_number

__all__ = ["OnPolicyConfig", "check_int", "check_number", "whole_batch_defaults"]
