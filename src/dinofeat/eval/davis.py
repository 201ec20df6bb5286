"""DAVIS 2017 semi-supervised video object segmentation: the folder, the protocol, the scores.

The protocol is facebookresearch/dino's ``eval_video_segmentation.py`` (the one the DINO, DINOv2 and
DINOv3 papers report): each sequence's first annotation is given, every later frame is segmented by
a ``segment_fn`` (dinofeat's label propagation: :func:`~dinofeat.eval.evaluation.segmenter_fn`), and
the masks are scored with davisvideochallenge/davis2017-evaluation's metrics
(:mod:`dinofeat.eval.davis_metrics`): J and F per object over every frame but the first and the
last, their mean, recall and decay, and J&F-Mean over all objects.

The folder (as the DAVIS 2017 TrainVal download unpacks)::

    ROOT/JPEGImages/480p/<sequence>/00000.jpg ...
    ROOT/Annotations/480p/<sequence>/00000.png ...   indexed PNGs: 0 background, 1..K objects, 255 void
    ROOT/ImageSets/2017/val.txt, train.txt            one sequence name per line

Results (``results_dir``) follow the official results layout, so the official evaluator runs on
them too: ``<results_dir>/<sequence>/<frame stem>.png``, one indexed PNG in the DAVIS palette per
frame (the first frame's is the given annotation).

Frames are read one at a time as the ``segment_fn`` asks for them; a sequence's annotations and
predicted masks (``(T, H, W)`` uint8 each) are held while it is scored.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dinofeat.errors import DiskFullError, InputError, field, is_disk_full
from dinofeat.eval.davis_metrics import VOID_LABEL, MeanScores, ObjectScore, mean_scores, score_sequence
from dinofeat.eval.sweeps import percent
from dinofeat.io.masks import read_mask, save_mask
from dinofeat.io.outputs import ensure_folder
from dinofeat.runtime.progress import Progress, report

log = logging.getLogger(__name__)

#: The frame folders of the 480p download (the resolution the benchmark is scored at).
RESOLUTION_FOLDER = "480p"
#: The year folder of the semi-supervised image sets.
IMAGE_SETS_YEAR = "2017"
#: Pillow modes of label images: indexed (palette) or grayscale.
LABEL_MODES = ("P", "L")
#: Frames a sequence needs: the first is given and neither it nor the last is scored.
MIN_FRAMES = 3

#: ``segment_fn(frames, first_mask) -> masks``: ``frames`` an iterator of ``(H, W, 3) uint8`` RGB
#: frames (the first included), ``first_mask`` ``(H, W) uint8`` labels of the first frame (0
#: background, 1..K objects, 255 void); yields ``(H, W)`` uint8 labels 0..K for every frame after
#: the first, in order, reading frames only as it needs them.
SegmentFn = Callable[[Iterator[np.ndarray], np.ndarray], Iterable[np.ndarray]]


# -- the folder ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DavisSequence:
    """One DAVIS sequence: its frames and their annotations, checked by :func:`read_davis`.

    Attributes:
        name: the sequence name (its folder).
        frames: ``JPEGImages/480p/<name>/*.jpg`` in order.
        annotations: ``Annotations/480p/<name>/<frame stem>.png``, one per frame.
        size_wh: every frame's ``(width, height)``.
    """

    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path, ...]
    size_wh: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def read_frames(self) -> Iterator[np.ndarray]:
        """The frames, ``(H, W, 3) uint8`` RGB, read one at a time."""
        for path in self.frames:
            yield _read_rgb(path)

    def read_annotation(self, index: int) -> np.ndarray:
        """Frame ``index``'s annotation, ``(H, W) uint8`` labels (palette indices of the PNG)."""
        return read_mask(self.annotations[index]).astype(np.uint8)  # 8-bit: read_davis checked the modes

    def read_annotations(self) -> np.ndarray:
        """Every annotation, ``(T, H, W) uint8``."""
        return np.stack([self.read_annotation(i) for i in range(self.num_frames)])


def read_davis(
    root: str | os.PathLike, *, subset: str = "val", sequences: Sequence[str] | None = None
) -> list[DavisSequence]:
    """The sequences of a DAVIS 2017 folder's image set, checked before any work.

    Args:
        root: the folder holding ``JPEGImages``, ``Annotations`` and ``ImageSets``.
        subset: ``"val"`` or ``"train"`` (``ImageSets/2017/<subset>.txt``).
        sequences: names to keep, in the order given (each must be in the set); None keeps all.

    Raises :class:`InputError` (one line) for a missing folder or set file, an unknown sequence
    name, a sequence without frames, with fewer than :data:`MIN_FRAMES`, with a frame lacking its
    annotation, or with frames and annotations of several sizes.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"DAVIS folder not found: {root}")
    images = root / "JPEGImages" / RESOLUTION_FOLDER
    annotations = root / "Annotations" / RESOLUTION_FOLDER
    set_file = root / "ImageSets" / IMAGE_SETS_YEAR / f"{subset}.txt"
    layout = "a DAVIS 2017 folder has JPEGImages/480p, Annotations/480p and ImageSets/2017"
    for needed in (images, annotations, set_file.parent):
        if not needed.is_dir():
            raise InputError(f"{root} has no {needed.relative_to(root).as_posix()}: {layout}")
    if not set_file.is_file():
        raise InputError(f"{root} has no {set_file.relative_to(root).as_posix()} ({field('subset', subset)})")
    listed = _read_set(set_file)
    if sequences is None:
        names = listed
    else:
        unknown = [name for name in sequences if name not in listed]
        if unknown:
            raise InputError(
                f"{field('sequences')}: {', '.join(unknown)} not in {set_file.relative_to(root).as_posix()} "
                f"({len(listed)} sequences, e.g. {', '.join(listed[:3]) or 'none'})"
            )
        names = list(dict.fromkeys(sequences))
    if not names:
        raise InputError(f"{set_file} lists no sequence")
    return [_read_sequence(name, images, annotations) for name in names]


def _read_set(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def _read_sequence(name: str, images: Path, annotations: Path) -> DavisSequence:
    frames = tuple(sorted((images / name).glob("*.jpg")))
    if not frames:
        raise InputError(f"sequence {name} has no frames ({images / name}/*.jpg)")
    if len(frames) < MIN_FRAMES:
        raise InputError(
            f"sequence {name} has {len(frames)} frames: at least {MIN_FRAMES} are needed "
            "(the first is given, the first and the last are not scored)"
        )
    masks = tuple(annotations / name / f"{frame.stem}.png" for frame in frames)
    missing = [mask for mask in masks if not mask.is_file()]
    if missing:
        raise InputError(f"sequence {name}: {len(missing)} frames have no annotation, the first {missing[0]}")
    size_wh, _ = _image_header(frames[0])
    for path in (*frames, *masks):
        (w, h), mode = _image_header(path)
        if (w, h) != size_wh:
            raise InputError(f"sequence {name}: {path.name} is {w}x{h}, the first frame {size_wh[0]}x{size_wh[1]}")
        if path.suffix == ".png" and mode not in LABEL_MODES:
            raise InputError(_not_labels(path, mode))
    return DavisSequence(name=name, frames=frames, annotations=masks, size_wh=size_wh)


def _image_header(path: Path) -> tuple[tuple[int, int], str]:
    """``((width, height), mode)`` of an image file, from its header."""
    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read {path}: {err}") from None


def _not_labels(path: str | os.PathLike, mode: str) -> str:
    return f"{path} is a {mode} image: annotations are indexed or grayscale PNGs"


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read {path}: {err}") from None


# -- results in the official layout -------------------------------------------------------------
def write_results(results_dir: str | os.PathLike, sequence: DavisSequence, masks: np.ndarray) -> Path:
    """Write one sequence's masks ``(T, H, W) uint8`` as ``<results_dir>/<name>/<frame stem>.png``
    (``results_dir`` is made if needed).

    The folder is written beside its place and renamed into it when complete (replacing an older
    one), so it is never half written. Returns the folder.
    """
    created = not Path(results_dir).exists()
    results_dir = ensure_folder(results_dir, "results_dir")
    target = results_dir / sequence.name
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{sequence.name}.", dir=results_dir))
    except OSError as err:
        _discard(results_dir, created)
        if is_disk_full(err):
            raise DiskFullError(f"no space left on device writing {target}") from None
        raise
    try:
        for frame, labels in zip(sequence.frames, masks):
            save_mask(staging / f"{frame.stem}.png", labels)
        staging.chmod(0o777 & ~_umask())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{sequence.name}.old.", dir=results_dir))
            os.replace(target, old / sequence.name)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        _discard(results_dir, created)
        if is_disk_full(err):
            raise DiskFullError(f"no space left on device writing {target}") from None
        raise
    return target


def _discard(folder: Path, created: bool) -> None:
    """Remove ``folder`` if this call created it and it is still empty (a failed first write)."""
    if created:
        with contextlib.suppress(OSError):
            folder.rmdir()


def check_results_dir(results_dir: str | os.PathLike, root: str | os.PathLike) -> None:
    """Refuse, before any work, a results folder that is an existing file or lies in the DAVIS
    folder's ``JPEGImages`` or ``Annotations`` (results would overwrite the inputs)."""
    path = Path(results_dir)
    if path.exists() and not path.is_dir():
        raise InputError(f"{field('results_dir', path)} exists and is not a folder")
    resolved = path.resolve()
    for inputs in (Path(root) / "JPEGImages", Path(root) / "Annotations"):
        if resolved == inputs.resolve() or inputs.resolve() in resolved.parents:
            raise InputError(
                f"{field('results_dir', path)} is inside the DAVIS inputs {inputs}: refusing to write there"
            )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- the driver ---------------------------------------------------------------------------------
@dataclass
class DavisSequenceResult:
    """One evaluated sequence.

    Attributes:
        name: the sequence name.
        num_frames: frames in the sequence (``num_frames - 2`` are scored).
        objects: one :class:`~dinofeat.eval.davis_metrics.ObjectScore` per object 1..K.
    """

    name: str
    num_frames: int
    objects: list[ObjectScore]

    def object_names(self) -> list[str]:
        """``<sequence>_<k>`` for k = 1..K, the official per-object names."""
        return [f"{self.name}_{k}" for k in range(1, len(self.objects) + 1)]

    @property
    def mean(self) -> MeanScores:
        """This sequence's objects averaged (the table's row)."""
        return mean_scores(self.objects)


@dataclass
class DavisReport:
    """The result of :func:`evaluate_davis`: per-sequence results and the benchmark's means."""

    sequences: list[DavisSequenceResult]

    @property
    def objects(self) -> dict[str, ObjectScore]:
        """Every object of every sequence by its official name ``<sequence>_<k>``."""
        return {
            name: score
            for result in self.sequences
            for name, score in zip(result.object_names(), result.objects, strict=True)
        }

    @property
    def mean(self) -> MeanScores:
        """Every object weighs the same, as in the official evaluator."""
        return mean_scores(self.objects.values())

    def to_json(self) -> dict:
        """The evaluation document (a contract for the CLI's ``--json``)::

            {"mean": {"J&F": x, "J": {"mean", "recall", "decay"}, "F": {"mean", "recall", "decay"}},
             "objects": {"<sequence>_<k>": {"J": {"mean", "recall", "decay"}, "F": {...}}, ...}}

        Scores are fractions (decay a difference of fractions); NaN is null.
        """
        return {
            "mean": self.mean.to_json(),
            "objects": {name: score.to_json() for name, score in self.objects.items()},
        }

    def format_table(self) -> str:
        """One row per sequence (objects, frames, J&F, J and F means over its objects, in %), then
        the means over all objects with recall and decay."""
        mean = self.mean
        sequences, objects = len(self.sequences), len(self.objects)
        label = f"mean ({sequences} sequence{'s' * (sequences != 1)}, {objects} object{'s' * (objects != 1)})"
        width = max(len("sequence"), len(label), *(len(result.name) for result in self.sequences))
        header = f"{'sequence':<{width}}  {'objects':>7}  {'frames':>6}  {'J&F':>6}  {'J':>6}  {'F':>6}"
        lines = [header, "-" * len(header)]
        for result in self.sequences:
            row = result.mean
            lines.append(
                f"{result.name:<{width}}  {len(result.objects):>7}  {result.num_frames:>6}  "
                f"{percent(row.jf)}  {percent(row.j.mean)}  {percent(row.f.mean)}"
            )
        lines += [
            "-" * len(header),
            f"{label:<{width}}  {'':>7}  {'':>6}  {percent(mean.jf)}  {percent(mean.j.mean)}  {percent(mean.f.mean)}",
            f"J recall {_plain(mean.j.recall)}, decay {_plain(mean.j.decay)}; "
            f"F recall {_plain(mean.f.recall)}, decay {_plain(mean.f.decay)}",
        ]
        return "\n".join(lines)


def _plain(value: float) -> str:
    return f"{100 * value:.1f}" if math.isfinite(value) else "-"


def evaluate_davis(
    sequences: Iterable[DavisSequence],
    segment_fn: SegmentFn,
    *,
    results_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> DavisReport:
    """Segment every sequence from its first annotation with ``segment_fn`` and score it.

    Args:
        sequences: e.g. :func:`read_davis`'s list.
        segment_fn: see :data:`SegmentFn`.
        results_dir: a folder (made when the first sequence is done) to write each sequence's
            masks into, in the official results layout (:func:`write_results`); None writes nothing.
        progress: called as ``progress(done, total)`` in frames, after each frame is segmented.
    """
    sequences = list(sequences)
    if not sequences:
        raise InputError("no DAVIS sequences to evaluate")
    total, done = sum(sequence.num_frames for sequence in sequences), 0
    results = []
    for sequence in sequences:
        masks = []
        for mask in segment_sequence(sequence, segment_fn):
            masks.append(mask)
            done += 1
            report(progress, done, total)
        predicted = np.stack(masks)
        scores = score_sequence(sequence.read_annotations(), predicted)
        result = DavisSequenceResult(name=sequence.name, num_frames=sequence.num_frames, objects=scores)
        log.info("%s: J&F %s", sequence.name, percent(result.mean.jf).strip())
        if results_dir is not None:
            write_results(results_dir, sequence, predicted)
        results.append(result)
    return DavisReport(sequences=results)


def segment_sequence(sequence: DavisSequence, segment_fn: SegmentFn) -> Iterator[np.ndarray]:
    """Every frame's ``(H, W) uint8`` labels: the first annotation, then ``segment_fn``'s masks
    (checked: one per later frame, of the frame's size, labels no higher than the annotation's)."""
    first = sequence.read_annotation(0)
    objects = int(np.where(first == VOID_LABEL, 0, first).max())
    yield first
    count = 0
    width, height = sequence.size_wh
    for mask in segment_fn(sequence.read_frames(), first):
        if count == sequence.num_frames - 1:
            raise ValueError(f"segment_fn gave more masks than {sequence.name} has frames after the first")
        mask = np.asarray(mask)
        if mask.shape != (height, width) or (mask.size and int(mask.max()) > objects):
            raise ValueError(
                f"segment_fn gave a {mask.shape} mask with labels up to {mask.max()} for {sequence.name}, "
                f"expected ({height}, {width}) with labels 0..{objects}"
            )
        yield mask.astype(np.uint8)
        count += 1
    if count != sequence.num_frames - 1:
        raise ValueError(f"segment_fn gave {count} masks for {sequence.name}, expected {sequence.num_frames - 1}")
