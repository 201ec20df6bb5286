"""Video in and out with PyAV (FFmpeg): frames as an iterator, a writer as a context manager.

Frames are ``(H, W, 3) uint8 RGB`` numpy arrays everywhere inside dinofeat. Frame indices count
decoded frames from 0 in decoding-presentation order, so ``(t, x, y)`` always names the same frame
whatever the container's timestamps. Display rotation stored by phones (the display matrix) is
applied, and frames with non-square pixels (a sample aspect ratio, SAR, other than 1:1) are
resampled to their display size, as players show them (wider pixels widen the frame, taller ones
heighten it; nothing is shrunk): every size and coordinate is in display pixels, and written videos
have square pixels.

Every frame of a video comes out in one raster: the first frame's size. A video whose resolution
changes part-way (concatenated MPEG-TS segments, stream recorders) has its later frames scaled to
the first frame's size, as players do, so coordinates always mean the same place in the picture; a
warning says so once.

Each frame keeps its presentation time (:func:`read_timed_frames`): seconds from the first frame,
so a variable-frame-rate video (phones, screen recordings) keeps its timing; :class:`VideoWriter`
writes frames at the times it is given.

Long videos stream: :func:`read_frames` holds one decoded frame at a time and
:class:`VideoWriter` encodes each frame as it is written.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "grey.mp4")
>>> with VideoWriter(path, fps=25, size_wh=(64, 48)) as sink:
...     for _ in range(5):
...         sink.write(np.full((48, 64, 3), 128, np.uint8))
>>> probe_video(path)
VideoInfo(fps=25.0, frames=5, size_wh=(64, 48))
>>> [index for index, frame in read_frames(path, start=1, every=2)]
[1, 3]
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

from dinofeat.errors import InputError
from dinofeat.io.inputs import check_input_file
from dinofeat.runtime.allocator import releasing

log = logging.getLogger(__name__)

#: Frame rate assumed when a container states none (rare: raw streams); a warning is logged.
FALLBACK_FPS = 25.0
#: Output containers by file suffix; all of them hold H.264.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
#: Clock of the written videos' timestamps, in ticks per second (MPEG's 90 kHz; every common rate fits).
_CLOCK_HZ = 90_000
# FFmpeg opens a PNG or JPEG as a one-frame "video" through these demuxers; we refuse images.
_IMAGE_DEMUXER_PREFIX, _IMAGE_DEMUXER_SUFFIX = "image2", "_pipe"


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds.

    Attributes:
        fps: frames per second (average rate for variable-rate videos).
        frames: number of decodable frames.
        size_wh: frame size in pixels as displayed (rotation and sample aspect ratio applied),
            ``(width, height)``.
    """

    fps: float
    frames: int
    size_wh: tuple[int, int]


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame rate, frame count and size of a video, checking that it can be decoded.

    The frame count comes from the container when it states one (after checking that the file
    holds every frame it indexes); otherwise the frames are counted by decoding them.

    Raises:
        InputError: missing or empty file, an image, a file without a video stream, a video with
            no decodable frame, or a truncated file.
    """
    path = check_input_file(path, "video")
    with _open(path) as container:
        stream = _video_stream(container, path)
        frames = _decode(container, stream, path)
        first = next(frames, None)
        if first is None:
            raise InputError(f"video has no frames: {path}")
        width, height = _Raster.of(first, stream, path).size_wh
        fps = _frame_rate(stream, path)
        count = int(stream.frames or 0)
        if count > 0:
            _check_complete(stream, path)
        else:
            count = 1 + sum(1 for _ in frames)
    return VideoInfo(fps=fps, frames=count, size_wh=(width, height))


class TimedFrame(NamedTuple):
    """A decoded frame with its place in the video.

    Attributes:
        frame_index: frame index (decoded frames from 0).
        time_s: presentation time in seconds from the first frame (which is at 0).
        image: ``(H, W, 3) uint8 RGB``.
    """

    frame_index: int
    time_s: float
    image: np.ndarray


def read_frames(
    path: str | os.PathLike, *, start: int = 0, max_frames: int | None = None, every: int = 1
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode frames one at a time: ``(frame index, (H, W, 3) uint8 RGB)``
    (:func:`read_timed_frames` adds each frame's presentation time).

    Args:
        path: any container/codec FFmpeg reads.
        start: index of the first frame to yield.
        max_frames: yield at most this many frames (``None``: to the end).
        every: yield every ``every``-th frame from ``start`` (indices ``start, start + every, ...``).

    Every frame has the first frame's size (later frames of another size are scaled to it; a
    warning says so once). Memory is constant: one decoded frame is held at a time. A decoding
    error part way through raises :class:`InputError` naming the frame.
    """
    timed = read_timed_frames(path, start=start, max_frames=max_frames, every=every)  # checks now
    return ((index, image) for index, _, image in timed)


