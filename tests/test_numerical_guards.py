"""Issue 9 numerical guards: a non-finite loss / gradient skips the optimiser step with a RuntimeWarning
and is counted (``nonfinite_total``); a streak of them stops training with a ``NonFiniteError`` that
names the quantity.

What reaches the guard, found by trying: a reward of finite but huge magnitude (>= ~7e18 here)
passes the reward validation (it is a finite float32) and overflows the value loss to inf -> "loss".
NaN value-head weights -> NaN values -> "loss". A finite loss with an infinite gradient is injected
with a gradient hook -> "gradient norm". NaN policy weights after the rollout -> "policy log-probs"
(NaN weights *before* a rollout cannot reach it: sampling refuses NaN probabilities first).
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from tokengym.agents import NonFiniteError, PPOAgent, PPOConfig
from tokengym.envs import BatchedTextEnv
from tokengym.models import make_tiny_causal_lm
from tokengym.testing import TOY_PROMPTS

pytestmark = pytest.mark.usefixtures("single_thread")

HUGE = 1e30  # finite in float32, so it passes CheckedReward, but its square overflows


def make_agent(tok, reward, run_dir=None, **kw) -> PPOAgent:
    _, model = make_tiny_causal_lm(tok, hidden=16, n_layers=1, n_heads=2, seed=0)
    env = BatchedTextEnv(4, tokenizer=tok, reward=reward, prompts=TOY_PROMPTS, split=None, max_new_tokens=4,
                         max_prompt_tokens=4)
    # Full fine-tuning, beta 0.05 and the slow adaptive controller these tests were written with (not the
    # main job's defaults: LoRA r=16, beta 0.1, KL target 3, horizon 32).
    cfg = dict(batch_size=4, minibatch_size=2, micro_batch_size=2, ppo_epochs=1, learning_rate=1e-2, anneal_lr=False,
               sample_every=0, lora_r=0, kl_coef=0.05, kl_target=6.0, kl_horizon=10000, checkpoint_every=0)
    cfg.update(kw)
    return PPOAgent(env, model, PPOConfig(**cfg), run_dir=run_dir)


def weights(agent: PPOAgent) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in agent.ac.named_parameters()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_nonfinite_loss_skips_the_update_warns_and_is_counted(toy_tok, tmp_path):
    calls = {"n": 0}

    def reward(prompt: str, response: str) -> float:  # huge on the first rollout only (4 episodes)
        calls["n"] += 1
        return HUGE if calls["n"] <= 4 else float(len(response)) / 10

    agent = make_agent(toy_tok, reward, run_dir=str(tmp_path / "run"))
    before = weights(agent)
    with pytest.warns(RuntimeWarning, match="skipped a minibatch at iteration 0 because of a bad loss") as record:
        m1 = agent.step()
    assert sum("skipped a minibatch" in str(w.message) for w in record) == 2  # both minibatches
    assert m1["nonfinite_total"] == 2.0 and m1["skipped_minibatches"] == 2.0
    assert math.isnan(m1["clipfrac"]) and math.isnan(m1["vf_clipfrac"])  # PPO's columns exist without a step
    assert same(before, weights(agent))  # skipped: no optimiser step touched the weights
    assert agent.optimizer.state == {} or all(not s for s in agent.optimizer.state.values())

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a healthy iteration warns nothing
        m2 = agent.step()
    assert m2["nonfinite_total"] == 2.0 and m2["skipped_minibatches"] == 0.0
    assert agent.nonfinite_streak == 0  # a good minibatch resets the streak
    assert not same(before, weights(agent))
    assert all(math.isfinite(v) for v in (m2["pg_loss"], m2["vf_loss"], m2["clipfrac"], m2["vf_clipfrac"]))
    assert list(m1) == list(m2)  # the same columns in the same order, skipped or not
    assert all(torch.isfinite(p).all() for p in agent.ac.parameters())

    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_total"] for r in logged] == [2.0, 2.0]
    agent.save_checkpoint(tmp_path / "ckpt")  # the count survives a resume
    again = make_agent(toy_tok, reward)
    again.load_checkpoint(tmp_path / "ckpt")
    assert again.nonfinite_total == 2


def _huge_reward(agent):
    """Nothing to inject: the reward itself returns HUGE (its row in the table below)."""


def _nan_value_head(agent):
    with torch.no_grad():
        agent.ac.value_head.linear.weight.fill_(float("nan"))


def _infinite_gradient(agent):
    # A finite loss whose gradient overflows: scale one parameter's gradient to inf on the way back.
    agent.ac.value_head.linear.weight.register_hook(lambda g: g * float("inf"))


def _nan_policy_after_rollout(agent):
    real = agent._make_experience

    def make_experience(batch):
        exp = real(batch)  # old log-probs computed with the healthy policy
        with torch.no_grad():
            agent.ac.policy.get_output_embeddings().weight.fill_(float("nan"))
        return exp

    agent._make_experience = make_experience


@pytest.mark.parametrize(
    "inject, reward_value, quantity",
    [
        pytest.param(_huge_reward, HUGE, "loss", id="huge-reward"),
        pytest.param(_nan_value_head, 0.5, "loss", id="nan-value-head"),
        pytest.param(_infinite_gradient, 0.5, "gradient norm", id="inf-gradient"),
        pytest.param(_nan_policy_after_rollout, 0.5, "policy log-probs", id="nan-policy"),
    ],
)
def test_a_streak_of_nonfinite_updates_raises_naming_the_quantity(toy_tok, inject, reward_value, quantity):
    # 2 epochs x 2 minibatches: the 3rd consecutive skip (max_nonfinite_updates=3) stops training.
    agent = make_agent(toy_tok, lambda p, r: reward_value, ppo_epochs=2)
    inject(agent)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(NonFiniteError, match=rf"3 consecutive minibatches skipped at iteration 0: the {quantity} kept"):
            agent.step()
    skipped = [str(w.message) for w in record if "skipped a minibatch" in str(w.message)]
    assert len(skipped) == 3 and all(f"bad {quantity}" in s for s in skipped), skipped  # the 3rd warns, then raises
    assert agent.nonfinite_total == 3


def test_nan_policy_weights_fail_the_rollout_with_a_named_error(toy_tok):
    """A policy whose weights went NaN is named as such by the sampler (not torch.multinomial's message)."""
    import torch

    from tokengym.agents import CachedSampler
    from tokengym.envs import BatchedTextEnv
    from tokengym.models import make_tiny_causal_lm
    from tokengym.testing import TOY_PROMPTS

    _, model = make_tiny_causal_lm(toy_tok, hidden=16, n_layers=1, n_heads=2)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    env = BatchedTextEnv(2, tokenizer=toy_tok, reward=lambda p, r: 0.0, prompts=TOY_PROMPTS, split=None,
                         max_new_tokens=3, max_prompt_tokens=4)
    with pytest.raises(FloatingPointError, match="non-finite logits at rollout step 0"):
        CachedSampler(model).rollout(env, seed=0)


def test_entropy_of_logits_masked_with_minus_inf_is_finite_with_a_finite_gradient():
    from tokengym.agents.policy import token_logprobs

    logits = torch.tensor([[[0.0, 1.0, float("-inf"), 2.0]]], requires_grad=True)
    logp, ent = token_logprobs(logits, torch.tensor([[1]]), vocab=4, entropy=True)
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), -1)
    assert ent.item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-6)
    ent.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("ent_coef", [0.0, 0.01])
