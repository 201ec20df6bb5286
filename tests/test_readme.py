"""Every ```` ```python ```` block of README.md runs as written, so none can drift from the code.

The blocks are found in the README (a new section's block is tested without touching this file),
each runs in a fresh namespace in a temporary folder that holds the repository's ``examples/``
(so snippets name real files: ``examples/astronaut.jpg``, ``examples/pan.mp4``, ...) and is where
their outputs land; tracebacks give README line numbers. To keep the tests fast, the videos there
are cut to their first :data:`VIDEO_FRAMES` frames (snippets place points within them), and no
download happens: the weight search (``find_weights``) gives random weights of the model's real
shape with 2 blocks instead of 12, and the real loading code (key conversion, strict load) runs on
them. :func:`dinofeat.app.launch` is replaced by a stand-in, since a served page never returns.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import random_vit

ROOT = Path(__file__).resolve().parents[1]
#: Frames kept of each example video in the sandbox.
VIDEO_FRAMES = 8
README = ROOT / "README.md"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
HEADING = re.compile(r"^#+ (.+)$", re.MULTILINE)


def readme_blocks() -> list:
    """``pytest.param(code, id="line N: section")`` for each Python block of the README."""
    text = README.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        headings = HEADING.findall(text, 0, match.start())
        section = headings[-1].split(":")[0].strip("` ") if headings else "top"
        line = text.count("\n", 0, match.start()) + 1
        code = "\n" * line + match.group(1)  # line numbers as in the README
        found.append(pytest.param(code, id=f"line {line}: {section}"))
    return found


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A folder with ``examples/``, random-weight models for every name, no network, no server."""
    import dinofeat.app
    import dinofeat.models.weights
    from dinofeat.models.anyup import AnyUp
    from dinofeat.models.build import build_model

    examples = tmp_path / "examples"
    examples.mkdir()
    for source in (ROOT / "examples").iterdir():
        if source.suffix == ".mp4":
            _cut(source, examples / source.name, VIDEO_FRAMES)
        else:
            (examples / source.name).symlink_to(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(
        dinofeat.models.weights,
        "find_weights",
        lambda spec: (random_vit(spec.name, depth=2).state_dict(), "random weights"),
    )
    monkeypatch.setattr(dinofeat.models.weights, "build_model", lambda spec, depth=None: build_model(spec, depth=2))
    monkeypatch.setattr(  # AnyUp: random weights of the released shapes
        dinofeat.models.weights, "find_anyup_weights", lambda name: (AnyUp().state_dict(), "random weights")
    )
    served = []
    monkeypatch.setattr(dinofeat.app, "launch", lambda *args, **kwargs: served.append((args, kwargs)))
    return tmp_path


def _cut(source: Path, target: Path, frames: int) -> None:
    from dinofeat.io.video import VideoWriter, probe_video, read_frames

    with VideoWriter(target, probe_video(source).fps, probe_video(source).size_wh) as sink:
        for _, frame in read_frames(source, max_frames=frames):
            sink.write(frame)


def test_the_readme_has_python_blocks():
    assert len(readme_blocks()) >= 5


@pytest.mark.parametrize("code", readme_blocks())
def test_readme_python_block_runs(sandbox, code):
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
