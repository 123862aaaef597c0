"""The plugin's jobs: what each widget runs, as plain functions of arrays (no Qt, no napari).

Each job calls the isojax library functions that the command line calls (``isojax psf
axial|theory``, ``isojax train``, ``isojax predict``, ``isojax calibrate``), on arrays
taken from napari layers instead of files, so that the widgets stay thin and the jobs can
be tested (and scripted) on their own. Voxel sizes are ``(dz, dy, dx)`` in micrometres, as
napari's layer ``scale`` of a ``(z, y, x)`` image.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from isojax.errors import IsojaxInputError
from isojax.geometry import StackGeometry
from isojax.psf import AxialPSF, PSFReport

Log = Callable[[str], None]

__all__ = [
    "CalibrationResult",
    "PSFResult",
    "Restored",
    "TrainResult",
    "bead_psf",
    "calibrate",
    "demo_stack",
    "psf_from_file",
    "restore",
    "save_psf",
    "stack_geometry",
    "theory_psf",
    "train_model",
]


def _quiet(log: Log | None) -> Log:
    return log if log is not None else (lambda msg: None)


class PSFResult(NamedTuple):
    """A checked PSF and what was found on the way.

    Attributes:
      psf: the :class:`~isojax.psf.AxialPSF` (``(lateral, axial)``, sums to 1).
      report: the :func:`isojax.psf.check_psf` report.
      info: what :func:`isojax.psf.axial_psf` or :func:`isojax.psf.theoretical_axial_psf`
        says it did (widths in pixels and micrometres).
      warnings: the check's warnings, one line each.
    """

    psf: AxialPSF
    report: PSFReport
    info: dict
    warnings: list[str]


def stack_geometry(spacing: Sequence[float]) -> StackGeometry:
    """The geometry of a napari ``(z, y, x)`` image from its voxel size (the layer's scale).

    Args:
      spacing: ``(dz, dy, dx)`` in micrometres (square pixels, ``dz >= dx``).

    Returns:
      A :class:`~isojax.geometry.StackGeometry` with ``subsample = dz / dx``.

    Raises:
      IsojaxInputError: not three positive sizes, pixels that are not square, ``dz < dx``.
    """
    sp = tuple(float(v) for v in spacing)
    if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise IsojaxInputError(
            f"the voxel size must be three positive sizes (dz, dy, dx) in micrometres, got "
            f"{spacing}; set the layer's scale or type the voxel size in.")
    return StackGeometry(subsample=sp[0] / sp[2], spacing=sp, subsample_source="metadata",
                         spacing_source="override", spacing_detail="napari layer scale")


def _checked(psf2d, *, pixel_size: float, provenance: str) -> tuple[AxialPSF, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        axial = AxialPSF.checked(psf2d, pixel_size=pixel_size, provenance=provenance)
    return axial, [str(w.message) for w in caught]


def bead_psf(bead, *, spacing: Sequence[float], pixel_size: float,
             planes: Literal["both", "xz", "yz"] = "both", iterations: int = 50) -> PSFResult:
    """``isojax psf axial`` on an array: the additional axial PSF from a bead stack.

    Args:
      bead: 3D bead stack ``(z, y, x)``, one bead brighter than the background.
      spacing: its voxel size ``(dz, dy, dx)`` in micrometres.
      pixel_size: the image's lateral pixel size in micrometres (both PSF axes use it).
      planes: ``"both"``, ``"xz"`` or ``"yz"`` (:func:`isojax.psf.axial_psf`).
      iterations: Richardson-Lucy iterations.

    Returns:
      A :class:`PSFResult`.

    Raises:
      IsojaxInputError: not a 3D stack, or what :func:`isojax.psf.process_bead`,
        :func:`isojax.psf.axial_psf` and :func:`isojax.psf.check_psf` refuse.
    """
    from isojax.psf import axial_psf, process_bead

    bead = np.asarray(bead)
    if bead.ndim != 3:
        raise IsojaxInputError(
            f"the bead image must be 3D (z, y, x), got shape {bead.shape}; pick a 3D layer.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        psf3d, sp, bead_info = process_bead(bead, tuple(float(v) for v in spacing))
        psf2d, info = axial_psf(psf3d, sp, pixel_size, planes=planes, iterations=iterations)
    axial, more = _checked(psf2d, pixel_size=pixel_size, provenance="bead layer (napari)")
    return PSFResult(axial, axial.report, {**info, "bead": bead_info},
                     [str(w.message) for w in caught] + more)


def theory_psf(*, na: float, wavelength_um: float, ri: float,
               modality: Literal["widefield", "confocal", "lightsheet"], pixel_size: float,
               excitation_um: float | None = None, pinhole_au: float = 1.0,
               sheet_fwhm_um: float | None = None) -> PSFResult:
    """``isojax psf theory``: the additional axial PSF of the Gaussian approximation.

    Args:
      na, wavelength_um, ri, modality, excitation_um, pinhole_au, sheet_fwhm_um: as in
        :func:`isojax.psf.theoretical_axial_psf`.
      pixel_size: the image's lateral pixel size in micrometres.

    Returns:
      A :class:`PSFResult`.

    Raises:
      IsojaxInputError: as :func:`isojax.psf.theoretical_axial_psf`.
    """
    from isojax.psf import theoretical_axial_psf

    psf2d, info = theoretical_axial_psf(
        na=na, wavelength_um=wavelength_um, ri=ri, modality=modality, pixel_size=pixel_size,
        excitation_um=excitation_um, pinhole_au=pinhole_au, sheet_fwhm_um=sheet_fwhm_um)
    axial, caught = _checked(psf2d, pixel_size=pixel_size, provenance=f"theory ({modality})")
    return PSFResult(axial, axial.report, info, caught)


def psf_from_file(path: str | os.PathLike, *, pixel_size: float | None,
                  log: Log | None = None) -> AxialPSF:
    """A PSF TIFF as training takes it (:func:`isojax.psf.sources.resolve_psf`: checked,
    resampled to ``pixel_size`` when its own differs)."""
    from isojax.psf.sources import resolve_psf

    return resolve_psf(pixel_size=pixel_size, psf=path, log=_quiet(log))


def psf_from_array(psf2d, *, pixel_size: float | None, name: str) -> AxialPSF:
    """A PSF layer's data as an :class:`~isojax.psf.AxialPSF` (checked once, here)."""
    axial, _ = _checked(np.asarray(psf2d), pixel_size=pixel_size, provenance=f"layer {name}")
    return axial


def save_psf(path: str | os.PathLike, psf: AxialPSF, *, overwrite: bool = False) -> Path:
    """Write the PSF as ``isojax psf`` does: a float32 TIFF with its pixel size.

    Raises:
      IsojaxInputError: ``path`` exists and ``overwrite`` is False, or is not writable.
    """
    from isojax.io import check_outputs, write_tiff

    path = Path(path)
    check_outputs([path], inputs={}, overwrite=overwrite)
    write_tiff(path, psf.dense(), pixel_size=psf.pixel_size, overwrite=overwrite)
    return path


class TrainResult(NamedTuple):
    """How a training job ended.

    Attributes:
      summary: :func:`isojax.train.train`'s summary (``step``, ``loss``, ...), or None when
        cancelled.
      workdir: the model folder.
      cancelled: the run was stopped; its ``last`` checkpoint holds the step it reached
        (``resume`` continues it).
      message: one line for the user.
    """

    summary: dict | None
    workdir: Path
    cancelled: bool
    message: str


def train_model(
    stack,
    psf: AxialPSF,
    *,
    workdir: str | os.PathLike,
    spacing: Sequence[float],
    steps: int = 2000,
    batch_size: int = 16,
    patch_size: int = 128,
    first_filters: int = 32,
    depth: int = 2,
    learning_rate: float = 4e-4,
    seed: int = 0,
    checkpoint_every: int = 100,
    val_every: int = 100,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    log: Log | None = None,
) -> TrainResult:
    """``isojax train`` on an array: the settings of :func:`isojax.pipeline.train_file`.

    Args:
      stack: the anisotropic stack ``(z, y, x)``.
      psf: the additional axial PSF, at the stack's lateral pixel size.
      workdir: the model folder to create (or, with ``resume``, continue).
      spacing: the stack's voxel size ``(dz, dy, dx)`` in micrometres.
      steps, batch_size, patch_size, first_filters, depth, learning_rate, seed,
        checkpoint_every, val_every, resume: as :func:`isojax.pipeline.train_file`.
      should_stop: polled after every step (:func:`isojax.train.train`); True stops the
        run, saving the ``last`` checkpoint at that step.
      log: where messages go.

    Returns:
      A :class:`TrainResult` (``cancelled`` when ``should_stop`` stopped it).

    Raises:
      IsojaxInputError: what :func:`isojax.train.train` refuses (stack, PSF, folder).
    """
    from isojax.interrupt import Interrupted
    from isojax.model_folder import check_model_folder, warmup_steps
    from isojax.synth import SynthConfig
    from isojax.train import TrainConfig, train
    from isojax.unet import UNetConfig

    g = stack_geometry(spacing)
    workdir = Path(workdir)
    if psf.pixel_size is not None and not math.isclose(psf.pixel_size, g.pixel_size or 0,
                                                       rel_tol=0.01):
        raise IsojaxInputError(
            f"the PSF's pixel size ({psf.pixel_size:g} um) is not the stack's ({g.pixel_size:g} "
            "um): make the PSF at the stack's pixel size, or fix the layer's scale.")
    check_model_folder(workdir, inputs={})
    synth_config = SynthConfig(subsample=g.subsample, patch_size=patch_size)
    config = TrainConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                         seed=seed, checkpoint_every=checkpoint_every, val_every=val_every,
                         warmup_steps=warmup_steps(workdir, steps=steps, resume=resume))
    net = UNetConfig(first_filters=first_filters, depth=depth)
    try:
        summary = train(np.asarray(stack), psf, workdir=workdir, synth_config=synth_config,
                        config=config, net=net, spacing=g.spacing, psf_pixel_size=psf.pixel_size,
                        resume=resume, progress=False, log=_quiet(log), should_stop=should_stop)
    except Interrupted as exc:
        return TrainResult(None, workdir, True, exc.message)
    return TrainResult(summary, workdir, False,
                       f"trained {summary['step']} steps: loss {summary['loss']:.4g}; model in "
                       f"{workdir}")


