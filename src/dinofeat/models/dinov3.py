"""The DINOv3 vision transformer, with Meta's state-dict key names.

Written by hand, like :mod:`dinofeat.vit`, and tested against ``transformers``' ``DINOv3ViTModel``
on random weights. It differs from DINOv2 in these ways:

* No learned positional embedding: an axial rotary embedding (RoPE) rotates the **query and key
  of the patch tokens** in every block; the CLS and the 4 storage (register) tokens are not
  rotated. Token order is ``[CLS, storage tokens, patches]``.
* One fused ``qkv`` projection whose key bias is multiplied by a fixed ``bias_mask`` (1 for q and
  v, 0 for k), so the key bias stored in Meta's checkpoints has no effect; the 7B has no qkv bias.
* LayerNorm eps 1e-5, LayerScale on both branches, SwiGLU as three matrices ``w1`` (gate), ``w2``
  (up) and ``w3`` (down).

RoPE conventions (those of Meta's ``dinov3/layers/rope_position_encoding.py``)
-----------------------------------------------------------------------------
* Each patch gets a coordinate ``(y, x)`` in ``[-1, 1]``: its centre in the processed image,
  divided per axis by the extent the patches cover, then mapped ``c -> 2c - 1``. At stride 16
  patch ``j`` of ``n`` has centre ``16 j + 8`` of ``16 n`` pixels, which is the official
  ``(j + 0.5) / n``. With overlapping patches (stride ``s`` < 16) the extent is
  ``(n - 1) s + 16`` pixels, the whole image once it is resized to the grid, so a stride-8 patch
  that coincides with a stride-16 patch gets the same coordinate: no resizing of anything is
  needed. (Pixels beyond the last patch are ignored, as the official code's integer division
  ignores them.)
* ``D = head_dim``. There are ``D / 4`` periods ``base ** (2 i / (D / 2))``, ``i = 0 .. D/4 - 1``,
  base 100. The angles ``2 pi c / period`` are laid out per token as ``[y angles, x angles]``
  (``D / 2`` values) and tiled twice to ``D``; the rotation is the ``rotate_half`` kind, pairing
  channel ``d`` with channel ``d + D/2``: ``x * cos + rotate_half(x) * sin`` with
  ``rotate_half([a, b]) = [-b, a]``.
* Angles, sin, cos and the rotation itself are computed in float32 even under autocast (as the
  official code does; ``transformers`` casts sin/cos to the input dtype); the rotated q and k are
  cast back to the dtype the projection produced.
* The training-time coordinate shift, jitter and rescale augmentations are not implemented: they
  never run at inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dinofeat.models.layers import LayerScale, Mlp, PatchEmbed
from dinofeat.models.registry import ModelSpec
from dinofeat.models.vit import DenseViT

ROPE_BASE = 100.0  # every released DINOv3 ViT
LAYER_NORM_EPS = 1e-5


def rope_periods(head_dim: int, base: float = ROPE_BASE, device: torch.device | None = None) -> torch.Tensor:
    """The ``head_dim / 4`` RoPE periods ``base ** (2 i / (head_dim / 2))``, float32."""
    if head_dim % 4:
        raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
    exponents = 2 * torch.arange(head_dim // 4, dtype=torch.float32, device=device) / (head_dim // 2)
    return base**exponents


def rope_coordinates(
    grid_hw: tuple[int, int], patch_size: int, stride: int, device: torch.device | None = None
) -> torch.Tensor:
    """``(h * w, 2)`` float32 ``(y, x)`` RoPE coordinates in [-1, 1] of a grid of patches, rows first.

    A patch's coordinate is its centre in processed pixels divided by the extent the grid covers,
    ``(n - 1) * stride + patch_size`` per axis, then mapped to [-1, 1].

    >>> rope_coordinates((1, 2), 16, 16).tolist()  # centres 8 and 24 of 32 px: (j + 0.5) / 2 -> 2c - 1
    [[0.0, -0.5], [0.0, 0.5]]
    >>> rope_coordinates((1, 3), 16, 8)[:, 1].tolist()  # stride 8 on the same 32 px
    [-0.5, 0.0, 0.5]
    """
    axes = []
    for n in grid_hw:
        extent = (n - 1) * stride + patch_size
        centres = torch.arange(n, dtype=torch.float32, device=device) * stride + patch_size / 2
        axes.append(2.0 * (centres / extent) - 1.0)
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).flatten(0, 1)


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


class RopeEmbedding(nn.Module):
    """Axial rotary position embedding; no learned weights.

    ``periods`` is a buffer only because Meta's checkpoints store it (``rope_embed.periods``).
    """

    periods: torch.Tensor

    def __init__(self, head_dim: int, base: float = ROPE_BASE) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.register_buffer("periods", rope_periods(head_dim, base), persistent=True)

    def forward(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 2)`` coordinates ``(y, x)`` -> ``sin``, ``cos``, each ``(N, head_dim)`` float32."""
        with _no_autocast(coords.device):
            periods = self.periods.float()
            angles = 2 * math.pi * coords.float()[:, :, None] / periods[None, None, :]  # (N, 2, D/4)
            angles = angles.flatten(1, 2).tile(2)  # (N, D): [y, x, y, x]
            return torch.sin(angles), torch.cos(angles)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[a, b] -> [-b, a]`` along the last dimension (halves, not interleaved pairs)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, prefix: int) -> torch.Tensor:
    """Rotate tokens ``prefix:`` of ``x`` (B, heads, N, D) in float32; the first ``prefix`` stay as they are."""
    with _no_autocast(x.device):
        patches = x[..., prefix:, :].float()
        rotated = (patches * cos + rotate_half(patches) * sin).to(x.dtype)
    return torch.cat((x[..., :prefix, :], rotated), dim=-2)


