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
        # two PSF sources, one of them an incomplete theory: the real problem is the two
        (["--psf", "PSF", "--na", "1.1"], "give exactly one PSF source: --psf AXIAL.tif, "
         "--bead BEAD.tif, or the theory options (--na, --wavelength, --ri, --modality); got "
         "--psf and theory (--na)."),
        (["--bead", "PSF", "--psf", "PSF", "--excitation", "0.49"],
         "give exactly one PSF source"),
        (["--na", "1.1", "--ri", "1.33"], "a theoretical PSF needs all of --na, --wavelength, "
         "--ri and --modality; missing --wavelength, --modality."),
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
    from isojax.predict.files import tile_overlap
    from isojax.unet import UNetConfig

    assert UNetConfig().receptive_radius == 43
    assert tile_overlap({"unet": {}}) == 96  # CARE's default U-Net: 86 px, kept at 96
    assert tile_overlap({"unet": {"depth": 3}}) == 2 * 95  # a deeper one sees farther


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
    # white noise identifies no width: --allow-unidentified lets the outputs be written
    base = ["calibrate", str(stack), "--steps", "2", "--allow-unidentified"]
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


def test_truncated_stack_is_one_line_on_the_terminal(tmp_path):
    """A TIFF cut in the middle of its image data (a copy that stopped halfway): the user
    sees one `isojax: error:` line naming the damage, none of tifffile's log lines."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(0)
    whole = write_tiff(tmp_path / "whole.tif", rng.random((8, 64, 64)), spacing=SPACING)
    raw = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: len(raw) // 2])
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    out = tmp_path / "axial.tif"
    run = subprocess.run([sys.executable, "-m", "isojax", "calibrate", str(cut), "-o", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"isojax: error: {cut}: the TIFF is truncated or damaged (")
    assert "copy or export it again" in lines[0]
    assert "3D stack" not in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif", "whole.tif"]


@pytest.mark.slow
def test_tile_too_small_is_refused_and_an_expensive_one_raised(files, capsys, monkeypatch):
    """--tile below the overlap is refused in CLI terms before any work; --tile 100 (4 new px
    per tile next to the 96 px overlap) is raised to a tile that puts at most 2x the slices'
    pixels through the network, counted at the network itself, with the same result."""
    import jax

    import isojax.model_folder

    rng = np.random.default_rng(3)
    wide = write_tiff(files / "wide.tif", (rng.random((10, 160, 160)) * 1000).astype(np.uint16),
                      spacing=SPACING, dtype=np.uint16)
    model = str(files / "model")
    small = files / "wide_small.tif"
    assert main(["predict", str(wide), "--model", model, "-o", str(small), "--tile", "48",
                 "--quiet"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "isojax: error: --tile 48 is too small for this model: tiles overlap by 96 px (at least "
        "twice the network's reach), so --tile must be at least 100 px; leave --tile out to let "
        "isojax choose."]
    assert not small.exists()

    pixels = []
    load_model = isojax.model_folder.load_model  # prediction's import of it

    def counting_load_model(*args, **kwargs):  # the real network, its input sizes recorded
        apply_fn, meta = load_model(*args, **kwargs)

        def counted(batch):
            jax.debug.callback(lambda b: pixels.append(b.size), batch)
            return apply_fn(batch)

        return counted, meta

    monkeypatch.setattr(isojax.model_folder, "load_model", counting_load_model)
    whole_out, tiled_out = files / "wide_whole.tif", files / "wide_tiled.tif"
    assert main(["predict", str(wide), "--model", model, "-o", str(whole_out), "--quiet"]) == 0
    whole_pixels = sum(pixels)
    pixels.clear()
    capsys.readouterr()
    assert main(["predict", str(wide), "--model", model, "-o", str(tiled_out), "--tile", "100",
                 "--quiet"]) == 0
    tiled_pixels = sum(pixels)
    err = capsys.readouterr().err
    assert "warning: --tile 100 would put" in err
    assert "using --tile 128 instead (1.60x)" in err
    assert whole_pixels > 0
    assert tiled_pixels <= 2 * whole_pixels
    whole, _, _ = read_tiff(whole_out)
    tiled, _, _ = read_tiff(tiled_out)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-2)


def _refusal_args(command: str, files, tmp_path) -> list[str]:
    """Each command's options for a stack it must refuse before any work."""
    out = tmp_path / "out"
    return {
        # a bead file that does not exist: the stack must be refused before the PSF is made
        "train": ["--model", str(out), "--bead", str(tmp_path / "missing_bead.tif"),
                  "--steps", "2", "--patch-size", "16", "--quiet"],
        "calibrate": ["-o", str(out.with_suffix(".tif"))],
        "predict": ["--model", str(files / "model"), "-o", str(out.with_suffix(".tif")),
                    "--quiet"],
    }[command]


