"""The pca job: check() refuses bad inputs and outputs before any model work; run() colours with a
feature source, writes atomically and returns typed results; the out-dir naming rule is the job's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_vit, save_png
from dinofeat.colorize import PCAResult, pca_images
from dinofeat.errors import InputError
from dinofeat.features.extractor import Extractor
from dinofeat.io.video import VideoWriter, probe_video
from dinofeat.jobs.pca import PCAJob, VideoPCAResult, out_dir_targets, write_reduced_features
from dinofeat.options import FrameOptions, PCADrawingOptions, PCAOptions
from dinofeat.optionspec import flag_of

H, W = 56, 70


class NoModel:
    """A feature source that fails if anything asks it for features."""

    def __getattr__(self, name: str):
        raise AssertionError(f"check() must not use the feature source ({name})")


def extractor() -> Extractor:
    return Extractor(random_vit("dinov2_vits14", depth=1), device="cpu", precision="fp32", resolution=56)


@pytest.fixture
def inputs(tmp_path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    images = [save_png(tmp_path / f"{name}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8)) for name in "ab"]
    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=8, size_wh=(W, H)) as sink:
        for _ in range(3):
            sink.write(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    return {"a": str(images[0]), "b": str(images[1]), "video": str(video)}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({}, "no input: give images or a video"),
        ({"inputs": ["{a}"]}, "nothing to write: give output=OUT, out_dir=DIR, save_pca or save_features"),
        ({"inputs": ["{a}"], "output": "{dir}/f.txt"}, "output for images must end in"),
        ({"inputs": ["{a}"], "save_pca": "{dir}/p.txt"}, "save_pca must end in .npz"),
        ({"inputs": ["{a}"], "output": "{a}"}, "is the input"),
        ({"inputs": ["{a}"], "output": "{dir}/f.jpg", "drawing": PCADrawingOptions(transparent=True)}, "transparent"),
        ({"inputs": ["{a}"], "output": "{dir}/f.png", "load_pca": "{dir}/missing.npz"}, "PCA file not found"),
        ({"inputs": ["{video}", "{a}"], "output": "{dir}/v.mp4"}, "give one video, or only images"),
        ({"inputs": ["{video}"], "output": "{dir}/v.png"}, "output for a video must end in"),
        ({"inputs": ["{video}"], "save_features": "{dir}/f.npz"}, "save_features is for images"),
        ({"inputs": ["{video}"], "output": "{dir}/v.mp4", "frames": FrameOptions(start=7)}, "start=7 is past the end"),
        ({"inputs": ["{video}"], "features": "{dir}", "output": "{dir}/v.mp4"}, "features holds image features"),
        ({"features": "{dir}", "output": "{dir}/f.png"}, "features=DIR without INPUT fits a PCA"),
    ],
)
def test_check_refuses_before_any_model_work(tmp_path, inputs, fields, message):
    def fill(value):
        if isinstance(value, list):
            return [fill(v) for v in value]
        if not isinstance(value, str):
            return value
        for key, path in inputs.items():
            value = value.replace("{" + key + "}", path)
        return value.replace("{dir}", str(tmp_path))

    before = sorted(p.name for p in tmp_path.iterdir())
    job = PCAJob(**{key: fill(value) for key, value in fields.items()})
    with pytest.raises(InputError, match=message):
        job.check()
    with pytest.raises(InputError, match=message):  # run() checks first when check() was not called
        job.run(NoModel())
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_errors_name_fields_and_the_command_line_renders_flags(inputs, tmp_path):
    with pytest.raises(InputError) as caught:
        PCAJob([inputs["video"]], output=str(tmp_path / "v.mp4"), frames=FrameOptions(start=5)).check()
    assert str(caught.value) == f"start=5 is past the end of {inputs['video']}"
    assert caught.value.render(flag_of) == f"--start 5 is past the end of {inputs['video']}"
    with pytest.raises(InputError) as caught:
        PCAJob([inputs["a"]], output=str(tmp_path / "x.gif")).check()
    assert caught.value.render(flag_of).startswith("-o for images must end in .png")


def test_out_dir_names_follow_the_inputs():
    assert out_dir_targets("o", ["x/a.png", "y/b.jpg"], ".png") == ["o/a_pca.png", "o/b_pca.png"]
    assert out_dir_targets("o", ["x/a.png", "y/a.jpg"], ".mp4") == ["o/000_a_pca.mp4", "o/001_a_pca.mp4"]


def test_images_run_writes_every_output_and_returns_the_result(tmp_path, inputs):
    out = tmp_path / "out"
    job = PCAJob(
        [inputs["a"], inputs["b"]],
        output=str(tmp_path / "fig.png"),
        out_dir=str(out),
        save_pca=str(tmp_path / "p.npz"),
        save_features=str(tmp_path / "f.npz"),
        options=PCAOptions(components=4),
    )
    job.check()
    assert out.is_dir()  # the out-dir is made by check()
    result = job.run(extractor())
    assert isinstance(result, PCAResult) and len(result.colors) == 2
    assert sorted(p.name for p in out.iterdir()) == ["a_pca.png", "b_pca.png"]
    assert np.load(tmp_path / "f.npz")["features_0"].shape[-1] == 4
    assert job.summary(result).startswith("2 images, ")


def test_images_in_memory_as_the_app_gives_them(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8)]
    job = PCAJob(images=images, output=str(tmp_path / "fig.png"))
    job.check()
    result = job.run(extractor())
    assert isinstance(result, PCAResult) and (tmp_path / "fig.png").is_file()


def test_video_run_returns_frames_and_fps(tmp_path, inputs):
    job = PCAJob([inputs["video"]], output=str(tmp_path / "v.mp4"), frames=FrameOptions(every=2))
    job.check()
    seen = []
    result = job.run(extractor(), lambda done, total: seen.append((done, total)))
    assert isinstance(result, VideoPCAResult)
    assert (result.frames, result.fps) == (2, 4.0)
    assert seen == [(1, 2), (2, 2)]
    assert probe_video(tmp_path / "v.mp4").frames == 2


def test_saved_features_are_projected_once(tmp_path, monkeypatch):
    """--save-features: each map is projected onto the components once, its first K kept."""
    import dinofeat.pca

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (56, 70, 3), dtype=np.uint8) for _ in range(2)]
    result = pca_images(images, extractor(), PCAOptions(components=5, foreground=None))
    calls, transform = [], dinofeat.pca.PCABasis.transform
    monkeypatch.setattr(dinofeat.pca.PCABasis, "transform", lambda self, x: calls.append(1) or transform(self, x))
    write_reduced_features(tmp_path / "f.npz", result, components=4)
    assert len(calls) == len(images)
    stored = np.load(tmp_path / "f.npz")
    for i, fmap in enumerate(result.maps):
        expected = transform(result.pca.basis, fmap.features)[..., :4]
        assert torch.allclose(torch.from_numpy(stored[f"features_{i}"]), expected, atol=1e-6)
