"""OME-Zarr 0.5 (Zarr v3) volumes through tensorstore: metadata and region reads and writes.

tensorstore is imported where a store is opened (an optional, heavy import).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from isojax.errors import IsojaxInputError
from isojax.io.tiff import _positive_spacing, unit_to_um

#: Bytes of Zarr chunks that one tensorstore read or write may touch (at least one chunk).
_ZARR_PIECE_BYTES = 64 * 2**20
#: OME-NGFF version written and read.
NGFF_VERSION = "0.5"
_ZARR_SUFFIXES = (".zarr",)
_AXES = ("z", "y", "x")


def _plain_slices(index, shape) -> tuple[slice, ...]:
    if len(index) != 3 or not all(isinstance(s, slice) for s in index):
        raise ValueError(f"a region is three slices (z, y, x), got {index!r}")
    return tuple(slice(*s.indices(n)) for s, n in zip(index, shape, strict=True))


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
    datasets, scale = multiscale_scale(multiscale, len(axes))
    factors = [unit_to_um(a.get("unit")) if isinstance(a, dict) else None for a in axes]
    known = [f for f in factors if f is not None]
    if len(known) != len(factors):
        return str(datasets[0]["path"]), None
    dz, dy, dx = (float(f * v) for f, v in zip(known, scale, strict=True))
    return str(datasets[0]["path"]), (dz, dy, dx)


def multiscale_scale(multiscale: dict, n_axes: int, *, where: str = "") -> tuple[list, np.ndarray]:
    """The datasets of an OME-NGFF ``multiscales`` entry and its full-resolution scale.

    The scale is the first dataset's ``scale`` transformation times the multiscale's own, one
    factor per axis (in the axes' units).

    Args:
      multiscale: one entry of ``attributes.ome.multiscales``.
      n_axes: the number of axes (the length every scale must have).
      where: a prefix for messages (e.g. ``"image.zarr: "``).

    Returns:
      ``(datasets, scale)``: the entry's datasets (the first has a ``path``) and ``(n_axes,)``
      positive factors.

    Raises:
      IsojaxInputError: no dataset path, or a malformed or non-positive scale.
    """
    datasets = multiscale.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise IsojaxInputError(f"{where}the OME-Zarr multiscales entry lists no dataset path")
    scale = np.ones(n_axes)
    for transforms in (datasets[0].get("coordinateTransformations", []),
                       multiscale.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale":
                try:
                    values = np.array([float(v) for v in t["scale"]])
                except (KeyError, TypeError, ValueError) as exc:
                    raise IsojaxInputError(f"{where}malformed OME-Zarr scale {t!r}") from exc
                if values.shape != scale.shape or not np.all(np.isfinite(values) & (values > 0)):
                    raise IsojaxInputError(
                        f"{where}the OME-Zarr scale must be {n_axes} positive numbers: {t!r}")
                scale = scale * values
    return datasets, scale


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
        dz, dy, dx = _positive_spacing(spacing, ndim=3, what="spacing")
        found, source = (dz, dy, dx), "override"
    return ZarrVolume(path, store, spacing=found, source=source)


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
