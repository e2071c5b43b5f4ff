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
        (lambda s, a, c1, c2: s.add_scores(a, {c1[1]: 3, c1[2]: 70}), ScoreOutOfRangeError, "70"),
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


# ------------------------------------------------------------------- one judgement per task
def test_one_judgement_per_annotator_and_task(tmp_path: Path) -> None:
    from tokengym.feedback.errors import DuplicateJudgementError

    store, ann, c1, c2 = _filled(tmp_path / "fb.sqlite")
    counts = store.counts()
    # the same answer again is accepted and adds nothing (a double click, a repeated request)
    assert store.add_score(ann, c1[0], 6) == store.scores()[0].id
    assert store.add_ranking(ann, [c1[2], c1[0], c1[1]]) == store.rankings()[0].id
    assert store.add_comparison(ann, c2[1], c2[0], "tie") == store.comparisons()[0].id  # either order
    assert store.counts() == counts
    # a different answer is refused, naming the annotator, the task and both answers
    for call in (lambda: store.add_score(ann, c1[0], 2), lambda: store.add_ranking(ann, [c1[0], c1[1], c1[2]]),
                 lambda: store.add_comparison(ann, c2[0], c2[1], "a")):
        with pytest.raises(DuplicateJudgementError, match="annotator 'alice' already judged .*revise"):
            call()
    assert store.counts() == counts
    # another annotator, or a ranking of another candidate set, is another judgement
    bob = store.add_annotator("bob")
    store.add_score(bob, c1[0], 2)
    store.add_ranking(ann, [c1[0], c1[1]])
    assert len(store.scores()) == 2 and len(store.rankings()) == 2


def test_a_revision_replaces_and_is_recorded(tmp_path: Path) -> None:
    store, ann, c1, c2 = _filled(tmp_path / "fb.sqlite")
    old = store.scores()[0]
    new_id = store.add_score(ann, c1[0], 2, revise=True)
    assert [(s.id, s.value, s.revises) for s in store.scores()] == [(new_id, 2.0, old.id)]
    history = store.scores(history=True)
    assert [(s.value, s.replaced_at is not None) for s in history] == [(6.0, True), (2.0, False)]
    rid = store.add_ranking(ann, [c1[0], c1[1], c1[2]], revise=True)
    cid = store.add_comparison(ann, c2[0], c2[1], "b", revise=True)
    assert store.rankings()[0].id == rid and store.comparisons()[0].id == cid
    assert len(store.rankings(history=True)) == len(store.comparisons(history=True)) == 2
    # the history survives an export and import, and a second import adds nothing
    store.export_jsonl(tmp_path / "fb.jsonl")
    other = FeedbackStore(tmp_path / "b.sqlite")
    other.import_jsonl(tmp_path / "fb.jsonl")
    assert [(s.value, s.replaced_at is not None) for s in other.scores(history=True)] == [(6.0, True), (2.0, False)]
    assert [s.value for s in other.scores()] == [2.0] and other.scores()[0].revises == other.scores(history=True)[0].id
    before = other.counts()
    assert sum(other.import_jsonl(tmp_path / "fb.jsonl").values()) == 0 and other.counts() == before


def test_an_import_never_overrides_a_different_judgement(tmp_path: Path) -> None:
    from tokengym.feedback.errors import DuplicateJudgementError

    store, ann, c1, c2 = _filled(tmp_path / "a.sqlite")
    store.export_jsonl(tmp_path / "a.jsonl")
    other = FeedbackStore(tmp_path / "b.sqlite")
    other.import_jsonl(tmp_path / "a.jsonl")
    # alice compares the same new pair in both stores, differently; neither is a revision of the other
    store.add_comparison(ann, c1[0], c1[1], "b")
    a, b = (other.candidates()[i].id for i in (0, 1))
    other.add_comparison(other.annotator_id("alice"), a, b, "a")
    store.add_score(ann, c1[0], 3, revise=True)  # a revision of a judgement both stores share is fine
    store.export_jsonl(tmp_path / "a2.jsonl")
    before = other.counts()
    with pytest.raises(DuplicateJudgementError, match=r"line \d+: annotator 'alice' already has a different current"):
        other.import_jsonl(tmp_path / "a2.jsonl")
    assert other.counts() == before
    other.add_comparison(other.annotator_id("alice"), a, b, "b", revise=True)  # once they agree, it merges
    added = other.import_jsonl(tmp_path / "a2.jsonl")
    assert added["score"] == 1 and [s.value for s in other.scores()] == [3.0]


_V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE prompts (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE, source TEXT, created_at REAL NOT NULL);
CREATE TABLE candidates (id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL, text TEXT NOT NULL,
    strategy TEXT NOT NULL, params TEXT NOT NULL, model TEXT, round INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
CREATE TABLE annotators (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, config TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE scores (id INTEGER PRIMARY KEY, annotator_id INTEGER NOT NULL, candidate_id INTEGER NOT NULL,
    value REAL NOT NULL, created_at REAL NOT NULL);
CREATE TABLE rankings (id INTEGER PRIMARY KEY, annotator_id INTEGER NOT NULL, prompt_id INTEGER NOT NULL,
    candidate_ids TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE comparisons (id INTEGER PRIMARY KEY, annotator_id INTEGER NOT NULL, prompt_id INTEGER NOT NULL,
    candidate_a INTEGER NOT NULL, candidate_b INTEGER NOT NULL, outcome TEXT NOT NULL, created_at REAL NOT NULL);
INSERT INTO meta VALUES ('score_min', '1.0'), ('score_max', '7.0'), ('created_at', '0.0');
INSERT INTO prompts VALUES (1, 'p', NULL, 0);
INSERT INTO candidates VALUES (1, 1, 'x', 'greedy', '{}', NULL, 0, 0), (2, 1, 'y', 'greedy', '{}', NULL, 0, 0);
INSERT INTO annotators VALUES (1, 'ann', 'human', '{}', 0);
INSERT INTO scores VALUES (1, 1, 1, 5, 10), (2, 1, 1, 5, 11), (3, 1, 2, 3, 12);
INSERT INTO comparisons VALUES (1, 1, 1, 1, 2, 'a', 20), (2, 1, 1, 2, 1, 'a', 21);
INSERT INTO rankings VALUES (1, 1, 1, '[1, 2]', 30);
"""


def test_a_version_1_store_with_duplicates_is_upgraded_without_losing_a_row(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_V1_SCHEMA)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    store = FeedbackStore(path)
    assert store.schema_version == SCHEMA_VERSION
    # the pressed-twice score and the "a" then "b" comparison: the latest is current, the earlier its history
    assert [(s.id, s.revises) for s in store.scores()] == [(2, 1), (3, None)]
    assert [(c.id, c.outcome, c.revises) for c in store.comparisons()] == [(2, "a", 1)]
    assert store.counts()["scores"] == 3 and store.counts()["comparisons"] == 2
    assert [c.replaced_at for c in store.comparisons(history=True)] == [21.0, None]
