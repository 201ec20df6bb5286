"""Parameter sweeps: ``name=start:stop:step`` texts, every combination evaluated, a table of results.

Used by ``dinofeat eval`` to choose thresholds from measurements (``--sweep min_score=0.3:0.8:0.05``).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from dinofeat.errors import InputError
from dinofeat.runtime.progress import Progress, report

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Most values one sweep may produce (a typo in a step should not start a thousand runs).
MAX_SWEEP_VALUES = 1000


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """Parse ``"name=start:stop:step"`` (stop included), ``"name=a,b,c"`` or ``"name=value"``.

    Values are rounded to the decimals written (so ``0.3:0.8:0.05`` gives ``0.35``, not
    ``0.35000000000000003``); the stop is included when it lies on the grid within a tolerance of
    1e-9 steps. Whole numbers stay ints (``window=2:8:2``). Bad text raises :class:`InputError`.

    >>> parse_sweep("min_score=0.3:0.5:0.05")
    ('min_score', [0.3, 0.35, 0.4, 0.45, 0.5])
    >>> parse_sweep("window=2:8:3")
    ('window', [2, 5, 8])
    """
    name, sep, spec = str(text).partition("=")
    name, spec = name.strip(), spec.strip()
    usage = "expected name=start:stop:step, name=a,b,c or name=value (e.g. min_score=0.3:0.8:0.05)"
    if not sep or not _NAME.match(name) or not spec:
        raise InputError(f"sweep {text!r}: {usage}")
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) != 3:
            raise InputError(f"sweep {text!r}: a range is start:stop:step; {usage}")
        start, stop, step = (_sweep_number(part, text) for part in parts)
        if not step > 0:
            raise InputError(f"sweep {text!r}: the step must be positive")
        if stop < start:
            raise InputError(f"sweep {text!r}: stop ({parts[1]}) is below start ({parts[0]})")
        count = math.floor((stop - start) / step + 1e-9) + 1
        if count > MAX_SWEEP_VALUES:
            raise InputError(f"sweep {text!r}: {count} values, more than {MAX_SWEEP_VALUES}; use a larger step")
        decimals = max(_decimals(parts[0]), _decimals(parts[2]))
        values = [round(start + k * step, decimals) for k in range(count)]
        whole = decimals == 0 and all(_is_whole(part) for part in (parts[0], parts[2]))
    else:
        parts = [part.strip() for part in spec.split(",")]
        values = [_sweep_number(part, text) for part in parts]
        whole = all(_is_whole(part) for part in parts)
        if len(values) > MAX_SWEEP_VALUES:
            raise InputError(f"sweep {text!r}: more than {MAX_SWEEP_VALUES} values")
    return name, [int(v) for v in values] if whole else values


def parse_sweeps(texts: Iterable[str]) -> dict[str, list[float]]:
    """Several :func:`parse_sweep` texts -> ``{name: values}`` in order; a repeated name is an error."""
    grid: dict[str, list[float]] = {}
    for text in texts:
        name, values = parse_sweep(text)
        if name in grid:
            raise InputError(f"sweep {text!r}: {name} is swept twice")
        grid[name] = values
    return grid


def _sweep_number(part: str, text: str) -> float:
    try:
        value = float(part)
    except ValueError:
        raise InputError(f"sweep {text!r}: {part.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"sweep {text!r}: {part.strip()!r} is not a finite number")
    return value


def _decimals(part: str) -> int:
    try:
        exponent = Decimal(part.strip()).as_tuple().exponent
    except InvalidOperation:  # pragma: no cover - float() accepted it already
        return 12
    return max(0, -exponent) if isinstance(exponent, int) else 12


def _is_whole(part: str) -> bool:
    return re.fullmatch(r"\s*[-+]?\d+\s*", part) is not None


@dataclass
class SweepRun:
    """One setting of a sweep: the values used and the report's mean metrics."""

    settings: dict[str, float]
    mean: dict[str, float]


