"""Helpers shared by the benchmark scripts in ``bench/`` (not part of the package).

Every script measures its variants *interleaved* within one run and reports medians and ratios, so
that a machine shared with other jobs slows every variant alike; absolute numbers move with the
load, ratios much less. Results go to ``bench/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

RESULTS = Path(__file__).parent / "results"


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def machine_info() -> dict[str, Any]:
    import torch

    return {
        **cpu_info(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def cpu_info() -> dict[str, Any]:
    """CPU model, the flags that decide bf16 speed, and torch's CPU capability (results differ by CPU)."""
    from tokengym.hardware import cpu_info as info

    return info()


def set_threads(n: int) -> int:
    """Use ``n`` torch threads here and in child processes (``OMP_NUM_THREADS``).

    The default of the benchmarks is 1: on a machine shared with other jobs (more runnable threads
    than cores), OpenMP's spinning barriers make 2 threads on 2 cores 5-10x *slower* than 1 thread
    (a SmolLM2 decode step of batch 16 measured 1.4-6 s with 2 threads vs 0.33 s with 1 at load
    average 8); ``OMP_WAIT_POLICY=PASSIVE`` also avoids it. Use ``--threads 2`` on an idle machine.
    """
    import torch

    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    return n


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    """Accumulates wall time of calls; ``wrap(obj, name)`` replaces a bound method by a timed one."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}  # wall seconds
        self.cpu: dict[str, float] = {}  # process CPU seconds
        self.calls: dict[str, int] = {}

    @contextlib.contextmanager
    def section(self, key: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.totals[key] = self.totals.get(key, 0.0) + time.perf_counter() - t0
            self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - c0
            self.calls[key] = self.calls.get(key, 0) + 1

    def wrap(self, obj: Any, name: str, key: str | None = None) -> None:
        fn = getattr(obj, name)
        key = key or name

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.section(key):
                return fn(*args, **kwargs)

        setattr(obj, name, timed)

    def reset(self) -> None:
        self.totals.clear()
        self.cpu.clear()
        self.calls.clear()


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an ``n x n`` matmul (the compute ceiling of this machine, right now)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def memory_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    """Best read bandwidth (GB/s) of summing an fp32 tensor of ``mb`` MB (the ceiling of decode steps,
    which read every weight once per step)."""
    import torch

    x = torch.ones(mb * 2**20 // 4)
    x.sum()
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return best


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "–"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    js.write_text(json.dumps(data, indent=1, default=float) + "\n")
    md.write_text(markdown.rstrip() + "\n")
    return js, md


def long_prompt_indices(env: Any, n: int, min_tokens: int, at_least: int | None = None) -> list[int]:
    """The first ``n`` prompt indices of ``env``'s prompt set with at least ``min_tokens`` tokens, so
    every row is a full ``min_tokens``-token prompt (no left padding) once truncated to ``P``; fewer
    than ``n`` are enough when there are ``at_least`` of them."""
    out = []
    for i in range(len(env.prompts)):
        if len(env.prompt_token_ids(env.prompts[i]["prompt"])) >= min_tokens:
            out.append(i)
            if len(out) == n:
                return out
    if at_least is not None and len(out) >= at_least:
        return out
    raise ValueError(f"only {len(out)} prompts have >= {min_tokens} tokens")


def never_stop(tokenizer: Any) -> list[int]:
    """``stop_token_ids`` under which an episode never ends before ``max_new_tokens``: pad alone, which
    the env always treats as a stop but tokengym's sampler never chooses. Every row then generates
    exactly ``max_new_tokens`` tokens, like ``generate`` with ``eos_token_id=None``."""
    return [int(tokenizer.pad_token_id)]


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out