def read_timed_frames(
    path: str | os.PathLike, *, start: int = 0, max_frames: int | None = None, every: int = 1
) -> Iterator[TimedFrame]:
    """:func:`read_frames` with each frame's presentation time: :class:`TimedFrame` ``(frame_index,
    time_s, image)``, ``time_s`` in seconds from the first frame, so variable frame rates keep their
    timing. Times never go back: a frame without a timestamp, or whose timestamp is not after the
    previous frame's (concatenated segments), comes one nominal frame (``1 / fps``) after it."""
    if start < 0 or every < 1 or (max_frames is not None and max_frames < 1):
        raise InputError(
            f"need start >= 0, every >= 1 and max_frames >= 1 (got start={start}, "
            f"every={every}, max_frames={max_frames})"
        )
    # freed frame buffers go back to the system as the video streams: resident memory stays flat
    return releasing(_read_frames(check_input_file(path, "video"), start, max_frames, every))


def _read_frames(path: Path, start: int, max_frames: int | None, every: int) -> Iterator[TimedFrame]:
    with _open(path) as container:
        stream = _video_stream(container, path)
        clock = _Clock(1 / _frame_rate(stream, path))
        yielded = 0
        raster: _Raster | None = None
        for index, frame in enumerate(_decode(container, stream, path)):
            raster = raster or _Raster.of(frame, stream, path)
            time_s = clock.time_s(frame)
            if index < start or (index - start) % every:
                continue  # still decoded (later frames depend on it) but never converted
            yield TimedFrame(index, time_s, raster.rgb(frame, index))
            yielded += 1
            if max_frames is not None and yielded >= max_frames:
                return


