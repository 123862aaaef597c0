"""`isojax train` and `isojax predict` end to end on small files, and their bad-input paths."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from isojax.cli import main
from isojax.errors import IsojaxInputError
from isojax.io import read_tiff, write_tiff

SPACING = (0.3, 0.1, 0.1)  # subsample 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline")
    rng = np.random.default_rng(0)
    stack = (rng.random((10, 32, 32)) * 1000).astype(np.uint16)
    write_tiff(d / "stack.tif", stack, spacing=SPACING, dtype=np.uint16)
    tifffile.imwrite(d / "bare.tif", stack)  # no voxel size
    assert (
        main(
            [
                "psf",
                "theory",
                "--na",
                "0.8",
                "--wavelength",
                "0.5",
                "--ri",
                "1.33",
                "--modality",
                "widefield",
                "--pixel-size",
                "0.1",
                "-o",
                str(d / "psf.tif"),
            ]
        )
        == 0
    )
    code = main([
        "train", str(d / "stack.tif"), "--psf", str(d / "psf.tif"), "--model", str(d / "model"),
        "--steps", "3", "--batch-size", "2", "--patch-size", "16", "--first-filters", "4",
        "--checkpoint-every", "3", "--quiet",
    ])  # fmt: skip
    assert code == 0
    return d


def test_train_then_predict_writes_an_isotropic_stack(files, capsys):
    out = files / "iso.tif"
    assert (
        main(
            [
                "predict",
                str(files / "stack.tif"),
                "--model",
                str(files / "model"),
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    volume, spacing, source = read_tiff(out)
    assert volume.dtype == np.float32
    assert volume.shape == (
        int(np.floor((10 - 1) * 3.0)) + 1,
        32,
        32,
    )  # no extrapolation past the last plane
    np.testing.assert_allclose(spacing, (0.1, 0.1, 0.1), rtol=1e-6)
    assert source == "imagej"
    assert np.all(np.isfinite(volume))
    assert "wrote" in capsys.readouterr().err


def test_predict_keep_dtype(files):
    out = files / "iso16.tif"
    args = [
        "predict",
        str(files / "stack.tif"),
        "--model",
        str(files / "model"),
        "-o",
        str(out),
        "--keep-dtype",
        "--quiet",
    ]
    assert main(args) == 0
    assert read_tiff(out)[0].dtype == np.uint16


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--subsample", "5"], "trained for subsample 3"),
        (["--model", "nowhere"], "no such model folder"),
    ],
)
def test_predict_refuses_bad_input_and_writes_nothing(files, capsys, extra, match):
    out = files / "bad.tif"
    args = [
        "predict",
        str(files / "stack.tif"),
        "--model",
        str(files / "model"),
        "-o",
        str(out),
        "--quiet",
    ]
    if extra[0] == "--model":
        args[args.index("--model") + 1] = str(files / extra[1])
    else:
        args += extra
    assert main(args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("isojax: error:")]
    assert len(errors) == 1
    assert errors[0] == lines[-1]
    assert match in errors[0]
    assert not out.exists()


def test_predict_without_voxel_size_says_what_to_pass(files, capsys):
    out = files / "bare_out.tif"
    assert (
        main(["predict", str(files / "bare.tif"), "--model", str(files / "model"), "-o", str(out)])
        == 1
    )
    assert "--spacing" in capsys.readouterr().err
    assert not out.exists()
    # with the factor given, it works
    assert (
        main(
            [
                "predict",
                str(files / "bare.tif"),
                "--model",
                str(files / "model"),
                "-o",
                str(out),
                "--subsample",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    assert out.exists()


def test_predict_into_missing_folder_fails_before_work(files, capsys):
    out = files / "no" / "such" / "dir" / "x.tif"
    assert (
        main(["predict", str(files / "stack.tif"), "--model", str(files / "model"), "-o", str(out)])
        == 1
    )
    assert "isojax: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ([], "give exactly one PSF source"),
        (
            [
                "--psf",
                "PSF",
                "--na",
                "1.0",
                "--wavelength",
                "0.5",
                "--ri",
                "1.33",
                "--modality",
                "widefield",
            ],
            "exactly one",
        ),
        (["--psf", "PSF", "--patch-size", "64"], "larger than the image"),
        (["--na", "1.0"], "needs all of"),
    ],
)
def test_train_refuses_bad_input_and_writes_nothing(files, capsys, extra, match):
    model = files / "badmodel"
    extra = [str(files / "psf.tif") if a == "PSF" else a for a in extra]
    args = [
        "train",
        str(files / "stack.tif"),
        "--model",
        str(model),
        "--steps",
        "2",
        "--quiet",
        *extra,
    ]
    assert main(args) == 1
    assert match in capsys.readouterr().err
    assert not model.exists()


def test_tiles_overlap_by_twice_the_models_reach():
    from isojax.pipeline import _tile_overlap
    from isojax.unet import UNetConfig

    assert UNetConfig().receptive_radius == 43
    assert _tile_overlap({"unet": {}}) == 96  # CARE's default U-Net: 86 px, kept at 96
    assert _tile_overlap({"unet": {"depth": 3}}) == 2 * 95  # a deeper one sees farther


# ----------------------------------------------------------------------------------------
# Outputs never overwrite a user's data: every writing command refuses an existing output
# without --overwrite and an output that is one of its inputs always.


def _contents(folder) -> dict:
    """Every file under ``folder`` (relative path -> bytes): to check nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("isojax: error: ")
    return lines[0]


