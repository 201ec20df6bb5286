"""The ``dinofeat pca`` job: colour images or a video by a :class:`~dinofeat.pca.FeaturePCA` and write
the pictures, the fitted PCA and the reduced features. The command line and the web app call it.

* :func:`pca_images` - fit one PCA on several images (or use a loaded one) and colour each;
  :func:`pca_panel` / :func:`pca_figure` draw the results; :func:`write_pca_files` writes them;
* :func:`fit_video` / :func:`colorize_video` / :func:`pca_video_to_file` - the same for a video,
  one PCA fitted on frames spread over the clip, every frame coloured with it (stable colours),
  streamed in constant memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from dinofeat.errors import InputError
from dinofeat.options import FrameOptions, PCADrawingOptions, PCAOptions
from dinofeat.pca import FeaturePCA, PCAColors
from dinofeat.runtime.progress import Progress, report

if TYPE_CHECKING:
    from dinofeat.io.video import VideoInfo

log = logging.getLogger(__name__)


def pca_metadata(extractor) -> dict:
    """What a fitted PCA records about the features it was fitted on (stored as strings)."""
    options = extractor.options
    return {
        "model": options.model,
        "layers": ",".join(map(str, options.layers)),
        "facet": options.facet,
        "stride": extractor.stride,
        "resolution": options.resolution,
    }


def check_pca_fits(pca: FeaturePCA, extractor) -> None:
    """A loaded PCA must fit the features this model and these layers give (checked before any
    image is run); a PCA fitted on another model's features of the same size is a warning."""
    dim = extractor.spec.embed_dim * len(extractor.options.layers)
    fitted = (pca.metadata or {}).get("model", "unknown model")
    if pca.dim != dim:
        raise InputError(
            f"the loaded PCA was fitted on {pca.dim}-dimensional features ({fitted}); "
            f"{extractor.spec.name} with {len(extractor.options.layers)} layer(s) gives {dim}"
        )
    if fitted != extractor.spec.name:
        log.warning("the loaded PCA was fitted on %s features, these are %s", fitted, extractor.spec.name)


def fit_options(options: PCAOptions, extractor) -> dict:
    """:meth:`FeaturePCA.fit` keywords for ``options``."""
    return {
        "n_components": options.components,
        "foreground": options.foreground,
        "percentiles": options.percentiles,
        "metadata": pca_metadata(extractor),
    }


@dataclass(frozen=True)
class PCAResult:
    """Images coloured by one PCA.

    Attributes:
        pca: the fitted (or loaded) PCA.
        images: the ``(H, W, 3) uint8 RGB`` inputs.
        maps: their feature maps.
        colors: one :class:`~dinofeat.pca.PCAColors` per image (RGB and foreground mask at the
            original size).
    """

    pca: FeaturePCA
    images: list
    maps: list
    colors: list

    def summary(self) -> str:
        """``foreground 42% of pixels (otsu threshold 0.513)``, or ``no foreground split``."""
        fg = self.pca.foreground
        if fg is None:
            return "no foreground split"
        share = sum(int(c.mask.sum()) for c in self.colors) / sum(c.mask.size for c in self.colors)
        return f"foreground {share:.0%} of pixels ({fg.method} threshold {fg.threshold:.3g})"


def pca_images(
    images: Sequence[np.ndarray],
    extractor,
    options: PCAOptions | None = None,
    *,
    pca: FeaturePCA | None = None,
    nearest: bool = False,
) -> PCAResult:
    """Fit one PCA jointly on ``images`` (or colour them with a given ``pca``) and colour each.

    ``extractor`` is an :class:`~dinofeat.features.extractor.Extractor` (or the app's
    :class:`~dinofeat.features.cache.FeatureCache`); ``nearest`` gives crisp patches instead of bilinear
    upsampling of the colours.
    """
    options = options or PCAOptions()
    if not images:
        raise InputError("no images to colour")
    if pca is not None:
        check_pca_fits(pca, extractor)
        if options.components > pca.n_components:
            raise InputError(f"--components {options.components}: the loaded PCA has only {pca.n_components}")
    maps = extractor.extract_arrays(list(images))
    pca = pca or FeaturePCA.fit(maps, **fit_options(options, extractor))
    colors = [pca.colorize(fmap, nearest=nearest) for fmap in maps]
    return PCAResult(pca, list(images), maps, colors)


