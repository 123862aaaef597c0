"""PSF models, bead processing, the additional axial PSF and the PSF check.

Conventions. A 3D PSF has axes ``(z, y, x)`` and voxel size ``spacing = (dz, dy, dx)`` in
micrometres. The 2D PSF consumed by the forward operator ``isojax.degrade`` has axes
``(lateral, axial)``, is sampled at the image's *lateral* pixel size on both axes, is
non-negative, sums to 1, has odd sizes with its peak at index ``n // 2`` and decays to zero at its
edges. It is the *additional* axial blur: the full PSF deconvolved by its isotropic part, so that
blurring an isotropic image with it mimics the worse axial resolution.

For a Gaussian PSF with standard deviations ``sigma_lateral`` and ``sigma_axial`` the isotropic
part is a Gaussian of ``sigma_lateral`` on every axis; since variances of convolved Gaussians add,
the additional PSF is a delta laterally and a Gaussian of
``sqrt(sigma_axial**2 - sigma_lateral**2)`` axially. (The CSBDeep isotropic notebook uses
``sigma_axial - sigma_lateral``, which is wrong for Gaussians: widths add in quadrature.)

Gaussian models are written in JAX so that later PSF self-calibration can differentiate them;
bead processing and the check are numpy/scipy, as they run once per PSF, outside training.

References:
  B. Zhang, J. Zerubia, J.-C. Olivo-Marin, "Gaussian approximations of fluorescence microscope
  point-spread function models", Applied Optics 46(10):1819-1829 (2007),
  doi:10.1364/AO.46.001819. Cited below as [Zhang2007].
  M. Weigert et al., "Isotropic reconstruction of 3D fluorescence microscopy images using
  convolutional neural networks", MICCAI 2017 (the additional axial PSF).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage, special
from scipy.interpolate import CubicSpline
from scipy.optimize import brentq
from scipy.signal import fftconvolve

from isojax.errors import IsojaxInputError

__all__ = [
    "FWHM_PER_SIGMA",
    "GaussianSigmas",
    "PSFReport",
    "axial_psf",
    "check_psf",
    "fwhm",
    "gaussian_axial_psf",
    "gaussian_psf",
    "process_bead",
    "resample_psf",
    "theoretical_axial_psf",
    "theoretical_psf",
    "theoretical_sigmas",
]

#: Full width at half maximum of a Gaussian in units of its standard deviation, sqrt(8 ln 2).
FWHM_PER_SIGMA = math.sqrt(8.0 * math.log(2.0))

Modality = Literal["widefield", "confocal", "lightsheet"]


# --------------------------------------------------------------------------------------------
# Small validation helpers
# --------------------------------------------------------------------------------------------


def _positive(value: float, name: str, unit: str = "") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise IsojaxInputError(f"{name} must be a number{unit}, got {value!r}") from exc
    if not (math.isfinite(number) and number > 0):
        raise IsojaxInputError(f"{name} must be positive and finite{unit}, got {value!r}")
    return number


def _spacing3(spacing: Sequence[float], name: str = "spacing") -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise IsojaxInputError(
            f"{name} must be (dz, dy, dx) in micrometres, got {spacing!r}") from exc
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise IsojaxInputError(
            f"{name} must be three positive micrometre values (dz, dy, dx), got {spacing!r}")
    return values  # type: ignore[return-value]


def _concrete_float(value) -> float | None:
    """``float(value)``, or None while ``value`` is a JAX tracer (inside jit or grad)."""
    try:
        return float(value)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
            TypeError):
        return None


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def fwhm(profile, *, spacing: float = 1.0) -> float:
    """Full width at half maximum of a 1D peak, with subpixel precision.

    The samples are interpolated with a cubic spline (values beyond the ends are taken as zero:
    the profile must be background-subtracted); the maximum is the spline's maximum near the
    largest sample and the two half-maximum crossings around it are found by root finding. For a
    sampled Gaussian of standard deviation ``s >= 1`` sample the result is ``2.3548 s`` within
    about 1%; a single-sample spike measures about 1 sample.

    Args:
      profile: 1D array of non-negative values, background removed.
      spacing: sample spacing (e.g. micrometres per pixel); the result is in the same unit.

    Returns:
      The FWHM in units of ``spacing``.

    Raises:
      IsojaxInputError: the profile is not 1D, is empty, not finite, or has no positive peak.
    """
    p = np.asarray(profile, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise IsojaxInputError(f"fwhm needs a non-empty 1D profile, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.max() <= 0:
        raise IsojaxInputError("fwhm needs a finite profile with a positive peak")
    padded = np.concatenate([[0.0, 0.0], p, [0.0, 0.0]])
    x = np.arange(padded.size, dtype=np.float64)
    spline = CubicSpline(x, padded)
    i = int(np.argmax(padded))
    fine = np.linspace(i - 1, i + 1, 201)
    height = max(float(spline(fine).max()), float(padded[i]))
    half = 0.5 * height

    def crossing(step: int) -> float:
        j = i
        while padded[j] >= half:
            j += step
        a, b = sorted((j - step, j))
        return float(brentq(lambda t: float(spline(t)) - half, a, b))

    return (crossing(+1) - crossing(-1)) * float(spacing)


def _profile_fwhm(profile: np.ndarray) -> float:
    """FWHM in samples of a profile's positive part, nan if it has no positive peak."""
    p = np.clip(np.asarray(profile, dtype=np.float64), 0.0, None)
    return fwhm(p) if p.max() > 0 else float("nan")


def _refine_centre(
    values: np.ndarray, start: Sequence[float], half: Sequence[int], *,
    threshold: float = 0.0, max_iter: int = 30, tol: float = 1e-4,
) -> np.ndarray:
    """Iterated intensity-weighted centroid in a box of half-sizes ``half`` (voxels).

    Weights are ``max(values - threshold, 0)``; the box is re-centred on the rounded centroid
    until the centroid moves less than ``tol`` voxels.
    """
    centre = np.asarray(start, dtype=np.float64)
    shape = np.asarray(values.shape)
    for _ in range(max_iter):
        lo = np.clip(np.round(centre).astype(int) - half, 0, shape - 1)
        hi = np.clip(np.round(centre).astype(int) + half + 1, 1, shape)
        box = values[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        weights = np.clip(box - threshold, 0.0, None)
        total = weights.sum()
        if total <= 0:
            break
        grids = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)),
                            indexing="ij")
        new = np.array([(g * weights).sum() / total for g in grids])
        moved = np.max(np.abs(new - centre))
        centre = new
        if moved < tol:
            break
    return centre


