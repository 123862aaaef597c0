"""Scores of a restoration against its reference (isojax.metrics, re-exported by isojax.simulate)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import isojax
from isojax import metrics, simulate
from isojax.metrics import psnr, ssim


def _ssim_reference(x, y, data_range, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
    """Straightforward SSIM after Wang et al. (2004) with scipy's Gaussian filter."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)

    def f(a):
        return ndimage.gaussian_filter(a, sigma, truncate=truncate, mode="reflect")

    mx, my = f(x), f(y)
    sxx = f(x * x) - mx**2
    syy = f(y * y) - my**2
    sxy = f(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    r = int(truncate * sigma + 0.5)  # drop the border the filter had to invent
    return s[tuple(slice(r, -r) for _ in range(x.ndim))].mean()


@pytest.mark.parametrize("shape", [(32, 27), (14, 16, 13)])
def test_ssim_matches_a_numpy_reference(shape):
    rng = np.random.default_rng(0)
    truth = ndimage.gaussian_filter(rng.random(shape), 1.0)
    pred = truth + 0.05 * rng.standard_normal(shape)
    dr = truth.max() - truth.min()
    got = float(ssim(jnp.asarray(pred, jnp.float32), jnp.asarray(truth, jnp.float32)))
    assert got == pytest.approx(_ssim_reference(pred, truth, dr), abs=2e-4)
    got = float(ssim(pred.astype(np.float32), truth.astype(np.float32), data_range=1.0))
    assert got == pytest.approx(_ssim_reference(pred, truth, 1.0), abs=2e-4)


def test_ssim_closed_forms():
    x = jnp.asarray(np.random.default_rng(1).random((16, 16)), jnp.float32)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(x, 1.0 - x, data_range=1.0)) < 0  # anti-correlated
    with pytest.raises(ValueError, match="window"):
        ssim(x[:8], x[:8])
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, x[:, :15])


def test_psnr_closed_forms():
    x = jnp.asarray(np.random.default_rng(2).random((8, 9, 10)), jnp.float32)
    assert float(psnr(x, x)) == math.inf
    # MSE = 0.01 and range 1 -> 20 dB
    assert float(psnr(jnp.full(10, 0.1), jnp.zeros(10), data_range=1.0)) == pytest.approx(20.0)
    # default range = truth.max() - truth.min() = 2; MSE = 0.04 -> 10 log10(4 / 0.04) = 20 dB
    truth = jnp.asarray([0.0, 2.0, 1.0, 1.0])
    pred = truth + jnp.asarray([0.2, -0.2, 0.2, -0.2])
    assert float(psnr(pred, truth)) == pytest.approx(20.0, abs=1e-4)
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, x[0])


def test_scores_stay_importable_from_simulate_and_the_package():
    assert simulate.psnr is metrics.psnr
    assert simulate.ssim is metrics.ssim
    assert isojax.psnr is metrics.psnr
    assert isojax.ssim is metrics.ssim
    assert {"psnr", "ssim"} <= set(simulate.__all__)
