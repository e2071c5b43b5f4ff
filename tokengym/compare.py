"""``tokengym bench``: train several algorithms on one task with equal budgets of generated tokens.

    tokengym bench --algos ppo,reinforce,a2c,rloo,grpo,sb3-ppo --env tokengym/PositiveReview-v0 \\
        --seeds 3 --budget 4096 --out bench/results

Every run (algorithm x seed) starts from the same weights, optimises the same reward with the same
fixed KL coefficient (per-token penalty against a frozen copy of the initial model; SB3 through
:class:`~tokengym.agents.sb3.KLPenaltyWrapper`), and stops once it has generated ``--budget``
response tokens (a run finishes its last rollout, so it may overshoot by up to one batch; the
tokens column says how many it generated). Each final policy is then evaluated the same way: one
sampled response (temperature 1) to each of ``--eval-prompts`` held-out prompts (the ``test`` split
when the prompt set has one), scored by the proxy reward and the gold judge, and the KL to the initial
model is summed over the response tokens (a Monte-Carlo estimate of KL(pi || pi_ref) in nats per
response, with the k3 estimator: unbiased and never negative; the k1 estimate is kept in the JSON).
Wall time and tokens/s cover training only (not loading or evaluation).

Outputs in ``--out``: ``<name>.json`` (every run, with settings and learning curves; runs of the same
settings already in the file are kept, so separate invocations combine), ``<name>.md`` (a table of
mean ± std over seeds, and the command) and ``<name>.png`` (learning curves vs tokens generated).
``--model toy`` = a tiny random Llama with the 40-word toy tokenizer and toy prompts (seconds);
``tiny`` = a tiny random Llama with the SmolLM2 tokenizer; default ``smollm2`` (the real policy).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ALGOS = ("ppo", "reinforce", "a2c", "rloo", "grpo", "sb3-ppo", "sb3-a2c")
CURVE_KEYS = ("score", "gold_score", "kl")


# ----------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------
def load_model(spec: str) -> tuple[Any, Any, dict[str, Any]]:
    """(tokenizer, model, env overrides) for ``toy``, ``tiny`` or a real model spec."""
    from tokengym.models import load_causal_lm, make_tiny_causal_lm

    if spec == "toy":
        from tokengym.testing import TOY_PROMPTS, make_toy_tokenizer

        tok, model = make_tiny_causal_lm(make_toy_tokenizer(), seed=0)
        return tok, model, {"prompts": list(TOY_PROMPTS)}
    if spec == "tiny":
        tok, model = make_tiny_causal_lm(seed=0)
        return tok, model, {}
    tok, model = load_causal_lm(spec)
    return tok, model, {}


def env_kwargs(env_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The registered task's kwargs with ``overrides`` on top (tokenizer, prompts, lengths...)."""
    import gymnasium as gym

    import tokengym  # noqa: F401  (registers the envs)

    return {**gym.spec(env_id).kwargs, **overrides}


def has_test_split(prompts: Any) -> bool:
    from tokengym.envs import load_prompts

    return any(it.get("split") == "test" for it in load_prompts(prompts, split=None).items)


