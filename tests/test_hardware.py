"""Device and precision resolution: measured, cached, and never a silent fallback."""

from __future__ import annotations

import json

import pytest
import torch

from tokengym import hardware


@pytest.fixture(autouse=True)
def unpinned(monkeypatch):
    """These tests are about what "auto" resolves to, so the suite's pins are lifted."""
    for name in ("TOKENGYM_DEVICE", "TOKENGYM_DTYPE", "TOKENGYM_NO_BF16"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENGYM_CACHE", str(tmp_path))
    return tmp_path / "hardware.json"


def fake_cpu(monkeypatch, flags):
    monkeypatch.setattr(hardware, "cpu_info", lambda: {"cpu_model": "Test CPU", "cpu_flags": list(flags),
                                                       "torch_cpu_capability": "AVX512"})


def test_this_machine_resolves_consistently():
    device = hardware.resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = hardware.resolve_dtype("auto", "cpu")
    assert dtype in (torch.float32, torch.bfloat16)
    if not hardware.cpu_has_bf16_units():  # emulated bf16 is ~100x slower: auto must not pick it
        assert dtype == torch.float32
    rec = hardware.hardware_record(device, dtype)
    assert {"cpu_model", "cpu_flags", "torch_cpu_capability", "device", "dtype", "torch"} <= rec.keys()


def test_asked_for_gpu_is_never_silently_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(hardware.DeviceError, match=r"device='cuda' but torch sees no CUDA GPU"):
        hardware.resolve_device("cuda")
    with pytest.raises(hardware.DeviceError, match="cuda:1"):
        hardware.resolve_device("cuda:1")


@pytest.mark.parametrize("bad", ["", "gpu", "tpu:0", 3, None])
def test_bad_device_names_the_setting(bad):
    with pytest.raises(hardware.DeviceError, match="device"):
        hardware.resolve_device(bad)


@pytest.mark.parametrize("bad", ["fp16", "float32", "", None])
def test_bad_dtype_names_the_setting(bad):
    with pytest.raises(hardware.DeviceError, match="dtype must be 'auto', 'fp32' or 'bf16'"):
        hardware.resolve_dtype(bad)


def test_forced_dtypes():
    assert hardware.resolve_dtype("fp32", "cpu") == torch.float32
    assert hardware.resolve_dtype("bf16", "cpu") == torch.bfloat16


def test_cpu_without_bf16_units_is_fp32_without_measuring(cache, monkeypatch):
    fake_cpu(monkeypatch, ["avx2"])
    monkeypatch.setattr(hardware, "measure_bf16_speedup", lambda *a, **k: pytest.fail("measured an emulated bf16"))
    assert hardware.resolve_dtype("auto", "cpu") == torch.float32
    assert not cache.exists()


@pytest.mark.parametrize(("speedup", "expected"), [(5.9, torch.bfloat16), (1.0, torch.float32), (0.01, torch.float32)])
def test_cpu_with_bf16_units_follows_the_measurement_and_caches_it(cache, monkeypatch, speedup, expected):
    fake_cpu(monkeypatch, ["avx512f", "avx512_bf16", "amx_bf16", "amx_tile"])
    calls = []
    monkeypatch.setattr(hardware, "measure_bf16_speedup", lambda *a, **k: calls.append(1) or speedup)
    assert hardware.resolve_dtype("auto", "cpu") == expected
    assert hardware.resolve_dtype("auto", "cpu") == expected
    assert len(calls) == 1  # the second call read the cache
    saved = json.loads(cache.read_text())
    assert [v["speedup"] for v in saved.values()] == [speedup]


def test_damaged_cache_is_measured_again(cache, monkeypatch):
    fake_cpu(monkeypatch, ["amx_bf16"])
    cache.write_text("{not json")
    monkeypatch.setattr(hardware, "measure_bf16_speedup", lambda *a, **k: 3.0)
    assert hardware.resolve_dtype("auto", "cpu") == torch.bfloat16
    assert json.loads(cache.read_text())


def test_cuda_auto_dtype_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.resolve_dtype("auto", "cuda") == torch.float32


def test_micro_benchmark_runs():
    assert hardware.measure_bf16_speedup(size=64, repeats=1) > 0


def test_the_suite_pins_auto_to_cpu_fp32(monkeypatch):
    monkeypatch.setenv("TOKENGYM_DEVICE", "cpu")
    monkeypatch.setenv("TOKENGYM_DTYPE", "fp32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.resolve_device("auto") == torch.device("cpu")
    assert hardware.resolve_dtype("auto", "cuda") == torch.float32
    monkeypatch.setenv("TOKENGYM_DTYPE", "fp16")
    with pytest.raises(hardware.DeviceError, match="TOKENGYM_DTYPE"):
        hardware.resolve_dtype("auto", "cpu")
