"""Pluggable rewards: a registry of built-in and third-party rewards, combinators and shaping.

Quick use::

    from tokengym import rewards
    r = rewards.resolve_reward("vader")            # or ("length", {"target": 30}), a function, an object
    scores = r(prompts, responses, metadata=meta)  # float32, shape (batch,)
    rewards.list()                                 # every registered name
"""

from __future__ import annotations

from .base import CallableReward, CheckedReward, RewardError, RewardFunction, batched
from .combinators import Clipped, MissingEOSPenalty, RunningNormalized, WeightedSum
from .reference import BleuReward, ChrfReward, RougeReward
from .registry import DEFAULT_REWARD, ENTRY_POINT_GROUP, list_rewards, make, register, resolve_reward
from .rules import EosReward, KeywordReward, LengthReward, TokenShareReward
from .sentiment import VaderReward
from .commongen import CommonGenReward, CommonGenStrictReward
from .tasks import ArithmeticExactReward, ArithmeticReward, LengthControlExactReward, LengthControlReward


def _learned(**kwargs) -> RewardFunction:
    from .learned import LearnedReward  # torch/transformers load only when a learned reward is made

    return LearnedReward(**kwargs)


for _name, _factory in {
    "vader": VaderReward,
    "learned": _learned,
    "bleu": BleuReward,
    "chrf": ChrfReward,
    "rouge": RougeReward,
    "length": LengthReward,
    "keyword": KeywordReward,
    "eos": EosReward,
    "token_share": TokenShareReward,
    "arithmetic": ArithmeticReward,
    "arithmetic_exact": ArithmeticExactReward,
    "commongen": CommonGenReward,
    "commongen_strict": CommonGenStrictReward,
    "length_control": LengthControlReward,
    "length_control_exact": LengthControlExactReward,
}.items():
    register(_name, _factory)


def __getattr__(name: str):
    # Lazy exports: keep `import tokengym.rewards` free of torch/transformers/gymnasium imports.
    if name in ("LearnedReward", "new_reward_model", "save_reward_model", "save_normalisation", "load_normalisation"):
        from . import learned

        return getattr(learned, name)
    if name == "PotentialShapingWrapper":
        from .shaping import PotentialShapingWrapper

        return PotentialShapingWrapper
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArithmeticExactReward", "ArithmeticReward", "CommonGenReward", "CommonGenStrictReward",
    "LengthControlExactReward", "LengthControlReward",
    "BleuReward", "CallableReward", "CheckedReward", "ChrfReward", "Clipped", "DEFAULT_REWARD", "ENTRY_POINT_GROUP",
    "EosReward", "KeywordReward", "LearnedReward", "LengthReward", "MissingEOSPenalty", "PotentialShapingWrapper",
    "RewardError", "RewardFunction", "RunningNormalized", "TokenShareReward", "VaderReward", "WeightedSum",
    "batched", "list_rewards", "load_normalisation", "make", "new_reward_model", "register", "resolve_reward",
    "save_normalisation", "save_reward_model",
]

# tokengym.rewards.list() per the issue; defined last so nothing above sees the builtin shadowed.
list = list_rewards  # noqa: A001
