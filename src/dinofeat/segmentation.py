"""Masks from DINO features: label propagation through videos and image sets, and masks from clicks.

Labels are integers: 0 the background, 1 to :data:`MAX_LABEL` (254) objects, :data:`LABEL_VOID`
(255) "void" (pixels ignored, as DAVIS does). On the patch grid labels are *soft*: a ``(h, w, L)``
float32 tensor whose row ``[i, j]`` holds patch (i, j)'s share of every label ``0 .. L - 1``
(``L`` counts the background).

API (torch, no files):

* ``LABEL_VOID = 255``, ``MAX_LABEL = 254``.
* ``mask_to_patch_labels(mask: np.ndarray[H, W] uint8, fmap: FeatureMap, num_labels: int) -> torch.Tensor``
  ``(h, w, num_labels)`` float32: each patch's share of every label over the patch's exact footprint
  in original pixels (FeatureMap's geometry; void pixels excluded from the shares; an all-void
  patch gets an all-zero row). No resize-then-nearest shortcut.
* ``patch_labels_to_mask(soft: torch.Tensor[h, w, L], fmap: FeatureMap)
  -> tuple[np.ndarray[H, W] uint8, np.ndarray[H, W] float32]``
  each original pixel reads the soft labels bilinearly at its exact grid position (the rule of
  :meth:`FeatureMap.sample` / :meth:`FeatureMap.upsample`): argmax -> label, max -> confidence.
* ``propagate_labels(target: FeatureMap, context: Sequence[FeatureMap], context_labels: Sequence[torch.Tensor],
  *, top_k=5, radius=12, temperature=0.1) -> torch.Tensor[h, w, L]``
  the reference's label propagation (facebookresearch/dino ``eval_video_segmentation.py``):
  cosine affinity, a square neighbourhood of ``radius`` patches, the top-k over all context patches
  jointly, weights ``exp(cos / temperature)`` normalised; computed over each target patch's window
  only (memory ~ patches x window, never patches x patches). All maps share the target's grid.
* ``class VideoSegmenter`` (online, like :class:`~dinofeat.tracking.PointTracker`):
  ``VideoSegmenter(first: FeatureMap, first_labels: torch.Tensor[h, w, L], options: SegmentOptions)``;
  ``.step(fmap: FeatureMap) -> torch.Tensor[h, w, L]`` the soft labels of that frame; context = the
  first frame and the last ``options.context_frames`` frames (default 7); memory constant in the
  frame count.
* ``mask_from_clicks(fmap, positives: {label: points_xy}, negatives: points_xy) -> soft labels``
  ``(h, w, L)``: from the cosine similarity of each patch to the clicked features.

Coordinates are float ``(x, y)`` pixels of the original image (x right, y down, the centre of the
top-left pixel at ``(0, 0)``), as everywhere in dinofeat.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dinofeat.errors import InputError, field
from dinofeat.features.featuremap import FeatureMap, check_inside, linear_weights
from dinofeat.options import (
    DEFAULT_RADIUS_PATCHES,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    SegmentOptions,
)

__all__ = [
    "LABEL_VOID",
    "MAX_LABEL",
    "VideoSegmenter",
    "check_mask",
    "mask_from_clicks",
    "mask_to_patch_labels",
    "otsu_threshold",
    "patch_labels_to_mask",
    "propagate_labels",
]

#: The label of pixels that are ignored ("void", as in DAVIS): excluded from a patch's shares.
LABEL_VOID = 255
#: The largest object label (0 is the background).
MAX_LABEL = 254
#: Target patches per side of a tile in :func:`propagate_labels`: each tile is compared with its
#: context region at once (one matrix product), so memory is ~ tile^2 x (tile + 2 radius)^2 x frames.
PROPAGATION_TILE = 16
#: Bound on the floats of one band of rows in :func:`patch_labels_to_mask` (memory stays small at any size).
_BAND_FLOATS = 1 << 22


# ---------------------------------------------------------------------------------------------
# Masks <-> patch labels


def check_mask(mask: np.ndarray, size_wh: tuple[int, int], *, name: str = "mask") -> np.ndarray:
    """The labels of ``mask`` (a ``(H, W)`` integer array) checked against an image of ``size_wh``:
    the same size, labels 0 to :data:`MAX_LABEL` or :data:`LABEL_VOID`. Returns it as uint8.

    >>> check_mask(np.array([[0, 1], [255, 2]]), (2, 2)).dtype
    dtype('uint8')
    """
    mask = np.asarray(mask)
    w, h = size_wh
    if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise InputError(f"{field(name)} must be a 2-D array of integer labels, got shape {mask.shape} {mask.dtype}")
    if mask.shape != (h, w):
        raise InputError(f"{field(name)} is {mask.shape[1]}x{mask.shape[0]} pixels, the image {w}x{h}")
    bad = (mask < 0) | ((mask > MAX_LABEL) & (mask != LABEL_VOID))
    if bad.any():
        value = int(mask[bad].flat[0])
        raise InputError(
            f"{field(name)} has label {value}: labels are 0 (background) to {MAX_LABEL}, {LABEL_VOID} is void"
        )
    return mask.astype(np.uint8)


def footprint_weights(count: int, size: int, *, patch_size: int, stride: int, scale: float) -> torch.Tensor:
    """``(count, size)`` float64: how much of original pixel k (1-D) patch j covers, in pixels.

    Patch j covers processed pixels ``[j * stride, j * stride + patch_size)``; a processed pixel
    edge ``e'`` is the original edge ``e' / scale`` (edges at half-pixel positions, the half-pixel
    rule), so the patch covers ``[j * stride / scale, (j * stride + patch_size) / scale)`` in
    original pixel edges, and pixel k covers ``[k, k + 1)``.

    >>> footprint_weights(2, 4, patch_size=2, stride=2, scale=1.0).tolist()
    [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    >>> footprint_weights(1, 2, patch_size=3, stride=3, scale=2.0).tolist()  # 1.5 pixels
    [[1.0, 0.5]]
    """
    low = torch.arange(count, dtype=torch.float64)[:, None] * stride / scale
    high = low + patch_size / scale
    edges = torch.arange(size, dtype=torch.float64)[None]
    return (torch.minimum(high, edges + 1) - torch.maximum(low, edges)).clamp(min=0)


def mask_to_patch_labels(mask: np.ndarray, fmap: FeatureMap, num_labels: int) -> torch.Tensor:
    """Soft patch labels of a mask: ``(h, w, num_labels)`` float32, each patch's share of every label.

    Args:
        mask: ``(H, W)`` integer labels at the original image's pixels (``fmap.image_size_wh``),
            0 to ``num_labels - 1``, or :data:`LABEL_VOID`.
        fmap: the image's feature map (its geometry places every patch's footprint).
        num_labels: ``L``, counting the background (``max label + 1`` for a plain mask).

    Each patch's shares are area-weighted over its exact footprint in original pixels
    (:func:`footprint_weights`, separable in x and y); void pixels are left out of the shares, so a
    patch's row sums to 1, or is all zero when its footprint is all void.

    >>> fmap = FeatureMap(torch.zeros(1, 2, 8), image_size_wh=(4, 2), processed_size_wh=(4, 2), patch_size=2, stride=2)
    >>> mask_to_patch_labels(np.array([[1, 1, 0, 1], [1, 1, 255, 255]]), fmap, 2)[0].tolist()
    [[0.0, 1.0], [0.5, 0.5]]
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or not 1 <= num_labels <= MAX_LABEL + 1:
        raise InputError(f"{field('num_labels', num_labels)} must be an integer from 1 to {MAX_LABEL + 1}")
    mask = check_mask(mask, fmap.image_size_wh)
    present = [int(v) for v in np.unique(mask) if v != LABEL_VOID]
    if present and present[-1] >= num_labels:
        raise InputError(f"mask has label {present[-1]}, more than {field('num_labels', num_labels)} allow")
    (grid_h, grid_w), (width, height) = fmap.grid_hw, fmap.image_size_wh
    scale_x, scale_y = fmap.scale_xy
    geometry = {"patch_size": fmap.patch_size, "stride": fmap.stride}
    rows = footprint_weights(grid_h, height, scale=scale_y, **geometry)
    cols = footprint_weights(grid_w, width, scale=scale_x, **geometry)

    def covered(pixels: np.ndarray) -> torch.Tensor:
        return rows @ torch.from_numpy(pixels).to(torch.float64) @ cols.T

    shares = torch.zeros(grid_h, grid_w, num_labels, dtype=torch.float64)
    for label in present:
        shares[..., label] = covered(mask == label)
    valid = covered(mask != LABEL_VOID)
    shares = torch.where(valid[..., None] > 0, shares / valid.clamp(min=1e-12)[..., None], 0.0)
    return shares.float()


