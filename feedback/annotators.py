"""Labelling tasks for a human annotator, shared by the web page and the terminal labeller.

A :class:`TaskQueue` turns the store's prompts and candidates into three kinds of task:

* ``score``: every candidate of a prompt not yet scored by this annotator, each gets a scalar;
* ``rank``: all candidates of a prompt (K >= 2) not yet ranked by this annotator, ordered best first;
* ``compare``: one pair of candidates of a prompt not yet compared by this annotator.

"Done" is read back from the store on every call, so a labeller that is killed and restarted
resumes exactly where the committed judgements end. A submission is one judgement per task: the
same answer again changes nothing, a different one must be sent as a revision (``revise=True``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import FeedbackError, InvalidRankingError, UnknownCandidateError
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
            # The task is the set of candidates shown: a prompt that gains candidates in a later
            # round is a new ranking task, and an earlier ranking of fewer candidates does not count.
            ranked = {frozenset(r.candidate_ids) for r in self.store.rankings(me)}
            out = [(Task(kind, p, tuple(cs)), frozenset(c.id for c in cs) in ranked)
                   for p, cs in self._groups() if len(cs) >= 2]
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
    def submit_scores(self, values: dict[int, float], revise: bool = False) -> list[int]:
        """Scores for several candidates, committed together; returns the judgement ids."""
        self._check_kind("score")
        if not values:
            raise FeedbackError("no scores submitted")
        return self.store.add_scores(self.annotator_id, values, revise=revise)

    def submit_ranking(self, candidate_ids: Sequence[int], revise: bool = False) -> int:
        """A ranking of every candidate of one rank task (the prompt's candidates in this queue's round)."""
        self._check_kind("rank")
        ids = list(candidate_ids)
        for c in ids:
            if not isinstance(c, int) or isinstance(c, bool):
                raise UnknownCandidateError(f"unknown candidate id {c!r}")
        if ids:
            prompt_id = self.store.candidate(ids[0]).prompt_id
            task = {c.id for c in self.store.candidates(prompt_id=prompt_id, round=self.round)}
            given = set(ids)
            # Duplicates, unknown ids and mixed prompts get the store's own messages.
            if len(given) == len(ids) and given <= {c.id for c in self.store.candidates(prompt_id=prompt_id)}:
                if given - task:
                    raise InvalidRankingError(f"ranking {ids}: candidate(s) {sorted(given - task)} are not part of "
                                              f"this task (round {self.round})")
                if task - given:
                    raise InvalidRankingError(f"ranking {ids} leaves out candidate(s) {sorted(task - given)} of "
                                              f"prompt {prompt_id}: rank all {len(task)} of them")
        return self.store.add_ranking(self.annotator_id, ids, revise=revise)

    def submit_comparison(self, candidate_a: int, candidate_b: int, outcome: str, revise: bool = False) -> int:
        self._check_kind("compare")
        return self.store.add_comparison(self.annotator_id, candidate_a, candidate_b, outcome, revise=revise)
