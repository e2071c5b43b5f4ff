"""The terminal labeller: piped answers for the three kinds, re-asking on bad input, and SIGKILL safety."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from test_feedback_helpers import LineReader, small_store
from tokengym.feedback.annotators import TaskQueue
from tokengym.feedback.terminal import TerminalLabeller


def _run(store, kind: str, answers: str, limit: int | None = None) -> tuple[int, str]:
    queue = TaskQueue(store, store.add_annotator("erin"), [kind])
    out = io.StringIO()
    n = TerminalLabeller(queue, kind, stdin=io.StringIO(answers), stdout=out, limit=limit).run()
    return n, out.getvalue()


def test_scores_with_reasking(tmp_path: Path) -> None:
    store = small_store(tmp_path / "fb.sqlite")
    n, out = _run(store, "score", "9\nseven\n7\n1\n4\n2\n2\n2\n")
    assert n == 2 and "outside [1, 7]" in out and "not accepted" in out
    assert [(s.candidate_id, s.value) for s in store.scores()] == [(1, 7), (2, 1), (3, 4), (4, 2), (5, 2), (6, 2)]
    assert "Nothing left to label" in out


def test_rankings_skip_and_quit(tmp_path: Path) -> None:
    store = small_store(tmp_path / "fb.sqlite")
    n, out = _run(store, "rank", "1 1 2\n1 2\n1 2 9\n3 1 2\ns\n")
    assert n == 1 and "more than once" in out and "rank all 3" in out and "no answer (9)" in out
    assert [r.candidate_ids for r in store.rankings()] == [(3, 1, 2)]
    n, out = _run(store, "rank", "q\n")
    assert n == 0 and "Bye." in out and len(store.rankings()) == 1


def test_comparisons_until_end_of_input(tmp_path: Path) -> None:
    store = small_store(tmp_path / "fb.sqlite")
    n, out = _run(store, "compare", "a\nx\nt\nB\n")
    assert n == 3 and "[compare 1/6]" in out and "[compare 3/6]" in out
    assert [(c.candidate_a, c.candidate_b, c.outcome) for c in store.comparisons()] == [
        (1, 2, "a"), (1, 3, "tie"), (2, 3, "b")]


def test_killed_terminal_labeller_keeps_every_submitted_judgement(tmp_path: Path) -> None:
    small_store(tmp_path / "fb.sqlite").close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokengym.feedback.cli", "label", "--kind", "compare",
         "--store", str(tmp_path / "fb.sqlite"), "--annotator", "frank"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )
    reader = LineReader(proc)
    try:
        for answer in ("a", "b", "t"):
            proc.stdin.write(answer + "\n")
            proc.stdin.flush()
            reader.wait_for("saved.", timeout=120)
        # the process now waits for the 4th answer, mid-session: kill it without warning
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    conn = sqlite3.connect(tmp_path / "fb.sqlite")
    rows = conn.execute("SELECT candidate_a, candidate_b, outcome FROM comparisons ORDER BY id").fetchall()
    conn.close()
    assert rows == [(1, 2, "a"), (1, 3, "b"), (2, 3, "tie")]