def fit_store_pca(store, options: PCAOptions | None = None) -> FeaturePCA:
    """Fit one PCA on ``options.fit_images`` maps of a :class:`~dinofeat.dataset.store.FeatureStore`,
    spread evenly over it (``dinofeat pca --features DIR --save-pca F.npz``); no model runs."""
    options = options or PCAOptions()
    paths = store.sample(options.fit_images)
    if not paths:
        raise InputError(f"{store.folder} holds no features")
    maps = [store[path] for path in paths]
    return FeaturePCA.fit(maps, **fit_options(options, store.extractor_for(paths)))


def pca_panel(image: np.ndarray, colors: PCAColors, drawing: PCADrawingOptions | None = None) -> np.ndarray:
    """One image's picture: image | colours side by side (default), the colours blended over the
    image (``overlay``), or the colours alone (``pca_only``); ``transparent`` gives RGBA."""
    from dinofeat.drawing import draw_pca_overlay, draw_pca_side_by_side

    drawing = drawing or PCADrawingOptions()
    if drawing.overlay is not None:
        return draw_pca_overlay(image, colors.rgb, drawing.overlay, colors.mask)
    shown = colors.rgba() if drawing.transparent else colors.rgb
    return shown if drawing.pca_only else draw_pca_side_by_side(image, shown)


def pca_figure(
    result: PCAResult, drawing: PCADrawingOptions | None = None, names: Sequence[str] | None = None
) -> np.ndarray:
    """All images' panels in one figure: the panel itself for one image, else a grid labelled
    with ``names`` (:func:`~dinofeat.drawing.draw_pca_grid`)."""
    from dinofeat.drawing import draw_pca_grid

    drawing = drawing or PCADrawingOptions()
    panels = [pca_panel(image, colors, drawing) for image, colors in zip(result.images, result.colors)]
    if len(panels) == 1:
        return panels[0]
    return draw_pca_grid(panels, columns=drawing.columns, labels=names)


def write_pca_files(
    result: PCAResult,
    *,
    figure: str | os.PathLike | None = None,
    panels: Sequence[str | os.PathLike] = (),
    pca_path: str | os.PathLike | None = None,
    features_path: str | os.PathLike | None = None,
    components: int = 3,
    drawing: PCADrawingOptions | None = None,
    names: Sequence[str] | None = None,
) -> None:
    """Write the outputs of :func:`pca_images`, atomically (all of them, or none on failure).

    Args:
        figure: one picture of all images (:func:`pca_figure`).
        panels: one picture per image, in input order (:func:`pca_panel`).
        pca_path: the fitted PCA (``.npz``, :meth:`FeaturePCA.save`).
        features_path: ``.npz`` of the first ``components`` components per patch, as
            ``dinofeat extract`` writes features (``features_{i}`` ``(h, w, K)`` float32 and the
            geometry), plus ``foreground_{i}`` ``(h, w)`` bool and ``explained_variance``.
        names: panel labels in the figure (e.g. file names).
    """
    from dinofeat.features.files import write_features
    from dinofeat.io.outputs import save_image, staged_outputs

    if panels and len(panels) != len(result.images):
        raise ValueError(f"got {len(panels)} panel paths for {len(result.images)} images")
    with staged_outputs([figure, *panels, pca_path, features_path]) as temps:
        figure_tmp, panel_tmps, pca_tmp, features_tmp = temps[0], temps[1:-2], temps[-2], temps[-1]
        if figure_tmp is not None:
            save_image(figure_tmp, pca_figure(result, drawing, names))
        for tmp, image, colors in zip(panel_tmps, result.images, result.colors):
            save_image(tmp, pca_panel(image, colors, drawing))
        if pca_tmp is not None:
            result.pca.save(pca_tmp)
        if features_tmp is not None:
            pca = result.pca
            reduced = [pca.reduce(fmap) for fmap in result.maps]  # projected once
            reduced = [replace(fmap, features=fmap.features[..., :components]) for fmap in reduced]
            extra = {
                f"foreground_{i}": pca.foreground_mask(fmap.features).cpu().numpy()
                for i, fmap in enumerate(result.maps)
            }
            extra["explained_variance"] = pca.basis.explained_variance[:components].numpy()
            write_features(features_tmp, reduced, extra=extra, **(pca.metadata or {}))


# ---------------------------------------------------------------------------------------------
# Videos


