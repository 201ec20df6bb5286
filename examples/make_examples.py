"""Regenerate the example files from scikit-image's public-domain / CC0 sample photos.

    python examples/make_examples.py

astronaut.jpg (NASA, public domain), chelsea.jpg (Stefan van der Walt, CC0) and coffee.jpg
(Rachel Michetti, CC0) are copies; astronaut_warped.jpg is the astronaut under a known homography
(printed, and saved in astronaut_warped.json); pan.mp4 is a camera pan over coffee.jpg.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

HERE = Path(__file__).parent
HOMOGRAPHY = np.array([[0.9, 0.08, 30.0], [-0.06, 0.95, 20.0], [1e-4, -5e-5, 1.0]])


def save_jpg(name: str, image: np.ndarray) -> None:
    Image.fromarray(image).save(HERE / name, quality=90)


def make_video(path: Path, source: np.ndarray, frames: int = 36, size_wh=(320, 240), fps: float = 12.0) -> None:
    from dinofeat.io.video import VideoWriter

    w, h = size_wh
    with VideoWriter(path, fps, size_wh) as writer:
        for t in range(frames):
            x0 = round(t * (source.shape[1] - w) / (frames - 1))
            y0 = round(t * (source.shape[0] - h) / (frames - 1) / 3)
            writer.write(np.ascontiguousarray(source[y0:y0 + h, x0:x0 + w]))


def main() -> None:
    astronaut = data.astronaut()
    save_jpg("astronaut.jpg", astronaut)
    warped = cv2.warpPerspective(astronaut, HOMOGRAPHY, (512, 512), flags=cv2.INTER_CUBIC)
    save_jpg("astronaut_warped.jpg", warped)
    (HERE / "astronaut_warped.json").write_text(json.dumps({"homography_a_to_b": HOMOGRAPHY.tolist()}, indent=1))
    save_jpg("chelsea.jpg", data.chelsea())
    save_jpg("coffee.jpg", data.coffee())
    make_video(HERE / "pan.mp4", data.coffee())


if __name__ == "__main__":
    main()
