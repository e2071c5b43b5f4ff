"""The ``tokengym`` command line: ``train`` (RLHF with PPO), ``evaluate``, and the feedback and
benchmark commands of their subpackages."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import _offline  # noqa: F401
from .config import ConfigError, read_config_file
from .train import DEFAULT_ENV, TrainConfig, make_envs, make_train_config, print_report, print_table, run  # noqa: F401 (TrainConfig: public here too)


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
    return make_train_config(data, seed=args.seed)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = build_train_config(args)
    report = run(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if report is not None:
        print_report(report, cfg)
    return 0


def _is_evaluate_output(path: Path) -> bool:
    """True for a JSON file ``tokengym evaluate --output`` wrote (the only file it may overwrite)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == {"reference", "policy"}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tokengym import checks
    from tokengym.utils import atomic_write_text, check_file_replaceable

    # Every flag is checked before the models load (a minute for SmolLM2) and before anything is written.
    checks.model_spec(args.model, "--model")
    checks.model_spec(args.reference, "--reference")
    checks.env_id(args.env, "--env")
    checks.reward_spec(args.reward, "--reward")
    checks.positive_int(args.episodes, "--episodes")
    if args.output:
        check_file_replaceable(args.output, _is_evaluate_output, "evaluation results", "--output")

    from tokengym.agents.evaluation import evaluate_policy
    from tokengym.train import load_policy_and_reference
    from tokengym.utils import set_cpu_threads

    set_cpu_threads()
    cfg = TrainConfig(env=args.env, model=args.model, eval_episodes=args.episodes)
    if args.reward:
        cfg.reward = args.reward
    tok, policy, reference, ref_fn = load_policy_and_reference(args.model, args.reference)
    _, test_env = make_envs(cfg, tok, min(16, args.episodes))
    results = {}
    for name, model in (("reference", reference), ("policy", policy)):
        results[name], _ = evaluate_policy(model, ref_fn, test_env, args.episodes, seed=args.seed)
    print_table(f"{args.env} test prompts ({args.episodes} episodes)", results["reference"], results["policy"])
    if args.output:
        atomic_write_text(args.output, json.dumps(results, indent=1))
    return 0


def cmd_build_rm(args: argparse.Namespace) -> int:
    """Build the reward model of tokengym/PositiveReview-v1 now (tokengym train builds it on first use)."""
    from tokengym.feedback.default_rm import ensure_reward_model
    from tokengym.utils import set_cpu_threads

    set_cpu_threads()
    path = ensure_reward_model(progress=not args.no_progress)
    info = json.loads((path / "build.json").read_text())
    print(f"reward model: {path}\n  held-out pairwise accuracy vs the gold judge {info['heldout_gold_accuracy']:.3f} "
          f"(pairs of held-out prompts, gold ties left out), vs the simulated labels {info['heldout_accuracy']:.3f}")
    return 0


def cmd_rlhf(args: argparse.Namespace) -> int:
    from tokengym.feedback.rounds import run_rounds
    from tokengym.utils import set_cpu_threads

    if args.iterations is not None and args.iterations < 1:  # run_rounds checks --rounds itself
        raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
    set_cpu_threads()
    run_rounds(args.rounds, args.output_dir, seed=args.seed, iterations=args.iterations, overwrite=args.overwrite,
               progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokengym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="RLHF: train a policy with token-level PPO and a KL penalty")
    p.add_argument("--config", help="YAML or TOML file with TrainConfig keys (ppo: section for PPOConfig)")
    p.add_argument("--model", help="'smollm2' (default), a local HF folder or a .gguf file")
    p.add_argument("--env", help=f"registered env id (default {DEFAULT_ENV})")
    p.add_argument("--reward", help="reward name from the registry (default: the task's)")
    p.add_argument("--iterations", type=int)
    p.add_argument("--output-dir", dest="output_dir")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. ppo.learning_rate=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in an OUTPUT_DIR that holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs and CI)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("build-rm", help="build (once) the main task's reward model from simulated comparisons")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs and CI)")
    p.set_defaults(func=cmd_build_rm)

    p = sub.add_parser("rlhf", help="iterated RLHF: rounds of candidates -> simulated labels -> reward model -> PPO")
    p.add_argument("--rounds", type=int, default=2, help="rounds to run, the first on the task's cached reward model (default 2)")
    p.add_argument("--output-dir", dest="output_dir", default="runs/rlhf",
                   help="one folder per round and per new reward model, and rounds.json (default runs/rlhf)")
    p.add_argument("--seed", type=int, default=0, help="round r trains with seed SEED + r (default 0)")
    p.add_argument("--iterations", type=int, help="PPO iterations per round (default: the main job's)")
    p.add_argument("--overwrite", action="store_true", help="start rounds again in an OUTPUT_DIR that holds them")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs and CI)")
    p.set_defaults(func=cmd_rlhf)

    p = sub.add_parser("evaluate", help="compare a policy with its reference on a task's test prompts")
    p.add_argument("--model", required=True, help="trained policy (HF folder)")
    p.add_argument("--reference", default="smollm2")
    p.add_argument("--env", default=DEFAULT_ENV)
    p.add_argument("--reward")
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write the metrics as JSON here")
    p.set_defaults(func=cmd_evaluate)

    for module in ("tokengym.feedback.cli", "tokengym.compare", "tokengym.overopt"):
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
    except Exception as e:
        if not _is_refusal(e):
            raise
        # One line: the message names the flag, key or file (a multi-line message is folded).
        print(f"tokengym {args.command}: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2


def _is_refusal(e: BaseException) -> bool:
    """Errors that are the user's input, not a bug: reported in one line with exit code 2."""
    if isinstance(e, (ConfigError, FileNotFoundError, FileExistsError, ValueError)):
        return True
    models = sys.modules.get("tokengym.models")  # only loaded models can fail to load
    return models is not None and isinstance(e, models.ModelLoadError)
