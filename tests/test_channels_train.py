"""Training on time-lapses with channels: one network per channel with its own PSF, the
multi-channel model folder, `isojax psf check` of it, per-channel prediction, resume and the
one-line errors."""

import shutil

import numpy as np
import pytest
import tifffile

from isojax.cli import main
from isojax.errors import IsojaxInputError
from isojax.io import open_hyperstack, read_tiff, write_tiff
from isojax.model_folder import (
    channel_models,
    read_channels_file,
    read_model_config,
    write_channels_file,
)
from isojax.pipeline import predict_file
from isojax.psf.sources import channel_sources, one_source_each, resolve_psf
from isojax.train.series import (
    spread_timepoints,
    train_channels,
    training_planes,
    training_timepoints,
)

SPACING = (0.3, 0.1, 0.1)  # subsample 3
N_T, N_C, N_Z, SIDE = 3, 2, 8, 32
TINY = ["--steps", "2", "--batch-size", "2", "--patch-size", "16", "--first-filters", "4",
        "--checkpoint-every", "2", "--quiet"]


def _blobs(rng) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n) for n in (N_Z, SIDE, SIDE)), indexing="ij")
    return sum(np.exp(-((z - rng.uniform(1, 7)) ** 2 / 2 + (y - rng.uniform(4, 28)) ** 2 / 8
                        + (x - rng.uniform(4, 28)) ** 2 / 8)) for _ in range(6))


def _series(n_c: int = N_C, *, same: bool = False, seed: int = 0) -> np.ndarray:
    """(t, c, z, y, x) uint16: blobs per channel (all channel 0's with ``same``), bleaching."""
    rng = np.random.default_rng(seed)
    out = np.empty((N_T, n_c, N_Z, SIDE, SIDE), np.float32)
    bases = [_blobs(rng) for _ in range(n_c)]
    for c in range(n_c):
        for t in range(N_T):
            noise = rng.normal(0, 5, bases[0].shape)
            out[t, c] = (1000 * bases[0 if same else c] + 100 + noise) * 0.6**t
    if same:
        out[:, 1:] = out[:, :1]
    return out.astype(np.uint16)


def _write(path, data: np.ndarray) -> None:
    tifffile.imwrite(path, data.transpose(0, 2, 1, 3, 4), imagej=True, resolution=(10.0, 10.0),
                     metadata={"axes": "TZCYX", "spacing": 0.3, "unit": "micron"})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("channels")
    _write(d / "hyper.tif", _series())
    _write(d / "same.tif", _series(same=True, seed=1))
    for c, wavelength in enumerate(("0.5", "0.7")):
        assert main(["psf", "theory", "--na", "0.8", "--wavelength", wavelength, "--ri", "1.33",
                     "--modality", "widefield", "--pixel-size", "0.1", "-o",
                     str(d / f"psf{c}.tif")]) == 0
    return d


def _train_args(files, model) -> list[str]:
    return ["train", str(files / "hyper.tif"), "--psf", str(files / "psf0.tif"), "--psf",
            str(files / "psf1.tif"), "--timepoints", "0:3:2", "--model", str(model), *TINY]


@pytest.fixture(scope="module")
def model(files):
    """A two-channel model folder, one PSF per channel, trained on time points 0 and 2
    (2 steps: arbitrary networks)."""
    assert main(_train_args(files, files / "model")) == 0
    return files / "model"


def test_the_model_folder_keeps_every_channels_psf(files, model):
    record = read_channels_file(model)
    assert record["design"] == "per-channel"
    assert record["axes"] == "TZCYX"
    assert record["timepoints"] == [0, 2]  # --timepoints 0:3:2
    assert channel_models(model) == ((0, model / "c0"), (1, model / "c1"))
    for c in range(N_C):
        given = resolve_psf(pixel_size=0.1, psf=files / f"psf{c}.tif", log=lambda m: None)
        kept, sp, _ = read_tiff(model / f"c{c}" / "psf.tif")
        np.testing.assert_allclose(kept, given.dense(), rtol=0, atol=1e-7)
        assert sp == pytest.approx((0.1, 0.1))
        meta = read_model_config(model / f"c{c}")
        assert meta["subsample"] == pytest.approx(3.0)
        assert meta["stack_shape"] == [2 * N_Z, SIDE, SIDE]  # the two time points' planes
    assert read_tiff(model / "c0" / "psf.tif")[0].shape != read_tiff(model / "c1" / "psf.tif")[0].shape


