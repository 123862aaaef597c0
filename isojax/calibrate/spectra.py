"""Spectra: what the stack says about its own axial PSF, and the objective that compares.

A statistically isotropic specimen has the same power spectrum along every direction.
:func:`prepare_spectra` takes the observed Z lines' Welch spectrum (resolved by lateral
frequency, :class:`SpectralTarget`) and a set of lateral lines from the XY planes;
:func:`synthetic_spectrum` passes those lines through :func:`isojax.forward.measure` with
a candidate PSF, :func:`observed_spectrum` blurs the Z lines laterally with the same
profile, and :func:`spectral_loss` compares the two as logarithms with a fitted gain and
white noise floor (see :mod:`isojax.calibrate` for why this identifies the PSF).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from isojax.errors import IsojaxInputError
from isojax.forward import FactoredPSF, measure, sample_positions
from isojax.geometry import check_subsample
from isojax.synth import check_contrast

Array = jax.Array

__all__ = [
    "MIN_SAMPLES",
    "SpectralTarget",
    "observed_spectrum",
    "prepare_spectra",
    "spectral_loss",
    "synthetic_spectrum",
]

#: Fewest samples per line (planes along Z; axial samples of a lateral line) for a spectrum.
MIN_SAMPLES = 16
_MAX_SEGMENT = 64
# observed XZ (and YZ) planes whose Z lines enter the observed spectrum, per direction
_MAX_PLANES = 256
# multiply-accumulates of one evaluation of measure over the lateral lines (bounds time)
_MAC_BUDGET = 1 << 25


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
    s = check_subsample(subsample)
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
    # refuses NaN or inf too; the percentiles are those _normalise maps to 0 and 1
    check_contrast(a, percentiles=(1.0, 99.8))
    return a, s


def _check_volumes(stack, subsample: float) -> tuple[list[np.ndarray], float]:
    """The volumes of ``stack`` (one 3D array, or a list or tuple of 3D arrays of one
    shape: several time points of one channel), each checked by :func:`_check_stack`."""
    if not isinstance(stack, list | tuple):
        a, s = _check_stack(stack, subsample)
        return [a], s
    if not stack:
        raise IsojaxInputError("PSF calibration needs at least one (z, y, x) volume, got none.")
    volumes: list[np.ndarray] = []
    s = float(subsample)
    for i, v in enumerate(stack):
        a, s = _check_stack(v, subsample)
        if volumes and a.shape != volumes[0].shape:
            raise IsojaxInputError(
                f"the volumes to pool have different shapes ({volumes[0].shape} and "
                f"{a.shape} at volume {i}); give volumes of one shape (time points of one "
                "stack)")
        volumes.append(a)
    return volumes, s


def prepare_spectra(
    key: Array, stack, *, subsample: float, max_lines: int | None = None, normalise: bool = True,
    lateral: Literal["xy", "x", "y"] = "xy",
) -> tuple[SpectralTarget, int]:
    """The observed Z-line spectrum and a set of lateral lines to degrade, from a stack.

    Args:
      key: a ``jax.random`` key (chooses the lateral lines when there are more than
        ``max_lines``).
      stack: anisotropic stack ``(z, y, x)``; at least :data:`MIN_SAMPLES` planes and
        lateral lines long enough for :data:`MIN_SAMPLES` axial samples. Or a list (or
        tuple) of such stacks of one shape, e.g. several time points of one channel: their
        lines and Z-line spectra are pooled (each volume normalised on its own, so a
        bleached time point counts as much as the first).
      subsample: anisotropy factor (axial step / lateral pixel size), >= 1.
      max_lines: lateral lines kept (half along x, half along y, drawn from all the
        volumes); default from a budget of about 2^26 multiply-adds per evaluation of
        :func:`measure`.
      normalise: map the 1st / 99.8th percentiles to 0 / 1 first (as training does).
      lateral: the lateral lines taken as the isotropic reference: along both axes
        (``"xy"``, half each), or only along x or only along y (a specimen that is not
        isotropic in XY gives two different widths: ``bench/check_xy_consistency.py``;
        not used by :func:`~isojax.calibrate.fit_psf`).

    Returns:
      ``(target, segment)``: a :class:`SpectralTarget` and the Welch segment length (in
      axial samples, even).

    Raises:
      IsojaxInputError: a stack that is not 3D, too thin, too small laterally for the
        factor, not finite or constant; volumes of different shapes.
    """
    if lateral not in ("xy", "x", "y"):
        raise IsojaxInputError(f"lateral must be 'xy', 'x' or 'y', got {lateral!r}")
    volumes, s = _check_volumes(stack, subsample)
    if normalise:
        volumes = [_normalise(a) for a in volumes]
    nz, ny, nx = volumes[0].shape
    n = min(ny, nx)
    n_low = len(sample_positions(n, s))
    segment = _segment_length(nz, n_low)
    lines_x = np.concatenate([a[:, :, :n].reshape(-1, n) for a in volumes])
    lines_y = np.concatenate([np.swapaxes(a[:, :n, :], 1, 2).reshape(-1, n) for a in volumes])
    # sampling phase: a line of n px holds n_low samples at k * s from any start up to
    # `slack` px; starts 0 .. ceil(s) - 1 cover every phase of the axial grid
    slack = (n - 1) - (n_low - 1) * s
    max_shift = int(min(math.ceil(s) - 1, math.floor(slack + 1e-9)))
    length = n - max_shift
    if max_lines is None:
        max_lines = max(512, _MAC_BUDGET // (length * n_low))
    half = max(1, int(max_lines) // (2 if lateral == "xy" else 1))
    k_x, k_y, k_p = jax.random.split(key, 3)
    pick = []
    for k, lines, axis in ((k_x, lines_x, "x"), (k_y, lines_y, "y")):
        if axis not in lateral:
            continue
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
    z_power = _z_power([p for a in volumes for p in (a[:, rows, :n].transpose(1, 0, 2),
                                                     a[:, :n, cols].transpose(2, 0, 1))],
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
    total: np.ndarray | None = None
    count = 0
    m = 0
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
            part = folded.sum(axis=(0, 1))
            total = part if total is None else total + part
            count += f.shape[0] * f.shape[1]
    if total is None:
        # unreachable from spectral_target (_check_stack leaves planes); a guard, not an input error
        raise ValueError("_z_power needs at least one plane")
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

    Args:
      psf: the PSF (array ``(lateral, axial)`` or :class:`~isojax.forward.FactoredPSF`);
        only its axial profile (summed laterally) is used.
      target: the :class:`SpectralTarget` holding ``z_power``.
      segment: Welch segment length; unused (fixed by ``target.z_power``), kept so both
        spectra take the same arguments.

    Returns:
      The Welch power ``(segment // 2,)`` at frequencies ``k / segment``, ``k = 1 ..``
      (cycles per axial sample).
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

    Args:
      psf: the PSF (array ``(lateral, axial)`` or :class:`~isojax.forward.FactoredPSF`).
      target: the :class:`SpectralTarget` whose lateral ``lines`` are degraded.
      subsample: anisotropy factor (static), >= 1.
      segment: Welch segment length in axial samples (even), as returned with ``target``.

    Returns:
      The Welch power ``(segment // 2,)`` at frequencies ``k / segment``, ``k = 1 ..``
      (cycles per axial sample).
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


def _noised_spectra(psf, target, subsample, segment):
    """(observed, synthetic) spectra before the nuisance constants, each carrying white
    detector noise of the stack's variance ``v``, whatever the candidate PSF.

    Both sides carry the stack's noise after different filters: the laterally blurred Z
    lines ``v sum(h^2)`` (white along z), the measured lateral lines ``v N_h(f)``. Each
    side gets white noise added up to the raw stack's level ``v``: ``v (1 - sum(h^2))``
    and ``v (1 - N_h(f))`` (both >= 0 for a kernel that sums to 1), so both end with the
    same white noise ``v`` for every candidate.

    Before, each side got the *other* side's noise, ``v (sum(h^2) + N_h(f))`` on both: a
    noise level that the candidate chooses. A delta maximises it (both sums are 1), and
    white noise added to both sides shrinks every log-ratio, so on noisy stacks a delta
    scored better than all narrow-to-moderate widths and the objective had a local minimum
    at zero width behind a hump near half an axial step (docs/calibration.md, 'Why the fit
    collapsed to a delta').
    """
    v = target.noise_var
    h = _axial_profile(psf)
    obs = observed_spectrum(psf, target, segment=segment)
    syn = synthetic_spectrum(psf, target, subsample=subsample, segment=segment)
    n_h = _noise_spectrum(psf, target.lines.shape[-1], subsample, target.frequencies)
    obs = obs + v * jnp.maximum(1.0 - jnp.sum(h**2), 0.0)
    syn = syn + v * jnp.maximum(1.0 - n_h, 0.0)
    return obs, syn


def _log_spectra(psf, nuisance, target, subsample, segment):
    """(log observed, log model) spectra, both with white noise ``v`` (:func:`_noised_spectra`)."""
    obs, syn = _noised_spectra(psf, target, subsample, segment)
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

