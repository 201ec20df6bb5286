"""Errors name an option by its field in Python (``min_score``) and by its flag on the command line
(``--min-score``): :func:`dinofeat.errors.field` marks, :meth:`DinofeatError.render` and
:func:`dinofeat.optionspec.flag_of` name."""

import dataclasses
import json
import logging
import pickle

import numpy as np
import pytest

from conftest import save_png
from dinofeat.cli import build_parser, main
from dinofeat.errors import FieldMessage, InputError, WeightsError, field, render
from dinofeat.options import DatasetOptions, FrameOptions, PCADrawingOptions, TrackerOptions, resolve_layers
from dinofeat.optionspec import ARGUMENT_FLAGS, Options, flag_of


def _option_classes() -> list[type]:
    found, pending = [], list(Options.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        found.append(cls)
    return found


def test_a_marked_field_reads_as_the_field_in_python_and_as_the_flag_when_rendered_with_flags():
    err = InputError(f"{field('start', 500)} is past the end; lower {field('max_size')}")
    assert str(err) == "start=500 is past the end; lower max_size"
    assert err.render(flag_of) == "--start 500 is past the end; lower --max-size"
    assert err.fields == ("start", "max_size")
    assert render(err.template) == str(err)


def test_a_message_without_marks_renders_the_same_both_ways():
    err = InputError("cannot read image a.png")
    assert str(err) == err.render(flag_of) == err.template == "cannot read image a.png"
    assert err.fields == ()


@pytest.mark.parametrize("cls", [InputError, WeightsError])
def test_pickling_keeps_the_marks_and_the_class(cls):
    """Ray sends errors between processes: the command line must still name the flag."""
    err = cls(f"{field('layers', 30)} does not exist")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and back.template == err.template
    assert str(back) == "layers=30 does not exist"
    assert back.render(flag_of) == "--layer 30 does not exist"


def test_a_wrapped_error_keeps_the_marks_of_the_one_it_quotes():
    inner = InputError(f"{field('start', 9)} is past the end of the video (5 frames)")
    outer = InputError(f"a.mp4: {inner.template} ({field('on_error', 'fail')})")
    assert str(outer) == "a.mp4: start=9 is past the end of the video (5 frames) (on_error=fail)"
    assert outer.render(flag_of) == "a.mp4: --start 9 is past the end of the video (5 frames) (--on-error fail)"


def test_a_dataset_keeps_the_marks_of_an_item_error_and_writes_field_names(tmp_path):
    from dinofeat.dataset.manifest import ErrorLog, one_line, read_errors

    reason = one_line(InputError(f"{field('start', 9)} is past\n   the end"))
    assert render(reason, flag_of) == "--start 9 is past the end"  # what `--on-error fail` quotes
    log = ErrorLog(tmp_path / "errors.jsonl")
    log.record({"path": "a.mp4", "error": reason, "item": 0})
    log.close()
    assert read_errors(tmp_path / "errors.jsonl") == [{"path": "a.mp4", "error": "start=9 is past the end", "item": 0}]
    log.rewrite([{"path": "a.mp4", "error": reason, "item": 0}])
    assert json.loads((tmp_path / "errors.jsonl").read_text())["error"] == "start=9 is past the end"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TrackerOptions(min_score=2), "min_score must be a number between -1 and 1, got 2"),
        (lambda: FrameOptions(start=-1), "start must be a non-negative integer, got -1"),
        (lambda: PCADrawingOptions(overlay=0.5, pca_only=True), "overlay and pca_only exclude each other"),
        (lambda: DatasetOptions(gpus_per_worker=1), "gpus_per_worker is for engine=ray"),
        (lambda: resolve_layers((30,), 12), "layers=30 does not exist: the model has 12 blocks (0..11 or -1..-12)"),
    ],
    ids=["range", "frames", "together", "engine", "layers"],
)
def test_a_library_error_names_the_field(make, message):
    with pytest.raises(InputError) as info:
        make()
    assert str(info.value) == message
    assert "--" not in str(info.value)


def test_the_same_error_through_the_command_line_names_the_flag(tmp_path, capsys):
    image = str(save_png(tmp_path / "a.png", np.zeros((28, 28, 3), np.uint8)))
    cases = [
        (["track", "v.mp4", "--point", "1,1", "--min-score", "2"], "--min-score must be a number between -1 and 1"),
        (["pca", image, "--overlay", "0.5", "--pca-only"], "--overlay and --pca-only exclude each other"),
        (
            ["extract", image, "--out-dir", str(tmp_path / "o"), "--gpus-per-worker", "1"],
            "--gpus-per-worker is for --engine ray",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_a_log_line_names_fields_in_python_and_flags_on_the_command_line(caplog):
    from dinofeat.cli import _FlagFormatter

    with caplog.at_level("WARNING", logger="dinofeat"):
        logging.getLogger("dinofeat.test").warning(FieldMessage(f"capped at {field('max_size', 98)}"))
    (record,) = caplog.records
    assert record.getMessage() == "capped at max_size=98"
    assert _FlagFormatter("dinofeat: %(message)s").format(record) == "dinofeat: capped at --max-size 98"


def test_every_declared_flag_is_what_flag_of_gives_its_field():
    for cls in _option_classes():
        for f in dataclasses.fields(cls):
            if f.metadata.get("flag"):
                assert flag_of(f.name) == f.metadata["flag"], (cls.__name__, f.name)


def test_no_two_option_classes_declare_different_flags_for_one_field():
    flags: dict[str, set[str]] = {}
    for cls in _option_classes():
        for f in dataclasses.fields(cls):
            if f.metadata.get("flag"):
                flags.setdefault(f.name, set()).add(f.metadata["flag"])
    assert {name: found for name, found in flags.items() if len(found) > 1} == {}
    # a job that declares an argument as a field (MatchJob's output) gives it the same flag
    assert {name: flags[name] for name in set(flags) & set(ARGUMENT_FLAGS)} == {
        name: {ARGUMENT_FLAGS[name]} for name in set(flags) & set(ARGUMENT_FLAGS)
    }


def test_the_flags_of_arguments_that_are_no_option_field_are_command_line_flags():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    known = {flag for sub in commands.values() for action in sub._actions for flag in action.option_strings}
    assert set(ARGUMENT_FLAGS.values()) <= known


def test_no_library_error_names_a_flag():
    """Outside the command line, raised messages name fields (errors.field), not flags; citing a
    command (``dinofeat pca --save-pca`` wrote this file) is fine."""
    import ast
    import re
    from pathlib import Path

    package = Path(main.__code__.co_filename).parents[1]  # src/dinofeat
    flagged = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                texts = [
                    c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant) and isinstance(c.value, str)
                ]
                for text in texts:
                    if re.search(r"(?<![\w-])--[a-z]", re.sub(r"dinofeat [a-z]+ --[a-z-]+", "", text)):
                        flagged.append(f"{path.relative_to(package)}:{node.lineno}: {text}")
    assert not flagged, "\n".join(flagged)
