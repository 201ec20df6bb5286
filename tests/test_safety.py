"""What every command owes the user's files and attention, through ``main(argv)``: outputs never
replace an input or each other, get the mode a plain ``open()`` gives, land in folders that are
made for them, have the suffix their option names; bad values are one line naming the option.

Small inputs and the full-depth random-weight ViT-S/14 checkpoint at ``--resolution 56``, so each
run takes a fraction of a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import save_png
from dinofeat.cli import main

W, H = 70, 56  # --resolution 56: the model sees 70 x 56, a 5 x 4 patch grid


@pytest.fixture
def model_args(vits14_checkpoint) -> list[str]:
    return ["--weights", str(vits14_checkpoint), "--resolution", "56", "--device", "cpu", "--precision", "fp32"]


def _scene(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Two images and a 4-frame video in ``tmp_path``."""
    from dinofeat.io.video import VideoWriter

    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=8, size_wh=(W, H)) as sink:
        for k in range(4):
            sink.write(np.roll(_scene(0), 2 * k, axis=1))
    return {"a": save_png(tmp_path / "a.png", _scene(0)), "b": save_png(tmp_path / "b.png", _scene(1)), "video": video}


def _listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden temporary files too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys, argv: list[str], message: str) -> str:
    """``main(argv)`` exits 2 with one line on stderr holding ``message``."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    return err


# -- 1. outputs never replace an input, nor each other ------------------------------------------
#: (command line with {a} {b} {video} {dir} placeholders, what the error says)
CLOBBERS = [
    (["extract", "{dir}/photo.npz", "-o", "{dir}/photo.npz"], "is the input"),
    (["extract", "{a}", "{dir}/photo.npz", "-o", "{dir}/./sub/../photo.npz"], "is the input"),
    (["match", "{a}", "{b}", "-o", "{a}"], "is the input"),
    (["match", "{a}", "{b}", "-o", "{dir}/sub/../b.png"], "is the input"),
    (["match", "{a}", "{b}", "--json", "{dir}/a.json", "-o", "{dir}/link.png"], "is the input"),
    (["pca", "{a}", "-o", "{a}"], "is the input"),
    (["pca", "{a}", "{b}", "-o", "{dir}/./b.png"], "is the input"),
    (["pca", "{a}", "--save-pca", "{dir}/p.npz", "--save-features", "{dir}/p.npz"], "two outputs"),
    (["pca", "{a}", "{dir}/sub/a_pca.png", "--out-dir", "{dir}/sub"], "is the input"),  # a re-run over its outputs
    (["pca", "{a}", "{b}", "--out-dir", "{dir}/sub", "-o", "{dir}/sub/b_pca.png"], "two outputs"),
    (["pca", "{video}", "-o", "{video}"], "is the input"),
    (["track", "{video}", "--point", "10,10", "-o", "{video}"], "is the input"),
    (["track", "{video}", "--point", "10,10", "--json", "{dir}/t.json", "-o", "{dir}/./clip.mp4"], "is the input"),
]


@pytest.mark.parametrize("argv, message", CLOBBERS, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CLOBBERS])
def test_an_output_never_replaces_an_input(tmp_path, files, model_args, capsys, argv, message):
    (tmp_path / "sub").mkdir()
    (tmp_path / "photo.npz").write_bytes(files["a"].read_bytes())  # an image under a feature file's name
    (tmp_path / "sub" / "a_pca.png").write_bytes(files["a"].read_bytes())
    (tmp_path / "link.png").symlink_to(files["a"])  # -o through a link to input A
    names = {"{a}": str(files["a"]), "{b}": str(files["b"]), "{video}": str(files["video"])}
    argv = [names.get(item, item.replace("{dir}", str(tmp_path))) for item in argv]
    before = _listing(tmp_path)
    _refused(capsys, [*argv, *model_args], message)
    assert _listing(tmp_path) == before  # every input byte-identical, nothing new (no temporary file)


# -- 2. outputs get the mode of a plain open() under the umask ----------------------------------
@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_every_output_gets_the_plain_open_mode(tmp_path, files, model_args, umask, capsys):
    expected = 0o666 & ~umask  # 0644 under umask 022: what open(path, "w") gives
    a, b, video = map(str, (files["a"], files["b"], files["video"]))
    out = tmp_path / "out"
    out.mkdir()
    runs = [
        ["extract", a, "-o", f"{out}/f.npz"],
        ["extract", a, "-o", f"{out}/f.safetensors"],
        ["match", a, b, "-o", f"{out}/m.png", "--json", f"{out}/m.json"],
        ["pca", a, b, "-o", f"{out}/fig.png", "--save-pca", f"{out}/p.npz", "--save-features", f"{out}/r.npz"],
        ["pca", a, b, "--out-dir", f"{out}/panels"],
        ["pca", video, "-o", f"{out}/clip_pca.mp4", "--save-pca", f"{out}/v.npz", "--fit-frames", "2"],
        ["track", video, "--point", "30,30", "-o", f"{out}/t.mp4", "--json", f"{out}/t.json", "--csv", f"{out}/t.csv"],
    ]
    for argv in runs:
        assert main([*argv, *model_args, "--quiet"]) == 0, capsys.readouterr().err
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(written) == 14
    assert {p.name: oct(_mode(p)) for p in written} == {p.name: oct(expected) for p in written}


def test_writers_outside_the_commands_get_the_plain_open_mode(tmp_path, umask):
    """The library's own writers (a video sink, a saved PCA, a feature file) and the app's files."""
    import torch

    from conftest import random_vit
    from dinofeat.app import AppSession
    from dinofeat.features.extractor import Extractor
    from dinofeat.features.files import save_features
    from dinofeat.io.video import VideoWriter
    from dinofeat.pca import FeaturePCA

    expected = 0o666 & ~umask
    with VideoWriter(tmp_path / "v.mp4", fps=5, size_wh=(W, H)) as sink:
        sink.write(_scene(0))
    pca = FeaturePCA.fit(torch.randn(4, 4, 16, generator=torch.Generator().manual_seed(0)), foreground=None)
    pca.save(tmp_path / "p.npz")
    extractor = Extractor(random_vit("dinov2_vits14", depth=1), resolution=56, device="cpu", precision="fp32")
    save_features(tmp_path / "f.npz", extractor.extract_arrays([_scene(0)]))
    for name in ("v.mp4", "p.npz", "f.npz"):
        assert oct(_mode(tmp_path / name)) == oct(expected), name

    session = AppSession(extractor, workdir=tmp_path / "work")
    match = session.match(_scene(0), _scene(0), [[20.0, 20.0]])
    view = session.pca([_scene(0), _scene(1)], names=["a.png", "b.png"])
    for path in (match.json_path, view.figure_path, view.pca_path):
        assert oct(_mode(path)) == oct(expected), path.name


# -- 3. --out-dir is made (parents too), unless something else is in the way ---------------------
def test_out_dir_is_created_with_its_parents(tmp_path, files, model_args, capsys):
    folder = tmp_path / "new" / "deeper" / "out"
    assert main(["pca", str(files["a"]), str(files["b"]), "--out-dir", str(folder), *model_args]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["a_pca.png", "b_pca.png"]
    video_folder = tmp_path / "videos" / "out"
    argv = ["pca", str(files["video"]), "--out-dir", str(video_folder), "--fit-frames", "2", *model_args]
    assert main(argv) == 0
    assert [p.name for p in video_folder.iterdir()] == ["clip_pca.mp4"]


def test_every_output_option_makes_its_folder_too(tmp_path, files, model_args):
    a, b, video, new = str(files["a"]), str(files["b"]), str(files["video"]), tmp_path / "new" / "sub"
    runs = [
        ["extract", a, "-o", f"{new}/e/f.npz"],
        ["match", a, b, "-o", f"{new}/m/m.png", "--json", f"{new}/mj/m.json"],
        ["pca", a, b, "-o", f"{new}/p/p.png", "--save-pca", f"{new}/pp/p.npz"],
        ["pca", video, "-o", f"{new}/v/v.mp4"],
        [
            "track",
            video,
            "--point",
            "9,9",
            "-o",
            f"{new}/t/t.mp4",
            "--json",
            f"{new}/tj/t.json",
            "--csv",
            f"{new}/tc/t.csv",
        ],
    ]
    for argv in runs:
        assert main([*argv, *model_args, "--quiet"]) == 0, argv
    made = {str(p.relative_to(new)) for p in new.rglob("*") if p.is_file()}
    assert made == {
        "e/f.npz",
        "m/m.png",
        "mj/m.json",
        "p/p.png",
        "pp/p.npz",
        "v/v.mp4",
        "t/t.mp4",
        "tj/t.json",
        "tc/t.csv",
    }


def test_out_dir_that_is_a_file_is_refused(tmp_path, files, model_args, capsys):
    (tmp_path / "taken").write_text("a file, not a folder\n")
    before = _listing(tmp_path)
    _refused(
        capsys,
        ["pca", str(files["a"]), "--out-dir", str(tmp_path / "taken"), *model_args],
        f"--out-dir {tmp_path / 'taken'} exists and is not a folder",
    )
    _refused(capsys, ["pca", str(files["a"]), "--out-dir", str(tmp_path / "taken" / "below"), *model_args], "--out-dir")
    assert _listing(tmp_path) == before


# -- 6. every output option checks its suffix ---------------------------------------------------
SUFFIXES = [
    (["extract", "{a}", "-o", "{dir}/f.csv"], "output must end in .npz or .safetensors"),
    (["extract", "{a}", "-o", "{dir}/f"], "output must end in .npz or .safetensors"),
    (["match", "{a}", "{b}", "-o", "{dir}/m.json"], "the picture (-o) must end in"),
    (["match", "{a}", "{b}", "-o", "{dir}/m.gif"], "the picture (-o) must end in"),
    (["match", "{a}", "{b}", "--json", "{dir}/m.csv"], "--json must end in .json"),
    (["match", "{a}", "{b}", "--json", "{dir}/m.png"], "--json must end in .json"),
    (["pca", "{a}", "-o", "{dir}/fig.npz"], "-o for images must end in"),
    (["pca", "{a}", "-o", "{dir}/fig.mp4"], "-o for images must end in"),
    (["pca", "{a}", "--save-pca", "{dir}/p.json"], "--save-pca must end in .npz"),
    (["pca", "{a}", "--save-features", "{dir}/f.safetensors"], "--save-features must end in .npz"),
    (["pca", "{video}", "-o", "{dir}/v.png"], "-o for a video must end in"),
    (["pca", "{video}", "-o", "{dir}/v.mp4", "--save-pca", "{dir}/v.pca"], "--save-pca must end in .npz"),
    (["track", "{video}", "--point", "9,9", "-o", "{dir}/t.json"], "output video must end in"),
    (["track", "{video}", "--point", "9,9", "--json", "{dir}/t.csv"], "--json must end in .json"),
    (["track", "{video}", "--point", "9,9", "--csv", "{dir}/t.json"], "--csv must end in .csv"),
]


@pytest.mark.parametrize("argv, message", SUFFIXES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in SUFFIXES])
def test_every_output_option_checks_its_suffix(tmp_path, files, model_args, capsys, argv, message):
    names = {"{a}": str(files["a"]), "{b}": str(files["b"]), "{video}": str(files["video"])}
    argv = [names.get(item, item.replace("{dir}", str(tmp_path))) for item in argv]
    before = _listing(tmp_path)
    _refused(capsys, [*argv, *model_args], message)
    assert _listing(tmp_path) == before


def test_suffixes_are_compared_case_blind(tmp_path, files, model_args):
    assert main(["extract", str(files["a"]), "-o", str(tmp_path / "F.NPZ"), *model_args, "--quiet"]) == 0
    assert (tmp_path / "F.NPZ").is_file()


# -- 4. unreadable weights and PCA files: what the file is not, never advice to load it unsafely --
class _RunsCode:
    """Pickled, it would make a folder when loaded: proof that no pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _bad_file(kind: str, folder: Path, image: Path) -> Path:
    """A file that is not what the option expects, as a user might pass by mistake."""
    import pickle
    import zipfile

    import torch

    path = folder / {"image": "photo.png", "text": "notes.pth", "zip": "other.zip"}.get(kind, f"{kind}.pth")
    if kind == "image":
        path.write_bytes(image.read_bytes())
    elif kind == "text":
        path.write_text("these are not weights\n" * 10)
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif kind == "npz":
        np.savez(path.with_suffix(".npz"), a=np.zeros(3))
        path = path.with_suffix(".npz")
    elif kind == "code":
        path.write_bytes(pickle.dumps({"weights": _RunsCode(folder / "code-ran")}))
    elif kind in ("module", "truncated"):
        torch.save({"layer": torch.nn.Linear(2, 2)} if kind == "module" else {"w": torch.zeros(1000)}, path)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:300])
    elif kind == "object_npz":
        path = path.with_suffix(".npz")
        np.savez(path, meta=np.array([{"a": 1}], dtype=object))
    elif kind == "png_safetensors":
        path = path.with_suffix(".safetensors")
        path.write_bytes(image.read_bytes())
    return path


