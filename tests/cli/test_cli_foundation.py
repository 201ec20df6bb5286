"""`dinofeat models`, `dinofeat extract`, and the CLI's error handling."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import save_png
from dinofeat.cli import main


def test_help_is_instant_and_does_not_import_torch():
    code = (
        "import sys; from dinofeat.cli import build_parser; build_parser().format_help(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "dinofeat" in capsys.readouterr().out


def test_models_lists_the_registry(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in (
        "dinov2_vits14 (default)",
        "dinov2_vitg14_reg",
        "facebook/dinov2-base",
        "vit_small_patch14_dinov2.lvd142m",
    ):
        assert name in out
    assert out.splitlines()[-1].startswith("--model also takes the hugging face repo or the timm name")


def test_a_hugging_face_id_names_the_model(tmp_path, images, vits14_checkpoint, capsys):
    out = tmp_path / "f.npz"
    argv = ["extract", str(images[0]), "-o", str(out), "--weights", str(vits14_checkpoint), "--resolution", "56"]
    assert main([*argv, "--model", "facebook/dinov2-small"]) == 0
    with np.load(out) as f:
        assert str(f["model"]) == "dinov2_vits14"


def test_models_does_not_import_torch(tmp_path):
    code = (
        "import sys; from dinofeat.cli import main; code = main(['models']); "
        "print(code, 'torch' in sys.modules, file=sys.stderr)"
    )
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_CACHE": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert "dinov2_vits14 (default)" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "0 False"


@pytest.fixture
def images(tmp_path, photo):
    return [save_png(tmp_path / "a.png", photo), save_png(tmp_path / "b.png", photo[:150, :200].copy())]


def test_extract_npz(tmp_path, images, vits14_checkpoint):
    out = tmp_path / "f.npz"
    code = main(
        [
            "extract",
            *map(str, images),
            "-o",
            str(out),
            "--weights",
            str(vits14_checkpoint),
            "--resolution",
            "56",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    with np.load(out) as f:
        assert f["features_0"].shape == (4, 6, 384) and f["features_0"].dtype == np.float32
        assert f["image_size_0"].tolist() == [451, 300]
        assert f["image_size_1"].tolist() == [200, 150]
        assert f["features_1"].shape == (4, 5, 384)
        assert str(f["model"]) == "dinov2_vits14" and json.loads(str(f["resolution"])) == 56


def test_extract_safetensors_with_layers_and_stride(tmp_path, images, vits14_checkpoint):
    from safetensors import safe_open

    out = tmp_path / "f.safetensors"
    assert (
        main(
            [
                "extract",
                str(images[0]),
                "-o",
                str(out),
                "--weights",
                str(vits14_checkpoint),
                "--resolution",
                "56",
                "--layer",
                "3",
                "-1",
                "--stride",
                "7",
                "--facet",
                "value",
            ]
        )
        == 0
    )
    with safe_open(str(out), "np") as f:
        assert f.get_tensor("features_0").shape == (7, 11, 768)  # 84x56 px at stride 7
        assert f.metadata()["layers"] == "[3, -1]" and f.metadata()["stride"] == "7"


def _fails(capsys, argv, expected):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "Traceback" not in err
    assert expected in err
    return err


@pytest.mark.parametrize("problem", ["missing", "corrupt", "tiny"])
def test_extract_bad_images(tmp_path, capsys, images, vits14_checkpoint, problem):
    bad = tmp_path / "bad.png"
    if problem == "corrupt":
        bad.write_bytes(b"nope")
    elif problem == "tiny":
        save_png(bad, np.zeros((5, 5, 3), np.uint8))
    out = tmp_path / "o.npz"
    expected = {"missing": "not found", "corrupt": "not an image", "tiny": "smaller than one"}[problem]
    _fails(capsys, ["extract", str(images[0]), str(bad), "-o", str(out), "--weights", str(vits14_checkpoint)], expected)
    assert not out.exists() and list(tmp_path.glob(".o*")) == []


def test_extract_bad_model_weights_and_output(tmp_path, capsys, images, vits14_checkpoint):
    out = tmp_path / "o.npz"
    _fails(capsys, ["extract", str(images[0]), "-o", str(out), "--model", "dinov2_vitx14"], "unknown model")
    junk = tmp_path / "junk.pth"
    junk.write_text("junk")
    _fails(capsys, ["extract", str(images[0]), "-o", str(out), "--weights", str(junk)], "cannot read")
    _fails(
        capsys,
        ["extract", str(images[0]), "-o", str(out), "--model", "dinov2_vitb14", "--weights", str(vits14_checkpoint)],
        "looks like dinov2_vits14",
    )
    _fails(capsys, ["extract", str(images[0]), "-o", str(images[0] / "o.npz")], "is not a folder")
    _fails(capsys, ["extract", str(images[0]), "-o", str(tmp_path / "o.txt")], ".npz or .safetensors")
    assert not out.exists()


def test_bad_option_values_exit_with_usage(capsys, images):
    assert main(["extract", str(images[0]), "-o", "x.npz", "--resolution", "-3"]) == 2
    assert "positive integer" in capsys.readouterr().err


def test_models_shows_cached_weights(capsys, monkeypatch, tmp_path, vits14_checkpoint):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth").symlink_to(vits14_checkpoint)
    assert main(["models"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("dinov2_vits14 "))
    assert "torch hub" in line


def test_the_first_run_offline_says_what_it_tries_then_fails_in_one_line(tmp_path, monkeypatch, capsys, images):
    import socket

    import huggingface_hub
    import huggingface_hub.constants as hf_constants
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))

    def unreachable(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("the hub client was called"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("a download was started"))
    assert main(["extract", str(images[0]), "-o", str(tmp_path / "f.npz"), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    first, error = captured.err.splitlines()
    assert first.startswith("dinofeat extract: looking for dinov2_vits14 weights: torch hub cache")
    assert "Hugging Face hub (facebook/dinov2-small), then Meta's URL" in first
    assert "no weights found for dinov2_vits14" in error and "no network" in error
    assert "--weights FILE" in error and "HF_HUB_OFFLINE=1" in error
    assert "Downloading" not in captured.out + captured.err and captured.out == ""
    assert not (tmp_path / "f.npz").exists()


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["match", "a.png", "b.png", "--pint", "3,4"],
            "dinofeat match: error: unrecognized argument --pint (did you mean --point?)",
        ),
        (
            ["match", "a.png", "b.png", "--jsn=m.json"],
            "dinofeat match: error: unrecognized argument --jsn (did you mean --json?)",
        ),
        (
            ["track", "v.mp4", "--qury", "1,2,3"],
            "dinofeat track: error: unrecognized argument --qury (did you mean --query?)",
        ),
        (["pca", "a.png", "--point", "1,2"], "dinofeat pca: error: unrecognized argument --point (see --help)"),
        (["match", "a.png", "b.png", "c.png"], "dinofeat match: error: unrecognized arguments: c.png"),
        (["matc", "a.png", "b.png"], "invalid choice: 'matc' (choose from 'models', "),
        (["matc", "a.png", "b.png"], "'eval'), did you mean 'match'? (see --help)"),
        (
            ["extract", "a.png", "--precision", "fp31"],
            "(choose from 'auto', 'fp32', 'bf16', 'fp16'), did you mean 'fp32'?",
        ),
    ],
)
def test_a_typo_gets_a_suggestion_from_the_command(capsys, argv, line):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and line in err, err


def test_warnings_start_with_the_command(tmp_path, capsys, images, vits14_checkpoint):
    argv = ["extract", str(images[0]), "-o", str(tmp_path / "f.npz"), "--weights", str(vits14_checkpoint)]
    assert main([*argv, "--resolution", "4000", "--max-size", "112", "--quiet"]) == 0
    assert capsys.readouterr().err.startswith("dinofeat extract: --resolution 4000 asked for")
