"""WeightedSum, Clipped, RunningNormalized, MissingEOSPenalty."""

from __future__ import annotations

import numpy as np
import pytest

from tokengym import rewards
from tokengym.rewards import Clipped, MissingEOSPenalty, RewardError, RunningNormalized, WeightedSum, batched

P = ["p1", "p2", "p3"]
R = ["the the", "the cat sat", "dog"]
META = [{"stopped": True}, {"stopped": False}, {"stopped": True}]


def fixed(values):
    return batched(lambda prompts, responses: np.asarray(values[: len(prompts)], dtype=float))


def test_weighted_sum_and_operator_sugar():
    share = rewards.make("token_share")  # [1, 1/3, 0]
    length = rewards.make("length", target=2)  # [0, -0.5, -0.5]
    ws = WeightedSum([(share, 2.0), (("length", {"target": 2}), 1.0)])
    np.testing.assert_allclose(ws(P, R), [2.0, 2 / 3 - 0.5, -0.5], atol=1e-6)
    sugar = share * 2.0 + length
    assert isinstance(sugar, WeightedSum) and [w for _, w in sugar.terms] == [2.0, 1.0]
    np.testing.assert_allclose(rewards.resolve_reward(sugar)(P, R), [2.0, 2 / 3 - 0.5, -0.5], atol=1e-6)
    assert set(ws.parts(P, R)) == {"token_share", "length"}
    assert "2*token_share" in ws.name


def test_clipped():
    c = Clipped(fixed([-3.0, 0.5, 9.0]), -1.0, 1.0)
    assert c(P, R).tolist() == [-1.0, 0.5, 1.0]
    with pytest.raises(ValueError):
        Clipped("vader", 1.0, -1.0)


def test_running_normalized_matches_numpy_over_all_batches_and_checkpoints():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (3, 1, 5)]
    it = iter(batches)
    norm = RunningNormalized(batched(lambda prompts, responses: next(it)), eps=0.0)
    seen = []
    for b in batches:
        out = norm(["p"] * len(b), ["r"] * len(b))
        seen.extend(b)
        np.testing.assert_allclose(out, (b - np.mean(seen)) / np.std(seen), rtol=1e-5)  # inner scores are float32
    state = norm.state_dict()
    assert state["count"] == 9 and state["mean"] == pytest.approx(np.mean(seen))
    fresh = RunningNormalized(fixed([1.0, 2.0, 3.0]), update=False)
    fresh.load_state_dict(state)
    np.testing.assert_allclose(fresh(P, R), (np.array([1.0, 2, 3]) - np.mean(seen)) / np.std(seen), rtol=1e-6)
    assert fresh.state_dict() == state  # frozen


def test_running_normalized_clip_and_first_batch():
    out = RunningNormalized(fixed([5.0]), clip=1.0)(P[:1], R[:1])
    assert out.tolist() == [0.0]  # a single sample is its own mean
    out = RunningNormalized(fixed([0.0, 0.0, 100.0]), clip=1.0)(P, R)
    assert out.max() == 1.0


@pytest.mark.parametrize("mode, expected", [("replace", [1.0, -1.0, 0.0]), ("add", [1.0, 1 / 3 - 1.0, 0.0])])
def test_missing_eos_penalty(mode, expected):
    r = MissingEOSPenalty("token_share", penalty=-1.0, mode=mode)
    np.testing.assert_allclose(r(P, R, metadata=META), expected, atol=1e-6)
    with pytest.raises(RewardError, match="stopped"):
        r(P, R)


def test_combinator_errors_name_the_inner_reward():
    ws = rewards.resolve_reward(WeightedSum([("bleu", 1.0), ("vader", 1.0)]))
    with pytest.raises(RewardError, match="'bleu' on sample 0"):
        ws(P, R, references=[None, "x", "y"])
