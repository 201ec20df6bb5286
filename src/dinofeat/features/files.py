"""Feature files (``.npz`` or ``.safetensors``): the one writer of feature maps (the ``extract``
job, :class:`~dinofeat.jobs.extract.ExtractJob`, and a dataset's shards write with it).

For input i a file holds ``features_{i}`` ``(h, w, C)`` float32, ``image_size_{i}`` and
``processed_size_{i}`` ``(width, height)`` int64, plus string metadata (model, resolution,
patch size, stride, layers, facet, ...). In ``.npz`` files metadata values are 0-d string arrays
(``str(f["model"])``); in ``.safetensors`` files they are the header metadata (JSON for lists).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from dinofeat.features.featuremap import FeatureMap
from dinofeat.io.outputs import staged_outputs
from dinofeat.options import ExtractorOptions

if TYPE_CHECKING:  # types only
    from dinofeat.features.source import FeatureSource

#: Suffixes of the feature file formats.
FEATURE_SUFFIXES = (".npz", ".safetensors")


def feature_arrays(maps: Sequence[FeatureMap], dtype: str = "float32") -> dict[str, np.ndarray]:
    """``features_{i}`` (h, w, C) ``dtype`` (float32, or float16 for a dataset's shards),
    ``image_size_{i}`` and ``processed_size_{i}`` (w, h) int64."""
    arrays: dict[str, np.ndarray] = {}
    for i, fmap in enumerate(maps):
        arrays[f"features_{i}"] = np.ascontiguousarray(fmap.numpy(), dtype=np.dtype(dtype))
        arrays[f"image_size_{i}"] = np.asarray(fmap.image_size_wh, dtype=np.int64)
        arrays[f"processed_size_{i}"] = np.asarray(fmap.processed_size_wh, dtype=np.int64)
    return arrays


def save_features(
    path: str | os.PathLike, maps: Sequence[FeatureMap], *, extra: Mapping[str, np.ndarray] | None = None, **metadata
) -> None:
    """Write ``maps`` (plus ``extra`` arrays) and string-able ``metadata`` atomically; the format
    follows the suffix (``.safetensors``, else ``.npz``)."""
    with staged_outputs([path]) as (tmp,):
        write_features(cast(Path, tmp), maps, extra=extra, **metadata)  # a temporary path for the path given


def write_features(
    path: str | os.PathLike, maps: Sequence[FeatureMap], *, extra: Mapping[str, np.ndarray] | None = None, **metadata
) -> None:
    """:func:`save_features` without the staging, for a caller that stages several outputs together."""
    arrays = {**feature_arrays(maps), **(extra or {})}
    if maps:
        metadata = {"patch_size": maps[0].patch_size, "stride": maps[0].stride, **metadata}
        if maps[0].cell_size is not None:  # an upsampled map: its cells, in processed pixels
            metadata["cell_size"] = maps[0].cell_size
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    if str(path).endswith(".safetensors"):
        # lazy: only .safetensors outputs need it
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path), metadata=text)
    else:
        with open(path, "wb") as f:
            np.savez(f, **arrays, **{k: np.asarray(v) for k, v in text.items()})  # type: ignore[arg-type]  # numpy's stub lets **kwds reach allow_pickle


def extractor_metadata(source: ExtractorOptions | FeatureSource) -> dict[str, Any]:
    """What a feature file (or a dataset's shard) records about the features: model, resolution,
    layers, facet; ``source`` is an extractor or its :class:`~dinofeat.options.ExtractorOptions`."""
    options = source if isinstance(source, ExtractorOptions) else source.options
    return {
        "model": options.model,
        "resolution": options.resolution,
        "layers": list(options.layers),
        "facet": options.facet,
    }
