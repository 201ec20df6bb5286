"""End to end: the web app in a real headless browser (Chromium driven by Playwright).

The app runs in this process on a free localhost port with a random-weight ViT-S-shaped model (2
blocks, so a click answers in well under a second). The browser uploads files, clicks on images
and checks what the page shows. Skipped only when no Chromium exists (``.ci/run`` installs
Debian's ``chromium``; ``DINOFEAT_CHROMIUM`` names another binary); ``playwright install`` is
not needed: the system browser is used. Marked ``e2e``: a plain ``pytest`` leaves them out,
``pytest -m e2e`` (and ``.ci/run``) runs them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from playwright import sync_api  # the test extra installs it (and Gradio): no skip without them

from conftest import random_vit, save_png

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
]
TIMEOUT_MS = 30_000


def find_chromium() -> str | None:
    for candidate in (
        os.environ.get("DINOFEAT_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    # Gradio's queue calls pandas options that pandas 3 deprecates; not ours to fix
    pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing"),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium browser (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free port; yields (url, session)."""
    from dinofeat.app import AppSession, launch
    from dinofeat.features.extractor import Extractor

    extractor = Extractor(random_vit("dinov2_vits14", depth=2), resolution=112, device="cpu", precision="fp32")
    session = AppSession(extractor, workdir=tmp_path_factory.mktemp("appwork"))
    port = free_port()
    demo = launch(session, host="127.0.0.1", port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", session
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server[0])
        page.wait_for_selector("#match_a")
        try:
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, photo):
    """Two photos (B is A shifted) and a short video of a pan over a photo, all small."""
    folder = tmp_path_factory.mktemp("inputs")
    a = photo[40:200, 100:340]
    b = photo[54:214, 128:368]
    from dinofeat.io.video import VideoWriter

    video = folder / "pan.mp4"
    with VideoWriter(video, fps=10, size_wh=(160, 112)) as sink:
        for t in range(5):
            sink.write(np.ascontiguousarray(photo[60:172, 120 + 4 * t : 280 + 4 * t]))
    bad = folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    return {
        "a": save_png(folder / "a.png", a),
        "b": save_png(folder / "b.png", b),
        "video": video,
        "bad": bad,
        "size_a": (a.shape[1], a.shape[0]),
    }


def click_image(page, selector: str, fx: float, fy: float) -> tuple[int, int]:
    """Click at the fraction (fx, fy) of the image as the browser draws it (inside any letterbox);
    returns the expected ``evt.index``: the distance from the image corner in the natural pixels of
    the image shown, rounded, as Gradio computes it (an image smaller than its box is drawn at its
    natural size, centred; a larger one is shrunk to fit, keeping its aspect ratio)."""
    img = page.locator(f"{selector} img").first
    natural_w, natural_h = natural_size(page, selector)
    box = img.bounding_box()
    scale = min(box["width"] / natural_w, box["height"] / natural_h, 1.0)
    left = box["x"] + (box["width"] - natural_w * scale) / 2
    top = box["y"] + (box["height"] - natural_h * scale) / 2
    cx, cy = round(left + fx * natural_w * scale), round(top + fy * natural_h * scale)  # mouse events: whole pixels
    page.mouse.click(cx, cy)
    index = js_round((cx - left) / scale), js_round((cy - top) / scale)
    assert 0 <= index[0] < natural_w and 0 <= index[1] < natural_h  # the click landed on the image
    return index


def natural_size(page, selector: str) -> tuple[int, int]:
    """The natural size of the image shown, once it is decoded (a new ``src`` loads a moment; a
    decode is rejected when the app swaps the ``src`` meanwhile, as after a click, so it is retried)."""
    script = """async e => {
        for (let tries = 0; tries < 100; tries++) {
            try { await e.decode(); return [e.naturalWidth, e.naturalHeight]; }
            catch (err) { await new Promise(done => setTimeout(done, 50)); }
        }
        throw new Error("the image never decoded");
    }"""
    return tuple(page.locator(f"{selector} img").first.evaluate(script))


def js_round(value: float) -> int:
    """JavaScript's ``Math.round``: halves go up (Python's ``round`` takes them to even)."""
    return math.floor(value + 0.5)


def shown_scale(page, selector: str, size_wh: tuple[int, int]) -> int:
    """How many times the panel enlarged an image of ``size_wh`` (its natural size over the original)."""
    natural_w, natural_h = natural_size(page, selector)
    assert natural_w % size_wh[0] == 0 and natural_w // size_wh[0] == natural_h // size_wh[1]
    return natural_w // size_wh[0]


