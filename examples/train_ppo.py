"""RLHF from Python: make the env, pick a reward, make the PPO agent, learn, evaluate.

    python examples/train_ppo.py            # SmolLM2 on the movie-review task (~10 min on 2 cores)
    python examples/train_ppo.py --tiny     # a tiny random model, seconds
"""

import sys

import gymnasium as gym

import tokengym  # noqa: F401  (registers tokengym/* ids)
from tokengym.agents import PPOAgent, PPOConfig
from tokengym.agents.evaluation import evaluate_policy
from tokengym.models import load_causal_lm, make_tiny_causal_lm

tiny = "--tiny" in sys.argv
tokenizer, model = make_tiny_causal_lm() if tiny else load_causal_lm("smollm2")
config = PPOConfig(batch_size=16, minibatch_size=8, micro_batch_size=8, ppo_epochs=2, lora_r=0 if tiny else 16,
                   learning_rate=1e-3 if tiny else 2e-4, kl_coef=0.02)
make = lambda split: gym.make_vec(  # noqa: E731
    "tokengym/PositiveReview-v0", num_envs=16, vectorization_mode="vector_entry_point", split=split,
    tokenizer=tokenizer, reward="vader", gold_reward="vader", max_new_tokens=8 if tiny else 24,
)
train_env, test_env = make("train"), make("test")
agent = PPOAgent(train_env, model, config, run_dir="runs/example")
ref = lambda ids, attn, P: agent.ac.reference_logprobs(ids, attn, P, config.temperature)  # noqa: E731
before, _ = evaluate_policy(agent.ac.policy, ref, test_env, episodes=32)
agent.learn(iterations=3 if tiny else 10)
after, samples = evaluate_policy(agent.ac.policy, ref, test_env, episodes=32)
for key in ("gold_score", "proxy_score", "kl_to_reference", "distinct_2", "mean_length"):
    print(f"{key:<18} {before[key]:8.3f} -> {after[key]:8.3f}")
print("sample:", samples[0]["prompt"], "->", samples[0]["response"])
