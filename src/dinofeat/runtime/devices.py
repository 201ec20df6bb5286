"""Choosing the device and numeric precision the model runs in."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from dinofeat.errors import InputError, field
from dinofeat.options import CPU_BATCH_SIZE, DEVICES, GPU_BATCH_SIZE, PRECISIONS

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_name(dtype: torch.dtype) -> str:
    """The ``precision`` option's name of ``dtype`` (``torch.bfloat16`` -> ``"bf16"``): what a run
    used once ``"auto"`` was resolved."""
    names = {value: name for name, value in _DTYPES.items()}
    return names.get(dtype, str(dtype).replace("torch.", ""))


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable device is an error."""
    if isinstance(name, torch.device):
        return name
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise InputError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for, but this torch build sees no CUDA GPU")
    if kind == "cuda" and ":" in name:
        index, count = name.partition(":")[2], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            gpus = f"{count} CUDA GPU{'s' if count != 1 else ''}"
            raise InputError(f"{field('device', name)}: this machine has {gpus} (cuda:0 to cuda:{count - 1})")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' was asked for, but Apple MPS is not available here")
    return torch.device(name)


def default_batch_size(device: torch.device) -> int:
    """Images per forward pass when none is asked for: :data:`~dinofeat.options.CPU_BATCH_SIZE` on
    the CPU, :data:`~dinofeat.options.GPU_BATCH_SIZE` on CUDA and MPS.

    >>> default_batch_size(torch.device("cpu")), default_batch_size(torch.device("cuda"))
    (1, 8)
    """
    return CPU_BATCH_SIZE if device.type == "cpu" else GPU_BATCH_SIZE


#: CPU flags of native bf16 matrix or dot-product instructions: Intel AMX, and AVX512-BF16 (AMD Zen 4
#: and later, Intel Cooper Lake and later). With them bf16 measured 1.5-2.0x faster than fp32 (ViT-S
#: on a 2-core Zen 4 EPYC, bench_extract.py); without them bf16 is emulated and 4-6x slower (Zen 3).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with one of :data:`BF16_CPU_FLAGS` (Linux ``/proc/cpuinfo``), where bf16 beats fp32."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text(errors="ignore").split())
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


#: CUDA compute capability (major) from which bf16 is native: Ampere (A100, RTX 30xx) and later. Older
#: GPUs (V100 7.0, T4 7.5) only emulate it, slowly (``torch.cuda.is_bf16_supported()`` counts
#: emulation as support); they get fp16.
BF16_CUDA_CAPABILITY = 8


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA GPUs with native bf16 (compute capability :data:`BF16_CUDA_CAPABILITY` or
    more, of the GPU asked for), fp16 on older ones and on MPS; on the CPU bf16 where it has native
    bf16 instructions (:func:`cpu_has_fast_bf16`), fp32 otherwise."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return _DTYPES[precision]
    if device.type == "cuda":
        major, _minor = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= BF16_CUDA_CAPABILITY else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed-precision context for ``dtype``; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
