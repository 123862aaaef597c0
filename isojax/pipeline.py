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
from typing import TYPE_CHECKING, Any, Literal, TypedDict

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
    on_conflict: Literal["warn", "error"] = "warn",
    log: Log = _stderr,
) -> tuple[np.ndarray, tuple[float, float, float] | None, float, str]:
    """Read a 3D stack and work out its anisotropy factor (:func:`isojax.geometry.read_stack`).

    Kept for scripts: ``(stack, spacing, subsample, how)`` are the array ``(z, y, x)``, the
    fields ``spacing`` and ``subsample`` of its :class:`~isojax.geometry.StackGeometry` and
    where the factor came from (``geometry.how``).

    Args:
      path: a TIFF or OME-Zarr holding a 3D ``(z, y, x)`` stack.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres overriding the metadata, or None.
      subsample: the anisotropy factor overriding the voxel size's ``dz / dx``, or None.
      on_conflict: ``"warn"`` or ``"error"`` when ``subsample`` contradicts the voxel size.
      log: where warnings go.

    Returns:
      ``(stack, spacing, subsample, how)``: the stack as a NumPy array ``(z, y, x)``, the
      voxel size in micrometres or None, the factor, and where the factor came from.

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
    psf: str | os.PathLike | AxialPSF | Sequence[str | os.PathLike | AxialPSF] | None = None,
    bead: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    bead_spacing: Sequence[float] | None = None,
    theory: dict | None = None,
    subsample: float | None = None,
    spacing: Sequence[float] | None = None,
    steps: int = 2000,
    batch_size: int = 16,
    patch_size: int = 128,
    learning_rate: float = 4e-4,
    loss: Literal["mae", "mse", "laplace"] = "mae",
    interpolation: Literal["linear", "cubic"] = "linear",
    photons: float | None = None,
    read_noise: float = 0.0,
    first_filters: int | None = None,
    depth: int | None = None,
    seed: int = 0,
    checkpoint_every: int = 100,
    val_every: int = 100,
    resume: bool = False,
    progress: bool = True,
    log: Log = _stderr,
    calibrate_psf: bool = False,
    family: Literal["gaussian", "multi-gaussian", "free"] = "gaussian",
    init_fwhm: float | None = None,
    match_noise: bool = True,
    compute_dtype: Literal["float32", "bfloat16"] = "float32",
    log_every: float = 60.0,
    axes: str | None = None,
    channels: str | Sequence[int] | None = None,
    timepoints: str | None = None,
    arch: str = "care",
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

    A stack with a time or channel axis (an ImageJ hyperstack, OME-TIFF or OME-Zarr ``t c z
    y x``; ``axes`` names the axes of a file that does not) trains one network per channel
    into a multi-channel model folder (``channels.json`` and ``c<index>/``), each from the
    XY planes of the selected time points with its own PSF, noise and normalisation: see
    :func:`isojax.train.series.train_channels`. ``psf``, ``bead`` and the theory's
    ``wavelength_um`` then take one value per selected channel (or one for all).

    Args:
      stack_path: the anisotropic 3D stack ``(z, y, x)``, TIFF or OME-Zarr, or a
        hyperstack with time and/or channel axes.
      model: the model folder to create (or, with ``resume``, continue).
      psf: a PSF file ``(lateral, axial)`` (TIFF), or None; for a hyperstack, one per
        selected channel (a sequence) or one for all.
      bead: a bead stack to derive the PSF from, or None; for a hyperstack, as ``psf``.
      bead_spacing: the bead stack's voxel size ``(dz, dy, dx)`` in micrometres, or None
        (from its metadata).
      theory: options of :func:`isojax.psf.theoretical_axial_psf` for a theoretical PSF,
        or None; exactly one PSF source unless ``calibrate_psf``.
      subsample: the anisotropy factor, overriding the voxel size, or None.
      spacing: the stack's voxel size ``(dz, dy, dx)`` in micrometres overriding its
        metadata, or None.
      steps: training steps.
      batch_size: patches per step.
      patch_size: side of the square training patches in pixels.
      learning_rate: peak learning rate of the schedule.
      loss: ``"mae"``, ``"mse"`` or ``"laplace"`` (probabilistic output).
      interpolation: ``"linear"`` or ``"cubic"`` upsampling of the synthetic inputs.
      photons: photons per unit intensity of the synthetic noise, or None (estimated with
        ``match_noise``, else noise-free).
      read_noise: Gaussian read noise of the synthetic inputs, in normalised intensity.
      first_filters: filters of the U-Net's first level, or None (the ``arch``'s).
      depth: levels of the U-Net, or None (the ``arch``'s).
      seed: the random seed.
      checkpoint_every: steps between checkpoints.
      val_every: steps between validation losses.
      resume: continue the folder's training.
      progress: show progress.
      log: where messages go.
      calibrate_psf: learn the PSF jointly with the network.
      family: the PSF's parameterisation when calibrating (``"gaussian"``,
        ``"multi-gaussian"`` or ``"free"``).
      init_fwhm: initial axial FWHM in micrometres when calibrating without a PSF source,
        or None.
      match_noise: estimate the stack's noise and add it to the synthetic inputs.
      compute_dtype: ``"float32"`` or ``"bfloat16"`` (mixed precision).
      log_every: seconds between progress lines when stderr is not a terminal.
      axes: the stored axes of a hyperstack that does not name them (``"TZCYX"``), or None.
      channels: the channels to train (``"0,2"``), or None (all); hyperstacks only.
      timepoints: the time points to train on (slice syntax, ``"0:100"``), or None (a
        spread of at most 8, first and last included); hyperstacks only.
      arch: the network, a name of :data:`isojax.unet.ARCHS` (``"care"``: CSBDeep's CARE
        U-Net); ``first_filters`` and ``depth`` override its values.

    Returns:
      The training summary of :func:`isojax.train.train` (``step``, ``loss``,
      ``best_val_loss``, ``best_step``, ...); for a hyperstack, ``{"channels": {index:
      summary}, "timepoints": ..., "model": ...}``.

    Raises:
      IsojaxInputError: an unusable stack, PSF source or model folder (the message names
        the fix).
    """
    # over 100 lines with its docstring (which documents every option); the code is 30 lines
    import functools

    from isojax.model_folder import check_model_folder
    from isojax.predict.series import is_series
    from isojax.psf.sources import one_source_each, resolve_psf
    from isojax.synth import check_contrast
    from isojax.train._files import (
        _refuse_selection,
        _train_volume,
        _training_inputs,
        _training_psf,
    )
    from isojax.train.series import train_channels

    check_model_folder(model, inputs=_training_inputs(stack_path, psf, bead))
    volume = functools.partial(
        _train_volume, steps=steps, batch_size=batch_size, patch_size=patch_size,
        learning_rate=learning_rate, loss=loss, interpolation=interpolation, photons=photons,
        read_noise=read_noise, first_filters=first_filters, depth=depth, arch=arch, seed=seed,
        checkpoint_every=checkpoint_every, val_every=val_every, progress=progress,
        match_noise=match_noise, compute_dtype=compute_dtype, log_every=log_every)
    if is_series(stack_path, axes=axes):
        if calibrate_psf:
            raise IsojaxInputError(
                f"{stack_path}: --calibrate-psf takes a 3D stack; for a stack with time points "
                "or channels, give each channel's PSF (--psf, --bead or --wavelength per channel)")
        return train_channels(
            stack_path, model=model, train_volume=volume, steps=steps, psf=psf, bead=bead,
            resolve=functools.partial(resolve_psf, bead_spacing=bead_spacing), theory=theory,
            axes=axes, channels=channels, timepoints=timepoints, spacing=spacing,
            subsample=subsample, resume=resume, log=log)
    _refuse_selection(stack_path, channels=channels, timepoints=timepoints)
    psf, bead, theory = one_source_each(psf=psf, bead=bead, theory=theory)
    stack, g = geometry.read_stack(stack_path, spacing=spacing, subsample=subsample, log=log)
    check_contrast(stack, percentiles=(1.0, 99.8), name=stack_path)  # train's percentiles
    log(f"stack {stack_path}: shape {stack.shape} (z, y, x), subsample {g.subsample:.4g} "
        f"from {g.how}")
    axial, calibration = _training_psf(
        g.pixel_size, psf=psf, bead=bead, bead_spacing=bead_spacing, theory=theory,
        calibrate_psf=calibrate_psf, family=family, init_fwhm=init_fwhm, log=log,
    )
    return volume(stack, g, axial, model, resume=resume, log=log, calibrate_psf=calibrate_psf,
                  calibration=calibration)