class Restored(NamedTuple):
    """An isotropic restoration and where it sits.

    Attributes:
      volume: float32 ``(z', y, x)``.
      scale: its voxel size ``(dz / subsample, dy, dx)`` (the layer's units).
      subsample: the factor used.
    """

    volume: np.ndarray
    scale: tuple[float, float, float]
    subsample: float


def restore(stack, *, model: str | os.PathLike, scale: Sequence[float] | None = None,
            subsample: float | None = None, checkpoint: Literal["best", "last"] = "best",
            fuse: Literal["mean", "geometric", "xz", "yz"] = "mean",
            progress: Callable[[int, int], None] | None = None,
            log: Log | None = None) -> Restored:
    """``isojax predict`` on an array: a model folder or an exported package.

    The anisotropy factor is ``subsample`` if given, else the layer's ``dz / dx`` when its
    scale is anisotropic, else the model's; one more than 10% from the model's is refused
    (as :func:`isojax.pipeline.predict_file` does).

    Args:
      stack: the anisotropic stack ``(z, y, x)``.
      model: a model folder or a ``.bioimageio.zip`` of ``isojax export``.
      scale: the layer's scale ``(dz, dy, dx)``, or None (unit voxels).
      subsample: the anisotropy factor, or None (see above).
      checkpoint: ``"best"`` or ``"last"``.
      fuse: how the XZ and YZ views are fused (:func:`isojax.predict_stack`).
      progress: ``progress(done, total)`` after each batch of slices.
      log: where messages go.

    Returns:
      A :class:`Restored`: the volume and its isotropic scale, so that it lines up with the
      input (same translate) in 3D.

    Raises:
      IsojaxInputError: an unusable model, stack or factor.
    """
    from isojax.predict import predict_stack
    from isojax.predict.files import check_model_subsample, load_predictor, tile_overlap
    from isojax.synth import check_contrast

    log = _quiet(log)
    apply_fn, meta = load_predictor(model, which=checkpoint)
    sc = (1.0, 1.0, 1.0) if scale is None else tuple(float(v) for v in scale)
    if len(sc) != 3:
        raise IsojaxInputError(f"the layer must be 3D (z, y, x), its scale is {sc}")
    trained = float(meta["subsample"])
    if subsample is not None:
        s, how = float(subsample), "typed in"
    elif not math.isclose(sc[0], sc[2], rel_tol=1e-6):
        s, how = sc[0] / sc[2], "the layer's scale"
    else:
        s, how = trained, "the model folder"
    check_model_subsample(s, meta, model=model, how=how, log=log)
    stack = np.asarray(stack)
    norm = meta["normalization"]
    check_contrast(stack, percentiles=(norm["pmin"], norm["pmax"]), name="the layer")
    volume = predict_stack(stack.astype(np.float32), apply_fn, subsample=s,
                           interpolation=meta["interpolation"], fuse=fuse,
                           overlap=tile_overlap(meta), multiple=2 ** int(meta["unet"]["depth"]),
                           normalization=(norm["pmin"], norm["pmax"]), progress=progress)
    return Restored(volume, (sc[0] / s, sc[1], sc[2]), s)


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """A self-calibrated PSF.

    Attributes:
      psf: the :class:`~isojax.psf.AxialPSF` (kept factored, rank one).
      report: :func:`isojax.calibrate.fit_psf`'s :class:`~isojax.calibrate.CalibrationReport`.
      message: one line: the width, its 95% interval and whether the stack identifies it.
    """

    psf: AxialPSF
    report: Any
    message: str


