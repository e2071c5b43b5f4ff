"""Candidate generation: every decoding strategy, recorded with its parameters, seeded, left-padded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokengym.feedback.candidates import CandidateGenerator, DecodingStrategy, parse_strategies
from tokengym.feedback.errors import FeedbackError
from tokengym.feedback.store import FeedbackStore
from tokengym.models import make_tiny_causal_lm

PROMPTS = ["The movie was", "I went to a restaurant and the soup"]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_causal_lm(seed=0)


def test_parse_strategies() -> None:
    got = parse_strategies("greedy, beam:3 sample temperature:0.5,top_k:7,top_p:top_p=0.8")
    assert [(s.name, s.params) for s in got] == [
        ("greedy", {}), ("beam", {"num_beams": 3}), ("sample", {}), ("temperature", {"temperature": 0.5}),
        ("top_k", {"top_k": 7}), ("top_p", {"top_p": 0.8})]
    assert DecodingStrategy.parse("top_p").params == {"top_p": 0.9}
    for bad, words in [("nucleus", "unknown decoding strategy"), ("greedy:3", "takes no value"),
                       ("top_p:1.5", "top_p must"), ("temperature:0", "temperature must"),
                       ("top_k:x", "bad value"), ("beam:0", "num_beams")]:
        with pytest.raises(FeedbackError, match=words):
            parse_strategies(bad)


def test_every_strategy_is_recorded_and_reproducible(tmp_path: Path, tiny) -> None:
    tok, model = tiny
    strategies = parse_strategies("greedy,beam:2,sample,temperature:0.7,top_k:5,top_p:0.9")
    gen = CandidateGenerator(tok, model, max_new_tokens=6, batch_size=2, seed=3)
    store = FeedbackStore(tmp_path / "a.sqlite")
    ids = gen.to_store(store, PROMPTS, per_prompt=8, strategies=strategies, round=0, model_name="tiny")
    assert len(ids) == 16
    cands = store.candidates()
    for pid in (1, 2):
        mine = [c for c in cands if c.prompt_id == pid]
        assert [c.strategy for c in mine] == ["greedy", "beam", "sample", "temperature", "top_k", "top_p",
                                              "greedy", "beam"]
    beam = next(c for c in cands if c.strategy == "beam")
    assert beam.params == {"num_beams": 2, "max_new_tokens": 6, "seed": 3} and beam.model == "tiny"
    assert next(c for c in cands if c.strategy == "top_k").params["top_k"] == 5
    assert all(c.text for c in cands)
    # greedy is deterministic; the two beams of a prompt are distinct hypotheses
    g = [c.text for c in cands if c.strategy == "greedy" and c.prompt_id == 1]
    assert g[0] == g[1]

    again = FeedbackStore(tmp_path / "b.sqlite")
    gen.to_store(again, PROMPTS, per_prompt=8, strategies=strategies)
    assert [c.text for c in again.candidates()] == [c.text for c in cands]


def test_batching_does_not_change_greedy_output(tiny) -> None:
    tok, model = tiny
    greedy = DecodingStrategy("greedy")
    alone = [CandidateGenerator(tok, model, 5, batch_size=1).generate([p], greedy, 1)[0] for p in PROMPTS]
    batched = CandidateGenerator(tok, model, 5, batch_size=2).generate(PROMPTS, greedy, 1)
    assert alone == batched  # left padding + attention mask: padding does not leak into the output


def test_beam_count_is_checked(tiny) -> None:
    tok, model = tiny
    with pytest.raises(FeedbackError, match="at most num_beams=2"):
        CandidateGenerator(tok, model, 4).generate(PROMPTS, DecodingStrategy("beam", {"num_beams": 2}), 3)
