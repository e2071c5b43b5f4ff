"""The feedback store: one SQLite file holding prompts, candidates, annotators and judgements.

This module is ~1,000 lines, over the project's ~400-line guide, on purpose for now: the schema, its
migrations and every write share one connection and one transaction discipline (validate inside
the write transaction, roll back on any error), and splitting the class across files would hide
which writes are atomic together. Splitting the read-only queries out is the natural next step.

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
* **One judgement per (annotator, task).** The task of a score is the candidate, of a comparison
  the unordered pair, of a ranking the prompt's set of ranked candidates. Submitting the same answer
  again (a double click, a repeated request) changes nothing and returns the existing id; a
  different answer is refused with :class:`~tokengym.feedback.errors.DuplicateJudgementError`
  unless it is an explicit revision (``revise=True``). A revision replaces the judgement: the new
  row records the one it ``revises``, the old row keeps its values with ``replaced_at`` set, and
  readers return current judgements only (``history=True`` returns every row).
* **A new store appears whole**: it is built in a hidden temporary file and linked into place, so
  a refused or killed creation leaves no file; an existing empty (0-byte) file is refused rather
  than taken for a new store, because it is what a truncated store looks like.
* Schema version 1 stores (before revisions) are upgraded in place on first open: repeated
  judgements of a task become a chain of revisions, the latest one current, nothing deleted.
* SQLite errors (a damaged page, a read-only file, a lock held too long) surface as
  :class:`~tokengym.feedback.errors.FeedbackError` subclasses naming the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

from .errors import (
    DuplicateJudgementError,
    FeedbackError,
    ImportFormatError,
    InvalidComparisonError,
    InvalidRankingError,
    NotAFeedbackStoreError,
    ReadOnlyStoreError,
    SchemaVersionError,
    ScoreOutOfRangeError,
    UnknownAnnotatorError,
    UnknownCandidateError,
    UnknownPromptError,
)

SCHEMA_VERSION = 2  # 2: judgements record revisions (revises, replaced_at)
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
    candidate_id INTEGER NOT NULL REFERENCES candidates(id), value REAL NOT NULL, created_at REAL NOT NULL,
    revises INTEGER REFERENCES scores(id), replaced_at REAL);
CREATE TABLE rankings (
    id INTEGER PRIMARY KEY, annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    prompt_id INTEGER NOT NULL REFERENCES prompts(id), candidate_ids TEXT NOT NULL, created_at REAL NOT NULL,
    revises INTEGER REFERENCES rankings(id), replaced_at REAL);
CREATE TABLE comparisons (
    id INTEGER PRIMARY KEY, annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    prompt_id INTEGER NOT NULL REFERENCES prompts(id),
    candidate_a INTEGER NOT NULL REFERENCES candidates(id), candidate_b INTEGER NOT NULL REFERENCES candidates(id),
    outcome TEXT NOT NULL CHECK (outcome IN ('a', 'b', 'tie')), created_at REAL NOT NULL,
    revises INTEGER REFERENCES comparisons(id), replaced_at REAL);
"""
# One current judgement per (annotator, task), enforced by the database as well as by the checks in
# the insert methods (rankings are keyed by their candidate set, checked in Python).
_INDEXES = """
CREATE UNIQUE INDEX scores_current ON scores(annotator_id, candidate_id) WHERE replaced_at IS NULL;
CREATE INDEX rankings_task ON rankings(annotator_id, prompt_id);
CREATE UNIQUE INDEX comparisons_current ON comparisons(annotator_id, min(candidate_a, candidate_b),
    max(candidate_a, candidate_b)) WHERE replaced_at IS NULL;
"""
_MAX_ID = 2**63 - 1  # SQLite's INTEGER range; a larger id is unknown, not an overflow
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
    revises: int | None = None  # id of the judgement this one replaced
    replaced_at: float | None = None  # set once a revision replaced this one


@dataclass(frozen=True)
class Ranking:
    id: int
    annotator_id: int
    prompt_id: int
    candidate_ids: tuple[int, ...]  # best first
    created_at: float
    revises: int | None = None
    replaced_at: float | None = None


@dataclass(frozen=True)
class Comparison:
    id: int
    annotator_id: int
    prompt_id: int
    candidate_a: int
    candidate_b: int
    outcome: str  # "a", "b" or "tie"
    created_at: float
    revises: int | None = None
    replaced_at: float | None = None