def patch_labels_to_mask(
    soft: torch.Tensor, fmap: FeatureMap, *, rescale: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A mask at the original pixels from soft patch labels.

    Args:
        soft: ``(h, w, L)`` soft labels on ``fmap``'s grid.
        fmap: the feature map whose geometry places the grid.
        rescale: before the argmax, stretch each label's values over the image to [0, 1] (its
            minimum to 0, its maximum to 1; the reference's ``norm_mask``, which favours small
            objects); the confidence stays the unstretched value of the chosen label.

    Returns:
        ``(labels, confidence)``: ``(H, W)`` uint8 labels (the argmax over the ``L`` labels of the
        soft labels read bilinearly at each pixel's exact grid position, the rule of
        :meth:`FeatureMap.upsample`; constant beyond the outer patch centres) and ``(H, W)``
        float32 confidence (that maximum). Rows are done in bands, so memory stays small.

    >>> fmap = FeatureMap(torch.zeros(1, 2, 8), image_size_wh=(4, 2), processed_size_wh=(4, 2), patch_size=2, stride=2)
    >>> labels, confidence = patch_labels_to_mask(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), fmap)
    >>> labels.tolist(), confidence[0].tolist()
    ([[1, 1, 0, 0], [1, 1, 0, 0]], [1.0, 0.75, 0.75, 1.0])
    """
    grid_h, grid_w = fmap.grid_hw
    if soft.ndim != 3 or tuple(soft.shape[:2]) != (grid_h, grid_w):
        raise InputError(f"soft labels have shape {tuple(soft.shape)}, the grid is {grid_h}x{grid_w}")
    width, height = fmap.image_size_wh
    xs = torch.arange(width, dtype=torch.float64)
    ys = torch.arange(height, dtype=torch.float64)
    cols = fmap.pixel_to_grid(torch.stack((xs, torch.zeros_like(xs)), dim=-1))[:, 0]
    rows = fmap.pixel_to_grid(torch.stack((torch.zeros_like(ys), ys), dim=-1))[:, 1]
    weights_x = linear_weights(cols, grid_w)
    weights_y = linear_weights(rows, grid_h)
    soft = soft.detach().float().cpu()
    labels = np.empty((height, width), dtype=np.uint8)
    confidence = np.empty((height, width), dtype=np.float32)
    band = max(1, _BAND_FLOATS // max(1, width * soft.shape[2]))

    def bands() -> Iterator[tuple[int, torch.Tensor]]:
        for top in range(0, height, band):
            part = torch.einsum("Hh,hwl->Hwl", weights_y[top : top + band], soft)
            yield top, torch.einsum("Hwl,Ww->HWl", part, weights_x)

    low, span = torch.zeros(soft.shape[2]), torch.ones(soft.shape[2])
    if rescale:  # a first pass for each label's range over the image
        ranges = [(full.amin(dim=(0, 1)), full.amax(dim=(0, 1))) for _, full in bands()]
        low = torch.stack([r[0] for r in ranges]).amin(0)
        high = torch.stack([r[1] for r in ranges]).amax(0)
        stretch = high > 0  # the reference leaves a label that is zero everywhere as it is
        low = torch.where(stretch, low, 0.0)
        span = torch.where(stretch & (high > low), high - low, 1.0)
    for top, full in bands():
        which = ((full - low) / span).argmax(dim=-1)
        labels[top : top + band] = which.numpy().astype(np.uint8)
        confidence[top : top + band] = full.gather(-1, which[..., None])[..., 0].numpy()
    return labels, confidence


# ---------------------------------------------------------------------------------------------
# Label propagation


def propagate_labels(
    target: FeatureMap,
    context: Sequence[FeatureMap],
    context_labels: Sequence[torch.Tensor],
    *,
    top_k: int = DEFAULT_TOP_K,
    radius: int | None = DEFAULT_RADIUS_PATCHES,
    temperature: float = DEFAULT_TEMPERATURE,
    tile: int = PROPAGATION_TILE,
) -> torch.Tensor:
    """Soft labels ``(h, w, L)`` of ``target`` from labelled context frames (label propagation).

    Args:
        target: the feature map to label, grid ``(h, w)``.
        context: feature maps with known labels, all on the target's grid (any grids with
            ``radius=None``).
        context_labels: their soft labels, each ``(h, w, L)`` on its map's grid (one-hot rows for a
            plain mask).
        top_k: each target patch takes the labels of its ``top_k`` most similar context patches,
            chosen jointly over all context frames.
        radius: only context patches within ``radius`` patches in rows *and* columns of the target
            patch are candidates (the reference's square neighbourhood; its ``0`` means "no
            neighbourhood", here ``None`` does: every context patch is a candidate, as for photos
            of the same object, which are not aligned).
        temperature: the chosen patches weigh ``exp(cos / temperature)``, normalised to sum to 1.
        tile: target patches are handled in tiles of ``tile x tile``, each against its context
            region (one matrix product): memory ~ ``tile^2 (tile + 2 radius)^2 len(context)``.

    Equals the reference's dense computation (affinity over all pairs times a neighbourhood mask,
    then the top-k) without its ``patches x patches`` matrices; where the k-th value is tied the
    reference keeps every tied patch, this keeps k (ties have probability zero for real features).

    >>> grid = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    >>> fmap = FeatureMap(grid, image_size_wh=(56, 42), processed_size_wh=(56, 42))
    >>> labels = F.one_hot(torch.arange(12).reshape(3, 4) % 2, 2).float()
    >>> torch.equal(propagate_labels(fmap, [fmap], [labels], top_k=1).argmax(-1), labels.argmax(-1))
    True
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"{field('top_k', top_k)} must be a positive integer")
    if radius is not None and (isinstance(radius, bool) or not isinstance(radius, int) or radius < 0):
        raise InputError(f"{field('radius', radius)} must be a non-negative integer")
    if not temperature > 0:
        raise InputError(f"{field('temperature', temperature)} must be a positive number")
    if radius is None:
        return _propagate_globally(target, context, context_labels, top_k, temperature, tile)
    context_features, labels = _checked_context(target, context, context_labels)
    queries = F.normalize(target.features.float(), dim=-1)
    keys = F.normalize(context_features, dim=-1)  # (n, h, w, C)
    return _propagate_window(queries, keys, labels, top_k, radius, temperature, tile)


