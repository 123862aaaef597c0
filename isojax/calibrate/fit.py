"""Fitting: the spectral calibration of the PSF from one stack (:func:`fit_psf`).

Its configuration (:class:`CalibrationConfig`, also used by joint training), the compiled
L-BFGS loop over the PSF parameters and the nuisance constants, the warnings about fits
that are not determined, and what the fit reports (:class:`CalibrationReport`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import numpy as np
import optax

from isojax.calibrate.consistency import consistent_interval, slab_widths
from isojax.calibrate.params import (
    _FWHM_PER_SIGMA,
    Family,
    _check_family,
    _support,
    continuous_sigma,
    init_params,
    psf_from_params,
    psf_sigma,
    shape_roughness,
)
from isojax.calibrate.search import (
    DELTA_SIGMA,
    WidthInterval,
    grid_taps,
    local_minima,
    profile_interval,
    width_grid,
    width_profile,
)
from isojax.calibrate.spectra import (
    _MAX_PLANES,
    _check_volumes,
    _log_spectra_jit,
    _model_log_spectrum,
    prepare_spectra,
    spectral_loss,
)
from isojax.errors import IsojaxInputError
from isojax.forward import FactoredPSF
from isojax.geometry import check_subsample_against_spacing
from isojax.psf import fwhm

Array = jax.Array

__all__ = [
    "CalibrationConfig",
    "CalibrationReport",
    "check_subsample_against_spacing",
    "fit_psf",
]

@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationConfig:
    """How the PSF is calibrated; frozen and checked on construction.

    Attributes:
      family: ``"gaussian"``, ``"multi-gaussian"`` or ``"free"``.
      init_fwhm: initial axial FWHM in lateral pixels, or None for ``subsample`` pixels.
      steps: L-BFGS iterations of the spectral fit.
      n_lobes: side-lobe pairs of ``"multi-gaussian"``.
      smoothness: weight of :func:`~isojax.calibrate.params.shape_roughness` (width-free
        roughness) for ``"free"`` and ``"multi-gaussian"``.
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
    smoothness: float = 3e-4
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
      warnings: problems found (e.g. the fit at the support's edge, a width that the
        stack does not identify).
      interval: a :class:`~isojax.calibrate.search.WidthInterval` for the Gaussian sigma
        (px), from the objective's profile over the width.
      profile_sigmas, profile_losses: that profile, ``(k,)`` each (sigma in px; the first
        is :data:`~isojax.calibrate.search.DELTA_SIGMA`, a delta).
      start_fwhm_px: the FWHM (px) the gradient refinement started from, the best cell
        of the global search.
      slab_sigmas: the best widths (px) of the stack's Z slabs
        (:func:`~isojax.calibrate.consistency.slab_widths`; 0 a delta, inf the search's
        top), whose spread widens ``interval``; empty when the stack is too thin for two
        slabs, None when not computed (the profile alone already refused the width).
    """

    family: Family
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
    interval: WidthInterval | None = None
    profile_sigmas: np.ndarray | None = None
    profile_losses: np.ndarray | None = None
    start_fwhm_px: float | None = None
    slab_sigmas: np.ndarray | None = None

    @property
    def identifiable(self) -> bool:
        """Whether the profile pins the width (an interval off zero and not wide)."""
        return bool(self.interval is not None and self.interval.identifiable)

    @property
    def sigma_um(self) -> float | None:
        return None if self.pixel_size is None else self.sigma_px * self.pixel_size

    @property
    def fwhm_um(self) -> float | None:
        return None if self.pixel_size is None else self.fwhm_px * self.pixel_size

    def psf(self) -> FactoredPSF:
        """The fitted PSF as a :class:`~isojax.forward.FactoredPSF`."""
        return psf_from_params(self.family, self.params, taps=self.taps)

    @functools.cached_property
    def sigma_continuous_px(self) -> float:
        """The width (px) of the continuous Gaussian blur the fitted kernel stands for
        (:func:`~isojax.calibrate.params.continuous_sigma`): what a microscope's axial
        blur would be; below ``sigma_px`` at sub-pixel widths (the sampled kernel must be
        wider to attenuate the same), equal to it from about 1.5 px."""
        return float(continuous_sigma(self.psf().axial[0]))

    @property
    def sigma_continuous_um(self) -> float | None:
        return None if self.pixel_size is None else self.sigma_continuous_px * self.pixel_size

    def continuous_interval_px(self) -> tuple[float, float] | None:
        """The width interval as continuous widths (each end's Gaussian kernel through
        :func:`~isojax.calibrate.params.continuous_sigma`), or None without an interval."""
        if self.interval is None:
            return None
        return (_continuous_of_gaussian(self.interval.low, self.taps),
                _continuous_of_gaussian(self.interval.high, self.taps))

    def to_json(self) -> dict:
        """A JSON-serialisable summary (widths in pixels and micrometres, final values)."""
        return {
            "family": self.family,
            "sigma_px": self.sigma_px,
            "fwhm_px": self.fwhm_px,
            "sigma_um": self.sigma_um,
            "fwhm_um": self.fwhm_um,
            "sigma_continuous_px": self.sigma_continuous_px,
            "sigma_continuous_um": self.sigma_continuous_um,
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
            **self._interval_json(),
        }

    def _interval_json(self) -> dict:
        if self.interval is None:
            return {}
        iv = self.interval

        def um(v):
            return None if self.pixel_size is None or v is None else v * self.pixel_size

        hi = iv.high if math.isfinite(iv.high) else None
        fw = _FWHM_PER_SIGMA
        sigmas, losses = self.profile_sigmas, self.profile_losses
        profile = None if sigmas is None or losses is None else {
            "sigma_px": [0.0 if v <= DELTA_SIGMA else float(v) for v in sigmas],
            "objective": [float(v) for v in losses]}
        return {
            "identifiable": bool(iv.identifiable),
            "sigma_interval_px": [iv.low, hi],
            "sigma_interval_um": [um(iv.low), um(hi)],
            "fwhm_interval_px": [iv.low * fw, None if hi is None else hi * fw],
            "sigma_continuous_interval_px": [
                v if math.isfinite(v) else None for v in self.continuous_interval_px() or ()],
            "interval_threshold": iv.threshold,
            "start_fwhm_px": self.start_fwhm_px,
            "profile": profile,
            "slab_sigma_px": (None if self.slab_sigmas is None else
                              [float(v) if math.isfinite(v) else None for v in self.slab_sigmas]),
        }


def _continuous_of_gaussian(sigma: float, taps: int) -> float:
    """:func:`continuous_sigma` of the Gaussian family's kernel of width ``sigma`` (px; 0 or
    below :data:`DELTA_SIGMA` a delta, inf stays inf), on at least ``taps`` taps."""
    if not math.isfinite(sigma):
        return math.inf
    if sigma <= DELTA_SIGMA:
        return 0.0
    n = max(taps, 2 * math.ceil(4.0 * sigma) + 1)
    kernel = psf_from_params("gaussian", {"log_sigma": np.float32(math.log(sigma))}, taps=n)
    return float(continuous_sigma(kernel.axial[0]))


def _objective(family, taps, smoothness, subsample, segment):
    def total(theta, target):
        psf = psf_from_params(family, theta["psf"], taps=taps)
        spec = spectral_loss(psf, theta["nuisance"], target, subsample=subsample, segment=segment)
        rough = shape_roughness(psf.axial[0]) if family != "gaussian" else 0.0
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
    return float(fwhm(np.asarray(axial, np.float64)))


def _fit_warnings(a: np.ndarray, axial: np.ndarray, *, taps: int, fwhm0: float, final,
                  sigma_px: float, s: float) -> list[str]:
    """What :func:`fit_psf` warns about its result: a PSF at its support's edges, a
    non-finite objective, a near-delta that the axial sampling cannot resolve."""
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
    return problems


def _starts(losses: np.ndarray, family) -> list[int]:
    """Grid cells the refinement starts from: the lowest local minimum of the profile, and
    the second lowest if it is within 50% of it (the Gaussian family); the best cell off
    the delta (the others: their supports follow the start's width)."""
    if family != "gaussian":
        return [1 + int(np.argmin(losses[1:]))]
    cells = local_minima(losses, 2)
    return [i for i in cells if losses[i] <= 1.5 * losses[cells[0]]]


def _refine(i, grid, nuis, target, *, family, taps_g, n_lat, n_lobes, smoothness, s,
            segment, steps) -> dict:
    """L-BFGS from the grid's cell ``i`` (its width and fitted nuisance constants)."""
    fwhm_start = float(grid[i]) * _FWHM_PER_SIGMA
    taps = taps_g if family == "gaussian" else _support(max(fwhm_start, 0.5), n_lat // 2)
    theta_psf = init_params(family, fwhm_px=fwhm_start, taps=taps, n_lobes=n_lobes)
    nuisance = {"log_gain": np.float32(nuis[i, 0]), "log_floor": np.float32(nuis[i, 1])}
    psf0 = psf_from_params(family, theta_psf, taps=taps)
    initial = np.exp(np.asarray(_model_log_spectrum(psf0, nuisance, target, s, segment)))
    theta, hist, final, spec, _sigma = _fit(
        {"psf": theta_psf, "nuisance": nuisance}, target, family=family, taps=taps,
        smoothness=smoothness, subsample=s, segment=segment, steps=steps,
    )
    return {"theta": theta, "hist": hist, "final": final, "spec": spec, "taps": taps,
            "initial": initial, "start_fwhm": fwhm_start}


def _interval(grid, losses, sigma_px, spec, target, *, s, segment, taps_g):
    """The width's interval from the grid's profile, with as many more widths around the
    refined one (same count: the same compiled profile) and the refined point itself."""
    extra = np.array([], np.float64)
    extra_l = np.array([], np.float64)
    if sigma_px > DELTA_SIGMA:
        extra = np.clip(sigma_px * np.geomspace(0.6, 1.0 / 0.6, len(grid)), grid[1], grid[-1])
        extra_l, _ = width_profile(target, extra, subsample=s, segment=segment, taps=taps_g)
        extra, extra_l = np.append(extra, sigma_px), np.append(extra_l, spec)
    sig = np.concatenate([grid, extra])
    val = np.concatenate([losses, extra_l])
    order = np.argsort(sig, kind="stable")
    sig, val = sig[order], val[order]
    return profile_interval(sig, val, n_freq=segment // 2), sig, val


def _unidentified_message(iv: WidthInterval, s: float, slabs: np.ndarray | None = None) -> str:
    hi = "no upper bound within the search" if not math.isfinite(iv.high) else f"{iv.high:.3g} px"
    why = ("it includes zero width" if iv.low <= 0 else
           f"it spans more than a factor {iv.high / iv.low:.2g}")
    if slabs is not None and len(slabs):
        why += ("; the stack's Z slabs disagree, best sigma "
                + ", ".join("inf" if not math.isfinite(v) else f"{v:.3g}" for v in slabs) + " px")
    return (f"the additional axial width is not identifiable from this stack: its 95% "
            f"interval is sigma {iv.low:.3g} px to {hi} ({why}; axial step {s:g} px). "
            "Give a measured or theoretical PSF instead")


def fit_psf(
    key: Array,
    stack,
    *,
    subsample: float,
    family: Family = "gaussian",
    init_fwhm: float | None = None,
    steps: int = 40,
    n_lobes: int = 1,
    smoothness: float = 3e-4,
    max_lines: int | None = None,
    spacing: tuple[float, float, float] | None = None,
    pixel_size: float | None = None,
) -> tuple[FactoredPSF, CalibrationReport]:
    """Calibrate the additional axial PSF from the stack itself (spectral matching).

    The PSF of the chosen family and the two nuisance constants (gain, noise floor) are
    fitted by L-BFGS (optax, zoom line search, one compiled loop) to minimise
    :func:`spectral_loss` (plus ``smoothness`` times the width-free roughness
    :func:`~isojax.calibrate.params.shape_roughness` for the non-Gaussian families). Widths are optimised in log space, so starting 2x too wide or
    too narrow costs a few iterations. See :mod:`isojax.calibrate` for why this identifies
    the PSF and when it does not. When the profile's interval calls the width identifiable,
    the stack's Z slabs are profiled too and their spread widens the interval
    (:mod:`isojax.calibrate.consistency`; stacks of at least 32 planes).

    Args:
      key: a ``jax.random`` key (chooses the lateral lines).
      stack: anisotropic stack ``(z, y, x)``, raw intensities (normalised here); or a list
        (or tuple) of such stacks of one shape sharing one PSF, e.g. several time points of
        one channel, whose spectra are pooled (:func:`prepare_spectra`; each volume
        normalised on its own).
      subsample: anisotropy factor, axial step / lateral pixel size, >= 1.
      family: ``"gaussian"`` (default), ``"multi-gaussian"`` or ``"free"``.
      init_fwhm: an axial FWHM in lateral pixels that the global search must reach
        (it searches up to three times its width, and at least three axial steps); default
        ``subsample``. The refinement starts from the search's best cells, not from it.
        At least 0.5 px and at most the FWHM of a Gaussian whose +-4 sigma fits in the
        planes' shorter side (``2.355 (n - 1) / 8`` px).
      steps: L-BFGS iterations (>= 1), each with a zoom line search.
      n_lobes: side-lobe pairs for ``"multi-gaussian"``.
      smoothness: weight of the width-free roughness penalty for ``"free"`` and
        ``"multi-gaussian"`` (default 3e-4: it keeps the kernel free of combs without
        setting its width; the plain second difference with weight 1, used before,
        widened every narrow kernel, see docs/calibration.md, 'Non-Gaussian PSFs').
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
      IsojaxInputError: a stack too thin, too small, constant or not finite (any of the
        volumes), volumes of different shapes; an unknown family; an initial width
        outside its range; a factor contradicting ``spacing``.

    Example:
      >>> import jax
      >>> from isojax.simulate import simulate_stack
      >>> stack, _, acq = simulate_stack(jax.random.key(0), shape_zyx=(96, 64, 64),
      ...                                subsample=4.0, sigma_axial=10**0.5)  # doctest: +SKIP
      >>> psf, report = fit_psf(jax.random.key(1), stack, subsample=4.0)  # doctest: +SKIP
      >>> round(report.sigma_px)  # the truth is sqrt(10 - 1) = 3 px  # doctest: +SKIP
      3
    """
    # over 100 lines with its docstring (which documents every option); the code is 66 lines
    t0 = time.perf_counter()
    config = CalibrationConfig(
        family=family, init_fwhm=init_fwhm, steps=steps,
        n_lobes=n_lobes, smoothness=smoothness, max_lines=max_lines,
    )
    volumes, s = _check_volumes(stack, subsample)
    # pooled volumes side by side along y: the same adjacent-plane statistics, one array
    a = volumes[0] if len(volumes) == 1 else np.concatenate(volumes, axis=1)
    check_subsample_against_spacing(s, spacing)
    n_lat = min(volumes[0].shape[1:])
    fwhm0 = float(s if config.init_fwhm is None else config.init_fwhm)
    top = _FWHM_PER_SIGMA * (n_lat - 1) / 8
    if not 0.5 <= fwhm0 <= top:
        raise IsojaxInputError(
            f"the initial axial FWHM {fwhm0:g} px is outside its valid range [0.5, "
            f"{top:.4g}] px for planes of {n_lat} px (+-4 sigma must fit in a line); give a "
            "smaller --init-fwhm or use larger planes."
        )
    target, segment = prepare_spectra(key, volumes if len(volumes) > 1 else a, subsample=s,
                                      max_lines=config.max_lines)
    # global before local: the profile over a grid of Gaussian widths picks the starts
    grid = width_grid(s, n_lat=n_lat,
                      init_sigma=None if init_fwhm is None else fwhm0 / _FWHM_PER_SIGMA)
    taps_g = grid_taps(n_lat)
    losses, nuis = width_profile(target, grid, subsample=s, segment=segment, taps=taps_g)
    runs = [_refine(i, grid, nuis, target, family=family, taps_g=taps_g, n_lat=n_lat,
                    n_lobes=n_lobes, smoothness=float(smoothness), s=s, segment=segment,
                    steps=int(steps))
            for i in _starts(losses, family)]
    best = min(runs, key=lambda r: float(r["final"]) if np.isfinite(float(r["final"])) else np.inf)
    theta, hist, final, spec, taps = (best[k] for k in ("theta", "hist", "final", "spec", "taps"))
    theta = jax.tree.map(np.asarray, theta)
    if family == "gaussian":  # the grid's support held three axial steps; keep 3x the width
        taps = _support(max(float(np.exp(theta["psf"]["log_sigma"])) * _FWHM_PER_SIGMA, 1.0),
                        n_lat // 2)
    psf = psf_from_params(family, theta["psf"], taps=taps)
    axial = np.asarray(psf.axial[0])
    sigma_px = float(psf_sigma(psf))
    fwhm_px = _axial_fwhm(axial)
    interval, prof_s, prof_l = _interval(grid, losses, sigma_px, float(spec), target,
                                         s=s, segment=segment, taps_g=taps_g)
    slabs = None
    if interval.identifiable:  # does the stack agree with itself (Z slabs)?
        slabs = slab_widths(jax.random.fold_in(key, 1), a, grid, subsample=s, taps=taps_g,
                            max_lines=config.max_lines)
        interval = consistent_interval(interval, slabs)
    obs_log, model_log = _log_spectra_jit(psf, theta["nuisance"], target, s, segment)
    model = np.exp(np.asarray(model_log))
    losses_h, specs, sigmas = (np.asarray(h) for h in hist)
    stride = max(1, steps // 100)
    trajectory = [
        {"step": i + 1, "loss": float(losses_h[i]), "spectral_loss": float(specs[i]),
         "sigma_px": float(sigmas[i]), "fwhm_px": float(sigmas[i]) * _FWHM_PER_SIGMA}
        for i in range(0, steps, stride)
    ]
    problems = _fit_warnings(a, axial, taps=taps, fwhm0=best["start_fwhm"], final=final,
                             sigma_px=sigma_px, s=s)
    if not interval.identifiable:
        problems.append(_unidentified_message(interval, s, slabs))
    report = CalibrationReport(
        family=family, params=theta["psf"], nuisance=theta["nuisance"], taps=taps,
        sigma_px=sigma_px, fwhm_px=fwhm_px,
        pixel_size=(float(spacing[2]) if spacing is not None
                    else None if pixel_size is None else float(pixel_size)),
        subsample=s,
        init_fwhm_px=fwhm0, loss=float(final), spectral_loss=float(spec),
        trajectory=trajectory, frequencies=np.asarray(target.frequencies),
        observed=np.exp(np.asarray(obs_log)), synthetic=model, initial=best["initial"],
        seconds=time.perf_counter() - t0, n_lines=int(target.lines.shape[0]),
        n_z_lines=len(volumes) * int(
            (min(volumes[0].shape[1], _MAX_PLANES) + min(volumes[0].shape[2], _MAX_PLANES))
            * n_lat),
        segment=segment, warnings=tuple(problems), interval=interval,
        profile_sigmas=prof_s, profile_losses=prof_l, start_fwhm_px=best["start_fwhm"],
        slab_sigmas=slabs,
    )
    return psf, report

