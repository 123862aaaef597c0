"""``isojax calibrate --family debye``: the physical family fitted to a file, and its outputs.

The shape families' contract (:mod:`isojax.calibrate.files`) for the physical family of
:mod:`isojax.calibrate.physical`: the optics are given (wavelength, refractive index,
modality; a light sheet's detection NA), one physical parameter is fitted (the NA, or a
light sheet's FWHM), and three files are written together or not at all: the PSF TIFF,
its ``.json`` report and its ``.png``.

The PSF file is the Debye model at the fitted value exactly as ``isojax psf theory --model
debye`` writes it (:func:`isojax.psf.optics.debye_axial_psf`: a window of 24 Gaussian axial
sigmas, cropped to 99% of the mass), so that a calibration and a theory PSF of the same
optics are the same file (except where that kernel would be longer than the model
computes, :func:`isojax.psf.optics.debye_window`: then the file holds the fit's own kernel
and the report says so). The fit itself uses the same kernel on a window of the stack's
lateral line length (at most :data:`FIT_HALF_SIZE` pixels either side), the length the
shape families' kernels have too.

Nothing partial: the outputs are checked before any work, a parameter that the stack does
not identify (its profile interval reaches the search's end, or is wide) writes nothing
unless ``allow_unidentified``, and a write that fails removes what this call wrote.
A hyperstack is calibrated for one channel (``--channels N``; the wavelength is that
channel's), from its volumes at a few time points pooled, into the file that
:func:`isojax.calibrate.files.calibrate_series_file` would write for that channel.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from isojax.calibrate.files import (
    calibration_paths,
    channel_output,
    channel_volumes,
    is_hyperstack,
    refuse_series_options,
    select_timepoints,
)
from isojax.calibrate.params import FAMILIES
from isojax.calibrate.physical import PhysicalFamily, fit_physical_psf
from isojax.errors import IsojaxInputError, log_warnings
from isojax.geometry import StackGeometry, from_metadata, read_stack
from isojax.io import (
    atomic_write,
    check_outputs,
    check_writable,
    open_hyperstack,
    parse_channels,
    write_tiff,
)
from isojax.psf import check_psf, fwhm
from isojax.psf.optics import debye_axial_psf, debye_window
from isojax.synth import check_contrast

__all__ = ["FIT_HALF_SIZE", "OPTICS_KEYWORDS", "calibrate_option_problem",
           "calibrate_physical_file", "physical_optics", "save_physical_png"]

Log = Callable[[str], None]

#: The fit's kernel spans at most this many lateral pixels either side of the focus (and
#: never more than the stack's lateral lines hold).
FIT_HALF_SIZE = 64

_UNITS = {"na": "", "sheet_fwhm_um": " um"}
_NAMES = {"na": "NA", "sheet_fwhm_um": "sheet FWHM"}


#: The options of ``--family debye`` as :func:`isojax.pipeline.calibrate_file` names
#: them, and their command-line flags (``init_fwhm`` is the shape families' option).
_FLAGS = {"init_fwhm": "--init-fwhm", "wavelength_um": "--wavelength", "ri": "--ri",
          "modality": "--modality", "na": "--na", "sheet_fwhm_um": "--sheet-fwhm",
          "excitation_um": "--excitation", "pinhole_au": "--pinhole"}

#: The optics keywords of ``calibrate_file(family="debye", ...)`` (all default to None).
OPTICS_KEYWORDS = ("wavelength_um", "ri", "modality", "na", "sheet_fwhm_um",
                   "excitation_um", "pinhole_au")

_MODALITIES = ("widefield", "confocal", "lightsheet")


def calibrate_option_problem(*, family: str, init_fwhm: float | None = None,
                             optics: Mapping[str, object],
                             style: Literal["python", "cli"] = "python") -> str | None:
    """What is wrong with calibration options that are valid one by one, or None.

    The one set of rules of ``isojax calibrate`` (its parser's usage errors) and of
    :func:`isojax.pipeline.calibrate_file` (before anything is read): optics only with
    ``family="debye"``, which needs the emission wavelength and the refractive index and
    takes no ``init_fwhm``; ``excitation_um`` and ``pinhole_au`` only for a confocal,
    ``sheet_fwhm_um`` only for a light sheet, and a light sheet needs its detection NA.

    Args:
      family: ``"gaussian"``, ``"multi-gaussian"``, ``"free"`` or ``"debye"``.
      init_fwhm: the shape families' start (µm), or None.
      optics: a subset of :data:`OPTICS_KEYWORDS` -> value (None: not given);
        ``modality`` None is ``"widefield"``.
      style: name the options as Python keywords (``wavelength_um=``) or as the command
        line's flags (``--wavelength``).

    Returns:
      One line naming the problem and its fix, or None when the options go together.

    Raises:
      TypeError: an optics key that is not one of :data:`OPTICS_KEYWORDS`.
    """
    unknown = sorted(set(optics) - set(OPTICS_KEYWORDS))
    if unknown:
        raise TypeError(f"unknown optics keyword {unknown[0]!r}")
    cli = style == "cli"

    def name(key: str) -> str:
        return _FLAGS[key] if cli else f"{key}="

    def said(key: str, value: str) -> str:  # "--modality confocal", "modality='confocal'"
        return f"{_FLAGS[key]} {value}" if cli else f"{key}={value!r}"

    def fam(value: str) -> str:
        return f"--family {value}" if cli else f"family={value!r}"

    given = [k for k in OPTICS_KEYWORDS if optics.get(k) is not None]
    if family not in (*FAMILIES, "debye"):
        return (f"unknown family {family!r}; use {', '.join(FAMILIES)} or debye "
                "(the physical family)")
    if family != "debye":
        if given:
            return (f"{name(given[0])} is for {fam('debye')} (the physical family); the "
                    f"{family} family takes no optics: drop it, or use {fam('debye')}")
        return None
    if init_fwhm is not None:
        return (f"{name('init_fwhm')} is for the shape families (gaussian, multi-gaussian, "
                f"free); {fam('debye')} starts from {name('na')} (or a light sheet's "
                f"{name('sheet_fwhm_um')}), or searches without one")
    for key, what in (("wavelength_um", "UM, the emission wavelength in micrometres"),
                      ("ri", "N, the immersion medium's refractive index")):
        if optics.get(key) is None:
            return f"{fam('debye')} needs {name(key)}{' ' if cli else ''}{what}"
    modality = optics.get("modality") or "widefield"
    if modality not in _MODALITIES:
        return f"unknown modality {modality!r}; use {', '.join(_MODALITIES)}"
    for key, only in (("excitation_um", "confocal"), ("pinhole_au", "confocal"),
                      ("sheet_fwhm_um", "lightsheet")):
        if key in given and modality != only:
            return f"{name(key)} is for {said('modality', only)}, not {modality}: drop it"
    if modality == "lightsheet" and optics.get("na") is None:
        return (f"{fam('debye')} {said('modality', 'lightsheet')} fits the sheet FWHM and "
                f"needs the detection NA: give {name('na')}")
    return None


def physical_optics(*, wavelength_um: float, ri: float,
                    modality: Literal["widefield", "confocal", "lightsheet"] = "widefield",
                    na: float | None = None, sheet_fwhm_um: float | None = None,
                    excitation_um: float | None = None, pinhole_au: float | None = None,
                    ) -> tuple[str, float | None]:
    """Check the optics of ``--family debye`` together: which parameter is free, its start.

    Args:
      wavelength_um, ri, modality: the fixed optics (micrometres; refractive index).
      na: widefield and confocal: the start of the NA's refinement (None: the search's
        best cells); lightsheet: the detection NA, fixed and required.
      sheet_fwhm_um: lightsheet only: the start of the sheet FWHM's refinement (µm).
      excitation_um: confocal only: the excitation wavelength (µm).
      pinhole_au: confocal only (the model is a point pinhole; above 0 it warns).

    Returns:
      ``(free, start)``: ``"na"`` or ``"sheet_fwhm_um"``, and its start or None.

    Raises:
      IsojaxInputError: an option that the modality does not take, or a light sheet
        without its NA (:func:`calibrate_option_problem`).
    """
    problem = calibrate_option_problem(family="debye", optics={
        "wavelength_um": wavelength_um, "ri": ri, "modality": modality, "na": na,
        "sheet_fwhm_um": sheet_fwhm_um, "excitation_um": excitation_um,
        "pinhole_au": pinhole_au})
    if problem:
        raise IsojaxInputError(problem)
    if modality == "lightsheet":
        return "sheet_fwhm_um", sheet_fwhm_um
    return "na", na


def _no_spacing(stack_path) -> IsojaxInputError:
    """The refusal of a stack without a voxel size, made before its geometry is built
    (whose own message would offer ``--subsample``, which the physical family cannot use:
    the Debye model needs the pixel size in micrometres)."""
    return IsojaxInputError(
        f"{stack_path}: --family debye needs the voxel size in micrometres (the Debye "
        "model is in physical units) and the file has none; give it with --spacing Z Y X "
        "(command line) or spacing=(dz, dy, dx) (Python), in micrometres")


def _lacks_spacing(stack_path) -> bool:
    """Whether a 3D stack's metadata (read alone, no pixels) has no voxel size; False when
    the file cannot be opened so (its full read then says why)."""
    try:
        return open_hyperstack(stack_path).spacing is None
    except IsojaxInputError:
        return False


def _read_volumes(stack_path, *, output, subsample, spacing, axes, channels, timepoints,
                  overwrite, log) -> tuple[list[np.ndarray], StackGeometry, Path, dict]:
    """The volumes to pool, the geometry, the output path and the JSON's extra keys."""
    if not is_hyperstack(stack_path, axes=axes):
        refuse_series_options(stack_path, **{"--channels": channels,
                                             "--timepoints": timepoints})
        paths = calibration_paths(output)
        check_outputs(list(paths), inputs={"stack": stack_path}, overwrite=overwrite, log=log)
        if spacing is None and _lacks_spacing(stack_path):
            raise _no_spacing(stack_path)
        stack, g = read_stack(stack_path, spacing=spacing, subsample=subsample,
                              on_conflict="error", log=log)
        check_contrast(stack, percentiles=(1.0, 99.8), name=stack_path)
        log(f"stack {stack_path}: shape {stack.shape} (z, y, x), subsample "
            f"{g.subsample:.4g} from {g.how}")
        return [stack], g, paths[0], {}
    hyper = open_hyperstack(stack_path, axes=axes, spacing=spacing)
    cs = parse_channels(channels, hyper.n_channels)
    if len(cs) != 1:
        raise IsojaxInputError(
            f"{stack_path}: --family debye calibrates one channel at a time (the optics, "
            f"--wavelength first, are one channel's) and this stack has {hyper.n_channels}; "
            "select one with --channels N")
    c = cs[0]
    ts = select_timepoints(timepoints, hyper.n_timepoints)
    paths = calibration_paths(channel_output(output, c) if hyper.n_channels > 1 else output)
    check_outputs(list(paths), inputs={"stack": stack_path}, overwrite=overwrite, log=log)
    if hyper.spacing is None:
        raise _no_spacing(stack_path)
    g = from_metadata(hyper.spacing, source=hyper.source, subsample=subsample, name=stack_path,
                      on_conflict="error", axes="TCZYX", log=log)
    volumes = channel_volumes(hyper, c, ts, name=stack_path)
    log(f"stack {stack_path}: channel {c} of {hyper.n_channels}, time points "
        f"{', '.join(map(str, ts))} of {hyper.n_timepoints} pooled, volumes "
        f"{hyper.shape[2:]} (z, y, x), subsample {g.subsample:.4g} from {g.how}")
    names = hyper.channel_names
    return volumes, g, paths[0], {"channel": c, "channel_name": names[c] if names else None,
                                "timepoints": list(ts)}


