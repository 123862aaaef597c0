"""Measured beads: bead processing, the additional axial PSF by deconvolution, resampling.

:func:`process_bead` turns a raw 3D bead stack into a centred, background-free 3D PSF;
:func:`axial_psf` derives from it the 2D ``(lateral, axial)`` additional axial PSF (the full PSF
deconvolved by its isotropic part); :func:`resample_psf` moves a 2D PSF to another pixel size.
They are numpy/scipy, as they run once per PSF, outside training.

References:
  M. Weigert et al., "Isotropic reconstruction of 3D fluorescence microscopy images using
  convolutional neural networks", MICCAI 2017 (the additional axial PSF).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.signal import fftconvolve

from isojax.errors import IsojaxInputError
from isojax.psf.models import _positive, _profile_fwhm, _spacing3

__all__ = ["axial_psf", "process_bead", "resample_psf"]


# --------------------------------------------------------------------------------------------
# Peak and extent of a bead
# --------------------------------------------------------------------------------------------


def _refine_centre(
    values: np.ndarray, start: npt.ArrayLike, half: np.ndarray, *,
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
    # Long (two thirds docstring), and kept whole: background, support, centring, crop and
    # report each use what the step before found (one pass over one bead).
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
    # Long, and kept whole: it follows the four steps above, which share the centre, the
    # sampling grids and the planes; split up, they would pass a dozen values around.
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
    if a.ndim != 2:
        raise IsojaxInputError(
            f"resample_psf needs a 2D (lateral, axial) PSF, got shape {a.shape}; reduce a 3D "
            "bead stack to one with `isojax psf axial` (or pass it with --bead)")
    if not np.all(np.isfinite(a)) or a.sum() <= 0:
        raise IsojaxInputError("resample_psf needs a finite 2D PSF with positive mass")
    coords = []
    for n in a.shape:
        half = math.floor((n // 2) * pixel_size / target)
        coords.append(n // 2 + np.arange(-half, half + 1) * target / pixel_size)
    out = np.clip(_sample(a, coords, order), 0.0, None)
    if out.sum() <= 0:
        raise IsojaxInputError("the resampled PSF has no positive mass")
    return (out / out.sum()).astype(np.float32)
