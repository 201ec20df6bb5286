"""The web app's handlers (no browser): :class:`dinofeat.app.AppSession`, the page, the CLI command.

A random-weight ViT-S-shaped model with 2 blocks stands in for DINOv2: identical pixels give
identical features, so an image matched against itself must come back to the clicked points.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import random_vit, save_png
from dinofeat.app import MAX_POINTS, AppSession, click_to_pixel, example_files, require_gradio
from dinofeat.errors import DinofeatError, InputError


@pytest.fixture(scope="module")
def extractor():
    from dinofeat.features.extractor import Extractor

    return Extractor(random_vit("dinov2_vits14", depth=2), resolution=112, device="cpu", precision="fp32")


@pytest.fixture
def session(extractor, tmp_path):
    return AppSession(extractor, workdir=tmp_path / "work")


@pytest.fixture(scope="module")
def images(photo):
    """Two crops of a photo, (120, 160, 3) and (112, 150, 3) uint8."""
    return np.ascontiguousarray(photo[60:180, 150:310]), np.ascontiguousarray(photo[70:182, 160:310])


@pytest.fixture(scope="module")
def video(tmp_path_factory, photo):
    """A 6-frame 12 fps pan over the photo, 112x84 pixels."""
    from dinofeat.io.video import VideoWriter

    path = tmp_path_factory.mktemp("video") / "pan.mp4"
    with VideoWriter(path, fps=12, size_wh=(112, 84)) as sink:
        for t in range(6):
            sink.write(np.ascontiguousarray(photo[100:184, 150 + 3 * t : 262 + 3 * t]))
    return path


# -- clicks ---------------------------------------------------------------------------------------
def test_click_maps_gradio_index_to_pixel_centres():
    # the browser reports the rounded distance from the image corner; pixel centres are at integers
    assert click_to_pixel([0, 0], (10, 8)) == (-0.5, -0.5)
    assert click_to_pixel([5, 3], (10, 8)) == (4.5, 2.5)
    assert click_to_pixel([10, 8], (10, 8)) == (9.5, 7.5)  # clamped to the image
    assert click_to_pixel([99, -4], (10, 8)) == (9.5, -0.5)


def test_small_images_are_shown_enlarged_and_clicks_mapped_back(session, video, images):
    """A 176x144 frame is shown 3 times larger (Gradio never enlarges it); a click on the enlarged
    panel is a position in the frame's own pixels."""
    pytest.importorskip("gradio")
    from dinofeat.app import handlers

    frame = np.zeros((144, 176, 3), np.uint8)
    assert handlers.panel_scale((176, 144)) == 3 and handlers.panel_scale((640, 480)) == 1
    panel = handlers.click_panel(frame, [[10.0, 20.0]])
    assert panel.shape == (432, 528, 3)
    assert panel[61, 31].any() and not panel[61, 100].any()  # the dot at pixel (10, 20)'s centre, scaled
    view = session.open_video(video)  # 112x84: shown 5 times larger
    shown = handlers.click_panel(session.video_frame(video, 0))
    assert shown.shape == (84 * 5, 112 * 5, 3)
    queries, _, marked = handlers.track_click(view, session.video_frame(video, 0), 0, [], [52, 101])
    assert queries == [[0, 9.9, 19.7]] and marked.shape == shown.shape  # 52 / 5 - 0.5, 101 / 5 - 0.5
    a = images[0]  # 160 x 120: 4 times
    out = handlers.match_click(session, a, None, [], "a.png", "B", None, False, "none", "index", [42, 18])
    assert out[2] == [[10.0, 4.0]] and out[0].shape == (480, 640, 3) and out[1] is None  # no B yet
    big = np.zeros((600, 800, 3), np.uint8)
    np.testing.assert_array_equal(handlers.click_panel(big), big)  # large enough: as it is


@pytest.mark.parametrize("index", [None, [], [1], ["a", 2], [1, 2, 3]])
def test_click_outside_the_image_is_a_clear_error(index):
    with pytest.raises(InputError, match="click inside the image"):
        click_to_pixel(index, (10, 8))


