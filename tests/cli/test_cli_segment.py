"""``dinofeat segment`` through ``main(argv)``: a video from a mask, images and video frames from clicks
(labels, negatives, a leading minus), the outputs, and bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from segment_scene import FRAMES, SIDE, H, W, write_scene

from conftest import save_png
from dinofeat.cli import main
from dinofeat.io.masks import read_mask
from dinofeat.io.video import probe_video
from dinofeat.models.dinov2 import DinoVisionTransformer
from dinofeat.models.registry import get_spec


@pytest.fixture(scope="module")
def model_args(tmp_path_factory) -> list[str]:
    vit = DinoVisionTransformer(get_spec("dinov2_vits14")).init_random(0, layerscale=1e-3)
    with torch.no_grad():
        vit.pos_embed.zero_()
    path = tmp_path_factory.mktemp("weights") / "content_vits14.pth"
    torch.save(vit.state_dict(), path)
    return ["--weights", str(path), "--resolution", str(H), "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("scene"), views=(0, 4))


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_video_from_a_mask_writes_overlay_masks_and_json(tmp_path, scene, model_args, capsys):
    folder, truths = scene
    argv = ["segment", str(folder / "clip.mp4"), "--mask", str(folder / "first.png")]
    outputs = ["-o", str(tmp_path / "o.mp4"), "--masks-dir", str(tmp_path / "m"), "--json", str(tmp_path / "o.json")]
    assert main([*argv, *outputs, "--context-frames", "3", *model_args]) == 0
    err = capsys.readouterr().err
    assert f"{FRAMES} frames, 1 object(s)" in err and "o.mp4" in err
    assert _files(tmp_path / "m") == {f"{k:05d}.png" for k in range(FRAMES)}
    last = read_mask(tmp_path / "m" / f"{FRAMES - 1:05d}.png")
    truth = truths[-1]
    assert ((last == 1) & (truth == 1)).sum() / ((last == 1) | (truth == 1)).sum() > 0.6
    document = json.loads((tmp_path / "o.json").read_text())
    assert document["options"]["context_frames"] == 3 and len(document["frames"]) == FRAMES
    assert probe_video(tmp_path / "o.mp4").size_wh == (W, H)


def test_image_clicks_with_labels_negatives_and_a_leading_minus(tmp_path, scene, model_args):
    folder, _ = scene
    centre = 20 + SIDE // 2
    argv = ["segment", str(folder / "view0.png"), str(folder / "view4.png"), "--point", f"{centre},{centre}:2"]
    argv += ["--negative", "-0.5,150", "--json", str(tmp_path / "s.json"), "--masks-dir", str(tmp_path / "m"), "-q"]
    assert main([*argv, *model_args]) == 0
    first = read_mask(tmp_path / "m" / "view0.png")
    assert first[centre, centre] == 2 and first[150, 0] == 0
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["objects"] == [2] and [entry["image"] for entry in document["images"]] == [
        str(folder / "view0.png"),
        str(folder / "view4.png"),
    ]


def test_video_clicks_start_at_their_frame(tmp_path, scene, model_args):
    folder, _ = scene
    argv = ["segment", str(folder / "clip.mp4"), "--point", "3,80,65", "--negative", "3,200,150"]
    assert main([*argv, "--masks-dir", str(tmp_path), "--max-frames", "5", "-q", *model_args]) == 0
    assert _files(tmp_path) == {"00003.png", "00004.png"}
    assert read_mask(tmp_path / "00003.png")[65, 80] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mask", "{dir}/small.png"], "--mask is 20x10 pixels, the image 224x168"),
        (["--mask", "{dir}/label300.png"], "--mask has label 300"),
        (["--point", "0,224,10"], "outside frame 0"),
        (["IMAGE", "--point", "10,-0.6"], "outside the first image"),
        (["IMAGE", "--point", "10,10", "--negative", "10,200"], "negative point 0 (10, 200) is outside"),
        (["--point", "0,10,10:255"], "label in '0,10,10:255' must be an integer from 1 to 254"),
        (["--point", "0,10,10:x"], "--point"),
        (["--point", "IMAGE", "0,10,10"], "X,Y"),
        (["--point", "1,10,10", "--point", "2,10,10"], "on one frame"),
        (["--point", "9,10,10"], "not a processed frame"),
        (["--mask", "{first}", "--point", "0,10,10"], "--mask or --point, not both"),
        (["--mask", "{first}", "--negative", "10,10"], "--negative goes with clicks"),
        ([], "no first mask"),
        (["--mask", "{first}", "NO_OUTPUTS"], "nothing to write"),
        (["--mask", "{first}", "-o", "{dir}/o.png"], ".mp4"),
        (["--mask", "{first}", "-o", "{video}"], "is the input"),
        (["IMAGE", "--point", "10,10", "--masks-dir", "{scene}"], "is the input"),  # {scene}/view0.png
        (["--mask", "{first}", "--top-k", "0"], "--top-k"),
        (["--mask", "{first}", "--temperature", "0"], "--temperature"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, scene, model_args, capsys, extra, message):
    folder, _ = scene
    save_png(tmp_path / "small.png", np.zeros((10, 20), np.uint8))
    Image.fromarray(np.full((H, W), 300, np.uint16)).save(tmp_path / "label300.png")  # 16-bit labels
    source = str(folder / "clip.mp4")
    argv, outputs = [], ["--json", str(tmp_path / "o.json"), "--masks-dir", str(tmp_path / "masks")]
    for item in extra:
        if item == "IMAGE":
            source = str(folder / "view0.png")
        elif item == "NO_OUTPUTS":
            outputs = []
        else:
            for name, path in (("{dir}", tmp_path), ("{first}", folder / "first.png"), ("{scene}", folder)):
                item = item.replace(name, str(path))
            argv.append(item.replace("{video}", source))
    before = _files(tmp_path)
    rc = main(["segment", source, *outputs, *argv, *model_args])  # a flag in argv overrides the default outputs
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert _files(tmp_path) == before  # not even the masks folder


def test_help_names_the_contract(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = capsys.readouterr().out
    for flag in ("--mask", "--point", "--negative", "--masks-dir", "--json", "--context-frames", "--top-k"):
        assert flag in text
    for flag in ("--radius", "--temperature", "--start", "--every", "--max-frames", "-o"):
        assert flag in text
