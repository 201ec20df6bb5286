"""Video IO: what goes in comes out (count, fps, size, pixels), H.264 yuv420p, and bad files fail clearly."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import save_png, write_h264, write_resolution_change
from dinofeat.errors import InputError
from dinofeat.io.video import VideoInfo, VideoWriter, probe_video, read_frames, read_timed_frames


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


def test_resolution_change_is_scaled_to_the_first_frames_size_with_one_warning(tmp_path, photo, caplog):
    small = pan_frames(photo, 4, size_wh=(64, 48))
    large = [np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1) for frame in pan_frames(photo, 4, size_wh=(64, 48))]
    path = write_resolution_change(tmp_path / "segments.ts", small, large)
    with caplog.at_level("WARNING", logger="dinofeat"):
        info = probe_video(path)
        frames = [frame for _, frame in read_frames(path)]
    assert info.size_wh == (64, 48) and info.frames == 8
    assert [frame.shape for frame in frames] == [(48, 64, 3)] * 8
    # the scaled frames show the same picture as the small ones, in the same place
    for small_frame, scaled in zip(small, frames[4:], strict=True):
        assert np.abs(scaled.astype(int) - small_frame.astype(int)).mean() < 6
    warnings = [r.getMessage() for r in caplog.records if "changes resolution" in r.getMessage()]
    assert len(warnings) == 1 and "frame 4 (128x96 stored, the first frame 64x48)" in warnings[0]


VFR_TIMES_S = [0.0, 0.04, 0.08, 0.2, 0.24, 0.5, 0.54, 0.58, 1.0, 1.1]


def test_variable_frame_rate_times_are_read_and_written_back(tmp_path, photo):
    frames = pan_frames(photo, len(VFR_TIMES_S))
    source = write_h264(tmp_path / "vfr.mp4", frames, times_s=VFR_TIMES_S)
    timed = list(read_timed_frames(source))
    assert [t.frame_index for t in timed] == list(range(len(VFR_TIMES_S)))
    assert [t.time_s for t in timed] == pytest.approx(VFR_TIMES_S, abs=1e-6)
    assert [t.time_s for t in read_timed_frames(source, start=1, every=3)] == pytest.approx([0.04, 0.24, 0.58])

    copy = tmp_path / "copy.mp4"
    with VideoWriter(copy, fps=probe_video(source).fps, size_wh=(96, 64), crf=12) as sink:
        for frame in timed:
            sink.write(frame.image, frame.time_s)
    assert [t.time_s for t in read_timed_frames(copy)] == pytest.approx(VFR_TIMES_S, abs=1e-6)


def test_times_never_go_back_and_untimed_frames_follow_the_frame_rate(tmp_path, photo):
    frames = pan_frames(photo, 4, size_wh=(64, 48))
    path = write_resolution_change(tmp_path / "segments.ts", frames[:2], frames[2:])  # both segments start at 0
    assert [t.time_s for t in read_timed_frames(path)] == pytest.approx([0.0, 0.04, 0.08, 0.12])
    out = write_video(tmp_path / "cfr.mp4", frames, fps=30000 / 1001)
    assert [t.time_s for t in read_timed_frames(out)] == pytest.approx([k * 1001 / 30000 for k in range(4)], abs=1e-6)


@pytest.mark.parametrize(
    ("sar", "squeeze"),
    [(Fraction(2, 1), (slice(None), slice(None, None, 2))), (Fraction(1, 2), (slice(None, None, 2), slice(None)))],
    ids=["wide-pixels", "tall-pixels"],
)
def test_non_square_pixels_come_out_at_the_display_size(tmp_path, photo, sar, squeeze):
    """Frames stored squeezed (every other column for 2:1 pixels, row for 1:2) come out as shown."""
    shown = pan_frames(photo, 3, size_wh=(96, 64))
    stored = [np.ascontiguousarray(frame[squeeze]) for frame in shown]
    path = write_h264(tmp_path / "sar.mp4", stored, sar=sar)
    with av.open(str(path)) as container:
        assert container.streams.video[0].sample_aspect_ratio == sar
    assert probe_video(path).size_wh == (96, 64)
    frames = [frame for _, frame in read_frames(path)]
    assert [frame.shape for frame in frames] == [(64, 96, 3)] * 3
    for original, frame in zip(shown, frames, strict=True):
        assert np.abs(frame.astype(int) - original.astype(int)).mean() < 12

    copy = write_video(tmp_path / "copy.mp4", frames)
    with av.open(str(copy)) as container:
        assert container.streams.video[0].sample_aspect_ratio in (None, Fraction(1), Fraction(0))
    assert probe_video(copy).size_wh == (96, 64)
