"""The ``dinofeat extract`` job: dense features of images written to one feature file, or of a
whole dataset to a feature folder.

>>> job = ExtractJob(["a.jpg", "b.png"], output="feats.npz")           # doctest: +SKIP
>>> job.check()                   # destination, suffix, outputs, images read: no model needed  # doctest: +SKIP
>>> result = job.run(Extractor("dinov2_vits14"))                        # doctest: +SKIP
>>> result.maps[0].features.shape, result.output                        # doctest: +SKIP
(torch.Size([32, 32, 384]), PosixPath('feats.npz'))

A bad destination is refused by :meth:`ExtractJob.check`, before any model is loaded:

>>> ExtractJob(["a.jpg"], output="feats.txt").check()
Traceback (most recent call last):
dinofeat.errors.InputError: output must end in .npz or .safetensors, got feats.txt
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dinofeat.dataset.runs import DatasetReport, extract_dataset
from dinofeat.errors import InputError
from dinofeat.errors import field as field_named
from dinofeat.features.featuremap import FeatureMap
from dinofeat.features.files import FEATURE_SUFFIXES, extractor_metadata, save_features
from dinofeat.features.source import expect_images, provenance
from dinofeat.io.images import ImageLike, load_image
from dinofeat.io.outputs import check_outputs, check_suffix
from dinofeat.options import DatasetOptions, ExtractorOptions, UpsampleOptions
from dinofeat.optionspec import Options, option
from dinofeat.wording import plural

if TYPE_CHECKING:  # types only
    from dinofeat.features.source import FeatureSource
    from dinofeat.runtime.progress import Progress


@dataclass(frozen=True)
class ExtractResult:
    """What :meth:`ExtractJob.run` computed and wrote.

    Attributes:
        maps: one :class:`~dinofeat.features.featuremap.FeatureMap` per input, in order
            (``(h, w, C)`` features, coordinates in each image's own pixels).
        output: the feature file written (``features_{i}``, ``image_size_{i}``, ... and metadata).
    """

    maps: tuple[FeatureMap, ...]
    output: Path

    def to_dict(self) -> dict[str, Any]:
        """``{"output": "feats.npz", "maps": [{"grid": [w, h], "dim", "image_size": [w, h],
        "processed_size": [w, h], "patch_size", "stride"}, ...]}``: what was written, without the
        features."""
        return {
            "output": str(self.output),
            "maps": [
                {
                    "grid": [m.grid_hw[1], m.grid_hw[0]],
                    "dim": m.dim,
                    "image_size": list(m.image_size_wh),
                    "processed_size": list(m.processed_size_wh),
                    "patch_size": m.patch_size,
                    "stride": m.stride,
                }
                for m in self.maps
            ],
        }

    def __repr__(self) -> str:
        """``ExtractResult(2 image(s), 5x4 patches x 384 -> feats.npz)``."""
        return f"ExtractResult({self.summary()})"

    def summary(self) -> str:
        """One line: ``2 images, 5x4 patches x 384 -> feats.npz``."""
        grids = sorted({f"{m.grid_hw[1]}x{m.grid_hw[0]}" for m in self.maps})
        cells = "patches" if self.maps[0].cell_size is None else "cells (upsampled)"
        return f"{plural(len(self.maps), 'image')}, {', '.join(grids)} {cells} x {self.maps[0].dim} -> {self.output}"


@dataclass(frozen=True)
class ExtractJob(Options):
    """Features of ``inputs`` into one feature file (``output``) or, for a dataset, a feature
    folder (``out_dir``).

    :meth:`check` refuses, before any model work, a missing or conflicting destination, dataset
    options without ``out_dir``, a bad suffix, an output that is an input or cannot be written,
    and (for a file) an input that is not a readable image. :meth:`run` computes the maps with a
    :class:`~dinofeat.features.source.FeatureSource` and writes the file atomically;
    :meth:`run_dataset` runs :func:`~dinofeat.dataset.runs.extract_dataset` for ``out_dir``.
    """

    inputs: Sequence[ImageLike] = option((), help="images (paths, PIL images or arrays); for out_dir a dataset")
    output: str | os.PathLike | None = option(None, flag="-o", help="the feature file, .npz or .safetensors")  # noqa: RUF009 (a field)
    out_dir: str | os.PathLike | None = option(None, flag="--out-dir", help="a feature folder for a dataset")  # noqa: RUF009
    dataset: DatasetOptions = field(default_factory=DatasetOptions)
    #: The images read by :meth:`check` (None until it ran): ``(H, W, 3) uint8`` RGB each.
    _images: tuple[np.ndarray, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def is_dataset(self) -> bool:
        """Whether the job writes a feature folder (``out_dir``) rather than one file."""
        return self.out_dir is not None

    def check(self) -> None:
        """Every check that needs no model; for a file, the images are read here (once)."""
        self._read()

    def _read(self) -> tuple[np.ndarray, ...]:
        """:meth:`check`, keeping the images it read for :meth:`run` (none for a dataset)."""
        self._check_destination()
        images: tuple[np.ndarray, ...] = ()
        if not self.is_dataset:
            images = self._read_images()
        object.__setattr__(self, "_images", images)  # frozen: the one record of the check
        return images

    def _read_images(self) -> tuple[np.ndarray, ...]:
        """The inputs as ``(H, W, 3) uint8`` RGB, once the output is known to be writable."""
        if not self.inputs:
            raise InputError("no input images")
        check_suffix(self.output, FEATURE_SUFFIXES, "output")
        check_outputs([self.output], inputs=[p for p in self.inputs if isinstance(p, (str, os.PathLike))])
        return tuple(load_image(image) for image in self.inputs)

    def _check_destination(self) -> None:
        """One destination, and dataset options only with a dataset's."""
        if self.is_dataset:
            if self.output is not None:
                raise InputError(
                    f"give {field_named('output', 'OUT')} (one file) or {field_named('out_dir', 'DIR')} (a dataset), "
                    "not both"
                )
            return
        if self.output is None:
            raise InputError(
                f"nothing to write: give {field_named('output', 'OUT.npz|.safetensors')}, "
                f"or {field_named('out_dir', 'DIR')} for a dataset"
            )
        if self.dataset != DatasetOptions():
            raise InputError(
                f"the dataset options ({field_named('engine')}, {field_named('dtype')}, {field_named('pca')}, ...) "
                f"need {field_named('out_dir', 'DIR')}"
            )

    def run(self, source: FeatureSource, progress: Progress | None = None) -> ExtractResult:
        """The inputs' feature maps from ``source``, written to ``output`` atomically (``.safetensors``
        or ``.npz`` by its suffix) with the source's settings as metadata. ``progress`` is not
        used (one batch of images); it is there for the :class:`~dinofeat.jobs.base.Job` shape."""
        images = self._images if self._images is not None else self._read()
        if self.output is None or self.is_dataset:  # check() let a dataset through
            raise InputError(f"{field_named('out_dir', self.out_dir)} is a dataset: run it with run_dataset()")
        expect_images(source, len(images))
        maps = source.extract_arrays(list(images))
        names = [str(p) if isinstance(p, (str, os.PathLike)) else None for p in self.inputs]
        save_features(self.output, maps, inputs=names, **extractor_metadata(source), **provenance(source))
        return ExtractResult(tuple(maps), Path(self.output))

    def run_dataset(
        self,
        extractor_options: ExtractorOptions | None = None,
        progress: Progress | None = None,
        *,
        upsample: UpsampleOptions | None = None,
    ) -> DatasetReport:
        """The dataset route: :func:`~dinofeat.dataset.runs.extract_dataset` of ``inputs`` into
        ``out_dir`` (resumable; the model loads there, in this process or on Ray workers); with
        ``upsample`` (``anyup``) the maps are stored upsampled (see ``extract_dataset``)."""
        if self._images is None:
            self._read()
        if self.out_dir is None:  # check() let a single file through
            raise InputError(f"{field_named('out_dir')} is not given: run a single file with run()")
        paths = [str(p) for p in self.inputs]
        return extract_dataset(
            paths, self.out_dir, extractor_options, self.dataset, progress=progress, upsample=upsample
        )
