"""Combining and post-processing rewards: weighted sums, clipping, running normalisation, EOS penalty."""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np

from .base import RewardFunction, require_metadata
from .postprocess import RunningMoments, clip_scores, missing_eos_adjust


def _checked(spec: Any) -> RewardFunction:
    from .registry import resolve_reward  # local: registry imports the built-ins, which import us

    return resolve_reward(spec)


class WeightedSum(RewardFunction):
    """``sum_k w_k * reward_k``; each reward may be any spec :func:`resolve_reward` accepts."""

    def __init__(self, terms: Sequence[tuple[Any, float]]) -> None:
        if not terms:
            raise ValueError("WeightedSum needs at least one (reward, weight) term")
        self.terms = [(_checked(r), float(w)) for r, w in terms]
        self.name = " + ".join(f"{w:g}*{r.name}" for r, w in self.terms)

    def _terms(self) -> list[tuple[RewardFunction, float]]:
        return list(self.terms)

    def parts(self, prompts, responses, *, references=None, metadata=None) -> dict[str, np.ndarray]:
        """Each term's unweighted scores, keyed by reward name (for logging)."""
        return {r.name: r(prompts, responses, references=references, metadata=metadata) for r, _ in self.terms}

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        total = np.zeros(len(prompts), dtype=np.float64)
        for reward, weight in self.terms:
            total += weight * reward(prompts, responses, references=references, metadata=metadata)
        return total


class Clipped(RewardFunction):
    """The wrapped reward clipped to ``[low, high]``."""

    def __init__(self, reward: Any, low: float = -np.inf, high: float = np.inf) -> None:
        if low > high:
            raise ValueError(f"Clipped: low={low} > high={high}")
        self.reward = _checked(reward)
        self.low, self.high = float(low), float(high)
        self.name = f"clip({self.reward.name}, {low:g}, {high:g})"

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        return clip_scores(self.reward(prompts, responses, references=references, metadata=metadata), self.low, self.high)


class RunningNormalized(RewardFunction):
    """``(r - mean) / sqrt(var + eps)`` with mean/var tracked over every score seen (Welford/Chan update).

    Statistics are updated with each batch *before* it is normalised (as SB3's VecNormalize does).
    Set ``update=False`` to freeze them (evaluation). ``state_dict()`` / ``load_state_dict()`` checkpoint them.
    ``clip`` optionally bounds the normalised score to ``[-clip, clip]``.
    """

    def __init__(self, reward: Any, eps: float = 1e-8, clip: float | None = None, center: bool = True, update: bool = True) -> None:
        self.reward = _checked(reward)
        self.eps, self.clip, self.center, self.update = eps, clip, center, update
        self.moments = RunningMoments()
        self.name = f"normalized({self.reward.name})"

    # The statistics, as attributes for callers that read them.
    count = property(lambda self: int(self.moments.count))
    mean = property(lambda self: self.moments.mean)
    var = property(lambda self: self.moments.var)

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        x = self.reward(prompts, responses, references=references, metadata=metadata).astype(np.float64)
        if self.update and x.size:
            self.moments.update(x)
        out = ((x - self.mean) if self.center else x) / np.sqrt(self.var + self.eps)
        return np.clip(out, -self.clip, self.clip) if self.clip is not None else out

    def state_dict(self) -> dict:
        return {"count": int(self.moments.count), "mean": self.moments.mean, "m2": self.moments.m2}

    def load_state_dict(self, state: dict) -> None:
        self.moments = RunningMoments([state["count"], state["mean"], state["m2"]])


class MissingEOSPenalty(RewardFunction):
    """Penalise responses that did not end with EOS (``metadata["stopped"]`` is False).

    ``mode="replace"`` (default) sets their score to ``penalty``, so rambling until the length limit
    can never pay; ``mode="add"`` adds ``penalty`` to their score instead.
    """

    def __init__(self, reward: Any, penalty: float = -1.0, mode: Literal["replace", "add"] = "replace") -> None:
        if mode not in ("replace", "add"):
            raise ValueError(f"MissingEOSPenalty: mode must be 'replace' or 'add', got {mode!r}")
        self.reward = _checked(reward)
        self.penalty, self.mode = float(penalty), mode
        self.name = f"eos_penalty({self.reward.name})"

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        stopped = np.array(require_metadata(self.name, "stopped", metadata, prompts, responses), dtype=bool)
        scores = self.reward(prompts, responses, references=references, metadata=metadata).astype(np.float64)
        return missing_eos_adjust(scores, stopped, self.penalty, self.mode)
