"""The training run as a library function: ``run(TrainConfig()) -> report``.

``tokengym train`` is a thin wrapper around :func:`run`; the examples and the iterative RLHF loop
call it too, so every entry point gets the same protocol:

1. refuse to start in an output folder that holds a run (``resume`` continues it, ``overwrite``
   starts again; a folder tokengym did not write is never touched);
2. evaluate the reference policy on the task's held-out prompts;
3. train with PPO for ``iterations`` (checkpoints, metrics and curves as it goes);
4. evaluate again with the same prompts and sampling seed, save the final model and write
   ``report.json`` (config, before, after, samples, wall time, hardware).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from tokengym.agents import PPOConfig

from . import _offline  # noqa: F401
from .config import ConfigError, from_dict

DEFAULT_ENV = "tokengym/PositiveReview-v1"


@dataclass
class TrainConfig:
    """What ``tokengym train`` runs. The defaults are the README's main job, sized for a few minutes
    on 2 CPU cores (LoRA, short responses, a batch of 32)."""

    env: str = DEFAULT_ENV
    model: str = "smollm2"
    reward: Any = None  # None = the task's default; a name, or {"name": ..., **kwargs}
    gold_reward: Any = None
    prompts: str | None = None
    max_new_tokens: int | None = None
    max_prompt_tokens: int | None = None
    chat_template: Any = None
    iterations: int = 12  # a cap: the main job stops earlier, when its rollout KL reaches ppo.kl_stop (7-10 iterations)
    # Each of the 80 test prompts twice: the gold score's evaluation noise is a third of the +0.3
    # target with 64 samples (the reference policy reads 0.03-0.22 across sampling seeds), half with 160.
    eval_episodes: int = 160
    # Evaluate on the held-out prompts every K iterations as well (0 = only before and after): the
    # points of ``heldout.jsonl`` and the over-optimisation plot (gold and proxy against sqrt(KL)).
    eval_every: int = 0
    output_dir: str = "runs/default"
    threads: int = 0  # 0 = all cores
    ppo: PPOConfig = field(default_factory=PPOConfig)  # its defaults are the main job's (agents/config.py says why)


def make_train_config(data: dict[str, Any] | None = None, seed: int | None = None) -> TrainConfig:
    """A checked :class:`TrainConfig` from a mapping (file contents plus overrides).

    The ``ppo`` section overrides :class:`PPOConfig`'s defaults (the main job's) and is validated here, and so are every number,
    the env id, the reward names, the model path and the prompt file, so a bad value fails with one
    line naming it before any model is loaded or anything is written.
    """
    from tokengym import checks

    cfg = from_dict(TrainConfig, dict(data or {}))  # a ppo section overrides PPOConfig's defaults key by key

    def key(name: str) -> str:
        flag = {"iterations": "--iterations", "env": "--env", "reward": "--reward", "model": "--model",
                "output_dir": "--output-dir"}.get(name)
        return f"config key {name!r}" + (f" ({flag})" if flag else "")

    checks.positive_int(cfg.iterations, key("iterations"))
    checks.positive_int(cfg.eval_episodes, key("eval_episodes"))
    checks.integer(cfg.eval_every, key("eval_every") + " (0 = only before and after)", minimum=0)
    checks.integer(cfg.threads, key("threads") + " (0 = all cores)", minimum=0)
    checks.optional_positive_int(cfg.max_new_tokens, key("max_new_tokens"))
    checks.optional_positive_int(cfg.max_prompt_tokens, key("max_prompt_tokens"))
    if not cfg.output_dir.strip():
        raise checks.ArgumentError(f"{key('output_dir')} must name a folder, got {cfg.output_dir!r}")
    checks.env_id(cfg.env, key("env"))
    checks.reward_spec(cfg.reward, key("reward"))
    checks.reward_spec(cfg.gold_reward, key("gold_reward"))
    checks.model_spec(cfg.model, key("model"))
    checks.prompts_spec(cfg.prompts, key("prompts"))
    if seed is not None:
        cfg.ppo.seed = seed
    cfg.ppo.validate()
    return cfg


def reward_spec(spec: Any) -> Any:
    """A reward given as ``{"name": ..., **kwargs}`` becomes the registry's ``(name, kwargs)``."""
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", None)
        if name is None:
            raise ConfigError("a reward given as a mapping needs a 'name' key")
        return (name, spec)
    return spec


