"""The ``isojax`` command line: argument parsing, then one library call per command.

Commands are argparse subparsers grouped by topic (``isojax psf axial|theory|check``); later
topics (train, predict, demo, calibrate) are added with :func:`_add_psf_commands`-style
functions in :func:`build_parser`. Each command is a function ``(args) -> int``. Bad input ends
with one line ``isojax: error: <reason>`` on stderr and exit status 1; anything else is a bug
in isojax: its traceback, one ``isojax: internal error`` line and exit status 70 (see
:func:`main`). SIGINT and SIGTERM end with one line ``isojax: interrupted (SIG...)`` and exit
status 130 or 143, after partial outputs are removed (and, in training, a checkpoint saved).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from isojax.errors import WARNING_PREFIX, IsojaxInputError, log_to_stderr
from isojax.export.command import add_export_command

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_INPUT = 1  # bad input: missing file, no voxel size, PSF refused, ...
EXIT_USAGE = 2  # bad command line
EXIT_SOFTWARE = 70  # an internal error, a bug in isojax (EX_SOFTWARE of sysexits.h)


class _UsageError(Exception):
    """argparse rejected the command line."""


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (or says it is required).

    A help text that already says ``default`` is left as it is (it explains a default that
    is computed, e.g. "default: from the voxel size in the file"); a switch says
    ``default: off``, an option without a value ``default: none``.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.help is argparse.SUPPRESS or action.default is argparse.SUPPRESS
                or "default" in text or not action.option_strings):
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is False:
            return f"{text} (default: off)"
        if action.default is None:
            return f"{text} (default: none)"
        value = action.default
        if isinstance(value, (list, tuple)):
            value = " ".join(str(v) for v in value)
        return f"{text} (default: {str(value).replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports errors as one line instead of exiting."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _png_path(output: Path) -> Path:
    return output.with_suffix(".png")


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for item in caught:
        print(f"{WARNING_PREFIX}{item.message}", file=sys.stderr)


def _check_psf_outputs(args: argparse.Namespace, inputs: dict) -> Path:
    """Refuse, before any work, a PSF TIFF or PNG that exists (without --overwrite) or that
    is an input."""
    from isojax.io import check_outputs, check_writable

    output = check_writable(args.output)
    check_writable(_png_path(output))
    check_outputs([output, _png_path(output)], inputs=inputs, overwrite=args.overwrite,
                  log=log_to_stderr)
    return output


def _write_psf_outputs(output: Path, psf2d, pixel_size: float, title: str, *,
                       overwrite: bool = False) -> None:
    """Write the 2D PSF TIFF and its PNG; if the PNG fails, remove the TIFF too."""
    from isojax.io import write_tiff
    from isojax.plot import save_psf_png

    png = _png_path(output)
    write_tiff(output, psf2d, pixel_size=pixel_size, overwrite=overwrite)
    try:
        save_psf_png(png, psf2d, pixel_size=pixel_size, title=title, overwrite=overwrite)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    print(f"wrote {output} (float32, pixel size {pixel_size:g} um) and {png}")


def _fmt(values, digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}g}" for v in values)


# ---------------------------------------------------------------------------- psf commands


def _cmd_psf_axial(args: argparse.Namespace) -> int:
    from isojax.io import read_tiff, require_spacing
    from isojax.psf import axial_psf, check_psf, process_bead

    output = _check_psf_outputs(args, {"bead stack": args.bead})
    stack, spacing, source = read_tiff(args.bead, spacing=args.spacing)
    if stack.ndim != 3:
        raise IsojaxInputError(
            f"{args.bead}: psf axial needs a 3D bead stack (z, y, x), got shape {stack.shape}; "
            "for a 2D PSF use `isojax psf check`")
    spacing = require_spacing(spacing, path=args.bead)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        psf3d, spacing, bead = process_bead(stack, spacing)
        psf2d, info = axial_psf(psf3d, spacing, args.pixel_size, planes=args.planes,
                                iterations=args.iterations)
        psf2d, report = check_psf(psf2d, pixel_size=args.pixel_size)
    _print_warnings(caught)
    print(f"bead {args.bead}: shape {stack.shape}, voxel size {_fmt(spacing)} um (z, y, x) "
          f"from {source}")
    print(f"  background {bead['background']:.4g}, noise {bead['noise_sd']:.3g}, peak SNR "
          f"{bead['peak_snr']:.3g}; centre at {_fmt(bead['centre_voxels_zyx'], 4)} voxels")
    print(f"  3D PSF cropped to {bead['shape']}, FWHM {_fmt(bead['fwhm_um_zyx'])} um (z, y, x)")
    print(f"axial PSF at {args.pixel_size:g} um: planes {'+'.join(info['planes'])}, "
          f"resampling factors {_fmt(info['resampling_factors_zyx'])} (z, y, x), "
          f"{info['method']} {info['iterations']} iterations")
    print(f"  before: FWHM lateral {info['fwhm_input_um'][0]:.3g} um, axial "
          f"{info['fwhm_input_um'][1]:.3g} um; after: lateral {info['fwhm_um'][0]:.3g} um, "
          f"axial {info['fwhm_um'][1]:.3g} um; shape {report.shape} (lateral, axial)")
    _write_psf_outputs(output, psf2d, args.pixel_size, f"Additional axial PSF from {args.bead}",
                       overwrite=args.overwrite)
    return EXIT_OK


def _cmd_psf_theory(args: argparse.Namespace) -> int:
    from isojax.psf import check_psf, theoretical_axial_psf

    output = _check_psf_outputs(args, {})
    psf2d, info = theoretical_axial_psf(
        na=args.na, wavelength_um=args.wavelength, ri=args.ri, modality=args.modality,
        pixel_size=args.pixel_size, excitation_um=args.excitation, pinhole_au=args.pinhole,
        sheet_fwhm_um=args.sheet_fwhm)
    psf2d, report = check_psf(psf2d, pixel_size=args.pixel_size)
    print(f"{args.modality} PSF, NA {args.na:g}, emission {args.wavelength:g} um, n {args.ri:g} "
          "(Gaussian approximation, Zhang et al., Appl. Opt. 2007)")
    print(f"  sigma lateral {info['sigma_lateral_um']:.4g} um, axial {info['sigma_axial_um']:.4g}"
          f" um (FWHM {info['fwhm_lateral_um']:.3g} / {info['fwhm_axial_um']:.3g} um)")
    print(f"  additional axial PSF: Gaussian of sigma sqrt(sz^2 - sxy^2) = "
          f"{info['sigma_additional_um']:.4g} um = {info['sigma_additional_px']:.3g} px at "
          f"{args.pixel_size:g} um, shape {report.shape} (lateral, axial)")
    _write_psf_outputs(output, psf2d, args.pixel_size, f"Additional axial PSF ({args.modality})",
                       overwrite=args.overwrite)
    return EXIT_OK


def _cmd_psf_check(args: argparse.Namespace) -> int:
    from isojax.io import read_tiff
    from isojax.psf import check_psf

    psf, spacing, source = read_tiff(args.psf)
    pixel = args.psf_pixel_size
    if pixel is None and spacing is not None and psf.ndim == 2:
        dy, dx = spacing
        if abs(dy / dx - 1) > 0.01:
            raise IsojaxInputError(
                f"{args.psf}: its pixels are not square ({dy:g} x {dx:g} um); a PSF must be "
                "sampled at the image's lateral pixel size on both axes")
        pixel = dx
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = check_psf(psf, pixel_size=pixel, image_pixel_size=args.pixel_size)
    print(f"{args.psf} (pixel size from {source if pixel is not None else 'nowhere'}):")
    print(report)
    _print_warnings(caught)
    return EXIT_OK


def _add_psf_commands(commands: argparse._SubParsersAction) -> None:
    psf = commands.add_parser("psf", help="derive, model and check PSFs",
                              description="Derive, model and check PSFs.")
    psf_commands = psf.add_subparsers(dest="psf_command", metavar="COMMAND", required=True,
                                      parser_class=_Parser)

    axial = psf_commands.add_parser(
        "axial", help="the 2D additional axial PSF from a measured bead stack",
        description="Derive the 2D (lateral, axial) additional axial PSF from a 3D bead stack.")
    axial.add_argument("bead", type=Path, metavar="BEAD.tif", help="3D bead stack (z, y, x)")
    axial.add_argument("--pixel-size", type=_positive_float, required=True, metavar="UM",
                       help="the image's lateral pixel size in micrometres")
    axial.add_argument("-o", "--output", type=Path, required=True, metavar="AXIAL.tif",
                       help="the 2D PSF TIFF to write (float32, with its pixel size; a PNG of "
                       "its profiles is written beside it)")
    axial.add_argument("--spacing", type=_positive_float, nargs=3, metavar=("Z", "Y", "X"),
                       help="bead voxel size in micrometres (default: from the TIFF metadata)")
    axial.add_argument("--planes", choices=("both", "xz", "yz"), default="both",
                       help="central planes to use: both (their average), xz or yz (default: both)")
    axial.add_argument("--iterations", type=int, default=50, metavar="N",
                       help="Richardson-Lucy deconvolution iterations (an early stop may use fewer)")
    axial.add_argument("--overwrite", action="store_true",
                       help="replace an existing AXIAL.tif and its .png (never the bead stack)")
    axial.set_defaults(func=_cmd_psf_axial)

    theory = psf_commands.add_parser(
        "theory", help="the 2D additional axial PSF of a Gaussian model of the optics",
        description="The additional axial PSF of the Gaussian approximation of a "
                    "diffraction-limited PSF (Zhang, Zerubia, Olivo-Marin, Appl. Opt. 2007).")
    theory.add_argument("--na", type=_positive_float, required=True,
                        help="numerical aperture of the objective")
    theory.add_argument("--wavelength", type=_positive_float, required=True, metavar="UM",
                        help="emission wavelength in micrometres")
    theory.add_argument("--ri", type=_positive_float, required=True, metavar="N",
                        help="refractive index of the immersion medium")
    theory.add_argument("--modality", choices=("widefield", "confocal", "lightsheet"),
                        required=True, help="the microscope's PSF model")
    theory.add_argument("--excitation", type=_positive_float, metavar="UM",
                        help="excitation wavelength in micrometres, confocal only (default: the emission "
                        "wavelength)")
    theory.add_argument("--pinhole", type=float, default=1.0, metavar="AU",
                        help="confocal pinhole diameter in Airy units, 0 for a very small pinhole")
    theory.add_argument("--sheet-fwhm", type=_positive_float, metavar="UM",
                        help="light-sheet thickness (FWHM along z) in micrometres, lightsheet only "
                        "(default: no sheet, the detection PSF alone)")
    theory.add_argument("--pixel-size", type=_positive_float, required=True, metavar="UM",
                        help="the image's lateral pixel size in micrometres")
    theory.add_argument("-o", "--output", type=Path, required=True, metavar="AXIAL.tif",
                        help="the 2D PSF TIFF to write (float32, with its pixel size; a PNG "
                        "of its profiles is written beside it)")
    theory.add_argument("--overwrite", action="store_true",
                        help="replace an existing AXIAL.tif and its .png")
    theory.set_defaults(func=_cmd_psf_theory)

    check = psf_commands.add_parser(
        "check", help="check a 2D PSF and print a report",
        description="Check a 2D (lateral, axial) PSF; exit 0 if usable.")
    check.add_argument("psf", type=Path, metavar="PSF.tif", help="2D (lateral, axial) PSF TIFF")
    check.add_argument("--pixel-size", type=_positive_float, metavar="UM",
                       help="the image's lateral pixel size in micrometres, to check that the PSF "
                       "matches it (default: not checked)")
    check.add_argument("--psf-pixel-size", type=_positive_float, metavar="UM",
                       help="the PSF's pixel size in micrometres (default: from its TIFF metadata)")
    check.set_defaults(func=_cmd_psf_check)


# ---------------------------------------------------------- train, predict, demo commands


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
    }
    if all(v is None for v in given.values()):
        return None
    return {**given, "pinhole_au": args.pinhole}


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    from isojax import distributed
    from isojax.pipeline import train_file
    from isojax.train import TrainingDiverged

    multihost = (args.distributed or args.coordinator or args.num_processes is not None
                 or args.process_id is not None or os.environ.get(distributed.ENV_ADDRESS))
    if multihost:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               host_timeout=args.host_timeout)
    quiet = {} if distributed.is_main_process() else {"log": lambda msg: None}
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
            **quiet,
        )
    except TrainingDiverged as exc:
        raise IsojaxInputError(str(exc)) from None
    return EXIT_OK


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
    )
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace) -> int:
    from isojax.pipeline import predict_file

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
        progress=not args.quiet,
        checkpoint=args.checkpoint,
        axes=args.axes, channels=args.channels, timepoints=args.timepoints, resume=args.resume,
    )
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from isojax.pipeline import demo

    demo(args.out, seed=args.seed, steps=args.steps, overwrite=args.overwrite,
         progress=not args.quiet)
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _add_stack_geometry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subsample", type=_positive_float, metavar="F",
                   help="anisotropy factor: Z step / lateral pixel size, a number >= 1 (default: "
                   "from the voxel size in the file)")
    p.add_argument("--spacing", type=_positive_float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in micrometres (default: from the file's ImageJ or OME "
                   "metadata)")


def _add_pipeline_commands(commands: argparse._SubParsersAction) -> None:
    _add_train_command(commands)
    _add_predict_command(commands)
    _add_calibrate_command(commands)
    _add_demo_command(commands)


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    t = commands.add_parser(
        "train", help="train a restoration model on a stack",
        description="Train a network that restores the axial resolution of STACK, from pairs "
        "synthesised out of its own XY planes with the axial PSF.")
    t.add_argument("stack", type=Path, metavar="STACK.tif", help="anisotropic stack TIFF (z, y, x)")
    t.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="model folder to write (refused if it holds a model, unless --resume)")
    _add_psf_source_options(t)
    _add_stack_geometry(t)
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
    src = t.add_argument_group("PSF (one of: a file, a bead stack, or a theoretical model)")
    src.add_argument("--psf", type=Path, metavar="AXIAL.tif", help="2D (lateral, axial) axial PSF TIFF from `isojax psf axial|theory`")
    src.add_argument("--bead", type=Path, metavar="BEAD.tif",
                     help="3D bead stack (z, y, x) to derive the PSF from")
    src.add_argument("--bead-spacing", type=_positive_float, nargs=3, metavar=("Z", "Y", "X"),
                     help="bead voxel size in micrometres (default: from its TIFF metadata)")
    src.add_argument("--na", type=_positive_float, help="numerical aperture of the objective")
    src.add_argument("--wavelength", type=_positive_float, metavar="UM",
                     help="emission wavelength in micrometres")
    src.add_argument("--ri", type=_positive_float, metavar="N",
                     help="refractive index of the immersion medium")
    src.add_argument("--modality", choices=("widefield", "confocal", "lightsheet"),
                     help="the microscope's PSF model")
    src.add_argument("--excitation", type=_positive_float, metavar="UM",
                     help="excitation wavelength in micrometres, confocal only (default: the "
                     "emission wavelength)")
    src.add_argument("--pinhole", type=float, default=1.0, metavar="AU",
                     help="confocal pinhole diameter in Airy units, 0 for a very small pinhole")
    src.add_argument("--sheet-fwhm", type=_positive_float, metavar="UM",
                     help="light-sheet thickness (FWHM along z) in micrometres, lightsheet only "
                     "(default: no sheet)")


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
    t.add_argument("--first-filters", type=_positive_int, default=32, metavar="N",
                   help="U-Net filters at the first level (CARE uses 32)")
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
    cal.add_argument("--family", choices=("gaussian", "multi-gaussian", "free"),
                     default="gaussian", help="PSF parameterisation")
    cal.add_argument("--init-fwhm", type=_positive_float, metavar="UM",
                     help="initial axial FWHM in micrometres without a PSF source "
                     "(default: one axial step)")


def _add_multihost_options(t: argparse.ArgumentParser) -> None:
    """``isojax train``'s multi-host options (:mod:`isojax.distributed`)."""
    mh = t.add_argument_group(
        "multi-host training (every host runs the same command; see isojax.distributed)")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)


