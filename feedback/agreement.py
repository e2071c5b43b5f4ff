"""Inter-annotator agreement for any set of annotators and any judgement kind.

Labels are ``{annotator: {item: label}}``. Items are what two annotators can agree on:

* comparisons: the unordered candidate pair, labelled by the winner's id (or ``"tie"``);
* rankings: every candidate pair implied by a ranking, labelled by the winner's id;
* scores: the candidate, labelled by its score (``interval`` metric for Krippendorff's alpha).

Metrics: pooled pairwise percent agreement, mean Cohen's kappa over annotator pairs, Fleiss' kappa
(on items every annotator labelled) and Krippendorff's alpha (any missing pattern, nominal or interval).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any, Hashable, Literal, Mapping, Sequence

from .errors import FeedbackError
from .store import FeedbackStore

Labels = Mapping[str, Mapping[Hashable, Hashable]]


def _pairs_of_annotators(labels: Labels) -> list[tuple[str, str]]:
    if len(labels) < 2:
        raise FeedbackError(f"agreement needs at least 2 annotators, got {len(labels)}")
    return list(itertools.combinations(sorted(labels), 2))


def percent_agreement(labels: Labels) -> float:
    """Share of (annotator pair, common item) cases with identical labels."""
    agree = total = 0
    for a, b in _pairs_of_annotators(labels):
        common = labels[a].keys() & labels[b].keys()
        agree += sum(labels[a][i] == labels[b][i] for i in common)
        total += len(common)
    if total == 0:
        raise FeedbackError("no item was labelled by two annotators; agreement is undefined")
    return agree / total


def cohen_kappa(x: Mapping[Hashable, Hashable], y: Mapping[Hashable, Hashable]) -> float:
    """Cohen's kappa of two annotators on the items both labelled."""
    common = sorted(x.keys() & y.keys(), key=repr)
    if not common:
        raise FeedbackError("the two annotators share no item; Cohen's kappa is undefined")
    n = len(common)
    po = sum(x[i] == y[i] for i in common) / n
    cx, cy = Counter(x[i] for i in common), Counter(y[i] for i in common)
    pe = sum(cx[c] * cy[c] for c in cx) / n**2
    return 1.0 if pe == 1.0 else (po - pe) / (1.0 - pe)


def mean_cohen_kappa(labels: Labels) -> float:
    """Cohen's kappa averaged over every pair of annotators."""
    pairs = _pairs_of_annotators(labels)
    return sum(cohen_kappa(labels[a], labels[b]) for a, b in pairs) / len(pairs)


def fleiss_kappa(labels: Labels) -> float:
    """Fleiss' kappa over the items labelled by every annotator (it needs a fixed number of raters)."""
    _pairs_of_annotators(labels)
    items = set.intersection(*(set(v) for v in labels.values()))
    if not items:
        raise FeedbackError("no item was labelled by every annotator; Fleiss' kappa is undefined")
    table = [Counter(labels[a][i] for a in labels) for i in items]
    return fleiss_kappa_from_counts(table)


def fleiss_kappa_from_counts(table: Sequence[Mapping[Hashable, int]]) -> float:
    """Fleiss' kappa from per-item category counts (each item rated by the same number of raters)."""
    raters = {sum(row.values()) for row in table}
    if len(raters) != 1 or min(raters) < 2:
        raise FeedbackError(f"Fleiss' kappa needs the same number (>= 2) of raters per item, got {sorted(raters)}")
    n, big_n = raters.pop(), len(table)
    totals: Counter = Counter()
    for row in table:
        totals.update(row)
    p_bar = sum((sum(v * v for v in row.values()) - n) / (n * (n - 1)) for row in table) / big_n
    p_e = sum((t / (big_n * n)) ** 2 for t in totals.values())
    return 1.0 if p_e == 1.0 else (p_bar - p_e) / (1.0 - p_e)


def krippendorff_alpha(labels: Labels, level: Literal["nominal", "interval"] = "nominal") -> float:
    """Krippendorff's alpha via the coincidence matrix; items with a single label are ignored."""
    units: dict[Hashable, list[Any]] = {}
    for per_item in labels.values():
        for item, value in per_item.items():
            units.setdefault(item, []).append(value)

    def delta(c: Any, k: Any) -> float:
        return float(c != k) if level == "nominal" else (float(c) - float(k)) ** 2

    coincidence: Counter = Counter()
    for values in units.values():
        m = len(values)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            coincidence[(values[i], values[j])] += 1.0 / (m - 1)
    marginals: Counter = Counter()
    for (c, _), w in coincidence.items():
        marginals[c] += w
    n = sum(marginals.values())
    if n <= 1:
        raise FeedbackError("no item was labelled by two annotators; Krippendorff's alpha is undefined")
    d_o = sum(w * delta(c, k) for (c, k), w in coincidence.items()) / n
    d_e = sum(marginals[c] * marginals[k] * delta(c, k) for c in marginals for k in marginals) / (n * (n - 1))
    return 1.0 if d_e == 0 else 1.0 - d_o / d_e


# ------------------------------------------------------------------------------------- the store
def store_labels(
    store: FeedbackStore, kind: Literal["compare", "rank", "score"], annotators: Sequence[str] | None = None
) -> dict[str, dict[Hashable, Hashable]]:
    """``{annotator name: {item: label}}`` for one judgement kind (each annotator's current judgement of
    an item; revised ones count in their latest form)."""
    names = {a.id: a.name for a in store.annotators()}
    wanted = set(annotators) if annotators is not None else set(names.values())
    missing = wanted - set(names.values())
    if missing:
        raise FeedbackError(f"unknown annotator(s) {sorted(missing)}")
    out: dict[str, dict[Hashable, Hashable]] = {n: {} for n in sorted(wanted)}
    if kind == "compare":
        for c in store.comparisons():
            if names[c.annotator_id] in wanted:
                winner = {"a": c.candidate_a, "b": c.candidate_b, "tie": "tie"}[c.outcome]
                out[names[c.annotator_id]][frozenset((c.candidate_a, c.candidate_b))] = winner
    elif kind == "rank":
        for r in store.rankings():
            if names[r.annotator_id] in wanted:
                for better, worse in itertools.combinations(r.candidate_ids, 2):
                    out[names[r.annotator_id]][frozenset((better, worse))] = better
    elif kind == "score":
        for s in store.scores():
            if names[s.annotator_id] in wanted:
                out[names[s.annotator_id]][s.candidate_id] = s.value
    else:
        raise FeedbackError(f"unknown judgement kind {kind!r}; use compare, rank or score")
    return {k: v for k, v in out.items() if v}


def agreement_report(
    store: FeedbackStore, kind: Literal["compare", "rank", "score"], annotators: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every agreement metric for ``kind`` among ``annotators`` (default: all who judged that kind)."""
    labels = store_labels(store, kind, annotators)
    report: dict[str, Any] = {
        "kind": kind, "annotators": sorted(labels),
        "items": len(set().union(*(v.keys() for v in labels.values()))) if labels else 0,
        "percent_agreement": percent_agreement(labels),
        "cohen_kappa_mean": mean_cohen_kappa(labels),
        "krippendorff_alpha": krippendorff_alpha(labels, "interval" if kind == "score" else "nominal"),
    }
    common = set.intersection(*(set(v) for v in labels.values()))
    report["fleiss_kappa"] = fleiss_kappa(labels) if common else math.nan
    return report