def env_kwargs(cfg: TrainConfig, tokenizer: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"tokenizer": tokenizer, "model": cfg.model}
    for key in ("prompts", "max_new_tokens", "max_prompt_tokens", "chat_template"):
        value = getattr(cfg, key)
        if value is not None:
            kwargs[key] = value
    if cfg.reward is not None:
        kwargs["reward"] = reward_spec(cfg.reward)
    if cfg.gold_reward is not None:
        kwargs["gold_reward"] = reward_spec(cfg.gold_reward)
    return kwargs


def make_envs(cfg: TrainConfig, tokenizer: Any, batch_size: int):
    """The train-split batch the agent rolls out and the test-split batch the evaluator uses."""
    import gymnasium as gym

    import tokengym  # noqa: F401  (registers the ids)

    kwargs = env_kwargs(cfg, tokenizer)
    train = gym.make_vec(cfg.env, num_envs=batch_size, vectorization_mode="vector_entry_point", split="train", **kwargs)
    test = gym.make_vec(cfg.env, num_envs=min(batch_size, cfg.eval_episodes), vectorization_mode="vector_entry_point",
                        split="test", **kwargs)
    return train, test


def load_policy_and_reference(policy: str, reference: str, temperature: float = 1.0):
    """``(tokenizer, policy model, reference model, reference log-prob function)`` for evaluating ``policy`` against
    ``reference`` (model specs or folders); refuses two models with different vocabularies."""
    from tokengym.agents.evaluation import reference_logprob_fn
    from tokengym.models import check_same_vocabulary, load_causal_lm

    tok, model = load_causal_lm(policy)
    ref_tok, ref_model = load_causal_lm(reference)
    check_same_vocabulary(tok, ref_tok, "policy and reference")
    return tok, model, ref_model, reference_logprob_fn(ref_model, len(tok), temperature=temperature, pad_id=tok.pad_token_id,
                                                          full=True)


def _build_task_reward(cfg: TrainConfig, tokenizer: Any, model: Any, progress: bool,
                       log: Callable[[str], None]) -> None:
    """Build the main task's reward model now if the run needs it and it is not cached yet.

    Building here, rather than inside the env, reuses the policy already loaded (it is still the
    reference policy) and shows the build's progress before the run's own.
    """
    from tokengym.feedback.default_rm import DEFAULT_RECIPE, ensure_reward_model, uses_default_reward_model

    if not uses_default_reward_model(cfg.env, cfg.reward):
        return
    from tokengym import distributed as dist

    # The candidates come from the recipe's policy; the loaded model is that policy only when named so.
    policy = (tokenizer, model) if cfg.model == DEFAULT_RECIPE.policy else None
    if dist.rank() == 0:
        ensure_reward_model(progress=progress, log=log, policy=policy)
    dist.barrier()