def test_a_policy_that_masks_tokens_with_minus_inf_trains(toy_tok, ent_coef):
    """Some LMs put -inf on tokens they never emit: the entropy (logged or in the loss) stays finite,
    so no minibatch is skipped for a NaN that 0 * log 0 would make."""
    agent = make_agent(toy_tok, lambda p, r: float(len(r)) / 10, ent_coef=ent_coef)
    head = agent.ac.policy.get_output_embeddings()

    def mask_token(module, inputs, output):
        output = output.clone()
        output[..., 7] = float("-inf")
        return output

    head.register_forward_hook(mask_token)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a skipped minibatch would warn
        for _ in range(2):
            m = agent.step()
    assert math.isfinite(m["entropy"]) and m["entropy"] > 0 and m["skipped_minibatches"] == 0


def test_grpo_k3_kl_loss_stays_finite_where_a_peaked_policy_rules_out_the_pad_token(toy_tok):
    """GRPO's k3 term exp(ref - logp) at a pad position: a peaked policy (temperature 0.02) gives
    log-probs far below -88 there, where exp overflows float32. Masking after the exponential gave
    inf * 0 = NaN, a skipped minibatch, and after three of them a stopped run; the mask now comes first."""
    from tokengym.agents import GRPOAgent, GRPOConfig, RolloutBatch, kl_per_token
    from tokengym.agents.policy import response_forward, token_logprobs

    _, model = make_tiny_causal_lm(toy_tok, hidden=16, n_layers=1, n_heads=2, seed=0)
    with torch.no_grad():  # sharpen the near-uniform random model: with temperature 0.02 logits span hundreds
        model.model.norm.weight.mul_(30.0)
    env = BatchedTextEnv(4, tokenizer=toy_tok, reward=lambda p, r: 0.0, prompts=TOY_PROMPTS, split=None,
                         max_new_tokens=4, max_prompt_tokens=4)
    agent = GRPOAgent(env, model, GRPOConfig(batch_size=4, group_size=2, temperature=0.02, kl_coef=0.1,
                                             learning_rate=1e-2, anneal_lr=False, sample_every=0, lora_r=0,
                                             kl_target=6.0, kl_horizon=10000))  # full fine-tuning, slow controller
    # Two groups of two; responses of 1..4 tokens, so three rows end in pad positions.
    g = torch.Generator().manual_seed(0)
    P, T, lengths = 4, 4, [1, 4, 2, 3]
    prompt_ids = torch.randint(4, len(toy_tok), (4, P), generator=g)
    prompt_ids[2:] = prompt_ids[0]  # a group shares its prompt
    prompt_ids[1], prompt_ids[3] = prompt_ids[0], prompt_ids[0]
    response_ids = torch.full((4, T), toy_tok.pad_token_id)
    response_mask = torch.zeros(4, T)
    for i, n in enumerate(lengths):
        response_ids[i, :n] = torch.randint(4, len(toy_tok), (n,), generator=g)
        response_mask[i, :n] = 1
    batch = RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=torch.ones(4, P, dtype=torch.long), response_ids=response_ids,
        response_mask=response_mask, sample_logprobs=torch.zeros(4, T), scores=torch.tensor([0.0, 1.0, 0.5, 0.2]),
        stopped=torch.zeros(4, dtype=torch.bool), prompt_texts=["x"] * 4, response_texts=[""] * 4,
        prompt_ids_str=[0, 0, 0, 0],
    )
    exp = agent._make_experience(batch)
    idx = torch.arange(4)
    with torch.no_grad():
        logp = agent._evaluate(exp, idx)["logp"]
    pad = response_mask == 0
    assert (logp[pad] < -88).all()  # the premise: here exp(-log_ratio) overflows
    # It holds for the peaked policy itself, not only because the pad token is excluded from the actions.
    with torch.no_grad():
        logits, _ = response_forward(agent.ac.policy, batch.input_ids, batch.attention_mask, P, 0.02)
        with_pad = token_logprobs(logits, response_ids, len(toy_tok), entropy=None)[0]
    assert (with_pad[pad] < -88).all()
    with torch.no_grad():
        unmasked = kl_per_token(logp, exp.ref_logprobs, "k3")
    assert not torch.isfinite(unmasked * response_mask).all()  # what the old order computed
    loss, out = agent._loss(exp, idx, response_mask.sum())
    assert torch.isfinite(loss) and torch.isfinite(out["kl_loss"]) and out["kl_loss"].item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in agent.ac.trainable_parameters() if p.grad is not None)
    agent.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a skipped minibatch would warn
        stats = agent._update(exp)
    assert stats["skipped_minibatches"] == 0.0 and math.isfinite(stats["kl_loss"])
