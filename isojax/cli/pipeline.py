"""``isojax train|predict|calibrate|demo``: one function per command, and their options
(the training options in four named groups). Each command calls one :mod:`isojax.pipeline`
function.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from isojax.archs import ARCHS  # plain data: importing isojax.unet would load Flax
from isojax.cli.options import (
    EXIT_OK,
    THEORY_MODEL_NAMES,
    _add_optics_option,
    _add_stack_geometry,
    _nonnegative_float,
    _positive_float,
    _positive_int,
)
from isojax.errors import IsojaxInputError

__all__: list[str] = []  # private to isojax.cli

#: The shape families of ``isojax calibrate`` and ``train --calibrate-psf``: the names of
#: :data:`isojax.calibrate.FAMILIES` (plain data here: importing isojax.calibrate loads JAX).
_SHAPE_FAMILIES = ("gaussian", "multi-gaussian", "free")


def _theory(args: argparse.Namespace) -> dict | None:
    """The theory options given, or None; :func:`isojax.pipeline.resolve_psf` counts the PSF
    sources first and then says what an incomplete theory lacks."""
    given = {
        "na": args.na,
        "wavelength_um": args.wavelength,
        "ri": args.ri,
        "modality": args.modality,
        "excitation_um": args.excitation,
        "sheet_fwhm_um": args.sheet_fwhm,
        "model": args.psf_model,
    }
    if all(v is None for v in given.values()):
        return None
    return {**given, "pinhole_au": args.pinhole}


def _join_job(args: argparse.Namespace) -> dict[str, Any]:
    """Join a multi-host job when its options or ``JAX_COORDINATOR_ADDRESS`` say so.

    Returns:
      The keyword arguments that silence the log on every process but process 0.
    """
    import os

    from isojax import distributed

    multihost = (args.distributed or args.coordinator or args.num_processes is not None
                 or args.process_id is not None or os.environ.get(distributed.ENV_ADDRESS))
    if multihost:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               host_timeout=args.host_timeout)
    return {} if distributed.is_main_process() else {"log": lambda msg: None}


def _cmd_train(args: argparse.Namespace) -> int:
    from isojax.pipeline import train_file
    from isojax.train import TrainingDiverged

    quiet = _join_job(args)
    try:
        train_file(
            args.stack,
            model=args.model,
            psf=args.psf,
            bead=args.bead,
            bead_spacing=args.bead_spacing,
            theory=_theory(args),
            subsample=args.subsample,
            spacing=args.spacing,
            steps=args.steps,
            batch_size=args.batch_size,
            patch_size=args.patch_size,
            learning_rate=args.learning_rate,
            loss=args.loss,
            interpolation=args.interpolation,
            photons=args.photons,
            read_noise=args.read_noise,
            first_filters=args.first_filters,
            arch=args.arch,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            val_every=args.checkpoint_every,
            resume=args.resume,
            progress=not args.quiet,
            calibrate_psf=args.calibrate_psf,
            family=args.family,
            init_fwhm=args.init_fwhm,
            match_noise=not args.no_match_noise,
            compute_dtype=args.compute_dtype,
            log_every=args.log_every,
            axes=args.axes,
            channels=args.channels,
            timepoints=args.timepoints,
            **quiet,
        )
    except TrainingDiverged as exc:
        raise IsojaxInputError(str(exc)) from None
    return EXIT_OK


#: The optics options of ``isojax calibrate --family debye``: the keyword of
#: :func:`isojax.pipeline.calibrate_file` -> the attribute of its flag.
_CALIBRATE_OPTICS = {"wavelength_um": "wavelength", "ri": "ri", "modality": "modality",
                     "na": "na", "sheet_fwhm_um": "sheet_fwhm", "excitation_um": "excitation",
                     "pinhole_au": "pinhole"}


def _calibrate_optics(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, name) for key, name in _CALIBRATE_OPTICS.items()}


def _check_calibrate(args: argparse.Namespace) -> str | None:
    """The calibrate options that are valid one by one but not together (a usage error):
    the rules of :func:`isojax.pipeline.calibrate_file`, in the flags' names."""
    from isojax.calibrate.physical_files import calibrate_option_problem

    return calibrate_option_problem(family=args.family, init_fwhm=args.init_fwhm,
                                    optics=_calibrate_optics(args), style="cli")


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from isojax.pipeline import calibrate_file

    calibrate_file(
        args.stack,
        output=args.output,
        family=args.family,
        init_fwhm=args.init_fwhm,
        subsample=args.subsample,
        spacing=args.spacing,
        steps=args.steps,
        overwrite=args.overwrite,
        allow_unidentified=args.allow_unidentified,
        axes=args.axes,
        channels=args.channels,
        timepoints=args.timepoints,
        **_calibrate_optics(args),
    )
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace) -> int:
    from isojax.pipeline import predict_file

    quiet = _join_job(args)
    predict_file(
        args.stack,
        model=args.model,
        output=args.output,
        subsample=args.subsample,
        spacing=args.spacing,
        fuse=args.fuse,
        batch_size=args.batch_size,
        tile=args.tile,
        keep_dtype=args.keep_dtype,
        memory_budget=None if args.memory_budget is None else int(args.memory_budget * 1e9),
        overwrite=args.overwrite,
        progress=not args.quiet and not quiet,  # process 0 only
        checkpoint=args.checkpoint,
        axes=args.axes, channels=args.channels, timepoints=args.timepoints, resume=args.resume,
        uncertainty=args.uncertainty, precision=args.precision, **quiet,
    )
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.channels == 1 and args.timepoints == 1:
        from isojax.pipeline import demo

        demo(Path("isojax-demo") if args.out is None else args.out, seed=args.seed, steps=args.steps, overwrite=args.overwrite,
             progress=not args.quiet)
        return EXIT_OK
    from isojax.demo_series import demo_series

    out = Path("isojax-demo-series") if args.out is None else args.out
    demo_series(out, channels=args.channels, timepoints=args.timepoints, seed=args.seed,
                steps=args.steps, overwrite=args.overwrite, progress=not args.quiet)
    return EXIT_OK


