"""Tabulate a finished ``tokengym rlhf`` run into ``bench/results/<name>.{json,md}``.

    tokengym rlhf --rounds 2 --output-dir runs/rlhf --no-progress
    python bench/rlhf_rounds.py runs/rlhf --name rlhf_rounds

Reads ``rounds.json`` and each round's ``report.json``, and copies the rounds' reports, metrics,
curves and reward-model build records (not the models or checkpoints) into
``bench/results/<name>/``, so the table's numbers stay next to the runs that produced them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _util import RESULTS, command_line, machine_info, md_table, write_results

from tokengym.utils import NotReplaceableError, check_replaceable, write_marker

KEEP = ("report.json", "metrics.csv", "metrics.jsonl", "heldout.jsonl", "samples.jsonl", "curves.png",
        "overoptimisation.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--name", default="rlhf_rounds")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()
    if not (args.run_dir / "rounds.json").is_file():
        ap.exit(2, f"run_dir: no rounds.json in {args.run_dir} (the output dir of a finished tokengym rlhf)\n")
    summaries = json.loads((args.run_dir / "rounds.json").read_text())
    dest = RESULTS / args.name
    try:  # only tokengym's own output (its marker) is replaced, and that is checked before any copy
        check_replaceable(dest, "--name")
    except NotReplaceableError as e:
        ap.exit(2, f"{e}\n")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    write_marker(dest, "bench/rlhf_rounds.py")
    rows = []
    for s in summaries:
        r = s["round"]
        src = args.run_dir / f"round{r}"
        (dest / f"round{r}").mkdir(parents=True)
        for name in KEEP:
            if (src / name).is_file():
                shutil.copy2(src / name, dest / f"round{r}" / name)
        build = Path(s["reward_model"]) / "build.json"
        if r > 0 and build.is_file():
            shutil.copy2(build, dest / f"reward_model_round{r}_build.json")
        report = json.loads((src / "report.json").read_text())
        rows.append([r, s["rm_heldout_gold_accuracy"], s["gold_before"], s["gold_after"], s["kl_to_round_reference"],
                     s["kl_to_original"], f"{s['perplexity_before']:.1f} -> {s['perplexity_after']:.1f}",
                     f"{s['perplexity_under_original']:.1f}",
                     f"{s['distinct_2_before']:.3f} -> {s['distinct_2_after']:.3f}", report["iterations"],
                     s["wall_time_s"]])
    shutil.copy2(args.run_dir / "rounds.json", dest / "rounds.json")
    headers = ["round", "RM gold accuracy", "gold before", "gold after", "KL to round ref.", "KL to original",
               "ref. ppl before -> after", "ppl under original", "distinct-2 before -> after", "rollouts", "wall s"]
    info = machine_info()
    md = "\n".join([
        f"### `tokengym rlhf --rounds {len(summaries)}` on SmolLM2 (held-out test prompts, 160 samples, T=1, 24 tokens)", "",
        md_table(headers, rows), "",
        "* Each round's reference is the policy it starts from (round 0: the base model); 'KL to original' and "
        "'ppl under original' measure the round's final samples against the base SmolLM2 (round 0: the same numbers).",
        "* Round r > 0 labels the previous round's policy's samples with the simulated annotators, trains a fresh "
        "MiniLM reward model on them and runs PPO (the main job's defaults, seed r) from that policy.",
        f"* Machine (when tabulated; wall s from the runs): {json.dumps(info)}",
        f"* Command: `{command_line()}`",
        *[f"* {n}" for n in args.note],
    ])
    write_results(args.name, {"machine": info, "rounds": summaries}, md)
    print(md)


if __name__ == "__main__":
    main()
