"""``isojax calibrate``'s files: the three outputs of one fit, and one PSF per channel.

What :func:`isojax.pipeline.calibrate_file` writes for one fitted PSF
(:func:`write_calibration`: the ``(lateral, axial)`` TIFF, its ``.json`` report and its
``.png``, written together or not at all), and what it does with a stack that has a time
or channel axis (:func:`calibrate_series_file`): each selected channel is calibrated on
its own, from its volumes at a few time points pooled (:func:`isojax.calibrate.fit_psf`
takes a list of volumes), and written to a file of its own, ``AXIAL_c0.tif``,
``AXIAL_c1.tif``, ... (the channel's index in the input), each with the same three outputs
as a single-channel calibration.

Channels are calibrated separately because each has its own PSF: emission wavelengths
differ, and so do the axial widths (longer wavelengths blur more), and a channel's
structures (filaments in one, nuclei in another) say nothing about another channel's
blur. Time points of one channel share its PSF, so they are pooled: a few spread over the
series (first and last included) give more lines and Z lines than one, and a time point
that is unusual (a focus drift, a bleached end) weighs less.

Nothing partial: every output path of every channel is checked before any work, every
channel is fitted before anything is written, and when one channel's width is not
identifiable (and ``allow_unidentified`` is not given) no file at all is written, the
message naming the channel. If a write fails, the files already written by this command
are removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from isojax.calibrate.fit import CalibrationReport, fit_psf
from isojax.errors import IsojaxInputError
from isojax.geometry import from_metadata, read_stack, um_to_px
from isojax.io import (
    Hyperstack,
    atomic_write,
    check_outputs,
    check_writable,
    hyperstack_axes,
    open_hyperstack,
    parse_channels,
    parse_timepoints,
    spread_timepoints,
    write_tiff,
)
from isojax.synth import check_contrast

__all__ = [
    "DEFAULT_TIMEPOINTS",
    "calibrate_series_file",
    "calibrate_stack_file",
    "calibration_paths",
    "channel_output",
    "channel_volumes",
    "default_timepoints",
    "fit_logged",
    "is_hyperstack",
    "refuse_series_options",
    "save_calibration_png",
    "select_timepoints",
    "unidentified_message",
    "write_calibration",
]

Log = Callable[[str], None]

#: Time points of a time-lapse pooled per channel when ``--timepoints`` is not given:
#: this many, evenly spaced over the series, first and last included.
DEFAULT_TIMEPOINTS = 3


def is_hyperstack(path: str | os.PathLike, *, axes: str | None = None) -> bool:
    """Whether ``path`` (with ``--axes``) has a time or channel axis, or unnamed extra axes.

    The same test as ``isojax predict`` (:func:`isojax.predict.series.is_series`): a 3D
    stack, or a file that cannot be read (its reader says why), is not a hyperstack.

    Args:
      path: the input stack.
      axes: the user's ``--axes``, or None (from the metadata).

    Returns:
      True when the stack is calibrated channel by channel.
    """
    found = hyperstack_axes(path, axes=axes)
    return found is not None and any(a in found for a in "TC?")


def default_timepoints(n: int, *, count: int = DEFAULT_TIMEPOINTS) -> tuple[int, ...]:
    """Up to ``count`` time points out of ``n``, evenly spaced, first and last included.

    Args:
      n: the number of time points, >= 1.
      count: how many to pick at most, >= 1.

    Returns:
      The time point indices, increasing (all of them when ``n <= count``):
      :func:`isojax.io.spread_timepoints`, the selection training makes, with calibration's
      count.

    Raises:
      IsojaxInputError: ``n`` or ``count`` below 1.
    """
    return spread_timepoints(n, count=count)


def select_timepoints(timepoints: str | None, n: int) -> tuple[int, ...]:
    """The time points a calibration pools: ``--timepoints``, or :func:`default_timepoints`.

    Args:
      timepoints: Python slice syntax (``"0:100"``), or None.
      n: the series' number of time points.

    Returns:
      The selected indices, increasing.

    Raises:
      IsojaxInputError: a selection out of range or malformed
        (:func:`isojax.io.parse_timepoints`).
    """
    return default_timepoints(n) if timepoints is None else parse_timepoints(timepoints, n)


def channel_volumes(hyper: Hyperstack, c: int, ts: Sequence[int], *,
                    name: str | os.PathLike) -> list[np.ndarray]:
    """One channel's volumes at the time points ``ts``, each checked for contrast.

    Args:
      hyper: the opened hyperstack.
      c: the channel's index.
      ts: the time points to read.
      name: the stack, for messages.

    Returns:
      The ``(z, y, x)`` volumes, in the order of ``ts``.

    Raises:
      IsojaxInputError: a volume without contrast (named by time point and channel).
    """
    volumes = []
    for t in ts:
        v = hyper.read(t, c)
        check_contrast(v, percentiles=(1.0, 99.8), name=f"{name}: time point {t}, channel {c}")
        volumes.append(v)
    return volumes


def channel_output(output: str | os.PathLike, channel: int) -> Path:
    """The PSF file of one channel: ``psf.tif`` -> ``psf_c0.tif`` for channel 0.

    Args:
      output: the ``-o`` path.
      channel: the channel's index in the input file.

    Returns:
      The path with ``_c{channel}`` before its suffix.
    """
    output = Path(output)
    return output.with_name(f"{output.stem}_c{int(channel)}{output.suffix}")


def calibration_paths(output: str | os.PathLike) -> tuple[Path, Path, Path]:
    """``(tiff, json, png)``: the PSF file and its two companions, each checked writable.

    Args:
      output: the PSF TIFF to write.

    Returns:
      The three paths: ``output``, then with ``.json`` and ``.png``.

    Raises:
      IsojaxInputError: a folder that does not exist or cannot be written, or a path that
        is a folder (:func:`isojax.io.check_writable`).
    """
    output = check_writable(output)
    json_path, png_path = output.with_suffix(".json"), output.with_suffix(".png")
    return output, check_writable(json_path), check_writable(png_path)


def refuse_series_options(stack_path, **options) -> None:
    """Refuse ``--channels`` or ``--timepoints`` for a 3D stack.

    Args:
      stack_path: the input stack (a missing file is left to its reader).
      **options: flag -> value, e.g. ``{"--channels": "0,2"}``; None when not given.

    Raises:
      IsojaxInputError: one was given and the stack has no time or channel axis.
    """
    for flag, value in options.items():
        if value is not None and os.path.exists(stack_path):
            raise IsojaxInputError(
                f"{stack_path}: {flag} is for stacks with a time or channel axis, and this one "
                "has neither; if it has one, name its axes with --axes (e.g. --axes TZCYX)")


def fit_logged(volumes, *, subsample: float, family, init_px: float | None, steps: int,
               spacing, pixel: float | None, log: Log, prefix: str = ""):
    """:func:`~isojax.calibrate.fit_psf` (key 0) with ``isojax calibrate``'s log lines.

    Args:
      volumes: the stack ``(z, y, x)``, or a list of volumes of one shape to pool.
      subsample: the anisotropy factor.
      family: the PSF family.
      init_px: the initial FWHM in lateral pixels, or None (one axial step).
      steps: L-BFGS iterations.
      spacing: the stack's own voxel size ``(dz, dy, dx)`` in micrometres, or None.
      pixel: the lateral pixel size in micrometres (for the messages), or None.
      log: where the lines go.
      prefix: put before each line (``"channel 1: "``).

    Returns:
      ``(psf, report)`` as :func:`~isojax.calibrate.fit_psf`.
    """
    psf, report = fit_psf(
        jax.random.key(0), volumes, subsample=subsample, family=family, init_fwhm=init_px,
        steps=steps,
        spacing=spacing,  # the stack's own voxel size: fit_psf checks the factor against it
    )
    iv = report.interval
    if iv is None:  # fit_psf always profiles the width; a report without one is a bug
        raise RuntimeError("fit_psf returned a report without a width interval")
    um = "" if pixel is None else f" = {report.fwhm_px * pixel:.4g} µm"
    hi_um = "" if pixel is None else f" ({iv.low * pixel:.3g} to {iv.high * pixel:.3g} µm)"
    log(f"{prefix}axial PSF ({family}): FWHM {report.fwhm_px:.3g} px{um}, sigma "
        f"{report.sigma_px:.3g} px{_continuous_note(report)}; 95% interval for sigma "
        f"{iv.low:.3g} to {iv.high:.3g} px{hi_um}; objective {report.loss:.4g}; "
        f"{report.seconds:.1f} s")
    for w in report.warnings:
        log(f"{prefix}warning: {w}")
    return psf, report


def _continuous_note(report: CalibrationReport) -> str:
    """``" (a continuous blur of sigma ... px)"`` where that differs from the kernel's width
    by more than 1% (sub-pixel widths: see ``CalibrationReport.sigma_continuous_px``)."""
    c = report.sigma_continuous_px
    if abs(c - report.sigma_px) <= 0.01 * report.sigma_px:
        return ""
    return f" (the blur of a continuous Gaussian of sigma {c:.3g} px)"


def unidentified_message(report: CalibrationReport, *, where: str = "this stack") -> str:
    """The refusal of a width that ``where`` does not identify (without the fix).

    Args:
      report: the fit's report (with its interval).
      where: what did not identify it, for the message.

    Returns:
      The message, ending with "nothing written".
    """
    iv = report.interval
    assert iv is not None, "fit_logged checked it"
    return (f"the axial PSF is not identifiable from {where} (sigma between {iv.low:.3g} "
            f"and {iv.high:.3g} px fit it equally well); nothing written")


def write_calibration(output: Path, psf, report: CalibrationReport, *, summary: dict,
                      pixel: float | None, overwrite: bool) -> list[Path]:
    """Write one fit's JSON report, PNG and PSF TIFF (float32, pixel size in the metadata).

    Each file is written atomically; if one fails, those written here are removed.

    Args:
      output: the PSF TIFF (its ``.json`` and ``.png`` beside it).
      psf: the fitted :class:`~isojax.forward.FactoredPSF`.
      report: the fit's :class:`~isojax.calibrate.CalibrationReport` (for the PNG).
      summary: the JSON report to write.
      pixel: the lateral pixel size in micrometres, or None.
      overwrite: replace existing files.

    Returns:
      The paths written: the JSON, the PNG and the TIFF.
    """
    json_path, png_path = output.with_suffix(".json"), output.with_suffix(".png")
    written: list[Path] = []
    try:
        atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"),
                     overwrite=overwrite)
        written.append(json_path)
        save_calibration_png(png_path, report, pixel, overwrite=overwrite)
        written.append(png_path)
        write_tiff(output, np.asarray(psf.dense(), np.float32), pixel_size=pixel,
                   overwrite=overwrite)
        written.append(output)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def save_calibration_png(path: Path, report: CalibrationReport, pixel_size: float | None, *,
                         overwrite: bool = True) -> None:
    """The calibration's picture: the spectra, the fitted PSF and the width's profile.

    Args:
      path: the PNG to write (atomically).
      report: the fit's report.
      pixel_size: the lateral pixel size in micrometres (a second axis), or None.
      overwrite: replace an existing file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = check_writable(path)
    fig = Figure(figsize=(15, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_s, ax_p, ax_o = fig.subplots(1, 3)
    f = report.frequencies
    ax_s.semilogy(f, report.observed, "o-", ms=3, label="observed Z lines (laterally blurred)")
    ax_s.semilogy(f, report.synthetic, "s-", ms=3, label="XY lines through measure (fitted)")
    ax_s.semilogy(f, report.initial, ":", label="XY lines at the refinement's start")
    ax_s.set_xlabel("frequency (cycles per axial sample)")
    ax_s.set_ylabel("power")
    ax_s.legend(fontsize=8)
    ax_s.grid(alpha=0.3)
    axial = np.asarray(report.psf().axial[0])
    scale, unit = (pixel_size, "µm") if pixel_size is not None else (1.0, "px")
    x = (np.arange(axial.size) - axial.size // 2) * scale
    ax_p.plot(x, axial, "o-", ms=3)
    ax_p.set_xlabel(f"axial offset ({unit})")
    ax_p.set_ylabel("PSF (sums to 1)")
    ax_p.set_title(f"{report.family}: FWHM {report.fwhm_px:.3g} px")
    ax_p.grid(alpha=0.3)
    iv = report.interval
    if iv is not None and report.profile_sigmas is not None:
        sig = np.asarray(report.profile_sigmas)
        sig = np.where(sig <= 0.05, 0.0, sig)
        ax_o.semilogy(sig, report.profile_losses, "o-", ms=3, label="objective (nuisance fitted)")
        ax_o.axhline(iv.threshold, color="C3", ls="--", lw=1, label="interval threshold")
        high = iv.high if np.isfinite(iv.high) else float(sig.max())
        ax_o.axvspan(iv.low, high, color="C2", alpha=0.2, label="95% interval")
        ax_o.axvline(report.subsample, color="0.5", ls=":", lw=1, label="axial step")
        ax_o.set_xlabel("additional axial sigma (px)")
        ax_o.set_ylabel("spectral objective")
        verdict = "identifiable" if iv.identifiable else "NOT identifiable from this stack"
        ax_o.set_title(f"sigma {iv.low:.3g} to {iv.high:.3g} px: {verdict}", fontsize=9)
        ax_o.legend(fontsize=8)
        ax_o.grid(alpha=0.3)
        if pixel_size is not None:
            top = ax_o.secondary_xaxis("top", functions=(lambda v: v * pixel_size,
                                                          lambda v: v / pixel_size))
            top.set_xlabel("additional axial sigma (µm)")
    fig.suptitle(f"PSF self-calibration, objective {report.loss:.3g}")
    atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=100), overwrite=overwrite)


def _channel_line(c: int, name, report: CalibrationReport, pixel: float | None) -> str:
    iv = report.interval
    assert iv is not None, "fit_logged checked it"
    label = f"channel {c}" + (f" ({name})" if name else "")
    um = "" if pixel is None else f" = {report.fwhm_px * pixel:.4g} µm"
    verdict = "identifiable" if iv.identifiable else "NOT identifiable"
    return (f"  {label}: FWHM {report.fwhm_px:.3g} px{um}, sigma {report.sigma_px:.3g} px, "
            f"95% interval {iv.low:.3g} to {iv.high:.3g} px: {verdict}")


def calibrate_stack_file(
    stack_path: str | os.PathLike,
    *,
    output: str | os.PathLike,
    family: Literal["gaussian", "multi-gaussian", "free"] = "gaussian",
    init_fwhm: float | None = None,
    subsample: float | None = None,
    spacing: Sequence[float] | None = None,
    steps: int = 40,
    overwrite: bool = False,
    allow_unidentified: bool = False,
    log: Log,
) -> dict:
    """Calibrate a 3D stack and write its PSF, JSON and PNG: ``isojax calibrate`` of one volume.

    :func:`isojax.pipeline.calibrate_file` documents the outputs and the refusal of an
    unidentifiable width; this is its 3D branch (a hyperstack goes to
    :func:`calibrate_series_file`).

    Args:
      stack_path: the anisotropic 3D stack TIFF or OME-Zarr.
      output, family, init_fwhm, subsample: as :func:`isojax.pipeline.calibrate_file`.
      spacing, steps, overwrite, allow_unidentified, log: as there.

    Returns:
      The JSON report as a dict.

    Raises:
      IsojaxInputError: bad stack or options; an output exists and ``overwrite`` is False;
        an output is the stack; the width is not identifiable and ``allow_unidentified``
        is False.
    """
    output, json_path, png_path = calibration_paths(output)
    check_outputs([output, json_path, png_path], inputs={"stack": stack_path},
                  overwrite=overwrite, log=log)
    stack, g = read_stack(stack_path, spacing=spacing, subsample=subsample,
                          on_conflict="error", log=log)
    check_contrast(stack, percentiles=(1.0, 99.8), name=stack_path)
    pixel = g.pixel_size
    init_px = um_to_px(init_fwhm, pixel=pixel, name="--init-fwhm")
    log(f"stack {stack_path}: shape {stack.shape} (z, y, x), subsample {g.subsample:.4g} "
        f"from {g.how}")
    psf, report = fit_logged(stack, subsample=g.subsample, family=family, init_px=init_px,
                             steps=steps, spacing=g.spacing, pixel=pixel, log=log)
    if not report.identifiable and not allow_unidentified:
        raise IsojaxInputError(
            f"{unidentified_message(report)}. Give a bead or theory PSF, or pass "
            "--allow-unidentified to write the best fit anyway.")
    summary = report.to_json()
    summary.update(stack=str(stack_path), subsample_from=g.how, psf_file=output.name)
    write_calibration(output, psf, report, summary=summary, pixel=pixel, overwrite=overwrite)
    log(f"wrote {output}, {json_path.name} and {png_path.name}")
    return summary


def calibrate_series_file(
    stack_path: str | os.PathLike,
    *,
    output: str | os.PathLike,
    family: Literal["gaussian", "multi-gaussian", "free"] = "gaussian",
    init_fwhm: float | None = None,
    subsample: float | None = None,
    spacing: Sequence[float] | None = None,
    steps: int = 40,
    overwrite: bool = False,
    allow_unidentified: bool = False,
    axes: str | None = None,
    channels: str | Sequence[int] | None = None,
    timepoints: str | None = None,
    log: Log,
) -> dict[int, dict]:
    """Calibrate each selected channel of a hyperstack and write one PSF file per channel.

    A stack with several channels writes ``output`` with ``_c{index}`` before its suffix
    for each selected channel (``psf.tif`` -> ``psf_c0.tif``, ``psf_c1.tif``; the index is
    the channel's in the input, whatever the selection), each with its ``.json`` and
    ``.png``: what a single-channel calibration writes, plus ``channel``,
    ``channel_name`` and ``timepoints`` in the JSON. A stack with one channel (a ``TZYX``
    time-lapse) writes ``output`` itself.

    Args:
      stack_path: an ImageJ hyperstack, OME-TIFF or OME-Zarr 0.5 image with T and/or C
        axes.
      output: the PSF TIFF (see above for the per-channel names).
      family, init_fwhm, subsample, spacing, steps, overwrite, allow_unidentified: as
        :func:`isojax.pipeline.calibrate_file`.
      axes: the stored axes (``--axes TZCYX``) for files that do not name them.
      channels: ``--channels 0,2`` (default all).
      timepoints: ``--timepoints 0:100`` (Python slice syntax), pooled per channel;
        default :func:`default_timepoints` (3 spread over the series, first and last).
      log: where messages go.

    Returns:
      ``{channel: report}``: each selected channel's JSON report as a dict.

    Raises:
      IsojaxInputError: before anything is written: unknown axes, a channel or time point
        out of range, a bad voxel size or factor, an output that may not be written, a
        volume without contrast (named), a fit that fails, and a channel whose width is not
        identifiable (unless ``allow_unidentified``; the message names the channel).
    """
    # the code is 60 lines; the docstring documents every option
    hyper = open_hyperstack(stack_path, axes=axes, spacing=spacing)
    cs = parse_channels(channels, hyper.n_channels)
    ts = select_timepoints(timepoints, hyper.n_timepoints)
    per_channel = hyper.n_channels > 1
    outs = {c: Path(channel_output(output, c) if per_channel else output) for c in cs}
    paths = [p for c in cs for p in calibration_paths(outs[c])]
    check_outputs(paths, inputs={"stack": stack_path}, overwrite=overwrite, log=log)
    g = from_metadata(hyper.spacing, source=hyper.source, subsample=subsample, name=stack_path,
                      on_conflict="error", axes="TCZYX", log=log)
    pixel = g.pixel_size
    init_px = um_to_px(init_fwhm, pixel=pixel, name="--init-fwhm")
    names = hyper.channel_names
    log(f"stack {stack_path}: time points {', '.join(map(str, ts))} of {hyper.n_timepoints} "
        f"pooled per channel, channels {', '.join(map(str, cs))} of {hyper.n_channels}, "
        f"volumes {hyper.shape[2:]} (z, y, x), subsample {g.subsample:.4g} from {g.how}")
    fits = {}
    for c in cs:
        volumes = channel_volumes(hyper, c, ts, name=stack_path)
        try:
            fits[c] = fit_logged(volumes, subsample=g.subsample, family=family,
                                 init_px=init_px, steps=steps, spacing=g.spacing, pixel=pixel,
                                 log=log, prefix=f"channel {c}: ")
        except IsojaxInputError as exc:
            raise IsojaxInputError(f"{stack_path}: channel {c}: {exc}") from None
    log(f"per-channel axial PSF ({family}), from {len(ts)} time point"
        f"{'s' if len(ts) != 1 else ''} each:")
    for c in cs:
        log(_channel_line(c, names[c] if names else None, fits[c][1], pixel))
    bad = [c for c in cs if not fits[c][1].identifiable]
    if bad and not allow_unidentified:
        which = f"channel{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}"
        raise IsojaxInputError(
            f"{stack_path}: {which}: "
            f"{unidentified_message(fits[bad[0]][1], where='its volumes')} for any channel. "
            "Give a bead or theory PSF for it, calibrate the other channels alone "
            "(--channels), or pass --allow-unidentified to write the best fits anyway.")
    summaries: dict[int, dict] = {}
    written: list[Path] = []
    try:
        for c in cs:
            psf, report = fits[c]
            summary = report.to_json()
            summary.update(stack=str(stack_path), subsample_from=g.how,
                           psf_file=outs[c].name, channel=c,
                           channel_name=names[c] if names else None, timepoints=list(ts))
            written += write_calibration(outs[c], psf, report, summary=summary, pixel=pixel,
                                         overwrite=overwrite)
            summaries[c] = summary
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    log(f"wrote {', '.join(str(outs[c]) for c in cs)} (each with its .json and .png)")
    return summaries
