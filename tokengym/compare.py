"""``tokengym bench``: train several algorithms on one task with equal budgets of generated tokens.

    tokengym bench --algos ppo,reinforce,a2c,rloo,grpo,sb3-ppo --seeds 3 --out bench/results

Every run (algorithm x seed) starts from the same weights, optimises the same reward with the same
fixed KL coefficient (per-token penalty against a frozen copy of the initial model; SB3 through
:class:`~tokengym.agents.sb3.KLPenaltyWrapper`), and stops once it has generated ``--budget``
response tokens (a run finishes its last rollout, so it may overshoot by up to one batch; the
tokens column says how many it generated). The default budget is the most the main job trains on
before its KL stop on any of its 3 seeds (9 rollouts of 32 x 24 tokens), so every algorithm gets at
least the tokens with which the main job's PPO raises the gold score by 0.3.

Each run is evaluated on the held-out prompts by the one evaluator
(:func:`tokengym.agents.evaluation.evaluate_policy`: proxy, gold, KL k1 and k3, perplexity,
diversity) ``--eval-points - 1`` times during training and at the end, so the tables can compare
algorithms at **matched KL** (RLHF trades reward for divergence: a higher final score bought with
more KL is not a better algorithm). **Best-of-n** (the proxy keeps the best of n reference
samples, at KL ``log n - (n-1)/n``) sits in the same tables as the training-free baseline.

Outputs in ``--out``: ``<name>.json`` (settings, machine, every run with its learning curve and
held-out points), ``<name>.md`` (mean with a 95 % bootstrap interval and the IQM over seeds; gold at
matched KL) and ``<name>.png`` (curves against tokens and training wall time, and the held-out
reward-KL frontier); see :mod:`tokengym.compare_report`. The JSON is rewritten atomically after
every run, and runs already in it (same settings) are skipped, so a killed benchmark rerun with the
same command continues where it stopped; a file of other settings is never mixed with these.
``--model toy`` = a tiny random Llama with the 40-word toy tokenizer and toy prompts (seconds);
``tiny`` = a tiny random Llama with the SmolLM2 tokenizer; default ``smollm2`` (the real policy).
"""

from __future__ import annotations

import argparse
import copy
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tokengym.compare_report import ALGOS, CURVE_KEYS, frontier_table, load_results, machine_index, markdown_table, render


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


