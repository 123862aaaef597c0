"""Hyperstacks: time-lapses with channels, read one ``(z, y, x)`` volume at a time.

A hyperstack has up to five axes, named as in OME-NGFF: time ``T``, channel ``C`` and the
three spatial ones ``Z Y X``. :func:`open_hyperstack` opens one lazily and presents it in
the canonical order ``(t, c, z, y, x)`` (missing axes have length 1); its
:meth:`Hyperstack.read` reads the volume of one time point and one channel, so that a
series of a thousand time points never needs more memory than one. Formats:

* ImageJ hyperstacks (axes from the ImageJ metadata, ``TZCYX`` order, any subset), voxel
  size from the resolution tags and ``spacing``, time interval from ``finterval``, channel
  names from per-plane ``Labels`` when they name the channels;
* OME-TIFF (axes from tifffile's reading of the OME-XML ``DimensionOrder``), voxel size
  ``PhysicalSizeX/Y/Z``, ``TimeIncrement`` and the ``Channel`` names;
* OME-Zarr 0.5 images whose axes are ``t``, ``c`` (optional) and ``z y x``, with the time
  axis' unit and the ``omero`` channel labels.

Files whose axes are not named (a plain 4D TIFF is ``QQYX`` to tifffile) take ``axes=``
(``--axes TZCYX``). Uncompressed TIFFs are read through short-lived memory maps, others
page by page. The outputs are written by :mod:`isojax.io.hyperstack_write`.

The selection helpers :func:`parse_channels` and :func:`parse_timepoints` read
``--channels 0,2`` and ``--timepoints 0:100`` (Python slice syntax).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

from isojax.errors import IsojaxInputError
from isojax.io.omezarr import _read_json, _zarr_spec, multiscale_scale
from isojax.io.tiff import (
    _TIFF_ERRORS,
    _check_read,
    _imagej_spacing,
    _ome_spacing,
    _positive_spacing,
    _shortfall,
    _tifffile_log,
    _unreadable,
    unit_to_um,
)
from isojax.io.volumes import volume_format

__all__ = [
    "HYPERSTACK_AXES",
    "Hyperstack",
    "hyperstack_axes",
    "open_hyperstack",
    "parse_channels",
    "parse_timepoints",
    "read_hyperstack",
    "spread_timepoints",
    "unit_to_seconds",
]

#: The canonical axis order of a hyperstack (OME-NGFF's).
HYPERSTACK_AXES = "TCZYX"

_SECONDS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 1e-3, "msec": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
    "us": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6,
    "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}


def unit_to_seconds(unit: str | None) -> float | None:
    """Seconds per one time ``unit`` (``"s"``, ``"ms"``, ``"min"``, ``"second"``, ...).

    Args:
      unit: the unit's name as files write it, or None.

    Returns:
      Seconds per unit, or None for an unknown or missing unit.
    """
    if unit is None:
        return None
    text = str(unit).strip().lower().replace("\u00b5", "u").replace("\u03bc", "u")
    return _SECONDS.get(text)


def _check_axes_option(axes: str, shape, path) -> str:
    """``axes`` (upper case) if it names each of ``shape``'s axes once from TCZYX, with Z Y X."""
    text = str(axes).upper()
    ok = (text.endswith("YX") and "Z" in text and set(text) <= set(HYPERSTACK_AXES)
          and len(set(text)) == len(text))
    if not ok:
        raise IsojaxInputError(
            f"--axes {axes}: name each axis once from T, C, Z, Y, X, ending with YX and with a "
            "Z axis (e.g. --axes TZCYX, CZYX, TZYX)")
    if len(text) != len(shape):
        raise IsojaxInputError(
            f"{path}: --axes {axes} names {len(text)} axes but the stack has {len(shape)} "
            f"(shape {tuple(shape)}); give one letter per axis, e.g. --axes "
            f"{_example_axes(len(shape))}")
    return text


