"""Joint PSF refinement during training, as an optax-style pair of pure functions.

With ``calibrate_psf=True`` (:func:`isojax.train.train`) the PSF is learned from the stack:

1. :func:`pre_calibrate`: the spectral objective calibrates the initial guess before
   training (:func:`isojax.calibrate.fit_psf`). Deterministic, so a resumed run repeats it
   and gets the same :class:`Calibration`.
2. :func:`joint_refinement` returns a :class:`JointRefinement` ``(init, update, every)``,
   like an optax ``GradientTransformation``: ``init(extra=None) -> JointState`` starts from
   the calibration (or from a checkpoint's ``extra``), and
   ``update(state, net_params, stack, step) -> (state, metrics)`` is one Adam step of the
   spectral plus consistency objective (:func:`isojax.calibrate.make_joint_psf_step`),
   run every ``every`` training steps. The state is a :class:`JointState` NamedTuple: the
   parameters, their optimiser state and the PSF they give, nothing mutable.
3. :func:`checkpoint_extra` is what a checkpoint keeps of the state, and
   :func:`finish_calibration` writes the final PSF and ``psf_trajectory.json``.

The maths is in :mod:`isojax.calibrate.joint`; this module is only the glue to training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from isojax import calibrate
from isojax.forward import FactoredPSF
from isojax.io import write_tiff
from isojax.model_folder import write_json
from isojax.psf import AxialPSF, fwhm
from isojax.synth import SynthConfig
from isojax.unet import apply_unet

__all__ = [
    "Calibration",
    "JointRefinement",
    "JointState",
    "calibration_meta",
    "checkpoint_extra",
    "finish_calibration",
    "joint_refinement",
    "pre_calibrate",
]

Array = jax.Array


class Calibration(NamedTuple):
    """The spectral pre-calibration that the joint refinement starts from."""

    config: Any  # isojax.calibrate.CalibrationConfig
    report: Any  # isojax.calibrate.CalibrationReport: family, support, starting parameters
    target: Any  # isojax.calibrate.SpectralTarget of the stack
    segment: int  # its Welch segment length
    initial_fwhm_px: float  # the initial guess's axial FWHM in pixels


class JointState(NamedTuple):
    """The joint refinement's state (a pytree)."""

    theta: Any  # {"psf": PSF parameters, "nuisance": spectral nuisance constants}
    opt_state: Any  # their Adam state
    psf: FactoredPSF  # the PSF of ``theta``, which pairs are synthesised with


class JointRefinement(NamedTuple):
    """``init`` and ``update`` of the joint refinement (as optax's pair), and its period."""

    init: Callable[..., JointState]
    update: Callable[..., tuple[JointState, dict]]
    every: int  # one update every this many training steps


