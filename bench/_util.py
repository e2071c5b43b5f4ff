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


def machine_info(device: Any = None, dtype: Any = None) -> dict[str, Any]:
    """The machine a result was measured on: ``tokengym.hardware.hardware_record(device, dtype)`` (CPU
    model and flags, GPU, torch, and the device and dtype measured when given), plus the Python
    version, the load average and the date."""
    from tokengym.hardware import hardware_record

    return {
        **hardware_record(device, dtype),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def resolve_dtypes(spec: str | None, device: Any) -> tuple[list[str], str | None]:
    """The dtypes a benchmark measures (``"fp32,bf16"``), and why bf16 was left out (None if it was not).

    By default bf16 is measured where it has hardware behind it: a GPU that supports it, or a CPU with
    AMX or AVX512-BF16 units. Elsewhere bf16 is emulated (~100x slower than fp32 on an AVX2-only CPU),
    so timing it says nothing about tokengym; ``--dtype fp32,bf16`` measures it anyway.
    """
    import torch

    from tokengym.hardware import DTYPES, cpu_has_bf16_units, cpu_info

    device = torch.device(device)
    if spec:
        names = [d.strip() for d in spec.split(",") if d.strip()]
        bad = [d for d in names if d not in DTYPES]
        if bad or not names:
            raise SystemExit(f"--dtype takes a comma-separated list of {', '.join(DTYPES)}, got {spec!r}")
        return names, None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return ["fp32", "bf16"], None
        return ["fp32"], f"bf16 skipped: {torch.cuda.get_device_name(device)} does not support bf16"
    if cpu_has_bf16_units():
        return ["fp32", "bf16"], None
    flags = ", ".join(cpu_info()["cpu_flags"]) or "none of the tracked ones"
    return ["fp32"], (f"bf16 skipped: this CPU has no AMX or AVX512-BF16 units (flags: {flags}), so bf16 is emulated "
                      "and ~100x slower than fp32; --dtype fp32,bf16 measures it anyway")


def sync(device: Any) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU): GPU calls return before their kernels finish,
    so a timer read without it measures the launch, not the work."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cpu_info() -> dict[str, Any]:
    """CPU model, the flags that decide bf16 speed, and torch's CPU capability (results differ by CPU)."""
    from tokengym.hardware import cpu_info as info

    return info()


def add_hardware_args(ap: Any) -> None:
    """The device, precision, model and output flags every speed script takes."""
    ap.add_argument("--device", default="auto", help="auto (CUDA when torch sees a GPU), cpu, cuda, cuda:N")
    ap.add_argument("--dtype", default=None,
                    help="comma-separated fp32,bf16 (bf16 = autocast); default: both where bf16 has hardware "
                         "(a GPU that supports it, a CPU with AMX/AVX512-BF16), else fp32")
    ap.add_argument("--model", default="smollm2", help="smollm2, a local model path, or tiny (checks the code paths)")
    ap.add_argument("--tag", default=None, help="suffix of the results files (e.g. _threads2), so other runs are kept; "
                                                "default '' on the CPU, _cuda on a GPU")
    ap.add_argument("--results-dir", default=None, help="where the results go (default bench/results)")


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
    """Accumulates wall time of calls; ``wrap(obj, name)`` replaces a bound method by a timed one.

    With a CUDA ``device`` each section waits for the GPU at its start and end (see :func:`sync`)."""

    def __init__(self, device: Any = None) -> None:
        self.totals: dict[str, float] = {}  # wall seconds
        self.cpu: dict[str, float] = {}  # process CPU seconds
        self.calls: dict[str, int] = {}
        self.device = device

    @contextlib.contextmanager
    def section(self, key: str) -> Iterator[None]:
        if self.device is not None:
            sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.device is not None:
                sync(self.device)
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


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, dtype: Any = None, device: Any = "cpu") -> float:
    """Best GFLOP/s of an ``n x n`` matmul in ``dtype`` (default fp32) on ``device`` (the compute
    ceiling of this machine, right now)."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync(device)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def memory_bandwidth_gbs(mb: int = 512, repeats: int = 5, device: Any = "cpu") -> float:
    """Best read bandwidth (GB/s) of summing an fp32 tensor of ``mb`` MB on ``device`` (the ceiling of
    decode steps, which read every weight once per step)."""
    import torch

    x = torch.ones(mb * 2**20 // 4, device=device)
    x.sum()
    sync(device)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        sync(device)
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


def write_results(name: str, data: dict[str, Any], markdown: str, results_dir: Path | str | None = None) -> tuple[Path, Path]:
    folder = Path(results_dir) if results_dir else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    js, md = folder / f"{name}.json", folder / f"{name}.md"
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


def load_policy(spec: str) -> tuple[Any, Any]:
    """``(tokenizer, model)`` of a benchmark's ``--model``: ``"smollm2"`` (the default policy) or
    ``"tiny"``, a randomly initialised 2-layer llama on the SmolLM2 tokenizer that runs every code path
    of a benchmark in seconds (its numbers mean nothing)."""
    from tokengym.models import load_causal_lm, load_tokenizer, make_tiny_causal_lm

    if spec == "tiny":
        return make_tiny_causal_lm(load_tokenizer("smollm2"), hidden=64, n_layers=2, n_heads=4, seed=0)
    return load_causal_lm(spec)


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
