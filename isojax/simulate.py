"""Simulated specimens and their anisotropic acquisition, with the truth to score against.

Three steps, each a pure function of a PRNG key and arrays:

1. :func:`simulate_specimen` draws an isotropic fluorescent specimen on a fine grid of cubic
   voxels (one lateral pixel on every side): smooth random filaments rendered as thin tubes,
   small vesicles (filled balls and hollow shells) and a weak smooth background. Nothing in
   it has a preferred direction: filament directions are drawn uniformly on the sphere,
   every object is rendered with an isotropic profile, and the background is an isotropic
   band-limited random field with many Fourier modes, so that even a single specimen has
   the same power spectrum along z, y and x (what PSF self-calibration relies on).
2. :func:`acquire` images it the way a microscope does: a 3D Gaussian PSF (``sigma_lateral``
   pixels in y and x, ``sigma_axial`` in z), axial planes every ``subsample`` pixels (plane
   ``k`` at ``z = k * subsample``), then shot and read noise on the recorded planes. It also
   returns the lateral-blurred truth, the best a restoration can reach (the lateral PSF is
   not undone), with the additional axial PSF and voxel sizes (:class:`Acquisition`).
3. :func:`psnr` and :func:`ssim` score a restoration against that truth (they live in
   :mod:`isojax.metrics` and are re-exported here).

:func:`simulate_stack` chains 1 and 2; the specimen (1) is drawn in :mod:`isojax.specimen`.

How the acquisition is computed (``method="operator"``, the default): the truth is blurred
with a Gaussian of ``sigma_lateral`` along all three axes (this is the reference), then
:func:`isojax.forward.measure` blurs z with the *additional* axial PSF, a Gaussian of
``sqrt(sigma_axial**2 - sigma_lateral**2)`` (variances of convolved Gaussians add), and
samples it. That is the forward model isojax trains with, so PSF self-calibration can in
principle recover the PSF exactly. ``method="direct"`` blurs with the full 3D Gaussian in
one go and samples z by linear interpolation without the operator; the two agree up to the
discretisation of the Gaussians (tested).

References:
  M. Weigert, L. Royer, F. Jug, G. Myers, "Isotropic reconstruction of 3D fluorescence
  microscopy images using convolutional neural networks", MICCAI 2017 (the acquisition
  model and the additional axial PSF).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from isojax.forward import FactoredPSF, add_noise, measure, sample_positions
from isojax.geometry import check_subsample
from isojax.metrics import _check_positive, psnr, ssim  # one number check for both
from isojax.specimen import simulate_specimen  # step 1 lives there; re-exported here

Array = jax.Array

__all__ = [
    "Acquisition",
    "acquire",
    "psnr",
    "simulate_specimen",
    "simulate_stack",
    "ssim",
]


# ----------------------------------------------------------------------------------------
# Small helpers


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Sampled Gaussian of standard deviation ``sigma`` pixels, radius ``ceil(truncate sigma)``."""
    radius = max(1, math.ceil(truncate * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _blur_axis(v: Array, sigma: float, axis: int) -> Array:
    """Gaussian blur along one axis, mirroring about the edge pixels (``boundary='reflect'``).

    The mirror is the one :func:`isojax.forward.measure` uses, so that the two acquisition
    routes see the same image past the edges.
    """
    if sigma == 0:
        return v
    kernel = _gaussian_kernel(sigma)
    r = len(kernel) // 2
    n = v.shape[axis]
    widths = [(0, 0)] * v.ndim
    widths[axis] = (r, r)
    vp = jnp.pad(v, widths, mode="reflect" if n > 1 else "edge")
    terms = [lax.slice_in_dim(vp, i, i + n, axis=axis) * jnp.asarray(w, v.dtype)
             for i, w in enumerate(kernel)]
    return functools.reduce(operator.add, terms)


# ----------------------------------------------------------------------------------------
# The acquisition


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compare fields yourself
class Acquisition:
    """What :func:`acquire` did, and what a restoration is scored against.

    Attributes:
      reference: the truth blurred by the lateral PSF (``sigma_lateral`` on all three axes),
        on the fine grid, float32 ``(z, y, x)`` of the truth's shape: what a perfect
        restoration reaches. Plane ``k`` of the stack sits at its ``z = k * subsample``.
      psf: the additional axial PSF, a 2D float32 array ``(lateral, axial)`` (a delta
        laterally, a Gaussian of ``sqrt(sigma_axial**2 - sigma_lateral**2)`` pixels
        axially), summing to 1: what :func:`isojax.degrade` should be given.
      subsample: anisotropy factor, axial step / lateral pixel size.
      spacing: voxel size of the stack ``(dz, dy, dx)`` in micrometres.
      z_positions: where the stack's planes sit on the fine grid, in pixels, ``(n_z_low,)``.
      sigma_lateral: standard deviation of the lateral PSF, in lateral pixels.
      sigma_axial: standard deviation of the axial PSF, in lateral pixels.
      photons: photons per unit intensity of the shot noise, or None for none.
      read_noise: standard deviation of the read noise, in units of the truth.
      pixel_size: lateral pixel size in micrometres (the fine grid is cubic with this side).
    """

    reference: Array
    psf: Array
    subsample: float
    spacing: tuple[float, float, float]
    z_positions: np.ndarray
    sigma_lateral: float
    sigma_axial: float
    photons: float | None
    read_noise: float
    pixel_size: float

    @property
    def spacing_fine(self) -> tuple[float, float, float]:
        """Voxel size of the reference (and of a restoration) ``(dz, dy, dx)``, micrometres."""
        return (self.pixel_size, self.pixel_size, self.pixel_size)

    def factored_psf(self) -> FactoredPSF:
        """The additional axial PSF as a rank-one :class:`~isojax.forward.FactoredPSF`."""
        return FactoredPSF(jnp.ones((1, 1), self.psf.dtype), self.psf[0][None])


def _axial_psf(sigma_lateral: float, sigma_axial: float) -> np.ndarray:
    """``(1, taps)`` Gaussian of ``sqrt(sa^2 - sl^2)`` pixels (a delta when they are equal)."""
    extra = math.sqrt(max(sigma_axial**2 - sigma_lateral**2, 0.0))
    if extra == 0:
        return np.ones((1, 1), np.float32)
    return _gaussian_kernel(extra)[None].astype(np.float32)


def _sample_z(v: Array, positions: np.ndarray) -> Array:
    """Linear interpolation of axis 0 at the given (static) positions in pixels."""
    n = v.shape[0]
    lo = np.minimum(np.floor(positions).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    t = jnp.asarray(positions - lo, v.dtype)[:, None, None]
    return (1 - t) * v[lo] + t * v[hi]


@functools.partial(
    jax.jit,
    static_argnames=("subsample", "sigma_lateral", "sigma_axial", "method", "shot", "read"),
)
def _acquire(
    key, truth, photons, read_noise, *, subsample, sigma_lateral, sigma_axial, method, shot, read
):
    ref = truth
    for axis in (1, 2):
        ref = _blur_axis(ref, sigma_lateral, axis)
    if method == "operator":
        ref = _blur_axis(ref, sigma_lateral, 0)
        psf = _axial_psf(sigma_lateral, sigma_axial)
        factored = FactoredPSF(jnp.ones((1, 1), jnp.float32), jnp.asarray(psf))
        low = measure(ref, factored, subsample, axes=(1, 0))
    else:
        low = _sample_z(
            _blur_axis(ref, sigma_axial, 0), sample_positions(truth.shape[0], subsample)
        )
        ref = _blur_axis(ref, sigma_lateral, 0)
    if shot or read:
        low = add_noise(
            key, low, photons=photons if shot else None, sigma=read_noise if read else 0.0
        )
    return low, ref


def acquire(
    key: Array,
    truth: Array,
    *,
    subsample: float,
    sigma_lateral: float,
    sigma_axial: float,
    photons: float | None = None,
    read_noise: float = 0.0,
    pixel_size: float = 0.1,
    method: Literal["operator", "direct"] = "operator",
) -> tuple[Array, Acquisition]:
    """Image an isotropic truth with a microscope of coarse, blurry z.

    The truth is blurred by a 3D Gaussian PSF (``sigma_lateral`` in y and x, ``sigma_axial``
    in z), plane ``k`` is taken at ``z = k * subsample`` pixels of the fine grid (linear
    interpolation between pixels for a non-integer factor), and the recorded planes get
    Poisson shot noise (``photons``) and Gaussian read noise (``read_noise``) through
    :func:`isojax.forward.add_noise`. The blur mirrors the volume at its faces.

    Args:
      key: a ``jax.random`` key (used for the noise).
      truth: isotropic specimen, ``(z, y, x)`` on a grid of cubic voxels (e.g. from
        :func:`simulate_specimen`), non-negative.
      subsample: anisotropy factor, axial step / lateral pixel size, >= 1 (e.g. 10.2).
      sigma_lateral: standard deviation of the PSF in y and x, lateral pixels, >= 0.
      sigma_axial: standard deviation of the PSF in z, lateral pixels, >= ``sigma_lateral``.
      photons: detected photons per unit intensity of the truth (larger is less noisy), or
        None for no shot noise.
      read_noise: standard deviation of Gaussian read noise in units of the truth, >= 0.
      pixel_size: lateral pixel size in micrometres; sets :attr:`Acquisition.spacing`.
      method: ``"operator"`` (default) blurs with ``sigma_lateral`` on every axis and then
        applies :func:`isojax.forward.measure` along z with the additional axial PSF, as
        isojax's training does; ``"direct"`` blurs with the full 3D Gaussian and samples z
        by linear interpolation, without the operator. They agree up to the sampling of
        the Gaussians.

    Returns:
      ``(stack, acquisition)``: the anisotropic stack, float32 ``(n_z_low, y, x)`` with
      ``n_z_low = floor((z - 1) / subsample) + 1``, and an :class:`Acquisition` with the
      lateral-blurred reference and everything else needed to score a restoration.

    Raises:
      ValueError: truth not 3D, ``subsample < 1``, negative widths, ``sigma_axial <
        sigma_lateral``, or non-positive ``photons``; the message says what to change.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> stack, acq = acquire(jax.random.key(0), jnp.ones((21, 8, 8)), subsample=4.0,
      ...                      sigma_lateral=1.0, sigma_axial=2.0)
      >>> stack.shape, acq.spacing
      ((6, 8, 8), (0.4, 0.1, 0.1))
    """
    truth = jnp.asarray(truth, jnp.float32)
    if truth.ndim != 3:
        raise ValueError(f"truth must be a 3D (z, y, x) volume, got shape {truth.shape}.")
    s = check_subsample(subsample)
    if truth.shape[0] < 2:
        raise ValueError(f"truth needs at least 2 planes in z, got {truth.shape[0]}.")
    sl = _check_positive(sigma_lateral, "sigma_lateral", allow_zero=True)
    sa = _check_positive(sigma_axial, "sigma_axial", allow_zero=True)
    if sa < sl:
        raise ValueError(
            f"sigma_axial ({sa} px) is smaller than sigma_lateral ({sl} px): the axial PSF must "
            "be at least as wide as the lateral one; check the order of the arguments."
        )
    if photons is not None:
        _check_positive(photons, "photons (or None for no shot noise)")
    read = _check_positive(read_noise, "read_noise", allow_zero=True)
    px = _check_positive(pixel_size, "pixel_size")
    if method not in ("operator", "direct"):
        raise ValueError(f"method must be 'operator' or 'direct', got {method!r}.")
    stack, ref = _acquire(
        key,
        truth,
        jnp.float32(1.0 if photons is None else photons),
        jnp.float32(read),
        subsample=s,
        sigma_lateral=sl,
        sigma_axial=sa,
        method=method,
        shot=photons is not None,
        read=read > 0,
    )
    info = Acquisition(
        reference=ref,
        psf=jnp.asarray(_axial_psf(sl, sa)),
        subsample=s,
        spacing=(s * px, px, px),
        z_positions=sample_positions(truth.shape[0], s),
        sigma_lateral=sl,
        sigma_axial=sa,
        photons=None if photons is None else float(photons),
        read_noise=read,
        pixel_size=px,
    )
    return stack, info


def simulate_stack(
    key: Array,
    *,
    shape_zyx: Sequence[int],
    subsample: float,
    sigma_lateral: float = 1.0,
    sigma_axial: float = 3.0,
    photons: float | None = None,
    read_noise: float = 0.0,
    pixel_size: float = 0.1,
    **specimen_options,
) -> tuple[Array, Array, Acquisition]:
    """A specimen and its anisotropic acquisition in one call.

    Args:
      key: a ``jax.random`` key (split into one for the specimen, one for the noise).
      shape_zyx: ``(z, y, x)`` size of the isotropic truth in pixels.
      subsample: anisotropy factor, >= 1.
      sigma_lateral: standard deviation of the lateral PSF in pixels.
      sigma_axial: standard deviation of the axial PSF in (lateral) pixels.
      photons: photons per unit intensity for shot noise, or None for none.
      read_noise: standard deviation of the read noise (intensity units).
      pixel_size: lateral pixel size in micrometres.
      **specimen_options: passed to :func:`simulate_specimen` (densities, radii, ...).

    Returns:
      ``(stack, truth, acquisition)``: the anisotropic stack ``(n_z_low, y, x)``, the
      truth ``shape_zyx`` and the :class:`Acquisition` (see :func:`acquire`).

    Raises:
      ValueError: as :func:`simulate_specimen` and :func:`acquire`.
    """
    k_spec, k_acq = jax.random.split(key)
    truth = simulate_specimen(k_spec, shape_zyx, **specimen_options)
    stack, info = acquire(
        k_acq,
        truth,
        subsample=subsample,
        sigma_lateral=sigma_lateral,
        sigma_axial=sigma_axial,
        photons=photons,
        read_noise=read_noise,
        pixel_size=pixel_size,
    )
    return stack, truth, info