class _CalibrateCommon(TypedDict):
    """The options of every branch of :func:`calibrate_file`."""

    output: str | os.PathLike
    subsample: float | None
    spacing: Sequence[float] | None
    steps: int
    overwrite: bool
    allow_unidentified: bool
    log: Log


class _CalibrateSeries(TypedDict):
    """The hyperstack options of :func:`calibrate_file`'s branches."""

    axes: str | None
    channels: str | Sequence[int] | None
    timepoints: str | None


def calibrate_file(
    stack_path: str | os.PathLike,
    *,
    output: str | os.PathLike,
    family: Literal["gaussian", "multi-gaussian", "free", "debye"] = "gaussian",
    init_fwhm: float | None = None,
    subsample: float | None = None,
    spacing: Sequence[float] | None = None,
    steps: int = 40,
    overwrite: bool = False,
    allow_unidentified: bool = False,
    log: Log = _stderr,
    axes: str | None = None,
    channels: str | Sequence[int] | None = None,
    timepoints: str | None = None,
    wavelength_um: float | None = None,
    ri: float | None = None,
    modality: Literal["widefield", "confocal", "lightsheet"] | None = None,
    na: float | None = None,
    sheet_fwhm_um: float | None = None,
    excitation_um: float | None = None,
    pinhole_au: float | None = None,
) -> dict:
    """``isojax calibrate``: learn the additional axial PSF from a stack and write it.

    Writes ``output`` (the 2D ``(lateral, axial)`` PSF, float32, pixel size in the
    metadata), ``output`` with ``.json`` (widths in pixels and micrometres, the objective's
    final value, the fit's trajectory, the width's 95% interval and the objective's
    profile over the width) and ``.png`` (observed and synthetic spectra, the PSF profile,
    the objective's profile with the interval). Nothing is written if anything fails;
    nothing is written unless all three outputs may be (:func:`isojax.io.check_outputs`).
    When the profile does not pin the width (its interval touches zero or is wide:
    :func:`isojax.calibrate.search.profile_interval`), nothing is written and the
    command fails, unless ``allow_unidentified``: a delta is never written as if it were
    a measurement.

    A stack with a time or channel axis (an ImageJ hyperstack, OME-TIFF or OME-Zarr;
    ``axes`` names the axes of a file that does not) is calibrated channel by channel,
    each channel from its volumes at ``timepoints`` (default: 3 spread over the series)
    pooled, into one file per channel, ``output`` with ``_c0``, ``_c1``, ... before its
    suffix: see :func:`isojax.calibrate.files.calibrate_series_file`. If any channel's
    width is not identifiable, no file of any channel is written.

    ``family="debye"`` fits the scalar Debye wave-optics model instead
    (:func:`isojax.calibrate.physical_files.calibrate_physical_file`, ``isojax calibrate
    --family debye``): the optics are given (``wavelength_um`` and ``ri`` required,
    ``modality``, and for a light sheet its detection ``na``), one physical parameter is
    fitted (the NA, or a light sheet's sheet FWHM), the stack needs its voxel size in
    micrometres (in the file or ``spacing``), a hyperstack is calibrated one channel at a
    time (``channels``), and the PSF file is the one ``isojax psf theory --model debye``
    writes at the fitted value (or, where that kernel is longer than the model computes,
    the fit's own kernel, and the report says so). Options that do not go together (an optics keyword with a
    shape family, ``init_fwhm`` with ``"debye"``, ``"debye"`` without ``wavelength_um``,
    ...) are refused before anything is read (:func:`isojax.calibrate.physical_files.
    calibrate_option_problem`).

    Args:
      stack_path: the anisotropic stack TIFF, or a hyperstack.
      output: the PSF TIFF to write (per channel: see above).
      family: ``"gaussian"``, ``"multi-gaussian"``, ``"free"`` or ``"debye"``.
      init_fwhm: shape families: initial axial FWHM in micrometres (default: one axial
        step).
      subsample: anisotropy factor; refused if it contradicts the voxel size by > 2%.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, overriding the metadata.
      steps: L-BFGS iterations.
      overwrite: replace existing outputs (never the stack).
      allow_unidentified: write the PSF even when the stack does not identify its width
        (the JSON then says ``"identifiable": false``).
      log: progress and warning callback (one line per call); default: standard error.
      axes: the axes of a file that does not name them (e.g. ``"TZCYX"``), or None.
      channels: the channels to calibrate (``"0,2"``), or None (all); hyperstacks only
        (``"debye"``: exactly one).
      timepoints: the time points to pool per channel (slice syntax, ``"0:100"``), or
        None (3 spread over the series, first and last included); hyperstacks only.
      wavelength_um: ``"debye"``: the emission wavelength in micrometres (required).
      ri: ``"debye"``: the immersion medium's refractive index (required).
      modality: ``"debye"``: ``"widefield"`` (None), ``"confocal"`` or ``"lightsheet"``.
      na: ``"debye"``: widefield, confocal: the NA the refinement starts from (None: the
        best cells of a search); lightsheet: the detection NA, fixed (required).
      sheet_fwhm_um: ``"debye"``, lightsheet: the sheet FWHM (µm) the refinement starts
        from, or None (a search).
      excitation_um: ``"debye"``, confocal: the excitation wavelength in micrometres
        (None: the emission wavelength).
      pinhole_au: ``"debye"``, confocal: the pinhole in Airy units (the model is a point
        pinhole; above 0 it warns), or None.

    Returns:
      The JSON report as a dict; for a hyperstack and a shape family, ``{channel:
      report}`` (``"debye"``: the one channel's report).

    Raises:
      IsojaxInputError: options that do not go together (one line naming the option and
        the fix, before anything is read); bad stack or options; an output exists and
        ``overwrite`` is False; an output is the stack; the width (of any channel) is not
        identifiable and ``allow_unidentified`` is False; ``channels`` or ``timepoints``
        for a 3D stack; ``"debye"``: a stack without a voxel size, several channels.
    """
    from isojax.calibrate import files as cal_files
    from isojax.calibrate import physical_files

    problem = physical_files.calibrate_option_problem(family=family, init_fwhm=init_fwhm, optics={
        "wavelength_um": wavelength_um, "ri": ri, "modality": modality, "na": na,
        "sheet_fwhm_um": sheet_fwhm_um, "excitation_um": excitation_um,
        "pinhole_au": pinhole_au})
    if problem:
        raise IsojaxInputError(problem)
    # the options the branches share, passed once (typed: mypy checks each branch's)
    common = _CalibrateCommon(output=output, subsample=subsample, spacing=spacing,
                              steps=steps, overwrite=overwrite,
                              allow_unidentified=allow_unidentified, log=log)
    series = _CalibrateSeries(axes=axes, channels=channels, timepoints=timepoints)
    if family == "debye":
        assert wavelength_um is not None, "calibrate_option_problem requires it"
        assert ri is not None, "calibrate_option_problem requires it"
        return physical_files.calibrate_physical_file(
            stack_path, wavelength_um=wavelength_um, ri=ri, modality=modality or "widefield",
            na=na, sheet_fwhm_um=sheet_fwhm_um, excitation_um=excitation_um,
            pinhole_au=pinhole_au, **common, **series)
    if cal_files.is_hyperstack(stack_path, axes=axes):
        return cal_files.calibrate_series_file(stack_path, family=family, init_fwhm=init_fwhm,
                                               **common, **series)
    cal_files.refuse_series_options(stack_path, **{"--channels": channels,
                                                   "--timepoints": timepoints})
    return cal_files.calibrate_stack_file(stack_path, family=family, init_fwhm=init_fwhm,
                                          **common)


