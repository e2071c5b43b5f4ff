"""The feedback store: one SQLite file holding prompts, candidates, annotators and judgements.

Design choices and why:

* **WAL mode + ``synchronous=FULL`` + one transaction per judgement.** Every ``add_*`` call commits
  before it returns, so killing the labelling process (even with SIGKILL) loses nothing that was
  already submitted, and readers (training, agreement reports) never block the labeller.
* **Schema versioned with ``PRAGMA user_version``** and marked with ``PRAGMA application_id``, so a
  file written by a newer tokengym, or by another application, is refused before anything is written.
* **Validate inside the write transaction, roll back on any error.** Bad input raises a
  :class:`~tokengym.feedback.errors.FeedbackError` subclass naming the problem and the store is
  unchanged.
* Three judgement kinds with their own tables: ``scores`` (scalar, range stored per store),
  ``rankings`` (candidate ids best-first) and ``comparisons`` (outcome ``a``/``b``/``tie``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

from .errors import (
    FeedbackError,
    ImportFormatError,
    InvalidComparisonError,
    InvalidRankingError,
    NotAFeedbackStoreError,
    SchemaVersionError,
    ScoreOutOfRangeError,
    UnknownAnnotatorError,
    UnknownCandidateError,
    UnknownPromptError,
)

SCHEMA_VERSION = 1
APPLICATION_ID = 0x546B4642  # "TkFB": tells our files apart from any other SQLite database
DEFAULT_SCORE_RANGE = (1.0, 7.0)  # 7-point Likert
Outcome = Literal["a", "b", "tie"]
OUTCOMES: tuple[str, ...] = ("a", "b", "tie")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE prompts (
    id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE, source TEXT, created_at REAL NOT NULL);
CREATE TABLE candidates (
    id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id), text TEXT NOT NULL,
    strategy TEXT NOT NULL, params TEXT NOT NULL, model TEXT, round INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL);
CREATE INDEX candidates_prompt ON candidates(prompt_id);
CREATE TABLE annotators (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, config TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE scores (
    id INTEGER PRIMARY KEY, annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    candidate_id INTEGER NOT NULL REFERENCES candidates(id), value REAL NOT NULL, created_at REAL NOT NULL);
CREATE TABLE rankings (
    id INTEGER PRIMARY KEY, annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    prompt_id INTEGER NOT NULL REFERENCES prompts(id), candidate_ids TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE comparisons (
    id INTEGER PRIMARY KEY, annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    prompt_id INTEGER NOT NULL REFERENCES prompts(id),
    candidate_a INTEGER NOT NULL REFERENCES candidates(id), candidate_b INTEGER NOT NULL REFERENCES candidates(id),
    outcome TEXT NOT NULL CHECK (outcome IN ('a', 'b', 'tie')), created_at REAL NOT NULL);
"""
_TABLES = ("meta", "prompts", "candidates", "annotators", "scores", "rankings", "comparisons")


@dataclass(frozen=True)
class Prompt:
    id: int
    text: str
    source: str | None = None


@dataclass(frozen=True)
class Candidate:
    """A response to a prompt, with the decoding strategy and parameters that produced it."""

    id: int
    prompt_id: int
    text: str
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    round: int = 0


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    kind: str  # "human" or "simulated"
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    id: int
    annotator_id: int
    candidate_id: int
    value: float
    created_at: float


@dataclass(frozen=True)
class Ranking:
    id: int
    annotator_id: int
    prompt_id: int
    candidate_ids: tuple[int, ...]  # best first
    created_at: float


@dataclass(frozen=True)
class Comparison:
    id: int
    annotator_id: int
    prompt_id: int
    candidate_a: int
    candidate_b: int
    outcome: str  # "a", "b" or "tie"
    created_at: float


