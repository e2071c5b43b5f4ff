"""What a checkpoint must carry for a resume to continue the interrupted run: the non-finite streak,
the augmenter's random stream, and a check that the reference is the model the run started from
(a full fine-tuning checkpoint stores the trained policy, not the frozen reference)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tokengym.agents import AugmentationMixin, NonFiniteError, OutputAugmenter, PPOAgent, PPOConfig, with_aids
from tokengym.agents.policy import tensors_fingerprint
from tokengym.envs import BatchedTextEnv
from tokengym.models import make_tiny_causal_lm
from tokengym.testing import TOY_PROMPTS

pytestmark = pytest.mark.usefixtures("single_thread")

HUGE = 1e30  # finite in float32 but its square overflows: the value loss goes inf and the minibatch is skipped


def good_share(prompt: str, response: str) -> float:
    words = response.split()
    return sum(w == "good" for w in words) / max(len(words), 1)


def toy_env(tok, reward=good_share) -> BatchedTextEnv:
    return BatchedTextEnv(4, tokenizer=tok, reward=reward, prompts=TOY_PROMPTS, split=None, max_new_tokens=4,
                          max_prompt_tokens=4)


def model(tok, seed: int = 0):
    return make_tiny_causal_lm(tok, hidden=16, n_layers=1, n_heads=2, seed=seed)[1]


def cfg(**kw) -> PPOConfig:
    # Full fine-tuning, beta 0.05 and the slow adaptive controller these tests were written with (not the
    # main job's defaults: LoRA r=16, beta 0.1, KL target 3, horizon 32).
    base = dict(batch_size=4, minibatch_size=2, micro_batch_size=2, ppo_epochs=1, learning_rate=1e-2, anneal_lr=False,
                sample_every=0, lora_r=0, lora_alpha=16, kl_coef=0.05, kl_target=6.0, kl_horizon=10000,
                checkpoint_every=0)
    return PPOConfig(**{**base, **kw})


def test_the_nonfinite_streak_survives_a_resume(toy_tok, tmp_path) -> None:
    agent = PPOAgent(toy_env(toy_tok, reward=lambda p, r: HUGE), model(toy_tok), cfg())
    with pytest.warns(RuntimeWarning, match="skipped a minibatch"):
        agent.step()  # both minibatches skipped: a streak of 2 out of max_nonfinite_updates = 3
    assert agent.nonfinite_streak == 2
    agent.save_checkpoint(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "trainer_state.json").read_text())["nonfinite_streak"] == 2
    again = PPOAgent(toy_env(toy_tok, reward=lambda p, r: HUGE), model(toy_tok), cfg())
    again.load_checkpoint(tmp_path / "ck")
    assert again.nonfinite_streak == 2
    # The next bad minibatch is the 3rd in a row, as it would have been without the interruption.
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteError, match="3 consecutive minibatches"):
        again.step()


def test_the_augmenters_random_stream_survives_a_resume(toy_tok, tmp_path) -> None:
    Agent = with_aids(PPOAgent, AugmentationMixin)

    def make() -> PPOAgent:
        return Agent(toy_env(toy_tok), model(toy_tok), cfg(), augmenter=OutputAugmenter(top_fraction=0.5, n_variants=3, seed=7))

    agent = make()
    agent.learn(2, progress=False)
    fresh_state = OutputAugmenter(seed=7).rng.bit_generator.state
    assert agent.augmenter.rng.bit_generator.state != fresh_state  # it has drawn: the test is not vacuous
    agent.save_checkpoint(tmp_path / "ck")
    again = make()
    again.load_checkpoint(tmp_path / "ck")
    assert again.augmenter.rng.bit_generator.state == agent.augmenter.rng.bit_generator.state
    captured: list[list[str]] = []
    call = OutputAugmenter.__call__

    def spy(self, batch, env, group_size=1):
        out = call(self, batch, env, group_size)
        captured.append(out.response_texts)
        return out

    OutputAugmenter.__call__ = spy
    try:
        a, b = agent.step(), again.step()
    finally:
        OutputAugmenter.__call__ = call
    assert captured[0] == captured[1]  # the same edits as the uninterrupted run
    assert a["aug_score"] == b["aug_score"] and a["pg_loss"] == pytest.approx(b["pg_loss"], rel=1e-5, abs=1e-7)


def length_reward(prompt: str, response: str) -> float:
    return len(response.split()) / 4  # varies between episodes, so the policy gradient is not 0


def test_a_full_fine_tuning_resume_refuses_another_reference(toy_tok, tmp_path) -> None:
    agent = PPOAgent(toy_env(toy_tok, reward=length_reward), model(toy_tok), cfg())
    original = {k: v.clone() for k, v in agent.ac.policy.state_dict().items()}
    agent.learn(2, progress=False)
    assert any(not torch.equal(original[k], v) for k, v in agent.ac.policy.state_dict().items())  # it trained
    agent.save_checkpoint(tmp_path / "ck")
    state = json.loads((tmp_path / "ck" / "trainer_state.json").read_text())
    assert state["reference_fingerprint"] == agent.ac.reference_fingerprint()
    # The usual mistake: resuming from the trained policy, which would become the reference.
    trained = copy.deepcopy(agent.ac.policy)
    wrong = PPOAgent(toy_env(toy_tok), trained, cfg())
    before = {k: v.clone() for k, v in wrong.ac.policy.state_dict().items()}
    with pytest.raises(ValueError, match="another reference model.*original model the run started from"):
        wrong.load_checkpoint(tmp_path / "ck")
    assert wrong.iteration == 0 and all(torch.equal(before[k], v) for k, v in wrong.ac.policy.state_dict().items())
    # Another initialisation of the same architecture passes the shape checks but not this one.
    with pytest.raises(ValueError, match="another reference model"):
        PPOAgent(toy_env(toy_tok), model(toy_tok, seed=1), cfg()).load_checkpoint(tmp_path / "ck")
    # The original model resumes.
    right = PPOAgent(toy_env(toy_tok), model(toy_tok), cfg())
    right.load_checkpoint(tmp_path / "ck")
    assert right.iteration == 2


def test_a_lora_resume_refuses_other_base_weights(toy_tok, tmp_path) -> None:
    agent = PPOAgent(toy_env(toy_tok), model(toy_tok), cfg(lora_r=2))
    agent.step()
    agent.save_checkpoint(tmp_path / "ck")
    with pytest.raises(ValueError, match="another base weights under the LoRA adapters"):
        PPOAgent(toy_env(toy_tok), model(toy_tok, seed=1), cfg(lora_r=2)).load_checkpoint(tmp_path / "ck")
    again = PPOAgent(toy_env(toy_tok), model(toy_tok), cfg(lora_r=2))
    again.load_checkpoint(tmp_path / "ck")
    assert again.iteration == 1


def test_a_checkpoint_without_a_fingerprint_still_loads(toy_tok, tmp_path) -> None:
    """Checkpoints written before the fingerprint existed resume without the check."""
    agent = PPOAgent(toy_env(toy_tok), model(toy_tok), cfg())
    agent.step()
    agent.save_checkpoint(tmp_path / "ck")
    path = tmp_path / "ck" / "trainer_state.json"
    state = json.loads(path.read_text())
    for key in ("reference_fingerprint", "nonfinite_streak", "rng_extra"):
        del state[key]
    path.write_text(json.dumps(state))
    again = PPOAgent(toy_env(toy_tok), model(toy_tok, seed=1), cfg())
    again.load_checkpoint(tmp_path / "ck")
    assert again.iteration == 1 and again.nonfinite_streak == 0


def test_the_fingerprint_sees_one_changed_bit_and_nothing_else() -> None:
    torch.manual_seed(0)
    w = {"a": torch.randn(3, 4), "b": torch.arange(5), "h": torch.randn(2, dtype=torch.bfloat16)}
    fp = tensors_fingerprint(w.items())
    assert fp == tensors_fingerprint(reversed(list({k: v.clone() for k, v in w.items()}.items())))  # order, copies
    bumped = {**w, "a": w["a"].clone()}
    bumped["a"].view(torch.int32)[1, 2] ^= 1  # one bit of one float
    assert tensors_fingerprint(bumped.items()) != fp
    assert tensors_fingerprint({**w, "a": w["a"].reshape(4, 3)}.items()) != fp  # same bytes, another shape
    assert tensors_fingerprint({**w, "renamed": w.pop("a")}.items()) != fp


def test_kl_stop_ends_the_run_at_the_first_rollout_over_the_budget_and_a_resume_stays_stopped(toy_tok, tmp_path) -> None:
    budget = 1e-3  # tiny against what lr 1e-2 on a 1-layer model does within 12 iterations
    agent = PPOAgent(toy_env(toy_tok), model(toy_tok), cfg(kl_stop=budget))
    weights = lambda: tensors_fingerprint(agent.ac.policy.state_dict().items())  # noqa: E731
    seen = [weights()]
    rows = agent.learn(12, callback=lambda i, m: seen.append(weights()), progress=False)
    kls = [r["kl"] for r in rows]
    assert agent.stopped_at_kl is not None and 1 < agent.iteration < 12  # it stopped early: the test is not vacuous
    # The first rollout at or over the budget ends the run; every earlier one was under it.
    assert kls[-1] == agent.stopped_at_kl >= budget
    assert all(k < budget for k in kls[:-1])
    # That rollout is measured, not trained on: the policy kept is the one it measured, while every
    # earlier rollout did update the policy.
    assert [r["updated"] for r in rows] == [1.0] * (len(rows) - 1) + [0.0]
    assert seen[-1] == seen[-2] and all(a != b for a, b in zip(seen[:-2], seen[1:-1]))
    agent.save_checkpoint(tmp_path / "ck")
    again = PPOAgent(toy_env(toy_tok), model(toy_tok), cfg(kl_stop=budget))
    again.load_checkpoint(tmp_path / "ck")
    again.learn(12, progress=False)
    assert again.iteration == agent.iteration  # the resumed run does not train past the spent budget
    unstopped = PPOAgent(toy_env(toy_tok), model(toy_tok), cfg())
    unstopped.learn(len(kls) + 1, progress=False)
    assert unstopped.iteration == len(kls) + 1 and unstopped.stopped_at_kl is None


def test_kl_rollback_returns_the_policy_to_the_one_before_the_update_that_jumped_past_the_budget(toy_tok, tmp_path) -> None:
    budget = 1e-3
    agent = PPOAgent(toy_env(toy_tok), model(toy_tok), cfg(kl_stop=budget, kl_rollback=budget))
    weights = lambda: tensors_fingerprint(agent.ac.policy.state_dict().items())  # noqa: E731
    seen = [weights()]
    rows = agent.learn(12, callback=lambda i, m: seen.append(weights()), progress=False)
    assert agent.stopped_at_kl is not None and agent.stopped_at_kl > budget and 1 < agent.iteration < 12
    assert agent.rolled_back and rows[-1]["rolled_back"] == 1.0 and rows[-2]["rolled_back"] == 0.0
    # The policy kept is the one the previous (under-budget) rollout measured, not the last update's.
    assert seen[-1] == seen[-3] != seen[-2]
    agent.save_checkpoint(tmp_path / "ck")
    again = PPOAgent(toy_env(toy_tok), model(toy_tok), cfg(kl_stop=budget, kl_rollback=budget))
    again.load_checkpoint(tmp_path / "ck")
    assert again.rolled_back and weights() == tensors_fingerprint(again.ac.policy.state_dict().items())
    # A crossing under kl_rollback keeps the measured policy, as without it.
    kept = PPOAgent(toy_env(toy_tok), model(toy_tok), cfg(kl_stop=budget, kl_rollback=1e6))
    kept.learn(12, progress=False)
    assert kept.stopped_at_kl is not None and not kept.rolled_back
