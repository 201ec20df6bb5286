"""Where weights are kept on this machine: the torch hub cache and the Hugging Face cache.

Torch-free, so that ``dinofeat models`` lists what is cached without importing torch (4 s).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dinofeat.models.registry import ModelSpec

#: The Hugging Face files that hold a model's weights: one file, or a shard index (the 7B).
HF_FILES = ("model.safetensors", "model.safetensors.index.json")


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``: ``$TORCH_HOME/hub``, ``$TORCH_HOME`` defaulting to ``$XDG_CACHE_HOME/torch``
    (``~/.cache/torch``). Where torch is already imported its answer is used (it honours ``set_dir``)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return Path(torch.hub.get_dir())
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.environ.get("TORCH_HOME", os.path.join(cache, "torch")))) / "hub"


def hub_checkpoint_path(spec: ModelSpec) -> Path:
    """Where ``torch.hub`` keeps (or would keep) the official checkpoint of ``spec``.

    DINOv3: the first file matching ``spec.checkpoint_pattern`` (the official hash preferred), or
    the official file name when there is none.
    """
    folder = torch_hub_dir() / "checkpoints"
    official = folder / spec.checkpoint_file
    if spec.checkpoint_pattern == spec.checkpoint_file or official.is_file():
        return official
    found = sorted(path for path in folder.glob(spec.checkpoint_pattern) if path.is_file())
    return found[0] if found else official


def hf_cached(spec: ModelSpec) -> str | None:
    """Path of the weights file (or shard index) of ``spec.hf_repo`` in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache  # lazy: huggingface_hub takes ~0.1 s to import

    for filename in HF_FILES:
        found = try_to_load_from_cache(spec.hf_repo, filename)
        if isinstance(found, str):
            return found
    return None


def cached_locally(spec: ModelSpec) -> str | None:
    """Which local cache already holds weights for ``spec`` ("torch hub", "hugging face"), or None."""
    if hub_checkpoint_path(spec).is_file():
        return "torch hub"
    try:
        found = hf_cached(spec)
    except Exception:  # noqa: BLE001 - a broken cache must not break `dinofeat models`
        return None
    return "hugging face" if found else None
