"""PSF models, bead processing, the additional axial PSF and the check (isojax.psf)."""

import math
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile
from jax.test_util import check_grads

from isojax.errors import IsojaxInputError
from isojax.io import read_tiff
from isojax.psf import (
    FWHM_PER_SIGMA,
    axial_psf,
    check_psf,
    fwhm,
    gaussian_axial_psf,
    gaussian_psf,
    process_bead,
    resample_psf,
    theoretical_axial_psf,
    theoretical_psf,
    theoretical_sigmas,
)


def _gaussian_3d(shape, centre, sigma_vox):
    """Independent reference: a 3D Gaussian with its centre anywhere, sigmas in voxels."""
    grids = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    r2 = sum(((g - c) / s) ** 2 for g, c, s in zip(grids, centre, sigma_vox, strict=True))
    return np.exp(-0.5 * r2)


def _variance(profile):
    x = np.arange(profile.size) - profile.size // 2
    p = profile / profile.sum()
    return float((p * x**2).sum() - (p * x).sum() ** 2)


# ------------------------------------------------------------------------------ measurement


def test_fwhm_per_sigma_constant():
    assert pytest.approx(2.35482, abs=1e-5) == FWHM_PER_SIGMA


@pytest.mark.parametrize(("sigma", "rtol"), [(1.0, 0.03), (2.0, 0.005), (3.5, 0.002)])
@pytest.mark.parametrize("offset", [0.0, 0.3, -0.5])
def test_fwhm_of_sampled_gaussian(sigma, rtol, offset):
    x = np.arange(-30, 31)
    profile = np.exp(-0.5 * ((x - offset) / sigma) ** 2)
    assert fwhm(profile, spacing=0.1) == pytest.approx(0.1 * FWHM_PER_SIGMA * sigma, rel=rtol)


def test_fwhm_refuses_bad_profiles():
    with pytest.raises(IsojaxInputError, match="1D"):
        fwhm(np.ones((2, 2)))
    with pytest.raises(IsojaxInputError, match="positive peak"):
        fwhm(np.zeros(5))


# ---------------------------------------------------------------------------- Gaussian models


