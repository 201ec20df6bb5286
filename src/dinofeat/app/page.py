"""The Gradio page: tabs Match, PCA, Track and Segment laid out and wired to :mod:`dinofeat.app.handlers`.

Gradio is an optional extra (``pip install "dinofeat[app]"``), imported only when a page is built.
(No ``from __future__ import annotations`` here: Gradio reads the handlers' ``gr.SelectData``
annotations at run time to pass click events.)
"""

import functools
import logging
from pathlib import Path

from dinofeat.app import handlers
from dinofeat.app.handlers import messages, require_gradio
from dinofeat.app.session import MAX_POINTS, AppSession
from dinofeat.options import (
    COLOR_COMPONENTS,
    DEFAULT_AUTO,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MIN_SCORE,
    DEFAULT_TRAIL,
    DEFAULT_WINDOW_PATCHES,
)

log = logging.getLogger(__name__)

#: Resolutions offered in the page: shorter side fed to the model, in pixels.
RESOLUTION_CHOICES = (224, 336, 448, 518, 672, 896)
#: Where ``dinofeat app`` finds its example files in a source checkout.
EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"


def example_files(examples_dir: str | Path | None = EXAMPLES_DIR) -> dict:
    """The example files found in ``examples_dir``: ``{"pairs": [[a, b], ...], "images": [...], "videos": [...]}``."""
    found: dict = {"pairs": [], "images": [], "videos": []}
    if examples_dir is None or not Path(examples_dir).is_dir():
        return found
    folder = Path(examples_dir)

    def have(*names: str) -> list[str] | None:
        paths = [folder / n for n in names]
        return [str(p) for p in paths] if all(p.is_file() for p in paths) else None

    for pair in (("astronaut.jpg", "astronaut_warped.jpg"), ("chelsea.jpg", "coffee.jpg")):
        if (paths := have(*pair)) is not None:
            found["pairs"].append(paths)
    for group in (("astronaut.jpg", "astronaut_warped.jpg"), ("chelsea.jpg",), ("coffee.jpg",)):
        if (paths := have(*group)) is not None:
            found["images"].append(paths)
    if (paths := have("pan.mp4")) is not None:
        found["videos"].append(paths)
    return found


def checked_image(gr, **kwargs):
    """``gr.Image(**kwargs)`` whose undecodable uploads give a clear in-page message.

    Gradio opens an uploaded image with Pillow before any handler runs and reports a failure as
    its own traceback text; this wraps the instance's ``preprocess`` to say what happened instead.
    (Not a subclass: Gradio writes a ``.pyi`` stub next to the module of every Component subclass.)
    """
    image = gr.Image(**kwargs)
    plain = image.preprocess

    def preprocess(payload):
        try:
            return plain(payload)
        except gr.Error:
            raise
        except Exception:  # noqa: BLE001 - Pillow raises many types for files it cannot read
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(
                f"{name} is not an image, or a damaged one (cannot read it)", print_exception=False
            ) from None

    image.preprocess = preprocess
    return image


def bound(handler, session: AppSession):
    """``handler`` with the session as its first argument (Gradio sees the remaining signature)."""
    call = functools.partial(handler, session)
    setattr(call, "__name__", handler.__name__)  # noqa: B010 - a partial takes it; its type does not declare it
    return call


