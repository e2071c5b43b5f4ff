"""Labelling tasks for a human annotator, shared by the web page and the terminal labeller.

A :class:`TaskQueue` turns the store's prompts and candidates into three kinds of task:

* ``score``: every candidate of a prompt not yet scored by this annotator, each gets a scalar;
* ``rank``: all candidates of a prompt (K >= 2) not yet ranked by this annotator, ordered best first;
* ``compare``: one pair of candidates of a prompt not yet compared by this annotator.

"Done" is read back from the store on every call, so a labeller that is killed and restarted
resumes exactly where the committed judgements end.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import FeedbackError
from .store import Candidate, FeedbackStore, Prompt

KINDS: tuple[str, ...] = ("score", "rank", "compare")


@dataclass(frozen=True)
class Task:
    """One unit of labelling work: a prompt and the candidates to judge (two for ``compare``)."""

    kind: str
    prompt: Prompt
    candidates: tuple[Candidate, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "prompt": {"id": self.prompt.id, "text": self.prompt.text},
            "candidates": [{"id": c.id, "text": c.text} for c in self.candidates],
        }


class TaskQueue:
    """The pending and finished tasks of one annotator; submissions go straight to the store."""

    def __init__(
        self, store: FeedbackStore, annotator_id: int, kinds: Sequence[str] = KINDS,
        round: int | None = None, pairs_per_prompt: int | None = None,
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds:
            raise FeedbackError(f"unknown labelling kind(s) {sorted(unknown)}; choose from {KINDS}")
        self.store, self.annotator_id, self.kinds = store, annotator_id, tuple(kinds)
        self.round, self.pairs_per_prompt = round, pairs_per_prompt

    def _check_kind(self, kind: str) -> None:
        if kind not in self.kinds:
            raise FeedbackError(f"labelling kind {kind!r} is not enabled here (enabled: {', '.join(self.kinds)})")

    def _groups(self) -> list[tuple[Prompt, list[Candidate]]]:
        by_prompt: dict[int, list[Candidate]] = {}
        for c in self.store.candidates(round=self.round):
            by_prompt.setdefault(c.prompt_id, []).append(c)
        prompts = {p.id: p for p in self.store.prompts()}
        return [(prompts[pid], cands) for pid, cands in sorted(by_prompt.items())]

    def tasks(self, kind: str) -> list[tuple[Task, bool]]:
        """Every task of ``kind`` with whether this annotator has done it."""
        self._check_kind(kind)
        me = self.annotator_id
        out: list[tuple[Task, bool]] = []
        if kind == "score":
            scored = {s.candidate_id for s in self.store.scores(me)}
            for prompt, cands in self._groups():
                todo = tuple(c for c in cands if c.id not in scored)
                out.append((Task(kind, prompt, todo or tuple(cands)), not todo))
        elif kind == "rank":
            ranked = {r.prompt_id for r in self.store.rankings(me)}
            out = [(Task(kind, p, tuple(cs)), p.id in ranked) for p, cs in self._groups() if len(cs) >= 2]
        else:
            compared = {frozenset((c.candidate_a, c.candidate_b)) for c in self.store.comparisons(me)}
            for prompt, cands in self._groups():
                pairs = list(itertools.combinations(cands, 2))[: self.pairs_per_prompt]
                out += [(Task(kind, prompt, pair), frozenset((pair[0].id, pair[1].id)) in compared) for pair in pairs]
        return out

    def next(self, kind: str) -> Task | None:
        """The first task of ``kind`` not yet done, or None when all are."""
        return next((t for t, done in self.tasks(kind) if not done), None)

    def progress(self, kind: str) -> tuple[int, int]:
        """``(done, total)`` tasks of ``kind``."""
        tasks = self.tasks(kind)
        return sum(done for _, done in tasks), len(tasks)

    # ------------------------------------------------------------------------------ submissions
    def submit_scores(self, values: dict[int, float]) -> list[int]:
        """Scores for several candidates, committed together; returns the new judgement ids."""
        self._check_kind("score")
        if not values:
            raise FeedbackError("no scores submitted")
        return self.store.add_scores(self.annotator_id, values)

    def submit_ranking(self, candidate_ids: Sequence[int]) -> int:
        self._check_kind("rank")
        return self.store.add_ranking(self.annotator_id, candidate_ids)

    def submit_comparison(self, candidate_a: int, candidate_b: int, outcome: str) -> int:
        self._check_kind("compare")
        return self.store.add_comparison(self.annotator_id, candidate_a, candidate_b, outcome)