def calibrate(stack, *, spacing: Sequence[float],
              family: Literal["gaussian", "multi-gaussian", "free"] = "gaussian",
              steps: int = 40, seed: int = 0) -> CalibrationResult:
    """``isojax calibrate`` on an array: the additional axial PSF learned from the stack.

    Args:
      stack: the anisotropic stack ``(z, y, x)``.
      spacing: its voxel size ``(dz, dy, dx)`` in micrometres.
      family: the PSF's parameterisation.
      steps: L-BFGS iterations.
      seed: chooses the lateral lines.

    Returns:
      A :class:`CalibrationResult`; check ``report.identifiable`` before trusting it.

    Raises:
      IsojaxInputError: as :func:`isojax.calibrate.fit_psf`.
    """
    import jax

    from isojax.calibrate import fit_psf
    from isojax.synth import check_contrast

    g = stack_geometry(spacing)
    stack = np.asarray(stack)
    check_contrast(stack, percentiles=(1.0, 99.8), name="the layer")
    psf, report = fit_psf(jax.random.key(seed), stack, subsample=g.subsample, family=family,
                          steps=steps, spacing=g.spacing)
    axial = AxialPSF.checked(psf, pixel_size=g.pixel_size, provenance="self-calibration")
    iv = report.interval
    px = g.pixel_size or 1.0
    verdict = "identified" if report.identifiable else "NOT identified by this stack"
    message = (f"{family}: axial FWHM {report.fwhm_px:.3g} px = {report.fwhm_px * px:.3g} um; "
               f"sigma 95% interval {iv.low:.3g} to {iv.high:.3g} px: {verdict}")
    return CalibrationResult(axial, report, message)


def demo_stack(*, seed: int = 0, shape: Sequence[int] = (96, 128, 128),
               subsample: float = 4.0) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The demo's simulated anisotropic stack (:func:`isojax.pipeline.demo`'s step 1).

    Args:
      seed: the random seed.
      shape: the isotropic specimen's shape ``(z, y, x)`` in voxels.
      subsample: the anisotropy factor.

    Returns:
      ``(stack, spacing)``: float32 ``(z / subsample, y, x)`` in camera-like units and its
      voxel size ``(dz, dy, dx)`` in micrometres.
    """
    import jax

    from isojax.simulate import simulate_stack

    k_spec, _ = jax.random.split(jax.random.key(seed))
    stack, _, acq = simulate_stack(k_spec, shape_zyx=tuple(shape), subsample=subsample,
                                   sigma_lateral=1.0, sigma_axial=3.0, photons=500.0,
                                   read_noise=0.002, pixel_size=0.1)
    return (np.asarray(stack) * 1000).astype(np.float32), tuple(float(v) for v in acq.spacing)