def _check_score_range(score_range: Any) -> tuple[float, float]:
    try:
        lo, hi = score_range
    except (TypeError, ValueError):
        raise FeedbackError(f"score range must be two numbers (min, max), got {score_range!r}") from None
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FeedbackError(f"score range must be finite numbers with min < max, got {score_range!r}")
    if not lo < hi:
        raise FeedbackError(f"score range must be finite with min < max, got {tuple(score_range)}")
    return float(lo), float(hi)


def store_writable(path: Path) -> bool:
    """Whether the store file and its folder can be written (WAL mode writes -wal/-shm files beside it)."""
    parent = path.parent if str(path.parent) else Path(".")
    return os.access(path, os.W_OK) and os.access(parent, os.W_OK)


def _is_id(value: Any) -> bool:
    # bool is an int subclass: True must not pass for id 1; ids beyond SQLite's range are unknown.
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_ID


def _winner(a: int, b: int, outcome: str) -> int | None:
    return a if outcome == "a" else b if outcome == "b" else None


class FeedbackStore:
    """A feedback store backed by one SQLite file. Thread-safe (one connection behind a lock).

    ``score_range`` is fixed when the store is created; reopening with a different range is refused
    rather than silently rescaling earlier scores. ``create=False`` refuses a missing file. A file
    that cannot be written opens read-only (:attr:`read_only`); writing to it raises
    :class:`~tokengym.feedback.errors.ReadOnlyStoreError`.
    """

    def __init__(
        self, path: str | os.PathLike, score_range: tuple[float, float] | None = None, create: bool = True
    ) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of open write transactions (see transaction())
        self._cur: sqlite3.Cursor | None = None
        if score_range is not None:
            score_range = _check_score_range(score_range)  # before anything touches the disk
        if self.path.is_dir():
            raise NotAFeedbackStoreError(f"{self.path} is a folder, not a feedback store file; give the path of a store "
                                         "file (a new name creates one)")
        if not self.path.exists():
            if not create:
                raise FeedbackError(f"no feedback store at {self.path}")
            self._create_file(score_range or DEFAULT_SCORE_RANGE)
        elif self.path.stat().st_size == 0:
            raise NotAFeedbackStoreError(
                f"{self.path} is empty (0 bytes), not a feedback store; a truncated store looks like this, so it "
                "is not taken for a new one: restore it from a copy, or delete it to start a new store there"
            )
        self.read_only = not store_writable(self.path)
        mode = "rw"
        if self.read_only:
            # Without a -wal file every committed change is in the main file, and "immutable" reads it
            # without creating -wal/-shm files beside a store that is not ours to change.
            wal = Path(f"{self.path}-wal")
            mode = "ro" if wal.exists() and wal.stat().st_size else "ro&immutable=1"
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode={mode}"
        try:
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        try:
            self._open(score_range)
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._db_error(exc) from exc
        except BaseException:
            self._conn.close()
            raise

    # ----------------------------------------------------------------------------------- opening
    def _create_file(self, score_range: tuple[float, float]) -> None:
        """Build a new store in a hidden temporary file and link it into place (never a half store)."""
        lo, hi = _check_score_range(score_range)
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as exc:
            raise ReadOnlyStoreError(f"cannot create the feedback store {self.path}: {exc.strerror or exc}") from exc
        os.close(fd)
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                for statement in filter(str.strip, (_SCHEMA + _INDEXES).split(";")):
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [("score_min", repr(lo)), ("score_max", repr(hi)), ("created_at", repr(time.time()))],
                )
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                conn.close()
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)  # fails if another process created the store meanwhile: use theirs
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links
                if not self.path.exists():
                    os.rename(tmp, self.path)
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            for suffix in ("-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp + suffix)

    def _inspect(self) -> tuple[int, int, set[str]]:
        # Only reads here: a foreign or corrupted file must not be touched before it is recognised.
        try:
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise NotAFeedbackStoreError(f"{self.path} is not a readable SQLite database: {exc}; it is left untouched: "
                                         "give the path of a feedback store (a new name creates one)") from exc
        return app_id, version, tables

    def _open(self, score_range: tuple[float, float] | None) -> None:
        app_id, version, tables = self._inspect()
        if app_id == 0 and version == 0 and not tables:
            raise NotAFeedbackStoreError(
                f"{self.path} is an empty SQLite database, not a feedback store (tokengym creates new stores "
                "itself): give the path of a missing file to start a new store"
            )
        if app_id != APPLICATION_ID:
            raise NotAFeedbackStoreError(
                f"{self.path} is an SQLite database of another application (application_id={app_id:#x}, "
                f"tables={sorted(tables)}); refusing to modify it: give another path for the feedback store"
            )
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has feedback schema version {version}, newer than this tokengym's "
                f"{SCHEMA_VERSION}; upgrade tokengym to read it"
            )
        if version < 1 or not set(_TABLES) <= tables:
            raise NotAFeedbackStoreError(
                f"{self.path} is damaged: schema version {version}, missing tables {sorted(set(_TABLES) - tables)}"
            )
        if not self.read_only:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # a committed judgement survives a crash
        self._conn.execute("PRAGMA foreign_keys=ON")
        if version < SCHEMA_VERSION:
            self._upgrade_v1()
        lo, hi = self.score_range
        if score_range is not None and score_range != (lo, hi):
            raise FeedbackError(
                f"{self.path} stores scores in [{lo:g}, {hi:g}], not [{score_range[0]:g}, {score_range[1]:g}]"
            )

    def _upgrade_v1(self) -> None:
        """Schema 1 -> 2 in one transaction: add the revision columns; where an annotator judged a task
        more than once (possible before version 2), the latest judgement is current and the earlier
        ones become its replaced history. Nothing is deleted."""
        if self.read_only:
            raise ReadOnlyStoreError(
                f"{self.path} has schema version 1 and must be upgraded once to version {SCHEMA_VERSION}, which "
                "needs write access to the file and its folder: make them writable, or open a writable copy"
            )
        with self._write() as cur:
            for table in ("scores", "rankings", "comparisons"):
                cur.execute(f"ALTER TABLE {table} ADD COLUMN revises INTEGER REFERENCES {table}(id)")
                cur.execute(f"ALTER TABLE {table} ADD COLUMN replaced_at REAL")
            keys = {
                "scores": lambda r: (r[1], r[2]),
                "rankings": lambda r: (r[1], tuple(sorted(json.loads(r[2])))),
                "comparisons": lambda r: (r[1], min(r[2], r[3]), max(r[2], r[3])),
            }
            cols = {"scores": "id, annotator_id, candidate_id, created_at",
                    "rankings": "id, annotator_id, candidate_ids, created_at",
                    "comparisons": "id, annotator_id, candidate_a, candidate_b, created_at"}
            for table, key in keys.items():
                last: dict[tuple, tuple] = {}
                for row in cur.execute(f"SELECT {cols[table]} FROM {table} ORDER BY id").fetchall():
                    k = key(row)
                    if k in last:
                        prev = last[k]
                        cur.execute(f"UPDATE {table} SET replaced_at = ? WHERE id = ?", (row[-1], prev[0]))
                        cur.execute(f"UPDATE {table} SET revises = ? WHERE id = ?", (prev[0], row[0]))
                    last[k] = row
            for statement in filter(str.strip, _INDEXES.split(";")):
                cur.execute(statement)
            cur.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # ------------------------------------------------------------------------------ transactions
    def _db_error(self, exc: sqlite3.Error) -> Exception:
        """A FeedbackError naming the file for an SQLite failure (programming errors stay as they are)."""
        if isinstance(exc, (sqlite3.ProgrammingError, sqlite3.InterfaceError)):
            return exc
        msg = str(exc)
        if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
            return ReadOnlyStoreError(f"{self.path} cannot be written ({msg}): make the file and its folder "
                                      "writable, or work on a copy")
        if "locked" in msg or "busy" in msg:
            return FeedbackError(f"{self.path} is locked by another process ({msg}); try again when it is done")
        if isinstance(exc, sqlite3.IntegrityError):
            return FeedbackError(f"{self.path} refused the write: {msg}")
        return NotAFeedbackStoreError(f"{self.path} is damaged or unreadable ({msg}); restore it from a copy or "
                                      "an export")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One IMMEDIATE transaction: commit on success, roll back on any exception (then re-raise).

        Inside :meth:`transaction` the calls join the open transaction instead of starting their own.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._cur  # type: ignore[misc]
                finally:
                    self._depth -= 1
                return
            if self.read_only:
                raise ReadOnlyStoreError(f"{self.path} is read-only (the file or its folder cannot be written); "
                                         "make them writable, or work on a copy")
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._db_error(exc) from exc
            self._depth, self._cur = 1, cur
            try:
                yield cur
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._db_error(exc) from exc
                raise
            else:
                try:
                    cur.execute("COMMIT")
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        cur.execute("ROLLBACK")
                    raise self._db_error(exc) from exc
            finally:
                self._depth, self._cur = 0, None

    @contextlib.contextmanager
    def transaction(self) -> Iterator["FeedbackStore"]:
        """Group several ``add_*`` calls into one transaction: all are committed together, or none."""
        with self._write():
            yield self

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
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._db_error(exc) from exc

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
        if not _is_id(row_id) or cur.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)).fetchone() is None:
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
        if _is_id(candidate_id):
            row = cur.execute("SELECT prompt_id FROM candidates WHERE id = ?", (candidate_id,)).fetchone()
        if row is None:
            raise UnknownCandidateError(f"unknown candidate id {candidate_id!r}")
        return int(row[0])

    @staticmethod
    def _annotator_name(cur: sqlite3.Cursor, annotator_id: int) -> str:
        return str(cur.execute("SELECT name FROM annotators WHERE id = ?", (annotator_id,)).fetchone()[0])

    @staticmethod
    def _replace(cur: sqlite3.Cursor, table: str, old_id: int) -> None:
        cur.execute(f"UPDATE {table} SET replaced_at = ? WHERE id = ?", (time.time(), old_id))

    def _refuse_duplicate(self, cur: sqlite3.Cursor, annotator_id: int, task: str, before: str, now: str) -> None:
        raise DuplicateJudgementError(
            f"annotator {self._annotator_name(cur, annotator_id)!r} already judged {task} ({before}); the different "
            f"answer ({now}) is refused: one judgement per annotator and task, unless it is explicitly revised "
            "(revise=True, or \"revise\": true in the request)"
        )

    # ---------------------------------------------------------------------------- judgements
    def add_score(self, annotator_id: int, candidate_id: int, value: float, created_at: float | None = None,
                  revise: bool = False) -> int:
        """Record a scalar score; committed before returning. The same score again returns the
        existing id; a different one needs ``revise=True``."""
        with self._write() as cur:
            return self._insert_score(cur, annotator_id, candidate_id, value, created_at, revise)

    def add_scores(self, annotator_id: int, values: dict[int, float], revise: bool = False) -> list[int]:
        """Several scores by one annotator, all or none (one web/terminal submission)."""
        with self._write() as cur:
            return [self._insert_score(cur, annotator_id, c, v, None, revise) for c, v in values.items()]

    def _insert_score(self, cur: sqlite3.Cursor, annotator_id: int, candidate_id: int, value: Any,
                      created_at: float | None, revise: bool = False) -> int:
        self._require_annotator(cur, annotator_id)
        self._prompt_of(cur, candidate_id)
        lo, hi = self.score_range
        # Compared before any float(): a huge JSON integer must be refused, not overflow.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
            raise ScoreOutOfRangeError(f"score {value!r} for candidate {candidate_id} is outside [{lo:g}, {hi:g}]")
        row = cur.execute("SELECT id, value FROM scores WHERE annotator_id = ? AND candidate_id = ? "
                          "AND replaced_at IS NULL", (annotator_id, candidate_id)).fetchone()
        revises = None
        if row is not None:
            if float(row[1]) == float(value):
                return int(row[0])  # the same answer again (a double submit): nothing new
            if not revise:
                self._refuse_duplicate(cur, annotator_id, f"candidate {candidate_id}", f"score {row[1]:g}",
                                       f"score {float(value):g}")
            self._replace(cur, "scores", int(row[0]))
            revises = int(row[0])
        cur.execute(
            "INSERT INTO scores(annotator_id, candidate_id, value, created_at, revises) VALUES (?, ?, ?, ?, ?)",
            (annotator_id, candidate_id, float(value), created_at or time.time(), revises),
        )
        return int(cur.lastrowid)

    def add_ranking(self, annotator_id: int, candidate_ids: Sequence[int], created_at: float | None = None,
                    revise: bool = False) -> int:
        """Record a ranking of K >= 2 candidates of one prompt, best first; committed before returning.
        The task is the set of ranked candidates: the same order again returns the existing id, a
        different order of the same set needs ``revise=True``."""
        with self._write() as cur:
            return self._insert_ranking(cur, annotator_id, candidate_ids, created_at, revise)

    def _validate_ranking(self, cur: sqlite3.Cursor, candidate_ids: Sequence[int]) -> tuple[list[int], int]:
        if isinstance(candidate_ids, (str, bytes)) or not isinstance(candidate_ids, Sequence):
            raise InvalidRankingError(f"a ranking is a list of candidate ids, got {candidate_ids!r}")
        ids = list(candidate_ids)
        if len(ids) < 2:
            raise InvalidRankingError(f"a ranking needs at least 2 candidates, got {ids}")
        prompts = {self._prompt_of(cur, c) for c in ids}
        dupes = sorted({c for c in ids if ids.count(c) > 1})
        if dupes:
            raise InvalidRankingError(f"ranking {ids} lists candidate(s) {dupes} more than once")
        if len(prompts) != 1:
            raise InvalidRankingError(f"ranking {ids} mixes candidates of prompts {sorted(prompts)}")
        return ids, prompts.pop()

    def _current_ranking(self, cur: sqlite3.Cursor, annotator_id: int, prompt_id: int,
                         ids: Sequence[int]) -> tuple[int, list[int]] | None:
        for rid, stored in cur.execute("SELECT id, candidate_ids FROM rankings WHERE annotator_id = ? AND "
                                       "prompt_id = ? AND replaced_at IS NULL", (annotator_id, prompt_id)):
            order = json.loads(stored)
            if sorted(order) == sorted(ids):
                return int(rid), order
        return None

    def _insert_ranking(self, cur: sqlite3.Cursor, annotator_id: int, candidate_ids: Sequence[int],
                        created_at: float | None, revise: bool = False) -> int:
        self._require_annotator(cur, annotator_id)
        ids, prompt_id = self._validate_ranking(cur, candidate_ids)
        existing = self._current_ranking(cur, annotator_id, prompt_id, ids)
        revises = None
        if existing is not None:
            if existing[1] == ids:
                return existing[0]
            if not revise:
                self._refuse_duplicate(cur, annotator_id, f"the ranking of candidates {sorted(ids)}",
                                       f"order {existing[1]}", f"order {ids}")
            self._replace(cur, "rankings", existing[0])
            revises = existing[0]
        cur.execute(
            "INSERT INTO rankings(annotator_id, prompt_id, candidate_ids, created_at, revises) VALUES (?, ?, ?, ?, ?)",
            (annotator_id, prompt_id, json.dumps(ids), created_at or time.time(), revises),
        )
        return int(cur.lastrowid)

    def add_comparison(self, annotator_id: int, candidate_a: int, candidate_b: int, outcome: str,
                       created_at: float | None = None, revise: bool = False) -> int:
        """Record which of two candidates of one prompt is better (``a``, ``b`` or ``tie``). The task is
        the unordered pair: the same verdict again (either order) returns the existing id, a different
        one needs ``revise=True``."""
        with self._write() as cur:
            return self._insert_comparison(cur, annotator_id, candidate_a, candidate_b, outcome, created_at, revise)

    def add_rankings(self, annotator_id: int, orders: Iterable[Sequence[int]], revise: bool = False) -> list[int]:
        """Several rankings by one annotator in one transaction (bulk simulated labels)."""
        with self._write() as cur:
            return [self._insert_ranking(cur, annotator_id, o, None, revise) for o in orders]

    def add_comparisons(self, annotator_id: int, rows: Iterable[tuple[int, int, str]], revise: bool = False) -> list[int]:
        """Several ``(a, b, outcome)`` comparisons by one annotator in one transaction."""
        with self._write() as cur:
            return [self._insert_comparison(cur, annotator_id, a, b, o, None, revise) for a, b, o in rows]

    def _validate_comparison(self, cur: sqlite3.Cursor, a: Any, b: Any, outcome: Any) -> int:
        if not isinstance(outcome, str) or outcome not in OUTCOMES:
            raise InvalidComparisonError(f"comparison outcome must be one of {OUTCOMES}, got {outcome!r}")
        pa, pb = self._prompt_of(cur, a), self._prompt_of(cur, b)
        if a == b:
            raise InvalidComparisonError(f"candidate {a} cannot be compared with itself")
        if pa != pb:
            raise InvalidComparisonError(f"candidates {a} and {b} answer different prompts ({pa} and {pb})")
        return pa

    def _current_comparison(self, cur: sqlite3.Cursor, annotator_id: int, a: int, b: int) -> tuple | None:
        return cur.execute(
            "SELECT id, candidate_a, candidate_b, outcome FROM comparisons WHERE annotator_id = ? AND "
            "((candidate_a = ? AND candidate_b = ?) OR (candidate_a = ? AND candidate_b = ?)) AND replaced_at IS NULL",
            (annotator_id, a, b, b, a),
        ).fetchone()

    def _insert_comparison(self, cur: sqlite3.Cursor, annotator_id: int, a: int, b: int, outcome: str,
                           created_at: float | None, revise: bool = False) -> int:
        self._require_annotator(cur, annotator_id)
        prompt_id = self._validate_comparison(cur, a, b, outcome)
        row = self._current_comparison(cur, annotator_id, a, b)
        revises = None
        if row is not None:
            if _winner(row[1], row[2], row[3]) == _winner(a, b, outcome):
                return int(row[0])
            if not revise:
                said = lambda x, y, o: "a tie" if o == "tie" else f"{_winner(x, y, o)} better"  # noqa: E731
                self._refuse_duplicate(cur, annotator_id, f"the pair of candidates {a} and {b}",
                                       said(row[1], row[2], row[3]), said(a, b, outcome))
            self._replace(cur, "comparisons", int(row[0]))
            revises = int(row[0])
        cur.execute(
            "INSERT INTO comparisons(annotator_id, prompt_id, candidate_a, candidate_b, outcome, created_at, revises) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (annotator_id, prompt_id, a, b, outcome, created_at or time.time(), revises),
        )
        return int(cur.lastrowid)

    # ------------------------------------------------------------------------------- reading
    def prompts(self) -> list[Prompt]:
        return [Prompt(*r) for r in self._query("SELECT id, text, source FROM prompts ORDER BY id")]

    def prompt(self, prompt_id: int) -> Prompt:
        rows = self._query("SELECT id, text, source FROM prompts WHERE id = ?", (prompt_id,)) if _is_id(prompt_id) else []
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
        ) if _is_id(candidate_id) else []
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

    def scores(self, annotator_id: int | None = None, history: bool = False) -> list[Score]:
        """Current scores (``history=True``: also the ones later revisions replaced)."""
        cols = "id, annotator_id, candidate_id, value, created_at, revises, replaced_at"
        return [Score(*r) for r in self._select("scores", cols, annotator_id, history)]

    def rankings(self, annotator_id: int | None = None, history: bool = False) -> list[Ranking]:
        rows = self._select("rankings", "id, annotator_id, prompt_id, candidate_ids, created_at, revises, replaced_at",
                            annotator_id, history)
        return [Ranking(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], r[6]) for r in rows]

    def comparisons(self, annotator_id: int | None = None, history: bool = False) -> list[Comparison]:
        cols = "id, annotator_id, prompt_id, candidate_a, candidate_b, outcome, created_at, revises, replaced_at"
        return [Comparison(*r) for r in self._select("comparisons", cols, annotator_id, history)]

    def _select(self, table: str, cols: str, annotator_id: int | None, history: bool = False) -> list[tuple]:
        where, args = [], []
        if not history:
            where.append("replaced_at IS NULL")
        if annotator_id is not None:
            where, args = where + ["annotator_id = ?"], [annotator_id]
        sql = f"SELECT {cols} FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")
        return self._query(sql + " ORDER BY id", args)

    def counts(self) -> dict[str, int]:
        """Row count of every table except ``meta`` (revision history included): a cheap fingerprint
        for "nothing changed"."""
        return {t: int(self._query(f"SELECT count(*) FROM {t}")[0][0]) for t in _TABLES if t != "meta"}

    # -------------------------------------------------------------------------- export/import
    def export_jsonl(self, path: str | os.PathLike) -> int:
        """Write the whole store (revision history included) as JSON lines (one record per line,
        ``type`` first); returns the count."""
        from tokengym.utils import atomic_write_text

        lo, hi = self.score_range
        records: list[dict[str, Any]] = [
            {"type": "meta", "schema_version": SCHEMA_VERSION, "score_min": lo, "score_max": hi}
        ]
        records += [{"type": "prompt", **asdict(p)} for p in self.prompts()]
        records += [{"type": "candidate", **asdict(c)} for c in self.candidates()]
        records += [{"type": "annotator", **asdict(a)} for a in self.annotators()]
        records += [{"type": "score", **asdict(s)} for s in self.scores(history=True)]
        records += [{"type": "ranking", **asdict(r)} for r in self.rankings(history=True)]
        records += [{"type": "comparison", **asdict(c)} for c in self.comparisons(history=True)]
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return len(records)

    def import_jsonl(self, path: str | os.PathLike) -> dict[str, int]:
        """Merge an export into this store in one transaction (all or nothing); returns added counts.

        Ids are remapped: prompts are matched by text, annotators by name, candidates by content.
        A judgement this store already holds (the same answer by the same annotator to the same task)
        is not added again, so importing the same file twice is harmless; revision history comes
        along. A judgement that contradicts this store's current one for the same annotator and
        task, without being a revision, is refused (:class:`DuplicateJudgementError`).
        """
        records = read_export(Path(path))
        added = dict.fromkeys(("prompt", "candidate", "annotator", "score", "ranking", "comparison"), 0)
        with self._write() as cur:
            _Importer(self, cur, added).run(records)
        return added


