"""dinofeat.runtime.devices: which device and precision "auto" picks, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinofeat.errors import InputError
from dinofeat.runtime import devices


@pytest.mark.parametrize("amx, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_on_the_cpu_depends_on_bf16_matrix_units(monkeypatch, amx, expected):
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: amx)
    assert devices.resolve_precision("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize(
    "capability, expected",
    [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16), ((7, 5), torch.float16), ((7, 0), torch.float16)],
    ids=["A100", "H100", "T4", "V100"],
)
def test_auto_precision_on_cuda_is_bf16_where_supported(monkeypatch, capability, expected):
    """Native bf16 (Ampere, 8.0, and later) only: a T4 or V100 would emulate it, slowly, though
    ``torch.cuda.is_bf16_supported()`` says yes."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert devices.resolve_precision("auto", torch.device("cuda")) == expected


def test_auto_precision_on_cuda_looks_at_the_gpu_asked_for(monkeypatch):
    """cuda:1 is a V100 beside an A100 (the current device, cuda:0): fp16 for cuda:1."""
    capabilities = {0: (8, 0), 1: (7, 0)}

    def capability(device=None):
        index = torch.device(device).index if device is not None else None
        return capabilities[0 if index is None else index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert devices.resolve_precision("auto", torch.device("cuda:1")) == torch.float16
    assert devices.resolve_precision("auto", torch.device("cuda:0")) == torch.bfloat16


def test_auto_precision_on_mps_is_fp16():
    assert devices.resolve_precision("auto", torch.device("mps")) == torch.float16


@pytest.mark.parametrize("name, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_explicit_precisions(name, dtype):
    assert devices.resolve_precision(name, torch.device("cpu")) == dtype


def test_unknown_precision_and_device_are_clear_errors():
    with pytest.raises(InputError, match="unknown precision"):
        devices.resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(InputError, match="unknown device"):
        devices.resolve_device("tpu")


def test_auto_device_without_accelerators_is_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="sees no CUDA GPU"):
        devices.resolve_device("cuda")


def test_a_gpu_index_beyond_the_gpus_there_are_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve_device("cuda:1") == torch.device("cuda:1")
    assert devices.resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(InputError, match=r"^device=cuda:5: this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\)$"):
        devices.resolve_device("cuda:5")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError, match=r"^device=cuda:1: this machine has 1 CUDA GPU \(cuda:0 to cuda:0\)$"):
        devices.resolve_device("cuda:1")


def test_a_gpu_index_beyond_the_gpus_there_are_is_one_line_from_the_cli(
    monkeypatch, tmp_path, capsys, vits14_checkpoint
):
    """Not a RuntimeError once the weights are loaded, reported as a bug in dinofeat."""
    from conftest import save_png
    from dinofeat.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    image = save_png(tmp_path / "a.png", np.zeros((28, 28, 3), np.uint8))
    argv = ["extract", str(image), "-o", str(tmp_path / "o.npz"), "--weights", str(vits14_checkpoint)]
    assert main([*argv, "--device", "cuda:5"]) == 2
    err = capsys.readouterr().err
    assert err == "dinofeat extract: error: --device cuda:5: this machine has 2 CUDA GPUs (cuda:0 to cuda:1)\n"


@pytest.mark.parametrize(
    "flags, fast",
    [("fpu avx2 amx_bf16 amx_tile", True), ("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 avx512f", False)],
)
def test_native_bf16_is_read_from_cpuinfo(monkeypatch, tmp_path, flags, fast):
    devices.cpu_has_fast_bf16.cache_clear()
    try:
        fake = tmp_path / "cpuinfo"
        fake.write_text(f"flags\t\t: {flags}\n")
        monkeypatch.setattr(devices, "Path", lambda _: fake)
        assert devices.cpu_has_fast_bf16() is fast
    finally:
        devices.cpu_has_fast_bf16.cache_clear()


def test_frames_per_forward_pass_default_by_device_and_an_asked_batch_wins(monkeypatch):
    from conftest import random_vit
    from dinofeat.features.extractor import Extractor

    assert [devices.default_batch_size(torch.device(d)) for d in ("cpu", "cuda", "mps")] == [1, 8, 8]
    vit = random_vit("dinov2_vits14", depth=1)
    assert Extractor(vit, device="cpu").batch_size == 1
    assert Extractor(vit, device="cpu", batch_size=4).batch_size == 4
    seen = []
    extractor = Extractor(vit, device="cpu", resolution=28)
    monkeypatch.setattr(extractor, "_run_model", lambda batch: seen.append(len(batch)) or _fake_pass(batch))
    extractor.extract_arrays([np.zeros((28, 28, 3), np.uint8)] * 3)
    assert seen == [1, 1, 1]  # one image per forward pass on the CPU


def _fake_pass(batch):
    n = len(batch)
    return torch.zeros(n, 2, 2, 384), torch.zeros(n, 384), torch.zeros(n, 0, 384)
