"""Potential-based per-token reward shaping (Ng, Harada & Russell 1999).

``r'_t = r_t + gamma * Phi(s_{t+1}) - Phi(s_t)`` with ``Phi(s) = potential(prompt_text, response_text_so_far)``
and ``Phi = 0`` at terminal states. The shaping terms telescope, so an episode's shaped return (gamma=1)
equals its unshaped return minus ``Phi(s_0)``, a constant of the prompt: the optimal policy is unchanged,
only credit arrives earlier. ``gamma`` must equal the agent's discount for that guarantee.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import gymnasium as gym

from .base import RewardError, RewardFunction

Potential = Callable[[str, str], float]


def _as_potential(potential: Potential | RewardFunction) -> Potential:
    if isinstance(potential, RewardFunction):  # any reward can serve as a potential on partial responses
        return lambda prompt, response: float(potential([prompt], [response])[0])
    if not callable(potential):
        raise TypeError(f"potential must be f(prompt_text, response_text) -> float or a RewardFunction, got {potential!r}")
    return potential


class PotentialShapingWrapper(gym.Wrapper):
    """Adds ``gamma * Phi(s') - Phi(s)`` to every step's reward; ``info["shaping"]`` holds the added term.

    The wrapped env must expose ``env.unwrapped.prompt_text`` and ``env.unwrapped.response_text``.
    """

    def __init__(self, env: gym.Env, potential: Potential | RewardFunction, gamma: float = 1.0) -> None:
        super().__init__(env)
        self.potential = _as_potential(potential)
        self.gamma = float(gamma)
        self._phi = 0.0

    def _current_phi(self) -> float:
        u = self.env.unwrapped
        prompt, response = u.prompt_text, u.response_text
        try:
            phi = float(self.potential(prompt, response))
        except Exception as e:
            raise RewardError("potential", f"{type(e).__name__}: {e}", index=0, prompt=prompt, response=response) from e
        if not math.isfinite(phi):
            raise RewardError("potential", f"returned a non-finite value {phi!r}", index=0, prompt=prompt, response=response)
        return phi

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._phi = self._current_phi()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        # Phi(terminal) = 0 makes the shaping telescope to -Phi(s_0) whatever the episode length.
        phi_next = 0.0 if (terminated or truncated) else self._current_phi()
        shaping = self.gamma * phi_next - self._phi
        self._phi = phi_next
        info = dict(info, shaping=shaping)
        return obs, float(reward) + shaping, terminated, truncated, info