UNSAFE_ADVICE = ("weights_only", "will likely succeed", "allow_pickle", "trust", "arbitrary code")


@pytest.mark.parametrize(
    "kind, what",
    [
        ("image", "it is a PNG image"),
        ("text", "it is a text file"),
        ("zip", "it is a zip archive of other files"),
        ("npz", "it is a NumPy .npz archive"),
        ("code", "pickled Python objects other than tensors"),
        ("module", "pickled Python objects other than tensors"),
        ("truncated", "truncated or damaged"),
        ("png_safetensors", "it is a PNG image"),
    ],
)
def test_weights_that_are_no_checkpoint_say_what_is_expected(tmp_path, files, capsys, kind, what):
    bad = _bad_file(kind, tmp_path, files["a"])
    before = _listing(tmp_path)
    argv = ["extract", str(files["a"]), "-o", str(tmp_path / "f.npz"), "--weights", str(bad), "--device", "cpu"]
    err = _refused(capsys, argv, "is not a PyTorch checkpoint or safetensors file")
    assert what in err and "expected Meta's .pth state dict, a .safetensors file or a Hugging Face model folder" in err
    assert not any(advice in err for advice in UNSAFE_ADVICE), err
    assert not (tmp_path / "code-ran").exists()  # the pickled call never ran
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("kind", ["image", "text", "zip", "npz", "code", "truncated", "object_npz"])
def test_pca_files_that_are_not_ours_say_so(tmp_path, files, model_args, capsys, kind):
    bad = _bad_file(kind, tmp_path, files["a"])
    before = _listing(tmp_path)
    argv = ["pca", str(files["a"]), "-o", str(tmp_path / "out.png"), "--load-pca", str(bad), *model_args]
    err = _refused(capsys, argv, "is not a dinofeat PCA file (expected an .npz written by `dinofeat pca --save-pca`)")
    assert not any(advice in err for advice in UNSAFE_ADVICE), err
    assert not (tmp_path / "code-ran").exists()
    assert _listing(tmp_path) == before


