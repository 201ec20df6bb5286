"""The output suffixes the writers produce, in one table (torch-free: the commands' help names them).

Inputs are recognised by :data:`~dinofeat.dataset.listing.IMAGE_SUFFIXES` and
:data:`~dinofeat.dataset.listing.VIDEO_SUFFIXES`.
"""

from __future__ import annotations

#: Videos :class:`~dinofeat.io.video.VideoWriter` writes (H.264).
VIDEO_OUTPUTS = (".mp4", ".m4v", ".mov", ".mkv")
#: Pictures :func:`~dinofeat.io.outputs.save_image` writes (Pillow).
IMAGE_OUTPUTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
