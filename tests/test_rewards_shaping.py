"""PotentialShapingWrapper: per-token potential-based shaping telescopes to -Phi(s0)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from tokengym.rewards import PotentialShapingWrapper, RewardError, resolve_reward

WORDS = ["the", "cat", "sat", "<eos>"]


class FakeTextEnv(gym.Env):
    """Appends WORDS[action]; action 3 ends the episode (EOS), else truncation after ``max_len`` tokens."""

    def __init__(self, max_len: int = 5, final_reward: float = 2.0):
        self.action_space = spaces.Discrete(len(WORDS))
        self.observation_space = spaces.Discrete(1)
        self.max_len, self.final_reward = max_len, final_reward
        self.prompt_text, self._words = "Prompt:", []

    @property
    def response_text(self) -> str:
        return " ".join(self._words)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._words = []
        return 0, {}

    def step(self, action):
        terminated = action == 3
        if not terminated:
            self._words.append(WORDS[action])
        truncated = not terminated and len(self._words) >= self.max_len
        reward = self.final_reward if (terminated or truncated) else 0.0
        return 0, reward, terminated, truncated, {}


def phi(prompt: str, response: str) -> float:
    return 1.5 + len(prompt) * 0.1 + 0.3 * response.split().count("cat")


def run(env, actions):
    env.reset(seed=0)
    total, shaping = 0.0, []
    for a in actions:
        _, r, term, trunc, info = env.step(a)
        total += r
        shaping.append(info["shaping"])
        if term or trunc:
            break
    return total, shaping


@pytest.mark.parametrize("actions", [[1, 1, 0, 3], [3], [1, 2, 1, 1, 1], [0, 0, 0, 0, 0]])
def test_shaped_return_is_unshaped_minus_initial_potential(actions):
    env = PotentialShapingWrapper(FakeTextEnv(), phi, gamma=1.0)
    total, shaping = run(env, actions)
    assert total == pytest.approx(2.0 - phi("Prompt:", ""))
    assert len(shaping) == len(actions)


def test_per_step_terms_and_discount():
    env = PotentialShapingWrapper(FakeTextEnv(), phi, gamma=0.9)
    _, shaping = run(env, [1, 0, 3])
    p0, p1 = phi("Prompt:", ""), phi("Prompt:", "cat")
    np.testing.assert_allclose(shaping, [0.9 * p1 - p0, 0.9 * p1 - p1, 0.0 - p1])


def test_a_reward_function_can_be_the_potential():
    env = PotentialShapingWrapper(FakeTextEnv(), resolve_reward(("token_share", {"target": "cat"})))
    _, shaping = run(env, [1, 0, 3])
    np.testing.assert_allclose(shaping, [1.0, -0.5, -0.5])


def test_bad_potential_names_the_state():
    env = PotentialShapingWrapper(FakeTextEnv(), lambda p, r: float("nan") if r else 0.0)
    env.reset()
    with pytest.raises(RewardError, match="'potential'.*'cat'.*non-finite"):
        env.step(1)


def test_with_the_real_text_env():
    import tokengym  # noqa: F401  (registers the env ids)
    from tokengym.models import load_tokenizer

    tok = load_tokenizer("smollm2")
    env = gym.make("tokengym/TextGeneration-v0", tokenizer=tok, reward="token_share", max_new_tokens=6)
    env = PotentialShapingWrapper(env, lambda p, r: 0.25 * len(r.split()), gamma=1.0)
    _, info = env.reset(seed=0)
    ids = tok(" the the cat", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    total, unshaped = 0.0, None
    for a in ids:
        _, r, term, trunc, info = env.step(a)
        total += r
        if term or trunc:
            unshaped = info["score"]
            break
    assert unshaped == pytest.approx(2 / 3, abs=1e-6)
    assert total == pytest.approx(unshaped - 0.0)  # Phi(s0) = 0: empty response
