"""File-level steps: what ``isojax train``, ``isojax predict`` and ``isojax demo`` do.

Each command of the command line is one function here with the same options, so a
script can drive every step from Python:

>>> from isojax import pipeline
>>> pipeline.train_file("stack.tif", model="model", psf="axial.tif", steps=2000)  # doctest: +SKIP
>>> pipeline.predict_file("stack.tif", model="model", output="iso.tif")  # doctest: +SKIP

These functions own the stateful edges (files, voxel sizes, messages); the numerical
work is in :mod:`isojax.synth`, :mod:`isojax.train` and :mod:`isojax.predict`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from isojax import geometry
from isojax.errors import IsojaxInputError, log_to_stderr

if TYPE_CHECKING:
    from isojax.psf import AxialPSF

Log = Callable[[str], None]


_stderr = log_to_stderr



# The stack geometry lives in isojax.geometry; these names stay importable from here.
SUBSAMPLE_TOLERANCE = geometry.SUBSAMPLE_TOLERANCE
subsample_conflict = geometry.subsample_conflict


def stack_geometry(
    path,
    *,
    spacing: Sequence[float] | None = None,
    subsample: float | None = None,
    on_conflict: str = "warn",
    log: Log = _stderr,
) -> tuple[np.ndarray, tuple[float, float, float] | None, float, str]:
    """Read a 3D stack and work out its anisotropy factor (:func:`isojax.geometry.read_stack`).

    Kept for scripts: ``(stack, spacing, subsample, how)`` are the array ``(z, y, x)``, the
    fields ``spacing`` and ``subsample`` of its :class:`~isojax.geometry.StackGeometry` and
    where the factor came from (``geometry.how``).

    Raises:
      IsojaxInputError: as :func:`isojax.geometry.read_stack`.
    """
    stack, g = geometry.read_stack(path, spacing=spacing, subsample=subsample,
                                   on_conflict=on_conflict, log=log)
    return stack, g.spacing, g.subsample, g.how


def __getattr__(name: str):
    # ``isojax.pipeline.resolve_psf`` now lives in isojax.psf.sources; it is loaded on first
    # use (PEP 562), like this module's other imports, so that commands which need no PSF
    # (``isojax predict``) do not pay for the PSF toolkit's scipy imports.
    if name == "resolve_psf":
        from isojax.psf.sources import resolve_psf

        return resolve_psf
    if name in ("demo", "DEMO_FILES"):  # in isojax.demo_pipeline, which imports this module
        from isojax import demo_pipeline

        return getattr(demo_pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train_file(
    stack_path: str | os.PathLike,
    *,
    model: str | os.PathLike,
    psf: str | os.PathLike | AxialPSF | None = None,
    bead: str | os.PathLike | None = None,
    bead_spacing: Sequence[float] | None = None,
    theory: dict | None = None,
    subsample: float | None = None,
    spacing: Sequence[float] | None = None,
    steps: int = 2000,
    batch_size: int = 16,
    patch_size: int = 128,
    learning_rate: float = 4e-4,
    loss: str = "mae",
    interpolation: str = "linear",
    photons: float | None = None,
    read_noise: float = 0.0,
    first_filters: int = 32,
    depth: int = 2,
    seed: int = 0,
    checkpoint_every: int = 100,
    val_every: int = 100,
    resume: bool = False,
    progress: bool = True,
    log: Log = _stderr,
    calibrate_psf: bool = False,
    family: str = "gaussian",
    init_fwhm: float | None = None,
    match_noise: bool = True,
    compute_dtype: str = "float32",
    log_every: float = 60.0,
) -> dict:
    """``isojax train``: train a model folder from a stack and a PSF.

    Unless ``photons``/``read_noise`` are given or ``match_noise`` is False, the stack's
    noise is estimated and added to the synthetic inputs (:func:`isojax.train.train`).

    With ``calibrate_psf`` the PSF is learned jointly (:mod:`isojax.calibrate`): a PSF
    source is then only the initial guess, and may be omitted (start from ``init_fwhm``
    micrometres, default one axial step); ``family`` picks the parameterisation.

    ``compute_dtype="bfloat16"`` trains with mixed precision (bfloat16 network, float32
    weights; :class:`isojax.train.TrainConfig`).

    The anisotropy factor comes from ``subsample`` or the voxel size (metadata or
    ``spacing``); the PSF from a file, a bead stack, or a theoretical model, at the stack's
    lateral pixel size; ``psf`` may also be an :class:`~isojax.psf.AxialPSF` checked
    already (at the stack's lateral pixel size), used as it is. See
    :func:`isojax.train.train` for what the folder holds.

    ``resume`` continues the folder's training (:func:`isojax.train.train`): a larger
    ``steps`` extends a run, keeping the folder's warm-up length. When stderr is not a
    terminal, a progress line is written every ``log_every`` seconds.
    """
    from isojax.synth import SynthConfig, check_contrast
    from isojax.train import TrainConfig, train
    from isojax.unet import UNetConfig

    _check_model_folder(model, inputs={"stack": stack_path, "bead stack": bead,
                                       "PSF": None if _is_axial_psf(psf) else psf})
    stack, g = geometry.read_stack(stack_path, spacing=spacing, subsample=subsample, log=log)
    check_contrast(stack, percentiles=(1.0, 99.8), name=stack_path)  # train's percentiles
    log(f"stack {stack_path}: shape {stack.shape} (z, y, x), subsample {g.subsample:.4g} "
        f"from {g.how}")
    pixel = g.pixel_size
    axial, calibration = _training_psf(
        pixel, psf=psf, bead=bead, bead_spacing=bead_spacing, theory=theory,
        calibrate_psf=calibrate_psf, family=family, init_fwhm=init_fwhm, log=log,
    )
    # the frozen settings, built once here and checked on construction
    synth_config = SynthConfig(subsample=g.subsample, patch_size=patch_size,
                               interpolation=interpolation, photons=photons,
                               read_noise=read_noise)
    config = TrainConfig(
        steps=steps, batch_size=batch_size, learning_rate=learning_rate, loss=loss, seed=seed,
        checkpoint_every=checkpoint_every, val_every=val_every,
        warmup_steps=_warmup_steps(model, steps=steps, resume=resume),
        compute_dtype=compute_dtype,
    )
    net = UNetConfig(first_filters=first_filters, depth=depth, prob_out=loss == "laplace")
    summary = train(  # the AxialPSF as it is: train() does not check it again
        stack, axial, workdir=model, synth_config=synth_config, config=config, net=net,
        spacing=g.spacing, psf_pixel_size=pixel, resume=resume, progress=progress, log=log,
        calibrate_psf=calibrate_psf, calibration=calibration, match_noise=match_noise,
        log_every=log_every,
    )
    if summary.get("steps_run") == 0:
        return summary  # train() said there was nothing to do
    log(
        f"trained {summary['step']} steps: loss {summary['loss']:.4g}, best validation loss "
        f"{summary['best_val_loss']:.4g} at step {summary['best_step']}; model in {model}"
    )
    return summary


def _is_axial_psf(psf) -> bool:
    from isojax.psf import AxialPSF

    return isinstance(psf, AxialPSF)


def _training_psf(pixel: float | None, *, psf, bead, bead_spacing, theory, calibrate_psf: bool,
                  family: str, init_fwhm: float | None, log: Log):
    """``train_file``'s PSF (None when it is learned from nothing) and calibration settings.

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
            family=family, init_fwhm=_um_to_px(init_fwhm, pixel, "--init-fwhm")
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


def _warmup_steps(model, *, steps: int, resume: bool) -> int:
    """The warm-up length: a tenth of the steps (at most 100), or on resume the folder's.

    The warm-up is part of the run's schedule: an extended run keeps the folder's.
    """
    if resume and (Path(model) / "config.json").exists():
        from isojax.model_folder import read_model_config

        kept = read_model_config(model).get("train", {}).get("warmup_steps")
        if isinstance(kept, int) and not isinstance(kept, bool) and kept >= 0:
            return kept
    return min(100, steps // 10)


def _check_model_folder(model, *, inputs: dict) -> None:
    """Refuse a ``--model`` folder that is, holds or lies inside an input, or is not a model.

    An existing model (``config.json``) is left to :func:`isojax.train.train` (``resume``).
    """
    from isojax.io import check_outputs

    model = Path(model)
    check_outputs([model], inputs=inputs, overwrite=True)
    if model.exists() and not model.is_dir():
        raise IsojaxInputError(
            f"{model} is a file, not a model folder: choose a new folder for --model")
    if model.is_dir() and not (model / "config.json").exists() and any(model.iterdir()):
        raise IsojaxInputError(
            f"{model} holds other files and no isojax model (no config.json): choose a new or "
            "empty folder for --model; isojax writes config.json, psf.tif, metrics and "
            "checkpoints there")


def _um_to_px(value_um: float | None, pixel: float | None, name: str) -> float | None:
    if value_um is None:
        return None
    if pixel is None:
        raise IsojaxInputError(
            f"{name} is in micrometres but the stack's pixel size is unknown; pass --spacing Z Y X."
        )
    return float(value_um) / pixel


def _save_calibration_png(path: Path, report, pixel_size: float | None, *,
                          overwrite: bool = True) -> None:
    from isojax.io import atomic_write, check_writable

    path = check_writable(path)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_s, ax_p = fig.subplots(1, 2)
    f = report.frequencies
    ax_s.semilogy(f, report.observed, "o-", ms=3, label="observed Z lines (laterally blurred)")
    ax_s.semilogy(f, report.synthetic, "s-", ms=3, label="XY lines through measure (fitted)")
    ax_s.semilogy(f, report.initial, ":", label="XY lines at the initial PSF")
    ax_s.set_xlabel("frequency (cycles per axial sample)")
    ax_s.set_ylabel("power")
    ax_s.legend(fontsize=8)
    ax_s.grid(alpha=0.3)
    axial = np.asarray(report.psf().axial[0])
    scale, unit = (pixel_size, "um") if pixel_size is not None else (1.0, "px")
    x = (np.arange(axial.size) - axial.size // 2) * scale
    ax_p.plot(x, axial, "o-", ms=3)
    ax_p.set_xlabel(f"axial offset ({unit})")
    ax_p.set_ylabel("PSF (sums to 1)")
    ax_p.set_title(f"{report.family}: FWHM {report.fwhm_px:.3g} px")
    ax_p.grid(alpha=0.3)
    fig.suptitle(f"PSF self-calibration, objective {report.loss:.3g}")
    atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=100), overwrite=overwrite)


def calibrate_file(
    stack_path: str | os.PathLike,
    *,
    output: str | os.PathLike,
    family: str = "gaussian",
    init_fwhm: float | None = None,
    subsample: float | None = None,
    spacing: Sequence[float] | None = None,
    steps: int = 40,
    overwrite: bool = False,
    log: Log = _stderr,
) -> dict:
    """``isojax calibrate``: learn the additional axial PSF from a stack and write it.

    Writes ``output`` (the 2D ``(lateral, axial)`` PSF, float32, pixel size in the
    metadata), ``output`` with ``.json`` (widths in pixels and micrometres, the objective's
    final value, the fit's trajectory) and ``.png`` (observed and synthetic spectra, the
    PSF profile). Nothing is written if anything fails; nothing is written unless all three
    outputs may be (:func:`isojax.io.check_outputs`).

    Args:
      stack_path: the anisotropic stack TIFF.
      output: the PSF TIFF to write.
      family: ``"gaussian"``, ``"multi-gaussian"`` or ``"free"``.
      init_fwhm: initial axial FWHM in micrometres (default: one axial step).
      subsample: anisotropy factor; refused if it contradicts the voxel size by > 2%.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, overriding the metadata.
      steps: L-BFGS iterations.
      overwrite: replace existing outputs (never the stack).

    Returns:
      The JSON report as a dict.

    Raises:
      IsojaxInputError: bad stack or options; an output exists and ``overwrite`` is False;
        an output is the stack.
    """
    import json

    from isojax.calibrate import fit_psf
    from isojax.io import atomic_write, check_outputs, check_writable, write_tiff
    from isojax.synth import check_contrast

    output = check_writable(output)
    json_path, png_path = output.with_suffix(".json"), output.with_suffix(".png")
    check_writable(json_path)
    check_writable(png_path)
    check_outputs([output, json_path, png_path], inputs={"stack": stack_path},
                  overwrite=overwrite, log=log)
    stack, g = geometry.read_stack(stack_path, spacing=spacing, subsample=subsample,
                                   on_conflict="error", log=log)
    sp, s, how = g.spacing, g.subsample, g.how
    check_contrast(stack, percentiles=(1.0, 99.8), name=stack_path)
    pixel = g.pixel_size
    init_px = _um_to_px(init_fwhm, pixel, "--init-fwhm")
    log(f"stack {stack_path}: shape {stack.shape} (z, y, x), subsample {s:.4g} from {how}")
    import jax

    psf, report = fit_psf(
        jax.random.key(0), stack, subsample=s, family=family, init_fwhm=init_px, steps=steps,
        spacing=sp,  # the stack's own voxel size: fit_psf checks the factor against it
    )
    summary = report.to_json()
    summary.update(stack=str(stack_path), subsample_from=how, psf_file=output.name)
    written = []
    try:
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"),
                     overwrite=overwrite)
        written.append(json_path)
        _save_calibration_png(png_path, report, pixel, overwrite=overwrite)
        written.append(png_path)
        write_tiff(output, np.asarray(psf.dense(), np.float32), pixel_size=pixel,
                   overwrite=overwrite)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    um = "" if pixel is None else f" = {report.fwhm_px * pixel:.4g} um"
    log(f"axial PSF ({family}): FWHM {report.fwhm_px:.3g} px{um}, sigma {report.sigma_px:.3g} "
        f"px; objective {report.loss:.4g}; {report.seconds:.1f} s")
    for w in report.warnings:
        log(f"warning: {w}")
    log(f"wrote {output}, {json_path.name} and {png_path.name}")
    return summary


