"""Swap the reward of one environment id: by registry name, by plain function, by object.

    python examples/swap_rewards.py            # SmolLM2-135M-Instruct writes the responses
    python examples/swap_rewards.py --tiny     # a tiny random model: seconds, gibberish text

The environment only pays the reward; a policy picks the tokens. Here the policy samples one token
per step from a causal LM, so every reward below scores the same kind of response.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import tokengym  # noqa: F401  (registers the tokengym/... env ids)
from tokengym import rewards
from tokengym.models import load_causal_lm, make_tiny_causal_lm


class ExclamationReward(rewards.RewardFunction):
    """A reward object: enthusiasm measured in exclamation marks, capped at 1."""

    name = "exclamations"

    def __call__(self, prompts, responses, *, references=None, metadata=None) -> np.ndarray:
        return np.array([min(1.0, r.count("!") / 3) for r in responses])


def play(env: gym.Env, model, seed: int) -> dict:
    """One episode: sample each token from ``model`` given the real tokens of the observation."""
    obs, _ = env.reset(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.as_tensor(obs["input_ids"][obs["attention_mask"] == 1])[None]
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, -1]
        action = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        obs, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="use a tiny random policy instead of SmolLM2")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    tokenizer, model = make_tiny_causal_lm() if args.tiny else load_causal_lm("smollm2")
    print("registered rewards:", ", ".join(rewards.list()))

    specs = {
        "by name": "vader",
        "by name + kwargs": ("length", {"target": 10}),
        "by function": lambda prompt, response: float(len(set(response.split()))),  # distinct words
        "by object": ExclamationReward(),
        "by composition": rewards.make("vader") * 0.5 + rewards.make("length", target=10),
    }
    for how, reward in specs.items():
        env = gym.make("tokengym/PositiveReview-v0", tokenizer=tokenizer, reward=reward, max_new_tokens=args.max_new_tokens)
        info = play(env, model, seed=0)
        print(f"{how:>17}: reward={info['reward_name']!r:<28} score={info['score']:+.3f}  response={info['response_text']!r:.70}")
        env.close()


if __name__ == "__main__":
    main()