def _add_pipeline_commands(commands: argparse._SubParsersAction) -> None:
    _add_train_command(commands)
    _add_predict_command(commands)
    _add_calibrate_command(commands)
    _add_demo_command(commands)


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    t = commands.add_parser(
        "train", help="train a restoration model on a stack",
        description="Train a network that restores the axial resolution of STACK, from pairs "
        "synthesised out of its own XY planes with the axial PSF. A time-lapse or a stack with "
        "channels trains one network per channel, each with its own PSF (give --psf, --bead "
        "or --wavelength once per channel, in channel order), from the XY planes of the "
        "selected time points; the one model folder restores every channel.")
    t.add_argument("stack", type=Path, metavar="STACK.tif",
                   help="anisotropic stack (z, y, x), or a hyperstack with time and/or channel "
                   "axes (ImageJ, OME-TIFF, OME-Zarr)")
    t.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="model folder to write (refused if it holds a model, unless --resume)")
    _add_psf_source_options(t)
    _add_stack_geometry(t)
    t.add_argument("--axes", metavar="TZCYX", help="the stack's axes, one letter per axis from "
                   "T, C, Z, Y, X, for files that do not name them (default: from the metadata)")
    t.add_argument("--channels", metavar="0,2",
                   help="channels to train, one network each (default: all)")
    t.add_argument("--timepoints", metavar="START:STOP[:STEP]",
                   help="time points whose XY planes are trained on, Python slice syntax "
                   "(default: at most 8 spread through the series, first and last included)")
    _add_training_options(t)
    _add_calibration_options(t)
    _add_multihost_options(t)
    t.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    t.add_argument("--log-every", type=_positive_float, default=60.0, metavar="S",
                   help="when stderr is not a terminal (log file, SLURM, nohup): seconds "
                   "between progress lines, also written at each validation")
    t.set_defaults(func=_cmd_train)


def _add_psf_source_options(t: argparse.ArgumentParser) -> None:
    """``isojax train``'s PSF source: a file, a bead stack or the theory options."""
    src = t.add_argument_group(
        "PSF (one of: a file, a bead stack, or a theoretical model; with channels, --psf, "
        "--bead or --wavelength once per channel in channel order, or once for all)")
    src.add_argument("--psf", type=Path, metavar="AXIAL.tif", action="append",
                     help="2D (lateral, axial) axial PSF TIFF from `isojax psf axial|theory`; "
                     "repeat once per channel")
    src.add_argument("--bead", type=Path, metavar="BEAD.tif", action="append",
                     help="3D bead stack (z, y, x) to derive the PSF from; repeat once per "
                     "channel")
    src.add_argument("--bead-spacing", type=_positive_float, nargs=3, metavar=("Z", "Y", "X"),
                     help="bead voxel size in micrometres (default: from its TIFF metadata)")
    _add_optics_option(src, "--na")
    _add_optics_option(src, "--wavelength", action="append",
                       help="emission wavelength in micrometres; repeat once per channel")
    for flag in ("--ri", "--modality", "--excitation", "--pinhole", "--sheet-fwhm"):
        _add_optics_option(src, flag)
    src.add_argument("--psf-model", choices=THEORY_MODEL_NAMES,
                     help="the theoretical model: gaussian (Gaussian approximation) or debye "
                     "(scalar Debye wave optics), as `isojax psf theory --model` "
                     "(default: gaussian)")


