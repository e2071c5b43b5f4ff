"""Score post-processing, in one place: the missing-EOS penalty, clipping and running-std scaling.

Two callers use these functions: the reward wrappers of :mod:`tokengym.rewards.combinators`
(``MissingEOSPenalty``, ``Clipped``, ``RunningNormalized``: the processing becomes part of the reward,
so every algorithm and every env client sees it) and the agents' score settings
(``missing_eos_penalty``, ``score_clip``, ``score_scaling`` of ``OnPolicyConfig``: the processing
happens inside the agent, after the env paid the raw score, and its statistics are saved in the
agent's checkpoints and shared across the ranks of a distributed run). Their semantics are the same
because the arithmetic is the same code.
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def missing_eos_adjust(scores: np.ndarray, stopped: np.ndarray, penalty: float,
                       mode: Literal["replace", "add"] = "add") -> np.ndarray:
    """Scores of responses that never stopped: set to ``penalty`` (``"replace"``) or ``+ penalty`` (``"add"``)."""
    scores, stopped = np.asarray(scores, np.float64), np.asarray(stopped, bool)
    if mode == "replace":
        return np.where(stopped, scores, penalty)
    if mode == "add":
        return scores + np.where(stopped, 0.0, penalty)
    raise ValueError(f"mode must be 'replace' or 'add', got {mode!r}")


def clip_scores(scores: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.asarray(scores, np.float64), low, high)


class RunningMoments:
    """Count, mean and sum of squared deviations of every score seen (Chan et al.'s exact, stable
    combination of batch summaries). ``state`` is the JSON-able ``[count, mean, m2]``."""

    def __init__(self, state: list[float] | None = None) -> None:
        self.count, self.mean, self.m2 = (float(v) for v in (state or (0.0, 0.0, 0.0)))

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).ravel()
        if not x.size:
            return
        n_b, mean_b = float(x.size), float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta**2 * self.count * n_b / n
        self.count = n

    @property
    def var(self) -> float:
        """Population variance; 1 before any score (so the first scaling is the identity)."""
        return self.m2 / self.count if self.count else 1.0

    @property
    def state(self) -> list[float]:
        return [self.count, self.mean, self.m2]
