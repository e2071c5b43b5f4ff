"""``tokengym rlhf``'s loop with tiny models: each round labels the *current* policy's samples,
trains a fresh reward model on them, and runs PPO from the previous round's policy against it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tokengym.feedback import rounds as rounds_mod
from tokengym.feedback.default_rm import RewardModelRecipe
from tokengym.feedback.rm_training import tiny_reward_model


def test_two_rounds_chain_policies_and_reward_models(tmp_path: Path, smol_tiny_llama, monkeypatch):
    monkeypatch.setenv("TOKENGYM_CACHE", str(tmp_path / "cache"))
    tok, lm = smol_tiny_llama
    lm.save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    recipe = RewardModelRecipe(policy=str(tmp_path / "policy"), max_prompts=8, temperatures=(1.0, 1.3),
                               max_new_tokens=4, rm_batch_size=8, heldout_fraction=0.25)
    built = []
    import tokengym.feedback.default_rm as default_rm  # run_rounds imports the builder from here

    original = default_rm.build_reward_model

    def recording_build(out, recipe, **kw):
        built.append((Path(out), recipe.policy, recipe.seed))
        return original(out, recipe, **kw)

    monkeypatch.setattr(default_rm, "build_reward_model", recording_build)
    overrides = {"max_new_tokens": 4, "eval_episodes": 4, "threads": 1,
                 "ppo": {"batch_size": 4, "minibatch_size": 4, "micro_batch_size": 4, "ppo_epochs": 1, "lora_r": 0,
                         "learning_rate": 1e-3, "checkpoint_every": 0, "sample_every": 0}}
    out = tmp_path / "rlhf"
    summaries = rounds_mod.run_rounds(2, str(out), seed=0, iterations=1, progress=False, log=lambda m: None,
                                      recipe=recipe, reward_model=tiny_reward_model, train_overrides=overrides)
    assert [s["round"] for s in summaries] == [0, 1]
    # Round 0 trains the recipe's policy on the cached reward model; round 1 starts from round 0's policy
    # and trains against a reward model built from *that* policy's samples, with a new sampling seed.
    assert summaries[0]["policy_before"] == str(tmp_path / "policy")
    assert summaries[1]["policy_before"] == str(out / "round0" / "final_model")
    assert [b[1:] for b in built] == [(str(tmp_path / "policy"), 0), (str(out / "round0" / "final_model"), 1)]
    assert summaries[1]["reward_model"] == str(out / "reward_model_round1") != summaries[0]["reward_model"]
    for s in summaries:  # NaN when every held-out gold pair ties (a random tiny policy's 4 tokens)
        assert math.isnan(s["rm_heldout_gold_accuracy"]) or 0.0 <= s["rm_heldout_gold_accuracy"] <= 1.0
    saved = json.loads((out / "rounds.json").read_text())
    assert [(s["round"], s["reward_model"], s["gold_after"]) for s in saved] == \
        [(s["round"], s["reward_model"], s["gold_after"]) for s in summaries]
    # The KL to the original model: round 0's reference is the original; round 1's is not, and
    # evaluate_against, given round 1's own reference, reproduces its run's final evaluation exactly.
    assert summaries[0]["kl_to_original"] == summaries[0]["kl_to_round_reference"]
    assert summaries[1]["kl_to_original"] != summaries[1]["kl_to_round_reference"]
    from tokengym.train import make_train_config

    cfg1 = make_train_config({**overrides, "model": str(out / "round0" / "final_model"), "output_dir": str(out / "x"),
                              "reward": {"name": "learned", "path": str(out / "reward_model_round1")}, "iterations": 1},
                             seed=1)
    again = rounds_mod.evaluate_against(cfg1, str(out / "round1" / "final_model"), str(out / "round0" / "final_model"))
    assert again["kl_to_reference"] == pytest.approx(summaries[1]["kl_to_round_reference"], abs=1e-5)
    assert again["gold_score"] == pytest.approx(summaries[1]["gold_after"], abs=1e-6)
    report1 = json.loads((out / "round1" / "report.json").read_text())
    assert report1["config"]["reward"] == {"name": "learned", "path": str(out / "reward_model_round1")}
    assert report1["config"]["model"] == str(out / "round0" / "final_model")


def test_rounds_are_refused_before_work(tmp_path: Path):
    with pytest.raises(ValueError, match="--rounds must be >= 1"):
        rounds_mod.run_rounds(0, str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()
