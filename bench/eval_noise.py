"""How much the main job's held-out numbers move with the evaluation's sampling seed alone.

    python bench/eval_noise.py --policies smollm2,runs/rlhf_stop/round0/final_model --eval-seeds 0,1,2,3,4,5

Each policy is evaluated on the main task's test prompts (the same 160 prompt slots as
``tokengym train``) once per evaluation seed; nothing is trained. For the base model the spread of
``reference_perplexity`` and ``distinct_2`` over the seeds is pure sampling noise, so it says how often
the main job's "ppl <= +10 %" and "distinct-2 >= base - 0.02" checks would fail for a policy that did
not change at all (every ordered pair of seeds is one before/after comparison).

Beside the report's perplexity (the reference's NLL of the *sampled* tokens) the script measures
an expected form of it: at every sampled prefix, the cross-entropy of the whole next-token
distribution of the policy under the reference's, ``-sum_v pi(v) log ref(v)``. Its expectation is the
same (the sampled token's NLL averaged over the policy's choice), without the noise of the single
draw, so the spread of the two over the seeds shows how much of the noise the draw is.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import command_line, machine_info, md_table, write_results  # noqa: E402


def evaluate_with_expected_nll(policy, reference, env, episodes: int, seed: int, vocab: int,
                               pad_id: int | None) -> dict[str, float]:
    """The report's gold score, perplexity and distinct-2 (same prompts, seeds and sampler as
    ``evaluate_policy``, hence the same numbers), and the expected perplexity from the same samples:
    at each sampled prefix, the cross-entropy of the policy's next-token distribution under the
    reference's."""
    import math

    import numpy as np
    import torch

    from tokengym.agents.evaluation import distinct_n
    from tokengym.agents.rollout import CachedSampler, mask_pad_logits
    from tokengym.agents.policy import response_forward

    sampler = CachedSampler(policy, temperature=1.0)
    gen = torch.Generator().manual_seed(seed)
    sampled, expected, tokens, golds, texts = 0.0, 0.0, 0.0, [], []
    with torch.inference_mode():
        for start in range(0, episodes, env.num_envs):
            idx = np.arange(start, start + env.num_envs) % len(env.prompts)
            b = sampler.rollout(env, seed=seed + start, generator=gen, options={"prompt_indices": idx})
            P = b.prompt_ids.shape[1]
            pol, ref = (torch.log_softmax(mask_pad_logits(response_forward(m, b.input_ids, b.attention_mask, P, 1.0)[0]
                                                          [..., :vocab].float(), pad_id), -1) for m in (policy, reference))
            mask = b.response_mask.bool()
            ref_tok = ref.gather(-1, b.input_ids[:, P:].unsqueeze(-1)).squeeze(-1)
            sampled += float(torch.where(mask, -ref_tok, 0.0).sum())
            ce = -(pol.exp() * ref.nan_to_num(neginf=0.0)).sum(-1)  # (B, T); pad has probability 0 under both
            expected += float(torch.where(mask, ce, 0.0).sum())
            tokens += float(mask.sum())
            golds.append(b.gold_scores)
            texts += b.response_texts
    n = max(tokens, 1.0)
    return {"gold_score": float(torch.cat(golds)[:episodes].mean()), "reference_perplexity": math.exp(sampled / n),
            "reference_perplexity_expected": math.exp(expected / n), "distinct_2": distinct_n(texts[:episodes], 2)}


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

    from tokengym.train import load_policy_and_reference, make_envs, make_train_config
    from tokengym.utils import set_cpu_threads

    set_cpu_threads(args.threads)
    cfg = make_train_config({})
    episodes = args.episodes or cfg.eval_episodes
    seeds = [int(s) for s in args.eval_seeds.split(",")]
    rows, data = [], {"episodes": episodes, "eval_seeds": seeds, "policies": {}}
    for spec in args.policies.split(","):
        tok, model, ref_model, _ = load_policy_and_reference(spec, args.reference)
        _, test_env = make_envs(cfg, tok, cfg.ppo.batch_size)
        runs = []
        for seed in seeds:
            t0 = time.time()
            metrics = evaluate_with_expected_nll(model, ref_model, test_env.unwrapped, episodes, seed, len(tok),
                                                 tok.pad_token_id)
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
