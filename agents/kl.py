"""KL penalty: per-token estimators, the KL-penalised per-token rewards, and the coefficient controllers."""

from __future__ import annotations

from typing import Literal

import torch

from .advantages import where_mask

KLEstimator = Literal["k1", "k3"]


def kl_per_token(
    logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k1", mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of the *sampled* tokens, shape (B, T).

    k1 = log pi - log pi_ref: unbiased, can be negative per sample (the classic RLHF penalty).
    k3 = (r - 1) - log r with r = pi_ref / pi: unbiased, never negative, lower variance (Schulman, 2020).

    With ``mask`` (B, T) the estimate is 0 off the mask, and the log-ratio is masked *before* k3's
    exponential: at a pad position a peaked policy can give log pi < -88, where exp(-log_ratio)
    overflows float32 to inf, and masking afterwards (inf * 0) would give NaN.
    """
    log_ratio = logp - ref_logp
    if mask is not None:
        log_ratio = where_mask(log_ratio, mask)
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def kl_penalised_rewards(kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards of RLHF (Ziegler et al., 2019): ``r_t = -beta * KL_t``, plus the task score on
    the last real token of each response. (B, T) from ``kl`` (B, T), ``scores`` (B,) and ``mask`` (B, T).

    The score goes on index ``length - 1`` whatever the padding (an off-by-one here is a known bug of
    other implementations); 0 off the mask, so an episode without a token (augmentation padding) gets
    no score.
    """
    rewards = -beta * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(rewards), device=rewards.device), last] += scores
    return where_mask(rewards, mask)


class FixedKLController:
    """A constant beta."""

    def __init__(self, beta: float) -> None:
        self.beta = float(beta)

    def update(self, kl: float, n_episodes: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019): beta <- beta * (1 + clip(KL/target - 1, -0.2, 0.2) * n / horizon).

    ``kl`` is the per-sequence summed KL averaged over the batch (all-reduced across ranks by the
    caller), ``n`` the number of episodes in the batch.
    """

    def __init__(self, beta: float, target: float, horizon: int) -> None:
        super().__init__(beta)
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.target, self.horizon = float(target), int(horizon)

    def update(self, kl: float, n_episodes: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_episodes / self.horizon
