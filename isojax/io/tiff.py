"""TIFF files with voxel sizes: reading (ImageJ and OME-XML metadata, damage checks) and writing.

Volumes are arrays with axes ``(z, y, x)`` and voxel sizes ``spacing = (dz, dy, dx)`` in
micrometres; 2D images have axes ``(y, x)`` and ``spacing = (dy, dx)``. Voxel sizes are read from
ImageJ metadata (resolution tags, ``spacing=`` and ``unit=`` in the description) or from OME-XML
(``PhysicalSizeX/Y/Z`` with their units), and an explicit ``spacing=`` always wins. Writes are
atomic (:func:`isojax.io.outputs.atomic_write`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

from isojax.errors import IsojaxInputError
from isojax.io.outputs import atomic_write, check_new_output, check_writable

_UNIT_UM = {
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "nanometers": 1e-3, "nanometres": 1e-3,
    "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "micrometers": 1.0, "micrometres": 1.0,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "millimeters": 1e3, "millimetres": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
    "a": 1e-4, "angstrom": 1e-4, "\u00e5": 1e-4,
    "inch": 25400.0,
}
# Data types ImageJ can open from a TIFF.
_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16),
                  np.dtype(np.float32))


def unit_to_um(unit: str | None) -> float | None:
    """Micrometres per one ``unit``, or None when the unit is missing or not a length.

    Args:
      unit: a length unit as found in TIFF metadata, e.g. ``"nm"``, ``"µm"``, ``"um"``,
        ``"micron"``, ``"mm"``, or ImageJ's escaped ``"\\u00B5m"``. Case is ignored.

    Returns:
      The factor that converts a length in ``unit`` to micrometres, or None for ``"pixel"``,
      an empty string, None or an unknown unit.
    """
    if unit is None:
        return None
    text = str(unit).strip().replace("\\u00B5", "u").replace("\\u00b5", "u")
    text = text.replace("\u00b5", "u").replace("\u03bc", "u").lower()
    return _UNIT_UM.get(text)


def _positive_spacing(spacing: Sequence[float], *, ndim: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise IsojaxInputError(
            f"{what} must be {ndim} numbers in micrometres, got {spacing!r}") from exc
    if len(values) != ndim:
        names = "(dz, dy, dx)" if ndim == 3 else "(dy, dx)"
        raise IsojaxInputError(
            f"{what} must have {ndim} values {names} in micrometres, got {len(values)}: {values}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise IsojaxInputError(f"{what} must be positive finite micrometres, got {values}")
    return values


def _spatial_ndim(array: np.ndarray) -> int:
    return 2 if array.ndim == 2 else 3


def _imagej_spacing(tif: tifffile.TiffFile, ndim: int) -> tuple[float, ...] | None:
    """Voxel size from ImageJ resolution tags plus ``unit``/``spacing``, or None if incomplete."""
    meta = tif.imagej_metadata or {}
    page = tif.pages.first
    factor = unit_to_um(meta.get("unit"))
    if factor is None:
        # Without a unit in the description, a centimetre or inch ResolutionUnit still counts.
        res_unit = page.tags.get("ResolutionUnit")
        code = int(res_unit.value) if res_unit is not None else 1
        factor = {2: 25400.0, 3: 1e4}.get(code)
    if factor is None:
        return None
    sizes = []
    for name in ("YResolution", "XResolution"):
        tag = page.tags.get(name)
        if tag is None:
            return None
        num, den = tag.value
        if num <= 0 or den <= 0:
            return None
        sizes.append(factor * den / num)
    if ndim == 2:
        return (sizes[0], sizes[1])
    dz = meta.get("spacing")
    if dz is None:
        return None
    return (factor * abs(float(dz)), sizes[0], sizes[1])


def _ome_spacing(tif: tifffile.TiffFile, ndim: int) -> tuple[float, ...] | None:
    """Voxel size from the first OME-XML ``Pixels`` element, or None if incomplete."""
    try:
        root = ET.fromstring(tif.ome_metadata or "")
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = {}
    for axis in "ZYX":
        value = pixels.get(f"PhysicalSize{axis}")
        # OME's default unit for physical sizes is the micrometre.
        factor = unit_to_um(pixels.get(f"PhysicalSize{axis}Unit", "um"))
        if value is None or factor is None:
            continue
        size = factor * float(value)
        if math.isfinite(size) and size > 0:
            sizes[axis] = size
    wanted = "YX" if ndim == 2 else "ZYX"
    if not all(axis in sizes for axis in wanted):
        return None
    return tuple(sizes[axis] for axis in wanted)


# ----------------------------------------------------------------------------------------
# Damaged TIFFs. tifffile reports a broken structure (a page offset past the end of the
# file, ImageJ metadata that promises more planes than there are, ...) through the logging
# module and often goes on with what it could read; these helpers catch those records while
# a file is read and turn them into one IsojaxInputError.

#: The first four bytes of a classic or BigTIFF file, little or big endian.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: What tifffile raises on a broken file (zlib: a truncated compressed strip).
_TIFF_ERRORS = (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError, EOFError,
                struct.error, zlib.error)


class _TifffileRecords(logging.Filter):
    """Holds back the ``tifffile`` logger's records of warning level and above."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            self.records.append(record)
            return False
        return True

    @property
    def errors(self) -> list[str]:
        """tifffile's error messages, without its ``<tifffile.TiffPages @8>`` prefixes."""
        found = []
        for record in self.records:
            if record.levelno >= logging.ERROR:
                text = re.sub(r"^(<[^>]*>\s*)+", "", record.getMessage()).strip()
                if text and text not in found:
                    found.append(text)
        return found


