"""The segment job on a generated video (a textured object moving over a textured background) and on
images: the masks it writes follow the object (J = IoU high with a smooth random model), a click
inside the object gives a mask containing it, check() refuses bad input before any model work, and
the files are written together or not at all."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from segment_scene import FRAMES, SIDE, STEP_XY, H, W, moving_object, write_scene

from conftest import save_png, smooth_vit
from dinofeat.errors import InputError
from dinofeat.features.extractor import Extractor
from dinofeat.features.upsample import Upsampler
from dinofeat.io.masks import DAVIS_PALETTE, read_mask, save_mask
from dinofeat.io.video import probe_video
from dinofeat.jobs.segment import MaskReader, SegmentJob
from dinofeat.models.anyup import AnyUp
from dinofeat.options import FrameOptions, SegmentOptions
from dinofeat.segmentation import mask_to_patch_labels, patch_labels_to_mask, propagate_labels


def iou(found: np.ndarray, truth: np.ndarray) -> float:
    return float(((found == 1) & (truth == 1)).sum() / ((found == 1) | (truth == 1)).sum())


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def extractor() -> Extractor:
    return Extractor(smooth_vit(), resolution=H, device="cpu", precision="fp32")


def test_video_masks_follow_the_moving_object(tmp_path, scene, extractor):
    folder, truths = scene
    job = SegmentJob(
        [folder / "clip.mp4"],
        mask=folder / "first.png",
        output=tmp_path / "overlay.mp4",
        masks_dir=tmp_path / "masks",
        json=tmp_path / "seg.json",
    )
    result = job.run(extractor)
    names = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert names == [f"{k:05d}.png" for k in range(FRAMES)]
    found = [read_mask(tmp_path / "masks" / name) for name in names]
    assert np.array_equal(found[0], truths[0])  # the given mask, as it is
    scores = [iou(mask, truth) for mask, truth in zip(found[1:], truths[1:], strict=True)]
    assert min(scores) > 0.7 and np.mean(scores) > 0.8, scores
    document = json.loads((tmp_path / "seg.json").read_text())
    assert document["objects"] == [1] and len(document["frames"]) == FRAMES and "upsample" not in document
    assert document["frames"][3]["frame"] == 3 and set(document["frames"][3]["objects"]) == {"1"}
    last = document["frames"][-1]["objects"]["1"]
    assert last["area_px"] == int((found[-1] == 1).sum()) and 0 < last["mean_confidence"] <= 1
    x0, y0, x1, y1 = last["bbox_xyxy"]
    ys, xs = np.nonzero(found[-1] == 1)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max(), ys.max())
    assert probe_video(tmp_path / "overlay.mp4").frames == FRAMES
    assert len(result.frames) == FRAMES and result.summary().startswith(f"{FRAMES} frames, 1 object(s)")


def test_a_click_inside_the_object_gives_a_mask_containing_it(tmp_path, scene, extractor):
    folder, truths = scene
    click = (20 + SIDE // 2 + STEP_XY[0] * 2, 20 + SIDE // 2 + STEP_XY[1] * 2)  # frame 2
    job = SegmentJob(
        [folder / "clip.mp4"],
        points_xy=[click],
        point_frame=2,
        masks_dir=tmp_path / "masks",
        frames=FrameOptions(max_frames=5),
    )
    job.run(extractor)
    names = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert names == ["00002.png", "00003.png", "00004.png"]  # from the clicks' frame on
    first = read_mask(tmp_path / "masks" / "00002.png")
    assert first[click[1], click[0]] == 1
    assert iou(first, truths[2]) > 0.6
    assert iou(read_mask(tmp_path / "masks" / "00004.png"), truths[4]) > 0.6


def test_images_take_the_first_images_labels(tmp_path, scene, extractor):
    images, truths = moving_object()
    paths = [save_png(tmp_path / f"view{k}.png", images[k]) for k in (0, 5)]
    smaller = cv2.resize(images[7], (W * 3 // 4, H * 3 // 4), interpolation=cv2.INTER_AREA)
    paths.append(save_png(tmp_path / "small.png", smaller))
    save_mask(tmp_path / "first.png", truths[0])
    out = tmp_path / "out"
    job = SegmentJob(paths, mask=tmp_path / "first.png", output=tmp_path / "grid.png", masks_dir=out)
    result = job.run(extractor)
    assert sorted(p.name for p in out.iterdir()) == ["small.png", "view0.png", "view5.png"]
    assert iou(read_mask(out / "view5.png"), truths[5]) > 0.6
    small_truth = cv2.resize(truths[7], smaller.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    assert iou(read_mask(out / "small.png"), small_truth) > 0.5
    assert [frame.name for frame in result.frames] == [str(p) for p in paths]
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_mask_pngs_are_indexed_in_the_davis_palette(tmp_path, scene, extractor):
    from PIL import Image

    folder, _ = scene
    SegmentJob(
        [folder / "clip.mp4"], mask=folder / "first.png", masks_dir=tmp_path, frames=FrameOptions(max_frames=2)
    ).run(extractor)
    with Image.open(tmp_path / "00001.png") as image:
        assert image.mode == "P"
        assert np.array_equal(np.array(image.getpalette()[:6]).reshape(2, 3), DAVIS_PALETTE[:2])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "nothing to write: give output=OUT.png|OUT.mp4, masks_dir=DIR and/or json=OUT.json"),
        ({"json": "{dir}/s.json", "mask": None}, "no first mask"),
        ({"json": "{dir}/s.json", "points_xy": [(5.0, 5.0)]}, "mask or points_xy, not both"),
        ({"json": "{dir}/s.json", "mask": "{dir}/wrong_size.png"}, "is 20x10 pixels, the image 224x168"),
        ({"json": "{dir}/s.json", "mask": "{dir}/label300.png"}, "label 300"),
        ({"json": "{dir}/s.json", "mask": "{dir}/empty.png"}, "has no object"),
        ({"json": "{dir}/s.json", "mask": "{dir}/colour.png"}, "colour"),
        ({"json": "{dir}/s.json", "mask": None, "points_xy": [(224.0, 5.0)]}, "outside frame 0"),
        ({"json": "{dir}/s.json", "mask": None, "points_xy": [(5.0, 5.0)], "point_labels": [255]}, "not an object"),
        ({"json": "{dir}/s.json", "mask": None, "points_xy": [(5.0, 5.0)], "point_frame": 9}, "not a processed"),
        ({"output": "{dir}/s.png"}, "output for a video must end in"),
        ({"json": "{dir}/s.json", "frames": FrameOptions(start=40)}, "start=40 is past the end"),
        ({"json": "{dir}/first.png"}, "must end in .json"),
    ],
)
def test_check_refuses_before_any_model_work(tmp_path, scene, changes, message):
    folder, _ = scene
    save_png(tmp_path / "wrong_size.png", np.zeros((10, 20), np.uint8))
    from PIL import Image

    Image.fromarray(np.full((H, W), 300, np.uint16)).save(tmp_path / "label300.png")  # 16-bit gray
    save_png(tmp_path / "empty.png", np.zeros((H, W), np.uint8))
    colour = np.zeros((H, W, 3), np.uint8)
    colour[..., 0] = 128
    save_png(tmp_path / "colour.png", colour)
    fields = {"mask": str(folder / "first.png")}
    for key, value in changes.items():
        fields[key] = value.replace("{dir}", str(tmp_path)) if isinstance(value, str) else value
    before = sorted(p.name for p in tmp_path.iterdir())
    job = SegmentJob([folder / "clip.mp4"], **fields)
    with pytest.raises(InputError) as raised:
        job.check()
    assert message in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_images_refuse_a_mask_of_another_size_and_a_frame_click(tmp_path):
    image = save_png(tmp_path / "a.png", np.zeros((28, 42, 3), np.uint8))
    save_mask(tmp_path / "m.png", np.ones((28, 28), np.uint8))
    with pytest.raises(InputError, match="is 28x28 pixels, the image 42x28"):
        SegmentJob([image], mask=tmp_path / "m.png", json=tmp_path / "s.json").check()
    with pytest.raises(InputError, match="for a video"):
        SegmentJob([image], points_xy=[(1.0, 1.0)], point_frame=0, json=tmp_path / "s.json").check()
    with pytest.raises(InputError, match="outside the first image"):
        SegmentJob([image], points_xy=[(1.0, 28.0)], json=tmp_path / "s.json").check()
    SegmentJob([image], points_xy=[(1.0, 27.5)], json=tmp_path / "s.json").check()  # the edge is inside


def test_failure_while_segmenting_writes_nothing(tmp_path, scene, extractor, monkeypatch):
    import dinofeat.segmentation

    folder, _ = scene
    calls = {"n": 0}
    original = dinofeat.segmentation.VideoSegmenter.step

    def failing_step(self, fmap):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return original(self, fmap)

    monkeypatch.setattr(dinofeat.segmentation.VideoSegmenter, "step", failing_step)
    job = SegmentJob(
        [folder / "clip.mp4"],
        mask=folder / "first.png",
        output=tmp_path / "o.mp4",
        masks_dir=tmp_path / "masks",
        json=tmp_path / "o.json",
        options=SegmentOptions(context_frames=2),
    )
    with pytest.raises(OSError, match="disk full"):
        job.run(extractor)
    assert list(tmp_path.iterdir()) == []  # not even the masks folder: it is made with the masks


@pytest.fixture(scope="module")
def random_upsampler():
    torch.manual_seed(0)
    return Upsampler(AnyUp(dim=16, heads=2), device="cpu", precision="fp32")


def test_mask_reader_with_an_upsampler_reads_the_pixel_level_labels(scene, extractor, random_upsampler):
    images, truths = moving_object()
    fmap = extractor.extract(images[0])
    soft = mask_to_patch_labels(truths[0], fmap, 2)
    labels, confidence = MaskReader(random_upsampler, 2)(soft, fmap, images[0])
    fine = random_upsampler.upsample_values(fmap, images[0], soft, scale=2)
    expected = patch_labels_to_mask(fine.features, fine)
    assert np.array_equal(labels, expected[0]) and np.array_equal(confidence, expected[1])
    assert labels.shape == truths[0].shape and iou(labels, truths[0]) > 0.5  # random AnyUp weights
    constant = torch.zeros_like(soft)
    constant[..., 1] = 1.0  # one label everywhere stays that label everywhere, fully confident
    labels, confidence = MaskReader(random_upsampler)(constant, fmap, images[0])
    assert (labels == 1).all() and np.allclose(confidence, 1.0, atol=1e-5)


def test_images_with_an_upsampler_take_the_first_images_labels_at_pixel_level(
    tmp_path, scene, extractor, random_upsampler
):
    images, truths = moving_object()
    paths = [save_png(tmp_path / f"view{k}.png", images[k]) for k in (0, 5)]
    save_mask(tmp_path / "first.png", truths[0])
    job = SegmentJob(paths, mask=tmp_path / "first.png", masks_dir=tmp_path / "out", json=tmp_path / "seg.json")
    job.run(extractor, upsampler=random_upsampler)
    found = read_mask(tmp_path / "out" / "view5.png")
    first, fifth = extractor.extract(images[0]), extractor.extract(images[5])
    options = SegmentOptions()
    soft = propagate_labels(
        fifth,
        [first],
        [mask_to_patch_labels(truths[0], first, 2)],
        top_k=options.top_k,
        radius=None,
        temperature=options.temperature,
    )
    assert np.array_equal(found, MaskReader(random_upsampler)(soft, fifth, images[5])[0])  # read at pixel level
    assert found.shape == truths[5].shape and iou(found, truths[5]) > 0.4  # random AnyUp weights
    assert np.array_equal(read_mask(tmp_path / "out" / "view0.png"), truths[0])  # the given mask, as it is
    document = json.loads((tmp_path / "seg.json").read_text())
    assert document["upsample"] == {"upsample": "anyup", "upsample_scale": None}


def test_video_with_an_upsampler_writes_pixel_level_masks_of_every_frame(tmp_path, scene, extractor, random_upsampler):
    folder, truths = scene
    job = SegmentJob(
        [folder / "clip.mp4"],
        mask=folder / "first.png",
        masks_dir=tmp_path / "masks",
        frames=FrameOptions(max_frames=3),
    )
    result = job.run(extractor, upsampler=random_upsampler, upsample_scale=4)
    names = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert names == ["00000.png", "00001.png", "00002.png"] and len(result.frames) == 3
    found = [read_mask(tmp_path / "masks" / name) for name in names]
    assert np.array_equal(found[0], truths[0])  # the given mask, as it is
    assert all(mask.shape == truths[0].shape and iou(mask, truth) > 0.4 for mask, truth in zip(found, truths))
