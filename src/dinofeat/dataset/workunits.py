"""The work both dataset engines do: decode, compute and write one feature shard; track one video.

Both :class:`~dinofeat.dataset.localengine.LocalEngine` and :class:`~dinofeat.dataset.rayengine.RayEngine` run
these functions, so a shard is batched the same way (:func:`compute_shard`) and written with the
same bytes whichever engine ran it; the jobs (:class:`FeatureJob`, :class:`TrackJob`) are small
picklable records a Ray actor receives once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinofeat.dataset.layout import TRACKS
from dinofeat.dataset.listing import Item
from dinofeat.dataset.manifest import one_line
from dinofeat.dataset.store import shard_name, write_shard
from dinofeat.errors import DiskFullError, InputError
from dinofeat.errors import field as field_named
from dinofeat.features.extractor import Extractor
from dinofeat.features.featuremap import FeatureMap
from dinofeat.features.source import FeatureSource
from dinofeat.features.upsample import Upsampler
from dinofeat.io.images import load_image, resize
from dinofeat.jobs import track
from dinofeat.options import (
    DatasetOptions,
    ExtractorOptions,
    FrameOptions,
    TrackerOptions,
    TrailOptions,
    UpsampleOptions,
)
from dinofeat.pca import PCABasis, fit_pca
from dinofeat.points import collect_queries
from dinofeat.runtime.modelthread import block_interrupts


@dataclass(frozen=True)
class FeatureJob:
    """What a worker needs to compute and write shards (picklable: the Ray engine sends it).

    Attributes:
        folder: the output folder (absolute).
        extractor: the model and feature options.
        dataset: the dataset options (dtype, shard size, decode threads, on_error).
        metadata: each shard's header metadata (model, resolution, layers, facet).
        pca: the storage :class:`~dinofeat.pca.PCABasis` (``--pca K``), or None.
        upsample: ``--upsample anyup``: store AnyUp-upsampled maps at ``upsample.dataset_scale`` x
            the patch grid (None, or ``upsample="none"``: the patches).
        images: the images of the dataset, all workers together: how long the job is, which
            ``--compile auto`` weighs (:meth:`~dinofeat.features.extractor.Extractor.expect_images`).
    """

    folder: str
    extractor: ExtractorOptions
    dataset: DatasetOptions
    metadata: dict[str, Any]
    pca: PCABasis | None = None
    upsample: UpsampleOptions | None = None
    images: int = 0

    @property
    def upsample_scale(self) -> int | None:
        """Features per patch side of the stored maps when upsampled (None: patches, not upsampled)."""
        return self.upsample.dataset_scale if self.upsample is not None and self.upsample.enabled else None

    def upsampler(self, extractor: Extractor) -> Upsampler | None:
        """The job's AnyUp (its weights loaded, on ``extractor``'s device, in its precision), or None."""
        if self.upsample is None or not self.upsample.enabled:
            return None
        return Upsampler.from_weights(
            self.upsample.upsample_weights, device=extractor.device, precision=self.extractor.precision
        )


@dataclass(frozen=True)
class Shard:
    """Shard ``number``: the items ``number * S ..`` of the listing (``S`` the shard size)."""

    number: int
    items: tuple[Item, ...]


@dataclass
class Decoded:
    """One decoded image, resized to its processed size, or the reason it could not be."""

    item: Item
    image: np.ndarray | None = None
    size_wh: tuple[int, int] | None = None
    error: str | None = None


@dataclass
class ShardResult:
    """A computed shard: ``maps[j]`` belongs to ``items[j]`` (``{"item", "path"}``); ``errors`` lists
    the items that failed; ``stopped`` says the work stopped at an error (``on_error="fail"``)."""

    number: int
    items: list[dict[str, Any]] = field(default_factory=list)
    maps: list[FeatureMap] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False


def decode_image(item: Item, extractor: Extractor) -> Decoded:
    """Read ``item``'s image and resize it to its processed size (any failure is recorded, not raised:
    one bad file among thousands must not stop the others)."""
    try:
        image = load_image(item.file)
        size_wh = (image.shape[1], image.shape[0])
        return Decoded(item, resize(image, extractor.processed_size(size_wh)), size_wh)
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for damaged files; each is this file's error
        return Decoded(item, error=one_line(err))


def compute_shard(
    number: int,
    decoded: Iterable[Decoded],
    extractor: Extractor,
    *,
    pca: PCABasis | None = None,
    upsampler: Upsampler | None = None,
    upsample_scale: int | None = None,
    stop_on_error: bool = False,
    on_items: Callable[[int], None] | None = None,
) -> ShardResult:
    """Features of one shard's decoded images, in item order.

    Images are grouped by processed size in order of first appearance and each group is cut into
    batches of ``extractor.batch_size`` in item order: the batches
    :meth:`~dinofeat.features.extractor.Extractor.extract_arrays` makes for the whole shard. A batch runs
    as soon as it is complete, so the model works while later images are still decoding. Maps are
    reduced by ``pca`` when given. With an ``upsampler`` each map is stored upsampled by AnyUp at
    ``upsample_scale`` x the patch grid (None: one cell per processed pixel); with ``pca`` too, the
    reduced features are what AnyUp mixes (with the full features' attention: the same as reducing
    the upsampled map, since the PCA is affine and AnyUp's weights sum to 1, and far cheaper).
    ``on_items(n)`` is called as ``n`` more items are finished.
    """
    result = ShardResult(number)
    order: list[Decoded] = []
    # position in order -> (processed image, original size), until its batch runs
    pending: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}
    groups: dict[tuple[int, int], list[int]] = {}
    maps: dict[int, FeatureMap] = {}

    def run(positions: list[int]) -> None:
        batch = [pending.pop(p) for p in positions]
        out = extractor.extract_resized([image for image, _ in batch], [size for _, size in batch])
        for p, (image, _), fmap in zip(positions, batch, out):
            features = fmap.features if pca is None else pca.transform(fmap.features)
            if upsampler is not None:
                values = None if pca is None else features
                fmap = upsampler.upsample_resized(fmap, image, values=values, scale=upsample_scale)
                features = fmap.features
            maps[p] = replace(fmap, features=features, cls_token=None, register_tokens=None)
        if on_items is not None:
            on_items(len(positions))

    for item in decoded:
        if item.image is None or item.size_wh is None:  # not decoded: item.error says why
            result.errors.append({"item": item.item.index, "path": item.item.path, "error": item.error})
            if on_items is not None:
                on_items(1)
            if stop_on_error:
                result.stopped = True
                return result
            continue
        order.append(item)
        pending[len(order) - 1] = (item.image, item.size_wh)
        size = (item.image.shape[1], item.image.shape[0])
        item.image = None  # held in pending until its batch runs, then dropped
        groups.setdefault(size, []).append(len(order) - 1)
        if len(groups[size]) == extractor.batch_size:
            run(groups.pop(size))
    for positions in groups.values():
        run(positions)
    result.items = [{"item": d.item.index, "path": d.item.path} for d in order]
    result.maps = [maps[p] for p in range(len(order))]
    return result


def write_shard_result(job: FeatureJob, result: ShardResult) -> None:
    """Write a computed shard to ``job.folder/shards/`` (atomically)."""
    path = Path(job.folder) / shard_name(result.number)
    write_shard(
        path, result.number, result.items, result.maps, result.errors, dtype=job.dataset.dtype, metadata=job.metadata
    )


def fit_storage_pca(items: Sequence[Item], extractor: Extractor, job: FeatureJob) -> PCABasis:
    """The ``--pca K`` basis: :func:`~dinofeat.pca.fit_pca` (seeded) on the patches of ``items``
    (images that cannot be read are left out)."""
    if job.dataset.pca is None:
        raise ValueError("fit_storage_pca needs a job whose dataset options ask for a PCA")
    with ThreadPoolExecutor(job.dataset.decode_threads, initializer=block_interrupts) as pool:
        decoded = list(pool.map(lambda item: decode_image(item, extractor), items))
    result = compute_shard(-1, decoded, extractor)
    if not result.maps:
        raise InputError(f"{field_named('pca')}: none of the sample images could be read")
    samples = torch.cat([m.features.reshape(-1, m.dim).cpu() for m in result.maps])
    return fit_pca(samples, job.dataset.pca, seed=0)


@dataclass(frozen=True)
class QuerySpec:
    """Which points are tracked in each video of a dataset.

    ``points_xy`` (first processed frame), ``queries_txy`` and ``grid`` apply to every video.
    ``points_file`` is one points file for all videos, or a folder holding one per video, found by
    the video's path with its suffix replaced (``clips/a.mp4`` -> ``FOLDER/clips/a.json`` or
    ``.csv``). A list file's ``points`` column names each video's file instead.
    """

    points_xy: tuple[tuple[float, float], ...] = ()
    queries_txy: tuple[tuple[int, float, float], ...] = ()
    points_file: str | None = None
    grid: int | None = None

    def points_file_for(self, item: Item) -> str | None:
        if item.points is not None or self.points_file is None or not Path(self.points_file).is_dir():
            return item.points or self.points_file
        relative = Path(item.path) if not Path(item.path).is_absolute() else Path(Path(item.path).name)
        candidates = [Path(self.points_file) / relative.with_suffix(s) for s in (".json", ".csv")]
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        raise InputError(f"no points file for {item.path} (looked for {candidates[0]} and {candidates[1].name})")

    def for_item(self, item: Item, first_frame: int, size_wh: tuple[int, int]) -> list[tuple[float, float, float]]:
        points_file = self.points_file_for(item)
        return collect_queries(
            first_frame,
            size_wh,
            points_xy=self.points_xy,
            queries_txy=self.queries_txy,
            points_file=points_file,
            grid=self.grid,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "points": [list(p) for p in self.points_xy],
            "queries": [list(q) for q in self.queries_txy],
            "points_file": None if self.points_file is None else os.path.abspath(self.points_file),
            "grid": self.grid,
        }


@dataclass(frozen=True)
class TrackJob:
    """What a worker needs to track videos and write their files (picklable)."""

    folder: str
    extractor: ExtractorOptions
    dataset: DatasetOptions
    tracker: TrackerOptions
    frames: FrameOptions
    trail: TrailOptions
    queries: QuerySpec


@dataclass(frozen=True)
class ItemOutcome:
    """One video's result: ``error`` is None on success."""

    item: int
    path: str
    error: str | None = None


