"""PSF self-calibration: learn the additional axial PSF from the anisotropic stack itself.

Most users have no bead measurement. The forward operator is differentiable in the PSF,
so the stack can tell us its own additional axial PSF ``h``. Three pieces live here:

* **Parameterisations** of ``h``, each differentiable and, by construction, non-negative
  and summing to 1 (:func:`psf_from_params`):

  - ``"gaussian"``: a Gaussian of axial standard deviation ``sigma`` (lateral delta, or a
    fixed lateral Gaussian), returned as a rank-one :class:`~isojax.forward.FactoredPSF`
    so the operator costs one matrix product;
  - ``"multi-gaussian"``: a central Gaussian plus symmetric pairs of side lobes (lobed
    light-sheet profiles), mixture weights from a softmax;
  - ``"free"``: a free-form symmetric axial kernel, the softmax of logits, regularised by
    a second-difference smoothness penalty (:func:`smoothness_penalty`).

* **An objective that identifies the PSF** (:func:`spectral_loss`). A specimen that is
  statistically isotropic has the same power spectrum along every direction. The
  observed axial (Z) lines are that spectrum, blurred by ``h`` and sampled every
  ``subsample`` pixels (aliasing included). Lateral lines of the XY planes, passed
  through :func:`isojax.forward.measure` with a candidate ``h`` (blur and sampling at the
  real axial step, so aliasing is reproduced by the operator itself), must then have the
  same spectrum as the Z lines only when the candidate is right. Spectra are Welch
  estimates (Hann window, segments covering each line with at least 50% overlap)
  averaged over many lines, both lateral directions and every sampling phase (lateral
  lines start at random offsets), and over the Z lines of all XZ and YZ planes (up to
  :data:`_MAX_PLANES` of each), compared as logarithms, with two fitted nuisance
  constants: a white noise floor and a gain. Detector noise of variance ``v`` reaches the
  two sides through different filters and is added to each from the other (``v`` is
  bounded by both the lateral lines' highest frequencies and the Z lines' spectrum, so
  a noise-free stack gets none). The *lateral*
  PSF blurs XY lines and Z lines alike, so it cancels: what the comparison identifies is
  the *additional* axial PSF, the one :func:`isojax.degrade` needs.

* **Fitting** (:func:`fit_psf`), and the pieces the training loop uses to refine the PSF
  jointly with the network (:func:`consistency_loss`, :func:`axial_patches`).

Why it identifies the PSF, and where it does not. The power spectrum of the synthetic
lines is ``|H(f)|^2`` times the lateral spectrum (folded by aliasing), so at every
resolvable axial frequency the ratio of the two spectra pins ``|H(f)|^2``; a Gaussian's
single width follows from the curvature of that ratio, which a gain and a white floor
cannot mimic. A consistency term alone (re-degrading a restoration reproduces the
observation) does not identify ``h``: a sharper restoration with a wider ``h``, or a
blurrier one with a narrower ``h``, are equally consistent. The spectral objective fails
when its premise fails or its signal vanishes:

* specimens with a preferred orientation (aligned fibres, layered tissue, a coverslip
  surface): Z and XY spectra differ for reasons other than the PSF;
* too few planes or too small planes: the spectra are noisy or have too few frequencies
  (at least :data:`MIN_SAMPLES` samples per line are required);
* noise-dominated spectra: above the frequency where the floor dominates, there is no
  information about ``h``;
* PSFs narrower than the axial sampling can resolve: when ``sigma << subsample / pi``,
  ``|H(f)|^2`` is nearly 1 below the axial Nyquist frequency, and only aliasing carries
  the width. The sampled spectra then depend on ``h`` only through the small correlation
  of adjacent planes (the covariance of the specimen at lags of one axial step), and the
  difference between that correlation along z and along x in one finite specimen can
  exceed what ``h`` changes (e.g. subsample 10, sigma 1.5 px, lateral sigma 1 px: adjacent
  planes correlate by ~0.05 and the fit is not determined; ``fit_psf`` warns when it ends
  at a near-delta);
* power spectra are blind to phase, so only the symmetric part of ``h`` is identified;
  all parameterisations here are symmetric by construction. The lateral extent of the
  additional PSF is not identified by line spectra and is kept fixed.

References:
  M. Weigert, L. Royer, F. Jug, G. Myers, "Isotropic reconstruction of 3D fluorescence
  microscopy images using convolutional neural networks", MICCAI 2017 (the additional
  axial PSF and the isotropy assumption). [Weigert2017]
  P. Welch, "The use of fast Fourier transform for the estimation of power spectra",
  IEEE Trans. Audio Electroacoustics 15(2):70-73 (1967). [Welch1967]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from isojax.errors import IsojaxInputError
from isojax.forward import FactoredPSF, measure, sample_positions, upsample

Array = jax.Array
Family = Literal["gaussian", "multi-gaussian", "free"]

__all__ = [
    "FAMILIES",
    "MIN_SAMPLES",
    "CalibrationConfig",
    "CalibrationReport",
    "SpectralTarget",
    "axial_patches",
    "consistency_loss",
    "fit_psf",
    "init_params",
    "prepare_spectra",
    "psf_from_params",
    "psf_sigma",
    "smoothness_penalty",
    "spectral_loss",
    "synthetic_spectrum",
]

FAMILIES = ("gaussian", "multi-gaussian", "free")
#: Fewest samples per line (planes along Z; axial samples of a lateral line) for a spectrum.
MIN_SAMPLES = 16
_FWHM_PER_SIGMA = math.sqrt(8.0 * math.log(2.0))
_MAX_SEGMENT = 64
# observed XZ (and YZ) planes whose Z lines enter the observed spectrum, per direction
_MAX_PLANES = 256
# multiply-accumulates of one evaluation of measure over the lateral lines (bounds time)
_MAC_BUDGET = 1 << 25


# ----------------------------------------------------------------------------------------
# Parameterisations


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
    """Axial standard deviation (pixels) of a PSF: the square root of its second moment."""
    a = psf.axial[0]
    x = jnp.arange(a.shape[-1], dtype=a.dtype) - a.shape[-1] // 2
    mean = jnp.sum(x * a)
    return jnp.sqrt(jnp.sum((x - mean) ** 2 * a))


def smoothness_penalty(kernel: Array) -> Array:
    """Second-difference roughness of a kernel: ``sum (k[i-1] - 2 k[i] + k[i+1])^2 / sum k^2``.

    Scale-free (the ratio does not change when the kernel is scaled); zero for a straight
    line, small for a wide smooth peak, of order one for a spike or a comb.
    """
    k = jnp.ravel(kernel)
    d2 = k[:-2] - 2.0 * k[1:-1] + k[2:]
    return jnp.sum(d2**2) / jnp.sum(k**2)


# ----------------------------------------------------------------------------------------
# Spectra


class SpectralTarget(NamedTuple):
    """What the spectral objective compares against (a pytree of arrays).

    Attributes:
      lines: ``(n_lines, n)`` lateral lines from the XY planes (both directions), each
        ``n`` pixels long, normalised like the stack. Each starts at a random offset of 0
        to ``ceil(subsample) - 1`` pixels (as far as the line's length allows) in the
        plane, so that the synthetic axial samples fall on every sampling phase rather
        than always on pixels ``0, subsample, 2 subsample, ...``.
      z_power: ``(n_q, n_freq)`` the observed Z lines' power, resolved by lateral
        frequency: for each lateral frequency ``q / (2 (n - 1))`` (``q = 0 .. n - 1``) and
        each axial frequency, the Welch power of the Z lines of the XZ and YZ planes
        (mirrored laterally). Blurring the planes laterally by a kernel ``h`` multiplies
        row ``q`` by ``|H(q)|^2``, so :func:`observed_spectrum` is one product per
        candidate, whatever the number of planes.
      frequencies: ``(n_freq,)`` frequencies in cycles per axial sample.
      noise_var: white noise variance of the stack (normalised units): the smaller of
        two upper bounds, the lateral lines' power at 0.4 to 0.5 cycles per pixel (where
        the lateral PSF leaves little signal) and the raw Z lines' smallest power (white
        noise adds its variance to every axial frequency).
    """

    lines: Array
    z_power: Array
    frequencies: Array
    noise_var: Array


def _segment_starts(n: int, segment: int) -> np.ndarray:
    """Welch segment starts: evenly spaced from 0 to ``n - segment`` (the last segment ends
    at the last sample), at most ``segment // 2`` apart (at least 50% overlap)."""
    hop = max(1, segment // 2)
    count = -(-(n - segment) // hop) + 1
    return np.round(np.linspace(0, n - segment, count)).astype(int)


def _welch(lines: Array, segment: int) -> Array:
    """Welch power spectrum averaged over lines: Hann window, >= 50% overlap, mean removed.

    Segments cover the whole line (see :func:`_segment_starts`). Returns the ``segment //
    2`` non-zero frequencies ``k / segment``, ``k = 1 ..``.
    """
    n = lines.shape[-1]
    starts = _segment_starts(n, segment)
    # static slices rather than a gather: the same values, and a gradient that is a pad
    # rather than a scatter (compiles faster)
    seg = jnp.stack([lines[:, i : i + segment] for i in starts], axis=1)
    seg = seg - jnp.mean(seg, axis=-1, keepdims=True)
    win = np.hanning(segment + 2)[1:-1].astype(np.float32)
    f = jnp.fft.rfft(seg * win, axis=-1)
    p = jnp.mean(jnp.abs(f) ** 2, axis=(0, 1)) / float(np.sum(win**2))
    return p[1:]


def _segment_length(n_z: int, n_low: int) -> int:
    length = min(n_z, n_low, _MAX_SEGMENT)
    return length - length % 2


def _normalise(stack: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(stack, [1.0, 99.8])
    return ((stack - lo) / max(hi - lo, 1e-20)).astype(np.float32)


def _check_stack(stack, subsample: float) -> tuple[np.ndarray, float]:
    a = np.asarray(stack)
    if a.ndim != 3:
        raise IsojaxInputError(
            f"PSF calibration needs a 3D stack (z, y, x), got shape {a.shape}; select one "
            "channel or time point first."
        )
    try:
        s = float(subsample)
    except (TypeError, ValueError):
        raise IsojaxInputError(f"subsample must be a number, got {subsample!r}") from None
    if not (math.isfinite(s) and s >= 1):
        raise IsojaxInputError(
            f"subsample must be a finite number >= 1 (axial step / lateral pixel size), got "
            f"{subsample!r}"
        )
    nz, ny, nx = a.shape
    if nz < MIN_SAMPLES:
        raise IsojaxInputError(
            f"the stack has {nz} planes; PSF calibration needs at least {MIN_SAMPLES} along Z "
            "to estimate the axial power spectrum. Use a thicker stack, or give a PSF "
            "(bead or theory) instead."
        )
    n_lat = min(ny, nx)
    n_low = len(sample_positions(n_lat, s))
    if n_low < MIN_SAMPLES:
        need = math.ceil((MIN_SAMPLES - 1) * s) + 1
        raise IsojaxInputError(
            f"the XY planes ({ny} x {nx} px) are too small for subsample {s:g}: their lines "
            f"give {n_low} axial samples, calibration needs {MIN_SAMPLES} (planes of at least "
            f"{need} px). Use larger planes, or give a PSF instead."
        )
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise IsojaxInputError("the stack holds NaN or inf values; clean it before calibrating.")
    from isojax.synth import check_contrast

    check_contrast(a, percentiles=(1.0, 99.8))  # the percentiles _normalise maps to 0 and 1
    return a, s


def prepare_spectra(
    key: Array, stack, *, subsample: float, max_lines: int | None = None, normalise: bool = True
) -> tuple[SpectralTarget, int]:
    """The observed Z-line spectrum and a set of lateral lines to degrade, from a stack.

    Args:
      key: a ``jax.random`` key (chooses the lateral lines when there are more than
        ``max_lines``).
      stack: anisotropic stack ``(z, y, x)``; at least :data:`MIN_SAMPLES` planes and
        lateral lines long enough for :data:`MIN_SAMPLES` axial samples.
      subsample: anisotropy factor (axial step / lateral pixel size), >= 1.
      max_lines: lateral lines kept (half along x, half along y); default from a budget of
        about 2^26 multiply-adds per evaluation of :func:`measure`.
      normalise: map the 1st / 99.8th percentiles to 0 / 1 first (as training does).

    Returns:
      ``(target, segment)``: a :class:`SpectralTarget` and the Welch segment length (in
      axial samples, even).

    Raises:
      IsojaxInputError: a stack that is not 3D, too thin, too small laterally for the
        factor, not finite or constant.
    """
    a, s = _check_stack(stack, subsample)
    if normalise:
        a = _normalise(a)
    nz, ny, nx = a.shape
    n = min(ny, nx)
    n_low = len(sample_positions(n, s))
    segment = _segment_length(nz, n_low)
    lines_x = a[:, :, :n].reshape(-1, n)
    lines_y = np.swapaxes(a[:, :n, :], 1, 2).reshape(-1, n)
    # sampling phase: a line of n px holds n_low samples at k * s from any start up to
    # `slack` px; starts 0 .. ceil(s) - 1 cover every phase of the axial grid
    slack = (n - 1) - (n_low - 1) * s
    max_shift = int(min(math.ceil(s) - 1, math.floor(slack + 1e-9)))
    length = n - max_shift
    if max_lines is None:
        max_lines = max(512, _MAC_BUDGET // (length * n_low))
    half = max(1, int(max_lines) // 2)
    k_x, k_y, k_p = jax.random.split(key, 3)
    pick = []
    for k, lines in ((k_x, lines_x), (k_y, lines_y)):
        if lines.shape[0] > half:
            idx = np.sort(np.asarray(jax.random.choice(k, lines.shape[0], (half,), replace=False)))
            lines = lines[idx]
        pick.append(lines)
    fine_lines = np.concatenate(pick)
    shifts = np.asarray(jax.random.randint(k_p, (fine_lines.shape[0],), 0, max_shift + 1))
    lines = fine_lines[np.arange(fine_lines.shape[0])[:, None], shifts[:, None] + np.arange(length)]
    # observed Z lines: those of up to _MAX_PLANES XZ planes (rows) and YZ planes (columns)
    rows = np.unique(np.linspace(0, ny - 1, min(ny, _MAX_PLANES)).round().astype(int))
    cols = np.unique(np.linspace(0, nx - 1, min(nx, _MAX_PLANES)).round().astype(int))
    z_power = _z_power([a[:, rows, :n].transpose(1, 0, 2), a[:, :n, cols].transpose(2, 0, 1)],
                       segment)
    freqs = jnp.arange(1, segment // 2 + 1, dtype=jnp.float32) / segment
    fine = np.asarray(_welch(jnp.asarray(fine_lines), min(n, _MAX_SEGMENT) - min(n, _MAX_SEGMENT) % 2))
    f_fine = np.arange(1, len(fine) + 1) / (2 * len(fine))
    # Both spectra are signal plus noise, so each bounds the white noise variance from
    # above: the lateral lines' power at 0.4 to 0.5 cycles/px (where the lateral PSF leaves
    # little signal), and the raw Z lines' power at every axial frequency (white noise
    # along z adds v to each). In a nearly noise-free stack the first is the tail of the
    # lateral PSF, not noise, and adding it to both sides would invent a floor.
    z_raw = z_power.sum(axis=0)  # |H|^2 = 1: the unblurred Z lines' Welch spectrum
    noise_var = float(min(np.min(fine[f_fine >= 0.4]), np.min(z_raw)))
    target = SpectralTarget(jnp.asarray(lines), jnp.asarray(z_power, jnp.float32), freqs,
                            jnp.float32(noise_var))
    return target, segment


def _axial_profile(psf) -> Array:
    if isinstance(psf, FactoredPSF):
        return jnp.einsum("rl,ra->a", psf.lateral, psf.axial)
    return jnp.sum(jnp.asarray(psf), axis=0)


def _z_power(plane_sets, segment: int, chunk: int = 32) -> np.ndarray:
    """Welch power of Z lines resolved by lateral frequency (see :class:`SpectralTarget`).

    ``plane_sets``: arrays ``(n_planes, z, n)`` (lateral axis last). Each plane's Z lines
    are cut into Welch segments (:func:`_segment_starts`), mean-removed, Hann-windowed and
    transformed along z; each axial frequency's values along the lateral axis are then
    mirrored (whole-sample, period ``M = 2 (n - 1)``: the reflecting boundary of a
    lateral blur with mirrored edges) and transformed along it. By Parseval, the mean over one period of
    ``|h * row|^2`` is ``sum_q |H(q)|^2 |row^(q)|^2 / M^2``; rows ``q`` and ``M - q`` share
    ``|H|^2`` (a real kernel) and are added. Returns ``(M // 2 + 1, segment // 2)``, float64.
    """
    win = np.hanning(segment + 2)[1:-1]
    total, count = 0.0, 0
    for planes in plane_sets:
        nz, n = planes.shape[1], planes.shape[2]
        starts = _segment_starts(nz, segment)
        m = 2 * (n - 1)
        for i in range(0, planes.shape[0], chunk):
            p = np.asarray(planes[i : i + chunk], np.float64)
            seg = np.stack([p[:, j : j + segment] for j in starts], axis=1)  # (b, s, seg, n)
            seg = seg - seg.mean(axis=2, keepdims=True)
            f = np.fft.rfft(seg * win[:, None], axis=2)[:, :, 1 : segment // 2 + 1]
            f = np.concatenate([f, f[..., -2:0:-1]], axis=-1)  # mirror laterally
            q = np.abs(np.fft.fft(f, axis=-1)) ** 2
            folded = q[..., : m // 2 + 1].copy()
            folded[..., 1 : m // 2] += q[..., m - 1 : m // 2 : -1]
            total = total + folded.sum(axis=(0, 1))
            count += f.shape[0] * f.shape[1]
    power = total / (count * float(m) ** 2 * float(np.sum(win**2)))
    return power.T


def observed_spectrum(psf, target: SpectralTarget, *, segment: int) -> Array:
    """Welch spectrum of the observed Z lines after blurring them laterally by the PSF.

    Lateral lines of the XY planes integrate, across the line, over one axis that the PSF
    has blurred (z); Z lines integrate over two unblurred lateral axes. Blurring the
    observed planes along one lateral axis with the same axial profile makes the two
    comparable for any isotropic specimen (a rotation maps one onto the other).

    Computed from ``target.z_power`` as ``sum_q |H(q)|^2 z_power[q]``: the spectrum of the
    planes blurred with mirrored (whole-sample reflecting) edges, averaged over one mirror
    period, for all the planes at the cost of one small product.
    """
    del segment  # fixed by target.z_power
    h = _axial_profile(psf)
    m = 2 * (target.z_power.shape[0] - 1)
    gain = jnp.abs(jnp.fft.rfft(h, m)) ** 2  # |H(q)|^2, q = 0 .. m / 2
    return gain @ target.z_power


def synthetic_spectrum(psf, target: SpectralTarget, *, subsample: float, segment: int) -> Array:
    """Welch spectrum of the lateral lines after :func:`~isojax.forward.measure` with ``psf``.

    The lines are blurred by the axial profile and sampled every ``subsample`` pixels by
    the forward operator itself (aliasing included), exactly as the microscope samples z.
    """
    if isinstance(psf, FactoredPSF) and psf.lateral.shape[-1] > 1:
        # a 1D line has no lateral neighbours: only the axial profile acts on it
        psf = FactoredPSF(jnp.sum(psf.lateral, axis=-1, keepdims=True), psf.axial)
    y = measure(target.lines, psf, subsample)
    return _welch(y, segment)


def _noise_spectrum(psf, n: int, subsample: float, frequencies: Array) -> Array:
    """Spectrum of unit white noise after ``measure``: ``sum_m r(m) cos(2 pi f m)``.

    ``r(m)`` is the autocovariance of the samples, averaged over the interior rows of the
    blur-and-sample matrix ``A`` (``cov(A x) = A A^T`` for white ``x``).
    """
    if isinstance(psf, FactoredPSF) and psf.lateral.shape[-1] > 1:
        psf = FactoredPSF(jnp.sum(psf.lateral, axis=-1, keepdims=True), psf.axial)
    a = measure(jnp.eye(n, dtype=jnp.float32), psf, subsample, axes=(0, 1)).T  # (n_low, n)
    n_low = a.shape[0]
    lo, hi = n_low // 4, max(n_low // 4 + 1, 3 * n_low // 4)
    lags = min(n_low - hi, 16)
    rows = a[lo:hi]
    r = jnp.stack([jnp.mean(jnp.sum(rows * a[lo + m : hi + m], axis=-1)) for m in range(lags)])
    m = jnp.arange(lags, dtype=jnp.float32)
    w = jnp.where(m == 0, 1.0, 2.0)
    return jnp.sum(w * r * jnp.cos(2 * jnp.pi * frequencies[:, None] * m), axis=-1)


def _log_spectra(psf, nuisance, target, subsample, segment):
    """(log observed, log model) spectra, each with the other side's detector noise added.

    Both sides carry the stack's white noise of variance ``v`` after different filters:
    the Z lines ``v sum(h^2)`` (lateral blur, white along z), the synthetic lines ``v
    N_h(f)`` (blur and sampling). Adding each side's noise to the other makes the noise
    equal on both, without subtracting anything.
    """
    v = target.noise_var
    h = _axial_profile(psf)
    obs = observed_spectrum(psf, target, segment=segment)
    syn = synthetic_spectrum(psf, target, subsample=subsample, segment=segment)
    n_h = _noise_spectrum(psf, target.lines.shape[-1], subsample, target.frequencies)
    obs = obs + v * n_h
    syn = syn + v * jnp.sum(h**2)
    model = jnp.exp(nuisance["log_gain"]) * syn + jnp.exp(nuisance["log_floor"])
    return jnp.log(jnp.maximum(obs, 1e-30)), jnp.log(model)


# one compiled program for the spectra that fit_psf reports (rather than dozens of small ones)
_log_spectra_jit = jax.jit(_log_spectra, static_argnums=(3, 4))


def _model_log_spectrum(psf, nuisance, target, subsample, segment):
    return _log_spectra_jit(psf, nuisance, target, subsample, segment)[1]


def spectral_loss(
    psf, nuisance: dict, target: SpectralTarget, *, subsample: float, segment: int
) -> Array:
    """Mean squared difference of log spectra: observed Z lines vs degraded lateral lines.

    ``mean_f (log P_z(f) - log(g P_syn(f; psf) + c))^2`` with the gain ``g =
    exp(nuisance["log_gain"])`` and the white noise floor ``c = exp(nuisance["log_floor"])``.

    Args:
      psf: the candidate PSF (2D array or :class:`~isojax.forward.FactoredPSF`).
      nuisance: ``{"log_gain": scalar, "log_floor": scalar}``.
      target: from :func:`prepare_spectra`.
      subsample: anisotropy factor (static).
      segment: Welch segment length from :func:`prepare_spectra` (static).

    Returns:
      A scalar, 0 for identical spectra; differentiable in ``psf`` and ``nuisance``.
    """
    observed, model = _log_spectra(psf, nuisance, target, subsample, segment)
    return jnp.mean((observed - model) ** 2)


def _init_nuisance(psf, target, subsample, segment) -> dict:
    obs, syn = _log_spectra_jit(psf, {"log_gain": 0.0, "log_floor": -80.0}, target, subsample,
                                segment)
    low = max(1, obs.shape[0] // 2)
    gain = float(np.median(np.asarray(obs - syn)[:low]))
    floor = 1e-3 * float(np.exp(np.asarray(obs)).min())
    return {"log_gain": jnp.float32(gain), "log_floor": jnp.float32(math.log(max(floor, 1e-30)))}


# ----------------------------------------------------------------------------------------
# Fitting


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationConfig:
    """How the PSF is calibrated; frozen and checked on construction.

    Attributes:
      family: ``"gaussian"``, ``"multi-gaussian"`` or ``"free"``.
      init_fwhm: initial axial FWHM in lateral pixels, or None for ``subsample`` pixels.
      steps: L-BFGS iterations of the spectral fit.
      n_lobes: side-lobe pairs of ``"multi-gaussian"``.
      smoothness: weight of :func:`smoothness_penalty` for ``"free"`` (and ``"multi-gaussian"``).
      max_lines: lateral lines used by the objective (default: from a time budget).
      joint_learning_rate: Adam learning rate of the PSF during joint training.
      joint_every: update the PSF every this many training steps.
      spectral_weight: weight of the spectral term during joint training (the anchor).
      consistency_weight: weight of the consistency term during joint training.
    """

    family: Family = "gaussian"
    init_fwhm: float | None = None
    steps: int = 40
    n_lobes: int = 1
    smoothness: float = 1.0
    max_lines: int | None = None
    joint_learning_rate: float = 2e-3
    joint_every: int = 5
    spectral_weight: float = 1.0
    consistency_weight: float = 0.1

    def __post_init__(self) -> None:
        _check_family(self.family)
        if self.init_fwhm is not None:
            v = self.init_fwhm
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0):
                raise IsojaxInputError(
                    f"init_fwhm must be a positive number of lateral pixels (or None for the "
                    f"subsample factor), got {v!r}"
                )
        for name in ("steps", "n_lobes", "joint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise IsojaxInputError(f"{name} must be a whole number >= 1, got {v!r}")
        for name in ("joint_learning_rate",):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise IsojaxInputError(f"{name} must be a positive number, got {v!r}")
        for name in ("smoothness", "spectral_weight", "consistency_weight"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise IsojaxInputError(f"{name} must be a number >= 0, got {v!r}")
        if self.max_lines is not None and (not isinstance(self.max_lines, int) or self.max_lines < 2):
            raise IsojaxInputError(f"max_lines must be a whole number >= 2, got {self.max_lines!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class CalibrationReport:
    """What :func:`fit_psf` found.

    Attributes:
      family: the PSF family fitted.
      params: fitted PSF parameters (pytree of arrays) for :func:`psf_from_params`.
      nuisance: fitted ``{"log_gain", "log_floor"}``.
      taps: axial kernel length in pixels.
      sigma_px: axial standard deviation of the fitted PSF (second moment), lateral pixels.
      fwhm_px: axial FWHM of the fitted PSF, lateral pixels.
      pixel_size: lateral pixel size in micrometres, or None.
      subsample: anisotropy factor used.
      init_fwhm_px: the starting FWHM, pixels.
      loss: final value of the objective (spectral term plus smoothness penalty).
      spectral_loss: final value of the spectral term alone.
      trajectory: per recorded step ``{"step", "loss", "sigma_px", "fwhm_px"}``.
      frequencies: ``(n_freq,)`` cycles per axial sample.
      observed: observed Z-line power spectrum ``(n_freq,)``.
      synthetic: model spectrum ``g P_syn + c`` of the fitted PSF ``(n_freq,)``.
      initial: model spectrum at the initial PSF ``(n_freq,)``.
      seconds: wall-clock time of the fit, including compilation.
      n_lines: lateral lines used; n_z_lines: observed Z lines; segment: Welch length.
      warnings: problems found (e.g. the fit at the support's edge).
    """

    family: str
    params: Any
    nuisance: Any
    taps: int
    sigma_px: float
    fwhm_px: float
    pixel_size: float | None
    subsample: float
    init_fwhm_px: float
    loss: float
    spectral_loss: float
    trajectory: list
    frequencies: np.ndarray
    observed: np.ndarray
    synthetic: np.ndarray
    initial: np.ndarray
    seconds: float
    n_lines: int
    n_z_lines: int
    segment: int
    warnings: tuple[str, ...] = ()

    @property
    def sigma_um(self) -> float | None:
        return None if self.pixel_size is None else self.sigma_px * self.pixel_size

    @property
    def fwhm_um(self) -> float | None:
        return None if self.pixel_size is None else self.fwhm_px * self.pixel_size

    def psf(self) -> FactoredPSF:
        """The fitted PSF as a :class:`~isojax.forward.FactoredPSF`."""
        return psf_from_params(self.family, self.params, taps=self.taps)

    def to_json(self) -> dict:
        """A JSON-serialisable summary (widths in pixels and micrometres, final values)."""
        return {
            "family": self.family,
            "sigma_px": self.sigma_px,
            "fwhm_px": self.fwhm_px,
            "sigma_um": self.sigma_um,
            "fwhm_um": self.fwhm_um,
            "pixel_size_um": self.pixel_size,
            "subsample": self.subsample,
            "init_fwhm_px": self.init_fwhm_px,
            "objective": self.loss,
            "spectral_loss": self.spectral_loss,
            "gain": float(np.exp(self.nuisance["log_gain"])),
            "noise_floor": float(np.exp(self.nuisance["log_floor"])),
            "taps": self.taps,
            "params": jax.tree.map(lambda v: np.asarray(v).tolist(), self.params),
            "n_lateral_lines": self.n_lines,
            "n_z_lines": self.n_z_lines,
            "segment": self.segment,
            "seconds": self.seconds,
            "warnings": list(self.warnings),
            "trajectory": self.trajectory,
        }


def _check_family(family) -> None:
    if family not in FAMILIES:
        raise IsojaxInputError(
            f"family must be one of {', '.join(FAMILIES)}; got {family!r}"
        )


def _objective(family, taps, smoothness, subsample, segment):
    def total(theta, target):
        psf = psf_from_params(family, theta["psf"], taps=taps)
        spec = spectral_loss(psf, theta["nuisance"], target, subsample=subsample, segment=segment)
        rough = smoothness_penalty(psf.axial[0]) if family != "gaussian" else 0.0
        return spec + smoothness * rough, (spec, psf_sigma(psf))

    return total


@functools.partial(jax.jit, static_argnames=("family", "taps", "smoothness", "subsample",
                                             "segment", "steps"))
def _fit(theta, target, *, family, taps, smoothness, subsample, segment, steps):
    total = _objective(family, taps, smoothness, subsample, segment)

    def value(th):
        return total(th, target)[0]

    tx = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(value)

    def step(carry, _):
        th, opt = carry
        loss, g = value_and_grad(th, state=opt)
        upd, opt = tx.update(g, opt, th, value=loss, grad=g, value_fn=value)
        th = optax.apply_updates(th, upd)
        spec, sigma = total(th, target)[1]
        return (th, opt), (loss, spec, sigma)

    (theta, _), hist = jax.lax.scan(step, (theta, tx.init(theta)), None, length=steps)
    final, (spec, sigma) = total(theta, target)
    return theta, hist, final, spec, sigma


# below this fitted sigma (px) the sampled Gaussian is nearly a delta: fit_psf warns
_MIN_RESOLVED_SIGMA = 0.5


def _adjacent_plane_correlation(a: np.ndarray) -> float:
    """Correlation of adjacent planes (each pixel's mean over z removed): how much the Z
    lines, and hence the spectra, still depend on the axial blur."""
    d = a - a.mean(axis=0, keepdims=True)
    return float(np.mean(d[1:] * d[:-1]) / max(float(np.mean(d * d)), 1e-30))


def _axial_fwhm(axial: np.ndarray) -> float:
    from isojax.psf import fwhm

    return float(fwhm(np.asarray(axial, np.float64)))


def check_subsample_against_spacing(subsample: float, spacing) -> None:
    """Refuse a subsample factor that contradicts the voxel size by more than 2%.

    The rule is :func:`isojax.pipeline.subsample_conflict` (symmetric: 2% above or below).

    Raises:
      IsojaxInputError: naming both values and how to choose between them.
    """
    from isojax.pipeline import subsample_conflict

    from_meta = subsample_conflict(subsample, spacing)
    if from_meta is not None:
        dz, _, dx = (float(v) for v in spacing)
        raise IsojaxInputError(
            f"the subsample factor {float(subsample):g} contradicts the voxel size "
            f"({dz:g} / {dx:g} um gives {from_meta:.4g}): give only one of them. Trust the "
            "voxel size if the metadata is right (drop --subsample), or fix it with "
            "--spacing Z Y X if the factor is what you know."
        )


def fit_psf(
    key: Array,
    stack,
    *,
    subsample: float,
    family: Family = "gaussian",
    init_fwhm: float | None = None,
    steps: int = 40,
    n_lobes: int = 1,
    smoothness: float = 1.0,
    max_lines: int | None = None,
    spacing: tuple[float, float, float] | None = None,
    pixel_size: float | None = None,
) -> tuple[FactoredPSF, CalibrationReport]:
    """Calibrate the additional axial PSF from the stack itself (spectral matching).

    The PSF of the chosen family and the two nuisance constants (gain, noise floor) are
    fitted by L-BFGS (optax, zoom line search, one compiled loop) to minimise
    :func:`spectral_loss` (plus ``smoothness`` times :func:`smoothness_penalty` for the
    non-Gaussian families). Widths are optimised in log space, so starting 2x too wide or
    too narrow costs a few iterations. See the module docstring for why this identifies
    the PSF and when it does not.

    Args:
      key: a ``jax.random`` key (chooses the lateral lines).
      stack: anisotropic stack ``(z, y, x)``, raw intensities (normalised here).
      subsample: anisotropy factor, axial step / lateral pixel size, >= 1.
      family: ``"gaussian"`` (default), ``"multi-gaussian"`` or ``"free"``.
      init_fwhm: initial axial FWHM in lateral pixels; default ``subsample``. Must be at
        least 0.5 px and at most an eighth of the planes' shorter side.
      steps: L-BFGS iterations (>= 1), each with a zoom line search.
      n_lobes: side-lobe pairs for ``"multi-gaussian"``.
      smoothness: weight of the smoothness penalty for ``"free"`` and ``"multi-gaussian"``.
      max_lines: lateral lines used (default: from a time budget, see :func:`prepare_spectra`).
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, if known: widths are also
        reported in micrometres, and a ``subsample`` that contradicts ``dz / dx`` by more
        than 2% is refused (:func:`check_subsample_against_spacing`). Give the voxel size
        the stack really has, never one made from ``subsample``.
      pixel_size: lateral pixel size in micrometres, to report widths in micrometres
        without checking ``subsample`` (when the caller has already chosen the factor);
        ignored if ``spacing`` is given.

    Returns:
      ``(psf, report)``: the fitted PSF, a rank-one :class:`~isojax.forward.FactoredPSF`
      (``psf.dense()`` is the 2D ``(lateral, axial)`` array to save), and a
      :class:`CalibrationReport`.

    Raises:
      IsojaxInputError: a stack too thin, too small, constant or not finite; an unknown
        family; an initial width outside its range; a factor contradicting ``spacing``.

    Example:
      >>> import jax
      >>> from isojax.simulate import simulate_stack
      >>> stack, _, acq = simulate_stack(jax.random.key(0), shape_zyx=(96, 64, 64),
      ...                                subsample=4.0, sigma_axial=10**0.5)  # doctest: +SKIP
      >>> psf, report = fit_psf(jax.random.key(1), stack, subsample=4.0)  # doctest: +SKIP
      >>> round(report.sigma_px)  # the truth is sqrt(10 - 1) = 3 px  # doctest: +SKIP
      3
    """
    t0 = time.perf_counter()
    config = CalibrationConfig(
        family=family, init_fwhm=init_fwhm, steps=steps,
        n_lobes=n_lobes, smoothness=smoothness, max_lines=max_lines,
    )
    a, s = _check_stack(stack, subsample)
    check_subsample_against_spacing(s, spacing)
    n_lat = min(a.shape[1:])
    fwhm0 = float(s if config.init_fwhm is None else config.init_fwhm)
    if not 0.5 <= fwhm0 <= n_lat / 8:
        raise IsojaxInputError(
            f"the initial axial FWHM {fwhm0:g} px is outside its valid range [0.5, "
            f"{n_lat / 8:g}] px for planes of {n_lat} px (a kernel 3x wider must fit in a "
            "line); give a smaller --init-fwhm or use larger planes."
        )
    target, segment = prepare_spectra(key, a, subsample=s, max_lines=config.max_lines)
    taps = _support(fwhm0, n_lat // 2)
    theta_psf = init_params(family, fwhm_px=fwhm0, taps=taps, n_lobes=n_lobes)
    psf0 = psf_from_params(family, theta_psf, taps=taps)
    theta = {"psf": theta_psf, "nuisance": _init_nuisance(psf0, target, s, segment)}
    initial = np.exp(np.asarray(_model_log_spectrum(psf0, theta["nuisance"], target, s, segment)))
    theta, hist, final, spec, _sigma = _fit(
        theta, target, family=family, taps=taps, smoothness=float(smoothness), subsample=s,
        segment=segment, steps=int(steps),
    )
    theta = jax.tree.map(np.asarray, theta)
    psf = psf_from_params(family, theta["psf"], taps=taps)
    axial = np.asarray(psf.axial[0])
    sigma_px = float(psf_sigma(psf))
    fwhm_px = _axial_fwhm(axial)
    obs_log, model_log = _log_spectra_jit(psf, theta["nuisance"], target, s, segment)
    model = np.exp(np.asarray(model_log))
    losses, specs, sigmas = (np.asarray(h) for h in hist)
    stride = max(1, steps // 100)
    trajectory = [
        {"step": i + 1, "loss": float(losses[i]), "spectral_loss": float(specs[i]),
         "sigma_px": float(sigmas[i]), "fwhm_px": float(sigmas[i]) * _FWHM_PER_SIGMA}
        for i in range(0, steps, stride)
    ]
    problems = []
    if axial[0] + axial[-1] > 0.02 * axial.max():
        problems.append(
            f"the fitted PSF reaches the edges of its {taps}-px support: the initial FWHM "
            f"({fwhm0:g} px) is probably far too small; start wider"
        )
    if not np.isfinite(float(final)):
        problems.append("the objective is not finite: the stack may be noise-dominated")
    if sigma_px < _MIN_RESOLVED_SIGMA:
        problems.append(
            f"the fitted axial PSF is a near-delta (sigma {sigma_px:.2g} px): the stack shows "
            f"no additional axial blur that sampling every {s:g} px resolves. Adjacent planes "
            f"correlate by only {_adjacent_plane_correlation(a):.2f}, so widths well below "
            "the axial step are weakly identified or not at all; give a measured or "
            "theoretical PSF if it matters"
        )
    report = CalibrationReport(
        family=family, params=theta["psf"], nuisance=theta["nuisance"], taps=taps,
        sigma_px=sigma_px, fwhm_px=fwhm_px,
        pixel_size=(float(spacing[2]) if spacing is not None
                    else None if pixel_size is None else float(pixel_size)),
        subsample=s,
        init_fwhm_px=fwhm0, loss=float(final), spectral_loss=float(spec),
        trajectory=trajectory, frequencies=np.asarray(target.frequencies),
        observed=np.exp(np.asarray(obs_log)), synthetic=model, initial=initial,
        seconds=time.perf_counter() - t0, n_lines=int(target.lines.shape[0]),
        n_z_lines=int((min(a.shape[1], _MAX_PLANES) + min(a.shape[2], _MAX_PLANES)) * n_lat), segment=segment, warnings=tuple(problems),
    )
    return psf, report


# ----------------------------------------------------------------------------------------
# Joint refinement with the network


def consistency_loss(restored: Array, samples: Array, psf, *, subsample: float) -> Array:
    """Mean absolute difference between re-degraded restorations and the observed samples.

    ``mean |measure(restored, psf, subsample) - samples|`` over the samples whose blur lies
    inside the patch (the operator mirrors the patch at its edges, which real data do not).

    Args:
      restored: network outputs on upsampled axial slices ``(b, lateral, axial)``.
      samples: the observed axial samples they came from ``(b, lateral, n_samples)``.
      psf: the PSF (array or :class:`~isojax.forward.FactoredPSF`); differentiable.
      subsample: anisotropy factor (static).
    """
    y = measure(restored, psf, subsample)
    n = restored.shape[-1]
    taps = psf.axial.shape[-1] if isinstance(psf, FactoredPSF) else jnp.shape(psf)[-1]
    r = taps // 2
    pos = sample_positions(n, subsample)
    keep = (pos >= r) & (pos <= n - 1 - r)
    if not keep.any():
        keep = np.ones_like(keep)
    err = jnp.abs(y - samples)[..., np.flatnonzero(keep)]
    return jnp.mean(err)


@functools.partial(jax.jit, static_argnames=("subsample", "patch_size", "batch_size",
                                             "interpolation"))
def axial_patches(key: Array, stack: Array, *, subsample: float, patch_size: int,
                  batch_size: int, interpolation: str = "linear") -> tuple[Array, Array]:
    """Random observed axial (XZ or YZ) patches: their samples and their upsampled view.

    Args:
      key: a ``jax.random`` key.
      stack: normalised anisotropic stack ``(z, y, x)``, at least
        ``len(sample_positions(patch_size, subsample))`` planes.
      subsample: anisotropy factor (static).
      patch_size: side in pixels of the upsampled patch (static).
      batch_size: patches (static).
      interpolation: how samples are brought to the fine grid, as at prediction.

    Returns:
      ``(upsampled, samples)``: ``(b, patch, patch)`` network inputs (last axis axial) and
      the ``(b, patch, m)`` samples they were made from.
    """
    nz, ny, nx = stack.shape
    p = patch_size
    m = len(sample_positions(p, subsample))
    ku = jax.random.uniform(key, (batch_size, 4))
    z0 = jnp.minimum((ku[:, 0] * (nz - m + 1)).astype(jnp.int32), nz - m)
    a0 = jnp.minimum((ku[:, 1] * min(ny, nx)).astype(jnp.int32), min(ny, nx) - 1)
    b0 = jnp.minimum((ku[:, 2] * (min(ny, nx) - p + 1)).astype(jnp.int32), min(ny, nx) - p)
    use_y = ku[:, 3] < 0.5

    def one(z, a, b, yz):
        xz = jax.lax.dynamic_slice(stack, (z, a, b), (m, 1, p))[:, 0, :]  # (m, p): XZ at row a
        yzs = jax.lax.dynamic_slice(stack, (z, b, a), (m, p, 1))[:, :, 0]  # (m, p): YZ at col a
        return jnp.where(yz, yzs, xz).T  # (p, m): lateral, axial

    samples = jax.vmap(one)(z0, a0, b0, use_y).astype(jnp.float32)
    up = upsample(samples, p, subsample, interpolation=interpolation)
    return up, samples


def make_joint_psf_step(apply_fn, report: CalibrationReport, target: SpectralTarget, *,
                        segment: int, config: CalibrationConfig):
    """A jitted ``psf_step(theta, opt_state, net_params, batch) -> (theta, opt_state, metrics)``.

    One Adam step on the PSF parameters (and the spectral nuisance constants) of
    ``spectral_weight * spectral_loss + consistency_weight * consistency_loss`` (plus the
    smoothness penalty for non-Gaussian families). The network's outputs enter the
    consistency term with a stop-gradient: the network learns only from the supervised
    pairs, and those pairs (synthesised with the current PSF outside this step) send no
    gradient to the PSF, which would otherwise be driven to a delta.

    Args:
      apply_fn: ``apply_fn(net_params, images (b, h, w)) -> restored (b, h, w)``.
      report: the spectral pre-calibration (family, support, starting parameters).
      target: from :func:`prepare_spectra`.
      segment: its Welch segment length.
      config: weights and the learning rate.

    Returns:
      ``(psf_step, theta0, opt_state0)``.
    """
    family, taps, s = report.family, report.taps, report.subsample
    tx = optax.adam(config.joint_learning_rate)
    theta0 = {"psf": jax.tree.map(jnp.asarray, report.params),
              "nuisance": jax.tree.map(jnp.asarray, report.nuisance)}

    def objective(theta, restored, samples):
        psf = psf_from_params(family, theta["psf"], taps=taps)
        spec = spectral_loss(psf, theta["nuisance"], target, subsample=s, segment=segment)
        cons = consistency_loss(restored, samples, psf, subsample=s)
        rough = smoothness_penalty(psf.axial[0]) if family != "gaussian" else 0.0
        total = (config.spectral_weight * spec + config.consistency_weight * cons
                 + config.smoothness * rough)
        return total, {"psf_spectral_loss": spec, "psf_consistency": cons,
                       "psf_sigma_px": psf_sigma(psf)}

    @jax.jit
    def psf_step(theta, opt_state, net_params, batch):
        upsampled, samples = batch
        restored = jax.lax.stop_gradient(apply_fn(net_params, upsampled))
        (_, metrics), g = jax.value_and_grad(objective, has_aux=True)(theta, restored, samples)
        updates, opt_state = tx.update(g, opt_state)
        return optax.apply_updates(theta, updates), opt_state, metrics

    return psf_step, theta0, tx.init(theta0)