# -- 5. every numeric option has a range, checked once, named in a one-line error ----------------
#: The command line of each command, valid but for the option appended to it.
BASE = {
    "extract": ["extract", "{a}", "-o", "{dir}/o.npz"],
    "match": ["match", "{a}", "{b}", "-o", "{dir}/o.png", "--json", "{dir}/o.json"],
    "pca": ["pca", "{a}", "-o", "{dir}/o.png", "--save-pca", "{dir}/o.npz"],
    "pca-video": ["pca", "{video}", "-o", "{dir}/o.mp4"],
    "track": ["track", "{video}", "--point", "9,9", "-o", "{dir}/o.mp4", "--json", "{dir}/o.json"],
    "segment": ["segment", "{video}", "--point", "0,9,9", "-o", "{dir}/o.mp4", "--json", "{dir}/o.json"],
    "app": ["app"],
}
MODEL_OPTIONS = [
    ("--resolution", ["0"]),
    ("--resolution", ["-3"]),
    ("--resolution", ["1.5"]),
    ("--resolution", ["10"]),  # below the 14-pixel patch
    ("--max-size", ["0"]),
    ("--max-size", ["5"]),  # below the patch: one patch, silently
    ("--stride", ["0"]),
    ("--stride", ["15"]),  # above the patch size
    ("--batch-size", ["0"]),
    ("--layer", ["12"]),  # the model has 12 blocks
    ("--layer", ["-13"]),
]
OUT_OF_RANGE = [
    *[("extract", flag, value) for flag, value in MODEL_OPTIONS],
    *[(command, "--resolution", ["0"]) for command in ("match", "pca", "pca-video", "track", "app")],
    *[(command, "--batch-size", ["-2"]) for command in ("match", "pca", "track", "app")],
    ("segment", "--resolution", ["0"]),
    ("segment", "--context-frames", ["-1"]),
    ("segment", "--top-k", ["0"]),
    ("segment", "--radius", ["-1"]),
    ("segment", "--temperature", ["0"]),
    ("segment", "--click-threshold", ["1.5"]),
    ("match", "--grid", ["0"]),
    ("match", "--grid", ["100000"]),  # 10^10 points: a crash, not a grid
    ("match", "--auto", ["0"]),
    ("match", "--pca-dim", ["0"]),
    ("match", "--pca-dim", ["9999"]),  # more than the features' 384 dimensions
    ("match", "--ratio", ["0"]),
    ("match", "--ratio", ["1.5"]),
    ("match", "--ratio", ["-1"]),
    ("match", "--ransac-threshold", ["0"]),
    ("match", "--ransac-threshold", ["-2"]),
    ("match", "--ransac-threshold", ["inf"]),
    ("match", "--height", ["8"]),
    ("match", "--height", ["20000"]),
    ("pca", "--components", ["0"]),
    ("pca", "--foreground", ["1.5"]),
    ("pca", "--foreground", ["-0.1"]),
    ("pca", "--percentiles", ["-1", "99"]),
    ("pca", "--percentiles", ["1", "101"]),
    ("pca", "--percentiles", ["60", "40"]),
    ("pca", "--overlay", ["1.5"]),
    ("pca", "--overlay", ["-0.5"]),
    ("pca", "--columns", ["0"]),
    ("pca-video", "--fit-frames", ["0"]),
    ("pca-video", "--start", ["-1"]),
    ("pca-video", "--max-frames", ["0"]),
    ("pca-video", "--every", ["0"]),
    ("track", "--grid", ["0"]),
    ("track", "--grid", ["5000"]),
    ("track", "--start", ["-1"]),
    ("track", "--max-frames", ["0"]),
    ("track", "--every", ["0"]),
    ("track", "--window", ["0"]),
    ("track", "--window", ["-3"]),
    ("track", "--window", ["inf"]),
    ("track", "--min-score", ["2"]),
    ("track", "--min-score", ["-1.5"]),
    ("track", "--cycle-tolerance", ["0"]),
    ("track", "--cycle-tolerance", ["-1"]),
    ("track", "--trail", ["-1"]),
    ("app", "--port", ["0"]),
    ("app", "--port", ["70000"]),
    ("app", "--max-upload-mb", ["0"]),
    ("app", "--max-upload-mb", ["-1"]),
    ("app", "--max-image-mp", ["0"]),
    ("app", "--max-frames", ["0"]),
]


@pytest.mark.parametrize(
    "command, flag, value", OUT_OF_RANGE, ids=[f"{c} {f} {' '.join(v)}" for c, f, v in OUT_OF_RANGE]
)
def test_every_out_of_range_value_is_one_line_naming_the_option(
    tmp_path, files, model_args, capsys, monkeypatch, command, flag, value
):
    import dinofeat.app

    # the app would start a server if a value got through: it must not get that far
    monkeypatch.setattr(dinofeat.app, "launch", lambda *a, **k: pytest.fail("the app started"))
    names = {"{a}": str(files["a"]), "{b}": str(files["b"]), "{video}": str(files["video"])}
    argv = [names.get(item, item.replace("{dir}", str(tmp_path))) for item in BASE[command]]
    before = _listing(tmp_path)
    err = _refused(capsys, [*argv, *model_args, flag, *value], flag)  # the last --resolution counts
    assert err.startswith(f"dinofeat {BASE[command][0]}: error: "), err
    assert _listing(tmp_path) == before  # no output, no temporary file