def read_export(path: Path) -> list[dict[str, Any]]:
    """The records of a ``feedback-export`` file, each with its line number as ``_line``."""
    records = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise ImportFormatError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    with f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as exc:
                    raise ImportFormatError(f"{path}:{lineno}: not JSON ({exc})") from exc
                if not isinstance(rec, dict) or "type" not in rec:
                    raise ImportFormatError(f"{path}:{lineno}: a record must be an object with a 'type'")
                rec["_line"] = lineno
                records.append(rec)
        except UnicodeDecodeError as exc:
            raise ImportFormatError(f"{path}:{lineno + 1}: not valid UTF-8 ({exc.reason})") from exc
    return records


_read_jsonl = read_export  # the name earlier code used


def is_export_file(path: Path) -> bool:
    """True if ``path`` starts like a ``feedback-export`` file (the only file the export overwrites)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and first.get("type") == "meta" and "schema_version" in first


class _Importer:
    """Applies exported records inside one open transaction, remapping ids of the source store."""

    def __init__(self, store: FeedbackStore, cur: sqlite3.Cursor, added: dict[str, int]) -> None:
        self.store, self.cur, self.added = store, cur, added
        self.prompt_ids: dict[int, int] = {}
        self.cand_ids: dict[int, int] = {}
        self.ann_ids: dict[int, int] = {}
        self.judgement_ids: dict[str, dict[int, int]] = {"scores": {}, "rankings": {}, "comparisons": {}}

    def run(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            handler = getattr(self, "_" + str(rec["type"]), None)
            if handler is None or str(rec["type"]).startswith("_"):
                raise ImportFormatError(f"line {rec['_line']}: unknown record type {rec['type']!r}")
            try:
                handler(rec)
            except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
                if isinstance(exc, FeedbackError):
                    raise type(exc)(f"line {rec['_line']}: {exc}") from exc
                raise ImportFormatError(f"line {rec['_line']}: bad {rec.get('type')!r} record ({exc!r})") from exc

    def _meta(self, rec: dict[str, Any]) -> None:
        version = rec["schema_version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise ImportFormatError(f"schema_version must be an integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(f"export has schema version {version}")

    def _prompt(self, rec: dict[str, Any]) -> None:
        if not isinstance(rec["text"], str) or not rec["text"].strip():
            raise ImportFormatError(f"a prompt text must be a non-empty string, got {rec['text']!r}")
        before = self.cur.execute("SELECT count(*) FROM prompts").fetchone()[0]
        self.prompt_ids[rec["id"]] = FeedbackStore._get_or_add_prompt(self.cur, rec["text"], rec.get("source"))
        self.added["prompt"] += self.cur.execute("SELECT count(*) FROM prompts").fetchone()[0] - before

    def _candidate(self, rec: dict[str, Any]) -> None:
        pid = self.prompt_ids[rec["prompt_id"]]
        if not isinstance(rec["text"], str):
            raise ImportFormatError(f"a candidate text must be a string, got {rec['text']!r}")
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
        if not isinstance(rec["name"], str) or not rec["name"].strip():
            raise ImportFormatError(f"an annotator name must be a non-empty string, got {rec['name']!r}")
        row = self.cur.execute("SELECT id FROM annotators WHERE name = ?", (rec["name"],)).fetchone()
        if row is None:
            self.cur.execute(
                "INSERT INTO annotators(name, kind, config, created_at) VALUES (?, ?, ?, ?)",
                (rec["name"], rec.get("kind", "human"), json.dumps(rec.get("config", {}), sort_keys=True), time.time()),
            )
            row, self.added["annotator"] = (self.cur.lastrowid,), self.added["annotator"] + 1
        self.ann_ids[rec["id"]] = int(row[0])

    def _cand(self, old: Any) -> int:
        if old not in self.cand_ids:
            raise UnknownCandidateError(f"import refers to candidate id {old!r}, which the file does not define")
        return self.cand_ids[old]

    def _ann(self, old: Any) -> int:
        if old not in self.ann_ids:
            raise UnknownAnnotatorError(f"import refers to annotator id {old!r}, which the file does not define")
        return self.ann_ids[old]

    def _judgement(self, table: str, kind: str, rec: dict[str, Any], identical: tuple[str, tuple],
                   current: Any, same: Any, insert: Any) -> None:
        """Shared import of one judgement.

        ``identical``: a query finding this very row (same answer and timestamp) already here;
        ``current()``: this store's current judgement of the task; ``same(row)``: whether it gives
        the same answer; ``insert(revises, replaced_at)``: adds the row.
        """
        ids = self.judgement_ids[table]
        created = rec["created_at"]
        if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
            raise ImportFormatError(f"created_at must be a number, got {created!r}")
        row = self.cur.execute(*identical).fetchone()
        if row is not None:  # imported before: nothing to add
            ids[rec["id"]] = int(row[0])
            return
        replaced_at = rec.get("replaced_at")
        revises = rec.get("revises")
        mapped = ids.get(revises) if revises is not None else None
        if replaced_at is not None:  # history: kept as it was, never current
            if isinstance(replaced_at, bool) or not isinstance(replaced_at, (int, float)):
                raise ImportFormatError(f"replaced_at must be a number or null, got {replaced_at!r}")
            new_id = insert(mapped, float(replaced_at))
        else:
            existing = current()
            if existing is not None:
                if same(existing):
                    ids[rec["id"]] = int(existing[0])
                    return
                if mapped is None or int(existing[0]) != mapped:
                    name = FeedbackStore._annotator_name(self.cur, self.ann_ids[rec["annotator_id"]])
                    raise DuplicateJudgementError(
                        f"annotator {name!r} already has a different current {kind} of this task here; an import "
                        "never overrides a judgement (revise it explicitly instead)"
                    )
                FeedbackStore._replace(self.cur, table, mapped)
            new_id = insert(mapped, None)
        ids[rec["id"]] = new_id
        self.added[kind] += 1

    def _score(self, rec: dict[str, Any]) -> None:
        ann, cand = self._ann(rec["annotator_id"]), self._cand(rec["candidate_id"])
        value, created = rec["value"], rec["created_at"]

        def insert(revises: int | None, replaced_at: float | None) -> int:
            lo, hi = self.store.score_range
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ScoreOutOfRangeError(f"score {value!r} for candidate {cand} is outside [{lo:g}, {hi:g}]")
            self.cur.execute("INSERT INTO scores(annotator_id, candidate_id, value, created_at, revises, replaced_at) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (ann, cand, float(value), created, revises, replaced_at))
            return int(self.cur.lastrowid)

        self._judgement(
            "scores", "score", rec,
            ("SELECT id FROM scores WHERE annotator_id=? AND candidate_id=? AND value=? AND created_at=?",
             (ann, cand, value, created)),
            lambda: self.cur.execute("SELECT id, value FROM scores WHERE annotator_id=? AND candidate_id=? AND "
                                     "replaced_at IS NULL", (ann, cand)).fetchone(),
            lambda row: isinstance(value, (int, float)) and float(row[1]) == float(value), insert)

    def _ranking(self, rec: dict[str, Any]) -> None:
        ann, ids = self._ann(rec["annotator_id"]), [self._cand(c) for c in rec["candidate_ids"]]
        order, prompt_id = self.store._validate_ranking(self.cur, ids)

        def insert(revises: int | None, replaced_at: float | None) -> int:
            self.cur.execute("INSERT INTO rankings(annotator_id, prompt_id, candidate_ids, created_at, revises, "
                             "replaced_at) VALUES (?, ?, ?, ?, ?, ?)",
                             (ann, prompt_id, json.dumps(order), rec["created_at"], revises, replaced_at))
            return int(self.cur.lastrowid)

        self._judgement(
            "rankings", "ranking", rec,
            ("SELECT id FROM rankings WHERE annotator_id=? AND candidate_ids=? AND created_at=?",
             (ann, json.dumps(order), rec["created_at"])),
            lambda: self.store._current_ranking(self.cur, ann, prompt_id, order),
            lambda row: row[1] == order, insert)

    def _comparison(self, rec: dict[str, Any]) -> None:
        ann = self._ann(rec["annotator_id"])
        a, b, outcome = self._cand(rec["candidate_a"]), self._cand(rec["candidate_b"]), rec["outcome"]
        prompt_id = self.store._validate_comparison(self.cur, a, b, outcome)

        def insert(revises: int | None, replaced_at: float | None) -> int:
            self.cur.execute(
                "INSERT INTO comparisons(annotator_id, prompt_id, candidate_a, candidate_b, outcome, created_at, "
                "revises, replaced_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ann, prompt_id, a, b, outcome, rec["created_at"], revises, replaced_at))
            return int(self.cur.lastrowid)

        self._judgement(
            "comparisons", "comparison", rec,
            ("SELECT id FROM comparisons WHERE annotator_id=? AND candidate_a=? AND candidate_b=? AND outcome=? "
             "AND created_at=?", (ann, a, b, outcome, rec["created_at"])),
            lambda: self.store._current_comparison(self.cur, ann, a, b),
            lambda row: _winner(row[1], row[2], row[3]) == _winner(a, b, outcome), insert)