# -- images ---------------------------------------------------------------------------------------
def test_load_image_reads_uploads(session, tmp_path, images):
    path = save_png(tmp_path / "a.png", images[0])
    np.testing.assert_array_equal(session.load_image(path), images[0])


@pytest.mark.parametrize("content", [b"", b"hello, I am text", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_load_image_refuses_non_images_naming_the_file(session, tmp_path, content):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"^upload\.png is not an image"):
        session.load_image(path)


def test_load_image_refuses_too_large_images(extractor, tmp_path, images):
    small_limit = AppSession(extractor, max_image_megapixels=0.01, workdir=tmp_path)
    path = save_png(tmp_path / "big.png", images[0])
    with pytest.raises(InputError, match=r"big\.png is too large: 160x120 pixels .* up to 0\.01 MP"):
        small_limit.load_image(path)


def test_load_image_without_a_file(session, tmp_path):
    with pytest.raises(InputError, match="no image"):
        session.load_image(None)
    with pytest.raises(InputError, match="not found: gone.png"):
        session.load_image(tmp_path / "gone.png")


def test_truncated_image_is_refused(session, tmp_path, photo):
    from PIL import Image

    path = tmp_path / "cut.jpg"
    Image.fromarray(photo).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match="cut.jpg"):
        session.load_image(path)


# -- matching -------------------------------------------------------------------------------------
def test_match_clicked_points_gives_pictures_and_json(session, images):
    a, b = images
    view = session.match(a, b, [[40.5, 30.0], [100.0, 80.5]], name_a="a.png", name_b="b.png")
    assert view.picture.ndim == 3 and view.picture.dtype == np.uint8
    assert view.picture.shape[1] > a.shape[1]  # A and B side by side
    assert view.heatmap.shape[:2] == b.shape[:2]
    assert view.image_a.shape == a.shape and not np.array_equal(view.image_a, a)  # points marked
    data = view.data
    assert data["model"] == "dinov2_vits14"
    assert data["image_a"] == {"path": "a.png", "size": [160, 120]}
    assert data["image_b"]["size"] == [150, 112]
    assert [m["source"] for m in data["matches"]] == [[40.5, 30.0], [100.0, 80.5]]
    for m in data["matches"]:
        assert {"source", "target", "score", "mutual"} <= set(m)
    assert json.loads(view.json_path.read_text()) == data
    assert view.json_path.parent.parent == session.workdir


def test_match_image_with_itself_returns_the_clicked_points(session, images):
    a = images[0]
    points = [[20.0, 15.0], [80.5, 60.0], [140.0, 100.0]]
    view = session.match(a, a, points)
    targets = np.array([m["target"] for m in view.data["matches"]])
    np.testing.assert_allclose(targets, points, atol=1.0)


def test_match_checks_and_colours(session, images):
    from dinofeat.drawing import match_canvas_layout, palette, score_colors

    a = images[0]
    view = session.match(a, a, [], auto=12, ransac="homography", mutual=True, color_by="score")
    assert view.data["geometry"]["type"] == "homography"
    assert view.data["settings"]["ransac"] == "homography" and view.data["settings"]["mutual"] is True
    assert all(m["inlier"] is not None for m in view.data["matches"])
    # colours: each kept match's dot in A has its score's colour (index colours otherwise)
    by_index = session.match(a, a, view.points_xy, mutual=True, ransac="homography", color_by="index")
    _, _, scale_a, _, _ = match_canvas_layout((a.shape[1], a.shape[0]), (a.shape[1], a.shape[0]))
    rows = view.data["matches"]
    kept = [i for i, m in enumerate(rows) if m["kept"]]
    assert kept
    for i in kept:
        x, y = np.round((np.array(rows[i]["source"]) + 0.5) * scale_a - 0.5).astype(int)
        assert np.abs(view.picture[y, x].astype(int) - score_colors([rows[i]["score"]])[0]).max() <= 12
        assert np.abs(by_index.picture[y, x].astype(int) - palette(len(rows))[i]).max() <= 12
    with pytest.raises(InputError, match="unknown geometry"):
        session.match(a, a, [[5.0, 5.0]], ransac="affine")