@pytest.mark.parametrize("kind", ["constant", "one_bright_voxel"])
@pytest.mark.parametrize("command", ["train", "calibrate", "predict"])
def test_stack_without_contrast_is_refused_the_same_way_before_any_work(files, tmp_path, capsys,
                                                                         command, kind):
    stack = np.full((10, 64, 64), 500, np.uint16)
    if kind == "one_bright_voxel":  # its 1st and 99.8th percentiles are both 500
        stack[5, 30, 30] = 4000
    path = write_tiff(tmp_path / "flat.tif", stack, spacing=SPACING, dtype=np.uint16)
    args = _refusal_args(command, files, tmp_path)
    assert main([command, str(path), *args]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    found = ("all voxels are 500" if kind == "constant"
             else "its 1st and 99.8th percentiles are both 500; only 1 of 40960 voxels differ")
    assert errors == [
        f"isojax: error: {path}: the stack has no contrast ({found}); a constant or nearly "
        "constant stack normalises to a blank image and holds nothing to learn, calibrate or "
        "restore: check that it is the right file, channel and time point, and that it is not "
        "blank or saturated."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.tif"]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("command", ["train", "calibrate", "predict"])
def test_stack_with_non_finite_voxels_is_refused_by_name(files, tmp_path, capsys, command, bad):
    """A NaN (or inf) voxel was reported as 'no contrast (percentiles both nan)'."""
    stack = np.random.default_rng(0).random((10, 64, 64)).astype(np.float32)
    stack[4, 7, 9] = bad
    path = write_tiff(tmp_path / "bad.tif", stack, spacing=SPACING)
    args = _refusal_args(command, files, tmp_path)
    assert main([command, str(path), *args]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [
        f"isojax: error: {path}: the stack holds 1 NaN or infinite voxel(s) of 40960 (the "
        "first at index (4, 7, 9)); replace them (e.g. with the background level, "
        "np.nan_to_num) and save the stack again: they would make every normalised value, "
        "loss and PSF NaN."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif"]


def test_streamed_prediction_refuses_a_stack_without_contrast(files, tmp_path, capsys):
    # streamed (OME-Zarr output): the percentiles are estimated, the message is the same one
    stack = np.full((10, 64, 64), 500, np.uint16)
    stack[5, 30, 30] = 4000
    path = write_tiff(tmp_path / "flat.tif", stack, spacing=SPACING, dtype=np.uint16)
    out = tmp_path / "out.zarr"
    assert main(["predict", str(path), "--model", str(files / "model"), "-o", str(out),
                 "--quiet"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1
    assert errors[0].startswith(
        f"isojax: error: {path}: the stack has no contrast (its 1st and 99.8th percentiles are "
        "both 500); a constant or nearly constant stack")
    assert not out.exists()


# ------------------------------------------------------------------------------ --resume


def train_args(files, model, *extra, psf=True, steps="3"):
    return [
        "train", str(files / "stack.tif"), *(["--psf", str(files / "psf.tif")] if psf else []),
        "--model", str(model), "--steps", steps, "--batch-size", "2", "--patch-size", "16",
        "--first-filters", "4", "--checkpoint-every", "3", "--quiet", *extra,
    ]  # fmt: skip


def snapshot(folder):
    """Every file of a folder with its bytes and modification time."""
    return {
        p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def replace(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


THEORY = ["--na", "1.0", "--wavelength", "0.5", "--ri", "1.33", "--modality", "widefield"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda a: replace(replace(a, "--batch-size", "4"), "--patch-size", "8"),
         ["--batch-size 4 here, 2 in the model", "--patch-size 8 here, 16 in the model"]),
        (lambda a: [*a, "--subsample", "4"], ["--subsample 4 here, 3 in the model"]),
        (lambda a: [*a, "--learning-rate", "0.001"],
         ["--learning-rate 0.001 here, 0.0004 in the model"]),
        ("theory PSF", ["the PSF: shape (1, 43) here, (1, 65) in the model's psf.tif"]),
        ("wider PSF", ["the PSF: differs from the model's psf.tif by up to"]),
    ],
    ids=["batch-and-patch", "subsample", "learning-rate", "psf-shape", "psf-values"],
)
def test_resume_names_what_differs_and_changes_nothing(
    files, capsys, tmp_path, change, expected
):
    model = files / "model"
    before = snapshot(model)
    if change == "theory PSF":
        args = train_args(files, model, "--resume", *THEORY, psf=False)
    elif change == "wider PSF":  # same shape, another width
        x = np.arange(65) - 32.0
        g = np.exp(-0.5 * (x / 9.0) ** 2)[None].astype(np.float32)
        write_tiff(tmp_path / "wider.tif", g / g.sum(), pixel_size=0.1)
        args = replace(train_args(files, model, "--resume"), "--psf", str(tmp_path / "wider.tif"))
    else:
        args = change(train_args(files, model, "--resume"))
    assert main(args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"isojax: error: cannot resume {model}")
    assert sum(line.startswith("isojax: error:") for line in lines) == 1
    for text in expected:
        assert text in lines[-1]
    assert "train into a new folder" in lines[-1]
    assert snapshot(model) == before


@pytest.mark.parametrize("steps", ["3", "2"])
def test_resume_of_a_finished_run_does_nothing(files, capsys, steps):
    model = files / "model"
    before = snapshot(model)
    assert main(train_args(files, model, "--resume", steps=steps)) == 0
    err = capsys.readouterr().err
    assert ("model already trained for 3 steps; nothing to do (pass a larger --steps to "
            "continue)") in err
    assert "nan" not in err
    assert snapshot(model) == before


def test_resume_without_a_model_refuses(files, capsys, tmp_path):
    model = tmp_path / "nothing"
    assert main(train_args(files, model, "--resume")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"isojax: error: nothing to resume in {model}: it holds no model (no "
                   "config.json); drop --resume to start a new training.")
    assert not model.exists()


def test_resume_with_a_larger_steps_continues_and_keeps_the_warmup(files, capsys, tmp_path):
    import json

    model = tmp_path / "m"
    assert main(train_args(files, model, steps="10")) == 0
    first = (model / "metrics.jsonl").read_text().splitlines()
    meta = json.loads((model / "config.json").read_text())
    assert meta["train"]["warmup_steps"] == 1  # min(100, 10 // 10)
    capsys.readouterr()
    assert main(train_args(files, model, "--resume", steps="20")) == 0
    err = capsys.readouterr().err
    assert f"resuming {model} at step 10" in err
    assert "trained 20 steps" in err
    lines = (model / "metrics.jsonl").read_text().splitlines()
    assert lines[:10] == first
    records = [json.loads(x) for x in lines]
    assert [r["step"] for r in records] == list(range(1, 21))
    assert all(np.isfinite(r["loss"]) for r in records)
    meta = json.loads((model / "config.json").read_text())
    assert meta["train"]["steps"] == 20
    assert meta["train"]["warmup_steps"] == 1  # the folder's, not min(100, 20 // 10)
    from isojax.train import _managers

    last, _ = _managers(model)
    assert last.latest_step() == 20
    last.close()


def test_resume_of_a_folder_without_checkpoint_starts_from_step_0(files, capsys, tmp_path):
    import json
    import shutil

    model = tmp_path / "m"
    shutil.copytree(files / "model", model)
    for sub in ("last", "best"):  # as if killed before its first checkpoint
        shutil.rmtree(model / "checkpoints" / sub)
    assert main(train_args(files, model, "--resume")) == 0
    err = capsys.readouterr().err
    assert f"{model} holds no checkpoint yet: starting from step 0" in err
    steps = [json.loads(x)["step"] for x in (model / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
