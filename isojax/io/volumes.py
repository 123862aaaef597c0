"""Volumes larger than memory, read and written by regions: memory-mapped TIFF and OME-Zarr.

A volume is read and written by regions, ``volume.read((zs, ys, xs))`` and
``volume.write((zs, ys, xs), values)`` with three slices, so that no more than a region is
ever held in memory. Uncompressed contiguous TIFFs are read through short-lived memory maps
of a few planes (a long-lived map of the whole file would count every page it touched in
the process's resident memory); Zarr v3 arrays through tensorstore (:mod:`isojax.io.omezarr`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile

from isojax.errors import IsojaxInputError
from isojax.io.omezarr import (
    _AXES,
    _ZARR_SUFFIXES,
    ZarrVolume,
    _plain_slices,
    _zarr_spec,
    _zarr_volume,
    ome_zarr_attributes,
)
from isojax.io.outputs import staged_output
from isojax.io.tiff import (
    _TIFF_ERRORS,
    _check_read,
    _imagej_spacing,
    _ome_spacing,
    _positive_spacing,
    _shortfall,
    _tifffile_log,
    _unreadable,
)

#: Bytes of a TIFF that one temporary memory map covers (whole planes, at least one).
_WINDOW_BYTES = 64 * 2**20
_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")


def volume_format(path: str | os.PathLike) -> str:
    """``"zarr"`` or ``"tiff"``: the format a volume path names, from its suffix or content.

    A folder, or a path ending in ``.zarr``, is Zarr; ``.tif``, ``.tiff``, ``.btf`` and
    ``.tf8`` are TIFF.

    Args:
      path: the volume's path (it need not exist).

    Returns:
      ``"zarr"`` or ``"tiff"``.

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

    def _map(self, z0: int, z1: int, mode: Literal["r", "r+"]) -> np.memmap:
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

    Raises:
      IsojaxInputError: ``array`` is not 3D, or what :func:`isojax.io.check_new_output`
        refuses (an existing ``path`` without ``overwrite``, a folder that is not writable).
    """
    data = np.asarray(array)
    if data.ndim != 3:
        raise IsojaxInputError(f"{path}: can write a 3D (z, y, x) array, got shape {data.shape}")
    with staged_output(path, overwrite=overwrite) as temp:
        volume = create_volume(temp, data.shape, data.dtype, spacing=spacing, format="zarr",
                               chunks=chunks)
        volume.write((slice(None),) * 3, data)
    return Path(path)