def test_gaussian_psf_moments():
    sigma = (0.3, 0.12, 0.1)
    spacing = (0.1, 0.04, 0.05)
    psf = np.asarray(gaussian_psf(sigma, spacing), dtype=np.float64)
    assert all(n % 2 == 1 for n in psf.shape)
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(np.argmax(psf), psf.shape) == tuple(n // 2 for n in psf.shape)
    for axis, (s, d) in enumerate(zip(sigma, spacing, strict=True)):
        other = tuple(a for a in range(3) if a != axis)
        # Sampled Gaussians with >= 2 samples per sigma have the continuous variance.
        assert math.sqrt(_variance(psf.sum(axis=other))) * d == pytest.approx(s, rel=1e-3)


@pytest.mark.parametrize(("sz", "sxy"), [(3.0, 1.0), (4.0, 0.0), (2.5, 1.5)])
def test_gaussian_axial_psf_adds_variances(sz, sxy):
    psf = np.asarray(gaussian_axial_psf(sz, sigma_lateral_px=sxy), dtype=np.float64)
    assert psf.shape[0] == 1
    assert psf.shape[1] % 2 == 1
    assert psf.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.argmax(psf[0]) == psf.shape[1] // 2
    # sqrt(sz^2 - sxy^2), not CSBDeep's sz - sxy (2.83 vs 2.0 for the first case).
    assert math.sqrt(_variance(psf[0])) == pytest.approx(math.sqrt(sz**2 - sxy**2), rel=2e-3)
    assert psf[0, 0] < 1e-3 * psf.max()  # decays to background at +-4 sigma


def test_gaussian_axial_psf_jit_and_grad():
    fn = jax.jit(lambda a, b: gaussian_axial_psf(a, sigma_lateral_px=b, size=21))
    np.testing.assert_allclose(fn(3.0, 1.0), gaussian_axial_psf(3.0, sigma_lateral_px=1.0,
                                                                size=21), atol=1e-7)
    weights = jnp.linspace(-1.0, 1.0, 21) ** 2

    def second_moment(a, b):
        return jnp.sum(gaussian_axial_psf(a, sigma_lateral_px=b, size=21)[0] * weights)

    check_grads(second_moment, (3.0, 1.0), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
    grad_a = jax.grad(second_moment)(3.0, 1.0)
    assert np.isfinite(grad_a)
    assert grad_a > 0


def test_gaussian_axial_psf_errors():
    with pytest.raises(IsojaxInputError, match="smaller than sigma_lateral_px"):
        gaussian_axial_psf(1.0, sigma_lateral_px=2.0)
    with pytest.raises(IsojaxInputError, match="odd"):
        gaussian_axial_psf(3.0, size=10)
    with pytest.raises(IsojaxInputError, match="pass size="):
        jax.jit(lambda a: gaussian_axial_psf(a))(3.0)


# ---------------------------------------------------------------------------------- theory

# Zhang et al. 2007, paraxial widefield: sigma_r = sqrt(2)/(k NA), sigma_z = 2 sqrt(6) n/(k NA^2)
# with k = 2 pi / lambda, i.e. sigma_r = 0.22508 lambda/NA and sigma_z = 0.77970 n lambda/NA^2.
# By hand for NA 1.4, lambda 0.52 um, n 1.515:
#   sigma_r = 0.22508 * 0.52 / 1.4 = 0.083601 um
#   sigma_z = 0.77970 * 1.515 * 0.52 / 1.96 = 0.31339 um
def test_widefield_sigmas_by_hand():
    s = theoretical_sigmas(na=1.4, wavelength_um=0.52, ri=1.515, modality="widefield")
    assert s.lateral_um == pytest.approx(0.083601, rel=1e-4)
    assert s.axial_um == pytest.approx(0.31339, rel=1e-4)
    assert s.fwhm_lateral_um == pytest.approx(2.35482 * 0.083601, rel=1e-4)


def test_confocal_small_pinhole_limit():
    # As r -> 0, k_em becomes sqrt(k_ex^2 + k_em^2); for 0.488/0.52 um and NA 1.4, n 1.515:
    # k = 2 pi sqrt(1/0.488^2 + 1/0.52^2) = 17.657 /um; sigma_r = sqrt(2)/(17.657*1.4) = 0.057209,
    # sigma_z = 2 sqrt(6) 1.515 / (17.657 * 1.96) = 0.21446 um.
    limit = theoretical_sigmas(na=1.4, wavelength_um=0.52, ri=1.515, modality="confocal",
                               excitation_um=0.488, pinhole_au=0)
    assert limit.lateral_um == pytest.approx(0.057209, rel=1e-4)
    assert limit.axial_um == pytest.approx(0.21446, rel=1e-4)
    # The Bessel-function formula for a finite pinhole tends to that limit.
    tiny = theoretical_sigmas(na=1.4, wavelength_um=0.52, ri=1.515, modality="confocal",
                              excitation_um=0.488, pinhole_au=1e-3)
    assert tiny.lateral_um == pytest.approx(limit.lateral_um, rel=1e-4)
    assert tiny.axial_um == pytest.approx(limit.axial_um, rel=1e-4)


def test_confocal_one_airy_unit():
    # At 1 AU, c2 = k_em r NA = 2 pi 0.61 = 3.8327, next to the first zero of J1 (3.8317), so the
    # detection term of sigma_r vanishes: sigma_r ~ sqrt(2)/(k_ex NA), widefield at lambda_ex.
    s = theoretical_sigmas(na=1.4, wavelength_um=0.52, ri=1.515, modality="confocal",
                           excitation_um=0.488)
    k_ex = 2 * math.pi / 0.488
    assert s.lateral_um == pytest.approx(math.sqrt(2) / (k_ex * 1.4), rel=1e-3)
    wide = theoretical_sigmas(na=1.4, wavelength_um=0.52, ri=1.515, modality="widefield")
    small = theoretical_sigmas(na=1.4, wavelength_um=0.52, ri=1.515, modality="confocal",
                               excitation_um=0.488, pinhole_au=0)
    assert small.axial_um < s.axial_um < wide.axial_um  # sectioning improves as it closes


def test_lightsheet_combines_inverse_variances():
    wide = theoretical_sigmas(na=0.8, wavelength_um=0.6, ri=1.33, modality="widefield")
    s = theoretical_sigmas(na=0.8, wavelength_um=0.6, ri=1.33, modality="lightsheet",
                           sheet_fwhm_um=1.5)
    sheet = 1.5 / 2.35482
    assert s.lateral_um == wide.lateral_um
    assert s.axial_um == pytest.approx((wide.axial_um**-2 + sheet**-2) ** -0.5, rel=1e-5)
    thick = theoretical_sigmas(na=0.8, wavelength_um=0.6, ri=1.33, modality="lightsheet",
                               sheet_fwhm_um=1e4)
    assert thick.axial_um == pytest.approx(wide.axial_um, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"modality": "confocal"}, "excitation"),
     ({"modality": "lightsheet"}, "sheet"),
     ({"modality": "sted"}, "unknown modality"),
     ({"modality": "widefield", "na": 1.6}, "smaller than the refractive index"),
     ({"modality": "widefield", "wavelength_um": 520}, "micrometres")],
)
def test_theory_errors(kwargs, match):
    args = {"na": 1.4, "wavelength_um": 0.52, "ri": 1.515} | kwargs
    with pytest.raises(IsojaxInputError, match=match):
        theoretical_sigmas(**args)


