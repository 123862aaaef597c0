"""TIFF input and output with voxel sizes: the stateful edge of isojax.

Volumes are arrays with axes ``(z, y, x)`` and voxel sizes ``spacing = (dz, dy, dx)`` in
micrometres; 2D images have axes ``(y, x)`` and ``spacing = (dy, dx)``. Voxel sizes are read from
ImageJ metadata (resolution tags, ``spacing=`` and ``unit=`` in the description) or from OME-XML
(``PhysicalSizeX/Y/Z`` with their units), and an explicit ``spacing=`` always wins. Writes are
atomic: a temporary file in the destination folder is renamed over the target only once it is
complete, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import struct
import sys
import tempfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

from isojax.errors import IsojaxInputError

__all__ = [
    "NGFF_VERSION",
    "IsojaxInputError",
    "TiffVolume",
    "ZarrVolume",
    "check_new_output",
    "check_outputs",
    "create_volume",
    "ome_zarr_attributes",
    "ome_zarr_spacing",
    "open_volume",
    "read_ome_zarr",
    "read_tiff",
    "remove_stale_partials",
    "require_spacing",
    "staged_output",
    "tiff_description",
    "unit_to_um",
    "volume_format",
    "write_ome_zarr",
    "write_tiff",
]

# Micrometres per unit. Keys are lower case with the micro sign spelled "u".
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
    """The first page's ImageDescription of a TIFF, or None if it has none or cannot be read."""
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


