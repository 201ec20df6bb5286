"""Datasets: features and tracks for thousands of files, resumable, in this process or on Ray.

:func:`extract_dataset` writes a feature folder (see :mod:`dinofeat.dataset.store` for the layout;
read it back with :func:`~dinofeat.dataset.store.open_features`); :func:`track_dataset` writes one
JSON (and optional CSV / MP4) per video into ``DIR/tracks/`` (:func:`track_output_stem` names them).
Inputs are a folder, a glob or a list file (:mod:`dinofeat.dataset.listing`).

* **Manifest** (``DIR/manifest.json``): the settings, model, weights hash (sha256 of the loaded
  state dict), dinofeat version and the listing's size and hash. A run into a
  folder made with other settings, or with other inputs, is refused with a one-line error. The
  device, engine, batch size and worker counts may change between runs.
* **Resuming**: the unit of work is a shard of ``--shard-size`` consecutive images (features) or one
  video (tracks), each written atomically (a temporary file renamed into place); a rerun of the
  same command skips the finished ones. A kill loses at most the units in flight; nothing
  half-written is ever read back (temporary files are removed by the next run).
* **Bad files**: an unreadable image or video is recorded in ``DIR/errors.jsonl`` (``{"path",
  "error", "item"}`` per line) and the rest go on (``on_error="fail"`` stops at the first). A failed
  image stays recorded in its shard (delete the shard file to retry it); a failed video is retried
  by the next run.
* **Engines**: ``local`` (:class:`~dinofeat.dataset.localengine.LocalEngine`: images decoded and resized by
  threads, at most two shards ahead, while the model runs; the previous shard is written by
  another thread) and ``ray`` (:class:`~dinofeat.dataset.rayengine.RayEngine`). Both compute a shard with
  :func:`~dinofeat.dataset.workunits.compute_shard`, so both batch alike and write the same bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dinofeat.dataset.layout import ERRORS, INDEX, PCA_FILE, SHARDS, TRACKS
from dinofeat.dataset.listing import Item, Listing, list_inputs, spread_indices
from dinofeat.dataset.localengine import LocalEngine
from dinofeat.dataset.manifest import (
    ErrorLog,
    claim_folder,
    locked,
    make_manifest,
    read_errors,
    remove_temporary_files,
)
from dinofeat.dataset.rayengine import RayEngine
from dinofeat.dataset.store import load_pca, save_pca, shard_files, shard_name, write_index
from dinofeat.dataset.workunits import FeatureJob, QuerySpec, Shard, TrackJob, track_output_stem, track_outputs
from dinofeat.errors import InputError, field
from dinofeat.features.files import extractor_metadata
from dinofeat.io.outputs import ensure_folder
from dinofeat.models.registry import get_spec
from dinofeat.models.vit import DenseViT
from dinofeat.options import (
    FEATURE_SETTINGS,
    DatasetOptions,
    ExtractorOptions,
    FrameOptions,
    TrackerOptions,
    TrailOptions,
    UpsampleOptions,
)
from dinofeat.pca import PCABasis
from dinofeat.runtime.progress import Progress, report
from dinofeat.wording import plural

log = logging.getLogger(__name__)

#: What runs a dataset's work: in this process, or on Ray.
Engine = LocalEngine | RayEngine

__all__ = ["DatasetReport", "QuerySpec", "extract_dataset", "track_dataset", "track_output_stem"]


@dataclass(frozen=True)
class DatasetReport:
    """What a dataset run did.

    Attributes:
        folder: the output folder.
        kind: ``"features"`` or ``"tracks"``.
        total: items in the dataset.
        done: items finished successfully (by this run or before).
        done_now: of those, by this run.
        failed: items that failed (listed in ``errors.jsonl``).
        seconds: wall time of this run.
    """

    folder: Path
    kind: str
    total: int
    done: int
    done_now: int
    failed: int
    seconds: float

    @property
    def ok(self) -> bool:
        """True when every item succeeded."""
        return self.failed == 0 and self.done == self.total

    def summary(self) -> str:
        """``300 images: 290 done (250 now, 14.2/s), 10 failed (see DIR/errors.jsonl)``."""
        noun = "image" if self.kind == "features" else "video"
        rate = f", {self.done_now / self.seconds:.3g}/s" if self.done_now and self.seconds > 0 else ""
        text = f"{plural(self.total, noun)}: {self.done} done ({self.done_now} now{rate})"
        if self.failed:
            text += f", {self.failed} failed (see {self.folder / ERRORS})"
        missing = self.total - self.done - self.failed
        return text + (f", {missing} not done" if missing > 0 else "")


def make_engine(options: DatasetOptions, model: DenseViT | None = None) -> Engine:
    """The engine ``options.engine`` names (``model`` is for the local engine only)."""
    if options.engine == "ray":
        if model is not None:
            raise InputError(f"a model object cannot be sent to Ray workers; give its name and {field('weights')}")
        return RayEngine(options)
    return LocalEngine(model)


# ---------------------------------------------------------------------------------------------
# The workflows


def extract_dataset(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    extractor_options: ExtractorOptions | None = None,
    options: DatasetOptions | None = None,
    *,
    model: DenseViT | None = None,
    progress: Progress | None = None,
    upsample: UpsampleOptions | None = None,
) -> DatasetReport:
    """The ``dinofeat extract --out-dir`` job: features of every image of ``inputs`` into a feature folder.

    Args:
        inputs: a folder, a glob or a list file (or image files); see :func:`~dinofeat.dataset.listing.list_inputs`.
        out_dir: the feature folder (created; resumed if it holds this dataset with these settings).
        extractor_options: model and features (:class:`~dinofeat.options.ExtractorOptions`).
        options: engine, on_error, dtype, pca, shard size... (:class:`~dinofeat.options.DatasetOptions`).
        model: a built model to use instead of loading one (local engine).
        progress: ``progress(done, total)`` over the images this run processes.
        upsample: ``upsample="anyup"``: store AnyUp-upsampled maps at ``upsample.dataset_scale`` x the
            patch grid (``--upsample-scale``, default :data:`~dinofeat.options.DATASET_UPSAMPLE_SCALE`);
            the manifest's settings record it (compared on a rerun; the weights are recorded, not
            compared) and its geometry the ``cell_size``
            (processed pixels per cell), so :func:`~dinofeat.dataset.store.open_features` gives maps
            with their exact geometry. With ``pca`` the basis is fitted on patch features.

    Raises :class:`InputError` for bad inputs or options, a folder made with other settings, or
    (``on_error="fail"``) the first image that cannot be read. Read the result with
    :func:`~dinofeat.dataset.store.open_features`.
    """
    started = time.monotonic()
    extractor_options = _for_workers(extractor_options or ExtractorOptions())
    options = options or DatasetOptions()
    upsample = _upsample_for_workers(upsample or UpsampleOptions())
    upsample.check_with(extractor_options)
    folder = ensure_folder(out_dir).resolve()
    listing = list_inputs(inputs, "image", exclude=folder)
    spec = get_spec(extractor_options.model)
    channels = spec.embed_dim * len(extractor_options.layers)
    if options.pca is not None and options.pca > channels:
        raise InputError(f"{field('pca', options.pca)} is more than the {channels} feature channels")
    total, digest = listing.fingerprint()
    if total == 0:
        raise InputError(f"no images found in {', '.join(listing.sources)}")
    settings = {
        **{name: getattr(extractor_options, name) for name in FEATURE_SETTINGS},
        "layers": list(extractor_options.layers),
        "dtype": options.dtype,
        "pca": options.pca,
        "pca_sample": options.pca_sample if options.pca else None,
        "shard_size": options.shard_size,
    }
    geometry: dict[str, Any] = {
        "patch_size": spec.patch_size,
        "stride": extractor_options.stride or spec.patch_size,
        "dim": options.pca or channels,
    }
    metadata = extractor_metadata(extractor_options)
    if upsample.enabled:  # only then: folders made before upsampling existed resume as they are
        settings["upsample"] = {"upsample": upsample.upsample, "upsample_scale": upsample.dataset_scale}
        geometry["cell_size"] = metadata["cell_size"] = spec.patch_size / upsample.dataset_scale
    inputs_entry = {**listing.describe(), "items": total, "sha256": digest}
    manifest = make_manifest(
        "features",
        extractor_options,
        None,
        settings,
        inputs=inputs_entry,
        geometry=geometry,
        batch_size=extractor_options.batch_size,  # recorded, not compared: it only changes rounding
        **({"upsample_weights": upsample.upsample_weights} if upsample.enabled else {}),  # recorded, not compared
    )
    with locked(folder), _claimed(folder, manifest, extractor_options, options, model) as engine:
        (folder / SHARDS).mkdir(exist_ok=True)
        job = FeatureJob(str(folder), extractor_options, options, metadata, upsample=upsample, images=total)
        job = replace(job, pca=_storage_pca(folder, engine, job, listing, total))
        return _run_shards(folder, listing, engine, job, total, started, progress)


def _upsample_for_workers(options: UpsampleOptions) -> UpsampleOptions:
    """``options`` with a weights file's path made absolute (a released name is kept), as :func:`_for_workers`."""
    weights = options.upsample_weights
    if weights is None or not os.path.exists(weights):
        return options
    return options.replace(upsample_weights=os.path.abspath(weights))


