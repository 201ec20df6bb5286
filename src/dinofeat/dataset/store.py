"""A dataset's features on disk: safetensors shards, a Parquet index, reading back with :func:`open_features`.

Layout of an ``extract --out-dir DIR`` folder (every file written atomically)::

    DIR/manifest.json              settings, model, weights hash, dinofeat version, inputs
    DIR/shards/shard-000000.safetensors
    DIR/shards/shard-000001.safetensors ...
    DIR/index.parquet              one row per image: path -> shard, key, sizes
    DIR/pca.safetensors            with --pca K: the basis the features were reduced with
    DIR/errors.jsonl               one {"path", "error"} object per line, for files that failed

**Shards** hold their arrays in the ``dinofeat extract -o`` layout (see
:mod:`dinofeat.features.files`): ``features_{j}`` ``(h, w, C)`` float32 or float16 (``C = K`` with
``--pca K``), ``image_size_{j}`` and ``processed_size_{j}`` ``(width, height)`` int64 for the j-th
image of the shard that succeeded, and one header metadata key, ``dinofeat``: JSON with
``format``, ``model``, ``resolution``, ``layers``, ``facet``, ``dtype``, ``shard`` (its number),
``items`` (``[{"item", "path", "key", "image_size", "processed_size", "grid"}, ...]``) and
``errors`` (``[{"item", "path", "error"}, ...]``). Shard k holds items ``k*S .. k*S+S-1`` of the
listing (``S = --shard-size``).

safetensors because it needs no dinofeat and no pickle to read (``safetensors``, numpy, torch, JAX,
Rust), reads one image's tensor without reading the rest (memory-mapped, the header gives
offsets), stores float16 natively, and the same arrays always give the same bytes. The
**index** is Parquet (pandas, polars, DuckDB, Spark read it): columns ``path``, ``shard``
(``shards/shard-000000.safetensors``), ``key`` (``features_3``), ``item`` (position in the
listing), ``grid_h``, ``grid_w``, ``image_w``, ``image_h``, ``processed_w``, ``processed_h``; its
key-value metadata ``dinofeat`` (JSON) lists the shards it was built from, those whose images all
failed included, each with the sha256 of its safetensors header. It is removed when a run starts
writing shards and rebuilt from the shard headers at the end; :func:`open_features` reads the
headers instead when the index is missing or was not built from exactly the shard files present
(an interrupted run).

**PCA** (``pca.safetensors``): ``mean`` ``(C,)``, ``components`` ``(K, C)`` and
``explained_variance`` ``(K,)`` float32 (metadata ``dinofeat``: JSON with the number of images it
was fitted on); stored features are ``(x - mean) @ components.T``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import safetensors
import safetensors.numpy
import safetensors.torch

from dinofeat.dataset.layout import ERRORS, INDEX, MANIFEST, PCA_FILE, SHARDS
from dinofeat.dataset.listing import normal_path as _key
from dinofeat.dataset.listing import spread_indices
from dinofeat.dataset.manifest import read_errors
from dinofeat.errors import InputError, render
from dinofeat.features.featuremap import FeatureMap
from dinofeat.features.files import feature_arrays
from dinofeat.io.outputs import staged_outputs
from dinofeat.models.digest import DIGEST_PREFIX
from dinofeat.models.registry import ModelSpec, get_spec
from dinofeat.options import FEATURE_SETTINGS, GPU_BATCH_SIZE, ExtractorOptions
from dinofeat.pca import PCABasis
from dinofeat.wording import plural

log = logging.getLogger(__name__)

SHARD_FORMAT = "dinofeat-shard"
#: The shard header's one metadata key.
SHARD_KEY = "dinofeat"
INDEX_COLUMNS = (
    "path",
    "shard",
    "key",
    "item",
    "grid_h",
    "grid_w",
    "image_w",
    "image_h",
    "processed_w",
    "processed_h",
)
#: The index's Parquet key-value metadata key: JSON ``{"format", "shards": {name: fingerprint}}``,
#: what it was built from (:func:`shard_fingerprint`).
INDEX_KEY = "dinofeat"
INDEX_FORMAT = "dinofeat-index"
#: The largest safetensors header read (the format's own limit).
MAX_HEADER = 100_000_000
#: Shard files a :class:`FeatureStore` keeps open (memory-mapped) at once.
OPEN_SHARDS = 8


def shard_name(number: int) -> str:
    """``shards/shard-000042.safetensors``: where shard ``number`` lives in the dataset folder."""
    return f"{SHARDS}/shard-{number:06d}.safetensors"


def shard_files(folder: str | os.PathLike) -> list[Path]:
    """The finished shard files of a dataset folder, in shard order (temporary files skipped)."""
    shards = Path(folder) / SHARDS
    if not shards.is_dir():
        return []
    return sorted(p for p in shards.iterdir() if p.name.startswith("shard-") and p.suffix == ".safetensors")


def write_shard(
    path: str | os.PathLike,
    number: int,
    items: Sequence[dict],
    maps: Sequence[FeatureMap],
    errors: Sequence[dict],
    *,
    dtype: str,
    metadata: Mapping[str, object],
) -> None:
    """Write shard ``number`` atomically: ``maps[j]`` is the image ``items[j]`` (``{"item", "path"}``),
    ``errors`` the items that failed (``{"item", "path", "error"}``).

    The arrays are :func:`~dinofeat.features.files.feature_arrays`' (the ``dinofeat extract`` layout);
    the header metadata is one key, ``dinofeat``, holding JSON with sorted keys, so that the same
    shard is the same bytes in every run and engine (safetensors writes several metadata keys in
    an order that changes from process to process).
    """
    described = [
        {
            **item,
            "key": f"features_{j}",
            "image_size": list(fmap.image_size_wh),
            "processed_size": list(fmap.processed_size_wh),
            "grid": list(fmap.grid_hw),
        }
        for j, (item, fmap) in enumerate(zip(items, maps))
    ]
    header = {
        "format": SHARD_FORMAT,
        **metadata,
        "dtype": dtype,
        "shard": number,
        "items": described,
        "errors": [{**error, "error": render(error["error"])} for error in errors],  # field names, not marks
    }
    arrays = feature_arrays(maps, dtype)
    with staged_outputs([path]) as (tmp,):
        safetensors.numpy.save_file(arrays, str(tmp), metadata={SHARD_KEY: json.dumps(header, sort_keys=True)})


def read_shard_header(path: str | os.PathLike) -> dict:
    """A shard's header (the ``dinofeat`` metadata key, decoded; the tensors are not read)."""
    return _read_shard(path)[0]


