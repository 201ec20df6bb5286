"""``dinofeat app``: a local web page to click points and see matches, PCA colours and tracks."""

from __future__ import annotations

import argparse
import math

from dinofeat.cli.common import add_feature_options, add_model_options, number_in, positive_int


positive_float = number_in(0, math.inf, "a positive number", open_low=True)
port_number = number_in(1, 65535, "a port number between 1 and 65535", integer=True)


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "app", help="start a local web app: click points, see matches, PCA and tracks",
        description="Start a local web app (Gradio; install with: pip install \"dinofeat[app]\"). Tabs: "
        "Match (click points on image A, see their matches in image B, the similarity heatmap and the "
        "JSON), PCA (joint PCA colours and foreground masks of one or more images) and Track (click points "
        "on a video frame, track them, play and download the result). The model loads once and stays "
        "loaded. The page listens on 127.0.0.1 (this computer only) unless --host says otherwise.",
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 makes the page reachable from other computers "
                        "(default: %(default)s)")
    server.add_argument("--port", type=port_number, default=None, metavar="N",
                        help="port (default: the first free one from 7860)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-upload-mb", type=positive_float, default=None, metavar="MB",
                        help="largest file the page accepts (default: 200)")
    limits.add_argument("--max-image-mp", type=positive_float, default=None, metavar="MP",
                        help="largest image in megapixels (default: 40)")
    limits.add_argument("--max-frames", type=positive_int, default=None, metavar="N",
                        help="frames of a video tracked at most; longer videos are cut (default: 600)")
    parser.add_argument("--examples", metavar="DIR",
                        help="folder of example files (default: the examples/ folder of a source checkout)")
    add_feature_options(parser)
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dinofeat import app
    from dinofeat.errors import InputError

    app.require_gradio()  # before the model loads: fail fast with the install command
    if args.examples is not None and not Path(args.examples).is_dir():
        raise InputError(f"--examples must be a folder: {args.examples}")

    from dinofeat.cli.common import make_extractor

    session = app.AppSession(
        make_extractor(args),
        max_image_megapixels=args.max_image_mp or app.DEFAULT_MAX_IMAGE_MEGAPIXELS,
        max_video_frames=args.max_frames or app.DEFAULT_MAX_VIDEO_FRAMES,
    )
    demo = app.launch(session, host=args.host, port=args.port, block=False, quiet=True,
                      examples_dir=args.examples if args.examples is not None else app.EXAMPLES_DIR,
                      max_upload_mb=args.max_upload_mb or app.DEFAULT_MAX_UPLOAD_MB)
    print(f"dinofeat app: {session.description}\nopen {demo.local_url} in a browser; press Ctrl+C to stop",
          flush=True)
    demo.block_thread()  # until Ctrl+C, which closes the server
    return 0
