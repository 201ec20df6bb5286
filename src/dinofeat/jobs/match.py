"""The ``dinofeat match`` job: query points of image A found in image B, drawn and written as JSON.

:class:`MatchJob` is built from the images, the query points (or ``options.grid`` /
``options.auto``), the outputs and the options; :meth:`MatchJob.check` runs every check that needs
no model, once; :meth:`MatchJob.run` makes both feature maps with a
:class:`~dinofeat.features.source.FeatureSource`, matches them
(:func:`~dinofeat.matching.match_features`), writes the picture and the JSON document atomically
and returns a :class:`MatchResult`. The command line and the web app both run it.

>>> from dinofeat.features.extractor import Extractor
>>> from dinofeat.models.dinov2 import DinoVisionTransformer
>>> from dinofeat.models.registry import get_spec
>>> vit = DinoVisionTransformer(get_spec("dinov2_vits14"), depth=1).init_random()
>>> image = np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8)
>>> job = MatchJob(image, image, points_xy=[[30.0, 20.0]])   # and output="m.png", json="m.json"
>>> job.check()                                 # points, outputs, images: no model needed
>>> result = job.run(Extractor(vit, resolution=56, device="cpu"))
>>> result.matches.target_xy.round().tolist(), result.summary()
([[30.0, 20.0]], '1 match, 1 kept -> standard output')

Coordinates are pixels of the original images (x right, y down, centre of the top-left pixel at
(0, 0)).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dinofeat.display import png_bytes, size_text
from dinofeat.drawing import draw_heatmap, draw_matches, match_labels
from dinofeat.errors import InputError
from dinofeat.errors import field as field_named
from dinofeat.features.featuremap import FeatureMap
from dinofeat.features.source import provenance
from dinofeat.io.images import ImageLike, load_image
from dinofeat.io.outputs import check_outputs, check_suffix, format_json, save_image, staged_outputs
from dinofeat.matching import Matches, match_features, similarity_image
from dinofeat.options import DEFAULT_AUTO, ExtractorOptions, MatchDrawingOptions, MatchOptions
from dinofeat.optionspec import Options, option
from dinofeat.points import check_points, read_points_file
from dinofeat.wording import plural

if TYPE_CHECKING:  # types only
    from dinofeat.features.source import FeatureSource
    from dinofeat.runtime.progress import Progress

#: Suffixes of the match picture (``-o``).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchResult:
    """What :meth:`MatchJob.run` found, what its pictures need, and what it wrote.

    Attributes:
        matches: the :class:`~dinofeat.matching.Matches`, in query order.
        document: the ``dinofeat match --json`` document (see :func:`matches_json`).
        image_a, image_b: ``(H, W, 3) uint8 RGB``.
        features_a, features_b: their feature maps (for the heatmap).
        options: the :class:`~dinofeat.options.MatchOptions` matched with.
        written: the files written (the picture, then the JSON), in that order.
    """

    matches: Matches
    document: dict[str, Any]
    image_a: np.ndarray
    image_b: np.ndarray
    features_a: FeatureMap
    features_b: FeatureMap
    options: MatchOptions = field(default_factory=MatchOptions)
    written: tuple[Path, ...] = ()

    @property
    def pca_dim(self) -> int | None:
        """The joint-PCA dimension matched in, or None."""
        return self.options.pca_dim

    def json_text(self) -> str:
        """The JSON document as ``dinofeat match`` writes it (indented, short lists on one line)."""
        return format_json(self.document)

    def to_dict(self) -> dict[str, Any]:
        """The ``dinofeat match --json`` document (a copy): model, images, matches, geometry,
        settings, weights."""
        return copy.deepcopy(self.document)

    def to_pandas(self) -> Any:
        """One row per match (:meth:`~dinofeat.matching.Matches.to_pandas`). Needs pandas."""
        return self.matches.to_pandas()

    def __repr__(self) -> str:
        """``MatchResult(12 matches, 9 kept, a.jpg 640x480 -> b.jpg 500x400, dinov2_vits14, wrote m.png)``."""
        doc, m = self.document, self.matches
        a, b = (f"{doc[key]['path']} {size_text(doc[key]['size'])}" for key in ("image_a", "image_b"))
        wrote = f", wrote {', '.join(str(p) for p in self.written)}" if self.written else ""
        return f"MatchResult({len(m)} matches, {int(m.keep.sum())} kept, {a} -> {b}, {doc['model']}{wrote})"

    def _repr_png_(self) -> bytes:
        """The match picture (as ``-o`` writes it), for notebooks."""
        return png_bytes(match_picture(self))

    def summary(self) -> str:
        """One line: how many matches, how many kept and by which checks, where they went."""
        options = self.options
        checks = [
            name
            for name, on in (
                ("mutual", options.require_mutual),
                ("ratio", options.max_ratio is not None),
                (f"RANSAC {options.ransac}", options.ransac is not None),
            )
            if on
        ]
        kept = int(self.matches.keep.sum())
        where = ", ".join(str(p) for p in self.written) or "standard output"
        by = f" ({', '.join(checks)})" if checks else ""
        return f"{plural(len(self.matches), 'match')}, {kept} kept{by} -> {where}"


@dataclass(frozen=True)
class _Checked:
    """What :meth:`MatchJob.check` read: both images ``(H, W, 3) uint8 RGB`` and the query points
    ``(N, 2)`` in A's pixels (None: ``options.grid`` / ``options.auto`` choose them)."""

    image_a: np.ndarray
    image_b: np.ndarray
    points_xy: list[Sequence[float]] | None