STREAM = ["--memory-budget", "0.0002"]  # too small for the in-memory path: streamed


def _predict(files, stack, out, *extra):
    return main(["predict", str(stack), "--model", str(files / "model"), "-o", str(out),
                 "--quiet", *extra])


@pytest.mark.parametrize(("name", "extra"), [("out.tif", []), ("out.tif", STREAM),
                                             ("out.zarr", [])])
def test_predict_refuses_an_existing_output_unless_overwrite(files, tmp_path, capsys, name,
                                                             extra):
    from isojax.io import open_volume, write_ome_zarr

    reference = files / "reference.tif"
    if not reference.exists():
        assert _predict(files, files / "stack.tif", reference) == 0
    expected = read_tiff(reference)[0]
    out = tmp_path / name
    sentinel = np.zeros(expected.shape, np.float32)  # a user's earlier result
    if name.endswith(".zarr"):
        write_ome_zarr(out, sentinel, spacing=(0.1, 0.1, 0.1))
    else:
        write_tiff(out, sentinel, spacing=(0.1, 0.1, 0.1))
    before = _contents(tmp_path)
    capsys.readouterr()
    assert _predict(files, files / "stack.tif", out, *extra) == 1
    line = _error_line(capsys.readouterr().err)
    assert f"{out} already exists; pass --overwrite" in line
    assert _contents(tmp_path) == before  # byte-identical, and no partial or other file
    assert _predict(files, files / "stack.tif", out, *extra, "--overwrite") == 0
    result = open_volume(out).read((slice(None),) * 3)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def _spelled(tmp_path, target, how):
    (tmp_path / "sub").mkdir(exist_ok=True)
    if how == "symlink":
        (tmp_path / "link").symlink_to(target)
        return tmp_path / "link"
    if how == "hard link":
        os.link(target, tmp_path / "hard.tif")
        return tmp_path / "hard.tif"
    if how == "dot-dot":
        return tmp_path / "sub" / ".." / target.name
    if how == "relative":
        return Path(target.name)
    return target


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "dot-dot", "relative"])
@pytest.mark.parametrize("extra", [[], STREAM], ids=["in memory", "streamed"])
def test_predict_never_writes_over_its_input(files, tmp_path, capsys, monkeypatch, how, extra):
    stack = tmp_path / "stack.tif"
    stack.write_bytes((files / "stack.tif").read_bytes())
    out = _spelled(tmp_path, stack, how)
    monkeypatch.chdir(tmp_path)
    before = _contents(tmp_path)
    assert _predict(files, stack, out, *extra, "--overwrite") == 1
    line = _error_line(capsys.readouterr().err)
    assert "is the input stack" in line
    assert "never writes over its input" in line
    assert _contents(tmp_path) == before


def test_predict_never_writes_into_or_over_an_input_zarr_or_model(files, tmp_path, capsys):
    from isojax.io import write_ome_zarr

    stack = write_ome_zarr(tmp_path / "stack.zarr", read_tiff(files / "stack.tif")[0],
                           spacing=SPACING)
    (tmp_path / "alias.zarr").symlink_to(stack)
    model = files / "model"
    model_before = _contents(model)
    before = _contents(tmp_path)
    for out, what in [(stack, "is the input stack"), (tmp_path / "alias.zarr", "input stack"),
                      (stack / "inner.zarr", "inside the input stack"),
                      (stack / "0", "inside the input stack"),
                      (model / "psf.tif", "inside the input model folder"),
                      (model / "iso.zarr", "inside the input model folder")]:
        assert _predict(files, stack, out, "--overwrite") == 1
        assert what in _error_line(capsys.readouterr().err)
    assert _contents(tmp_path) == before
    assert _contents(model) == model_before


