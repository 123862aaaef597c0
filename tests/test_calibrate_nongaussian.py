"""PSF self-calibration of non-Gaussian additional axial PSFs (light-sheet side lobes)."""

import jax
import numpy as np
import pytest
from scipy import ndimage as ndi

from isojax import calibrate
from isojax.calibrate.params import shape_roughness
from isojax.psf import fwhm

S = 3  # subsample (axial step, px)


def _l1(a, b):
    n = max(a.size, b.size)
    pa = np.pad(a / a.sum(), ((n - a.size) // 2,))
    pb = np.pad(b / b.sum(), ((n - b.size) // 2,))
    return float(np.abs(pa - pb).sum())


def _light_sheet(a):
    """Paraxial widefield detection profile sinc^2(z / a) times a Gaussian sheet (sigma 2a)."""
    z = np.arange(-4 * a, 4 * a + 1, dtype=np.float64)
    h = np.sinc(z / a) ** 2 * np.exp(-0.5 * (z / (2 * a)) ** 2)
    return h / h.sum()


def _stack(h, *, planes=24, lateral=64, seed=0):
    """A noise-free stack of an isotropic texture (not isojax's simulator): lateral
    Gaussian sigma 1 px on all axes, then ``h`` along z, then every S-th plane."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(planes * S, lateral, lateral))
    vol = np.exp(0.7 * sum(ndi.gaussian_filter(w, s, mode="wrap") * s for s in (1.0, 2.0, 4.0)))
    vol = ndi.gaussian_filter(vol, 1.0, mode="wrap")
    return ndi.convolve1d(vol, h, axis=0, mode="wrap")[::S].astype(np.float32)


def test_shape_roughness_is_width_free_where_the_second_difference_is_not():
    x = np.arange(-40, 41)
    gauss = [np.exp(-0.5 * (x / s) ** 2) for s in (1.5, 3.0, 6.0)]
    shape = [float(shape_roughness(g)) for g in gauss]
    # about 3/4 for every width (a sampled Gaussian of 1.5 px: 0.63), where the
    # second-difference roughness changes 256-fold between sigma 1.5 and 6 px
    np.testing.assert_allclose(shape, 0.70, rtol=0.12)
    plain = [float(calibrate.smoothness_penalty(g)) for g in gauss]
    assert plain[0] > 100 * plain[2]  # the old penalty: 2^4 per halving of the width
    comb = gauss[1] * (1 + 0.5 * (-1.0) ** x)
    assert float(shape_roughness(comb)) > 10 * shape[1]
    box = np.pad(np.r_[0.5, np.ones(5), 0.5], 4)
    assert float(shape_roughness(box)) > 2 * shape[1]


def test_free_family_recovers_light_sheet_side_lobes():
    # Before the width-free penalty, the second-difference penalty (weight 1) dominated
    # the spectral term and widened the kernel: FWHM +86%, L1 0.59 on such a stack.
    h = _light_sheet(S)
    stack = _stack(h)
    psf, report = calibrate.fit_psf(jax.random.key(1), stack, subsample=float(S), family="free",
                                    steps=25)
    axial = np.asarray(psf.axial[0], np.float64)
    assert axial.min() >= 0
    assert axial.sum() == pytest.approx(1.0, abs=1e-5)
    assert _l1(axial, h) < 0.2
    assert report.fwhm_px == pytest.approx(fwhm(h), rel=0.2)
