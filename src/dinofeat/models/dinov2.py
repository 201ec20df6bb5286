"""The DINOv2 vision transformer, with Meta's state-dict key names.

Written by hand rather than imported: ``transformers`` costs ~300 MB and seconds of import time and
resizes the positional embedding differently from the official code, and ``timm`` needs
torchvision. This module reproduces the official ``dinov2`` forward pass exactly (tested against
``transformers`` on random weights) and adds what dense-feature work needs: intermediate layers,
key/query/value facets and overlapping patches (stride < patch size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dinofeat.models.layers import Block, PatchEmbed
from dinofeat.models.registry import ModelSpec
from dinofeat.models.vit import DenseViT


class DinoVisionTransformer(DenseViT):
    """A DINOv2 ViT built from a :class:`~dinofeat.models.registry.ModelSpec`.

    ``depth`` overrides the spec's number of blocks (tests build shallow copies of big models).

    >>> from dinofeat.models.registry import get_spec
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
        grid = patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2)
        antialias = self.spec.interpolate_antialias
        if offset:
            scale = ((gh + offset) / m, (gw + offset) / m)
            patch_pos = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=antialias)
        else:
            patch_pos = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=antialias)
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