def shard_fingerprint(path: str | os.PathLike) -> str | None:
    """sha256 of a shard's safetensors header (its size prefix and JSON: the items, their keys and
    sizes, the tensors' offsets): everything the index takes from the shard, read without the
    tensors. None for a file too short to hold a header."""
    try:
        prefix, raw, _ = _header_bytes(path)
    except (OSError, ValueError):
        return None
    return _digest(prefix, raw)


def _header_bytes(path: str | os.PathLike) -> tuple[bytes, bytes, int]:
    """A safetensors file's 8-byte size prefix, its JSON header (as stored) and the file's length."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        raw = handle.read(size) if 0 <= size <= MAX_HEADER else b""
        length = os.fstat(handle.fileno()).st_size
    if size < 0 or len(raw) != size:
        raise ValueError("the file is shorter than a safetensors header")
    return prefix, raw, length


def _digest(prefix: bytes, raw: bytes) -> str:
    return hashlib.sha256(prefix + raw).hexdigest()


def _read_shard(path: str | os.PathLike) -> tuple[dict, str]:
    """A shard's header (decoded) and its :func:`shard_fingerprint`, from one read of the file's
    header; the file's length is checked against the tensors' offsets, as safetensors does."""
    try:
        prefix, raw, length = _header_bytes(path)
        document = json.loads(raw)
        ends = [spec["data_offsets"][1] for name, spec in document.items() if name != "__metadata__"]
        if 8 + len(raw) + max(ends, default=0) != length:
            raise ValueError("the file's length is not what its header says")
        text = (document.get("__metadata__") or {}).get(SHARD_KEY)
        header = json.loads(text) if text else {}
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise InputError(f"cannot read shard {path} ({' '.join(str(err).split())})") from None
    if not isinstance(header, dict) or header.get("format") != SHARD_FORMAT:
        raise InputError(f"{path} is not a dinofeat dataset shard")
    return header, _digest(prefix, raw)


def index_rows(folder: str | os.PathLike) -> Iterator[dict]:
    """One row per stored image (:data:`INDEX_COLUMNS`), read from the shard headers, in listing order."""
    for file in shard_files(folder):
        yield from _header_rows(f"{SHARDS}/{file.name}", read_shard_header(file))


def _header_rows(name: str, header: dict) -> Iterator[dict]:
    for item in header["items"]:
        (image_w, image_h), (processed_w, processed_h) = item["image_size"], item["processed_size"]
        grid_h, grid_w = item["grid"]
        yield {
            "path": item["path"],
            "shard": name,
            "key": item["key"],
            "item": item["item"],
            "grid_h": grid_h,
            "grid_w": grid_w,
            "image_w": image_w,
            "image_h": image_h,
            "processed_w": processed_w,
            "processed_h": processed_h,
        }


def shard_errors(folder: str | os.PathLike) -> list[dict]:
    """The failed items recorded in the shard headers, in listing order."""
    return [error for file in shard_files(folder) for error in read_shard_header(file)["errors"]]


def write_index(folder: str | os.PathLike, errors: list | None = None) -> int:
    """Rebuild ``index.parquet`` from the shard headers (atomically, one row group per shard, so
    memory does not grow with the dataset); returns its number of rows. Each header is read once:
    the failed items it records are appended to ``errors`` when given (see :func:`shard_errors`)."""
    types = {"path": pa.string(), "shard": pa.string(), "key": pa.string(), "item": pa.int64()}
    schema = pa.schema([(name, types.get(name, pa.int32())) for name in INDEX_COLUMNS])
    count, shards = 0, {}
    with staged_outputs([Path(folder) / INDEX]) as (tmp,), pq.ParquetWriter(str(tmp), schema) as writer:
        for file in shard_files(folder):
            name = f"{SHARDS}/{file.name}"
            header, shards[name] = _read_shard(file)  # a shard whose images all failed has no rows, but counts
            rows = list(_header_rows(name, header))
            if errors is not None:
                errors.extend(header["errors"])
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                count += len(rows)
        writer.add_key_value_metadata({INDEX_KEY: json.dumps({"format": INDEX_FORMAT, "shards": shards})})
    return count


def _index_shards(index: Path) -> dict[str, str] | None:
    """The shards an ``index.parquet`` was built from, ``{name: fingerprint}`` (its metadata; see
    :func:`shard_fingerprint`), or None (not recorded, damaged)."""
    try:
        text = (pq.ParquetFile(index).metadata.metadata or {}).get(INDEX_KEY.encode())
        recorded = json.loads(text) if text else {}
    except Exception:  # noqa: BLE001 - pyarrow raises several types for damaged files: then it is rebuilt
        return None
    shards = recorded.get("shards") if recorded.get("format") == INDEX_FORMAT else None
    return shards if isinstance(shards, dict) else None


# ---------------------------------------------------------------------------------------------
# The storage PCA


def save_pca(path: str | os.PathLike, basis: PCABasis, *, fitted_on: int) -> None:
    """Write a :class:`~dinofeat.pca.PCABasis` as ``pca.safetensors`` (atomically)."""
    arrays = {
        "mean": basis.mean.numpy().astype(np.float32),
        "components": basis.components.numpy().astype(np.float32),
        "explained_variance": basis.explained_variance.numpy().astype(np.float32),
    }
    meta = json.dumps({"format": "dinofeat-storage-pca", "images": fitted_on}, sort_keys=True)
    with staged_outputs([path]) as (tmp,):
        safetensors.numpy.save_file(arrays, str(tmp), metadata={SHARD_KEY: meta})  # one key: the same bytes every time


def load_pca(path: str | os.PathLike) -> PCABasis:
    """Read ``pca.safetensors`` back as a :class:`~dinofeat.pca.PCABasis`."""
    try:
        arrays = safetensors.torch.load_file(str(path))
        return PCABasis(arrays["mean"], arrays["components"], arrays["explained_variance"])
    except (OSError, KeyError) as err:
        raise InputError(f"cannot read the dataset's PCA {path} ({err})") from None


# ---------------------------------------------------------------------------------------------
# Reading back


@dataclass(frozen=True)
class _Entry:
    shard: str
    key: str
    item: int
    image_size_wh: tuple[int, int]
    processed_size_wh: tuple[int, int]


class FeatureStore(Mapping[str, FeatureMap]):
    """The features of a dataset folder, read lazily: ``store[path]`` is a :class:`FeatureMap`.

    Paths are the items' paths as the dataset lists them (:meth:`paths`): relative to the input
    folder (``/`` separated), or as written in the list file. A stored float32 map equals what
    single-file ``dinofeat extract`` gives for that image with the same settings (to rounding,
    1e-5); float16 maps come back as float32; with ``--pca K`` the maps have K channels
    (:attr:`pca` is the basis). Reading one map reads only its bytes (the shards are memory-mapped).

    Attributes:
        folder: the dataset folder.
        manifest: its ``manifest.json``.
        options: the :class:`~dinofeat.options.ExtractorOptions` the features were made with.
        dtype: ``"float32"`` or ``"float16"`` (as stored).
        pca: the storage :class:`~dinofeat.pca.PCABasis` (``--pca K``), or None.
        root: the folder the item paths are relative to (where the images were).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            raise InputError(f"{self.folder} is not a dinofeat feature folder (no {MANIFEST})")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read {manifest_path}: {err}") from None
        if self.manifest.get("kind") != "features":
            raise InputError(f"{self.folder} holds {self.manifest.get('kind', 'unknown')}, not features")
        settings = self.manifest["settings"]
        features: dict[str, Any] = {name: settings[name] for name in FEATURE_SETTINGS}
        features["layers"] = tuple(features["layers"])
        self.options = ExtractorOptions(
            model=self.manifest["model"],
            weights=self.manifest.get("weights"),
            batch_size=self.manifest.get("batch_size"),
            **features,
        )
        self.dtype: str = settings["dtype"]
        self.root = Path(self.manifest["inputs"]["root"])
        self.patch_size: int = self.manifest["geometry"]["patch_size"]
        self.stride: int = self.manifest["geometry"]["stride"]
        #: processed pixels per cell of maps stored upsampled (``extract --out-dir --upsample anyup``), else None
        self.cell_size: float | None = self.manifest["geometry"].get("cell_size")
        self.pca = load_pca(self.folder / PCA_FILE) if settings.get("pca") else None
        self._entries = self._read_entries()
        self._handles: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def _read_entries(self) -> dict[str, _Entry]:
        files = shard_files(self.folder)
        rows = None
        index = self.folder / INDEX
        if index.is_file():
            recorded = _index_shards(index)
            # the index is used only if it was built from these very shards (a shard rewritten since,
            # by a run killed before it rewrote the index, has other items under the same keys)
            if recorded is not None and recorded == {f"{SHARDS}/{p.name}": shard_fingerprint(p) for p in files}:
                table = pq.read_table(index).to_pydict()
                rows = [dict(zip(table, values)) for values in zip(*table.values())]
        if rows is None:
            if files:
                why = "does not match the shards" if index.is_file() else "is missing"
                log.warning("%s %s (an unfinished run?); reading the shard headers", index, why)
            rows = list(index_rows(self.folder))
        return {
            row["path"]: _Entry(
                row["shard"],
                row["key"],
                int(row["item"]),
                (int(row["image_w"]), int(row["image_h"])),
                (int(row["processed_w"]), int(row["processed_h"])),
            )
            for row in rows
        }

    # -- the mapping ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and _key(path) in self._entries

    def paths(self) -> list[str]:
        """The stored items' paths, in listing order."""
        return list(self._entries)

    def __getitem__(self, path: str | os.PathLike) -> FeatureMap:
        entry = self._entries.get(_key(path))
        if entry is None:
            raise KeyError(path)
        with self._lock:
            features = self._handle(entry.shard).get_tensor(entry.key)
        return FeatureMap(
            features=features.float(),
            image_size_wh=entry.image_size_wh,
            processed_size_wh=entry.processed_size_wh,
            patch_size=self.patch_size,
            stride=self.stride,
            cell_size=self.cell_size,
        )

    def _handle(self, shard: str) -> Any:
        """The open (memory-mapped) safetensors file of ``shard``, the least recently used closed
        beyond :data:`OPEN_SHARDS`."""
        handle = self._handles.pop(shard, None)
        if handle is None:
            handle = safetensors.safe_open(str(self.folder / shard), framework="pt")
        self._handles[shard] = handle
        while len(self._handles) > OPEN_SHARDS:
            self._handles.popitem(last=False)
        return handle

    # -- helpers -------------------------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec:
        """The model's :class:`~dinofeat.models.registry.ModelSpec`."""
        return get_spec(self.options.model)

    @property
    def dim(self) -> int:
        """Channels of a stored map (K with a PCA)."""
        return int(self.manifest["geometry"]["dim"])

    def errors(self) -> list[dict]:
        """The ``{"path", "error"}`` records of the files that failed (``errors.jsonl``)."""
        return read_errors(self.folder / ERRORS)

    def sample(self, count: int) -> list[str]:
        """``count`` paths spread evenly over the dataset (all of them if it holds fewer)."""
        paths = self.paths()
        return [paths[i] for i in spread_indices(len(paths), count)]

    def find(self, path: str | os.PathLike) -> str:
        """The stored path for ``path``: itself, or a file below :attr:`root` named by its relative
        path. Raises :class:`InputError` if it is not in the store."""
        key = _key(path)
        if key in self._entries:
            return key
        try:
            relative = Path(os.path.abspath(path)).relative_to(self.root).as_posix()
        except ValueError:
            relative = None
        if relative in self._entries:
            return relative
        example = next(iter(self._entries), None)
        hint = f" (its paths look like {example!r})" if example else " (it is empty)"
        raise InputError(f"{path} is not in the feature folder {self.folder}{hint}")

    def image_file(self, path: str) -> Path:
        """The image file of a stored path (for drawing): :attr:`root` / path, or the path itself."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.root / candidate

    def extractor_for(self, paths: Sequence[str]) -> StoredFeatures:
        """An extractor stand-in that gives these items' stored maps (see :class:`StoredFeatures`)."""
        return StoredFeatures(self, [self.find(p) for p in paths])

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.folder)!r}, {len(self)} images, {self.options.model}, {self.dtype})"