def test_match_before_b_marks_points_only(session, images):
    view = session.match(images[0], None, [[10.0, 10.0]])
    assert view.picture is None and view.data is None and view.json_path is None
    assert view.points_xy == [[10.0, 10.0]]


def test_match_automatic_points(session, images):
    view = session.match(*images, [], auto=5)
    assert 1 <= len(view.points_xy) <= 5
    assert len(view.data["matches"]) == len(view.points_xy)


def test_match_reuses_features_of_images_seen_before(session, images, monkeypatch):
    calls = []
    original = session.extractor.extract_arrays
    monkeypatch.setattr(session.extractor, "extract_arrays", lambda imgs: calls.append(len(imgs)) or original(imgs))
    session.match(*images, [[10.0, 10.0]])
    session.match(*images, [[10.0, 10.0], [50.0, 40.0]])
    session.match(images[1], images[0], [[5.0, 5.0]])
    assert calls == [2]


def test_match_rejects_points_outside_a(session, images):
    with pytest.raises(InputError, match="outside"):
        session.match(*images, [[500.0, 10.0]])
    with pytest.raises(InputError, match="upload image A"):
        session.match(None, images[1], [[5.0, 5.0]])
    with pytest.raises(InputError, match=f"at most {MAX_POINTS}"):
        session.match(*images, [[1.0, 1.0]] * (MAX_POINTS + 1))


def test_resolution_is_per_call_and_shares_the_model(session, images):
    other = session.extractor_at(224)
    assert other.resolution == 224 and other.model is session.extractor.model
    assert session.extractor_at(None) is session.extractor and session.extractor.resolution == 112
    fine = session.features([images[0]], 224)[0]
    coarse = session.features([images[0]])[0]
    assert fine.grid_hw[0] > coarse.grid_hw[0]
    with pytest.raises(InputError, match="at least the patch size"):
        session.extractor_at(7)


# -- PCA ------------------------------------------------------------------------------------------
def test_pca_colours_images_jointly(session, images):
    from dinofeat.pca import FeaturePCA

    view = session.pca(list(images), names=["a.png", "b.png"], components=5)
    assert [p.shape for p in view.panels] == [(120, 320, 3), (112, 300, 3)]
    assert [m.shape for m in view.masks] == [(120, 160), (112, 150)]
    assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255} for m in view.masks)
    assert view.figure_path.is_file() and view.summary.startswith("Joint PCA of a.png, b.png")
    loaded = FeaturePCA.load(view.pca_path)
    assert loaded.n_components == 5 and loaded.metadata["model"] == "dinov2_vits14"


def test_pca_options(session, images):
    overlay = session.pca([images[0]], overlay=0.5, foreground=None)
    assert overlay.panels[0].shape == images[0].shape
    assert (overlay.masks[0] == 255).all() and "no foreground split" in overlay.summary
    manual = session.pca([images[0]], foreground=0.5, nearest=True)
    assert "user threshold 0.5" in manual.summary


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"components": 2}, "at least 3 components"),
        ({"overlay": 1.5}, "between 0 and 1"),
    ],
)
def test_pca_bad_options(session, images, kwargs, message):
    with pytest.raises(InputError, match=message):
        session.pca([images[0]], **kwargs)
    with pytest.raises(InputError, match="no images"):
        session.pca([])


# -- video and tracking ---------------------------------------------------------------------------
def test_open_video_and_read_frames(session, video):
    view = session.open_video(video)
    assert (view.frames, view.fps, view.size_wh, view.usable_frames, view.notice) == (6, 12.0, (112, 84), 6, None)
    assert session.video_frame(video, 5).shape == (84, 112, 3)
    with pytest.raises(InputError, match="no frame 6"):
        session.video_frame(video, 6)


