"""TAP-Vid evaluation: coordinates, readers (safe unpickling), protocols, metrics, driver, sweeps.

The metric tests use hand-computed answers and an independent element-by-element re-implementation
of the reference definitions (tapnet's ``compute_tapvid_metrics``). The end-to-end tests build a
TAP-Vid pickle from a real photo with a known camera path and an occluder, so the truth is exact.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinofeat.errors import InputError
from dinofeat.eval.sweeps import parse_sweep, parse_sweeps
from dinofeat.eval.tapvid import (
    TapVidVideo,
    evaluate_tapvid,
    pixels_to_raster,
    raster_to_pixels,
    read_tapvid,
    resize_frames,
    run_sweep,
)
from dinofeat.eval.tapvid_metrics import (
    METRIC_KEYS,
    THRESHOLDS,
    compute_tapvid_metrics,
    evaluation_mask,
    mean_metrics,
    sample_queries,
    sample_queries_first,
    sample_queries_strided,
)
from dinofeat.io.safepickle import load_array_pickle


# -- a synthetic TAP-Vid video with exact ground truth -----------------------------------------
class PanVideo:
    """Crops of a photo along a known camera path, with a grey occluder fixed in the frame.

    Scene points are photo pixels (dinofeat convention). In frame ``t`` the crop's top-left pixel is
    photo pixel ``origin + t * step``, so a scene point ``P`` sits at ``P - origin - t * step``.
    """

    def __init__(
        self,
        photo: np.ndarray,
        frames: int = 10,
        size_wh=(128, 96),
        origin=(150, 130),
        step=(3, 2),
        occluder=(40, 30, 70, 60),
    ):
        self.photo, self.num_frames, self.size_wh = photo, frames, size_wh
        self.origin, self.step, self.occluder = np.array(origin, float), np.array(step, float), occluder
        w, h = size_wh
        # scene points: a grid over the first frame, one point that enters late, one never in view;
        # no coordinate is near a half pixel, where visibility would hinge on float rounding
        xs, ys = np.meshgrid(np.linspace(5.3, w - 8.4, 6), np.linspace(4.7, h - 6.3, 5))
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1) + self.origin
        entering = self.origin + [w + 10.3, 20.2]  # right of frame 0, the camera pans right onto it
        never = self.origin + [-500.0, -100.0]
        self.scene = np.vstack([grid, entering, never])

    def offset(self, t) -> np.ndarray:
        return self.origin + np.asarray(t, float)[..., None] * self.step

    def positions(self) -> np.ndarray:
        """``(N, T, 2)`` dinofeat pixels of every scene point in every frame."""
        return self.scene[:, None, :] - self.offset(np.arange(self.num_frames))[None]

    def visible(self, xy: np.ndarray) -> np.ndarray:
        w, h = self.size_wh
        x0, y0, x1, y1 = self.occluder
        inside = (xy[..., 0] >= -0.5) & (xy[..., 0] < w - 0.5) & (xy[..., 1] >= -0.5) & (xy[..., 1] < h - 0.5)
        col, row = np.round(xy[..., 0]), np.round(xy[..., 1])
        hidden = (col >= x0) & (col < x1) & (row >= y0) & (row < y1)
        return inside & ~hidden

    def frames(self) -> np.ndarray:
        w, h = self.size_wh
        out = []
        for t in range(self.num_frames):
            ox, oy = self.offset(t).astype(int)
            frame = self.photo[oy : oy + h, ox : ox + w].copy()
            x0, y0, x1, y1 = self.occluder
            frame[y0:y1, x0:x1] = 128
            out.append(frame)
        return np.stack(out)

    def record(self) -> dict:
        """The official record: uint8 frames, points normalised (x = u * W in the raster), occluded."""
        xy = self.positions()
        return {
            "video": self.frames(),
            "points": ((xy + 0.5) / self.size_wh).astype(np.float32),
            "occluded": ~self.visible(xy),
        }

    def oracle(self, offset_xy=(0.0, 0.0), calls: list | None = None):
        """A track_fn that knows the camera path: exact positions (plus ``offset_xy`` raster pixels)
        and visibility, computed from the queries alone."""
        w, h = self.size_wh

        def track_fn(frames, queries_txy):
            if calls is not None:
                calls.append((frames.shape, queries_txy.copy()))
            sx, sy = frames.shape[2] / w, frames.shape[1] / h
            t = queries_txy[:, 0]
            # query -> original-frame pixels (half-pixel rule) -> scene point
            orig = np.stack([(queries_txy[:, 1] + 0.5) / sx - 0.5, (queries_txy[:, 2] + 0.5) / sy - 0.5], axis=1)
            scene = orig + self.offset(t)
            xy = scene[:, None, :] - self.offset(np.arange(len(frames)))[None]
            tracks = np.stack([(xy[..., 0] + 0.5) * sx - 0.5, (xy[..., 1] + 0.5) * sy - 0.5], axis=-1)
            return tracks + np.asarray(offset_xy), self.visible(xy)

        return track_fn


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="module")
def pan(astronaut) -> PanVideo:
    return PanVideo(astronaut)


@pytest.fixture
def davis_pickle(tmp_path, pan) -> Path:
    second = PanVideo(pan.photo, frames=8, origin=(60, 200), step=(-2, 1), occluder=(10, 50, 60, 90))
    path = tmp_path / "tapvid_davis.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"pan-right": pan.record(), "pan-left": second.record()}, handle)
    return path


def write_pickle(path: Path, data, protocol=pickle.HIGHEST_PROTOCOL) -> Path:
    with open(path, "wb") as handle:
        pickle.dump(data, handle, protocol=protocol)
    return path


def small_record(frames=4, tracks=3, size_hw=(6, 8), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "video": rng.integers(0, 256, (frames, *size_hw, 3), dtype=np.uint8),
        "points": rng.random((tracks, frames, 2)).astype(np.float32),
        "occluded": rng.random((tracks, frames)) < 0.3,
    }


# -- coordinates --------------------------------------------------------------------------------
def test_raster_and_pixel_coordinates_known_values_and_round_trip():
    # the reference places u on the raster at u * W: u = 0.5 on 256 px is x = 128, dinofeat 127.5
    assert raster_to_pixels([[0.5 * 256, 0.25 * 256]]).tolist() == [[127.5, 63.5]]
    # the top-left pixel's centre: raster 0.5, dinofeat 0; the image edge: raster 0, dinofeat -0.5
    assert pixels_to_raster([[0.0, 0.0]]).tolist() == [[0.5, 0.5]]
    assert raster_to_pixels([[0.0, 256.0]]).tolist() == [[-0.5, 255.5]]
    rng = np.random.default_rng(1)
    points = rng.uniform(-10, 300, (7, 5, 2))
    np.testing.assert_allclose(pixels_to_raster(raster_to_pixels(points)), points, atol=1e-12)
    np.testing.assert_allclose(raster_to_pixels(pixels_to_raster(points)), points, atol=1e-12)
    # raster scaling (the reference's convert_grid_coordinates) is dinofeat's half-pixel resize rule
    x = 37.25
    assert raster_to_pixels(pixels_to_raster([[x, 0]]) * [256 / 854, 1])[0, 0] == pytest.approx(
        (x + 0.5) * 256 / 854 - 0.5
    )


# -- readers ------------------------------------------------------------------------------------
def test_reads_davis_dict_pickle(davis_pickle, pan):
    videos = read_tapvid(davis_pickle)
    assert [v.name for v in videos] == ["pan-right", "pan-left"]
    video = videos[0]
    record = pan.record()
    assert video.num_frames == 10 and video.num_tracks == len(pan.scene)
    np.testing.assert_array_equal(video.frames(), record["video"])
    np.testing.assert_array_equal(video.occluded, record["occluded"])
    assert video.points.dtype == np.float64
    np.testing.assert_array_equal(video.points, record["points"].astype(np.float64))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reads_rgb_stacking_list_pickle_in_every_pickle_protocol(tmp_path, protocol):
    records = [small_record(seed=0), small_record(frames=5, tracks=2, seed=1)]
    videos = read_tapvid(write_pickle(tmp_path / "rgb_stacking.pkl", records, protocol))
    assert [v.name for v in videos] == ["0", "1"]
    for video, record in zip(videos, records):
        np.testing.assert_array_equal(video.frames(), record["video"])
        np.testing.assert_array_equal(video.occluded, record["occluded"])
        np.testing.assert_allclose(video.points, record["points"])


def jpeg_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_reads_kinetics_shards_with_jpeg_frames(tmp_path, pan):
    # as tapnet's generate_tapvid.py writes them: a list per shard, frames as np.array(JPEG bytes)
    record = pan.record()
    encoded = dict(record, video=np.array([jpeg_bytes(f) for f in record["video"]]))
    assert encoded["video"].dtype.kind == "S"
    folder = tmp_path / "kinetics"
    folder.mkdir()
    write_pickle(folder / "0000_of_0002.pkl", [encoded, small_record()])
    write_pickle(folder / "0001_of_0002.pkl", [small_record(seed=3)])
    videos = read_tapvid(folder)
    assert [v.name for v in videos] == ["0000_of_0002/0", "0000_of_0002/1", "0001_of_0002/0"]
    frames = videos[0].frames()
    assert frames.shape == record["video"].shape and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - record["video"]).mean() < 4  # JPEG is lossy


class _RunsCode:
    """Unpickling this calls os.system (a stand-in for any malicious pickle)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    path = write_pickle(tmp_path / "evil.pkl", {"bear": {"video": _RunsCode(marker)}})
    with pytest.raises(InputError, match=r"evil\.pkl.*refusing to load (posix|os|nt)\.system") as info:
        read_tapvid(path)
    assert not marker.exists()
    assert "\n" not in str(info.value)
    # builtins that run code are refused too, and so is any class outside numpy's reconstruction
    for payload in (
        b"cbuiltins\neval\n(V1+1\ntR.",
        b"cbuiltins\ngetattr\n(cbuiltins\nobject\nV__subclasses__\ntR.",
        pickle.dumps(Path("x")),
    ):
        with pytest.raises(InputError, match="refusing to load"):
            load_array_pickle(_raw(tmp_path, payload))


