"""Gymnasium registration of the tokengym environment ids (done by ``import tokengym``)."""

from __future__ import annotations

import gymnasium as gym

TASKS = {
    # The generic env: every argument (model, reward, prompts, max_new_tokens, ...) is a kwarg.
    "tokengym/TextGeneration-v0": {},
    # Continue a neutral movie-review opening; paid by sentiment. VADER is both the optimised reward
    # and the gold judge by default; pass reward="learned" (path=...) to optimise a learned proxy.
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
