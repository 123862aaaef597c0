"""PSF models: Gaussian PSFs, theoretical widths and PSFs, and the FWHM of a measured peak.

For a Gaussian PSF with standard deviations ``sigma_lateral`` and ``sigma_axial`` the isotropic
part is a Gaussian of ``sigma_lateral`` on every axis; since variances of convolved Gaussians add,
the additional PSF is a delta laterally and a Gaussian of
``sqrt(sigma_axial**2 - sigma_lateral**2)`` axially. (The CSBDeep isotropic notebook uses
``sigma_axial - sigma_lateral``, which is wrong for Gaussians: widths add in quadrature.)

Gaussian models are written in JAX so that later PSF self-calibration can differentiate them.
The conventions (axes, spacing, the 2D additional axial PSF) are in :mod:`isojax.psf`. The small
validation helpers at the top are shared by the package's other modules.

References:
  B. Zhang, J. Zerubia, J.-C. Olivo-Marin, "Gaussian approximations of fluorescence microscope
  point-spread function models", Applied Optics 46(10):1819-1829 (2007),
  doi:10.1364/AO.46.001819. Cited below as [Zhang2007].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special
from scipy.interpolate import CubicSpline
from scipy.optimize import brentq

from isojax.errors import IsojaxInputError

__all__ = [
    "FWHM_PER_SIGMA",
    "GaussianSigmas",
    "fwhm",
    "gaussian_axial_psf",
    "gaussian_psf",
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
    dz, dy, dx = values
    return dz, dy, dx


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


def _check_optics(na, wavelength_um, ri) -> tuple[float, float, float]:
    """``(na, wavelength_um, ri)`` as floats, checked: positive, ``na < ri``, a wavelength
    in micrometres. The one check of the optics for the Gaussian and the Debye models."""
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
    return na, wavelength_um, ri


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
    na, wavelength_um, ri = _check_optics(na, wavelength_um, ri)
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
