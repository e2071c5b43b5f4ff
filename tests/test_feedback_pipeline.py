"""The RLHF loop with tiny models: rounds of candidates, labels, reward model and a PPO step."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tokengym.feedback.pipeline import run_rlhf_rounds
from tokengym.feedback.rm_training import RMConfig, tiny_reward_model
from tokengym.feedback.store import FeedbackStore
from tokengym.models import make_tiny_causal_lm


def length_judge(prompts, responses):
    return [float(len(r)) for r in responses]


def test_rounds_report_gold_and_call_the_ppo_step(tmp_path: Path) -> None:
    tok, policy = make_tiny_causal_lm(seed=0)
    store = FeedbackStore(tmp_path / "fb.sqlite")
    calls = []

    def ppo_step(model, tokenizer, reward_dir: Path, rnd: int):
        from tokengym.rewards import LearnedReward

        reward = LearnedReward(reward_dir, max_length=32)  # the folder the 'learned' reward loads
        calls.append((rnd, float(reward(["a"], ["b"])[0])))
        return model

    reports = run_rlhf_rounds(
        store, tok, policy, ["The film was", "My dinner was", "The weather is"], length_judge,
        ppo_step, tmp_path / "work", rounds=2, per_prompt=3, pairs_per_round=8, max_new_tokens=4,
        rm_config=RMConfig(epochs=1, lr=1e-3, batch_size=8, max_length=32, heldout_fraction=0.34),
        rm_model=tiny_reward_model, log=None,
    )
    assert [r.round for r in reports] == [0, 1, 2] and [r.n_labels for r in reports] == [8, 8, 0]
    assert [c[0] for c in calls] == [0, 1]
    assert {c.round for c in store.candidates()} == {0, 1, 2} and len(store.candidates()) == 27
    assert len(store.comparisons()) == 16
    assert all(r.rm_heldout_accuracy is not None for r in reports[:2])
    saved = json.loads((tmp_path / "work" / "rounds.json").read_text())
    assert [s["gold_mean"] for s in saved] == [r.gold_mean for r in reports]


def test_ppo_agent_step_closes_the_loop(tmp_path: Path) -> None:
    from tokengym.agents import PPOConfig
    from tokengym.feedback.pipeline import ppo_agent_step

    tok, policy = make_tiny_causal_lm(seed=1)
    before = [p.detach().clone() for p in policy.parameters()]
    prompts = ["The film was", "My dinner was"]
    step = ppo_agent_step(1, env_kwargs={"prompts": prompts, "split": None, "max_new_tokens": 4},
                          config=PPOConfig(batch_size=4, minibatch_size=4, micro_batch_size=4, ppo_epochs=1, lora_r=0,
                                            learning_rate=1e-5, checkpoint_every=0))
    with FeedbackStore(tmp_path / "fb.sqlite") as store:
        reports = run_rlhf_rounds(
            store, tok, policy, prompts, length_judge, step, tmp_path / "work", rounds=1, per_prompt=3,
            pairs_per_round=6, max_new_tokens=4, rm_model=tiny_reward_model, log=None,
            rm_config=RMConfig(epochs=1, lr=1e-3, batch_size=4, max_length=32, heldout_fraction=0.5),
        )
    assert [r.round for r in reports] == [0, 1]
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, policy.parameters()))  # PPO trained it
