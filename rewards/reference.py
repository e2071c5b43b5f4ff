"""Reference-based metrics: ``bleu`` and ``chrf`` (sacrebleu), ``rouge`` (Google's rouge_score), all in [0, 1].

Each sample is scored against its own references (``references[i]``: a string or a list of strings);
a sample without references raises a :class:`RewardError` naming it.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from .base import Reference, RewardError, RewardFunction, sample_error


class ReferenceReward(RewardFunction):
    """Base class: per-sample ``score(response, refs) -> float`` with the references checked."""

    def score(self, response: str, refs: list[str]) -> float:
        raise NotImplementedError

    def _refs(self, i: int, references, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        ref: Reference = references[i]
        refs = [ref] if isinstance(ref, str) else ref
        if not refs or not all(isinstance(r, str) for r in refs):
            raise sample_error(self.name, f"needs reference text(s), got {ref!r}", i, prompts, responses)
        return list(refs)

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        if references is None:
            raise RewardError(self.name, "needs references (a 'reference' field per prompt) but none were given")
        return np.array(
            [self.score(r, self._refs(i, references, prompts, responses)) for i, r in enumerate(responses)],
            dtype=np.float64,
        )


class BleuReward(ReferenceReward):
    """Sentence BLEU (sacrebleu, effective order, default smoothing) / 100."""

    name = "bleu"

    def __init__(self, **bleu_kwargs) -> None:
        from sacrebleu.metrics import BLEU

        self.metric = BLEU(effective_order=True, **bleu_kwargs)

    def score(self, response: str, refs: list[str]) -> float:
        # sacrebleu can return 100.00000000000004 for an exact match: clip the float noise.
        return min(1.0, self.metric.sentence_score(response, refs).score / 100.0)


class ChrfReward(ReferenceReward):
    """Sentence chrF (sacrebleu; ``word_order=2`` gives chrF++) / 100."""

    name = "chrf"

    def __init__(self, **chrf_kwargs) -> None:
        from sacrebleu.metrics import CHRF

        self.metric = CHRF(**chrf_kwargs)

    def score(self, response: str, refs: list[str]) -> float:
        return min(1.0, self.metric.sentence_score(response, refs).score / 100.0)


class RougeReward(ReferenceReward):
    """ROUGE (``rougeL`` F-measure by default), the best over the sample's references."""

    name = "rouge"

    def __init__(
        self,
        rouge_type: str = "rougeL",
        measure: Literal["fmeasure", "precision", "recall"] = "fmeasure",
        use_stemmer: bool = True,
    ) -> None:
        from rouge_score.rouge_scorer import RougeScorer

        if measure not in ("fmeasure", "precision", "recall"):
            raise ValueError(f"reward 'rouge': measure must be fmeasure, precision or recall, got {measure!r}")
        self.rouge_type = rouge_type
        self.measure = measure
        self.scorer = RougeScorer([rouge_type], use_stemmer=use_stemmer)

    def score(self, response: str, refs: list[str]) -> float:
        return max(getattr(self.scorer.score(ref, response)[self.rouge_type], self.measure) for ref in refs)
