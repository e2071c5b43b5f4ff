"""How many human labels does the main task need? Reward-model accuracy against the gold judge
for growing numbers of simulated comparisons.

    python bench/annotation_budget.py --budgets 250,500,1000,1920

The main task's recipe (``tokengym.feedback.default_rm``) is followed with one change: only
``n`` of the within-prompt pairs are labelled (drawn at random, seeded). The candidates are generated
once and shared by every budget, so the budgets differ only in the labels. Every reward model is
then judged on the same independent set: fresh reference-policy samples of the task's **test**
prompts (4 per prompt, the recipe's temperatures), every within-prompt pair whose gold (VADER)
scores differ, scored by the pairwise accuracy of the reward model against the gold judge. Results:
``bench/results/annotation_budget.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _util import command_line, machine_info, md_table, progress, set_threads, write_results  # noqa: E402


def gold_pairs(rows: list[tuple[str, str, float]], judge) -> list[tuple[int, int]]:
    """Within-prompt pairs (i, j) of ``rows`` with gold(i) > gold(j) (ties left out)."""
    gold = judge([r[0] for r in rows], [r[1] for r in rows])
    by_prompt: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_prompt.setdefault(r[0], []).append(i)
    pairs = []
    for idx in by_prompt.values():
        for i, j in itertools.combinations(idx, 2):
            if gold[i] != gold[j]:
                pairs.append((i, j) if gold[i] > gold[j] else (j, i))
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="250,500,1000,1920")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    set_threads(args.threads)

    from tokengym.feedback.default_rm import DEFAULT_RECIPE, build_reward_model, generate_candidates
    from tokengym.feedback.simulate import resolve_judge
    from tokengym.models import load_causal_lm
    from tokengym.rewards.learned import LearnedReward

    t0 = time.time()
    tok, model = load_causal_lm(DEFAULT_RECIPE.policy)
    progress("candidates of the train prompts (shared by every budget) ...")
    train_rows = generate_candidates(DEFAULT_RECIPE, tok, model)
    progress("independent evaluation samples of the test prompts ...")
    eval_rows = generate_candidates(replace(DEFAULT_RECIPE, split="test", seed=DEFAULT_RECIPE.seed + 101), tok, model)
    judge = resolve_judge(DEFAULT_RECIPE.gold)
    pairs = gold_pairs(eval_rows, judge)
    progress(f"{len(eval_rows)} evaluation samples, {len(pairs)} pairs with a gold preference")
    results = []
    with tempfile.TemporaryDirectory(prefix="tokengym-budget-") as tmp:
        for n in budgets:
            recipe = replace(DEFAULT_RECIPE, max_comparisons=n)
            t1 = time.time()
            info = build_reward_model(Path(tmp) / f"rm{n}", recipe, candidates=train_rows, log=None, progress=False)
            rm = LearnedReward(Path(tmp) / f"rm{n}")
            scores = rm([r[0] for r in eval_rows], [r[1] for r in eval_rows])
            acc = float(np.mean([scores[i] > scores[j] for i, j in pairs]))
            results.append({"comparisons": info["comparisons"], "test_gold_accuracy": acc,
                            "build_heldout_gold_accuracy": info["heldout_gold_accuracy"],
                            "train_s": round(time.time() - t1, 1)})
            progress(f"{info['comparisons']} comparisons: accuracy vs gold on the test samples {acc:.3f}")
    rows = [[r["comparisons"], f"{r['test_gold_accuracy']:.3f}", f"{r['build_heldout_gold_accuracy']:.3f}", r["train_s"]]
            for r in results]
    md = [
        "### Annotation budget: reward-model accuracy against the gold judge (`tokengym/PositiveReview-v1`)", "",
        md_table(["simulated comparisons", "pairwise accuracy vs gold, test prompts", "same, held-out train prompts",
                  "label + train s"], rows), "",
        f"* Evaluation: {len(eval_rows)} fresh reference samples of the {len(eval_rows) // len(DEFAULT_RECIPE.temperatures)} "
        f"test prompts, {len(pairs)} within-prompt pairs whose VADER scores differ; the same set for every budget.",
        "* Labels: a simulated annotator who agrees with the gold judge on 90 % of pairs; all-MiniLM-L6-v2, one epoch, "
        "the main task's recipe; the candidates are shared, only the number of labelled pairs changes.",
        f"* Machine: {machine_info()}", f"* Command: `{command_line()}`; total {time.time() - t0:.0f} s.",
    ]
    write_results("annotation_budget", {"results": results, "eval_pairs": len(pairs), "machine": machine_info(),
                                        "command": command_line()}, "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
