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

from isojax.errors import IsojaxInputError, log_to_stderr, log_warnings
from isojax.io import read_tiff, require_spacing
from isojax.psf.bead import axial_psf, process_bead, resample_psf
from isojax.psf.check import AxialPSF
from isojax.psf.models import theoretical_axial_psf

__all__ = ["resolve_psf"]

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
}


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
        ``pixel_size`` (na, wavelength_um, ri, modality, ...).
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
            p, _info = theoretical_axial_psf(pixel_size=pixel_size, **theory)
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