@dataclass(frozen=True)
class MatchJob(Options):
    """Match query points of ``image_a`` into ``image_b``; draw the picture (``output``) and/or
    write the JSON document (``json``).

    Query points are ``points_xy`` and/or the points of ``points_file`` (A's pixels), or
    ``options.grid`` / ``options.auto`` (default: ``auto`` :data:`~dinofeat.options.DEFAULT_AUTO`).
    ``names`` name the images in the JSON (default: their paths, or ``A`` and ``B`` for arrays).
    Without ``output`` and ``json`` nothing is written (the command line prints the JSON).
    """

    image_a: ImageLike | None = option(None, help="image with the query points: a path, PIL image or array")  # noqa: RUF009 (a field)
    image_b: ImageLike | None = option(None, help="image searched: a path, PIL image or array")  # noqa: RUF009
    points_xy: Sequence[Sequence[float]] | None = option(None, flag="--point", help="(N, 2) query points, A pixels")
    points_file: str | os.PathLike | None = option(None, flag="--points-file", help="query points: JSON or CSV")  # noqa: RUF009
    output: str | os.PathLike | None = option(None, flag="-o", help="picture: A and B side by side, the matches")  # noqa: RUF009
    json: str | os.PathLike | None = option(None, flag="--json", help="the matches as JSON, in query order")  # noqa: RUF009
    options: MatchOptions = field(default_factory=MatchOptions)
    drawing: MatchDrawingOptions = field(default_factory=MatchDrawingOptions)
    names: tuple[str, str] | None = None
    _checked: _Checked | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def image_names(self) -> tuple[str, str]:
        """The images' names in the JSON and in errors: ``names``, else their paths (``A``/``B`` for arrays)."""
        if self.names is not None:
            return self.names
        return _name(self.image_a, "A"), _name(self.image_b, "B")

    def check(self) -> None:
        """Every check that needs no model, once: suffixes and outputs, the query points (given
        one way only, readable, inside A), the heatmap's needs, and both images readable."""
        self._read()

    def _read(self) -> _Checked:
        """:meth:`check`, keeping what it read for :meth:`run`."""
        check_suffix(self.output, PICTURE_SUFFIXES, f"the picture ({field_named('output')})")
        check_suffix(self.json, (".json",), field_named("json"))
        paths = [p for p in (self.image_a, self.image_b) if isinstance(p, (str, os.PathLike))]
        check_outputs([self.output, self.json], inputs=paths)
        points = self._query_points()
        self._check_heatmap(points)
        if self.image_a is None or self.image_b is None:
            raise InputError("give both images, image_a and image_b")
        image_a, image_b = load_image(self.image_a), load_image(self.image_b)
        if points is not None:
            size_a = (image_a.shape[1], image_a.shape[0])
            check_points(points, size_a, label=f"image A ({self.image_names[0]})")
        checked = _Checked(image_a, image_b, points)
        object.__setattr__(self, "_checked", checked)  # frozen: the one record of the check
        return checked

    def _query_points(self) -> list[Sequence[float]] | None:
        """``points_xy`` then ``points_file``'s points, or None for ``options.grid`` / ``options.auto``."""
        given = self.points_xy is not None or self.points_file is not None
        points: list[Sequence[float]] = list(self.points_xy or [])
        if self.points_file is not None:
            points += read_points_file(self.points_file)
        self.options.check_points_given(given, f"{field_named('points_xy')}/{field_named('points_file')}")
        return points if given else None

    def _check_heatmap(self, points: list[Sequence[float]] | None) -> None:
        if not self.drawing.heatmap:
            return
        if points is None or len(points) != 1:
            raise InputError(
                f"{field_named('heatmap')} needs exactly one query point ({field_named('points_xy', 'X,Y')})"
            )
        if self.output is None:
            raise InputError(
                f"{field_named('heatmap')} draws into the picture: give {field_named('output', 'OUT.png')}"
            )

    def run(self, source: FeatureSource, progress: Progress | None = None) -> MatchResult:
        """Match with ``source``'s feature maps of both images, write the outputs atomically (all or
        none) and return the :class:`MatchResult`. ``progress`` is not used (one pair of images);
        it is there for the :class:`~dinofeat.jobs.base.Job` shape."""
        checked = self._checked or self._read()
        fa, fb = source.extract_arrays([checked.image_a, checked.image_b])
        matches = match_features(fa, fb, checked.points_xy, self.options)
        if len(matches) and not bool(matches.keep.any()):
            log.warning("no match passed the checks asked for; the picture shows none")
        queries = "points" if checked.points_xy is not None else self.options.query_mode
        name_a, name_b = self.image_names
        document = matches_json(
            matches,
            model=source.options.model,
            path_a=name_a,
            path_b=name_b,
            settings=match_settings(queries, self.options, source.options),
            verified=self.options.ransac is not None,
            weights=provenance(source)["weights"],
        )
        result = MatchResult(matches, document, checked.image_a, checked.image_b, fa, fb, self.options)
        written = write_match_files(result, picture=self.output, json_path=self.json, drawing=self.drawing)
        return replace(result, written=written)


