"""tokengym vs TRL on the same work: seconds per iteration and generated tokens/s.

Work: SmolLM2-135M-Instruct fp32 (our cached Hugging Face folder, ``tokengym.models.resolve_model_path``;
TRL loads the same folder offline), ``--batch`` (16) completions per iteration as 4 prompts x 4
samples, ``--new-tokens`` (48) new tokens with EOS off on both sides, the same 16-token prompts
(``movie_reviews`` prompts cut to their last 16 tokens), a trivial Python reward ``len(response) / 100``
on both sides, reference model on (KL coefficient 0.05), no entropy bonus (TRL has none), temperature 1, no top-k/top-p, on CPU
(``use_cpu=True, gradient_checkpointing=False``), micro-batches of 8. ``--dtypes fp32,bf16`` runs each
pair in each precision: TRL's ``bf16=True`` (its Trainer's CPU autocast) against our ``dtype="bf16"``
(autocast with fp32 master weights, :mod:`tokengym.agents.precision`); fp32 is ``bf16=False`` against
``dtype="fp32"``. Rows of bf16 runs are keyed ``<pair>/bf16``.

Pairs (each side in its own process; the pairs run interleaved, TRL first then ours, for each pair):

* ``rloo``: TRL ``RLOOTrainer`` vs our ``RLOOAgent``: one optimiser step per generation (16 completions);
* ``grpo``: TRL ``GRPOTrainer`` vs our ``GRPOAgent``: the same;
* ``ppo``: TRL 1.16 has no PPO trainer, so our ``PPOAgent`` (4 epochs x 2 minibatches of 8, value head,
  old log-probs and values from the rollout) is compared with ``GRPOTrainer`` given the same shape
  (``num_iterations=4``, ``steps_per_generation=2``: 8 optimiser steps per generation, old log-probs
  from an extra forward).

TRL runs from the separate virtual environment ``bench/.venv-trl`` (not our package's; create it with
``python -m venv bench/.venv-trl && bench/.venv-trl/bin/pip install torch==2.13.0 trl==1.16.0 transformers==5.24.0``).
``--iterations`` (2) iterations per run; the table gives the median seconds per iteration.

Run: ``python bench/peers.py`` (about 15 minutes on a loaded 2-core machine) or ``--pairs rloo,grpo``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import RESULTS, command_line, machine_info, never_stop, md_table, median, peak_rss_mb, progress, set_threads, write_results

VENV_PY = Path(__file__).parent / ".venv-trl" / "bin" / "python"
TRL_ALGO = {"rloo": "rloo", "grpo": "grpo", "ppo": "grpo-ppo"}
TRL_NAME = {"rloo": "TRL RLOOTrainer", "grpo": "TRL GRPOTrainer", "ppo": "TRL GRPOTrainer (num_iterations=4, 2 minibatches)"}
OUR_NAME = {"rloo": "tokengym RLOOAgent", "grpo": "tokengym GRPOAgent", "ppo": "tokengym PPOAgent (4 epochs x 2 minibatches)"}


def shared_prompts(tok, n: int, P: int) -> list[str]:
    """``n`` prompt texts that encode to exactly ``P`` tokens (the last P tokens of movie_reviews
    prompts, decoded), so both frameworks see the same token ids."""
    from tokengym.envs import load_prompts

    out = []
    for item in load_prompts("movie_reviews", split="train").items:
        ids = tok(item["prompt"])["input_ids"]
        if len(ids) < P:
            continue
        text = tok.decode(ids[-P:])
        if tok(text)["input_ids"] == ids[-P:] and text not in out:
            out.append(text)
            if len(out) == n:
                return out
    raise ValueError(f"only {len(out)} prompts round-trip to {P} tokens")


def ours_child(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    from tokengym.agents import GRPOAgent, GRPOConfig, PPOAgent, PPOConfig, RLOOAgent, RLOOConfig
    from tokengym.envs import BatchedTextEnv
    from tokengym.models import load_causal_lm

    t0 = time.perf_counter()
    prompts = json.loads(Path(args.prompts).read_text())
    tok, model = load_causal_lm()
    env = BatchedTextEnv(args.batch, tokenizer=tok, reward=lambda p, r: len(r) / 100.0,
                         prompts=[{"prompt": p, "id": str(i)} for i, p in enumerate(prompts)], split=None,
                         max_new_tokens=args.new_tokens, max_prompt_tokens=args.prompt_tokens,
                         stop_token_ids=never_stop(tok))
    common = dict(batch_size=args.batch, micro_batch_size=args.micro, kl_coef=args.beta, adaptive_kl=False,
                  sample_every=0, anneal_lr=False, learning_rate=1e-5, lora_r=0, checkpoint_every=0, dtype=args.dtype,
                  # TRL's trainers have no entropy bonus; PPOConfig's default 0.01 would add a full-vocabulary
                  # entropy and its backward to every micro-batch: not the same work
                  ent_coef=0.0)
    if args.child == "ppo":
        agent = PPOAgent(env, model, PPOConfig(**common, minibatch_size=args.micro, ppo_epochs=args.epochs, kl_stop=None))
    elif args.child == "rloo":
        agent = RLOOAgent(env, model, RLOOConfig(**common, group_size=args.group))
    else:
        agent = GRPOAgent(env, model, GRPOConfig(**common, group_size=args.group))
    setup_s = time.perf_counter() - t0
    rows, cpu = [], []
    for _ in range(args.iterations):
        c0 = time.process_time()
        rows.append(agent.step())
        cpu.append(time.process_time() - c0)
    out = {
        "algo": args.child, "framework": "tokengym", "iteration_s": [r["iteration_s"] for r in rows], "iteration_cpu_s": cpu,
        "generated_tokens_per_iteration": args.batch * args.new_tokens, "setup_s": setup_s,
        "mean_completion_length": median([r["response_length"] for r in rows]),
        "phases_total_s": {"rollout (generation+scoring)": sum(r["rollout_s"] for r in rows),
                           "logprobs_old_ref": sum(r["iteration_s"] - r["rollout_s"] - r["update_s"] for r in rows),
                           "update": sum(r["update_s"] for r in rows)},
        "peak_rss_mb": peak_rss_mb(), "config": {**common, "algo": args.child},
    }
    Path(args.out).write_text(json.dumps(out, default=float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default="rloo,grpo,ppo")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtypes", default="fp32", help="comma-separated fp32,bf16: each pair runs in each")
    ap.add_argument("--tag", default="", help="suffix of the results files (keeps other runs' results)")
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--prompts", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return ours_child(args)

    set_threads(args.threads)
    from tokengym.models import load_tokenizer, resolve_model_path

    model_dir = resolve_model_path(None)
    tok = load_tokenizer()
    n_prompts = args.iterations * args.batch  # enough distinct prompts for every side
    info = machine_info()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    common = [f"--iterations={args.iterations}", f"--batch={args.batch}", f"--group={args.group}", f"--micro={args.micro}",
              f"--epochs={args.epochs}", f"--new-tokens={args.new_tokens}", f"--beta={args.beta}", f"--threads={args.threads}"]
    dtypes = args.dtypes.split(",")
    if not set(dtypes) <= {"fp32", "bf16"}:
        ap.error("--dtypes: fp32 and/or bf16")
    js = RESULTS / f"peers{args.tag}.json"
    old = json.loads(js.read_text()) if js.is_file() else {}
    results: dict = old.get("pairs", {}) if old.get("settings", {}).get("common") == common else {}
    results = {k: v for k, v in results.items() if all("iteration_cpu_s" in v[s] for s in ("trl", "ours") if s in v)}
    errors: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        pfile = Path(tmp) / "prompts.json"
        pfile.write_text(json.dumps(shared_prompts(tok, n_prompts, args.prompt_tokens)))
        for pair_name, dt in [(p, d) for d in dtypes for p in args.pairs.split(",")]:
            pair = pair_name if dt == "fp32" else f"{pair_name}/{dt}"
            results[pair] = {}
            for side in ("trl", "ours"):
                out = Path(tmp) / f"{pair_name}-{dt}-{side}.json"
                if side == "trl":
                    if not VENV_PY.is_file():
                        errors[f"{pair}/trl"] = f"{VENV_PY} missing: create the TRL venv (see the docstring)"
                        continue
                    cmd = [str(VENV_PY), str(Path(__file__).parent / "_peers_trl.py"), "--algo", TRL_ALGO[pair_name],
                           "--model", str(model_dir), "--prompts", str(pfile), "--out", str(out), f"--dtype={dt}", *common]
                else:
                    cmd = [sys.executable, __file__, "--child", pair_name, "--prompts", str(pfile), "--out", str(out),
                           f"--prompt-tokens={args.prompt_tokens}", f"--dtype={dt}", *common]
                progress(f"{pair}: {side}")
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    errors[f"{pair}/{side}"] = proc.stderr[-3000:]
                    progress(f"{pair}: {side} FAILED (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
                    continue
                res = json.loads(out.read_text())
                res["process_wall_s"] = time.perf_counter() - t0
                res["median_iteration_s"] = median(res["iteration_s"])
                res["median_iteration_cpu_s"] = median(res["iteration_cpu_s"])
                res["tokens_per_s"] = res["generated_tokens_per_iteration"] / res["median_iteration_s"]
                results[pair][side] = res
                progress(f"{pair}: {side} {res['median_iteration_s']:.1f} s/iteration")

    rows = []
    for pair, sides in results.items():
        for side in ("trl", "ours"):
            if side not in sides:
                continue
            r = sides[side]
            base, _, dt = pair.partition("/")
            name = (TRL_NAME[base] if side == "trl" else OUR_NAME[base]) + f" {dt or 'fp32'}"
            rows.append([name, ", ".join(f"{x:.1f}" for x in r["iteration_s"]), r["median_iteration_s"], r["tokens_per_s"],
                         r["median_iteration_cpu_s"], r["generated_tokens_per_iteration"] / r["median_iteration_cpu_s"],
                         r["peak_rss_mb"],
                         "; ".join(f"{k} {v / len(r['iteration_s']):.1f}" for k, v in r["phases_total_s"].items())])
        if "trl" in sides and "ours" in sides:
            sides["trl_over_ours"] = sides["trl"]["median_iteration_s"] / sides["ours"]["median_iteration_s"]
            sides["trl_over_ours_cpu"] = sides["trl"]["median_iteration_cpu_s"] / sides["ours"]["median_iteration_cpu_s"]
    end = machine_info()
    data = {"command": command_line(), "settings": {"common": common, "prompt_tokens": args.prompt_tokens},
            "machine_start": info, "machine_end": end, "pairs": results, "errors": errors}
    md = [f"### tokengym vs TRL (SmolLM2-135M {'/'.join(dtypes)}, {args.batch} completions = {args.batch // args.group} prompts x {args.group}, "
          f"{args.prompt_tokens}-token prompts, {args.new_tokens} new tokens, EOS off, reference model on, micro-batch {args.micro})", "",
          md_table(["run", "wall s per iteration (each)", "median wall s/iteration", "generated tokens/s (wall)",
                    "median CPU s/iteration", "generated tokens/CPU-s", "peak RSS MB", "phases wall s/iteration"], rows), ""]
    for pair, sides in results.items():
        if "trl_over_ours" in sides:
            md.append(f"* {pair}: TRL / tokengym seconds per iteration = **{sides['trl_over_ours_cpu']:.2f}** by CPU time, "
                      f"{sides['trl_over_ours']:.2f} by wall time (> 1: tokengym is faster)")
    for base in args.pairs.split(","):
        trl_runs = {k: v["trl"] for k, v in results.items() if k.partition("/")[0] == base and "trl" in v}
        ours_runs = {k: v["ours"] for k, v in results.items() if k.partition("/")[0] == base and "ours" in v}
        if len(trl_runs) > 1 and ours_runs:
            tb = min(trl_runs, key=lambda k: trl_runs[k]["median_iteration_cpu_s"])
            ob = min(ours_runs, key=lambda k: ours_runs[k]["median_iteration_cpu_s"])
            md.append(f"* {base}, each side's best precision: TRL's `{tb}` / tokengym's `{ob}` = "
                      f"**{trl_runs[tb]['median_iteration_cpu_s'] / ours_runs[ob]['median_iteration_cpu_s']:.2f}** by CPU time")
    if errors:
        md += ["", "Errors:", ""] + [f"* {k}: ```{v.strip()[-800:]}```" for k, v in errors.items()]
    md += ["", f"TRL side: {next((s['trl']['framework'] for s in results.values() if 'trl' in s), 'not run')}, from `bench/.venv-trl`. "
           f"Each run is its own process ({args.iterations} iterations; the first includes warm-up); the pairs ran one after the "
           f"other on 2 cores (load average {info['load_average'][0]:.1f} at start, "
           f"{end['load_average'][0]:.1f} at end), torch threads {args.threads}: CPU time (= work done with one thread) "
           "is the steadier measure, wall time moves with any other job on the machine. TRL's optimiser is its default "
           "`adamw_torch_fused`, ours fused Adam. Generated tokens = completions x new tokens (EOS off on both sides).",
           f"Command: `{data['command']}` ({end['date']})"]
    write_results(f"peers{args.tag}", data, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