def _add_calibrate_command(commands: argparse._SubParsersAction) -> None:
    c = commands.add_parser(
        "calibrate", help="learn the axial PSF from the stack itself",
        description="Self-calibrate the additional axial PSF from STACK: degraded XY lines "
        "must match the spectrum of the observed Z lines. Writes the PSF TIFF, a JSON report "
        "and a PNG of the spectra and the profile.")
    c.add_argument("stack", type=Path, metavar="STACK.tif", help="anisotropic stack TIFF (z, y, x)")
    c.add_argument("-o", "--output", type=Path, required=True, metavar="AXIAL.tif",
                   help="the 2D PSF TIFF to write; a .json report and a .png are written "
                   "beside it")
    c.add_argument("--family", choices=("gaussian", "multi-gaussian", "free"), default="gaussian",
                   help="PSF parameterisation: one Gaussian, a sum of Gaussians, or a free "
                   "non-negative profile")
    c.add_argument("--init-fwhm", type=_positive_float, metavar="UM",
                   help="initial axial FWHM in micrometres (default: one axial step)")
    _add_stack_geometry(c)
    c.add_argument("--steps", type=_positive_int, default=40, metavar="N",
                   help="L-BFGS iterations of the fit")
    c.add_argument("--overwrite", action="store_true",
                   help="replace an existing AXIAL.tif and its .json and .png (never the stack)")
    c.add_argument("--allow-unidentified", action="store_true",
                   help="write the best fit even when the stack does not identify the width "
                   "(by default calibration then fails and writes nothing)")
    c.set_defaults(func=_cmd_calibrate)


