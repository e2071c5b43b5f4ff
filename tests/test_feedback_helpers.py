"""Shared fixtures for the feedback tests: a small store and a background line reader."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path

from tokengym.feedback.store import FeedbackStore


def small_store(path: Path, n_prompts: int = 2, k: int = 3) -> FeedbackStore:
    """``n_prompts`` prompts with ``k`` candidates each (round 0)."""
    store = FeedbackStore(path)
    for i in range(n_prompts):
        pid = store.add_prompt(f"Prompt number {i}: the film was")
        for j in range(k):
            store.add_candidate(pid, f"answer {j} to prompt {i}", "sample", {"temperature": 1.0})
    return store


class LineReader:
    """Reads a subprocess's stdout on a thread so a test can wait for a line with a timeout."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in iter(proc.stdout.readline, ""):
            self.lines.put(line)

    def wait_for(self, needle: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no line containing {needle!r} within {timeout}s; saw {self.seen[-20:]}")
