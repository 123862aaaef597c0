"""Writing hyperstacks: a ``TZCYX`` ImageJ TIFF, or an OME-Zarr 0.5 image ``t c z y x``.

:func:`write_hyperstack_tiff` writes one time point at a time as it arrives (BigTIFF when
large), atomically; :func:`create_hyperstack_zarr` creates an image that is written volume
by volume (:class:`HyperstackZarr`), with a completion marker per time point, so that a
killed writer can be resumed. Reading is :mod:`isojax.io.hyperstack`'s.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

from isojax.errors import IsojaxInputError
from isojax.io.omezarr import NGFF_VERSION, _read_json, _zarr_spec
from isojax.io.outputs import atomic_write
from isojax.io.tiff import _positive_spacing

__all__ = [
    "BIGTIFF_BYTES",
    "HyperstackTiff",
    "HyperstackZarr",
    "create_hyperstack_zarr",
    "write_hyperstack_tiff",
]

#: Bytes above which a TIFF output is written as BigTIFF (a classic TIFF ends at 4 GiB).
BIGTIFF_BYTES = 2**32 - 2**25
#: Name of the folder of completion markers inside an OME-Zarr output being written.
DONE_FOLDER = "isojax-done"


def _imagej_options(shape, dtype, spacing, time_interval, channel_names, bigtiff):
    """``(bigtiff, metadata, options)`` of tifffile for a ``TZCYX`` ImageJ hyperstack."""
    n_t, n_c, n_z = (int(v) for v in shape[:3])
    if bigtiff is None:
        bigtiff = math.prod(shape) * np.dtype(dtype).itemsize > BIGTIFF_BYTES
    metadata: dict = {"axes": "TZCYX"}
    options: dict = {}
    if spacing is not None:
        spacing = _positive_spacing(spacing, ndim=3, what="spacing")
        metadata.update(unit="micron", spacing=spacing[0])
        options["resolution"] = (1.0 / spacing[2], 1.0 / spacing[1])
    if time_interval is not None:
        metadata["finterval"] = float(time_interval)
    if channel_names is not None:
        metadata["Labels"] = [str(channel_names[c]) for _ in range(n_t) for _ in range(n_z)
                              for c in range(n_c)]
    return bigtiff, metadata, options


class HyperstackTiff:
    """A ``TZCYX`` ImageJ hyperstack TIFF being written volume by volume, in any order.

    The file is created whole (ImageJ needs its planes contiguous, in one series)
    by :func:`tifffile.memmap` with the metadata of :func:`write_hyperstack_tiff`, and each
    ``(z, y, x)`` volume is copied into its planes; :meth:`close` flushes it. Used for an
    output written beside another one (an uncertainty map beside the restoration). Not
    atomic: create it at a staged path (:class:`isojax.io.staged_output`).
    """

    def __init__(self, path: str | os.PathLike, *, shape: Sequence[int], dtype,
                 spacing: Sequence[float] | None, time_interval: float | None = None,
                 channel_names: Sequence[str] | None = None, bigtiff: bool | None = None):
        n_t, n_c, n_z, n_y, n_x = (int(v) for v in shape)
        bigtiff, metadata, options = _imagej_options(shape, dtype, spacing, time_interval,
                                                     channel_names, bigtiff)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nonconformant BigTIFF ImageJ")
            self.array = tifffile.memmap(Path(path), shape=(n_t, n_z, n_c, n_y, n_x),
                                         dtype=np.dtype(dtype), imagej=True, bigtiff=bigtiff,
                                         metadata=metadata, **options)

    def write(self, t: int, c: int, volume: np.ndarray) -> None:
        """Store the ``(z, y, x)`` volume of time point ``t`` and channel ``c``."""
        self.array[int(t), :, int(c)] = volume

    def close(self) -> None:
        """Flush the data to the file and release it."""
        self.array.flush()
        del self.array


def write_hyperstack_tiff(
    path: str | os.PathLike,
    timepoints: Iterator[np.ndarray],
    *,
    shape: Sequence[int],
    dtype,
    spacing: Sequence[float] | None,
    time_interval: float | None = None,
    channel_names: Sequence[str] | None = None,
    bigtiff: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a ``TZCYX`` ImageJ hyperstack from one ``(c, z, y, x)`` array per time point.

    Only one time point is held at a time: its planes are written in ImageJ's order (z, then
    channel) as soon as it arrives. Written atomically (:func:`isojax.io.atomic_write`).

    Args:
      path: the TIFF to write.
      timepoints: yields ``shape[0]`` arrays ``(c, z, y, x)``.
      shape: ``(t, c, z, y, x)``.
      dtype: one ImageJ can hold (float32, uint8, uint16, int16).
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, or None.
      time_interval: seconds between time points (ImageJ's ``finterval``), or None.
      channel_names: written as the planes' labels, or None.
      bigtiff: BigTIFF or not; default when the data exceed :data:`BIGTIFF_BYTES`.
      overwrite: replace an existing ``path``.

    Returns:
      The path written.
    """
    n_t, n_c, n_z, n_y, n_x = (int(v) for v in shape)
    dtype = np.dtype(dtype)
    bigtiff, metadata, options = _imagej_options(shape, dtype, spacing, time_interval,
                                                 channel_names, bigtiff)

    def planes() -> Iterator[np.ndarray]:
        count = 0
        for volumes in timepoints:
            volumes = np.asarray(volumes)
            if volumes.shape != (n_c, n_z, n_y, n_x):
                raise ValueError(f"a time point has shape {volumes.shape}, expected "
                                 f"{(n_c, n_z, n_y, n_x)}")
            count += 1
            for z in range(n_z):
                for c in range(n_c):
                    yield volumes[c, z].astype(dtype, copy=False)
        if count != n_t:
            raise ValueError(f"got {count} time points, expected {n_t}")

    def write(temp: Path) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nonconformant BigTIFF ImageJ")
            tifffile.imwrite(temp, data=planes(), shape=(n_t, n_z, n_c, n_y, n_x), dtype=dtype,
                             imagej=True, bigtiff=bigtiff, metadata=metadata, **options)

    return atomic_write(Path(path), write, overwrite=overwrite)


