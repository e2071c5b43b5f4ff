"""Config validation (a bad value fails in ``validate()`` naming its field, not deep in the update
with a NameError or ZeroDivisionError) and the learning-rate schedule of ``anneal_lr``: its length
comes from ``learn(iterations)`` or ``agent.total_iterations``; ``step()`` without a known length
keeps the rate constant and warns once; the logged ``lr`` is the rate the iteration's steps used."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from tokengym.agents import (
    A2CAgent, A2CConfig, GRPOAgent, GRPOConfig, OnPolicyAgent, OnPolicyConfig, PPOAgent, PPOConfig, ReinforceAgent,
    ReinforceConfig, RLOOAgent, RLOOConfig,
)
from tokengym.envs import BatchedTextEnv
from tokengym.models import make_tiny_causal_lm
from tokengym.testing import TOY_PROMPTS

pytestmark = pytest.mark.usefixtures("single_thread")


def make_agent(tok, agent_cls: type[PPOAgent] = PPOAgent, config_cls: type[PPOConfig] = PPOConfig, **kw) -> PPOAgent:
    env = BatchedTextEnv(4, tokenizer=tok, reward=lambda p, r: float(len(r)) / 10, prompts=TOY_PROMPTS, split=None,
                         max_new_tokens=3, max_prompt_tokens=4)
    # Linear annealing, full fine-tuning, beta 0.05 and the slow adaptive controller these tests were
    # written with (not the main job's defaults: constant lr, LoRA r=16, beta 0.1, KL target 3, horizon 32).
    cfg = dict(batch_size=4, minibatch_size=2, micro_batch_size=2, ppo_epochs=1, learning_rate=1e-2, sample_every=0,
               anneal_lr=True, lora_r=0, kl_coef=0.05, kl_target=6.0, kl_horizon=10000)
    if config_cls is not PPOConfig:
        cfg.pop("minibatch_size")
    cfg.update(kw)
    model = make_tiny_causal_lm(tok, hidden=16, n_layers=1, n_heads=2, seed=0)[1]
    return agent_cls(env, model, config_cls(**cfg))


# ----------------------------------------------------------------------------------------------
# validate()
# ----------------------------------------------------------------------------------------------
BAD_VALUES = [
    ("ppo_epochs", 0), ("minibatch_size", 0), ("micro_batch_size", 0), ("batch_size", 0), ("batch_size", -4),
    ("max_nonfinite_updates", 0), ("seed", -1), ("sample_every", -1), ("checkpoint_every", -2), ("lora_r", -1),
    ("kl_horizon", 0), ("learning_rate", 0.0), ("learning_rate", -1e-3), ("learning_rate", float("nan")),
    ("adam_eps", 0.0), ("max_grad_norm", 0.0), ("temperature", 0.0), ("temperature", float("inf")),
    ("clip_range", 0.0), ("clip_range_value", -0.2), ("gamma", 1.5), ("gamma", -0.1), ("lam", 1.01),
    ("vf_coef", -0.1), ("kl_coef", -0.01), ("ent_coef", float("nan")), ("kl_target", 0.0),
    ("missing_eos_penalty", float("inf")), ("score_clip", 0.0), ("target_kl", -1.0), ("kl_stop", 0.0), ("kl_rollback", 0.0),
    ("ratio_threshold", 1.0),
    ("kl_estimator", "k2"), ("ppo_epochs", 1.5), ("minibatch_size", True),
]


@pytest.mark.parametrize("field, value", BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_validate_names_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        PPOConfig(**{field: value}).validate()


def test_defaults_and_edge_values_that_make_sense_pass() -> None:
    for cfg_cls in (PPOConfig, ReinforceConfig, A2CConfig, RLOOConfig, GRPOConfig):
        cfg_cls().validate()
    PPOConfig(gamma=0.0, lam=1.0, vf_coef=0.0, kl_coef=0.0, ent_coef=-0.01, ratio_threshold=None, target_kl=None,
              missing_eos_penalty=-1.0, sample_every=0, checkpoint_every=0).validate()
    # The critic-free configs read minibatch_size=0 as "the whole batch" before the check.
    cfg = ReinforceConfig(batch_size=8, minibatch_size=0)
    cfg.validate()
    assert cfg.minibatch_size == 8
    with pytest.raises(ValueError, match="lora_alpha"):
        PPOConfig(lora_r=4, lora_alpha=0).validate()


def test_edge_configs_fail_at_construction_with_a_clear_error(toy_tok) -> None:
    """ppo_epochs=0 used to raise a NameError at the end of the first update, minibatch_size=0 a
    ZeroDivisionError; both now fail before any model work, naming the field."""
    with pytest.raises(ValueError, match="ppo_epochs must be an integer >= 1, got 0"):
        make_agent(toy_tok, ppo_epochs=0)
    with pytest.raises(ValueError, match="minibatch_size must be an integer >= 1, got 0"):
        make_agent(toy_tok, minibatch_size=0)
    with pytest.raises(ValueError, match="ppo_epochs"):
        PPOConfig.from_dict({"ppo_epochs": 0}).validate()  # the path of a config file


# ----------------------------------------------------------------------------------------------
# The learning-rate schedule
# ----------------------------------------------------------------------------------------------
def _record_step_lrs(agent: PPOAgent) -> list[float]:
    """The learning rate every optimiser step actually ran with."""
    seen: list[float] = []
    step = agent.optimizer.step

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(agent.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    agent.optimizer.step = spy
    return seen


def test_step_loop_with_a_set_total_anneals_linearly_and_logs_the_lr_it_used(toy_tok) -> None:
    agent = make_agent(toy_tok, anneal_lr=True)
    agent.total_iterations = 4
    used = _record_step_lrs(agent)
    logged = [agent.step()["lr"] for _ in range(4)]
    assert logged == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])  # lr * (1 - i / 4), i = 0..3
    assert len(used) == 8 and used == pytest.approx([lr for lr in logged for _ in range(2)])  # 2 minibatches each


def test_learn_sets_the_schedule_length(toy_tok) -> None:
    agent = make_agent(toy_tok, anneal_lr=True)
    assert agent.total_iterations is None
    rows = agent.learn(4, progress=False)
    assert agent.total_iterations == 4
    assert [r["lr"] for r in rows] == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])


def test_step_without_a_known_total_keeps_the_lr_constant_and_warns_once(toy_tok) -> None:
    """The old default (total 1) trained one iteration and then ran at learning rate 0."""
    agent = make_agent(toy_tok, anneal_lr=True)
    used = _record_step_lrs(agent)
    before = {n: p.detach().clone() for n, p in agent.ac.named_parameters() if p.requires_grad}
    with pytest.warns(UserWarning, match="without a known run length: anneal_lr keeps the learning rate constant") as record:
        agent.step()
    assert sum("known run length" in str(w.message) for w in record) == 1
    after_first = {n: p.detach().clone() for n, p in agent.ac.named_parameters() if p.requires_grad}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # said once, not every iteration
        rows = [agent.step() for _ in range(2)]
    assert [r["lr"] for r in rows] == [1e-2, 1e-2] and used == [1e-2] * 6
    # The second and third iterations still train (lr 0 would leave the weights where they were).
    assert any(not torch.equal(after_first[n], p) for n, p in agent.ac.named_parameters() if p.requires_grad)
    assert any(not torch.equal(before[n], after_first[n]) for n in before)


def test_a_constant_lr_needs_no_total_and_warns_nothing(toy_tok) -> None:
    agent = make_agent(toy_tok, ReinforceAgent, ReinforceConfig, anneal_lr=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        lrs = [agent.step()["lr"] for _ in range(2)]
    assert lrs == [1e-2, 1e-2]


def test_prompt_schedule_progress_follows_the_total_and_is_zero_without_one(toy_tok) -> None:
    agent = make_agent(toy_tok, anneal_lr=False)
    seen: list[float] = []
    agent.prompt_sampler = lambda n, progress, rng: seen.append(progress) or rng.integers(len(TOY_PROMPTS), size=n)
    with pytest.warns(UserWarning, match="prompt schedule stays at progress 0"):
        agent.step()
    agent.total_iterations = 4
    agent.step()
    agent.step()
    assert seen == [0.0, 0.25, 0.5]
    assert all(math.isfinite(p) for p in seen)


# ----------------------------------------------------------------------------------------------
# One set of defaults: the main job's; each algorithm declares only its own fields and differences
# ----------------------------------------------------------------------------------------------
MAIN_JOB = dict(batch_size=32, minibatch_size=16, micro_batch_size=8, ppo_epochs=4, lora_r=16, lora_alpha=32,
                learning_rate=3e-4, anneal_lr=False, kl_coef=0.1, kl_target=2.0, kl_horizon=32, kl_stop=4.0,
                vf_coef=0.1, ent_coef=0.01, sample_every=2, checkpoint_every=5)


def test_ppo_defaults_are_the_main_jobs_settings() -> None:
    cfg = PPOConfig()
    assert {k: getattr(cfg, k) for k in MAIN_JOB} == MAIN_JOB
    assert (cfg.clip_range, cfg.clip_range_value) == (0.2, 0.2)


def test_each_algorithm_declares_only_the_fields_it_uses() -> None:
    def names(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    shared = names(OnPolicyConfig)
    assert names(PPOConfig) - shared == {"clip_range", "clip_range_value"}
    assert names(ReinforceConfig) - shared == {"baseline", "baseline_decay"}  # no clip ranges
    assert names(A2CConfig) == shared
    assert names(RLOOConfig) - shared == {"group_size", "clip_range", "clip"}
    assert names(GRPOConfig) - shared == {"group_size", "clip_range", "kl_in_loss", "kl_loss_estimator",
                                          "scale_rewards", "std_eps"}
    for cls in (ReinforceConfig, A2CConfig, RLOOConfig, GRPOConfig):  # one gradient step per rollout
        cfg = cls()
        cfg.validate()
        assert (cfg.minibatch_size, cfg.ppo_epochs) == (cfg.batch_size, 1), cls
        assert cfg.learning_rate == 3e-4 and cfg.lora_r == 16, cls  # the shared defaults otherwise
    assert ReinforceConfig().vf_coef == RLOOConfig().vf_coef == GRPOConfig().vf_coef == 0.0  # no critic
    assert (A2CConfig().vf_coef, A2CConfig().lam) == (0.5, 1.0)


def test_every_agent_is_an_on_policy_agent_and_the_base_is_abstract(toy_tok) -> None:
    for cls in (PPOAgent, ReinforceAgent, A2CAgent, RLOOAgent, GRPOAgent):
        assert issubclass(cls, OnPolicyAgent)
    assert not any(issubclass(cls, PPOAgent) for cls in (ReinforceAgent, A2CAgent, RLOOAgent, GRPOAgent))
    with pytest.raises(TypeError, match="abstract"):
        OnPolicyAgent(None, None, OnPolicyConfig())
