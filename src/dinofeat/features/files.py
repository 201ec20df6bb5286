"""Feature files (``.npz`` or ``.safetensors``): the one writer of feature maps (the ``extract``
job, :class:`~dinofeat.jobs.extract.ExtractJob`, and a dataset's shards write with it).

For input i a file holds ``features_{i}`` ``(h, w, C)`` float32, ``image_size_{i}`` and
``processed_size_{i}`` ``(width, height)`` int64, and metadata: ``format``
(``"dinofeat.features"``), ``version`` (2), ``input_{i}`` (the path of input i, absent for an
image given as an array), ``model``, ``resolution``, ``patch_size``, ``stride``, ``layers``,
``facet``, ``precision`` (the one the model ran in: ``"bf16"``, never ``"auto"``) and ``weights``
(``path``: where they were read; ``sha256``: the first 16 hex digits of
:func:`~dinofeat.models.digest.weights_digest`).

* ``.npz``: each value is an array of its own type: ``int(f["patch_size"])``, ``f["layers"]``
  (int64), ``str(f["model"])``; ``weights`` is two string entries, ``weights_path`` and
  ``weights_sha256``; a value that is None is absent.
* ``.safetensors``: header metadata can only be text (str -> str), so each value is JSON:
  ``json.loads(metadata["patch_size"]) == 14``, ``json.loads(metadata["model"]) == "dinov2_vits14"``.

:func:`read_features` reads both, and the files of earlier versions (every value a string there).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from dinofeat.errors import InputError
from dinofeat.features.featuremap import FeatureMap
from dinofeat.io.outputs import staged_outputs
from dinofeat.options import ExtractorOptions

if TYPE_CHECKING:  # types only
    from dinofeat.features.source import FeatureSource

#: Suffixes of the feature file formats.
FEATURE_SUFFIXES = (".npz", ".safetensors")
#: The ``format`` entry of a feature file, and the version of its layout (1: before it was recorded).
FEATURES_FORMAT = "dinofeat.features"
FEATURES_VERSION = 2


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
    path: str | os.PathLike,
    maps: Sequence[FeatureMap],
    *,
    extra: Mapping[str, np.ndarray] | None = None,
    inputs: Sequence[str | None] = (),
    **metadata: Any,
) -> None:
    """Write ``maps`` (plus ``extra`` arrays), the ``inputs`` they came from (``input_{i}``; None
    for an image without a path) and ``metadata`` (numbers, strings, lists, dicts) atomically;
    the format follows the suffix (``.safetensors``, else ``.npz``)."""
    with staged_outputs([path]) as (tmp,):
        # a temporary path for the path given
        write_features(cast(Path, tmp), maps, extra=extra, inputs=inputs, **metadata)


def write_features(
    path: str | os.PathLike,
    maps: Sequence[FeatureMap],
    *,
    extra: Mapping[str, np.ndarray] | None = None,
    inputs: Sequence[str | None] = (),
    **metadata: Any,
) -> None:
    """:func:`save_features` without the staging, for a caller that stages several outputs together."""
    arrays = {**feature_arrays(maps), **(extra or {})}
    described: dict[str, Any] = {"format": FEATURES_FORMAT, "version": FEATURES_VERSION}
    described |= {f"input_{i}": str(name) for i, name in enumerate(inputs) if name is not None}
    if maps:
        described |= {"patch_size": maps[0].patch_size, "stride": maps[0].stride}
        if maps[0].cell_size is not None:  # an upsampled map: its cells, in processed pixels
            described["cell_size"] = maps[0].cell_size
    described |= metadata
    if str(path).endswith(".safetensors"):
        # lazy: only .safetensors outputs need it
        from safetensors.numpy import save_file

        text = {key: json.dumps(value) for key, value in described.items()}
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path), metadata=text)
    else:
        with open(path, "wb") as f:
            np.savez(f, **arrays, **_npz_entries(described))  # type: ignore[arg-type]  # numpy's stub lets **kwds reach allow_pickle


def _npz_entries(metadata: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Metadata as typed arrays: numbers as int64/float64, strings as str, lists as arrays, a dict
    as one entry per key (``weights`` -> ``weights_path``, ``weights_sha256``); None is left out."""
    entries: dict[str, np.ndarray] = {}
    for key, value in metadata.items():
        if isinstance(value, Mapping):
            entries |= _npz_entries({f"{key}_{inner}": v for inner, v in value.items()})
        elif value is not None:
            entries[key] = np.asarray(value)
    return entries


def read_features(path: str | os.PathLike) -> tuple[list[FeatureMap], dict[str, Any]]:
    """The feature maps of a file written by ``dinofeat extract -o`` (or
    ``pca --save-features``) and its metadata, typed (``{"patch_size": 14, "layers": [-1],
    "model": "dinov2_vits14", "input_0": "a.jpg", ...}``). Files of earlier versions (every
    value a string) load too: their values are decoded as JSON where they are JSON."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"feature file not found: {path}")
    try:
        arrays, metadata = _read_safetensors(path) if path.suffix == ".safetensors" else _read_npz(path)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"cannot read feature file {path} ({' '.join(str(err).split())})") from None
    patch_size, stride = int(metadata.get("patch_size", 14)), int(metadata.get("stride", 14))
    maps = []
    i = 0
    while f"features_{i}" in arrays:
        maps.append(
            FeatureMap(
                torch.from_numpy(np.asarray(arrays[f"features_{i}"], dtype=np.float32)),
                _size(arrays[f"image_size_{i}"]),
                _size(arrays[f"processed_size_{i}"]),
                patch_size=patch_size,
                stride=stride,
            )
        )
        i += 1
    return maps, metadata


def _size(value: np.ndarray) -> tuple[int, int]:
    width, height = (int(v) for v in np.asarray(value).reshape(-1)[:2])
    return width, height


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        entries = {key: data[key] for key in data.files}
    arrays = {k: v for k, v in entries.items() if k.startswith(_ARRAY_PREFIXES)}
    metadata: dict[str, Any] = {}
    for key, value in entries.items():
        if key in arrays:
            continue
        if value.dtype.kind == "U":  # a string (every value of a version 1 file)
            metadata[key] = _decoded(str(value)) if value.ndim == 0 else value.tolist()
        else:
            metadata[key] = value.tolist()
    weights = {key[len("weights_") :]: metadata.pop(key) for key in list(metadata) if key.startswith("weights_")}
    if weights:
        metadata["weights"] = {"path": None, **weights}
    return arrays, metadata


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    # lazy: only .safetensors files need it
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not a dict
        text = handle.metadata() or {}
    return arrays, {key: _decoded(value) for key, value in text.items()}


def _decoded(text: str) -> Any:
    """A metadata value: JSON where it is JSON (``"14"`` -> 14, ``'"dinov2_vits14"'`` ->
    ``"dinov2_vits14"``), else the text itself (version 1 wrote model names unquoted)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


#: Entries of a feature file that are arrays, not metadata.
_ARRAY_PREFIXES = ("features_", "image_size_", "processed_size_", "foreground_", "explained_variance")


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
