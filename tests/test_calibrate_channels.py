"""``isojax calibrate`` on hyperstacks: one PSF per channel, nothing partial.

A tiny two-channel time-lapse (ImageJ TZCYX) simulated with two different additional
axial widths: each channel's file must hold its own width. All fits here share one shape
(two time points of 16 x 64 x 64 pooled per channel) and one number of L-BFGS steps, so
the compiled fit is built once for the module.
"""

import json
import math

import jax
import numpy as np
import pytest
import tifffile

from isojax import calibrate
from isojax.calibrate.files import channel_output, default_timepoints
from isojax.cli import main
from isojax.errors import IsojaxInputError
from isojax.io import read_tiff, write_tiff
from isojax.simulate import acquire, simulate_specimen

S = 4.0  # subsample
WIDTHS = (2.0, 3.5)  # the true additional axial sigma (px) of channels 0 and 1
STEPS = 15
SHAPE = (64, 64, 64)  # the isotropic truth: 16 planes of 64 x 64 at subsample 4


def _movie() -> np.ndarray:
    """``(t, c, z, y, x)``: two time points (the second dimmer, other noise) of two
    channels, each its own specimen seen through its own axial PSF."""
    out = []
    for c, w in enumerate(WIDTHS):
        truth = simulate_specimen(jax.random.key(10 + c), SHAPE)
        frames = []
        for t in range(2):
            stack, _ = acquire(jax.random.key(20 + 2 * c + t), truth * (1.0 - 0.2 * t),
                               subsample=S, sigma_lateral=1.0, sigma_axial=math.sqrt(1 + w * w),
                               photons=500.0, read_noise=0.005)
            frames.append(np.asarray(stack))
        out.append(frames)
    return np.asarray(out, np.float32).transpose(1, 0, 2, 3, 4)


def _write_imagej(path, data: np.ndarray):
    """An ImageJ hyperstack (TZCYX on disk) with voxel size (0.4, 0.1, 0.1) um."""
    tifffile.imwrite(path, data.transpose(0, 2, 1, 3, 4), imagej=True, resolution=(10.0, 10.0),
                     metadata={"axes": "TZCYX", "spacing": S * 0.1, "unit": "micron",
                               "Labels": [n for _ in range(data.shape[0])
                                          for _ in range(data.shape[2]) for n in ("fil", "ves")]})
    return path


@pytest.fixture(scope="module")
def movie():
    return _movie()


