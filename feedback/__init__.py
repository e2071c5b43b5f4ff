"""Human feedback: a SQLite feedback store, labellers (web page, terminal, simulated), agreement
statistics, reward-model training and the RLHF loop.

Modules: ``store`` (the store), ``candidates`` (generation with decoding strategies), ``annotators``
(labelling tasks), ``server`` + ``static/`` (web labeller), ``terminal`` (terminal labeller),
``simulate`` (simulated annotators), ``agreement``, ``losses`` + ``rm_training`` (reward model),
``pipeline`` (the generic loop), ``default_rm`` (the main task's reward model, built on first use),
``rounds`` (iterated RLHF on the main task), ``cli`` (the ``tokengym`` subcommands), ``errors``.

Heavy modules (torch, transformers) load only when used.
"""

from __future__ import annotations

from .errors import (
    DuplicateJudgementError,
    FeedbackError,
    ImportFormatError,
    InvalidComparisonError,
    InvalidRankingError,
    NotAFeedbackStoreError,
    ReadOnlyStoreError,
    SchemaVersionError,
    ScoreOutOfRangeError,
    UnknownAnnotatorError,
    UnknownCandidateError,
    UnknownPromptError,
)
from .store import FeedbackStore

_LAZY = {
    "CandidateGenerator": "candidates", "DecodingStrategy": "candidates", "parse_strategies": "candidates",
    "TaskQueue": "annotators", "LabelServer": "server", "TerminalLabeller": "terminal",
    "SimulatedAnnotator": "simulate", "LabelSimulator": "simulate", "make_annotators": "simulate",
    "agreement_report": "agreement", "RMConfig": "rm_training", "train_reward_model": "rm_training",
    "run_rlhf_rounds": "pipeline", "ppo_agent_step": "pipeline",
    "ensure_reward_model": "default_rm", "run_rounds": "rounds",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DuplicateJudgementError", "FeedbackError", "ReadOnlyStoreError", "FeedbackStore", "ImportFormatError", "InvalidComparisonError", "InvalidRankingError",
    "NotAFeedbackStoreError", "SchemaVersionError", "ScoreOutOfRangeError", "UnknownAnnotatorError",
    "UnknownCandidateError", "UnknownPromptError", *_LAZY,
]