def fit_video(
    extractor,
    path: str | os.PathLike,
    options: PCAOptions | None = None,
    *,
    frames: FrameOptions | None = None,
    sample_frames: int | None = None,
    info: VideoInfo | None = None,
) -> FeaturePCA:
    """Fit one :class:`FeaturePCA` on ``options.fit_frames`` (or ``sample_frames``) frames spread
    evenly over the processed part of a video (``frames``). One PCA for the whole video keeps the
    colours stable over time. ``info``: the video's :func:`~dinofeat.io.video.probe_video`, where the
    caller has it (probing may decode the whole file)."""
    from dinofeat.io.video import probe_video, read_frames
    from dinofeat.tracking import processed_frame_indices

    options = options or PCAOptions()
    frames = frames or FrameOptions()
    count = max(1, sample_frames or options.fit_frames)
    indices = processed_frame_indices((info or probe_video(path)).frames, frames)
    if len(indices) == 0:
        raise InputError(f"--start {frames.start} is past the end of {path}")
    wanted = {indices[i] for i in np.linspace(0, len(indices) - 1, min(count, len(indices))).round().astype(int)}
    sample = [
        frame
        for index, frame in read_frames(path, start=indices[0], every=indices.step, max_frames=len(indices))
        if index in wanted
    ]
    if not sample:
        raise InputError(f"no frames could be read from {path}")
    return FeaturePCA.fit(extractor.extract_arrays(sample), **fit_options(options, extractor))


def colorize_video(
    extractor,
    pca: FeaturePCA,
    path: str | os.PathLike,
    *,
    frames: FrameOptions | None = None,
    nearest: bool = False,
    batch_frames: int | None = None,
) -> Iterator[tuple[int, np.ndarray, PCAColors]]:
    """Stream ``(frame index, frame (H, W, 3) uint8 RGB, PCAColors)`` for the processed frames of a
    video. Frames go through the model ``batch_frames`` at a time (default: the extractor's batch
    size), so memory stays constant for long videos."""
    from dinofeat.io.video import read_frames

    frames = frames or FrameOptions()
    size = max(1, batch_frames or extractor.batch_size)
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> Iterator[tuple[int, np.ndarray, PCAColors]]:
        maps = extractor.extract_arrays([frame for _, frame in batch])
        for (index, frame), fmap in zip(batch, maps):
            yield index, frame, pca.colorize(fmap, nearest=nearest)
        batch.clear()

    for item in read_frames(path, start=frames.start, max_frames=frames.max_frames, every=frames.every):
        batch.append(item)
        if len(batch) == size:
            yield from flush()
    if batch:
        yield from flush()


@dataclass(frozen=True)
class VideoPCAResult:
    """What :func:`pca_video_to_file` did: the PCA used, the frames coloured and the output rate."""

    pca: FeaturePCA
    frames: int
    fps: float


def pca_video_to_file(
    path: str | os.PathLike,
    output: str | os.PathLike | None,
    extractor,
    options: PCAOptions | None = None,
    drawing: PCADrawingOptions | None = None,
    *,
    frames: FrameOptions | None = None,
    pca: FeaturePCA | None = None,
    pca_path: str | os.PathLike | None = None,
    progress: Progress | None = None,
    info: VideoInfo | None = None,
) -> VideoPCAResult:
    """Colour every processed frame of a video with one PCA and write an H.264 video (and/or the PCA).

    The output has the input's size (twice the width side by side), the processed frame count,
    and ``fps / every`` so it plays at the input's speed. Both outputs are atomic. ``info``: the
    video's :func:`~dinofeat.io.video.probe_video`, where the caller has it (the video is probed once).
    """
    from dinofeat.io.outputs import staged_outputs
    from dinofeat.io.video import VideoWriter, probe_video
    from dinofeat.tracking import processed_frame_indices

    options = options or PCAOptions()
    drawing = drawing or PCADrawingOptions()
    frames = frames or FrameOptions()
    if drawing.transparent:
        raise InputError("--transparent is for PNG images; videos have no alpha channel")
    info = info or probe_video(path)
    total = len(processed_frame_indices(info.frames, frames))
    if pca is not None:
        check_pca_fits(pca, extractor)
    pca = pca or fit_video(extractor, path, options, frames=frames, info=info)
    width, height = info.size_wh
    side_by_side = drawing.overlay is None and not drawing.pca_only
    size_wh = (2 * width, height) if side_by_side else (width, height)
    fps = info.fps / frames.every
    done = 0
    with staged_outputs([output, pca_path]) as (video_tmp, pca_tmp):
        if video_tmp is not None:
            with VideoWriter(video_tmp, fps, size_wh) as sink:
                for _, frame, colors in colorize_video(extractor, pca, path, frames=frames, nearest=drawing.nearest):
                    if frame.shape[:2] != (height, width):
                        raise InputError(f"frame size changes within {path}; cannot write one video")
                    sink.write(pca_panel(frame, colors, drawing))
                    done += 1
                    report(progress, done, total)
        if pca_tmp is not None:
            pca.save(pca_tmp)
    return VideoPCAResult(pca, done, fps)