def test_theoretical_psf_and_axial_psf():
    psf3d, s = theoretical_psf(na=1.0, wavelength_um=0.5, ri=1.33, modality="widefield",
                               spacing=(0.1, 0.05, 0.05))
    assert float(psf3d.sum()) == pytest.approx(1.0, abs=1e-5)
    psf2d, info = theoretical_axial_psf(na=1.0, wavelength_um=0.5, ri=1.33,
                                        modality="widefield", pixel_size=0.05)
    expected = math.sqrt(s.axial_um**2 - s.lateral_um**2) / 0.05
    assert info["sigma_additional_px"] == pytest.approx(expected)
    assert math.sqrt(_variance(psf2d[0])) == pytest.approx(expected, rel=2e-3)


# ------------------------------------------------------------------------------ axial_psf


@pytest.mark.parametrize(
    ("sxy", "sz", "spacing", "pixel_size"),
    [(1.0, 3.0, (0.1, 0.1, 0.1), 0.1),
     (1.5, 4.0, (0.1, 0.1, 0.1), 0.1),
     (1.0, 3.0, (0.2, 0.05, 0.05), 0.1),   # coarser z, finer xy than the image
     (1.5, 3.0, (0.05, 0.12, 0.12), 0.1)],  # finer z, coarser xy than the image
)
def test_axial_psf_of_gaussian(sxy, sz, spacing, pixel_size):
    # sxy, sz in image pixels; the bead grid has its own spacing and an off-grid centre.
    sig_vox = [s * pixel_size / d for s, d in zip((sz, sxy, sxy), spacing, strict=True)]
    shape = [2 * math.ceil(5 * s) + 3 for s in sig_vox]
    centre = [n // 2 + off for n, off in zip(shape, (0.3, -0.4, 0.2), strict=True)]
    psf3d = _gaussian_3d(shape, centre, sig_vox)
    psf2d, info = axial_psf(psf3d, spacing, pixel_size)
    assert psf2d.dtype == np.float32
    assert all(n % 2 == 1 for n in psf2d.shape)
    assert psf2d.min() >= 0
    assert psf2d.sum() == pytest.approx(1.0, abs=1e-5)
    lat, ax = (n // 2 for n in psf2d.shape)
    assert np.unravel_index(np.argmax(psf2d), psf2d.shape) == (lat, ax)
    expected = math.sqrt(sz**2 - sxy**2)
    assert fwhm(psf2d[lat]) / FWHM_PER_SIGMA == pytest.approx(expected, rel=0.05)
    assert info["fwhm_px"][1] / FWHM_PER_SIGMA == pytest.approx(expected, rel=0.05)
    # Laterally a delta: FWHM of at most 1.5 pixels (the input had 2.355 sxy >= 2.4 px).
    assert fwhm(psf2d[:, ax]) < 1.5
    # The input lateral FWHM (spline-resampled off-grid samples) is reported within 5%.
    assert info["fwhm_input_px"][0] == pytest.approx(FWHM_PER_SIGMA * sxy, rel=0.05)


def test_axial_psf_single_plane_and_errors():
    psf3d = _gaussian_3d((31, 15, 15), (15, 7, 7), (3.0, 1.0, 1.0))
    psf2d, info = axial_psf(psf3d, (0.1, 0.1, 0.1), 0.1, planes="xz")
    assert info["planes"] == ("xz",)
    assert fwhm(psf2d[psf2d.shape[0] // 2]) / FWHM_PER_SIGMA == pytest.approx(
        math.sqrt(8), rel=0.05)
    with pytest.raises(IsojaxInputError, match="3D PSF"):
        axial_psf(psf3d[0], (0.1, 0.1, 0.1), 0.1)
    with pytest.raises(IsojaxInputError, match="pixel_size"):
        axial_psf(psf3d, (0.1, 0.1, 0.1), 0.0)
    with pytest.raises(IsojaxInputError, match="NaN"):
        axial_psf(np.full((5, 5, 5), np.nan), (0.1, 0.1, 0.1), 0.1)


# ---------------------------------------------------------------------------- process_bead


def test_process_bead_synthetic():
    rng = np.random.default_rng(0)
    true_centre = (20.3, 18.6, 21.45)
    bead = 1000 * _gaussian_3d((41, 40, 44), true_centre, (3.0, 1.5, 1.5))
    stack = bead + 100 + rng.normal(0, 3, bead.shape)
    psf, spacing, info = process_bead(stack, (0.2, 0.1, 0.1))
    assert spacing == (0.2, 0.1, 0.1)
    assert info["background"] == pytest.approx(100, abs=0.5)
    assert info["noise_sd"] == pytest.approx(3, rel=0.15)
    np.testing.assert_allclose(info["centre_voxels_zyx"], true_centre, atol=0.05)
    assert all(n % 2 == 1 for n in psf.shape)
    assert psf.min() >= 0
    assert psf.sum() == pytest.approx(1.0)
    grids = np.meshgrid(*(np.arange(n) for n in psf.shape), indexing="ij")
    centroid = [float((g * psf).sum()) for g in grids]
    np.testing.assert_allclose(centroid, [n // 2 for n in psf.shape], atol=0.1)
    np.testing.assert_allclose(info["fwhm_voxels_zyx"],
                               np.array([3.0, 1.5, 1.5]) * FWHM_PER_SIGMA, rtol=0.05)


def test_process_bead_refuses_noise():
    noise = np.random.default_rng(1).normal(100, 5, (20, 20, 20))
    with pytest.raises(IsojaxInputError, match="no bead stands out"):
        process_bead(noise, (0.2, 0.1, 0.1))
    with pytest.raises(IsojaxInputError, match="3D"):
        process_bead(np.ones((20, 20)), (0.2, 0.1, 0.1))


# --------------------------------------------------------------------------- real beads


def _assert_sane_axial_psf(psf2d, info):
    assert np.all(np.isfinite(psf2d))
    assert psf2d.min() >= 0
    assert psf2d.sum() == pytest.approx(1.0, abs=1e-5)
    assert all(n % 2 == 1 for n in psf2d.shape)
    fwhm_lateral, fwhm_axial = info["fwhm_px"]
    assert fwhm_axial > 2 * fwhm_lateral
    # Passes the check without a single warning (pytest turns warnings into errors).
    _, report = check_psf(psf2d, pixel_size=info["pixel_size_um"])
    assert report.edge_fraction < 0.01
    assert max(abs(o) for o in report.centre_offset_px) < 1.0
    return report


def test_real_lattice_bead(psf_data):
    stack = tifffile.imread(psf_data / "lattice_bead_crop.tif")
    psf3d, spacing, bead = process_bead(stack, (0.1, 0.101, 0.101))
    # A lattice light sheet is far longer axially than laterally.
    fz, fy, fx = bead["fwhm_um_zyx"]
    assert 0.2 < fy < 0.5
    assert 0.2 < fx < 0.5
    assert fz > 1.5 * max(fy, fx)
    psf2d, info = axial_psf(psf3d, spacing, 0.101)
    report = _assert_sane_axial_psf(psf2d, info)
    assert report.fwhm_um[1] > 0.3


@pytest.mark.parametrize("pixel_size", [0.05, 0.1])
def test_real_confocal_average_psf(psf_data, pixel_size):
    stack = tifffile.imread(psf_data / "confocal_psf_crop.tif")
    psf3d, spacing, _ = process_bead(stack, (0.125, 0.0225, 0.0225))
    psf2d, info = axial_psf(psf3d, spacing, pixel_size)
    _assert_sane_axial_psf(psf2d, info)
    assert info["resampling_factors_zyx"] == pytest.approx(
        (0.125 / pixel_size, 0.0225 / pixel_size, 0.0225 / pixel_size))


def test_real_confocal_bead_image(psf_data):
    stack, spacing, source = read_tiff(psf_data / "confocal_bead_crop.tif")
    assert source == "imagej"
    psf3d, spacing, bead = process_bead(stack, spacing)
    assert bead["peak_snr"] > 10
    psf2d, info = axial_psf(psf3d, spacing, 0.05)
    _assert_sane_axial_psf(psf2d, info)


#: Every bead file in tests/data/psf with the voxel size its README gives (None: in the file).
BEAD_FILES = {
    "confocal_bead_crop.tif": None,
    "confocal_psf_crop.tif": (0.125, 0.0225, 0.0225),
    "lattice_bead_crop.tif": (0.1, 0.101, 0.101),
}


@pytest.fixture(scope="module")
def processed_beads():
    data = Path(__file__).parent / "data" / "psf"
    beads = {}
    for name, spacing in BEAD_FILES.items():
        stack, spacing, _ = read_tiff(data / name, spacing=spacing)
        psf3d, spacing, _ = process_bead(stack, spacing)
        beads[name] = (psf3d, spacing)
    return beads


def _strip_zero_frame(h):
    """``h`` without the all-zero outer lines (the background that the crop was padded with)."""
    while h.shape[0] > 3 and not h[[0, -1], :].any():
        h = h[1:-1]
    while h.shape[1] > 3 and not h[:, [0, -1]].any():
        h = h[:, 1:-1]
    return h


def test_every_bead_file_is_in_the_table(psf_data):
    assert sorted(p.name for p in psf_data.glob("*.tif")) == sorted(BEAD_FILES)


@pytest.mark.parametrize("pixel_size", [0.05, 0.1, 0.2, 0.3])
@pytest.mark.parametrize("name", sorted(BEAD_FILES))
def test_derived_psf_passes_its_own_check(processed_beads, name, pixel_size):
    # at 0.2 um the confocal bead's PSF is about one pixel wide laterally and its crop was
    # 3 pixels: 12.4% of the mass sat on the frame that check_psf warns about
    psf3d, spacing = processed_beads[name]
    psf2d, info = axial_psf(psf3d, spacing, pixel_size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = check_psf(psf2d, pixel_size=pixel_size)
    assert not report.warnings
    assert report.edge_fraction < 0.01
    assert all(n % 2 == 1 for n in psf2d.shape)
    assert psf2d.sum() == pytest.approx(1.0, abs=1e-5)
    # the padding is background only: the widths are those of the PSF without it
    core = _strip_zero_frame(psf2d)
    lc, ac = core.shape[0] // 2, core.shape[1] // 2
    mid = (psf2d.shape[0] // 2, psf2d.shape[1] // 2)
    assert fwhm(psf2d[:, mid[1]]) == pytest.approx(fwhm(core[:, ac]), rel=0.02)
    assert fwhm(psf2d[mid[0], :]) == pytest.approx(fwhm(core[lc, :]), rel=0.02)
    assert info["fwhm_px"] == pytest.approx((fwhm(psf2d[:, mid[1]]), fwhm(psf2d[mid[0], :])))


# ------------------------------------------------------------------------------ check_psf


def _good_psf():
    return np.asarray(gaussian_axial_psf(3.0, size=25), dtype=np.float64)


def test_check_accepts_good_psf_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed, report = check_psf(_good_psf(), pixel_size=0.1, image_pixel_size=0.1)
    assert fixed.sum() == pytest.approx(1.0)
    assert report.shape == (1, 25)
    assert report.axes == ("lateral", "axial")
    assert report.fixes == ()
    assert report.warnings == ()
    assert report.fwhm_px[1] == pytest.approx(FWHM_PER_SIGMA * 3.0, rel=0.01)
    assert report.fwhm_um[1] == pytest.approx(0.1 * FWHM_PER_SIGMA * 3.0, rel=0.01)
    assert report.centre_offset_px == pytest.approx((0.0, 0.0), abs=1e-9)
    text = str(report)
    assert "FWHM" in text
    assert "usable as is" in text
    with pytest.raises(AttributeError):
        report.total = 2.0  # frozen


def test_check_renormalises_with_warning():
    with pytest.warns(UserWarning, match=r"renormalised to sum 1 \(the sum was 5\)"):
        fixed, report = check_psf(5 * _good_psf())
    assert fixed.sum() == pytest.approx(1.0)
    assert report.total == pytest.approx(5.0)
    assert "renormalised" in str(report)


def test_check_clips_tiny_negative_noise():
    psf = _good_psf()
    psf[0, 0] = -1e-4
    with pytest.warns(UserWarning, match="clipped 1 small negative.*renormalised"):
        fixed, report = check_psf(psf)
    assert fixed.min() >= 0
    assert report.n_negative == 1


def test_check_warns_on_cropped_psf():
    cropped = np.asarray(gaussian_axial_psf(3.0, size=5), dtype=np.float64)
    with pytest.warns(UserWarning, match="outer 1-pixel frame"):
        _, report = check_psf(cropped)
    assert report.edge_fraction > 0.1


def test_check_warns_off_centre():
    psf = np.roll(_good_psf(), 3, axis=1)
    with pytest.warns(UserWarning, match="off the centre"):
        _, report = check_psf(psf)
    assert report.centre_offset_px[1] == pytest.approx(3.0, abs=0.05)  # minus what wrapped


@pytest.mark.parametrize(
    ("psf", "match"),
    [(np.full((3, 5), np.nan), "NaN or infinite"),
     (np.array([[0.0, np.inf, 0.0]]), "NaN or infinite"),
     (np.zeros((3, 5)), "all zeros"),
     (-np.ones((3, 5)), "not positive"),
     (np.ones((3, 5, 7)), "isojax psf axial"),
     (np.ones(7), r"psf\[None, :\]"),
     (np.ones((1, 3, 5, 7)), "2D"),
     (np.array([[0.5, -0.2, 0.7]]), "negative"),
     (np.array([["a", "b"]]), "real numbers")],
)
def test_check_refuses(psf, match):
    with pytest.raises(IsojaxInputError, match=match):
        check_psf(psf)


def test_check_refuses_pixel_mismatch():
    with pytest.raises(IsojaxInputError, match="resample_psf"):
        check_psf(_good_psf(), pixel_size=0.05, image_pixel_size=0.1)


def test_resample_psf_halves_width():
    fine = np.asarray(gaussian_axial_psf(4.0, size=41))
    coarse = resample_psf(fine, pixel_size=0.05, target_pixel_size=0.1)
    assert coarse.shape == (1, 21)
    assert coarse.sum() == pytest.approx(1.0, abs=1e-6)
    assert math.sqrt(_variance(coarse[0])) == pytest.approx(2.0, rel=0.01)
    fixed, _ = check_psf(coarse, pixel_size=0.1, image_pixel_size=0.1)
    assert fixed.shape == (1, 21)


# --------------------------------------------------------------------------------------------
# The checked PSF object and its sources


def test_axial_psf_is_checked_once_normalised_and_read_only():
    from isojax.psf import AxialPSF

    raw = 3.0 * np.asarray(gaussian_axial_psf(2.0), np.float64)  # sums to 3
    with pytest.warns(UserWarning, match="renormalised"):
        p = AxialPSF.checked(raw, pixel_size=0.1, provenance="test")
    assert p.kernel.dtype == np.float32
    assert p.kernel.sum() == pytest.approx(1.0, abs=1e-6)
    assert p.shape == raw.shape
    assert p.dense() is p.kernel
    assert (p.pixel_size, p.provenance) == (0.1, "test")
    assert p.report.total == pytest.approx(3.0)
    with pytest.raises(ValueError, match="read-only"):
        p.kernel[0, 0] = 1.0
    np.testing.assert_allclose(np.asarray(p.factored().dense()), p.kernel, atol=1e-6)


def test_a_factored_psf_stays_factored():
    from isojax.forward import FactoredPSF
    from isojax.psf import AxialPSF

    axial = np.asarray(gaussian_axial_psf(2.0), np.float32)
    f = FactoredPSF(np.ones((1, 1), np.float32), axial)
    p = AxialPSF.checked(f, pixel_size=None, provenance="calibration (gaussian)")
    assert isinstance(p.kernel, FactoredPSF)
    assert p.factored() is p.kernel
    assert p.shape == axial.shape
    np.testing.assert_allclose(p.dense(), axial, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel": np.ones((3, 3))}, "float32 2D"),
        ({"kernel": np.ones((3,), np.float32)}, "float32 2D"),
        ({"kernel": np.ones((3, 3), np.float32), "pixel_size": 0.0}, "pixel size must be"),
        ({"kernel": np.ones((3, 3), np.float32), "provenance": " "}, "provenance"),
    ],
)
def test_an_unchecked_psf_object_is_refused(kwargs, match):
    from isojax.psf import AxialPSF

    with pytest.raises(IsojaxInputError, match=match):
        AxialPSF(**{"pixel_size": 0.1, "provenance": "test", **kwargs})


@pytest.fixture
def check_calls(monkeypatch):
    """Counts the calls of check_psf (the real one runs)."""
    import isojax.psf.check as check_module

    calls = []
    real = check_module.check_psf

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(check_module, "check_psf", counted)
    return calls


def test_resolve_psf_checks_each_source_once(tmp_path, check_calls):
    from isojax.io import write_tiff
    from isojax.psf import AxialPSF
    from isojax.psf.sources import resolve_psf

    lines = []
    p = np.asarray(gaussian_axial_psf(2.0, sigma_lateral_px=1.0), np.float32)
    write_tiff(tmp_path / "psf.tif", p, pixel_size=0.2)  # resampled to 0.1 um
    out = resolve_psf(pixel_size=0.1, psf=tmp_path / "psf.tif", log=lines.append)
    assert isinstance(out, AxialPSF)
    assert len(check_calls) == 1
    assert out.provenance == f"file {tmp_path / 'psf.tif'}"
    assert out.pixel_size == 0.1
    assert out.report.fwhm_px[1] == pytest.approx(2 * fwhm(p[p.shape[0] // 2]), rel=0.05)
    assert any("resampled the PSF from 0.2" in line for line in lines)
    theory = resolve_psf(pixel_size=0.1, theory={"na": 0.8, "wavelength_um": 0.5, "ri": 1.33,
                                                 "modality": "widefield"}, log=lines.append)
    assert len(check_calls) == 2
    assert theory.provenance.startswith("theory (na 0.8, wavelength_um 0.5")
    assert theory.kernel.dtype == np.float32


def test_resolve_psf_names_the_file_it_refuses(tmp_path):
    from isojax.io import write_tiff
    from isojax.psf.sources import resolve_psf

    write_tiff(tmp_path / "bead.tif", np.ones((5, 9, 9), np.float32), spacing=(0.3, 0.2, 0.2))
    with pytest.raises(IsojaxInputError, match=r"bead\.tif: resample_psf needs a 2D.*psf axial"):
        resolve_psf(pixel_size=0.1, psf=tmp_path / "bead.tif", log=lambda m: None)
    write_tiff(tmp_path / "same.tif", np.ones((5, 9, 9), np.float32), spacing=(0.3, 0.1, 0.1))
    with pytest.raises(IsojaxInputError, match=r"same\.tif: the PSF is 3D"):
        resolve_psf(pixel_size=0.1, psf=tmp_path / "same.tif", log=lambda m: None)