def _propagate_window(
    queries: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
    top_k: int,
    radius: int,
    temperature: float,
    tile: int = PROPAGATION_TILE,
) -> torch.Tensor:
    """:func:`propagate_labels` on checked tensors: ``queries`` ``(h, w, C)`` and ``keys``
    ``(n, h, w, C)`` L2-normalised, ``labels`` ``(n, h, w, L)``, all on one device."""
    grid_h, grid_w = queries.shape[:2]
    count, dim = keys.shape[0], keys.shape[-1]
    out = torch.empty(grid_h, grid_w, labels.shape[-1], device=queries.device)
    for left in range(0, grid_w, tile):
        cols = slice(left, min(left + tile, grid_w))
        region_cols = slice(max(left - radius, 0), min(cols.stop + radius, grid_w))
        # one copy per column of tiles; each tile's region is then a view of whole rows of it
        key_columns = keys[:, :, region_cols].contiguous()  # (n, h, c, C)
        label_columns = labels[:, :, region_cols].contiguous()  # (n, h, c, L)
        for top in range(0, grid_h, tile):
            rows = slice(top, min(top + tile, grid_h))
            region_rows = slice(max(top - radius, 0), min(rows.stop + radius, grid_h))
            out[rows, cols] = _propagate_tile(
                queries[rows, cols].reshape(-1, dim),
                key_columns[:, region_rows].reshape(count, -1, dim),
                label_columns[:, region_rows].reshape(-1, labels.shape[-1]),
                _outside(rows, cols, region_rows, region_cols, radius, queries.device),
                top_k,
                temperature,
            ).reshape(rows.stop - rows.start, cols.stop - cols.start, -1)
    return out