@contextlib.contextmanager
def _tifffile_log() -> Iterator[_TifffileRecords]:
    """Catch what tifffile logs during the block; on a clean exit without errors, its
    warnings are passed on as they would have been. Nothing is left on the logger."""
    logger = logging.getLogger("tifffile")
    caught = _TifffileRecords()
    logger.addFilter(caught)
    try:
        yield caught
    finally:
        logger.removeFilter(caught)
    if not caught.errors:
        for record in caught.records:
            logger.handle(record)


def _looks_like_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _damaged(path: Path, found: str) -> IsojaxInputError:
    return IsojaxInputError(
        f"{path}: the TIFF is truncated or damaged ({found}); copy or export it again")


def _unreadable(path: Path, exc: BaseException) -> IsojaxInputError:
    """The error for a TIFF that tifffile could not read: damaged if it starts like a TIFF."""
    if _looks_like_tiff(path):
        return _damaged(path, str(exc) or type(exc).__name__)
    return IsojaxInputError(f"{path}: cannot be read as a TIFF ({exc})")


def _shortfall(path: Path, tif: tifffile.TiffFile, series) -> str | None:
    """What the file's metadata or structure promises and it does not hold, or None."""
    planes = math.prod(series.shape[:-2]) if len(series.shape) > 2 else 1
    if tif.is_imagej:
        promised = (tif.imagej_metadata or {}).get("images")
        if isinstance(promised, int) and promised > planes:
            return f"its ImageJ metadata promises {promised} planes, the file holds {planes}"
    len(tif.pages)  # walks the whole chain of pages (cheaply): tifffile logs a broken one
    size = os.path.getsize(path)
    end = 0
    if getattr(series, "dataoffset", None) is not None:  # contiguous: one block of data
        end = int(series.dataoffset) + int(series.nbytes)
    else:
        for page in tif.pages:
            if page is None:
                continue
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
                end = max(end, int(offset) + int(count))
    if end > size:
        return f"the file ends at byte {size}, its image data runs to byte {end}"
    return None


def _check_read(path: Path, caught: _TifffileRecords, short: str | None) -> None:
    if short is not None or caught.errors:
        raise _damaged(path, short or "; ".join(caught.errors[:2]))