def _example_axes(ndim: int) -> str:
    return {3: "ZYX", 4: "CZYX (or TZYX)", 5: "TZCYX (ImageJ's order) or TCZYX"}.get(ndim, "TCZYX")


def _named_axes(found: str, shape, path, axes) -> str:
    """The axes to use: ``axes`` when given, else the file's own if they name T, C, Z, Y, X."""
    if axes is not None:
        return _check_axes_option(axes, shape, path)
    if (found and len(found) == len(shape) and set(found) <= set(HYPERSTACK_AXES)
            and found.endswith("YX") and "Z" in found and len(set(found)) == len(found)):
        return found
    if len(shape) == 3 and found and found[-2:] == "YX" and set(found[0]) <= set("QIZ"):
        return "ZYX"  # a plain 3D stack, as isojax reads it today
    named = f"axes {found!r}" if found else "no axis names"
    raise IsojaxInputError(
        f"{path}: cannot tell which axis is which (the file gives {named} for shape "
        f"{tuple(shape)}); pass --axes with one letter per axis, e.g. --axes "
        f"{_example_axes(len(shape))}")


class Hyperstack:
    """A hyperstack opened for reading one ``(z, y, x)`` volume at a time (nothing read yet).

    Attributes:
      path: the file or OME-Zarr folder.
      format: ``"tiff"`` or ``"zarr"``.
      file_axes: the axes as stored, e.g. ``"TZCYX"`` (ImageJ) or ``"TCZYX"``.
      shape: ``(t, c, z, y, x)`` in the canonical order (missing axes have length 1).
      dtype: the stored data type (native byte order).
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, or None.
      source: where it came from: ``"override"``, ``"ome"``, ``"imagej"``, ``"ome-zarr"``
        or ``"none"`` (as :func:`isojax.io.read_tiff`).
      time_interval: seconds between time points, or None when the file does not say.
      channel_names: one name per channel, or None (also when the file names fewer or
        more channels than it has).
    """

    def __init__(self, path, *, format: str, file_axes: str, file_shape, dtype, spacing,
                 source: str, time_interval, channel_names, reader):
        self.path = Path(path)
        self.format = format
        self.file_axes = file_axes
        self.file_shape = tuple(int(n) for n in file_shape)
        sizes = dict(zip(file_axes, self.file_shape, strict=True))
        self.shape = tuple(sizes.get(a, 1) for a in HYPERSTACK_AXES)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.spacing = spacing
        self.source = source
        self.time_interval = time_interval
        # names that do not name the channels one to one (e.g. an OME-XML with fewer
        # Channel elements than SizeC) are dropped: they cannot say which is which
        names = None if channel_names is None else tuple(channel_names)
        self.channel_names = names if names and len(names) == self.shape[1] else None
        self._reader = reader

    @property
    def n_timepoints(self) -> int:
        return self.shape[0]

    @property
    def n_channels(self) -> int:
        return self.shape[1]

    def _index(self, t: int, c: int) -> tuple:
        for what, i, n in (("time point", t, self.shape[0]), ("channel", c, self.shape[1])):
            if not 0 <= int(i) < n:
                raise IsojaxInputError(f"{self.path}: {what} {i} is out of range (0..{n - 1})")
        pick = {"T": int(t), "C": int(c)}
        return tuple(pick.get(a, slice(None)) for a in self.file_axes)

    def read(self, t: int, c: int) -> np.ndarray:
        """The volume ``(z, y, x)`` of time point ``t`` and channel ``c``, a new array."""
        return np.asarray(self._reader(self._index(t, c)), dtype=self.dtype)


# ----------------------------------------------------------------------------------------
# TIFF


