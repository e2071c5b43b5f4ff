"""The ``tokengym`` command line: ``train`` (RLHF with PPO), ``evaluate``, and the feedback and
benchmark commands of their subpackages."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import _offline  # noqa: F401
from .config import ConfigError, from_dict, read_config_file


@dataclass
class TrainConfig:
    """What ``tokengym train`` runs. The defaults are the README's main job: sized for ~10 minutes
    on 2 CPU cores (LoRA, short responses, a batch of 16)."""

    env: str = "tokengym/PositiveReview-v0"
    model: str = "smollm2"
    reward: Any = None  # None = the task's default; a name, or {"name": ..., **kwargs}
    gold_reward: Any = None
    prompts: str | None = None
    max_new_tokens: int | None = None
    max_prompt_tokens: int | None = None
    chat_template: Any = None
    iterations: int = 12
    eval_episodes: int = 64
    output_dir: str = "runs/default"
    threads: int = 0  # 0 = all cores
    ppo: dict = field(default_factory=dict)


DEFAULT_PPO = {
    "batch_size": 16, "minibatch_size": 8, "micro_batch_size": 8, "ppo_epochs": 4,
    "lora_r": 16, "lora_alpha": 32, "learning_rate": 1e-3, "anneal_lr": False, "kl_coef": 0.02, "kl_target": 4.0,
    "kl_horizon": 2000, "vf_coef": 0.1, "sample_every": 2, "checkpoint_every": 5,
}


def _parse_value(text: str) -> Any:
    """A flag value: int, then float (YAML 1.1 reads '1e-3' as a string), then YAML (bool, list, ...)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    import yaml

    return yaml.safe_load(text)


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. ppo.learning_rate=1e-4)")
    key, value = item.split("=", 1)
    parts = key.split(".")
    target = data
    for p in parts[:-1]:
        target = target.setdefault(p, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {item!r}: {p!r} is not a section")
    target[parts[-1]] = _parse_value(value)


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    data: dict[str, Any] = read_config_file(args.config) if args.config else {}
    for flag in ("model", "iterations", "output_dir", "env", "reward"):
        value = getattr(args, flag, None)
        if value is not None:
            data[flag] = value
    for item in args.set or []:
        _apply_override(data, item)
    cfg = from_dict(TrainConfig, data)
    from tokengym.agents import PPOConfig

    ppo = {**DEFAULT_PPO, **cfg.ppo}
    if args.seed is not None:
        ppo["seed"] = args.seed
    PPOConfig.from_dict(ppo).validate()  # fail now, naming the key, not after loading models
    cfg.ppo = ppo
    return cfg


def _reward_spec(spec: Any) -> Any:
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", None)
        if name is None:
            raise ConfigError("a reward given as a mapping needs a 'name' key")
        return (name, spec)
    return spec


def _env_kwargs(cfg: TrainConfig, tokenizer: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"tokenizer": tokenizer, "model": cfg.model}
    for key in ("prompts", "max_new_tokens", "max_prompt_tokens", "chat_template"):
        value = getattr(cfg, key)
        if value is not None:
            kwargs[key] = value
    if cfg.reward is not None:
        kwargs["reward"] = _reward_spec(cfg.reward)
    if cfg.gold_reward is not None:
        kwargs["gold_reward"] = _reward_spec(cfg.gold_reward)
    return kwargs


def make_envs(cfg: TrainConfig, tokenizer: Any, batch_size: int):
    import gymnasium as gym

    import tokengym  # noqa: F401  (registers the ids)

    kwargs = _env_kwargs(cfg, tokenizer)
    train = gym.make_vec(cfg.env, num_envs=batch_size, vectorization_mode="vector_entry_point", split="train", **kwargs)
    test = gym.make_vec(cfg.env, num_envs=min(batch_size, cfg.eval_episodes), vectorization_mode="vector_entry_point", split="test", **kwargs)
    return train, test


def _print_table(title: str, before: dict[str, float], after: dict[str, float] | None) -> None:
    print(f"\n{title}")
    print(f"{'metric':<24}{'before':>12}" + (f"{'after':>12}" if after else ""))
    for k, v in before.items():
        line = f"{k:<24}{v:>12.4f}"
        if after:
            line += f"{after[k]:>12.4f}"
        print(line)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from tokengym.agents import PPOAgent, PPOConfig
    from tokengym.agents.evaluation import evaluate_policy
    from tokengym.models import load_causal_lm
    from tokengym.utils import atomic_write_text, set_cpu_threads
    from tokengym import distributed as dist

    dist.init_from_env()  # [issue 8] a process group under torchrun (WORLD_SIZE > 1); else nothing
    cfg = build_train_config(args)
    set_cpu_threads(cfg.threads or None)
    out = Path(cfg.output_dir)
    if not args.resume and (out / "metrics.jsonl").exists():
        if not args.overwrite:
            raise FileExistsError(
                f"{out} already holds a run; pass --resume to continue it, --overwrite to start it again, "
                "or choose another --output-dir"
            )
        if dist.rank() == 0:
            for name in ("metrics.jsonl", "metrics.csv", "samples.jsonl", "report.json"):
                (out / name).unlink(missing_ok=True)
        dist.barrier()
    t0 = time.time()
    ppo_cfg = PPOConfig.from_dict(cfg.ppo)
    tokenizer, model = load_causal_lm(cfg.model)
    train_env, test_env = make_envs(cfg, tokenizer, ppo_cfg.batch_size)
    agent = PPOAgent(train_env, model, ppo_cfg, run_dir=str(out))
    if args.resume:
        from tokengym.utils import recover_directory

        ckpt = out / "checkpoint"
        recover_directory(ckpt)  # a run killed while replacing its checkpoint left the previous one aside
        if not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        agent.load_checkpoint(ckpt)
        print(f"resumed from {ckpt} at iteration {agent.iteration}")
    ref_fn = lambda ids, attn, P: agent.ac.reference_logprobs(ids, attn, P, ppo_cfg.temperature)  # noqa: E731
    report_path = out / "report.json"
    before = None
    if report_path.exists() and args.resume:
        before = json.loads(report_path.read_text()).get("before")
    if before is None and dist.rank() == 0:
        print(f"evaluating the reference policy on {cfg.eval_episodes} test prompts ...")
        before, before_samples = evaluate_policy(agent.ac.policy, ref_fn, test_env, cfg.eval_episodes, seed=ppo_cfg.seed, temperature=ppo_cfg.temperature)
        atomic_write_text(report_path, json.dumps({"config": asdict(cfg), "before": before, "before_samples": before_samples[:8]}, indent=1))
    agent.learn(cfg.iterations, progress=not args.no_progress)
    if dist.rank() != 0:  # [issue 8] rank 0 alone evaluates and writes the model and report
        return 0
    after, after_samples = evaluate_policy(agent.ac.policy, ref_fn, test_env, cfg.eval_episodes, seed=ppo_cfg.seed, temperature=ppo_cfg.temperature)
    agent.save_pretrained(out / "final_model")
    plot = agent.logger.plot()
    wall = time.time() - t0
    report = json.loads(report_path.read_text())
    report.update({"after": after, "after_samples": after_samples[:8], "wall_time_s": wall, "iterations": agent.iteration, "torch_threads": torch.get_num_threads()})
    atomic_write_text(report_path, json.dumps(report, indent=1))
    print("\nSamples on held-out prompts (before -> after):")
    for b, a in list(zip(report["before_samples"], after_samples))[:4]:
        print(f"  prompt: {b['prompt']}\n    before [{b.get('gold', b['score']):+.2f}]: {b['response']!r}\n    after  [{a.get('gold', a['score']):+.2f}]: {a['response']!r}")
    _print_table(f"Held-out evaluation ({cfg.eval_episodes} test prompts)", report["before"], after)
    print(f"\nwall time {wall:.0f} s; model: {out / 'final_model'}; curves: {plot}; report: {report_path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tokengym.agents.evaluation import evaluate_policy, reference_logprob_fn
    from tokengym.models import check_same_vocabulary, load_causal_lm
    from tokengym.utils import set_cpu_threads

    set_cpu_threads()
    cfg = TrainConfig(env=args.env, model=args.model, eval_episodes=args.episodes)
    if args.reward:
        cfg.reward = args.reward
    tok, policy = load_causal_lm(args.model)
    ref_tok, reference = load_causal_lm(args.reference)
    check_same_vocabulary(tok, ref_tok, "policy and reference")
    _, test_env = make_envs(cfg, tok, min(16, args.episodes))
    ref_fn = reference_logprob_fn(reference, len(tok))
    results = {}
    for name, model in (("reference", reference), ("policy", policy)):
        results[name], _ = evaluate_policy(model, ref_fn, test_env, args.episodes, seed=args.seed)
    _print_table(f"{args.env} test prompts ({args.episodes} episodes)", results["reference"], results["policy"])
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokengym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="RLHF: train a policy with token-level PPO and a KL penalty")
    p.add_argument("--config", help="YAML or TOML file with TrainConfig keys (ppo: section for PPOConfig)")
    p.add_argument("--model", help="'smollm2' (default), a local HF folder or a .gguf file")
    p.add_argument("--env", help="registered env id (default tokengym/PositiveReview-v0)")
    p.add_argument("--reward", help="reward name from the registry (default: the task's)")
    p.add_argument("--iterations", type=int)
    p.add_argument("--output-dir", dest="output_dir")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. ppo.learning_rate=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in an OUTPUT_DIR that holds a run")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="compare a policy with its reference on a task's test prompts")
    p.add_argument("--model", required=True, help="trained policy (HF folder)")
    p.add_argument("--reference", default="smollm2")
    p.add_argument("--env", default="tokengym/PositiveReview-v0")
    p.add_argument("--reward")
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write the metrics as JSON here")
    p.set_defaults(func=cmd_evaluate)

    for module in ("tokengym.feedback.cli", "tokengym.bench"):
        try:
            mod = __import__(module, fromlist=["add_commands"])
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"tokengym {args.command}: error: {e}", file=sys.stderr)
        return 2