def _propagate_globally(
    target: FeatureMap,
    context: Sequence[FeatureMap],
    context_labels: Sequence[torch.Tensor],
    top_k: int,
    temperature: float,
    tile: int,
) -> torch.Tensor:
    """:func:`propagate_labels` with every context patch a candidate (the context maps' grids may
    differ): tiles of target patches against all context patches, memory ~ tile^2 x context patches."""
    if len(context) == 0 or len(context) != len(context_labels):
        raise InputError(
            f"need one label map per context frame and at least one, got {len(context)} and {len(context_labels)}"
        )
    device = target.features.device
    for fmap, labels in zip(context, context_labels, strict=True):
        if fmap.dim != target.dim or labels.ndim != 3 or tuple(labels.shape[:2]) != fmap.grid_hw:
            raise InputError(f"context labels of shape {tuple(labels.shape)} do not fit their grid {fmap.grid_hw}")
        if labels.shape[2] != context_labels[0].shape[2]:
            raise InputError("context label maps have different numbers of labels")
    keys = torch.cat([F.normalize(f.features.float().reshape(-1, f.dim), dim=-1).to(device) for f in context])
    labels = torch.cat([lab.float().reshape(-1, lab.shape[-1]).to(device) for lab in context_labels])  # (nP, L)
    queries = F.normalize(target.features.float(), dim=-1).reshape(-1, target.dim)
    out = torch.empty(queries.shape[0], labels.shape[-1], device=device)
    for start in range(0, queries.shape[0], tile * tile):
        cosine = queries[start : start + tile * tile] @ keys.T  # (T, nP)
        best, index = cosine.topk(min(top_k, cosine.shape[1]), dim=1)
        weights = torch.softmax(best / temperature, dim=1)
        out[start : start + tile * tile] = torch.einsum("tk,tkl->tl", weights, labels[index])
    return out.reshape(*target.grid_hw, -1)