def read_tiff(
    path: str | os.PathLike, *, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, tuple[float, ...] | None, str]:
    """Read a TIFF and its voxel size in micrometres.

    The voxel size comes from, in this order: the ``spacing`` override; OME-XML
    ``PhysicalSizeX/Y/Z`` (with their units); ImageJ metadata (``XResolution``/``YResolution``
    in pixels per ``unit`` and ``spacing`` for z). Units nm, µm/um/micron, mm (and a few more)
    are converted to micrometres. Free text such as a ``BoundingBox`` description is never
    interpreted: use :func:`require_spacing` to get a message that shows it.

    Args:
      path: the TIFF file.
      spacing: optional voxel size that overrides the metadata, ``(dz, dy, dx)`` in micrometres
        for a stack or ``(dy, dx)`` for a 2D image.

    Returns:
      ``(array, spacing, source)``: the first series as a numpy array (axes ``(z, y, x)`` for a
      stack, ``(y, x)`` for an image); the voxel size as a tuple of floats in micrometres (three
      values for three or more axes, two for a 2D image) or None when none was found; and where
      it came from, one of ``"override"``, ``"ome"``, ``"imagej"``, ``"none"``.

    Raises:
      IsojaxInputError: the file is missing or is not a readable TIFF; it is truncated or
        damaged (tifffile found a broken structure, or fewer planes or bytes than the file
        promises; tifffile's own log records are held back); or ``spacing`` does not match
        the number of spatial axes or is not positive.
    """
    path = Path(path)
    if not path.exists():
        raise IsojaxInputError(f"{path}: no such file")
    if path.is_dir():
        raise IsojaxInputError(f"{path}: is a folder, expected a TIFF file")
    with _tifffile_log() as caught:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                array = series.asarray()
                ndim = _spatial_ndim(array)
                found_ome = _ome_spacing(tif, ndim) if tif.is_ome else None
                found_ij = _imagej_spacing(tif, ndim) if tif.is_imagej else None
                short = _shortfall(path, tif, series)
        except _TIFF_ERRORS as exc:
            raise _unreadable(path, exc) from exc
        _check_read(path, caught, short)
    if spacing is not None:
        return array, _positive_spacing(spacing, ndim=ndim, what="spacing"), "override"
    if found_ome is not None:
        return array, found_ome, "ome"
    if found_ij is not None:
        return array, found_ij, "imagej"
    return array, None, "none"


