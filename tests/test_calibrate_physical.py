"""The physical calibration family (isojax.calibrate.physical): the Debye kernel with a
physical free parameter, recovered from a simulated stack by the spectral fit."""

import contextlib
import io
import json

import jax
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from isojax import pipeline
from isojax.calibrate import FAMILIES
from isojax.calibrate.physical import (
    PhysicalFamily,
    _init,
    fit_physical_psf,
    physical_psf,
    physical_values,
)
from isojax.cli import main
from isojax.cli.options import THEORY_MODEL_NAMES
from isojax.cli.pipeline import _SHAPE_FAMILIES
from isojax.errors import IsojaxInputError
from isojax.forward import measure
from isojax.io import read_tiff, write_tiff
from isojax.psf import debye_additional_kernel
from isojax.psf.sources import THEORY_MODELS
from isojax.specimen import simulate_specimen

FAMILY = PhysicalFamily(wavelength_um=0.52, ri=1.33, modality="widefield", pixel_size=0.1,
                        half_size=31)


def test_the_family_is_the_debye_kernel_at_its_physical_value():
    params = _init(FAMILY, 1.05)
    assert float(physical_values(FAMILY, params)["na"]) == pytest.approx(1.05, rel=1e-5)
    psf = physical_psf(FAMILY, params)
    axial = np.asarray(psf.axial[0])
    assert psf.lateral.shape == (1, 1)
    assert axial.sum() == pytest.approx(1.0, abs=1e-5)
    assert axial.min() >= 0
    want, _, _ = debye_additional_kernel(na=1.05, wavelength_um=0.52, ri=1.33,
                                         modality="widefield", pixel_size=0.1, half_size=31)
    np.testing.assert_allclose(axial, np.asarray(want), atol=2e-6)
    # the sheet FWHM as the free parameter of a light sheet
    sheet = PhysicalFamily(wavelength_um=0.52, ri=1.33, modality="lightsheet", pixel_size=0.1,
                           half_size=16, free="sheet_fwhm", na=0.8)
    wide = np.asarray(physical_psf(sheet, _init(sheet, 3.0)).axial[0])
    thin = np.asarray(physical_psf(sheet, _init(sheet, 1.0)).axial[0])
    x = np.arange(-16, 17)
    assert (thin * x**2).sum() < (wide * x**2).sum()


def test_bad_families_are_one_line_errors():
    with pytest.raises(IsojaxInputError, match="sheet"):
        PhysicalFamily(wavelength_um=0.52, ri=1.33, modality="widefield", pixel_size=0.1,
                       free="sheet_fwhm", na=0.8)
    with pytest.raises(IsojaxInputError, match="micrometres"):
        PhysicalFamily(wavelength_um=520, ri=1.33, modality="widefield", pixel_size=0.1)
    with pytest.raises(IsojaxInputError, match="initial NA"):
        _init(FAMILY, 1.4)


@pytest.fixture(scope="module")
def na_stack():
    """A stack blurred by the family's kernel at NA 1.0 and subsampled by 2."""
    truth = np.asarray(simulate_specimen(jax.random.key(0), (48, 64, 64)))
    iso = ndimage.gaussian_filter(truth, 1.0)  # the isotropic part, about the lateral PSF
    psf = physical_psf(FAMILY, _init(FAMILY, 1.0))
    return np.transpose(np.asarray(measure(np.transpose(iso, (1, 2, 0)), psf, 2.0)),
                        (2, 0, 1))


def test_fit_recovers_the_na_from_a_simulated_stack(na_stack):
    stack = na_stack
    _, info = fit_physical_psf(jax.random.key(1), stack, family=FAMILY, init=0.8,
                               subsample=2.0, steps=20)
    assert info["na"] == pytest.approx(1.0, rel=0.02)
    assert info["loss_final"] < 0.1 * info["loss_initial"]