def test_long_video_is_cut_with_a_notice(extractor, tmp_path, video):
    view = AppSession(extractor, max_video_frames=4, workdir=tmp_path).open_video(video)
    assert view.usable_frames == 4
    assert "has 6 frames; the app tracks the first 4" in view.notice


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100, "not a video|no video stream|truncated|damaged"),
    ],
)
def test_open_video_refuses_undecodable_files_naming_the_file(session, tmp_path, content, message):
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        session.open_video(path)
    assert str(tmp_path) not in str(info.value) and "clip.mp4" in str(info.value)


def test_open_video_refuses_images(session, tmp_path, images):
    with pytest.raises(InputError, match="is an image, not a video"):
        session.open_video(save_png(tmp_path / "still.png", images[0]))


def test_track_writes_video_json_and_csv(session, video):
    from dinofeat.io.video import probe_video

    seen = []
    view = session.track(video, [[0, 40.0, 30.0], [2, 70.5, 50.0]], progress=lambda d, n: seen.append((d, n)))
    assert seen == [(k, 6) for k in range(1, 7)]
    info = probe_video(view.video_path)
    assert (info.frames, info.fps, info.size_wh) == (6, 12.0, (112, 84))
    data = json.loads(view.json_path.read_text())
    assert data == view.data
    assert data["video"] == {"path": "pan.mp4", "fps": 12.0, "frames": 6, "size": [112, 84]}
    assert data["frame_indices"] == list(range(6))
    assert [t["query"] for t in data["tracks"]] == [[0, 40.0, 30.0], [2, 70.5, 50.0]]
    for track in data["tracks"]:
        assert len(track["points"]) == len(track["scores"]) == len(track["visible"]) == 6
    assert data["tracks"][0]["points"][0] == [40.0, 30.0]
    rows = view.csv_path.read_text().splitlines()
    assert rows[0] == "track,frame,x,y,score,visible,time_s" and len(rows) == 1 + 2 * 6
    assert "Tracked 2 points through 6 frames of pan.mp4" in view.summary


def _count_probes(monkeypatch) -> list:
    """Record every probe_video call, in every dinofeat module that imported the function."""
    import sys

    import dinofeat.io.video

    calls, probe = [], dinofeat.io.video.probe_video
    counted = lambda path: calls.append(str(path)) or probe(path)
    for name, module in list(sys.modules.items()):
        if name.startswith("dinofeat") and getattr(module, "probe_video", None) is probe:
            monkeypatch.setattr(module, "probe_video", counted)
    return calls


def test_track_probes_the_video_once(session, video, monkeypatch):
    probes = _count_probes(monkeypatch)
    session.track(video, [[0, 40.0, 30.0]])
    assert probes == [str(video)]


def test_track_options_reach_the_tracker(session, video):
    strict = session.track(video, [[0, 40.0, 30.0]], min_score=1.0, trail=0, window=20.0)
    assert strict.data["tracks"][0]["visible"] == [True] + [False] * 5  # only the query itself scores 1
    with pytest.raises(InputError, match="min_score must be a number between -1 and 1"):
        session.track(video, [[0, 40.0, 30.0]], min_score=1.01)


def test_track_bad_queries(session, video, extractor, tmp_path):
    with pytest.raises(InputError, match="outside"):
        session.track(video, [[0, 200.0, 30.0]])
    with pytest.raises(InputError, match="frame"):
        session.track(video, [[9, 20.0, 30.0]])
    with pytest.raises(InputError, match="frame"):  # beyond the app's frame limit
        AppSession(extractor, max_video_frames=3, workdir=tmp_path).track(video, [[4, 20.0, 30.0]])
    with pytest.raises(InputError, match="triples"):
        session.track(video, [[0, 1.0]])
    with pytest.raises(InputError, match="trail"):
        session.track(video, [[0, 20.0, 30.0]], trail=-1)


