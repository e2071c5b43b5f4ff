"""The reward-model build's candidate phase with and without the shared prefill, in one process.

The default reward model's first step samples every train prompt 8 times (4 temperatures, twice
over), in batches of 64 prompts. Its prompts are about as long as its responses (left-padded to 32
tokens against 24 new ones), so one batch's prefill forward costs about what its whole decode does.
``generate_candidates`` computes each batch's prefill once and reuses it for the other 7
temperatures (``CachedSampler(prefill_memo=...)``). This script times both ways on the first
``--prompts`` train prompts (all 8 temperatures), alternating them ``--repeats`` times, and checks
that they write the same candidates, text for text.

Run: ``python bench/rm_candidates.py`` (~3 min on 2 AVX2 cores) -> ``bench/results/rm_candidates.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from _util import command_line, machine_info, md_table, median, set_threads, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64, help="train prompts (one batch of 64 = 512 candidates)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = set_threads(args.threads)

    from tokengym.feedback.default_rm import DEFAULT_RECIPE, generate_candidates
    from tokengym.models import load_causal_lm

    tok, model = load_causal_lm(DEFAULT_RECIPE.policy)
    recipe = dataclasses.replace(DEFAULT_RECIPE, max_prompts=args.prompts)
    times: dict[str, list[float]] = {"fresh prefill": [], "shared prefill": []}
    outputs: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, share in (("fresh prefill", False), ("shared prefill", True)):
            t0 = time.perf_counter()
            outputs[name] = generate_candidates(recipe, tok, model, progress=False, share_prefill=share)
            times[name].append(time.perf_counter() - t0)
    same = outputs["fresh prefill"] == outputs["shared prefill"]
    n = len(outputs["shared prefill"])
    fresh, shared = median(times["fresh prefill"]), median(times["shared prefill"])
    rows = [[name, n, f"{median(ts):.1f}", f"{n / median(ts):.2f}", " / ".join(f"{t:.1f}" for t in ts)]
            for name, ts in times.items()]
    machine = machine_info()
    md = "\n".join([
        f"### The reward-model build's candidates: {n} = {args.prompts} prompts x {len(recipe.temperatures)} "
        f"temperatures, batch 64, {threads} thread(s)", "",
        md_table(["prefill", "candidates", "median s", "candidates / s", "each repeat s"], rows), "",
        f"* Shared prefill: **{fresh / shared:.2f}x** faster; the candidates are "
        f"{'identical, text for text' if same else 'DIFFERENT (a bug)'}.",
        "* The default build samples 320 prompts (5 batches) the same way: its candidate phase scales with the "
        "batches, so the ratio carries over.",
        f"* Machine: {machine}",
        f"* Command: `{command_line()}`",
    ])
    write_results("rm_candidates", {"args": vars(args), "times": times, "identical": same, "candidates": n,
                                    "speedup": fresh / shared, "machine": machine}, md)
    print(md)
    if not same:
        raise SystemExit("the shared prefill changed the candidates")


if __name__ == "__main__":
    main()