def _add_demo_command(commands: argparse._SubParsersAction) -> None:
    d = commands.add_parser(
        "demo", help="simulate, derive the PSF, train, predict and score",
        description="The whole pipeline on a simulated stack with known ground truth; prints "
        "PSNR and SSIM of linear interpolation and isojax and draws orthogonal views.")
    d.add_argument("--out", type=Path, default=Path("isojax-demo"), metavar="DIR",
                   help="folder for the simulated stack, the model, the restoration and the "
                   "pictures")
    d.add_argument("--steps", type=_positive_int, default=300, metavar="N", help="training steps")
    d.add_argument("--seed", type=int, default=0, metavar="N", help="random seed of the simulation and training")
    d.add_argument("--overwrite", action="store_true",
                   help="write into an existing, non-empty DIR, replacing the demo's own files "
                   "(stack.tif, model/, isojax.tif, ...); other files are kept")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``isojax`` argument parser; add new topics here as further subparsers."""
    parser = _Parser(prog="isojax", description="Isotropic restoration of 3D stacks in JAX.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)
    _add_psf_commands(commands)
    _add_pipeline_commands(commands)
    add_export_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``isojax`` command line.

    Args:
      argv: the arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
      The exit status:

      - 0: success.
      - 1: bad input: one ``isojax: error: ...`` line on stderr naming the problem and the
        fix, for an :class:`~isojax.errors.IsojaxInputError`, an ``OSError`` on a file (the
        line names it) or a full disk.
      - 2: a bad command line (one ``isojax: error: ...`` line).
      - 70 (``EX_SOFTWARE``): an internal error, i.e. a bug in isojax: any other exception.
        Its traceback is printed, then one line ``isojax: internal error: this is a bug in
        isojax <version>; please report it with the traceback above``.
      - 128 + the signal number (130 for SIGINT, 143 for SIGTERM) when interrupted (one
        ``isojax: interrupted`` line; partial outputs are removed, and training saves a
        checkpoint first: :mod:`isojax.interrupt`).
      - 141 (128 + SIGPIPE): the reader of its output went away (``isojax ... | head``);
        it stops quietly.
    """
    try:
        return _main(argv)
    except BrokenPipeError:
        return _stop_on_broken_pipe()


