"""Parameterisations of the additional axial PSF ``h`` that calibration fits.

Each family maps unconstrained parameters to a kernel that is, by construction,
non-negative, sums to 1 and is symmetric (:func:`psf_from_params`): ``"gaussian"``,
``"multi-gaussian"`` (a central Gaussian plus symmetric side-lobe pairs) and ``"free"``
(the softmax of logits, regularised by :func:`shape_roughness`). Also the widths of a
kernel (:func:`psf_sigma`) and the family check shared by the package.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from isojax.errors import IsojaxInputError
from isojax.forward import FactoredPSF

Array = jax.Array
Family = Literal["gaussian", "multi-gaussian", "free"]

__all__ = [
    "FAMILIES",
    "Family",
    "continuous_sigma",
    "init_params",
    "psf_from_params",
    "psf_sigma",
    "shape_roughness",
    "smoothness_penalty",
]

FAMILIES = ("gaussian", "multi-gaussian", "free")
_FWHM_PER_SIGMA = math.sqrt(8.0 * math.log(2.0))


def _support(init_fwhm_px: float, n_max: int) -> int:
    """Odd kernel length that holds a Gaussian of up to 3x the initial width (+-4 sigma)."""
    sigma_max = 3.0 * init_fwhm_px / _FWHM_PER_SIGMA
    taps = 2 * math.ceil(4.0 * max(sigma_max, 1.0)) + 1
    cap = n_max if n_max % 2 else n_max - 1
    return max(3, min(taps, cap))


def init_params(family: Family, *, fwhm_px: float, taps: int, n_lobes: int = 1) -> dict:
    """Parameters of a PSF family that start at a Gaussian of the given FWHM.

    Args:
      family: ``"gaussian"``, ``"multi-gaussian"`` or ``"free"``.
      fwhm_px: initial axial FWHM in lateral pixels, > 0.
      taps: odd length of the axial kernel in pixels.
      n_lobes: side-lobe pairs of ``"multi-gaussian"`` (>= 1).

    Returns:
      A dict of float32 arrays (a pytree) for :func:`psf_from_params`.

    Raises:
      IsojaxInputError: unknown family, a non-positive width, an even ``taps``.
    """
    _check_family(family)
    if not (math.isfinite(fwhm_px) and fwhm_px > 0):
        raise IsojaxInputError(f"the initial FWHM must be a positive number of pixels, got {fwhm_px}")
    if taps < 1 or taps % 2 == 0:
        raise IsojaxInputError(f"taps must be a positive odd number of pixels, got {taps}")
    sigma = fwhm_px / _FWHM_PER_SIGMA
    if family == "gaussian":
        return {"log_sigma": jnp.float32(math.log(sigma))}
    if family == "multi-gaussian":
        k = int(n_lobes)
        if k < 1:
            raise IsojaxInputError(f"n_lobes must be >= 1 for 'multi-gaussian', got {n_lobes}")
        return {
            "log_sigma": jnp.full((k + 1,), math.log(sigma), jnp.float32),
            # lobes start 2 sigma out with 2% of the mass each (a near-Gaussian start)
            "log_offset": jnp.full((k,), math.log(2.0 * sigma), jnp.float32)
            + jnp.log(jnp.arange(1, k + 1, dtype=jnp.float32)),
            "logits": jnp.concatenate(
                [jnp.zeros(1, jnp.float32), jnp.full((k,), math.log(0.01), jnp.float32)]
            ),
        }
    x = np.arange(taps // 2 + 1, dtype=np.float64)
    return {"logits": jnp.asarray(np.maximum(-0.5 * (x / sigma) ** 2, -30.0), jnp.float32)}


def _gauss(x, mu, sigma):
    g = jnp.exp(-0.5 * ((x - mu) / sigma) ** 2)
    return g / jnp.sum(g)


def psf_from_params(family: Family, params: dict, *, taps: int, lateral_sigma: float = 0.0) -> FactoredPSF:
    """The PSF of a family's parameters, as a rank-one :class:`~isojax.forward.FactoredPSF`.

    Every family is non-negative and sums to 1 whatever its parameters, and symmetric
    about the centre ``taps // 2``. Differentiable in ``params`` (not in the sizes).

    Args:
      family: ``"gaussian"``, ``"multi-gaussian"`` or ``"free"``.
      params: from :func:`init_params` (or a fit).
      taps: odd length of the axial kernel in pixels (static).
      lateral_sigma: standard deviation of a fixed lateral Gaussian in pixels; 0 (default)
        is a lateral delta, as for a Gaussian PSF's additional axial part.

    Returns:
      ``FactoredPSF(lateral (1, n_lat), axial (1, taps))``; ``.dense()`` is the 2D
      ``(lateral, axial)`` array.
    """
    x = jnp.arange(taps, dtype=jnp.float32) - taps // 2
    if family == "gaussian":
        axial = _gauss(x, 0.0, jnp.exp(params["log_sigma"]))
    elif family == "multi-gaussian":
        sig = jnp.exp(params["log_sigma"])
        w = jax.nn.softmax(params["logits"])
        mu = jnp.exp(params["log_offset"])
        axial = w[0] * _gauss(x, 0.0, sig[0])
        lobes = jax.vmap(lambda m, s: 0.5 * (_gauss(x, m, s) + _gauss(x, -m, s)))(mu, sig[1:])
        axial = axial + jnp.sum(w[1:, None] * lobes, axis=0)
    elif family == "free":
        half = params["logits"]
        axial = jax.nn.softmax(jnp.concatenate([half[:0:-1], half]))
    else:
        _check_family(family)
    if lateral_sigma > 0:
        n_lat = 2 * math.ceil(4.0 * lateral_sigma) + 1
        xl = jnp.arange(n_lat, dtype=jnp.float32) - n_lat // 2
        lateral = _gauss(xl, 0.0, jnp.float32(lateral_sigma))
    else:
        lateral = jnp.ones((1,), jnp.float32)
    return FactoredPSF(lateral[None], axial[None])


def psf_sigma(psf: FactoredPSF) -> Array:
    """Axial standard deviation (pixels) of a PSF: the square root of its second moment.

    Args:
      psf: a factored PSF whose ``axial`` kernel ``(1, taps)`` sums to one.

    Returns:
      The scalar standard deviation of the axial kernel, in axial pixels.
    """
    a = psf.axial[0]
    x = jnp.arange(a.shape[-1], dtype=a.dtype) - a.shape[-1] // 2
    mean = jnp.sum(x * a)
    return jnp.sqrt(jnp.sum((x - mean) ** 2 * a))


#: Frequencies (cycles per pixel) over which :func:`continuous_sigma` compares responses.
_CONT_FREQ = np.linspace(0.5 / 64, 0.5, 64)
#: Power below which a frequency is left out of that comparison (the kernel has removed it).
_CONT_FLOOR = 1e-3


def continuous_sigma(kernel: Array) -> Array:
    """Width (pixels) of the continuous Gaussian blur that a sampled axial kernel stands for.

    A microscope's additional axial blur is a continuous function; on the pixel grid of a
    band-limited line it acts through the response ``exp(-2 pi^2 w^2 f^2)`` up to Nyquist.
    A non-negative sampled kernel cannot attenuate the highest frequencies that much at
    sub-pixel widths (its response at Nyquist is at least ``1 - 2 var``), so the kernel that
    matches a stack's spectra is wider than the blur that made it: +12% at 0.5 px, +2% at
    1 px, under 0.5% from 1.5 px (``docs/calibration.md``, 'Sub-pixel widths come out
    wide'). This is the width ``w`` whose log power ``-4 pi^2 w^2 f^2`` is closest, in
    least squares over ``f`` in (0, 0.5] cycles/px, to the kernel's ``log |K(f)|^2``, over
    the frequencies where ``|K(f)|^2`` is above 1e-3 (where the kernel has not already
    removed the signal; the main lobe only, up to the first frequency below that, so that a
    wide flat kernel's side lobes do not count; a kernel so wide that no frequency is
    above it, about 50 px, gets its second moment): linear in ``w^2``, so in closed form,
    ``w^2 = -sum f^2 log|K|^2 / (4 pi^2 sum f^4)``. For a sampled Gaussian of 3 px or more
    it equals the second moment (:func:`psf_sigma`) to 0.1%; for other shapes it is the
    width of the Gaussian with the closest low-pass response.

    Args:
      kernel: ``(taps,)`` axial kernel, symmetric about ``taps // 2``, summing to 1.

    Returns:
      The scalar width ``w`` in pixels (0 for a delta). Differentiable; jit and vmap safe.
    """
    x = jnp.arange(kernel.shape[-1], dtype=jnp.float32) - kernel.shape[-1] // 2
    k = kernel.astype(jnp.float32)
    f = jnp.asarray(_CONT_FREQ, jnp.float32)
    power = (jnp.cos(2.0 * jnp.pi * f[:, None] * x) @ k) ** 2
    # the main lobe: the frequencies up to the first one below the floor (a wide, flat
    # kernel's side lobes rise above it again and would make it look narrow)
    keep = jnp.cumprod((power > _CONT_FLOOR).astype(jnp.float32)) > 0
    log_power = jnp.log(jnp.where(keep, power, 1.0))
    num = -jnp.sum(jnp.where(keep, f**2 * log_power, 0.0))
    den = 4.0 * jnp.pi**2 * jnp.sum(jnp.where(keep, f**4, 0.0))
    fitted = jnp.sqrt(jnp.maximum(num, 0.0) / jnp.where(den > 0, den, 1.0))
    # no frequency above the floor: a kernel wider than the grid resolves (about 50 px),
    # where the continuous width is the second moment
    mean = jnp.sum(k * x)
    moment = jnp.sqrt(jnp.maximum(jnp.sum(k * (x - mean) ** 2), 0.0))
    return jnp.where(den > 0, fitted, moment)


def smoothness_penalty(kernel: Array) -> Array:
    """Second-difference roughness of a kernel: ``sum (k[i-1] - 2 k[i] + k[i+1])^2 / sum k^2``.

    Scale-free (the ratio does not change when the kernel is scaled); zero for a straight
    line, small for a wide smooth peak, of order one for a spike or a comb.

    Args:
      kernel: a kernel of any shape (flattened); not all zero.

    Returns:
      The scalar roughness (dimensionless).
    """
    k = jnp.ravel(kernel)
    d2 = k[:-2] - 2.0 * k[1:-1] + k[2:]
    return jnp.sum(d2**2) / jnp.sum(k**2)


def shape_roughness(kernel: Array) -> Array:
    """Width-free roughness of a 1D kernel: :func:`smoothness_penalty` times ``sigma^4``.

    The second-difference roughness of a Gaussian of standard deviation ``sigma`` is about
    ``3 / (4 sigma^4)``, so :func:`smoothness_penalty` alone grows as a kernel narrows and,
    as a penalty, widens every narrow kernel whatever the data say. Multiplied by the
    kernel's squared variance (its second moment about its mean, in pixels^2) it measures
    shape, not width: about 0.75 for a wide Gaussian (0.72 at sigma 3 px, 0.63 at 1.5 px);
    more for a comb, a spike train or hard edges (a 7-px box with half-weight ends: 1.8);
    so a Gaussian's value barely changes along its width.

    Args:
      kernel: a 1D kernel, non-negative and not all zero (any sum).

    Returns:
      The scalar width-free roughness (dimensionless).
    """
    k = jnp.ravel(kernel)
    k = k / jnp.sum(k)
    x = jnp.arange(k.shape[0], dtype=k.dtype) - k.shape[0] // 2
    var = jnp.sum((x - jnp.sum(x * k)) ** 2 * k)
    return smoothness_penalty(k) * var**2


def _check_family(family) -> None:
    if family not in FAMILIES:
        raise IsojaxInputError(
            f"family must be one of {', '.join(FAMILIES)}; got {family!r}"
        )