def _raw(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "raw.pkl"
    path.write_bytes(payload)
    return path


def test_reads_pickles_written_by_numpy_1(tmp_path):
    # numpy 1.x names its reconstruction function numpy.core.multiarray._reconstruct (numpy 2: numpy._core)
    record = small_record()
    data = pickle.dumps({"bear": record}, protocol=2)
    assert b"numpy._core.multiarray" in data
    path = _raw(tmp_path, data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    video = read_tapvid(path)[0]
    np.testing.assert_array_equal(video.frames(), record["video"])
    np.testing.assert_array_equal(video.occluded, record["occluded"])


def test_protocol_two_bytes_only_decode_as_latin1(tmp_path):
    # protocol <= 2 stores bytes as _codecs.encode(text, "latin1"); any other codec is refused
    assert load_array_pickle(write_pickle(tmp_path / "p2.pkl", {"b": b"\xff\xd8"}, 2)) == {"b": b"\xff\xd8"}
    payload = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    with pytest.raises(InputError, match="refusing _codecs.encode with encoding 'rot13'"):
        load_array_pickle(_raw(tmp_path, payload))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(points=r["points"][:, :, :1]), r"'points' must be a float \(N, T, 2\) array"),
        (lambda r: r.update(points=r["points"][:, :3]), r"'points' must be a float \(N, T, 2\) array"),
        (lambda r: r.update(occluded=r["occluded"].astype(np.uint8)), r"'occluded' must be a bool \(N, T\) array"),
        (lambda r: r.update(video=r["video"][:3]), r"3 frames but tracks of 4 frames"),
        (lambda r: r.update(video=r["video"].astype(np.float32)), r"'video' must be \(T, H, W, 3\) uint8 frames"),
        (lambda r: r.update(video=r["video"][..., 0]), r"'video' must be \(T, H, W, 3\) uint8 frames"),
        (lambda r: r.update(video=np.array(b"\xff\xd8")), r"or a list of JPEG-encoded frames, got \|S2 array"),
        (lambda r: r.update(video=[b"\xff\xd8", 3]), r"or a list of JPEG-encoded frames, got list"),
        (lambda r: r.pop("occluded"), r"has no 'occluded'"),
        (
            lambda r: r["points"].__setitem__((0, 0), np.nan) or r["occluded"].__setitem__((0, 0), False),
            "non-finite coordinates where the point is visible",
        ),
    ],
)
def test_wrong_structure_is_a_one_line_error_naming_file_and_video(tmp_path, change, message):
    record = small_record()
    change(record)
    path = write_pickle(tmp_path / "bad.pkl", {"bear": record})
    with pytest.raises(InputError, match=message) as info:
        read_tapvid(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and "'bear'" in text


def test_bad_files_are_one_line_errors(tmp_path):
    cases = {
        tmp_path / "missing.pkl": "TAP-Vid pickle not found",
        _text(tmp_path / "notes.pkl", "hello"): "not a TAP-Vid pickle",
        write_pickle(tmp_path / "int.pkl", 42): "holds int data, expected a dict of videos",
        write_pickle(tmp_path / "empty.pkl", {}): "holds no videos",
        write_pickle(tmp_path / "list.pkl", [[1, 2]]): "video '0' is list data, expected a dict",
        _truncated(tmp_path / "cut.pkl"): "not a TAP-Vid pickle",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=message) as info:
            read_tapvid(path)
        assert "\n" not in str(info.value) and path.name in str(info.value)
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(InputError, match=r"no TAP-Vid pickles \(\*\.pkl\) in folder"):
        read_tapvid(empty)


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _truncated(path: Path) -> Path:
    data = pickle.dumps({"bear": small_record()})
    path.write_bytes(data[: len(data) // 2])
    return path


def test_corrupt_jpeg_frame_is_reported_when_decoded(tmp_path):
    record = small_record()
    record["video"] = [jpeg_bytes(f) for f in record["video"]]
    record["video"][2] = b"\xff\xd8 not really"
    video = read_tapvid(write_pickle(tmp_path / "k.pkl", [record]))[0]
    with pytest.raises(InputError, match="video '0': frame 2 is not a decodable image"):
        video.frames()


def test_resize_is_lanczos_to_height_width(pan):
    frames = pan.frames()[:2]
    out = resize_frames(frames, (64, 100))
    assert out.shape == (2, 64, 100, 3) and out.dtype == np.uint8
    want = np.asarray(Image.fromarray(frames[1]).resize((100, 64), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out[1], want)
    assert resize_frames(frames, frames.shape[1:3]) is frames


# -- query protocols ----------------------------------------------------------------------------
def reference_first(occluded, points):
    """Loop transcription of the reference's query-first sampling."""
    queries, tracks = [], []
    for n in range(len(occluded)):
        visible = np.flatnonzero(~occluded[n])
        if len(visible):
            t = visible[0]
            queries.append([t, points[n, t, 1], points[n, t, 0]])
            tracks.append(n)
    return np.array(queries).reshape(-1, 3), np.array(tracks, dtype=int)


def reference_strided(occluded, points, stride):
    queries, tracks = [], []
    for t in range(0, occluded.shape[1], stride):
        for n in range(len(occluded)):
            if not occluded[n, t]:
                queries.append([t, points[n, t, 1], points[n, t, 0]])
                tracks.append(n)
    return np.array(queries).reshape(-1, 3), np.array(tracks, dtype=int)


def test_query_first_uses_first_visible_frame_and_drops_never_visible_tracks():
    occluded = np.array([[False, False, True, False], [True, True, False, False], [True, True, True, True]])
    points = np.arange(24.0).reshape(3, 4, 2)
    queries = sample_queries_first(occluded, points)
    assert queries.query_points.tolist() == [[0, 1, 0], [2, 13, 12]]  # [t, y, x]
    assert queries.track_index.tolist() == [0, 1]
    np.testing.assert_array_equal(queries.target_points, points[:2])
    np.testing.assert_array_equal(queries.occluded, occluded[:2])


def test_strided_queries_every_fifth_frame_where_visible():
    occluded = np.ones((3, 12), dtype=bool)
    occluded[0, [0, 5, 10]] = False  # three queries
    occluded[1, [1, 2, 3, 4, 6]] = False  # visible, but never on a strided frame: no query
    occluded[2, [5, 11]] = False  # one query, at frame 5
    points = np.random.default_rng(0).random((3, 12, 2))
    queries = sample_queries_strided(occluded, points)
    assert queries.query_points[:, 0].tolist() == [0, 5, 5, 10]
    assert queries.track_index.tolist() == [0, 0, 2, 0]
    assert queries.query_points[2].tolist() == [5, points[2, 5, 1], points[2, 5, 0]]


def test_samplers_match_loop_transcriptions_on_random_tracks():
    rng = np.random.default_rng(7)
    for _trial in range(20):
        n, t = rng.integers(0, 9), rng.integers(1, 23)
        occluded = rng.random((n, t)) < rng.uniform(0.2, 0.95)
        points = rng.random((n, t, 2)) * 256
        got = sample_queries_first(occluded, points)
        want, tracks = reference_first(occluded, points)
        np.testing.assert_array_equal(got.query_points, want)
        np.testing.assert_array_equal(got.track_index, tracks)
        for stride in (1, 5, 7):
            got = sample_queries_strided(occluded, points, stride)
            want, tracks = reference_strided(occluded, points, stride)
            np.testing.assert_array_equal(got.query_points, want)
            np.testing.assert_array_equal(got.track_index, tracks)
            np.testing.assert_array_equal(got.target_points, points[tracks])


def test_protocol_names_are_checked():
    with pytest.raises(InputError, match="unknown TAP-Vid protocol 'last'; use one of first, strided"):
        sample_queries("last", np.zeros((1, 2), bool), np.zeros((1, 2, 2)))
    with pytest.raises(InputError, match="query stride"):
        sample_queries_strided(np.zeros((1, 2), bool), np.zeros((1, 2, 2)), stride=0)


def test_evaluation_masks_exclude_query_frame_and_earlier_frames_in_first_mode():
    first = evaluation_mask([0, 2, 4], 5, "first")
    strided = evaluation_mask([0, 2, 4], 5, "strided")
    assert first.astype(int).tolist() == [[0, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]
    assert strided.astype(int).tolist() == [[0, 1, 1, 1, 1], [1, 1, 0, 1, 1], [1, 1, 1, 1, 0]]
    assert evaluation_mask([1.6], 3, "first").tolist() == [[False, False, False]]  # rounded to frame 2
    with pytest.raises(InputError, match=r"query frames must lie in \[0, 4\]"):
        evaluation_mask([5], 5, "strided")


# -- metrics ------------------------------------------------------------------------------------
def hand_case():
    """One query at frame 0 of 5 frames, each evaluated frame a different case (see the test)."""
    query = np.array([[0.0, 50.0, 40.0]])
    gt = np.tile([[[40.0, 50.0]]], (1, 5, 1))
    gt_occ = np.array([[False, False, False, False, True]])
    pred = gt.copy()
    pred[0, 0] += [30.0, 0.0]  # query frame: far and predicted occluded (must not count)
    pred[0, 1] += [0.3, -0.4]  # 0.5 px away, visible: within every threshold
    pred[0, 2] += [2.0, 0.0]  # exactly 2 px: not within 1 or 2 (strict), within 4, 8, 16
    pred[0, 3] += [0.0, 0.0]  # exact, but predicted occluded
    pred_occ = np.array([[True, False, False, True, False]])  # frame 4: visible, truly occluded
    return query, gt_occ, gt, pred_occ, pred


def test_metrics_by_hand_strided():
    metrics = compute_tapvid_metrics(*hand_case(), protocol="strided")
    # evaluated frames 1..4; occlusion right on 1, 2; wrong on 3 (missed) and 4 (false alarm)
    assert metrics["occlusion_accuracy"] == 2 / 4
    # visible ground truth: frames 1, 2, 3
    for d, within in zip(THRESHOLDS, [2 / 3, 2 / 3, 1, 1, 1]):
        assert metrics[f"pts_within_{d}"] == pytest.approx(within)
    # d <= 2: TP frame 1; FP frame 2 (too far) + frame 4 (occluded) -> 1 / (3 + 2)
    # d >= 4: TP frames 1, 2; FP frame 4 -> 2 / (3 + 1)
    for d, jaccard in zip(THRESHOLDS, [1 / 5, 1 / 5, 2 / 4, 2 / 4, 2 / 4]):
        assert metrics[f"jaccard_{d}"] == pytest.approx(jaccard)
    assert metrics["average_jaccard"] == pytest.approx((0.2 + 0.2 + 0.5 * 3) / 5)
    assert metrics["average_pts_within_thresh"] == pytest.approx((2 / 3 * 2 + 3) / 5)
    assert list(metrics) == list(METRIC_KEYS)


def test_metrics_by_hand_first_mode_skips_frames_up_to_the_query():
    query, gt_occ, gt, pred_occ, pred = hand_case()
    query[0, 0] = 2  # query at frame 2: only frames 3 and 4 count
    metrics = compute_tapvid_metrics(query, gt_occ, gt, pred_occ, pred, protocol="first")
    assert metrics["occlusion_accuracy"] == 0.0  # frame 3 missed, frame 4 false alarm
    assert all(metrics[f"pts_within_{d}"] == 1.0 for d in THRESHOLDS)  # frame 3 is exact
    assert all(metrics[f"jaccard_{d}"] == 0.0 for d in THRESHOLDS)  # TP 0, FP 1, GT 1
    # strided with the same query frame also counts frames 0 and 1
    strided = compute_tapvid_metrics(query, gt_occ, gt, pred_occ, pred, protocol="strided")
    assert strided["occlusion_accuracy"] == pytest.approx(1 / 4)  # frames 0, 1, 3, 4: only frame 1 right


def test_strict_inequality_exactly_at_each_threshold():
    for d in THRESHOLDS:
        query, gt_occ, gt = np.zeros((1, 3)), np.zeros((1, 2), bool), np.zeros((1, 2, 2))
        for offset, inside in ((d, False), (np.nextafter(d, 0), True)):
            pred = gt + [offset, 0.0]
            metrics = compute_tapvid_metrics(query, gt_occ, gt, gt_occ, pred, protocol="first")
            assert metrics[f"pts_within_{d}"] == float(inside)
            assert metrics[f"jaccard_{d}"] == float(inside)
        # diagonal: 0.6 d and 0.8 d is exactly d away
        pred = gt + [0.6 * d, 0.8 * d]
        squared = (0.6 * d) ** 2 + (0.8 * d) ** 2
        metrics = compute_tapvid_metrics(query, gt_occ, gt, gt_occ, pred, protocol="first")
        assert metrics[f"pts_within_{d}"] == float(squared < d * d)


def loop_metrics(query, gt_occ, gt, pred_occ, pred, protocol):
    """The reference definitions, one point at a time (an independent re-implementation)."""
    q, t = gt_occ.shape
    evaluated, agree, visible_gt = 0, 0, 0
    within = dict.fromkeys(THRESHOLDS, 0)
    tp = dict.fromkeys(THRESHOLDS, 0)
    fp = dict.fromkeys(THRESHOLDS, 0)
    for i in range(q):
        qt = round(query[i, 0])
        for f in range(t):
            if (protocol == "first" and f <= qt) or (protocol == "strided" and f == qt):
                continue
            evaluated += 1
            agree += bool(pred_occ[i, f]) == bool(gt_occ[i, f])
            visible_gt += not gt_occ[i, f]
            dx, dy = pred[i, f] - gt[i, f]
            for d in THRESHOLDS:
                close = dx * dx + dy * dy < d * d
                within[d] += close and not gt_occ[i, f]
                tp[d] += close and not gt_occ[i, f] and not pred_occ[i, f]
                fp[d] += (not pred_occ[i, f]) and (gt_occ[i, f] or not close)

    def div(a, b):
        return a / b if b else math.nan

    out = {"occlusion_accuracy": div(agree, evaluated)}
    for d in THRESHOLDS:
        out[f"pts_within_{d}"] = div(within[d], visible_gt)
        out[f"jaccard_{d}"] = div(tp[d], visible_gt + fp[d])
    out["average_jaccard"] = np.mean([out[f"jaccard_{d}"] for d in THRESHOLDS])
    out["average_pts_within_thresh"] = np.mean([out[f"pts_within_{d}"] for d in THRESHOLDS])
    return out


def test_metrics_match_an_independent_loop_implementation_on_random_data():
    rng = np.random.default_rng(3)
    for _trial in range(30):
        q, t = rng.integers(1, 8), rng.integers(2, 15)
        gt = rng.uniform(0, 256, (q, t, 2))
        pred = gt + rng.normal(0, rng.choice([1.0, 4.0, 12.0]), (q, t, 2))
        gt_occ = rng.random((q, t)) < 0.3
        pred_occ = np.where(rng.random((q, t)) < 0.8, gt_occ, ~gt_occ)
        query = np.column_stack([rng.integers(0, t, q), rng.uniform(0, 256, (q, 2))]).astype(float)
        for protocol in ("first", "strided"):
            got = compute_tapvid_metrics(query, gt_occ, gt, pred_occ, pred, protocol)
            want = loop_metrics(query, gt_occ, gt, pred_occ, pred, protocol)
            assert got.keys() == want.keys()
            for key in got:
                assert (math.isnan(got[key]) and math.isnan(want[key])) or got[key] == pytest.approx(want[key])


def test_nothing_to_count_is_nan_like_the_reference():
    # one query at the last frame in "first" mode: no evaluated frame at all
    metrics = compute_tapvid_metrics(
        [[2, 0, 0]], np.zeros((1, 3), bool), np.zeros((1, 3, 2)), np.zeros((1, 3), bool), np.zeros((1, 3, 2)), "first"
    )
    assert all(math.isnan(v) for v in metrics.values())


def test_mean_is_over_videos_not_pooled_and_skips_nan():
    per_video = [
        {"average_jaccard": 0.2, "occlusion_accuracy": 1.0},
        {"average_jaccard": 1.0, "occlusion_accuracy": math.nan},
    ]
    assert mean_metrics(per_video) == {"average_jaccard": pytest.approx(0.6), "occlusion_accuracy": 1.0}
    assert math.isnan(mean_metrics([{"average_jaccard": math.nan}])["average_jaccard"])


def test_metric_inputs_must_agree():
    with pytest.raises(InputError, match="metric inputs disagree"):
        compute_tapvid_metrics(
            np.zeros((1, 3)),
            np.zeros((1, 4), bool),
            np.zeros((1, 4, 2)),
            np.zeros((1, 3), bool),
            np.zeros((1, 4, 2)),
            "first",
        )


# -- the driver, end to end on a generated pickle ----------------------------------------------
def test_oracle_scores_perfectly_and_sees_dinofeat_pixels_of_the_256_frames(davis_pickle, pan):
    videos = read_tapvid(davis_pickle)
    calls = []
    seconds = PanVideo(pan.photo, frames=8, origin=(60, 200), step=(-2, 1), occluder=(10, 50, 60, 90))
    oracles = {"pan-right": pan.oracle(calls=calls), "pan-left": seconds.oracle()}
    current = {}

    def track_fn(frames, queries):
        return oracles[current["name"]](frames, queries)

    done = []
    for protocol in ("first", "strided"):
        results = []
        for video in videos:
            current["name"] = video.name
            results.append(
                evaluate_tapvid(
                    [video], track_fn, protocol=protocol, model="oracle", progress=lambda d, n: done.append((d, n))
                )
            )
        for report in results:
            assert report.mean["average_jaccard"] == 1.0
            assert report.mean["average_pts_within_thresh"] == 1.0
            assert report.mean["occlusion_accuracy"] == 1.0
    assert done[:1] == [(1, 1)]
    # the first call: frames resized to 256 x 256, queries (t, x, y) = (t, u * 256 - 0.5, v * 256 - 0.5)
    shape, queries = calls[0]
    assert shape == (10, 256, 256, 3)
    record = pan.record()
    first = sample_queries_first(record["occluded"], record["points"].astype(np.float64))
    np.testing.assert_allclose(queries[:, 0], first.query_points[:, 0])
    np.testing.assert_allclose(queries[:, 1], first.query_points[:, 2] * 256 - 0.5)
    np.testing.assert_allclose(queries[:, 2], first.query_points[:, 1] * 256 - 0.5)
    # the never-visible track is dropped in "first" mode, the late-entering one queried when it appears
    assert len(queries) == len(pan.scene) - 1
    entering = record["occluded"][-2]
    assert entering[0] and queries[-1, 0] == np.argmax(~entering) > 0


def test_known_offset_gives_known_metrics_and_json(davis_pickle, pan):
    video = read_tapvid(davis_pickle)[0]
    report = evaluate_tapvid([video], pan.oracle(offset_xy=(3.0, 0.0)), protocol="strided", model="shift-3")
    metrics = report.videos[0].metrics
    assert [metrics[f"pts_within_{d}"] for d in THRESHOLDS] == [0, 0, 1, 1, 1]
    assert [metrics[f"jaccard_{d}"] for d in THRESHOLDS] == [0, 0, 1, 1, 1]
    assert metrics["occlusion_accuracy"] == 1.0
    assert metrics["average_jaccard"] == pytest.approx(0.6)
    assert metrics["average_pts_within_thresh"] == pytest.approx(0.6)

    doc = report.to_json()
    text = json.dumps(doc, allow_nan=False)
    assert json.loads(text) == doc
    assert (doc["protocol"], doc["resolution"], doc["metrics_resolution"], doc["model"]) == (
        "strided",
        [256, 256],
        [256, 256],
        "shift-3",
    )
    entry = doc["videos"][0]
    assert set(entry) == {"name", "raster_hw", "query_points", "pred_tracks", "pred_occluded", "metrics"}
    assert entry["name"] == "pan-right" and entry["raster_hw"] == [256, 256]
    # pred_tracks are in the reference raster: the truth (u * 256) plus the 3 px offset
    result = report.videos[0]
    np.testing.assert_allclose(np.array(entry["pred_tracks"]), result.target_points + [3.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(np.array(entry["query_points"]), result.query_points, atol=1e-3)
    assert np.array(entry["pred_occluded"]).tolist() == result.occluded.tolist()
    assert set(doc["mean"]) == set(METRIC_KEYS)


def test_full_resolution_and_rescaled_metrics(davis_pickle, pan):
    video = read_tapvid(davis_pickle)[0]
    calls = []
    full = evaluate_tapvid([video], pan.oracle(calls=calls), resolution=None)
    assert calls[0][0] == (10, 96, 128, 3)  # original frames
    assert full.mean["average_jaccard"] == 1.0 and full.to_json()["resolution"] == "full"
    assert full.videos[0].raster_hw == (96, 128)
    # 3 px in original pixels is 3 px at full resolution...
    shifted = evaluate_tapvid([video], pan.oracle(offset_xy=(3.0, 0.0)), resolution=None)
    assert [shifted.mean[f"pts_within_{d}"] for d in THRESHOLDS] == [0, 0, 1, 1, 1]
    # ...and 6 px once rescaled to 256 x 256 (x scale 2): within 8 and 16 only
    rescaled = evaluate_tapvid(
        [video], pan.oracle(offset_xy=(3.0, 0.0)), resolution=None, metrics_resolution=(256, 256)
    )
    assert [rescaled.mean[f"pts_within_{d}"] for d in THRESHOLDS] == [0, 0, 0, 1, 1]
    assert rescaled.mean["average_jaccard"] == pytest.approx(0.4)
    doc = rescaled.to_json()
    assert doc["resolution"] == "full" and doc["metrics_resolution"] == [256, 256]
    assert doc["videos"][0]["raster_hw"] == [256, 256]


def test_mean_over_videos_and_max_videos_and_table(davis_pickle, pan):
    videos = read_tapvid(davis_pickle)

    def stay_put(frames, queries):  # predicts the query position everywhere, always visible
        n, t = len(queries), len(frames)
        return np.repeat(queries[:, None, 1:], t, axis=1), np.ones((n, t), bool)

    report = evaluate_tapvid(videos, stay_put, protocol="strided")
    per_video = [r.metrics["average_jaccard"] for r in report.videos]
    assert report.mean["average_jaccard"] == pytest.approx(np.mean(per_video))
    assert per_video[0] != per_video[1]
    for result in report.videos:  # the driver's numbers are the reference's on its own arrays
        want = loop_metrics(
            result.query_points,
            result.occluded,
            result.target_points,
            result.pred_occluded,
            result.pred_tracks,
            "strided",
        )
        assert result.metrics == pytest.approx(want)
    table = report.format_table()
    lines = table.splitlines()
    assert lines[0].split() == ["video", "queries", "frames", "AJ", "δ_avg", "OA"]
    assert any(line.startswith("pan-right") for line in lines) and lines[-1].startswith("mean (2 videos)")
    assert f"{100 * report.mean['average_jaccard']:.1f}" in lines[-1]
    assert len(evaluate_tapvid(videos, stay_put, max_videos=1).videos) == 1


def test_video_without_queries_is_not_tracked_and_has_null_metrics(tmp_path):
    record = small_record()
    record["occluded"][:] = True
    good = small_record(seed=5)
    good["occluded"][:, 0] = False
    videos = read_tapvid(write_pickle(tmp_path / "v.pkl", {"hidden": record, "good": good}))
    seen = []

    def track_fn(frames, queries):
        seen.append(len(queries))
        return np.zeros((len(queries), len(frames), 2)), np.ones((len(queries), len(frames)), bool)

    report = evaluate_tapvid(videos, track_fn)
    assert seen == [3]
    doc = report.to_json()
    json.dumps(doc, allow_nan=False)
    assert all(v is None for v in doc["videos"][0]["metrics"].values())
    assert doc["mean"] == report.videos[1].to_json()["metrics"]


@pytest.mark.parametrize(
    "answer, message",
    [
        (lambda n, t: np.zeros((n, t, 2)), "must return \\(tracks_xy, visible\\)"),
        (lambda n, t: (np.zeros((t, n, 2)), np.ones((n, t), bool)), "expected float"),
        (lambda n, t: (np.zeros((n, t, 2)), np.ones((n, t))), "returned visible float64 array.*expected bool"),
    ],
)
def test_bad_track_fn_answers_are_one_line_errors(tmp_path, answer, message):
    video = read_tapvid(write_pickle(tmp_path / "v.pkl", [small_record(frames=5)]))[0]
    video.occluded[:, 0] = False
    with pytest.raises(InputError, match=message) as info:
        evaluate_tapvid([video], lambda frames, q: answer(len(q), len(frames)))
    assert "\n" not in str(info.value)


def test_bad_driver_arguments(tmp_path):
    videos = read_tapvid(write_pickle(tmp_path / "v.pkl", [small_record()]))

    def track_fn(frames, queries):
        raise AssertionError("not called")

    for kwargs, message in (
        ({"protocol": "all"}, "unknown TAP-Vid protocol"),
        ({"resolution": (256,)}, "resolution must be \\(height, width\\)"),
        ({"metrics_resolution": (0, 5)}, "metrics_resolution must be"),
        ({"max_videos": 0}, "max_videos must be a positive"),
    ):
        with pytest.raises(InputError, match=message):
            evaluate_tapvid(videos, track_fn, **kwargs)
    with pytest.raises(InputError, match="no TAP-Vid videos to evaluate"):
        evaluate_tapvid([], track_fn)


# -- sweeps -------------------------------------------------------------------------------------
def test_parse_sweep_ranges_lists_and_values():
    name, values = parse_sweep("min_score=0.3:0.8:0.05")
    assert name == "min_score" and len(values) == 11 and values[0] == 0.3 and values[-1] == 0.8
    assert values[1] == 0.35 and values[7] == 0.65  # rounded to the written decimals
    assert parse_sweep("x=0.1:0.3:0.1")[1] == [0.1, 0.2, 0.3]  # (0.3 - 0.1) / 0.1 = 1.9999999999999998
    assert parse_sweep("x=0:1:0.3")[1] == [0, 0.3, 0.6, 0.9]  # the stop is not on the grid
    assert parse_sweep("window = 2:8:2") == ("window", [2, 4, 6, 8])
    assert all(isinstance(v, int) for v in parse_sweep("window=2:8:2")[1])
    assert parse_sweep("rate=1e-3:3e-3:1e-3")[1] == [0.001, 0.002, 0.003]
    assert parse_sweep("a=0.5,0.7,1") == ("a", [0.5, 0.7, 1.0])
    assert parse_sweep("a=3") == ("a", [3])
    assert parse_sweeps(["a=1:2:1", "b=0.5"]) == {"a": [1, 2], "b": [0.5]}


@pytest.mark.parametrize(
    "text, message",
    [
        ("min_score", "expected name=start:stop:step"),
        ("=0.3:0.8:0.05", "expected name=start:stop:step"),
        ("2x=1:2:1", "expected name=start:stop:step"),
        ("x=", "expected name=start:stop:step"),
        ("x=0.3:0.8", "a range is start:stop:step"),
        ("x=a:b:c", "'a' is not a number"),
        ("x=0:nan:1", "'nan' is not a finite number"),
        ("x=0.8:0.3:0.05", r"stop \(0.3\) is below start \(0.8\)"),
        ("x=0:1:0", "the step must be positive"),
        ("x=0:1:-0.1", "the step must be positive"),
        ("x=0:1000:0.01", "100001 values, more than 1000"),
    ],
)
def test_parse_sweep_errors_are_one_line(text, message):
    with pytest.raises(InputError, match=message) as info:
        parse_sweep(text)
    assert "\n" not in str(info.value) and repr(text) in str(info.value)
    with pytest.raises(InputError, match="swept twice"):
        parse_sweeps(["a=1", "a=2"])


def test_run_sweep_reports_aj_per_setting(davis_pickle, pan):
    video = read_tapvid(davis_pickle)[0]
    seen = []

    def evaluate(settings):
        seen.append(settings)
        shift = settings["shift"] * settings.get("scale", 1)
        return evaluate_tapvid([video], pan.oracle(offset_xy=(shift, 0.0)))

    sweep = run_sweep(parse_sweeps(["shift=0:6:3"]), evaluate)
    assert [run.mean["average_jaccard"] for run in sweep.runs] == pytest.approx([1.0, 0.6, 0.4])
    assert sweep.best().settings == {"shift": 0}
    doc = sweep.to_json()
    assert doc["best"] == {"shift": 0} and [r["settings"] for r in doc["runs"]] == [{"shift": v} for v in (0, 3, 6)]
    json.dumps(doc, allow_nan=False)
    lines = sweep.format_table().splitlines()
    assert lines[0].split() == ["shift", "AJ", "δ_avg", "OA"]
    assert lines[2].split() == ["0", "100.0", "100.0", "100.0", "*"] and lines[3].split()[:2] == ["3", "60.0"]
    seen.clear()
    product = run_sweep({"shift": [1, 3], "scale": [1, 2]}, evaluate)
    assert seen == [
        {"shift": 1, "scale": 1},
        {"shift": 1, "scale": 2},
        {"shift": 3, "scale": 1},
        {"shift": 3, "scale": 2},
    ]
    assert product.best().settings == {"shift": 1, "scale": 1}
    with pytest.raises(InputError, match="at least one value"):
        run_sweep({"shift": []}, evaluate)
    with pytest.raises(InputError, match="unknown metric"):
        run_sweep({"shift": [1]}, evaluate, metric="aj")


def test_video_records_can_be_built_in_memory():
    video = TapVidVideo.from_record("mine", small_record())
    assert video.num_frames == 4 and video.frames().shape == (4, 6, 8, 3)
    with pytest.raises(InputError, match="video 'mine' is int data"):
        TapVidVideo.from_record("mine", 3)