def calibrate_physical_file(
    stack_path: str | os.PathLike,
    *,
    output: str | os.PathLike,
    wavelength_um: float,
    ri: float,
    modality: Literal["widefield", "confocal", "lightsheet"] = "widefield",
    na: float | None = None,
    sheet_fwhm_um: float | None = None,
    excitation_um: float | None = None,
    pinhole_au: float | None = None,
    subsample: float | None = None,
    spacing: Sequence[float] | None = None,
    steps: int = 40,
    overwrite: bool = False,
    allow_unidentified: bool = False,
    axes: str | None = None,
    channels: str | Sequence[int] | None = None,
    timepoints: str | None = None,
    log: Log,
) -> dict:
    """Fit the Debye family's free parameter to a stack; write its PSF, JSON and PNG.

    The free parameter is the NA (widefield, confocal) or the sheet FWHM (lightsheet, the
    NA fixed): :func:`physical_optics`. The objective is always profiled over the
    parameter's grid (:func:`~isojax.calibrate.physical.physical_grid`) for the 95%
    interval and the verdict; the refinement starts from ``na`` / ``sheet_fwhm_um`` when
    given, else from the profile's best cells.

    Args:
      stack_path: the anisotropic stack (TIFF, OME-Zarr), or a hyperstack (one channel).
      output: the PSF TIFF; its ``.json`` and ``.png`` are written beside it (for one
        channel of a multi-channel stack: ``output`` with ``_c{channel}``).
      wavelength_um, ri, modality, na, sheet_fwhm_um, excitation_um, pinhole_au: the
        optics, as :func:`physical_optics`.
      subsample: anisotropy factor; refused if it contradicts the voxel size by > 2%.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, overriding the metadata.
      steps: L-BFGS iterations of the refinement.
      overwrite: replace existing outputs (never the stack).
      allow_unidentified: write the fit even when the stack does not identify the
        parameter (the JSON then says ``"identifiable": false``).
      axes: the axes of a hyperstack that does not name them (``"TZCYX"``), or None.
      channels: the one channel of a multi-channel stack to calibrate (``"1"``).
      timepoints: a hyperstack's time points to pool (slice syntax), or None (3 spread
        over the series, first and last included).
      log: where progress and warnings go (one line per call).

    Returns:
      The JSON report as a dict: ``"fitted"`` (the parameter, its value, its 95%
      interval in its unit, the start), ``"identifiable"``, ``"optics"`` (every value the
      PSF file was computed with), the axial ``sigma_px``/``fwhm_px``/``sigma_um``/
      ``fwhm_um`` of the PSF file's kernel (second moment and FWHM, as the Gaussian
      family's report), the objective's ``"profile"`` and the fit's details.

    Raises:
      IsojaxInputError: bad options or stack, an unknown lateral pixel size, an output
        that may not be written, several channels, the fit's parameter not identifiable
        (without ``allow_unidentified``), or optics the Debye model refuses.
    """
    free, start = physical_optics(wavelength_um=wavelength_um, ri=ri, modality=modality,
                                  na=na, sheet_fwhm_um=sheet_fwhm_um,
                                  excitation_um=excitation_um, pinhole_au=pinhole_au)
    volumes, g, out, extra = _read_volumes(
        stack_path, output=output, subsample=subsample, spacing=spacing, axes=axes,
        channels=channels, timepoints=timepoints, overwrite=overwrite, log=log)
    pixel = g.pixel_size
    if pixel is None:  # only a file whose metadata could not be probed comes here
        raise _no_spacing(stack_path)
    n_lat = min(volumes[0].shape[1:])
    family = PhysicalFamily(
        wavelength_um=wavelength_um, ri=ri, modality=modality, pixel_size=pixel,
        half_size=max(4, min(FIT_HALF_SIZE, (n_lat - 1) // 2)),
        free="na" if free == "na" else "sheet_fwhm", na=None if free == "na" else na,
        excitation_um=excitation_um)
    t0 = time.perf_counter()
    fitted, info = fit_physical_psf(jax.random.key(0), volumes if len(volumes) > 1 else volumes[0],
                               family=family, init=start, subsample=g.subsample, steps=steps,
                               profile=True)
    seconds = time.perf_counter() - t0
    value, (low, high) = float(info[free]), info["interval"]
    name, unit = _NAMES[free], _UNITS[free]
    verdict = "identifiable" if info["identifiable"] else "NOT identifiable"
    log(f"axial PSF (debye, {modality}): {name} {value:.4g}{unit}; 95% interval {low:.3g} "
        f"to {high:.3g}{unit}: {verdict}; objective {info['loss_final']:.4g}; {seconds:.1f} s")
    if not info["identifiable"] and not allow_unidentified:
        raise IsojaxInputError(
            f"the {name} is not identifiable from this stack ({low:.3g} to {high:.3g}{unit} "
            "fit it equally well); nothing written. Check the optics (--wavelength, --ri, "
            "--modality), give a bead or theory PSF, or pass --allow-unidentified to write "
            "the best fit anyway.")
    optics = {"model": "debye", "modality": modality, "na": info["na"],
              "wavelength_um": wavelength_um, "ri": ri, "excitation_um": excitation_um,
              "pinhole_au": pinhole_au, "sheet_fwhm_um": info["sheet_fwhm_um"],
              "pixel_size_um": pixel}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        psf2d, theory, kernel = _psf_file_kernel(fitted, info, family=family,
                                                 pinhole_au=pinhole_au, log=log)
        psf2d, _ = check_psf(psf2d, pixel_size=pixel)
    log_warnings(log, caught)
    summary = _summary(info, free=free, start=start, optics=optics, psf2d=psf2d,
                       theory=theory, pixel=pixel, g=g, steps=steps, seconds=seconds,
                       fit_half=family.half_size, kernel=kernel)
    summary.update(stack=str(stack_path), psf_file=out.name, **extra)
    _write(out, psf2d, info, summary, pixel=pixel, overwrite=overwrite)
    log(f"wrote {out}, {out.with_suffix('.json').name} and "
        f"{out.with_suffix('.png').name}: kernel FWHM {summary['fwhm_px']:.3g} px = "
        f"{summary['fwhm_um']:.4g} um, sigma {summary['sigma_px']:.3g} px")
    return summary


_THEORY_KERNEL = ("the PSF file's: the Debye model at the fitted value, as `isojax psf "
                  "theory --model debye` writes it (sigma: second moment)")


def _psf_file_kernel(fitted, info, *, family: PhysicalFamily, pinhole_au, log: Log):
    """The PSF file's kernel, its FWHM info and a sentence saying which kernel it is.

    ``psf theory --model debye``'s kernel at the fitted value; or, where that one would be
    longer than the model computes (:func:`isojax.psf.optics.debye_window`: a very weak
    objective at fine pixels, as the best NA of a flat profile can be), the kernel the fit
    evaluated, on its window of the stack's line length, with a log line saying so.
    """
    optics = dict(na=info["na"], wavelength_um=family.wavelength_um, ri=family.ri,
                  modality=family.modality, pixel_size=family.pixel_size,
                  excitation_um=family.excitation_um, sheet_fwhm_um=info["sheet_fwhm_um"])
    half, ok = debye_window(**optics)
    if ok:
        psf2d, theory = debye_axial_psf(**optics, pinhole_au=pinhole_au or 0.0)
        return psf2d, theory, _THEORY_KERNEL
    psf2d = np.asarray(fitted.axial, np.float32)
    width = float(fwhm(np.asarray(psf2d[0], np.float64)))
    log(f"the Debye PSF at NA {info['na']:.4g} would span {2 * half + 1} px, longer than "
        f"the model computes: the PSF file holds the kernel the fit used ({psf2d.shape[1]} "
        "px, the stack's line length), cropped there")
    return psf2d, {"fwhm_additional_px": width}, (
        "the kernel the fit used: the Debye model at the fitted value on the fit's window "
        f"({psf2d.shape[1]} px; the full kernel, {2 * half + 1} px, is longer than "
        "`isojax psf theory --model debye` computes)")


def _finite(v):
    return None if v is None or not math.isfinite(v) else float(v)


def _summary(info, *, free, start, optics, psf2d, theory, pixel, g, steps, seconds,
             fit_half, kernel: str = _THEORY_KERNEL) -> dict:
    axial = np.asarray(psf2d[0], np.float64)
    x = np.arange(axial.size) - axial.size // 2
    mean = float((x * axial).sum())
    sigma_px = float(np.sqrt(((x - mean) ** 2 * axial).sum()))
    fwhm_px = float(theory["fwhm_additional_px"])
    low, high = info["interval"]
    return {
        "family": "debye",
        "fitted": {"parameter": free, "value": float(info[free]),
                   "unit": "um" if free == "sheet_fwhm_um" else None,
                   "interval_95": [_finite(low), _finite(high)], "start": start},
        "identifiable": bool(info["identifiable"]),
        "optics": optics,
        "sigma_px": sigma_px, "fwhm_px": fwhm_px,
        "sigma_um": sigma_px * pixel, "fwhm_um": fwhm_px * pixel,
        "kernel": kernel,
        "shape": list(psf2d.shape),
        "pixel_size_um": pixel, "subsample": g.subsample, "subsample_from": g.how,
        "objective": info["loss_final"], "objective_initial": info["loss_initial"],
        "gain": info["gain"], "noise_floor": info["noise_floor"],
        "segment": info["segment"], "steps": int(steps), "seconds": seconds,
        "fit_half_size_px": fit_half,
        "interval_threshold": info["interval_threshold"],
        "profile": {free: info["grid"], "objective": info["profile"]},
    }


def _write(output: Path, psf2d, info, summary, *, pixel: float, overwrite: bool) -> None:
    """The JSON, the PNG and the TIFF, each atomically; those written are removed if one
    fails."""
    json_path, png_path = output.with_suffix(".json"), output.with_suffix(".png")
    written: list[Path] = []
    try:
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"),
                     overwrite=overwrite)
        written.append(json_path)
        save_physical_png(png_path, info=info, summary=summary, psf2d=psf2d, overwrite=overwrite)
        written.append(png_path)
        write_tiff(output, np.asarray(psf2d, np.float32), pixel_size=pixel, overwrite=overwrite)
        written.append(output)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def save_physical_png(path: Path, *, info: dict, summary: dict, psf2d,
                      overwrite: bool = True) -> None:
    """The physical calibration's picture: the spectra, the PSF file's kernel, the profile.

    Args:
      path: the PNG to write (atomically).
      info: :func:`~isojax.calibrate.physical.fit_physical_psf`'s info (with its profile).
      summary: the JSON report (:func:`calibrate_physical_file`).
      psf2d: the PSF written, ``(1, n)``.
      overwrite: replace an existing file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = check_writable(path)
    fig = Figure(figsize=(15, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_s, ax_p, ax_o = fig.subplots(1, 3)
    f = info["frequencies"]
    ax_s.semilogy(f, info["observed"], "o-", ms=3, label="observed Z lines (laterally blurred)")
    ax_s.semilogy(f, info["synthetic"], "s-", ms=3, label="XY lines through measure (fitted)")
    ax_s.set_xlabel("frequency (cycles per axial sample)")
    ax_s.set_ylabel("power")
    ax_s.legend(fontsize=8)
    ax_s.grid(alpha=0.3)
    axial = np.asarray(psf2d[0])
    x = (np.arange(axial.size) - axial.size // 2) * summary["pixel_size_um"]
    ax_p.plot(x, axial, "o-", ms=3)
    ax_p.set_xlabel("axial offset (um)")
    ax_p.set_ylabel("PSF (sums to 1)")
    ax_p.set_title(f"debye ({summary['optics']['modality']}): FWHM {summary['fwhm_um']:.3g} um",
                   fontsize=9)
    ax_p.grid(alpha=0.3)
    fitted = summary["fitted"]
    free = fitted["parameter"]
    unit = " (um)" if free == "sheet_fwhm_um" else ""
    grid = np.asarray(info["grid"])
    ax_o.semilogy(grid, info["profile"], "o-", ms=3, label="objective (nuisance fitted)")
    ax_o.axhline(info["interval_threshold"], color="C3", ls="--", lw=1,
                 label="interval threshold")
    low, high = info["interval"]
    ax_o.axvspan(max(low, float(grid.min())), high if math.isfinite(high) else float(grid.max()),
                 color="C2", alpha=0.2, label="95% interval")
    ax_o.axvline(fitted["value"], color="k", lw=1, label="fitted")
    ax_o.set_xlabel(f"{_NAMES[free]}{unit}")
    ax_o.set_ylabel("spectral objective")
    verdict = "identifiable" if summary["identifiable"] else "NOT identifiable from this stack"
    ax_o.set_title(f"{_NAMES[free]} {low:.3g} to {high:.3g}: {verdict}", fontsize=9)
    ax_o.legend(fontsize=8)
    ax_o.grid(alpha=0.3)
    fig.suptitle(f"PSF self-calibration (Debye, {_NAMES[free]} {fitted['value']:.4g}), "
                 f"objective {summary['objective']:.3g}")
    atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=100), overwrite=overwrite)
