"""tokengym: RLHF for language models as Gymnasium environments.

Tokens are actions; a pluggable (learned) reward model pays a terminal reward; a token-level PPO
agent with a KL penalty against a frozen reference model trains the policy.

``import tokengym`` registers the environments (``tokengym/TextGeneration-v0``, ...) with Gymnasium.
"""

from . import _offline  # noqa: F401  (must run before transformers is imported)

__version__ = "0.1.0"

from tokengym.envs.registration import register_envs as _register_envs  # noqa: E402

_register_envs()