def build_app(
    session: AppSession | None = None,
    *,
    extractor=None,
    examples_dir: str | Path | None = EXAMPLES_DIR,
    **session_options,
):
    """The Gradio page (a ``gr.Blocks``) for a session, or for an extractor (a new session).

    ``session_options`` go to :class:`AppSession`. The page is not started: call ``.launch()``
    on the result, or use :func:`launch`. The session is available as ``blocks.dinofeat_session``.
    """
    gr = require_gradio()
    if session is None:
        if extractor is None:
            raise ValueError("build_app needs a session or an extractor")
        session = AppSession(extractor, **session_options)
    examples = example_files(examples_dir)
    resolutions = sorted({*RESOLUTION_CHOICES, session.extractor.resolution})

    with gr.Blocks(title="dinofeat", analytics_enabled=False) as demo:
        gr.Markdown(
            "# dinofeat: DINO features in the browser\n"
            f"Model: **{session.description}**. Click on images to add points; coordinates are pixels "
            "of the original image (x right, y down, centre of the top-left pixel = 0, 0)."
        )
        with gr.Accordion("Settings", open=False):
            resolution = gr.Dropdown(
                resolutions,
                value=session.extractor.resolution,
                label="Resolution",
                info="shorter image side fed to the model, in pixels (higher: finer features, slower)",
                elem_id="resolution",
            )
        with gr.Tabs():
            with gr.Tab("Match", id="match"):
                _match_tab(gr, session, resolution, examples["pairs"])
            with gr.Tab("PCA", id="pca"):
                _pca_tab(gr, session, resolution, examples["images"])
            with gr.Tab("Track", id="track"):
                _track_tab(gr, session, resolution, examples["videos"])
            with gr.Tab("Segment", id="segment"):
                _segment_tab(gr, session, resolution, examples)
    demo.dinofeat_session = session
    return demo


def launch(
    session_or_extractor,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    examples_dir: str | Path | None = EXAMPLES_DIR,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    block: bool = True,
    quiet: bool = False,
    **session_options,
):
    """Build the page and serve it on ``host:port`` (``port=None``: the first free port from 7860).

    With ``block=False`` the server runs in a background thread and the ``gr.Blocks`` is returned
    (call ``.close()`` to stop it); otherwise this returns when the server stops (Ctrl+C). The
    page's address is ``blocks.local_url``; ``quiet=False`` logs it.
    """
    if isinstance(session_or_extractor, AppSession):
        demo = build_app(session_or_extractor, examples_dir=examples_dir)
    else:
        demo = build_app(extractor=session_or_extractor, examples_dir=examples_dir, **session_options)
    session = demo.dinofeat_session
    allowed = [str(session.workdir)] + ([str(examples_dir)] if examples_dir and Path(examples_dir).is_dir() else [])
    demo.queue(default_concurrency_limit=1)
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=int(max_upload_mb * 1_000_000),
        allowed_paths=allowed,
        show_error=True,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        footer_links=["gradio"],
    )
    if not quiet:
        log.warning("serving %s on %s", session.description, demo.local_url)
    if block:
        demo.block_thread()  # until Ctrl+C, which closes the server
    return demo