def test_the_range_is_in_the_message():
    """Python callers see the field's name (the command line names its flag: see the tests through main above)."""
    from dinofeat.errors import InputError
    from dinofeat.options import MatchOptions, TrackerOptions

    with pytest.raises(InputError, match=r"^min_score must be a number between -1 and 1, got 2$"):
        TrackerOptions(min_score=2)
    with pytest.raises(InputError, match=r"^window must be a positive number, got inf$"):
        TrackerOptions(window=float("inf"))
    with pytest.raises(InputError, match=r"^grid must be an integer between 1 and 1000, got 5000$"):
        MatchOptions(grid=5000)


#: (model, option, the one-line error): options that need the model's shape, checked against its spec.
BEFORE_WEIGHTS = [
    ("dinov2_vits14", ["--stride", "20"], "--stride must be between 1 and the patch size 14, got 20"),
    ("dinov2_vits14", ["--layer", "30"], "--layer 30 does not exist: the model has 12 blocks (0..11 or -1..-12)"),
    ("dinov2_vits14", ["--resolution", "10"], "--resolution must be at least the patch size (14), got 10"),
    ("dinov2_vits14", ["--max-size", "5"], "--max-size must be at least the patch size (14), got 5"),
    ("dinov3_vits16", ["--stride", "17"], "--stride must be between 1 and the patch size 16, got 17"),
    ("dinov3_vits16", ["--resolution", "15"], "--resolution must be at least the patch size (16), got 15"),
    ("dinov2_vitl14", ["--layer", "-25"], "--layer -25 does not exist: the model has 24 blocks (0..23 or -1..-24)"),
]


@pytest.mark.parametrize(
    "model, option, message", BEFORE_WEIGHTS, ids=[f"{m} {' '.join(o)}" for m, o, _ in BEFORE_WEIGHTS]
)
def test_model_options_are_refused_before_any_weights_load(
    tmp_path, files, capsys, monkeypatch, model, option, message
):
    """No weights anywhere and no network: a bad option is its own error, not "no weights found"
    (with a network, the weights would have been downloaded first)."""
    import dinofeat.models.weights

    for name in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(dinofeat.models.weights, "find_weights", lambda spec: pytest.fail("weights were looked for"))
    argv = ["extract", str(files["a"]), "-o", str(tmp_path / "o.npz"), "--model", model, "--device", "cpu", *option]
    err = _refused(capsys, argv, message)
    assert err == f"dinofeat extract: error: {message}\n"


def test_app_controls_are_checked_by_the_same_options(tmp_path, files):
    """Values the page's sliders and boxes send go through the same checks (a typed-in -5 radius)."""
    gr = pytest.importorskip("gradio")
    from conftest import random_vit
    from dinofeat.app import AppSession, handlers
    from dinofeat.features.extractor import Extractor

    extractor = Extractor(random_vit("dinov2_vits14", depth=1), resolution=56, device="cpu", precision="fp32")
    session = AppSession(extractor, workdir=tmp_path / "work")
    view = session.open_video(files["video"])
    for radius, score, trail, flag in ((-5, 0.5, 12, "--window"), (0, 1.5, 12, "--min-score"), (0, 0.5, -1, "--trail")):
        with pytest.raises(gr.Error, match=flag):
            handlers.track_run(session, view, [[0, 9.0, 9.0]], radius, score, trail, None)
    image = str(files["a"])
    for foreground, threshold, components, opacity, flag in (
        ("manual", 1.5, 3, 0.6, "--foreground"),
        ("otsu", 0.5, 3, 1.5, "--overlay"),
    ):
        with pytest.raises(gr.Error, match=flag):
            handlers.pca_run(session, [image], foreground, threshold, components, "overlay", opacity, False, None)


# -- 7. errors point where the user looks: the line of the points file, the --port option ---------
def test_points_file_errors_give_the_line_as_the_file_shows_it(tmp_path, files, model_args, capsys):
    (tmp_path / "points.csv").write_text("x,y\n\n10,20\n\n  \n30,abc\n")  # header, blank lines: line 6 is bad
    (tmp_path / "plain.csv").write_text("10,20\n\n5,6,7,8\n")
    (tmp_path / "points.json").write_text("[\n  [10, 20],\n  [30, 40],\n  [50]\n]\n")  # items count from 1
    (tmp_path / "frames.csv").write_text("t,x,y\n0,10,20\n\n1.5,10,20\n")
    before = _listing(tmp_path)
    match = ["match", str(files["a"]), str(files["b"]), "--json", str(tmp_path / "m.json"), *model_args]
    track = ["track", str(files["video"]), "--json", str(tmp_path / "t.json"), *model_args]
    for argv, name, message in (
        (match, "points.csv", "line 6 is not a finite x, y pair: ['30', 'abc']"),
        (match, "plain.csv", "line 3 is not a finite x, y pair"),
        (match, "points.json", "item 3 is not a finite x, y pair: [50]"),
        (track, "frames.csv", "line 4: frame index must be a non-negative integer, got 1.5"),
    ):
        _refused(capsys, [*argv, "--points-file", str(tmp_path / name)], f"points file {tmp_path / name}: {message}")
    assert _listing(tmp_path) == before