def _for_workers(options: ExtractorOptions) -> ExtractorOptions:
    """``options`` with the weights path made absolute: the jobs (and the weights hash) go to workers
    that may run in another working folder (Ray, other nodes)."""
    if options.weights is None:
        return options
    return options.replace(weights=os.path.abspath(options.weights))


@contextlib.contextmanager
def _claimed(
    folder: Path,
    manifest: dict[str, Any],
    extractor_options: ExtractorOptions,
    options: DatasetOptions,
    model: DenseViT | None,
) -> Iterator[Engine]:
    """Check the folder's manifest (before the model loads), start the engine, add the weights hash
    and write or check the manifest again; yields the engine."""
    claim_folder(folder, manifest, check_only=True)
    with make_engine(options, model) as engine:
        manifest["weights_sha256"] = engine.weights_digest(extractor_options)
        manifest["precision_used"] = engine.precision_used(extractor_options)  # recorded, not compared
        claim_folder(folder, manifest)
        remove_temporary_files(folder)
        yield engine


def _storage_pca(folder: Path, engine: Engine, job: FeatureJob, listing: Listing, total: int) -> PCABasis | None:
    """The ``--pca`` basis: read from ``pca.safetensors``, or fitted on a sample and saved there."""
    if job.dataset.pca is None:
        return None
    path = folder / PCA_FILE
    if path.is_file():
        return load_pca(path)
    if shard_files(folder):
        raise InputError(f"{folder} has shards but no {PCA_FILE}: their PCA is lost; use another {field('out_dir')}")
    wanted = set(spread_indices(total, job.dataset.pca_sample))
    sample = [item for item in listing if item.index in wanted]
    basis = engine.fit_pca(job, sample)
    save_pca(path, basis, fitted_on=len(sample))
    return basis


