"""Scores of a restoration against its reference: :func:`psnr` and :func:`ssim`.

Pure functions of two arrays of the same shape (2D or 3D for SSIM), jitted, with the
reference's value range as the default data range. :mod:`isojax.simulate` re-exports
both, next to the simulated truth they are usually computed against.

References:
  Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from
  error visibility to structural similarity", IEEE Trans. Image Processing 13(4):600-612
  (2004), doi:10.1109/TIP.2003.819861 (SSIM). Cited below as [Wang2004].
"""

from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

Array = jax.Array

__all__ = ["psnr", "ssim"]


# also isojax.simulate's number check (simulate imports metrics, never the other way)
def _check_positive(value, name: str, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    return v


def _check_pair(pred, truth, name: str) -> tuple[Array, Array]:
    pred = jnp.asarray(pred)
    truth = jnp.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(
            f"{name} needs pred and truth of the same shape, got {pred.shape} and {truth.shape}; "
            "crop the restoration to the reference's grid first."
        )
    dtype = jnp.promote_types(jnp.result_type(pred, truth), jnp.float32)
    return pred.astype(dtype), truth.astype(dtype)


def _data_range(truth: Array, data_range) -> Array:
    if data_range is None:
        return jnp.max(truth) - jnp.min(truth)
    return jnp.asarray(data_range, truth.dtype)


@jax.jit
def _psnr(pred, truth, data_range):
    mse = jnp.mean((pred - truth) ** 2)
    dr = _data_range(truth, data_range)
    return jnp.where(mse == 0, jnp.inf, 10.0 * jnp.log10(dr * dr / jnp.where(mse == 0, 1, mse)))


def psnr(pred: ArrayLike, truth: ArrayLike, *, data_range: ArrayLike | None = None) -> Array:
    """Peak signal-to-noise ratio in decibels, ``10 log10(data_range^2 / MSE)``.

    Args:
      pred: restoration, any shape.
      truth: reference of the same shape (e.g. :attr:`isojax.simulate.Acquisition.reference`).
      data_range: the peak value range; default ``truth.max() - truth.min()``.

    Returns:
      Scalar (float32, or float64 under x64); ``inf`` when ``pred == truth``.

    Raises:
      ValueError: if the shapes differ.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(psnr(jnp.full(4, 0.1), jnp.zeros(4), data_range=1.0)), 4)
      20.0
    """
    pred, truth = _check_pair(pred, truth, "psnr")
    return _psnr(pred, truth, data_range)


def _blur_valid(v: Array, kernel: np.ndarray) -> Array:
    """Separable 'valid' filtering of every axis of v with a 1D kernel."""
    k = len(kernel)
    for axis in range(v.ndim):
        n = v.shape[axis] - k + 1
        v = functools.reduce(operator.add, [
            lax.slice_in_dim(v, i, i + n, axis=axis) * jnp.asarray(w, v.dtype)
            for i, w in enumerate(kernel)
        ])
    return v


@functools.partial(jax.jit, static_argnames=("sigma", "truncate"))
def _ssim(pred, truth, data_range, k1, k2, *, sigma, truncate):
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    dr = _data_range(truth, data_range)
    c1 = (k1 * dr) ** 2
    c2 = (k2 * dr) ** 2
    mx, my = _blur_valid(pred, kernel), _blur_valid(truth, kernel)
    sxx = _blur_valid(pred * pred, kernel) - mx * mx
    syy = _blur_valid(truth * truth, kernel) - my * my
    sxy = _blur_valid(pred * truth, kernel) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return jnp.mean(num / den)


def ssim(
    pred: ArrayLike,
    truth: ArrayLike,
    *,
    data_range: ArrayLike | None = None,
    sigma: float = 1.5,
    truncate: float = 3.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Array:
    """Mean structural similarity (SSIM) with a Gaussian window, in 2D or 3D [Wang2004].

    Local means, variances and the covariance are weighted by a Gaussian window of standard
    deviation ``sigma`` pixels, radius ``int(truncate * sigma + 0.5)`` (5 pixels, an 11-pixel
    window, by default: Wang et al.'s 11x11 window of sigma 1.5, extended to 3D), with
    population (not sample) statistics. The SSIM map

    ``((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))``,
    ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``, ``L = data_range``,

    is averaged over the positions where the window lies entirely inside the image. This
    matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False, data_range=L)``.

    Args:
      pred: restoration, 2D ``(y, x)`` or 3D ``(z, y, x)``.
      truth: reference of the same shape.
      data_range: the value range ``L``; default ``truth.max() - truth.min()``.
      sigma: standard deviation of the Gaussian window in pixels (1.5 in [Wang2004]).
      truncate: window radius in units of ``sigma``.
      k1: stabilising constant of the luminance term (0.01 in [Wang2004]).
      k2: stabilising constant of the contrast-structure term (0.03 in [Wang2004]).

    Returns:
      Scalar mean SSIM, 1 for identical images, at most 1.

    Raises:
      ValueError: different shapes, not 2D or 3D, or an axis shorter than the window.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(256.0).reshape(16, 16)
      >>> float(ssim(x, x))
      1.0
    """
    pred, truth = _check_pair(pred, truth, "ssim")
    if pred.ndim not in (2, 3):
        raise ValueError(f"ssim needs 2D (y, x) or 3D (z, y, x) images, got shape {pred.shape}.")
    s = _check_positive(sigma, "sigma")
    t = _check_positive(truncate, "truncate")
    window = 2 * int(t * s + 0.5) + 1
    if min(pred.shape) < window:
        raise ValueError(
            f"ssim's Gaussian window is {window} pixels wide, longer than the shortest axis of "
            f"the images {pred.shape}; use larger images or a smaller sigma."
        )
    return _ssim(pred, truth, data_range, k1, k2, sigma=s, truncate=t)
