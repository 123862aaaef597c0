"""Wave-optics PSFs in JAX: the scalar Debye integral, its 3D PSFs and additional axial PSF.

The intensity of a point source imaged by an aberration-free objective of numerical aperture
``NA`` in a medium of refractive index ``n``, at lateral distance ``r`` and defocus ``z`` from
the focus, is the scalar Debye integral

    ``I(r, z) = |E(r, z)|**2 / |E(0, 0)|**2``,
    ``E(r, z) = integral_0^alpha sqrt(cos t) J0(k n r sin t) exp(i k n z cos t) sin t dt``

with ``k = 2 pi / wavelength`` (vacuum wavelength), ``alpha = arcsin(NA / n)`` and
``sqrt(cos t)`` the aplanatic (sine-condition) apodisation. It is the Debye integral of
[BornWolf] section 8.8 with the apodisation of [RichardsWolf], and the Gibson-Lanni model
[GibsonLanni] at its design conditions (no aberration phase). In the paraxial limit it tends
to the Lommel form of [BornWolf]: the Airy pattern ``(2 J1(v) / v)**2`` in focus, with
``v = k NA r``, and ``(sin(u/4) / (u/4))**2`` on the axis, with ``u = k NA**2 z / n``.

Numerics: ``t`` is integrated by Gauss-Legendre quadrature on a fixed number of nodes, and
``J0`` is the midpoint rule of ``J0(x) = (2/pi) integral_0^{pi/2} cos(x sin s) ds`` (exact to
rounding once the number of terms exceeds about ``x / 4``, since the integrand is periodic and
analytic). Both node counts are static integers chosen from the largest phase the grid
reaches, so every function here is ``jit``-, ``grad``- and ``vmap``-safe in ``na``,
``wavelength_um`` and ``ri`` (``jax.scipy.special.bessel_jn`` returns NaN at large arguments in
jax 0.10.2, hence the own ``J0``).

Modalities: ``widefield`` is ``I`` at the emission wavelength; ``confocal`` the product of the
excitation and emission PSFs, that is an ideal (point) pinhole: a finite pinhole widens the
detection PSF and is not modelled; ``lightsheet`` the widefield detection PSF times the sheet's
Gaussian intensity profile along ``z`` (given by its FWHM; :func:`sheet_fwhm_from_na` converts
an illumination NA).

References:
  [BornWolf] M. Born, E. Wolf, "Principles of Optics", 7th ed., Cambridge University Press
  (1999), section 8.8.
  [RichardsWolf] B. Richards, E. Wolf, "Electromagnetic diffraction in optical systems II",
  Proc. R. Soc. Lond. A 253:358-379 (1959), doi:10.1098/rspa.1959.0200.
  [GibsonLanni] S. F. Gibson, F. Lanni, "Experimental test of an analytical model of
  aberration in an oil-immersion objective lens used in three-dimensional light microscopy",
  J. Opt. Soc. Am. A 8(10):1601-1613 (1991), doi:10.1364/JOSAA.8.001601.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from isojax.errors import IsojaxInputError
from isojax.psf.models import (
    FWHM_PER_SIGMA,
    Modality,
    _check_optics,
    _concrete_float,
    _positive,
    _profile_fwhm,
    _spacing3,
    theoretical_sigmas,
)

__all__ = [
    "additional_axial_kernel",
    "bessel_j0",
    "debye_additional_kernel",
    "debye_axial_psf",
    "debye_intensity",
    "debye_psf",
    "debye_window",
    "sheet_fwhm_from_na",
]

#: Largest ``n / wavelength`` (1/um) the static node counts are sized for when the optics are
#: traced: n 1.8 at 0.3 um.
_MAX_N_PER_UM = 6.0


def _bessel_terms(x_max: float) -> int:
    """Midpoint terms for ``J0`` exact to rounding on ``|x| <= x_max`` (measured up to 400)."""
    return math.ceil((x_max + 8.0 * x_max ** (1.0 / 3.0) + 16.0) / 4.0)


def bessel_j0(x, *, terms: int | None = None):
    """The Bessel function ``J0``, traceable and differentiable (``J0' = -J1``).

    ``J0(x) = (2/pi) integral_0^{pi/2} cos(x sin s) ds`` by the midpoint rule on ``terms``
    nodes; for a periodic analytic integrand this converges geometrically once ``terms``
    exceeds about ``|x| / 4``.

    Args:
      x: array of real arguments (any shape).
      terms: number of midpoint nodes (static); default: enough for ``max |x|`` (needs a
        concrete ``x``).

    Returns:
      ``J0(x)``, same shape as ``x``.

    Raises:
      IsojaxInputError: no ``terms`` for a traced ``x``, or ``terms < 1``.
    """
    x = jnp.asarray(x, dtype=jnp.result_type(float))
    if terms is None:
        x_max = _concrete_float(jnp.max(jnp.abs(x))) if x.size else 0.0
        if x_max is None:
            raise IsojaxInputError("pass terms= to bessel_j0 when x is traced")
        terms = _bessel_terms(x_max)
    if int(terms) < 1:
        raise IsojaxInputError(f"terms must be a positive integer, got {terms}")
    s = (np.arange(int(terms)) + 0.5) * (0.5 * np.pi / int(terms))
    return jnp.mean(jnp.cos(x[..., None] * jnp.asarray(np.sin(s), x.dtype)), axis=-1)


def _node_counts(na, wavelength_um, ri, r_max: float, z_max: float) -> tuple[int, int]:
    """Gauss-Legendre nodes in ``t`` and ``J0`` terms for radii up to ``r_max`` and defocus up
    to ``z_max`` (um): from the optics when they are concrete, else from the bound
    ``n / wavelength <= 6 / um``."""
    na_c, lam, n = (_concrete_float(v) for v in (na, wavelength_um, ri))
    if na_c is None or lam is None or n is None:
        kn, sin_a, one_minus_cos = 2.0 * math.pi * _MAX_N_PER_UM, 1.0, 1.0
    else:
        kn = 2.0 * math.pi * n / lam
        sin_a = min(na_c / n, 1.0)
        one_minus_cos = 1.0 - math.sqrt(1.0 - sin_a * sin_a)
    x_max = kn * r_max * sin_a
    phase = x_max + kn * z_max * one_minus_cos
    # rounded up, so that nearby optics share one compiled integral
    n_theta = 32 * math.ceil((0.6 * phase + 32) / 32)
    return n_theta, 8 * math.ceil(_bessel_terms(x_max) / 8)


@functools.lru_cache(maxsize=64)
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


@functools.partial(jax.jit, static_argnames=("n_theta", "terms"))
def _field(r, z, *, na, wavelength_um, ri, n_theta: int, terms: int):
    """``E(r, z) / E(0, 0)`` as a complex ``(n_r, n_z)`` array (the module's integral)."""
    nodes, weights = _legendre(int(n_theta))
    alpha = jnp.arcsin(jnp.asarray(na) / jnp.asarray(ri))
    theta = 0.5 * alpha * (jnp.asarray(nodes) + 1.0)
    amp = jnp.sqrt(jnp.cos(theta)) * jnp.sin(theta) * (0.5 * alpha * jnp.asarray(weights))
    kn = 2.0 * jnp.pi * jnp.asarray(ri) / jnp.asarray(wavelength_um)
    radial = bessel_j0(kn * r[:, None] * jnp.sin(theta)[None, :], terms=terms) * amp
    phase = jnp.exp(1j * kn * z[:, None] * jnp.cos(theta)[None, :])
    return (radial @ phase.T) / jnp.sum(amp)


@functools.partial(jax.jit, static_argnames=("n_theta", "terms"))
def _intensity(r, z, *, na, wavelength_um, ri, n_theta: int, terms: int):
    return jnp.abs(_field(r, z, na=na, wavelength_um=wavelength_um, ri=ri, n_theta=n_theta,
                          terms=terms)) ** 2


def debye_intensity(r, z, *, na, wavelength_um, ri, n_theta: int | None = None,
                    bessel_terms: int | None = None):
    """The scalar Debye intensity ``I(r, z)`` of the module docstring, 1 at the focus.

    Differentiable (``jax.grad``) in ``na``, ``wavelength_um`` and ``ri``; ``r`` and ``z``
    are concrete grids.

    Args:
      r: 1D array of lateral distances from the optical axis, in micrometres.
      z: 1D array of defocus distances, in micrometres.
      na: numerical aperture, ``0 < na < ri``.
      wavelength_um: vacuum wavelength in micrometres.
      ri: refractive index of the immersion (and sample) medium.
      n_theta: Gauss-Legendre nodes (static); default from the largest phase on the grid.
      bessel_terms: ``J0`` midpoint terms (static); default from the largest argument.

    Returns:
      A float array of shape ``(len(r), len(z))``.

    Raises:
      IsojaxInputError: ``r`` or ``z`` not 1D and finite, or bad concrete optics.
    """
    r = np.asarray(r, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    if r.ndim != 1 or z.ndim != 1 or not (np.all(np.isfinite(r)) and np.all(np.isfinite(z))):
        raise IsojaxInputError(f"r and z must be finite 1D arrays in um, got {r.shape}, {z.shape}")
    _check_concrete_optics(na, wavelength_um, ri)
    r_max = float(np.abs(r).max(initial=0.0))
    z_max = float(np.abs(z).max(initial=0.0))
    auto_theta, auto_terms = _node_counts(na, wavelength_um, ri, r_max, z_max)
    return _intensity(jnp.asarray(np.abs(r)), jnp.asarray(z), na=na,
                      wavelength_um=wavelength_um, ri=ri, n_theta=n_theta or auto_theta,
                      terms=bessel_terms or auto_terms)


def _check_concrete_optics(na, wavelength_um, ri) -> None:
    v_na, v_lam, v_n = (_concrete_float(v) for v in (na, wavelength_um, ri))
    if v_na is None or v_lam is None or v_n is None:
        return
    _, lam, n = _check_optics(v_na, v_lam, v_n)
    if n / lam > _MAX_N_PER_UM:
        raise IsojaxInputError(
            f"ri / wavelength_um = {n / lam:.3g} per um is beyond the Debye model's range "
            f"(<= {_MAX_N_PER_UM:g}); give the wavelength in micrometres, e.g. 0.52")


def sheet_fwhm_from_na(na_illumination: float, *, wavelength_um: float) -> float:
    """The FWHM of a Gaussian light sheet's intensity along z at its waist, from its NA.

    A Gaussian beam of vacuum wavelength ``lambda`` with divergence ``NA_ill = n theta`` has
    waist ``w0 = lambda / (pi NA_ill)`` (the ``1/e**2`` intensity radius), so its intensity
    ``exp(-2 z**2 / w0**2)`` has FWHM ``w0 sqrt(2 ln 2)``.

    Args:
      na_illumination: numerical aperture of the illumination (paraxial, small).
      wavelength_um: excitation wavelength in micrometres.

    Returns:
      The sheet FWHM in micrometres.

    Raises:
      IsojaxInputError: a non-positive value.
    """
    na_ill = _positive(na_illumination, "na_illumination")
    lam = _positive(wavelength_um, "wavelength_um", " micrometres")
    return lam / (math.pi * na_ill) * math.sqrt(2.0 * math.log(2.0))


def _modality_intensity(r, z, *, modality, na, wavelength_um, ri, excitation_um,
                        sheet_fwhm_um):
    """The modality's intensity on the grid ``(r, z)``, 1 at the focus (module docstring)."""
    waves = [wavelength_um] + ([excitation_um] if modality == "confocal" else [])
    extent = (float(np.abs(r).max(initial=0.0)), float(np.abs(z).max(initial=0.0)))
    # one node count for both wavelengths, so that both share one compiled integral
    n_theta, terms = np.max([_node_counts(na, w, ri, *extent) for w in waves], axis=0)
    out = debye_intensity(r, z, na=na, wavelength_um=wavelength_um, ri=ri,
                          n_theta=int(n_theta), bessel_terms=int(terms))
    if modality == "confocal":
        out = out * debye_intensity(r, z, na=na, wavelength_um=excitation_um, ri=ri,
                                    n_theta=int(n_theta), bessel_terms=int(terms))
    elif modality == "lightsheet":
        sigma = jnp.asarray(sheet_fwhm_um) / FWHM_PER_SIGMA
        out = out * jnp.exp(-0.5 * (jnp.asarray(z) / sigma) ** 2)[None, :]
    elif modality != "widefield":
        raise IsojaxInputError(
            f"unknown modality {modality!r}; use 'widefield', 'confocal' or 'lightsheet'")
    return out


def _check_modality(modality, excitation_um, sheet_fwhm_um) -> None:
    if modality == "confocal" and excitation_um is None:
        raise IsojaxInputError(
            "confocal needs the excitation wavelength: pass excitation_um= (--excitation UM)")
    if modality == "lightsheet" and sheet_fwhm_um is None:
        raise IsojaxInputError(
            "lightsheet needs the sheet thickness: pass sheet_fwhm_um= (--sheet-fwhm UM)")
    if modality not in ("widefield", "confocal", "lightsheet"):
        raise IsojaxInputError(
            f"unknown modality {modality!r}; use 'widefield', 'confocal' or 'lightsheet'")
    for value, name in ((excitation_um, "excitation_um"), (sheet_fwhm_um, "sheet_fwhm_um")):
        concrete = None if value is None else _concrete_float(value)
        if concrete is not None:
            _positive(concrete, name, " micrometres")


def debye_psf(
    *,
    na,
    wavelength_um,
    ri,
    modality: Modality,
    spacing: Sequence[float],
    shape: Sequence[int],
    excitation_um=None,
    sheet_fwhm_um=None,
    oversample: int = 1,
):
    """A 3D wave-optics PSF on a voxel grid, normalised to sum 1.

    The intensity is evaluated once per distinct radius ``sqrt(x**2 + y**2)`` of the grid
    (the PSF is rotationally symmetric), on each plane ``z``.

    Args:
      na, wavelength_um, ri: as in :func:`debye_intensity` (``wavelength_um`` the emission
        wavelength); differentiable.
      modality: ``"widefield"``, ``"confocal"`` (point pinhole) or ``"lightsheet"``.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres.
      shape: output shape ``(nz, ny, nx)``, centred at index ``n // 2``.
      excitation_um: excitation wavelength in micrometres (confocal; required there).
      sheet_fwhm_um: FWHM of the sheet's intensity along z in micrometres (lightsheet;
        required there); differentiable.
      oversample: odd number of point samples per voxel and axis, averaged (1: point
        samples at the voxel centres; 3 or 5 integrate the intensity over the voxel).

    Returns:
      A float JAX array of shape ``shape``, axes ``(z, y, x)``, summing to 1.

    Raises:
      IsojaxInputError: bad spacing, shape, oversampling, modality or optics.
    """
    dz, dy, dx = _spacing3(spacing)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise IsojaxInputError(f"shape must be three positive sizes (nz, ny, nx), got {shape}")
    if int(oversample) != oversample or oversample < 1 or oversample % 2 == 0:
        raise IsojaxInputError(f"oversample must be a positive odd integer, got {oversample}")
    _check_modality(modality, excitation_um, sheet_fwhm_um)
    s = int(oversample)
    sub = (np.arange(s) - (s - 1) / 2) / s
    axes = [((np.arange(n) - n // 2)[:, None] + sub[None, :]).ravel() * d
            for n, d in zip(shape, (dz, dy, dx), strict=True)]
    radii = np.hypot(axes[1][:, None], axes[2][None, :])
    unique, inverse = np.unique(np.round(radii, 9), return_inverse=True)
    values = _modality_intensity(unique, axes[0], modality=modality, na=na,
                                 wavelength_um=wavelength_um, ri=ri,
                                 excitation_um=excitation_um, sheet_fwhm_um=sheet_fwhm_um)
    psf = jnp.moveaxis(values[inverse.reshape(radii.shape)], -1, 0)  # (z, y, x), fine
    nz, ny, nx = shape
    psf = psf.reshape(nz, s, ny, s, nx, s).mean(axis=(1, 3, 5))
    return psf / psf.sum()


def additional_axial_kernel(axial, lateral, *, wiener: float = 1e-3):
    """The additional axial PSF ``h``: the axial profile deconvolved by the lateral one.

    The isotropic part of a PSF is the PSF the microscope would have if its axial resolution
    equalled its lateral one: its in-focus lateral profile ``g`` along every axis. The
    additional axial PSF ``h`` is what, convolved with ``g`` along the axial axis, gives the
    axial profile ``a``: ``a = g * h``. For Gaussians this is the rule ``sqrt(s_z**2 -
    s_xy**2)``. For a wave-optics PSF neither profile is Gaussian (the widefield axial profile
    is ``sinc**2``-like with ``1/z**2`` tails), so ``h`` is computed in 1D Fourier space:
    ``H(f) = A(f) G(f) / (G(f)**2 + wiener)`` (a Wiener filter, with ``G(0) = 1``). The
    axial OTF ``A`` is band-limited well inside the lateral OTF ``G`` (its cut-off
    ``n (1 - cos alpha) / lambda`` is at most ``tan(alpha / 2) / 2 < 1/2`` of the lateral
    ``2 NA / lambda``; for the products of confocal and light-sheet PSFs the same holds up to
    the sheet's Gaussian tail), so the division is well conditioned where ``A`` is non-zero
    and ``wiener`` only removes round-off beyond the lateral cut-off. Small negative ringing of
    the inverse transform is clipped and the result renormalised, so that ``h`` is a valid
    blur kernel (non-negative, sum 1). A 2D non-negative deconvolution of the central plane
    (as :func:`isojax.psf.axial_psf` does for beads) would keep the lateral spread of the
    defocused PSF, but is iterative and not differentiable; the 1D kernel is the direct
    analogue of the Gaussian rule (a delta laterally) and is differentiable in the optics.

    Args:
      axial: 1D on-axis profile ``a(z)`` of odd length ``n``, centred at ``n // 2``,
        non-negative, sampled at the lateral pixel size.
      lateral: 1D in-focus lateral profile ``g(x)`` of odd length ``<= n``, centred, on the
        same pixel grid.
      wiener: Wiener regularisation, relative to ``G(0)**2 = 1``.

    Returns:
      ``h``, a float JAX array of length ``n``, centred, non-negative, summing to 1
      (differentiable in both profiles).

    Raises:
      IsojaxInputError: profiles not 1D with odd lengths, the lateral one longer, or a
        negative ``wiener``.
    """
    a = jnp.asarray(axial, dtype=jnp.result_type(float))
    g = jnp.asarray(lateral, dtype=a.dtype)
    if a.ndim != 1 or g.ndim != 1 or a.size % 2 == 0 or g.size % 2 == 0 or g.size > a.size:
        raise IsojaxInputError(
            f"axial and lateral must be 1D profiles of odd lengths, the lateral one not longer; "
            f"got shapes {a.shape} and {g.shape}")
    if not wiener >= 0:
        raise IsojaxInputError(f"wiener must be >= 0, got {wiener}")
    return _deconvolve(a, g, wiener)


@jax.jit
def _deconvolve(a, g, wiener):
    """:func:`additional_axial_kernel` after its checks (compiled once per length)."""
    pad = (a.size - g.size) // 2
    g = jnp.pad(g, (pad, pad))
    a_hat = jnp.fft.fft(jnp.fft.ifftshift(a / jnp.sum(a))).real
    g_hat = jnp.fft.fft(jnp.fft.ifftshift(g / jnp.sum(g))).real
    h_hat = a_hat * g_hat / (g_hat**2 + wiener)
    h = jnp.maximum(jnp.fft.fftshift(jnp.fft.ifft(h_hat).real), 0.0)
    return h / jnp.sum(h)


def debye_additional_kernel(
    *,
    na,
    wavelength_um,
    ri,
    modality: Modality,
    pixel_size: float,
    half_size: int,
    excitation_um=None,
    sheet_fwhm_um=None,
    wiener: float = 1e-3,
) -> tuple[Any, Any, Any]:
    """The additional axial PSF of the Debye model on a fixed grid; differentiable.

    The profiles are point samples of the modality's intensity (:func:`debye_psf`) on the
    pixel grid: ``a(z) = I(0, z)`` and ``g(x) = I(|x|, 0)``, and ``h`` is
    :func:`additional_axial_kernel` of them. This is the function to differentiate (in
    ``na``, ``wavelength_um``, ``ri``, ``sheet_fwhm_um``); :func:`debye_axial_psf` crops it to
    a PSF file.

    Args:
      na, wavelength_um, ri, modality, excitation_um, sheet_fwhm_um: as in :func:`debye_psf`.
      pixel_size: the image's lateral pixel size in micrometres.
      half_size: the profiles span ``-half_size..half_size`` pixels (static).
      wiener: as in :func:`additional_axial_kernel`.

    Returns:
      ``(h, axial, lateral)``: three float JAX arrays of length ``2 half_size + 1``; ``h``
      sums to 1, the profiles are 1 at the centre.

    Raises:
      IsojaxInputError: a bad pixel size, size, modality or optics.
    """
    pixel_size = _positive(pixel_size, "pixel_size", " micrometres")
    if int(half_size) != half_size or half_size < 1:
        raise IsojaxInputError(f"half_size must be a positive integer, got {half_size}")
    _check_modality(modality, excitation_um, sheet_fwhm_um)
    half = int(half_size)
    x = np.arange(-half, half + 1) * pixel_size
    # one (r >= 0, z) plane holds both profiles: one integral, compiled once per size
    plane = _modality_intensity(x[half:], x, modality=modality, na=na,
                                wavelength_um=wavelength_um, ri=ri, excitation_um=excitation_um,
                                sheet_fwhm_um=sheet_fwhm_um)
    axial = plane[0]
    lateral = plane[np.abs(np.arange(-half, half + 1)), half]
    return additional_axial_kernel(axial, lateral, wiener=wiener), axial, lateral


#: Largest mass on the two end pixels of a cropped kernel (a fifth of check_psf's edge_tol).
_END_MASS = 0.002


def _crop(h: np.ndarray, energy: float) -> np.ndarray:
    """The smallest odd centred window holding ``energy`` of ``h`` inside its end pixels, whose
    two end pixels hold at most :data:`_END_MASS` of it (so that it decays to background)."""
    h = h / h.sum()
    c = h.size // 2
    for k in range(1, c + 1):
        if h[c - k + 1:c + k].sum() >= energy and h[c - k] + h[c + k] <= _END_MASS:
            break
    out = h[c - k:c + k + 1]
    return out / out.sum()


#: The longest kernel :func:`debye_axial_psf` computes, in pixels either side of the focus:
#: an NA 0.15 air objective at 0.1 um pixels (2 176) takes about 2.5 GB and a minute on two
#: CPU cores; the memory grows with the square of the span.
_MAX_HALF_SIZE = 2560


def debye_window(*, na: float, wavelength_um: float, ri: float, modality: Modality,
                 pixel_size: float, excitation_um: float | None = None,
                 sheet_fwhm_um: float | None = None) -> tuple[int, bool]:
    """The window :func:`debye_axial_psf` computes its kernel on, and whether it can.

    Args:
      na, wavelength_um, ri, modality, excitation_um, sheet_fwhm_um: as in
        :func:`isojax.psf.theoretical_sigmas` (which checks them).
      pixel_size: the image's lateral pixel size in micrometres.

    Returns:
      ``(half, ok)``: pixels either side of the focus (24 Gaussian-approximation axial
      sigmas, at least 16, a multiple of 16), and whether that is within the longest
      kernel the model computes (``2 * 2560 + 1`` px).
    """
    sigmas = theoretical_sigmas(na=na, wavelength_um=wavelength_um, ri=ri, modality=modality,
                                excitation_um=excitation_um, pinhole_au=0.0,
                                sheet_fwhm_um=sheet_fwhm_um)
    return _window(sigmas.axial_um, pixel_size)


def _window(axial_sigma_um: float, pixel_size: float) -> tuple[int, bool]:
    """:func:`debye_window` from the Gaussian approximation's axial sigma."""
    half = 16 * math.ceil(max(16.0, 24.0 * axial_sigma_um / pixel_size) / 16)
    return half, half <= _MAX_HALF_SIZE


def debye_axial_psf(
    *,
    na: float,
    wavelength_um: float,
    ri: float,
    modality: Modality,
    pixel_size: float,
    excitation_um: float | None = None,
    pinhole_au: float = 0.0,
    sheet_fwhm_um: float | None = None,
    energy: float = 0.99,
    wiener: float = 1e-3,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The additional axial 2D PSF of the Debye model, at an image's pixel size.

    The wave-optics counterpart of :func:`isojax.psf.theoretical_axial_psf` (same options,
    same output): :func:`debye_additional_kernel` on a window of 24 Gaussian-approximation
    axial sigmas either side (at least 16 pixels), cropped to the smallest centred window
    holding ``energy`` of its mass plus one pixel, renormalised.

    Args:
      na, wavelength_um, ri, modality, excitation_um, sheet_fwhm_um: as in
        :func:`isojax.psf.theoretical_sigmas` (which checks them).
      pixel_size: the image's lateral pixel size in micrometres.
      pinhole_au: confocal pinhole in Airy units; the model is a point pinhole, so a value
        above 0 only warns that the real PSF is wider.
      energy: fraction of the kernel's mass the crop keeps (the widefield kernel has
        ``1/z**2`` tails, so it does not fall to zero within a short window).
      wiener: as in :func:`additional_axial_kernel`.

    Returns:
      ``(psf2d, info)``: a float32 numpy array of shape ``(1, n)``, axes ``(lateral, axial)``,
      non-negative, summing to 1; and a dict with the model, the FWHMs of the full PSF's
      lateral and axial profiles and of the additional kernel (um and px), and the shape.

    Raises:
      IsojaxInputError: as :func:`isojax.psf.theoretical_sigmas`, a bad pixel size or
        ``energy``, no additional axial blur (the axial profile not wider than the lateral),
        or a kernel longer than ``2 * 2560 + 1`` px (a very weak objective at fine pixels).
    """
    pixel_size = _positive(pixel_size, "pixel_size", " micrometres")
    if not 0 < energy <= 1:
        raise IsojaxInputError(f"energy must be in (0, 1], got {energy}")
    sigmas = theoretical_sigmas(na=na, wavelength_um=wavelength_um, ri=ri, modality=modality,
                                excitation_um=excitation_um, pinhole_au=0.0,
                                sheet_fwhm_um=sheet_fwhm_um)
    _check_concrete_optics(na, wavelength_um, ri)
    if modality == "confocal" and pinhole_au and pinhole_au > 0:
        warnings.warn(
            f"the Debye confocal model is a point pinhole; a {pinhole_au:g} AU pinhole makes "
            "the real PSF wider (use --pinhole 0 to silence this)", stacklevel=2)
    half, ok = _window(sigmas.axial_um, pixel_size)
    if not ok:  # the integral's memory grows with the square of the span
        raise IsojaxInputError(
            f"the Debye PSF of NA {na:g} (n {ri:g}) spans about {2 * half + 1} px along z at "
            f"{pixel_size:g} um pixels (axial FWHM about {2.3548 * sigmas.axial_um:.3g} um), "
            f"more than the {2 * _MAX_HALF_SIZE + 1} this model computes; check --na, --ri and "
            "--pixel-size, or use --model gaussian for an objective this weak")
    h, axial, lateral = debye_additional_kernel(
        na=na, wavelength_um=wavelength_um, ri=ri, modality=modality, pixel_size=pixel_size,
        half_size=half, excitation_um=excitation_um, sheet_fwhm_um=sheet_fwhm_um,
        wiener=wiener)
    fwhm_ax = _profile_fwhm(np.asarray(axial))
    fwhm_lat = _profile_fwhm(np.asarray(lateral))
    if not fwhm_ax > fwhm_lat:
        raise IsojaxInputError(
            f"the axial FWHM ({fwhm_ax * pixel_size:.3g} um) is not larger than the lateral "
            f"one ({fwhm_lat * pixel_size:.3g} um): there is no additional axial blur to model")
    psf = _crop(np.asarray(h, dtype=np.float64), energy)[None, :].astype(np.float32)
    fwhm_add = _profile_fwhm(psf[0])
    info = {
        "model": "debye",
        "modality": modality,
        "pixel_size_um": pixel_size,
        "fwhm_lateral_um": fwhm_lat * pixel_size,
        "fwhm_axial_um": fwhm_ax * pixel_size,
        "fwhm_additional_px": fwhm_add,
        "fwhm_additional_um": fwhm_add * pixel_size,
        "energy": energy,
        "shape": psf.shape,
    }
    return psf, info

