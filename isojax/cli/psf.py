"""``isojax psf axial|theory|check``: derive, model and check PSFs (one function per command)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from isojax.cli.options import (
    EXIT_OK,
    THEORY_MODEL_NAMES,
    _add_optics_option,
    _Parser,
    _positive_float,
)
from isojax.errors import WARNING_PREFIX, IsojaxInputError, log_to_stderr

__all__: list[str] = []  # private to isojax.cli


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
    from isojax.psf import check_psf
    from isojax.psf.sources import theory_axial_psf

    output = _check_psf_outputs(args, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        psf2d, info = theory_axial_psf(
            model=args.model, na=args.na, wavelength_um=args.wavelength, ri=args.ri,
            modality=args.modality, pixel_size=args.pixel_size, excitation_um=args.excitation,
            pinhole_au=args.pinhole, sheet_fwhm_um=args.sheet_fwhm)
        psf2d, report = check_psf(psf2d, pixel_size=args.pixel_size)
    _print_warnings(caught)
    optics = f"{args.modality} PSF, NA {args.na:g}, emission {args.wavelength:g} um, n {args.ri:g}"
    if args.model == "debye":
        print(f"{optics} (scalar Debye wave optics{', point pinhole' if args.modality == 'confocal' else ''})")
        print(f"  FWHM lateral {info['fwhm_lateral_um']:.3g} um, axial "
              f"{info['fwhm_axial_um']:.3g} um")
        print(f"  additional axial PSF: axial profile deconvolved by the lateral one, FWHM "
              f"{info['fwhm_additional_um']:.4g} um = {info['fwhm_additional_px']:.3g} px at "
              f"{args.pixel_size:g} um, shape {report.shape} (lateral, axial)")
    else:
        print(f"{optics} (Gaussian approximation, Zhang et al., Appl. Opt. 2007)")
        print(f"  sigma lateral {info['sigma_lateral_um']:.4g} um, axial "
              f"{info['sigma_axial_um']:.4g} um (FWHM {info['fwhm_lateral_um']:.3g} / "
              f"{info['fwhm_axial_um']:.3g} um)")
        print(f"  additional axial PSF: Gaussian of sigma sqrt(sz^2 - sxy^2) = "
              f"{info['sigma_additional_um']:.4g} um = {info['sigma_additional_px']:.3g} px at "
              f"{args.pixel_size:g} um, shape {report.shape} (lateral, axial)")
    _write_psf_outputs(output, psf2d, args.pixel_size,
                       f"Additional axial PSF ({args.modality}, {args.model})",
                       overwrite=args.overwrite)
    return EXIT_OK


def _cmd_psf_check(args: argparse.Namespace) -> int:
    """Check a PSF file, or every channel's ``psf.tif`` of a model folder."""
    from isojax.model_folder import channel_models

    if not args.psf.is_dir():
        _check_psf_file(args.psf, args.psf, args)
        return EXIT_OK
    models = channel_models(args.psf)
    for index, folder in models:
        path = folder / "psf.tif"
        if not path.is_file():
            raise IsojaxInputError(
                f"{args.psf}: no PSF at {path}; give a PSF TIFF or a model folder written by "
                "`isojax train`")
        label = path if index is None else f"channel {index}: {path}"
        _check_psf_file(path, label, args)
    return EXIT_OK


def _check_psf_file(path: Path, label, args: argparse.Namespace) -> None:
    from isojax.io import read_tiff
    from isojax.psf import check_psf

    psf, spacing, source = read_tiff(path)
    pixel = args.psf_pixel_size
    if pixel is None and spacing is not None and psf.ndim == 2:
        dy, dx = spacing
        if abs(dy / dx - 1) > 0.01:
            raise IsojaxInputError(
                f"{path}: its pixels are not square ({dy:g} x {dx:g} um); a PSF must be "
                "sampled at the image's lateral pixel size on both axes")
        pixel = dx
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = check_psf(psf, pixel_size=pixel, image_pixel_size=args.pixel_size)
    print(f"{label} (pixel size from {source if pixel is not None else 'nowhere'}):")
    print(report)
    _print_warnings(caught)


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
        "theory", help="the 2D additional axial PSF of a model of the optics",
        description="The additional axial PSF of a diffraction-limited PSF: its Gaussian "
                    "approximation (Zhang, Zerubia, Olivo-Marin, Appl. Opt. 2007; the default) "
                    "or the scalar Debye wave-optics model (--model debye).")
    theory.add_argument("--model", choices=THEORY_MODEL_NAMES, default="gaussian",
                        help="gaussian: Gaussian approximation, additional sigma sqrt(sz^2 - "
                        "sxy^2); debye: scalar Debye integral, the axial profile deconvolved "
                        "by the lateral one (confocal: a point pinhole) (default: gaussian)")
    for flag in ("--na", "--wavelength", "--ri", "--modality"):
        _add_optics_option(theory, flag, required=True)
    for flag in ("--excitation", "--pinhole", "--sheet-fwhm"):
        _add_optics_option(theory, flag)
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
        description="Check a 2D (lateral, axial) PSF, or the PSF of each channel of a model "
        "folder; exit 0 if usable.")
    check.add_argument("psf", type=Path, metavar="PSF.tif|MODEL_DIR",
                       help="2D (lateral, axial) PSF TIFF, or a model folder (each channel's "
                       "PSF is reported)")
    check.add_argument("--pixel-size", type=_positive_float, metavar="UM",
                       help="the image's lateral pixel size in micrometres, to check that the PSF "
                       "matches it (default: not checked)")
    check.add_argument("--psf-pixel-size", type=_positive_float, metavar="UM",
                       help="the PSF's pixel size in micrometres (default: from its TIFF metadata)")
    check.set_defaults(func=_cmd_psf_check)
