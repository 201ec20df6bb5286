"""Feature maps of images seen before, kept so that asking again does not run the model again."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from dinofeat.features.extractor import Extractor
from dinofeat.features.featuremap import FeatureMap
from dinofeat.models.registry import ModelSpec
from dinofeat.options import ExtractorOptions

#: Feature maps kept by default.
DEFAULT_CACHE_SIZE = 8


class FeatureCache:
    """A least-recently-used cache of feature maps in front of an :class:`~dinofeat.features.extractor.Extractor`.

    It is a :class:`~dinofeat.features.source.FeatureSource` like the extractor, so every workflow
    takes either. Keys are the image's content and
    the extractor's options, so :meth:`with_options` (another resolution, say) gives a view that
    shares the same store without mixing up maps. Thread-safe; model calls run one at a time.

    Args:
        extractor: the extractor that computes missing maps.
        size: maps kept at most (the least recently used are dropped first).
    """

    def __init__(self, extractor: Extractor, size: int = DEFAULT_CACHE_SIZE) -> None:
        self.extractor = extractor
        self.size = int(size)
        self._store: OrderedDict[tuple[str, ExtractorOptions], FeatureMap] = OrderedDict()
        self._store_lock = threading.Lock()
        self.model_lock = threading.Lock()

    def with_options(self, **changes: object) -> FeatureCache:
        """A view through ``extractor.with_options(**changes)`` sharing this cache's store and locks
        (itself when nothing changes)."""
        if all(getattr(self.extractor.options, key) == value for key, value in changes.items()):
            return self
        view = FeatureCache.__new__(FeatureCache)
        view.__dict__.update(self.__dict__)
        view.extractor = self.extractor.with_options(**changes)
        return view

    # -- the extractor's settings (FeatureSource) --------------------------------------------------
    @property
    def options(self) -> ExtractorOptions:
        return self.extractor.options

    @property
    def spec(self) -> ModelSpec:
        return self.extractor.spec

    @property
    def stride(self) -> int:
        return self.extractor.stride

    @property
    def batch_size(self) -> int:
        return self.extractor.batch_size

    def provenance(self) -> dict[str, Any]:
        """The extractor's :meth:`~dinofeat.features.extractor.Extractor.provenance`."""
        return self.extractor.provenance()

    def expect_images(self, count: float) -> None:
        """Passed on to the extractor (:meth:`~dinofeat.features.extractor.Extractor.expect_images`):
        maps found in the cache need no pass, so this may overestimate."""
        self.extractor.expect_images(count)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        """``FeatureCache(3 of 8 maps, Extractor(...))``."""
        return f"FeatureCache({len(self)} of {self.size} maps, {self.extractor!r})"

    def extract_arrays(self, images: Sequence[np.ndarray]) -> list[FeatureMap]:
        """Feature maps of ``(H, W, 3) uint8`` images, computing (in one batch) only those not cached."""
        keys = [(image_digest(image), self.extractor.options) for image in images]
        with self._store_lock:
            found = {key: self._store[key] for key in keys if key in self._store}
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            with self.model_lock:
                maps = self.extractor.extract_arrays([images[i] for i in missing])
            for i, fmap in zip(missing, maps):
                found[keys[i]] = fmap
        with self._store_lock:
            for key in keys:
                self._store[key] = found[key]
                self._store.move_to_end(key)
            while len(self._store) > self.size:
                self._store.popitem(last=False)
        return [found[key] for key in keys]


def image_digest(image: np.ndarray) -> str:
    """Content hash of an image array (its pixels, shape and dtype)."""
    digest = hashlib.sha1(np.ascontiguousarray(image).tobytes())
    digest.update(repr((image.shape, image.dtype.str)).encode())
    return digest.hexdigest()
