"""Benchmark: wall time per PPO iteration, 1 process vs 2 processes (torchrun, gloo, CPU).

Each configuration launches this file again as a worker (``python -m torch.distributed.run`` for 2
processes, plain ``python`` for 1), which builds the policy, env and ``PPOAgent``, runs warm-up
iterations, then times ``--iterations`` iterations of ``agent.step()`` (rollout + experience + update);
rank 0 reports the median seconds per iteration and its split (rollout / rest). Configurations:

* ``1p x 2t``: one process, 2 intra-op threads, global batch B       (the single-process baseline)
* ``1p x 1t``: one process, 1 thread, global batch B
* ``2p x 1t``: two processes, 1 thread each, B/2 episodes each       (same global batch: strong scaling)
* ``2p x 1t, 2B``: two processes, 1 thread each, B episodes each     (weak scaling)

Models: ``--model tiny`` (a 2-layer, 64-wide llama on the 44-token toy vocabulary: overhead-dominated)
or ``--model smollm2`` (SmolLM2-135M-Instruct with LoRA r=16 on the default task, as ``tokengym train``).

``--allreduce`` instead times ``all_reduce_grads`` of 2 processes on gradient-sized buffers: the LoRA
gradient of SmolLM2-135M (r=16 on q/k/v/o + value head, 1.84 M floats) and its full gradient (134.5 M).

Run: ``python bench/scaling.py --model tiny`` (about a minute on an idle 2-core machine) and/or
``python bench/scaling.py --model smollm2 --batch 8 --max-new-tokens 16 --iterations 2``; rows are
appended to ``bench/results/scaling.jsonl`` and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "scaling.jsonl"


# ------------------------------------------------------------------------------------------------
# Worker (one per process)
# ------------------------------------------------------------------------------------------------
def build_agent(model: str, batch: int, max_new_tokens: int, seed: int):
    from tokengym.agents import PPOAgent, PPOConfig
    from tokengym.envs import BatchedTextEnv

    if model == "tiny":
        from tokengym.models import make_tiny_causal_lm
        from tokengym.testing import TOY_PROMPTS, make_toy_tokenizer

        tok = make_toy_tokenizer()
        _, lm = make_tiny_causal_lm(tok, hidden=64, n_layers=2, n_heads=4, seed=0)
        reward = lambda p, r: sum(w == "good" for w in r.split()) / max(len(r.split()), 1)  # noqa: E731
        env = BatchedTextEnv(batch, tokenizer=tok, prompts=TOY_PROMPTS, split=None, max_new_tokens=max_new_tokens,
                             max_prompt_tokens=4, reward=reward)
        cfg = PPOConfig(batch_size=batch, minibatch_size=batch // 2, micro_batch_size=batch // 2, ppo_epochs=2,
                        learning_rate=3e-3, sample_every=0, seed=seed, lora_r=0, kl_stop=None)
    else:
        import gymnasium as gym

        import tokengym  # noqa: F401
        from tokengym.models import load_causal_lm

        tok, lm = load_causal_lm("smollm2")
        env = gym.make_vec("tokengym/PositiveReview-v0", num_envs=batch, vectorization_mode="vector_entry_point",
                           split="train", tokenizer=tok, model="smollm2", max_new_tokens=max_new_tokens)
        mb = max(1, batch // 2)
        cfg = PPOConfig(batch_size=batch, minibatch_size=mb, micro_batch_size=mb, ppo_epochs=2, lora_r=16,
                        lora_alpha=32, learning_rate=2e-4, kl_coef=0.02, sample_every=0, seed=seed,
                        kl_stop=None)  # every timed iteration updates
    return PPOAgent(env, lm, cfg)


def worker(args: argparse.Namespace) -> None:
    import torch

    from tokengym import distributed as dist

    torch.set_num_threads(args.threads)
    with dist.distributed_from_env():
        agent = build_agent(args.model, args.batch, args.max_new_tokens, args.seed)
        n_params = sum(p.numel() for p in agent.ac.trainable_parameters())
        for _ in range(args.warmup):
            agent.step()
        rows = []
        for _ in range(args.iterations):
            dist.barrier()
            t0 = time.perf_counter()
            m = agent.step()
            rows.append({"iteration_s": time.perf_counter() - t0, "rollout_s": m["rollout_s"], "update_s": m["update_s"],
                         "tokens": m["response_length"] * args.batch * dist.world_size()})
        if dist.rank() == 0:
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            print("RESULT " + json.dumps({**med, "all_iteration_s": [r["iteration_s"] for r in rows],
                                          "trainable_params": n_params, "threads": args.threads,
                                          "world_size": dist.world_size(), "batch_per_rank": args.batch}), flush=True)


SIZES = {"lora_r16_smollm2": 1_843_777, "full_smollm2": 134_515_585}  # trainable floats incl. value head


def allreduce_worker(args: argparse.Namespace) -> None:
    import torch

    from tokengym import distributed as dist

    torch.set_num_threads(args.threads)
    with dist.distributed_from_env():
        out = {}
        for name, n in SIZES.items():
            params = [torch.nn.Parameter(torch.zeros(n))]
            params[0].grad = torch.randn(n)
            times = []
            for _ in range(args.iterations + 1):
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_reduce_grads(params)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times[1:])
            out[name] = {"floats": n, "mbytes": n * 4 / 1e6, "median_s": med, "algbw_GBps": n * 4 / med / 1e9}
        if dist.rank() == 0:
            print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, threads: int, batch: int, args: argparse.Namespace) -> dict:
    worker_args = ["--worker", *(["--allreduce"] if args.allreduce else []), "--model", args.model, "--batch", str(batch), "--threads", str(threads),
                   "--iterations", str(args.iterations), "--warmup", str(args.warmup),
                   "--max-new-tokens", str(args.max_new_tokens)]
    if nproc == 1:
        cmd = [sys.executable, __file__, *worker_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), __file__, *worker_args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return {**json.loads(line[7:]), "launch_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--batch", type=int, default=16, help="global batch B (episodes per iteration)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="run the configurations this many times, interleaved")
    p.add_argument("--allreduce", action="store_true", help="time the gradient all-reduce alone (2 processes)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return allreduce_worker(args) if args.allreduce else worker(args)
    if args.allreduce:
        r = launch(2, args.threads, 1, args)
        r.update(config="allreduce 2p", loadavg_before=os.getloadavg()[0], cpus=os.cpu_count())
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(r) + "\n")
        for name, v in r.items():
            if isinstance(v, dict):
                print(f"{name}: {v['mbytes']:.1f} MB in {v['median_s'] * 1e3:.1f} ms ({v['algbw_GBps']:.2f} GB/s)")
        return None
    configs = [("1p x 2t", 1, 2, args.batch), ("1p x 1t", 1, 1, args.batch),
               ("2p x 1t", 2, 1, args.batch // 2), ("2p x 1t, 2B", 2, 1, args.batch)]
    load = os.getloadavg()[0]
    results = []
    for rep in range(args.repeats):
        for name, nproc, threads, batch in configs:
            r = launch(nproc, threads, batch, args)
            r.update(config=name, repeat=rep, model=args.model, global_batch=batch * nproc,
                     max_new_tokens=args.max_new_tokens, loadavg_before=load, cpus=os.cpu_count())
            results.append(r)
            print(f"{name:<14} {r['iteration_s']:.3f} s/it", file=sys.stderr, flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    print(f"\nmodel={args.model}, T={args.max_new_tokens}, {os.cpu_count()} CPUs, 1-min load average before: {load:.1f}\n")
    print("| config | global batch | s / iteration (median) | rollout s | update s | episodes / s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['global_batch']} | {r['iteration_s']:.3f} | {r['rollout_s']:.3f} | "
              f"{r['update_s']:.3f} | {r['global_batch'] / r['iteration_s']:.1f} |")


if __name__ == "__main__":
    main()
