"""`isojax train` and `isojax predict` end to end on small files, and their bad-input paths."""

import numpy as np
import pytest
import tifffile

from isojax.cli import main
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
