"""The ``dinofeat track`` job for one video: :class:`TrackJob` checks, tracks and writes the video with
trails, the JSON and the CSV. The command line, the web app and a dataset's workers run it.

>>> TrackJob("clip.mp4", points_xy=[(40.0, 30.0)]).check()  # outputs first, then the video, frames, points
Traceback (most recent call last):
...
dinofeat.errors.InputError: nothing to write: give output=OUT.mp4, json=OUT.json and/or csv=OUT.csv

Coordinates are float ``(x, y)`` pixels of the original frame (centre of the top-left pixel at
``(0, 0)``); frame indices count from 0 in the video.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json as json_text
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dinofeat.drawing import TrailAnnotator
from dinofeat.errors import InputError, field
from dinofeat.features.source import expect_images, provenance
from dinofeat.io import video as video_io  # called through the module: the tests count probes
from dinofeat.io.frames import frames_to_process
from dinofeat.io.outputs import check_outputs, check_suffix, staged_outputs
from dinofeat.io.suffixes import VIDEO_OUTPUTS
from dinofeat.jobs.base import PathLike
from dinofeat.options import FrameOptions, TrackerOptions, TrailOptions
from dinofeat.points import collect_queries
from dinofeat.tracking import check_queries, track_steps
from dinofeat.tracks import Tracks, TrackStep

if TYPE_CHECKING:  # types only
    from dinofeat.features.source import FeatureSource
    from dinofeat.io.video import VideoInfo
    from dinofeat.runtime.progress import Progress


@dataclass(frozen=True)
class _Checked:
    """What :meth:`TrackJob.check` found: the video, its processed frames and the queries."""

    info: VideoInfo
    indices: range
    queries_txy: np.ndarray


@dataclass
class TrackJob:
    """Track points through one video and write ``output`` (a video with each point's fading trail),
    ``json`` and/or ``csv``, all atomically (all appear, or none if anything fails).

    Attributes:
        video: the video file.
        output: H.264 video (:data:`~dinofeat.io.suffixes.VIDEO_OUTPUTS`) with trails, the input's
            size, each frame at its time in the input (so it plays at the input's speed, variable
            frame rates included; nominally ``fps / every``).
        json: :meth:`~dinofeat.tracks.Tracks.to_json` document (the video's path: ``video_name`` or
            ``video``).
        csv: :meth:`~dinofeat.tracks.Tracks.write_csv` rows.
        points_xy: points ``(x, y)`` in the first processed frame.
        queries_txy: points ``(t, x, y)`` in frame ``t``.
        points_file: a JSON or CSV file of ``x, y`` or ``t, x, y`` rows
            (:func:`~dinofeat.points.read_points_file`).
        grid: an ``grid`` x ``grid`` grid of points over the first processed frame.
        tracker, frames, trail: how points are followed, which frames are processed, the trail length.
        video_name: the video's path as the JSON records it (default: ``video``).
        info: the video's :func:`~dinofeat.io.video.probe_video`, where the caller has it (probing may
            decode the whole file); else :meth:`check` probes once.
    """

    video: PathLike
    output: PathLike | None = None
    json: PathLike | None = None
    csv: PathLike | None = None
    points_xy: Sequence[tuple[float, float]] = ()
    queries_txy: Sequence[Sequence[float]] = ()
    points_file: PathLike | None = None
    grid: int | None = None
    tracker: TrackerOptions = dataclasses.field(default_factory=TrackerOptions)
    frames: FrameOptions = dataclasses.field(default_factory=FrameOptions)
    trail: TrailOptions = dataclasses.field(default_factory=TrailOptions)
    video_name: str | None = None
    info: VideoInfo | None = None
    _checked: _Checked | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def outputs(self) -> list[PathLike]:
        """The files asked for, in the order ``output``, ``json``, ``csv``."""
        return [path for path in (self.output, self.json, self.csv) if path]

    def check(self) -> None:
        """Every check that needs no model, once: the outputs (given, distinct, suffixes, writable, not
        the input), the video (probed once), the processed frames, the query points (collected and
        checked against the frames and the frame size)."""
        self._checked = self._check()

    def _check(self) -> _Checked:
        outputs = self.outputs
        if not outputs:
            raise InputError(
                f"nothing to write: give {field('output', 'OUT.mp4')}, {field('json', 'OUT.json')} "
                f"and/or {field('csv', 'OUT.csv')}"
            )
        if len({str(Path(p).resolve()) for p in outputs}) < len(outputs):
            raise InputError(f"{field('output')}, {field('json')} and {field('csv')} must name different files")
        check_suffix(self.output, VIDEO_OUTPUTS, "output video")
        check_suffix(self.json, (".json",), field("json"))
        check_suffix(self.csv, (".csv",), field("csv"))
        check_outputs(outputs, inputs=[self.video])
        info = self.info or video_io.probe_video(self.video)
        indices = frames_to_process(info, self.frames)
        queries = collect_queries(
            indices[0],
            info.size_wh,
            points_xy=self.points_xy,
            queries_txy=self.queries_txy,
            points_file=self.points_file,
            grid=self.grid,
        )
        return _Checked(info, indices, check_queries(queries, indices, info.size_wh))

    def run(self, source: FeatureSource, progress: Progress | None = None) -> Tracks:
        """Track with ``source`` (:func:`~dinofeat.tracking.track_steps`) and write the files.

        Decoding, the model and encoding stream, so memory does not grow with the video's length;
        with ``tracker.backward`` the processed frames are held in memory. ``progress(done, total)``
        counts frames. Runs :meth:`check` first if it has not run.
        """
        if self._checked is None:
            self._checked = self._check()
        checked = self._checked
        info, queries = checked.info, checked.queries_txy
        expect_images(source, len(checked.indices))
        steps = track_steps(
            self.video,
            queries,
            source,
            self.tracker,
            frames=self.frames,
            frame_count=len(checked.indices),
            progress=progress,
        )
        kept: list[TrackStep] = []
        first_frame: np.ndarray | None = None
        with staged_outputs([self.output, self.json, self.csv]) as (video_tmp, json_tmp, csv_tmp):
            writer = video_io.VideoWriter(video_tmp, info.fps / self.frames.every, info.size_wh) if video_tmp else None
            annotator = TrailAnnotator(len(queries), self.trail.trail)
            with writer or contextlib.nullcontext():
                for step in steps:
                    if writer is not None:
                        writer.write(annotator.annotate(step.image, step.points_xy, step.visible), step.time_s)
                    first_frame = step.image if not kept else first_frame
                    kept.append(replace(step, image=None))
            tracks = Tracks.from_steps(queries, kept, first_frame=first_frame)
            if json_tmp is not None:
                document = self.document(tracks, source.options.model, weights=provenance(source)["weights"])
                json_tmp.write_text(json_text.dumps(document) + "\n")
            if csv_tmp is not None:
                tracks.write_csv(csv_tmp)
        return tracks

    def document(self, tracks: Tracks, model: str, weights: dict[str, Any] | None = None) -> dict:
        """The ``--json`` document of ``tracks`` (:meth:`~dinofeat.tracks.Tracks.to_json`) for this video."""
        info = self._checked.info if self._checked is not None else self.info or video_io.probe_video(self.video)
        return tracks.to_json(
            model=model,
            video_path=self.video_name or str(self.video),
            fps=info.fps,
            size_wh=info.size_wh,
            weights=weights,
        )

    def summary(self, tracks: Tracks) -> str:
        """``3 points x 250 frames, visible 92 % -> out.mp4, t.json``: the command's summary line."""
        return f"{tracks.summary()} -> {', '.join(str(p) for p in self.outputs)}"