def _match_tab(gr, session: AppSession, resolution, pairs: list) -> None:
    on = bound
    image = functools.partial(
        checked_image, gr, type="filepath", image_mode=None, sources=["upload", "clipboard"], format="png"
    )
    state_a, state_b, points = gr.State(None), gr.State(None), gr.State([])
    name_a, name_b = gr.State("A"), gr.State("B")  # one state each: an upload writes only its own
    with gr.Row():
        image_a = image(label="Image A: click to add points", elem_id="match_a")
        image_b = image(label="Image B: where the points land", elem_id="match_b")
    picture = gr.Image(label="Matches", interactive=False, format="png", elem_id="match_picture", render=False)
    heatmap = gr.Image(
        label="Similarity of the last point over B",
        interactive=False,
        format="png",
        elem_id="match_heatmap",
        scale=1,
        render=False,
    )
    data = gr.JSON(label="Matches (JSON)", elem_id="match_json", open=True, max_height=300, render=False)
    download = gr.File(label="Download JSON", interactive=False, elem_id="match_download", height=80, render=False)
    status = gr.Markdown(
        "Upload two images or pick an example pair, then click points on image A.", elem_id="match_status"
    )
    examples_here = gr.Column()  # the examples go right under the images (created below, once outputs exist)
    with gr.Row():
        auto = gr.Slider(
            1,
            MAX_POINTS,
            value=DEFAULT_AUTO,
            step=1,
            label="Automatic points",
            scale=3,
            info="distinctive, well-spread points of A with confident matches",
        )
        auto_button = gr.Button("Find automatic points", elem_id="match_auto", scale=1)
        clear_button = gr.Button("Clear points", elem_id="match_clear", scale=1)
    with gr.Accordion("Match options", open=False), gr.Row():
        mutual = gr.Checkbox(
            False,
            label="Mutual matches only",
            info="keep a match only if B's point matches back onto the query's patch",
        )
        ransac = gr.Dropdown(
            ["none", "homography", "fundamental"],
            value="none",
            label="RANSAC check",
            info="keep only the inliers of a homography (planar scene) or fundamental matrix",
        )
        color_by = gr.Radio(
            ["index", "score"],
            value="index",
            label="Line colours",
            info="one colour per point, or by cosine score (blue low, red high)",
        )
    with gr.Row():  # the matches get the page's width: their lines are easier to follow
        picture.render()
    with gr.Row():
        heatmap.render()
        with gr.Column():
            data.render()
            download.render()
    outputs = [image_a, image_b, points, picture, heatmap, data, download, status]
    options = [resolution, mutual, ransac, color_by]
    state = [state_a, state_b, points, name_a, name_b]
    refresh = on(handlers.match_refresh, session)

    def click_a(a, b, points_, name_a_, name_b_, res, mutual_, ransac_, color, evt: gr.SelectData):
        return handlers.match_click(session, a, b, points_, name_a_, name_b_, res, mutual_, ransac_, color, evt.index)

    # an upload sets its own image and name only; the refresh then draws from the state as it is by
    # then (it runs after a failed upload too, putting the panels back as they were)
    image_a.upload(on(handlers.match_upload_a, session), [image_a], [state_a, name_a, points]).then(
        refresh, [*state, *options], outputs
    )
    image_b.upload(on(handlers.match_upload_b, session), [image_b], [state_b, name_b]).then(
        refresh, [*state, *options], outputs
    )
    image_a.clear(handlers.match_clear_a, [state_b, name_b], [state_a, name_a, *outputs])
    image_b.clear(handlers.match_clear_b, [state_a, points, name_a], [state_b, name_b, *outputs])
    image_a.select(click_a, [*state, *options], outputs)
    auto_button.click(on(handlers.match_auto, session), [state_a, state_b, auto, name_a, name_b, *options], outputs)
    clear_button.click(handlers.match_clear_points, [state_a, state_b, name_a, name_b], outputs)
    for option in options:
        option.change(on(handlers.match_rematch, session), [*state, *options], outputs)
    if pairs:
        with examples_here:
            gr.Examples(
                pairs,
                inputs=[image_a, image_b],
                fn=on(handlers.match_load_pair, session),
                run_on_click=True,
                cache_examples=False,
                outputs=[state_a, state_b, name_a, name_b, *outputs],
                label="Example pairs (click one)",
                elem_id="match_examples",
            )


def _pca_tab(gr, session: AppSession, resolution, groups: list) -> None:
    files = gr.File(
        label="Images: one or more (one PCA is fitted on all of them, so the same part gets the same colour in each)",
        file_count="multiple",
        file_types=["image"],
        elem_id="pca_files",
    )
    examples_here = gr.Column()
    with gr.Row():
        foreground = gr.Radio(
            ["otsu", "none", "manual"],
            value="otsu",
            label="Foreground",
            info="otsu: automatic threshold on the first component; none: colour every "
            "patch; manual: the threshold on the right",
        )
        threshold = gr.Slider(
            0,
            1,
            value=0.5,
            step=0.01,
            label="Manual threshold",
            info="on the first component, scaled to 0..1 by its percentiles",
        )
        components = gr.Slider(
            COLOR_COMPONENTS,
            32,
            value=COLOR_COMPONENTS,
            step=1,
            label="Components",
            info="kept in the downloadable PCA file; the colours use the first three",
        )
    with gr.Row():
        layout = gr.Radio(["side by side", "overlay"], value="side by side", label="Layout")
        opacity = gr.Slider(0, 1, value=0.6, step=0.05, label="Overlay opacity")
        nearest = gr.Checkbox(False, label="Crisp patches (no interpolation)")
        upsample = gr.Checkbox(
            False,
            label="Pixel-level features (AnyUp)",
            visible=session.upsampler is not None,
            elem_id="pca_upsample",
        )
    run = gr.Button("Run PCA", variant="primary", elem_id="pca_run")
    summary = gr.Markdown(elem_id="pca_summary")
    gallery = gr.Gallery(label="PCA colours", columns=2, format="png", elem_id="pca_gallery", interactive=False)
    masks = gr.Gallery(
        label="Foreground masks (white = foreground)", columns=4, format="png", elem_id="pca_masks", interactive=False
    )
    downloads = gr.File(
        label="Downloads: figure (PNG) and fitted PCA (.npz, for dinofeat pca --load-pca)",
        file_count="multiple",
        interactive=False,
        elem_id="pca_downloads",
    )
    inputs = [files, foreground, threshold, components, layout, opacity, nearest, resolution, upsample]
    outputs = [gallery, masks, summary, downloads]
    run_pca = bound(handlers.pca_run, session)
    run.click(run_pca, inputs, outputs)
    if groups:
        with examples_here:
            examples = gr.Examples(
                [[g] for g in groups], inputs=[files], label="Examples (click one to run)", elem_id="pca_examples"
            )
        examples.load_input_event.then(run_pca, inputs, outputs)


