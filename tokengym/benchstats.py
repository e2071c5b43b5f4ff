"""Statistics for algorithm comparisons: few seeds, so intervals and robust means, and KL-matched scores.

* :func:`bootstrap_ci`: a percentile bootstrap 95 % confidence interval of the mean over seeds
  (seeded, so a table is reproducible). With 3 seeds it is wide, and it should be: it says how little
  three runs pin down.
* :func:`iqm`: the interquartile mean (the mean of the middle 50 %, with the boundary runs weighted
  by the fraction inside, as Agarwal et al. 2021 recommend over the mean or the median for few runs).
* :func:`score_at_kl`: RLHF trades reward for divergence, so algorithms are compared at *matched
  KL*: each run's held-out (KL, gold) points are interpolated at a KL level, never extrapolated (a run
  that never reached the level contributes nothing there).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 10000,
                 seed: int = 0) -> tuple[float, float]:
    """(low, high) of the percentile bootstrap interval of the mean; (v, v) for a single value."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(1)
    tail = (1 - confidence) / 2
    return (float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)))


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the values between the 25th and 75th percentiles, counting a
    value that straddles a boundary by the share of it inside (so it is defined for any count)."""
    x = np.sort(np.asarray([v for v in values if v is not None and math.isfinite(v)], float))
    n = x.size
    if n == 0:
        return math.nan
    lo, hi = 0.25 * n, 0.75 * n
    # value i covers [i, i + 1) of the n "mass units"; weight = overlap with [lo, hi)
    w = np.clip(np.minimum(np.arange(1, n + 1), hi) - np.maximum(np.arange(n), lo), 0.0, None)
    return float((w * x).sum() / w.sum())


def score_at_kl(kls: Sequence[float], scores: Sequence[float], level: float) -> float | None:
    """The score at KL ``level`` on the piecewise-linear curve through a run's (KL, score) points,
    taken in training order; None when the run never reached the level (no extrapolation).

    KL is not monotone along a run (it can dip), so the first crossing of ``level`` is used: the
    score the algorithm had when it had first spent that much divergence.
    """
    k, s = np.asarray(kls, float), np.asarray(scores, float)
    if k.size == 0:
        return None
    if k[0] >= level:
        return float(s[0]) if math.isclose(k[0], level) or k.size == 1 else None
    for i in range(1, k.size):
        if k[i] >= level:
            t = (level - k[i - 1]) / (k[i] - k[i - 1])
            return float(s[i - 1] + t * (s[i] - s[i - 1]))
    return None


def summary(values: Sequence[float], seed: int = 0) -> dict[str, float]:
    """Mean, 95 % bootstrap interval, IQM and count of the finite ``values``."""
    x = [v for v in values if v is not None and math.isfinite(v)]
    low, high = bootstrap_ci(x, seed=seed)
    return {"mean": float(np.mean(x)) if x else math.nan, "ci_low": low, "ci_high": high, "iqm": iqm(x), "n": len(x)}


def fmt(s: dict[str, float], digits: int = 3) -> str:
    """``mean [low, high]`` (or ``–`` without values)."""
    if not s["n"]:
        return "–"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"