class VideoWriter:
    """Write RGB frames to an H.264 (libx264) video of exactly ``size_wh``.

    Use as a context manager: the file is finalised on a clean exit and removed if the block
    raises, so a failure never leaves a half-written video. The container follows the suffix
    (``.mp4`` / ``.m4v`` / ``.mov`` / ``.mkv``; anything else gets MP4); MP4 files are written
    with the index first (``faststart``) so browsers can play them while loading.

    Frames are written at the times given to :meth:`write` (kept to 1/90000 s, so a variable frame
    rate survives), else one ``1 / fps`` after another.

    Even sides are encoded ``yuv420p`` (plays in browsers). ``yuv420p`` cannot hold an odd width or
    height, so an odd size is encoded ``yuv444p`` (H.264 High 4:4:4): the file is the input's size,
    pixel for pixel, and plays in ffmpeg-based players (VLC, mpv) though not in every browser.

    Args:
        path: output file.
        fps: frame rate; common NTSC rates given as floats (29.97, 30000/1001) are stored exactly.
        size_wh: ``(width, height)`` of the frames that will be written.
        crf: x264 constant rate factor (quality; lower is better, 18-23 is visually good).
        preset: x264 speed/size trade-off (``ultrafast`` ... ``veryslow``).
    """

    def __init__(
        self, path: str | os.PathLike, fps: float, size_wh: tuple[int, int], *, crf: int = 20, preset: str = "veryfast"
    ) -> None:
        width, height = (int(v) for v in size_wh)
        if width < 1 or height < 1:
            raise InputError(f"video size must be positive, got {size_wh}")
        if not (isinstance(fps, (int, float, Fraction)) and math.isfinite(fps) and fps > 0):
            raise InputError(f"fps must be a positive number, got {fps!r}")
        self.path = Path(path)
        self.size_wh = (width, height)
        self.fps = float(fps)
        self.frames_written = 0
        self.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        rate = Fraction(fps).limit_denominator(1001)
        # ticks of 1/lcm(rate numerator, 90 kHz) s: a whole number per nominal frame, and fine times
        self._time_base = Fraction(1, math.lcm(rate.numerator, _CLOCK_HZ))
        self._frame_ticks = int(1 / rate / self._time_base)
        self._last_pts: int | None = None
        container_format = CONTAINERS.get(self.path.suffix.lower(), "mp4")
        options = {"movflags": "+faststart"} if container_format in ("mp4", "mov") else {}
        self._container: av.container.OutputContainer | None = None
        try:
            self._container = av.open(str(self.path), mode="w", format=container_format, options=options)
        except (av.FFmpegError, OSError) as err:
            raise InputError(f"cannot create video {self.path}: {err}") from None
        try:
            self._stream = self._container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": preset})
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = self.pix_fmt
            self._stream.codec_context.time_base = self._time_base
        except Exception:
            self._abort()
            raise

    def write(self, frame_rgb: np.ndarray, time_s: float | None = None) -> None:
        """Append one ``(H, W, 3) uint8 RGB`` frame of the writer's ``size_wh``, shown at ``time_s``
        seconds (``None``: one ``1 / fps`` after the previous frame; a time not after the previous
        frame's is moved just after it)."""
        width, height = self.size_wh
        if frame_rgb.shape != (height, width, 3) or frame_rgb.dtype != np.uint8:
            raise InputError(f"expected a ({height}, {width}, 3) uint8 frame, got {frame_rgb.shape} {frame_rgb.dtype}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format="rgb24")
        frame.pts = self._next_pts(time_s)
        container = self._open_container()
        for packet in self._stream.encode(frame.reformat(format=self.pix_fmt)):
            container.mux(packet)
        self.frames_written += 1

    def _next_pts(self, time_s: float | None) -> int:
        """The timestamp (in the stream's ticks) of the next frame, shown at ``time_s``."""
        if time_s is None:
            pts = 0 if self._last_pts is None else self._last_pts + self._frame_ticks
        else:
            pts = round(Fraction(time_s).limit_denominator(10**9) / self._time_base)
            if self._last_pts is not None:
                pts = max(pts, self._last_pts + 1)
        self._last_pts = pts
        return pts

    def _open_container(self) -> av.container.OutputContainer:
        if self._container is None:
            raise ValueError(f"the writer of {self.path} is closed")
        return self._container

    def close(self) -> None:
        """Flush the encoder and finalise the file (called by the context manager)."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        except Exception:
            self._abort()
            raise
        self._container = None

    def _abort(self) -> None:
        """Close without finalising and remove the partial file."""
        if self._container is not None:
            with contextlib.suppress(Exception):  # already failing; the file is removed below
                self._container.close()
            self._container = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()


# -- helpers ------------------------------------------------------------------------------------
def _open(path: Path):
    try:
        container = av.open(str(path), mode="r")
    except av.error.EOFError:
        raise InputError(f"video is truncated or has no frames: {path}") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise InputError(f"not a video, or a damaged one FFmpeg cannot read: {path} ({_reason(err)})") from None
    name = container.format.name
    if name.startswith(_IMAGE_DEMUXER_PREFIX) or name.endswith(_IMAGE_DEMUXER_SUFFIX):
        container.close()
        raise InputError(f"{path} is an image, not a video")
    return container


def _video_stream(container, path: Path):
    if not container.streams.video:
        # FFmpeg drops an MP4 track without samples, so a 0-frame MP4 lands here too
        raise InputError(f"no video stream (no frames) in {path}")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _decode(container, stream, path: Path) -> Iterator[av.VideoFrame]:
    index = 0
    try:
        for frame in container.decode(stream):
            yield frame
            index += 1
    except av.FFmpegError as err:
        raise InputError(
            f"video is damaged or truncated: {path} (cannot decode frame {index}: {_reason(err)})"
        ) from None


class _Raster:
    """The one raster every frame of a video is given: the first frame's size as displayed (sample
    aspect ratio and rotation applied).

    Frames of another stored size (a resolution change part-way) are scaled to it; the first such
    frame logs a warning, once per video.
    """

    def __init__(self, first_wh: tuple[int, int], stored_wh: tuple[int, int], turns: int, path: Path) -> None:
        self._first_wh = first_wh  # (width, height) of the first frame as stored
        self.stored_wh = stored_wh  # (width, height) frames are scaled to before the rotation
        self.turns = turns  # counter-clockwise quarter turns, as np.rot90
        self.path = path
        self._warned = False

    @classmethod
    def of(cls, first: av.VideoFrame, stream: av.video.stream.VideoStream, path: Path) -> _Raster:
        """The raster of the video whose first decoded frame (of ``stream``) is ``first``."""
        first_wh = (first.width, first.height)
        return cls(first_wh, _display_wh(first_wh, _sample_aspect(stream)), _quarter_turns(first), path)

    @property
    def size_wh(self) -> tuple[int, int]:
        """``(width, height)`` of every frame as it comes out (rotation applied)."""
        width, height = self.stored_wh
        return (height, width) if self.turns % 2 else (width, height)

    def rgb(self, frame: av.VideoFrame, index: int) -> np.ndarray:
        """Decoded frame ``index`` -> ``(H, W, 3) uint8 RGB`` in this raster, rotation applied."""
        width, height = self.stored_wh
        if (frame.width, frame.height) != self._first_wh:
            self._warn_resized(frame, index)
        rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
        return np.ascontiguousarray(np.rot90(rgb, self.turns)) if self.turns else rgb

    def _warn_resized(self, frame: av.VideoFrame, index: int) -> None:
        if self._warned:
            return
        self._warned = True
        log.warning(
            "%s changes resolution at frame %d (%dx%d stored, the first frame %dx%d): frames are scaled "
            "to the first frame's size, so coordinates stay in one raster",
            self.path,
            index,
            frame.width,
            frame.height,
            *self._first_wh,
        )


class _Clock:
    """Frames' presentation times in seconds from the first frame, never going back."""

    def __init__(self, frame_s: float) -> None:
        self.frame_s = frame_s  # nominal frame duration, for frames without a usable timestamp
        self._origin: float | None = None
        self._last: float | None = None

    def time_s(self, frame: av.VideoFrame) -> float:
        """The time of the next decoded frame, ``frame``."""
        stamp = frame.time
        if self._last is None:
            self._origin = stamp if stamp is not None else 0.0
            self._last = 0.0
            return 0.0
        time_s = None if stamp is None or self._origin is None else stamp - self._origin
        if time_s is None or time_s <= self._last:
            time_s = self._last + self.frame_s
        self._last = time_s
        return time_s


