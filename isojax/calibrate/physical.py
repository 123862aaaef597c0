"""A physical PSF family for calibration: the Debye model's additional axial PSF, whose one
free parameter is the detection NA (or, for a light sheet, the sheet's FWHM).

The families of :mod:`isojax.calibrate.params` describe the kernel's shape in pixels; this one
describes the optics, with the wavelength, refractive index, modality and pixel size fixed by
the user (:class:`PhysicalFamily`), so that what calibration fits is a number one can check
against the objective's specification. The kernel is
:func:`isojax.psf.debye_additional_kernel`, differentiable in the parameter; it is
non-negative and sums to 1 by construction. :func:`fit_physical_psf` fits it to a stack with
the spectral objective of :func:`isojax.calibrate.spectral_loss` (L-BFGS over the parameter and
the two nuisance constants), as :func:`isojax.calibrate.fit_psf` does for the shape families.
Global before local, as :func:`isojax.calibrate.fit_psf`: without a start, the objective is
first profiled over a grid of the free parameter (:func:`physical_profile`, the nuisance
constants fitted at each value), the refinement starts from its best cells, and the
profile's likelihood-ratio interval (:func:`isojax.calibrate.search.profile_interval`) is
reported in the physical unit. It is not one of :data:`isojax.calibrate.FAMILIES` (those
are kernels in pixels, for :func:`isojax.calibrate.fit_psf`); ``isojax calibrate --family
debye`` fits it to a file (:func:`isojax.calibrate.physical_files.calibrate_physical_file`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from isojax.calibrate.search import _fit_nuisance, local_minima, profile_interval
from isojax.calibrate.spectra import (
    _init_nuisance,
    _log_spectra_jit,
    _noised_spectra,
    prepare_spectra,
    spectral_loss,
)
from isojax.errors import IsojaxInputError
from isojax.forward import FactoredPSF
from isojax.psf.models import theoretical_sigmas
from isojax.psf.optics import debye_additional_kernel

__all__ = [
    "PhysicalFamily",
    "fit_physical_psf",
    "physical_grid",
    "physical_profile",
    "physical_psf",
    "physical_values",
]


@dataclasses.dataclass(frozen=True)
class PhysicalFamily:
    """The fixed optics of the physical family, and which parameter is free.

    Attributes:
      wavelength_um: emission wavelength in micrometres.
      ri: refractive index of the immersion medium.
      modality: ``"widefield"``, ``"confocal"`` (point pinhole) or ``"lightsheet"``.
      pixel_size: the image's lateral pixel size in micrometres.
      half_size: the kernel spans ``-half_size..half_size`` lateral pixels.
      free: ``"na"`` (fit the NA; the default) or ``"sheet_fwhm"`` (lightsheet: fit the
        sheet's FWHM, the NA fixed).
      na: the NA when it is fixed (``free="sheet_fwhm"``).
      excitation_um: excitation wavelength (confocal).
      sheet_fwhm_um: sheet FWHM in micrometres when it is fixed (lightsheet, ``free="na"``).
    """

    wavelength_um: float
    ri: float
    modality: Literal["widefield", "confocal", "lightsheet"]
    pixel_size: float
    half_size: int = 64
    free: Literal["na", "sheet_fwhm"] = "na"
    na: float | None = None
    excitation_um: float | None = None
    sheet_fwhm_um: float | None = None

    def __post_init__(self):
        if self.free not in ("na", "sheet_fwhm"):
            raise IsojaxInputError(f"free must be 'na' or 'sheet_fwhm', got {self.free!r}")
        if self.free == "sheet_fwhm" and (self.modality != "lightsheet" or self.na is None):
            raise IsojaxInputError(
                "fitting the sheet FWHM needs modality='lightsheet' and a fixed na=")
        if int(self.half_size) != self.half_size or self.half_size < 4:
            raise IsojaxInputError(f"half_size must be an integer >= 4, got {self.half_size}")
        # the optics checks of the theory (na, wavelength, ri, modality's own options)
        theoretical_sigmas(na=min(self.na or 0.5 * self.ri, 0.99 * self.ri),
                           wavelength_um=self.wavelength_um, ri=self.ri,
                           modality=self.modality, excitation_um=self.excitation_um,
                           pinhole_au=0.0,
                           sheet_fwhm_um=self.sheet_fwhm_um if self.free == "na" else 1.0)


def _init(family: PhysicalFamily, value: float) -> dict:
    """Unconstrained parameters at a physical value: ``NA = ri sigmoid(p)``,
    ``FWHM = exp(p)``."""
    if family.free == "na":
        if not 0 < value < family.ri:
            raise IsojaxInputError(f"the initial NA must be in (0, ri={family.ri}), got {value}")
        q = value / family.ri
        return {"logit_na": jnp.float32(math.log(q / (1.0 - q)))}
    if not (math.isfinite(value) and value > 0):
        raise IsojaxInputError(f"the initial sheet FWHM must be positive (um), got {value}")
    return {"log_sheet_fwhm": jnp.float32(math.log(value))}


def physical_values(family: PhysicalFamily, params: dict) -> dict:
    """The physical values of a parameter set.

    Args:
      family: the fixed optics.
      params: ``{"logit_na": ...}`` or ``{"log_sheet_fwhm": ...}`` (from a fit).

    Returns:
      ``{"na": ..., "sheet_fwhm_um": ...}`` (JAX scalars, or None where not given).
    """
    if family.free == "na":
        return {"na": family.ri * jax.nn.sigmoid(params["logit_na"]),
                "sheet_fwhm_um": family.sheet_fwhm_um}
    return {"na": family.na, "sheet_fwhm_um": jnp.exp(params["log_sheet_fwhm"])}


def physical_psf(family: PhysicalFamily, params: dict) -> FactoredPSF:
    """The family's additional axial PSF: a lateral delta and the Debye axial kernel.

    Args:
      family: the fixed optics.
      params: as in :func:`physical_values`.

    Returns:
      ``FactoredPSF(lateral (1, 1), axial (1, 2 half_size + 1))``, non-negative, summing to 1,
      differentiable in ``params``.
    """
    v = physical_values(family, params)
    h, _, _ = debye_additional_kernel(
        na=v["na"], wavelength_um=family.wavelength_um, ri=family.ri, modality=family.modality,
        pixel_size=family.pixel_size, half_size=family.half_size,
        excitation_um=family.excitation_um, sheet_fwhm_um=v["sheet_fwhm_um"])
    return FactoredPSF(jnp.ones((1, 1), jnp.float32), h.astype(jnp.float32)[None])


@functools.partial(jax.jit, static_argnames=("family", "subsample", "segment", "steps"))
def _fit(theta, target, *, family, subsample, segment, steps):
    def value(th):
        return spectral_loss(physical_psf(family, th["psf"]), th["nuisance"], target,
                             subsample=subsample, segment=segment)

    tx = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(value)

    def step(carry, _):
        th, opt = carry
        loss, g = value_and_grad(th, state=opt)
        upd, opt = tx.update(g, opt, th, value=loss, grad=g, value_fn=value)
        return (optax.apply_updates(th, upd), opt), loss

    (theta, _), losses = jax.lax.scan(step, (theta, tx.init(theta)), None, length=steps)
    return theta, losses, value(theta)


def physical_grid(family: PhysicalFamily, *, subsample: float, points: int = 16) -> np.ndarray:
    """Values of the free parameter the global search profiles, ascending.

    For the NA: evenly spaced from ``0.15 ri`` to ``0.97 ri`` (every objective a user could
    have, dry to oil). For a sheet's FWHM: geometric from two lateral pixels to five axial
    steps (a sheet much thinner than a pixel is not seen; one much thicker than the
    detection PSF no longer matters).

    Args:
      family: the fixed optics and the free parameter.
      subsample: anisotropy factor (axial step / lateral pixel size).
      points: grid size, >= 3.

    Returns:
      ``(points,)`` float64 values (an NA, or a FWHM in micrometres).
    """
    if family.free == "na":
        return np.linspace(0.15, 0.97, int(points)) * family.ri
    step_um = float(subsample) * family.pixel_size
    return np.geomspace(2.0 * family.pixel_size, 5.0 * step_um, int(points))


@functools.partial(jax.jit, static_argnames=("family", "subsample", "segment"))
def _profile(params, target, *, family, subsample, segment):
    def one(p):
        psf = physical_psf(family, p)
        obs, syn = _noised_spectra(psf, target, subsample, segment)
        return _fit_nuisance(jnp.log(jnp.maximum(obs, 1e-30)), syn)

    return jax.lax.map(one, params)


def physical_profile(target, values, *, family: PhysicalFamily, subsample: float,
                     segment: int) -> tuple[np.ndarray, np.ndarray]:
    """The spectral objective at each value of the free parameter, nuisance fitted.

    The physical analogue of :func:`isojax.calibrate.search.width_profile`.

    Args:
      target: from :func:`~isojax.calibrate.prepare_spectra`.
      values: ``(k,)`` values of the free parameter (NA, or FWHM in micrometres).
      family: the fixed optics and the free parameter.
      subsample: anisotropy factor.
      segment: its Welch length (from :func:`~isojax.calibrate.prepare_spectra`).

    Returns:
      ``(losses (k,), nuisance (k, 2))``, as ``width_profile``.
    """
    params = [_init(family, float(v)) for v in values]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
    losses, nuis = _profile(stacked, target, family=family, subsample=float(subsample),
                            segment=int(segment))
    return np.asarray(losses, np.float64), np.asarray(nuis, np.float64)


def fit_physical_psf(key, stack, *, family: PhysicalFamily, init: float | None = None,
                     subsample: float, steps: int = 40,
                     profile: bool | None = None) -> tuple[FactoredPSF, dict]:
    """Fit the physical family to a stack with the spectral objective: search, then refine.

    Without ``init`` the objective is profiled over :func:`physical_grid` and L-BFGS starts
    from its two lowest local minima (the better end kept), so that the answer does not
    depend on a start; the profile gives the 95% interval of the free parameter
    (:func:`isojax.calibrate.search.profile_interval`, read in the parameter's unit) and
    whether the stack identifies it. With ``init``, one refinement from there, and no
    profile unless ``profile`` (``isojax calibrate`` always profiles, for the verdict).

    Args:
      key: a ``jax.random`` key (chooses the lateral lines, :func:`prepare_spectra`).
      stack: anisotropic stack ``(z, y, x)`` (or a list of them), as for
        :func:`isojax.calibrate.fit_psf`.
      family: the fixed optics and the free parameter.
      init: a starting value of the free parameter (an NA, or a FWHM in micrometres), or
        None for the global search.
      subsample: anisotropy factor (axial step / lateral pixel size).
      steps: L-BFGS steps.
      profile: compute the profile and its interval also with ``init`` (None: only
        without ``init``, where the search needs it).

    Returns:
      ``(psf, info)``: the fitted :class:`~isojax.forward.FactoredPSF` and a dict with the
      fitted physical values (floats), the initial and final objective and the losses, the
      fitted ``"gain"`` and ``"noise_floor"``, the spectra at the fit (``"frequencies"``
      in cycles per axial sample, ``"observed"``, ``"synthetic"``: the model with its
      nuisance constants) and the Welch ``"segment"``; after a search also ``"grid"``,
      ``"profile"``, ``"interval"`` (``(low, high)`` in the free parameter's unit),
      ``"interval_threshold"`` (the profile's level that bounds it) and ``"identifiable"``.

    Raises:
      IsojaxInputError: a bad stack, factor, start or number of steps.
    """
    if int(steps) != steps or steps < 1:
        raise IsojaxInputError(f"steps must be a positive integer, got {steps}")
    target, segment = prepare_spectra(key, stack, subsample=subsample)
    search: dict = {}
    starts = [] if init is None else [float(init)]
    if init is None or profile:
        grid = physical_grid(family, subsample=subsample)
        losses, _ = physical_profile(target, grid, family=family, subsample=subsample,
                                     segment=segment)
        iv = profile_interval(grid, losses, n_freq=segment // 2)
        starts = starts or [float(grid[i]) for i in local_minima(losses, 2)]
        search = {"grid": grid.tolist(), "profile": losses.tolist(),
                  "interval": (iv.low, iv.high), "interval_threshold": iv.threshold,
                  "identifiable": iv.identifiable}
    best = None
    for start in starts:
        psf_params = _init(family, start)
        nuisance = _init_nuisance(physical_psf(family, psf_params), target, subsample, segment)
        theta, losses_run, final = _fit({"psf": psf_params, "nuisance": nuisance}, target,
                                        family=family, subsample=float(subsample),
                                        segment=segment, steps=int(steps))
        if best is None or float(final) < best[2]:
            best = (theta, losses_run, float(final))
    assert best is not None
    theta, losses_run, final = best
    values = {k: (None if v is None else float(v))
              for k, v in physical_values(family, theta["psf"]).items()}
    psf = physical_psf(family, theta["psf"])
    obs, model = _log_spectra_jit(psf, theta["nuisance"], target, float(subsample), segment)
    info = {**values, "free": family.free, "loss_initial": float(np.asarray(losses_run)[0]),
            "loss_final": final, "losses": np.asarray(losses_run),
            "gain": float(np.exp(theta["nuisance"]["log_gain"])),
            "noise_floor": float(np.exp(theta["nuisance"]["log_floor"])),
            "frequencies": np.asarray(target.frequencies),
            "observed": np.exp(np.asarray(obs)), "synthetic": np.exp(np.asarray(model)),
            "segment": int(segment), **search}
    return psf, info