class StoredFeatures:
    """A :class:`~dinofeat.features.source.FeatureSource` over stored maps, so that the match and PCA
    workflows read features from a :class:`FeatureStore` instead of running the model:
    ``extract_arrays(images)`` returns the maps of ``paths``, in order, after checking that each
    image has the stored image's size. The settings are the store's."""

    def __init__(self, store: FeatureStore, paths: Sequence[str]) -> None:
        self.store, self.paths = store, list(paths)
        self.options: ExtractorOptions = store.options
        self.spec: ModelSpec = store.spec
        self.stride: int = store.stride
        self.batch_size: int = store.options.batch_size or GPU_BATCH_SIZE  # no model runs: how maps are grouped

    def provenance(self) -> dict[str, Any]:
        """The weights and precision the store's manifest records (see
        :meth:`~dinofeat.features.extractor.Extractor.provenance`; ``precision`` is the option
        given in folders written before the precision used was recorded)."""
        manifest = self.store.manifest
        digest = manifest.get("weights_sha256")
        return {
            "weights": {"path": manifest.get("weights"), "sha256": digest[:DIGEST_PREFIX] if digest else None},
            "precision": manifest.get("precision_used", self.options.precision),
        }

    def extract_arrays(self, images: Sequence[np.ndarray]) -> list[FeatureMap]:
        if len(images) != len(self.paths):
            raise InputError(f"expected {plural(len(self.paths), 'image')} for the stored features, got {len(images)}")
        maps = [self.store[path] for path in self.paths]
        for path, image, fmap in zip(self.paths, images, maps):
            size = (image.shape[1], image.shape[0])
            if size != fmap.image_size_wh:
                w, h = fmap.image_size_wh
                raise InputError(f"{path} is {size[0]}x{size[1]} pixels; its stored features are of a {w}x{h} image")
        return maps


def open_features(folder: str | os.PathLike) -> FeatureStore:
    """Open a feature folder written by ``dinofeat extract --out-dir`` (or
    :func:`~dinofeat.dataset.runs.extract_dataset`) for reading.

    >>> store = open_features("features/")            # doctest: +SKIP
    >>> len(store), store.paths()[:2]                 # doctest: +SKIP
    (1000, ['cats/001.jpg', 'cats/002.jpg'])
    >>> store["cats/001.jpg"].features.shape          # doctest: +SKIP
    torch.Size([32, 42, 384])
    """
    return FeatureStore(folder)
