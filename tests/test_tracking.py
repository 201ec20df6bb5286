"""Point tracking on synthetic videos made from a real photo, with known motion.

Two kinds of features are used, and why:

* **A random-weight ViT made content-only** (:func:`content_vit`): random blocks mix in context and a
  random positional embedding makes the same pixels at another grid position a slightly different
  vector, so raw random features are not what tracking needs (trained DINOv2 features are dominated
  by content). With layerscale 1e-3 the blocks barely change the tokens and with the positional
  embedding set to zero each feature is a function of its patch's pixels only: the same pixels give
  the same feature anywhere. That is exactly what a whole-patch camera step checks (exactness), and
  what occlusion, look-alike and late-query tests need: the real model code, frames in, tracks out.
* **A smooth stand-in descriptor** (:class:`SmoothDescriptor`) where sub-patch precision is tested:
  trained DINOv2 features vary smoothly between patch centres, random ones do not (the next patch
  sees unrelated pixels), so bilinear sub-patch positions only mean something with smooth
  features. The stand-in samples a blurred image on a lattice wider than a patch, which is smooth
  at the patch scale, and goes through the same :class:`~dinofeat.features.featuremap.FeatureMap` geometry.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest
import torch

from dinofeat.errors import InputError
from dinofeat.features.extractor import Extractor
from dinofeat.features.featuremap import FeatureMap
from dinofeat.io.frames import processed_frame_indices
from dinofeat.io.video import VideoWriter
from dinofeat.models.dinov2 import DinoVisionTransformer
from dinofeat.models.registry import get_spec
from dinofeat.options import FrameOptions
from dinofeat.points import grid_points
from dinofeat.tracking import PointTracker, Tracks, check_queries, track_frames, track_video

SIZE_WH = (168, 126)  # 12 x 9 patches at resolution 126: the model sees the frame 1:1


@functools.cache
def photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # 512 x 512 RGB, public domain


def camera(origins, source=None) -> list[np.ndarray]:
    """Frames of ``SIZE_WH`` whose top-left corner is at ``origins[k]`` (float x, y) of the photo."""
    source = photo() if source is None else source
    frames = []
    for ox, oy in origins:
        shift = np.float32([[1, 0, -ox], [0, 1, -oy]])
        frames.append(cv2.warpAffine(source, shift, SIZE_WH, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return frames


def truth(points_xy, origins) -> np.ndarray:
    """``(T, N, 2)`` where photo-fixed points seen at ``points_xy`` in frame 0 are in every frame."""
    return np.array([np.asarray(points_xy) + np.subtract(origins[0], o) for o in origins])


@functools.cache
def content_vit(depth: int = 2) -> DinoVisionTransformer:
    """Random ViT-S/14 whose features depend on the patch's own pixels only (see module docstring)."""
    vit = DinoVisionTransformer(get_spec("dinov2_vits14"), depth=depth).init_random(0, layerscale=1e-3)
    with torch.no_grad():
        vit.pos_embed.zero_()
    return vit.eval()


def vit_extractor() -> Extractor:
    return Extractor(content_vit(), resolution=126, device="cpu", precision="fp32", batch_size=4)


