"""The shared core of prediction: option checks, Z upsampling, tiling and batched network runs.

What :func:`isojax.predict.predict_stack` (whole stacks in memory) and
:func:`isojax.predict.predict_large` (slabs streamed from a file) both do to one volume of
Z-upsampled slices:

* check their options (subsample, interpolation, tiles, normalisation percentiles, sizes);
* bring Z slices to the lateral pixel size on the physical grid (:func:`upsample_z`,
  :func:`upsampled_length`);
* reflect-pad the XZ and YZ slices to multiples of the U-Net's ``2**depth`` and, when they
  are too large for the memory budget, cut them into overlapping tiles (:func:`_auto_tile`,
  :func:`_geometry`);
* feed the slices or tiles to the network in batches, two in flight on CPU, and store or
  fuse the results back in order (:func:`_view_batches`, :func:`_run_batches`).

Pure NumPy/JAX: arrays in, arrays out; no files.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from isojax.forward import Interpolation, upsample
from isojax.geometry import check_subsample

Array = jax.Array
Fuse = Literal["mean", "geometric", "xz", "yz"]

__all__ = [
    "DEFAULT_PERCENTILES",
    "upsample_z",
    "upsampled_length",
]


#: Percentiles ``(pmin, pmax)`` that map to 0 and 1 before the network. They must match the
#: normalisation of the training data. (CSBDeep's ``PercentileNormalizer`` defaults to
#: ``(2, 99.8)`` at prediction; its training patches draw ``pmin`` from ``[1, 3]``.)
DEFAULT_PERCENTILES = (1.0, 99.8)

_FUSES = ("mean", "geometric", "xz", "yz")
_INTERPOLATIONS = ("linear", "cubic")
# Estimated peak activation memory of the network per input pixel, in bytes. CSBDeep's
# default 2D U-Net (depth 2, 32 first-level filters, float32) holds at full resolution the
# skip (32 channels), the concatenation (64) and a conv output (32): 128 channels * 4 B =
# 512 B, doubled for XLA's temporaries.
_BYTES_PER_PIXEL = 1024
_DEFAULT_BUDGET = 2**30  # 1 GiB
_CPU_MAX_BATCH = 8
# Network calls run at once on CPU, each from its own host thread (see _run_batches).
_CPU_IN_FLIGHT = 2


def _in_flight() -> int:
    """Network calls :func:`predict_stack` keeps running at once on the default backend."""
    return _CPU_IN_FLIGHT if jax.default_backend() == "cpu" else 1


# ----------------------------------------------------------------------------------------
# Checks


def _check_stack_shape(shape) -> None:
    if len(shape) != 3:
        hint = (
            " Select one channel or time point first, e.g. stack[:, 0] for (z, c, y, x)."
            if len(shape) > 3
            else " A single 2D image has no Z axis to restore."
        )
        raise ValueError(f"the stack must be 3D (z, y, x), got shape {tuple(shape)}.{hint}")
    if shape[0] < 2:
        raise ValueError(
            f"the stack needs at least 2 Z slices to interpolate between, got {shape[0]} "
            f"(shape {tuple(shape)}); check that the axes are (z, y, x)."
        )


def _check_interpolation(interpolation) -> None:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {_INTERPOLATIONS} (the one used to make the training "
            f"inputs), got {interpolation!r}."
        )


def _check_run(interpolation, fuse, apply_fn) -> None:
    """The checks that both predictors make of how the network is run and the views fused."""
    _check_interpolation(interpolation)
    if fuse not in _FUSES:
        raise ValueError(f"fuse must be one of {_FUSES}, got {fuse!r}.")
    if not callable(apply_fn):
        raise ValueError(f"apply_fn must be a callable (b, h, w) -> (b, h, w), got {apply_fn!r}.")


def _positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_tile(tile, multiple: int) -> tuple[int, int] | None:
    """Tile size ``(lateral, axial)`` in pixels, rounded up to multiples of ``multiple``."""
    if tile is None:
        return None
    pair = (tile, tile) if isinstance(tile, (int, np.integer)) else tuple(tile)
    if len(pair) != 2:
        raise ValueError(
            f"tile must be an int or a pair (lateral, axial) of pixel sizes, got {tile!r}."
        )
    lateral, axial = (_positive_int("each tile size", t) for t in pair)
    return -(-lateral // multiple) * multiple, -(-axial // multiple) * multiple


def _check_normalization(normalization) -> tuple[float, float] | None:
    if normalization is None:
        return None
    try:
        pmin, pmax = (float(p) for p in normalization)
    except (TypeError, ValueError):
        raise ValueError(
            f"normalization must be a pair of percentiles (pmin, pmax) or None, "
            f"got {normalization!r}."
        ) from None
    if not 0.0 <= pmin < pmax <= 100.0:
        raise ValueError(
            f"normalization percentiles need 0 <= pmin < pmax <= 100, got ({pmin}, {pmax}); "
            f"the defaults are {DEFAULT_PERCENTILES}."
        )
    return pmin, pmax


# ----------------------------------------------------------------------------------------
# Z upsampling


def upsampled_length(n_z: int, subsample: float) -> int:
    """Number of Z slices after upsampling ``n_z`` slices by ``subsample`` (no extrapolation).

    Output slice ``j`` sits at ``j / subsample`` input slices; the last one at or before the
    last measured slice is kept: ``floor((n_z - 1) * subsample) + 1`` (with a 1e-9 tolerance
    so that 50 * 10.2 counts as 510).

    Args:
      n_z: number of measured Z slices, >= 1.
      subsample: anisotropy factor ``dz / dx``, >= 1.

    Returns:
      The number of output slices.

    Example:
      >>> upsampled_length(6, 3.5)
      18
    """
    s = check_subsample(subsample)
    return math.floor((int(n_z) - 1) * s + 1e-9) + 1


def upsample_z(stack, subsample: float, *, interpolation: Interpolation = "linear") -> Array:
    """Bring the Z slices of a stack to the lateral pixel size, on the physical grid.

    Uses :func:`isojax.upsample` along Z, the interpolation that made the network's training
    inputs: measured slice ``k`` sits at output slice ``k * subsample`` (the first at 0) and
    output slice ``j`` at ``z0 + j * dz / subsample`` µm. The output ends at the last output
    slice at or before the last measured one: nothing is extrapolated past it, so the output
    has ``floor((n_z - 1) * subsample) + 1`` slices (:func:`upsampled_length`).

    CSBDeep's ``zoom(stack, (subsample, 1, 1), order=1)`` instead makes
    ``round(n_z * subsample)`` slices and stretches its grid so that the first and last
    measured slices land on the first and last output slices: measured slice ``k`` goes to
    ``k (m - 1) / (n_z - 1)``, which drifts from ``k * subsample`` by up to about one output
    slice at the far end of the stack.

    Pure; runs under :func:`jax.jit` with ``subsample`` and ``interpolation`` static.

    Args:
      stack: ``(z, y, x)`` array, Z coarse (any leading/trailing sizes >= 1, ``z >= 2``).
      subsample: anisotropy factor ``dz / dx`` (µm / µm), a Python float >= 1, e.g. 10.2.
      interpolation: ``"linear"`` (default) or ``"cubic"`` (Keys); use the one the training
        inputs were made with.

    Returns:
      ``(upsampled_length(z, subsample), y, x)`` array, the stack's float dtype (float32 for
      integer input).

    Raises:
      ValueError: if the stack is not 3D or has fewer than 2 slices, ``subsample`` is not a
        number >= 1, or ``interpolation`` is unknown.

    Example:
      >>> import jax.numpy as jnp
      >>> upsample_z(jnp.array([0.0, 7.0]).reshape(2, 1, 1), 3.5)[:, 0, 0]
      Array([0., 2., 4., 6.], dtype=float32)
    """
    s = check_subsample(subsample)
    _check_interpolation(interpolation)
    stack = jnp.asarray(stack)
    _check_stack_shape(stack.shape)
    n_up = upsampled_length(stack.shape[0], s)
    return upsample(stack, n_up, s, interpolation=interpolation, axis=0)

# ----------------------------------------------------------------------------------------
# Tiling


def _pad_split(n: int, multiple: int) -> tuple[int, int]:
    """Reflect padding ``(before, after)`` to the next multiple, split as CSBDeep does."""
    p = -n % multiple
    return p // 2, p - p // 2


def _tiles_1d(length: int, tile: int | None, margin: int, multiple: int):
    """Tiles along one padded axis of ``length`` pixels (a multiple of ``multiple``).

    Returns ``(size, starts, kept)``: every tile has ``size`` pixels and starts at a multiple
    of ``multiple`` (so a U-Net sees the same pooling grid as on the whole slice); tile ``i``
    contributes the pixels ``kept[i] = (lo, hi)``, which partition ``[0, length)`` and lie at
    least ``margin`` pixels inside every tile edge that is not an edge of the slice.
    """
    if tile is None or tile >= length:
        return length, [0], [(0, length)]
    stride = (tile - 2 * margin) // multiple * multiple
    if stride < multiple:
        raise ValueError(
            f"tile ({tile} px) must exceed the overlap ({2 * margin} px) by at least "
            f"multiple ({multiple} px): use tile >= {2 * margin + multiple} or a smaller overlap."
        )
    n = -(-(length - tile) // stride) + 1
    starts = [min(i * stride, length - tile) for i in range(n)]
    cuts = [0] + [(starts[i + 1] + starts[i] + tile) // 2 for i in range(n - 1)] + [length]
    return tile, starts, list(itertools.pairwise(cuts))


# ----------------------------------------------------------------------------------------
# Prediction


def _fuse_into(dst: np.ndarray, new: np.ndarray, fuse: str) -> np.ndarray:
    if fuse == "mean":
        return (dst + new) * np.float32(0.5)
    if fuse == "geometric":
        return np.sqrt(np.maximum(dst, 0) * np.maximum(new, 0))
    return new


class _Geometry(NamedTuple):
    """How the slices of one view are padded and tiled (pixels of the ``(lateral, z)`` image)."""

    pad_lat: tuple[int, int]
    pad_ax: tuple[int, int]
    tile_shape: tuple[int, int]
    r_starts: list[int]
    r_kept: list[tuple[int, int]]
    c_starts: list[int]
    c_kept: list[tuple[int, int]]

    @property
    def tiles(self) -> list[tuple[int, int]]:
        """``(row, column)`` tile indices of one slice, row-major."""
        return [(r, c) for r in range(len(self.r_starts)) for c in range(len(self.c_starts))]


def _auto_tile(shape, axes, tile, *, budget: int, bytes_per_pixel: int, margin: int,
               multiple: int) -> tuple[int | None, int | None] | None:
    """``tile`` if given; else tiles that keep one image's network memory within ``budget``.

    Without a tile, whole slices go through the network when one padded slice
    ``(lateral, z)`` of every view in ``axes`` takes at most ``budget`` bytes at
    ``bytes_per_pixel``; otherwise the slices are tiled: the axial axis is kept whole when
    a tile with it whole can still be as wide as it is tall, else both axes are cut into
    square tiles. Tiles are multiples of ``multiple``, and at least ``4 * margin`` pixels
    (twice the overlap) where they cut, so that most of each tile is kept; a budget too
    small for that uses tiles of that size anyway (the budget is then exceeded; an axis no
    longer than that is not cut). Each cut axis then gets the smallest tile that covers it
    with as few tiles as the largest fitting one does.

    Returns:
      ``(lateral, axial)`` with None for an axis not cut, or None for whole slices.
    """
    if tile is not None:
        return tile
    n_ax = shape[0] + sum(_pad_split(shape[0], multiple))
    n_lat = max(shape[3 - a] + sum(_pad_split(shape[3 - a], multiple)) for a in axes)
    pixels = max(1, budget // bytes_per_pixel)
    if n_lat * n_ax <= pixels:
        return None
    smallest = max(multiple, -(-4 * margin // multiple) * multiple)

    def fit(n):  # the largest multiple of ``multiple`` <= n, at least ``smallest``
        return max(smallest, int(n) // multiple * multiple)

    side = fit(math.isqrt(pixels))
    if n_ax <= side:  # cut only the lateral axis
        t_lat, t_ax = fit(pixels // n_ax), None
    elif n_lat <= side:
        t_lat, t_ax = None, fit(pixels // n_lat)
    else:
        t_lat = t_ax = side

    def balance(t, n):
        # the smallest tile that covers the axis with as many tiles as ``t`` needs: the same
        # number of network calls on smaller images (two tiles of 476 px for 512 px would
        # compute 952 px; two of 304 cover it too)
        if t is None or t >= n:
            return None
        count = len(_tiles_1d(n, t, margin, multiple)[1])
        for u in range(max(smallest, -(-n // count // multiple) * multiple), t, multiple):
            if len(_tiles_1d(n, u, margin, multiple)[1]) <= count:
                return u
        return t

    t_lat, t_ax = balance(t_lat, n_lat), balance(t_ax, n_ax)
    return None if t_lat is None and t_ax is None else (t_lat, t_ax)


def _geometry(shape, axis: int, tile, margin: int, multiple: int) -> _Geometry:
    n_lat, n_ax = shape[3 - axis], shape[0]
    pad_lat, pad_ax = _pad_split(n_lat, multiple), _pad_split(n_ax, multiple)
    t_lat, t_ax = (None, None) if tile is None else tile
    th, r_starts, r_kept = _tiles_1d(n_lat + sum(pad_lat), t_lat, margin, multiple)
    tw, c_starts, c_kept = _tiles_1d(n_ax + sum(pad_ax), t_ax, margin, multiple)
    return _Geometry(pad_lat, pad_ax, (th, tw), r_starts, r_kept, c_starts, c_kept)


def _batch_result(result, shape, *, with_scale: bool = False):
    """The network's output for a batch of ``shape`` as float32 NumPy, checked.

    A probabilistic model's ``(mean, scale)`` gives its mean, or with ``with_scale`` the
    pair ``(mean, scale)`` (both checked); a network without a scale is then refused.
    """
    if with_scale:
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise ValueError(
                "apply_fn must return a pair (mean, scale) to predict an uncertainty map, got "
                f"{type(result).__name__}; use a probabilistic (--loss laplace) model.")
        return tuple(_batch_result(r, shape) for r in result)
    if isinstance(result, (tuple, list)):
        result = result[0]
    result = np.asarray(result, dtype=np.float32)
    if result.shape != tuple(shape):
        raise ValueError(
            f"apply_fn must return a batch of the shape it was given, {tuple(shape)} "
            f"(b, lateral, axial), got {result.shape}; drop a channel axis inside it."
        )
    return result


def _default_batch_size(budget: int, image_bytes: int, in_flight: int) -> int:
    """Images per batch: ``budget`` shared by the batches in flight, at most 8 on CPU."""
    batch_size = max(1, budget // (image_bytes * in_flight))
    if jax.default_backend() == "cpu":
        # on CPU large batches only add cache misses: batches of 8 slices ran about
        # 1.2x faster than the 128 a 1 GiB budget allows (bench/README_quality.md,
        # prediction throughput)
        batch_size = min(batch_size, _CPU_MAX_BATCH)
    return batch_size


def _view_batches(
    vol, out, *, axis, fuse, geometry, batch_size, budget, bytes_per_pixel, on_batch, in_flight
):
    """The batches of one view: yields ``(batch, store)``; ``store(result)`` writes it back.

    Restores the slices of ``vol`` across ``axis`` (1: XZ slices, 2: YZ) into ``out``: the
    slice at index ``i`` of ``axis`` is the image ``(lateral, z)``, ``lateral`` being the
    other of y and x. ``fuse`` is None to store the result in ``out``, else how to fuse it
    with what ``out`` holds. ``out`` may be a tuple of volumes (the mean and the scale of a
    probabilistic network): ``store`` then takes a tuple of results, each fused into its
    volume with the same rule (:func:`isojax.predict.uncertainty.fuse_scales` says why).
    Each ``store`` must be called in the order the batches come.
    The default batch size shares ``budget`` between the ``in_flight`` batches run at once.
    """
    lat = 3 - axis
    n_slices, n_lat, n_ax = vol.shape[axis], vol.shape[lat], vol.shape[0]
    g = geometry
    pad_lat, pad_ax = g.pad_lat, g.pad_ax
    th, tw = g.tile_shape
    per_slice = g.tiles
    n_items = n_slices * len(per_slice)
    if batch_size is None:
        batch_size = _default_batch_size(budget, bytes_per_pixel * th * tw, in_flight)
    batch_size = min(batch_size, n_items)

    padded: dict[int, np.ndarray] = {}

    def padded_slice(i):
        if i not in padded:
            index = [slice(None)] * 3
            index[axis] = i
            image = vol[tuple(index)].T  # (z, lateral) -> (lateral, z): axial last
            padded[i] = np.pad(image, (pad_lat, pad_ax), mode="reflect")
        return padded[i]

    outs = out if isinstance(out, tuple) else (out,)

    def store(items, result):
        results = result if isinstance(result, tuple) else (result,)
        for b, (i, t) in enumerate(items):
            r, c = per_slice[t]
            # kept part of the tile, in unpadded slice coordinates, clipped to the slice
            r0, r1 = (max(0, v - pad_lat[0]) for v in g.r_kept[r])
            c0, c1 = (max(0, v - pad_ax[0]) for v in g.c_kept[c])
            r1, c1 = min(r1, n_lat), min(c1, n_ax)
            if r0 >= r1 or c0 >= c1:
                continue
            rs, cs = g.r_starts[r], g.c_starts[c]
            index = [slice(c0, c1), None, None]
            index[axis] = i
            index[lat] = slice(r0, r1)
            index = tuple(index)
            for dst, res in zip(outs, results, strict=True):
                values = res[
                    b,
                    r0 + pad_lat[0] - rs : r1 + pad_lat[0] - rs,
                    c0 + pad_ax[0] - cs : c1 + pad_ax[0] - cs,
                ]
                # dst[index] is (z, lateral)
                dst[index] = values.T if fuse is None else _fuse_into(dst[index], values.T, fuse)
        on_batch(len(items))

    for k0 in range(0, n_items, batch_size):
        items = [divmod(k, len(per_slice)) for k in range(k0, min(k0 + batch_size, n_items))]
        for i in [i for i in padded if i < items[0][0]]:
            del padded[i]
        batch = np.zeros((batch_size, th, tw), np.float32)  # last batch: zeros fill it up
        for b, (i, t) in enumerate(items):
            r, c = per_slice[t]
            rs, cs = g.r_starts[r], g.c_starts[c]
            batch[b] = padded_slice(i)[rs : rs + th, cs : cs + tw]
        yield batch, functools.partial(store, items)


def _run_batches(batches, run, in_flight: int) -> None:
    """``store(run(batch))`` for each ``(batch, store)``, up to ``in_flight`` runs at once.

    The runs go to as many host threads (``run`` must be thread-safe then); the stores
    happen on this thread in the order of ``batches``, so the result does not depend on
    ``in_flight``. XLA's CPU program for the U-Net keeps about 1.2 of 2 cores busy; two runs
    at once keep both, 1.6x the images per second (bench/RESULTS.md, whole-stack prediction
    throughput). One batch more
    than the workers waits in the queue, so that none idles while this thread stores.
    """
    if in_flight <= 1:
        for batch, store in batches:
            store(run(batch))
        return
    pending: collections.deque = collections.deque()
    pool = ThreadPoolExecutor(in_flight, thread_name_prefix="isojax-predict")
    try:
        for batch, store in batches:
            pending.append((store, pool.submit(run, batch)))
            if len(pending) > in_flight:
                store, future = pending.popleft()
                store(future.result())
        while pending:
            store, future = pending.popleft()
            store(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, run no more batches


def _cast(values: np.ndarray, dtype) -> np.ndarray:
    """``values`` as ``dtype``: rounded and clipped to an integer type's range."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def _run_view(vol, out, *, run, in_flight=1, **view):
    """Restore one view of ``vol`` into ``out`` (see :func:`_view_batches` for ``view``)."""
    _run_batches(_view_batches(vol, out, in_flight=in_flight, **view), run, in_flight)