def _checked_context(
    target: FeatureMap, context: Sequence[FeatureMap], context_labels: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Context features ``(n, h, w, C)`` and labels ``(n, h, w, L)``, checked against the target."""
    if len(context) == 0 or len(context) != len(context_labels):
        raise InputError(
            f"need one label map per context frame and at least one, got {len(context)} and {len(context_labels)}"
        )
    grid = target.grid_hw
    for fmap, labels in zip(context, context_labels, strict=True):
        if fmap.grid_hw != grid or fmap.dim != target.dim:
            raise InputError(
                f"a context frame's grid {fmap.grid_hw}x{fmap.dim} is not the target's {grid}x{target.dim}"
            )
        if labels.ndim != 3 or tuple(labels.shape[:2]) != grid or labels.shape[2] != context_labels[0].shape[2]:
            raise InputError(f"context labels of shape {tuple(labels.shape)} do not fit the grid {grid}")
    features = torch.stack([fmap.features.float().to(target.features.device) for fmap in context])
    return features, torch.stack([labels.float().to(target.features.device) for labels in context_labels])


def _propagate_tile(
    tile: torch.Tensor,
    region: torch.Tensor,
    region_labels: torch.Tensor,
    outside: torch.Tensor,
    top_k: int,
    temperature: float,
) -> torch.Tensor:
    """Soft labels ``(T, L)`` of a tile's target patches ``(T, C)`` from their context region
    ``(n, R, C)`` with labels ``(n R, L)``; ``outside`` ``(T, R)`` marks region patches beyond the
    neighbourhood of each target patch.

    The joint top-k over all context frames is the top-k of each frame's own top-k (a patch among
    the k best of all frames is among the k best of its frame), so no ``(T, n R)`` copy is made."""
    count, size = region.shape[0], region.shape[1]
    cosine = torch.matmul(region, tile.T).transpose(1, 2)  # (n, T, R)
    cosine = cosine.masked_fill(outside, float("-inf"))
    each_best, each_index = cosine.topk(min(top_k, size), dim=2)  # (n, T, k): every frame's own best
    each_index = each_index + torch.arange(count, device=tile.device)[:, None, None] * size
    candidates = each_best.permute(1, 0, 2).reshape(tile.shape[0], -1)  # (T, n k)
    best, which = candidates.topk(min(top_k, candidates.shape[1]), dim=1)  # (T, k)
    index = each_index.permute(1, 0, 2).reshape(tile.shape[0], -1).gather(1, which)  # into (n R)
    weights = torch.softmax(best / temperature, dim=1)  # exp(cos / t) normalised; -inf weighs 0
    return torch.einsum("tk,tkl->tl", weights, region_labels[index])


def _outside(
    rows: slice, cols: slice, region_rows: slice, region_cols: slice, radius: int, device: torch.device
) -> torch.Tensor:
    """``(T, R)`` bool: which region patches lie more than ``radius`` rows or columns from each tile
    patch (separable: one test per axis, then their outer combination)."""

    def far(inner: slice, outer: slice) -> torch.Tensor:
        a = torch.arange(inner.start, inner.stop, device=device)
        b = torch.arange(outer.start, outer.stop, device=device)
        return (a[:, None] - b[None]).abs() > radius  # (inner, outer)

    far_rows, far_cols = far(rows, region_rows), far(cols, region_cols)
    outside = far_rows[:, None, :, None] | far_cols[None, :, None, :]  # (tr, tc, Rr, Rc)
    return outside.reshape(far_rows.shape[0] * far_cols.shape[0], -1)


class VideoSegmenter:
    """Online video object segmentation: feed it each processed frame's feature map with :meth:`step`.

    Args:
        first: the first frame's feature map.
        first_labels: its soft labels ``(h, w, L)`` (:func:`mask_to_patch_labels` of its mask, or
            :func:`mask_from_clicks`).
        options: :class:`~dinofeat.options.SegmentOptions` (``context_frames``, ``top_k``, ``radius``,
            ``temperature``); or its fields as keywords.

    Each frame's labels are propagated (:func:`propagate_labels`) from the first frame and the
    soft labels found for the last ``context_frames`` frames (as the reference does: the soft
    labels, not their argmax, are fed back). Only those frames are held: memory does not grow
    with the video.

    >>> fmap = FeatureMap(torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0)),
    ...                   image_size_wh=(56, 42), processed_size_wh=(56, 42))
    >>> labels = F.one_hot(torch.arange(12).reshape(3, 4) % 2, 2).float()
    >>> segmenter = VideoSegmenter(fmap, labels, context_frames=2)
    >>> torch.equal(segmenter.step(fmap).argmax(-1), labels.argmax(-1)), segmenter.context_length
    (True, 2)
    """

    def __init__(
        self,
        first: FeatureMap,
        first_labels: torch.Tensor,
        options: SegmentOptions | None = None,
        **overrides: object,
    ) -> None:
        options = options or SegmentOptions()
        if overrides:
            options = options.replace(**overrides)
        self.options = options
        _checked_context(first, [first], [first_labels])
        slots = 1 + options.context_frames  # the first frame, then a ring of the recent ones
        device = first.features.device
        self._keys = torch.empty(slots, *first.grid_hw, first.dim, device=device)  # L2-normalised features
        self._labels = torch.empty(slots, *first_labels.shape, device=device)
        self._keys[0] = F.normalize(first.features.float(), dim=-1)
        self._labels[0] = first_labels.float().to(device)
        self._held = 1  # frames in the buffers
        self._steps = 0

    @property
    def grid_hw(self) -> tuple[int, int]:
        """The patch grid every frame must have (the first frame's)."""
        return int(self._keys.shape[1]), int(self._keys.shape[2])

    @property
    def context_length(self) -> int:
        """How many frames the next :meth:`step` reads: the first and the recent ones held."""
        return self._held

    def step(self, fmap: FeatureMap) -> torch.Tensor:
        """Soft labels ``(h, w, L)`` of the next frame, from its feature map (on the first frame's grid)."""
        if fmap.grid_hw != self.grid_hw or fmap.dim != self._keys.shape[-1]:
            raise InputError(f"frame grid {fmap.grid_hw} differs from the first frame's {self.grid_hw}")
        options = self.options
        queries = F.normalize(fmap.features.float().to(self._keys.device), dim=-1)
        soft = _propagate_window(
            queries,
            self._keys[: self._held],
            self._labels[: self._held],
            options.top_k,
            options.radius,
            options.temperature,
        )
        recent = self._keys.shape[0] - 1
        if recent:  # the oldest recent frame gives way (the order of the context does not matter)
            slot = 1 + self._steps % recent
            self._keys[slot] = queries
            self._labels[slot] = soft
            self._held = min(self._held + 1, recent + 1)
        self._steps += 1
        return soft


# ---------------------------------------------------------------------------------------------
# Clicks -> first mask


def mask_from_clicks(
    fmap: FeatureMap,
    positives: Mapping[int, object],
    negatives: object = None,
    *,
    threshold: float | None = None,
    num_labels: int | None = None,
) -> torch.Tensor:
    """Soft labels ``(h, w, L)`` (one-hot rows) of an image from clicks on its objects.

    Args:
        fmap: the image's feature map.
        positives: ``{label: points_xy}``: clicks ``(N, 2)`` original pixels on each object, labels
            1 to :data:`MAX_LABEL`.
        negatives: clicks ``(M, 2)`` on the background, or None.
        threshold: a patch joins an object when its cosine to the object's nearest click feature
            (sampled bilinearly at the click) is at least this; None: per object, Otsu's threshold
            of those cosines over the image (the split into two groups with the largest
            between-group variance), so no number tuned to one model.
        num_labels: ``L`` (default: the largest label + 1).

    A patch takes the object whose click it resembles most, if that cosine passes the object's
    threshold and beats every negative click's; else the background. The patches around each click
    (those its bilinear read uses) take the click's label outright, so the mask read back with
    :func:`patch_labels_to_mask` contains every positive click and no negative one.

    >>> grid = torch.zeros(2, 4, 2); grid[:, :2, 0] = 1; grid[:, 2:, 1] = 1
    >>> fmap = FeatureMap(grid, image_size_wh=(56, 28), processed_size_wh=(56, 28))
    >>> mask_from_clicks(fmap, {1: [[5.0, 5.0]]}).argmax(-1).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0]]
    """
    if not positives:
        raise InputError("need at least one click on an object")
    clicks = {int(label): _points(points) for label, points in positives.items()}
    for label, points in clicks.items():
        if not 1 <= label <= MAX_LABEL:
            raise InputError(f"click label {label} is not an object label (1 to {MAX_LABEL})")
        check_inside(points, fmap.image_size_wh, what="point")
    background = _points(negatives) if negatives is not None else np.zeros((0, 2))
    check_inside(background, fmap.image_size_wh, what="negative point")
    count = num_labels if num_labels is not None else max(clicks) + 1
    if max(clicks) >= count:
        raise InputError(f"click label {max(clicks)} needs {field('num_labels', count)} to be above it")
    grid_h, grid_w = fmap.grid_hw
    features = fmap.normalized().features.reshape(-1, fmap.dim)  # (P, C)
    order = sorted(clicks)
    cosine = torch.stack([_nearest_click(features, fmap, clicks[label]) for label in order])  # (K, P)
    best, which = cosine.max(dim=0)
    cutoffs = torch.tensor([otsu_threshold(row) if threshold is None else threshold for row in cosine])
    chosen = best >= cutoffs[which]
    if len(background):
        chosen &= best > _nearest_click(features, fmap, background)
    labels = torch.where(chosen, torch.tensor(order)[which], 0).reshape(grid_h, grid_w)
    _seed(labels, fmap, background, 0)
    for label in order:
        _seed(labels, fmap, clicks[label], label)
    return F.one_hot(labels.long(), count).float()


def _points(points: object) -> np.ndarray:
    """Clicks as a float64 ``(N, 2)`` array."""
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 2))
    if array.ndim not in (1, 2) or array.shape[-1] != 2:
        raise InputError(f"clicks must be (x, y) pairs, got shape {array.shape}")
    return array.reshape(-1, 2)


