"""The web app behind ``dinofeat app``: click points, see matches, PCA colours, tracks and masks.

* :mod:`dinofeat.app.session` - :class:`AppSession`, the loaded model and one plain method per
  action, knowing nothing about Gradio;
* :mod:`dinofeat.app.handlers` - the page's event handlers, plain functions of the session;
* :mod:`dinofeat.app.page` - the Gradio page (:func:`build_app`) and its server (:func:`launch`).

Gradio is an optional extra (``pip install "dinofeat[app]"``), imported only when a page is
built or a handler runs, so importing this package never needs it.
"""

from dinofeat.app.handlers import GRADIO_MISSING, click_to_pixel, require_gradio
from dinofeat.app.page import EXAMPLES_DIR, RESOLUTION_CHOICES, build_app, example_files, launch
from dinofeat.app.session import MAX_POINTS, AppSession, MatchView, PCAView, SegmentView, TrackView, VideoView
from dinofeat.options import DEFAULT_MAX_IMAGE_MEGAPIXELS, DEFAULT_MAX_UPLOAD_MB, DEFAULT_MAX_VIDEO_FRAMES

__all__ = [
    "DEFAULT_MAX_IMAGE_MEGAPIXELS",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_MAX_VIDEO_FRAMES",
    "EXAMPLES_DIR",
    "GRADIO_MISSING",
    "MAX_POINTS",
    "RESOLUTION_CHOICES",
    "AppSession",
    "MatchView",
    "PCAView",
    "SegmentView",
    "TrackView",
    "VideoView",
    "build_app",
    "click_to_pixel",
    "example_files",
    "launch",
    "require_gradio",
]