@dataclass
class Sweep:
    """Results of :func:`run_sweep`, one run per combination of values, in sweep order.

    Attributes:
        names: the swept option names.
        runs: one :class:`SweepRun` per combination.
        metric: the metric :meth:`best` ranks by (higher is better).
        columns: ``(label, metric key)`` pairs the table shows, as percentages.
    """

    names: list[str]
    runs: list[SweepRun]
    metric: str
    columns: tuple[tuple[str, str], ...]

    def best(self) -> SweepRun:
        """The run with the highest ``metric`` (the first of equals; NaN never wins)."""
        scores = [run.mean.get(self.metric, math.nan) for run in self.runs]
        finite = [i for i, score in enumerate(scores) if math.isfinite(score)]
        return self.runs[max(finite, key=lambda i: scores[i])] if finite else self.runs[0]

    def to_json(self) -> dict:
        """``{"metric", "runs": [{"settings": {...}, "mean": {...}}], "best": {...settings}}``."""
        return {
            "metric": self.metric,
            "runs": [{"settings": dict(run.settings), "mean": json_metrics(run.mean)} for run in self.runs],
            "best": dict(self.best().settings),
        }

    def format_table(self) -> str:
        """One row per setting: the swept values and the columns in %, the best run marked ``*``."""
        best = self.best()
        widths = [max(len(name), *(len(f"{run.settings[name]:g}") for run in self.runs)) for name in self.names]
        header = "  ".join(f"{name:>{w}}" for name, w in zip(self.names, widths))
        header += "".join(f"  {label:>6}" for label, _ in self.columns)
        lines = [header, "-" * len(header)]
        for run in self.runs:
            values = "  ".join(f"{run.settings[name]:>{w}g}" for name, w in zip(self.names, widths))
            cells = "".join(f"  {percent(run.mean.get(key, math.nan))}" for _, key in self.columns)
            lines.append(values + cells + ("  *" if run is best else ""))
        return "\n".join(lines)


def run_sweep(
    grid: Mapping[str, Sequence[float]],
    evaluate: Callable[[dict[str, float]], Mapping[str, float]],
    *,
    metric: str,
    columns: Sequence[tuple[str, str]],
    progress: Progress | None = None,
) -> Sweep:
    """Evaluate every combination of the swept values and collect their metrics.

    Args:
        grid: name -> values (e.g. :func:`parse_sweeps`); several names sweep their product.
        evaluate: ``evaluate(settings) -> {metric: value}`` (e.g. a benchmark's mean metrics).
        metric: the metric :meth:`Sweep.best` ranks by; it must be among ``columns``' keys or be
            returned by ``evaluate``.
        columns: ``(label, metric key)`` pairs for :meth:`Sweep.format_table`.
        progress: called as ``progress(done, total)`` after each run.
    """
    if not grid or any(len(values) == 0 for values in grid.values()):
        raise InputError("a sweep needs at least one name with at least one value")
    names = list(grid)
    combos = list(itertools.product(*(grid[name] for name in names)))
    runs = []
    for done, values in enumerate(combos, start=1):
        settings = dict(zip(names, values))
        mean = dict(evaluate(dict(settings)))
        runs.append(SweepRun(settings=settings, mean=mean))
        log.info("sweep %s: %s %.1f", settings, metric, 100 * mean.get(metric, math.nan))
        report(progress, done, len(combos))
    return Sweep(names=names, runs=runs, metric=metric, columns=tuple(columns))


def percent(value: float) -> str:
    """A fraction as a 6-character percentage (``-`` for NaN)."""
    return f"{100 * value:6.1f}" if math.isfinite(value) else f"{'-':>6}"


def json_metrics(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """Metrics for JSON: NaN and infinities become None."""
    return {key: (float(value) if math.isfinite(value) else None) for key, value in metrics.items()}
