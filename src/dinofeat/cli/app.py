"""``dinofeat app``: a local web page to click points and see matches, PCA colours and tracks."""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path

from dinofeat.cli.common import (
    add_extractor_options,
    add_options,
    add_upsample_options,
    extractor_options,
    make_extractor,
    make_upsampler,
    options_from,
    upsample_options,
)
from dinofeat.errors import InputError
from dinofeat.options import AppOptions


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "app",
        help="start a local web app: click points, see matches, PCA, tracks and masks",
        description='Start a local web app (Gradio; install with: pip install "dinofeat[app]"). Tabs: '
        "Match (click points on image A, see their matches in image B, the similarity heatmap and the "
        "JSON), PCA (joint PCA colours and foreground masks of one or more images) and Track (click points "
        "on a video frame, track them, play and download the result). The model loads once and stays "
        "loaded. The page listens on 127.0.0.1 (this computer only) unless --host says otherwise.",
    )
    server = parser.add_argument_group("server")
    add_options(server, AppOptions, "host", "port")
    limits = parser.add_argument_group("limits")
    add_options(limits, AppOptions, "max_upload_mb", "max_image_mp", "max_frames")
    parser.add_argument(
        "--examples", metavar="DIR", help="folder of example files (default: the examples/ folder of a source checkout)"
    )
    add_extractor_options(parser)
    add_upsample_options(parser)  # --upsample anyup: the PCA and Segment tabs get a pixel-level toggle
    return parser


def run(args: argparse.Namespace) -> int:
    # lazy: --help stays fast (torch)
    from dinofeat import app

    model = extractor_options(args)
    upsample = upsample_options(args, model)
    options = options_from(args, AppOptions)
    app.require_gradio()  # before the model loads: fail fast with the install command
    if args.examples is not None and not Path(args.examples).is_dir():
        raise InputError(f"--examples must be a folder: {args.examples}")
    if options.port is not None:
        _check_port_free(options.host, options.port)
    upsampler = make_upsampler(upsample, model)  # before the model: a missing file is found at once
    session = app.AppSession(
        make_extractor(model),
        max_image_megapixels=options.max_image_mp,
        max_video_frames=options.max_frames,
        upsampler=upsampler,
        upsample_scale=upsample.upsample_scale,
    )
    demo = app.launch(
        session,
        host=options.host,
        port=options.port,
        block=False,
        quiet=True,
        examples_dir=args.examples if args.examples is not None else app.EXAMPLES_DIR,
        max_upload_mb=options.max_upload_mb,
    )
    print(f"dinofeat app: {session.description}\nopen {demo.local_url} in a browser; press Ctrl+C to stop", flush=True)
    _serve_until_interrupted(demo)
    return 0


def _serve_until_interrupted(demo) -> None:
    """Serve until Ctrl+C; then make the page's passes stop after their current block, and return.

    Not Gradio's ``block_thread``: its server close waits for the requests under way (seconds, a
    model pass among them). The server's threads end with the process; a pass still inside its
    block then is left at once (:mod:`dinofeat.runtime.modelthread`'s exit, status 130).
    """

    # lazy: --help stays fast (torch)
    from dinofeat.runtime.modelthread import stop_passes

    try:
        while demo.is_running:
            time.sleep(0.1)
    except KeyboardInterrupt:
        stop_passes(wait=0)
        return
    demo.close(verbose=False)


def _check_port_free(host: str, port: int) -> None:
    """A busy --port is the user's to change: say so before the model loads (Gradio's own message
    names an environment variable)."""

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise InputError(
                f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --port, "
                "or leave it out to take the first free one from 7860"
            ) from None