def test_busy_port_names_the_option(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gradio")
    import socket

    import dinofeat.app

    monkeypatch.setattr(dinofeat.app, "launch", lambda *a, **k: pytest.fail("the app started"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # the check comes before the model loads: a missing checkpoint is not what the user hears about
        err = _refused(capsys, ["app", "--port", str(port), "--weights", str(tmp_path / "none.pth")], "--port")
    assert f"cannot listen on 127.0.0.1:{port}" in err and "GRADIO_SERVER_PORT" not in err


# -- 8. a resolution capped by --max-size is announced, once -----------------------------------
CAP = "--resolution 4000 asked for, but the longer side is capped at --max-size 112: using 112x84"


def test_a_capped_resolution_is_announced_once(tmp_path, files, model_args, capsys):
    capped = [*model_args, "--resolution", "4000", "--max-size", "112"]
    a, b = str(files["a"]), str(files["b"])
    assert main(["extract", a, b, a, "-o", str(tmp_path / "f.npz"), *capped, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dinofeat extract: {CAP}"), err
    assert "for this 70x56 image (raise --max-size to go higher); said once" in err
    with np.load(tmp_path / "f.npz") as f:
        assert tuple(f["processed_size_0"]) == (112, 84)  # what the line says is what was used

    video = ["track", str(files["video"]), "--point", "9,9", "--json", str(tmp_path / "t.json"), "--quiet"]
    assert main([*video, *capped, "--batch-size", "2"]) == 0  # two forward passes, four frames
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dinofeat track: {CAP}"), err

    assert main(["extract", a, "-o", str(tmp_path / "g.npz"), *model_args, "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # nothing capped, nothing said


def test_the_cap_is_said_once_per_setting_by_the_library(caplog, files):
    from conftest import random_vit
    from dinofeat.features.extractor import Extractor
    from dinofeat.io.images import load_image

    image = load_image(files["a"])
    extractor = Extractor(random_vit("dinov2_vits14", depth=1), resolution=400, max_size=98, device="cpu")
    with caplog.at_level("WARNING", logger="dinofeat"):
        extractor.extract_arrays([image, image[:, :60]])  # two sizes, both capped: one line
        extractor.extract_arrays([image])
        extractor.with_options(batch_size=2).extract_arrays([image])  # a copy with the same cap
        extractor.with_options(max_size=84).extract_arrays([image])  # another cap: said again
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 2 and "max_size=98" in notes[0] and "max_size=84" in notes[1]  # Python sees fields


def test_a_small_video_enlarged_for_the_model_is_said_once(tmp_path, files, model_args, capsys):
    video = ["track", str(files["video"]), "--point", "9,9", "--json", str(tmp_path / "t.json"), "--quiet"]
    assert main([*video, *model_args, "--resolution", "112", "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "enlarging 70x56 to 140x112 for the model" in err, err
    assert "(--resolution 112; --resolution 56 keeps the input's size, 4x fewer pixels); said once" in err


# -- 9. a forward pass that would not fit in memory is refused, with the estimate ----------------
def test_a_forward_pass_too_big_for_memory_is_refused(tmp_path, files, model_args, capsys, monkeypatch):
    import dinofeat.runtime.memory

    monkeypatch.setattr(dinofeat.runtime.memory, "available_memory", lambda device: 100 * 1024)  # 100 KB "free"
    a, b = str(files["a"]), str(files["b"])
    before = _listing(tmp_path)
    extract = ["extract", a, b, "-o", str(tmp_path / "f.npz"), "--batch-size", "2", *model_args]
    err = _refused(capsys, extract, "would need about")
    assert "a forward pass of 2 images at 70x56 (21 tokens each)" in err
    assert "but only 0.1 MB is available on cpu; lower --max-size or --resolution" in err
    assert "or --batch-size (one image at a time needs about" in err
    assert "of loaded weights; an estimate" in err
    video = ["track", str(files["video"]), "--point", "9,9", "--json", str(tmp_path / "t.json"), *model_args]
    _refused(capsys, [*video, "--batch-size", "1"], "lower --max-size or --resolution")
    assert _listing(tmp_path) == before  # refused before the forward pass: nothing written

    monkeypatch.setattr(dinofeat.runtime.memory, "available_memory", lambda device: 64 * 2**30)
    assert main(["extract", a, b, "-o", str(tmp_path / "f.npz"), *model_args, "--quiet"]) == 0


def test_the_estimate_counts_attention_matrices_only_when_the_kernel_builds_them(monkeypatch):
    import torch

    import dinofeat.runtime.memory
    from conftest import random_vit
    from dinofeat.runtime.memory import forward_memory

    vit = random_vit("dinov2_vits14", depth=1)
    cpu = torch.device("cpu")
    monkeypatch.setattr(dinofeat.runtime.memory, "attention_materialised", lambda *args: False)
    fused = forward_memory(vit, 2, (448, 448), dtype=torch.float32, device=cpu)
    monkeypatch.setattr(dinofeat.runtime.memory, "attention_materialised", lambda *args: True)
    math = forward_memory(vit, 2, (448, 448), dtype=torch.float32, device=cpu)
    assert fused.attention_bytes == 0 and fused.activation_bytes == math.activation_bytes
    assert math.attention_bytes == 2 * 2 * 6 * 1025**2 * 4  # scores and softmax, batch x heads x N x N, fp32
    assert fused.weight_bytes == sum(p.numel() * 4 for p in vit.parameters()) + sum(
        b.numel() * b.element_size() for b in vit.buffers()
    )


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov3_vits16"])
def test_each_batch_makes_one_estimate_and_the_weights_are_counted_once(monkeypatch, name):
    """The weight bytes are summed once per extractor and each batch makes one estimate, whose
    numbers (and its batch-of-one figure) are those forward_memory gives."""
    import numpy as np
    import torch

    import dinofeat.features.extractor
    import dinofeat.runtime.memory
    from conftest import random_vit
    from dinofeat.features.extractor import Extractor
    from dinofeat.runtime.memory import forward_memory

    vit = random_vit(name, depth=1)
    extractor = Extractor(vit, resolution=32, device="cpu", precision="fp32", batch_size=2)
    estimates, sums = [], []
    estimate, summed = dinofeat.features.extractor.forward_memory, getattr(dinofeat.runtime.memory, "model_bytes", None)
    monkeypatch.setattr(
        dinofeat.features.extractor, "forward_memory", lambda *a, **k: estimates.append(a[1]) or estimate(*a, **k)
    )
    monkeypatch.setattr(
        dinofeat.runtime.memory, "model_bytes", lambda model: sums.append(1) or summed(model), raising=False
    )
    monkeypatch.setattr(vit, "parameters", lambda *a, **k: sums.append(1) or torch.nn.Module.parameters(vit, *a, **k))
    extractor.extract_arrays([np.zeros((32, 48, 3), np.uint8)] * 5)  # batches of 2, 2 and 1
    assert estimates == [2, 2, 1] and sums == []
    monkeypatch.undo()
    cpu = torch.device("cpu")
    need = extractor.memory_needed(2, (48, 32))
    assert need == forward_memory(vit, 2, (48, 32), dtype=torch.float32, device=cpu)
    assert need.one_image() == forward_memory(vit, 1, (48, 32), dtype=torch.float32, device=cpu)


def test_the_estimate_is_close_to_what_a_forward_pass_takes():
    """Peak resident memory of a real forward pass (in a fresh process; Linux's peak-RSS reset)
    against the estimate."""
    import subprocess
    import sys

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to measure a peak")
    code = """
import numpy as np
from dinofeat.features.extractor import Extractor
from dinofeat.models.registry import get_spec
from dinofeat.models.build import build_model

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

ex = Extractor(build_model(get_spec("dinov2_vits14"), depth=4).eval(), resolution=700, device="cpu", precision="fp32")
image = np.zeros((700, 700, 3), np.uint8)
need = ex.memory_needed(1, ex.processed_size((700, 700)))
open("/proc/self/clear_refs", "w").write("5")  # the peak starts again from here
before = status("VmRSS:")
ex._run_model([image])
print(need.total / (status("VmHWM:") - before))
"""
    # big blocks always mmapped: resident memory then follows the live tensors, not glibc's moving mmap
    # threshold, which made the same pass peak anywhere from 114 to 150 MB (an estimate ratio of 0.66-0.91)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert 0.7 < float(done.stdout) < 1.4, done.stdout


# -- 10. progress within a forward pass, and Ctrl-C between blocks ------------------------------
@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov3_vits16"])
def test_the_block_loop_reports_each_block(name):
    import torch

    from conftest import random_vit

    vit = random_vit(name, depth=3)
    seen = []
    with torch.inference_mode():
        vit.forward_features(torch.zeros(1, 3, 32, 48), layers=(1,), on_block=lambda *step: seen.append(step))
    assert seen == [(1, 2), (2, 2)]  # blocks after the deepest requested layer do not run


def test_the_extractor_reports_block_progress_per_forward_pass(files):
    import contextlib

    from conftest import random_vit
    from dinofeat.features.extractor import Extractor
    from dinofeat.io.images import load_image

    passes = []

    @contextlib.contextmanager
    def block_progress(what):
        passes.append([what])
        yield lambda done, total: passes[-1].append((done, total))

    vit = random_vit("dinov2_vits14", depth=3)
    extractor = Extractor(vit, resolution=56, device="cpu", batch_size=2, block_progress=block_progress)
    image = load_image(files["a"])
    extractor.extract_arrays([image, image, image])
    assert passes == [
        ["the model on 2 images of 70x56", (1, 3), (2, 3), (3, 3)],
        ["the model on 70x56", (1, 3), (2, 3), (3, 3)],
    ]
    assert extractor.with_options(resolution=70).block_progress is block_progress


@pytest.fixture(params=["inline", "helper thread"])
def forward_thread(request, monkeypatch):
    """Run forward passes in the calling thread, or (as big ones do) in the helper thread."""
    import dinofeat.features.extractor

    if request.param == "helper thread":
        monkeypatch.setattr(dinofeat.features.extractor, "RESPONSIVE_BLOCK_FLOPS", 0)
    return request.param


def _interrupt_at_block(monkeypatch, block: int, then=None):
    """Make the CLI's block progress (a bar, or a note in the frame bar) raise KeyboardInterrupt
    (or call ``then``) at ``block``."""
    from dinofeat.cli.common import _BlockNote
    from dinofeat.runtime.progress import TqdmProgress

    def interrupting(plain, blocks=lambda self: True):
        def call(self, done, total):
            if blocks(self) and done == block:
                if then is None:
                    raise KeyboardInterrupt
                then()
            plain(self, done, total)

        return call

    monkeypatch.setattr(TqdmProgress, "__call__", interrupting(TqdmProgress.__call__, lambda bar: bar.unit == "block"))
    monkeypatch.setattr(_BlockNote, "__call__", interrupting(_BlockNote.__call__))


@pytest.mark.parametrize("command", ["extract", "match", "pca", "track", "segment"])
def test_an_interrupt_between_blocks_exits_130_and_writes_nothing(
    tmp_path, files, model_args, capsys, monkeypatch, forward_thread, command
):
    _interrupt_at_block(monkeypatch, 5)
    a, b, video = str(files["a"]), str(files["b"]), str(files["video"])
    argv = {
        "extract": ["extract", a, "-o", f"{tmp_path}/f.npz"],
        "match": ["match", a, b, "-o", f"{tmp_path}/m.png", "--json", f"{tmp_path}/m.json"],
        "pca": ["pca", a, b, "-o", f"{tmp_path}/p.png", "--save-pca", f"{tmp_path}/p.npz"],
        "track": ["track", video, "--point", "9,9", "-o", f"{tmp_path}/t.mp4", "--csv", f"{tmp_path}/t.csv"],
        "segment": ["segment", video, "--point", "0,9,9", "-o", f"{tmp_path}/s.mp4", "--json", f"{tmp_path}/s.json"],
    }[command]
    before = _listing(tmp_path)
    assert main([*argv, *model_args]) == 130
    assert capsys.readouterr().err == f"dinofeat {command}: interrupted\n"
    assert _listing(tmp_path) == before  # no output, no half-written or temporary file


def test_ctrl_c_is_answered_at_once_while_a_block_is_slow(tmp_path, files, model_args, capsys, monkeypatch):
    """A block that takes seconds (a big model on a big image) does not hold up Ctrl-C: the pass
    runs in the helper thread, the main thread answers the signal, the helper stops after its block.
    The block ends only when the test lets it (after ``main`` returns), so a 130 from ``main``
    with the block still running is an answer given during the block, with no clock involved."""
    import signal
    import threading

    import dinofeat.features.extractor

    monkeypatch.setattr(dinofeat.features.extractor, "RESPONSIVE_BLOCK_FLOPS", 0)
    release, pressed, block_ended = threading.Event(), [], threading.Event()

    def slow_block():
        if not pressed:
            pressed.append(threading.current_thread().name)
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C during this block...
            release.wait(30)  # ...which takes up to 30 s
            block_ended.set()

    _interrupt_at_block(monkeypatch, 2, then=slow_block)
    try:
        code = main(["extract", str(files["a"]), "-o", str(tmp_path / "f.npz"), *model_args])
        answered_during_the_block = not block_ended.is_set()
    finally:
        release.set()
    assert (code, answered_during_the_block) == (130, True)
    assert pressed == ["dinofeat-model"]
    assert capsys.readouterr().err == "dinofeat extract: interrupted\n"
    assert not (tmp_path / "f.npz").exists()
    # the helper thread stopped after that block and takes the next pass
    assert main(["extract", str(files["a"]), "-o", str(tmp_path / "f.npz"), *model_args, "--quiet"]) == 0


def test_a_quiet_command_draws_no_block_bar(tmp_path, files, model_args, monkeypatch):
    from dinofeat.runtime.progress import TqdmProgress

    made = []
    plain = TqdmProgress.__init__

    def init(self, *args, **kwargs):
        plain(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(TqdmProgress, "__init__", init)
    for quiet in ([], ["--quiet"]):
        made.clear()
        assert main(["extract", str(files["a"]), "-o", str(tmp_path / "f.npz"), *model_args, *quiet]) == 0
        bars = [bar for bar in made if bar.unit == "block"]
        assert [(bar.desc, bar.enabled, bar.leave, bar.delay > 0) for bar in bars] == [
            ("running the model on 70x56", not quiet, False, True)
        ]


@pytest.mark.parametrize("command", ["track", "pca"])
def test_a_video_command_shows_the_blocks_in_its_frame_bar(tmp_path, files, model_args, monkeypatch, command):
    import dinofeat.cli.common
    from dinofeat.runtime.progress import TqdmProgress

    monkeypatch.setattr(dinofeat.cli.common, "BLOCK_BAR_DELAY", 0.0)  # every pass counts as slow
    made, notes = [], []
    plain = TqdmProgress.__init__

    def init(self, *args, **kwargs):
        plain(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(TqdmProgress, "__init__", init)
    monkeypatch.setattr(TqdmProgress, "note", lambda self, text: notes.append((self.unit, text)))
    extra = (
        ["--point", "9,9", "--json", str(tmp_path / "t.json")]
        if command == "track"
        else ["-o", str(tmp_path / "p.mp4")]
    )
    assert main([command, str(files["video"]), *extra, *model_args]) == 0
    assert [bar.unit for bar in made] == ["frame"]  # one bar: no block bar under it
    assert ("frame", "running the model on 70x56: block 1/12") in notes
    assert notes[-1] == ("frame", "")  # cleared when the pass ends


def test_a_note_before_the_first_frame_makes_the_bar_and_the_total_follows(monkeypatch):
    import sys

    from dinofeat.runtime.progress import TqdmProgress

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with TqdmProgress("tracking", "frame") as bar:
        bar.note("running the model on 546x448: block 3/12")
        bar(1, 4)
        bar.note("")
        bar(4, 4)
    drawn = terminal.text.getvalue()
    assert "block 3/12" in drawn and drawn.split("\r")[-1].startswith("tracking: 100%")


# -- 11. one summary line per command, none with --quiet; bars end at 100 % ---------------------
def test_each_command_says_what_it_did_in_one_line(tmp_path, files, model_args, capsys):
    import re

    a, b, video = str(files["a"]), str(files["b"]), str(files["video"])
    runs = [
        (
            ["extract", a, b, "-o", f"{tmp_path}/f.npz"],
            "err",
            rf"^dinofeat extract: 2 images, 5x4 patches x 384 -> {tmp_path}/f.npz$",
        ),
        (
            ["match", a, b, "--grid", "3", "--mutual", "-o", f"{tmp_path}/m.png", "--json", f"{tmp_path}/m.json"],
            "err",
            rf"^dinofeat match: 9 matches, \d kept \(mutual\) -> {tmp_path}/m.png, {tmp_path}/m.json$",
        ),
        (["match", a, b, "--auto", "3"], "err", r"^dinofeat match: \d matches, \d kept -> standard output$"),
        (["pca", a, b, "-o", f"{tmp_path}/p.png"], "out", rf"^dinofeat pca: 2 images, .* -> {tmp_path}/p.png$"),
        (["pca", video, "-o", f"{tmp_path}/v.mp4"], "out", rf"^dinofeat pca: 4 frames at 8 fps -> {tmp_path}/v.mp4$"),
        (
            ["track", video, "--point", "9,9", "--point", "30,30", "--json", f"{tmp_path}/t.json"],
            "err",
            rf"^dinofeat track: 2 points x 4 frames, visible \d+% -> {tmp_path}/t.json$",
        ),
        (
            ["segment", video, "--point", "0,9,9", "--json", f"{tmp_path}/s.json"],
            "err",
            rf"^dinofeat segment: 4 frames, 1 object\(s\) \(mean area \d+ px\) -> {tmp_path}/s.json$",
        ),
    ]
    for argv, stream, line in runs:
        capsys.readouterr()
        assert main([*argv, *model_args]) == 0
        captured = capsys.readouterr()
        said = captured.err if stream == "err" else captured.out
        if argv[0] == "match" and "-o" not in argv:
            said = said.split("\n}\n")[-1]  # the JSON went to standard output, the summary to stderr
        assert re.match(line, said.rstrip("\n")) and said.count("\n") == 1, (argv, said)
        assert main([*argv, *model_args, "--quiet"]) == 0
        quiet = capsys.readouterr()
        assert quiet.err == "" and (quiet.out == "" or quiet.out.startswith("{")), (argv, quiet)


def test_counts_of_one_are_singular(tmp_path, files, model_args, capsys):
    a, b, video = str(files["a"]), str(files["b"]), str(files["video"])
    runs = [
        (["extract", a, "-o", f"{tmp_path}/f.npz"], "extract: 1 image, "),
        (["match", a, b, "--point", "9,9", "--json", f"{tmp_path}/m.json"], "match: 1 match, "),
        (["pca", a, "-o", f"{tmp_path}/p.png"], "pca: 1 image, "),
        (["track", video, "--point", "9,9", "--json", f"{tmp_path}/t.json"], "track: 1 point x 4 frames, "),
    ]
    for argv, said in runs:
        assert main([*argv, *model_args]) == 0
        captured = capsys.readouterr()
        assert f"dinofeat {said}" in captured.out + captured.err, argv


class _Terminal:
    """A stderr that says it is a terminal, so tqdm draws."""

    def __init__(self) -> None:
        import io

        self.text = io.StringIO()

    def write(self, text: str) -> int:
        return self.text.write(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_the_progress_bar_ends_at_100_percent(monkeypatch):
    import sys

    from dinofeat.runtime.progress import TqdmProgress

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with TqdmProgress("tracking", "frame") as bar:
        for done in (1, 2, 5):  # steps may be skipped; the bar shows where the work is
            bar(done, 5)
    final = terminal.text.getvalue().split("\r")[-1]
    assert final.startswith("tracking: 100%") and "5/5" in final and final.endswith("\n")  # left on screen

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with TqdmProgress("running the model", "block", delay=30, leave=False) as bar:
        for done in range(1, 13):
            bar(done, 12)
    assert terminal.text.getvalue().strip() == ""  # quicker than its delay: nothing drawn

    with TqdmProgress("quiet", "frame", enabled=False) as bar:
        bar(1, 2)
    assert terminal.text.getvalue().strip() == ""


# -- 12, 13. video frames: --every keeps the speed; pca takes --start and --max-frames too --------
def test_every_k_th_frame_plays_at_the_input_speed(tmp_path, files, model_args, capsys):
    from dinofeat.io.video import probe_video

    video = str(files["video"])  # 4 frames at 8 fps
    track = ["track", video, "--point", "9,9", "-o", f"{tmp_path}/t.mp4", "--every", "2", *model_args]
    assert main(track) == 0
    assert probe_video(tmp_path / "t.mp4").frames == 2 and probe_video(tmp_path / "t.mp4").fps == pytest.approx(4)
    assert main(["pca", video, "-o", f"{tmp_path}/p.mp4", "--every", "2", *model_args]) == 0
    assert probe_video(tmp_path / "p.mp4").frames == 2 and probe_video(tmp_path / "p.mp4").fps == pytest.approx(4)
    for command in ("track", "pca"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "fps / K" in " ".join(capsys.readouterr().out.split())


def test_pca_of_a_video_takes_start_and_max_frames(tmp_path, files, model_args, capsys):
    from dinofeat.io.video import probe_video, read_frames

    video = str(files["video"])
    argv = ["pca", video, "-o", f"{tmp_path}/p.mp4", "--pca-only", "--start", "1", "--max-frames", "2", *model_args]
    assert main([*argv, "--save-pca", f"{tmp_path}/p.npz"]) == 0
    assert probe_video(tmp_path / "p.mp4").frames == 2
    assert "2 frames at 8 fps" in capsys.readouterr().out
    # the same frames coloured with the PCA fitted on them: frames 1 and 2 of the clip
    whole = ["pca", video, "-o", f"{tmp_path}/all.mp4", "--pca-only", "--load-pca", f"{tmp_path}/p.npz", *model_args]
    assert main(whole) == 0
    ours = [frame.astype(int) for _, frame in read_frames(tmp_path / "p.mp4")]
    every = [frame.astype(int) for _, frame in read_frames(tmp_path / "all.mp4")]
    assert len(every) == 4
    assert max(np.abs(a - b).mean() for a, b in zip(ours, every[1:3])) < 3  # H.264 may wobble a little
    _refused(capsys, [*argv[: -len(model_args)], "--start", "9", *model_args], "past the end")


# -- 14, 15, 16. pictures that explain themselves -----------------------------------------------
def test_score_colours_come_with_a_colour_bar(tmp_path, model_args):
    from PIL import Image

    from dinofeat.drawing import draw_color_bar

    scene = save_png(tmp_path / "s.png", _scene(3))
    pictures = {}
    for color_by in ("index", "score"):
        out = tmp_path / f"{color_by}.png"
        argv = ["match", str(scene), str(scene), "--point", "4,52", "--color-by", color_by, "-o", str(out)]
        assert main([*argv, *model_args, "--quiet"]) == 0
        with Image.open(out) as picture:
            pictures[color_by] = np.asarray(picture).astype(float)
    bar = draw_color_bar(360 // 3).astype(float)  # the picture is 360 high (small images are scaled up)
    corner = {name: p[: bar.shape[0], -bar.shape[1] :] for name, p in pictures.items()}  # B's top-right
    # the legend is blended over B at 85 %: far from B's own pixels, within 15 % of the bar
    assert np.abs(corner["score"] - 0.85 * bar).max() <= 0.15 * 255 + 1
    assert np.abs(corner["index"] - 0.85 * bar).max() > 100


def test_a_joint_pca_figure_wraps_into_labelled_rows(tmp_path, model_args):
    from PIL import Image

    def scene(seed):  # plain grey with a textured middle: the corners (where labels go) are grey
        image = np.full((H, W, 3), 170, np.uint8)
        image[18:46, 20:50] = _scene(seed)[18:46, 20:50]
        return image

    paths = [str(save_png(tmp_path / f"photo_{i}.png", scene(i))) for i in range(5)]
    assert main(["pca", *paths, "-o", str(tmp_path / "fig.png"), "--pca-only", *model_args, "--quiet"]) == 0
    with Image.open(tmp_path / "fig.png") as picture:
        figure = np.asarray(picture)
    gap = 8
    assert figure.shape == (2 * H + gap, 3 * W + 2 * gap, 3)  # ceil(sqrt(5)) = 3 columns, 2 rows
    for i in range(5):
        row, column = divmod(i, 3)
        y, x = row * (H + gap), column * (W + gap)
        band = figure[y : y + 12, x : x + 40].astype(int)
        assert band.max() >= 200 and np.median(band) < 100, i  # light text on a dark band
    assert (figure[H + gap :, 2 * (W + gap) :] == 255).all()  # the last row's empty place


def test_a_vertical_layout_stacks_a_over_b(tmp_path, files, model_args):
    from PIL import Image

    from dinofeat.drawing import match_canvas_layout

    out = tmp_path / "v.png"
    argv = ["match", str(files["a"]), str(files["b"]), "--layout", "vertical", "--height", "200", "-o", str(out)]
    assert main([*argv, *model_args, "--quiet"]) == 0
    height, gap, scale_a, _, _ = match_canvas_layout((W, H), (W, H), 200)
    with Image.open(out) as picture:
        assert picture.size == (round(W * scale_a), 2 * height + gap)


def test_many_matches_are_drawn_thin_and_see_through():
    from types import SimpleNamespace

    from dinofeat.drawing import MANY_MATCHES, draw_matches

    white = np.full((100, 100, 3), 255, np.uint8)

    def darkest_on_lines(n):
        y = np.arange(n, dtype=float) * 2  # horizontal lines 7.2 px apart in the picture
        xy = np.stack([np.full(n, 50.0), y], axis=1)
        m = SimpleNamespace(source_xy=xy, target_xy=xy, scores=np.ones(n))
        picture = draw_matches(white, white, m).astype(int)
        middle = picture[:, 370:380]  # between A's dots and B's, where only lines are
        return (255 - middle).max(axis=(1, 2))[: round(7.2 * (n - 1))].max()

    few, many = darkest_on_lines(MANY_MATCHES), darkest_on_lines(MANY_MATCHES + 1)
    assert many < 0.7 * few  # semi-transparent (55 %) and thin


# -- 17. drawing functions take paths, PIL images and arrays; README snippets run ----------------
def test_every_drawing_function_takes_a_path_a_pil_image_or_an_array(files):
    from types import SimpleNamespace

    from PIL import Image

    from dinofeat import drawing

    path = files["a"]
    array = np.asarray(Image.open(path).convert("RGB"))
    forms = {"path": path, "str": str(path), "pil": Image.open(path), "array": array, "float": array / 255.0}
    xy = np.array([[10.0, 12.0], [40.0, 30.0]])
    matches = SimpleNamespace(source_xy=xy, target_xy=xy + 3, scores=np.array([0.9, 0.4]))
    heat = np.linspace(0, 1, H * W).reshape(H, W)
    colors = np.full((H, W, 3), 200, np.uint8)
    draws = {
        "draw_points": lambda image: drawing.draw_points(image, xy),
        "draw_matches": lambda image: drawing.draw_matches(image, image, matches, color_by="score"),
        "draw_heatmap": lambda image: drawing.draw_heatmap(image, heat, point_xy=(10, 10)),
        "draw_tracks": lambda image: drawing.draw_tracks(image, np.stack([xy, xy + 2]), np.ones((2, 2), bool)),
        "draw_pca_side_by_side": lambda image: drawing.draw_pca_side_by_side(image, colors),
        "draw_pca_side_by_side (colours)": lambda image: drawing.draw_pca_side_by_side(array, image),
        "draw_pca_overlay": lambda image: drawing.draw_pca_overlay(image, colors, 0.5),
        "TrailAnnotator.annotate": lambda image: drawing.TrailAnnotator(2, length=3).annotate(image, xy, [True, True]),
    }
    for name, draw in draws.items():
        expected = draw(array)
        assert expected.dtype == np.uint8 and expected.shape[2] == 3, name
        for form, image in forms.items():
            got = draw(image)
            if form == "float":  # float -> uint8 rounds: within one level
                assert np.abs(got.astype(int) - expected).max() <= 1, (name, form)
            else:
                np.testing.assert_array_equal(got, expected, err_msg=f"{name} from a {form}")
    np.testing.assert_array_equal(array, np.asarray(Image.open(path).convert("RGB")))  # inputs untouched
