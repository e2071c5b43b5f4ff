"""Device and precision through the agents: resolution, refusal, and device-following tensors.

On a CPU-only machine every agent runs on the CPU, so "is this tensor on the model's device?" cannot
fail there. Two tests make it fail anyway: the algorithm math (advantages, KL, group baselines, losses)
runs on tensors on the ``meta`` device (shapes only, no compute) under a dispatch mode that rejects
any op returning a CPU tensor, so a tensor created without ``device=`` is caught; and a whole agent
step asserts that every tensor of its experience is on ``agent.device`` (a real check on a GPU machine,
where ``device="auto"`` is CUDA).
"""

from __future__ import annotations

import json
import types
from dataclasses import fields

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tokengym import hardware
from tokengym.agents import (
    A2CAgent, A2CConfig, AugmentationMixin, CachedSampler, DistillationMixin, Experience, GRPOAgent, GRPOConfig,
    PPOAgent, PPOConfig, ReinforceAgent, ReinforceConfig, RLOOAgent, RLOOConfig, RolloutBatch, gae,
    kl_penalised_rewards, kl_per_token, masked_whiten, with_aids,
)
from tokengym.agents.advantages import masked_mean, masked_var, where_mask
from tokengym.agents.evaluation import evaluate_policy
from tokengym.agents.pg import reward_to_go
from tokengym.envs import BatchedTextEnv
from tokengym.hardware import DeviceError
from tokengym.testing import TOY_PROMPTS

pytestmark = pytest.mark.usefixtures("single_thread")


def good_share(prompt: str, response: str) -> float:
    words = response.split()
    return sum(w == "good" for w in words) / max(len(words), 1) + 0.1 * len(words)


def toy_env(tok, n=8, T=5, P=4) -> BatchedTextEnv:
    return BatchedTextEnv(n, tokenizer=tok, prompts=TOY_PROMPTS, split=None, max_new_tokens=T, max_prompt_tokens=P,
                          reward=good_share)


SMALL = dict(batch_size=8, micro_batch_size=2, learning_rate=3e-3, sample_every=0, lora_r=0, checkpoint_every=0)
ALGOS = [
    (PPOAgent, PPOConfig, dict(minibatch_size=4, ppo_epochs=2)),
    (ReinforceAgent, ReinforceConfig, {}),
    (A2CAgent, A2CConfig, {}),
    (RLOOAgent, RLOOConfig, dict(group_size=4)),
    (GRPOAgent, GRPOConfig, dict(group_size=4)),
]


def tensors_of(obj, prefix=""):
    """(name, tensor) of every tensor attribute of an Experience or RolloutBatch, nested batch included."""
    for key, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            yield prefix + key, value
        elif isinstance(value, RolloutBatch):
            yield from tensors_of(value, prefix + key + ".")


# ----------------------------------------------------------------------------------------------
# Resolution and refusal
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("agent_cls", "config_cls", "kw"), ALGOS, ids=[a[0].__name__ for a in ALGOS])
def test_explicit_cpu_and_fp32_reach_every_part_of_every_agent(toy_tok, make_toy_lm, agent_cls, config_cls, kw):
    env = toy_env(toy_tok)
    agent = agent_cls(env, make_toy_lm(), config_cls(**SMALL, **kw, device="cpu", dtype="fp32"))
    assert agent.device == torch.device("cpu") and agent.dtype == torch.float32 and agent.autocast_dtype is None
    assert agent.sampler.autocast_dtype is None
    assert {p.device for p in agent.ac.parameters()} == {torch.device("cpu")}
    assert {p.dtype for p in agent.ac.parameters()} == {torch.float32}
    metrics = agent.step()
    assert all(metrics[k] == metrics[k] for k in ("score", "kl", "pg_loss", "entropy", "first_ratio"))