def _track_tab(gr, session: AppSession, resolution, videos: list) -> None:
    video_state = gr.State(None)  # VideoView of the uploaded video
    frame_state = gr.State(None)  # the clean frame on show, (H, W, 3) uint8
    queries = gr.State([])  # [[t, x, y], ...]
    with gr.Row():
        video = gr.Video(label="Video", sources=["upload"], elem_id="track_video", scale=1)
        with gr.Column(scale=1):
            frame_image = gr.Image(
                label="Click points to track on this frame", interactive=False, format="png", elem_id="track_frame"
            )
            frame_index = gr.Slider(
                0,
                1,
                value=0,
                step=1,
                interactive=False,
                label="Frame",
                elem_id="track_frame_index",
                info="points may start on any frame",
            )
    examples_here = gr.Column()
    with gr.Row():
        points_json = gr.JSON(
            label="Query points [frame, x, y]", elem_id="track_points", open=True, max_height=200, scale=2
        )
        with gr.Column(scale=1):
            clear_button = gr.Button("Clear points", elem_id="track_clear")
            run = gr.Button("Track", variant="primary", elem_id="track_run")
    with gr.Row():
        window = gr.Number(
            0,
            label="Search radius (pixels)",
            minimum=0,
            info=f"around the last position; 0 = automatic ({DEFAULT_WINDOW_PATCHES:g} patches)",
        )
        min_score = gr.Slider(
            0, 1, value=DEFAULT_MIN_SCORE, step=0.05, label="Minimum score", info="a weaker match counts as not visible"
        )
        trail = gr.Slider(0, 60, value=DEFAULT_TRAIL, step=1, label="Trail (frames)", info="in the output video")
    summary = gr.Markdown(elem_id="track_summary")
    with gr.Row():
        result = gr.Video(label="Tracks", interactive=False, elem_id="track_result")
        downloads = gr.File(
            label="Downloads: MP4, JSON, CSV", file_count="multiple", interactive=False, elem_id="track_downloads"
        )
    data = gr.JSON(label="Tracks (JSON)", elem_id="track_json", open=False, max_height=300)

    def click_frame(view, frame, t, queries_, evt: gr.SelectData):
        return handlers.track_click(view, frame, t, queries_, evt.index)

    @messages
    def run_track(view, queries_, radius, score, trail_, res, progress=gr.Progress()):  # noqa: B008 - Gradio injects its tracker through this default
        def report(done, total):
            progress((done, total), desc="Tracking", unit="frames")

        return handlers.track_run(session, view, queries_, radius, score, trail_, res, progress=report)

    open_video = bound(handlers.track_open, session)
    open_outputs = [video_state, frame_state, queries, frame_image, points_json, frame_index, summary]
    video.upload(open_video, [video], open_outputs)
    video.clear(handlers.track_clear_video, None, open_outputs)
    frame_index.release(
        bound(handlers.track_show_frame, session), [video_state, frame_index, queries], [frame_state, frame_image]
    )
    frame_image.select(
        click_frame, [video_state, frame_state, frame_index, queries], [queries, points_json, frame_image]
    )
    clear_button.click(handlers.track_clear_points, [frame_state], [queries, points_json, frame_image])
    run.click(
        run_track, [video_state, queries, window, min_score, trail, resolution], [result, downloads, data, summary]
    )
    if videos:
        with examples_here:
            gr.Examples(
                videos,
                inputs=[video],
                fn=open_video,
                outputs=open_outputs,
                run_on_click=True,
                cache_examples=False,
                label="Example video (click to open)",
                elem_id="track_examples",
            )


