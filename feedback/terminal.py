"""The terminal labeller (``tokengym label``): the same three kinds of task, read line by line from stdin.

Answers:

* ``score``: one number per answer, in the store's range (asked answer by answer);
* ``rank``: the answer numbers best first, e.g. ``2 1 3``;
* ``compare``: ``a``, ``b`` or ``t`` (tie).

At any question ``s`` skips the task and ``q`` quits; end of input quits too. Each task is committed
as soon as it is answered, so piping answers in, or killing the process, keeps what was submitted.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .annotators import Task, TaskQueue
from .errors import DuplicateJudgementError, FeedbackError


class _Quit(Exception):
    """The person typed ``q`` or input ended."""


class _Skip(Exception):
    """The person typed ``s``: move on to the next task."""


class TerminalLabeller:
    """Asks for judgements of one kind until the tasks run out, ``limit`` is reached, or ``q``."""

    def __init__(self, queue: TaskQueue, kind: str, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
                 limit: int | None = None) -> None:
        queue._check_kind(kind)
        self.queue, self.kind, self.stdin, self.stdout, self.limit = queue, kind, stdin, stdout, limit

    def _say(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()  # a pipe or a watching test must see each line as it is written

    def _ask(self, question: str) -> str:
        self.stdout.write(question)
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            raise _Quit
        answer = line.strip()
        if answer.lower() == "q":
            raise _Quit
        if answer.lower() == "s":
            raise _Skip
        return answer

    def _next(self, skipped: set[tuple[int, ...]]) -> Task | None:
        for task, done in self.queue.tasks(self.kind):
            if not done and tuple(c.id for c in task.candidates) not in skipped:
                return task
        return None

    def run(self) -> int:
        """Label until done; returns the number of tasks submitted."""
        submitted, skipped = 0, set()
        while self.limit is None or submitted < self.limit:
            task = self._next(skipped)
            if task is None:
                self._say("Nothing left to label. Thank you!")
                break
            done, total = self.queue.progress(self.kind)
            self._show(task, done, total)
            try:
                self._label(task)
            except _Skip:
                skipped.add(tuple(c.id for c in task.candidates))
                continue
            except DuplicateJudgementError as exc:  # judged meanwhile elsewhere (e.g. the web page)
                self._say(f"  not saved: {exc}")
                skipped.add(tuple(c.id for c in task.candidates))
                continue
            except _Quit:
                self._say("Bye.")
                break
            submitted += 1
            self._say("saved.")
        return submitted

    def _show(self, task: Task, done: int, total: int) -> None:
        self._say(f"\n[{self.kind} {done + 1}/{total}] PROMPT: {task.prompt.text}")
        labels = "AB" if self.kind == "compare" else [str(i + 1) for i in range(len(task.candidates))]
        for label, cand in zip(labels, task.candidates):
            self._say(f"  ({label}) {cand.text}")

    def _label(self, task: Task) -> None:
        ids = [c.id for c in task.candidates]
        if self.kind == "score":
            lo, hi = self.queue.store.score_range
            values = {cid: self._retry(f"score for ({i + 1}) [{lo:g}-{hi:g}]: ", float,
                                       lambda v: self._check_range(v, lo, hi)) for i, cid in enumerate(ids)}
            self.queue.submit_scores(values)
        elif self.kind == "rank":
            while True:
                answer = self._ask(f"answers best first, e.g. {' '.join(str(i + 1) for i in range(len(ids)))}: ")
                try:
                    order = [self._answer_id(ids, tok) for tok in answer.split()]
                    if len(order) != len(ids):
                        raise FeedbackError(f"rank all {len(ids)} answers, got {len(order)}")
                    self.queue.submit_ranking(order)
                    return
                except DuplicateJudgementError:
                    raise
                except (ValueError, FeedbackError) as exc:  # FeedbackError is a ValueError: bad numbers or ids
                    self._say(f"  not accepted: {exc}")
        else:
            outcome = self._retry("which is better? [a/b/t]: ", lambda s: {"a": "a", "b": "b", "t": "tie"}[s.lower()],
                                  lambda v: None)
            self.queue.submit_comparison(ids[0], ids[1], outcome)

    @staticmethod
    def _answer_id(ids: list[int], token: str) -> int:
        number = int(token)
        if not 1 <= number <= len(ids):
            raise ValueError(f"there is no answer ({number}); use 1-{len(ids)}")
        return ids[number - 1]

    @staticmethod
    def _check_range(value: float, lo: float, hi: float) -> None:
        if not lo <= value <= hi:
            raise ValueError(f"{value:g} is outside [{lo:g}, {hi:g}]")

    def _retry(self, question: str, parse, check) -> object:
        while True:
            answer = self._ask(question)
            try:
                value = parse(answer)
                check(value)
                return value
            except (ValueError, KeyError) as exc:
                self._say(f"  not accepted: {exc}")