class FeedbackStore:
    """A feedback store backed by one SQLite file. Thread-safe (one connection behind a lock).

    ``score_range`` is fixed when the store is created; reopening with a different range is refused
    rather than silently rescaling earlier scores.
    """

    def __init__(
        self, path: str | os.PathLike, score_range: tuple[float, float] | None = None, create: bool = True
    ) -> None:
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise FeedbackError(f"no feedback store at {self.path}")
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            self._open(score_range)
        except BaseException:
            self._conn.close()
            raise

    # ----------------------------------------------------------------------------------- opening
    def _inspect(self) -> tuple[int, int, set[str]]:
        # Only reads here: a foreign or corrupted file must not be touched before it is recognised.
        try:
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise NotAFeedbackStoreError(f"{self.path} is not a readable SQLite database: {exc}") from exc
        return app_id, version, tables

    def _open(self, score_range: tuple[float, float] | None) -> None:
        app_id, version, tables = self._inspect()
        if app_id == 0 and version == 0 and not tables:
            self._create(score_range or DEFAULT_SCORE_RANGE)
        elif app_id != APPLICATION_ID:
            raise NotAFeedbackStoreError(
                f"{self.path} is an SQLite database of another application (application_id={app_id:#x}, "
                f"tables={sorted(tables)}); refusing to modify it"
            )
        elif version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has feedback schema version {version}, newer than this tokengym's "
                f"{SCHEMA_VERSION}; upgrade tokengym to read it"
            )
        elif version < 1 or not set(_TABLES) <= tables:
            raise NotAFeedbackStoreError(
                f"{self.path} is damaged: schema version {version}, missing tables {sorted(set(_TABLES) - tables)}"
            )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # a committed judgement survives a crash
        self._conn.execute("PRAGMA foreign_keys=ON")
        lo, hi = self.score_range
        if score_range is not None and (float(score_range[0]), float(score_range[1])) != (lo, hi):
            raise FeedbackError(
                f"{self.path} stores scores in [{lo:g}, {hi:g}], not [{score_range[0]:g}, {score_range[1]:g}]"
            )

    def _create(self, score_range: tuple[float, float]) -> None:
        lo, hi = (float(score_range[0]), float(score_range[1]))
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise FeedbackError(f"score range must be finite with min < max, got {score_range}")
        self._conn.execute("PRAGMA journal_mode=WAL")
        with self._write() as cur:
            # Statement by statement: executescript() would COMMIT the open transaction first.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                cur.execute(statement)
            cur.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [("score_min", repr(lo)), ("score_max", repr(hi)), ("created_at", repr(time.time()))],
            )
            cur.execute(f"PRAGMA application_id={APPLICATION_ID}")
            cur.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One IMMEDIATE transaction: commit on success, roll back on any exception (then re-raise)."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------- properties
    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    @property
    def score_range(self) -> tuple[float, float]:
        meta = dict(self._query("SELECT key, value FROM meta"))
        return float(meta["score_min"]), float(meta["score_max"])

    @property
    def schema_version(self) -> int:
        return int(self._query("PRAGMA user_version")[0][0])

    # ------------------------------------------------------------------- prompts and candidates
    def add_prompt(self, text: str, source: str | None = None) -> int:
        """Id of the prompt with this text, inserting it if new (prompts are unique by text)."""
        return self.add_prompts([text], source)[0]

    def add_prompts(self, texts: Iterable[str], source: str | None = None) -> list[int]:
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise FeedbackError(f"a prompt must be a non-empty string, got {t!r}")
        with self._write() as cur:
            return [self._get_or_add_prompt(cur, t, source) for t in texts]

    @staticmethod
    def _get_or_add_prompt(cur: sqlite3.Cursor, text: str, source: str | None) -> int:
        row = cur.execute("SELECT id FROM prompts WHERE text = ?", (text,)).fetchone()
        if row:
            return int(row[0])
        cur.execute("INSERT INTO prompts(text, source, created_at) VALUES (?, ?, ?)", (text, source, time.time()))
        return int(cur.lastrowid)

    def add_candidate(
        self, prompt_id: int, text: str, strategy: str, params: dict[str, Any] | None = None,
        model: str | None = None, round: int = 0,
    ) -> int:
        return self.add_candidates([(prompt_id, text, strategy, params or {}, model, round)])[0]

    def add_candidates(
        self, rows: Iterable[tuple[int, str, str, dict[str, Any], str | None, int]]
    ) -> list[int]:
        """Insert ``(prompt_id, text, strategy, params, model, round)`` rows in one transaction."""
        ids = []
        with self._write() as cur:
            for prompt_id, text, strategy, params, model, rnd in rows:
                self._require_prompt(cur, prompt_id)
                if not isinstance(text, str):
                    raise FeedbackError(f"candidate text must be a string, got {type(text).__name__}")
                cur.execute(
                    "INSERT INTO candidates(prompt_id, text, strategy, params, model, round, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (int(prompt_id), text, str(strategy), json.dumps(params, sort_keys=True), model, int(rnd), time.time()),
                )
                ids.append(int(cur.lastrowid))
        return ids

    def add_annotator(self, name: str, kind: str = "human", config: dict[str, Any] | None = None) -> int:
        """Id of the annotator called ``name``, registering it if new."""
        if not isinstance(name, str) or not name.strip():
            raise FeedbackError(f"annotator name must be a non-empty string, got {name!r}")
        with self._write() as cur:
            row = cur.execute("SELECT id FROM annotators WHERE name = ?", (name,)).fetchone()
            if row:
                return int(row[0])
            cur.execute(
                "INSERT INTO annotators(name, kind, config, created_at) VALUES (?, ?, ?, ?)",
                (name, kind, json.dumps(config or {}, sort_keys=True), time.time()),
            )
            return int(cur.lastrowid)

    # --------------------------------------------------------------------------- validation
    @staticmethod
    def _require_row(cur: sqlite3.Cursor, table: str, row_id: Any, error: type[FeedbackError], what: str) -> None:
        # bool is an int subclass; True must not pass for id 1.
        if not isinstance(row_id, int) or isinstance(row_id, bool) or cur.execute(
            f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)
        ).fetchone() is None:
            raise error(f"unknown {what} id {row_id!r}")

    @classmethod
    def _require_prompt(cls, cur: sqlite3.Cursor, prompt_id: Any) -> None:
        cls._require_row(cur, "prompts", prompt_id, UnknownPromptError, "prompt")

    @classmethod
    def _require_annotator(cls, cur: sqlite3.Cursor, annotator_id: Any) -> None:
        cls._require_row(cur, "annotators", annotator_id, UnknownAnnotatorError, "annotator")

    @staticmethod
    def _prompt_of(cur: sqlite3.Cursor, candidate_id: Any) -> int:
        row = None
        if isinstance(candidate_id, int) and not isinstance(candidate_id, bool):
            row = cur.execute("SELECT prompt_id FROM candidates WHERE id = ?", (candidate_id,)).fetchone()
        if row is None:
            raise UnknownCandidateError(f"unknown candidate id {candidate_id!r}")
        return int(row[0])

    # ---------------------------------------------------------------------------- judgements
    def add_score(self, annotator_id: int, candidate_id: int, value: float, created_at: float | None = None) -> int:
        """Record a scalar score; committed before returning."""
        with self._write() as cur:
            return self._insert_score(cur, annotator_id, candidate_id, value, created_at)

    def add_scores(self, annotator_id: int, values: dict[int, float]) -> list[int]:
        """Several scores by one annotator, all or none (one web/terminal submission)."""
        with self._write() as cur:
            return [self._insert_score(cur, annotator_id, c, v, None) for c, v in values.items()]

    def _insert_score(self, cur: sqlite3.Cursor, annotator_id: int, candidate_id: int, value: Any,
                      created_at: float | None) -> int:
        self._require_annotator(cur, annotator_id)
        self._prompt_of(cur, candidate_id)
        lo, hi = self.score_range
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= float(value) <= hi):
            raise ScoreOutOfRangeError(f"score {value!r} for candidate {candidate_id} is outside [{lo:g}, {hi:g}]")
        cur.execute(
            "INSERT INTO scores(annotator_id, candidate_id, value, created_at) VALUES (?, ?, ?, ?)",
            (annotator_id, candidate_id, float(value), created_at or time.time()),
        )
        return int(cur.lastrowid)

    def add_ranking(self, annotator_id: int, candidate_ids: Sequence[int], created_at: float | None = None) -> int:
        """Record a ranking of K >= 2 candidates of one prompt, best first; committed before returning."""
        with self._write() as cur:
            return self._insert_ranking(cur, annotator_id, candidate_ids, created_at)

    def _insert_ranking(self, cur: sqlite3.Cursor, annotator_id: int, candidate_ids: Sequence[int],
                        created_at: float | None) -> int:
        self._require_annotator(cur, annotator_id)
        ids = list(candidate_ids)
        if len(ids) < 2:
            raise InvalidRankingError(f"a ranking needs at least 2 candidates, got {ids}")
        dupes = sorted({c for c in ids if ids.count(c) > 1})
        if dupes:
            raise InvalidRankingError(f"ranking {ids} lists candidate(s) {dupes} more than once")
        prompts = {self._prompt_of(cur, c) for c in ids}
        if len(prompts) != 1:
            raise InvalidRankingError(f"ranking {ids} mixes candidates of prompts {sorted(prompts)}")
        cur.execute(
            "INSERT INTO rankings(annotator_id, prompt_id, candidate_ids, created_at) VALUES (?, ?, ?, ?)",
            (annotator_id, prompts.pop(), json.dumps(ids), created_at or time.time()),
        )
        return int(cur.lastrowid)

    def add_comparison(self, annotator_id: int, candidate_a: int, candidate_b: int, outcome: str,
                       created_at: float | None = None) -> int:
        """Record which of two candidates of one prompt is better (``a``, ``b`` or ``tie``)."""
        with self._write() as cur:
            return self._insert_comparison(cur, annotator_id, candidate_a, candidate_b, outcome, created_at)

    def add_rankings(self, annotator_id: int, orders: Iterable[Sequence[int]]) -> list[int]:
        """Several rankings by one annotator in one transaction (bulk simulated labels)."""
        with self._write() as cur:
            return [self._insert_ranking(cur, annotator_id, o, None) for o in orders]

    def add_comparisons(self, annotator_id: int, rows: Iterable[tuple[int, int, str]]) -> list[int]:
        """Several ``(a, b, outcome)`` comparisons by one annotator in one transaction."""
        with self._write() as cur:
            return [self._insert_comparison(cur, annotator_id, a, b, o, None) for a, b, o in rows]

    def _insert_comparison(self, cur: sqlite3.Cursor, annotator_id: int, a: int, b: int, outcome: str,
                           created_at: float | None) -> int:
        self._require_annotator(cur, annotator_id)
        if outcome not in OUTCOMES:
            raise InvalidComparisonError(f"comparison outcome must be one of {OUTCOMES}, got {outcome!r}")
        pa, pb = self._prompt_of(cur, a), self._prompt_of(cur, b)
        if a == b:
            raise InvalidComparisonError(f"candidate {a} cannot be compared with itself")
        if pa != pb:
            raise InvalidComparisonError(f"candidates {a} and {b} answer different prompts ({pa} and {pb})")
        cur.execute(
            "INSERT INTO comparisons(annotator_id, prompt_id, candidate_a, candidate_b, outcome, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (annotator_id, pa, a, b, outcome, created_at or time.time()),
        )
        return int(cur.lastrowid)

    # ------------------------------------------------------------------------------- reading
    def prompts(self) -> list[Prompt]:
        return [Prompt(*r) for r in self._query("SELECT id, text, source FROM prompts ORDER BY id")]

    def prompt(self, prompt_id: int) -> Prompt:
        rows = self._query("SELECT id, text, source FROM prompts WHERE id = ?", (prompt_id,))
        if not rows:
            raise UnknownPromptError(f"unknown prompt id {prompt_id!r}")
        return Prompt(*rows[0])

    def candidates(self, prompt_id: int | None = None, round: int | None = None) -> list[Candidate]:
        sql = "SELECT id, prompt_id, text, strategy, params, model, round FROM candidates WHERE 1=1"
        args: list[Any] = []
        if prompt_id is not None:
            sql, args = sql + " AND prompt_id = ?", args + [prompt_id]
        if round is not None:
            sql, args = sql + " AND round = ?", args + [round]
        return [Candidate(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in self._query(sql + " ORDER BY id", args)]

    def candidate(self, candidate_id: int) -> Candidate:
        rows = self._query(
            "SELECT id, prompt_id, text, strategy, params, model, round FROM candidates WHERE id = ?", (candidate_id,)
        )
        if not rows:
            raise UnknownCandidateError(f"unknown candidate id {candidate_id!r}")
        r = rows[0]
        return Candidate(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6])

    def annotators(self) -> list[Annotator]:
        return [Annotator(r[0], r[1], r[2], json.loads(r[3]))
                for r in self._query("SELECT id, name, kind, config FROM annotators ORDER BY id")]

    def annotator_id(self, name: str) -> int:
        rows = self._query("SELECT id FROM annotators WHERE name = ?", (name,))
        if not rows:
            raise UnknownAnnotatorError(f"unknown annotator {name!r}")
        return int(rows[0][0])

    def scores(self, annotator_id: int | None = None) -> list[Score]:
        return [Score(*r) for r in self._select("scores", "id, annotator_id, candidate_id, value, created_at", annotator_id)]

    def rankings(self, annotator_id: int | None = None) -> list[Ranking]:
        rows = self._select("rankings", "id, annotator_id, prompt_id, candidate_ids, created_at", annotator_id)
        return [Ranking(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4]) for r in rows]

    def comparisons(self, annotator_id: int | None = None) -> list[Comparison]:
        cols = "id, annotator_id, prompt_id, candidate_a, candidate_b, outcome, created_at"
        return [Comparison(*r) for r in self._select("comparisons", cols, annotator_id)]

    def _select(self, table: str, cols: str, annotator_id: int | None) -> list[tuple]:
        if annotator_id is None:
            return self._query(f"SELECT {cols} FROM {table} ORDER BY id")
        return self._query(f"SELECT {cols} FROM {table} WHERE annotator_id = ? ORDER BY id", (annotator_id,))

    def counts(self) -> dict[str, int]:
        """Row count of every table except ``meta``: a cheap fingerprint for "nothing changed"."""
        return {t: int(self._query(f"SELECT count(*) FROM {t}")[0][0]) for t in _TABLES if t != "meta"}

    # -------------------------------------------------------------------------- export/import
    def export_jsonl(self, path: str | os.PathLike) -> int:
        """Write the whole store as JSON lines (one record per line, ``type`` first); returns the count."""
        from tokengym.utils import atomic_write_text

        lo, hi = self.score_range
        records: list[dict[str, Any]] = [
            {"type": "meta", "schema_version": SCHEMA_VERSION, "score_min": lo, "score_max": hi}
        ]
        records += [{"type": "prompt", **asdict(p)} for p in self.prompts()]
        records += [{"type": "candidate", **asdict(c)} for c in self.candidates()]
        records += [{"type": "annotator", **asdict(a)} for a in self.annotators()]
        records += [{"type": "score", **asdict(s)} for s in self.scores()]
        records += [{"type": "ranking", **asdict(r)} for r in self.rankings()]
        records += [{"type": "comparison", **asdict(c)} for c in self.comparisons()]
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return len(records)

    def import_jsonl(self, path: str | os.PathLike) -> dict[str, int]:
        """Merge an export into this store in one transaction (all or nothing); returns added counts.

        Ids are remapped: prompts are matched by text, annotators by name, candidates by content;
        a judgement already present (same annotator, items, value and timestamp) is not duplicated,
        so importing the same file twice is harmless.
        """
        records = _read_jsonl(Path(path))
        added = dict.fromkeys(("prompt", "candidate", "annotator", "score", "ranking", "comparison"), 0)
        with self._write() as cur:
            _Importer(self, cur, added).run(records)
        return added


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ImportFormatError(f"{path}:{lineno}: not JSON ({exc})") from exc
            if not isinstance(rec, dict) or "type" not in rec:
                raise ImportFormatError(f"{path}:{lineno}: a record must be an object with a 'type'")
            rec["_line"] = lineno
            records.append(rec)
    return records


