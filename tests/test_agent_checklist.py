"""PPO checklist items (shared/PPO_CHECKLIST.md) that had no test able to fail: score clipping and
scaling, the zero-initialised value head, value-loss clipping, dropout off during RL, and the two
update guards (skip a minibatch whose mean ratio explodes; stop the epochs early on approx-KL).

Each test pins the exact value or behaviour, so that removing or breaking the feature fails it.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tokengym.agents import PPOAgent, PPOConfig, ValueHead
from tokengym.envs import BatchedTextEnv
from tokengym.models import make_tiny_causal_lm, prepare_tokenizer
from tokengym.testing import TOY_PROMPTS

pytestmark = pytest.mark.usefixtures("single_thread")


def good_share(prompt: str, response: str) -> float:
    words = response.split()
    return sum(w == "good" for w in words) / max(len(words), 1)


def make_agent(tok, model=None, n: int = 8, **kw) -> PPOAgent:
    env = BatchedTextEnv(n, tokenizer=tok, reward=good_share, prompts=TOY_PROMPTS, split=None, max_new_tokens=5,
                         max_prompt_tokens=4)
    # Full fine-tuning and beta 0.05, as these tests were written (not the main job's LoRA r=16, beta 0.1).
    cfg = dict(batch_size=n, minibatch_size=4, micro_batch_size=4, ppo_epochs=1, learning_rate=1e-2, anneal_lr=False,
               sample_every=0, adaptive_kl=False, lora_r=0, kl_coef=0.05)
    cfg.update(kw)
    if model is None:
        model = make_tiny_causal_lm(tok, hidden=16, n_layers=1, n_heads=2, seed=0)[1]
    return PPOAgent(env, model, PPOConfig(**cfg))


def weights(agent: PPOAgent) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in agent.ac.named_parameters() if p.requires_grad}


def unchanged(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# Score clipping and running-std scaling (checklist 20)
# ----------------------------------------------------------------------------------------------
def _scores(values: list[float]) -> SimpleNamespace:
    """What ``_process_scores`` reads of a rollout: the scores and whether each episode stopped."""
    return SimpleNamespace(scores=torch.tensor(values), stopped=torch.ones(len(values), dtype=torch.bool))


def test_score_scaling_divides_by_the_running_std_of_all_scores_so_far_and_keeps_the_mean(toy_tok):
    agent = make_agent(toy_tok, score_scaling=True)
    first, second = [1.0, 2.0, 3.0, 4.0], [-10.0, 0.0, 0.0, 6.0]
    out1 = agent._process_scores(_scores(first))
    torch.testing.assert_close(out1, torch.tensor(first) / np.std(first))  # population std 1.118, no centring
    out2 = agent._process_scores(_scores(second))
    # The std of every score seen so far (8 values), not of this batch alone.
    torch.testing.assert_close(out2, torch.tensor(second) / np.std(first + second))
    n, mean, m2 = agent.score_moments
    assert n == 8 and mean == pytest.approx(np.mean(first + second)) and m2 / n == pytest.approx(np.var(first + second))


def test_score_clip_bounds_the_score_after_scaling(toy_tok):
    clip_only = make_agent(toy_tok, score_clip=2.0)
    torch.testing.assert_close(clip_only._process_scores(_scores([-3.0, 0.5, 3.0])), torch.tensor([-2.0, 0.5, 2.0]))
    both = make_agent(toy_tok, score_clip=1.5, score_scaling=True)
    values = [1.0, 2.0, 3.0, 4.0]
    scaled = np.asarray(values) / np.std(values)  # 0.89, 1.79, 2.68, 3.58
    torch.testing.assert_close(both._process_scores(_scores(values)), torch.tensor(np.minimum(scaled, 1.5), dtype=torch.float32))


def test_the_processed_score_is_the_reward_on_the_last_token(toy_tok):
    agent = make_agent(toy_tok, score_clip=0.01, kl_coef=0.0)
    batch = agent.sampler.rollout(agent.env, seed=0, generator=agent.sample_gen)
    batch.scores = torch.linspace(-1.0, 1.0, len(batch))
    exp = agent._make_experience(batch)
    last = batch.lengths - 1
    torch.testing.assert_close(exp.rewards[torch.arange(len(batch)), last], batch.scores.clamp(-0.01, 0.01))


# ----------------------------------------------------------------------------------------------
# Value head zero-initialised (checklist 21)
# ----------------------------------------------------------------------------------------------
def test_value_head_starts_at_zero_so_the_first_values_are_zero(toy_tok):
    head = ValueHead(16)
    assert (head.linear.weight == 0).all() and (head.linear.bias == 0).all()
    assert (head(torch.randn(3, 5, 16)) == 0).all()
    agent = make_agent(toy_tok)
    batch = agent.sampler.rollout(agent.env, seed=0, generator=agent.sample_gen)
    assert batch.values is not None and (batch.values == 0).all()
    exp = agent._make_experience(batch)
    assert (exp.old_values == 0).all()
    # With V = 0 and gamma = lambda = 1 the GAE advantages are the reward-to-go (before whitening).
    agent.config.lam, agent.config.whiten_advantages = 1.0, False
    exp = agent._make_experience(batch)
    rtg = torch.flip(torch.cumsum(torch.flip(exp.rewards, [1]), 1), [1]) * batch.response_mask
    torch.testing.assert_close(exp.advantages, rtg)


# ----------------------------------------------------------------------------------------------
# Value loss clipped around the old values, factor 0.5 (checklist 25)
# ----------------------------------------------------------------------------------------------
def test_value_loss_is_the_pessimistic_clipped_loss_and_stops_the_gradient_past_the_clip(toy_tok):
    agent = make_agent(toy_tok, clip_range_value=0.2)
    batch = agent.sampler.rollout(agent.env, seed=0, generator=agent.sample_gen)
    exp = agent._make_experience(batch)
    mask = batch.response_mask
    # New values are 0 (zero-initialised head); old values -1, returns 0. Unclipped loss: (0 - 0)^2 = 0;
    # clipped value -1 + 0.2 = -0.8, loss 0.64. The max of the two is 0.64, halved: 0.32.
    exp.old_values = -1.0 * mask
    exp.returns = torch.zeros_like(mask)
    idx = torch.arange(len(batch))
    loss, out = agent._loss(exp, idx, mask.sum())
    assert out["vf_loss"].item() == pytest.approx(0.32, abs=1e-6)
    # The clipped term wins and is constant in V: no value gradient reaches the head.
    agent.optimizer.zero_grad(set_to_none=True)
    (agent.config.vf_coef * out["vf_loss"]).backward()
    assert agent.ac.value_head.linear.weight.grad is None or (agent.ac.value_head.linear.weight.grad == 0).all()
    # Within the clip range the plain squared error is used: returns 0.1 above V with old values = V.
    exp.old_values, exp.returns = torch.zeros_like(mask), 0.1 * mask
    _, out = agent._loss(exp, idx, mask.sum())
    assert out["vf_loss"].item() == pytest.approx(0.5 * 0.01, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Dropout off during RL (checklist 26)
# ----------------------------------------------------------------------------------------------
def _dropout_gpt2(tok) -> GPT2LMHeadModel:
    prepare_tokenizer(tok)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=64, resid_pdrop=0.5,
                     embd_pdrop=0.5, attn_pdrop=0.5, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                     bos_token_id=tok.bos_token_id)
    return GPT2LMHeadModel(cfg).train()  # handed over in training mode, dropout 0.5 everywhere


def test_dropout_is_off_in_policy_and_reference_during_rollout_and_update(toy_tok):
    agent = make_agent(toy_tok, model=_dropout_gpt2(toy_tok), ppo_epochs=2)
    metrics = agent.step()
    # With dropout on, the sampler, the training forward and the reference would each draw other masks:
    # the first ratio would be far from 1 and the KL of policy == reference far from 0.
    assert metrics["first_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert abs(metrics["kl"]) < 1e-4
    for name, module in (("policy", agent.ac.policy), ("reference", agent.ac.reference)):
        on = [n for n, m in module.named_modules() if m.training]
        assert not on, f"{name} modules left in training mode: {on[:3]}"
    # The same forward twice gives the same log-probs (no random masks).
    batch = agent.sampler.rollout(agent.env, seed=1, generator=agent.sample_gen)
    exp = agent._make_experience(batch)
    idx = torch.arange(len(batch))
    with torch.no_grad():
        torch.testing.assert_close(agent._evaluate(exp, idx)["logp"], agent._evaluate(exp, idx)["logp"], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Update guards (checklist 31)
# ----------------------------------------------------------------------------------------------
def _exploding_ratio_experience(agent: PPOAgent):
    batch = agent.sampler.rollout(agent.env, seed=0, generator=agent.sample_gen)
    exp = agent._make_experience(batch)
    exp.old_logprobs = exp.old_logprobs - 5.0 * batch.response_mask  # ratio e^5 ~ 148 on every token
    return exp


def test_a_minibatch_whose_mean_ratio_exceeds_the_threshold_is_skipped(toy_tok):
    agent = make_agent(toy_tok, ratio_threshold=10.0)  # 2 minibatches of 4, one epoch
    exp = _exploding_ratio_experience(agent)
    before = weights(agent)
    with pytest.warns(RuntimeWarning, match=r"ratio mean 1\d\d\.\d\d > ratio_threshold") as record:
        stats = agent._update(exp)
    assert sum("skipped a minibatch" in str(w.message) for w in record) == 2
    assert stats["skipped_minibatches"] == 2.0 and unchanged(before, weights(agent))
    # Without the guard the same experience does update the weights (the test above is not vacuous).
    free = make_agent(toy_tok, ratio_threshold=None)
    exp = _exploding_ratio_experience(free)
    before = weights(free)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        stats = free._update(exp)
    assert stats["skipped_minibatches"] == 0.0 and stats["ratio_mean"] > 100 and not unchanged(before, weights(free))


def test_target_kl_stops_the_epochs_early(toy_tok):
    def epochs_run(target_kl: float | None) -> tuple[float, float]:
        agent = make_agent(toy_tok, ppo_epochs=4, learning_rate=3e-2, target_kl=target_kl)
        stats = agent.step()
        return stats["epochs_run"], stats["approx_kl"]

    ran, approx_kl = epochs_run(1e-7)
    assert approx_kl > 1e-7 and ran == 1.0  # the first epoch's approx-KL was over the target: stop there
    assert epochs_run(None)[0] == 4.0
    assert epochs_run(1e3)[0] == 4.0  # a target never reached runs every epoch
    assert math.isfinite(approx_kl)
