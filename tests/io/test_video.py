"""Video IO: what goes in comes out (count, fps, size, pixels), H.264 yuv420p, and bad files fail clearly."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import save_png
from dinofeat.errors import InputError
from dinofeat.io.video import VideoInfo, VideoWriter, probe_video, read_frames


def pan_frames(photo: np.ndarray, count: int, size_wh=(96, 64), step=3) -> list[np.ndarray]:
    """``count`` crops of a photo, the window moving ``step`` pixels right per frame."""
    w, h = size_wh
    return [np.ascontiguousarray(photo[40 : 40 + h, 60 + i * step : 60 + i * step + w]) for i in range(count)]


def write_video(path: Path, frames, fps=25.0) -> Path:
    h, w = frames[0].shape[:2]
    with VideoWriter(path, fps=fps, size_wh=(w, h), crf=12) as sink:
        for frame in frames:
            sink.write(frame)
    return path


def stream_info(path: Path) -> tuple[str, str, int, int]:
    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        return ctx.name, ctx.pix_fmt, ctx.width, ctx.height


def test_round_trip_keeps_count_fps_size_and_pixels(tmp_path, photo):
    frames = pan_frames(photo, 12)
    path = write_video(tmp_path / "pan.mp4", frames, fps=30000 / 1001)
    info = probe_video(path)
    assert info.frames == 12 and info.size_wh == (96, 64)
    assert info.fps == pytest.approx(29.97, abs=1e-3)
    assert stream_info(path) == ("h264", "yuv420p", 96, 64)
    decoded = list(read_frames(path))
    assert [i for i, _ in decoded] == list(range(12))
    for (_, got), want in zip(decoded, frames):
        assert got.shape == want.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want).mean() < 6  # lossy, but close at crf 12


def test_frame_selection(tmp_path, photo):
    path = write_video(tmp_path / "pan.mp4", pan_frames(photo, 10))
    assert [i for i, _ in read_frames(path, start=2, every=3)] == [2, 5, 8]
    assert [i for i, _ in read_frames(path, start=1, max_frames=2)] == [1, 2]
    assert [i for i, _ in read_frames(path, start=20)] == []
    with pytest.raises(InputError):
        read_frames(path, every=0)


def test_odd_size_is_kept_in_4_4_4(tmp_path, photo):
    frames = pan_frames(photo, 3, size_wh=(45, 31))
    path = write_video(tmp_path / "odd.mp4", frames)
    assert stream_info(path) == ("h264", "yuv444p", 45, 31)
    first = next(read_frames(path))[1]
    assert first.shape == (31, 45, 3) and np.abs(first.astype(int) - frames[0]).mean() < 8


def test_a_fifo_and_a_broken_link_fail_without_being_opened(tmp_path):
    """A FIFO is refused from its file type (opening it would wait for a writer)."""
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "broken.mp4").symlink_to(tmp_path / "gone.mp4")
    with pytest.raises(InputError, match=r"expected a video file, got a FIFO \(named pipe\)"):
        probe_video(tmp_path / "pipe.mp4")
    with pytest.raises(InputError, match="video is a broken symbolic link"):
        read_frames(tmp_path / "broken.mp4")


def test_rotation_metadata_is_applied(tmp_path, photo):
    path = tmp_path / "portrait.mp4"
    frame = pan_frames(photo, 1)[0]
    with av.open(str(path), "w") as container:  # as a phone stores it: landscape pixels + a display matrix
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(-90)
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    assert probe_video(path).size_wh == (64, 96)
    got = next(read_frames(path))[1]
    assert np.abs(got.astype(int) - np.rot90(frame, -1)).mean() < 8  # turned clockwise, as players do


def test_writer_removes_partial_file_on_error(tmp_path, photo):
    path = tmp_path / "partial.mp4"
    frame = pan_frames(photo, 1)[0]

    def write_then_fail():
        with VideoWriter(path, fps=25, size_wh=(96, 64)) as sink:
            sink.write(frame)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert not path.exists()
    with pytest.raises(InputError, match="expected a"), VideoWriter(path, fps=25, size_wh=(96, 64)) as sink:
        sink.write(np.zeros((10, 10, 3), np.uint8))
    assert not path.exists()


def test_mkv_without_frame_count_is_counted_by_decoding(tmp_path, photo):
    path = write_video(tmp_path / "pan.mkv", pan_frames(photo, 7))
    assert probe_video(path) == VideoInfo(fps=25.0, frames=7, size_wh=(96, 64))


def test_bad_files(tmp_path, photo):
    good = write_video(tmp_path / "good.mp4", pan_frames(photo, 20))
    data = good.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) * 2 // 3])  # faststart: index first, frames missing
    with av.open(str(tmp_path / "moov_last.mp4"), "w") as container:  # index at the end: cut off entirely
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in pan_frames(photo, 5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = (tmp_path / "moov_last.mp4").read_bytes()
    (tmp_path / "moov_last.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 20)
    (tmp_path / "empty.mp4").write_bytes(b"")
    for name in ("zero.mp4", "zero.avi"):  # a stream header and no frame
        with av.open(str(tmp_path / name), "w") as container:
            stream = container.add_stream("mpeg4", rate=25)
            stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
            container.start_encoding()
    save_png(tmp_path / "image.png", photo)
    cases = {
        "missing.mp4": "not found",
        "truncated.mp4": "truncated",
        "moov_last.mp4": "damaged",
        "text.mp4": "not a video",
        "empty.mp4": "empty",
        "zero.mp4": "no frames",
        "zero.avi": "no frames",
        "image.png": "image, not a video",
    }
    for name, message in cases.items():
        with pytest.raises(InputError, match=message):
            probe_video(tmp_path / name)
    with pytest.raises(InputError):
        list(read_frames(tmp_path / "text.mp4"))
    with pytest.raises(InputError, match="folder"):
        probe_video(tmp_path)
