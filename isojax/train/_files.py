"""The file-level policy of ``isojax train`` (:func:`isojax.pipeline.train_file`).

What the command does between reading the stack and :func:`isojax.train.train`: the
inputs a model folder may not be (:func:`_training_inputs`), the refusal of hyperstack
options for a 3D stack (:func:`_refuse_selection`), the PSF and the calibration settings
(:func:`_training_psf`), and one 3D training with its settings built and checked once
(:func:`_train_volume`), which a time-lapse's channels (:mod:`isojax.train.series`) call
too. Moved out of :mod:`isojax.pipeline` unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

from isojax import geometry
from isojax.errors import IsojaxInputError

__all__: list[str] = []

Log = Callable[[str], None]


def _train_volume(stack, g: geometry.StackGeometry, axial, model, *, resume: bool, log: Log,
                  steps: int, batch_size: int, patch_size: int, learning_rate: float,
                  loss, interpolation, photons, read_noise: float, first_filters: int | None,
                  depth: int | None, arch, seed: int, checkpoint_every: int, val_every: int,
                  progress: bool, match_noise: bool, compute_dtype, log_every: float,
                  calibrate_psf: bool = False, calibration=None) -> dict:
    """One 3D training into ``model``: the settings built and checked once, then ``train``.

    Returns:
      The summary of :func:`isojax.train.train`.
    """
    from isojax.model_folder import warmup_steps
    from isojax.synth import SynthConfig
    from isojax.train import TrainConfig, train
    from isojax.unet import UNetConfig

    # the frozen settings, built once here and checked on construction
    synth_config = SynthConfig(subsample=g.subsample, patch_size=patch_size,
                               interpolation=interpolation, photons=photons,
                               read_noise=read_noise)
    config = TrainConfig(
        steps=steps, batch_size=batch_size, learning_rate=learning_rate, loss=loss, seed=seed,
        checkpoint_every=checkpoint_every, val_every=val_every,
        warmup_steps=warmup_steps(model, steps=steps, resume=resume),
        compute_dtype=compute_dtype,
    )
    net = UNetConfig.from_arch(arch, first_filters=first_filters, depth=depth,
                               prob_out=loss == "laplace")
    summary = train(  # the AxialPSF as it is: train() does not check it again
        stack, axial, workdir=model, synth_config=synth_config, config=config, net=net,
        spacing=g.spacing, psf_pixel_size=g.pixel_size, resume=resume, progress=progress,
        log=log, calibrate_psf=calibrate_psf, calibration=calibration,
        match_noise=match_noise, log_every=log_every,
    )
    if summary.get("steps_run") == 0:
        return summary  # train() said there was nothing to do
    log(
        f"trained {summary['step']} steps: loss {summary['loss']:.4g}, best validation loss "
        f"{summary['best_val_loss']:.4g} at step {summary['best_step']}; model in {model}"
    )
    return summary


def _training_inputs(stack_path, psf, bead) -> dict:
    """The inputs a model folder may not be (or hold): the stack, the PSF files, the beads."""
    inputs: dict = {"stack": stack_path}
    for what, value in (("PSF", psf), ("bead stack", bead)):
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        for i, v in enumerate(values):
            inputs[what if len(values) == 1 else f"{what} {i + 1}"] = (
                None if _is_axial_psf(v) else v)
    return inputs


def _refuse_selection(stack_path, *, channels, timepoints) -> None:
    for flag, value in (("--channels", channels), ("--timepoints", timepoints)):
        if value is not None and os.path.exists(stack_path):
            raise IsojaxInputError(
                f"{stack_path}: {flag} is for stacks with a time or channel axis, and this one "
                "has neither; if it has one, name its axes with --axes (e.g. --axes TZCYX)")


def _is_axial_psf(psf) -> bool:
    from isojax.psf import AxialPSF

    return isinstance(psf, AxialPSF)


def _training_psf(pixel: float | None, *, psf, bead, bead_spacing, theory, calibrate_psf: bool,
                  family: Literal["gaussian", "multi-gaussian", "free"],
                  init_fwhm: float | None, log: Log):
    """:func:`isojax.pipeline.train_file`'s PSF (None when it is learned from nothing) and calibration settings.

    Returns:
      ``(axial, calibration)``: the checked :class:`~isojax.psf.AxialPSF` (``psf`` itself
      when it is one) or None, and a :class:`isojax.calibrate.CalibrationConfig` with
      ``calibrate_psf`` (else None).
    """
    from isojax.psf.sources import resolve_psf

    calibration = None
    if calibrate_psf:
        from isojax.calibrate import CalibrationConfig

        calibration = CalibrationConfig(
            family=family, init_fwhm=geometry.um_to_px(init_fwhm, pixel=pixel, name="--init-fwhm")
        )
    if _is_axial_psf(psf):
        return psf, calibration  # checked by whoever built it (demo: from its bead)
    if calibrate_psf and not (psf or bead or theory):
        log("no PSF source: the PSF is learned from the stack (--calibrate-psf)")
        return None, calibration
    axial = resolve_psf(
        pixel_size=pixel, psf=psf, bead=bead, bead_spacing=bead_spacing, theory=theory,
        log=log,
    )
    return axial, calibration
