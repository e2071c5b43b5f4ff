"""How much the main job's held-out numbers move with the evaluation's sampling seed alone.

    python bench/eval_noise.py --policies smollm2,runs/rlhf_stop/round0/final_model --eval-seeds 0,1,2,3,4,5

Each policy is evaluated on the main task's test prompts (the same 160 prompt slots as
``tokengym train``) once per evaluation seed; nothing is trained. For the base model the spread of
``reference_perplexity`` and ``distinct_2`` over the seeds is pure sampling noise, so it says how often
the main job's "ppl <= +10 %" and "distinct-2 >= base - 0.02" checks would fail for a policy that did
not change at all (every ordered pair of seeds is one before/after comparison).

Each evaluation is the report's own (``evaluate_policy``), so beside its perplexity (the
reference's NLL of the *sampled* tokens) it has the expected form, ``reference_perplexity_expected``:
the same expectation without the noise of the single draw. The spread of the two over the seeds
shows how much of the noise the draw is.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import command_line, machine_info, md_table, write_results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="smollm2", help="comma-separated model specs or folders")
    parser.add_argument("--reference", default="smollm2")
    parser.add_argument("--eval-seeds", default="0,1,2,3,4,5")
    parser.add_argument("--episodes", type=int, default=None, help="default: the main job's eval_episodes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="eval_noise")
    args = parser.parse_args()

    import numpy as np

    from tokengym.agents.evaluation import evaluate_policy
    from tokengym.train import load_policy_and_reference, make_envs, make_train_config
    from tokengym.utils import set_cpu_threads

    set_cpu_threads(args.threads)
    cfg = make_train_config({})
    episodes = args.episodes or cfg.eval_episodes
    seeds = [int(s) for s in args.eval_seeds.split(",")]
    rows, data = [], {"episodes": episodes, "eval_seeds": seeds, "policies": {}}
    for spec in args.policies.split(","):
        tok, model, _, ref_fn = load_policy_and_reference(spec, args.reference)
        _, test_env = make_envs(cfg, tok, cfg.ppo.batch_size)
        runs = []
        for seed in seeds:
            t0 = time.time()
            full, _ = evaluate_policy(model, ref_fn, test_env, episodes, seed=seed)
            metrics = {k: full[k] for k in ("gold_score", "reference_perplexity", "reference_perplexity_expected",
                                            "distinct_2")}
            metrics["seconds"] = time.time() - t0
            runs.append(metrics)
            print(spec, seed, {k: round(v, 4) for k, v in metrics.items()}, flush=True)
        data["policies"][spec] = runs
        for key in ("gold_score", "reference_perplexity", "reference_perplexity_expected",
                    "distinct_2"):
            xs = np.array([r[key] for r in runs])
            sd = xs.std(ddof=1) if len(xs) > 1 else float("nan")
            rel = sd / abs(xs.mean()) if key.startswith("reference_perplexity") else float("nan")
            pairs = list(itertools.permutations(range(len(xs)), 2))
            misfire = {"reference_perplexity": lambda b, a: a > 1.10 * b,
                       "reference_perplexity_expected": lambda b, a: a > 1.10 * b,
                       "distinct_2": lambda b, a: a < b - 0.02}.get(key)
            rate = sum(misfire(xs[i], xs[j]) for i, j in pairs) / len(pairs) if misfire and pairs else float("nan")
            rows.append([spec, key, float(xs.mean()), float(sd), rel, float(xs.min()), float(xs.max()), rate])
    headers = ["policy", "metric", "mean", "std", "std / mean", "min", "max", "same-policy pairs failing the check"]
    machine = machine_info()
    data.update({"rows": [dict(zip(headers, r)) for r in rows], "machine": machine, "command": command_line()})
    md = (f"### Evaluation noise: {episodes} held-out samples per evaluation, {len(seeds)} evaluation seeds\n\n"
          + md_table(headers, rows)
          + "\n\n* Nothing is trained: each row is one policy evaluated with different sampling seeds, so its spread is the"
            " evaluation's own noise. The last column is the share of ordered seed pairs (before, after) where the main job's"
            " check (ppl <= +10 %, distinct-2 >= base - 0.02) would fail although the policy is the same.\n"
          + "* `reference_perplexity_expected`: the reference's cross-entropy of the policy's whole next-token distribution at"
            " each sampled prefix (the expectation of the sampled token's NLL there), exponentiated.\n"
          + f"* Machine: {machine}\n* Command: `{command_line()}`\n")
    js, mdp = write_results(args.name, data, md)
    print(md)
    print(f"wrote {js} and {mdp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
