"""Point tracks as data: one frame's answer (:class:`TrackStep`), a whole video's (:class:`Tracks`),
and their JSON and CSV forms (the ``dinofeat track --json/--csv`` contracts).

Coordinates are float ``(x, y)`` pixels of the original frame (centre of the top-left pixel at
``(0, 0)``); frame indices count decoded frames of the video from 0. Like every dinofeat result,
the arrays are CPU torch tensors; :meth:`Tracks.numpy` gives numpy arrays.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from dinofeat.display import data_frame, png_bytes
from dinofeat.drawing import draw_points
from dinofeat.wording import plural


@dataclass(frozen=True)
class TrackStep:
    """The tracker's answer for one frame (``N`` query points).

    Attributes:
        frame_index: index of the frame in the video.
        points_xy: ``(N, 2)`` float32 original pixels; the last visible position where not visible.
        scores: ``(N,)`` float32 cosine of the best match (0 before the query frame).
        visible: ``(N,)`` bool.
        image: the ``(H, W, 3) uint8 RGB`` frame, when the step comes from
            :func:`~dinofeat.tracking.track_frames`.
        time_s: the frame's presentation time in seconds from the video's first frame, when known
            (:func:`~dinofeat.tracking.track_steps` knows it).
    """

    frame_index: int
    points_xy: torch.Tensor
    scores: torch.Tensor
    visible: torch.Tensor
    image: np.ndarray | None = None
    time_s: float | None = None

    def __repr__(self) -> str:
        """``TrackStep(frame 12, 3 points, 2 visible, at 0.48 s)``."""
        at = f", at {self.time_s:.3f} s" if self.time_s is not None else ""
        points, visible = int(self.points_xy.shape[0]), int(self.visible.sum())
        return f"TrackStep(frame {self.frame_index}, {points} points, {visible} visible{at})"


@dataclass(frozen=True)
class Tracks:
    """Tracks of ``N`` query points over ``T`` processed frames.

    Attributes:
        queries_txy: ``(N, 3)`` float64 query frame index and position ``(t, x, y)``.
        frame_indices: ``(T,)`` int64 video frame index of each processed frame.
        points_xy: ``(T, N, 2)`` float32 positions in original pixels (the last visible position
            where not visible; the query position before the query frame).
        scores: ``(T, N)`` float32 cosine similarity of the match.
        visible: ``(T, N)`` bool.
        times_s: ``(T,)`` float64 presentation time of each processed frame in seconds from the
            video's first frame (variable frame rates keep their timing), or ``None`` when unknown.
        first_frame: the first processed frame, ``(H, W, 3) uint8 RGB``, where the tracker kept
            it (:func:`~dinofeat.tracking.track_video` and the track job do): a notebook shows it
            with the points (``_repr_png_``). Not compared, not in :meth:`numpy` or :meth:`to_dict`.
    """

    queries_txy: torch.Tensor
    frame_indices: torch.Tensor
    points_xy: torch.Tensor
    scores: torch.Tensor
    visible: torch.Tensor
    times_s: torch.Tensor | None = None
    first_frame: np.ndarray | None = field(default=None, compare=False, repr=False)

    _FIELDS = ("queries_txy", "frame_indices", "points_xy", "scores", "visible")

    @classmethod
    def from_steps(cls, queries_txy, steps: Sequence[TrackStep], first_frame: np.ndarray | None = None) -> Tracks:
        """Stack per-frame steps (in frame order) into tracks (with ``times_s`` when every step has
        its ``time_s``); ``first_frame`` is kept as :attr:`first_frame`."""
        queries = torch.as_tensor(np.asarray(queries_txy, dtype=np.float64)).reshape(-1, 3)
        n, t = len(queries), len(steps)
        stack = lambda name, dtype, shape: (
            torch.stack([getattr(s, name).to(dtype) for s in steps]).reshape(shape)
            if steps
            else torch.zeros(shape, dtype=dtype)
        )
        return cls(
            queries_txy=queries,
            frame_indices=torch.tensor([s.frame_index for s in steps], dtype=torch.int64),
            points_xy=stack("points_xy", torch.float32, (t, n, 2)),
            scores=stack("scores", torch.float32, (t, n)),
            visible=stack("visible", torch.bool, (t, n)),
            times_s=_times([s.time_s for s in steps]),
            first_frame=first_frame,
        )

    @classmethod
    def collect(cls, queries_txy, steps: Iterable[TrackStep]) -> Tracks:
        """:meth:`from_steps` of a stream of steps, dropping each frame as it comes (memory stays
        flat) but the first, kept as :attr:`first_frame`."""
        kept: list[TrackStep] = []
        first: np.ndarray | None = None
        for step in steps:
            if not kept:
                first = step.image
            kept.append(replace(step, image=None))
        return cls.from_steps(queries_txy, kept, first_frame=first)

    def __len__(self) -> int:
        return len(self.frame_indices)

    def numpy(self) -> dict[str, np.ndarray]:
        """The fields as numpy arrays, keyed by field name (``times_s`` where known)."""
        arrays = {name: getattr(self, name).numpy() for name in self._FIELDS}
        if self.times_s is not None:
            arrays["times_s"] = self.times_s.numpy()
        return arrays

    def to_dict(self) -> dict:
        """``{"tracks": [{"query", "points", "scores", "visible"}, ...], "frame_indices": [...],
        "times_s": [...]}`` (coordinates rounded to 1/1000 pixel, scores to 1e-4, times to 1e-6 s;
        ``times_s`` only where known), ready for ``json.dump``."""
        data = self.numpy()
        tracks = []
        for n, (t, x, y) in enumerate(data["queries_txy"]):
            tracks.append(
                {
                    "query": [int(t), float(x), float(y)],
                    "points": np.round(data["points_xy"][:, n].astype(np.float64), 3).tolist(),
                    "scores": np.round(data["scores"][:, n].astype(np.float64), 4).tolist(),
                    "visible": data["visible"][:, n].tolist(),
                }
            )
        document = {"tracks": tracks, "frame_indices": data["frame_indices"].tolist()}
        if "times_s" in data:
            document["times_s"] = np.round(data["times_s"], 6).tolist()
        return document

    def to_json(
        self,
        *,
        model: str,
        video_path: str | os.PathLike,
        fps: float,
        size_wh: tuple[int, int],
        weights: dict[str, Any] | None = None,
    ) -> dict:
        """The ``dinofeat track --json`` document: model, video (path, fps, processed frame count,
        size), then :meth:`to_dict`'s tracks and frame indices, and (where given) the weights
        (``{"path", "sha256"}``, see :func:`~dinofeat.features.source.provenance`)."""
        return {
            "model": model,
            "video": {"path": str(video_path), "fps": fps, "frames": len(self), "size": list(size_wh)},
            **self.to_dict(),
            **({"weights": weights} if weights is not None else {}),
        }

    def write_csv(self, path: str | os.PathLike) -> None:
        """One row per point and processed frame: ``track,frame,x,y,score,visible,time_s`` (visible
        0/1; ``time_s`` the frame's presentation time in seconds, empty where unknown)."""
        data = self.numpy()
        times = [f"{t:.6f}" for t in data["times_s"]] if "times_s" in data else [""] * len(self)
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["track", "frame", "x", "y", "score", "visible", "time_s"])
            for n in range(data["queries_txy"].shape[0]):
                for k, frame in enumerate(data["frame_indices"]):
                    x, y = data["points_xy"][k, n]
                    writer.writerow(
                        [
                            n,
                            int(frame),
                            f"{x:.3f}",
                            f"{y:.3f}",
                            f"{data['scores'][k, n]:.4f}",
                            int(data["visible"][k, n]),
                            times[k],
                        ]
                    )

    def summary(self) -> str:
        """``3 points x 250 frames, visible 92 %``."""
        share = float(self.visible.float().mean()) if self.visible.numel() else 0.0
        return f"{plural(self.points_xy.shape[1], 'point')} x {plural(len(self), 'frame')}, visible {share:.0%}"

    def __repr__(self) -> str:
        """``Tracks(3 points x 250 frames, visible 92%, frames 0..249)``."""
        span = f", frames {int(self.frame_indices[0])}..{int(self.frame_indices[-1])}" if len(self) else ""
        return f"Tracks({self.summary()}{span})"

    def to_pandas(self) -> Any:
        """One row per point and processed frame, as ``--csv`` writes them: ``track, frame, x, y,
        score, visible, time_s`` (``time_s`` NaN where unknown; full precision). Needs pandas."""
        data = self.numpy()
        frames, points = data["points_xy"].shape[:2]
        times = data.get("times_s", np.full(frames, np.nan))
        return data_frame(
            {
                "track": np.repeat(np.arange(points), frames),
                "frame": np.tile(data["frame_indices"], points),
                "x": data["points_xy"][:, :, 0].T.reshape(-1),
                "y": data["points_xy"][:, :, 1].T.reshape(-1),
                "score": data["scores"].T.reshape(-1),
                "visible": data["visible"].T.reshape(-1),
                "time_s": np.tile(times, points),
            }
        )

    def _repr_png_(self) -> bytes | None:
        """The first processed frame with each point visible there (numbered, in its colour), for
        notebooks; None (text only) where the frame was not kept."""
        if self.first_frame is None:
            return None
        shown = self.points_xy[0].numpy().astype(np.float64) if len(self) else np.zeros((0, 2))
        if len(self):
            shown[~self.visible[0].numpy()] = np.nan
        return png_bytes(draw_points(self.first_frame, shown))


def _times(times_s: Sequence[float | None]) -> torch.Tensor | None:
    """``(T,)`` float64 times, or ``None`` unless every frame's time is known."""
    if any(t is None for t in times_s):
        return None
    return torch.tensor(times_s, dtype=torch.float64)