def _ome_extras(tif: tifffile.TiffFile) -> tuple[float | None, tuple[str, ...] | None]:
    """``(time interval in s, channel names)`` from the first OME-XML ``Pixels``."""
    try:
        root = ET.fromstring(tif.ome_metadata or "")
    except ET.ParseError:
        return None, None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None, None
    interval = None
    increment = pixels.get("TimeIncrement")
    if increment is not None:
        factor = unit_to_seconds(pixels.get("TimeIncrementUnit", "s"))
        try:
            value = float(increment)
        except ValueError:
            value = math.nan
        if factor is not None and math.isfinite(value) and value > 0:
            interval = factor * value
    names = [el.get("Name") for el in pixels if el.tag.rsplit("}", 1)[-1] == "Channel"]
    given = [n for n in names if n]  # every channel named, or no names at all
    return interval, (tuple(given) if names and len(given) == len(names) else None)


def _imagej_extras(tif: tifffile.TiffFile, axes: str, shape) -> tuple[float | None, tuple | None]:
    """``(time interval in s, channel names)`` from ImageJ's ``finterval`` and ``Labels``."""
    meta = tif.imagej_metadata or {}
    interval = None
    try:
        value = float(meta.get("finterval", "nan"))
    except (TypeError, ValueError):
        value = math.nan
    factor = unit_to_seconds(meta.get("tunit", "s"))
    if factor is not None and math.isfinite(value) and value > 0:
        interval = factor * value
    labels = meta.get("Labels")
    names = None
    planes = math.prod(shape[:-2])
    if "C" in axes and isinstance(labels, list) and len(labels) == planes:
        grid = np.array(labels, dtype=object).reshape(shape[:-2])
        by_channel = np.moveaxis(grid, axes.index("C"), 0).reshape(shape[axes.index("C")], -1)
        if all(len(set(row)) == 1 and row[0] for row in by_channel):
            names = tuple(str(row[0]) for row in by_channel)
    return interval, names


def _open_tiff(path: Path, axes, spacing) -> Hyperstack:
    with _tifffile_log() as caught:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, found = tuple(series.shape), str(series.axes)
                dtype = np.dtype(series.dtype)
                others = [tuple(s.shape) for s in tif.series[1:]]
                sp_ome = _ome_spacing(tif, 3) if tif.is_ome else None
                sp_ij = _imagej_spacing(tif, 3) if tif.is_imagej else None
                extras = (_ome_extras(tif) if tif.is_ome else
                          _imagej_extras(tif, found, shape) if tif.is_imagej else (None, None))
                short = _shortfall(path, tif, series)
        except _TIFF_ERRORS as exc:
            raise _unreadable(path, exc) from exc
        _check_read(path, caught, short)
    differ = [s for s in others if len(s) == len(shape) and s != shape]
    if differ:
        raise IsojaxInputError(
            f"{path}: holds image series of different shapes ({shape} and {differ[0]}): every "
            "time point must have the same shape; crop them to one shape first")
    if "S" in found:
        raise IsojaxInputError(
            f"{path}: an RGB image (axes {found}); save each colour as a channel of a "
            "grayscale hyperstack first (Fiji: Image > Color > Split Channels, then Merge)")
    file_axes = _named_axes(found, shape, path, axes)
    if spacing is not None:
        sp, source = _positive_spacing(spacing, ndim=3, what="spacing"), "override"
    elif sp_ome is not None:
        sp, source = sp_ome, "ome"
    elif sp_ij is not None:
        sp, source = sp_ij, "imagej"
    else:
        sp, source = None, "none"
    offset: int | None = None  # set when the pixels lie contiguous, uncompressed
    map_shape: tuple[int, ...] = ()
    try:
        with _tifffile_log():
            mapped = tifffile.memmap(path, mode="r")
        offset, map_shape = mapped.offset, mapped.shape
        del mapped
    except (ValueError, tifffile.TiffFileError, OSError):
        offset = None
    if offset is not None and math.prod(map_shape) == math.prod(shape):

        def reader(index):  # a short-lived map: only the pages read count as resident
            window = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
            try:
                return np.array(window[index])
            finally:
                del window
    else:
        lead = shape[:-2]

        def reader(index):  # page by page (compressed or tiled files)
            grid = np.arange(math.prod(lead)).reshape(lead)[index[:-2]]
            with _tifffile_log(), tifffile.TiffFile(path) as tif:
                return tif.asarray(key=[int(k) for k in grid.ravel()], series=0).reshape(
                    *grid.shape, *shape[-2:])
    return Hyperstack(path, format="tiff", file_axes=file_axes, file_shape=shape, dtype=dtype,
                      spacing=sp, source=source, time_interval=extras[0],
                      channel_names=extras[1], reader=reader)