def _nearest_click(features: torch.Tensor, fmap: FeatureMap, points_xy: np.ndarray) -> torch.Tensor:
    """``(P,)`` cosine of every patch to the most similar of the clicked features."""
    clicked = fmap.sample(points_xy, normalize=True).to(features.device)  # (N, C)
    return (features.float() @ clicked.T).max(dim=1).values.cpu()


def _seed(labels: torch.Tensor, fmap: FeatureMap, points_xy: np.ndarray, label: int) -> None:
    """Give ``label`` to the (up to 4) patches each click's bilinear read uses, in place."""
    if not len(points_xy):
        return
    grid_h, grid_w = fmap.grid_hw
    grid = torch.as_tensor(fmap.pixel_to_grid(points_xy))
    u = grid[:, 0].clamp(0, grid_w - 1)
    v = grid[:, 1].clamp(0, grid_h - 1)
    for col in (u.floor(), u.ceil()):
        for row in (v.floor(), v.ceil()):
            labels[row.long(), col.long()] = label


def otsu_threshold(values: torch.Tensor) -> float:
    """Otsu's threshold of a 1-D set of numbers: the cut between two groups (below / at or above)
    that maximises the between-group variance, exactly (no histogram); the midpoint of the two
    values around the best cut. A constant set gives its value.

    >>> round(otsu_threshold(torch.tensor([0.1, 0.2, 0.15, 0.9, 0.8])), 6)
    0.5
    """
    ordered = values.detach().double().flatten().sort().values
    count = ordered.numel()
    if count < 2 or ordered[0] == ordered[-1]:
        return float(ordered[0]) if count else 0.0
    below = torch.arange(1, count, dtype=torch.float64)  # size of the lower group per cut
    sums = ordered.cumsum(0)[:-1]
    mean_low = sums / below
    mean_high = (ordered.sum() - sums) / (count - below)
    between = below * (count - below) * (mean_low - mean_high) ** 2
    between[ordered[1:] == ordered[:-1]] = -1  # a cut between equal values is no cut
    cut = int(between.argmax())
    return float((ordered[cut] + ordered[cut + 1]) / 2)
