"""Saving feature maps as ``.npz`` or ``.safetensors`` (the ``dinofeat extract`` format)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from dinofeat.features import FeatureMap
from dinofeat.outputs import staged_outputs


def feature_arrays(maps: Sequence[FeatureMap]) -> dict[str, np.ndarray]:
    """``features_{i}`` (h, w, C) float32, ``image_size_{i}`` and ``processed_size_{i}`` (w, h) int64."""
    arrays: dict[str, np.ndarray] = {}
    for i, fmap in enumerate(maps):
        arrays[f"features_{i}"] = np.ascontiguousarray(fmap.numpy(), dtype=np.float32)
        arrays[f"image_size_{i}"] = np.asarray(fmap.image_size_wh, dtype=np.int64)
        arrays[f"processed_size_{i}"] = np.asarray(fmap.processed_size_wh, dtype=np.int64)
    return arrays


def save_features(path: str | os.PathLike, maps: Sequence[FeatureMap], **metadata) -> None:
    """Write ``maps`` and string-able ``metadata`` atomically; the format follows the suffix.

    In ``.npz`` files metadata values are stored as 0-d string arrays (``str(f["model"])``); in
    ``.safetensors`` files they are the header metadata (JSON for lists).
    """
    arrays = feature_arrays(maps)
    if maps:
        metadata = {"patch_size": maps[0].patch_size, "stride": maps[0].stride, **metadata}
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    with staged_outputs([path]) as (tmp,):
        if str(path).endswith(".safetensors"):
            from safetensors.numpy import save_file

            save_file(arrays, str(tmp), metadata=text)
        else:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, **{k: np.asarray(v) for k, v in text.items()})
