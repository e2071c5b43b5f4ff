"""``vader``: the published rule-based VADER sentiment score of the response (a cheap gold judge)."""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

from .base import RewardFunction


@functools.cache
def _analyzer():
    # Building the analyzer parses the lexicon files (~10 ms); one shared instance serves every reward.
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


class VaderReward(RewardFunction):
    """VADER ``polarity_scores(response)[field]``; ``compound`` (default) lies in [-1, 1].

    The prompt is ignored: the judge rates only what the policy wrote.
    """

    name = "vader"

    def __init__(self, field: Literal["compound", "pos", "neg", "neu"] = "compound") -> None:
        if field not in ("compound", "pos", "neg", "neu"):
            raise ValueError(f"reward 'vader': field must be compound, pos, neg or neu, got {field!r}")
        self.field = field

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        analyzer = _analyzer()
        return np.array([analyzer.polarity_scores(r)[self.field] for r in responses], dtype=np.float64)