def _plan(listing: Listing, size: int, folder: Path) -> Iterator[Shard]:
    """The shards whose files are not written yet, streamed from the listing."""
    batch: list[Item] = []
    for item in listing:
        batch.append(item)
        if len(batch) == size:
            number = item.index // size
            if not (folder / shard_name(number)).is_file():
                yield Shard(number, tuple(batch))
            batch = []
    if batch and not (folder / shard_name(batch[0].index // size)).is_file():
        yield Shard(batch[0].index // size, tuple(batch))


def _run_shards(
    folder: Path,
    listing: Listing,
    engine: Engine,
    job: FeatureJob,
    total: int,
    started: float,
    progress: Progress | None,
) -> DatasetReport:
    size = job.dataset.shard_size
    missing = [s for s in range(-(-total // size)) if not (folder / shard_name(s)).is_file()]
    todo = sum(min(size, total - s * size) for s in missing)
    log.info("%s: %d of %d shards to do", folder, len(missing), -(-total // size))
    if missing:  # a run killed before it rewrites the index must not leave the old one (other shards)
        (folder / INDEX).unlink(missing_ok=True)
    errors = ErrorLog(folder / ERRORS)
    finished = 0
    counted = [0]

    def on_items(n: int) -> None:
        counted[0] += n
        report(progress, counted[0], todo)

    results = engine.shards(_plan(listing, size, folder), job, on_items)
    unwritten: list[dict] = []  # errors of a shard not written (on_error="fail")
    done = failed = 0
    try:
        for result in results:
            for error in result.errors:
                errors.record(error)
            if result.stopped:
                unwritten = result.errors
                first = result.errors[-1]
                raise InputError(f"{first['path']}: {first['error']} ({field('on_error', 'fail')})")
            finished += len(result.items)
    finally:
        with contextlib.suppress(AttributeError):
            results.close()
        recorded: list[dict] = []
        done = write_index(folder, errors=recorded)  # one read of each shard header: the rows and the errors
        failed = errors.rewrite([*recorded, *unwritten])  # the shards' own lists are the record
    return DatasetReport(folder, "features", total, done, finished, failed, time.monotonic() - started)


def track_dataset(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    queries: QuerySpec,
    extractor_options: ExtractorOptions | None = None,
    options: DatasetOptions | None = None,
    *,
    tracker: TrackerOptions | None = None,
    frames: FrameOptions | None = None,
    trail: TrailOptions | None = None,
    model: DenseViT | None = None,
    progress: Progress | None = None,
) -> DatasetReport:
    """The ``dinofeat track --out-dir`` job: track ``queries`` through every video of ``inputs``.

    Each video's files go to ``out_dir/tracks/<stem>.<json|csv|mp4>`` (``options.outputs``;
    :func:`track_output_stem` gives the stem), equal to what single-file ``dinofeat track`` writes
    for it (the JSON's ``video.path`` is the dataset path). Videos whose files all exist are
    skipped; videos that failed before are tried again. ``progress(done, total)`` counts videos.
    """
    started = time.monotonic()
    extractor_options = _for_workers(extractor_options or ExtractorOptions())
    options = options or DatasetOptions()
    tracker, frames, trail = tracker or TrackerOptions(), frames or FrameOptions(), trail or TrailOptions()
    folder = ensure_folder(out_dir).resolve()
    listing = list_inputs(inputs, "video", exclude=folder)
    if queries.points_file is not None:
        if not Path(queries.points_file).exists():
            raise InputError(f"points file not found: {queries.points_file}")
        queries = replace(queries, points_file=os.path.abspath(queries.points_file))  # workers: another folder
    settings = {
        **{name: getattr(extractor_options, name) for name in FEATURE_SETTINGS},
        "layers": list(extractor_options.layers),
        "tracker": tracker.as_dict(),
        "frames": frames.as_dict(),
        "trail": trail.trail,
        "outputs": sorted(options.outputs),
        "queries": queries.describe(),
    }
    total, digest = listing.fingerprint()
    inputs_entry = {**listing.describe(), "items": total, "sha256": digest}
    manifest = make_manifest("tracks", extractor_options, None, settings, inputs=inputs_entry)
    with locked(folder), _claimed(folder, manifest, extractor_options, options, model) as engine:
        (folder / TRACKS).mkdir(exist_ok=True)
        job = TrackJob(str(folder), extractor_options, options, tracker, frames, trail, queries)
        errors = ErrorLog(folder / ERRORS)
        before = {e["path"]: e for e in read_errors(folder / ERRORS)}
        known: dict[str, dict] = {}  # the failures that stand: of listed videos not tracked yet
        done = 0
        for item in listing:  # one pass: what is done, and which earlier failures still count
            if _tracked(folder, item.path, options.outputs):
                done += 1
            elif item.path in before:
                known[item.path] = before[item.path]
        todo = total - done
        pending = (item for item in listing if not _tracked(folder, item.path, options.outputs))
        done_now = 0
        outcomes = engine.tracks(pending, job)
        try:
            for n, outcome in enumerate(outcomes, start=1):
                report(progress, n, todo)
                if outcome.error is None:
                    known.pop(outcome.path, None)
                    done_now += 1
                    continue
                record = {"item": outcome.item, "path": outcome.path, "error": outcome.error}
                known[outcome.path] = record
                errors.record(record)
                if options.on_error == "fail":
                    raise InputError(f"{outcome.path}: {outcome.error} ({field('on_error', 'fail')})")
        finally:
            with contextlib.suppress(AttributeError):
                outcomes.close()
            errors.rewrite(known.values())
        return DatasetReport(folder, "tracks", total, done + done_now, done_now, len(known), time.monotonic() - started)


def _tracked(folder: Path, path: str, formats: Sequence[str]) -> bool:
    return all(file.is_file() for file in track_outputs(folder, path, formats).values())