def test_the_global_search_finds_the_na_without_a_start_and_brackets_it(na_stack):
    # no start: the profile over NA 0.2..1.29 picks the cells, L-BFGS refines, and the
    # profile's interval holds the truth
    _, info = fit_physical_psf(jax.random.key(1), na_stack, family=FAMILY, subsample=2.0,
                               steps=20)
    assert info["na"] == pytest.approx(1.0, rel=0.02)
    low, high = info["interval"]
    assert low <= 1.0 <= high
    assert info["identifiable"]
    grid, profile = np.asarray(info["grid"]), np.asarray(info["profile"])
    assert abs(grid[np.argmin(profile)] - 1.0) <= grid[1] - grid[0]  # the best cell is the truth's


# ---- `isojax calibrate --family debye`: the family from the command line ----

OPTICS = ["--wavelength", "0.52", "--ri", "1.33"]


@pytest.fixture(scope="module")
def debye_run(na_stack, tmp_path_factory):
    """`isojax calibrate --family debye` on the NA 1.0 stack (voxel size in the file), once."""
    folder = tmp_path_factory.mktemp("debye")
    stack = write_tiff(folder / "stack.tif", na_stack, spacing=(0.2, 0.1, 0.1))
    out = folder / "axial.tif"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["calibrate", str(stack), "-o", str(out), "--family", "debye", *OPTICS,
                     "--steps", "20"])
    return stack, out, code, err.getvalue()


def test_cli_debye_recovers_the_na_within_its_interval_and_writes_three_files(debye_run):
    _, out, code, err = debye_run
    assert code == 0, err
    report = json.loads(out.with_suffix(".json").read_text())
    fitted = report["fitted"]
    assert report["family"] == "debye"
    assert fitted["parameter"] == "na"
    assert fitted["value"] == pytest.approx(1.0, rel=0.02)
    low, high = fitted["interval_95"]
    assert low <= 1.0 <= high
    assert high - low < 0.3
    assert report["identifiable"] is True
    assert report["optics"] == {
        "model": "debye", "modality": "widefield", "na": fitted["value"],
        "wavelength_um": 0.52, "ri": 1.33, "excitation_um": None, "pinhole_au": None,
        "sheet_fwhm_um": None, "pixel_size_um": pytest.approx(0.1)}
    # the kernel's derived widths, comparable with the Gaussian family's
    psf, spacing, _ = read_tiff(out)
    assert psf.shape[0] == 1
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert spacing == pytest.approx((0.1, 0.1))
    x = np.arange(psf.shape[1]) - psf.shape[1] // 2
    assert report["sigma_px"] == pytest.approx(np.sqrt((psf[0] * x**2).sum()), rel=1e-3)
    assert report["fwhm_um"] == pytest.approx(report["fwhm_px"] * 0.1)
    assert 1.0 < report["fwhm_px"] < 20.0
    assert len(report["profile"]["na"]) == len(report["profile"]["objective"]) == 16
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "NA 1" in err
    assert "identifiable" in err


