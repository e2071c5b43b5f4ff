"""Token-level RL agents for language models."""

from .advantages import gae, masked_mean, masked_whiten
from .kl import AdaptiveKLController, FixedKLController, kl_per_token
from .policy import ActorCritic, ValueHead
from .ppo import NonFiniteError, PPOAgent, PPOConfig
from .rollout import CachedSampler, RolloutBatch

__all__ = [
    "ActorCritic", "AdaptiveKLController", "CachedSampler", "FixedKLController", "NonFiniteError",
    "PPOAgent", "PPOConfig", "RolloutBatch", "ValueHead", "gae", "kl_per_token", "masked_mean", "masked_whiten",
]
