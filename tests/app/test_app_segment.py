"""The app's Segment tab without a browser: the session's preview and run, the handlers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from segment_scene import FRAMES, SIDE, H, W, moving_object

from conftest import save_png, smooth_vit
from dinofeat.app import AppSession
from dinofeat.errors import InputError
from dinofeat.io.masks import read_mask
from dinofeat.io.video import VideoWriter, probe_video

CENTRE = 20 + SIDE // 2  # the object's centre in the first frame


@pytest.fixture(scope="module")
def extractor():
    from dinofeat.features.extractor import Extractor

    return Extractor(smooth_vit(), resolution=H, device="cpu", precision="fp32")


@pytest.fixture
def session(extractor, tmp_path):
    return AppSession(extractor, workdir=tmp_path / "work", max_video_frames=5)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    images, _ = moving_object()
    folder = tmp_path_factory.mktemp("scene")
    with VideoWriter(folder / "clip.mp4", fps=10, size_wh=(W, H), crf=2) as sink:
        for image in images:
            sink.write(image)
    return {"video": folder / "clip.mp4", "image": save_png(folder / "first.png", images[0]), "frames": images}


def test_preview_draws_the_mask_of_the_clicks(session, scene):
    image = scene["frames"][0]
    assert session.segment_preview(image, []) is image
    shown = session.segment_preview(image, [[CENTRE, CENTRE, 1], [5, 150, 0]])
    assert shown.shape == image.shape
    assert not np.array_equal(shown[CENTRE, CENTRE], image[CENTRE, CENTRE])  # the object is coloured
    assert np.array_equal(shown[150, 5], image[150, 5])  # the background is not


def test_segment_an_image_writes_overlay_masks_and_json(session, scene):
    view = session.segment(scene["image"], [[CENTRE, CENTRE, 2]])
    assert not view.is_video and view.overlay_path.suffix == ".png" and view.overlay_path.is_file()
    assert [p.name for p in view.mask_paths] == ["first.png"]
    assert read_mask(view.mask_paths[0])[CENTRE, CENTRE] == 2
    assert json.loads(view.json_path.read_text()) == view.data and view.data["objects"] == [2]
    assert "Segmented first.png: 1 image(s), 1 object(s)" in view.summary


def test_segment_a_video_from_clicks_on_its_first_frame(session, scene):
    done = []
    view = session.segment(scene["video"], [[CENTRE, CENTRE, 1]], progress=lambda d, t: done.append((d, t)))
    assert view.is_video and probe_video(view.overlay_path).frames == 5  # the session's frame limit
    assert [p.name for p in view.mask_paths] == [f"{k:05d}.png" for k in range(5)] and done[-1] == (5, 5)
    assert read_mask(view.mask_paths[0])[CENTRE, CENTRE] == 1
    assert len(view.data["frames"]) == 5 < FRAMES


def test_segment_refuses_no_object_click_and_clicks_outside(session, scene):
    with pytest.raises(InputError, match="click at least one point on an object"):
        session.segment(scene["image"], [[10, 10, 0]])
    with pytest.raises(InputError, match="outside"):
        session.segment(scene["image"], [[W + 5, 10, 1]])


@pytest.mark.filterwarnings("ignore:clip.mp4 has 8 frames")  # the in-page notice of the frame limit
def test_handlers_open_click_and_run(session, scene):
    pytest.importorskip("gradio")
    from dinofeat.app import handlers

    source, frame, clicks, panel, _, text = handlers.segment_open(session, str(scene["video"]))
    assert source["video"].frames == FRAMES and frame.shape == (H, W, 3) and clicks == [] and "Click" in text
    k = handlers.panel_scale((W, H))
    index = [(CENTRE + 0.5) * k, (CENTRE + 0.5) * k]
    clicks, _, panel = handlers.segment_click(session, source, frame, clicks, 3, "object", None, index)
    assert clicks == [[CENTRE, CENTRE, 3]] and panel.shape == (H * k, W * k, 3)
    clicks, _, _ = handlers.segment_click(session, source, frame, clicks, 3, "background", None, [2, 2])
    assert clicks[-1][2] == 0
    image, video, downloads, data, summary = handlers.segment_run(session, source, clicks, None)
    assert image is None and video.endswith(".mp4") and data["objects"] == [3] and "Segmented clip.mp4" in summary
    assert any(path.endswith(".json") for path in downloads)
    assert handlers.segment_clear_clicks(frame)[0] == []