def _prepare_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Check the output folder before any work and mark it as a tokengym run.

    A folder that is not new, empty or a tokengym run is refused untouched (a run writes fixed
    names such as ``report.json`` that would overwrite a user's files), and so are ``checkpoint`` and
    ``final_model`` entries that tokengym did not write: they are replaced later, after training.
    """
    from tokengym import distributed as dist
    from tokengym.utils import check_replaceable, check_run_folder, write_marker

    check_run_folder(out, "--output-dir")
    for name in ("checkpoint", "final_model"):
        check_replaceable(out / name, f"--output-dir {out}:")
    if not resume and (out / "metrics.jsonl").exists():
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds a run; pass --resume to continue it, --overwrite to start it again, "
                "or choose another --output-dir"
            )
        if dist.rank() == 0:
            for name in ("metrics.jsonl", "metrics.csv", "samples.jsonl", "report.json"):
                (out / name).unlink(missing_ok=True)
    if dist.rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, "tokengym train")
    dist.barrier()


def run(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Run one training job; returns the report (``None`` on ranks other than 0 under torchrun)."""
    import torch

    from tokengym import distributed as dist
    from tokengym.agents import PPOAgent
    from tokengym.agents.evaluation import evaluate_policy
    from tokengym.hardware import hardware_record
    from tokengym.models import load_causal_lm
    from tokengym.utils import atomic_write_text, recover_directory, set_cpu_threads

    dist.init_from_env()  # a process group under torchrun (WORLD_SIZE > 1); else nothing
    set_cpu_threads(cfg.threads or None)
    out = Path(cfg.output_dir)
    _prepare_output(out, resume, overwrite)
    t0 = time.time()
    ppo_cfg = cfg.ppo
    tokenizer, model = load_causal_lm(cfg.model)
    _build_task_reward(cfg, tokenizer, model, progress, log)
    train_env, test_env = make_envs(cfg, tokenizer, ppo_cfg.batch_size)
    agent = PPOAgent(train_env, model, ppo_cfg, run_dir=str(out))
    if resume:
        ckpt = out / "checkpoint"
        recover_directory(ckpt)  # a run killed while replacing its checkpoint left the previous one aside
        if not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        agent.load_checkpoint(ckpt)
        log(f"resumed from {ckpt} at iteration {agent.iteration}")

    def evaluate() -> tuple[dict[str, float], list[dict[str, Any]]]:
        # On the agent's device, in fp32 (no autocast) even when training runs bf16: evaluate_policy says why.
        ref_fn = lambda ids, attn, P: agent.ac.reference_logprobs(ids, attn, P, ppo_cfg.temperature, full=True)  # noqa: E731
        return evaluate_policy(agent.ac.policy, ref_fn, test_env, cfg.eval_episodes, seed=ppo_cfg.seed,
                               temperature=ppo_cfg.temperature)

    report_path = out / "report.json"
    before = None
    if report_path.exists() and resume:
        before = json.loads(report_path.read_text()).get("before")
    if before is None and dist.rank() == 0:
        log(f"evaluating the reference policy on {cfg.eval_episodes} test prompts ...")
        before, before_samples = evaluate()
        atomic_write_text(report_path, json.dumps({"config": asdict(cfg), "before": before,
                                                   "before_samples": before_samples[:8]}, indent=1))
        _write_eval_samples(out / "eval_samples.jsonl", "before", before_samples)
    heldout_path = out / "heldout.jsonl"
    heldout = _read_heldout(heldout_path, agent.iteration) if resume else []
    if before is not None and not heldout:
        heldout = [{"iteration": 0, **before}]

    def on_iteration(iteration: int, metrics: dict[str, float]) -> None:
        # The evaluation samples with its own generator on the test env, so the training run's random
        # streams (and hence its numbers) are the same with or without it.
        if (cfg.eval_every and iteration % cfg.eval_every == 0 and iteration < cfg.iterations
                and agent.stopped_at_kl is None and dist.rank() == 0):  # the last iteration's evaluation follows
            heldout.append({"iteration": iteration, **evaluate()[0]})
            atomic_write_text(heldout_path, "".join(json.dumps(r) + "\n" for r in heldout))

    agent.learn(cfg.iterations, callback=on_iteration, progress=progress)
    if dist.rank() != 0:  # rank 0 alone evaluates and writes the model and report
        return None
    after, after_samples = evaluate()
    _write_eval_samples(out / "eval_samples.jsonl", "after", after_samples)
    heldout.append({"iteration": agent.iteration, **after})
    atomic_write_text(heldout_path, "".join(json.dumps(r) + "\n" for r in heldout))
    agent.save_pretrained(out / "final_model")
    plot = agent.logger.plot()
    overopt_plot = plot_overoptimisation(agent.logger.rows, out / "overoptimisation.png", heldout=heldout)
    wall = time.time() - t0
    report = json.loads(report_path.read_text())
    # The device and precision the agent resolved ppo.device / ppo.dtype ("auto") to, with the machine.
    report.update({"after": after, "after_samples": after_samples[:8], "wall_time_s": wall,
                   "iterations": agent.iteration, "stopped_at_kl": agent.stopped_at_kl, "rolled_back": agent.rolled_back, "torch_threads": torch.get_num_threads(),
                   "hardware": hardware_record(agent.device, agent.dtype)})
    atomic_write_text(report_path, json.dumps(report, indent=1))
    report["curves"] = str(plot)
    report["overoptimisation_plot"] = str(overopt_plot) if overopt_plot else None
    return report


def _write_eval_samples(path: Path, stage: str, samples: list[dict[str, Any]]) -> None:
    """Every held-out evaluation sample, ``stage`` "before" or "after", one JSON line each: the
    report's metrics are computed on exactly these, so a reader can check any of them (which bigrams
    repeat, which responses the gold judge liked) without rerunning. "after" keeps the "before" lines
    already written (a resumed run evaluated the base model in its first session)."""
    from tokengym.utils import atomic_write_text

    kept = []
    if stage == "after" and path.is_file():
        kept = [line for line in path.read_text().splitlines() if json.loads(line).get("stage") == "before"]
    lines = kept + [json.dumps({"stage": stage, **s}) for s in samples]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _read_heldout(path: Path, up_to: int) -> list[dict[str, Any]]:
    """The held-out points a resumed run already measured, up to its checkpoint's iteration."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("iteration", 0) <= up_to]


def plot_overoptimisation(rows: list[dict[str, Any]], path: Path,
                          heldout: list[dict[str, Any]] | None = None) -> Path | None:
    """Proxy and gold score against sqrt(KL to the reference).

    Gao et al. (2022) found both scores trace smooth curves in d = sqrt(KL): the proxy keeps rising
    while the gold score bends over and falls once the policy exploits the reward model's errors.
    Plotting them on one axis shows where the two part ways. The points are the held-out
    evaluations (``heldout``: before, every ``eval_every`` iterations, after) when there are at
    least three; otherwise each iteration's training rollouts. Returns None without gold scores.
    """
    held = [r for r in (heldout or []) if math.isfinite(r.get("gold_score", math.nan))]
    if len(held) >= 3:
        rows = [{"iteration": r["iteration"], "score": r["proxy_score"], "gold_score": r["gold_score"],
                 "kl": r["kl_to_reference"]} for r in held]
        source = "held-out prompts"
    else:
        rows = [r for r in rows if math.isfinite(r.get("gold_score", math.nan))]
        source = "training rollouts"
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    d = np.sqrt(np.clip([r["kl"] for r in rows], 0.0, None))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(d, [r["score"] for r in rows], "o-", label="proxy (optimised reward)")
    ax.plot(d, [r["gold_score"] for r in rows], "s-", label="gold judge (never optimised)")
    for r, x in zip(rows, d):
        ax.annotate(str(r["iteration"]), (x, r["gold_score"]), fontsize=6, alpha=0.6)
    ax.set_xlabel("sqrt(KL to reference), KL in nats per response")
    ax.set_ylabel(f"mean score ({source})")
    ax.set_title("Reward over-optimisation: proxy vs gold")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_report(report: dict[str, Any], cfg: TrainConfig, log: Callable[[str], None] = print) -> None:
    log("\nSamples on held-out prompts (before -> after):")
    for b, a in list(zip(report["before_samples"], report["after_samples"]))[:4]:
        log(f"  prompt: {b['prompt']}\n    before [{b.get('gold', b['score']):+.2f}]: {b['response']!r}\n"
            f"    after  [{a.get('gold', a['score']):+.2f}]: {a['response']!r}")
    print_table(f"Held-out evaluation ({cfg.eval_episodes} test prompts)", report["before"], report["after"], log)
    out = Path(cfg.output_dir)
    if report.get("stopped_at_kl") is not None:
        kept = (f"over ppo.kl_rollback = {cfg.ppo.kl_rollback:g}, so the policy before the last update (after "
                f"{report['iterations'] - 2} updates) is the one kept" if report.get("rolled_back") else
                f"so the policy it measured (after {report['iterations'] - 1} updates) is the one kept")
        log(f"\nstopped at iteration {report['iterations']} of {cfg.iterations}: its rollout KL "
            f"{report['stopped_at_kl']:.2f} reached ppo.kl_stop = {cfg.ppo.kl_stop:g}, {kept}")
    log(f"\nwall time {report['wall_time_s']:.0f} s; model: {out / 'final_model'}; curves: {report['curves']}; "
        f"report: {out / 'report.json'}")


def print_table(title: str, before: dict[str, float], after: dict[str, float] | None,
                log: Callable[[str], None] = print) -> None:
    log(f"\n{title}")
    log(f"{'metric':<31}{'before':>12}" + (f"{'after':>12}" if after else ""))
    for k, v in before.items():
        line = f"{k:<31}{v:>12.4f}"
        if after:
            line += f"{after.get(k, float('nan')):>12.4f}"
        log(line)