def wait_image(page, selector: str) -> None:
    page.wait_for_selector(f"{selector} img[src]", state="visible")


def wait_text(page, selector: str, text: str) -> None:
    """Wait until the element's text (line breaks removed: file names are split over lines) holds ``text``."""
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); return e && e.innerText.replace(/\\n/g, '').includes(t); }",
        arg=[selector, text],
    )


def json_text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def test_match_tab_upload_click_shows_matches_and_json(page, inputs, server):
    page.locator("#match_a input[type=file]").set_input_files(str(inputs["a"]))
    wait_text(page, "#match_status", "A: a.png (240x160)")
    page.locator("#match_b input[type=file]").set_input_files(str(inputs["b"]))
    wait_text(page, "#match_status", "B: b.png (240x160)")

    index = click_image(page, "#match_a", 0.5, 0.5)
    k = shown_scale(page, "#match_a", inputs["size_a"])
    assert k == 3  # 240x160 is shown 3 times larger, to click on
    wait_image(page, "#match_picture")
    wait_image(page, "#match_heatmap")
    wait_text(page, "#match_status", "1 point, 1 match kept")
    wait_text(page, "#match_json", "target")
    text = json_text(page, "#match_json")
    assert "matches" in text and "score" in text
    page.wait_for_selector("#match_download a, #match_download .file-name, #match_download td")
    assert "a_b_matches.json" in page.locator("#match_download").inner_text().replace("\n", "")

    # the JSON served for download holds the clicked point in dinofeat's convention
    files = sorted(server[1].workdir.glob("match-*/*.json"))
    data = json.loads(files[-1].read_text())
    source = data["matches"][-1]["source"]
    assert source == pytest.approx([index[0] / k - 0.5, index[1] / k - 0.5], abs=0.005)  # the JSON has 2 decimals
    assert data["image_a"]["size"] == list(inputs["size_a"])

    # a second click adds a second match
    click_image(page, "#match_a", 0.25, 0.3)
    wait_text(page, "#match_status", "2 points")
    page.wait_for_function("(document.querySelector('#match_json').innerText.match(/target/g) || []).length >= 2")


def test_match_tab_bad_upload_says_so(page, inputs):
    page.locator("#match_b input[type=file]").set_input_files(str(inputs["bad"]))
    toast = page.locator(".toast-body", has_text=re.compile("not an image"))
    toast.first.wait_for(state="visible")
    assert "broken.png" in toast.first.inner_text()


def test_match_tab_quick_uploads_keep_both_names_and_a_bad_one_changes_nothing(page, inputs, server):
    page.goto(server[0])
    page.wait_for_selector("#match_a")
    page.locator("#match_a input[type=file]").set_input_files(str(inputs["a"]))
    page.locator("#match_b input[type=file]").set_input_files(str(inputs["b"]))  # before A's upload is done
    wait_text(page, "#match_status", "A: a.png (240x160) · B: b.png (240x160)")
    click_image(page, "#match_a", 0.5, 0.5)
    wait_text(page, "#match_status", "1 match kept")
    page.wait_for_selector("#match_download a, #match_download .file-name, #match_download td")
    assert "a_b_matches.json" in page.locator("#match_download").inner_text().replace("\n", "")

    page.locator("#match_a input[type=file]").set_input_files(str(inputs["bad"]))
    toast = page.locator(".toast-body", has_text=re.compile("broken.png is not an image"))
    toast.first.wait_for(state="visible")
    wait_image(page, "#match_a")  # the refresh puts A's panel back
    wait_image(page, "#match_picture")
    assert toast.count() == 1
    assert "A: a.png (240x160)" in page.locator("#match_status").inner_text().replace("\n", "")
    for panel in ("#match_a", "#match_b", "#match_picture", "#match_heatmap"):
        assert "Error" not in page.locator(panel).inner_text()


def test_track_tab_click_and_track(page, inputs):
    page.get_by_role("tab", name="Track").click()
    page.locator("#track_video input[type=file]").set_input_files(str(inputs["video"]))
    wait_image(page, "#track_frame")
    wait_text(page, "#track_summary", "5 frames")
    index = click_image(page, "#track_frame", 0.5, 0.5)
    k = shown_scale(page, "#track_frame", (160, 112))
    expected = round(index[0] / k - 0.5, 3)
    wait_text(page, "#track_points", f"{expected:g}")

    page.locator("#track_run").click()
    page.wait_for_selector("#track_result video[src]", state="attached")
    wait_text(page, "#track_downloads", ".csv")
    downloads = page.locator("#track_downloads").inner_text().replace("\n", "")
    assert "pan_tracks.mp4" in downloads and "pan_tracks.json" in downloads
    assert "Tracked 1 point" in page.locator("#track_summary").inner_text()