def track_output_stem(path: str) -> str:
    """The file name (without suffix) of a video's outputs in ``DIR/tracks/``: its path made
    file-name safe, plus 8 hex digits of the path's sha1 so that different paths never collide.

    >>> track_output_stem("clips/cat 1.mp4")
    'clips__cat_1-ce2cb64c'
    """
    stem = str(Path(path).with_suffix("")) if Path(path).suffix else path
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("\\", "/").strip("/").replace("/", "__")).strip("._")
    return f"{safe[-100:] or 'video'}-{hashlib.sha1(path.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def track_outputs(folder: str | os.PathLike, path: str, formats: Sequence[str]) -> dict[str, Path]:
    """``{"json": DIR/tracks/<stem>.json, ...}`` for the formats asked for."""
    stem = track_output_stem(path)
    return {fmt: Path(folder) / TRACKS / f"{stem}.{fmt}" for fmt in formats}


def track_item(item: Item, extractor: FeatureSource, job: TrackJob) -> ItemOutcome:
    """Track one video of the dataset and write its files atomically (as single-file ``dinofeat
    track`` would, with the video's dataset path in the JSON); a bad video is an outcome, not raised:
    any error of this video (a decoder's, whatever its type) is its one-line reason, as in
    :func:`decode_image` (an interrupt is raised)."""
    outputs = track_outputs(job.folder, item.path, job.dataset.outputs)
    try:
        video_job = track.TrackJob(
            item.file,
            output=outputs.get("mp4"),
            json=outputs.get("json"),
            csv=outputs.get("csv"),
            points_xy=job.queries.points_xy,
            queries_txy=job.queries.queries_txy,
            points_file=job.queries.points_file_for(item),
            grid=job.queries.grid,
            tracker=job.tracker,
            frames=job.frames,
            trail=job.trail,
            video_name=item.path,
        )
        video_job.check()
        video_job.run(extractor)
    except DiskFullError:
        raise  # the device is full, not this video bad: the run stops (a rerun resumes)
    except Exception as err:  # noqa: BLE001 - PyAV and the codecs raise many types; each is this video's error
        return ItemOutcome(item.index, item.path, one_line(err))
    return ItemOutcome(item.index, item.path)