def _segment_tab(gr, session: AppSession, resolution, examples: dict) -> None:
    source_state = gr.State(None)  # {"path", "video"} of the uploaded image or video
    frame_state = gr.State(None)  # the clean image (a video's first frame), (H, W, 3) uint8
    clicks = gr.State([])  # [[x, y, label], ...], label 0: background
    with gr.Row():
        upload = gr.File(
            label="Image or video", file_types=["image", "video"], type="filepath", elem_id="segment_file", scale=1
        )
        frame_image = gr.Image(
            label="Click the object (a video: on its first frame)",
            interactive=False,
            format="png",
            elem_id="segment_frame",
            scale=2,
        )
    with gr.Row():
        kind = gr.Radio(
            list(handlers.SEGMENT_CLICK_KINDS), value="object", label="A click marks", elem_id="segment_kind"
        )
        label = gr.Dropdown(
            list(range(1, handlers.SEGMENT_LABELS + 1)),
            value=1,
            label="Object label",
            info="several objects: one label each",
            elem_id="segment_label",
        )
        points_json = gr.JSON(label="Clicks [x, y, label] (0: background)", elem_id="segment_clicks", max_height=200)
        with gr.Column():
            clear_button = gr.Button("Clear clicks", elem_id="segment_clear")
            upsample = gr.Checkbox(
                False,
                label="Pixel-level masks (AnyUp)",
                visible=session.upsampler is not None,
                elem_id="segment_upsample",
            )
            run = gr.Button("Segment", variant="primary", elem_id="segment_run")
    summary = gr.Markdown(elem_id="segment_summary")
    with gr.Row():
        result_image = gr.Image(label="Overlay", interactive=False, format="png", elem_id="segment_result_image")
        result_video = gr.Video(label="Overlay video", interactive=False, elem_id="segment_result")
        downloads = gr.File(
            label="Downloads: overlay, JSON, masks",
            file_count="multiple",
            interactive=False,
            elem_id="segment_downloads",
        )
    data = gr.JSON(label="Objects (JSON)", elem_id="segment_json", open=False, max_height=300)

    def click_frame(source, frame, clicks_, label_, kind_, res, evt: gr.SelectData):
        return handlers.segment_click(session, source, frame, clicks_, label_, kind_, res, evt.index)

    @messages
    def run_segment(source, clicks_, res, upsample_, progress=gr.Progress()):  # noqa: B008 - Gradio injects its tracker through this default
        def report(done, total):
            progress((done, total), desc="Segmenting", unit="frames")

        return handlers.segment_run(session, source, clicks_, res, progress=report, upsample=upsample_)

    open_outputs = [source_state, frame_state, clicks, frame_image, points_json, summary]
    upload.upload(bound(handlers.segment_open, session), [upload], open_outputs)
    upload.clear(handlers.segment_clear_input, None, open_outputs)
    frame_image.select(
        click_frame, [source_state, frame_state, clicks, label, kind, resolution], [clicks, points_json, frame_image]
    )
    clear_button.click(handlers.segment_clear_clicks, [frame_state], [clicks, points_json, frame_image])
    run.click(
        run_segment,
        [source_state, clicks, resolution, upsample],
        [result_image, result_video, downloads, data, summary],
    )