def _stop_on_broken_pipe() -> int:
    """stdout or stderr was closed by its reader (``isojax ... | head``): stop quietly.

    Both streams are pointed at ``/dev/null`` so that nothing else (the interpreter's own
    flush at exit included) tries to write to the closed pipe; the status is that of a
    process ended by SIGPIPE, as for other command-line tools.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        # a stream that is not a real file (a test's capture) has nothing to redirect
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"isojax: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    from isojax.interrupt import Interrupted, raise_on_signals

    try:
        with raise_on_signals():
            return args.func(args)
    except Interrupted as exc:
        print(f"isojax: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # a SIGINT outside raise_on_signals' reach (another thread)
        print("isojax: interrupted (SIGINT)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout or stderr went away: see main
        raise
    except IsojaxInputError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"isojax: error: {message}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        message = _os_error_message(exc)
        if message is None:
            return _internal_error()
        print(f"isojax: error: {message}", file=sys.stderr)
        return EXIT_INPUT
    except Exception as exc:
        if _out_of_memory(exc):
            print(f"isojax: error: out of memory ({' '.join(str(exc).split())[:200]}); "
                  f"{_MEMORY_HINTS.get(args.command, 'use a smaller stack')}", file=sys.stderr)
            return EXIT_INPUT
        return _internal_error()


#: What to change when a command runs out of host or device memory.
_MEMORY_HINTS = {
    "train": "use a smaller --batch-size, --patch-size or --first-filters",
    "predict": "use a smaller --batch-size, --tile or --memory-budget",
    "calibrate": "calibrate a crop of the stack",
    "demo": "close other programs and run it again",
}


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the host (``MemoryError``) or an accelerator (XLA's
    ``RESOURCE_EXHAUSTED``) running out of memory: the user's settings, not a bug."""
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "RESOURCE_EXHAUSTED" in str(exc))


