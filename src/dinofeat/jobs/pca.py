"""The ``dinofeat pca`` job: :class:`PCAJob` colours images or one video by a
:class:`~dinofeat.pca.FeaturePCA` (fitted, or loaded with ``load_pca``) and writes the figure, one
picture per input (``out_dir``), the PCA (``save_pca``) and the reduced features (``save_features``),
atomically. The command line and the web app run it; the colouring itself is :mod:`dinofeat.colorize`.

Three routes, chosen by the inputs:

* images (paths in ``inputs``, or arrays in ``images``): one PCA fitted jointly, each image coloured;
* one video: one PCA fitted on ``options.fit_frames`` frames spread over the processed frames, every
  processed frame coloured with it and written as H.264 at ``fps / every``;
* no input, ``features`` a feature folder: one PCA fitted on its stored maps (``save_pca`` only).

>>> PCAJob(["a.png"], output="a.txt").check()
Traceback (most recent call last):
...
dinofeat.errors.InputError: output for images must end in .png, .jpg, .jpeg, .webp, .bmp, .tif or .tiff, got a.txt
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dinofeat.colorize import (
    PCAResult,
    check_pca_fits,
    colorize_video,
    fit_store_pca,
    fit_video,
    pca_figure,
    pca_images,
    pca_panel,
)
from dinofeat.dataset.listing import IMAGE_SUFFIXES, VIDEO_SUFFIXES, folder_files
from dinofeat.errors import InputError, field
from dinofeat.features.files import extractor_metadata, write_features
from dinofeat.features.source import expect_images, provenance
from dinofeat.io import video as video_io  # called through the module: the tests count probes
from dinofeat.io.frames import frames_to_process
from dinofeat.io.images import load_image
from dinofeat.io.outputs import check_outputs, check_suffix, ensure_folder, save_image, staged_outputs
from dinofeat.io.suffixes import IMAGE_OUTPUTS, VIDEO_OUTPUTS
from dinofeat.jobs.base import PathLike
from dinofeat.options import FrameOptions, PCADrawingOptions, PCAOptions
from dinofeat.pca import FeaturePCA
from dinofeat.runtime.progress import report
from dinofeat.wording import plural

if TYPE_CHECKING:  # types only
    from dinofeat.dataset.store import FeatureStore
    from dinofeat.features.source import FeatureSource
    from dinofeat.io.video import VideoInfo
    from dinofeat.runtime.progress import Progress


@dataclass(frozen=True)
class VideoPCAResult:
    """A video coloured by one PCA: the PCA used, the frames coloured and the output's rate (fps)."""

    pca: FeaturePCA
    frames: int
    fps: float


@dataclass(frozen=True)
class StorePCAResult:
    """A PCA fitted on ``fitted`` stored maps of a feature folder holding ``stored`` images."""

    pca: FeaturePCA
    fitted: int
    stored: int


@dataclass(frozen=True)
class _Checked:
    """What :meth:`PCAJob.check` found: the route, the files to write, the loaded PCA, the video."""

    route: str  # "images", "video" or "store"
    written: list[PathLike]
    panels: list[str] = dataclasses.field(default_factory=list)
    loaded: FeaturePCA | None = None
    info: VideoInfo | None = None


def out_dir_targets(folder: PathLike, inputs: Sequence[PathLike], suffix: str) -> list[str]:
    """One output per input in ``folder``: ``<stem>_pca<suffix>``, numbered ``000_<stem>_pca<suffix>``
    when two inputs share a stem.

    >>> out_dir_targets("out", ["a/x.png", "b/y.png"], ".png")
    ['out/x_pca.png', 'out/y_pca.png']
    >>> out_dir_targets("out", ["a/x.png", "b/x.jpg"], ".png")
    ['out/000_x_pca.png', 'out/001_x_pca.png']
    """
    stems = [Path(p).stem for p in inputs]
    unique = len(set(stems)) == len(stems)
    return [
        str(Path(folder) / (f"{stem}_pca{suffix}" if unique else f"{i:03d}_{stem}_pca{suffix}"))
        for i, stem in enumerate(stems)
    ]


