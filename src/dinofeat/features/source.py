"""What gives feature maps for images: :class:`FeatureSource`, the one interface the jobs take.

The :class:`~dinofeat.features.extractor.Extractor` (runs the model), the
:class:`~dinofeat.features.cache.FeatureCache` in front of one (the app), and a dataset's stored
features (:meth:`~dinofeat.dataset.store.FeatureStore.extractor_for`) all satisfy it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # types only: this module imports nothing heavy
    import numpy as np

    from dinofeat.features.featuremap import FeatureMap
    from dinofeat.models.registry import ModelSpec
    from dinofeat.options import ExtractorOptions


@runtime_checkable
class FeatureSource(Protocol):
    """Feature maps for ``(H, W, 3) uint8`` RGB images, with the settings that made them."""

    @property
    def options(self) -> ExtractorOptions:
        """The model, resolution, layers, facet, stride... the maps are computed with."""
        ...

    @property
    def spec(self) -> ModelSpec:
        """The backbone's registry entry (patch size, embedding size, family)."""
        ...

    @property
    def stride(self) -> int:
        """Step between patch centres, in processed pixels."""
        ...

    @property
    def batch_size(self) -> int:
        """Images per forward pass (how callers group frames)."""
        ...

    def extract_arrays(self, images: Sequence[np.ndarray]) -> list[FeatureMap]:
        """One :class:`FeatureMap` per image, in order (coordinates in each image's own pixels)."""
        ...


def provenance(source: FeatureSource) -> dict[str, Any]:
    """What files written from ``source``'s features record about how they were made:
    ``{"weights": {"path", "sha256"}, "precision"}`` (see
    :meth:`~dinofeat.features.extractor.Extractor.provenance`). A source without a
    ``provenance()`` method gives its options' weights path, no hash and its precision option."""
    described = getattr(source, "provenance", None)
    if callable(described):
        return dict(described())
    options = source.options
    weights = str(options.weights) if options.weights else None
    return {"weights": {"path": weights, "sha256": None}, "precision": options.precision}


def expect_images(source: FeatureSource, count: float) -> None:
    """Tell ``source`` that a job is about to ask it for about ``count`` images' maps (``math.inf``:
    an open-ended session): an :class:`~dinofeat.features.extractor.Extractor` with
    ``compile="auto"`` compiles its model where that repays the compile time. Sources that wrap
    another pass it on; sources without ``expect_images`` (stored features) need not know."""
    expect = getattr(source, "expect_images", None)
    if callable(expect):
        expect(count)
