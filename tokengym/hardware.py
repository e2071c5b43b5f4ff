"""What the machine can do, and the device and precision a run uses (``device="auto"``, ``dtype="auto"``).

CPUs differ more than their names suggest: with AMX or AVX512-BF16 a bf16 matmul runs ~6x faster
than fp32, without them (e.g. AVX2 only) bf16 is emulated and ~100x *slower*. So ``dtype="auto"``
never guesses from the name:

* on CUDA it picks bf16 when the GPU supports it (``torch.cuda.is_bf16_supported()``), else fp32;
* on CPU it picks bf16 only when the CPU has AMX or AVX512-BF16 **and** a one-off micro-benchmark
  (a bf16 vs fp32 matmul, ~0.5 s) shows bf16 at least 1.3x faster. The verdict is cached per
  machine (CPU model, flags, torch version) in ``cache_dir()/hardware.json``.

``device="auto"`` is CUDA when ``torch.cuda.is_available()``, else CPU. ``TOKENGYM_DEVICE`` and
``TOKENGYM_DTYPE`` pin what ``"auto"`` means (the test suite pins CPU and fp32, so that its exactness
checks hold on a GPU machine too; the device tests ask for the GPU explicitly). A device asked for by name is
used or refused with one clear line: a user who asked for a GPU never silently gets the CPU.

bf16 here means *autocast*: the weights and the optimiser stay fp32 (master weights), the matmuls
run in bf16, and tokengym computes log-softmax, ratios, advantages and KL in fp32 (see
``agents.policy.token_logprobs``), because those differences of log-probs are where bf16's three
significant digits would show up as ratio noise.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Literal

import torch

DeviceSpec = str  # "auto", "cpu", "cuda", "cuda:N"
DtypeSpec = Literal["auto", "fp32", "bf16"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# bf16 must beat fp32 by this factor in the micro-benchmark to be chosen: below it the casts and the
# fp32 log-softmax that autocast adds around the matmuls eat the gain.
BF16_MIN_SPEEDUP = 1.3
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


class DeviceError(ValueError):
    """A device or dtype that this machine cannot provide; the message names the setting."""


def cpu_info() -> dict[str, Any]:
    """CPU model, the flags that decide bf16 speed, and torch's CPU capability."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: the model from platform, no flags
        pass
    return {"cpu_model": model, "cpu_flags": [f for f in _CPU_FLAGS if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def cpu_has_bf16_units(info: dict[str, Any] | None = None) -> bool:
    """True when the CPU has native bf16 matmul instructions (AMX tiles or AVX512-BF16)."""
    flags = set((info or cpu_info())["cpu_flags"])
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def measure_bf16_speedup(size: int = 1024, repeats: int = 3) -> float:
    """fp32 time / bf16 time of a ``size`` x ``size`` matmul on this CPU (best of ``repeats``)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        torch.mm(x, y)  # warm-up: first calls pick kernels and allocate
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(x, y)
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(a, b) / best(a.bfloat16(), b.bfloat16())


def _cache_file() -> Path:
    from tokengym.models import cache_dir

    return cache_dir() / "hardware.json"


def cpu_bf16_is_fast(use_cache: bool = True) -> bool:
    """Whether bf16 autocast pays on this CPU: native bf16 units *and* a measured speed-up >= 1.3x.

    A CPU without the units is answered without measuring (its bf16 is emulated). The measurement
    is cached per (CPU model, flags, torch version); ``use_cache=False`` measures again.
    """
    info = cpu_info()
    if not cpu_has_bf16_units(info):
        return False
    key = f"{info['cpu_model']}|{','.join(info['cpu_flags'])}|{torch.__version__}"
    path = _cache_file()
    cache: dict[str, Any] = {}
    if use_cache and path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (ValueError, OSError):
            cache = {}  # a damaged cache is measured again and rewritten
        if isinstance(cache, dict) and isinstance(cache.get(key), dict) and "speedup" in cache[key]:
            return float(cache[key]["speedup"]) >= BF16_MIN_SPEEDUP
    speedup = measure_bf16_speedup()
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"speedup": speedup, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        from tokengym.utils import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=1))
    except OSError:  # a read-only cache only costs a re-measurement next time
        pass
    return speedup >= BF16_MIN_SPEEDUP


def resolve_device(spec: DeviceSpec | torch.device = "auto", setting: str = "device") -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; a named device is checked, never replaced."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str) or not spec:
        raise DeviceError(f"{setting} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    if spec == "auto":
        pinned = os.environ.get("TOKENGYM_DEVICE")  # the test suite pins "auto" to the CPU (tests/conftest.py)
        if pinned and pinned != "auto":
            return resolve_device(pinned, setting=f"{setting} (TOKENGYM_DEVICE)")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{setting} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{setting}={spec!r} but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                              "use device='auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{setting}={spec!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type not in ("cpu", "meta"):
        raise DeviceError(f"{setting}={spec!r}: tokengym runs on 'cpu' or 'cuda'")
    return device


def resolve_dtype(spec: DtypeSpec | str = "auto", device: torch.device | str = "cpu",
                  setting: str = "dtype") -> torch.dtype:
    """The compute precision for ``device``: ``"fp32"``/``"bf16"`` as asked, ``"auto"`` as measured."""
    if spec not in ("auto", *DTYPES):
        raise DeviceError(f"{setting} must be 'auto', 'fp32' or 'bf16', got {spec!r}")
    device = torch.device(device)
    pinned = os.environ.get("TOKENGYM_DTYPE")  # the test suite pins "auto" to fp32 (tests/conftest.py)
    if spec == "auto" and pinned and pinned != "auto":
        spec = pinned
        if spec not in DTYPES:
            raise DeviceError(f"TOKENGYM_DTYPE must be 'fp32' or 'bf16', got {spec!r}")
    if spec != "auto":
        return DTYPES[spec]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and os.environ.get("TOKENGYM_NO_BF16") != "1":
        return torch.bfloat16 if cpu_bf16_is_fast() else torch.float32
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))


def hardware_record(device: torch.device | None = None, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """What a result must record about the machine it was measured on."""
    rec: dict[str, Any] = {**cpu_info(), "cpus": os.cpu_count(), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        rec["gpu"] = torch.cuda.get_device_name(0)
    if device is not None:
        rec["device"] = str(device)
    if dtype is not None:
        rec["dtype"] = dtype_name(dtype)
    return rec
