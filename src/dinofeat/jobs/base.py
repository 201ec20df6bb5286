"""The shape every job has (:class:`Job`): check without the model, then run with a feature source."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:  # types only
    from dinofeat.features.source import FeatureSource
    from dinofeat.runtime.progress import Progress

Result = TypeVar("Result", covariant=True)
#: A file path as the jobs take it.
PathLike = str | os.PathLike


class Job(Protocol[Result]):
    """A command's work: ``check()`` first (no model needed), then ``run(source, progress)``."""

    def check(self) -> None:
        """Every check that needs no model; raises :class:`~dinofeat.errors.InputError` naming the field."""
        ...

    def run(self, source: FeatureSource, progress: Progress | None = None) -> Result:
        """Compute with ``source``, write the job's files atomically, return the typed result."""
        ...