def make_agent(algo: str, env: Any, model: Any, args: argparse.Namespace, seed: int) -> Any:
    from tokengym.agents import (
        A2CAgent, A2CConfig, GRPOAgent, GRPOConfig, PPOAgent, PPOConfig, ReinforceAgent, ReinforceConfig,
        RLOOAgent, RLOOConfig,
    )

    B = args.batch_size
    common = dict(
        seed=seed, batch_size=B, learning_rate=args.lr, anneal_lr=False, kl_coef=args.kl_coef, adaptive_kl=False,
        sample_every=0, ent_coef=args.ent_coef,
    )
    if algo == "ppo":
        cfg = PPOConfig(**common, minibatch_size=max(1, B // 2), micro_batch_size=min(args.micro_batch_size, max(1, B // 2)))
        return PPOAgent(env, model, cfg)
    micro = dict(micro_batch_size=args.micro_batch_size)
    if algo == "reinforce":
        return ReinforceAgent(env, model, ReinforceConfig(**common, **micro))
    if algo == "a2c":
        return A2CAgent(env, model, A2CConfig(**common, **micro))
    if algo == "rloo":
        return RLOOAgent(env, model, RLOOConfig(**common, **micro, group_size=args.group_size))
    if algo == "grpo":
        return GRPOAgent(env, model, GRPOConfig(**common, **micro, group_size=args.group_size))
    raise ValueError(f"unknown algorithm {algo!r}; choose from {', '.join(ALGOS)}")


# ----------------------------------------------------------------------------------------------
# Training runs
# ----------------------------------------------------------------------------------------------
def train_tokengym(algo: str, model: Any, tok: Any, kwargs: dict[str, Any], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from tokengym.envs import BatchedTextEnv

    env = BatchedTextEnv(num_envs=args.batch_size, tokenizer=tok, split="train", **kwargs)
    agent = make_agent(algo, env, model, args, seed)
    agent.total_iterations = max(1, math.ceil(args.budget / (args.batch_size * env.max_new_tokens)))
    tokens, curve = 0, []
    t0 = time.perf_counter()
    while tokens < args.budget:
        m = agent.step()
        tokens += int(round(m["response_length"] * args.batch_size))
        curve.append({"tokens": tokens, **{k: m[k] for k in CURVE_KEYS}})
        if args.verbose:
            print(f"  {algo} seed {seed}: {tokens} tokens, score {m['score']:.3f}, kl {m['kl']:.3f}", file=sys.stderr)
    return {"policy": agent.ac.policy, "tokens": tokens, "wall_s": time.perf_counter() - t0, "curve": curve}


def train_sb3(algo: str, model: Any, tok: Any, kwargs: dict[str, Any], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    import gymnasium as gym
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback

    from tokengym.agents.sb3 import KLPenaltyWrapper, LMActorCriticPolicy

    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    T = kwargs.get("max_new_tokens", 32)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    # batch_size envs stepped together: each SB3 update sees batch_size x T tokens, like a tokengym rollout.
    wrappers = [KLPenaltyWrapper(gym.make(args.env, tokenizer=tok, split="train", **kwargs), reference=reference, policy=model,
                                 beta=args.kl_coef) for _ in range(args.batch_size)]
    env = DummyVecEnv([lambda w=w: Monitor(w) for w in wrappers])
    n_steps = T  # per env
    if algo == "sb3-ppo":
        sb3 = PPO(LMActorCriticPolicy, env, policy_kwargs={"lm": model}, learning_rate=args.lr, n_steps=n_steps,
                  batch_size=max(1, n_steps * args.batch_size // 2), n_epochs=4, gamma=1.0, gae_lambda=0.95,
                  clip_range=0.2, ent_coef=args.ent_coef, vf_coef=0.1, max_grad_norm=1.0, seed=seed, verbose=0, device="cpu")
    else:
        sb3 = A2C(LMActorCriticPolicy, env, policy_kwargs={"lm": model}, learning_rate=args.lr, n_steps=n_steps,
                  gamma=1.0, gae_lambda=1.0, ent_coef=args.ent_coef, vf_coef=0.5, max_grad_norm=1.0, seed=seed,
                  verbose=0, device="cpu")
    for w in wrappers:
        w.policy = sb3.policy  # the KL term reuses the policy's rollout forward

    class Curve(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.curve: list[dict[str, float]] = []
            self.ends: list[dict[str, float]] = []

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "episode_kl" in info:
                    self.ends.append({"score": float(info["score"]), "gold_score": float(info.get("gold_score", math.nan)),
                                      "kl": float(info["episode_kl"])})
            return True

        def _on_rollout_end(self) -> None:
            if self.ends:
                self.curve.append({"tokens": int(self.num_timesteps), **{k: float(np.mean([e[k] for e in self.ends])) for k in CURVE_KEYS}})
                self.ends = []
            if args.verbose and self.curve:
                print(f"  {algo} seed {seed}: {self.num_timesteps} tokens, score {self.curve[-1]['score']:.3f}", file=sys.stderr)

    cb = Curve()
    t0 = time.perf_counter()
    sb3.learn(total_timesteps=args.budget, callback=cb)
    return {"policy": sb3.policy.lm, "tokens": int(sb3.num_timesteps), "wall_s": time.perf_counter() - t0, "curve": cb.curve}


def evaluate(policy: Any, reference: Any, tok: Any, kwargs: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    """One sampled response per held-out prompt, measured by the one evaluator
    (:func:`tokengym.agents.evaluation.evaluate_policy`, so the names are ``tokengym train``'s), plus
    three samples."""
    from tokengym.agents.evaluation import evaluate_policy, reference_logprob_fn
    from tokengym.envs import BatchedTextEnv

    split = "test" if has_test_split(kwargs.get("prompts", "movie_reviews")) else None
    env = BatchedTextEnv(num_envs=min(n, 16), tokenizer=tok, split=split, **kwargs)
    policy.eval()
    ref_fn = reference_logprob_fn(reference, env.vocab_size, pad_id=env.pad_token_id)
    metrics, samples = evaluate_policy(policy, ref_fn, env, n, seed=seed)
    return {**metrics, "samples": samples[:3]}


# ----------------------------------------------------------------------------------------------
# Results: JSON, Markdown, PNG
# ----------------------------------------------------------------------------------------------
def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("env", "model", "budget", "batch_size", "lr", "kl_coef", "ent_coef", "group_size", "max_new_tokens", "eval_prompts")
    # The evaluator's version: results measured with other metric names are never mixed with these.
    return {"evaluator": 2, **{k: getattr(args, k) for k in keys}}


def load_results(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("settings") == settings:
            return data
        print(f"{path} holds runs of other settings; writing a new file over it", file=sys.stderr)
    return {"settings": settings, "commands": [], "initial": None, "runs": []}


def _pm(values: list[float], digits: int = 3) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def markdown_table(data: dict[str, Any]) -> str:
    rows = ["| algorithm | seeds | gold score | proxy score | KL to ref (nats/response) | wall time (s) | tokens/s | tokens |",
            "|---|---|---|---|---|---|---|---|"]
    init = data.get("initial")
    if init:
        rows.append(f"| (initial policy) | – | {_pm([init['gold_score']])} | {_pm([init['proxy_score']])} | {_pm([init['kl_to_reference']])} | – | – | 0 |")
    algos = [a for a in ALGOS if any(r["algo"] == a for r in data["runs"])]
    algos += sorted({r["algo"] for r in data["runs"]} - set(algos))
    for algo in algos:
        runs = [r for r in data["runs"] if r["algo"] == algo]
        f = lambda key: [r["final"][key] for r in runs]  # noqa: E731
        rows.append(
            f"| {algo} | {len(runs)} | {_pm(f('gold_score'))} | {_pm(f('proxy_score'))} | {_pm(f('kl_to_reference'))} | "
            f"{_pm([r['wall_s'] for r in runs], 1)} | {_pm([r['tokens'] / r['wall_s'] for r in runs], 1)} | "
            f"{_pm([float(r['tokens']) for r in runs], 0)} |"
        )
    return "\n".join(rows)


def write_markdown(data: dict[str, Any], path: Path) -> None:
    s = data["settings"]
    text = [
        f"# Benchmark: {s['env']}, model `{s['model']}`, budget {s['budget']} generated tokens per run", "",
        markdown_table(data), "",
        f"Mean ± sample std over seeds. Same reward, fixed KL coefficient {s['kl_coef']}, learning rate {s['lr']}, "
        f"batch {s['batch_size']} episodes (group size {s['group_size']} for rloo/grpo), entropy coefficient {s['ent_coef']}. "
        f"Final scores: one sampled response to each of {s['eval_prompts']} held-out prompts; KL (k3 estimator) summed over response tokens. "
        "Wall time and tokens/s: training only.", "",
        "Produced by:", "",
        *[f"    {c}" for c in data.get("commands", [])],
    ]
    path.write_text("\n".join(text) + "\n")


def plot_curves(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = data["settings"]["budget"]
    grid = np.linspace(0, budget, 41)[1:]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    titles = {"score": "proxy score (training rollouts)", "gold_score": "gold score (training rollouts)",
              "kl": "KL to ref, nats/response (training rollouts, k1)"}
    for ax, key in zip(axes, CURVE_KEYS):
        for algo in sorted({r["algo"] for r in data["runs"]}, key=lambda a: ALGOS.index(a) if a in ALGOS else 99):
            ys = []
            for r in (r for r in data["runs"] if r["algo"] == algo):
                pts = [(c["tokens"], c[key]) for c in r["curve"] if c.get(key) is not None and math.isfinite(c[key])]
                if pts:
                    x, y = zip(*pts)
                    ys.append(np.interp(grid, x, y, left=np.nan))
            if not ys:
                continue
            ys = np.array(ys)
            with warnings.catch_warnings(), np.errstate(all="ignore"):  # grid points before a run's first rollout
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(ys, 0), np.nanstd(ys, 0)
            ax.plot(grid, mean, label=algo)
            ax.fill_between(grid, mean - std, mean + std, alpha=0.15)
        ax.set_title(titles[key])
        ax.set_xlabel("tokens generated")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{data['settings']['env']} · {data['settings']['model']} · mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(data: dict[str, Any], out: Path, name: str) -> None:
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    write_markdown(data, out / f"{name}.md")
    if data["runs"]:
        plot_curves(data, out / f"{name}.png")


# ----------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algos", default="ppo,reinforce,a2c,rloo,grpo,sb3-ppo", help=f"comma-separated, from {', '.join(ALGOS)}")
    p.add_argument("--env", default="tokengym/PositiveReview-v0", help="a registered tokengym task")
    p.add_argument("--model", default="smollm2", help="'toy', 'tiny', 'smollm2' (default) or a local model path")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds: seed-start .. seed-start+N-1")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (to add seeds to an earlier run's JSON)")
    p.add_argument("--budget", type=int, default=4096, help="generated response tokens per run")
    p.add_argument("--out", default="bench/results", help="output folder")
    p.add_argument("--name", default="algos", help="file stem of the outputs")
    p.add_argument("--batch-size", type=int, default=16, help="episodes per rollout (tokengym agents; SB3 n_steps = this x max_new_tokens)")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help="learning rate for every algorithm (default: 1e-5 real, 1e-3 tiny, 1e-2 toy)")
    p.add_argument("--kl-coef", type=float, default=0.05, help="fixed KL coefficient beta for every algorithm")
    p.add_argument("--ent-coef", type=float, default=0.0)
    p.add_argument("--group-size", type=int, default=4, help="samples per prompt for rloo/grpo")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override the task's response length")
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts in the final evaluation")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--verbose", action="store_true")


def run(args: argparse.Namespace, command: str | None = None) -> dict[str, Any]:
    import torch

    from tokengym.utils import seed_everything

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lr is None:
        args.lr = {"toy": 1e-2, "tiny": 1e-3}.get(args.model, 1e-5)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    bad = [a for a in algos if a not in ALGOS]
    if bad:
        raise SystemExit(f"unknown algorithm(s) {', '.join(bad)}; choose from {', '.join(ALGOS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_results(out / f"{args.name}.json", settings_of(args))
    data["commands"].append(command or "tokengym bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]))
    tok, base_model, overrides = load_model(args.model)
    kwargs = env_kwargs(args.env, overrides)
    if args.max_new_tokens:
        kwargs["max_new_tokens"] = args.max_new_tokens
    reference = copy.deepcopy(base_model).eval().requires_grad_(False)
    if data["initial"] is None:
        data["initial"] = {k: v for k, v in evaluate(base_model, reference, tok, kwargs, args.eval_prompts, 12345).items()}
    for seed in range(args.seed_start, args.seed_start + args.seeds):
        for algo in algos:
            seed_everything(seed)
            model = copy.deepcopy(base_model)
            trainer = train_sb3 if algo.startswith("sb3-") else train_tokengym
            res = trainer(algo, model, tok, kwargs, args, seed)
            final = evaluate(res.pop("policy"), reference, tok, kwargs, args.eval_prompts, 12345)
            run_ = {"algo": algo, "seed": seed, **res, "final": final}
            data["runs"] = [r for r in data["runs"] if (r["algo"], r["seed"]) != (algo, seed)] + [run_]
            print(f"{algo} seed {seed}: gold {final['gold_score']:.3f} proxy {final['proxy_score']:.3f} kl {final['kl_to_reference']:.2f} "
                  f"({res['tokens']} tokens, {res['wall_s']:.1f} s)", file=sys.stderr)
            render(data, out, args.name)
            del model
    render(data, out, args.name)
    print(markdown_table(data))
    return data


def add_commands(subparsers: Any) -> None:
    """Add ``bench`` to the ``tokengym`` CLI's subparsers (``args.func(args)`` runs it)."""
    p = subparsers.add_parser("bench", help="benchmark RL algorithms on a task with equal token budgets",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    run(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tokengym.compare ...`` (the same options as ``tokengym bench``)."""
    parser = argparse.ArgumentParser(prog="tokengym bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    run(parser.parse_args(argv), command="tokengym bench " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
