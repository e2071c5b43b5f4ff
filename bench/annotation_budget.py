"""How many human labels does the main task need? Reward-model accuracy against the gold judge
for growing numbers of simulated comparisons, candidates per prompt and epochs.

    python bench/annotation_budget.py --budgets 250,500,1000,all --candidates 4,6 --epochs 1

The main task's recipe (``tokengym.feedback.default_rm``) is followed with the changes under study:
``--candidates K`` takes the first K temperatures of ``TEMPERATURE_POOL`` (the recipe's own are its
first 4), so each prompt gets K continuations and C(K,2) within-prompt pairs; ``--budgets n`` labels
only n of those pairs (drawn at random, seeded; ``all`` labels every one); ``--epochs`` sets the
reward-model training passes. The candidates are generated once, for the largest K, and every
smaller K uses the first of them, so variants differ only in what is under study. Every reward model
is judged on the same independent set: fresh reference-policy samples of the task's **test**
prompts (8 per prompt, the recipe's four temperatures twice), every within-prompt pair whose gold
(VADER) scores differ, scored by the pairwise accuracy of the reward model against the gold judge.
Results: ``bench/results/<--name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
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


#: The candidates' temperatures: K candidates per prompt use the first K (the recipe's are the first 4).
TEMPERATURE_POOL = (1.0, 1.0, 0.7, 1.3, 1.0, 1.0, 0.7, 1.3)
#: The independent evaluation set: 8 samples of every test prompt.
EVAL_TEMPERATURES = (1.0, 1.0, 0.7, 1.3, 1.0, 1.0, 0.7, 1.3)


def zero_or_one(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(f"each 0 or 1, got {text!r}")
    return text == "1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="250,500,1000,all", help="comparisons per variant; 'all' = every pair")
    parser.add_argument("--candidates", default="4", help=f"candidates per prompt, comma-separated, each <= {len(TEMPERATURE_POOL)}")
    parser.add_argument("--epochs", default="1", help="reward-model epochs, comma-separated")
    parser.add_argument("--rm-dtypes", default="auto", help="reward-model training precisions: auto, fp32, bf16")
    parser.add_argument("--lrs", default=None, help="reward-model learning rates, comma-separated (default: the recipe's)")
    parser.add_argument("--rm-batch-sizes", default=None, help="judgements per reward-model step, comma-separated (default: the recipe's)")
    parser.add_argument("--annotators", default="1", help="simulated annotators comparing every pair, comma-separated")
    parser.add_argument("--group", default="0", help="0, 1 or 0,1: whole prompts per batch, each response scored once")
    parser.add_argument("--samples-cache", default=None, metavar="FILE",
                        help="JSON file keeping the generated candidates and evaluation samples: read when it exists "
                             "(and was made for the same number of candidates), written otherwise, so runs of other "
                             "variants skip the generation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="annotation_budget", help="results file name under bench/results")
    args = parser.parse_args()

    def parse_list(flag: str, text: str | None, convert):
        if text is None:
            return None
        try:
            return [convert(x) for x in text.split(",")]
        except ValueError as e:
            parser.error(f"{flag}: {e}")

    budgets = parse_list("--budgets", args.budgets, lambda b: None if b == "all" else int(b))
    ks = parse_list("--candidates", args.candidates, int)
    epochs = parse_list("--epochs", args.epochs, float)
    dtypes = args.rm_dtypes.split(",")
    lrs = parse_list("--lrs", args.lrs, float)
    bss = parse_list("--rm-batch-sizes", args.rm_batch_sizes, int)
    groups = parse_list("--group", args.group, zero_or_one)
    n_annotators = parse_list("--annotators", args.annotators, int)
    if not all(a >= 1 for a in n_annotators):
        parser.error("--annotators: each a positive integer")
    if lrs is not None and not all(x > 0 for x in lrs):
        parser.error("--lrs: each a positive number")
    if bss is not None and not all(x >= 1 for x in bss):
        parser.error("--rm-batch-sizes: each a positive integer")
    if not all(2 <= k <= len(TEMPERATURE_POOL) for k in ks):
        parser.error(f"--candidates: each between 2 and {len(TEMPERATURE_POOL)}")
    if not set(dtypes) <= {"auto", "fp32", "bf16"}:
        parser.error("--rm-dtypes: auto, fp32 or bf16")
    set_threads(args.threads)

    from tokengym.feedback.default_rm import DEFAULT_RECIPE, build_reward_model, generate_candidates
    from tokengym.feedback.simulate import resolve_judge
    from tokengym.hardware import dtype_name, resolve_dtype
    from tokengym.models import load_causal_lm
    from tokengym.rewards.learned import LearnedReward

    lrs = lrs or [DEFAULT_RECIPE.lr]
    bss = bss or [DEFAULT_RECIPE.rm_batch_size]

    t0 = time.time()
    cache = Path(args.samples_cache) if args.samples_cache else None
    cached = json.loads(cache.read_text()) if cache is not None and cache.is_file() else None
    if cached is not None and cached.get("candidates_per_prompt", 0) >= max(ks):
        progress(f"candidates and evaluation samples read from {cache}")
        kc = cached["candidates_per_prompt"]
        n_prompts = len(cached["candidates"]) // kc
        all_rows = [tuple(r) for r in cached["candidates"][: max(ks) * n_prompts]]
        eval_rows = [tuple(r) for r in cached["eval"]]
    else:
        tok, model = load_causal_lm(DEFAULT_RECIPE.policy)
        progress(f"{max(ks)} candidates of each train prompt (shared by every variant) ...")
        pool = replace(DEFAULT_RECIPE, temperatures=TEMPERATURE_POOL[:max(ks)])
        all_rows = generate_candidates(pool, tok, model)
        n_prompts = len(all_rows) // max(ks)
        progress("independent evaluation samples of the test prompts ...")
        eval_rows = generate_candidates(replace(DEFAULT_RECIPE, split="test", seed=DEFAULT_RECIPE.seed + 101,
                                                temperatures=EVAL_TEMPERATURES), tok, model)
        if cache is not None:
            tmp_cache = cache.with_suffix(".partial")
            tmp_cache.write_text(json.dumps({"candidates_per_prompt": max(ks), "candidates": all_rows, "eval": eval_rows}))
            tmp_cache.replace(cache)  # atomic: a killed run leaves no half-written cache
    judge = resolve_judge(DEFAULT_RECIPE.gold)
    pairs = gold_pairs(eval_rows, judge)
    progress(f"{len(eval_rows)} evaluation samples, {len(pairs)} pairs with a gold preference")
    results = []
    with tempfile.TemporaryDirectory(prefix="tokengym-budget-") as tmp:
        for k, ep, n, dt, lr, bs, grp, na in itertools.product(ks, epochs, budgets, dtypes, lrs, bss, groups, n_annotators):
            recipe = replace(DEFAULT_RECIPE, temperatures=TEMPERATURE_POOL[:k], max_comparisons=n, epochs=ep, dtype=dt,
                             lr=lr, rm_batch_size=bs, group_by_prompt=grp, annotators=na)
            rows = all_rows[: k * n_prompts]  # generated temperature by temperature: the first k of each prompt
            t1 = time.time()
            out = Path(tmp) / f"rm{k}-{ep}-{n}-{dt}-{lr}-{bs}-{int(grp)}-{na}"
            info = build_reward_model(out, recipe, candidates=rows, log=None, progress=False)
            rm = LearnedReward(out)
            scores = rm([r[0] for r in eval_rows], [r[1] for r in eval_rows])
            correct = np.array([scores[i] > scores[j] for i, j in pairs], dtype=float)
            acc = float(correct.mean())
            dt_used = dtype_name(resolve_dtype(dt, "cpu"))
            results.append({"candidates_per_prompt": k, "epochs": ep, "rm_dtype": dt_used, "comparisons": info["comparisons"],
                            "lr": lr, "rm_batch_size": bs, "group_by_prompt": grp, "annotators": na,
                            "test_gold_accuracy": acc, "test_gold_accuracy_se": float(correct.std() / np.sqrt(len(correct))),
                            "build_heldout_gold_accuracy": info["heldout_gold_accuracy"],
                            "train_s": round(time.time() - t1, 1)})
            progress(f"K={k} epochs={ep:g} {dt_used} lr={lr:g} batch={bs} grouped={grp} annotators={na} "
                     f"{info['comparisons']} comparisons: "
                     f"accuracy vs gold on the test samples "
                     f"{acc:.3f}")
    rows_md = [[r["candidates_per_prompt"], f"{r['epochs']:g}", r["rm_dtype"], f"{r['lr']:g}", r["rm_batch_size"],
                "yes" if r["group_by_prompt"] else "no", r["annotators"], r["comparisons"],
                f"{r['test_gold_accuracy']:.3f} ± {r['test_gold_accuracy_se']:.3f}",
                f"{r['build_heldout_gold_accuracy']:.3f}", r["train_s"]] for r in results]
    md = [
        "### Annotation budget: reward-model accuracy against the gold judge (`tokengym/PositiveReview-v1`)", "",
        md_table(["candidates per prompt", "epochs", "RM training dtype", "lr", "batch (judgements)",
                  "whole prompts per batch", "annotators per pair", "simulated comparisons",
                  "pairwise accuracy vs gold, test prompts (± s.e.)", "same, the build's held-out train prompts",
                  "label + train s"], rows_md), "",
        f"* Evaluation: {len(eval_rows)} fresh reference samples of the {len(eval_rows) // len(EVAL_TEMPERATURES)} "
        f"test prompts (temperatures {', '.join(f'{t:g}' for t in EVAL_TEMPERATURES)}), {len(pairs)} within-prompt "
        "pairs whose VADER scores differ; the same set for every variant. s.e. is the binomial standard error "
        "of the mean over those pairs (pairs sharing a prompt are correlated, so it is a lower bound).",
        f"* Candidates: K continuations of each of the {n_prompts} train prompts at temperatures "
        f"{', '.join(f'{t:g}' for t in TEMPERATURE_POOL[:max(ks)])} (the first K). Labels: every pair compared by each of "
        "the simulated annotators, each agreeing with the gold judge on 90 % of pairs, with independent noise; all-MiniLM-L6-v2 (bf16 = autocast, fp32 weights), "
        "otherwise the main task's recipe.",
        f"* Machine: {machine_info()}", f"* Command: `{command_line()}`; total {time.time() - t0:.0f} s.",
    ]
    write_results(args.name, {"results": results, "eval_pairs": len(pairs), "machine": machine_info(),
                              "command": command_line()}, "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