def test_a_failure_while_tracking_leaves_no_half_written_files(session, video, monkeypatch):
    """An error after the video writer has opened and frames were written: no MP4, JSON or CSV."""
    import dinofeat.tracking

    original, calls = dinofeat.tracking.PointTracker.step, []

    def failing_step(self, frame_index, fmap):
        calls.append(frame_index)
        if len(calls) == 4:
            raise OSError("disk full")
        return original(self, frame_index, fmap)

    monkeypatch.setattr(dinofeat.tracking.PointTracker, "step", failing_step)
    with pytest.raises(OSError, match="disk full"):
        session.track(video, [[0, 40.0, 30.0]])
    assert len(calls) == 4  # three frames were tracked (and encoded) before the failure
    assert not [p for p in session.workdir.rglob("*") if p.is_file()]


# -- the page -------------------------------------------------------------------------------------
def test_example_files_are_found():
    found = example_files()
    assert found["pairs"][0][0].endswith("astronaut.jpg") and found["pairs"][0][1].endswith("astronaut_warped.jpg")
    assert any(v[0].endswith("pan.mp4") for v in found["videos"])
    assert example_files(None) == {"pairs": [], "images": [], "videos": []}


def test_build_app_has_the_three_tabs(session):
    pytest.importorskip("gradio")
    from dinofeat.app import build_app

    demo = build_app(session)
    config = demo.get_config_file()
    ids = {c["props"].get("elem_id") for c in config["components"]}
    assert {
        "match_a",
        "match_b",
        "match_picture",
        "match_json",
        "pca_files",
        "pca_gallery",
        "track_video",
        "track_frame",
        "track_result",
        "track_downloads",
        "resolution",
    } <= ids
    labels = {c["props"].get("label") for c in config["components"]}
    assert {"Match", "PCA", "Track"} <= labels
    assert demo.dinofeat_session is session
    # Gradio writes a .pyi stub next to any module that subclasses a component: the app must not
    import dinofeat.app

    assert not Path(dinofeat.app.__file__).with_suffix(".pyi").exists()


def test_page_defaults_are_the_librarys(session, monkeypatch):
    """The page restates no default: automatic points, the automatic search radius and the PCA
    components come from dinofeat.options (changed here to show it)."""
    pytest.importorskip("gradio")
    import dinofeat.app.page as page
    from dinofeat.app import build_app
    from dinofeat.options import COLOR_COMPONENTS

    monkeypatch.setattr(page, "DEFAULT_AUTO", 7)
    monkeypatch.setattr(page, "DEFAULT_WINDOW_PATCHES", 2.5)
    props = {c["props"].get("label"): c["props"] for c in build_app(session).get_config_file()["components"]}
    assert props["Automatic points"]["value"] == 7
    assert props["Search radius (pixels)"]["info"] == "around the last position; 0 = automatic (2.5 patches)"
    assert props["Components"]["minimum"] == props["Components"]["value"] == COLOR_COMPONENTS == 3
    with pytest.raises(InputError, match="at least 3 components"):  # the slider's minimum, in the session too
        session.pca([np.zeros((28, 28, 3), np.uint8)], components=COLOR_COMPONENTS - 1)


def test_launch_serves_the_page_with_the_upload_limit(session):
    pytest.importorskip("gradio")
    import socket
    import urllib.request

    from dinofeat.app import launch

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = launch(session, port=port, block=False, quiet=True, max_upload_mb=0.5)
    try:
        assert demo.max_file_size == 500_000  # Gradio refuses bigger uploads in the page, with a message
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and b"dinofeat" in response.read()
    finally:
        demo.close()


def test_errors_become_in_page_messages():
    gr = pytest.importorskip("gradio")
    from dinofeat.app.handlers import messages

    @messages
    def handler(x):
        raise InputError(f"bad   input\n{x}")

    with pytest.raises(gr.Error) as info:
        handler(3)
    assert info.value.message == "bad input 3"


