"""Registry, resolve_reward and the CheckedReward validation of tokengym.rewards."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

from tokengym import rewards
from tokengym.rewards import registry
from tokengym.rewards.base import CheckedReward, RewardError, RewardFunction, batched

P = ["Review:", "Say hi"]
R = ["the the cat", "hello"]


class Const(RewardFunction):
    name = "const"

    def __init__(self, value=1.0):
        self.value = value

    def __call__(self, prompts, responses, *, references=None, metadata=None):
        return np.full(len(prompts), self.value)


@pytest.fixture
def clean_registry():
    saved, loaded = dict(registry._REGISTRY), registry._entry_points_loaded
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    registry._entry_points_loaded = loaded


def test_required_names_are_registered():
    names = rewards.list()
    assert names == rewards.list_rewards() == sorted(names)
    for n in ["vader", "learned", "bleu", "chrf", "rouge", "length", "keyword", "eos", "token_share"]:
        assert n in names


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="vader") as e:
        rewards.make("no_such_reward")
    assert "no_such_reward" in str(e.value)


def test_resolve_default_is_vader_and_result_is_checked():
    r = rewards.resolve_reward(None)
    assert isinstance(r, CheckedReward) and r.name == "vader"
    out = r(P, R)
    assert out.dtype == np.float32 and out.shape == (2,)


def test_resolve_is_idempotent_and_accepts_every_spec_form(clean_registry):
    checked = rewards.resolve_reward("token_share")
    assert rewards.resolve_reward(checked) is checked
    expected = np.array([2 / 3, 0.0], dtype=np.float32)
    for spec in ["token_share", ("token_share", {"target": "the"}), rewards.TokenShareReward(), rewards.TokenShareReward]:
        np.testing.assert_allclose(rewards.resolve_reward(spec)(P, R), expected, rtol=1e-6)
    rewards.register("const", Const)
    assert rewards.resolve_reward("const", value=3.0)(P, R).tolist() == [3.0, 3.0]
    assert rewards.resolve_reward(("const", {"value": 2.0}))(P, R).tolist() == [2.0, 2.0]


def test_register_refuses_duplicates_without_overwrite(clean_registry):
    rewards.register("const", Const)
    with pytest.raises(ValueError, match="already registered"):
        rewards.register("const", Const)
    rewards.register("const", lambda: Const(5.0), overwrite=True)
    assert rewards.make("const")(P, R).tolist() == [5.0, 5.0]


def test_plain_callable_is_adapted_per_sample_with_optional_reference_and_metadata():
    r = rewards.resolve_reward(lambda p, r: len(r))
    assert r(P, R).tolist() == [11.0, 5.0]

    def with_extras(prompt, response, reference=None, metadata=None):
        return float(response == reference) + metadata["num_tokens"]

    out = rewards.resolve_reward(with_extras)(P, R, references=["x", "hello"], metadata=[{"num_tokens": 1}, {"num_tokens": 2}])
    assert out.tolist() == [1.0, 3.0]
    assert rewards.resolve_reward(with_extras).name == "with_extras"


def test_batched_callable_is_called_once_per_batch():
    calls = []

    @batched
    def lengths(prompts, responses, metadata=None):
        calls.append(len(prompts))
        return [len(r) for r in responses]

    assert rewards.resolve_reward(lengths)(P, R).tolist() == [11.0, 5.0]
    assert calls == [2]


def test_per_sample_exception_names_reward_and_sample():
    def boom(prompt, response):
        if response == "hello":
            raise ZeroDivisionError("nope")
        return 0.0

    with pytest.raises(RewardError) as e:
        rewards.resolve_reward(boom)(P, R)
    msg = str(e.value)
    assert "'boom'" in msg and "sample 1" in msg and "'Say hi'" in msg and "'hello'" in msg and "ZeroDivisionError" in msg
    assert isinstance(e.value.__cause__, ZeroDivisionError)


def test_batched_exception_is_wrapped_naming_the_reward():
    class Broken(Const):
        name = "broken"

        def __call__(self, prompts, responses, **kw):
            raise RuntimeError("model crashed")

    with pytest.raises(RewardError, match=r"'broken'.*RuntimeError: model crashed"):
        rewards.resolve_reward(Broken())(P, R)


@pytest.mark.parametrize(
    "output, match",
    [([1.0], r"shape \(1,\); expected \(2,\)"), ([[1.0, 2.0]], r"shape \(1, 2\)"), ([1.0, np.nan], "sample 1.*non-finite"),
     ([1e39, 0.0], "sample 0.*non-finite"), (["a", "b"], "not an array of numbers")],
)
def test_checked_reward_rejects_bad_outputs(output, match):
    bad = batched(lambda prompts, responses: output)
    with pytest.raises(RewardError, match=match):
        rewards.resolve_reward(bad)(P, R)


def test_checked_reward_validates_inputs():
    r = rewards.resolve_reward("token_share")
    with pytest.raises(RewardError, match="2 prompts but 1 responses"):
        r(P, R[:1])
    with pytest.raises(RewardError, match="2 prompts but 1 metadata"):
        r(P, R, metadata=[{}])
    with pytest.raises(RewardError, match="sample 1.*must be str"):
        r(P, ["ok", None])


def test_long_texts_are_truncated_in_messages():
    with pytest.raises(RewardError) as e:
        rewards.resolve_reward("bleu")(["p" * 500], ["r" * 500], references=[None])
    assert len(str(e.value)) < 300 and "..." in str(e.value)


def test_kwargs_with_an_instance_are_refused():
    with pytest.raises(TypeError, match="only apply"):
        rewards.resolve_reward(Const(), value=2)
    with pytest.raises(TypeError, match="cannot make a reward"):
        rewards.resolve_reward(42)


def test_factory_must_return_a_reward_function(clean_registry):
    rewards.register("bad", lambda: (lambda p, r: 1.0))
    with pytest.raises(TypeError, match="not a RewardFunction"):
        rewards.make("bad")


def test_entry_points_are_loaded_lazily(clean_registry, monkeypatch):
    eps = [
        importlib.metadata.EntryPoint("plugin_share", "tokengym.rewards.rules:TokenShareReward", registry.ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("plugin_broken", "no_such_module_xyz:Thing", registry.ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("vader", "no_such_module_xyz:Thing", registry.ENTRY_POINT_GROUP),
    ]
    seen = []
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: seen.append(group) or eps)
    registry._entry_points_loaded = False
    with pytest.warns(UserWarning, match="'vader'.*already registered"):
        names = rewards.list()
    assert seen == [registry.ENTRY_POINT_GROUP] and "plugin_share" in names
    assert rewards.make("plugin_share", target="cat")(P, R)[0] == pytest.approx(1 / 3)
    assert rewards.make("vader").name == "vader"  # built-in kept
    with pytest.raises(ImportError, match="plugin_broken.*no_such_module_xyz"):
        rewards.make("plugin_broken")
    rewards.list()
    assert seen == [registry.ENTRY_POINT_GROUP]  # read once


def test_checked_reward_forwards_state_and_attributes():
    norm = rewards.resolve_reward(rewards.RunningNormalized("token_share"))
    norm(P, R)
    assert norm.state_dict()["count"] == 2 and norm.count == 2
    with pytest.raises(RewardError, match="stateless"):
        rewards.resolve_reward("vader").load_state_dict({"x": 1})


def test_a_reward_spec_may_be_a_mapping_with_a_name():
    from tokengym.rewards import resolve_reward

    reward = resolve_reward({"name": "length", "target": 2, "unit": "words"})
    assert reward(["p"], ["two words"]).tolist() == [0.0]
    assert reward(["p"], ["one"]).tolist() == [-0.5]
    with pytest.raises(TypeError, match="'name'"):
        resolve_reward({"target": 2})
