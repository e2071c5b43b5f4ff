"""Exceptions raised by the feedback package. Each names the problem so a caller can tell them apart.

All derive from :class:`FeedbackError` (a ``ValueError``): bad input is rejected before anything is
written, so catching one of these means the store is exactly as it was before the call.
"""

from __future__ import annotations


class FeedbackError(ValueError):
    """Base class: a feedback operation was refused and nothing was changed."""


class UnknownPromptError(FeedbackError):
    """A prompt id that is not in the store."""


class UnknownCandidateError(FeedbackError):
    """A candidate id that is not in the store (or belongs to a different prompt)."""


class UnknownAnnotatorError(FeedbackError):
    """An annotator id or name that is not in the store."""


class ScoreOutOfRangeError(FeedbackError):
    """A scalar score outside the store's configured range (e.g. 1-7)."""


class InvalidRankingError(FeedbackError):
    """A ranking with duplicates, too few candidates, or candidates of different prompts."""


class InvalidComparisonError(FeedbackError):
    """A pairwise comparison of a candidate with itself, or with an unknown outcome."""


class NotAFeedbackStoreError(FeedbackError):
    """The file is not a tokengym feedback store: corrupted, or another application's SQLite file."""


class SchemaVersionError(FeedbackError):
    """The store was written by a newer tokengym (higher schema version) than this one understands."""


class ImportFormatError(FeedbackError):
    """A JSONL import line that cannot be understood."""


class DuplicateJudgementError(FeedbackError):
    """An annotator judged the same task again with a different answer without asking to revise it.

    One judgement per (annotator, task): repeating the same answer is accepted and changes nothing;
    a different answer must be an explicit revision (``revise=True``), which replaces the earlier
    judgement and keeps it as history.
    """


class ReadOnlyStoreError(FeedbackError):
    """The store file (or its folder) cannot be written, and the operation needs to write."""