def test_auto_resolves_as_the_hardware_module_says(toy_tok, make_toy_lm):
    agent = PPOAgent(toy_env(toy_tok), make_toy_lm(), PPOConfig(**SMALL, minibatch_size=4))
    assert (agent.config.device, agent.config.dtype) == ("auto", "auto")
    expected = hardware.resolve_device("auto")
    assert agent.device.type == expected.type
    assert agent.dtype == hardware.resolve_dtype("auto", agent.device)
    if agent.device.type == "cpu" and not hardware.cpu_has_bf16_units():
        assert agent.dtype == torch.float32  # emulated bf16 is ~100x slower: auto never picks it
    assert next(agent.ac.policy.parameters()).device == agent.device
    assert agent.ac.value_head.linear.weight.device == agent.device


class Untouchable:
    """A model that fails the test as soon as anything reads it."""

    def __getattr__(self, name):
        pytest.fail(f"the model was touched ({name}) before the device was refused")


def test_a_gpu_asked_for_without_one_is_refused_before_the_model_is_touched(toy_tok, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env = toy_env(toy_tok)
    for cfg in (PPOConfig(**SMALL, minibatch_size=4, device="cuda"), GRPOConfig(**SMALL, group_size=4, device="cuda:0")):
        with pytest.raises(DeviceError, match=r"device='cuda(:0)?' but torch sees no CUDA GPU"):
            cfg.validate()
        agent_cls = PPOAgent if isinstance(cfg, PPOConfig) else GRPOAgent
        with pytest.raises(DeviceError, match="torch sees no CUDA GPU"):
            agent_cls(env, Untouchable(), cfg)
    with pytest.raises(DeviceError, match="dtype must be 'auto', 'fp32' or 'bf16', got 'fp16'"):
        PPOConfig(dtype="fp16").validate()
    with pytest.raises(DeviceError, match="device must be"):
        PPOConfig(device="gpu").validate()


def test_train_config_takes_ppo_device_and_dtype_and_refuses_a_missing_gpu(monkeypatch):
    from tokengym.train import make_train_config

    cfg = make_train_config({"ppo": {"device": "cpu", "dtype": "bf16"}})
    assert (cfg.ppo.device, cfg.ppo.dtype) == ("cpu", "bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="device='cuda' but torch sees no CUDA GPU"):
        make_train_config({"ppo": {"device": "cuda"}})


def test_train_report_records_the_resolved_device_and_dtype(tmp_path):
    from tokengym.testing import tiny_train_config
    from tokengym.train import make_train_config, run

    cfg = make_train_config(tiny_train_config(tmp_path, ppo={"device": "cpu", "dtype": "fp32"}))
    run(cfg, progress=False, log=lambda *_: None)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["hardware"]["device"] == "cpu" and report["hardware"]["dtype"] == "fp32"
    assert {"cpu_model", "cpu_flags", "torch"} <= report["hardware"].keys()
    assert report["config"]["ppo"]["device"] == "cpu"
    assert all(v == v for k, v in report["after"].items() if k != "gold_score")


def test_sampler_batches_are_on_the_cpu_and_the_evaluation_moves_them(toy_tok, toy_lm):
    """The sampler's batch sits with the env on the CPU (callers turn it into numpy); the evaluation
    hands the reference function tensors on the policy's device."""
    _, model = toy_lm
    device = next(model.parameters()).device
    env = toy_env(toy_tok)
    batch = CachedSampler(model).rollout(env, seed=0)
    assert all(t.device.type == "cpu" for _, t in tensors_of(batch))
    seen = []

    def ref(ids, attn, P):
        seen.append({ids.device, attn.device})
        return torch.zeros(ids.shape[0], ids.shape[1] - P, device=ids.device)

    metrics, _ = evaluate_policy(model, ref, env, 8)
    assert seen == [{device}]
    assert metrics["kl_to_reference"] == metrics["kl_to_reference"]


# ----------------------------------------------------------------------------------------------
# RolloutBatch.to
# ----------------------------------------------------------------------------------------------
def full_batch(B=4, P=3, T=5) -> RolloutBatch:
    b = RolloutBatch(
        prompt_ids=torch.ones(B, P, dtype=torch.long), prompt_mask=torch.ones(B, P, dtype=torch.long),
        response_ids=torch.ones(B, T, dtype=torch.long), response_mask=torch.ones(B, T),
        sample_logprobs=torch.zeros(B, T), scores=torch.zeros(B), stopped=torch.zeros(B, dtype=torch.bool),
        gold_scores=torch.zeros(B), values=torch.zeros(B, T), entropy=torch.zeros(B, T),
        prompt_texts=["p"] * B, response_texts=["r"] * B, prompt_ids_str=list(range(B)),
    )
    b.augmented = True
    b.real = torch.ones(B, dtype=torch.bool)
    return b


def test_rollout_batch_to_moves_every_tensor_field():
    b = full_batch()
    tensor_fields = [f.name for f in fields(RolloutBatch) if isinstance(getattr(b, f.name), torch.Tensor)]
    assert len(tensor_fields) == 10  # every optional field is set, so each one is checked
    m = b.to("meta")
    for name in tensor_fields + ["real"]:
        t = getattr(m, name)
        assert t.device.type == "meta", name
        assert t.shape == getattr(b, name).shape and t.dtype == getattr(b, name).dtype, name
    assert m.augmented is True and m.prompt_texts == b.prompt_texts and m.prompt_ids_str == b.prompt_ids_str
    assert m.input_ids.device.type == "meta" and m.attention_mask.device.type == "meta"
    assert b.to("cpu") is b  # nothing to move: the same batch, no copies
    assert b.response_mask.device.type == "cpu"  # the original is left where it was


# ----------------------------------------------------------------------------------------------
# The algorithm math creates its tensors on the device of its inputs
# ----------------------------------------------------------------------------------------------
class NoCPUTensors(TorchDispatchMode):
    """Fails on any op that returns a CPU tensor: with every input on ``meta``, such a tensor was
    created without ``device=`` (it would be a CPU tensor next to CUDA ones on a GPU)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                raise AssertionError(f"{func} created a CPU tensor from meta inputs")
        return out


def test_the_meta_check_catches_a_tensor_made_without_a_device():
    x = torch.zeros(2, 3, device="meta")
    with NoCPUTensors(), pytest.raises(AssertionError, match="arange"):
        x[torch.arange(2), 0] += 1  # indexing accepts CPU indices, so only the check catches this


def test_advantages_kl_and_baselines_create_no_cpu_tensor():
    B, T, k = 8, 5, 4
    meta = lambda *shape, **kw: torch.zeros(*shape, device="meta", **kw)  # noqa: E731
    rewards, values, mask, kl, scores = meta(B, T), meta(B, T), meta(B, T), meta(B, T), meta(B)
    with NoCPUTensors():
        adv, ret = gae(rewards, values, mask, gamma=0.99, lam=0.95)
        assert adv.device.type == ret.device.type == "meta"
        assert masked_whiten(adv, mask).device.type == "meta"
        assert masked_whiten(rewards, mask, shift_mean=False, distributed=True).device.type == "meta"
        masked_mean(adv, mask), masked_var(adv, mask), where_mask(adv, mask)
        assert kl_penalised_rewards(kl, scores, mask, 0.1).device.type == "meta"
        for est in ("k1", "k3"):
            kl_per_token(rewards, values, est, mask=mask)
        assert reward_to_go(rewards, mask, 0.9).device.type == "meta"  # REINFORCE's returns
        r = meta(B // k, k)
        assert RLOOAgent._group_advantages(None, r).device.type == "meta"
        for scale in (True, False):
            grpo = types.SimpleNamespace(config=GRPOConfig(group_size=k, scale_rewards=scale))
            assert GRPOAgent._group_advantages(grpo, r).device.type == "meta"


def meta_experience(exp: Experience) -> Experience:
    out = Experience(**{f.name: getattr(exp, f.name) for f in fields(Experience)})
    out.batch = exp.batch.to("meta")
    for f in fields(Experience):
        value = getattr(out, f.name)
        if isinstance(value, torch.Tensor):
            setattr(out, f.name, value.to("meta"))
    return out


@pytest.mark.parametrize(("agent_cls", "config_cls", "kw"), [a for a in ALGOS if a[0] is not ReinforceAgent],
                         ids=[a[0].__name__ for a in ALGOS if a[0] is not ReinforceAgent])
def test_targets_and_losses_of_every_agent_create_no_cpu_tensor(toy_tok, make_toy_lm, agent_cls, config_cls, kw):
    """``_targets`` and ``_loss`` on a meta experience (the forward stubbed by meta tensors of its shapes).
    REINFORCE's ``_targets`` reads its batch mean as a Python float, which a meta tensor has not:
    its reward-to-go is checked above."""
    extra = dict(missing_eos_penalty=0.5, score_clip=3.0, whiten_rewards=True, minibatch_size=8) if agent_cls is PPOAgent else {}
    cfg = config_cls(**{**SMALL, **kw, **extra, "ent_coef": 0.01, "device": "cpu"})
    agent = agent_cls(toy_env(toy_tok), make_toy_lm(), cfg)
    exp = agent._make_experience(agent.sampler.rollout(agent.env, seed=0, options=agent._rollout_options()))
    mexp = meta_experience(exp)
    B, T = exp.old_logprobs.shape
    V = agent.ac.vocab_size

    def fake_evaluate(exp, idx):
        b = idx.shape[0]
        z = lambda *s: torch.zeros(*s, device="meta")  # noqa: E731
        return {"logp": z(b, T), "token_entropy": z(b, T), "values": z(b, T), "log_ratio": z(b, T), "ratio": z(b, T),
                "mask": exp.batch.response_mask[idx], "logits": z(b, T, V)}

    agent._evaluate = fake_evaluate
    with NoCPUTensors():
        mexp.scores = agent._process_scores(mexp.batch)
        rewards, advantages, returns = agent._targets(mexp)
        mexp.rewards, mexp.advantages, mexp.returns = rewards, advantages, returns
        assert {rewards.device.type, advantages.device.type, returns.device.type} == {"meta"}
        idx = torch.arange(2, device="meta")
        loss, out = agent._loss(mexp, idx, torch.zeros((), device="meta"))
        assert loss.device.type == "meta"
        assert all(v.device.type == "meta" for v in out.values() if isinstance(v, torch.Tensor))


# ----------------------------------------------------------------------------------------------
# A whole step: every tensor of the experience is on the agent's device
# ----------------------------------------------------------------------------------------------
def test_every_tensor_of_a_step_is_on_the_agent_device(toy_tok, make_toy_lm):
    """``device="auto"``: the CPU here, CUDA on a GPU machine (with bf16 autocast where it is supported).
    Augmentation and distillation add the batches and tensors an aid makes."""
    agent_cls = with_aids(PPOAgent, AugmentationMixin, DistillationMixin)
    agent = agent_cls(toy_env(toy_tok), make_toy_lm(), PPOConfig(**SMALL, minibatch_size=4, ppo_epochs=1),
                      teacher=make_toy_lm(seed=1))
    assert next(agent.teacher.parameters()).device == agent.device
    seen: list[Experience] = []
    make = agent._make_experience
    agent._make_experience = lambda batch: seen.append(make(batch)) or seen[-1]
    indices = []

    def loss(exp, idx, n_tokens, _loss=agent._loss):
        indices.append(idx.device)
        return _loss(exp, idx, n_tokens)

    agent._loss = loss
    metrics = agent.step()
    assert len(seen) == 2  # the rollout's experience and the augmented episodes'
    for exp in seen:
        for name, t in tensors_of(exp):
            assert t.device == agent.device, name
    assert indices and set(indices) == {agent.device}
    assert metrics["score"] == metrics["score"] and metrics["kl"] == metrics["kl"]


def test_train_writes_every_evaluation_sample_its_report_measured(tmp_path):
    from tokengym.agents.evaluation import distinct_n
    from tokengym.testing import tiny_train_config
    from tokengym.train import make_train_config, run

    cfg = make_train_config(tiny_train_config(tmp_path, eval_episodes=4))
    run(cfg, progress=False, log=lambda *_: None)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval_samples.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["before"] * 4 + ["after"] * 4
    for stage in ("before", "after"):
        texts = [r["response"] for r in rows if r["stage"] == stage]
        assert distinct_n(texts, 2) == pytest.approx(report[stage]["distinct_2"])
