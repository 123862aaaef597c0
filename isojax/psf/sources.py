"""PSF sources: one function that turns a PSF file, a bead or theory options into one checked PSF.

The result is an :class:`~isojax.psf.AxialPSF` (the PSF, its pixel size, its provenance),
checked once here.

:func:`resolve_psf` is what ``isojax train`` (``--psf``, ``--bead``, ``--na ...``) uses; it
lives here, under the PSF toolkit, and :mod:`isojax.pipeline` re-exports it. It reads files, so
it imports :mod:`isojax.io`, which imports nothing of isojax but :mod:`isojax.errors`;
:mod:`isojax.psf` itself does not import this module, so that ``import isojax.psf`` reads no
files and loads no TIFF library.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from isojax.errors import IsojaxInputError, log_to_stderr, log_warnings
from isojax.io import read_tiff, require_spacing
from isojax.psf.bead import axial_psf, process_bead, resample_psf
from isojax.psf.check import AxialPSF
from isojax.psf.models import theoretical_axial_psf
from isojax.psf.optics import debye_axial_psf

__all__ = ["THEORY_MODELS", "channel_sources", "one_source_each", "resolve_psf",
           "theory_axial_psf"]

Log = Callable[[str], None]



#: The theory options (keyword of :func:`isojax.psf.theoretical_axial_psf`: option), the
#: four required ones first.
_THEORY_OPTIONS = {
    "na": "--na",
    "wavelength_um": "--wavelength",
    "ri": "--ri",
    "modality": "--modality",
    "excitation_um": "--excitation",
    "sheet_fwhm_um": "--sheet-fwhm",
    "model": "--psf-model",
}

#: The theory models: ``theory["model"]`` (default ``"gaussian"``) to the function that
#: computes the additional axial PSF; both take the same options.
THEORY_MODELS = {"gaussian": theoretical_axial_psf, "debye": debye_axial_psf}


def theory_axial_psf(*, pixel_size: float, model: str | None = "gaussian", **theory):
    """The additional axial PSF of a theory model: Gaussian (default) or Debye wave optics.

    Args:
      pixel_size: the image's lateral pixel size in micrometres.
      model: ``"gaussian"`` (:func:`isojax.psf.theoretical_axial_psf`, also for None) or
        ``"debye"`` (:func:`isojax.psf.optics.debye_axial_psf`).
      theory: the other options of those functions (na, wavelength_um, ri, modality, ...).

    Returns:
      ``(psf2d, info)`` as the chosen function returns them.

    Raises:
      IsojaxInputError: an unknown model, or what the chosen function raises.
    """
    name = model or "gaussian"
    if name not in THEORY_MODELS:
        raise IsojaxInputError(
            f"unknown PSF model {model!r}; use {' or '.join(map(repr, THEORY_MODELS))}")
    return THEORY_MODELS[name](pixel_size=pixel_size, **theory)


def resolve_psf(
    *,
    pixel_size: float | None,
    psf: str | os.PathLike | None = None,
    bead: str | os.PathLike | None = None,
    bead_spacing: Sequence[float] | None = None,
    theory: dict | None = None,
    log: Log = log_to_stderr,
) -> AxialPSF:
    """The additional axial PSF at the image's lateral pixel size, from one of three sources.

    The PSF is checked once, here (:meth:`isojax.psf.AxialPSF.checked`); what receives the
    :class:`~isojax.psf.AxialPSF` trusts it.

    Args:
      pixel_size: the image's lateral pixel size in µm (needed for beads and theory, and
        to check or resample a PSF file).
      psf: a 2D ``(lateral, axial)`` PSF TIFF (``isojax psf axial``/``theory`` output).
      bead: a 3D bead stack; its voxel size from metadata or ``bead_spacing``.
      bead_spacing: the bead stack's voxel size ``(dz, dy, dx)`` in micrometres, or None
        (from its metadata).
      theory: keyword arguments of :func:`isojax.psf.theoretical_axial_psf` except
        ``pixel_size`` (na, wavelength_um, ri, modality, ...), and optionally ``model``:
        ``"gaussian"`` (default) or ``"debye"`` (:func:`theory_axial_psf`).
      log: where the PSF's summary line and warnings go.

    Returns:
      The checked PSF: a float32 ``(lateral, axial)`` kernel summing to 1, at ``pixel_size``
      (or the file's own pixel size when the image's is unknown), with its provenance.

    Raises:
      IsojaxInputError: not exactly one source (any theory option counts as the theory
        source), an incomplete theory, or an unusable PSF file or bead.
    """
    _check_one_source(psf, bead, theory)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if psf is not None:
            out = _from_file(psf, pixel_size, log)
        elif bead is not None:
            out = _from_bead(bead, bead_spacing, pixel_size, log)
        else:
            if pixel_size is None:
                raise IsojaxInputError("a theoretical PSF needs the image's pixel size.")
            assert theory is not None, "_check_one_source: exactly one source is given"
            p, _info = theory_axial_psf(pixel_size=pixel_size, **theory)
            shown = ", ".join(f"{key} {theory[key]}" for key in _THEORY_OPTIONS
                              if theory.get(key) is not None)
            out = AxialPSF.checked(p, pixel_size=pixel_size, provenance=f"theory ({shown})")
    log_warnings(log, caught)
    assert out.report is not None, "AxialPSF.checked always reports"
    log(f"axial PSF: shape {out.shape} (lateral, axial), FWHM axial "
        f"{out.report.fwhm_px[1]:.3g} px")
    return out


def _check_one_source(psf, bead, theory) -> None:
    given = [name for name, v in (("--psf", psf), ("--bead", bead)) if v]
    if theory:
        options = [flag for key, flag in _THEORY_OPTIONS.items() if theory.get(key) is not None]
        given.append(f"theory ({', '.join(options)})" if options else "theory")
    if len(given) != 1:
        got = " and ".join([", ".join(given[:-1]), given[-1]] if len(given) > 2 else given)
        raise IsojaxInputError(
            "give exactly one PSF source: --psf AXIAL.tif, --bead BEAD.tif, or the theory "
            f"options (--na, --wavelength, --ri, --modality); got {got or 'none'}."
        )
    if theory:
        missing = [flag for key, flag in list(_THEORY_OPTIONS.items())[:4]
                   if theory.get(key) is None]
        if missing:
            raise IsojaxInputError(
                "a theoretical PSF needs all of --na, --wavelength, --ri and --modality; "
                f"missing {', '.join(missing)}."
            )


def _from_file(path, pixel_size: float | None, log: Log) -> AxialPSF:
    """A PSF TIFF, resampled to the image's pixel size if its own differs, then checked.

    Its dimensionality is checked once, by :func:`isojax.psf.check_psf` (or by
    :func:`isojax.psf.resample_psf` when it must be resampled first); messages name the file.
    """
    p, sp, _source = read_tiff(path)
    psf_px = None if sp is None else float(sp[-1])
    try:
        if psf_px is not None and pixel_size is not None and abs(psf_px / pixel_size - 1) > 0.01:
            p = resample_psf(p, pixel_size=psf_px, target_pixel_size=pixel_size)
            log(f"resampled the PSF from {psf_px:g} to the image's {pixel_size:g} um pixels")
            psf_px = pixel_size
        elif psf_px is None:
            log(f"{path}: no pixel size in the PSF file; assuming it is the image's")
        return AxialPSF.checked(p, pixel_size=psf_px if pixel_size is None else pixel_size,
                                provenance=f"file {path}")
    except IsojaxInputError as exc:
        raise IsojaxInputError(f"{path}: {exc}") from None


def _from_bead(bead, bead_spacing, pixel_size: float | None, log: Log) -> AxialPSF:
    """The additional axial PSF derived from a bead stack (:func:`isojax.psf.axial_psf`)."""
    if pixel_size is None:
        raise IsojaxInputError("deriving a PSF from a bead needs the image's pixel size.")
    b, sp, _ = read_tiff(bead, spacing=bead_spacing)
    if b.ndim != 3:
        raise IsojaxInputError(f"{bead}: a bead stack must be 3D (z, y, x), got {b.shape}.")
    sp = require_spacing(sp, path=bead)
    psf3d, sp, _ = process_bead(b, sp)
    p, info = axial_psf(psf3d, sp, pixel_size)
    log(
        f"axial PSF from bead {bead}: {info['method']} {info['iterations']} iterations, "
        f"FWHM lateral {info['fwhm_input_um'][0]:.3g} -> {info['fwhm_um'][0]:.3g} um, "
        f"axial {info['fwhm_input_um'][1]:.3g} -> {info['fwhm_um'][1]:.3g} um"
    )
    return AxialPSF.checked(p, pixel_size=pixel_size, provenance=f"bead {bead}")


# ----------------------------------------------------------------------------------------
# One PSF per channel


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _per_channel(values: list, flag: str, channels: Sequence[int], log: Log) -> list:
    """``values`` (one, or one per channel) as one per channel, or a one-line error."""
    n = len(channels)
    if len(values) == n:
        return values
    shown = ", ".join(map(str, channels))
    if len(values) == 1:
        log(f"warning: one {flag} for {n} channels ({shown}): every channel is trained with "
            f"it; give {flag} once per channel, in channel order, for one PSF each")
        return values * n
    raise IsojaxInputError(
        f"{flag} is given {len(values)} times but {n} channel{'s are' if n != 1 else ' is'} "
        f"selected ({shown}): give it once per channel, in channel order, or once for all")


def channel_sources(channels: Sequence[int], *, psf=None, bead=None, theory: dict | None = None,
                    log: Log) -> list[dict[str, Any]]:
    """Each selected channel's PSF source, for :func:`isojax.psf.resolve_psf`.

    Args:
      channels: the selected channels, in channel order.
      psf: a PSF file (or :class:`~isojax.psf.AxialPSF`), a sequence of them (one per
        channel, or one for all), or None.
      bead: a bead stack, a sequence of them, or None.
      theory: the theory options (:func:`isojax.psf.theoretical_axial_psf`), whose
        ``wavelength_um`` may be a sequence (one per channel, or one for all), or None.
      log: where the warning for one source shared by several channels goes.

    Returns:
      One ``{"psf": ..., "bead": ..., "theory": ...}`` per channel (the unused ones None);
      a source that is not given is None for every channel, and :func:`resolve_psf` then
      says what is missing.

    Raises:
      IsojaxInputError: a source given neither once nor once per channel.
    """
    n = len(channels)
    psfs, beads = _as_list(psf), _as_list(bead)
    psfs = _per_channel(psfs, "--psf", channels, log) if psfs else [None] * n
    beads = _per_channel(beads, "--bead", channels, log) if beads else [None] * n
    theories: list[dict | None] = [None] * n
    if theory:
        waves = _as_list(theory.get("wavelength_um"))
        waves = _per_channel(waves, "--wavelength", channels, log) if waves else [None] * n
        theories = [{**theory, "wavelength_um": w} for w in waves]
    return [{"psf": p, "bead": b, "theory": t}
            for p, b, t in zip(psfs, beads, theories, strict=True)]


def one_source_each(*, psf=None, bead=None, theory: dict | None = None):
    """A 3D stack's PSF sources, one value each (a sequence of one value is unwrapped).

    ``isojax train`` takes ``--psf``, ``--bead`` and ``--wavelength`` once per channel
    (:func:`channel_sources`); a stack without channels takes each once.

    Args:
      psf: a PSF file, a sequence of them, or None.
      bead: a bead stack, a sequence of them, or None.
      theory: the theory options, whose ``wavelength_um`` may be a sequence, or None.

    Returns:
      ``(psf, bead, theory)`` with single values.

    Raises:
      IsojaxInputError: several values of one source (they are one per channel).
    """
    def one(value, flag):
        if not isinstance(value, (list, tuple)):
            return value
        if len(value) > 1:
            raise IsojaxInputError(
                f"{flag} is given {len(value)} times, but the stack has no channel axis: give "
                "it once (once per channel is for stacks with channels; name their axes with "
                "--axes, e.g. --axes CZYX)")
        return value[0] if value else None

    if theory is not None and isinstance(theory.get("wavelength_um"), (list, tuple)):
        theory = {**theory, "wavelength_um": one(theory["wavelength_um"], "--wavelength")}
    return one(psf, "--psf"), one(bead, "--bead"), theory