def test_pca_tab_example_runs_in_one_click(page):
    page.get_by_role("tab", name="PCA").click()
    page.locator("#pca_examples button.gallery-item").first.click()
    wait_text(page, "#pca_summary", "Joint PCA of astronaut.jpg, astronaut_warped.jpg")
    assert page.locator("#pca_gallery img").count() >= 2
    wait_text(page, "#pca_downloads", "pca.npz")


def test_a_small_video_is_shown_large_and_clicked_in_its_own_pixels(page, server, tmp_path_factory, photo):
    """A 176x144 (QCIF) video: the click panel shows it enlarged on screen, and a click lands on the
    original pixel under the pointer."""
    from dinofeat.io.video import VideoWriter

    video = tmp_path_factory.mktemp("qcif") / "qcif.mp4"
    with VideoWriter(video, fps=10, size_wh=(176, 144)) as sink:
        for t in range(3):
            sink.write(np.ascontiguousarray(photo[50:194, 100 + 2 * t : 276 + 2 * t]))
    page = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})  # the shared page holds a video
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server[0])
    page.get_by_role("tab", name="Track").click()
    page.locator("#track_video input[type=file]").set_input_files(str(video))
    wait_text(page, "#track_summary", "qcif.mp4: 3 frames")
    wait_image(page, "#track_frame")
    page.wait_for_function("(document.querySelector('#track_frame img') || {}).naturalWidth == 528")
    k = shown_scale(page, "#track_frame", (176, 144))
    assert k == 3
    box = page.locator("#track_frame img").first.bounding_box()
    assert min(box["width"] / 176, box["height"] / 144) > 1.5  # drawn larger than the video's own pixels

    index = click_image(page, "#track_frame", 0.3, 0.6)
    x, y = (round(v / k - 0.5, 3) for v in index)
    assert 0 <= x < 176 and 0 <= y < 144
    wait_text(page, "#track_points", f"{x:g}")
    shown = json_text(page, "#track_points").replace("\n", "")
    assert f"[0,{x:g},{y:g}]" in shown, shown  # the query, [frame, x, y], in the video's pixels
    assert abs(x - 0.3 * 176) <= 1 and abs(y - 0.6 * 144) <= 1  # the pixel under the pointer
    page.close()


def choose_file(page, selector: str, path) -> None:
    """Upload ``path`` into a ``gr.File`` (its file input exists only once its upload area is clicked)."""
    with page.expect_file_chooser() as chooser:
        page.locator(f"{selector} button.upload-container").click()
    chooser.value.set_files(str(path))


def test_segment_tab_click_an_object_then_segment_an_image_and_a_video(page, inputs):
    page.get_by_role("tab", name="Segment").click()
    choose_file(page, "#segment_file", inputs["a"])
    wait_text(page, "#segment_summary", "a.png: 240x160")
    wait_image(page, "#segment_frame")
    index = click_image(page, "#segment_frame", 0.5, 0.5)
    k = shown_scale(page, "#segment_frame", inputs["size_a"])
    wait_text(page, "#segment_clicks", f"{round(index[0] / k - 0.5, 3):g}")
    page.locator("#segment_run").click()
    wait_image(page, "#segment_result_image")
    wait_text(page, "#segment_summary", "Segmented a.png: 1 image(s), 1 object(s)")
    wait_text(page, "#segment_downloads", "a_segments.json")

    page.locator("#segment_file button[aria-label='Clear']").click()
    choose_file(page, "#segment_file", inputs["video"])
    wait_text(page, "#segment_summary", "pan.mp4: 5 frames")
    wait_image(page, "#segment_frame")
    index = click_image(page, "#segment_frame", 0.4, 0.6)
    k = shown_scale(page, "#segment_frame", (160, 112))
    wait_text(page, "#segment_clicks", f"{round(index[1] / k - 0.5, 3):g}")
    page.locator("#segment_run").click()
    page.wait_for_selector("#segment_result video[src]", state="attached")
    wait_text(page, "#segment_summary", "Segmented pan.mp4: 5 frames")
    wait_text(page, "#segment_downloads", "pan_segments.mp4")
