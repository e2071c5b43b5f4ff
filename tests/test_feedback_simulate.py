"""Simulated annotators (settable accuracy, disagreement knob) and agreement statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokengym.feedback.agreement import (
    agreement_report,
    cohen_kappa,
    fleiss_kappa_from_counts,
    krippendorff_alpha,
    percent_agreement,
)
from tokengym.feedback.errors import FeedbackError
from tokengym.feedback.simulate import LabelSimulator, SimulatedAnnotator, make_annotators
from tokengym.feedback.store import FeedbackStore


def _store(path: Path, n_prompts: int = 40, k: int = 6) -> FeedbackStore:
    """Candidates whose text is their gold score, judged by a parsing judge."""
    rng = np.random.default_rng(0)
    store = FeedbackStore(path)
    pids = store.add_prompts([f"p{i}" for i in range(n_prompts)])
    store.add_candidates([(pid, f"{rng.normal():.4f}", "sample", {}, None, 0) for pid in pids for _ in range(k)])
    return store


def judge(prompts, responses):
    return [float(r) for r in responses]


def _gold_agreement(store: FeedbackStore, name: str) -> float:
    aid = store.annotator_id(name)
    gold = {c.id: float(c.text) for c in store.candidates()}
    comps = store.comparisons(aid)
    right = [(gold[c.candidate_a] > gold[c.candidate_b]) == (c.outcome == "a") for c in comps]
    return float(np.mean(right))


@pytest.mark.parametrize("noise", ["bradley_terry", "thurstone"])
@pytest.mark.parametrize("accuracy", [0.7, 0.9])
def test_accuracy_is_what_was_set(tmp_path: Path, noise: str, accuracy: float) -> None:
    store = _store(tmp_path / "fb.sqlite")
    sim = LabelSimulator(store, judge, seed=1)
    sim.label_pairs([SimulatedAnnotator("x", accuracy, noise)], sim.sample_pairs(600))
    assert abs(_gold_agreement(store, "x") - accuracy) < 0.05  # binomial sd ~ 0.015


def test_perfect_annotator_and_reproducibility(tmp_path: Path) -> None:
    store = _store(tmp_path / "fb.sqlite")
    sim = LabelSimulator(store, judge, seed=2)
    pairs = sim.sample_pairs(200)
    sim.label_pairs([SimulatedAnnotator("perfect", 1.0)], pairs)
    assert _gold_agreement(store, "perfect") == 1.0
    sim.label_pairs([SimulatedAnnotator("again", 0.8, seed=5), SimulatedAnnotator("again2", 0.8, seed=5)], pairs)
    first = [c.outcome for c in store.comparisons(store.annotator_id("again"))]
    before = store.counts()
    # Same seed, name and items -> the same labels: the store keeps one judgement per annotator and
    # pair, so repeating them adds nothing (a different label would be refused as a duplicate).
    sim.label_pairs([SimulatedAnnotator("again", 0.8, seed=5)], pairs)
    assert store.counts() == before
    assert [c.outcome for c in store.comparisons(store.annotator_id("again"))] == first
    other = _store(tmp_path / "other.sqlite")  # a fresh store gets them again, label for label
    LabelSimulator(other, judge, seed=2).label_pairs([SimulatedAnnotator("again", 0.8, seed=5)], pairs)
    assert [c.outcome for c in other.comparisons(other.annotator_id("again"))] == first


def test_disagreement_knob_moves_agreement_not_accuracy(tmp_path: Path) -> None:
    store = _store(tmp_path / "fb.sqlite")
    sim = LabelSimulator(store, judge, seed=3)
    pairs = sim.sample_pairs(500)
    agreements, accuracies = [], []
    for d in (0.0, 0.5, 1.0):
        anns = make_annotators(3, accuracy=0.8, disagreement=d, prefix=f"d{d}")
        sim.label_pairs(anns, pairs)
        report = agreement_report(store, "compare", [a.name for a in anns])
        agreements.append(report["percent_agreement"])
        accuracies.append(np.mean([_gold_agreement(store, a.name) for a in anns]))
    assert agreements[0] == 1.0 and agreements[0] > agreements[1] > agreements[2]
    assert agreements[2] == pytest.approx(0.8**2 + 0.2**2, abs=0.05)  # independent annotators
    assert all(abs(a - 0.8) < 0.05 for a in accuracies)


def test_rankings_and_scores_are_simulated(tmp_path: Path) -> None:
    store = _store(tmp_path / "fb.sqlite", n_prompts=10, k=4)
    sim = LabelSimulator(store, judge)
    assert sim.label_rankings(make_annotators(2, accuracy=0.95, disagreement=0.5), k=4) == 20
    assert sim.label_scores(make_annotators(2, accuracy=0.95, prefix="s")) == 80
    values = {s.value for s in store.scores()}
    assert values <= set(map(float, range(1, 8))) and len(values) >= 5
    assert agreement_report(store, "rank")["krippendorff_alpha"] > 0.3
    assert agreement_report(store, "score")["krippendorff_alpha"] > 0.5


def test_bad_settings_are_refused() -> None:
    with pytest.raises(FeedbackError, match="accuracy"):
        SimulatedAnnotator("x", accuracy=0.4)
    with pytest.raises(FeedbackError, match="disagreement"):
        SimulatedAnnotator("x", disagreement=2)
    with pytest.raises(FeedbackError, match="noise"):
        SimulatedAnnotator("x", noise="gaussian")
    with pytest.raises(FeedbackError, match="not calibrated"):
        SimulatedAnnotator("x").compare((1, 2), (0.0, 1.0))


def test_cohen_kappa_textbook() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> po 0.7, pe 0.5, kappa 0.4
    x = {i: "y" if i < 25 else "n" for i in range(50)}
    y = {i: "y" if i < 20 or 25 <= i < 35 else "n" for i in range(50)}
    assert cohen_kappa(x, y) == pytest.approx(0.4)
    assert percent_agreement({"x": x, "y": y}) == pytest.approx(0.7)


def test_fleiss_kappa_wikipedia_example() -> None:
    rows = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    table = [{c: n for c, n in enumerate(r) if n} for r in rows]
    assert fleiss_kappa_from_counts(table) == pytest.approx(0.210, abs=0.001)


def test_krippendorff_alpha_reference_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's alpha": 4 coders, 12 units, missing values.
    data = {
        "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    }
    labels = {k: {i: v for i, v in enumerate(vals) if v is not None} for k, vals in data.items()}
    assert krippendorff_alpha(labels, "nominal") == pytest.approx(0.743, abs=0.001)
    assert krippendorff_alpha(labels, "interval") == pytest.approx(0.849, abs=0.001)