class SmoothDescriptor:
    """Stand-in extractor with features smooth at the patch scale: a Gaussian-blurred image sampled
    on a 5 x 5 lattice (8-px spacing) around each patch centre, mean removed."""

    batch_size = 4
    patch_size = stride = 14

    def extract_arrays(self, images) -> list[FeatureMap]:
        return [self._one(image) for image in images]

    def _one(self, image: np.ndarray) -> FeatureMap:
        h, w = image.shape[:2]
        blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 8.0)
        centre = (self.patch_size - 1) / 2
        gx, gy = np.meshgrid(
            centre + self.stride * np.arange((w - self.patch_size) // self.stride + 1),
            centre + self.stride * np.arange((h - self.patch_size) // self.stride + 1),
        )
        offsets = (np.arange(5) - 2) * 8.0
        samples = [
            cv2.remap(
                blurred,
                (gx + dx).astype(np.float32),
                (gy + dy).astype(np.float32),
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT,
            )
            for dy in offsets
            for dx in offsets
        ]
        feats = np.concatenate(samples, axis=-1)
        feats -= feats.mean(axis=-1, keepdims=True)
        return FeatureMap(torch.from_numpy(feats), image_size_wh=(w, h), processed_size_wh=(w, h))


def track(frames, queries_txy, extractor, **options) -> Tracks:
    steps = list(track_frames(enumerate(frames), queries_txy, extractor, **options))
    return Tracks.from_steps(queries_txy, steps)


def at_frame(t, points_xy) -> np.ndarray:
    points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    return np.concatenate([np.full((len(points_xy), 1), float(t)), points_xy], axis=1)


# -- accuracy ---------------------------------------------------------------------------------------
def test_whole_patch_camera_steps_are_exact():
    origins = [(100 + 14 * (k % 3), 60 + 14 * ((k // 2) % 2)) for k in range(8)]  # back and forth, x and y
    points = grid_points((100, 60), 5).numpy() + [40, 30]  # sub-pixel positions that stay inside
    tracks = track(camera(origins), at_frame(0, points), vit_extractor())
    error = np.linalg.norm(tracks.points_xy - truth(points, origins), axis=-1)
    assert tracks.visible.all()
    assert error.max() <= 1.0
    assert (tracks.frame_indices == np.arange(8)).all() and tracks.points_xy.shape == (8, 25, 2)


def _write_ffv1(path, frames) -> None:
    """A lossless FFV1 video (Matroska) of RGB frames: decoded pixels equal the written ones."""
    import av

    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="bgr0")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_lossless_whole_patch_steps_are_tracked_to_zero_error(tmp_path):
    """A lossless video whose camera steps by whole patches, at the model's own resolution, with a
    smooth content-only model (flat similarity surfaces): every point whose truth has no tie is
    found exactly, in every frame. Equivalently: each answer is the truth, or another lattice point
    scoring within 1e-6 of the truth's score (a tie). (The fixed template searches for the query's
    own feature; an anchored one drifts through ties, by design.)"""
    from conftest import smooth_vit
    from dinofeat.io.video import read_frames

    origins = [(100 + 14 * k, 60 + 14 * (k % 2)) for k in range(6)]
    frames = camera(origins)
    path = tmp_path / "steps.mkv"
    _write_ffv1(path, frames)
    assert all(np.array_equal(a, b) for a, (_, b) in zip(frames, read_frames(path)))  # lossless
    extractor = Extractor(smooth_vit(layerscale=0.0), resolution=SIZE_WH[1], device="cpu", precision="fp32")
    # integer pixels (lattice points, midway between the processed-pixel centres 6.5 + k that a
    # 1-pixel lattice holds) that stay inside as the camera moves right
    points = np.array([90.0, 34.0]) + np.random.default_rng(1).integers(0, 56, (30, 2)).astype(float)
    tracks = track_video(path, at_frame(0, points), extractor, template="fixed")  # the query's own feature
    expected = truth(points, origins)
    queries = extractor.extract(frames[0]).normalized().sample(torch.from_numpy(points).float(), normalize=True)
    exact = 0
    for k, frame in enumerate(frames):
        fmap = extractor.extract(frame).normalized()

        def score(xy, fmap=fmap):
            return (fmap.sample(torch.as_tensor(xy).double(), normalize=True).double() * queries.double()).sum(-1)

        found = tracks.points_xy[k].double()
        is_truth = (found - torch.from_numpy(expected[k])).norm(dim=1) < 1e-3
        ties = score(found) >= score(expected[k]) - 1e-6
        assert (is_truth | ties).all(), k
        exact += int(is_truth.sum())
    assert tracks.visible.all()
    assert exact >= 0.5 * len(points) * len(frames)  # most answers are the truth itself


def test_smooth_subpixel_pan_error_bound():
    origins = [(100 + 2.37 * k, 60 + 1.21 * k) for k in range(12)]  # 2.7 px per frame, never whole pixels
    points = grid_points((108, 76), 4).numpy() + [40, 35]
    tracks = track(camera(origins), at_frame(0, points), SmoothDescriptor())
    error = np.linalg.norm(tracks.points_xy - truth(points, origins), axis=-1)
    assert tracks.visible.all()
    assert np.median(error) < 2.0  # 1/7 of a patch
    assert error.max() < 7.0  # half a patch


def test_occluder_hides_the_point_then_it_is_recovered():
    origins = [(100 + 14 * k, 60) for k in range(9)]
    points = np.array([[130.5, 48.3], [140.0, 100.0]])
    where = truth(points, origins)
    frames = camera(origins)
    cover = cv2.resize(photo(), (64, 64))[:50, :50]  # another part of the photo
    for k in (3, 4, 5):
        x, y = np.round(where[k, 0]).astype(int)
        frames[k][y - 25 : y + 25, x - 25 : x + 25] = cover
    tracks = track(frames, at_frame(0, points), vit_extractor())
    assert tracks.visible[:, 0].tolist() == [True] * 3 + [False] * 3 + [True] * 3
    assert tracks.visible[:, 1].all()
    hidden = tracks.points_xy[3:6, 0]
    assert np.allclose(hidden, tracks.points_xy[2, 0])  # the last visible position is kept
    error = np.linalg.norm(tracks.points_xy - where, axis=-1)
    assert error[6:, 0].max() <= 1.0 and error[:3].max() <= 1.0 and error[:, 1].max() <= 1.0


def test_window_prevents_jumping_to_a_look_alike():
    origins = [(100 - 14 * (k % 3), 60 + 14 * (k % 2)) for k in range(8)]
    point = np.array([[40.5, 62.5]])
    frames = camera(origins)
    copy = frames[0][28:98, 0:70].copy()  # the 5 x 5 patches around the point in frame 0
    for k in range(1, 8):
        frames[k] = cv2.GaussianBlur(frames[k], (0, 0), 0.6)  # the real scene changes a little ...
        frames[k][28:98, 98:168] = copy  # ... the look-alike, 7 patches away, is the exact first view
    where = truth(point, origins)
    ours = track(frames, at_frame(0, point), vit_extractor())
    error = np.linalg.norm(ours.points_xy - where, axis=-1)[:, 0]
    assert ours.visible.all() and error.max() <= 3.0
    everywhere = track(frames, at_frame(0, point), vit_extractor(), window=1e4)  # no motion prior
    jumped = np.linalg.norm(everywhere.points_xy - where, axis=-1)[:, 0]
    assert (jumped > 50).sum() >= 2  # the window is what prevents it


def test_anchored_template_follows_appearance_change():
    """Chooses the default template policy: on a pan whose colours drift (channels rotating towards
    G, B, R), the anchored template keeps more points found and visible than the fixed one."""
    origins = [(100 + 2.37 * k, 60 + 1.21 * k) for k in range(20)]
    points = grid_points((108, 76), 4).numpy() + [40, 35]
    frames = []
    for k, frame in enumerate(camera(origins)):
        a = 0.7 * k / 19
        frames.append(np.clip((1 - a) * frame + a * frame[..., [1, 2, 0]], 0, 255).astype(np.uint8))
    where = truth(points, origins)
    found = {}
    for policy in ("fixed", "anchored"):
        tracks = track(frames, at_frame(0, points), SmoothDescriptor(), template=policy)
        good = tracks.visible & (np.linalg.norm(tracks.points_xy - where, axis=-1) < 7.0)
        found[policy] = int(good[-5:].sum())
    assert found["anchored"] > found["fixed"]
    assert PointTracker(at_frame(0, [[1.0, 1.0]])).options.template == "anchored"  # hence the default


# -- queries at any frame ---------------------------------------------------------------------------
def test_queries_start_at_their_own_frame():
    origins = [(100 + 14 * k, 60) for k in range(6)]
    frames = camera(origins)
    late = np.array([[120.5, 70.2]])  # placed in frame 2
    queries = np.concatenate([at_frame(0, [[130.5, 48.3]]), at_frame(2, late)])
    tracks = track(frames, queries, vit_extractor())
    assert tracks.visible[:, 0].all()
    assert tracks.visible[:, 1].tolist() == [False, False, True, True, True, True]
    assert (tracks.scores[:2, 1] == 0).all() and np.allclose(tracks.points_xy[:3, 1], late)
    expected = late + np.array([[-14.0 * (k - 2), 0.0] for k in range(2, 6)])
    assert np.abs(tracks.points_xy[2:, 1] - expected).max() <= 1.0


def test_bad_queries_are_refused():
    indices = processed_frame_indices(10, FrameOptions(start=2, every=2))
    assert list(indices) == [2, 4, 6, 8]
    check_queries(at_frame(4, [[0, 0]]), indices, (40, 30))
    with pytest.raises(InputError, match="not processed"):
        check_queries(at_frame(3, [[5, 5]]), indices, (40, 30))
    with pytest.raises(InputError, match="outside"):
        check_queries(at_frame(2, [[40.0, 5]]), indices, (40, 30))
    with pytest.raises(InputError, match="no points"):
        check_queries(np.zeros((0, 3)), indices, (40, 30))
    with pytest.raises(InputError):
        PointTracker([[0, 1.0]])
    with pytest.raises(InputError, match="template"):
        PointTracker(at_frame(0, [[1, 1]]), template="sometimes")
    fmap = SmoothDescriptor().extract_arrays([camera([(0, 0)])[0]])[0]
    tracker = PointTracker(at_frame(1, [[3, 3]]))
    with pytest.raises(InputError, match="not one of the processed frames"):
        tracker.step(2, fmap)  # frame 1 was skipped
    with pytest.raises(InputError, match="outside"):
        PointTracker(at_frame(0, [[500, 3]])).step(0, fmap)


# -- from a file ------------------------------------------------------------------------------------
def test_track_video_from_a_file(tmp_path):
    origins = [(100 + 14 * k, 60) for k in range(7)]
    path = tmp_path / "pan.mp4"
    with VideoWriter(path, fps=12, size_wh=SIZE_WH, crf=4) as sink:
        for frame in camera(origins):
            sink.write(frame)
    point = np.array([[130.5, 48.3]])
    tracks = track_video(path, at_frame(1, point), vit_extractor(), frames=FrameOptions(start=1, every=2))
    assert tracks.frame_indices.tolist() == [1, 3, 5]
    assert tracks.visible.all()
    expected = point + np.array([[-28.0 * k, 0.0] for k in range(3)])
    assert np.abs(tracks.points_xy[:, 0] - expected).max() <= 1.5  # nearly lossless H.264
    document = tracks.to_dict()
    assert document["frame_indices"] == [1, 3, 5]
    (entry,) = document["tracks"]
    assert entry["query"] == [1, 130.5, 48.3] and len(entry["points"]) == 3 and entry["visible"] == [True] * 3
    tracks.write_csv(tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "track,frame,x,y,score,visible,time_s" and lines[1].startswith("0,1,130.500,48.300,1.0000,1")


@pytest.mark.parametrize("min_score", [0.5, 0.995])
def test_tracker_step_is_the_best_point_of_its_window_or_the_frame(min_score):
    """One tracker step on smooth feature maps against brute force: the best lattice point of the
    window around the last position, or, where that window holds nothing scoring min_score, of the
    whole frame."""
    import math

    import torch.nn.functional as F

    from dinofeat.search import SUBDIVISIONS

    gen = torch.Generator().manual_seed(2)
    h, w, c = 6, 8, 24
    v, u = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    base, gu, gv = (torch.randn(c, generator=gen) for _ in range(3))
    field = base + 0.08 * (torch.sin(0.9 * u)[..., None] * gu + torch.cos(0.7 * v)[..., None] * gv)
    size = (14 * w, 14 * h)
    first = FeatureMap(field, image_size_wh=size, processed_size_wh=size)
    second = FeatureMap(
        field.roll(1, dims=1) + 0.01 * torch.randn(h, w, c, generator=gen), image_size_wh=size, processed_size_wh=size
    )
    points = torch.rand(80, 2, generator=gen) * torch.tensor([size[0] - 1.0, size[1] - 1.0])
    tracker = PointTracker(at_frame(0, points.numpy()), window=20.0, min_score=min_score, cycle_tolerance=math.inf)
    tracker.step(0, first)
    step = tracker.step(1, second)
    queries = first.normalized().sample(points, normalize=True).double()
    steps = SUBDIVISIONS * 14
    rows, cols = torch.meshgrid(torch.arange(steps * (h - 1) + 1), torch.arange(steps * (w - 1) + 1), indexing="ij")
    grid = torch.stack((cols, rows), dim=-1).reshape(-1, 2).double() / steps
    cos = (
        F.normalize(queries, dim=-1) @ second.normalized().sample(second.grid_to_pixel(grid), normalize=True).double().T
    )
    centre = second.pixel_to_grid(points.double()).clamp(min=0)
    centre = torch.stack((centre[:, 0].clamp(max=w - 1), centre[:, 1].clamp(max=h - 1)), dim=-1)
    in_window = ((grid[None] - centre[:, None]).abs() <= 20.0 / 14 + 1e-6).all(dim=-1)
    window_best = cos.masked_fill(~in_window, -math.inf).max(dim=1).values
    expected = torch.where(window_best >= min_score, window_best, torch.maximum(window_best, cos.max(dim=1).values))
    got = second.normalized().sample(step.points_xy.double(), normalize=True).double() * F.normalize(queries, dim=-1)
    got = got.sum(-1)
    assert (got >= expected - 1e-6).all()
    assert (step.scores.double() >= expected - 1e-6).all()


def test_backward_tracking_follows_points_before_their_query_frame():
    """A point queried in frame 3 of a whole-patch pan is found exactly in frames 0-2 too, and one
    queried in frame 0 is unaffected (the forward pass); without backward it is not visible before."""
    from dinofeat.tracking import track_both_ways

    origins = [(100 + 14 * k, 60) for k in range(6)]
    frames = list(enumerate(camera(origins)))
    queries = np.array([[3, 100.0, 50.0], [0, 80.5, 40.0]])
    seen = []
    both = Tracks.from_steps(
        queries, list(track_both_ways(frames, queries, vit_extractor(), progress=lambda d, t: seen.append((d, t))))
    )
    assert both.frame_indices.tolist() == list(range(6)) and seen[-1] == (10, 10)  # 4 back + 6 forward
    late = np.array([[100.0 + 14 * (3 - k), 50.0] for k in range(6)])
    assert np.abs(both.points_xy[:, 0].numpy() - late).max() <= 1e-3 and both.visible[:, 0].all()
    early = np.array([[80.5 - 14 * k, 40.0] for k in range(6)])
    assert np.abs(both.points_xy[:, 1].numpy() - early).max() <= 1.0
    forward = track(camera(origins), queries, vit_extractor())
    assert not forward.visible[:3, 0].any() and forward.visible[3:, 0].all()
    np.testing.assert_array_equal(both.points_xy[3:].numpy(), forward.points_xy[3:].numpy())


def test_tracking_both_ways_runs_the_model_once_per_frame():
    from dinofeat.tracking import track_both_ways

    class Counting:
        """An extractor stand-in that counts the frames it is asked for."""

        def __init__(self, extractor):
            self.extractor, self.batch_size, self.frames = extractor, 2, 0

        def extract_arrays(self, images):
            self.frames += len(images)
            return self.extractor.extract_arrays(images)

    frames = list(enumerate(camera([(100 + 14 * k, 60) for k in range(6)])))
    queries = np.array([[3, 100.0, 50.0], [0, 80.5, 40.0]])
    counting = Counting(vit_extractor())
    both = Tracks.from_steps(queries, list(track_both_ways(frames, queries, counting)))
    assert counting.frames == 6  # frames 0-3 computed by the backward pass, reused going forward
    again = Tracks.from_steps(queries, list(track_both_ways(frames, queries, vit_extractor())))
    np.testing.assert_array_equal(both.points_xy.numpy(), again.points_xy.numpy())


def test_reverse_tracker_wants_decreasing_frames():
    fmap = SmoothDescriptor().extract_arrays([camera([(0, 0)])[0]])[0]
    tracker = PointTracker(at_frame(2, [[30, 30]]), reverse=True)
    tracker.step(2, fmap)
    with pytest.raises(ValueError, match="decreasing"):
        tracker.step(3, fmap)
    with pytest.raises(InputError, match="not one of the processed frames"):
        PointTracker(at_frame(4, [[30, 30]]), reverse=True).step(2, fmap)  # frame 4 was skipped