# ----------------------------------------------------------------------------------------
# OME-Zarr


def _zarr_metadata(path: Path):
    """``(level path, axes, spacing, time interval, channel names)`` of an OME-Zarr image."""
    meta = _read_json(path / "zarr.json")
    attributes = meta.get("attributes", {}) if meta.get("node_type") == "group" else {}
    ome = attributes.get("ome")
    if not isinstance(ome, dict) or not ome.get("multiscales"):
        return None, None, None, None, None
    multiscale = ome["multiscales"][0]
    axes = [a if isinstance(a, dict) else {"name": a} for a in multiscale.get("axes", [])]
    names = "".join(str(a.get("name", "?")).upper()[:1] for a in axes)
    datasets, scale = multiscale_scale(multiscale, len(axes), where=f"{path}: ")
    by_name = {n: (a, float(v)) for n, a, v in zip(names, axes, scale, strict=True)}
    spacing = None
    if all(n in by_name for n in "ZYX"):
        factors = [unit_to_um(by_name[n][0].get("unit")) for n in "ZYX"]
        known = [f for f in factors if f is not None]
        if len(known) == len(factors):
            spacing = tuple(f * by_name[n][1] for f, n in zip(known, "ZYX", strict=True))
    interval = None
    if "T" in by_name:
        factor = unit_to_seconds(by_name["T"][0].get("unit"))
        interval = None if factor is None else factor * by_name["T"][1]
    labels = [ch.get("label") for ch in (ome.get("omero") or {}).get("channels", [])
              if isinstance(ch, dict)]
    channels = tuple(labels) if labels and all(labels) else None
    return str(datasets[0]["path"]), names, spacing, interval, channels


def _open_zarr(path: Path, axes, spacing) -> Hyperstack:
    import tensorstore as ts

    if not (path / "zarr.json").is_file():
        raise IsojaxInputError(
            f"{path}: not a Zarr v3 store (no zarr.json); isojax reads OME-Zarr 0.5 (Zarr v3)")
    level, found, sp, interval, channels = _zarr_metadata(path)
    array_path = path if level is None else path / level
    try:
        store = ts.open(_zarr_spec(array_path), open=True, read=True).result()
    except ValueError as exc:
        raise IsojaxInputError(f"{array_path}: cannot be opened as a Zarr v3 array ({exc})") from exc
    shape = tuple(int(n) for n in store.shape)
    if axes is None and found is not None and len(found) != len(shape):
        raise IsojaxInputError(
            f"{path}: the OME-Zarr metadata names {len(found)} axes ({found}) but the array "
            f"has {len(shape)} (shape {shape}); pass --axes with one letter per axis")
    file_axes = _named_axes(found or "", shape, path, axes)
    source = "none" if sp is None else "ome-zarr"
    if spacing is not None:
        sp, source = _positive_spacing(spacing, ndim=3, what="spacing"), "override"
    n_c = shape[file_axes.index("C")] if "C" in file_axes else 1
    if channels is not None and len(channels) != n_c:
        channels = None

    def reader(index):
        return store[index].read().result()

    return Hyperstack(path, format="zarr", file_axes=file_axes, file_shape=shape,
                      dtype=store.dtype.numpy_dtype, spacing=sp, source=source,
                      time_interval=interval, channel_names=channels, reader=reader)


