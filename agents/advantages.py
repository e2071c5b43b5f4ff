"""Advantage estimation (GAE) and masked statistics: means, variances, whitening over the response tokens."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def where_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` on the mask, exactly 0 off it, even where ``x`` is infinite or NaN there (``x * mask``
    would give NaN for ``-inf * 0``, e.g. the log-prob of a token the model rules out at a pad position)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance over masked entries (the unbiased one misbehaves on tiny minibatches)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def global_masked_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance of ``x`` over ``mask`` *across all ranks* (two all-reduces, the
    same two-pass formula as :func:`masked_var`); the local moments without a process group."""
    from tokengym import distributed as dist

    sums = dist.all_reduce_sum(torch.stack([(x * mask).sum(), mask.sum()]).double(), torch.float64)
    count = sums[1].clamp(min=1)
    mean = sums[0] / count
    sq = dist.all_reduce_sum((((x.double() - mean) ** 2) * mask).sum(), torch.float64)
    return mean.to(x.dtype), (sq / count).to(x.dtype)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, distributed: bool = False
) -> torch.Tensor:
    """Normalise ``x`` to unit variance over ``mask``; ``shift_mean=False`` keeps the mean (rewards).

    ``distributed=True`` uses the moments of every rank's entries together (a ``torchrun`` run), so N ranks
    whiten exactly as one process holding all their episodes would; identical to the local moments
    without a process group."""
    from tokengym import distributed as dist

    if distributed and dist.world_size() > 1:
        mean, var = global_masked_moments(x, mask)
    else:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded token sequences.

    rewards, values, mask: (B, T); mask is 1 on real response tokens. Positions after the last real
    token neither contribute nor bootstrap: the episode ends there (V after the end is 0).
    Returns (advantages, returns), each (B, T), zero where mask is 0.
    """
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # `last` carries the advantage of t+1; it is 0 beyond the end because masked steps reset it.
        last = (delta + gamma * lam * last) * m
        advantages[:, t] = last
    returns = (advantages + values) * mask
    return advantages, returns
