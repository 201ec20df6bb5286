"""What the DINOv2 and DINOv3 ViTs share: :class:`DenseViT` (grid rule, layer indices, random
weights, the block loop that picks a layer's tokens or attention facet) and :class:`ViTOutput`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dinofeat.errors import InputError
from dinofeat.models.layers import LayerScale
from dinofeat.models.registry import ModelSpec
from dinofeat.options import FACETS, resolve_layers

_QKV_INDEX = {"query": 0, "key": 1, "value": 2}
#: A block: tokens (and :meth:`DenseViT.block_inputs`) -> tokens and the stacked q, k, v.
BlockFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
#: :meth:`DenseViT.run_blocks` without its hooks: ``(tokens, extra, wanted, facet, norm)``.
RunBlocksFn = Callable[[torch.Tensor, tuple, tuple[int, ...], str, bool], tuple[list[torch.Tensor], torch.Tensor]]


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
    #: Where the weights were read from (a file, or the hub that gave them); None for weights made
    #: here (random, or a model built in code). Set by :func:`~dinofeat.models.weights.load_model`.
    weights_source: str | None = None

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
        blocks: Sequence[BlockFn] | None = None,
        run_blocks: RunBlocksFn | None = None,
    ) -> ViTOutput:
        """Run the model on normalised images (B, 3, H, W); H and W fit the patch grid.

        ``layers`` picks blocks (0-based, negative from the end). ``facet`` is ``token`` (block
        output, with the final norm if ``norm``) or ``key`` / ``query`` / ``value`` of that block's
        attention (heads concatenated; DINOv3's key and query are taken before RoPE, see
        :mod:`dinofeat.models.dinov3`). Blocks after the deepest requested layer are skipped.

        ``on_block(done, total)`` is called after each block run (``done`` from 1 to ``total``, the
        blocks up to the deepest requested layer): progress for long forward passes, and a point
        where an exception (an interrupt) stops the pass between blocks.

        Compiled runs (:class:`~dinofeat.runtime.compile.CompiledModel`): ``blocks`` run in place
        of :attr:`blocks`, one for each; or ``run_blocks`` (called as ``run_blocks(tokens, extra,
        wanted, facet, norm)``, no ``on_block``) in place of :meth:`run_blocks`.
        """
        if facet not in FACETS:
            raise InputError(f"unknown facet {facet!r}; choose one of {', '.join(FACETS)}")
        stride = stride or self.patch_size
        if not 1 <= stride <= self.patch_size:
            raise InputError(f"stride must be between 1 and the patch size {self.patch_size}, got {stride}")
        wanted = tuple(self.resolve_layers(layers))
        tokens, grid_hw = self.prepare_tokens(x, stride)
        extra = self.block_inputs(grid_hw, stride, x.device)
        run = run_blocks or functools.partial(self.run_blocks, on_block=on_block, blocks=blocks)
        picked, final = run(tokens, extra, wanted, facet, norm)
        first_patch = 1 + self.num_registers
        return ViTOutput(
            patch_tokens=picked,
            cls_token=final[:, 0],
            register_tokens=final[:, 1:first_patch],
            grid_hw=grid_hw,
        )

    def run_blocks(
        self,
        x: torch.Tensor,
        extra: tuple,
        wanted: tuple[int, ...],
        facet: str = "token",
        norm: bool = True,
        *,
        on_block: Callable[[int, int], None] | None = None,
        blocks: Sequence[BlockFn] | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Tokens (B, 1 + R + h*w, C) through the blocks up to the deepest of ``wanted`` (0-based
        indices; ``extra``: :meth:`block_inputs`): each wanted layer's patch tokens (B, h*w, C'),
        in ``wanted``'s order, and the last block's output after the final norm (B, 1 + R + h*w, C).
        The part of :meth:`forward_features` after the tokens are made."""
        first_patch = 1 + self.num_registers
        picked: dict[int, torch.Tensor] = {}
        run: list[BlockFn] = list(self.blocks) if blocks is None else list(blocks)
        run = run[: max(wanted) + 1]
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
        return [picked[i] for i in wanted], self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Final normalised patch tokens (B, h*w, C), like the official ``x_norm_patchtokens``."""
        return self.forward_features(x).patch_tokens[0]