def _sample_aspect(stream: av.video.stream.VideoStream) -> Fraction:
    """The stream's sample (pixel) aspect ratio, width : height of one pixel; 1 when unstated."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar and sar > 0:
            return Fraction(sar)
    return Fraction(1)


def _display_wh(stored_wh: tuple[int, int], sar: Fraction) -> tuple[int, int]:
    """``(width, height)`` of a frame stored at ``stored_wh`` as players show it: wide pixels
    (``sar > 1``) widen it, tall ones (``sar < 1``) heighten it."""
    width, height = stored_wh
    if sar > 1:
        return max(1, round(width * sar)), height
    if sar < 1:
        return width, max(1, round(height / sar))
    return width, height


def _quarter_turns(frame: av.VideoFrame) -> int:
    """The display rotation as counter-clockwise quarter turns (as ``np.rot90``)."""
    return round((frame.rotation or 0) / 90) % 4


def _frame_rate(stream, path: Path) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return float(rate)
    log.warning("%s states no frame rate; assuming %s fps", path, FALLBACK_FPS)
    return FALLBACK_FPS


def _check_complete(stream, path: Path) -> None:
    """Raise if the container indexes frames that lie beyond the end of the file."""
    size = path.stat().st_size
    entries = stream.index_entries
    if entries and max(entry.pos + entry.size for entry in entries) > size:
        raise InputError(f"video is truncated (the file ends before its last frames): {path}")


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)