class _Importer:
    """Applies exported records inside one open transaction, remapping ids of the source store."""

    def __init__(self, store: FeedbackStore, cur: sqlite3.Cursor, added: dict[str, int]) -> None:
        self.store, self.cur, self.added = store, cur, added
        self.prompt_ids: dict[int, int] = {}
        self.cand_ids: dict[int, int] = {}
        self.ann_ids: dict[int, int] = {}

    def run(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            try:
                getattr(self, "_" + str(rec["type"]))(rec)
            except (KeyError, TypeError, AttributeError) as exc:
                raise ImportFormatError(f"line {rec['_line']}: bad {rec.get('type')!r} record ({exc!r})") from exc

    def _meta(self, rec: dict[str, Any]) -> None:
        if int(rec["schema_version"]) > SCHEMA_VERSION:
            raise SchemaVersionError(f"line {rec['_line']}: export has schema version {rec['schema_version']}")

    def _prompt(self, rec: dict[str, Any]) -> None:
        before = self.cur.execute("SELECT count(*) FROM prompts").fetchone()[0]
        self.prompt_ids[rec["id"]] = FeedbackStore._get_or_add_prompt(self.cur, rec["text"], rec.get("source"))
        self.added["prompt"] += self.cur.execute("SELECT count(*) FROM prompts").fetchone()[0] - before

    def _candidate(self, rec: dict[str, Any]) -> None:
        pid = self.prompt_ids[rec["prompt_id"]]
        key = (pid, rec["text"], rec["strategy"], json.dumps(rec.get("params", {}), sort_keys=True), rec.get("round", 0))
        row = self.cur.execute(
            "SELECT id FROM candidates WHERE prompt_id=? AND text=? AND strategy=? AND params=? AND round=?", key
        ).fetchone()
        if row is None:
            self.cur.execute(
                "INSERT INTO candidates(prompt_id, text, strategy, params, model, round, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (*key[:4], rec.get("model"), key[4], time.time()),
            )
            row, self.added["candidate"] = (self.cur.lastrowid,), self.added["candidate"] + 1
        self.cand_ids[rec["id"]] = int(row[0])

    def _annotator(self, rec: dict[str, Any]) -> None:
        row = self.cur.execute("SELECT id FROM annotators WHERE name = ?", (rec["name"],)).fetchone()
        if row is None:
            self.cur.execute(
                "INSERT INTO annotators(name, kind, config, created_at) VALUES (?, ?, ?, ?)",
                (rec["name"], rec.get("kind", "human"), json.dumps(rec.get("config", {}), sort_keys=True), time.time()),
            )
            row, self.added["annotator"] = (self.cur.lastrowid,), self.added["annotator"] + 1
        self.ann_ids[rec["id"]] = int(row[0])

    def _cand(self, old: int) -> int:
        if old not in self.cand_ids:
            raise UnknownCandidateError(f"import refers to candidate id {old}, which the file does not define")
        return self.cand_ids[old]

    def _exists(self, sql: str, args: tuple) -> bool:
        return self.cur.execute(sql, args).fetchone() is not None

    def _score(self, rec: dict[str, Any]) -> None:
        ann, cand = self.ann_ids[rec["annotator_id"]], self._cand(rec["candidate_id"])
        if not self._exists("SELECT 1 FROM scores WHERE annotator_id=? AND candidate_id=? AND value=? AND created_at=?",
                            (ann, cand, rec["value"], rec["created_at"])):
            self.store._insert_score(self.cur, ann, cand, rec["value"], rec["created_at"])
            self.added["score"] += 1

    def _ranking(self, rec: dict[str, Any]) -> None:
        ann, ids = self.ann_ids[rec["annotator_id"]], [self._cand(c) for c in rec["candidate_ids"]]
        if not self._exists("SELECT 1 FROM rankings WHERE annotator_id=? AND candidate_ids=? AND created_at=?",
                            (ann, json.dumps(ids), rec["created_at"])):
            self.store._insert_ranking(self.cur, ann, ids, rec["created_at"])
            self.added["ranking"] += 1

    def _comparison(self, rec: dict[str, Any]) -> None:
        ann = self.ann_ids[rec["annotator_id"]]
        a, b = self._cand(rec["candidate_a"]), self._cand(rec["candidate_b"])
        if not self._exists(
            "SELECT 1 FROM comparisons WHERE annotator_id=? AND candidate_a=? AND candidate_b=? AND outcome=? "
            "AND created_at=?", (ann, a, b, rec["outcome"], rec["created_at"]),
        ):
            self.store._insert_comparison(self.cur, ann, a, b, rec["outcome"], rec["created_at"])
            self.added["comparison"] += 1
