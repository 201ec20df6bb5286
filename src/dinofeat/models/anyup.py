"""AnyUp, a learned upsampler of dense features (Wimmer et al., ICLR 2026; github.com/wimmerth/anyup,
CC-BY 4.0), written for dinofeat: the same arithmetic as the official model and the same state-dict
key names, so the released checkpoints load strictly; a different attention.

What it computes, for an image ``(B, 3, H, W)`` and patch features ``(B, C, h, w)``:

1. The image encoder (a 1x1 convolution and two residual blocks) gives ``(B, D, H, W)`` (``D = 128``),
   rotated by a 2-D RoPE whose coordinates run from 0 to 1 over the image rows and columns.
2. Queries: the query encoder on that, average-pooled to the output size, then a 3x3 convolution.
3. Keys: the key encoder, pooled to the patch grid, next to the *feature unification* of the
   L2-normalised features (a learned bank of 5x5 filters applied to every channel, a softmax over the
   bank and a mean over channels, so any C gives D channels), merged by the aggregation encoder.
4. Each output pixel attends (RMS-normalised queries and keys, multi-head projections, heads
   averaged) to the patches of its *window*: rows and columns within ``window_ratio`` of the image
   size of the pixel's centre, measured in [0, 1] image coordinates and rounded outwards to patches.
   Its output is the attention-weighted mean of the **unprojected** patch features, so C is kept.

The official code builds a dense ``(pixels, patches)`` mask and attention matrix. Here every pixel
attends only to its window's patches: windows are separable (rows from the pixel's row, columns from
its column), so output rows with the same row window and output columns with the same column window
form tiles that share one window; the keys and features of each tile's window are gathered once and
the tiles are processed in row chunks sized to a memory budget. Masked entries of the dense form
have weight exactly 0, so the two agree to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Channels of the image, query and key encodings (fixed by the released checkpoints).
QK_DIM = 128
#: Attention heads of the released checkpoints.
NUM_HEADS = 4
#: Half the window side, as a fraction of the image side (released checkpoints).
WINDOW_RATIO = 0.1
#: Side of the feature-unification filters, in patches.
LFU_KERNEL = 5
#: Default working-memory budget of the attention and feature unification, in bytes: row chunks are
#: sized so that their intermediate tensors stay below it (one row at least).
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: RoPE base period of the image encoding.
ROPE_THETA = 100.0


class ResBlock(nn.Module):
    """Pre-activation residual block of two 1x1 convolutions (GroupNorm of 8 groups, SiLU)."""

    def __init__(self, channels: int, groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class FeatureUnification(nn.Module):
    """Any number of feature channels -> ``out_channels``: each of a bank of ``out_channels`` learned
    ``k x k`` filters is applied to every channel (zero padding, divided by the number of valid
    taps), a softmax runs across the bank and the result is averaged over the input channels.

    The bank's responses are laid out channel-major (``c * out + o``) and then read as
    ``(out, C)`` before the softmax, exactly as the released model was trained; this class keeps
    that order. Rows of the grid are processed in chunks under ``memory_budget`` bytes."""

    def __init__(self, out_channels: int = QK_DIM, kernel_size: int = LFU_KERNEL) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.basis = nn.Parameter(torch.randn(out_channels, 1, kernel_size, kernel_size))

    def forward(self, features: torch.Tensor, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, out_channels, h, w)``."""
        b, c, h, w = features.shape
        pad = self.kernel_size // 2
        padded = F.pad(features, (pad, pad, pad, pad))
        ones = F.pad(features.new_ones(1, 1, h, w), (pad, pad, pad, pad))
        taps = F.conv2d(ones, features.new_ones(1, 1, self.kernel_size, self.kernel_size))  # (1, 1, h, w)
        weight = self.basis.to(features.dtype).repeat(c, 1, 1, 1)  # (C * out, 1, k, k): channel-major
        row_bytes = 3 * b * c * self.out_channels * w * 4  # responses, softmax and its input, float32
        rows = max(1, memory_budget // max(1, row_bytes))
        out = []
        for top in range(0, h, rows):
            bottom = min(h, top + rows)
            response = F.conv2d(padded[:, :, top : bottom + 2 * pad], weight, groups=c) / taps[:, :, top:bottom]
            response = response.view(b, self.out_channels, c, bottom - top, w)
            out.append(response.softmax(dim=1).mean(dim=2))
        return torch.cat(out, dim=2)


class RoPE2d(nn.Module):
    """2-D rotary encoding of ``dim`` channels: the first half turns with the row coordinate, the
    second with the column one, at ``dim / 4`` frequencies from 1 to ``theta`` turns per image side.
    ``freqs`` is ``(2, dim)`` radians per unit coordinate (a parameter of the checkpoints)."""

    def __init__(self, dim: int = QK_DIM, theta: float = ROPE_THETA) -> None:
        super().__init__()
        self.freqs = nn.Parameter(self.initial_freqs(dim, theta))

    @staticmethod
    def initial_freqs(dim: int, theta: float = ROPE_THETA) -> torch.Tensor:
        """The frequencies the model is built with, ``(2, dim)`` float32 radians."""
        steps = theta ** torch.linspace(0, -1, dim // 4)
        steps = torch.cat([steps, steps])
        freqs = torch.zeros(2, dim)
        freqs[0, : dim // 2] = steps
        freqs[1, dim - dim // 2 :] = steps
        return freqs * 2 * math.pi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``(B, D, H, W)`` by its pixels' coordinates (row and column each from 0 to 1)."""
        _, _, h, w = x.shape
        rows = torch.linspace(0, 1, h, device=x.device, dtype=torch.float32)
        cols = torch.linspace(0, 1, w, device=x.device, dtype=torch.float32)
        freqs = self.freqs.float()
        angle = rows[:, None, None] * freqs[0] + cols[None, :, None] * freqs[1]  # (H, W, D) radians
        angle = angle.permute(2, 0, 1)[None]
        first, second = x.chunk(2, dim=1)
        turned = torch.cat((-second, first), dim=1)
        return x * angle.cos().to(x.dtype) + turned * angle.sin().to(x.dtype)


class _HeadProjections(nn.Module):
    """The query/key/value projections of a multi-head attention, stored as PyTorch's
    ``nn.MultiheadAttention`` stores them (``in_proj_weight`` ``(3D, D)``: rows for q, k, v); only
    q and k are used (the output is a mix of unprojected features), ``out_proj`` is kept for the keys."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def project(self, x: torch.Tensor, which: int) -> torch.Tensor:
        """``(..., D)`` -> its projection ``(..., D)``; ``which`` 0 for queries, 1 for keys."""
        dim = self.in_proj_weight.shape[1]
        rows = slice(which * dim, (which + 1) * dim)
        return F.linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows])


class _CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_q = nn.RMSNorm(dim)
        self.norm_k = nn.RMSNorm(dim)
        self.attention = _HeadProjections(dim)
        self.heads = heads


class WindowCrossAttention(nn.Module):
    """Each output pixel's attention over the patches of its window (see the module docstring)."""

    def __init__(self, dim: int = QK_DIM, heads: int = NUM_HEADS, window_ratio: float = WINDOW_RATIO) -> None:
        super().__init__()
        self.cross_attn = _CrossAttention(dim, heads)
        self.conv2d = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.window_ratio = window_ratio

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> torch.Tensor:
        """Queries ``(B, D, H_out, W_out)``, keys ``(B, D, h, w)``, values ``(B, C, h, w)`` ->
        ``(B, H_out, W_out, C)`` (channels last), in the values' dtype."""
        queries = self.conv2d(queries)
        b, _, out_h, out_w = queries.shape
        _, channels, h, w = values.shape
        keys = self._project(keys, 1)  # (B, heads, h, w, d)
        values = values.permute(0, 2, 3, 1)  # (B, h, w, C)
        tiles = _ColumnTiles.build(out_w, w, self.window_ratio, queries.device)
        out = values.new_empty(b, out_h, out_w, channels)
        for run in window_runs(out_h, h, self.window_ratio):
            self._attend_run(queries, keys, values, run, tiles, out, memory_budget)
        return out

    def _project(self, x: torch.Tensor, which: int) -> torch.Tensor:
        """``(B, D, H, W)`` -> RMS-normalised (in float32), projected and split into heads:
        ``(B, heads, H, W, d)``; ``which`` 0 for queries, 1 for keys."""
        attn = self.cross_attn
        b, dim, h, w = x.shape
        norm = attn.norm_q if which == 0 else attn.norm_k
        projected = attn.attention.project(norm(x.permute(0, 2, 3, 1).float()), which)
        return projected.view(b, h, w, attn.heads, dim // attn.heads).permute(0, 3, 1, 2, 4)

    def _attend_run(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        run: WindowRun,
        tiles: _ColumnTiles,
        out: torch.Tensor,
        memory_budget: int,
    ) -> None:
        """Output rows ``run.start:run.stop`` (one row window) into ``out``, in row chunks under ``memory_budget``.

        The run's window keys ``(B, heads, h_run, w, d)`` and values are gathered once per column
        tile: ``(B, heads, G, window, d)`` and ``(B, G, window, C)``, ``window = h_run * Wc``."""
        b, heads, _, _, head_dim = keys.shape
        channels = values.shape[-1]
        key_rows = run.window_stop - run.window_start
        window = key_rows * tiles.width
        k = tiles.gather(keys[:, :, run.window_start : run.window_stop], dim=3)  # (B, heads, rows, G, Wc, d)
        k = k.permute(0, 1, 3, 2, 4, 5).reshape(b, heads, tiles.count, window, head_dim)
        v = tiles.gather(values[:, run.window_start : run.window_stop], dim=2)  # (B, rows, G, Wc, C)
        v = v.permute(0, 2, 1, 3, 4).reshape(b, tiles.count, window, channels)
        padding = ~tiles.key_valid[:, None, :].expand(-1, key_rows, -1).reshape(tiles.count, 1, window)
        # float32 logits and their softmax per head, the head mean, the queries and the output
        row_bytes = b * tiles.count * tiles.length * 4 * (window * (2 * heads + 1) + heads * head_dim + channels)
        step = max(1, memory_budget // max(1, row_bytes))
        for top in range(run.start, run.stop, step):
            bottom = min(run.stop, top + step)
            q = self._project(queries[:, :, top:bottom], 0)  # (B, heads, rows, W_out, d)
            out[:, top:bottom] = self._attend_rows(q, k, v, padding, tiles).to(out.dtype)

    @staticmethod
    def _attend_rows(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding: torch.Tensor, tiles: _ColumnTiles
    ) -> torch.Tensor:
        """Queries ``(B, heads, rows, W_out, d)`` of one row window against its gathered keys and
        values (:meth:`_attend_run`) -> ``(B, rows, W_out, C)``: heads' softmax weights averaged,
        the unprojected values mixed. ``padding`` ``(G, 1, window)`` marks padded key slots."""
        b, heads, rows, _, head_dim = q.shape
        q = tiles.gather(q, dim=3, pixels=True)  # (B, heads, rows, G, L, d)
        q = q.permute(0, 1, 3, 2, 4, 5).reshape(b, heads, tiles.count, rows * tiles.length, head_dim)
        logits = torch.matmul(q * (1 / math.sqrt(head_dim)), k.transpose(-1, -2))  # (B, heads, G, rows * L, window)
        logits = logits.float().masked_fill(padding, float("-inf"))
        weights = logits.softmax(dim=-1).mean(dim=1).to(v.dtype)  # (B, G, rows * L, window)
        mixed = torch.matmul(weights, v).view(b, tiles.count, rows, tiles.length, v.shape[-1])
        mixed = mixed.permute(0, 2, 1, 3, 4).reshape(b, rows, tiles.count * tiles.length, v.shape[-1])
        return mixed.index_select(2, tiles.pixel_order)


@dataclass(frozen=True)
class WindowRun:
    """Output rows (or columns) ``start:stop`` whose windows are all patches ``window_start:window_stop``."""

    start: int
    stop: int
    window_start: int
    window_stop: int


def window_bounds(out_len: int, grid_len: int, ratio: float = WINDOW_RATIO) -> torch.Tensor:
    """``(out_len, 2)`` int64: for each of ``out_len`` output pixels along one axis, the first and
    one-past-last patch (of ``grid_len``) of its window.

    The pixel centre ``(i + 0.5) / out_len`` in [0, 1] image units, minus and plus ``ratio``, clamped
    to [0, 1] and scaled to patches, rounded down (start) and up (stop); in float32 like the
    reference, so that the windows are the same patches. Never empty for ``ratio > 0``.

    >>> window_bounds(4, 10, 0.1).tolist()
    [[0, 3], [2, 5], [5, 8], [7, 10]]
    """
    centre = (torch.arange(out_len, dtype=torch.float32) + 0.5) / out_len
    start = ((centre - ratio).clamp(0.0, 1.0) * grid_len).floor().long()
    stop = ((centre + ratio).clamp(0.0, 1.0) * grid_len).ceil().long()
    return torch.stack((start, stop), dim=1)


def window_runs(out_len: int, grid_len: int, ratio: float = WINDOW_RATIO) -> list[WindowRun]:
    """Consecutive output pixels along one axis with the same window (windows move monotonically,
    so each window is one run).

    >>> [(r.start, r.stop, r.window_start, r.window_stop) for r in window_runs(6, 2, 0.1)]
    [(0, 2, 0, 1), (2, 4, 0, 2), (4, 6, 1, 2)]
    """
    bounds = window_bounds(out_len, grid_len, ratio).tolist()
    runs: list[WindowRun] = []
    start = 0
    for i in range(1, out_len + 1):
        if i == out_len or bounds[i] != bounds[start]:
            runs.append(WindowRun(start, i, bounds[start][0], bounds[start][1]))
            start = i
    return runs


@dataclass(frozen=True)
class _ColumnTiles:
    """Output columns grouped by column window, padded to one length and one window width.

    ``count`` groups; ``pixel_index`` ``(G, L)`` output columns (padding repeats the last),
    ``key_index`` ``(G, Wc)`` patch columns (padding repeats the last), ``key_valid`` ``(G, Wc)``,
    ``pixel_order`` ``(W_out,)``: where each output column sits in the flattened ``(G * L)``."""

    count: int
    length: int
    width: int
    pixel_index: torch.Tensor
    key_index: torch.Tensor
    key_valid: torch.Tensor
    pixel_order: torch.Tensor

    @classmethod
    def build(cls, out_w: int, grid_w: int, ratio: float, device: torch.device) -> _ColumnTiles:
        runs = window_runs(out_w, grid_w, ratio)
        length = max(r.stop - r.start for r in runs)
        width = max(r.window_stop - r.window_start for r in runs)
        offsets_l, offsets_w = torch.arange(length), torch.arange(width)
        starts = torch.tensor([r.start for r in runs])
        stops = torch.tensor([r.stop for r in runs])
        w_starts = torch.tensor([r.window_start for r in runs])
        w_stops = torch.tensor([r.window_stop for r in runs])
        pixel_index = torch.minimum(starts[:, None] + offsets_l, stops[:, None] - 1)
        key_index = torch.minimum(w_starts[:, None] + offsets_w, w_stops[:, None] - 1)
        key_valid = (w_starts[:, None] + offsets_w) < w_stops[:, None]
        pixel_valid = (starts[:, None] + offsets_l) < stops[:, None]
        pixel_order = torch.nonzero(pixel_valid.reshape(-1))[:, 0]
        return cls(
            len(runs),
            length,
            width,
            pixel_index.to(device),
            key_index.to(device),
            key_valid.to(device),
            pixel_order.to(device),
        )

    def gather(self, x: torch.Tensor, dim: int, *, pixels: bool = False) -> torch.Tensor:
        """Split axis ``dim`` of ``x`` (output columns if ``pixels``, else patch columns) into
        ``(G, L)`` or ``(G, Wc)``."""
        index = self.pixel_index if pixels else self.key_index
        picked = x.index_select(dim, index.reshape(-1))
        return picked.unflatten(dim, tuple(index.shape))


def _encoder(first: nn.Module, dim: int) -> nn.Sequential:
    return nn.Sequential(first, ResBlock(dim), ResBlock(dim))


class AnyUp(nn.Module):
    """The AnyUp upsampler (module docstring). Defaults are those of the released checkpoints
    (``anyup_multi_backbone.pth``, ``anyup_paper.pth``); ``dim`` may be smaller for tests.

    >>> model = AnyUp(dim=16, heads=2).eval()
    >>> model(torch.zeros(1, 3, 28, 42), torch.randn(1, 8, 2, 3), (5, 7)).shape
    torch.Size([1, 8, 5, 7])
    """

    def __init__(
        self,
        dim: int = QK_DIM,
        heads: int = NUM_HEADS,
        window_ratio: float = WINDOW_RATIO,
        lfu_kernel: int = LFU_KERNEL,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.image_encoder = _encoder(nn.Conv2d(3, dim, 1, bias=False), dim)
        self.key_encoder = _encoder(nn.Conv2d(dim, dim, 1, bias=False), dim)
        self.query_encoder = _encoder(nn.Conv2d(dim, dim, 1, bias=False), dim)
        self.key_features_encoder = _encoder(FeatureUnification(dim, lfu_kernel), dim)
        self.cross_decode = WindowCrossAttention(dim, heads, window_ratio)
        self.aggregation = _encoder(nn.Conv2d(2 * dim, dim, 3, padding=1, padding_mode="reflect", bias=False), dim)
        self.rope = RoPE2d(dim)

    def forward(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        output_size_hw: tuple[int, int] | None = None,
        *,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> torch.Tensor:
        """Upsampled features ``(B, C, H_out, W_out)`` (a channels-last view: see :meth:`upsample`)."""
        return self.upsample(image, features, output_size_hw, memory_budget=memory_budget).permute(0, 3, 1, 2)

    def upsample(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        output_size_hw: tuple[int, int] | None = None,
        *,
        values: torch.Tensor | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> torch.Tensor:
        """Features at ``output_size_hw`` (the image's size by default), channels last.

        Args:
            image: ``(B, 3, H, W)`` float, normalised with the ImageNet mean and std, the image the
                features were computed from (at the size the backbone saw).
            features: ``(B, C, h, w)`` patch features, any C, covering the same image.
            output_size_hw: ``(H_out, W_out)`` output pixels covering the image.
            values: ``(B, L, h, w)``, any L, mixed instead of the features with the same attention
                (the attention is the features'; e.g. soft labels of the patches, brought to pixel
                level along the image's edges). None: the features themselves.
            memory_budget: bytes for the intermediate tensors of each chunk of the attention and
                feature unification (the encoders at image size come on top).

        Returns:
            ``(B, H_out, W_out, C)`` in the features' dtype (``(B, H_out, W_out, L)`` in the values'
            with ``values``): each output pixel a weighted mean of the input features (values) of
            its window (so a constant map stays constant).
        """
        out_hw = output_size_hw if output_size_hw is not None else (int(image.shape[-2]), int(image.shape[-1]))
        encoded = self.rope(self.image_encoder(image))
        queries = F.adaptive_avg_pool2d(self.query_encoder(encoded), out_hw)
        keys = F.adaptive_avg_pool2d(self.key_encoder(encoded), (int(features.shape[-2]), int(features.shape[-1])))
        del encoded
        unified = self.key_features_encoder[0](F.normalize(features, dim=1).to(keys.dtype), memory_budget)
        unified = self.key_features_encoder[2](self.key_features_encoder[1](unified))
        keys = self.aggregation(torch.cat([keys, unified], dim=1))
        if values is not None and (values.shape[0], *values.shape[2:]) != (features.shape[0], *features.shape[2:]):
            raise ValueError(f"values have shape {tuple(values.shape)}, the features {tuple(features.shape)}")
        return self.cross_decode(queries, keys, features if values is None else values, memory_budget)