def _name(image: ImageLike | None, default: str) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else default


def match_settings(queries: str, options: MatchOptions, extractor_options: ExtractorOptions) -> dict[str, Any]:
    """The ``settings`` entry of the JSON document: how queries were chosen, the feature and
    matching options."""
    chosen: dict[str, Any] = {"queries": queries}
    if queries == "grid":
        chosen["grid"] = options.grid
    elif queries == "auto":
        chosen["auto"] = options.auto or DEFAULT_AUTO
    ex = extractor_options
    return {
        **chosen,
        "resolution": ex.resolution,
        "max_size": ex.max_size,
        "stride": ex.stride,
        "layers": list(ex.layers),
        "facet": ex.facet,
        "pca_dim": options.pca_dim,
        "mutual": options.require_mutual,
        "ratio": options.max_ratio,
        "ransac": options.ransac,
        "ransac_threshold": options.ransac_threshold,
    }


def matches_json(
    matches: Matches,
    *,
    model: str,
    path_a: str,
    path_b: str,
    settings: dict[str, Any] | None = None,
    verified: bool = False,
    weights: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document of the CLI contract: model, image_a, image_b, matches (query order), then
    geometry, settings and (where known) weights (``{"path", "sha256"}``, see
    :func:`~dinofeat.features.source.provenance`). Coordinates are original-image pixels rounded
    to 0.01; ``inlier`` is null unless geometric verification was asked for (``verified``)."""
    described = matches.to_dict(verified)
    return {
        "model": model,
        "image_a": {"path": str(path_a), **described["image_a"]},
        "image_b": {"path": str(path_b), **described["image_b"]},
        "matches": described["matches"],
        "geometry": described["geometry"],
        "settings": settings or {},
        **({"weights": weights} if weights is not None else {}),
    }


def heatmap_picture(result: MatchResult, index: int) -> np.ndarray:
    """Image B with the similarity of query ``index`` over it and its match marked: ``(H, W, 3) uint8``."""
    m = result.matches
    heat = similarity_image(result.features_a, result.features_b, m.source_xy[index : index + 1], result.pca_dim)
    return draw_heatmap(result.image_b, heat, point_xy=m.target_xy[index].tolist())


def match_picture(result: MatchResult, drawing: MatchDrawingOptions | None = None) -> np.ndarray:
    """A and B with the kept matches as lines (:func:`~dinofeat.drawing.draw_matches`), each
    labelled with its letter and file name (``A: cat.jpg``); with ``drawing.heatmap`` B shows the
    first query's similarity. ``(H, W, 3) uint8 RGB``."""
    drawing = drawing or MatchDrawingOptions()
    shown_b = heatmap_picture(result, 0) if drawing.heatmap else result.image_b
    return draw_matches(
        result.image_a,
        shown_b,
        result.matches,
        color_by=drawing.color_by,
        height=drawing.height,
        mask=result.matches.keep.numpy(),
        layout=drawing.layout,
        labels=match_labels(result.document["image_a"]["path"], result.document["image_b"]["path"]),
    )


def write_match_files(
    result: MatchResult,
    *,
    picture: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
    drawing: MatchDrawingOptions | None = None,
) -> tuple[Path, ...]:
    """Write the picture (``.png/.jpg/.webp``) and/or the JSON document, atomically (all or none);
    returns the paths written, the picture first."""
    image = match_picture(result, drawing) if picture is not None else None
    with staged_outputs([picture, json_path]) as (picture_tmp, json_tmp):
        if picture_tmp is not None and image is not None:
            save_image(picture_tmp, image)
        if json_tmp is not None:
            json_tmp.write_text(result.json_text())
    return tuple(Path(p) for p in (picture, json_path) if p is not None)