def _zarr_attributes(spacing, time_interval, channel_names, n_channels: int) -> dict:
    """The group attributes of a one-level OME-Zarr 0.5 image ``(t, c, z, y, x)``."""
    space = {} if spacing is None else {"unit": "micrometer"}
    scale = [1.0 if time_interval is None else float(time_interval), 1.0,
             *([1.0] * 3 if spacing is None else [float(v) for v in spacing])]
    time_unit = {} if time_interval is None else {"unit": "second"}
    ome: dict = {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": "isojax",
            "axes": [{"name": "t", "type": "time", **time_unit},
                     {"name": "c", "type": "channel"},
                     *({"name": a, "type": "space", **space} for a in "zyx")],
            "datasets": [{"path": "0",
                          "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }],
    }
    if channel_names is not None:
        ome["omero"] = {"channels": [{"label": str(n), "active": True} for n in channel_names]}
    elif n_channels:
        ome["omero"] = {"channels": [{"label": f"channel {c}", "active": True}
                                     for c in range(n_channels)]}
    return {"ome": ome}


class HyperstackZarr:
    """An OME-Zarr 0.5 image ``(t, c, z, y, x)`` being written volume by volume.

    A time point is finished once its completion marker (``isojax-done/t<index>`` inside the
    store) exists; :meth:`mark_done` writes it after the time point's data are stored.
    """

    def __init__(self, path: Path, store):
        self.path = Path(path)
        self.store = store
        self.shape = tuple(int(n) for n in store.shape)

    @classmethod
    def open(cls, path: str | os.PathLike) -> HyperstackZarr:
        """Open an existing one (a partial output to resume) for writing."""
        import tensorstore as ts

        path = Path(path)
        try:
            store = ts.open(_zarr_spec(path / "0"), open=True, read=True, write=True).result()
        except ValueError as exc:
            raise IsojaxInputError(f"{path}: cannot be opened to resume ({exc})") from exc
        return cls(path, store)

    @property
    def attributes(self) -> dict:
        return _read_json(self.path / "zarr.json").get("attributes", {})

    def write(self, t: int, c: int, volume: np.ndarray) -> None:
        """Store the ``(z, y, x)`` volume of output time point ``t`` and channel ``c``."""
        piece = np.ascontiguousarray(volume, dtype=self.store.dtype.numpy_dtype)
        self.store[int(t), int(c)].write(piece).result()

    def _marker(self, t: int) -> Path:
        return self.path / DONE_FOLDER / f"t{int(t):06d}"

    def mark_done(self, t: int) -> None:
        """Record that output time point ``t`` is complete (after its data are written)."""
        marker = self._marker(t)
        marker.parent.mkdir(exist_ok=True)
        marker.write_text("")

    def done(self) -> set[int]:
        """The output time points whose completion marker exists."""
        folder = self.path / DONE_FOLDER
        if not folder.is_dir():
            return set()
        return {int(p.name[1:]) for p in folder.iterdir()
                if p.name.startswith("t") and p.name[1:].isdigit()}

    def finish(self) -> None:
        """Remove the completion markers: the image is whole."""
        import shutil

        shutil.rmtree(self.path / DONE_FOLDER, ignore_errors=True)


def create_hyperstack_zarr(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype,
    *,
    spacing: Sequence[float] | None,
    time_interval: float | None = None,
    channel_names: Sequence[str] | None = None,
    chunks: Sequence[int] = (64, 256, 256),
    extra: dict | None = None,
) -> HyperstackZarr:
    """Create an empty OME-Zarr 0.5 image ``t c z y x`` at ``path`` (not atomically).

    Args:
      path: a folder that must not exist yet (stage it: :class:`isojax.io.staged_output`).
      shape: ``(t, c, z, y, x)`` in voxels.
      dtype: the stored type.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, or None.
      time_interval: seconds between time points (the ``t`` axis' scale), or None.
      channel_names: the ``omero`` channel labels, or None.
      chunks: the ``(z, y, x)`` chunk shape; one time point and one channel per chunk.
      extra: more group attributes (e.g. ``{"isojax": ...}``).

    Returns:
      The :class:`HyperstackZarr` open for writing.
    """
    import tensorstore as ts

    path = Path(path)
    shape = tuple(int(n) for n in shape)
    if spacing is not None:
        spacing = _positive_spacing(spacing, ndim=3, what="spacing")
    path.mkdir()
    attributes = {**_zarr_attributes(spacing, time_interval, channel_names, shape[1]),
                  **(extra or {})}
    group = {"zarr_format": 3, "node_type": "group", "attributes": attributes}
    (path / "zarr.json").write_text(json.dumps(group, indent=2) + "\n")
    chunk_shape = [1, 1, *(max(1, min(int(c), n)) for c, n in zip(chunks, shape[2:], strict=True))]
    spec = _zarr_spec(path / "0")
    spec["metadata"] = {
        "shape": list(shape),
        "data_type": np.dtype(dtype).name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk_shape}},
        "dimension_names": list("tczyx"),
    }
    store = ts.open(spec, create=True).result()
    return HyperstackZarr(path, store)
