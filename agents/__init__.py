"""Token-level RL agents for language models.

``base.OnPolicyAgent`` / ``config.OnPolicyConfig`` hold what every agent shares; ``ppo``, ``pg``
(REINFORCE, A2C) and ``group`` (RLOO, GRPO) each add one algorithm's targets and loss.
"""

from .advantages import gae, masked_mean, masked_whiten
from .aids import AugmentationMixin, CurriculumScheduler, DistillationMixin, OutputAugmenter, with_aids
from .base import Experience, OnPolicyAgent
from .config import OnPolicyConfig
from .group import GroupAgent, GroupConfig, GRPOAgent, GRPOConfig, RLOOAgent, RLOOConfig
from .kl import AdaptiveKLController, FixedKLController, kl_penalised_rewards, kl_per_token
from .pg import A2CAgent, A2CConfig, ReinforceAgent, ReinforceConfig
from .policy import ActorCritic, ValueHead
from .ppo import PPOAgent, PPOConfig
from .rollout import CachedSampler, RolloutBatch
from .update import NonFiniteError


def __getattr__(name: str):
    # stable-baselines3 interop loads SB3 only when asked for.
    if name in ("LMActorCriticPolicy", "KLPenaltyWrapper"):
        from . import sb3

        return getattr(sb3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "A2CAgent", "A2CConfig", "ActorCritic", "AdaptiveKLController", "AugmentationMixin", "CachedSampler",
    "CurriculumScheduler", "DistillationMixin", "Experience", "FixedKLController", "GRPOAgent", "GRPOConfig",
    "GroupAgent", "GroupConfig", "KLPenaltyWrapper", "LMActorCriticPolicy", "NonFiniteError", "OnPolicyAgent",
    "OnPolicyConfig", "OutputAugmenter", "PPOAgent", "PPOConfig", "RLOOAgent", "RLOOConfig", "ReinforceAgent",
    "ReinforceConfig", "RolloutBatch", "ValueHead", "gae", "kl_penalised_rewards", "kl_per_token", "masked_mean",
    "masked_whiten", "with_aids",
]
