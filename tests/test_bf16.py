"""bf16 autocast (``dtype="bf16"``): fp32 master weights, fp32 log-probs, and a first ratio of 1.

Forced bf16 on a CPU without bf16 units is emulated and slow, so every test here uses the tiny
toy-tokenizer models (one layer, hidden 32) and a few short episodes.

Tolerances, measured on these tiny models on an AVX2 CPU:

* First minibatch of the first epoch: the old log-probs are recomputed with the training forward
  under the same autocast, so the ratio is exactly 1 here (every token). The test allows 1e-3 on the
  mean and 1e-2 per token, for GPUs whose attention kernels may differ between the inference-mode
  and the training forward.
* bf16 vs fp32 on the same seed and batch: old/reference log-probs differ by at most 8.1e-4 per
  token; over four PPO iterations the scores are identical and the KL differs by at most 0.002 nats
  (full fine-tuning and LoRA). The tests allow 0.02 per token, 0.05 on the score and 0.02 + 10 % on
  the KL.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tokengym.agents import PPOAgent, PPOConfig
from tokengym.envs import BatchedTextEnv
from tokengym.testing import TOY_PROMPTS

pytestmark = pytest.mark.usefixtures("single_thread")

POSITIVE = set("good great liked love best fun funny happy".split())
FIRST_RATIO_MEAN_TOL = 1e-3
FIRST_RATIO_TOKEN_TOL = 1e-2


def positive_share(prompt: str, response: str) -> float:
    """Share of positive words plus a length bonus: non-zero scores from the first rollout on."""
    words = response.split()
    return sum(w in POSITIVE for w in words) / max(len(words), 1) + 0.1 * len(words)


def toy_env(tok, n=8, T=6, P=4) -> BatchedTextEnv:
    return BatchedTextEnv(n, tokenizer=tok, prompts=TOY_PROMPTS, split=None, max_new_tokens=T, max_prompt_tokens=P,
                          reward=positive_share)


def config(dtype: str, **kw) -> PPOConfig:
    base = dict(batch_size=8, minibatch_size=4, micro_batch_size=2, ppo_epochs=2, learning_rate=3e-3, kl_coef=0.05,
                sample_every=0, lora_r=0, lora_alpha=16, kl_target=6.0, kl_horizon=10000, checkpoint_every=0,
                device="cpu", dtype=dtype)
    base.update(kw)
    return PPOConfig(**base)


def record_lm_head_dtypes(module: torch.nn.Module, seen: list) -> None:
    """Append the output dtype of every LM-head matmul of ``module``: bf16 only under autocast."""
    module.get_output_embeddings().register_forward_hook(lambda m, i, out: seen.append(out.dtype))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lora_r", [0, 16])
def test_bf16_step_keeps_fp32_weights_and_log_probs_and_a_first_ratio_of_one(toy_tok, make_toy_lm, lora_r, device):
    agent = PPOAgent(toy_env(toy_tok), make_toy_lm(), config("bf16", lora_r=lora_r, device=device))
    assert agent.device.type == device
    assert agent.dtype == torch.bfloat16 and agent.autocast_dtype == torch.bfloat16
    assert agent.sampler.autocast_dtype == torch.bfloat16
    heads: list = []
    record_lm_head_dtypes(agent.ac.policy, heads)
    if agent.ac.reference is not None:
        record_lm_head_dtypes(agent.ac.reference, heads)
    ratios, experiences = [], []
    make, loss = agent._make_experience, agent._loss

    def make_experience(batch):
        experiences.append(make(batch))
        return experiences[-1]

    def first_loss(exp, idx, n_tokens):
        value, out = loss(exp, idx, n_tokens)
        ratios.append((out["ratio"].detach(), out["mask"], out["logp"].dtype, out["values"].dtype))
        return value, out

    agent._make_experience, agent._loss = make_experience, first_loss
    evaluate_calls = []
    evaluate = agent.ac.evaluate
    agent.ac.evaluate = lambda *a, **k: evaluate_calls.append(k.get("autocast_dtype")) or evaluate(*a, **k)
    metrics = agent.step()

    # Every forward (rollout steps, old log-probs, reference, training) ran its matmuls in bf16 ...
    assert heads and set(heads) == {torch.bfloat16}
    # ... and the old log-probs were recomputed with the training forward, not taken from the sampler.
    assert evaluate_calls == [torch.bfloat16] * (8 // 2)
    ratio, mask, logp_dtype, values_dtype = ratios[0]
    assert (logp_dtype, values_dtype) == (torch.float32, torch.float32)
    assert abs(metrics["first_ratio"] - 1) <= FIRST_RATIO_MEAN_TOL
    assert ((ratio - 1).abs() * mask).max() <= FIRST_RATIO_TOKEN_TOL
    exp = experiences[0]
    for name in ("old_logprobs", "ref_logprobs", "old_values", "kl", "rewards", "advantages", "returns", "scores"):
        assert getattr(exp, name).dtype == torch.float32, name
    # Master weights and Adam's moments stay fp32.
    assert {p.dtype for p in agent.ac.parameters()} == {torch.float32}
    states = [s for s in agent.optimizer.state.values() if s]
    assert states and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in states)
    for key in ("score", "kl", "pg_loss", "vf_loss", "approx_kl", "ratio_mean", "entropy", "first_ratio"):
        assert math.isfinite(metrics[key]), key
    assert metrics["skipped_minibatches"] == 0


def test_fp32_does_not_autocast(toy_tok, make_toy_lm):
    agent = PPOAgent(toy_env(toy_tok), make_toy_lm(), config("fp32"))
    heads: list = []
    record_lm_head_dtypes(agent.ac.policy, heads)
    agent.step()
    assert heads and set(heads) == {torch.float32}


@pytest.mark.parametrize("lora_r", [0, 16])
def test_bf16_is_close_to_fp32_on_the_same_seed(toy_tok, make_toy_lm, lora_r):
    env32, env16 = toy_env(toy_tok), toy_env(toy_tok)
    a32 = PPOAgent(env32, make_toy_lm(), config("fp32", lora_r=lora_r))
    a16 = PPOAgent(env16, make_toy_lm(), config("bf16", lora_r=lora_r))
    batch = a32.sampler.rollout(env32, seed=123)
    e32, e16 = a32._make_experience(batch), a16._make_experience(batch)
    m = batch.response_mask.bool()
    assert m.sum() > 20
    assert (e32.old_logprobs - e16.old_logprobs)[m].abs().max() < 0.02
    assert (e32.ref_logprobs - e16.ref_logprobs)[m].abs().max() < 0.02
    rows32 = [a32.step() for _ in range(3)]
    rows16 = [a16.step() for _ in range(3)]
    for r32, r16 in zip(rows32, rows16):
        assert r16["score"] == pytest.approx(r32["score"], abs=0.05)
        assert r16["kl"] == pytest.approx(r32["kl"], abs=0.02, rel=0.1)


def test_train_run_in_bf16_records_it_and_evaluates_in_fp32(tmp_path):
    """``tokengym train --set ppo.dtype=bf16`` on a tiny model: the report names bf16, the before/after
    evaluation is finite (it runs fp32, on the agent's device)."""
    from tokengym.testing import tiny_train_config
    from tokengym.train import make_train_config, run

    cfg = make_train_config(tiny_train_config(tmp_path, ppo={"device": "cpu", "dtype": "bf16"}))
    run(cfg, progress=False, log=lambda *_: None)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["hardware"]["dtype"] == "bf16" and report["hardware"]["device"] == "cpu"
    for when in ("before", "after"):
        assert all(math.isfinite(v) for k, v in report[when].items() if k != "gold_score"), when
    assert abs(report["before"]["kl_to_reference"]) < 1e-5  # fp32 sampler against the fp32 reference


@pytest.mark.parametrize("lora_r", [0, 16])
def test_rollout_on_precast_weights_equals_plain_autocast(toy_tok, make_toy_lm, lora_r, monkeypatch):
    """The sampler's once-per-rollout bf16 weight copies give exactly what per-step autocast gives."""
    from tokengym.agents import rollout

    agent = PPOAgent(toy_env(toy_tok), make_toy_lm(), config("bf16", lora_r=lora_r))
    casted = rollout.precast_linear_weights(agent.ac.policy, torch.bfloat16)
    assert casted and {t.dtype for t in casted.values()} == {torch.bfloat16}
    names = set(casted)
    assert any(n.endswith("q_proj.weight") or n.endswith("q_proj.base_layer.weight") for n in names)
    if lora_r:  # the frozen base weights (which autocast never caches) and the adapters alike
        assert any("base_layer" in n for n in names) and any("lora_A" in n for n in names)
    # The LM head (tied to the embeddings in this model) gets a copy; the embedding table does not.
    assert any(n.endswith("lm_head.weight") for n in names) and not any("embed_tokens" in n for n in names)
    embeddings = agent.ac.policy.get_input_embeddings()
    embeddings.register_forward_hook(lambda m, i, out: lookups.append(out.dtype))
    lookups: list = []
    first = agent.sampler.rollout(agent.env, seed=3)
    # plain autocast: no per-rollout casts and none of the run's frozen casts
    monkeypatch.setattr(rollout, "precast_linear_weights", lambda model, dtype, include=None: {})
    monkeypatch.setattr(agent.sampler, "frozen_weights", None)
    second = agent.sampler.rollout(agent.env, seed=3)
    assert torch.equal(first.response_ids, second.response_ids)
    assert torch.equal(first.sample_logprobs, second.sample_logprobs)
    assert torch.equal(first.values, second.values)
    assert lookups and set(lookups) == {torch.float32}


def test_cpu_bf16_agents_run_attention_in_fp32_which_changes_nothing_in_fp32(toy_tok, make_toy_lm):
    from tokengym.agents.precision import FP32_SDPA, use_fp32_attention

    agent = PPOAgent(toy_env(toy_tok), make_toy_lm(), config("bf16"))
    assert agent.ac.policy.config._attn_implementation == FP32_SDPA
    assert PPOAgent(toy_env(toy_tok), make_toy_lm(), config("fp32")).ac.policy.config._attn_implementation == "sdpa"
    plain, switched = make_toy_lm(), make_toy_lm()
    assert use_fp32_attention(switched) and not use_fp32_attention(switched)  # only an SDPA model is switched
    ids = torch.randint(3, toy_tok.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding goes through the same masks
    with torch.no_grad():
        torch.testing.assert_close(switched(input_ids=ids, attention_mask=mask).logits,
                                   plain(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = switched(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("lora_r", [0, 16])
def test_frozen_weights_are_cast_once_and_change_no_forward(toy_tok, make_toy_lm, lora_r):
    from tokengym.agents.policy import response_forward

    agent = PPOAgent(toy_env(toy_tok), make_toy_lm(), config("bf16", lora_r=lora_r))
    ac = agent.ac
    assert ac.frozen_weights(ac.policy, None) is None  # fp32: nothing to cast
    policy_casts = ac.frozen_weights(ac.policy, torch.bfloat16)
    assert ac.frozen_weights(ac.policy, torch.bfloat16) is policy_casts  # made once
    if lora_r:  # the base and the tied head are frozen, the adapters are not
        assert policy_casts and not any("lora_" in n for n in policy_casts)
        assert any("base_layer" in n for n in policy_casts)
    else:  # full fine-tuning: every policy weight trains; the reference copy is all frozen
        assert policy_casts == {}
        assert len(ac.frozen_weights(ac.reference, torch.bfloat16)) > 0
    ids = torch.randint(3, toy_tok.vocab_size, (2, 9))
    attn = torch.ones_like(ids)
    plain, _ = response_forward(ac.policy, ids, attn, 4, 1.0, autocast_dtype=torch.bfloat16)
    cast, _ = response_forward(ac.policy, ids, attn, 4, 1.0, autocast_dtype=torch.bfloat16, weights=policy_casts)
    assert torch.equal(plain, cast)
    cast.sum().backward()  # gradients still reach the trainable weights
    assert all(p.grad is not None for p in ac.policy.parameters() if p.requires_grad)