@pytest.fixture(scope="module")
def movie_file(movie, tmp_path_factory):
    return _write_imagej(tmp_path_factory.mktemp("movie") / "movie.tif", movie)


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_each_channel_gets_its_own_psf_file(movie, movie_file, tmp_path, capsys):
    out = tmp_path / "psf.tif"
    code = main(["calibrate", str(movie_file), "-o", str(out), "--steps", str(STEPS)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert _names(tmp_path) == [f"psf_c{c}.{ext}" for c in (0, 1) for ext in ("json", "png", "tif")]
    fitted = []
    for c in (0, 1):
        path = channel_output(out, c)
        psf, spacing, _ = read_tiff(path)
        assert psf.dtype == np.float32
        assert psf.ndim == 2
        assert psf.sum() == pytest.approx(1.0, abs=1e-5)
        assert spacing == pytest.approx((0.1, 0.1))
        report = json.loads(path.with_suffix(".json").read_text())
        assert (report["channel"], report["channel_name"]) == (c, ("fil", "ves")[c])
        assert report["timepoints"] == [0, 1]  # both pooled (the default spread)
        assert report["psf_file"] == path.name
        assert report["identifiable"] is True
        assert report["fwhm_um"] == pytest.approx(report["fwhm_px"] * 0.1)
        assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
        fitted.append(report["sigma_px"])
        # the file is the fit of that channel's volumes pooled, as fit_psf gives it
        want, _ = calibrate.fit_psf(jax.random.key(0), [movie[0, c], movie[1, c]], subsample=S,
                                    steps=STEPS, spacing=(0.4, 0.1, 0.1))
        np.testing.assert_allclose(psf, np.asarray(want.dense()), rtol=1e-5, atol=1e-7)
    # each channel's width is closer to its own truth than to the other channel's
    for c, sigma in enumerate(fitted):
        assert abs(sigma - WIDTHS[c]) < abs(sigma - WIDTHS[1 - c]), fitted
    assert "per-channel axial PSF" in err
    assert "channel 0 (fil): FWHM" in err
    assert "channel 1 (ves): FWHM" in err
    assert err.count(": identifiable") == 2


def test_a_single_channel_time_lapse_writes_the_file_it_is_given(movie, tmp_path, capsys):
    path = tmp_path / "green.tif"
    tifffile.imwrite(path, movie[:, 0], imagej=True, resolution=(10.0, 10.0),
                     metadata={"axes": "TZYX", "spacing": S * 0.1, "unit": "micron"})
    out = tmp_path / "psf.tif"
    assert main(["calibrate", str(path), "-o", str(out), "--steps", str(STEPS),
                 "--timepoints", "0:2"]) == 0, capsys.readouterr().err
    assert _names(tmp_path) == ["green.tif", "psf.json", "psf.png", "psf.tif"]
    report = json.loads(out.with_suffix(".json").read_text())
    assert (report["channel"], report["timepoints"]) == (0, [0, 1])
    assert abs(report["sigma_px"] - WIDTHS[0]) < abs(report["sigma_px"] - WIDTHS[1])


def test_an_unidentifiable_channel_writes_no_file_of_any_channel(movie, tmp_path, capsys):
    data = movie.copy()
    data[:, 1] = np.random.default_rng(0).random(data[:, 1].shape)  # white noise: no blur
    path = _write_imagej(tmp_path / "movie.tif", data)
    out = tmp_path / "psf.tif"
    base = ["calibrate", str(path), "-o", str(out), "--steps", str(STEPS)]
    assert main(base) == 1
    err = capsys.readouterr().err
    assert "channel 1: the axial PSF is not identifiable" in err
    assert "--allow-unidentified" in err
    assert "Traceback" not in err
    assert _names(tmp_path) == ["movie.tif"]  # channel 0 was fine, and is not written either
    # the good channel alone: its file, named by its index in the input
    assert main([*base, "--channels", "0"]) == 0
    assert _names(tmp_path) == ["movie.tif", "psf_c0.json", "psf_c0.png", "psf_c0.tif"]
    # both, with the unidentified one written as what it is
    assert main([*base, "--allow-unidentified", "--overwrite"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "psf_c0.json").read_text())["identifiable"] is True
    assert json.loads((tmp_path / "psf_c1.json").read_text())["identifiable"] is False


def test_an_existing_output_of_any_channel_is_refused_before_any_work(movie_file, tmp_path,
                                                                      capsys):
    (tmp_path / "psf_c1.json").write_text("{}")
    code = main(["calibrate", str(movie_file), "-o", str(tmp_path / "psf.tif")])
    err = capsys.readouterr().err
    assert code == 1
    assert "psf_c1.json" in err
    assert "--overwrite" in err
    assert _names(tmp_path) == ["psf_c1.json"]
    assert (tmp_path / "psf_c1.json").read_text() == "{}"


@pytest.mark.parametrize(("extra", "match"), [
    (["--channels", "2"], "channel 2 is out of range"),
    (["--timepoints", "5"], "time point 5 is out of range"),
    (["--axes", "ZYX"], "--axes ZYX names 3 axes but the stack has 5"),
    (["--subsample", "6"], "contradicts"),
])
def test_bad_selections_fail_cleanly_and_write_nothing(movie_file, tmp_path, capsys, extra,
                                                      match):
    code = main(["calibrate", str(movie_file), "-o", str(tmp_path / "psf.tif"), *extra])
    err = capsys.readouterr().err
    assert code == 1
    assert match in err
    assert "Traceback" not in err
    assert _names(tmp_path) == []


def test_channel_options_are_refused_for_a_3d_stack(tmp_path, capsys):
    path = write_tiff(tmp_path / "stack.tif", np.random.default_rng(0).random((16, 64, 64)),
                      spacing=(0.4, 0.1, 0.1))
    for flag, value in (("--channels", "0"), ("--timepoints", "0")):
        assert main(["calibrate", str(path), "-o", str(tmp_path / "a.tif"), flag, value]) == 1
        err = capsys.readouterr().err
        assert f"{flag} is for stacks with a time or channel axis" in err
    assert _names(tmp_path) == ["stack.tif"]


def test_default_timepoints_spread_over_the_series_and_file_names():
    assert default_timepoints(1) == (0,)
    assert default_timepoints(3) == (0, 1, 2)
    assert default_timepoints(101) == (0, 50, 100)
    picked = default_timepoints(10)
    assert (picked[0], picked[-1], len(picked)) == (0, 9, 3)
    assert channel_output("out/psf.tif", 3).as_posix() == "out/psf_c3.tif"


def test_pooled_volumes_must_share_a_shape():
    rng = np.random.default_rng(0)
    with pytest.raises(IsojaxInputError, match="different shapes"):
        calibrate.fit_psf(jax.random.key(0), [rng.random((16, 64, 64)), rng.random((16, 64, 72))],
                          subsample=S)
    with pytest.raises(IsojaxInputError, match="at least one"):
        calibrate.fit_psf(jax.random.key(0), [], subsample=S)