def pre_calibrate(stack, psf: AxialPSF | None, *, synth_config: SynthConfig, calibration=None,
                  pixel_size: float | None = None,
                  log: Callable[[str], None]) -> Calibration:
    """Spectral pre-calibration of the PSF from the initial guess.

    Args:
      stack: the raw anisotropic stack ``(z, y, x)``.
      psf: the initial guess, checked (an :class:`~isojax.psf.AxialPSF`), or None to
        start from ``calibration.init_fwhm`` (or, without one, the subsample factor).
      synth_config: training's synthesis settings (their subsample factor, chosen and
        checked by the caller).
      calibration: a :class:`isojax.calibrate.CalibrationConfig`; None for the defaults.
      pixel_size: lateral pixel size in µm; only reports widths in micrometres.
      log: where the one-line result and the fit's warnings go.

    Returns:
      The :class:`Calibration`.
    """
    config = calibration or calibrate.CalibrationConfig()
    s = float(synth_config.subsample)
    if psf is not None:
        dense = psf.dense()
        init = fwhm(dense[dense.shape[0] // 2].astype(np.float64))
        how = "the given PSF"
    else:
        init = config.init_fwhm if config.init_fwhm is not None else s
        how = "--init-fwhm" if config.init_fwhm is not None else "the subsample factor"
    key = jax.random.key(0)
    # training's factor was chosen (and any override warned about) by the caller: the pixel
    # size only reports widths in micrometres, it checks nothing
    _, report = calibrate.fit_psf(
        key, stack, subsample=s, family=config.family, init_fwhm=float(init),
        steps=config.steps, n_lobes=config.n_lobes, smoothness=config.smoothness,
        max_lines=config.max_lines, pixel_size=pixel_size,
    )
    log(f"PSF self-calibration ({config.family}) from FWHM {init:.3g} px ({how}): axial FWHM "
        f"{report.fwhm_px:.3g} px, sigma {report.sigma_px:.3g} px, objective {report.loss:.3g} "
        f"in {report.seconds:.1f} s")
    for w in report.warnings:
        log(f"warning: {w}")
    target, segment = calibrate.prepare_spectra(key, stack, subsample=s,
                                                max_lines=config.max_lines)
    return Calibration(config, report, target, segment, float(init))


def calibration_meta(calibration: Calibration) -> dict:
    """The calibration settings and their deterministic start, kept to check a resume.

    Args:
      calibration: from :func:`pre_calibrate`.

    Returns:
      The ``calibration`` section of ``config.json``.
    """
    return {**dataclasses.asdict(calibration.config),
            "initial_fwhm_px": calibration.initial_fwhm_px,
            "pre_calibrated_fwhm_px": float(calibration.report.fwhm_px)}


def joint_refinement(calibration: Calibration, graphdef, *,
                     synth_config: SynthConfig) -> JointRefinement:
    """The joint refinement's ``init`` and ``update``, compiled for this network.

    Args:
      calibration: from :func:`pre_calibrate`.
      graphdef: the network's static structure (:func:`isojax.train.create_train_state`).
      synth_config: training's synthesis settings (subsample, patch size, interpolation of
        the observed axial patches).

    Returns:
      A :class:`JointRefinement`. ``init(extra=None)``: the state at the calibration, or
      the one a checkpoint kept (:func:`checkpoint_extra`). ``update(state, net_params,
      stack, step)``: one PSF step on axial patches of the normalised ``stack`` drawn with
      a key folded with ``step`` (the 0-based training step), the network held fixed;
      returns ``(state, metrics)`` with the ``psf_`` metrics of
      :func:`isojax.calibrate.make_joint_psf_step`.
    """
    report = calibration.report

    def apply_fn(params, images):
        return apply_unet(graphdef, params, images[..., None])[..., 0]

    step_fn, theta0, opt0 = calibrate.make_joint_psf_step(
        apply_fn, report, calibration.target, segment=calibration.segment,
        config=calibration.config,
    )

    def psf_of(theta) -> FactoredPSF:
        return calibrate.psf_from_params(report.family, theta["psf"], taps=report.taps)

    def init(extra: dict | None = None) -> JointState:
        if extra is None:
            return JointState(theta0, opt0, report.psf())
        return JointState(extra["theta"], extra["opt"], psf_of(extra["theta"]))

    def update(state: JointState, net_params, stack: Array, step: int):
        batch = calibrate.axial_patches(
            jax.random.fold_in(jax.random.key(1), step), stack,
            subsample=synth_config.subsample, patch_size=synth_config.patch_size,
            batch_size=4, interpolation=synth_config.interpolation,
        )
        theta, opt_state, metrics = step_fn(state.theta, state.opt_state, net_params, batch)
        return JointState(theta, opt_state, psf_of(theta)), metrics

    return JointRefinement(init, update, calibration.config.joint_every)


def checkpoint_extra(state: JointState | None) -> dict | None:
    """What a checkpoint keeps of the joint refinement (None without one).

    Args:
      state: the joint state, or None when the PSF is not learned.

    Returns:
      ``{"theta": ..., "opt": ...}`` (the layout checkpoints have always held), or None.
    """
    return None if state is None else {"theta": state.theta, "opt": state.opt_state}


def finish_calibration(state: JointState, calibration: Calibration, records: list[dict], *,
                       workdir: Path, pixel_size: float | None) -> dict:
    """Write the final PSF (``psf.tif``) and ``psf_trajectory.json``; return a summary.

    Args:
      state: the joint state at the end of training.
      calibration: from :func:`pre_calibrate`.
      records: the run's metric records (their ``psf_`` entries form the path).
      workdir: the model folder.
      pixel_size: lateral pixel size in µm, or None.

    Returns:
      The final PSF's axial FWHM (``fwhm_px``, ``fwhm_um``) and ``shape``.
    """
    dense = AxialPSF(state.psf, pixel_size, "the joint refinement").dense()
    write_tiff(workdir / "psf.tif", dense, pixel_size=pixel_size)
    final_fwhm = float(fwhm(dense[dense.shape[0] // 2].astype(np.float64)))
    joint_path = [
        {k: r[k] for k in ("step", "psf_sigma_px", "psf_spectral_loss", "psf_consistency")}
        for r in records if "psf_sigma_px" in r
    ]
    out = {
        "calibration": calibration.report.to_json(),
        "joint": joint_path,
        "final": {"fwhm_px": final_fwhm,
                  "fwhm_um": None if pixel_size is None else final_fwhm * pixel_size,
                  "shape": list(dense.shape)},
    }
    write_json(workdir / "psf_trajectory.json", out)
    return out["final"]
