"""``tokengym overopt``: a reward over-optimisation study in the manner of Gao et al. (2022).

The proxy is the reward the policy is paid (on the main task, a reward model learned from simulated
labels of the gold judge); the gold judge is never paid. Two ways of spending KL are measured on the
same held-out prompts, and both scores are plotted against d = sqrt(KL to the reference):

* **RL**: one PPO run (``tokengym train``'s protocol and defaults) evaluated on the held-out prompts
  every ``eval_every`` iterations; each evaluation is a point (its KL is the sampled k1 estimate).
* **best-of-n**: N samples per prompt from the reference policy; for each n <= N, the expected gold
  and proxy score of the sample the proxy ranks best among n, computed exactly over all n-subsets
  (no resampling noise), at the analytic KL of best-of-n, ``log n - (n - 1) / n``.

Gao et al.'s functional forms are fitted to the gold gain R(d) = gold(d) - gold(0):
``R_RL(d) = d (a - b log d)`` and ``R_bon(d) = d (a - b d)``. Both are linear in (a, b), so the fit is
ordinary least squares, and the gold peak follows in closed form: ``d* = exp(a / b - 1)`` for RL and
``d* = a / (2 b)`` for best-of-n (none when b <= 0: the gold is still rising over the range).

Writes ``overopt.json``, ``overopt.md`` and ``overopt.png`` next to the PPO run's files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


# ----------------------------------------------------------------------------------------------
# Gao et al.'s functional forms
# ----------------------------------------------------------------------------------------------
def _lstsq(columns: list[np.ndarray], r: np.ndarray) -> tuple[float, float]:
    design = np.stack(columns, 1)
    (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    return float(a), float(b)


def _dlogd(d: np.ndarray) -> np.ndarray:
    return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)  # d log d -> 0 as d -> 0


def fit_rl(d: Sequence[float] | np.ndarray, gain: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(a, b) of ``R(d) = d (a - b log d)`` by least squares; ``gain`` is gold(d) - gold(0)."""
    x, r = np.asarray(d, float), np.asarray(gain, float)
    return _lstsq([x, -_dlogd(x)], r)