def test_psf_check_of_the_model_folder_reports_each_channel(model, capsys):
    assert main(["psf", "check", str(model)]) == 0
    out = capsys.readouterr().out
    assert f"channel 0: {model / 'c0' / 'psf.tif'}" in out
    assert f"channel 1: {model / 'c1' / 'psf.tif'}" in out
    assert out.count("usable as is") == 2
    assert "axial 18.79 px" in out
    assert "axial 26.30 px" in out


def test_a_single_channel_model_folder_is_one_model(files, model, capsys):
    assert channel_models(model / "c0") == ((None, model / "c0"),)
    assert main(["psf", "check", str(model / "c0")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{model / 'c0' / 'psf.tif'} (pixel size from")
    assert "channel 0:" not in out
    assert main(["psf", "check", str(files)]) == 1  # a folder that is no model
    assert "no PSF at" in capsys.readouterr().err


def test_a_broken_channels_file_is_one_line(tmp_path):
    (tmp_path / "channels.json").write_text('{"format": "isojax-channels", "version": 1, '
                                            '"channels": [{"index": 0, "folder": "../x"}]}')
    with pytest.raises(IsojaxInputError, match=r"folder '\.\./x' is not a subfolder name"):
        channel_models(tmp_path)
    (tmp_path / "channels.json").write_text("{")
    with pytest.raises(IsojaxInputError, match=r"channels\.json: unreadable"):
        channel_models(tmp_path)
    write_channels_file(tmp_path, [(1, "RFP")], axes="CZYX")
    assert channel_models(tmp_path) == ((1, tmp_path / "c1"),)
    with pytest.raises(IsojaxInputError, match=r"holds one model per channel \(channels 1 "
                       r"\(c1\)\); give one channel's folder here, e.g. .*c1"):
        read_model_config(tmp_path)


def test_prediction_restores_each_channel_with_its_own_model(files, model, tmp_path):
    # both channels hold the same data: only the models differ
    out = tmp_path / "iso.tif"
    predict_file(files / "same.tif", model=model, output=out, progress=False, log=lambda m: None)
    restored = tifffile.imread(out)  # TZCYX
    assert restored.shape[:3] == (N_T, 22, N_C)
    assert not np.allclose(restored[:, :, 0], restored[:, :, 1], atol=1e-3)
    data = tifffile.imread(files / "same.tif")
    for c in range(N_C):
        stack = tmp_path / f"c{c}.tif"
        write_tiff(stack, data[0, :, c], spacing=SPACING)
        alone = predict_file(stack, model=model / f"c{c}", output=tmp_path / f"iso{c}.tif",
                             progress=False, log=lambda m: None)
        np.testing.assert_allclose(restored[0, :, c], alone, rtol=1e-5, atol=1e-5)


def test_a_channel_without_a_model_is_one_line(files, model, tmp_path, capsys):
    _write(tmp_path / "three.tif", _series(3))
    code = main(["predict", str(tmp_path / "three.tif"), "--model", str(model), "-o",
                 str(tmp_path / "o.tif"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "\n" not in err
    assert "no model for channel 2" in err
    assert "channels 0, 1" in err
    assert not (tmp_path / "o.tif").exists()
    assert main(["predict", str(tmp_path / "three.tif"), "--model", str(model), "--channels",
                 "1", "-o", str(tmp_path / "o.tif"), "--quiet"]) == 0


def test_a_3d_stack_with_a_multichannel_model_is_one_line(files, model, tmp_path, capsys):
    write_tiff(tmp_path / "s.tif", tifffile.imread(files / "hyper.tif")[0, :, 0],
               spacing=SPACING)
    code = main(["predict", str(tmp_path / "s.tif"), "--model", str(model), "-o",
                 str(tmp_path / "o.tif")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "\n" not in err
    assert "one model per channel" in err
    assert str(model / "c0") in err
    assert "--axes" in err
    code = main(["export", str(model), "-o", str(tmp_path / "m.bioimageio.zip")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "\n" not in err
    assert "export one channel's folder" in err


@pytest.mark.parametrize(("extra", "match"), [
    (["--psf", "P0", "--psf", "P1", "--psf", "P1"],
     "--psf is given 3 times but 2 channels are selected (0, 1)"),
    (["--psf", "P0", "--psf", "P1", "--channels", "1"],
     "--psf is given 2 times but 1 channel is selected (1)"),
    (["--na", "0.8", "--ri", "1.33", "--modality", "widefield", "--wavelength", "0.5",
      "--wavelength", "0.6", "--wavelength", "0.7"], "--wavelength is given 3 times"),
    (["--psf", "P0", "--calibrate-psf"], "--calibrate-psf takes a 3D stack"),
    (["--psf", "P0", "--timepoints", "5:"], "--timepoints 5:: 5 is out of range"),
    (["--psf", "P0", "--channels", "2"], "channel 2 is out of range"),
    (["--psf", "P0", "--patch-size", "64"], "patch size 64 px is larger than the image"),
])
def test_training_errors_are_one_line_and_write_nothing(files, tmp_path, capsys, extra, match):
    args = [str(files / "psf0.tif") if a == "P0" else str(files / "psf1.tif") if a == "P1"
            else a for a in extra]
    code = main(["train", str(files / "hyper.tif"), "--model", str(tmp_path / "m"), *TINY, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err
    assert match in err[-1], err
    assert not (tmp_path / "m").exists()


def test_several_psfs_for_a_3d_stack_are_refused(files, tmp_path, capsys):
    write_tiff(tmp_path / "s.tif", tifffile.imread(files / "hyper.tif")[0, :, 0],
               spacing=SPACING)
    code = main(["train", str(tmp_path / "s.tif"), "--psf", str(files / "psf0.tif"), "--psf",
                 str(files / "psf1.tif"), "--model", str(tmp_path / "m"), *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "--psf is given 2 times, but the stack has no channel axis" in err


def test_psf_sources_per_channel():
    said = []
    one = channel_sources((0, 2), psf="a.tif", log=said.append)
    assert [s["psf"] for s in one] == ["a.tif", "a.tif"]
    assert "one --psf for 2 channels" in said[0]
    each = channel_sources((0, 2), bead=["b0.tif", "b2.tif"], log=said.append)
    assert [s["bead"] for s in each] == ["b0.tif", "b2.tif"]
    assert len(said) == 1
    theory = {"na": 0.8, "wavelength_um": [0.5, 0.6], "ri": 1.33, "modality": "widefield"}
    waves = channel_sources((0, 1), theory=theory, log=said.append)
    assert [s["theory"]["wavelength_um"] for s in waves] == [0.5, 0.6]
    assert all(s["theory"]["na"] == 0.8 and s["psf"] is None for s in waves)
    with pytest.raises(IsojaxInputError, match="given 2 times but 3 channels"):
        channel_sources((0, 1, 2), psf=["a", "b"], log=said.append)
    assert one_source_each(psf=["a.tif"], theory={"wavelength_um": [0.5]}) == (
        "a.tif", None, {"wavelength_um": 0.5})


def test_training_reads_only_the_selected_time_points(tmp_path):
    data = _series()
    data[1] = 7  # time point 1 has no contrast: reading it would fail
    _write(tmp_path / "h.tif", data)
    hyper = open_hyperstack(tmp_path / "h.tif")
    assert training_timepoints(N_T, timepoints="0:3:2") == (0, 2)
    planes = training_planes(hyper, 1, (2, 0))
    assert planes.shape == (2 * N_Z, SIDE, SIDE)
    assert planes.dtype == np.float32
    for k, t in enumerate((2, 0)):
        v = data[t, 1].astype(np.float32)
        lo, hi = np.percentile(v, (1.0, 99.8))
        np.testing.assert_allclose(planes[k * N_Z:(k + 1) * N_Z], (v - lo) / (hi - lo),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(IsojaxInputError, match="time point 1, channel 1"):
        training_planes(hyper, 1, (0, 1))


def test_the_default_time_points_spread_through_the_series():
    assert spread_timepoints(3) == (0, 1, 2)
    assert spread_timepoints(1000) == (0, 142, 285, 428, 570, 713, 856, 999)
    assert spread_timepoints(100, count=4) == (0, 33, 66, 99)
    assert training_timepoints(1000)[-1] == 999


def test_resume_skips_finished_channels_and_trains_the_others(files, model, tmp_path, capsys):
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    shutil.rmtree(copy / "c1")  # the run stopped before channel 1 began
    c0_metrics = (copy / "c0" / "metrics.jsonl").read_bytes()
    assert main([*_train_args(files, copy), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "channel 0: already trained for 2 steps" in err
    assert "skipped" in err
    assert "channel 1: trained 2 steps" in err
    assert (copy / "c0" / "metrics.jsonl").read_bytes() == c0_metrics
    np.testing.assert_array_equal(read_tiff(copy / "c1" / "psf.tif")[0],
                                  read_tiff(model / "c1" / "psf.tif")[0])
    # another selection is refused before anything is written
    args = _train_args(files, copy)
    args[args.index("0:3:2")] = "0:3"
    code = main([*args, "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "cannot resume" in err
    assert "timepoints [0, 1, 2] here, [0, 2]" in err
    # a new training into the folder needs --resume
    assert main(_train_args(files, copy)) == 1
    assert "already holds a model; pass --resume" in capsys.readouterr().err


def test_each_channel_gets_its_planes_psf_and_subfolder(files, tmp_path):
    # train_channels' own work, with the 3D training replaced by a recorder
    axial = resolve_psf(pixel_size=0.1, psf=files / "psf1.tif", log=lambda m: None)
    got = []

    def record(planes, g, psf, folder, *, resume, log):
        got.append((planes, g.subsample, psf, folder, resume))
        return {"step": 0}

    out = train_channels(files / "hyper.tif", model=tmp_path / "m", train_volume=record,
                         resolve=resolve_psf, steps=2, psf=[axial], channels="1",
                         timepoints="1:", log=lambda m: None)
    assert out["timepoints"] == (1, 2)
    assert list(out["channels"]) == [1]
    planes, subsample, psf, folder, resume = got[0]
    assert psf is axial
    assert folder == tmp_path / "m" / "c1"
    assert subsample == pytest.approx(3.0)
    assert not resume
    np.testing.assert_array_equal(
        planes, training_planes(open_hyperstack(files / "hyper.tif"), 1, (1, 2)))
    assert [e["index"] for e in read_channels_file(tmp_path / "m")["channels"]] == [1]


def test_series_demo_restores_every_time_point_and_channel_with_its_own_bead_psf(tmp_path):
    """``isojax demo --channels 2 --timepoints 2``, tiny: each channel's PSF comes from its
    own bead and has the simulated width, the restoration is a TZCYX hyperstack on the
    physical grid, and every time point and channel is scored."""
    import json
    import math

    from isojax.demo_series import demo_series
    from isojax.psf import fwhm

    out = tmp_path / "demo"
    scores = demo_series(out, channels=2, timepoints=2, shape=(13, 32, 32), steps=2,
                         batch_size=2, patch_size=16, first_filters=4, progress=False,
                         log=lambda m: None)
    for c, sigma in enumerate((2.5, 3.5)):  # demo_series: sigma 2.5 + c axially, 1 laterally
        psf = read_tiff(out / f"psf_c{c}.tif")[0]
        expected = 2.3548 * math.sqrt(sigma**2 - 1.0)
        assert fwhm(psf[psf.shape[0] // 2]) == pytest.approx(expected, rel=0.1)
    assert [i for i, _ in channel_models(out / "model")] == [0, 1]
    hyper = open_hyperstack(out / "isojax.tif")
    assert hyper.shape == (2, 2, 13, 32, 32)  # z: (4 - 1) * 4 + 1 planes at 0.1 um
    assert hyper.spacing == pytest.approx((0.1, 0.1, 0.1))
    saved = json.loads((out / "scores.json").read_text())
    for name in ("linear", "isojax"):
        assert len(saved[name]) == 2
        assert all(len(row) == 2 for row in saved[name])
        assert all(np.isfinite(cell["psnr_db"]) for row in scores[name] for cell in row)


@pytest.mark.parametrize(("args", "words"), [
    (["--channels", "5"], "--channels must be 1 to 4"),
    (["--timepoints", "0"], "timepoints"),
])
def test_series_demo_refuses_bad_counts_in_one_line(tmp_path, capsys, args, words):
    assert main(["demo", "--out", str(tmp_path / "d"), *args]) != 0
    err = capsys.readouterr().err.strip()
    assert words in err
    assert "\n" not in err
    assert not (tmp_path / "d").exists()