class KeyMaskedLinear(nn.Linear):
    """The fused qkv projection: its bias is multiplied by ``bias_mask`` (1 for q and v, 0 for k)."""

    bias_mask: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__(dim, 3 * dim, bias=True)
        self.register_buffer("bias_mask", self.key_mask(dim), persistent=True)

    @staticmethod
    def key_mask(dim: int) -> torch.Tensor:
        """``(3 * dim,)``: 1 for the q and v biases, 0 for the k bias."""
        mask = torch.ones(3 * dim)
        mask[dim : 2 * dim] = 0
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias * self.bias_mask.to(self.bias.dtype))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = KeyMaskedLinear(dim) if qkv_bias else nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) -> output (B, N, C) and q, k, v **before RoPE** (3, B, heads, N, C / heads).

        ``rope`` is ``(sin, cos)`` for the last ``len(sin)`` tokens (the patches).
        """
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        sin, cos = rope
        prefix = n - sin.shape[0]
        q, k = apply_rope(qkv[0], sin, cos, prefix), apply_rope(qkv[1], sin, cos, prefix)
        out = F.scaled_dot_product_attention(q, k, qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), qkv


class SwiGLU(nn.Module):
    """``w3(silu(w1 x) * w2 x)``: Meta's DINOv3 layout (three matrices; DINOv2 packs ``w12``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Block(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        dim = spec.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, spec.num_heads, spec.qkv_bias)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = SwiGLU(dim, spec.ffn_hidden) if spec.ffn == "swiglu" else Mlp(dim, spec.ffn_hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        attended, qkv = self.attn(self.norm1(x), rope)
        x = x + self.ls1(attended)
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x, qkv


class DinoV3VisionTransformer(DenseViT):
    """A DINOv3 ViT built from a :class:`~dinofeat.models.registry.ModelSpec`; the interface of
    :class:`~dinofeat.models.dinov2.DinoVisionTransformer`.

    ``depth`` overrides the spec's number of blocks (tests build shallow copies of big models).
    The key and query facets of :meth:`forward_features` are taken **before** RoPE: the rotation
    depends only on a patch's position, so unrotated vectors describe content alike at every
    position (what matching wants); the key facet has no bias (``bias_mask``). Checkpoints of
    Meta's ViT-L SAT-493M and ViT-7B also carry ``local_cls_norm.*``, a norm used in training
    only; :func:`dinofeat.models.weights.load_state` accepts and drops it.

    >>> from dinofeat.models.registry import get_spec
    >>> vit = DinoV3VisionTransformer(get_spec("dinov3_vits16"), depth=1).init_random().eval()
    >>> out = vit.forward_features(torch.zeros(1, 3, 32, 48))
    >>> out.grid_hw, tuple(out.patch_tokens[0].shape), tuple(out.register_tokens.shape)
    ((2, 3), (1, 6, 384), (1, 4, 384))
    """

    def __init__(self, spec: ModelSpec, depth: int | None = None) -> None:
        super().__init__()
        if spec.family != "dinov3":
            raise ValueError(f"{spec.name} is not a DINOv3 model")
        self.spec = spec
        dim = spec.embed_dim
        self.patch_size = spec.patch_size
        self.patch_embed = PatchEmbed(spec.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, spec.num_registers, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # used in training only; kept for checkpoints
        self.rope_embed = RopeEmbedding(dim // spec.num_heads)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth if depth is None else depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def init_random(self, seed: int = 0, layerscale: float = 1.0) -> DinoV3VisionTransformer:
        """Fill with random weights (DINOv2-style scheme), deterministically per seed; the fixed
        buffers (RoPE periods, key bias masks) get their values too, so a model made with
        ``to_empty`` is complete afterwards."""
        normal = self.normal_generator(seed)
        self.init_layers(normal, layerscale)
        normal(self.cls_token, 0.02)
        normal(self.storage_tokens, 0.02)
        nn.init.zeros_(self.mask_token)
        with torch.no_grad():
            self.rope_embed.periods.copy_(rope_periods(self.rope_embed.head_dim, self.rope_embed.base))
            for module in self.modules():
                if isinstance(module, KeyMaskedLinear):
                    module.bias_mask.copy_(module.key_mask(module.in_features))
        return self

    def block_inputs(self, grid_hw: tuple[int, int], stride: int, device: torch.device) -> tuple:
        """``(rope,)``: every block rotates its patches' queries and keys by :meth:`rope`."""
        return (self.rope(grid_hw, stride, device),)

    def rope(self, grid_hw: tuple[int, int], stride: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sin, cos)``, each ``(h * w, head_dim)`` float32, for a grid of patches at ``stride``."""
        return self.rope_embed(rope_coordinates(grid_hw, self.patch_size, stride, device))

    def prepare_tokens(self, x: torch.Tensor, stride: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, 3, H, W) -> tokens (B, 1 + R + h*w, C): CLS, storage tokens, patches."""
        stride = stride or self.patch_size
        grid_hw = self.grid_size(x.shape[-2], x.shape[-1], stride)
        tokens = self.patch_embed(x, stride)
        batch = x.shape[0]
        # under autocast the float32 tokens promote the patch embedding to float32, as officially
        prefix = (self.cls_token.expand(batch, -1, -1), self.storage_tokens.expand(batch, -1, -1))
        return torch.cat((*prefix, tokens), dim=1), grid_hw