# ----------------------------------------------------------------------------------------
# Opening, probing, selecting


def open_hyperstack(path: str | os.PathLike, *, axes: str | None = None,
                    spacing: Sequence[float] | None = None) -> Hyperstack:
    """Open a hyperstack (TIFF, OME-TIFF or OME-Zarr) lazily, in the order ``(t, c, z, y, x)``.

    Args:
      path: an ImageJ hyperstack or OME-TIFF, or an OME-Zarr 0.5 image.
      axes: the stored axes, one letter per axis from ``TCZYX`` (e.g. ``"TZCYX"``),
        overriding the file's names; needed when the file does not name its axes.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, overriding the metadata.

    Returns:
      The :class:`Hyperstack`.

    Raises:
      IsojaxInputError: a missing, damaged or unknown file; axes that are not named (the
        message says what to pass with ``--axes``) or ``axes`` that do not match the data;
        an RGB TIFF; image series of different shapes; a bad ``spacing``.
    """
    path = Path(path)
    if not path.exists():
        raise IsojaxInputError(f"{path}: no such file or folder")
    if volume_format(path) == "zarr":
        return _open_zarr(path, axes, spacing)
    return _open_tiff(path, axes, spacing)


def hyperstack_axes(path: str | os.PathLike, *, axes: str | None = None) -> str | None:
    """The axes of the file at ``path`` as isojax would use them, or None if it cannot tell.

    Cheap (metadata only). A file with more than three axes whose names are unknown gives
    ``"?" * ndim``; a file that cannot be read gives None (its reader reports why).

    Args:
      path: a TIFF or OME-Zarr file.
      axes: the user's ``--axes``, or None (from the metadata).

    Returns:
      The axes string (e.g. ``"TCZYX"``, ``"ZYX"``), ``"?" * ndim``, or None.
    """
    path = Path(path)
    try:
        if volume_format(path) == "zarr":
            import tensorstore as ts

            level, found, *_ = _zarr_metadata(path)
            store = ts.open(_zarr_spec(path if level is None else path / level), open=True,
                            read=True).result()
            shape = tuple(store.shape)
        else:
            with _tifffile_log(), tifffile.TiffFile(path) as tif:
                shape, found = tuple(tif.series[0].shape), str(tif.series[0].axes)
    except (IsojaxInputError, OSError, ValueError, IndexError, tifffile.TiffFileError):
        return None
    try:
        return _named_axes(found or "", shape, path, axes)
    except IsojaxInputError:
        return None if len(shape) <= 3 and axes is None else "?" * len(shape)


def parse_channels(text: str | Sequence[int] | None, n: int) -> tuple[int, ...]:
    """The channels that ``--channels 0,2`` selects out of ``n`` (all when None).

    Args:
      text: ``"0,2"``, a sequence of channel indices, or None (all).
      n: the number of channels in the stack.

    Returns:
      The selected channel indices, in the given order.

    Raises:
      IsojaxInputError: not whole numbers, a repeated channel, or one out of range.
    """
    if text is None:
        return tuple(range(n))
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        picked = [int(str(v).strip()) for v in items]
    except ValueError:
        raise IsojaxInputError(
            f"--channels {text}: expected channel numbers separated by commas, e.g. "
            "--channels 0,2") from None
    for c in picked:
        if not 0 <= c < n:
            raise IsojaxInputError(
                f"--channels {text}: channel {c} is out of range; the stack has {n} "
                f"channel{'s' if n != 1 else ''} (0..{n - 1})")
    if len(set(picked)) != len(picked):
        raise IsojaxInputError(f"--channels {text}: a channel is named twice; name each once")
    return tuple(picked)


