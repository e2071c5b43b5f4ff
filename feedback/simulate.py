"""Simulated annotators: a gold judge seen through a Bradley-Terry or Thurstone noise model.

Each annotator perceives a candidate's utility as ``gold + tau * eps``:

* ``bradley_terry``: ``eps`` is standard Gumbel, so ``P(a > b) = sigmoid((g_a - g_b) / tau)`` and a
  ranking by perceived utility is a Plackett-Luce sample;
* ``thurstone``: ``eps`` is standard normal, so ``P(a > b) = Phi((g_a - g_b) / (tau * sqrt 2))``.

**Accuracy is settable**: :meth:`SimulatedAnnotator.fit` solves for ``tau`` so that the expected share
of comparisons agreeing with the gold judge, over the pairs actually labelled, equals ``accuracy``.

**Disagreement knob**: the noise draw for an item is, with probability ``1 - disagreement``, the
*shared* draw every annotator sees for that item, otherwise the annotator's own. Each annotator's
marginal behaviour (and accuracy) is unchanged; only how often annotators err *together* moves:
``disagreement=0`` gives identical labels, ``1`` gives independent annotators.

Draws are keyed by (seed, item, annotator), not by call order, so labels are reproducible and the
same item gets the same shared draw whoever labels it first.

Each ``label_*`` call registers its annotators and writes all their judgements in one transaction:
a refused call (e.g. an annotator who already gave a different answer to a task; simulated labels
are never revisions) leaves the store as it was. Repeating a call with the same seed changes nothing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import FeedbackError
from .store import Candidate, FeedbackStore

NOISE_MODELS = ("bradley_terry", "thurstone")
Judge = Callable[..., Sequence[float]]  # judge(prompts, responses) -> one gold score per pair


def resolve_judge(spec: Any = "vader") -> Judge:
    """A gold judge: a tokengym reward name (``"vader"``), a RewardFunction or a batched callable."""
    from tokengym.rewards import resolve_reward

    return resolve_reward(spec)


def _stable_seed(*parts: Any) -> int:
    # Python's hash() is salted per process; a digest keeps simulated labels reproducible across runs.
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _phi(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


@dataclass
class SimulatedAnnotator:
    """One simulated labeller. Call :meth:`fit` (or let :class:`LabelSimulator` do it) before judging."""

    name: str
    accuracy: float = 0.9
    noise: str = "bradley_terry"
    disagreement: float = 1.0
    seed: int = 0
    tie_margin: float = 0.0  # perceived |difference| below tie_margin * tau is reported as a tie
    tau: float | None = None
    thresholds: np.ndarray | None = field(default=None, repr=False)  # Likert cut points on perceived utility

    def __post_init__(self) -> None:
        if self.noise not in NOISE_MODELS:
            raise FeedbackError(f"noise model must be one of {NOISE_MODELS}, got {self.noise!r}")
        if not 0.5 < self.accuracy <= 1.0:
            raise FeedbackError(f"annotator accuracy must lie in (0.5, 1], got {self.accuracy}")
        if not 0.0 <= self.disagreement <= 1.0:
            raise FeedbackError(f"disagreement must lie in [0, 1], got {self.disagreement}")

    def config(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "noise": self.noise, "disagreement": self.disagreement,
                "seed": self.seed, "tie_margin": self.tie_margin, "tau": self.tau}

    # ---------------------------------------------------------------------------- calibration
    def p_correct(self, abs_diff: np.ndarray, tau: float) -> np.ndarray:
        """Probability of preferring the gold-better item of pairs with gold gap ``abs_diff``."""
        if tau == 0.0:
            return np.ones_like(abs_diff)
        if self.noise == "bradley_terry":
            return 1.0 / (1.0 + np.exp(-abs_diff / tau))
        return _phi(abs_diff / (tau * math.sqrt(2.0)))

    def fit(self, pair_diffs: Sequence[float], pool: Sequence[float], levels: int = 7) -> "SimulatedAnnotator":
        """Set ``tau`` for the target accuracy on pairs with these gold gaps; Likert cuts from ``pool``.

        Pairs the gold judge ties carry no right answer and are left out of the accuracy.
        """
        diffs = np.abs(np.asarray(pair_diffs, dtype=np.float64))
        diffs = diffs[diffs > 0]
        if diffs.size == 0:
            raise FeedbackError("cannot calibrate annotator accuracy: the gold judge ties every pair")
        if self.accuracy >= 1.0:
            self.tau = 0.0
        else:
            lo, hi = math.log(diffs.min()) - 20, math.log(diffs.max()) + 20  # bisection on log tau
            for _ in range(100):
                mid = (lo + hi) / 2
                if self.p_correct(diffs, math.exp(mid)).mean() > self.accuracy:
                    lo = mid  # too accurate: more noise
                else:
                    hi = mid
            self.tau = math.exp((lo + hi) / 2)
        # Likert levels split the perceived utility of the pool into equally likely bins.
        perceived = np.asarray(pool, dtype=np.float64)
        self.thresholds = np.quantile(perceived, np.arange(1, levels) / levels)
        return self

    # -------------------------------------------------------------------------------- judging
    def _noise(self, item: tuple, n: int) -> np.ndarray:
        """``n`` noise draws for one item: the shared ones or this annotator's own."""
        own = np.random.default_rng(_stable_seed(self.seed, self.name, item))
        use_shared = own.random() >= self.disagreement
        rng = np.random.default_rng(_stable_seed(self.seed, "shared", item)) if use_shared else own
        return rng.gumbel(size=n) - np.euler_gamma if self.noise == "bradley_terry" else rng.normal(size=n)

    def _perceive(self, item: tuple, gold: Sequence[float]) -> np.ndarray:
        if self.tau is None:
            raise FeedbackError(f"simulated annotator {self.name!r} is not calibrated; call fit() first")
        return np.asarray(gold, dtype=np.float64) + self.tau * self._noise(item, len(gold))

    def compare(self, ids: tuple[int, int], gold: tuple[float, float]) -> str:
        """``"a"``, ``"b"`` or ``"tie"`` for candidates ``ids = (a, b)`` with gold scores ``gold``."""
        order = sorted(range(2), key=lambda i: ids[i])  # draws follow candidate ids, not a/b order
        u = np.empty(2)
        u[order] = self._perceive(("pair", ids[order[0]], ids[order[1]]), [gold[i] for i in order])
        if abs(u[0] - u[1]) <= self.tie_margin * (self.tau or 0.0):
            return "tie"
        return "a" if u[0] > u[1] else "b"

    def rank(self, ids: Sequence[int], gold: Sequence[float]) -> list[int]:
        """The candidate ids ordered best first by perceived utility."""
        order = sorted(range(len(ids)), key=lambda i: ids[i])
        u = self._perceive(("rank", *sorted(ids)), [gold[i] for i in order])
        return [ids[order[i]] for i in np.argsort(-u, kind="stable")]

    def score(self, cid: int, gold: float, low: float, high: float) -> float:
        """A Likert score in ``[low, high]``: the bin of the perceived utility among the pool's levels."""
        if self.thresholds is None:
            raise FeedbackError(f"simulated annotator {self.name!r} is not calibrated; call fit() first")
        u = self._perceive(("score", cid), [gold])[0]
        levels = len(self.thresholds) + 1
        level = int(np.searchsorted(self.thresholds, u, side="right"))
        return float(low + (high - low) * level / (levels - 1))