def _add_training_options(t: argparse.ArgumentParser) -> None:
    """``isojax train``'s optimisation, synthesis and network options, and --resume."""
    t.add_argument("--steps", type=_positive_int, required=True,
                   help="optimiser steps in all (with --resume: the new total)")
    t.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                   help="patches per optimiser step")
    t.add_argument("--patch-size", type=_positive_int, default=128, metavar="PX", help="patch side in pixels (a multiple of 4, the network's divisor)")
    t.add_argument("--learning-rate", type=_positive_float, default=4e-4, metavar="LR",
                   help="peak Adam learning rate (linear warm-up, then cosine decay)")
    t.add_argument("--loss", choices=("mae", "mse", "laplace"), default="mae",
                   help="training loss; laplace also predicts a per-pixel scale")
    t.add_argument("--interpolation", choices=("linear", "cubic"), default="linear",
                   help="how axial samples are brought back to the fine grid (training and "
                   "prediction)")
    t.add_argument("--photons", type=_positive_float, default=None, metavar="N",
                   help="simulated photons per unit of normalised intensity (shot noise; "
                   "default: estimated from the stack)")
    t.add_argument("--read-noise", type=_nonnegative_float, default=0.0, metavar="SD",
                   help="simulated read noise (Gaussian sd) in units of normalised intensity "
                   "(default: estimated from the stack)")
    t.add_argument("--no-match-noise", action="store_true",
                   help="do not add the stack's estimated noise to the synthetic inputs")
    t.add_argument("--arch", choices=tuple(ARCHS), default="care",
                   help="the network: care (CSBDeep's CARE U-Net: 5x5 kernels, depth 2, 32 "
                   "filters), light (3x3 kernels, depth 3, 16 filters), light24 (the same, 24 "
                   "filters); see bench/RESULTS.md, \"Network choice\"")
    t.add_argument("--first-filters", type=_positive_int, default=None, metavar="N",
                   help="U-Net filters at the first level (default: the --arch's; CARE uses 32)")
    t.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="network arithmetic; bfloat16: mixed precision (bfloat16 network, "
                   "float32 weights; for GPUs and TPUs)")
    t.add_argument("--seed", type=int, default=0, metavar="N",
                   help="random seed of the weights and the training pairs")
    t.add_argument("--checkpoint-every", type=_positive_int, default=100, metavar="STEPS",
                   help="steps between checkpoints and validations")
    t.add_argument("--resume", action="store_true", help="continue the model folder's training from its last checkpoint (same "
                   "stack, PSF and settings; a larger --steps extends it)")


def _add_calibration_options(t: argparse.ArgumentParser) -> None:
    """``isojax train --calibrate-psf`` and its options."""
    cal = t.add_argument_group("PSF self-calibration")
    cal.add_argument("--calibrate-psf", action="store_true",
                     help="learn the PSF from the stack jointly with the network; a PSF source "
                     "is then only the initial guess and may be omitted")
    cal.add_argument("--family", choices=_SHAPE_FAMILIES,
                     default="gaussian", help="PSF parameterisation")
    cal.add_argument("--init-fwhm", type=_positive_float, metavar="UM",
                     help="initial axial FWHM in micrometres without a PSF source "
                     "(default: one axial step)")


def _add_multihost_options(t: argparse.ArgumentParser, *, title: str = "multi-host training "
                           "(every host runs the same command; see isojax.distributed)") -> None:
    """The multi-host options of ``isojax train`` and ``predict`` (:mod:`isojax.distributed`)."""
    mh = t.add_argument_group(title)
    mh.add_argument("--distributed", action="store_true",
                    help="join a multi-host job described by JAX_COORDINATOR_ADDRESS, "
                    "JAX_NUM_PROCESSES, JAX_PROCESS_ID or detected by JAX (SLURM, Open MPI...) "
                    "(default: one host, unless those variables are set)")
    mh.add_argument("--coordinator", metavar="HOST:PORT",
                    help="address of process 0 (default: $JAX_COORDINATOR_ADDRESS)")
    mh.add_argument("--num-processes", type=_positive_int, metavar="N",
                    help="number of hosts in the job (default: $JAX_NUM_PROCESSES)")
    mh.add_argument("--process-id", type=int, metavar="I", help="this host's rank, 0..N-1 (default: $JAX_PROCESS_ID)")
    mh.add_argument("--host-timeout", type=_positive_int, default=60, metavar="S",
                    help="seconds without a heartbeat before a host counts as dead and the "
                    "others stop")