#: ``errno`` values of an ``OSError`` that come from the user's machine, not from isojax,
#: even when the error names no file: a full disk or quota.
_ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT") if hasattr(errno, name))


def _os_error_message(exc: OSError) -> str | None:
    """The one-line message of an I/O error on the user's paths or disk, or None for a bug.

    An ``OSError`` naming a file (``exc.filename``) is about a path the user gave or that
    isojax writes for them; one with a full disk or quota is about their machine. Any other
    (no file, e.g. a broken internal pipe) is treated as a bug.
    """
    def name(f) -> str:  # a path, or (os.fstat and the like) a file descriptor
        return os.fsdecode(f) if isinstance(f, (str, bytes, os.PathLike)) else str(f)

    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if exc.filename is not None:
        names = name(exc.filename)
        if getattr(exc, "filename2", None) is not None:
            names += f" -> {name(exc.filename2)}"
        return f"{names}: {reason}"
    if exc.errno in _ENVIRONMENT_ERRNOS:
        return f"{reason}; free some space (or raise the quota) and run the command again"
    return None


def _internal_error() -> int:
    """Print the traceback of the exception being handled and the bug line; EXIT_SOFTWARE."""
    from isojax import __version__

    traceback.print_exc(file=sys.stderr)
    print(f"isojax: internal error: this is a bug in isojax {__version__}; please report it "
          "with the traceback above", file=sys.stderr)
    return EXIT_SOFTWARE