def make_annotators(
    n: int, accuracy: float = 0.9, disagreement: float = 1.0, noise: str = "bradley_terry", seed: int = 0,
    prefix: str = "sim",
) -> list[SimulatedAnnotator]:
    """``n`` annotators sharing accuracy, noise model and disagreement (names ``sim-0``, ``sim-1``...)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise FeedbackError(f"the number of simulated annotators must be a positive integer, got {n!r}")
    if not isinstance(prefix, str) or not prefix.strip():
        raise FeedbackError(f"the annotator name prefix must be a non-empty string, got {prefix!r}")
    return [SimulatedAnnotator(f"{prefix}-{i}", accuracy, noise, disagreement, seed) for i in range(n)]


class LabelSimulator:
    """Writes simulated judgements of the store's candidates, with gold scores from a judge."""

    def __init__(self, store: FeedbackStore, judge: Judge, seed: int = 0) -> None:
        self.store, self.judge, self.seed = store, judge, seed
        self._gold: dict[int, float] = {}

    def gold(self, candidates: Sequence[Candidate]) -> dict[int, float]:
        """Gold score of every candidate (cached: the judge runs once per candidate)."""
        todo = [c for c in candidates if c.id not in self._gold]
        if todo:
            prompts = {p.id: p.text for p in self.store.prompts()}
            scores = self.judge([prompts[c.prompt_id] for c in todo], [c.text for c in todo])
            self._gold.update((c.id, float(s)) for c, s in zip(todo, scores))
        return {c.id: self._gold[c.id] for c in candidates}

    def _groups(self, round: int | None) -> list[list[Candidate]]:
        by_prompt: dict[int, list[Candidate]] = {}
        for c in self.store.candidates(round=round):
            by_prompt.setdefault(c.prompt_id, []).append(c)
        return [g for _, g in sorted(by_prompt.items()) if len(g) >= 2]

    def sample_pairs(self, n: int, round: int | None = None) -> list[tuple[int, int]]:
        """``n`` distinct within-prompt candidate pairs, uniformly at random (seeded)."""
        pairs = [(a.id, b.id) for g in self._groups(round) for i, a in enumerate(g) for b in g[i + 1:]]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise FeedbackError(f"the number of pairs must be a positive integer, got {n!r}")
        if n > len(pairs):
            raise FeedbackError(f"asked for {n} pairs but the store has only {len(pairs)} within-prompt pairs")
        rng = np.random.default_rng(self.seed)
        chosen = rng.choice(len(pairs), size=n, replace=False)
        # Randomise which side is "a" so position carries no information about the winner.
        return [pairs[i] if rng.random() < 0.5 else pairs[i][::-1] for i in chosen]

    def _register(self, annotators: Sequence[SimulatedAnnotator]) -> list[int]:
        return [self.store.add_annotator(a.name, "simulated", a.config()) for a in annotators]

    def label_pairs(self, annotators: Sequence[SimulatedAnnotator], pairs: Sequence[tuple[int, int]]) -> int:
        """Every annotator compares every pair; returns the number of judgements written."""
        cands = {c.id: c for c in self.store.candidates()}
        gold = self.gold([cands[i] for p in pairs for i in p])
        pool = list(gold.values())
        written = 0
        for ann in annotators:
            ann.fit([gold[a] - gold[b] for a, b in pairs], pool)
        with self.store.transaction():
            for ann, aid in zip(annotators, self._register(annotators)):
                rows = [(a, b, ann.compare((a, b), (gold[a], gold[b]))) for a, b in pairs]
                written += len(self.store.add_comparisons(aid, rows))
        return written

    def label_rankings(self, annotators: Sequence[SimulatedAnnotator], round: int | None = None,
                       k: int | None = None) -> int:
        """Every annotator ranks (up to ``k`` of) the candidates of every prompt."""
        groups = [g[:k] for g in self._groups(round)]
        gold = self.gold([c for g in groups for c in g])
        diffs = [gold[a.id] - gold[b.id] for g in groups for i, a in enumerate(g) for b in g[i + 1:]]
        written = 0
        for ann in annotators:
            ann.fit(diffs, list(gold.values()))
        with self.store.transaction():
            for ann, aid in zip(annotators, self._register(annotators)):
                orders = [ann.rank([c.id for c in g], [gold[c.id] for c in g]) for g in groups]
                written += len(self.store.add_rankings(aid, orders))
        return written

    def label_scores(self, annotators: Sequence[SimulatedAnnotator], round: int | None = None) -> int:
        """Every annotator scores every candidate on the store's scale (integer Likert levels)."""
        cands = self.store.candidates(round=round)
        gold = self.gold(cands)
        low, high = self.store.score_range
        levels = int(round_half(high - low)) + 1
        diffs = [gold[a.id] - gold[b.id] for g in self._groups(round) for i, a in enumerate(g) for b in g[i + 1:]]
        written = 0
        for ann in annotators:
            ann.fit(diffs, list(gold.values()), levels=max(levels, 2))
        with self.store.transaction():
            for ann, aid in zip(annotators, self._register(annotators)):
                values = {c.id: ann.score(c.id, gold[c.id], low, high) for c in cands}
                written += len(self.store.add_scores(aid, values))
        return written


def round_half(x: float) -> float:
    return math.floor(x + 0.5)
