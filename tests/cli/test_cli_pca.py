"""``dinofeat pca`` through ``main(argv)``: figures, files, videos and errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import save_png
from dinofeat.cli import main
from dinofeat.pca import FeaturePCA

H, W = 70, 98  # small inputs; --resolution 70 gives a 5 x 7 patch grid


@pytest.fixture
def model_args(vits14_checkpoint) -> list[str]:
    return ["--weights", str(vits14_checkpoint), "--resolution", "70", "--device", "cpu", "--precision", "fp32"]


def _scene(seed: int = 0) -> np.ndarray:
    """A textured rectangle on plain grey."""
    rng = np.random.default_rng(seed)
    image = np.full((H, W, 3), 170, np.uint8)
    image[14:56, 21:77] = rng.integers(0, 256, (42, 56, 3), dtype=np.uint8)
    return image


@pytest.fixture
def images(tmp_path) -> list[str]:
    return [str(save_png(tmp_path / "a.png", _scene(0))), str(save_png(tmp_path / "b.png", _scene(1)[:, :84]))]


def _read(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_images_to_grid_pca_file_and_features(tmp_path, images, model_args, capsys):
    fig, pca_file, feats = tmp_path / "fig.png", tmp_path / "pca.npz", tmp_path / "feats.npz"
    rc = main(
        [
            "pca",
            *images,
            "-o",
            str(fig),
            "--save-pca",
            str(pca_file),
            "--save-features",
            str(feats),
            "--components",
            "5",
            *model_args,
        ]
    )
    assert rc == 0
    assert "2 images," in capsys.readouterr().out
    figure = _read(fig)
    assert figure.shape == (H, 2 * W + 8 + 2 * 84, 3)  # two side-by-side panels in one row, 8 px apart
    loaded = FeaturePCA.load(pca_file)
    assert loaded.n_components == 5 and loaded.metadata["model"] == "dinov2_vits14"
    with np.load(feats) as f:
        assert f["features_0"].shape == (5, 7, 5) and f["features_1"].shape == (5, 6, 5)
        assert f["foreground_0"].dtype == bool and f["foreground_0"].shape == (5, 7)
        assert tuple(f["image_size_1"]) == (84, H) and str(f["model"]) == "dinov2_vits14"


def test_out_dir_load_pca_and_reruns_give_identical_colours(tmp_path, images, model_args):
    runs = {}
    for name, extra in (
        ("fit", ["--save-pca", str(tmp_path / "p.npz")]),
        ("again", []),
        ("loaded", ["--load-pca", str(tmp_path / "p.npz")]),
    ):
        out = tmp_path / name
        out.mkdir()
        assert main(["pca", *images, "--out-dir", str(out), "--pca-only", *extra, *model_args]) == 0
        runs[name] = [_read(out / "a_pca.png"), _read(out / "b_pca.png")]
    assert runs["fit"][0].shape == (H, W, 3) and runs["fit"][1].shape == (H, 84, 3)
    for name in ("again", "loaded"):
        for a, b in zip(runs["fit"], runs[name]):
            np.testing.assert_array_equal(a, b)


def test_overlay_nearest_and_transparent(tmp_path, images, model_args):
    overlay = tmp_path / "overlay.png"
    assert main(["pca", images[0], "-o", str(overlay), "--overlay", "0.5", "--nearest", *model_args]) == 0
    blended = _read(overlay)
    assert blended.shape == (H, W, 3)
    np.testing.assert_array_equal(blended[:3, :3], _scene(0)[:3, :3])  # background corner: image untouched
    transparent = tmp_path / "transparent.png"
    assert main(["pca", images[0], "-o", str(transparent), "--transparent", *model_args]) == 0
    rgba = _read(transparent)
    assert rgba.shape == (H, 2 * W, 4)
    assert (rgba[:, :W, 3] == 255).all()  # the photo half is opaque
    assert (rgba[:, W:, 3] == 0).any() and (rgba[:, W:, 3] == 255).any()  # background transparent


def test_video_keeps_frames_and_fps_and_static_colours(tmp_path, model_args):
    from dinofeat.io.video import VideoWriter, probe_video, read_frames

    source, out = tmp_path / "static.mp4", tmp_path / "out.mp4"
    with VideoWriter(source, fps=7, size_wh=(W, H)) as sink:
        for _ in range(6):
            sink.write(_scene(0))
    assert main(["pca", str(source), "-o", str(out), "--fit-frames", "3", *model_args]) == 0
    info = probe_video(out)
    assert (info.frames, info.fps, info.size_wh) == (6, 7.0, (2 * W, H))
    frames = [frame[:, W:].astype(int) for _, frame in read_frames(out)]
    assert max(np.abs(f - frames[0]).max() for f in frames) <= 8  # H.264 may wobble; colours don't
    assert frames[0].max() > 50  # something was coloured


def _count_probes(monkeypatch) -> list:
    """Record every probe_video call (the workflows import it from dinofeat.io.video when they run)."""
    import dinofeat.io.video

    calls, probe = [], dinofeat.io.video.probe_video
    monkeypatch.setattr(dinofeat.io.video, "probe_video", lambda path: calls.append(str(path)) or probe(path))
    return calls


def test_a_video_is_probed_once(tmp_path, model_args, monkeypatch):
    """PCAJob.check() probes, and fit_video takes what it found instead of probing again."""
    from dinofeat.io.video import VideoWriter

    source = tmp_path / "static.mp4"
    with VideoWriter(source, fps=7, size_wh=(W, H)) as sink:
        for _ in range(3):
            sink.write(_scene(0))
    probes = _count_probes(monkeypatch)
    assert main(["pca", str(source), "-o", str(tmp_path / "out.mp4"), "--fit-frames", "2", *model_args]) == 0
    assert probes == [str(source)]


def _garbage(path, data: bytes = b"\x89PNG\r\n\x1a\n this is not really a png") -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "corrupt",
        "components0",
        "bad_pca",
        "wrong_dim_pca",
        "video_features",
        "no_folder",
        "bad_suffix",
        "transparent_jpg",
        "nothing",
    ],
)
def test_bad_inputs_give_one_line_error_and_no_output(tmp_path, images, model_args, capsys, case):
    out = str(tmp_path / "out.png")
    argv = {
        "missing": [str(tmp_path / "missing.png"), "-o", out],
        "corrupt": [images[0], _garbage(tmp_path / "corrupt.png"), "-o", out],
        "components0": [images[0], "-o", out, "--components", "0"],
        "bad_pca": [images[0], "-o", out, "--load-pca", _garbage(tmp_path / "bad.npz")],
        "wrong_dim_pca": [images[0], "-o", out, "--load-pca", str(tmp_path / "small.npz")],
        "video_features": [
            _garbage(tmp_path / "clip.mp4"),
            "-o",
            str(tmp_path / "o.mp4"),
            "--save-features",
            str(tmp_path / "f.npz"),
        ],
        "no_folder": [images[0], "-o", str(tmp_path / "a.png" / "out.png")],  # a file where a folder should be
        "bad_suffix": [images[0], "-o", str(tmp_path / "out.txt")],
        "transparent_jpg": [images[0], "-o", str(tmp_path / "out.jpg"), "--transparent"],
        "nothing": [images[0]],
    }[case]
    if case == "wrong_dim_pca":
        import torch

        FeaturePCA.fit(torch.randn(4, 4, 16), foreground=None).save(tmp_path / "small.npz")
    before = set(tmp_path.iterdir())
    capsys.readouterr()
    assert main(["pca", *argv, *model_args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dinofeat pca: error: ") and err.count("\n") == 1, err
    assert set(tmp_path.iterdir()) == before  # nothing written, not even a temporary file


def test_a_folder_is_all_the_images_below_it(tmp_path, model_args, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    save_png(folder / "b.png", _scene(1))
    save_png(folder / "sub" / "a.png", _scene(0))
    (folder / "notes.txt").write_text("not an image\n")
    out = folder / "out"  # an --out-dir inside the folder is not looked into, on a rerun either
    for _ in range(2):
        assert main(["pca", str(folder), "--out-dir", str(out), *model_args]) == 0
        assert "2 images" in capsys.readouterr().out
        assert sorted(p.name for p in out.iterdir()) == ["a_pca.png", "b_pca.png"]
    assert main(["pca", str(folder / "sub"), str(folder / "b.png"), "-o", str(tmp_path / "g.png"), *model_args]) == 0
    assert _read(tmp_path / "g.png").shape == (H, 4 * W + 8, 3)  # two panels: the folder's image and the file


def test_a_folder_without_images_is_one_line(tmp_path, model_args, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["pca", str(tmp_path / "empty"), "-o", str(tmp_path / "g.png"), *model_args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no images in the folder {tmp_path / 'empty'}" in err
    assert not (tmp_path / "g.png").exists()
