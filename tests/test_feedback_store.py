"""The SQLite feedback store: round trips, durability settings, export/import and bad input."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from tokengym.feedback.errors import (
    FeedbackError,
    ImportFormatError,
    InvalidComparisonError,
    InvalidRankingError,
    NotAFeedbackStoreError,
    SchemaVersionError,
    ScoreOutOfRangeError,
    UnknownAnnotatorError,
    UnknownCandidateError,
)
from tokengym.feedback.store import APPLICATION_ID, SCHEMA_VERSION, FeedbackStore


def _filled(path: Path) -> tuple[FeedbackStore, int, list[int], list[int]]:
    store = FeedbackStore(path)
    p1, p2 = store.add_prompts(["The film was", "Dinner tonight was"])
    c1 = [store.add_candidate(p1, f"film answer {i}", "top_p", {"top_p": 0.9}) for i in range(3)]
    c2 = [store.add_candidate(p2, f"dinner answer {i}", "greedy") for i in range(2)]
    ann = store.add_annotator("alice")
    store.add_score(ann, c1[0], 6)
    store.add_ranking(ann, [c1[2], c1[0], c1[1]])
    store.add_comparison(ann, c2[0], c2[1], "tie")
    return store, ann, c1, c2


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_and_pragmas(tmp_path: Path) -> None:
    store, ann, c1, c2 = _filled(tmp_path / "fb.sqlite")
    store.close()
    store = FeedbackStore(tmp_path / "fb.sqlite")
    assert store.schema_version == SCHEMA_VERSION and store.score_range == (1.0, 7.0)
    assert store._query("PRAGMA journal_mode")[0][0] == "wal"
    assert store._query("PRAGMA application_id")[0][0] == APPLICATION_ID
    assert [s.value for s in store.scores()] == [6.0]
    assert store.rankings()[0].candidate_ids == (c1[2], c1[0], c1[1])
    assert store.comparisons()[0].outcome == "tie"
    cand = store.candidate(c1[0])
    assert (cand.strategy, cand.params) == ("top_p", {"top_p": 0.9})
    assert store.counts() == {"prompts": 2, "candidates": 5, "annotators": 1, "scores": 1, "rankings": 1,
                              "comparisons": 1}
    # prompts and annotators are get-or-create
    assert store.add_prompt("The film was") == cand.prompt_id
    assert store.add_annotator("alice") == ann


def test_score_range_is_per_store(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite", score_range=(0, 10))
    p = store.add_prompt("x")
    c = store.add_candidate(p, "y", "greedy")
    a = store.add_annotator("bob")
    store.add_score(a, c, 9.5)
    store.close()
    assert FeedbackStore(tmp_path / "fb.sqlite").score_range == (0.0, 10.0)
    with pytest.raises(FeedbackError, match="stores scores in"):
        FeedbackStore(tmp_path / "fb.sqlite", score_range=(1, 7))


def test_export_import_round_trip_is_idempotent(tmp_path: Path) -> None:
    store, *_ = _filled(tmp_path / "a.sqlite")
    assert store.export_jsonl(tmp_path / "fb.jsonl") == 1 + 2 + 5 + 1 + 3
    other = FeedbackStore(tmp_path / "b.sqlite")
    added = other.import_jsonl(tmp_path / "fb.jsonl")
    assert added == {"prompt": 2, "candidate": 5, "annotator": 1, "score": 1, "ranking": 1, "comparison": 1}
    assert other.counts() == store.counts()
    assert other.import_jsonl(tmp_path / "fb.jsonl") == dict.fromkeys(added, 0)
    assert [r.candidate_ids for r in other.rankings()] == [r.candidate_ids for r in store.rankings()]


def test_import_is_all_or_nothing(tmp_path: Path) -> None:
    store, *_ = _filled(tmp_path / "a.sqlite")
    store.export_jsonl(tmp_path / "fb.jsonl")
    lines = (tmp_path / "fb.jsonl").read_text().splitlines()
    (tmp_path / "bad.jsonl").write_text("\n".join(lines + ["{not json"]) + "\n")
    other = FeedbackStore(tmp_path / "b.sqlite")
    before = other.counts()
    with pytest.raises(ImportFormatError, match="not JSON"):
        other.import_jsonl(tmp_path / "bad.jsonl")
    bad_score = [json.dumps({**json.loads(l), "value": 99}) if '"type": "score"' in l else l for l in lines]
    (tmp_path / "bad2.jsonl").write_text("\n".join(bad_score) + "\n")
    with pytest.raises(ScoreOutOfRangeError):
        other.import_jsonl(tmp_path / "bad2.jsonl")
    assert other.counts() == before


@pytest.mark.parametrize(
    "action, error, words",
    [
        (lambda s, a, c1, c2: s.add_score(a, 9999, 3), UnknownCandidateError, "unknown candidate id 9999"),
        (lambda s, a, c1, c2: s.add_comparison(a, c1[0], 9999, "a"), UnknownCandidateError, "9999"),
        (lambda s, a, c1, c2: s.add_ranking(a, [c1[0], 9999]), UnknownCandidateError, "9999"),
        (lambda s, a, c1, c2: s.add_ranking(a, [c1[0], c1[1], c1[0]]), InvalidRankingError, "more than once"),
        (lambda s, a, c1, c2: s.add_ranking(a, [c1[0]]), InvalidRankingError, "at least 2"),
        (lambda s, a, c1, c2: s.add_ranking(a, [c1[0], c2[0]]), InvalidRankingError, "mixes candidates"),
        (lambda s, a, c1, c2: s.add_score(a, c1[0], 8), ScoreOutOfRangeError, "outside"),
        (lambda s, a, c1, c2: s.add_score(a, c1[0], 0.5), ScoreOutOfRangeError, "outside"),
        (lambda s, a, c1, c2: s.add_score(a, c1[0], float("nan")), ScoreOutOfRangeError, "outside"),
        (lambda s, a, c1, c2: s.add_scores(a, {c1[0]: 3, c1[1]: 70}), ScoreOutOfRangeError, "70"),
        (lambda s, a, c1, c2: s.add_comparison(a, c1[0], c1[0], "a"), InvalidComparisonError, "itself"),
        (lambda s, a, c1, c2: s.add_comparison(a, c1[0], c1[1], "left"), InvalidComparisonError, "outcome"),
        (lambda s, a, c1, c2: s.add_comparison(a, c1[0], c2[1], "a"), InvalidComparisonError, "different prompts"),
        (lambda s, a, c1, c2: s.add_score(12345, c1[0], 3), UnknownAnnotatorError, "12345"),
    ],
)
def test_bad_judgements_raise_and_change_nothing(tmp_path: Path, action, error, words) -> None:
    store, ann, c1, c2 = _filled(tmp_path / "fb.sqlite")
    before = (store.counts(), store.scores(), store.rankings(), store.comparisons())
    with pytest.raises(error, match=words):
        action(store, ann, c1, c2)
    assert (store.counts(), store.scores(), store.rankings(), store.comparisons()) == before
    assert issubclass(error, FeedbackError)


def test_corrupted_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not a database at all " * 200)
    digest = _digest(path)
    with pytest.raises(NotAFeedbackStoreError, match="not a readable SQLite database"):
        FeedbackStore(path)
    assert _digest(path) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.sqlite"]


def test_truncated_store_is_refused(tmp_path: Path) -> None:
    store, *_ = _filled(tmp_path / "fb.sqlite")
    store.close()
    data = (tmp_path / "fb.sqlite").read_bytes()
    (tmp_path / "half.sqlite").write_bytes(data[:100] + b"\xff" * (len(data) - 100))
    digest = _digest(tmp_path / "half.sqlite")
    with pytest.raises(NotAFeedbackStoreError):
        FeedbackStore(tmp_path / "half.sqlite")
    assert _digest(tmp_path / "half.sqlite") == digest


def test_foreign_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices(total) VALUES (12.5)")
    conn.commit()
    conn.close()
    digest = _digest(path)
    with pytest.raises(NotAFeedbackStoreError, match="another application"):
        FeedbackStore(path)
    assert _digest(path) == digest


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    store, *_ = _filled(tmp_path / "fb.sqlite")
    store.close()
    conn = sqlite3.connect(tmp_path / "fb.sqlite")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    digest = _digest(tmp_path / "fb.sqlite")
    with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}"):
        FeedbackStore(tmp_path / "fb.sqlite")
    assert _digest(tmp_path / "fb.sqlite") == digest


def test_missing_store_without_create(tmp_path: Path) -> None:
    with pytest.raises(FeedbackError, match="no feedback store"):
        FeedbackStore(tmp_path / "nope.sqlite", create=False)
    assert not (tmp_path / "nope.sqlite").exists()