def test_undecodable_image_upload_is_a_clear_message(tmp_path):
    gr = pytest.importorskip("gradio")
    from gradio.data_classes import ImageData

    from dinofeat.app.page import checked_image

    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    component = checked_image(gr, type="filepath", image_mode=None, render=False)
    with pytest.raises(gr.Error) as info:
        component.preprocess(ImageData(path=str(bad), orig_name="photo.png"))
    assert info.value.message.startswith("photo.png is not an image")


def test_without_gradio_the_app_says_how_to_install_it(monkeypatch, capsys):
    from dinofeat.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(DinofeatError, match=r'pip install "dinofeat\[app\]"'):
        require_gradio()
    # the check comes before any model work: a missing checkpoint is not what the user hears about
    assert main(["app", "--weights", "/nonexistent.pth"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "dinofeat[app]"' in err


# -- the command ----------------------------------------------------------------------------------
def test_cli_builds_the_model_once_and_launches(monkeypatch, vits14_checkpoint, capsys):
    pytest.importorskip("gradio")
    import dinofeat.app
    from dinofeat.cli import main

    launched = {}

    def fake_launch(session, **options):
        launched.update(session=session, **options)
        # a server already stopped (as after Ctrl+C): the CLI then closes it
        return SimpleNamespace(
            local_url="http://0.0.0.0:8123/", is_running=False, close=lambda verbose: launched.update(served=True)
        )

    monkeypatch.setattr(dinofeat.app, "launch", fake_launch)
    code = main(
        [
            "app",
            "--weights",
            str(vits14_checkpoint),
            "--device",
            "cpu",
            "--resolution",
            "224",
            "--port",
            "8123",
            "--host",
            "0.0.0.0",
            "--max-frames",
            "50",
            "--max-upload-mb",
            "10",
        ]
    )
    assert code == 0
    session = launched["session"]
    assert (launched["host"], launched["port"], launched["max_upload_mb"]) == ("0.0.0.0", 8123, 10)
    assert launched["served"]
    assert session.extractor.resolution == 224 and session.max_video_frames == 50
    out = capsys.readouterr().out
    assert "dinov2_vits14 on cpu" in out and "open http://0.0.0.0:8123/ in a browser" in out


@pytest.mark.parametrize(
    "argv", [["--port", "0"], ["--port", "http"], ["--max-frames", "0"], ["--max-upload-mb", "-1"]]
)
def test_cli_bad_options(argv, capsys):
    from dinofeat.cli import main

    assert main(["app", *argv]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_examples_folder_must_exist(monkeypatch, tmp_path, capsys):
    pytest.importorskip("gradio")
    from dinofeat.cli import main

    assert main(["app", "--examples", str(tmp_path / "missing")]) == 2
    assert "--examples must be a folder" in capsys.readouterr().err


# -- uploads keep their own state; bad uploads change nothing; B shows where points land ------------
OPTIONS = (None, False, "none", "index")  # resolution, mutual, ransac, colours: the page's defaults


def test_a_and_b_uploaded_at_once_keep_their_names(session, tmp_path, images):
    """Both uploads start before either finishes (as two quick drops in the page): each writes only
    its own image and name, and the refresh that follows sees both."""
    pytest.importorskip("gradio")
    import threading

    from dinofeat.app import handlers

    paths = save_png(tmp_path / "left.png", images[0]), save_png(tmp_path / "right.png", images[1])
    both_started = threading.Barrier(2)
    done: dict[str, tuple] = {}

    def upload(which, handler, path):
        both_started.wait()
        done[which] = handler(session, path)

    threads = [
        threading.Thread(target=upload, args=("a", handlers.match_upload_a, paths[0])),
        threading.Thread(target=upload, args=("b", handlers.match_upload_b, paths[1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (a, name_a, points), (b, name_b) = done["a"], done["b"]
    assert (name_a, name_b, points) == ("left.png", "right.png", [])
    clicked = handlers.match_click(session, a, b, points, name_a, name_b, *OPTIONS, [40, 30])
    status, data, download = clicked[-1], clicked[5], clicked[6]
    assert "A: left.png (160x120)" in status and "B: right.png (150x112)" in status
    assert data["image_a"]["path"] == "left.png" and data["image_b"]["path"] == "right.png"
    assert Path(download).name == "left_right_matches.json"


def test_a_bad_upload_is_one_message_and_the_panels_stay_as_they_were(session, tmp_path, images):
    gr = pytest.importorskip("gradio")
    from dinofeat.app import handlers

    a, b = images
    before = handlers.match_refresh(session, a, b, [[40.0, 30.0]], "a.png", "b.png", *OPTIONS)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(gr.Error, match="notes.png is not an image"):
        handlers.match_upload_b(session, bad)  # raises before it sets any state: the state is unchanged
    after = handlers.match_refresh(session, a, b, [[40.0, 30.0]], "a.png", "b.png", *OPTIONS)
    for shown, again in zip(before, after):
        if isinstance(shown, np.ndarray):
            np.testing.assert_array_equal(shown, again)
    assert after[-1] == before[-1] and "B: b.png" in after[-1]  # the status names what is on show
    assert after[5]["matches"] == before[5]["matches"]


def test_image_b_is_marked_where_each_kept_point_landed(session, images):
    pytest.importorskip("gradio")
    from dinofeat.app import handlers

    a, b = images
    points = [[40.0, 30.0], [100.0, 80.0]]
    out = handlers.match_refresh(session, a, b, points, "a.png", "b.png", *OPTIONS)
    shown_b, data = out[1], out[5]
    plain = handlers.click_panel(b)
    assert shown_b.shape == plain.shape and not np.array_equal(shown_b, plain)
    k = handlers.panel_scale((b.shape[1], b.shape[0]))
    for row in data["matches"]:
        x, y = (np.array(row["target"]) + 0.5) * k - 0.5
        assert not np.array_equal(shown_b[round(y), round(x)], plain[round(y), round(x)])  # a dot there
    view = session.match(a, b, points, mutual=True)
    dropped = [i for i, m in enumerate(view.data["matches"]) if not m["kept"]]
    assert all(np.isnan(view.targets_xy[i]).all() for i in dropped)  # not kept: not marked


def test_automatic_points_clear_the_heatmap(session, images):
    pytest.importorskip("gradio")
    from dinofeat.app import handlers

    a, b = images
    clicked = handlers.match_refresh(session, a, b, [[40.0, 30.0]], "a.png", "b.png", *OPTIONS)
    assert clicked[4] is not None  # the clicked point's similarity
    auto = handlers.match_auto(session, a, b, 5, "a.png", "b.png", *OPTIONS)
    assert auto[4] is None and len(auto[2]) >= 1


def test_the_page_lets_an_upload_write_only_its_own_state_then_redraws(session):
    """The page's wiring: an upload event's outputs are its image's state only (no panel shows an
    error badge when it fails), and a refresh follows it whether it failed or not."""
    pytest.importorskip("gradio")
    from dinofeat.app import build_app

    config = build_app(session).get_config_file()
    components = {c["id"]: c for c in config["components"]}
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
    deps = config["dependencies"]
    for drop in ("match_a", "match_b"):
        (index, upload), *_ = [(i, d) for i, d in enumerate(deps) if [ids[drop], "upload"] in map(list, d["targets"])]
        assert {components[o]["type"] for o in upload["outputs"]} == {"state"}
        (refresh,) = [d for d in deps if d.get("trigger_after") == index]
        assert not refresh["trigger_only_on_success"]
        assert {ids["match_a"], ids["match_b"], ids["match_picture"], ids["match_status"]} <= set(refresh["outputs"])


def test_the_status_line_says_1_point_and_1_match():
    from dinofeat.app.handlers import describe_pair

    image = np.zeros((4, 6, 3), np.uint8)
    assert describe_pair(image, image, "a.png", "b.png", 1, 1).endswith("1 point, 1 match kept")
    assert describe_pair(image, None, "a.png", "", 2).endswith("no image B · 2 points")