def _peak_and_centre(values: np.ndarray, *, threshold: float = 0.0,
                     smooth: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Subpixel centre of the brightest blob: smoothed maximum, then iterated centroid.

    Returns ``(centre, fwhm_voxels)``; the centroid window is 1.5 FWHM on each side.
    """
    smoothed = ndimage.gaussian_filter(values, smooth) if smooth > 0 else values
    peak = np.array(np.unravel_index(int(np.argmax(smoothed)), values.shape))
    widths = []
    for axis in range(values.ndim):
        index = list(peak)
        index[axis] = slice(None)
        widths.append(_profile_fwhm(smoothed[tuple(index)]))
    widths_arr = np.nan_to_num(np.asarray(widths), nan=2.0)
    half = np.clip(np.ceil(1.5 * widths_arr).astype(int), 2, None)
    centre = _refine_centre(values, peak, half, threshold=threshold)
    return centre, widths_arr


def _energy_half_widths(values: np.ndarray, centre: Sequence[int], energy: float) -> list[int]:
    """Per axis, the smallest half-width ``h`` whose centred slab holds ``energy`` of the mass.

    The mass is the positive part of each axis' marginal (the sum over the other axes), which
    averages zero-mean noise away before clipping.
    """
    halves = []
    for axis, c in enumerate(centre):
        other = tuple(a for a in range(values.ndim) if a != axis)
        marginal = np.clip(values.sum(axis=other), 0.0, None)
        total = marginal.sum()
        n = marginal.size
        limit = min(c, n - 1 - c)
        h = limit
        if total > 0:
            for candidate in range(limit + 1):
                if marginal[c - candidate:c + candidate + 1].sum() >= energy * total:
                    h = candidate
                    break
        halves.append(int(h))
    return halves


# --------------------------------------------------------------------------------------------
# Gaussian models (JAX, differentiable in the widths)
# --------------------------------------------------------------------------------------------


def gaussian_psf(sigma, spacing: Sequence[float], *, shape: Sequence[int] | None = None):
    """A sampled 3D Gaussian PSF, normalised to sum 1, centred at index ``n // 2``.

    Args:
      sigma: standard deviations ``(sigma_z, sigma_y, sigma_x)`` in micrometres (a JAX or
        numpy array or a sequence; differentiable).
      spacing: voxel size ``(dz, dy, dx)`` in micrometres.
      shape: output shape ``(nz, ny, nx)``; default: odd, covering +-4 sigma on each axis.
        Required when ``sigma`` is traced (under ``jit`` or ``grad``).

    Returns:
      A float JAX array of shape ``shape`` with axes ``(z, y, x)``, point samples of
      ``exp(-sum_i x_i**2 / (2 sigma_i**2))`` at ``x_i = (index - n_i // 2) * spacing_i``,
      divided by their sum.

    Raises:
      IsojaxInputError: non-positive sigma or spacing, or no ``shape`` for traced widths.
    """
    dz, dy, dx = _spacing3(spacing)
    sig = jnp.asarray(sigma, dtype=jnp.result_type(float))
    if sig.shape != (3,):
        raise IsojaxInputError(f"sigma must be (sigma_z, sigma_y, sigma_x) in um, got {sig.shape}")
    if shape is None:
        concrete = [_concrete_float(s) for s in sig]
        if any(c is None for c in concrete):
            raise IsojaxInputError("pass shape= when sigma is traced (under jit or grad)")
        for c in concrete:
            _positive(c, "each sigma", " micrometres")  # type: ignore[arg-type]
        shape = tuple(2 * math.ceil(4.0 * c / d) + 1  # type: ignore[operator]
                      for c, d in zip(concrete, (dz, dy, dx), strict=True))
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise IsojaxInputError(f"shape must be three positive sizes (nz, ny, nx), got {shape}")
    axes = [(jnp.arange(int(n)) - int(n) // 2) * d for n, d in zip(shape, (dz, dy, dx),
                                                                    strict=True)]
    profiles = [jnp.exp(-0.5 * (a / s) ** 2) for a, s in zip(axes, sig, strict=True)]
    psf = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    return psf / psf.sum()


def gaussian_axial_psf(sigma_axial_px, *, sigma_lateral_px=0.0, size: int | None = None):
    """The additional axial PSF of a Gaussian PSF: a delta laterally, a Gaussian axially.

    A 3D Gaussian PSF with lateral and axial standard deviations ``sigma_lateral`` and
    ``sigma_axial`` equals its isotropic part (a Gaussian of ``sigma_lateral`` on all axes)
    convolved with a Gaussian of ``sqrt(sigma_axial**2 - sigma_lateral**2)`` along the axial axis
    only, because the variances of convolved Gaussians add. That axial Gaussian is returned.
    Note that ``sigma_axial - sigma_lateral`` (as in CSBDeep's isotropic notebook) is wrong.

    Args:
      sigma_axial_px: axial standard deviation of the full PSF, in (lateral) image pixels.
      sigma_lateral_px: lateral standard deviation of the full PSF, in pixels; 0 returns a
        Gaussian of ``sigma_axial_px``.
      size: odd length of the axial axis in pixels; default ``2 * ceil(4 s) + 1`` with ``s`` the
        additional sigma, so that the kernel decays to about ``exp(-8)`` of its peak at the
        ends. Required when the widths are traced (under ``jit`` or ``grad``).

    Returns:
      A JAX array of shape ``(1, size)``, axes ``(lateral, axial)``, non-negative, summing to 1,
      peak at index ``size // 2``; differentiable in both widths.

    Raises:
      IsojaxInputError: ``sigma_axial_px < sigma_lateral_px``, a negative width, an even or
        non-positive ``size``, or no ``size`` with traced widths.
    """
    sa = _concrete_float(sigma_axial_px)
    sl = _concrete_float(sigma_lateral_px)
    if sa is not None and sl is not None:
        if not (math.isfinite(sa) and math.isfinite(sl)) or sa <= 0 or sl < 0:
            raise IsojaxInputError(
                f"widths must be finite, sigma_axial_px > 0 and sigma_lateral_px >= 0, "
                f"got {sa} and {sl}")
        if sa < sl:
            raise IsojaxInputError(
                f"sigma_axial_px ({sa}) is smaller than sigma_lateral_px ({sl}): the axial PSF "
                "must be at least as wide as the lateral one; check the order of the arguments")
        if size is None:
            size = 2 * math.ceil(4.0 * math.sqrt(sa * sa - sl * sl)) + 1
    if size is None:
        raise IsojaxInputError("pass size= (odd, pixels) when the widths are traced")
    if int(size) != size or size < 1 or size % 2 == 0:
        raise IsojaxInputError(f"size must be a positive odd number of pixels, got {size}")
    size = int(size)
    variance = jnp.asarray(sigma_axial_px) ** 2 - jnp.asarray(sigma_lateral_px) ** 2
    variance = jnp.maximum(variance, 1e-12)
    x = jnp.arange(size) - size // 2
    g = jnp.exp(-0.5 * x**2 / variance)
    return (g / g.sum())[None, :]


# --------------------------------------------------------------------------------------------
# Theoretical PSFs (Gaussian approximations, [Zhang2007])
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianSigmas:
    """Standard deviations of a Gaussian PSF approximation, in micrometres.

    Attributes:
      lateral_um: standard deviation along x and y.
      axial_um: standard deviation along z.
      modality: the microscope it models.
    """

    lateral_um: float
    axial_um: float
    modality: str

    @property
    def fwhm_lateral_um(self) -> float:
        """Lateral FWHM in micrometres (2.3548 sigma)."""
        return FWHM_PER_SIGMA * self.lateral_um

    @property
    def fwhm_axial_um(self) -> float:
        """Axial FWHM in micrometres (2.3548 sigma)."""
        return FWHM_PER_SIGMA * self.axial_um


def _widefield_sigmas(na: float, wavelength_um: float, ri: float) -> tuple[float, float]:
    k = 2.0 * math.pi / wavelength_um
    return math.sqrt(2.0) / (k * na), 2.0 * math.sqrt(6.0) * ri / (k * na * na)


def _confocal_sigmas(na: float, emission_um: float, excitation_um: float, ri: float,
                     pinhole_au: float) -> tuple[float, float]:
    k_em = 2.0 * math.pi / emission_um
    k_ex = 2.0 * math.pi / excitation_um
    if pinhole_au == 0:
        k = math.hypot(k_ex, k_em)
        return math.sqrt(2.0) / (k * na), 2.0 * math.sqrt(6.0) * ri / (k * na * na)
    # Pinhole radius back-projected to the sample: 1 AU is a diameter of 1.22 lambda_em / NA.
    r = pinhole_au * 0.61 * emission_um / na
    c1 = k_ex * r * na
    c2 = k_em * r * na
    j0 = float(special.j0(c2))
    j1 = float(special.j1(c2))
    d = j0 * j0 + j1 * j1 - 1.0
    inv_lat = c1 * c1 / r**2 + (4.0 * c2 * j0 * j1 - 8.0 * j1 * j1) / (r**2 * d)
    inv_ax = (c1 * c1 * na * na / (r * r * ri * ri)
              - (48.0 * c2 * c2 * (j0 * j0 + j1 * j1) - 192.0 * j1 * j1)
              / (ri * ri * k_em * k_em * r**4 * d))
    return math.sqrt(2.0 / inv_lat), 2.0 * math.sqrt(6.0) / math.sqrt(inv_ax)


def theoretical_sigmas(
    *,
    na: float,
    wavelength_um: float,
    ri: float,
    modality: Modality,
    excitation_um: float | None = None,
    pinhole_au: float = 1.0,
    sheet_fwhm_um: float | None = None,
) -> GaussianSigmas:
    """Gaussian approximation of a diffraction-limited PSF, from the optics.

    Paraxial formulas of [Zhang2007], with ``k = 2 pi / wavelength`` (vacuum wavelengths):

    - widefield (Tables 2 and 3, paraxial WFFM): ``sigma_r = sqrt(2) / (k_em NA)`` (that is
      0.2251 lambda_em / NA), ``sigma_z = 2 sqrt(6) n / (k_em NA**2)`` (0.7797 n lambda_em/NA**2).
    - confocal (paraxial LSCM, pinhole radius ``r`` in the sample, ``c1 = k_ex r NA``,
      ``c2 = k_em r NA``, ``J0, J1`` Bessel functions of ``c2``,
      ``D = J0**2 + J1**2 - 1``):
      ``sigma_r = sqrt(2) / sqrt(c1**2 / r**2 + (4 c2 J0 J1 - 8 J1**2) / (r**2 D))``,
      ``sigma_z = 2 sqrt(6) / sqrt(c1**2 NA**2 / (r**2 n**2)
      - (48 c2**2 (J0**2 + J1**2) - 192 J1**2) / (n**2 k_em**2 r**4 D))``.
      As ``r -> 0`` these tend to the widefield formulas with ``k_em`` replaced by
      ``sqrt(k_ex**2 + k_em**2)`` (``pinhole_au=0`` uses that limit). A pinhole of ``p`` Airy
      units has ``r = p * 0.61 lambda_em / NA``.
    - lightsheet: widefield detection, and an illumination sheet whose Gaussian intensity
      profile along z has the given FWHM. The axial PSF is the product of the detection and
      illumination profiles, so ``1 / sigma_z**2 = 1 / sigma_det_z**2 + 1 / sigma_sheet**2``.

    Args:
      na: numerical aperture of the (detection) objective, ``0 < na < ri``.
      wavelength_um: emission wavelength in micrometres.
      ri: refractive index of the immersion medium.
      modality: ``"widefield"``, ``"confocal"`` or ``"lightsheet"``.
      excitation_um: excitation wavelength in micrometres (confocal only; required there).
      pinhole_au: confocal pinhole diameter in Airy units (default 1); 0 for the small-pinhole
        limit.
      sheet_fwhm_um: light-sheet thickness as the FWHM of its intensity profile along z, in
        micrometres (lightsheet only; required there).

    Returns:
      The lateral and axial standard deviations in micrometres.

    Raises:
      IsojaxInputError: a parameter is missing, non-positive, ``na >= ri`` or the modality is
        unknown.
    """
    na = _positive(na, "na")
    wavelength_um = _positive(wavelength_um, "wavelength_um", " micrometres")
    ri = _positive(ri, "ri")
    if na >= ri:
        raise IsojaxInputError(
            f"na ({na}) must be smaller than the refractive index ri ({ri}); check both values")
    if wavelength_um > 5:
        raise IsojaxInputError(
            f"wavelength_um={wavelength_um} is not a visible wavelength in micrometres; "
            "give it in micrometres, e.g. 0.52 for 520 nm")
    if modality == "widefield":
        lateral, axial = _widefield_sigmas(na, wavelength_um, ri)
    elif modality == "confocal":
        if excitation_um is None:
            raise IsojaxInputError(
                "confocal needs the excitation wavelength: pass excitation_um= "
                "(--excitation UM), e.g. 0.488")
        excitation_um = _positive(excitation_um, "excitation_um", " micrometres")
        pinhole = float(pinhole_au)
        if not (math.isfinite(pinhole) and pinhole >= 0):
            raise IsojaxInputError(f"pinhole_au must be >= 0 Airy units, got {pinhole_au}")
        lateral, axial = _confocal_sigmas(na, wavelength_um, excitation_um, ri, pinhole)
    elif modality == "lightsheet":
        if sheet_fwhm_um is None:
            raise IsojaxInputError(
                "lightsheet needs the sheet thickness: pass sheet_fwhm_um= (--sheet-fwhm UM), "
                "the FWHM of the sheet's intensity profile along z in micrometres")
        sheet_sigma = _positive(sheet_fwhm_um, "sheet_fwhm_um", " micrometres") / FWHM_PER_SIGMA
        lateral, det_axial = _widefield_sigmas(na, wavelength_um, ri)
        axial = 1.0 / math.sqrt(1.0 / det_axial**2 + 1.0 / sheet_sigma**2)
    else:
        raise IsojaxInputError(
            f"unknown modality {modality!r}; use 'widefield', 'confocal' or 'lightsheet'")
    return GaussianSigmas(lateral_um=lateral, axial_um=axial, modality=modality)


def theoretical_psf(
    *,
    na: float,
    wavelength_um: float,
    ri: float,
    modality: Modality,
    spacing: Sequence[float],
    shape: Sequence[int] | None = None,
    excitation_um: float | None = None,
    pinhole_au: float = 1.0,
    sheet_fwhm_um: float | None = None,
):
    """A 3D Gaussian PSF from the optics, sampled on a voxel grid.

    Args:
      na, wavelength_um, ri, modality, excitation_um, pinhole_au, sheet_fwhm_um: as in
        :func:`theoretical_sigmas`.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres.
      shape: output shape ``(nz, ny, nx)``; default odd and covering +-4 sigma.

    Returns:
      ``(psf3d, sigmas)``: a JAX array with axes ``(z, y, x)`` summing to 1, and the
      :class:`GaussianSigmas` used.

    Raises:
      IsojaxInputError: as :func:`theoretical_sigmas` and :func:`gaussian_psf`.
    """
    sigmas = theoretical_sigmas(na=na, wavelength_um=wavelength_um, ri=ri, modality=modality,
                                excitation_um=excitation_um, pinhole_au=pinhole_au,
                                sheet_fwhm_um=sheet_fwhm_um)
    psf = gaussian_psf((sigmas.axial_um, sigmas.lateral_um, sigmas.lateral_um), spacing,
                       shape=shape)
    return psf, sigmas


def theoretical_axial_psf(
    *,
    na: float,
    wavelength_um: float,
    ri: float,
    modality: Modality,
    pixel_size: float,
    excitation_um: float | None = None,
    pinhole_au: float = 1.0,
    sheet_fwhm_um: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The additional axial 2D PSF of the Gaussian approximation, at an image's pixel size.

    Args:
      na, wavelength_um, ri, modality, excitation_um, pinhole_au, sheet_fwhm_um: as in
        :func:`theoretical_sigmas`.
      pixel_size: the image's lateral pixel size in micrometres.

    Returns:
      ``(psf2d, info)``: a float32 numpy array with axes ``(lateral, axial)`` (shape
      ``(1, n)``, see :func:`gaussian_axial_psf`) and a dict with the sigmas and FWHMs in
      micrometres and pixels.

    Raises:
      IsojaxInputError: as :func:`theoretical_sigmas`, or a non-positive pixel size.
    """
    pixel_size = _positive(pixel_size, "pixel_size", " micrometres")
    sigmas = theoretical_sigmas(na=na, wavelength_um=wavelength_um, ri=ri, modality=modality,
                                excitation_um=excitation_um, pinhole_au=pinhole_au,
                                sheet_fwhm_um=sheet_fwhm_um)
    s_lat = sigmas.lateral_um / pixel_size
    s_ax = sigmas.axial_um / pixel_size
    if s_ax <= s_lat:
        raise IsojaxInputError(
            f"the axial sigma ({sigmas.axial_um:.3g} um) is not larger than the lateral one "
            f"({sigmas.lateral_um:.3g} um): there is no additional axial blur to model")
    psf = np.asarray(gaussian_axial_psf(s_ax, sigma_lateral_px=s_lat), dtype=np.float32)
    extra = math.sqrt(s_ax**2 - s_lat**2)
    info = {
        "modality": modality,
        "pixel_size_um": pixel_size,
        "sigma_lateral_um": sigmas.lateral_um,
        "sigma_axial_um": sigmas.axial_um,
        "fwhm_lateral_um": sigmas.fwhm_lateral_um,
        "fwhm_axial_um": sigmas.fwhm_axial_um,
        "sigma_additional_px": extra,
        "sigma_additional_um": extra * pixel_size,
        "shape": psf.shape,
    }
    return psf, info


# --------------------------------------------------------------------------------------------
# Measured beads
# --------------------------------------------------------------------------------------------


def _border_mask(shape: Sequence[int], width: Sequence[int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for axis, w in enumerate(width):
        index = [slice(None)] * len(shape)
        index[axis] = slice(0, w)
        mask[tuple(index)] = True
        index[axis] = slice(shape[axis] - w, shape[axis])
        mask[tuple(index)] = True
    return mask


def _robust_sd(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation; the plain standard deviation when that is zero
    (integer data whose border is mostly one value)."""
    mad = float(1.4826 * np.median(np.abs(values - np.median(values))))
    return mad if mad > 0 else float(np.std(values))


def process_bead(
    stack,
    spacing: Sequence[float],
    *,
    energy: float = 0.99,
    border: float = 0.1,
    smooth_px: float = 1.0,
) -> tuple[np.ndarray, tuple[float, float, float], dict[str, Any]]:
    """Turn a measured bead stack into a clean, centred 3D PSF summing to 1.

    Steps: (1) background = median of the border voxels (a frame of ``border`` of each axis),
    noise = 1.4826 x their median absolute deviation (their standard deviation if that is zero,
    as for quantised integer data); subtract the background. (2) Find the
    maximum of the stack smoothed by a Gaussian of ``smooth_px`` voxels, then refine it to
    subpixel accuracy by an iterated intensity-weighted centroid (weights: signal above twice
    the noise) in a window of 1.5 FWHM on each side; set to zero everything outside the
    bead's support (the connected region where the smoothed stack exceeds three times its
    noise, grown by two voxels), so noise cannot add a pedestal. (3) Crop the largest box centred on that
    voxel and shift it by the remaining fraction of a voxel (cubic spline) so that the bead's
    centre lands on the central voxel. (4) Crop to the smallest odd box that holds ``energy`` of
    the positive mass of each axis' marginal (marginals average the noise out), plus one voxel
    of margin. (5) Clip the
    remaining negative noise and normalise to sum 1.

    Args:
      stack: 3D array, axes ``(z, y, x)``: one bead, brighter than the background.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres (returned unchanged).
      energy: fraction of the mass the crop keeps on each axis, in ``(0, 1]``.
      border: thickness of the border frame used for the background, as a fraction of each
        axis (at least one voxel).
      smooth_px: standard deviation in voxels of the smoothing used to find the maximum.

    Returns:
      ``(psf3d, spacing, info)``: a float64 array with odd sizes and the bead centre at index
      ``n // 2`` on each axis, the voxel size, and a dict describing what was done (background,
      noise, peak signal-to-noise ratio, subpixel centre in voxels, shift, crop, FWHMs in voxels
      and micrometres).

    Raises:
      IsojaxInputError: not a finite 3D array with at least 5 voxels per axis, bad spacing or
        options, or no bead that stands out of the background.
    """
    spacing = _spacing3(spacing)
    a = np.asarray(stack, dtype=np.float64)
    if a.ndim != 3:
        raise IsojaxInputError(
            f"a bead stack must be 3D (z, y, x), got shape {a.shape}")
    if min(a.shape) < 5:
        raise IsojaxInputError(f"a bead stack needs at least 5 voxels per axis, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise IsojaxInputError("the bead stack contains NaN or infinite values")
    if not 0 < energy <= 1:
        raise IsojaxInputError(f"energy must be in (0, 1], got {energy}")
    if not 0 < border < 0.5:
        raise IsojaxInputError(f"border must be a fraction in (0, 0.5), got {border}")

    width = [max(1, round(border * n)) for n in a.shape]
    edge = a[_border_mask(a.shape, width)]
    background = float(np.median(edge))
    noise = _robust_sd(edge)
    a = a - background
    peak_value = float(ndimage.gaussian_filter(a, smooth_px).max())
    if peak_value <= 0 or (noise > 0 and peak_value < 5.0 * noise):
        raise IsojaxInputError(
            f"no bead stands out of the background (smoothed peak {peak_value:.3g} above a "
            f"background of {background:.3g}, noise {noise:.3g}); crop the stack around one "
            "bright, isolated bead")

    centre, _ = _peak_and_centre(a, threshold=2.0 * noise, smooth=smooth_px)
    # Support: where the smoothed bead stands 3 noise levels above the background, the
    # connected part that holds the centre, grown by two voxels to keep its soft edges.
    # Outside it the stack is noise and is set to zero, so it cannot add a pedestal.
    smoothed = ndimage.gaussian_filter(a, smooth_px)
    smooth_edge = smoothed[_border_mask(a.shape, width)]
    smooth_noise = _robust_sd(smooth_edge)
    labels, _ = ndimage.label(smoothed > 3.0 * smooth_noise)
    seed = tuple(np.round(centre).astype(int))
    support = labels == labels[seed] if labels[seed] > 0 else smoothed >= smoothed[seed] / 2
    support = ndimage.binary_dilation(support, iterations=2)
    a = np.where(support, a, 0.0)
    whole = np.round(centre).astype(int)
    fraction = centre - whole
    halves = [int(min(c, n - 1 - c)) for c, n in zip(whole, a.shape, strict=True)]
    box = a[tuple(slice(c - h, c + h + 1) for c, h in zip(whole, halves, strict=True))]
    shifted = ndimage.shift(box, -fraction, order=3, mode="constant", cval=0.0)
    mid = list(halves)
    keep = [min(k + 1, m) for k, m in zip(_energy_half_widths(shifted, mid, energy), mid,
                                          strict=True)]
    psf = shifted[tuple(slice(m - k, m + k + 1) for m, k in zip(mid, keep, strict=True))]
    positive = psf[psf > 0].sum()
    clipped = float(-psf[psf < 0].sum() / positive) if positive > 0 else 0.0
    psf = np.clip(psf, 0.0, None)
    psf = psf / psf.sum()
    c = [n // 2 for n in psf.shape]
    widths = [_profile_fwhm(psf[:, c[1], c[2]]), _profile_fwhm(psf[c[0], :, c[2]]),
              _profile_fwhm(psf[c[0], c[1], :])]
    info = {
        "background": background,
        "noise_sd": noise,
        "support_voxels": int(support.sum()),
        "peak_snr": peak_value / noise if noise > 0 else float("inf"),
        "centre_voxels_zyx": tuple(float(v) for v in centre),
        "subpixel_shift_voxels_zyx": tuple(float(-f) for f in fraction),
        "energy": energy,
        "shape": psf.shape,
        "negative_mass_clipped": clipped,
        "fwhm_voxels_zyx": tuple(widths),
        "fwhm_um_zyx": tuple(w * s for w, s in zip(widths, spacing, strict=True)),
    }
    return psf, spacing, info


def _sample(values: np.ndarray, coords: Sequence[np.ndarray], order: int) -> np.ndarray:
    grids = np.meshgrid(*coords, indexing="ij") if len(coords) > 1 else list(coords)
    return ndimage.map_coordinates(values, grids, order=order, mode="constant", cval=0.0)


def _richardson_lucy(plane: np.ndarray, kernel_1d: np.ndarray, n_iter: int) -> np.ndarray:
    """Richardson-Lucy deconvolution of ``plane`` by ``outer(kernel_1d, kernel_1d)``.

    Both are centred at index ``n // 2`` and non-negative; the kernel sums to 1. The estimate
    starts flat and stays non-negative; outside the plane the data are taken as zero.
    """
    kernel = np.outer(kernel_1d, kernel_1d)
    flipped = kernel[::-1, ::-1]
    estimate = np.full(plane.shape, plane.sum() / plane.size)
    tiny = 1e-12 * plane.max()
    for _ in range(n_iter):
        blurred = fftconvolve(estimate, kernel, mode="same")
        ratio = np.where(blurred > tiny, plane / np.maximum(blurred, tiny), 0.0)
        estimate = estimate * np.clip(fftconvolve(ratio, flipped, mode="same"), 0.0, None)
    return estimate


#: The outer frame of a derived PSF holds less than this fraction of its mass (half of
#: :func:`check_psf`'s default ``edge_tol``, so that resampling it keeps it under that).
_FRAME_TARGET = 0.005


def _frame_mass(h: np.ndarray) -> tuple[float, float]:
    """Mass on the outer lines of each axis ``(lateral, axial)``, as :func:`check_psf` counts
    them (axes shorter than 3 have no frame)."""
    lat = float(h[[0, -1], :].sum()) if h.shape[0] >= 3 else 0.0
    ax = float(h[:, [0, -1]].sum()) if h.shape[1] >= 3 else 0.0
    return lat, ax


def _pad_with_background(h: np.ndarray) -> np.ndarray:
    """Pad a cropped PSF (summing to 1) with background until its outer frame is empty enough.

    The crop of :func:`axial_psf` ends one pixel beyond the energy box, or at the edge of
    what the bead stack reaches; there the PSF can still carry mass (a lateral width of about
    one output pixel at a coarse pixel size leaves a third of it on a 3-pixel axis). Beyond the
    crop lies background (zero once it is removed), so one zero pixel is added at both ends of
    the axis whose outer lines hold more mass, until the frame that :func:`check_psf` measures
    holds less than :data:`_FRAME_TARGET`. The widths, centre and sum do not change.
    """
    while True:
        lat, ax = _frame_mass(h)
        # corners are counted once by check_psf: subtract them from the sum of the two
        corners = float(h[[0, -1]][:, [0, -1]].sum()) if min(h.shape) >= 3 else 0.0
        if lat + ax - corners < _FRAME_TARGET:
            return h
        h = np.pad(h, ((1, 1), (0, 0)) if lat >= ax else ((0, 0), (1, 1)))


def axial_psf(
    psf3d,
    spacing: Sequence[float],
    pixel_size: float,
    *,
    planes: Literal["both", "xz", "yz"] = "both",
    iterations: int = 50,
    energy: float = 0.995,
    order: int = 3,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Derive the 2D additional axial PSF ``(lateral, axial)`` from a 3D PSF.

    1. Find the PSF's subpixel centre (iterated centroid around the smoothed maximum).
    2. Sample the central XZ and YZ planes through that centre on a grid of ``pixel_size`` on
       both axes (cubic-spline point samples), and the x and y line profiles of the in-focus
       plane on the same lateral grid; ``g`` is the mean of the two normalised line profiles,
       symmetrised. Negative interpolation overshoot is set to zero.
    3. Deconvolve each plane by the isotropic part ``g(lateral) g(axial)`` with
       Richardson-Lucy (the maximum-likelihood solution under Poisson noise, Richardson 1972,
       Lucy 1974), ``h <- h * (K' * (P / (K * h)))``, from a flat start. It is chosen over a
       Fourier Tikhonov/Wiener filter because it keeps the result non-negative and its sum
       fixed by construction and does not ring at the truncated edges of the planes: on
       Gaussian test PSFs Tikhonov produced negative lobes of 10-30% of the mass, which
       clipping would turn into a bias. The number of iterations is the regularisation (early
       stopping limits noise amplification): the default 50 bring a Gaussian's lateral FWHM
       to 1.2-1.3 pixels (close to the ideal delta) and its axial width to within 1%, while
       on a real, noisy, flat-topped confocal bead more iterations start splitting the peak.
    4. Average the two planes (or keep one), crop to the smallest odd box centred on the PSF
       centre holding ``energy`` of the mass on each axis plus one pixel of margin (so the
       outer frame holds at most ``2 (1 - energy)`` of it), and normalise to sum 1. Where the
       crop is limited by what the bead stack reaches (a coarse ``pixel_size``: a lateral
       width of about one pixel), its outer lines can still hold mass; the box is then padded
       with background (zeros) until the outer 1-pixel frame holds less than 0.5%, half of
       what :func:`check_psf` accepts, so that the derived PSF passes its check.

    For a Gaussian 3D PSF with sigmas ``s_xy`` and ``s_z`` the result is a Gaussian of
    ``sqrt(s_z**2 - s_xy**2)`` axially and close to a delta laterally (tested to 5%).

    Args:
      psf3d: 3D PSF, axes ``(z, y, x)``, background removed (e.g. from :func:`process_bead`).
      spacing: its voxel size ``(dz, dy, dx)`` in micrometres.
      pixel_size: the image's lateral pixel size in micrometres; both output axes use it.
      planes: ``"both"`` (average XZ and YZ), ``"xz"`` or ``"yz"``.
      iterations: Richardson-Lucy iterations (more sharpens further and amplifies noise).
      energy: fraction of the mass the final crop keeps on each axis.
      order: spline order of the resampling (1 for linear, 3 for cubic).

    Returns:
      ``(psf2d, info)``: a float32 array, axes ``(lateral, axial)``, odd sizes, centred,
      non-negative, summing to 1; and a dict describing what was done (spacing, pixel size,
      resampling factors, method and iterations, crop shape, FWHMs in pixels and micrometres
      before and after).

    Raises:
      IsojaxInputError: not a finite 3D array with positive mass, bad spacing, pixel size or
        options, or the PSF reaches too close to the stack's edge to resample it.
    """
    spacing = _spacing3(spacing)
    pixel_size = _positive(pixel_size, "pixel_size", " micrometres")
    a = np.asarray(psf3d, dtype=np.float64)
    if a.ndim != 3:
        raise IsojaxInputError(
            f"axial_psf needs a 3D PSF (z, y, x), got shape {a.shape}; a 2D PSF is already "
            "axial: check it with check_psf (isojax psf check)")
    if not np.all(np.isfinite(a)):
        raise IsojaxInputError("the 3D PSF contains NaN or infinite values")
    total = a.sum()
    if total <= 0:
        raise IsojaxInputError("the 3D PSF has no positive mass; subtract the background first")
    if planes not in ("both", "xz", "yz"):
        raise IsojaxInputError(f"planes must be 'both', 'xz' or 'yz', got {planes!r}")
    if not 0 < energy <= 1:
        raise IsojaxInputError(f"energy must be in (0, 1], got {energy}")
    a = a / total
    dz, dy, dx = spacing

    centre, _ = _peak_and_centre(a, smooth=1.0)
    cz, cy, cx = centre
    reach = [min(c, n - 1 - c) for c, n in zip(centre, a.shape, strict=True)]
    half_lat = math.floor(min(reach[1] * dy, reach[2] * dx) / pixel_size)
    half_ax = math.floor(reach[0] * dz / pixel_size)
    if half_lat < 1 or half_ax < 1:
        raise IsojaxInputError(
            f"the PSF centre ({cz:.1f}, {cy:.1f}, {cx:.1f}) voxels is too close to the edge of "
            f"its {a.shape} stack to resample it at {pixel_size} um; use a larger stack")
    u = np.arange(-half_lat, half_lat + 1) * pixel_size
    w = np.arange(-half_ax, half_ax + 1) * pixel_size
    zs = cz + w / dz
    lat_x = cx + u / dx
    lat_y = cy + u / dy
    planes_2d = {}
    if planes in ("both", "xz"):
        planes_2d["xz"] = _sample(a, [zs, np.array([cy]), lat_x], order)[:, 0, :].T
    if planes in ("both", "yz"):
        planes_2d["yz"] = _sample(a, [zs, lat_y, np.array([cx])], order)[:, :, 0].T
    gx = _sample(a, [np.array([cz]), np.array([cy]), lat_x], order)[0, 0, :]
    gy = _sample(a, [np.array([cz]), lat_y, np.array([cx])], order)[0, :, 0]
    gx = np.clip(gx, 0.0, None)
    gy = np.clip(gy, 0.0, None)
    if gx.sum() <= 0 or gy.sum() <= 0:
        raise IsojaxInputError("the in-focus plane of the PSF has no positive lateral profile")
    g = 0.5 * (gx / gx.sum() + gy / gy.sum())
    g = 0.5 * (g + g[::-1])  # the isotropic part is symmetric; averaging removes odd noise

    if int(iterations) != iterations or iterations < 1:
        raise IsojaxInputError(f"iterations must be a positive integer, got {iterations}")
    # Keep the kernel only as wide as it matters (99.99% of its mass) to save time.
    kernel_half = _energy_half_widths(g[None, :], [0, g.size // 2], 0.9999)[1]
    kernel = g[g.size // 2 - kernel_half:g.size // 2 + kernel_half + 1]
    kernel = kernel / kernel.sum()
    results = []
    for plane in planes_2d.values():
        plane = np.clip(plane, 0.0, None)
        if plane.sum() <= 0:
            raise IsojaxInputError("a central plane of the PSF has no positive mass")
        h = _richardson_lucy(plane / plane.sum(), kernel, int(iterations))
        results.append(h / h.sum())
    h = np.mean(results, axis=0)
    mid = [half_lat, half_ax]
    # One pixel of margin beyond the energy box keeps the outer frame below 1 - energy.
    keep = [min(k + 1, m) for k, m in zip(_energy_half_widths(h, mid, energy), mid, strict=True)]
    h = h[half_lat - keep[0]:half_lat + keep[0] + 1, half_ax - keep[1]:half_ax + keep[1] + 1]
    h = _pad_with_background(h / h.sum()).astype(np.float32)

    before = (
        float(np.mean([_profile_fwhm(gx), _profile_fwhm(gy)])),
        float(np.mean([_profile_fwhm(pl[half_lat]) for pl in planes_2d.values()])),
    )
    lc, ac = h.shape[0] // 2, h.shape[1] // 2
    after = (_profile_fwhm(h[:, ac]), _profile_fwhm(h[lc, :]))
    info = {
        "spacing_um_zyx": spacing,
        "pixel_size_um": pixel_size,
        "resampling_factors_zyx": tuple(s / pixel_size for s in spacing),
        "centre_voxels_zyx": (float(cz), float(cy), float(cx)),
        "planes": tuple(planes_2d),
        "method": "richardson-lucy",
        "iterations": int(iterations),
        "kernel_size": int(kernel.size),
        "energy": energy,
        "shape": h.shape,
        "fwhm_input_px": before,
        "fwhm_input_um": tuple(v * pixel_size for v in before),
        "fwhm_px": after,
        "fwhm_um": tuple(v * pixel_size for v in after),
    }
    return h, info


def resample_psf(psf2d, *, pixel_size: float, target_pixel_size: float,
                 order: int = 3) -> np.ndarray:
    """Resample a 2D ``(lateral, axial)`` PSF to another pixel size, keeping its centre.

    The PSF is treated as a smooth function and point-sampled (cubic spline) on a grid of
    ``target_pixel_size`` centred on index ``n // 2``; negative overshoot is clipped and the
    result is normalised to sum 1.

    Args:
      psf2d: 2D PSF, axes ``(lateral, axial)``, sampled at ``pixel_size`` on both axes.
      pixel_size: its pixel size in micrometres.
      target_pixel_size: the wanted pixel size in micrometres (the image's lateral one).
      order: spline order.

    Returns:
      A float32 array with odd sizes covering the same extent, summing to 1.

    Raises:
      IsojaxInputError: not a 2D array with positive mass, or non-positive pixel sizes.
    """
    pixel_size = _positive(pixel_size, "pixel_size", " micrometres")
    target = _positive(target_pixel_size, "target_pixel_size", " micrometres")
    a = np.asarray(psf2d, dtype=np.float64)
    if a.ndim != 2 or not np.all(np.isfinite(a)) or a.sum() <= 0:
        raise IsojaxInputError("resample_psf needs a finite 2D PSF with positive mass")
    coords = []
    for n in a.shape:
        half = math.floor((n // 2) * pixel_size / target)
        coords.append(n // 2 + np.arange(-half, half + 1) * target / pixel_size)
    out = np.clip(_sample(a, coords, order), 0.0, None)
    if out.sum() <= 0:
        raise IsojaxInputError("the resampled PSF has no positive mass")
    return (out / out.sum()).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PSFReport:
    """What :func:`check_psf` found about a 2D ``(lateral, axial)`` PSF.

    Attributes:
      shape: array shape ``(lateral, axial)``.
      total: sum of the values as given.
      n_negative: number of negative values as given.
      negative_mass: their total magnitude as a fraction of the positive mass.
      edge_fraction: fraction of the mass in the outer one-pixel frame (axes of length >= 3).
      centre_offset_px: centroid minus array centre ``n // 2``, ``(lateral, axial)`` pixels.
      fwhm_px: FWHM through the peak, ``(lateral, axial)`` pixels.
      fwhm_um: the same in micrometres, or None when the pixel size is unknown.
      pixel_size: the PSF's pixel size in micrometres, or None.
      image_pixel_size: the image's lateral pixel size in micrometres, or None.
      fixes: what the check changed (renormalised, clipped negatives); each was warned.
      warnings: problems it could not fix (mass on the edges, off-centre); each was warned.
      notes: remarks that need no warning (even size, unknown pixel size).
    """

    shape: tuple[int, ...]
    total: float
    n_negative: int
    negative_mass: float
    edge_fraction: float
    centre_offset_px: tuple[float, float]
    fwhm_px: tuple[float, float]
    fwhm_um: tuple[float, float] | None
    pixel_size: float | None
    image_pixel_size: float | None
    axes: tuple[str, str] = ("lateral", "axial")
    fixes: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        lines = [
            f"PSF shape {self.shape[0]} x {self.shape[1]} (axes {self.axes[0]}, {self.axes[1]})",
            f"  sum as given:   {self.total:.6g}",
            f"  negative values: {self.n_negative} ({100 * self.negative_mass:.3g}% of the "
            "positive mass)",
            f"  mass on edges:  {100 * self.edge_fraction:.3g}% (outer 1-pixel frame)",
            f"  centre offset:  lateral {self.centre_offset_px[0]:+.2f} px, "
            f"axial {self.centre_offset_px[1]:+.2f} px",
            f"  FWHM:           lateral {self.fwhm_px[0]:.2f} px, axial {self.fwhm_px[1]:.2f} px",
        ]
        if self.fwhm_um is not None:
            lines.append(f"                  lateral {self.fwhm_um[0]:.3g} um, "
                         f"axial {self.fwhm_um[1]:.3g} um")
        pixel = f"{self.pixel_size:g} um" if self.pixel_size is not None else "unknown"
        image = f"{self.image_pixel_size:g} um" if self.image_pixel_size is not None else "unknown"
        lines.append(f"  pixel size:     PSF {pixel}, image {image}")
        lines.extend(f"  fixed:   {text}" for text in self.fixes)
        lines.extend(f"  warning: {text}" for text in self.warnings)
        lines.extend(f"  note:    {text}" for text in self.notes)
        if not self.fixes and not self.warnings:
            lines.append("  usable as is")
        return "\n".join(lines)


def check_psf(
    psf,
    *,
    pixel_size: float | None = None,
    image_pixel_size: float | None = None,
    edge_tol: float = 0.01,
    negative_tol: float = 0.01,
    pixel_rtol: float = 0.01,
) -> tuple[np.ndarray, PSFReport]:
    """Check a 2D ``(lateral, axial)`` PSF before it reaches the forward operator.

    It measures shape, sum, negative values, mass on the edges, centre offset and FWHMs. It
    fixes what is safe, with a warning that says what it did: renormalising to sum 1 (when off
    by more than 1e-6) and clipping small negative noise (negative mass up to ``negative_tol``
    of the positive mass). It warns, without fixing, when more than ``edge_tol`` of the mass
    sits on the outer 1-pixel frame (the PSF was cropped too tightly) or the centroid is more
    than one pixel off the centre. It refuses what it cannot fix.

    Args:
      psf: 2D array-like, axes ``(lateral, axial)``.
      pixel_size: the PSF's pixel size in micrometres, if known (reports FWHMs in micrometres).
      image_pixel_size: the image's lateral pixel size in micrometres, if known.
      edge_tol: largest acceptable mass fraction on the outer frame before a warning.
      negative_tol: largest negative mass (fraction of the positive mass) that is clipped as
        noise; more is refused.
      pixel_rtol: relative tolerance on ``pixel_size`` versus ``image_pixel_size``.

    Returns:
      ``(fixed_psf, report)``: the PSF as a float numpy array (the input's float dtype, float32
      for integers), non-negative and summing to 1; and a :class:`PSFReport`.

    Raises:
      IsojaxInputError: a 3D PSF (derive the 2D one with ``isojax psf axial`` /
        :func:`axial_psf`), a 1D PSF (make it ``psf[None, :]``), other dimensionalities,
        non-numeric, NaN or infinite values, all zeros, a non-positive total, too much negative
        mass, or a pixel size that differs from the image's (resample with
        :func:`resample_psf`).
    """
    try:
        a = np.asarray(psf)
    except (TypeError, ValueError) as exc:
        raise IsojaxInputError(f"the PSF is not a numeric array ({exc})") from exc
    if a.dtype.kind not in "fiub":
        raise IsojaxInputError(f"the PSF must hold real numbers, got dtype {a.dtype}")
    dtype = a.dtype if a.dtype.kind == "f" else np.dtype(np.float32)
    if a.ndim == 3:
        raise IsojaxInputError(
            f"the PSF is 3D {a.shape}; the forward operator needs the 2D (lateral, axial) "
            "additional axial PSF: derive it with `isojax psf axial BEAD.tif --pixel-size UM` "
            "(Python: isojax.psf.axial_psf)")
    if a.ndim == 1:
        raise IsojaxInputError(
            f"the PSF is 1D ({a.size} values); make it 2D (lateral, axial): if it is an axial "
            "profile with no lateral blur use psf[None, :] (shape (1, n)); or build one with "
            "isojax.psf.gaussian_axial_psf")
    if a.ndim != 2:
        raise IsojaxInputError(
            f"the PSF must be a 2D (lateral, axial) array, got {a.ndim} dimensions {a.shape}")
    if a.size == 0:
        raise IsojaxInputError("the PSF is empty")
    values = a.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise IsojaxInputError(
            f"the PSF contains {int(np.sum(~np.isfinite(values)))} NaN or infinite values; "
            "regenerate it")
    if not np.any(values):
        raise IsojaxInputError("the PSF is all zeros; regenerate it")
    total = float(values.sum())
    if total <= 0:
        raise IsojaxInputError(
            f"the PSF's total mass is {total:.3g} (not positive): it is not a PSF; check its sign "
            "and background subtraction")
    positive = float(values[values > 0].sum())
    negative = values < 0
    negative_mass = max(0.0, float(-values[negative].sum() / positive))
    if negative_mass > negative_tol:
        raise IsojaxInputError(
            f"{100 * negative_mass:.3g}% of the PSF's mass is negative (more than "
            f"{100 * negative_tol:g}% noise): subtract the background correctly or rederive it "
            "with `isojax psf axial`")
    pixel = None if pixel_size is None else _positive(pixel_size, "pixel_size", " micrometres")
    image = (None if image_pixel_size is None
             else _positive(image_pixel_size, "image_pixel_size", " micrometres"))
    if pixel is not None and image is not None and abs(pixel / image - 1) > pixel_rtol:
        raise IsojaxInputError(
            f"the PSF's pixel size ({pixel:g} um) differs from the image's lateral pixel size "
            f"({image:g} um); resample it with isojax.psf.resample_psf(psf, pixel_size={pixel:g},"
            f" target_pixel_size={image:g}) or rederive it with --pixel-size {image:g}")

    fixes = []
    if negative.any():
        values = np.clip(values, 0.0, None)
        fixes.append(f"clipped {int(negative.sum())} small negative values "
                     f"({100 * negative_mass:.3g}% of the mass) to zero")
    mass = values.sum()
    if abs(mass - 1.0) > 1e-6:
        fixes.append(f"renormalised to sum 1 (the sum was {total:.6g})")
    values = values / mass

    frame = np.zeros(values.shape, dtype=bool)
    if values.shape[0] >= 3:
        frame[[0, -1], :] = True
    if values.shape[1] >= 3:
        frame[:, [0, -1]] = True
    edge_fraction = float(values[frame].sum())
    grids = np.meshgrid(*(np.arange(n) for n in values.shape), indexing="ij")
    offset = tuple(float((g * values).sum() - n // 2)
                   for g, n in zip(grids, values.shape, strict=True))
    peak = np.unravel_index(int(np.argmax(values)), values.shape)
    widths = (fwhm(values[:, peak[1]]), fwhm(values[peak[0], :]))

    problems = []
    notes = []
    if edge_fraction > edge_tol:
        problems.append(
            f"{100 * edge_fraction:.3g}% of the mass is on the outer 1-pixel frame (more than "
            f"{100 * edge_tol:g}%): the PSF is too small or was cropped; use a larger one")
    if max(abs(o) for o in offset) > 1.0:
        problems.append(
            f"the centroid is off the centre by ({offset[0]:+.2f}, {offset[1]:+.2f}) px: the "
            "forward operator will shift images by that much; centre the PSF")
    if any(n % 2 == 0 for n in values.shape):
        notes.append(f"even size {values.shape}: the centre (index n // 2) is ambiguous; "
                     "odd sizes are preferred")
    if pixel is None:
        notes.append("the PSF's pixel size is unknown: make sure it is the image's lateral "
                     "pixel size")
    if fixes:
        warnings.warn(f"check_psf fixed the PSF: {'; '.join(fixes)}", UserWarning, stacklevel=2)
    for text in problems:
        warnings.warn(f"check_psf: {text}", UserWarning, stacklevel=2)

    report = PSFReport(
        shape=tuple(int(n) for n in values.shape),
        total=total,
        n_negative=int(negative.sum()),
        negative_mass=negative_mass,
        edge_fraction=edge_fraction,
        centre_offset_px=offset,  # type: ignore[arg-type]
        fwhm_px=widths,
        fwhm_um=None if pixel is None else (widths[0] * pixel, widths[1] * pixel),
        pixel_size=pixel,
        image_pixel_size=image,
        fixes=tuple(fixes),
        warnings=tuple(problems),
        notes=tuple(notes),
    )
    return values.astype(dtype), report