def predict_file(
    stack_path: str | os.PathLike,
    *,
    model: str | os.PathLike,
    output: str | os.PathLike,
    subsample: float | None = None,
    spacing: Sequence[float] | None = None,
    fuse: str = "mean",
    batch_size: int | None = None,
    tile: int | None = None,
    keep_dtype: bool = False,
    memory_budget: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Log = _stderr,
    checkpoint: Literal["best", "last"] = "best",
):
    """``isojax predict``: restore a stack with a trained model and write an isotropic volume.

    The output's slice ``k`` sits at ``z0 + k * dz / subsample`` (the physical grid), its
    voxel size is ``(dz / subsample, dy, dx)`` in the metadata, and it is float32 unless
    ``keep_dtype`` (then rounded and clipped to the input's integer range). The output is
    written atomically: nothing is left at ``output`` if anything fails.

    Small stacks are restored in memory (:func:`isojax.predict_stack`) into an ImageJ TIFF
    and the restored array is returned. The stack is instead streamed slab by slab
    (:func:`isojax.predict_large.predict_large`) when the input or the output is an
    OME-Zarr (``.zarr``), or when the in-memory prediction would need more than
    ``memory_budget`` bytes (default: half the physical memory); the output is then an
    OME-Zarr or a BigTIFF, and a :class:`isojax.predict_large.LargePrediction` summary is
    returned.

    Whatever the format, an existing output is replaced only with ``overwrite``, and the
    output is never the stack, nor inside the model folder or an input ``.zarr``
    (:func:`isojax.io.check_outputs`, before any work).

    ``checkpoint`` picks the model folder's checkpoint: ``"best"`` (lowest validation loss,
    the default) or ``"last"`` (the last training step); see :func:`isojax.train.load_model`.
    """
    from isojax.io import check_outputs, check_writable
    from isojax.model_folder import load_model
    from isojax.predict.files import (
        check_tile_option,
        predict_stack_file,
        predict_volume_file,
        stream_prediction,
    )

    if memory_budget is not None and memory_budget < 1:
        raise IsojaxInputError(f"the memory budget must be positive, got {memory_budget} bytes")
    output = Path(output)
    check_outputs([output], inputs={"stack": stack_path, "model folder": model},
                  overwrite=overwrite, log=log)
    apply_fn, meta = load_model(model, which=checkpoint)
    check_tile_option(tile, meta)
    options = dict(model=model, fuse=fuse, batch_size=batch_size, tile=tile,
                   keep_dtype=keep_dtype, overwrite=overwrite, progress=progress, log=log)
    if stream_prediction(stack_path, output, float(meta["subsample"]), memory_budget):
        volume, g = geometry.open_stack(stack_path, spacing=spacing, subsample=subsample,
                                        log=log)
        return predict_volume_file(stack_path, volume, apply_fn, meta, geometry=g,
                                   output=output, memory_budget=memory_budget, **options)
    output = check_writable(output)
    stack, g = geometry.read_stack(stack_path, spacing=spacing, subsample=subsample, log=log)
    return predict_stack_file(stack_path, stack, apply_fn, meta, geometry=g, output=output,
                              **options)
