"""The command line's help: every option says what it is, its default and its unit."""

from __future__ import annotations

import argparse
import contextlib
import io

import numpy as np
import pytest

from isojax.cli import build_parser, main
from isojax.errors import log_to_stderr


def _commands(parser: argparse.ArgumentParser, prefix=()):
    """Every leaf command as (words, parser)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _commands(sub, (*prefix, name))


COMMANDS = list(_commands(build_parser()))
UNITS = {"UM": "micrometres", "PX": "pixel", "GB": "GB", "S": "seconds", "AU": "Airy units",
         ("Z", "Y", "X"): "micrometres"}


def _options(parser):
    return [a for a in parser._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _rendered(parser, action) -> str:
    formatter = parser._get_formatter()
    return formatter._expand_help(action)


def test_there_are_commands_to_check():
    names = {" ".join(words) for words, _ in COMMANDS}
    assert {"psf axial", "psf theory", "psf check", "train", "predict", "calibrate",
            "demo"} <= names


@pytest.mark.parametrize(("words", "parser"), COMMANDS, ids=[" ".join(w) for w, _ in COMMANDS])
def test_every_option_has_help_with_its_default_and_unit(words, parser):
    for action in [a for a in parser._actions if not a.option_strings]:
        assert action.help, f"isojax {' '.join(words)}: {action.dest} has no help"
    for action in _options(parser):
        name = action.option_strings[-1]
        text = _rendered(parser, action)
        assert action.help, f"isojax {' '.join(words)} {name} has no help"
        if not action.required:
            assert "default" in text, f"isojax {' '.join(words)} {name}: no default in {text!r}"
        else:
            assert "required" in text, f"isojax {' '.join(words)} {name}: {text!r}"
        if action.default not in (None, False):
            shown = " ".join(map(str, action.default)) if isinstance(
                action.default, (list, tuple)) else str(action.default)
            assert shown in text or "default:" in action.help, (name, text)
        unit = UNITS.get(action.metavar)
        if unit is not None:
            assert unit in text, f"isojax {' '.join(words)} {name} ({action.metavar}): {text!r}"


@pytest.mark.parametrize(("words", "parser"), COMMANDS, ids=[" ".join(w) for w, _ in COMMANDS])
def test_help_prints_and_writes_um_one_way(words, parser):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*words, "--help"]) == 0
    text = out.getvalue()
    assert text.startswith(f"usage: isojax {' '.join(words)}")
    assert "µm" not in text
    assert "==SUPPRESS==" not in text


def test_warnings_get_the_one_prefix(capsys):
    log_to_stderr("warning: the PSF was resampled")
    log_to_stderr("stack s.tif: shape (8, 64, 64)")
    err = capsys.readouterr().err.splitlines()
    assert err == ["isojax: warning: the PSF was resampled", "stack s.tif: shape (8, 64, 64)"]


def test_a_commands_warning_has_the_prefix_of_every_warning(tmp_path, capsys):
    from isojax.io import write_tiff

    stack = tmp_path / "stack.tif"
    write_tiff(stack, np.ones((4, 16, 16), "float32"), spacing=(0.4, 0.1, 0.1))
    code = main(["train", str(stack), "--subsample", "3", "--psf", str(tmp_path / "none.tif"),
                 "--model", str(tmp_path / "model"), "--steps", "1"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    warned = [line for line in err if "warning:" in line]
    assert warned, err
    assert all(line.startswith("isojax: warning: --subsample 3 overrides") for line in warned)
    assert err[-1].startswith("isojax: error: ")


def test_a_closed_output_pipe_stops_quietly(tmp_path):
    """`isojax ... | head`: when the reader goes away, no BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before isojax writes its first line
    try:
        run = subprocess.run(
            [sys.executable, "-m", "isojax", "psf", "theory", "--na", "1.0", "--wavelength",
             "0.5", "--ri", "1.33", "--modality", "widefield", "--pixel-size", "0.1", "-o",
             str(tmp_path / "axial.tif")],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert run.stderr == ""  # no traceback, no "Broken pipe" error, no "Exception ignored"
    assert run.returncode == 141
    assert list(tmp_path.iterdir()) == []  # it stopped at its first line: nothing half-written