def write_reduced_features(
    path: PathLike,
    result: PCAResult,
    components: int,
    source: FeatureSource | None = None,
    inputs: Sequence[str | None] = (),
) -> None:
    """Write (unstaged) the first ``components`` components of each map of ``result`` as
    ``dinofeat extract`` writes features: ``features_{i}`` ``(h, w, K)`` float32 and the geometry,
    plus ``foreground_{i}`` ``(h, w)`` bool and ``explained_variance`` ``(K,)``, and the metadata
    an extract file has (``input_{i}``, typed settings, weights and precision: from ``source``;
    without it, the PCA's own metadata). Each map is projected once."""
    pca = result.pca
    reduced = [pca.reduce(fmap) for fmap in result.maps]
    reduced = [replace(fmap, features=fmap.features[..., :components]) for fmap in reduced]
    extra = {f"foreground_{i}": pca.foreground_mask(fmap.features).cpu().numpy() for i, fmap in enumerate(result.maps)}
    extra["explained_variance"] = pca.basis.explained_variance[:components].numpy()
    described = {**extractor_metadata(source), **provenance(source)} if source is not None else pca.metadata or {}
    write_features(path, reduced, extra=extra, inputs=inputs, components=components, **described)


@dataclass
class PCAJob:
    """Colour images or a video by their features' principal components and write the results.

    Attributes:
        inputs: image files or folders of them, or one video file
            (:data:`~dinofeat.dataset.listing.VIDEO_SUFFIXES`); with ``features``, paths of the
            feature folder. :meth:`check` replaces a folder by the images in it (below it too,
            sorted by name, as a dataset folder is listed).
        images: ``(H, W, 3) uint8`` RGB images given in memory instead of ``inputs`` (the app).
        output: the figure (one panel, or a labelled grid of panels; ``.png``, ``.jpg``...) or, for a
            video, an H.264 video (:data:`~dinofeat.io.suffixes.VIDEO_OUTPUTS`).
        out_dir: one output per input, ``<stem>_pca.png`` (or ``.mp4``); the folder is made by
            :meth:`check`.
        save_pca: the fitted PCA (``.npz``); ``load_pca``: colour with this PCA instead of fitting.
        save_features: ``.npz`` of the first ``options.components`` components per patch, as
            ``dinofeat extract`` writes features (``features_{i}`` ``(h, w, K)`` float32 and the
            geometry), plus ``foreground_{i}`` ``(h, w)`` bool and ``explained_variance`` (images).
        features: the feature folder the maps come from (images only; without inputs: fit a PCA).
        options, drawing, frames: how the PCA is fitted, how colours are drawn, which video frames.
        names: the panels' labels in the figure (default: the inputs' file names).
    """

    inputs: Sequence[PathLike] = ()
    output: PathLike | None = None
    out_dir: PathLike | None = None
    save_pca: PathLike | None = None
    load_pca: PathLike | None = None
    save_features: PathLike | None = None
    features: PathLike | None = None
    images: Sequence[np.ndarray] = ()
    options: PCAOptions = dataclasses.field(default_factory=PCAOptions)
    drawing: PCADrawingOptions = dataclasses.field(default_factory=PCADrawingOptions)
    frames: FrameOptions = dataclasses.field(default_factory=FrameOptions)
    names: Sequence[str] | None = None
    _checked: _Checked | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def fits_stored_features(self) -> bool:
        """No input, a feature folder: the job fits one PCA on stored maps (:meth:`run_store`)."""
        return not self.inputs and not len(self.images) and self.features is not None

    def check(self) -> None:
        """Every check that needs no model, once: inputs and outputs that go together, suffixes,
        the ``out_dir`` names (the folder is made), outputs writable and not an input, the loaded PCA
        file, and for a video the video itself (probed once) and its processed frames."""
        self._checked = self._check()

    def _check(self) -> _Checked:
        if self.features is None:
            self.inputs = self._without_folders(self.inputs)
        if not self.inputs and not len(self.images) and self.features is None:
            raise InputError(f"no input: give images or a video (or {field('features', 'DIR')})")
        is_video = [Path(p).suffix.lower() in VIDEO_SUFFIXES for p in self.inputs]
        if self.features is not None and any(is_video):
            raise InputError(f"{field('features')} holds image features; videos are coloured from the model")
        if any(is_video) and len(self.inputs) > 1:
            raise InputError("give one video, or only images (videos are coloured one at a time)")
        if not (self.output or self.out_dir or self.save_pca or self.save_features):
            raise InputError(
                f"nothing to write: give {field('output', 'OUT')}, {field('out_dir', 'DIR')}, "
                f"{field('save_pca')} or {field('save_features')}"
            )
        check_suffix(self.save_pca, (".npz",), field("save_pca"))
        check_suffix(self.save_features, (".npz",), field("save_features"))
        if self.fits_stored_features:
            return self._check_store_fit()
        if is_video and is_video[0]:
            return self._check_video()
        return self._check_images()

    def _without_folders(self, inputs: Sequence[PathLike]) -> list[PathLike]:
        """``inputs`` with each folder replaced by the images in it (below it too, sorted by name;
        ``out_dir`` is not looked into); a folder without images is an error."""
        expanded: list[PathLike] = []
        for path in inputs:
            if not Path(path).is_dir():
                expanded.append(path)
                continue
            files = folder_files(path, exclude=self.out_dir if self.out_dir and Path(self.out_dir).is_dir() else None)
            if not files:
                raise InputError(
                    f"no images in the folder {path} ({', '.join(IMAGE_SUFFIXES[:4])} ...; give a video by its name)"
                )
            expanded.extend(files)
        return expanded

    def _check_store_fit(self) -> _Checked:
        if self.output or self.out_dir or self.save_features or not self.save_pca:
            raise InputError(
                f"{field('features', 'DIR')} without INPUT fits a PCA: give {field('save_pca', 'F.npz')} only "
                "(name images to draw)"
            )
        check_outputs([self.save_pca])
        return _Checked("store", [self.save_pca])

    def _check_images(self) -> _Checked:
        check_suffix(self.output, IMAGE_OUTPUTS, f"{field('output')} for images")
        if self.drawing.transparent and self.output and not str(self.output).lower().endswith(".png"):
            raise InputError(f"{field('transparent')} needs a .png output")
        panels = self._out_dir_targets(self.out_dir, ".png") if self.out_dir else []
        outputs = [self.output, *panels, self.save_pca, self.save_features]
        check_outputs(outputs, inputs=self.inputs)
        written = [p for p in outputs if p]
        return _Checked("images", written, panels, loaded=self._load_pca())

    def _check_video(self) -> _Checked:
        if self.save_features:
            raise InputError(
                f"{field('save_features')} is for images; extract frames first to save reduced video features"
            )
        if self.drawing.transparent:
            raise InputError(f"{field('transparent')} is for PNG images; videos have no alpha channel")
        if self.output and self.out_dir:
            raise InputError(
                f"a video gives one output: use {field('output', 'OUT.mp4')} or {field('out_dir', 'DIR')}, not both"
            )
        check_suffix(self.output, VIDEO_OUTPUTS, f"{field('output')} for a video")
        target = self.output or (self._out_dir_targets(self.out_dir, ".mp4")[0] if self.out_dir else None)
        check_outputs([target, self.save_pca], inputs=self.inputs)
        loaded = self._load_pca()
        video = self.inputs[0]
        info = video_io.probe_video(video)
        frames_to_process(info, self.frames, video=video)
        written = [p for p in (target, self.save_pca) if p]
        return _Checked("video", written, [str(target)] if target else [], loaded=loaded, info=info)

    def _out_dir_targets(self, out_dir: PathLike, suffix: str) -> list[str]:
        """:func:`out_dir_targets` of the inputs (of ``names``, or ``image_<i>``, for images in memory)."""
        folder = ensure_folder(out_dir, field("out_dir"))
        stems = self.inputs or self.names or [f"image_{i}" for i in range(len(self.images))]
        return out_dir_targets(folder, stems, suffix)

    def _labels(self) -> list[str] | None:
        """The figure's panel labels: ``names``, else the inputs' file names."""
        if self.names is not None:
            return list(self.names)
        return [Path(p).name for p in self.inputs] or None

    def _load_pca(self) -> FeaturePCA | None:
        return None if self.load_pca is None else FeaturePCA.load(self.load_pca)

    # -- running ------------------------------------------------------------------------------
    def run(
        self,
        source: FeatureSource,
        progress: Progress | None = None,
        *,
        image_files: Sequence[PathLike] | None = None,
    ) -> PCAResult | VideoPCAResult:
        """Colour with ``source`` and write the files (all of them, or none on failure).

        ``image_files``: where the inputs' pixels are read, where they are not the inputs themselves
        (a feature folder's paths, :func:`~dinofeat.cli.common.open_feature_folder`).
        ``progress(done, total)`` counts a video's frames. Runs :meth:`check` first if it has not run.
        """
        route = self._checked_now().route
        if route == "store":
            raise ValueError("a PCA of a feature folder's stored maps is fitted by run_store(store)")
        if route == "video":
            return self.run_video(source, progress)
        return self.run_images(source, image_files=image_files)

    def _checked_now(self, route: str | None = None) -> _Checked:
        """What :meth:`check` found (it runs now if it has not run), for a job of ``route``."""
        if self._checked is None:
            self._checked = self._check()
        if route is not None and self._checked.route != route:
            raise ValueError(f"this job colours {self._checked.route}, not {route}")
        return self._checked

    def run_store(self, store: FeatureStore) -> StorePCAResult:
        """Fit one PCA on ``options.fit_images`` stored maps spread over ``store`` and write ``save_pca``
        (no model runs)."""
        self._checked_now("store")
        pca = fit_store_pca(store, self.options)
        with staged_outputs([self.save_pca]) as (tmp,):
            if tmp is not None:  # always: check() wants save_pca
                pca.save(tmp)
        return StorePCAResult(pca, min(self.options.fit_images, len(store)), len(store))

    def run_images(self, source: FeatureSource, *, image_files: Sequence[PathLike] | None = None) -> PCAResult:
        """:meth:`run` for images: fit one PCA jointly (or use ``load_pca``), colour each, write."""
        checked = self._checked_now("images")
        images = list(self.images) or [load_image(path) for path in (image_files or self.inputs)]
        result = pca_images(images, source, self.options, pca=checked.loaded, nearest=self.drawing.nearest)
        self._write_images(result, checked.panels, source)
        return result

    def _write_images(self, result: PCAResult, panels: Sequence[PathLike], source: FeatureSource) -> None:
        """The figure, the panels, the PCA and the reduced features, staged and renamed together."""
        drawing, components = self.drawing, self.options.components
        with staged_outputs([self.output, *panels, self.save_pca, self.save_features]) as temps:
            figure_tmp, panel_tmps, pca_tmp, features_tmp = temps[0], temps[1:-2], temps[-2], temps[-1]
            if figure_tmp is not None:
                save_image(figure_tmp, pca_figure(result, drawing, self._labels()))
            for tmp, image, colors in zip(panel_tmps, result.images, result.colors):
                if tmp is not None:  # always: the panels are paths
                    save_image(tmp, pca_panel(image, colors, drawing))
            if pca_tmp is not None:
                result.pca.save(pca_tmp)
            if features_tmp is not None:
                names = [str(p) for p in self.inputs]  # paths; none for images given as arrays
                write_reduced_features(features_tmp, result, components, source, names)

    def run_video(self, source: FeatureSource, progress: Progress | None = None) -> VideoPCAResult:
        """:meth:`run` for a video: colour every processed frame with one PCA; H.264 of the input's
        size (twice the width side by side), at ``fps / every`` so it plays at the input's speed."""
        checked = self._checked_now("video")
        path, drawing, frames = self.inputs[0], self.drawing, self.frames
        info = checked.info or video_io.probe_video(path)  # probed by check()
        total = len(frames_to_process(info, frames, video=path))
        expect_images(source, total)  # and the frames the fit reads, where it fits
        pca = checked.loaded
        if pca is not None:
            check_pca_fits(pca, source)
        pca = pca or fit_video(source, path, self.options, frames=frames, info=info)
        width, height = info.size_wh
        side_by_side = drawing.overlay is None and not drawing.pca_only
        size_wh = (2 * width, height) if side_by_side else (width, height)
        fps = info.fps / frames.every
        target = checked.panels[0] if checked.panels else None
        done = 0
        with staged_outputs([target, self.save_pca]) as (video_tmp, pca_tmp):
            if video_tmp is not None:
                with video_io.VideoWriter(video_tmp, fps, size_wh) as sink:
                    for _, frame, colors in colorize_video(source, pca, path, frames=frames, nearest=drawing.nearest):
                        if frame.shape[:2] != (height, width):
                            raise InputError(f"frame size changes within {path}; cannot write one video")
                        sink.write(pca_panel(frame, colors, drawing))
                        done += 1
                        report(progress, done, total)
            if pca_tmp is not None:
                pca.save(pca_tmp)
        return VideoPCAResult(pca, done, fps)

    def summary(self, result: PCAResult | VideoPCAResult | StorePCAResult) -> str:
        """The command's summary line: what was coloured (or fitted) and the files written."""
        written = ", ".join(str(p) for p in (self._checked.written if self._checked else []))
        if isinstance(result, StorePCAResult):
            return f"a PCA of {plural(result.fitted, 'stored image')} of {result.stored} -> {written}"
        if isinstance(result, VideoPCAResult):
            return f"{plural(result.frames, 'frame')} at {result.fps:g} fps -> {written}"
        return f"{plural(len(result.images), 'image')}, {result.summary()} -> {written}"