def test_cli_debye_psf_is_the_theory_commands_at_the_fitted_na(debye_run, tmp_path):
    _, out, code, _ = debye_run
    assert code == 0
    na = json.loads(out.with_suffix(".json").read_text())["fitted"]["value"]
    theory = tmp_path / "theory.tif"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["psf", "theory", "--model", "debye", "--na", repr(na), *OPTICS,
                     "--modality", "widefield", "--pixel-size", "0.1",
                     "-o", str(theory)]) == 0
    want, _, _ = read_tiff(theory)
    got, _, _ = read_tiff(out)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_cli_debye_does_not_overwrite_without_overwrite(debye_run, capsys):
    stack, out, code, _ = debye_run
    assert code == 0
    before = {p: p.read_bytes() for p in (out, out.with_suffix(".json"))}
    assert main(["calibrate", str(stack), "-o", str(out), "--family", "debye", *OPTICS]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--overwrite" in err
    assert all(p.read_bytes() == b for p, b in before.items())


@pytest.mark.parametrize(("flags", "words"), [
    (["--family", "debye", "--ri", "1.33"], "--wavelength"),
    (["--family", "debye", "--wavelength", "0.52"], "--ri"),
    (["--family", "gaussian", "--wavelength", "0.52"], "--family debye"),
    (["--family", "debye", *OPTICS, "--init-fwhm", "1"], "--init-fwhm"),
    (["--family", "debye", *OPTICS, "--sheet-fwhm", "2"], "lightsheet"),
    (["--family", "debye", *OPTICS, "--modality", "lightsheet"], "--na"),
    (["--family", "debye", *OPTICS, "--pinhole", "1"], "confocal"),
])
def test_cli_debye_bad_option_sets_are_one_line_usage_errors(tmp_path, capsys, flags, words):
    stack = write_tiff(tmp_path / "s.tif", np.ones((4, 8, 8), np.float32),
                       spacing=(0.2, 0.1, 0.1))
    out = tmp_path / "axial.tif"
    assert main(["calibrate", str(stack), "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_cli_debye_needs_the_pixel_size(tmp_path, capsys):
    stack = write_tiff(tmp_path / "s.tif", np.ones((4, 8, 8), np.float32))
    out = tmp_path / "axial.tif"
    assert main(["calibrate", str(stack), "-o", str(out), "--family", "debye", *OPTICS,
                 "--subsample", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--spacing" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


@pytest.mark.parametrize("hyper", [False, True])
def test_cli_debye_without_a_voxel_size_says_spacing_first(tmp_path, capsys, hyper):
    # the first refusal is the physical family's (--spacing in micrometres), not the
    # geometry's generic one that offers --subsample, which debye would then refuse
    stack = tmp_path / "s.tif"
    if hyper:
        data = np.random.default_rng(0).random((2, 8, 2, 16, 16)).astype(np.float32)
        tifffile.imwrite(stack, data, imagej=True, metadata={"axes": "TZCYX"})
        extra = ["--channels", "0"]
    else:
        write_tiff(stack, np.random.default_rng(0).random((8, 16, 16)).astype(np.float32))
        extra = []
    out = tmp_path / "axial.tif"
    assert main(["calibrate", str(stack), "-o", str(out), "--family", "debye", *OPTICS,
                 *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--spacing Z Y X" in err, err
    assert "micrometres" in err
    assert "--subsample" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_calibrate_file_debye_writes_what_the_cli_writes(debye_run, tmp_path):
    # the library entry point behind `isojax calibrate`, same stack and options
    stack, cli_out, code, _ = debye_run
    assert code == 0
    out = tmp_path / "lib.tif"
    lines: list[str] = []
    report = pipeline.calibrate_file(stack, output=out, family="debye", wavelength_um=0.52,
                                     ri=1.33, steps=20, log=lines.append)
    assert report["family"] == "debye"
    cli_report = json.loads(cli_out.with_suffix(".json").read_text())
    assert report["fitted"]["value"] == pytest.approx(cli_report["fitted"]["value"],
                                                      rel=1e-6)
    assert report["optics"] == cli_report["optics"]
    got, got_spacing, _ = read_tiff(out)
    want, want_spacing, _ = read_tiff(cli_out)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert got_spacing == pytest.approx(want_spacing)
    assert out.with_suffix(".json").is_file()
    assert out.with_suffix(".png").is_file()
    assert any("NA 1" in line for line in lines)


@pytest.mark.parametrize(("options", "words"), [
    ({"family": "gaussian", "wavelength_um": 0.52}, "wavelength_um= is for family='debye'"),
    ({"family": "free", "modality": "confocal"}, "modality="),
    ({"family": "debye", "ri": 1.33}, "needs wavelength_um="),
    ({"family": "debye", "wavelength_um": 0.52, "ri": 1.33, "init_fwhm": 1.0}, "init_fwhm="),
    ({"family": "debye", "wavelength_um": 0.52, "ri": 1.33, "modality": "lightsheet"},
     "give na="),
    ({"family": "debye", "wavelength_um": 0.52, "ri": 1.33, "excitation_um": 0.48},
     "modality='confocal'"),
    ({"family": "bessel"}, "unknown family"),
])
def test_calibrate_file_refuses_bad_combinations_before_reading(tmp_path, options, words):
    # the stack does not exist: the options are refused before it is looked at
    out = tmp_path / "axial.tif"
    with pytest.raises(IsojaxInputError) as caught:
        pipeline.calibrate_file(tmp_path / "missing.tif", output=out, log=lambda _: None,
                                **options)
    assert "\n" not in str(caught.value)
    assert words in str(caught.value), caught.value
    assert "no such file" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_theory_model_names_are_the_libraries():
    assert tuple(THEORY_MODELS) == THEORY_MODEL_NAMES
    assert tuple(FAMILIES) == _SHAPE_FAMILIES


@pytest.fixture
def noise_args(tmp_path):
    """White noise (the fixture's shape and optics: the compiled fit is reused) holds no
    axial blur to measure: the NA's profile is flat towards the weak objectives."""
    noise = np.random.default_rng(0).random((24, 64, 64)).astype(np.float32)
    stack = write_tiff(tmp_path / "noise.tif", noise, spacing=(0.2, 0.1, 0.1))
    return ["calibrate", str(stack), "-o", str(tmp_path / "axial.tif"), "--family", "debye",
            *OPTICS, "--steps", "20"]


def test_cli_debye_refuses_an_unidentified_na(debye_run, noise_args, tmp_path, capsys):
    assert debye_run[2] == 0  # compiled there
    assert main(noise_args) == 1
    err = capsys.readouterr().err
    assert "NA is not identifiable" in err
    assert "nothing written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise.tif"]


def test_cli_debye_writes_an_unidentified_na_when_allowed(debye_run, noise_args, tmp_path):
    assert debye_run[2] == 0
    with contextlib.redirect_stderr(io.StringIO()):
        assert main([*noise_args, "--allow-unidentified"]) == 0
    out = tmp_path / "axial.tif"
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["identifiable"] is False
    assert out.is_file()
    assert out.with_suffix(".png").is_file()


def test_cli_debye_calibrates_one_channel_at_a_time(tmp_path, capsys):
    path = tmp_path / "hyper.tif"
    data = np.random.default_rng(0).random((2, 8, 2, 16, 16)).astype(np.float32)  # TZCYX
    tifffile.imwrite(path, data, imagej=True, resolution=(10.0, 10.0),
                     metadata={"axes": "TZCYX", "spacing": 0.2, "unit": "micron"})
    out = tmp_path / "axial.tif"
    assert main(["calibrate", str(path), "-o", str(out), "--family", "debye", *OPTICS]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--channels" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hyper.tif"]


def test_psf_file_kernel_is_theorys_or_the_fits_own_when_theorys_is_too_long():
    """A flat profile's best NA can be one whose full Debye kernel the model does not
    compute (NA 0.2 in water at 0.1 um pixels spans about 6500 px): the file then holds the
    kernel the fit used, and says so, where it failed with "check --na" before."""
    from isojax.calibrate.physical_files import _psf_file_kernel
    from isojax.psf.optics import debye_axial_psf, debye_window

    lines = []
    for na, long in [(1.0, False), (0.2, True)]:
        fitted = physical_psf(FAMILY, _init(FAMILY, na))
        info = {"na": na, "sheet_fwhm_um": None}
        psf2d, theory, kernel = _psf_file_kernel(fitted, info, family=FAMILY, pinhole_au=None,
                                                 log=lines.append)
        half, ok = debye_window(na=na, wavelength_um=0.52, ri=1.33, modality="widefield",
                                pixel_size=0.1)
        assert ok is not long
        if long:
            assert 2 * half + 1 > 5121
            np.testing.assert_array_equal(psf2d, np.asarray(fitted.axial, np.float32))
            assert "the kernel the fit used" in kernel
            assert len(lines) == 1
            assert "longer than the model computes" in lines[0]
        else:
            want, info_t = debye_axial_psf(na=na, wavelength_um=0.52, ri=1.33,
                                           modality="widefield", pixel_size=0.1)
            np.testing.assert_array_equal(psf2d, want)
            assert theory["fwhm_additional_px"] == info_t["fwhm_additional_px"]
            assert not lines
        assert psf2d.shape[0] == 1
        assert float(psf2d.sum()) == pytest.approx(1.0, abs=1e-5)
