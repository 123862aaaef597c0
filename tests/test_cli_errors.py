"""What `isojax` prints when something goes wrong: one line for bad input, a traceback for a bug.

User mistakes (options, files, data) end with one ``isojax: error:`` line and exit 1 (2 for
the command line itself); anything else is a bug in isojax: its traceback, then one
``isojax: internal error`` line naming the version, and exit status 70.
"""

import os

import numpy as np
import pytest

from isojax import __version__
from isojax.cli import main
from isojax.cli import pipeline as cli_commands  # where the subcommands' functions live
from isojax.io import write_tiff

BUG_LINE = (f"isojax: internal error: this is a bug in isojax {__version__}; please report it "
            "with the traceback above")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny model trained on a 10 x 32 x 32 stack of voxel size (0.3, 0.1, 0.1) um."""
    d = tmp_path_factory.mktemp("errors")
    rng = np.random.default_rng(0)
    write_tiff(d / "stack.tif", (rng.random((10, 32, 32)) * 1000).astype(np.float32),
               spacing=(0.3, 0.1, 0.1))
    code = main([
        "train", str(d / "stack.tif"), "--model", str(d / "model"), "--na", "0.8",
        "--wavelength", "0.5", "--ri", "1.33", "--modality", "widefield", "--steps", "2",
        "--batch-size", "2", "--patch-size", "16", "--first-filters", "4",
        "--checkpoint-every", "2", "--quiet",
    ])  # fmt: skip
    assert code == 0
    return d


def _one_error_line(capsys, code: int, expected_code: int = 1) -> str:
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert "Traceback" not in err
    assert "internal error" not in err
    errors = [line for line in err.splitlines() if line.startswith("isojax: error: ")]
    assert len(errors) == 1, err
    assert err.splitlines()[-1] == errors[0]
    return errors[0]


def test_a_stack_with_nan_voxels_streamed_is_one_line(model, capsys):
    stack = np.random.default_rng(1).random((10, 32, 32)).astype(np.float32)
    stack[3, 4, 5] = np.nan
    write_tiff(model / "nan.tif", stack, spacing=(0.3, 0.1, 0.1))
    out = model / "nan.zarr"  # a Zarr output: streamed slab by slab
    code = main(["predict", str(model / "nan.tif"), "--model", str(model / "model"),
                 "-o", str(out), "--quiet"])
    assert "NaN or inf" in _one_error_line(capsys, code)
    assert not out.exists()


def test_a_negative_read_noise_is_a_usage_error(model, capsys):
    code = main(["train", str(model / "stack.tif"), "--model", str(model / "m2"), "--na", "0.8",
                 "--wavelength", "0.5", "--ri", "1.33", "--modality", "widefield",
                 "--steps", "1", "--read-noise", "-1", "--quiet"])
    line = _one_error_line(capsys, code, expected_code=2)
    assert "--read-noise" in line
    assert ">= 0" in line
    assert not (model / "m2").exists()


def test_planes_too_small_to_estimate_the_noise_is_one_line(tmp_path, capsys):
    rng = np.random.default_rng(2)
    write_tiff(tmp_path / "small.tif", (rng.random((10, 6, 6)) * 1000).astype(np.float32),
               spacing=(0.3, 0.1, 0.1))
    code = main(["train", str(tmp_path / "small.tif"), "--model", str(tmp_path / "m"),
                 "--na", "0.8", "--wavelength", "0.5", "--ri", "1.33", "--modality",
                 "widefield", "--steps", "1", "--batch-size", "2", "--patch-size", "4",
                 "--first-filters", "4", "--quiet"])
    line = _one_error_line(capsys, code)
    assert "--no-match-noise" in line


def test_an_os_error_on_a_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no" / "such.txt"

    def command(args):
        missing.read_text()  # a real FileNotFoundError, with its filename
        return 0

    monkeypatch.setattr(cli_commands, "_cmd_demo", command)  # the CLI's own dispatch runs it
    line = _one_error_line(capsys, main(["demo", "--out", str(tmp_path / "d")]))
    assert line == f"isojax: error: {missing}: No such file or directory"


def _bug(capsys, code: int, exception: str) -> None:
    err = capsys.readouterr().err
    assert code == 70, err
    assert "Traceback (most recent call last)" in err
    assert exception in err
    assert "isojax: error:" not in err
    assert err.splitlines()[-1] == BUG_LINE


def test_a_plain_value_error_is_a_bug_with_its_traceback(tmp_path, monkeypatch, capsys):
    from isojax.predict import predict_stack

    def command(args):
        # a library call with an argument no user chose: a plain ValueError is a bug
        predict_stack(np.ones((4, 16, 16), np.float32), lambda b: b, subsample=2.0,
                      fuse="sideways")
        return 0

    monkeypatch.setattr(cli_commands, "_cmd_demo", command)
    _bug(capsys, main(["demo", "--out", str(tmp_path / "d")]), "ValueError: fuse must be one of")


def test_an_os_error_without_a_file_is_a_bug(tmp_path, monkeypatch, capsys):
    def command(args):
        os.close(-1)  # a real OSError (EBADF) that names no file
        return 0

    monkeypatch.setattr(cli_commands, "_cmd_demo", command)
    _bug(capsys, main(["demo", "--out", str(tmp_path / "d")]), "OSError: [Errno 9]")


def test_a_type_error_is_a_bug(tmp_path, monkeypatch, capsys):
    from isojax.synth import SynthConfig

    def command(args):
        SynthConfig(subsample=2.0, no_such_option=1)
        return 0

    monkeypatch.setattr(cli_commands, "_cmd_demo", command)
    _bug(capsys, main(["demo", "--out", str(tmp_path / "d")]), "TypeError")


def test_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    def command(args):
        # what write() raises on a full disk: an OSError with no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cli_commands, "_cmd_demo", command)
    line = _one_error_line(capsys, main(["demo", "--out", str(tmp_path / "d")]))
    assert os.strerror(errno.ENOSPC) in line
    assert "free some space" in line


def test_an_os_error_naming_a_file_descriptor_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    def command(args):
        raise OSError(errno.EIO, os.strerror(errno.EIO), 5)  # filename: a descriptor

    monkeypatch.setattr(cli_commands, "_cmd_demo", command)
    line = _one_error_line(capsys, main(["demo", "--out", str(tmp_path / "d")]))
    assert line == f"isojax: error: 5: {os.strerror(errno.EIO)}"


@pytest.mark.parametrize("where", ["device", "host"])
def test_running_out_of_memory_is_one_line_with_what_to_change(tmp_path, monkeypatch, capsys,
                                                               where):
    import jax.numpy as jnp

    def command(args):
        # a real failed allocation of 256 TiB: XLA's RESOURCE_EXHAUSTED, or numpy's MemoryError
        if where == "device":
            jnp.zeros((2**46,), jnp.float32).block_until_ready()
        else:
            np.zeros(2**45)
        return 0

    monkeypatch.setattr(cli_commands, "_cmd_demo", command)
    line = _one_error_line(capsys, main(["demo", "--out", str(tmp_path / "d")]))
    assert line.startswith("isojax: error: out of memory (")
    assert line.endswith("close other programs and run it again")