def parse_variant(entry: str) -> tuple[str, float | None]:
    """``"rloo@2.4e-3"`` -> ``("rloo", 0.0024)``; ``"ppo"`` -> ``("ppo", None)`` (the run's --lr/--sb3-lr).

    A variant is its own row of the tables: sweeping an algorithm's learning rate in one benchmark
    traces its reward-KL frontier further than one setting can.
    """
    algo, _, lr = entry.partition("@")
    if algo not in ALGOS:
        raise ValueError(f"--algos: unknown algorithm {algo!r}; choose from {', '.join(ALGOS)}")
    if not lr:
        return algo, None
    if algo == "sb3-trpo":
        raise ValueError(f"--algos: {entry!r}: sb3-trpo has no policy learning rate (its trust region sets the step)")
    try:
        value = float(lr)
    except ValueError:
        raise ValueError(f"--algos: {entry!r}: the learning rate after '@' must be a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"--algos: {entry!r}: the learning rate after '@' must be > 0")
    return algo, value


def variant_label(entry: str) -> str:
    """The canonical row name of an ``--algos`` entry (``rloo@0.0024`` however the number was typed)."""
    algo, lr = parse_variant(entry)
    return algo if lr is None else f"{algo}@{lr:g}"


def make_agent(algo: str, env: Any, model: Any, args: argparse.Namespace, seed: int) -> Any:
    from tokengym.agents import (
        A2CAgent, A2CConfig, GRPOAgent, GRPOConfig, PPOAgent, PPOConfig, ReinforceAgent, ReinforceConfig,
        RLOOAgent, RLOOConfig,
    )

    algo, lr = parse_variant(algo)
    B = args.batch_size
    common = dict(
        seed=seed, batch_size=B, learning_rate=args.lr if lr is None else lr, anneal_lr=False, kl_coef=args.kl_coef, adaptive_kl=False,
        sample_every=0, ent_coef=args.ent_coef, lora_r=args.lora_r, checkpoint_every=0, dtype=args.dtype,
    )
    if algo == "ppo":
        # No KL stop: the benchmark spends the same token budget on every algorithm and reads the
        # whole KL-reward frontier off the held-out points, so no run may end (or idle) early.
        cfg = PPOConfig(**common, kl_stop=None, minibatch_size=max(1, B // 2), micro_batch_size=min(args.micro_batch_size, max(1, B // 2)))
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
class Checkpoints:
    """Held-out evaluations at evenly spaced token budgets during a run (the KL-reward frontier).

    Wall time excludes the evaluations, so ``wall_s`` and tokens/s stay training-only.
    """

    def __init__(self, args: argparse.Namespace, evaluate_fn: Any) -> None:
        k = max(int(args.eval_points), 1)
        self.thresholds = [args.budget * j / k for j in range(1, k)]
        self.evaluate_fn, self.points, self.eval_s = evaluate_fn, [], 0.0

    def maybe(self, tokens: int, wall_s: float, policy: Any) -> None:
        while self.thresholds and tokens >= self.thresholds[0]:
            self.thresholds.pop(0)
            t0 = time.perf_counter()
            metrics = self.evaluate_fn(policy)
            self.eval_s += time.perf_counter() - t0
            self.points.append({"tokens": tokens, "wall_s": wall_s, **{k: v for k, v in metrics.items() if k != "samples"}})


def train_tokengym(algo: str, model: Any, tok: Any, kwargs: dict[str, Any], args: argparse.Namespace, seed: int,
                   checkpoints: Checkpoints) -> dict[str, Any]:
    from tokengym.envs import BatchedTextEnv

    env = BatchedTextEnv(num_envs=args.batch_size, tokenizer=tok, split="train", **kwargs)
    agent = make_agent(algo, env, model, args, seed)
    agent.total_iterations = max(1, math.ceil(args.budget / (args.batch_size * env.max_new_tokens)))
    tokens, curve = 0, []
    t0 = time.perf_counter()
    while tokens < args.budget:
        m = agent.step()
        tokens += int(round(m["response_length"] * args.batch_size))
        wall = time.perf_counter() - t0 - checkpoints.eval_s
        curve.append({"tokens": tokens, "wall_s": wall, **{k: m[k] for k in CURVE_KEYS}})
        if args.verbose:
            print(f"  {algo} seed {seed}: {tokens} tokens, score {m['score']:.3f}, kl {m['kl']:.3f}", file=sys.stderr)
        if tokens < args.budget:
            checkpoints.maybe(tokens, wall, agent.ac.policy)
    return {"policy": agent.ac.policy, "tokens": tokens, "wall_s": time.perf_counter() - t0 - checkpoints.eval_s,
            "curve": curve}


def train_sb3(algo: str, model: Any, tok: Any, kwargs: dict[str, Any], args: argparse.Namespace, seed: int,
              checkpoints: Checkpoints) -> dict[str, Any]:
    import gymnasium as gym
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback

    from tokengym.agents.sb3 import KLPenaltyWrapper, LMActorCriticPolicy

    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    algo, lr = parse_variant(algo)
    sb3_lr = args.sb3_lr if lr is None else lr
    T = kwargs.get("max_new_tokens", 32)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    # batch_size envs stepped together: each SB3 update sees batch_size x T tokens, like a tokengym rollout.
    wrappers = [KLPenaltyWrapper(gym.make(args.env, tokenizer=tok, split="train", **kwargs), reference=reference, policy=model,
                                 beta=args.kl_coef) for _ in range(args.batch_size)]
    env = DummyVecEnv([lambda w=w: Monitor(w) for w in wrappers])
    n_steps = T  # per env
    if algo == "sb3-ppo":
        sb3 = PPO(LMActorCriticPolicy, env, policy_kwargs={"lm": model}, learning_rate=sb3_lr, n_steps=n_steps,
                  batch_size=max(1, n_steps * args.batch_size // 2), n_epochs=4, gamma=1.0, gae_lambda=0.95,
                  clip_range=0.2, ent_coef=args.ent_coef, vf_coef=0.1, max_grad_norm=1.0, seed=seed, verbose=0, device="cpu")
    elif algo == "sb3-trpo":
        from sb3_contrib import TRPO

        # TRPO's step is a natural-gradient one: conjugate gradient on Hessian-vector products of the KL,
        # i.e. a double backward through the LM, which PyTorch's SDPA attention does not have (CPU flash
        # attention: "derivative ... not implemented"), so the LM gets eager attention (same values, slower).
        # Left at TRPO's defaults: target_kl 0.01 (the trust region, mean per-token KL per update) sets the
        # actor's step, so there is no policy learning rate: learning_rate (1e-3) trains only the value
        # head (10 critic epochs; TRPO drops the LM's share of that gradient), hence not --sb3-lr; 15 CG
        # steps, damping 0.1, line search, gae_lambda 0.95. No entropy bonus (TRPO has none: --ent-coef
        # does not apply). Non-defaults: gamma 1 (the KL penalty is in the reward, as for every algorithm
        # here); n_steps as the other SB3 algorithms (one update per batch_size episodes); the critic's
        # minibatch (default 128) capped at the rollout size, where a smaller rollout would only warn.
        sb3 = TRPO(LMActorCriticPolicy, env, policy_kwargs={"lm": model, "attn_implementation": "eager"},
                   n_steps=n_steps, batch_size=min(128, n_steps * args.batch_size), gamma=1.0, seed=seed,
                   verbose=0, device="cpu")
    else:
        sb3 = A2C(LMActorCriticPolicy, env, policy_kwargs={"lm": model}, learning_rate=sb3_lr, n_steps=n_steps,
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
            wall = time.perf_counter() - t0 - checkpoints.eval_s
            if self.ends:
                self.curve.append({"tokens": int(self.num_timesteps), "wall_s": wall,
                                   **{k: float(np.mean([e[k] for e in self.ends])) for k in CURVE_KEYS}})
                self.ends = []
            if self.num_timesteps < args.budget:
                checkpoints.maybe(int(self.num_timesteps), wall, sb3.policy.lm)
            if args.verbose and self.curve:
                print(f"  {algo} seed {seed}: {self.num_timesteps} tokens, score {self.curve[-1]['score']:.3f}", file=sys.stderr)

    cb = Curve()
    t0 = time.perf_counter()
    sb3.learn(total_timesteps=args.budget, callback=cb)
    return {"policy": sb3.policy.lm, "tokens": int(sb3.num_timesteps), "wall_s": time.perf_counter() - t0 - checkpoints.eval_s,
            "curve": cb.curve}


def heldout_env(tok: Any, kwargs: dict[str, Any], n: int) -> Any:
    """The test-split env every evaluation of a benchmark uses (built once: it loads the reward model)."""
    from tokengym.envs import BatchedTextEnv

    split = "test" if has_test_split(kwargs.get("prompts", "movie_reviews")) else None
    return BatchedTextEnv(num_envs=min(n, 16), tokenizer=tok, split=split, **kwargs)


def evaluate(policy: Any, reference: Any, env: Any, n: int, seed: int) -> dict[str, Any]:
    """One sampled response to each of the first ``n`` held-out prompts of ``env``, measured by the one
    evaluator (:func:`tokengym.agents.evaluation.evaluate_policy`, so the names are ``tokengym train``'s),
    plus three samples."""
    from tokengym.agents.evaluation import evaluate_policy, reference_logprob_fn

    policy.eval()
    ref_fn = reference_logprob_fn(reference, env.vocab_size, pad_id=env.pad_token_id, full=True)
    metrics, samples = evaluate_policy(policy, ref_fn, env, n, seed=seed)
    return {**metrics, "samples": samples[:3]}


def best_of_n(model: Any, tok: Any, kwargs: dict[str, Any], args: argparse.Namespace) -> list[dict[str, float]]:
    """The best-of-n baseline on the held-out prompts: ``--best-of-n`` reference samples per prompt,
    the proxy keeps the best of n, at the analytic KL ``log n - (n - 1) / n`` (exact expectation over
    all n-subsets, :func:`tokengym.overopt.best_of_n_expectation`)."""
    import torch

    from tokengym.agents import CachedSampler
    from tokengym.envs import BatchedTextEnv
    from tokengym.overopt import best_of_n_curve

    N = args.best_of_n
    split = "test" if has_test_split(kwargs.get("prompts", "movie_reviews")) else None
    env = BatchedTextEnv(num_envs=N, tokenizer=tok, split=split, **kwargs)
    sampler = CachedSampler(model.eval())
    gen = torch.Generator().manual_seed(777)
    proxy, gold = [], []
    for i in range(min(args.eval_prompts, len(env.prompts))):
        b = sampler.rollout(env, seed=777 + i, generator=gen, options={"prompt_indices": np.full(N, i)})
        proxy.append(b.scores.numpy())
        gold.append(b.gold_scores.numpy() if b.gold_scores is not None else np.full(N, math.nan))
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= N]
    return best_of_n_curve(np.stack(proxy), np.stack(gold), ns)


# ----------------------------------------------------------------------------------------------
# Results: JSON, Markdown, PNG
# ----------------------------------------------------------------------------------------------
def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("env", "model", "budget", "batch_size", "lr", "lora_r", "sb3_lr", "kl_coef", "ent_coef", "group_size", "max_new_tokens",
            "eval_prompts", "eval_points", "best_of_n", "dtype")
    # The evaluator's version: results measured with other metric names are never mixed with these.
    settings = {"evaluator": 2, **{k: getattr(args, k) for k in keys}}
    # A learned reward is part of the settings by its weights: the same recipe built on another machine
    # is another reward model, and runs paid by two reward models are not one experiment.
    if getattr(args, "reward_model", None):
        settings["reward_model"] = args.reward_model
    return settings


def reward_model_of(env_id: str, progress: bool = False) -> str | None:
    """The fingerprint of the learned reward model that ``env_id`` pays (built first if missing), or
    None for a task paid by a programmatic reward."""
    from tokengym.feedback.default_rm import ensure_reward_model, fingerprint, uses_default_reward_model

    if not uses_default_reward_model(env_id):
        return None
    return fingerprint(ensure_reward_model(progress=progress))


# ----------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algos", default="ppo,reinforce,a2c,rloo,grpo,sb3-ppo",
                   help=f"comma-separated, from {', '.join(ALGOS)} (sb3-a2c and sb3-trpo, sb3-contrib's TRPO, are "
                        "not in the default; sb3-trpo takes ~4x sb3-ppo's wall time on --model toy: each update "
                        "solves for a natural-gradient step with double backwards through the LM); ALGO@LR runs "
                        "ALGO at learning rate LR instead of --lr/--sb3-lr, as its own row (e.g. "
                        "ppo,rloo,rloo@2.4e-3: the one-step agents take one Adam step per rollout, PPO 8)")
    p.add_argument("--env", default=None,
                   help="a registered tokengym task (default: the main task, tokengym/PositiveReview-v1; "
                        "tokengym/PositiveReview-v0, paid by VADER, for --model toy/tiny)")
    p.add_argument("--model", default="smollm2", help="'toy', 'tiny', 'smollm2' (default) or a local model path")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds: seed-start .. seed-start+N-1")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (to add seeds to an earlier run's JSON)")
    p.add_argument("--budget", type=int, default=6912,
                   help="generated response tokens per run (default 18 x 16 x 24 = 6,912: the most the main job "
                        "trains on before its KL stop on any of its 3 seeds, 9 x 32 x 24)")
    p.add_argument("--out", default="bench/results", help="output folder")
    p.add_argument("--name", default="algos", help="file stem of the outputs")
    p.add_argument("--batch-size", type=int, default=16, help="episodes per rollout (tokengym agents; SB3 n_steps = this x max_new_tokens)")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of the tokengym agents (default: 3e-4 real (LoRA r16, the main job's), 1e-3 tiny, 1e-2 toy)")
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank of the tokengym agents (default 16 real, 0 = full toy/tiny)")
    p.add_argument("--sb3-lr", type=float, default=None,
                   help="learning rate of the SB3 agents, which fine-tune every weight (default: 1e-5 real, else --lr)")
    p.add_argument("--kl-coef", type=float, default=0.1, help="fixed KL coefficient beta for every algorithm")
    p.add_argument("--ent-coef", type=float, default=0.0)
    p.add_argument("--group-size", type=int, default=4, help="samples per prompt for rloo/grpo")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override the task's response length")
    p.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts in each evaluation")
    p.add_argument("--eval-points", type=int, default=4,
                   help="held-out evaluations per run: K-1 during training (evenly spaced in tokens) plus the final one")
    p.add_argument("--kl-levels", default="1,2,4", help="KL levels (nats per response) of the matched-KL table")
    p.add_argument("--best-of-n", type=int, default=16, help="N of the best-of-n baseline (0 = none)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--dtype", default="auto",
                   help="the tokengym agents' precision: auto (bf16 autocast where the hardware runs it fast), fp32 or "
                        "bf16; resolved before the run and part of the settings, so fp32 and bf16 seeds never mix")
    p.add_argument("--verbose", action="store_true")


def run(args: argparse.Namespace, command: str | None = None) -> dict[str, Any]:
    """Every (algorithm, seed) of ``args`` not yet in the results file of the same settings: a killed
    benchmark rerun with the same command continues where it stopped."""
    import torch

    from tokengym.utils import seed_everything

    small = args.model in ("toy", "tiny")
    if args.env is None:  # the learned reward model is built for SmolLM2's text; toy models get the VADER-paid task
        args.env = "tokengym/PositiveReview-v0" if small else "tokengym/PositiveReview-v1"
    if args.lr is None:
        args.lr = {"toy": 1e-2, "tiny": 1e-3}.get(args.model, 3e-4)
    if args.lora_r is None:
        args.lora_r = 0 if small else 16
    if args.sb3_lr is None:
        args.sb3_lr = args.lr if small else 1e-5
    from tokengym.hardware import DeviceError, dtype_name, resolve_device, resolve_dtype

    try:  # the name the agents will run in, so that a results file says what ran
        args.dtype = dtype_name(resolve_dtype(args.dtype, resolve_device("auto"), setting="--dtype"))
    except DeviceError as e:
        raise ValueError(str(e)) from None
    algos = [variant_label(a.strip()) for a in args.algos.split(",") if a.strip()]
    try:
        levels = [float(x) for x in args.kl_levels.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--kl-levels must be comma-separated numbers, got {args.kl_levels!r}") from None
    for flag, value, low in (("--budget", args.budget, 1), ("--seeds", args.seeds, 1), ("--eval-prompts", args.eval_prompts, 1),
                             ("--eval-points", args.eval_points, 1), ("--best-of-n", args.best_of_n, 0)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The .md and .png are rewritten after every run: without our .json beside them they may be a user's.
    strays = [p.name for p in (out / f"{args.name}.md", out / f"{args.name}.png")
              if p.exists() and not (out / f"{args.name}.json").is_file()]
    if strays:
        raise FileExistsError(f"--name: {', '.join(strays)} in {out} are not from a tokengym bench (no "
                              f"{args.name}.json beside them); choose another --name or --out")
    args.reward_model = reward_model_of(args.env, progress=args.verbose)
    data = load_results(out / f"{args.name}.json", settings_of(args))
    data["commands"].append(command or "tokengym bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]))
    from tokengym.hardware import hardware_record

    machine = machine_index(data, hardware_record())  # before "machine" changes: older runs keep theirs
    data["machine"] = data["machines"][machine]
    tok, base_model, overrides = load_model(args.model)
    kwargs = env_kwargs(args.env, overrides)
    if args.max_new_tokens:
        kwargs["max_new_tokens"] = args.max_new_tokens
    reference = copy.deepcopy(base_model).eval().requires_grad_(False)

    test_env = heldout_env(tok, kwargs, args.eval_prompts)

    def held_out(policy: Any) -> dict[str, Any]:
        return evaluate(policy, reference, test_env, args.eval_prompts, 12345)

    if data["initial"] is None:
        data["initial"] = held_out(base_model)
    if args.best_of_n and data.get("best_of_n") is None:
        data["best_of_n"] = best_of_n(base_model, tok, kwargs, args)
    render(data, out, args.name, levels)
    for seed in range(args.seed_start, args.seed_start + args.seeds):
        for algo in algos:
            if any((r["algo"], r["seed"]) == (algo, seed) for r in data["runs"]):
                continue  # measured by an earlier invocation with the same settings
            seed_everything(seed)
            model = copy.deepcopy(base_model)
            trainer = train_sb3 if algo.startswith("sb3-") else train_tokengym
            checkpoints = Checkpoints(args, held_out)
            res = trainer(algo, model, tok, kwargs, args, seed, checkpoints)
            final = held_out(res.pop("policy"))
            data["runs"].append({"algo": algo, "seed": seed, **res, "checkpoints": checkpoints.points, "final": final,
                                 "machine": machine})
            print(f"{algo} seed {seed}: gold {final['gold_score']:.3f} proxy {final['proxy_score']:.3f} "
                  f"kl {final['kl_to_reference']:.2f} ({res['tokens']} tokens, {res['wall_s']:.1f} s)", file=sys.stderr)
            render(data, out, args.name, levels)
            del model
    print(markdown_table(data) + "\n\n" + frontier_table(data, levels))
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
