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
    # The task suite, each with fixed train/test splits (scripts/make_task_prompts.py), a paid reward
    # and a stricter or exact gold judge. Base scores: SmolLM2-135M-Instruct sampled at temperature
    # 1 on the first 64 test prompts, as the trainer's evaluation does. max_prompt_tokens holds the
    # longest prompt of each set as the env feeds it with SmolLM2's tokenizer (with the chat
    # template's system turn where one is used), so no prompt loses its beginning.
    #
    # Verifiable arithmetic: sums, differences and small products of 1-2 digit numbers, as
    # equations or one-step word problems, with the exact answer in each item. The prompts are
    # few-shot completions read without the chat template (asked as a chat question the model is
    # right ~2% of the time, too rare for RL; see the script). Paid 1 for a right first number plus
    # 0.1 when the first line is a bare number; the gold judge is plain correctness.
    # Base accuracy (gold) 0.22 and 0.17 on two sampling seeds (reward 0.28, 0.23): about 0.30 on
    # the equations, best on times tables and one-digit sums, near 0 on two-digit sums and
    # differences and on the word problems, which stay as the hard end of the curriculum. 8 new
    # tokens: only the first number is scored, so a longer budget would add cost, not signal.
    "tokengym/Arithmetic-v0": {
        "prompts": "arithmetic",
        "reward": "arithmetic",
        "gold_reward": "arithmetic_exact",
        "max_new_tokens": 8,
        "max_prompt_tokens": 64,
    },
    # Constrained generation: one sentence using 3-4 given concepts, asked through the chat
    # template. Paid concept coverage (inflections count) times a soft fluency score, so a bare list
    # of the concepts earns ~0.02; the judge multiplies coverage by a binary, stricter
    # well-formedness check. Base: reward 0.34, gold 0.20 (32 new tokens).
    "tokengym/CommonGen-v0": {
        "prompts": "commongen",
        "reward": "commongen",
        "gold_reward": "commongen_strict",
        "chat_template": True,
        "max_new_tokens": 32,
        "max_prompt_tokens": 56,
    },
    # Length and format control through the chat template: "in exactly N words" (N = 3..15) or
    # "exactly K bullet points" (K = 2..4). Paid 1 - |n - N| / N clipped at 0; the judge pays only an exact match (bullets:
    # and no other lines). Base: reward 0.35, gold 0.08 (48 new tokens): the model writes about the
    # topic at its own length (exact on 1 of 47 word counts, 4 of 17 bullet counts).
    "tokengym/LengthControl-v0": {
        "prompts": "length_control",
        "reward": "length_control",
        "gold_reward": "length_control_exact",
        "chat_template": True,
        "max_new_tokens": 48,
        "max_prompt_tokens": 48,
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