def parse_timepoints(text: str | None, n: int) -> tuple[int, ...]:
    """The time points that ``--timepoints 0:100`` (Python slice syntax, or one index) selects.

    Unlike a Python slice, a bound past the end is refused rather than clipped (a
    series shorter than the user thinks is a mistake worth hearing about).

    Args:
      text: ``"START:STOP[:STEP]"`` or one index, or None (all).
      n: the number of time points in the stack.

    Returns:
      The selected time point indices, in order.

    Raises:
      IsojaxInputError: malformed text, a zero step, a bound out of range, or an empty
        selection.
    """
    if text is None:
        return tuple(range(n))
    parts = str(text).split(":")
    hint = f"the stack has {n} time point{'s' if n != 1 else ''} (0..{n - 1})"
    try:
        values = [None if p.strip() == "" else int(p) for p in parts]
    except ValueError:
        values = []
    if not 1 <= len(parts) <= 3 or len(values) != len(parts) or (len(parts) == 1 and values[0] is None):
        raise IsojaxInputError(
            f"--timepoints {text}: expected an index or a slice START:STOP[:STEP], e.g. "
            "--timepoints 0:100 or --timepoints ::2")
    if len(parts) == 1:
        i = values[0]
        if i is None or not -n <= i < n:  # None was refused above
            raise IsojaxInputError(f"--timepoints {text}: time point {i} is out of range; {hint}")
        return (i % n,)
    start, stop, *rest = values
    step = rest[0] if rest else None
    if step == 0:
        raise IsojaxInputError(f"--timepoints {text}: the step must not be 0")
    for bound, limit in ((start, n - 1), (stop, n)):
        if bound is not None and not -n <= bound <= limit:
            raise IsojaxInputError(f"--timepoints {text}: {bound} is out of range; {hint}")
    picked = tuple(range(n)[slice(start, stop, step)])
    if not picked:
        raise IsojaxInputError(f"--timepoints {text} selects no time point; {hint}")
    return picked


def spread_timepoints(n: int, *, count: int = 8) -> tuple[int, ...]:
    """At most ``count`` time points evenly spread over ``0 .. n - 1``, first and last included:
    the default selection of training (8) and of per-channel calibration (3).

    Args:
      n: the number of time points of the series, >= 1.
      count: the most time points to pick, >= 1.

    Returns:
      Sorted, distinct time point indices (all of them when ``n <= count``).

    Raises:
      IsojaxInputError: ``n`` or ``count`` below 1.

    Example:
      >>> spread_timepoints(100, count=4)
      (0, 33, 66, 99)
    """
    if n < 1 or count < 1:
        raise IsojaxInputError(f"cannot spread {count} time points over a series of {n}")
    if n <= count:
        return tuple(range(n))
    if count == 1:
        return (0,)
    return tuple(sorted({int(v) for v in np.floor(np.linspace(0, n - 1, count) + 1e-9)}))


def read_hyperstack(path: str | os.PathLike, *, axes: str | None = None,
                    spacing: Sequence[float] | None = None,
                    channels: str | Sequence[int] | None = None,
                    timepoints: str | None = None) -> tuple[np.ndarray, Hyperstack]:
    """Read a whole hyperstack (or a selection of it) into memory, ``(t, c, z, y, x)``.

    Args:
      path, axes, spacing: as :func:`open_hyperstack`.
      channels: ``"0,2"`` or a sequence of channel indices (:func:`parse_channels`).
      timepoints: ``"0:100"`` (:func:`parse_timepoints`).

    Returns:
      ``(array, hyperstack)``: the selected volumes and the opened :class:`Hyperstack`.
    """
    hyper = open_hyperstack(path, axes=axes, spacing=spacing)
    ts = parse_timepoints(timepoints, hyper.n_timepoints)
    cs = parse_channels(channels, hyper.n_channels)
    out = np.empty((len(ts), len(cs), *hyper.shape[2:]), hyper.dtype)
    for i, t in enumerate(ts):
        for j, c in enumerate(cs):
            out[i, j] = hyper.read(t, c)
    return out, hyper
