"""Colour images or a video by a :class:`~dinofeat.pca.FeaturePCA` (no files written: the
``dinofeat pca`` job, :class:`~dinofeat.jobs.pca.PCAJob`, writes them).

* :func:`pca_images` - fit one PCA on several images (or use a loaded one) and colour each;
  :func:`pca_panel` / :func:`pca_figure` draw the results;
* :func:`fit_video` / :func:`colorize_video` - the same for a video: one PCA fitted on frames spread
  over the clip, every frame coloured with it (stable colours), streamed in constant memory;
* :func:`fit_store_pca` - one PCA over a sample of a dataset's stored features (no model runs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dinofeat.display import data_frame, png_bytes
from dinofeat.drawing import draw_pca_grid, draw_pca_overlay, draw_pca_side_by_side
from dinofeat.errors import InputError, field
from dinofeat.io import video as video_io  # called through the module: the tests count probes
from dinofeat.io.frames import frames_to_process
from dinofeat.options import FrameOptions, PCADrawingOptions, PCAOptions
from dinofeat.pca import FeaturePCA, PCAColors
from dinofeat.wording import plural

if TYPE_CHECKING:  # types only
    from dinofeat.dataset.store import FeatureStore
    from dinofeat.features.featuremap import FeatureMap
    from dinofeat.features.source import FeatureSource
    from dinofeat.io.video import VideoInfo

log = logging.getLogger(__name__)


def pca_metadata(extractor: FeatureSource) -> dict[str, Any]:
    """What a fitted PCA records about the features it was fitted on (stored as strings)."""
    options = extractor.options
    return {
        "model": options.model,
        "layers": ",".join(map(str, options.layers)),
        "facet": options.facet,
        "stride": extractor.stride,
        "resolution": options.resolution,
    }


def check_pca_fits(pca: FeaturePCA, extractor: FeatureSource) -> None:
    """A loaded PCA must fit the features this model and these layers give (checked before any
    image is run); a PCA fitted on another model's features of the same size is a warning."""
    dim = extractor.spec.embed_dim * len(extractor.options.layers)
    fitted = (pca.metadata or {}).get("model", "unknown model")
    if pca.dim != dim:
        raise InputError(
            f"the loaded PCA was fitted on {pca.dim}-dimensional features ({fitted}); "
            f"{extractor.spec.name} with {plural(len(extractor.options.layers), 'layer')} gives {dim}"
        )
    if fitted != extractor.spec.name:
        log.warning("the loaded PCA was fitted on %s features, these are %s", fitted, extractor.spec.name)


def fit_options(options: PCAOptions, extractor: FeatureSource) -> dict[str, Any]:
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
    images: list[np.ndarray]
    maps: list[FeatureMap]
    colors: list[PCAColors]

    def summary(self) -> str:
        """``foreground 42% of pixels (otsu threshold 0.513)``, or ``no foreground split``."""
        fg = self.pca.foreground
        if fg is None:
            return "no foreground split"
        share = sum(int(c.mask.sum()) for c in self.colors) / sum(c.mask.size for c in self.colors)
        return f"foreground {share:.0%} of pixels ({fg.method} threshold {fg.threshold:.3g})"

    def __repr__(self) -> str:
        """``PCAResult(2 images, 3 components of 384, foreground 42% of pixels (otsu threshold 0.513))``."""
        pca = self.pca
        return f"PCAResult({len(self.images)} images, {pca.n_components} components of {pca.dim}, {self.summary()})"

    def _repr_png_(self) -> bytes:
        """The figure ``dinofeat pca`` writes (image | colours, one row per image), for notebooks."""
        return png_bytes(pca_figure(self))

    def to_dict(self) -> dict[str, Any]:
        """``{"components", "dim", "explained_variance": [...], "foreground": {"method",
        "threshold"} | None, "metadata", "images": [{"size": [w, h], "foreground_share"}, ...]}``."""
        fg = self.pca.foreground
        return {
            "components": self.pca.n_components,
            "dim": self.pca.dim,
            "explained_variance": [round(float(v), 6) for v in self.pca.basis.explained_variance],
            "foreground": None if fg is None else {"method": fg.method, "threshold": round(fg.threshold, 6)},
            "metadata": dict(self.pca.metadata or {}),
            "images": [
                {
                    "size": [int(c.mask.shape[1]), int(c.mask.shape[0])],
                    "foreground_share": round(float(c.mask.mean()), 6),
                }
                for c in self.colors
            ],
        }

    def to_pandas(self) -> Any:
        """One row per image: ``width, height, foreground_share``. Needs pandas."""
        rows = self.to_dict()["images"]
        return data_frame(
            {
                "width": [r["size"][0] for r in rows],
                "height": [r["size"][1] for r in rows],
                "foreground_share": [r["foreground_share"] for r in rows],
            }
        )


def pca_images(
    images: Sequence[np.ndarray],
    extractor: FeatureSource,
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
            raise InputError(f"{field('components', options.components)}: the loaded PCA has only {pca.n_components}")
    maps = extractor.extract_arrays(list(images))
    pca = pca or FeaturePCA.fit(maps, **fit_options(options, extractor))
    colors = [pca.colorize(fmap, nearest=nearest) for fmap in maps]
    return PCAResult(pca, list(images), maps, colors)


def fit_store_pca(store: FeatureStore, options: PCAOptions | None = None) -> FeaturePCA:
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
    drawing = drawing or PCADrawingOptions()
    panels = [pca_panel(image, colors, drawing) for image, colors in zip(result.images, result.colors)]
    if len(panels) == 1:
        return panels[0]
    return draw_pca_grid(panels, columns=drawing.columns, labels=names)


# ---------------------------------------------------------------------------------------------
# Videos


def fit_video(
    extractor: FeatureSource,
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
    options = options or PCAOptions()
    frames = frames or FrameOptions()
    count = max(1, sample_frames or options.fit_frames)
    indices = frames_to_process(info or video_io.probe_video(path), frames, video=path)
    wanted = {indices[i] for i in np.linspace(0, len(indices) - 1, min(count, len(indices))).round().astype(int)}
    sample = [
        frame
        for index, frame in video_io.read_frames(path, start=indices[0], every=indices.step, max_frames=len(indices))
        if index in wanted
    ]
    if not sample:
        raise InputError(f"no frames could be read from {path}")
    return FeaturePCA.fit(extractor.extract_arrays(sample), **fit_options(options, extractor))


def colorize_video(
    extractor: FeatureSource,
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
    frames = frames or FrameOptions()
    size = max(1, batch_frames or extractor.batch_size)
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> Iterator[tuple[int, np.ndarray, PCAColors]]:
        maps = extractor.extract_arrays([frame for _, frame in batch])
        for (index, frame), fmap in zip(batch, maps):
            yield index, frame, pca.colorize(fmap, nearest=nearest)
        batch.clear()

    for item in video_io.read_frames(path, start=frames.start, max_frames=frames.max_frames, every=frames.every):
        batch.append(item)
        if len(batch) == size:
            yield from flush()
    if batch:
        yield from flush()