@pytest.mark.slow
def test_killed_streamed_prediction_is_cleaned_up_by_the_next_run(files, tmp_path, capsys,
                                                                  start_writer):
    from isojax.io import open_volume

    out = tmp_path / "out.zarr"
    stack = files / "stack.tif"
    # a streamed prediction into out.zarr, killed (-9) in the middle of its first slab; and
    # another one still running
    killed, names = start_writer("predict", out, stack)
    alive, alive_names = start_writer("predict", out, stack)
    killed.kill()
    killed.wait()
    partials = [tmp_path / n for n in names.split() if f"-{killed.pid}-" in n]
    in_use = [tmp_path / n for n in alive_names.split() if f"-{alive.pid}-" in n]
    assert {p.name.split("-")[0] for p in partials} == {"out.zarr.partial", "out.zarr.scratch"}
    assert all(p.exists() for p in partials + in_use)
    assert _predict(files, stack, out) == 0
    err = capsys.readouterr().err
    for p in partials:
        assert f"removed {p}: a partial output of out.zarr" in err
        assert not p.exists()
    for p in in_use:
        assert f"warning: {p} is a partial output of out.zarr" in err
        assert f"rm -r '{p}'" in err
        assert p.exists()
    assert open_volume(out).shape == (28, 32, 32)
    alive.kill()
    alive.wait()


@pytest.mark.slow
def test_calibrate_refuses_existing_outputs_and_its_stack(tmp_path, capsys):
    rng = np.random.default_rng(1)
    stack = write_tiff(tmp_path / "stack.tif", (rng.random((16, 48, 48)) * 1000).astype(np.uint16),
                       spacing=SPACING, dtype=np.uint16)  # calibration needs 16 planes
    out = tmp_path / "axial.tif"
    base = ["calibrate", str(stack), "--steps", "2"]
    for name in ("axial.tif", "axial.json", "axial.png"):  # any one of the three outputs
        (tmp_path / name).write_bytes(b"a user's file")
        before = _contents(tmp_path)
        assert main([*base, "-o", str(out)]) == 1
        assert f"{name} already exists; pass --overwrite" in _error_line(capsys.readouterr().err)
        assert _contents(tmp_path) == before
        (tmp_path / name).unlink()
    for name in ("axial.tif", "axial.json", "axial.png"):
        (tmp_path / name).write_bytes(b"a user's file")
    assert main([*base, "-o", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert read_tiff(out)[0].ndim == 2
    assert json.loads((tmp_path / "axial.json").read_text())["psf_file"] == "axial.tif"
    assert (tmp_path / "axial.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "sub").mkdir()
    os.link(stack, tmp_path / "hard.tif")
    before = _contents(tmp_path)
    for target in (stack, tmp_path / "sub" / ".." / "stack.tif", tmp_path / "hard.tif"):
        assert main([*base, "-o", str(target), "--overwrite"]) == 1
        assert "is the input stack" in _error_line(capsys.readouterr().err)
    assert _contents(tmp_path) == before


def test_train_model_folder_is_never_an_input(files, tmp_path, capsys):
    stack = tmp_path / "stack.tif"
    stack.write_bytes((files / "stack.tif").read_bytes())
    psf = tmp_path / "run" / "psf.tif"
    psf.parent.mkdir()
    psf.write_bytes((files / "psf.tif").read_bytes())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine")
    (tmp_path / "stack_link.tif").symlink_to(stack)
    before = _contents(tmp_path)
    base = ["train", str(stack), "--steps", "2", "--batch-size", "2", "--patch-size", "16",
            "--first-filters", "4", "--quiet"]
    for model, extra, what in [
        (stack, ["--psf", str(psf)], "is the input stack"),
        (tmp_path / "stack_link.tif", ["--psf", str(psf)], "is the input stack"),
        (psf.parent, ["--psf", str(psf)], "input PSF"),
        (tmp_path, ["--psf", str(psf)], "is inside the output"),
        (tmp_path / "notes", ["--psf", str(psf)], "holds other files and no isojax model"),
    ]:
        assert main([*base, "--model", str(model), *extra]) == 1
        assert what in _error_line(capsys.readouterr().err)
    assert _contents(tmp_path) == before


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "stack.tif").write_bytes(b"my own stack")
    before = _contents(tmp_path)
    assert main(["demo", "--out", str(tmp_path), "--steps", "1", "--quiet"]) == 1
    line = _error_line(capsys.readouterr().err)
    assert "exists and is not empty; pass --overwrite" in line
    assert _contents(tmp_path) == before
    assert main(["demo", "--out", str(tmp_path / "notes.txt"), "--quiet"]) == 1
    assert "is a file" in _error_line(capsys.readouterr().err)
    assert _contents(tmp_path) == before


@pytest.mark.slow
def test_demo_overwrite_replaces_only_its_own_files(tmp_path):
    from isojax.pipeline import DEMO_FILES, demo

    (tmp_path / "notes.txt").write_text("mine")
    write_tiff(tmp_path / "isojax.tif", np.zeros((2, 4, 4)))  # an earlier demo's result
    with pytest.raises(IsojaxInputError, match="not empty"):
        demo(tmp_path, shape=(16, 64, 64), steps=2, progress=False)
    demo(tmp_path, shape=(16, 64, 64), steps=2, batch_size=2, patch_size=32, first_filters=4,
         overwrite=True, progress=False, log=lambda msg: None)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert read_tiff(tmp_path / "isojax.tif")[0].shape[1:] == (64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [n.rstrip("/") for n in DEMO_FILES] + ["notes.txt"])