def tiff_description(path: str | os.PathLike) -> str | None:
    """The first page's ImageDescription of a TIFF, or None if it has none or cannot be read.

    Args:
      path: the TIFF file.

    Returns:
      The description text, or None.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            description = tif.pages.first.description
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return None
    return description or None


def _free_text(description: str | None) -> str | None:
    """The description if it is free text, not ImageJ, OME-XML or tifffile's JSON shape."""
    if not description:
        return None
    text = description.strip()
    if text.startswith(("ImageJ=", "<?xml", "<OME", '{"shape"')):
        return None
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def require_spacing(
    spacing: Sequence[float] | None,
    *,
    path: str | os.PathLike | None = None,
    ndim: int = 3,
) -> tuple[float, ...]:
    """Return the voxel size, or explain how to provide it when there is none.

    Args:
      spacing: the voxel size found so far (e.g. from :func:`read_tiff`), ``(dz, dy, dx)`` in
        micrometres for ``ndim=3`` or ``(dy, dx)`` for ``ndim=2``; None if none was found.
      path: the file it was read from, named in the message and whose ImageDescription is
        quoted when it holds free text (isojax never guesses a voxel size from free text).
      ndim: number of spatial axes, 3 for a stack or 2 for an image.

    Returns:
      The voxel size as a tuple of positive floats in micrometres.

    Raises:
      IsojaxInputError: ``spacing`` is None (the message says to pass ``--spacing Z Y X`` on the
        command line or ``spacing=`` in Python), or it is malformed.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if spacing is not None:
        return _positive_spacing(spacing, ndim=ndim, what="spacing")
    where = f"{path}: " if path is not None else ""
    if ndim == 3:
        how = ("pass it with --spacing Z Y X (command line) or spacing=(dz, dy, dx) (Python), "
               "in micrometres")
    else:
        how = ("pass it with --pixel-size UM (command line) or spacing=(dy, dx) (Python), "
               "in micrometres")
    message = f"{where}no voxel size in the TIFF metadata (ImageJ or OME); {how}"
    text = _free_text(tiff_description(path)) if path is not None else None
    if text is not None:
        message += (f'. Its description says "{text}"; isojax does not guess a voxel size '
                    "from free text")
    raise IsojaxInputError(message)


def write_tiff(
    path: str | os.PathLike,
    array,
    *,
    spacing: Sequence[float] | None = None,
    pixel_size: float | None = None,
    dtype=np.float32,
    overwrite: bool = True,
) -> Path:
    """Write a 2D image or 3D stack as an ImageJ TIFF with its voxel size, atomically.

    The metadata is what ImageJ/Fiji reads: ``unit=micron``, ``XResolution``/``YResolution`` in
    pixels per micrometre and, for a stack, ``spacing=dz``. Planes are converted to ``dtype``
    one at a time while they are written; if anything fails, no file and no temporary file is
    left behind.

    Args:
      path: destination file; its folder must exist and be writable.
      array: 2D ``(y, x)`` or 3D ``(z, y, x)`` array-like.
      spacing: voxel size in micrometres, ``(dz, dy, dx)`` for 3D or ``(dy, dx)`` for 2D;
        None to write no physical size.
      pixel_size: for a 2D array, the pixel size in micrometres on both axes (an alternative to
        ``spacing``).
      dtype: one of the types ImageJ opens: float32 (default), uint8, uint16, int16.
      overwrite: replace an existing ``path`` (the default: a model folder's own files are
        rewritten); with False an existing file is refused, also one that appeared while
        the file was being written. The commands pass their ``--overwrite`` here.

    Returns:
      The path written.

    Raises:
      IsojaxInputError: the folder is missing or not writable; the array is not 2D or 3D or
        cannot be converted to ``dtype``; the voxel size is malformed; ``dtype`` is not one
        ImageJ supports; ``path`` exists and ``overwrite`` is False.
    """
    path = check_writable(path)
    if not overwrite:
        check_new_output(path, overwrite=False)
    dtype = np.dtype(dtype)
    if dtype not in _IMAGEJ_DTYPES:
        raise IsojaxInputError(
            f"{path}: ImageJ TIFFs cannot hold {dtype}; use float32, uint8, uint16 or int16")
    data = np.asarray(array) if not isinstance(array, np.ndarray) else array
    if data.ndim not in (2, 3):
        raise IsojaxInputError(
            f"{path}: can write a 2D (y, x) or 3D (z, y, x) array, got shape {data.shape}")
    if pixel_size is not None:
        if data.ndim != 2 or spacing is not None:
            raise IsojaxInputError(
                "pixel_size= is for 2D arrays without spacing=; for a stack pass "
                "spacing=(dz, dy, dx)")
        spacing = (pixel_size, pixel_size)
    if spacing is not None:
        spacing = _positive_spacing(spacing, ndim=data.ndim, what="spacing")

    metadata: dict = {"axes": "ZYX" if data.ndim == 3 else "YX"}
    options: dict = {}
    if spacing is not None:
        metadata["unit"] = "micron"
        options["resolution"] = (1.0 / spacing[-1], 1.0 / spacing[-2])
        if data.ndim == 3:
            metadata["spacing"] = spacing[0]
    planes = data if data.ndim == 3 else data[None]

    def converted() -> Iterator[np.ndarray]:
        for index, plane in enumerate(planes):
            try:
                values = np.asarray(plane)
                out = values.astype(dtype)
                if dtype.kind in "ui" and values.dtype.kind in "fiu" and values.size:
                    info = np.iinfo(dtype)
                    if values.min() < info.min or values.max() > info.max:
                        raise ValueError(f"values outside the range of {dtype}")
            except (TypeError, ValueError) as exc:
                raise IsojaxInputError(
                    f"{path}: plane {index} cannot be converted to {dtype} ({exc})") from exc
            yield out

    def write(temp: Path) -> None:
        tifffile.imwrite(temp, data=converted(), shape=data.shape, dtype=dtype, imagej=True,
                         metadata=metadata, **options)

    return atomic_write(path, write, overwrite=overwrite)
