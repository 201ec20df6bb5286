"""How much memory one forward pass needs, how much the machine has, and a refusal before it runs out.

:func:`forward_memory` estimates the peak memory a forward pass of ``batch`` images of one size adds
to the loaded model, from the shapes alone (no allocation). What it counts:

* the activations a block holds at its peak in inference mode: the residual stream, the layer-norm
  output, the fused ``q, k, v`` of this block and the previous one (the block loop keeps it), the
  attention output and projection, the MLP's hidden layer and its activation (SwiGLU: gate, up and
  their product), plus DINOv3's float32 RoPE copies of q and k;
* the attention matrices ``batch x heads x tokens x tokens`` (scores and softmax) **only when the
  attention kernel materialises them**: torch's SDPA "math" path does, its flash and
  memory-efficient kernels (CUDA, and the CPU in recent torch) do not; which one torch picks is
  asked of torch itself (:func:`attention_materialised`);
* the outputs kept: the requested layers' features, the final norm, and their float32 copies;
* the normalised input pixels (float32), which the pass holds to its end.

Not counted: the allocator's caching and fragmentation, the input images and their resized copies,
and what other programs will take meanwhile; the weights are reported but are already in memory.
Measured against the peak resident memory of real forward passes on a CPU (ViT-S/14, B/14 with two
layers' keys, g/14, DINOv3 S/16; flash and math attention), the estimate was 0.86 to 1.03 of it:
enough to refuse a forward pass that would need more memory than there is, not to squeeze out the
last gigabyte.

:func:`available_memory` is the memory a forward pass can still take: on the CPU the kernel's
``MemAvailable`` (and a cgroup limit, in a container), on CUDA the free device memory plus what
torch's allocator holds unused. :func:`check_forward_memory` raises :class:`InputError` with the
estimate, the memory available and what to lower.

>>> import torch
>>> from dinofeat.models.registry import get_spec
>>> from dinofeat.models.dinov2 import DinoVisionTransformer
>>> vit = DinoVisionTransformer(get_spec("dinov2_vits14"), depth=1)
>>> need = forward_memory(vit, 2, (448, 448), dtype=torch.float32, device=torch.device("cpu"))
>>> need.tokens, need.activation_bytes > 0
(1025, True)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from dinofeat.errors import InputError, field
from dinofeat.wording import plural

if TYPE_CHECKING:  # types only: the runtime layer does not import the models at run time
    from dinofeat.models.vit import DenseViT

GB = 1024**3


@dataclass(frozen=True)
class ForwardMemory:
    """The estimate of :func:`forward_memory`, in bytes.

    Attributes:
        batch, size_wh, tokens: what the forward pass runs on (tokens per image, CLS and registers included).
        activation_bytes: activations and kept outputs, without the attention matrices.
        attention_bytes: the attention matrices when the kernel materialises them, else 0.
        weight_bytes: the model's parameters and buffers (already loaded; not part of :attr:`total`).
        materialised: whether the attention kernel materialises the matrices.
    """

    batch: int
    size_wh: tuple[int, int]
    tokens: int
    activation_bytes: int
    attention_bytes: int
    weight_bytes: int
    materialised: bool

    @property
    def total(self) -> int:
        """Bytes the forward pass adds to the loaded model."""
        return self.activation_bytes + self.attention_bytes

    def one_image(self) -> ForwardMemory:
        """The estimate for a batch of one image of the same size (both parts grow linearly with
        the batch, so this is exactly :func:`forward_memory` with ``batch=1``)."""
        return replace(
            self,
            batch=1,
            activation_bytes=self.activation_bytes // self.batch,
            attention_bytes=self.attention_bytes // self.batch,
        )


def model_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers (what :attr:`ForwardMemory.weight_bytes` reports)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def forward_memory(
    model: DenseViT,
    batch: int,
    size_wh: tuple[int, int],
    *,
    stride: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    layers: Sequence[int] = (-1,),
    facet: str = "token",
    weight_bytes: int | None = None,
) -> ForwardMemory:
    """Estimate the peak memory of ``model.forward_features`` on ``batch`` images of ``size_wh``
    processed pixels (see the module docstring for what is counted). ``weight_bytes``: the
    model's :func:`model_bytes`, where the caller has it (it does not change between batches)."""
    device = device or next(model.parameters()).device
    gh, gw = model.grid_size(size_wh[1], size_wh[0], stride)
    tokens = 1 + model.num_registers + gh * gw
    dim, heads = model.spec.embed_dim, model.spec.num_heads
    low = dtype in (torch.bfloat16, torch.float16)
    wide, narrow = 4, (2 if low else 4)  # residual stream and norms stay float32 under autocast
    first = model.blocks[0]
    hidden = 2 * sum(m.out_features for m in first.get_submodule("mlp").children() if isinstance(m, nn.Linear))
    hidden -= 2 * dim  # the last projection back to dim is counted with the stream
    rope = 4 * dim * 4 if model.spec.family == "dinov3" else 0  # float32 copies of q, k and the rotated ones
    per_token = 4 * dim * wide + 9 * dim * narrow + hidden * narrow + rope
    kept = len(layers) * 3 + 2  # features of each requested layer, cat and float copies; final norm
    pixels = batch * 3 * size_wh[0] * size_wh[1] * 4  # the normalised input, float32
    activations = batch * tokens * (per_token + kept * dim * 4) + pixels
    materialised = attention_materialised(device, dtype, dim // heads)
    attention = 2 * batch * heads * tokens * tokens * (4 if not low else 2) if materialised else 0
    weights = model_bytes(model) if weight_bytes is None else weight_bytes
    return ForwardMemory(batch, (size_wh[0], size_wh[1]), tokens, activations, attention, weights, materialised)


@functools.cache
def attention_materialised(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether ``scaled_dot_product_attention`` on ``device`` with ``dtype`` builds the full
    tokens x tokens matrices (the "math" path) rather than a flash or memory-efficient kernel.

    Asked of torch with tiny inputs; when torch cannot say, the answer is yes (the safe side).
    """
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:
        return True
    try:
        probe = torch.zeros(1, 1, 2, head_dim, dtype=dtype, device=device)
        return int(choose(probe, probe, probe)) <= 0  # -1 error, 0 math, 1+ fused kernels
    except Exception:  # noqa: BLE001 - a private torch function: any failure means "don't know"
        return True


def available_memory(device: torch.device) -> int | None:
    """Bytes a forward pass on ``device`` can still take, or None when it cannot be told.

    CPU: ``MemAvailable`` of ``/proc/meminfo`` (else ``os.sysconf``), lowered to what a cgroup
    memory limit leaves (containers). CUDA: free device memory plus the memory torch's caching
    allocator reserved but does not use. MPS: torch's recommended maximum minus what it holds.
    """
    if device.type == "cpu":
        found = [value for value in (_meminfo_available(), _cgroup_available()) if value is not None]
        return min(found) if found else None
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "mps":
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
        except Exception:  # noqa: BLE001 - older torch has neither function (or no torch.mps)
            return None
    return None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """What a cgroup memory limit leaves (v2 ``memory.max``, v1 ``memory.limit_in_bytes``), or None."""
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            cap = Path(limit).read_text().strip()
            if cap == "max" or int(cap) >= 1 << 60:  # no limit
                return None
            return max(0, int(cap) - int(Path(usage).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def check_forward_memory(need: ForwardMemory, device: torch.device, *, one_image: ForwardMemory | None = None) -> None:
    """Raise :class:`InputError` if ``need`` is more than the memory available on ``device``.

    The message states the estimate, what it counts, the memory available and what to lower;
    the estimate for a batch of one (``one_image``, by default :meth:`ForwardMemory.one_image`) is
    quoted for a batch of several.
    """
    available = available_memory(device)
    if available is None or need.total <= available:
        return
    if one_image is None and need.batch > 1:
        one_image = need.one_image()
    w, h = need.size_wh
    parts = f"{_gb(need.attention_bytes)} of it the attention matrices, " if need.materialised else ""
    advice = f"lower {field('max_size')} or {field('resolution')}"
    if need.batch > 1 and one_image is not None:
        advice += f", or {field('batch_size')} (one image at a time needs about {_gb(one_image.total)})"
    raise InputError(
        f"a forward pass of {plural(need.batch, 'image')} at {w}x{h} ({need.tokens} tokens each) would need about "
        f"{_gb(need.total)} of memory ({parts}besides the {_gb(need.weight_bytes)} of loaded weights; "
        f"an estimate), but only {_gb(available)} is available on {device.type}; {advice}"
    )


def _gb(count: int) -> str:
    if count >= GB / 10:
        return f"{count / GB:.1f} GB"
    return f"{count / 2**20:.1f} MB" if count < 10 * 2**20 else f"{count / 2**20:.0f} MB"
