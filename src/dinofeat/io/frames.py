"""Which frames of a video a job processes: the one place ``--start``, ``--max-frames`` and
``--every`` (:class:`~dinofeat.options.FrameOptions`) become frame indices, and the one
``start`` check. The ``pca`` and ``track`` jobs both select frames here.

Frame indices count from 0 in the video, as :func:`~dinofeat.io.video.read_frames` yields them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dinofeat.errors import InputError, field
from dinofeat.options import FrameOptions

if TYPE_CHECKING:  # types only: this module imports no video decoder
    from dinofeat.io.video import VideoInfo


def processed_frame_indices(total_frames: int, frames: FrameOptions | None = None) -> range:
    """Indices of the frames :func:`~dinofeat.io.video.read_frames` yields with these frame options,
    for a video of ``total_frames`` frames.

    >>> list(processed_frame_indices(10, FrameOptions(start=1, every=4)))
    [1, 5, 9]
    """
    frames = frames or FrameOptions()
    indices = range(frames.start, total_frames, frames.every)
    return indices if frames.max_frames is None else indices[: frames.max_frames]


def frames_to_process(
    info: VideoInfo, frames: FrameOptions | None = None, *, video: str | os.PathLike | None = None
) -> range:
    """The :func:`processed_frame_indices` of a video of :class:`~dinofeat.io.video.VideoInfo` ``info``;
    none (a ``start`` past its end) is an :class:`~dinofeat.errors.InputError` that names ``video``
    where given, else the video's frame count. Jobs check with it before any model loads.

    >>> from dinofeat.io.video import VideoInfo
    >>> frames_to_process(VideoInfo(fps=25.0, frames=10, size_wh=(64, 48)), FrameOptions(start=4, every=3))
    range(4, 10, 3)
    >>> frames_to_process(VideoInfo(fps=25.0, frames=10, size_wh=(64, 48)), FrameOptions(start=10))
    Traceback (most recent call last):
    ...
    dinofeat.errors.InputError: start=10 is past the end of the video (10 frames)
    """
    frames = frames or FrameOptions()
    indices = processed_frame_indices(info.frames, frames)
    if len(indices) == 0:
        where = str(video) if video is not None else f"the video ({info.frames} frames)"
        raise InputError(f"{field('start', frames.start)} is past the end of {where}")
    return indices