def _add_predict_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "predict", help="restore a stack with a trained model",
        description="Upsample STACK along Z on the physical grid, restore its XZ and YZ slices "
        "with the model, fuse the views and write an isotropic float32 TIFF or OME-Zarr. "
        "OME-Zarr inputs or outputs, and stacks larger than the memory budget, are streamed "
        "slab by slab (an uncompressed TIFF input is memory-mapped).")
    p.add_argument("stack", type=Path, metavar="STACK.tif|STACK.zarr",
                   help="anisotropic stack (z, y, x): TIFF or OME-Zarr 0.5")
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="model folder written by `isojax train`, or a package of `isojax export`")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.tif|OUT.zarr",
                   help="the isotropic stack to write: TIFF, or OME-Zarr for a .zarr name")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="the model's checkpoint to predict with: best (lowest validation loss, "
                   "the default) or last (the last training step); no other is used if it is "
                   "missing or damaged")
    p.add_argument("--precision", choices=("float32", "bf16"), default="float32",
                   help="the network's arithmetic: float32, or bf16 (bfloat16 from the float32 "
                   "weights; within 0.01 dB of float32 where measured, faster only where the "
                   "hardware computes bfloat16 natively; model folders only)")
    _add_stack_geometry(p)
    p.add_argument("--fuse", choices=("mean", "geometric", "xz", "yz"), default="mean",
                   help="how the XZ and YZ views are combined (geometric: their geometric mean; "
                   "xz, yz: one view only)")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="slices per network call (default: from the memory budget)")
    p.add_argument("--tile", type=_positive_int, default=None, metavar="PX",
                   help="tile slices larger than this (pixels), overlapping by twice the "
                   "network's reach (default: whole slices, or tiles chosen to fit the memory "
                   "budget when they do not)")
    p.add_argument("--keep-dtype", action="store_true",
                   help="write the input's dtype (rounded, clipped) instead of float32")
    p.add_argument("--memory-budget", type=_positive_float, default=None, metavar="GB",
                   help="host memory for prediction in GB (10^9 bytes); a stack that needs "
                   "more in memory is streamed slab by slab (default: half the RAM to decide, "
                   "1 GB per slab when streaming)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (TIFF, BigTIFF or OME-Zarr), once the new "
                   "one is complete; never the input stack or the model folder")
    p.add_argument("--axes", metavar="TZCYX", help="the stack's axes, one letter per axis from "
                   "T, C, Z, Y, X, for files that do not name them (default: from the metadata)")
    p.add_argument("--channels", metavar="0,2", help="channels to restore (default: all)")
    p.add_argument("--timepoints", metavar="START:STOP[:STEP]",
                   help="time points to restore, Python slice syntax (default: all)")
    p.add_argument("--resume", action="store_true", help="continue a killed time-lapse "
                   "prediction into OME-Zarr from its first unfinished time point")
    p.add_argument("--uncertainty", type=Path, default=None, metavar="UNC.tif|UNC.zarr",
                   help="also write the per-voxel Laplace scale (the expected absolute error, "
                   "in intensity units) of a model trained with --loss laplace, fused over "
                   "the views as the restoration is; same format, shape and voxel size as "
                   "the output (in-memory stacks and time-lapses)")
    _add_multihost_options(p, title="multi-host prediction of a time-lapse (every host runs "
                           "the same command; process p restores time points p, p+N, ... of "
                           "one shared .zarr output)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)


def _add_calibrate_command(commands: argparse._SubParsersAction) -> None:
    c = commands.add_parser(
        "calibrate", help="learn the axial PSF from the stack itself",
        description="Self-calibrate the additional axial PSF from STACK: degraded XY lines "
        "must match the spectrum of the observed Z lines. Writes the PSF TIFF, a JSON report "
        "and a PNG of the spectra and the profile. A stack with several channels (an ImageJ "
        "hyperstack, OME-TIFF or OME-Zarr) is calibrated channel by channel, each from a few "
        "of its time points pooled, into one PSF file per channel: -o psf.tif writes "
        "psf_c0.tif, psf_c1.tif, ... (the channel's index in STACK), each with its .json and "
        ".png. If any channel's width is not identifiable, no file is written. --family "
        "debye fits the scalar Debye wave-optics model instead, whose free parameter is "
        "physical: the NA (or a light sheet's FWHM), the other optics given; it calibrates "
        "one channel at a time.",
        check=_check_calibrate)
    c.add_argument("stack", type=Path, metavar="STACK.tif",
                   help="anisotropic stack TIFF (z, y, x), or a hyperstack with time and/or "
                   "channel axes (TIFF or OME-Zarr)")
    c.add_argument("-o", "--output", type=Path, required=True, metavar="AXIAL.tif",
                   help="the 2D PSF TIFF to write; a .json report and a .png are written "
                   "beside it; with several channels one per channel, AXIAL_c0.tif, ...")
    c.add_argument("--family", choices=(*_SHAPE_FAMILIES, "debye"), default="gaussian",
                   help="PSF parameterisation: one Gaussian, a sum of Gaussians, a free "
                   "non-negative profile, or debye: the Debye wave-optics model of the "
                   "optics below, its NA (or sheet FWHM) fitted")
    c.add_argument("--init-fwhm", type=_positive_float, metavar="UM",
                   help="initial axial FWHM in micrometres, shape families only (default: "
                   "one axial step)")
    _add_calibrate_optics(c)
    _add_stack_geometry(c)
    c.add_argument("--steps", type=_positive_int, default=40, metavar="N",
                   help="L-BFGS iterations of the fit")
    c.add_argument("--overwrite", action="store_true",
                   help="replace an existing AXIAL.tif and its .json and .png (never the stack)")
    c.add_argument("--allow-unidentified", action="store_true",
                   help="write the best fit even when the stack does not identify the width "
                   "(by default calibration then fails and writes nothing, for any channel)")
    c.add_argument("--axes", metavar="TZCYX", help="the stack's axes, one letter per axis from "
                   "T, C, Z, Y, X, for files that do not name them (default: from the metadata)")
    c.add_argument("--channels", metavar="0,2", help="channels to calibrate (default: all)")
    c.add_argument("--timepoints", metavar="START:STOP[:STEP]",
                   help="time points pooled for each channel's fit, Python slice syntax "
                   "(default: 3 spread over the series, first and last included)")
    c.set_defaults(func=_cmd_calibrate)


def _add_calibrate_optics(c: argparse.ArgumentParser) -> None:
    """``isojax calibrate --family debye``'s optics: the flags of ``isojax psf theory``."""
    opt = c.add_argument_group(
        "optics of --family debye (as `isojax psf theory`; the pixel size is the stack's)")
    _add_optics_option(opt, "--na", help="widefield, confocal: the NA the fit starts from "
                       "(default: the best of a search over 0.15 to 0.97 times --ri); "
                       "lightsheet: the detection NA, fixed (required there)")
    _add_optics_option(opt, "--wavelength", help="emission wavelength in micrometres "
                       "(no default: --family debye needs it)")
    _add_optics_option(opt, "--ri", help="refractive index of the immersion medium "
                       "(no default: --family debye needs it)")
    _add_optics_option(opt, "--modality", help="the microscope's PSF model; lightsheet fits "
                       "the sheet FWHM, the others the NA (default: widefield)")
    _add_optics_option(opt, "--excitation")
    _add_optics_option(opt, "--pinhole", default=None,
                       help="confocal pinhole diameter in Airy units: the model is a point "
                       "pinhole, so a value above 0 only warns (default: none, a point)")
    _add_optics_option(opt, "--sheet-fwhm", help="lightsheet: the sheet FWHM (along z) in "
                       "micrometres the fit starts from (default: the best of a search from "
                       "two pixels to five axial steps)")


def _add_demo_command(commands: argparse._SubParsersAction) -> None:
    d = commands.add_parser(
        "demo", help="simulate, derive the PSF, train, predict and score",
        description="The whole pipeline on a simulated stack with known ground truth; prints "
        "PSNR and SSIM of linear interpolation and isojax and draws orthogonal views.")
    d.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder for the simulated stack, the model, the restoration and the "
                   "pictures (default isojax-demo, or isojax-demo-series with --channels or "
                   "--timepoints)")
    d.add_argument("--channels", type=_positive_int, default=1, metavar="N",
                   help="simulate a time-lapse with N channels (1 to 4), each with its own "
                   "specimen, bead and axial PSF; trains one network per channel")
    d.add_argument("--timepoints", type=_positive_int, default=1, metavar="N",
                   help="simulate N time points with drift and bleaching; the output is a "
                   "TZCYX hyperstack, scored per time point and channel")
    d.add_argument("--steps", type=_positive_int, default=300, metavar="N", help="training steps")
    d.add_argument("--seed", type=int, default=0, metavar="N", help="random seed of the simulation and training")
    d.add_argument("--overwrite", action="store_true",
                   help="write into an existing, non-empty DIR, replacing the demo's own files "
                   "(stack.tif, model/, isojax.tif, ...); other files are kept")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)
