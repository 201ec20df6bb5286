"""The DINOv2 vision transformer, with Meta's state-dict key names.

Written by hand rather than imported: ``transformers`` costs ~300 MB and seconds of import time and
resizes the positional embedding differently from the official code, and ``timm`` needs
torchvision. This module reproduces the official ``dinov2`` forward pass exactly (tested against
``transformers`` on random weights) and adds what dense-feature work needs: intermediate layers,
key/query/value facets and overlapping patches (stride < patch size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dinofeat.errors import InputError
from dinofeat.options import FACETS, resolve_layers
from dinofeat.registry import ModelSpec

_QKV_INDEX = {"query": 0, "key": 1, "value": 2}


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) -> output (B, N, C) and the stacked q, k, v (3, B, heads, N, C / heads)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), qkv


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """The giant model's MLP: packed gate+up projection ``w12`` and down projection ``w3``;
    ``hidden`` is the width of each (:attr:`~dinofeat.registry.ModelSpec.ffn_hidden`)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, ffn: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, mlp_hidden) if ffn == "swiglu" else Mlp(dim, mlp_hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attended, qkv = self.attn(self.norm1(x))
        x = x + self.ls1(attended)
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x, qkv


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        """(B, 3, H, W) -> (B, h*w, C); a stride below the patch size gives overlapping patches."""
        x = F.conv2d(x, self.proj.weight, self.proj.bias, stride=stride)
        return x.flatten(2).transpose(1, 2)


@dataclass
class ViTOutput:
    """What :meth:`DinoVisionTransformer.forward_features` returns.

    ``patch_tokens[i]`` is (B, h*w, C) for the i-th requested layer, rows of the grid first;
    ``cls_token`` (B, C) and ``register_tokens`` (B, R, C) come from the deepest layer computed,
    after the final norm.
    """

    patch_tokens: list[torch.Tensor]
    cls_token: torch.Tensor
    register_tokens: torch.Tensor
    grid_hw: tuple[int, int]


class DenseViT(nn.Module):
    """What the DINOv2 and DINOv3 ViTs share: the grid rule, layer indices, random weights and the
    block loop that picks a layer's tokens or attention facet.

    A subclass builds ``patch_embed``, ``blocks`` and ``norm`` and implements
    :meth:`prepare_tokens`; :meth:`block_inputs` gives what every block takes besides the tokens
    (nothing for DINOv2, the RoPE sines and cosines for DINOv3).
    """

    spec: ModelSpec
    patch_size: int
    blocks: nn.ModuleList
    norm: nn.LayerNorm

    @property
    def num_registers(self) -> int:
        return self.spec.num_registers

    def grid_size(self, height: int, width: int, stride: int | None = None) -> tuple[int, int]:
        """Feature-grid (rows, cols) for an input of ``height`` x ``width`` pixels."""
        stride = stride or self.patch_size
        return (height - self.patch_size) // stride + 1, (width - self.patch_size) // stride + 1

    def resolve_layers(self, layers: Sequence[int]) -> list[int]:
        """Turn layer indices (negative counts from the end, -1 = last block) into 0-based ones
        (of this model's blocks, fewer than its spec's where it was built with a ``depth``)."""
        return resolve_layers(layers, len(self.blocks))

    def prepare_tokens(self, x: torch.Tensor, stride: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, 3, H, W) -> tokens (B, 1 + R + h*w, C): CLS, registers, patches; and the grid."""
        raise NotImplementedError

    def block_inputs(self, grid_hw: tuple[int, int], stride: int, device: torch.device) -> tuple:
        """What every block takes after the tokens, for a grid of patches at ``stride``."""
        return ()

    def normal_generator(self, seed: int) -> Callable[[torch.Tensor, float], None]:
        """``normal(t, std)``: fill ``t`` in place with a normal clamped to 2 std, drawn from ``seed``."""
        gen = torch.Generator().manual_seed(seed)

        def normal(t: torch.Tensor, std: float) -> None:
            with torch.no_grad():
                t.copy_(torch.randn(t.shape, generator=gen).clamp_(-2, 2) * std)

        return normal

    def init_layers(self, normal: Callable[[torch.Tensor, float], None], layerscale: float) -> None:
        """The official scheme for every layer: linear and conv weights N(0, 0.02) and zero biases,
        LayerNorms the identity, every LayerScale ``layerscale``."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                normal(module.weight, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, LayerScale):
                nn.init.constant_(module.gamma, layerscale)

    def forward_features(
        self,
        x: torch.Tensor,
        *,
        layers: Sequence[int] = (-1,),
        facet: str = "token",
        stride: int | None = None,
        norm: bool = True,
        on_block: Callable[[int, int], None] | None = None,
    ) -> ViTOutput:
        """Run the model on normalised images (B, 3, H, W); H and W fit the patch grid.

        ``layers`` picks blocks (0-based, negative from the end). ``facet`` is ``token`` (block
        output, with the final norm if ``norm``) or ``key`` / ``query`` / ``value`` of that block's
        attention (heads concatenated; DINOv3's key and query are taken before RoPE, see
        :mod:`dinofeat.dinov3`). Blocks after the deepest requested layer are skipped.

        ``on_block(done, total)`` is called after each block run (``done`` from 1 to ``total``, the
        blocks up to the deepest requested layer): progress for long forward passes, and a point
        where an exception (an interrupt) stops the pass between blocks.
        """
        if facet not in FACETS:
            raise InputError(f"unknown facet {facet!r}; choose one of {', '.join(FACETS)}")
        stride = stride or self.patch_size
        if not 1 <= stride <= self.patch_size:
            raise InputError(f"stride must be between 1 and the patch size {self.patch_size}, got {stride}")
        wanted = self.resolve_layers(layers)
        x, grid_hw = self.prepare_tokens(x, stride)
        extra = self.block_inputs(grid_hw, stride, x.device)
        first_patch = 1 + self.num_registers
        picked: dict[int, torch.Tensor] = {}
        run = self.blocks[: max(wanted) + 1]
        for index, block in enumerate(run):
            x, qkv = block(x, *extra)
            if on_block is not None:
                on_block(index + 1, len(run))
            if index not in wanted:
                continue
            if facet == "token":
                picked[index] = (self.norm(x) if norm else x)[:, first_patch:]
            else:
                part = qkv[_QKV_INDEX[facet]]  # (B, heads, N, C/heads)
                picked[index] = part.transpose(1, 2).flatten(2)[:, first_patch:]
        final = self.norm(x)
        return ViTOutput(
            patch_tokens=[picked[i] for i in wanted],
            cls_token=final[:, 0],
            register_tokens=final[:, 1:first_patch],
            grid_hw=grid_hw,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Final normalised patch tokens (B, h*w, C), like the official ``x_norm_patchtokens``."""
        return self.forward_features(x).patch_tokens[0]


class DinoVisionTransformer(DenseViT):
    """A DINOv2 ViT built from a :class:`~dinofeat.registry.ModelSpec`.

    ``depth`` overrides the spec's number of blocks (tests build shallow copies of big models).

    >>> from dinofeat.registry import get_spec
    >>> vit = DinoVisionTransformer(get_spec("dinov2_vits14"), depth=1).eval()
    >>> out = vit.forward_features(torch.zeros(1, 3, 28, 42))
    >>> out.grid_hw, tuple(out.patch_tokens[0].shape)
    ((2, 3), (1, 6, 384))
    """

    def __init__(self, spec: ModelSpec, depth: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        dim = spec.embed_dim
        self.patch_size = spec.patch_size
        self.patch_embed = PatchEmbed(spec.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + spec.pos_grid**2, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, spec.num_registers, dim)) if spec.num_registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # used in training only; kept for checkpoints
        self.blocks = nn.ModuleList(
            Block(dim, spec.num_heads, spec.ffn_hidden, spec.ffn) for _ in range(spec.depth if depth is None else depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def init_random(self, seed: int = 0, layerscale: float = 1.0) -> DinoVisionTransformer:
        """Fill with random weights (official initialisation scheme), deterministically per seed."""
        normal = self.normal_generator(seed)
        self.init_layers(normal, layerscale)
        normal(self.pos_embed, 0.02)
        normal(self.cls_token, 1e-6)
        if self.register_tokens is not None:
            normal(self.register_tokens, 1e-6)
        return self

    def interpolate_pos_encoding(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The (1, 1 + h*w, C) positional embedding for a grid of ``grid_hw`` patches.

        Follows the official rule: bicubic resize of the 37x37 grid, with the scale factor
        ``(n + 0.1) / 37`` per axis and no antialias for plain models, and an output size with
        antialias for register models. A 37x37 grid is returned unchanged.
        """
        gh, gw = grid_hw
        m = self.spec.pos_grid
        if (gh, gw) == (m, m):
            return self.pos_embed
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        offset = self.spec.interpolate_offset
        if offset:
            resize = {"scale_factor": ((gh + offset) / m, (gw + offset) / m)}
        else:
            resize = {"size": (gh, gw)}
        patch_pos = F.interpolate(
            patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.spec.interpolate_antialias,
            **resize,
        )
        if tuple(patch_pos.shape[-2:]) != (gh, gw):  # pragma: no cover - guards the float kludge
            raise RuntimeError(f"positional embedding resized to {tuple(patch_pos.shape[-2:])}, not {(gh, gw)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x: torch.Tensor, stride: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, 3, H, W) -> tokens (B, 1 + R + h*w, C): CLS, registers, patches."""
        stride = stride or self.patch_size
        grid_hw = self.grid_size(x.shape[-2], x.shape[-1], stride)
        tokens = self.patch_embed(x, stride)
        tokens = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(grid_hw).to(tokens.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(x.shape[0], -1, -1)
            tokens = torch.cat((tokens[:, :1], regs, tokens[:, 1:]), dim=1)
        return tokens, grid_hw


def build_model(spec: ModelSpec, depth: int | None = None) -> DenseViT:
    """The model class of ``spec``'s family, untrained: a :class:`DinoVisionTransformer` (DINOv2) or
    a :class:`~dinofeat.dinov3.DinoV3VisionTransformer` (DINOv3). Both have the same interface.

    >>> from dinofeat.registry import get_spec
    >>> type(build_model(get_spec("dinov3_vits16"), depth=1)).__name__
    'DinoV3VisionTransformer'
    """
    if spec.family == "dinov3":
        from dinofeat.dinov3 import DinoV3VisionTransformer

        return DinoV3VisionTransformer(spec, depth=depth)
    return DinoVisionTransformer(spec, depth=depth)


def count_parameters(spec: ModelSpec) -> int:
    """Number of parameters of the full model, counted without allocating it."""
    with torch.device("meta"):
        model = build_model(spec)
    return sum(p.numel() for p in model.parameters())
