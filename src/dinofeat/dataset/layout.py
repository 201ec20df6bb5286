"""The names of a dataset folder's files, which :mod:`~dinofeat.dataset.store` (the features) and
:mod:`~dinofeat.dataset.manifest` (the bookkeeping) both use. See :mod:`dinofeat.dataset.store` for
what each holds."""

from __future__ import annotations

MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
INDEX = "index.parquet"
PCA_FILE = "pca.safetensors"
SHARDS = "shards"
#: Per-video outputs of a tracking dataset.
TRACKS = "tracks"
