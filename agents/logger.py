"""Metrics logging: JSONL + CSV every iteration, TensorBoard when installed, a PNG of the curves."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from tokengym.utils import atomic_write_text

PLOT_KEYS = [("score", "gold_score"), ("kl",), ("beta",), ("rlhf_reward",)]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL log; a last line torn by a crash mid-append is dropped."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON row") from None
    return rows


def _csv_header(path: Path) -> list[str]:
    """The column names of a CSV file's first line ([] for an empty file)."""
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


class MetricsLogger:
    """Appends one row of scalar metrics per iteration under ``run_dir``; rank 0 only writes."""

    def __init__(self, run_dir: str | os.PathLike | None, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir) if run_dir else None
        self.enabled = enabled and self.run_dir is not None
        self.rows: list[dict[str, float]] = []
        self._tb = None
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:  # tensorboard is optional; JSONL/CSV always work
                    SummaryWriter = None
                if SummaryWriter is not None:
                    self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"iteration": step, **metrics}
        self.rows.append(row)
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        csv_path = self.run_dir / "metrics.csv"
        new = not csv_path.exists()
        # Appending to an existing file follows its header, so a row whose keys differ (a run resumed
        # with another version or other aids) cannot shift values into the wrong columns.
        fieldnames = list(row) if new else _csv_header(csv_path) or list(row)
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "samples.jsonl", "a") as f:
            for s in samples:
                f.write(json.dumps({"iteration": step, **s}) + "\n")

    def load_existing(self) -> None:
        """Read earlier rows back (after ``--resume``) so the final plot covers the whole run."""
        path = self.run_dir / "metrics.jsonl" if self.run_dir else None
        if path and path.exists():
            self.rows = _read_jsonl(path)

    def truncate_after(self, iteration: int) -> None:
        """Drop rows logged after the checkpoint we resume from (they will be logged again).

        The files are rewritten atomically (a process killed here loses no row of the kept ones).
        """
        if not self.enabled:
            return
        self.load_existing()
        self.rows = [r for r in self.rows if r["iteration"] <= iteration]
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))
        if self.rows:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(self.rows[0]), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
            atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())
        else:  # log() writes the header when it creates the file
            (self.run_dir / "metrics.csv").unlink(missing_ok=True)
        samples = self.run_dir / "samples.jsonl"
        if samples.exists():
            kept = [s for s in _read_jsonl(samples) if s["iteration"] <= iteration]
            atomic_write_text(samples, "".join(json.dumps(s) + "\n" for s in kept))

    def plot(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write a PNG of score/gold, KL, beta and RLHF reward against iterations."""
        if not self.rows or (path is None and not self.enabled):
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path) if path else self.run_dir / "curves.png"
        fig, axes = plt.subplots(1, len(PLOT_KEYS), figsize=(4 * len(PLOT_KEYS), 3.2))
        xs = [r["iteration"] for r in self.rows]
        for ax, keys in zip(axes, PLOT_KEYS):
            for k in keys:
                ys = [r.get(k, float("nan")) for r in self.rows]
                if any(math.isfinite(y) for y in ys):
                    ax.plot(xs, ys, marker=".", label=k)
            ax.set_title(" / ".join(keys))
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            if len(keys) > 1:
                ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
