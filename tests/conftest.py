"""Shared fixtures: random-weight models in the real shapes, checkpoints in real formats, photos."""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from dinofeat.features.extractor import Extractor
from dinofeat.models.build import build_model
from dinofeat.models.registry import get_spec


@functools.cache
def random_vit(name: str = "dinov2_vits14", depth: int | None = 2, seed: int = 0, layerscale: float = 1.0):
    """A model of the registry shape ``name`` (``depth`` blocks; DINOv2 or DINOv3) with deterministic random weights."""
    return build_model(get_spec(name), depth=depth).init_random(seed, layerscale).eval()


@pytest.fixture(scope="session")
def vits14_checkpoint(tmp_path_factory) -> Path:
    """A full-depth ViT-S/14 with random weights saved as Meta's official ``.pth`` would be."""
    path = tmp_path_factory.mktemp("weights") / "dinov2_vits14_pretrain.pth"
    torch.save(random_vit("dinov2_vits14", depth=None, seed=1).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photo, (300, 451, 3) uint8 RGB (scikit-image's 'chelsea', public domain)."""
    from skimage import data

    return data.chelsea()


def save_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(image).save(path)
    return path


@functools.cache
def smooth_vit(name: str = "dinov2_vits14", depth: int = 2, seed: int = 0, layerscale: float = 1e-4):
    """A random model whose features are smooth: low-frequency patch filters, a tiny layer scale and
    no positional embedding. Features follow the image's slow variations and the same pixels give
    (nearly) the same feature anywhere, so similarity surfaces are nearly flat (as in low-texture
    regions of real images): the case where a search that is not exact returns the wrong position.
    With ``layerscale=0`` the blocks add nothing: features depend on the patch's pixels only, exactly."""
    import math

    vit = build_model(get_spec(name), depth=depth).init_random(seed, layerscale=layerscale)
    p = vit.patch_size
    centres = (torch.arange(p, dtype=torch.float32) + 0.5) / p
    waves = [torch.cos(math.pi * f * centres) for f in range(3)]
    basis = torch.stack([wy[:, None] * wx[None, :] for wy in waves for wx in waves])  # (9, p, p): <= 1 cycle
    gen = torch.Generator().manual_seed(seed + 1)
    weight = vit.patch_embed.proj.weight
    mix = torch.randn(weight.shape[0], 3, len(basis), generator=gen) / (p * len(basis) ** 0.5)
    with torch.no_grad():
        weight.copy_(torch.einsum("ock,kyx->ocyx", mix, basis))
        if getattr(vit, "pos_embed", None) is not None:
            vit.pos_embed.zero_()
    return vit.eval()


def make_image_dataset(root: Path, count: int = 200, *, bad: bool = True, seed: int = 0) -> list[str]:
    """``count`` small random PNGs in four subfolders of ``root`` (three sizes, interleaved) and, with
    ``bad``, five files that are not readable images (corrupt, empty, truncated, text, too small) plus
    a ``readme.txt`` that is not an input. Returns the bad files' dataset paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (30, 40), (44, 28)]
    for i in range(count):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = sizes[(i // 3) % 3]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    if not bad:
        return []
    import io

    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    (root / "class1" / "corrupt.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "class2" / "empty.png").write_bytes(b"")
    (root / "class3" / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "text.png").write_text("not an image\n")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "tiny.png")
    (root / "readme.txt").write_text("a dataset\n")
    return ["class1/corrupt.jpg", "class2/empty.png", "class3/truncated.jpg", "text.png", "tiny.png"]


class UnusedSource:
    """A :class:`~dinofeat.features.source.FeatureSource` that fails the test if asked for anything:
    a job's ``check()`` (and ``run()`` on a job that does not pass it) must refuse before any model work."""

    @property
    def options(self):
        return pytest.fail("the feature source was used")

    spec = stride = batch_size = options

    def extract_arrays(self, images):
        return pytest.fail("features were made")


@pytest.fixture
def unused_source() -> UnusedSource:
    return UnusedSource()


@pytest.fixture
def tiny_extractor() -> Extractor:
    """A one-block ViT-S/14 with random weights, at resolution 56 on the CPU (fast)."""
    return Extractor(random_vit("dinov2_vits14", depth=1), resolution=56, device="cpu", precision="fp32")


def write_h264(
    path: Path,
    frames: Sequence[np.ndarray],
    *,
    fps: float = 25.0,
    container: str | None = None,
    sar: Fraction | None = None,
    times_s: Sequence[float] | None = None,
) -> Path:
    """Encode ``(H, W, 3) uint8`` frames with PyAV as FFmpeg would (no dinofeat code): ``container``
    (``"mpegts"``, ...; default from the suffix), a sample aspect ratio ``sar`` stored in the stream,
    and each frame's presentation time ``times_s`` (variable frame rate; default ``k / fps``)."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", format=container) as output:
        stream = output.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001), options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        time_base = Fraction(1, 1000) if times_s is not None else 1 / Fraction(fps).limit_denominator(1001)
        stream.codec_context.time_base = time_base
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
            stream.sample_aspect_ratio = sar
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = round(Fraction(times_s[k]).limit_denominator(10**6) / time_base) if times_s is not None else k
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return path


def write_resolution_change(path: Path, first: Sequence[np.ndarray], then: Sequence[np.ndarray]) -> Path:
    """A video whose resolution changes part-way, as stream recorders write it: the frames ``first``
    and ``then`` (another size) as two MPEG-TS segments, concatenated byte for byte."""
    parts = [
        write_h264(path.with_suffix(f".part{k}.ts"), frames, container="mpegts")
        for k, frames in enumerate((first, then))
    ]
    path.write_bytes(b"".join(part.read_bytes() for part in parts))
    for part in parts:
        part.unlink()
    return path


def _mount_tmpfs(path: Path, size: str) -> bool:
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Fill the device of ``folder`` up to ``leave`` bytes; returns the filler file (delete it to free space)."""
    filler = folder / "filler"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize - leave
    with open(filler, "wb") as handle:
        try:
            handle.write(b"\0" * max(free, 0))
            handle.flush()
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
    return filler


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at ``tmp_path / "disk"`` (skipped where none can be mounted)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux); the ENOSPC unit tests still run")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)
