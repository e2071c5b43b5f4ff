"""Gymnasium registration of the tokengym environment ids (done by ``import tokengym``)."""

from __future__ import annotations

import gymnasium as gym

TASKS = {
    # The generic env: every argument (model, reward, prompts, max_new_tokens, ...) is a kwarg.
    "tokengym/TextGeneration-v0": {},
    # The main task: continue a neutral movie-review opening so that it reads positively. The agent is
    # paid by a reward model learned from simulated human comparisons ("sentiment_rm", built on first
    # use and cached); VADER, the simulated annotators' own utility, is the gold judge and is never paid.
    "tokengym/PositiveReview-v1": {
        "prompts": "movie_reviews",
        "reward": "sentiment_rm",
        "gold_reward": "vader",
        "max_new_tokens": 24,
        "max_prompt_tokens": 32,
    },
    # The same task paid directly by the gold judge (VADER is both reward and judge, so reward
    # over-optimisation cannot show): for reward-agnostic benchmarks and the version-0 results.
    "tokengym/PositiveReview-v0": {
        "prompts": "movie_reviews",
        "reward": "vader",
        "gold_reward": "vader",
        "max_new_tokens": 24,
        "max_prompt_tokens": 32,
    },
}


def register_envs() -> None:
    for env_id, kwargs in TASKS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="tokengym.envs.text_env:TextGenerationEnv",
            vector_entry_point="tokengym.envs.vector:BatchedTextEnv",
            kwargs=dict(kwargs),
        )