def _check_folder_writable(path: Path) -> Path:
    """Raise unless the folder that will hold ``path`` exists and is writable."""
    folder = path.parent
    if not folder.is_dir():
        raise IsojaxInputError(f"{path}: cannot write, folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise IsojaxInputError(f"{path}: cannot write, folder {folder} is not writable")
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if ``path`` cannot be written.

    Args:
      path: the file about to be written.

    Returns:
      ``path`` as a ``Path``.

    Raises:
      IsojaxInputError: its folder does not exist or is not writable, or ``path`` is a folder.
    """
    path = _check_folder_writable(Path(path))
    if path.is_dir():
        raise IsojaxInputError(f"{path}: cannot write, it is a folder")
    return path


def atomic_write(path: Path, write, *, overwrite: bool = True) -> Path:
    """Call ``write(temp_path)`` then rename the temporary file over ``path``.

    The temporary file lives in the same folder (so the rename is atomic), is named
    ``.<name>.partial-<host>-<pid>-<random>.tmp`` (see :func:`remove_stale_partials`) and is
    removed if ``write`` raises, so a failure leaves neither ``path`` nor a temporary file
    behind.

    Args:
      path: the destination; its folder must exist and be writable.
      write: a function of one ``Path`` that writes the complete file there.
      overwrite: replace an existing ``path`` (the default, for files a command owns); with
        False an existing ``path`` is refused, also one that appeared while ``write`` ran.

    Returns:
      ``path``.

    Raises:
      IsojaxInputError: ``overwrite`` is False and ``path`` exists (before or after ``write``).
    """
    path = Path(path)
    if not overwrite:
        check_new_output(path, overwrite=False)
    remove_stale_partials(path)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_partial_tag()}-",
                                     suffix=".tmp")
    os.close(fd)
    temp = Path(temp_name)
    try:
        write(temp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        if overwrite:
            os.replace(temp, path)
        else:
            _rename_no_replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def _appeared(path: Path) -> IsojaxInputError:
    return IsojaxInputError(
        f"{path} appeared while it was being written; not replaced. Pass --overwrite "
        "(command line) or overwrite=True (Python) to replace it, or choose another output")


def _rename_no_replace(temp: Path, path: Path) -> None:
    """Rename the file ``temp`` to ``path``, refusing (atomically, where the file system has
    hard links) to replace a ``path`` that exists."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise _appeared(path) from None
    except OSError:  # no hard links here (some network or FUSE file systems): check, rename
        if os.path.lexists(path):
            raise _appeared(path) from None
        os.rename(temp, path)
        return
    temp.unlink()


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


# ----------------------------------------------------------------------------------------
# Volumes larger than memory: memory-mapped TIFF and OME-Zarr (v3, OME-NGFF 0.5)
#
# A volume is read and written by regions, ``volume.read((zs, ys, xs))`` and
# ``volume.write((zs, ys, xs), values)`` with three slices, so that no more than a region is
# ever held in memory. Uncompressed contiguous TIFFs are read through short-lived memory maps
# of a few planes (a long-lived map of the whole file would count every page it touched in
# the process's resident memory); Zarr v3 arrays through tensorstore.

#: Bytes of a TIFF that one temporary memory map covers (whole planes, at least one).
_WINDOW_BYTES = 64 * 2**20
#: Bytes of Zarr chunks that one tensorstore read or write may touch (at least one chunk).
_ZARR_PIECE_BYTES = 64 * 2**20
#: OME-NGFF version written and read.
NGFF_VERSION = "0.5"
_ZARR_SUFFIXES = (".zarr",)
_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
_AXES = ("z", "y", "x")


def volume_format(path: str | os.PathLike) -> str:
    """``"zarr"`` or ``"tiff"``: the format a volume path names, from its suffix or content.

    A folder, or a path ending in ``.zarr``, is Zarr; ``.tif``, ``.tiff``, ``.btf`` and
    ``.tf8`` are TIFF.

    Raises:
      IsojaxInputError: the suffix is neither.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _ZARR_SUFFIXES or path.is_dir():
        return "zarr"
    if suffix in _TIFF_SUFFIXES:
        return "tiff"
    raise IsojaxInputError(
        f"{path}: unknown volume format {suffix!r}; use .tif/.tiff (TIFF, BigTIFF) or .zarr "
        "(OME-Zarr)")


def _plain_slices(index, shape) -> tuple[slice, ...]:
    if len(index) != 3 or not all(isinstance(s, slice) for s in index):
        raise ValueError(f"a region is three slices (z, y, x), got {index!r}")
    return tuple(slice(*s.indices(n)) for s, n in zip(index, shape, strict=True))


class TiffVolume:
    """A 3D ``(z, y, x)`` uncompressed, contiguous TIFF read and written by regions.

    Attributes:
      path: the file.
      shape: ``(z, y, x)`` in voxels.
      dtype: the stored data type (native byte order when read).
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, or None when unknown.
      source: where ``spacing`` came from (``"override"``, ``"ome"``, ``"imagej"``, ``"none"``).
    """

    def __init__(self, path, *, offset: int, shape, dtype, spacing, source: str, mode: str):
        self.path = Path(path)
        self.offset = int(offset)
        self.shape = tuple(int(n) for n in shape)
        self._stored = np.dtype(dtype)
        self.dtype = self._stored.newbyteorder("=")
        self.spacing = spacing
        self.source = source
        self._mode = mode
        self._plane = self.shape[1] * self.shape[2] * self._stored.itemsize

    def _windows(self, zs: slice):
        """``(z0, z1, out0)`` runs of planes, each mapped at once; ``out0`` indexes the result."""
        planes = range(zs.start, zs.stop, zs.step)
        if zs.step != 1:
            for k, z in enumerate(planes):
                yield z, z + 1, k
            return
        per = max(1, _WINDOW_BYTES // max(self._plane, 1))
        for z0 in range(zs.start, zs.stop, per):
            yield z0, min(zs.stop, z0 + per), z0 - zs.start

    def _map(self, z0: int, z1: int, mode: str) -> np.memmap:
        return np.memmap(self.path, dtype=self._stored, mode=mode,
                         offset=self.offset + z0 * self._plane,
                         shape=(z1 - z0, *self.shape[1:]))

    def read(self, index) -> np.ndarray:
        """The region ``index`` (three slices, steps allowed) as a new native-order array."""
        zs, ys, xs = _plain_slices(index, self.shape)
        n = [len(range(s.start, s.stop, s.step)) for s in (zs, ys, xs)]
        out = np.empty(n, self.dtype)
        for z0, z1, k in self._windows(zs):
            window = self._map(z0, z1, "r")
            out[k : k + z1 - z0] = window[:, ys, xs]
            del window
        return out

    def write(self, index, values) -> None:
        """Store ``values`` (cast to the stored type) in the region ``index`` (unit steps)."""
        if self._mode == "r":
            raise ValueError(f"{self.path} is open for reading only")
        zs, ys, xs = _plain_slices(index, self.shape)
        values = np.asarray(values)
        for z0, z1, k in self._windows(zs):
            window = self._map(z0, z1, "r+")
            window[:, ys, xs] = values[k : k + z1 - z0]
            window.flush()
            del window


class ZarrVolume:
    """A 3D ``(z, y, x)`` Zarr v3 array (an OME-Zarr image's first level), through tensorstore.

    Attributes are those of :class:`TiffVolume`; ``source`` is ``"ome-zarr"`` when the
    voxel size came from the OME-NGFF metadata.
    """

    def __init__(self, path, store, *, spacing, source: str):
        self.path = Path(path)
        self.store = store
        self.shape = tuple(int(n) for n in store.shape)
        self.dtype = np.dtype(store.dtype.numpy_dtype)
        self.spacing = spacing
        self.source = source

        chunk = store.chunk_layout.write_chunk.shape or store.chunk_layout.read_chunk.shape
        self.chunks = tuple(int(c) if c else int(n) for c, n in zip(chunk, self.shape, strict=True))

    def _pieces(self, index):
        """Split a region into pieces that each touch at most ``_ZARR_PIECE_BYTES`` of chunks.

        tensorstore decodes (and, for a write that covers chunks partially, reads, merges and
        re-encodes) every chunk a read or write touches, all at once: a slab of a few x lines
        across a whole ``(z, y)`` cross-section holds every chunk of that cross-section in
        memory, several times the slab itself. Pieces of whole chunk rows along z (then y)
        keep that to a constant. Yields ``(store_slices, out_slices)``.
        """
        sl = _plain_slices(index, self.shape)
        groups = []  # per axis: runs of the region's indices that share a chunk
        for s, c in zip(sl, self.chunks, strict=True):
            runs: list[list[int]] = []
            for k, i in enumerate(range(s.start, s.stop, s.step)):
                if runs and runs[-1][2] == i // c:
                    runs[-1][1] = k + 1
                else:
                    runs.append([k, k + 1, i // c])
            groups.append(runs)
        chunk_bytes = math.prod(self.chunks) * self.dtype.itemsize
        limit = max(1, _ZARR_PIECE_BYTES // chunk_bytes)  # chunks per piece

        def block(axis, runs):
            s = sl[axis]
            k0, k1 = runs[0][0], runs[-1][1]
            start = s.start + k0 * s.step
            return slice(start, s.start + (k1 - 1) * s.step + 1, s.step), slice(k0, k1)

        def split(axis, fixed_store, fixed_out):
            if axis == 3:
                yield tuple(fixed_store), tuple(fixed_out)
                return
            rest = math.prod(len(g) for g in groups[axis + 1:])
            per = max(1, limit // max(1, rest))
            runs = groups[axis]
            for r0 in range(0, len(runs), per):
                st, out = block(axis, runs[r0 : r0 + per])
                if rest <= limit:
                    yield (*fixed_store, st, *sl[axis + 1:]), (*fixed_out, out,
                                                                *(slice(None),) * (2 - axis))
                else:
                    yield from split(axis + 1, [*fixed_store, st], [*fixed_out, out])

        if not all(groups):
            return
        yield from split(0, [], [])

    def read(self, index) -> np.ndarray:
        """The region ``index`` (three slices, steps allowed) as a NumPy array.

        Read in pieces of at most ``_ZARR_PIECE_BYTES`` of chunks (see :meth:`_pieces`).
        """
        sl = _plain_slices(index, self.shape)
        out = np.empty([len(range(s.start, s.stop, s.step)) for s in sl], self.dtype)
        for store_index, out_index in self._pieces(sl):
            out[out_index] = self.store[store_index].read().result()
        return out

    def write(self, index, values) -> None:
        """Store ``values`` (cast to the array's type) in the region ``index``.

        Written in pieces of at most ``_ZARR_PIECE_BYTES`` of chunks (see :meth:`_pieces`),
        each awaited before the next.
        """
        sl = _plain_slices(index, self.shape)
        shape = tuple(len(range(s.start, s.stop, s.step)) for s in sl)
        values = np.broadcast_to(np.asarray(values), shape)
        for store_index, out_index in self._pieces(sl):
            piece = np.ascontiguousarray(values[out_index], dtype=self.dtype)
            self.store[store_index].write(piece).result()


def _tiff_volume(path: Path, spacing, mode: str = "r") -> TiffVolume:
    with _tifffile_log() as caught:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape = tuple(series.shape)
                ndim = len(shape)
                found_ome = _ome_spacing(tif, 3) if tif.is_ome else None
                found_ij = _imagej_spacing(tif, 3) if tif.is_imagej else None
                short = _shortfall(path, tif, series)
        except _TIFF_ERRORS as exc:
            raise _unreadable(path, exc) from exc
        _check_read(path, caught, short)
    if ndim != 3:
        raise IsojaxInputError(
            f"{path}: expected a 3D stack (z, y, x), got shape {shape}; select one channel or "
            "time point first.")
    try:
        with _tifffile_log():
            mapped = tifffile.memmap(path, mode="r")
    except (ValueError, tifffile.TiffFileError, OSError) as exc:
        raise IsojaxInputError(
            f"{path}: its image data cannot be memory-mapped ({exc}): it is compressed, tiled "
            "or not stored contiguously. Convert it to OME-Zarr, or to an uncompressed TIFF "
            "(e.g. tifffile.imwrite(out, data, bigtiff=True) or Fiji's Save As > Tiff), to "
            "predict it without loading it into memory.") from exc
    offset, dtype = mapped.offset, mapped.dtype
    del mapped
    if spacing is not None:
        sp, source = _positive_spacing(spacing, ndim=3, what="spacing"), "override"
    elif found_ome is not None:
        sp, source = found_ome, "ome"
    elif found_ij is not None:
        sp, source = found_ij, "imagej"
    else:
        sp, source = None, "none"
    return TiffVolume(path, offset=offset, shape=shape, dtype=dtype, spacing=sp, source=source,
                      mode=mode)


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IsojaxInputError(f"{path}: cannot be read as Zarr v3 metadata ({exc})") from exc


def ome_zarr_spacing(attributes: dict) -> tuple[str, tuple[float, float, float] | None]:
    """The first level's path and voxel size from an OME-Zarr image group's attributes.

    Reads OME-NGFF 0.5 ``attributes["ome"]["multiscales"][0]``: its ``axes`` must be three
    ``space`` axes named z, y, x (in this order); the voxel size is the first dataset's
    ``scale`` coordinate transformation, times the multiscale's own ``scale`` if any, in the
    axes' ``unit`` (converted to micrometres).

    Args:
      attributes: the ``attributes`` of the group's ``zarr.json``.

    Returns:
      ``(path, spacing)``: the first (full-resolution) dataset's path inside the group, and
      ``(dz, dy, dx)`` in micrometres, or None when the axes carry no known length unit.

    Raises:
      IsojaxInputError: no OME ``multiscales``, axes other than (z, y, x) space axes, or a
        malformed scale.
    """
    ome = attributes.get("ome")
    if not isinstance(ome, dict) or not ome.get("multiscales"):
        raise IsojaxInputError(
            "no OME-NGFF 0.5 metadata (attributes.ome.multiscales) in the group's zarr.json")
    multiscale = ome["multiscales"][0]
    axes = multiscale.get("axes", [])
    names = tuple(a.get("name") if isinstance(a, dict) else a for a in axes)
    if names != _AXES or any(isinstance(a, dict) and a.get("type", "space") != "space"
                             for a in axes):
        raise IsojaxInputError(
            f"isojax reads 3D OME-Zarr images with space axes (z, y, x), got axes {names}; "
            "select one channel or time point first.")
    datasets = multiscale.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise IsojaxInputError("the OME-Zarr multiscales entry lists no dataset path")
    scale = np.ones(3)
    for transforms in (datasets[0].get("coordinateTransformations", []),
                       multiscale.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale":
                try:
                    values = np.array([float(v) for v in t["scale"]])
                except (KeyError, TypeError, ValueError) as exc:
                    raise IsojaxInputError(f"malformed OME-Zarr scale {t!r}") from exc
                if values.shape != (3,) or not np.all(np.isfinite(values) & (values > 0)):
                    raise IsojaxInputError(f"the OME-Zarr scale must be 3 positive numbers: {t!r}")
                scale = scale * values
    factors = [unit_to_um(a.get("unit")) if isinstance(a, dict) else None for a in axes]
    if any(f is None for f in factors):
        return str(datasets[0]["path"]), None
    return str(datasets[0]["path"]), tuple(float(f * v) for f, v in zip(factors, scale, strict=True))


def _zarr_spec(path: Path) -> dict:
    return {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path.absolute())}}


def _zarr_volume(path: Path, spacing) -> ZarrVolume:
    import tensorstore as ts

    meta_file = path / "zarr.json"
    if not meta_file.is_file():
        raise IsojaxInputError(
            f"{path}: not a Zarr v3 store (no zarr.json); isojax reads OME-Zarr 0.5 (Zarr v3)")
    meta = _read_json(meta_file)
    found, source, array_path = None, "none", path
    if meta.get("node_type") == "group":
        try:
            level, found = ome_zarr_spacing(meta.get("attributes", {}))
        except IsojaxInputError as exc:
            raise IsojaxInputError(f"{path}: {exc}") from None
        array_path = path / level
        source = "ome-zarr" if found is not None else "none"
    try:
        store = ts.open(_zarr_spec(array_path), open=True, read=True).result()
    except ValueError as exc:
        raise IsojaxInputError(f"{array_path}: cannot be opened as a Zarr v3 array ({exc})") from exc
    if store.rank != 3:
        raise IsojaxInputError(
            f"{array_path}: expected a 3D array (z, y, x), got shape {tuple(store.shape)}")
    if spacing is not None:
        found, source = _positive_spacing(spacing, ndim=3, what="spacing"), "override"
    return ZarrVolume(path, store, spacing=found, source=source)


def open_volume(path: str | os.PathLike, *, spacing: Sequence[float] | None = None):
    """Open a 3D stack for reading by regions, without loading it.

    Args:
      path: an uncompressed, contiguous TIFF (``.tif``; ImageJ, OME or plain, BigTIFF or
        not) or an OME-Zarr 0.5 image (a Zarr v3 group with ``multiscales`` metadata; its
        first level is read) or a bare Zarr v3 array.
      spacing: optional voxel size ``(dz, dy, dx)`` in micrometres that overrides the metadata.

    Returns:
      A :class:`TiffVolume` or :class:`ZarrVolume` with ``shape``, ``dtype``, ``spacing``
      (µm or None), ``source`` and ``read(index)``.

    Raises:
      IsojaxInputError: missing file, unknown format, a truncated or damaged TIFF, not 3D, a
        compressed or non-contiguous TIFF (the message says to convert it to OME-Zarr or an
        uncompressed TIFF), bad OME-NGFF metadata.
    """
    path = Path(path)
    if not path.exists():
        raise IsojaxInputError(f"{path}: no such file or folder")
    if volume_format(path) == "zarr":
        return _zarr_volume(path, spacing)
    return _tiff_volume(path, spacing)


def ome_zarr_attributes(spacing: Sequence[float] | None, *, name: str = "isojax",
                        path: str = "0") -> dict:
    """The group attributes of a one-level OME-Zarr 0.5 image ``(z, y, x)``.

    Args:
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, written as the dataset's ``scale``
        with unit ``micrometer``; None writes a scale of 1 and no unit.
      name: the multiscale's name.
      path: the level's path inside the group.

    Returns:
      ``{"ome": {"version": "0.5", "multiscales": [...]}}``.
    """
    unit = {} if spacing is None else {"unit": "micrometer"}
    scale = [1.0, 1.0, 1.0] if spacing is None else [float(v) for v in spacing]
    return {
        "ome": {
            "version": NGFF_VERSION,
            "multiscales": [{
                "name": name,
                "axes": [{"name": a, "type": "space", **unit} for a in _AXES],
                "datasets": [{
                    "path": path,
                    "coordinateTransformations": [{"type": "scale", "scale": scale}],
                }],
            }],
        }
    }


def create_volume(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype,
    *,
    spacing: Sequence[float] | None,
    format: str,
    chunks: Sequence[int] = (64, 64, 64),
):
    """Create an empty 3D volume to be written by regions (at ``path``, not atomically).

    Args:
      path: where to create it: a folder that must not exist yet (``format="zarr"``) or a
        file (``format="tiff"``, replaced if present).
      shape: ``(z, y, x)`` in voxels.
      dtype: the stored data type.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, or None.
      format: ``"zarr"``: an OME-Zarr 0.5 image, a Zarr v3 group whose level ``0`` is
        chunked with ``chunks`` (clipped to the shape) and uncompressed, with
        ``dimension_names`` z, y, x; ``"tiff"``: an uncompressed BigTIFF with OME-XML
        (``PhysicalSizeX/Y/Z`` in µm), contiguous so that it can be memory-mapped.
      chunks: Zarr chunk shape ``(z, y, x)`` in voxels.

    Returns:
      A :class:`ZarrVolume` or :class:`TiffVolume` open for writing.
    """
    import json

    path = Path(path)
    shape = tuple(int(n) for n in shape)
    dtype = np.dtype(dtype)
    if spacing is not None:
        spacing = _positive_spacing(spacing, ndim=3, what="spacing")
    if format == "tiff":
        metadata: dict = {"axes": "ZYX"}
        if spacing is not None:
            for axis, v in zip("ZYX", spacing, strict=True):
                metadata[f"PhysicalSize{axis}"] = v
                metadata[f"PhysicalSize{axis}Unit"] = "µm"
        mapped = tifffile.memmap(path, shape=shape, dtype=dtype, bigtiff=True, ome=True,
                                 photometric="minisblack", metadata=metadata)
        offset = mapped.offset
        del mapped
        return TiffVolume(path, offset=offset, shape=shape, dtype=dtype, spacing=spacing,
                          source="ome" if spacing is not None else "none", mode="r+")
    if format != "zarr":
        raise ValueError(f"format must be 'zarr' or 'tiff', got {format!r}")
    import tensorstore as ts

    path.mkdir()
    group = {"zarr_format": 3, "node_type": "group", "attributes": ome_zarr_attributes(spacing)}
    (path / "zarr.json").write_text(json.dumps(group, indent=2) + "\n")
    chunk_shape = [max(1, min(int(c), n)) for c, n in zip(chunks, shape, strict=True)]
    spec = _zarr_spec(path / "0")
    spec["metadata"] = {
        "shape": list(shape),
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk_shape}},
        "dimension_names": list(_AXES),
    }
    store = ts.open(spec, create=True).result()
    return ZarrVolume(path, store, spacing=spacing,
                      source="ome-zarr" if spacing is not None else "none")


def read_ome_zarr(
    path: str | os.PathLike, *, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, tuple[float, ...] | None, str]:
    """Read a whole OME-Zarr 0.5 image into memory: ``(array, spacing, source)`` as :func:`read_tiff`.

    Args:
      path: the OME-Zarr folder (``.zarr``).
      spacing: voxel size ``(dz, dy, dx)`` in micrometres that overrides the metadata.

    Returns:
      ``(array, spacing, source)``: the ``(z, y, x)`` array, its voxel size or None, and
      where the voxel size came from (``"ome-zarr"``, ``"override"`` or ``"none"``).

    Raises:
      IsojaxInputError: ``path`` is not an OME-Zarr image (a TIFF: use :func:`read_tiff`),
        or it is damaged.
    """
    volume = open_volume(path, spacing=spacing)
    if not isinstance(volume, ZarrVolume):
        raise IsojaxInputError(f"{path}: not a Zarr store; read a TIFF with read_tiff")
    return volume.read((slice(None),) * 3), volume.spacing, volume.source


def write_ome_zarr(
    path: str | os.PathLike,
    array,
    *,
    spacing: Sequence[float] | None = None,
    chunks: Sequence[int] = (64, 64, 64),
    overwrite: bool = False,
) -> Path:
    """Write an in-memory 3D array as a one-level OME-Zarr 0.5 image, atomically.

    The store is written into a temporary sibling folder and renamed to ``path`` once
    complete, so a failure leaves nothing at ``path``.

    Args:
      path: the destination folder (``.zarr``).
      array: ``(z, y, x)`` array-like.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, or None.
      chunks: chunk shape in voxels.
      overwrite: replace an existing ``path``; otherwise it is an error.

    Returns:
      The path written.
    """
    data = np.asarray(array)
    if data.ndim != 3:
        raise IsojaxInputError(f"{path}: can write a 3D (z, y, x) array, got shape {data.shape}")
    with staged_output(path, overwrite=overwrite) as temp:
        volume = create_volume(temp, data.shape, data.dtype, spacing=spacing, format="zarr",
                               chunks=chunks)
        volume.write((slice(None),) * 3, data)
    return Path(path)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def check_new_output(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Fail early if ``path`` cannot be written or exists (and ``overwrite`` is False).

    Raises:
      IsojaxInputError: the folder is missing or not writable, or ``path`` exists and
        ``overwrite`` is False (the message names the ``--overwrite`` option).
    """
    path = _check_folder_writable(Path(path))
    if path.exists() and not overwrite:
        raise IsojaxInputError(
            f"{path} already exists; pass --overwrite (command line) or overwrite=True "
            "(Python) to replace it, or choose another output")
    return path


# ----------------------------------------------------------------------------------------
# Checking outputs before any work, and partial outputs left by a killed writer


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file or folder: through links when both exist."""
    if os.path.exists(a) and os.path.exists(b):
        try:
            return os.path.samefile(a, b)
        except OSError:
            pass
    return a.resolve() == b.resolve()


def _within(child: Path, folder: Path) -> bool:
    """Whether ``child`` is ``folder`` or lies inside it, however either is spelled or linked."""
    if child.resolve().is_relative_to(folder.resolve()):
        return True
    try:
        target = os.stat(folder)
    except OSError:
        return False
    for ancestor in (Path(os.path.abspath(child)), *Path(os.path.abspath(child)).parents):
        try:
            if os.path.samestat(os.stat(ancestor), target):  # e.g. through a bind mount
                return True
        except OSError:
            continue
    return False


def check_outputs(
    outputs: Sequence[str | os.PathLike],
    *,
    inputs=(),
    overwrite: bool = False,
    log=None,
) -> list[Path]:
    """Fail early, before any work, unless every output of a command may be written.

    The one rule of every isojax command that writes: an output that exists is refused
    unless ``overwrite``; an output that is one of the command's inputs is refused always,
    also with ``overwrite`` (the same file or folder through the same path, another
    spelling, a symbolic or hard link), as is an output inside an input folder (a model
    folder, an input ``.zarr``) and an input inside an output that would be replaced. Then
    the stale partial outputs of each output are cleaned up (:func:`remove_stale_partials`).

    Args:
      outputs: every file or folder the command writes, companion files included (a PSF's
        ``.png``, a calibration's ``.json``), or a folder it writes into (a model folder).
      inputs: what the command reads: a mapping from what it is (``"stack"``,
        ``"model folder"``) to its path, or a sequence of paths; None values and paths that
        do not exist are skipped.
      overwrite: whether existing outputs may be replaced.
      log: called with a line for each stale partial removed or left (default: stderr).

    Returns:
      The outputs as ``Path`` objects, in order.

    Raises:
      IsojaxInputError: an output is an input, lies inside an input folder or holds an
        input; two outputs are the same file; an output's folder is missing or not
        writable; an output exists and ``overwrite`` is False.
        The message says what to do.
    """
    named = list(inputs.items()) if hasattr(inputs, "items") else [("input", p) for p in inputs]
    ins = [(what, Path(p)) for what, p in named if p is not None and os.path.lexists(p)]
    outs = [Path(p) for p in outputs]
    for out in outs:
        for what, inp in ins:
            if _same_file(out, inp):
                also = "" if os.path.abspath(out) == os.path.abspath(inp) else f" {inp}"
                raise IsojaxInputError(
                    f"{out} is the input {what}{also}: choose another output; isojax never "
                    "writes over its input")
            if inp.is_dir() and _within(out, inp):
                raise IsojaxInputError(
                    f"{out} is inside the input {what} {inp}: choose an output outside it; "
                    "isojax never writes into its input")
            if _within(inp, out):
                raise IsojaxInputError(
                    f"the input {what} {inp} is inside the output folder {out}: choose another "
                    "output; isojax never writes over or into its input")
    for k, out in enumerate(outs):
        for other in outs[:k]:
            if _same_file(out, other):
                raise IsojaxInputError(
                    f"{other} and {out} would be the same file (an output and its companion "
                    "file): choose an output whose name ends in .tif")
    for out in outs:
        _check_folder_writable(out)
        if os.path.lexists(out) and not overwrite:
            check_new_output(out, overwrite=False)
            raise IsojaxInputError(  # a dangling symbolic link
                f"{out} already exists (a broken link); pass --overwrite (command line) or "
                "overwrite=True (Python) to replace it, or choose another output")
    for out in outs:
        remove_stale_partials(out, log=log)
    return outs


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _partial_tag(kind: str = "partial") -> str:
    """``<kind>-<host>-<pid>``: who writes a partial output, for :func:`remove_stale_partials`."""
    return f"{kind}-{_host()}-{os.getpid()}"


_RANDOM = r"[A-Za-z0-9_]+"
_OLD_RANDOM = r"[A-Za-z0-9_]{8}"  # tempfile's names, before the writer's identity was added


def _partial_patterns(name: str) -> tuple[re.Pattern, ...]:
    n = re.escape(name)
    who = rf"(?P<host>.+)-(?P<pid>\d+)-{_RANDOM}"
    return (
        re.compile(rf"{n}\.(?:partial|scratch)-{who}"),  # staged_output, predict's scratch
        re.compile(rf"\.{n}\.partial-{who}\.tmp"),  # atomic_write
        re.compile(rf"{n}\.(?:partial|scratch)-{_OLD_RANDOM}"),  # the same, older isojax
        re.compile(rf"\.{n}\.{_OLD_RANDOM}\.tmp"),
        re.compile(rf"{n}\.old-{who}"),  # staged_output: the output being replaced
    )


def _pid_running(pid: int) -> bool:
    """Whether process ``pid`` on this host may still be running (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


#: Partial outputs already reported as possibly in use, so each is named once per process.
_REPORTED: set[str] = set()


def remove_stale_partials(path: str | os.PathLike, *, log=None) -> list[Path]:
    """Remove the partial outputs of ``path`` left by a writer that no longer runs.

    Where partials come from: isojax writes every output under a temporary sibling name and
    renames it into place only when it is complete (:class:`staged_output`,
    :func:`atomic_write`); a writer killed meanwhile (``kill -9``, an out-of-memory kill,
    the end of a batch job's time) leaves that temporary name behind:
    ``<name>.partial-<host>-<pid>-<random>`` (streamed predictions, OME-Zarr),
    ``<name>.scratch-<host>-<pid>-<random>`` (a streamed prediction's scratch store) or
    ``.<name>.partial-<host>-<pid>-<random>.tmp`` (TIFF, PNG, JSON files); and, while an
    existing output is replaced with ``overwrite``, the old one is moved aside to
    ``<name>.old-<host>-<pid>-<random>`` and then deleted.

    A partial of ``path`` whose writer ran on this host and is no longer running is removed,
    with a log line saying so. One that may still be in use (its process is running, it
    comes from another host, or it has an older name without a process id) is left, with a
    warning that says how to remove it. A previous output moved aside is removed only when
    its writer is dead and the new output is in place; if the output is missing, the warning
    says how to restore it. Nothing else is ever removed.

    Args:
      path: the output about to be written.
      log: called with each line (default: stderr).

    Returns:
      The partials removed.
    """
    log = log or _stderr_log
    path = Path(path)
    folder = path.parent
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    new, new_tmp, old, old_tmp, replaced = _partial_patterns(path.name)
    host, removed = _host(), []
    for name in names:
        aside = replaced.fullmatch(name)
        if aside is not None:
            _previous_output(path, folder / name, aside, host, removed, log)
            continue
        match = new.fullmatch(name) or new_tmp.fullmatch(name)
        if match is None and not (old.fullmatch(name) or old_tmp.fullmatch(name)):
            continue
        partial = folder / name
        if match is not None and match["host"] == host and not _pid_running(int(match["pid"])):
            _remove(partial)
            removed.append(partial)
            log(f"removed {partial}: a partial output of {path.name} left by isojax process "
                f"{match['pid']} on this host, which is no longer running")
            continue
        if str(partial) in _REPORTED:
            continue
        _REPORTED.add(str(partial))
        if match is None:
            who = "an older isojax (its name holds no process id)"
        elif match["host"] != host:
            who = f"process {match['pid']} on host {match['host']}"
        else:
            who = f"process {match['pid']}, still running on this host"
        log(f"warning: {partial} is a partial output of {path.name} left by {who}; if no "
            f"other isojax is writing {path}, remove it: rm -r '{partial}'")
    return removed


def _previous_output(path: Path, aside: Path, match, host: str, removed: list, log) -> None:
    """An output that :class:`staged_output` moved aside to replace it, left by a killed writer.

    Removed only when its writer is dead and the new output is in place (it was being
    deleted); else left with a warning (how to restore it when the output is missing).
    """
    pid, dead = match["pid"], match["host"] == host and not _pid_running(int(match["pid"]))
    if dead and os.path.lexists(path):
        _remove(aside)
        removed.append(aside)
        log(f"removed {aside}: the previous {path.name}, replaced by isojax process {pid} on "
            "this host, which stopped while deleting it")
        return
    if str(aside) in _REPORTED:
        return
    _REPORTED.add(str(aside))
    if not os.path.lexists(path):
        log(f"warning: {aside} is the previous {path.name}, moved aside by isojax process {pid} "
            f"to be replaced, and {path} is missing: if no isojax is writing it, restore it: "
            f"mv '{aside}' '{path}'")
    else:
        log(f"warning: {aside} is a previous {path.name} being replaced by isojax process {pid} "
            f"on host {match['host']}; if no other isojax is writing {path}, remove it: "
            f"rm -r '{aside}'")


class staged_output:  # lower case: used as a context manager, like open
    """Write a file or folder under a temporary sibling name, then rename it into place.

    ``with staged_output(path, overwrite=...) as temp:`` yields ``temp``, a path next to
    ``path`` named ``<name>.partial-<host>-<pid>-<random>`` that does not exist yet. When
    the block ends normally, ``temp`` is renamed to ``path`` (an existing ``path`` is
    replaced only with ``overwrite=True``, after the new one is complete; one that appeared
    meanwhile is refused without it); when it raises, ``temp`` is removed and ``path`` is
    untouched.

    Where partials come from: if the writing process is killed (``kill -9``, an
    out-of-memory kill, a batch job's time limit) ``temp`` stays behind. The host and process
    id in its name let the next write of the same ``path`` recognise it: it is removed when
    that process no longer runs on this host, else left with a warning that says how to
    remove it (:func:`remove_stale_partials`, called when the stage starts).
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, log=None):
        self.path = check_new_output(path, overwrite=overwrite)
        self.overwrite = overwrite
        remove_stale_partials(self.path, log=log)

    def __enter__(self) -> Path:
        holder = Path(tempfile.mkdtemp(dir=self.path.parent,
                                       prefix=f"{self.path.name}.{_partial_tag()}-"))
        holder.rmdir()  # reserve a unique name; the writer creates the file or folder
        self.temp = holder
        return holder

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            _remove(self.temp)
            return False
        try:
            self._commit()
        except BaseException:
            _remove(self.temp)
            raise
        return False

    def _commit(self) -> None:
        path, temp = self.path, self.temp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, (0o777 if temp.is_dir() else 0o666) & ~umask)
        if not (path.exists() or path.is_symlink()):
            if temp.is_file():
                _rename_no_replace(temp, path)
            else:
                os.rename(temp, path)
            return
        if not self.overwrite:
            raise _appeared(path)
        if temp.is_file() and not path.is_dir():
            os.replace(temp, path)
            return
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{path.name}.{_partial_tag('old')}-"))
        old.rmdir()
        os.rename(path, old)
        try:
            os.rename(temp, path)
        except BaseException:
            os.rename(old, path)
            raise
        _remove(old)