def fit_bon(d: Sequence[float] | np.ndarray, gain: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(a, b) of ``R(d) = d (a - b d)`` by least squares."""
    x, r = np.asarray(d, float), np.asarray(gain, float)
    return _lstsq([x, -(x**2)], r)


def rl_form(d: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * d - b * _dlogd(np.asarray(d, float))


def bon_form(d: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * d - b * np.asarray(d, float) ** 2


def rl_peak(a: float, b: float) -> float | None:
    """d where ``d (a - b log d)`` is largest (dR/dd = a - b log d - b = 0); None if b <= 0."""
    return math.exp(a / b - 1.0) if b > 0 else None


def bon_peak(a: float, b: float) -> float | None:
    """d where ``d (a - b d)`` is largest; None if b <= 0."""
    return a / (2.0 * b) if b > 0 else None


# ----------------------------------------------------------------------------------------------
# Best-of-n, exactly
# ----------------------------------------------------------------------------------------------
def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || reference) in nats: ``log n - (n - 1) / n`` (Stiennon et al., 2020)."""
    return math.log(n) - (n - 1) / n


def best_of_n_expectation(proxy: np.ndarray, values: np.ndarray, n: int) -> float:
    """E[value of the proxy's best among n samples drawn without replacement], averaged over prompts.

    ``proxy`` and ``values`` are (prompts, N). Sorting a prompt's N samples by proxy, the sample of
    rank i (1 = lowest) is the best of a random n-subset with probability C(i-1, n-1) / C(N, n),
    so the expectation is exact: no resampling noise in the curve.
    """
    proxy, values = np.asarray(proxy, float), np.asarray(values, float)
    N = proxy.shape[1]
    if not 1 <= n <= N:
        raise ValueError(f"n must be in 1..{N}, got {n}")
    weights = np.array([math.comb(i - 1, n - 1) for i in range(1, N + 1)], float) / math.comb(N, n)
    order = np.argsort(proxy, axis=1, kind="stable")
    ranked = np.take_along_axis(values, order, axis=1)
    return float((ranked * weights).sum(1).mean())


def best_of_n_curve(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> list[dict[str, float]]:
    return [{"n": int(n), "kl": best_of_n_kl(n), "d": math.sqrt(best_of_n_kl(n)),
             "proxy_score": best_of_n_expectation(proxy, proxy, n), "gold_score": best_of_n_expectation(proxy, gold, n)}
            for n in ns]


def sample_reference(cfg: Any, samples_per_prompt: int, log: Callable[[str], None] = print,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(prompts, N) proxy and gold scores of N reference-policy samples for each held-out prompt."""
    import torch
    from tqdm.auto import tqdm

    from tokengym.agents import CachedSampler
    from tokengym.models import load_causal_lm
    from tokengym.train import make_envs

    tokenizer, model = load_causal_lm(cfg.model)
    _, env = make_envs(cfg, tokenizer, samples_per_prompt)
    env = env.unwrapped if hasattr(env, "unwrapped") else env
    if env.num_envs != samples_per_prompt:  # make_envs caps the test batch at eval_episodes
        raise ValueError(f"--samples-per-prompt ({samples_per_prompt}) must be <= eval_episodes ({cfg.eval_episodes})")
    sampler = CachedSampler(model.eval(), temperature=cfg.ppo.temperature)
    gen = torch.Generator().manual_seed(cfg.ppo.seed + 777)  # not the evaluation's stream: fresh samples
    n_prompts = min(cfg.eval_episodes, len(env.prompts))
    proxy, gold = [], []
    log(f"best-of-n: {samples_per_prompt} reference samples for each of {n_prompts} held-out prompts ...")
    for i in tqdm(range(n_prompts), desc="best-of-n", disable=not progress):
        batch = sampler.rollout(env, seed=cfg.ppo.seed + i, generator=gen,
                                options={"prompt_indices": np.full(samples_per_prompt, i)})
        if batch.gold_scores is None:
            raise ValueError(f"the task {cfg.env!r} has no gold judge: set gold_reward")
        proxy.append(batch.scores.numpy())
        gold.append(batch.gold_scores.numpy())
    return np.stack(proxy), np.stack(gold)


# ----------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------
def study(rl_points: list[dict[str, float]], bon_points: list[dict[str, float]]) -> dict[str, Any]:
    """Fits and peaks of both curves; points carry ``kl`` (nats), ``gold_score`` and ``proxy_score``."""
    out: dict[str, Any] = {}
    for name, points, fit, peak in (("rl", rl_points, fit_rl, rl_peak), ("best_of_n", bon_points, fit_bon, bon_peak)):
        d = np.sqrt(np.clip([p["kl"] for p in points], 0.0, None))
        gold0 = points[0]["gold_score"]
        gain = np.array([p["gold_score"] for p in points]) - gold0
        a, b = fit(d, gain)
        d_star = peak(a, b)
        best = int(np.argmax([p["gold_score"] for p in points]))
        out[name] = {"a": a, "b": b, "gold_at_d0": gold0,
                     "fitted_peak_kl": None if d_star is None else d_star**2,
                     "fitted_peak_gold": None if d_star is None else gold0 + float(
                         (rl_form if name == "rl" else bon_form)(np.array([d_star]), a, b)[0]),
                     "best_measured": {"kl": points[best]["kl"], "gold_score": points[best]["gold_score"]},
                     "points": points}
    return out


def markdown(result: dict[str, Any], title: str) -> str:
    lines = [f"### {title}", "", "| method | a | b | gold at KL 0 | fitted gold peak at KL (nats) | fitted peak gold "
             "| best measured gold (KL) |", "|---|---|---|---|---|---|---|"]
    for name in ("rl", "best_of_n"):
        r = result[name]
        peak_kl = "none in range (b <= 0)" if r["fitted_peak_kl"] is None else f"{r['fitted_peak_kl']:.2f}"
        peak_gold = "–" if r["fitted_peak_gold"] is None else f"{r['fitted_peak_gold']:.3f}"
        lines.append(f"| {'PPO' if name == 'rl' else 'best-of-n'} | {r['a']:.3f} | {r['b']:.3f} | {r['gold_at_d0']:.3f} | "
                     f"{peak_kl} | {peak_gold} | {r['best_measured']['gold_score']:.3f} ({r['best_measured']['kl']:.2f}) |")
    lines += ["", "| method | point | KL (nats) | sqrt KL | proxy | gold |", "|---|---|---|---|---|---|"]
    for name in ("rl", "best_of_n"):
        for p in result[name]["points"]:
            label = f"iteration {p['iteration']}" if name == "rl" else f"n = {p['n']}"
            lines.append(f"| {'PPO' if name == 'rl' else 'best-of-n'} | {label} | {p['kl']:.3f} | {math.sqrt(max(p['kl'], 0)):.3f} | "
                         f"{p['proxy_score']:.3f} | {p['gold_score']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, name, form, label in ((axes[0], "rl", rl_form, "PPO"), (axes[1], "best_of_n", bon_form, "best-of-n")):
        r = result[name]
        pts = r["points"]
        d = np.sqrt(np.clip([p["kl"] for p in pts], 0.0, None))
        ax.plot(d, [p["proxy_score"] for p in pts], "o", label="proxy (optimised)")
        ax.plot(d, [p["gold_score"] for p in pts], "s", label="gold (never optimised)")
        grid = np.linspace(0, max(float(d.max()), 1e-3) * 1.3, 100)
        ax.plot(grid, r["gold_at_d0"] + form(grid, r["a"], r["b"]), "-", alpha=0.7,
                label=f"fit: d(a - b {'log d' if name == 'rl' else 'd'}), a={r['a']:.2f} b={r['b']:.2f}")
        ax.set_title(label)
        ax.set_xlabel("d = sqrt(KL to reference), KL in nats per response")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("mean score on held-out prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("overopt", help="reward over-optimisation study: PPO and best-of-n, gold and proxy vs sqrt(KL)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML or TOML file with TrainConfig keys (as tokengym train)")
    p.add_argument("--model")
    p.add_argument("--env")
    p.add_argument("--reward")
    p.add_argument("--iterations", type=int, default=None, help="PPO iterations (default: tokengym train's)")
    p.add_argument("--eval-every", type=int, default=2, help="held-out evaluation every K iterations (default 2)")
    p.add_argument("--samples-per-prompt", type=int, default=16, help="N of best-of-n (default 16)")
    p.add_argument("--output-dir", default="runs/overopt")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_overopt)


def cmd_overopt(args: argparse.Namespace) -> int:
    from tokengym import checks
    from tokengym.cli import build_train_config
    from tokengym.train import run

    checks.positive_int(args.eval_every, "--eval-every")
    checks.integer(args.samples_per_prompt, "--samples-per-prompt", minimum=2)
    cfg = build_train_config(args)
    cfg.eval_every = args.eval_every
    if args.samples_per_prompt > cfg.eval_episodes:
        raise checks.ArgumentError(f"--samples-per-prompt ({args.samples_per_prompt}) must be <= eval_episodes "
                                   f"({cfg.eval_episodes})")
    progress = not args.no_progress
    report = run(cfg, overwrite=args.overwrite, progress=progress)
    if report is None:  # another rank under torchrun
        return 0
    out = Path(cfg.output_dir)
    rl_points = [{"iteration": r["iteration"], "kl": r["kl_to_reference"], "gold_score": r["gold_score"],
                  "proxy_score": r["proxy_score"]}
                 for r in (json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines() if line.strip())]
    proxy, gold = sample_reference(cfg, args.samples_per_prompt, progress=progress)
    ns = sorted({n for n in (1, 2, 4, 8, 16, 32, 64) if n <= args.samples_per_prompt} | {args.samples_per_prompt})
    result = study(rl_points, best_of_n_curve(proxy, gold, ns))
    result["config"] = {"train": report["config"], "eval_every": args.eval_every,
                        "samples_per_prompt": args.samples_per_prompt}
    from tokengym.hardware import hardware_record
    from tokengym.utils import atomic_write_text

    result["machine"] = hardware_record()
    atomic_write_text(out / "overopt.json", json.dumps(result, indent=1))
    md = markdown(result, f"Over-optimisation study on {cfg.env} ({cfg.model})")
    atomic_write_text(out / "overopt.md", md)
    plot(result, out / "overopt.png")
    print("\n" + md)
    print(f"wrote {out / 'overopt.json'}, {out / 'overopt.md'}, {out / 'overopt.png'}", file=sys.stderr)
    return 0