def predict_file(
    stack_path: str | os.PathLike,
    *,
    model: str | os.PathLike,
    output: str | os.PathLike,
    subsample: float | None = None,
    spacing: Sequence[float] | None = None,
    fuse: Literal["mean", "geometric", "xz", "yz"] = "mean",
    batch_size: int | None = None,
    tile: int | None = None,
    keep_dtype: bool = False,
    memory_budget: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Log = _stderr,
    checkpoint: Literal["best", "last"] = "best",
    axes: str | None = None,
    channels: str | None = None,
    timepoints: str | None = None,
    resume: bool = False,
    uncertainty: str | os.PathLike | None = None,
    precision: Literal["float32", "bf16"] = "float32",
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

    In a multi-host job (:func:`isojax.distributed.initialize`), the processes share a
    hyperstack's time points (OME-Zarr output); a 3D stack is refused there.

    A stack with a time or channel axis (an ImageJ hyperstack, OME-TIFF or OME-Zarr ``t c z
    y x``; ``axes`` names the axes of a file that does not) is restored time point by time
    point and channel by channel into a ``TZCYX`` TIFF or a ``t c z y x`` OME-Zarr, and a
    :class:`isojax.predict.series.SeriesPrediction` is returned: see
    :func:`isojax.predict.series.predict_series_file` for ``channels``, ``timepoints``
    and ``resume``.

    With ``uncertainty``, a probabilistic model (``--loss laplace``) also writes its
    per-voxel Laplace scale there, fused over the views as the means are, in intensity
    units, in the output's format and voxel size (:mod:`isojax.predict.uncertainty`); the
    map follows the output's overwrite rules and is never left partial; in memory, streamed
    and for hyperstacks alike.

    Args:
      stack_path: the anisotropic 3D stack ``(z, y, x)``, TIFF or OME-Zarr.
      model: a model folder written by :func:`train_file`.
      output: the isotropic volume to write (``.tif`` or ``.zarr``).
      subsample: the anisotropy factor, overriding the voxel size, or None.
      spacing: the stack's voxel size ``(dz, dy, dx)`` in micrometres overriding its
        metadata, or None.
      fuse: how the XZ and YZ views are fused: ``"mean"``, ``"geometric"``, ``"xz"`` or
        ``"yz"``.
      batch_size: slices per network call, or None (from the memory budget).
      tile: tile size in pixels, or None (from the memory budget).
      keep_dtype: write the input's dtype instead of float32.
      memory_budget: bytes the in-memory prediction may use, or None (half the memory).
      overwrite: replace an existing ``output``.
      progress: show progress.
      log: where messages go.
      checkpoint: ``"best"`` or ``"last"``.
      axes: the axes of a file that does not name them (e.g. ``"TZCYX"``), or None.
      channels: the channels to restore (``"0,2"``), or None (all); hyperstacks only.
      timepoints: the time points to restore (slice syntax, ``"0:100"``), or None (all);
        hyperstacks only.
      resume: continue a killed hyperstack prediction into OME-Zarr from its partial output.
      uncertainty: where to write the uncertainty map (``.tif`` or ``.zarr`` as
        ``output``), or None.
      precision: the network's arithmetic: ``"float32"``, or ``"bf16"`` (bfloat16 from
        the float32 weights; model folders only, not with ``uncertainty``; see
        :func:`isojax.model_folder.load_model` and bench/RESULTS.md, "Network choice").

    Returns:
      The restored array (in memory), a :class:`isojax.predict_large.LargePrediction`
      summary (streamed), or a :class:`isojax.predict.series.SeriesPrediction` (a
      hyperstack).

    Raises:
      IsojaxInputError: an unusable stack, model folder or output path, a memory budget
        that is not positive, ``uncertainty`` with a model that has no scale or in another
        format than ``output``, or a 3D stack in a multi-host job (only time-lapses are
        spread over processes).
    """
    # over 100 lines with its docstring (which documents every option); the code is 50 lines
    from isojax import distributed
    from isojax.io import check_outputs, check_writable
    from isojax.model_folder import channel_models, describe_channels, is_multichannel
    from isojax.predict.files import (
        check_tile_option,
        load_predictor,
        predict_stack_file,
        predict_volume_file,
        stream_prediction,
    )
    from isojax.predict.series import is_series, predict_series_file
    from isojax.predict.uncertainty import check_uncertainty_output

    if memory_budget is not None and memory_budget < 1:
        raise IsojaxInputError(f"the memory budget must be positive, got {memory_budget} bytes")
    unc = None if uncertainty is None else Path(uncertainty)
    if unc is not None:
        check_uncertainty_output(Path(output), unc)
        if precision != "float32":
            raise IsojaxInputError("--uncertainty is predicted in float32: drop --precision")
    if is_series(stack_path, axes=axes):
        return predict_series_file(
            stack_path, model=model, output=output, subsample=subsample, spacing=spacing,
            axes=axes, channels=channels, timepoints=timepoints, resume=resume, fuse=fuse,
            batch_size=batch_size, tile=tile, keep_dtype=keep_dtype,
            memory_budget=memory_budget, overwrite=overwrite, progress=progress, log=log,
            checkpoint=checkpoint, uncertainty=unc, precision=precision)
    for flag, value in (("--channels", channels), ("--timepoints", timepoints),
                        ("--resume", resume or None),
                        ("a multi-host job", None if distributed.process_count() == 1 else 1)):
        if value is not None and os.path.exists(stack_path):
            raise IsojaxInputError(
                f"{stack_path}: {flag} is for stacks with a time or channel axis, and this one "
                "has neither; if it has one, name its axes with --axes (e.g. --axes TZYX)")
    output = Path(output)
    check_outputs([output] if unc is None else [output, unc],
                  inputs={"stack": stack_path, "model folder": model},
                  overwrite=overwrite, log=log)
    if is_multichannel(model):  # one model per channel; this stack has no channel axis
        raise IsojaxInputError(
            f"{model} holds one model per channel ({describe_channels(model)}) and {stack_path} "
            f"has no channel axis: predict it with one channel's folder (--model "
            f"{channel_models(model)[0][1]}), or name its axes with --axes (e.g. CZYX) if it "
            "has channels, and select them with --channels")
    apply_fn, meta = load_predictor(model, which=checkpoint, uncertainty=unc is not None,
                                    precision=precision)
    check_tile_option(tile, meta)
    options: dict[str, Any] = dict(model=model, fuse=fuse, batch_size=batch_size, tile=tile,
                   keep_dtype=keep_dtype, overwrite=overwrite, progress=progress, log=log)
    if stream_prediction(stack_path, output, float(meta["subsample"]), memory_budget):
        volume, g = geometry.open_stack(stack_path, spacing=spacing, subsample=subsample,
                                        log=log)
        return predict_volume_file(stack_path, volume, apply_fn, meta, geometry=g,
                                   output=output, memory_budget=memory_budget,
                                   uncertainty=unc, **options)
    output = check_writable(output)
    stack, g = geometry.read_stack(stack_path, spacing=spacing, subsample=subsample, log=log)
    return predict_stack_file(stack_path, stack, apply_fn, meta, geometry=g, output=output,
                              uncertainty=unc, **options)
