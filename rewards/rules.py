"""Rule-based rewards: ``length``, ``keyword``, ``eos`` and the toy ``token_share``."""

from __future__ import annotations

import re
from typing import Literal, Sequence

import numpy as np

from .base import RewardFunction, require_metadata


class LengthReward(RewardFunction):
    """``-|length - target| / target``: 0 at the target length, -1 for an empty response, unbounded below.

    ``unit``: ``"words"`` (whitespace split), ``"chars"``, or ``"tokens"`` (``metadata["num_tokens"]``,
    the policy tokenizer's count as reported by the environment).
    """

    name = "length"

    def __init__(self, target: int = 20, unit: Literal["words", "tokens", "chars"] = "words") -> None:
        if target <= 0:
            raise ValueError(f"reward 'length': target must be positive, got {target}")
        if unit not in ("words", "tokens", "chars"):
            raise ValueError(f"reward 'length': unit must be words, tokens or chars, got {unit!r}")
        self.target = target
        self.unit = unit

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        if self.unit == "tokens":
            lengths = [float(n) for n in require_metadata(self.name, "num_tokens", metadata, prompts, responses)]
        elif self.unit == "words":
            lengths = [float(len(r.split())) for r in responses]
        else:
            lengths = [float(len(r)) for r in responses]
        return -np.abs(np.asarray(lengths) - self.target) / self.target


class KeywordReward(RewardFunction):
    """Rewards keywords (or regexes) in the response.

    ``mode``: ``"any"`` 1 if any keyword occurs else 0; ``"all"`` 1 if every one occurs; ``"fraction"``
    the share of keywords that occur; ``"count"`` the total number of occurrences.
    Plain keywords match whole words (``\\b`` boundaries) unless ``whole_word=False``; with
    ``regex=True`` the keywords are used as patterns unchanged.
    """

    name = "keyword"

    def __init__(
        self,
        keywords: str | Sequence[str] = ("great",),
        mode: Literal["any", "all", "fraction", "count"] = "any",
        regex: bool = False,
        case_sensitive: bool = False,
        whole_word: bool = True,
    ) -> None:
        kws = [keywords] if isinstance(keywords, str) else list(keywords)
        if not kws:
            raise ValueError("reward 'keyword': give at least one keyword")
        if mode not in ("any", "all", "fraction", "count"):
            raise ValueError(f"reward 'keyword': mode must be any, all, fraction or count, got {mode!r}")
        flags = 0 if case_sensitive else re.IGNORECASE
        if not regex:
            kws = [rf"\b{re.escape(k)}\b" if whole_word else re.escape(k) for k in kws]
        self.patterns = [re.compile(k, flags) for k in kws]
        self.mode = mode

    def _score(self, text: str) -> float:
        counts = [len(p.findall(text)) for p in self.patterns]
        hits = [c > 0 for c in counts]
        if self.mode == "any":
            return float(any(hits))
        if self.mode == "all":
            return float(all(hits))
        if self.mode == "fraction":
            return sum(hits) / len(hits)
        return float(sum(counts))

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        return np.array([self._score(r) for r in responses], dtype=np.float64)


class EosReward(RewardFunction):
    """``bonus`` when the episode ended with the EOS token (``metadata["stopped"]``), else ``penalty``."""

    name = "eos"

    def __init__(self, bonus: float = 1.0, penalty: float = -1.0) -> None:
        self.bonus = float(bonus)
        self.penalty = float(penalty)

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        stopped = require_metadata(self.name, "stopped", metadata, prompts, responses)
        return np.array([self.bonus if s else self.penalty for s in stopped], dtype=np.float64)


class TokenShareReward(RewardFunction):
    """Toy reward for tests: the share of the response equal to ``target``, in [0, 1].

    ``unit="words"``: fraction of whitespace-separated words equal to ``target``;
    ``unit="chars"``: fraction of characters equal to ``target`` (one character).
    An empty response scores 0. Easy to maximise, so a working PPO loop visibly learns it.
    """

    name = "token_share"

    def __init__(self, target: str = "the", unit: Literal["words", "chars"] = "words", case_sensitive: bool = False) -> None:
        if unit not in ("words", "chars"):
            raise ValueError(f"reward 'token_share': unit must be words or chars, got {unit!r}")
        if unit == "chars" and len(target) != 1:
            raise ValueError(f"reward 'token_share': with unit='chars' the target must be one character, got {target!r}")
        self.unit = unit
        self.case_sensitive = case_sensitive
        self.target = target if case_sensitive else target.lower()

    def _score(self, text: str) -> float:
        if not self.case_sensitive:
            text = text.lower()
        parts = text.split() if self.unit == "words" else list(text)
        return sum(p == self.target for p in parts) / len(parts) if parts else 0.0

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        return np.array([self._score(r) for r in responses], dtype=np.float64)
