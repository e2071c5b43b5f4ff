"""Tables and plots of ``tokengym bench`` results (the JSON written by :mod:`tokengym.compare`).

Kept apart from the command so that results can be re-rendered (or read in a notebook) without
loading models: ``render(json.loads(path.read_text()), out, name, levels)``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tokengym.benchstats import fmt, iqm, score_at_kl, summary

ALGOS = ("ppo", "reinforce", "a2c", "rloo", "grpo", "sb3-ppo", "sb3-a2c", "sb3-trpo")
CURVE_KEYS = ("score", "gold_score", "kl")


def changed_settings(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The names of the settings that differ between two results files, for the refusal message."""
    return sorted(k for k in {*a, *b} if a.get(k) != b.get(k))


def load_results(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The results file's runs when it holds the same settings (a resumed or extended benchmark);
    a file of other settings, or one tokengym did not write, is refused rather than mixed or replaced."""
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError, IsADirectoryError):
            data = None
        if not isinstance(data, dict) or not {"settings", "runs"} <= data.keys():
            raise FileExistsError(f"--name: {path} exists and is not a tokengym bench result; choose another --name or --out")
        if data["settings"] != settings:
            changed = changed_settings(settings, data["settings"])
            raise FileExistsError(f"--name: {path} holds runs of other settings ({', '.join(changed)} differ); "
                                  "choose another --name, or rerun with the same settings to continue it")
        return data
    return {"settings": settings, "commands": [], "initial": None, "best_of_n": None, "runs": []}


def machines_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The machines a results file's runs were measured on; each run's ``machine`` is an index into it.

    A file from before per-run records keeps one ``machine`` (the latest invocation's); its runs, which
    name none, are taken to have run there.
    """
    if "machines" not in data:
        data["machines"] = [data["machine"]] if data.get("machine") else []
    return data["machines"]


def machine_index(data: dict[str, Any], record: dict[str, Any]) -> int:
    """The index of ``record`` in the file's machines, added when it is new (a resumed benchmark on
    another CPU, or with other threads, must not relabel the runs measured before it)."""
    machines = machines_of(data)
    if record not in machines:
        machines.append(record)
    return machines.index(record)


def machine_lines(data: dict[str, Any]) -> list[str]:
    """One line per machine: the runs measured on it and its record."""
    machines = machines_of(data)
    lines = []
    for i, record in enumerate(machines):
        runs = [r for r in data["runs"] if r.get("machine", 0) == i]
        by_algo: dict[str, list[str]] = {}
        for r in runs:
            by_algo.setdefault(r["algo"], []).append(str(r["seed"]))
        what = "; ".join(f"{a} seeds {', '.join(seeds)}" for a, seeds in by_algo.items()) or "no runs (baselines only)"
        lines.append(f"* Machine {i + 1} ({what}): {json.dumps(record)}")
    return lines


def _pm(values: list[float], digits: int = 3) -> str:
    return fmt(summary(values), digits)


def _algos(data: dict[str, Any]) -> list[str]:
    """Row order: the algorithms in ALGOS order, each followed by its ``algo@lr`` variants (by lr)."""
    def key(label: str) -> tuple[int, str, float]:
        algo, _, lr = label.partition("@")
        return (ALGOS.index(algo) if algo in ALGOS else len(ALGOS), algo, float(lr) if lr else 0.0)

    return sorted({r["algo"] for r in data["runs"]}, key=key)


def _heldout(run: dict[str, Any], initial: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A run's held-out points in training order: the initial policy, the checkpoints, the final policy."""
    return [*([initial] if initial else []), *run.get("checkpoints", []), run["final"]]


def markdown_table(data: dict[str, Any]) -> str:
    rows = ["| algorithm | seeds | gold score | gold IQM | proxy score | KL to ref (nats/response) | wall time (s) "
            "| tokens/s | tokens |", "|---|---|---|---|---|---|---|---|---|"]
    init = data.get("initial")
    if init:
        rows.append(f"| (initial policy) | – | {_pm([init['gold_score']])} | – | {_pm([init['proxy_score']])} | "
                    f"{_pm([init['kl_to_reference']])} | – | – | 0 |")
    for p in data.get("best_of_n") or []:
        if p["n"] > 1:
            rows.append(f"| best-of-{p['n']} (reference samples) | – | {p['gold_score']:.3f} | – | {p['proxy_score']:.3f} | "
                        f"{p['kl']:.3f} (analytic) | – | – | – |")
    for algo in _algos(data):
        runs = [r for r in data["runs"] if r["algo"] == algo]
        f = lambda key: [r["final"][key] for r in runs]  # noqa: E731
        rows.append(
            f"| {algo} | {len(runs)} | {_pm(f('gold_score'))} | {iqm(f('gold_score')):.3f} | {_pm(f('proxy_score'))} | "
            f"{_pm(f('kl_to_reference'))} | {_pm([r['wall_s'] for r in runs], 1)} | "
            f"{_pm([r['tokens'] / r['wall_s'] for r in runs], 1)} | {_pm([float(r['tokens']) for r in runs], 0)} |"
        )
    return "\n".join(rows)


def frontier_table(data: dict[str, Any], levels: list[float]) -> str:
    """Gold score at matched KL: each run's held-out points interpolated at each KL level."""
    head = "| algorithm | " + " | ".join(f"gold at KL {k:g}" for k in levels) + " |"
    rows = [head, "|---|" + "---|" * len(levels)]
    init = data.get("initial")
    bon = data.get("best_of_n") or []
    if bon:
        bon_cells = [score_at_kl([p["kl"] for p in bon], [p["gold_score"] for p in bon], k) for k in levels]
        rows.append("| best-of-n | " + " | ".join("–" if c is None else f"{c:.3f}" for c in bon_cells) + " |")
    for algo in _algos(data):
        cells: list[str] = []
        for k in levels:
            vals = []
            for r in (r for r in data["runs"] if r["algo"] == algo):
                pts = _heldout(r, init)
                v = score_at_kl([p["kl_to_reference"] for p in pts], [p["gold_score"] for p in pts], k)
                if v is not None:
                    vals.append(v)
            n = sum(1 for r in data["runs"] if r["algo"] == algo)
            cells.append("–" if not vals else f"{fmt(summary(vals))} ({len(vals)}/{n})")
        rows.append(f"| {algo} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_markdown(data: dict[str, Any], path: Path, levels: list[float]) -> None:
    s = data["settings"]
    text = [
        f"# Benchmark: {s['env']}, model `{s['model']}`, budget {s['budget']} generated tokens per run", "",
        markdown_table(data), "",
        "Mean [95 % bootstrap confidence interval] over seeds; gold IQM = interquartile mean over seeds. "
        f"Same reward, fixed KL coefficient {s['kl_coef']}, learning rate {s['lr']} (tokengym agents, "
        f"{'LoRA r' + str(s['lora_r']) if s.get('lora_r') else 'full fine-tuning'}) and "
        f"{s['sb3_lr']} (SB3 PPO/A2C, full fine-tuning; sb3-trpo's step is set by its trust region, target KL 0.01); "
        f"a row named algo@lr ran at that learning rate instead; batch {s['batch_size']} episodes (group size {s['group_size']} for "
        f"rloo/grpo), entropy coefficient {s['ent_coef']}"
        + (f"; reward model weights {s['reward_model']} (a hash of its tensors)" if s.get("reward_model") else "")
        + f". Held-out scores: one sampled response to each of "
        f"{s['eval_prompts']} held-out prompts; KL = k1 estimate summed over response tokens (k3 in the JSON). "
        "Wall time and tokens/s: training only.", "",
        "## Gold score at matched KL (the reward-KL frontier)", "",
        frontier_table(data, levels), "",
        f"Each run is evaluated on the held-out prompts {s['eval_points'] - 1} times during training and at the end; "
        "its gold score is interpolated where its KL first reaches each level (never extrapolated; (k/n) = runs "
        "that reached the level). Best-of-n: the proxy picks the best of n reference samples, at KL log n - (n-1)/n.", "",
        "Produced by:", "",
        *[f"    {c}" for c in data.get("commands", [])], "",
        "Measured on (wall times and tokens/s compare only within one machine):", "",
        *machine_lines(data),
    ]
    path.write_text("\n".join(text) + "\n")


def _mean_curve(runs: list[dict[str, Any]], xkey: str, key: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    ys = []
    for r in runs:
        pts = [(c[xkey], c[key]) for c in r["curve"] if c.get(key) is not None and c.get(xkey) is not None
               and math.isfinite(c[key])]
        if pts:
            x, y = zip(*pts)
            ys.append(np.interp(grid, x, y, left=np.nan, right=np.nan))
    if not ys:
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # grid points outside a run's range
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(ys, 0), np.nanstd(ys, 0)


def plot_curves(data: dict[str, Any], path: Path) -> None:
    """Learning curves against tokens (top) and training wall time (bottom), and the held-out
    reward-KL frontier: gold against sqrt(KL) for every run's held-out points and best-of-n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = data["settings"]["budget"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.6))
    titles = {"score": "proxy score (training rollouts)", "gold_score": "gold score (training rollouts)",
              "kl": "KL to ref, nats/response (training rollouts, k1)"}
    longest = max((c.get("wall_s") or 0.0 for r in data["runs"] for c in r["curve"]), default=1.0) or 1.0
    panels = [(axes[0, i], "tokens", k, np.linspace(0, budget, 41)[1:]) for i, k in enumerate(CURVE_KEYS)]
    panels += [(axes[1, i], "wall_s", k, np.linspace(0, longest, 41)[1:]) for i, k in enumerate(("gold_score", "kl"))]
    for ax, xkey, key, grid in panels:
        for algo in _algos(data):
            got = _mean_curve([r for r in data["runs"] if r["algo"] == algo], xkey, key, grid)
            if got is not None:
                ax.plot(grid, got[0], label=algo)
                ax.fill_between(grid, got[0] - got[1], got[0] + got[1], alpha=0.15)
        ax.set_title(titles[key], fontsize=9)
        ax.set_xlabel("tokens generated" if xkey == "tokens" else "training wall time (s)")
        ax.grid(alpha=0.3)
    ax = axes[1, 2]
    init = data.get("initial")
    for algo in _algos(data):
        pts = [p for r in data["runs"] if r["algo"] == algo for p in _heldout(r, init)[1 if init else 0:]]
        ax.plot(np.sqrt(np.clip([p["kl_to_reference"] for p in pts], 0, None)), [p["gold_score"] for p in pts], "o",
                alpha=0.6, label=algo)
    bon = data.get("best_of_n") or []
    if bon:
        ax.plot([p["d"] for p in bon], [p["gold_score"] for p in bon], "k--", label="best-of-n")
    if init:
        ax.plot([0], [init["gold_score"]], "k*", markersize=10, label="initial")
    ax.set_title("held-out gold vs sqrt(KL): the reward-KL frontier", fontsize=9)
    ax.set_xlabel("sqrt(KL to reference)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{data['settings']['env']} · {data['settings']['model']} · mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results file from benchmarks of the same settings run side by side (one per core, each
    with its own ``--name``). Different settings, or one (algorithm, seed) measured twice, are
    refused: a table never mixes configurations or counts a seed twice."""
    if not parts:
        raise ValueError("nothing to merge")
    # The best-of-n baseline does not change how any run trains, so one part may measure it while the
    # parts running beside it skip it (--best-of-n 0); two parts measuring different n are refused.
    ns = {p["settings"].get("best_of_n", 0) for p in parts} - {0}
    if len(ns) > 1:
        raise ValueError(f"cannot merge results with different best-of-n baselines ({', '.join(map(str, sorted(ns)))})")
    def training_settings(part: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in part["settings"].items() if k != "best_of_n"}

    first = parts[0]
    base = training_settings(first)
    merged = {**first, "settings": {**first["settings"], "best_of_n": max(ns, default=0)}, "commands": [], "runs": [],
              "machines": []}
    for part in parts:
        if (settings := training_settings(part)) != base:
            changed = changed_settings(settings, base)
            raise ValueError(f"cannot merge results of other settings ({', '.join(changed)} differ)")
        part_machines = machines_of(dict(part))
        for run in part["runs"]:
            if any((r["algo"], r["seed"]) == (run["algo"], run["seed"]) for r in merged["runs"]):
                raise ValueError(f"{run['algo']} seed {run['seed']} is in more than one of the files")
            index = run.get("machine", 0)
            machine = part_machines[index] if index < len(part_machines) else None
            merged["runs"].append({**run, **({"machine": machine_index(merged, machine)} if machine else {})})
        merged["commands"] += part.get("commands", [])
        for key in ("initial", "best_of_n"):
            merged[key] = merged.get(key) or part.get(key)
    return merged


def render(data: dict[str, Any], out: Path, name: str, levels: list[float]) -> None:
    from tokengym.utils import atomic_write_text

    atomic_write_text(out / f"{name}.json", json.dumps(data, indent=1))  # a kill mid-write never loses finished runs
    write_markdown(data, out / f"{name}.md", levels)
    if data["runs"]:
        plot_curves(data, out / f"{name}.png")
