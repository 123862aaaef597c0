"""Streamed prediction of volumes larger than memory: slabs from a file into an output store.

:func:`isojax.predict_stack` holds the normalised stack, its Z-upsampled copy and the result
in memory. :func:`predict_large` computes the same result (to float precision) while holding
only slabs:

1. **Normalisation.** The percentiles ``(pmin, pmax)`` of the whole stack are estimated from
   a strided subsample of at most ``max_samples`` voxels (:func:`estimate_percentiles`);
   a stack with no more voxels than that is read whole and the percentiles are exact, equal
   to :func:`numpy.percentile`'s.
2. **XZ view, slabs of y.** An XZ slice (for each ``y`` the image ``(x, z)``) needs every z
   of its row, and Z upsampling (:func:`isojax.predict.upsample_z`) mixes only z: so
   ``stack[:, y0:y1, :]`` is read, normalised, upsampled on the physical grid and restored
   slice by slice, exactly as the whole stack would be. The restored slab is written to the
   output (or to a float32 scratch store when the output type is not float32).
3. **YZ view, slabs of x.** Likewise ``stack[:, :, x0:x1]`` gives the YZ slices; the XZ
   result of the same region is read back, fused (mean or geometric mean, as
   :func:`predict_stack`), the normalisation undone and the final slab written.

Memory is bounded by the slab thickness, chosen from ``memory_budget``: a quarter of it goes
to the batches of network activations (two batches in flight on CPU, as in
:func:`isojax.predict_stack`), the rest to the slab and its copies (raw input,
normalised, upsampled, result, read-back; see :func:`slab_lines`).

Outputs are OME-Zarr 0.5 (Zarr v3 through tensorstore) or an uncompressed BigTIFF with
OME-XML, both with the isotropic voxel size ``(dz / subsample, dy, dx)``. They are written
under a temporary sibling name (``OUT.partial-<host>-<pid>-<random>``) and renamed into place
only when complete; an existing output is replaced only with ``overwrite=True``, and never one
that is the input (:func:`isojax.io.check_outputs`). The partials of a writer killed meanwhile
are removed by the next write of the same output (:func:`isojax.io.remove_stale_partials`).

With several devices (``jax.devices()``), each batch of slices is split over a 1D mesh
``("data",)`` with :class:`jax.sharding.NamedSharding`; the result is the same as on one
device since every slice is restored independently.

This module plans the stream (the options, the input, the tiles, the slab thickness, the
normalisation); :mod:`isojax.predict._stream` carries it out (the slabs' way in and out,
the devices, the staged outputs and the slab loop).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from isojax.errors import IsojaxInputError
from isojax.forward import Interpolation
from isojax.geometry import open_stack
from isojax.io import check_outputs, volume_format
from isojax.predict._stream import (
    _UP_COPIES,
    _runner,
    _slab_bytes,
    _slab_functions,
    _StreamPlan,
    _write_slabs,
)
from isojax.predict.core import (
    _BYTES_PER_PIXEL,
    _DEFAULT_BUDGET,
    DEFAULT_PERCENTILES,
    Fuse,
    _auto_tile,
    _check_normalization,
    _check_run,
    _check_tile,
    _default_batch_size,
    _geometry,
    _in_flight,
    _positive_int,
    upsampled_length,
)
from isojax.synth import no_contrast_message

__all__ = [
    "LargePrediction",
    "SlabProgress",
    "estimate_percentiles",
    "predict_large",
    "slab_lines",
]

#: Voxels read to estimate the normalisation percentiles (64 MiB as float32).
DEFAULT_MAX_SAMPLES = 2**24


class SlabProgress(NamedTuple):
    """What :func:`predict_large` reports after each slab.

    Attributes:
      view: ``"xz"`` (slabs of y) or ``"yz"`` (slabs of x).
      start: first y (or x) of the slab, in voxels.
      stop: one past its last y (or x).
      shape: the upsampled slab ``(z_up, y, x)`` in voxels.
      nbytes: estimated peak host memory of the slab's arrays, in bytes (see
        :func:`slab_lines`).
      done: slabs finished, over both views.
      total: slabs in all.
    """

    view: str
    start: int
    stop: int
    shape: tuple[int, int, int]
    nbytes: int
    done: int
    total: int


class LargePrediction(NamedTuple):
    """Summary of a :func:`predict_large` run.

    Attributes:
      path: the output written.
      shape: its shape ``(z_up, y, x)`` in voxels.
      dtype: its data type.
      spacing: its voxel size ``(dz / subsample, dy, dx)`` in µm, or None when unknown.
      subsample: the anisotropy factor used.
      percentiles: the normalisation values ``(lo, hi)`` (input units), or None.
      slab_lines: slab thickness ``(y lines per XZ slab, x lines per YZ slab)``.
      n_devices: devices the batches were split over.
      tile: the tile size ``(lateral, axial)`` used (None for an axis not cut), or None
        when whole slices went through the network.
      uncertainty: the uncertainty map written beside the output, or None.
    """

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    spacing: tuple[float, float, float] | None
    subsample: float
    percentiles: tuple[float, float] | None
    slab_lines: tuple[int, int]
    n_devices: int
    tile: tuple[int | None, int | None] | None = None
    uncertainty: Path | None = None


# ----------------------------------------------------------------------------------------
# Percentiles from a subsample


def _sample_strides(shape: Sequence[int], max_samples: int) -> tuple[int, int, int]:
    """Strides ``(kz, ky, kx)`` that keep at most about ``max_samples`` voxels of ``shape``."""
    nz, ny, nx = shape
    factor = nz * ny * nx / max_samples
    if factor <= 1:
        return 1, 1, 1
    # Keep at least ~64 planes where there are that many, then thin each plane evenly.
    kz = max(1, min(math.ceil(factor), nz // 64))
    k = max(1, math.ceil(math.sqrt(factor / kz)))
    return kz, k, k


def estimate_percentiles(
    volume, percentiles: tuple[float, float], *, max_samples: int = DEFAULT_MAX_SAMPLES
) -> tuple[float, float]:
    """Percentiles of a volume too large to load, from a strided subsample of its voxels.

    Every ``kz``-th plane is read with every ``k``-th row and column (``kz`` keeps at least
    64 planes where there are that many), so that at most about ``max_samples`` voxels are
    read; each sample sits at the centre of its ``kz x k x k`` cell (offsets ``kz // 2``,
    ``k // 2``), which avoids the bias of sampling cell corners on a gradient; then :func:`numpy.percentile` (linear interpolation) is taken over them as float32.
    A volume with at most ``max_samples`` voxels is read whole: the result is then exactly
    ``np.percentile(volume.astype(np.float32), percentiles)``, as in
    :func:`isojax.predict_stack`.

    Accuracy: for ``n`` samples the rank of the estimate deviates from ``p`` by about
    ``sqrt(p (1 - p) / n)`` (the binomial standard error of a sample quantile), e.g. 0.001
    percentage points at p = 99.8 % for the default 16.8 M samples; a regular grid does at
    least as well as random sampling unless the image has structure at the stride's period.
    ``tests/test_predict_large.py`` checks the rank error on a structured volume.

    Args:
      volume: anything with ``shape`` ``(z, y, x)`` and ``read((zs, ys, xs))`` taking slices
        with steps (:func:`isojax.io.open_volume`).
      percentiles: ``(pmin, pmax)`` in percent.
      max_samples: the most voxels to read, >= 1.

    Returns:
      ``(lo, hi)``: the estimated percentiles, in the volume's units.

    Raises:
      ValueError: the samples hold NaN or inf.
    """
    max_samples = _positive_int("max_samples", max_samples)
    kz, ky, kx = _sample_strides(volume.shape, max_samples)
    planes = []
    nz = volume.shape[0]
    # read runs of sampled planes, about 64 Mi voxels of whole planes at a time
    z_block = kz * max(1, 2**26 // max(1, volume.shape[1] * volume.shape[2]))
    for z0 in range(0, nz, z_block):
        part = volume.read(
            (
                slice(z0 + kz // 2, min(nz, z0 + z_block), kz),
                slice(ky // 2, None, ky),
                slice(kx // 2, None, kx),
            )
        )
        planes.append(np.asarray(part, np.float32).ravel())
    samples = np.concatenate(planes)
    if not np.all(np.isfinite(samples)):
        raise IsojaxInputError(
            "the stack holds NaN or inf voxels; replace them first (e.g. with the median)."
        )
    lo, hi = (float(v) for v in np.percentile(samples, percentiles))
    return lo, hi


# ----------------------------------------------------------------------------------------
# Slabs


def slab_lines(*, n_z: int, n_up: int, n_lateral: int, itemsize: int, budget: int) -> int:
    """How many lines (y rows or x columns) one slab may hold within ``budget`` bytes.

    A slab of ``t`` lines holds, per line of ``n_lateral`` voxels: the raw input
    (``n_z * itemsize`` bytes per lateral voxel) and its float32 normalised copy
    (``4 n_z``), and ``7`` float32 copies of the upsampled line (``4 n_up`` each: the
    upsampling's output and temporaries, its host copy, the restored slab, the read-back
    XZ result, the cast for writing).

    Args:
      n_z: measured Z slices.
      n_up: upsampled Z slices (:func:`isojax.predict.upsampled_length`).
      n_lateral: voxels along the line (x for an XZ slab, y for a YZ slab).
      itemsize: bytes per input voxel.
      budget: bytes for the slab.

    Returns:
      The number of lines, at least 1 (then possibly more than ``budget``).
    """
    per_line = _slab_bytes(1, n_z=n_z, n_up=n_up, n_lateral=n_lateral, itemsize=itemsize)
    return max(1, budget // per_line)


def _check_output_paths(output_path, uncertainty, *, input_path,
                        overwrite: bool) -> tuple[Path, str, Path | None]:
    """``(output_path, its format, uncertainty path or None)``, checked before any reading.

    Raises:
      IsojaxInputError: an output of unknown format, an existing output without
        ``overwrite``, an output that is the input or lies inside it
        (:func:`isojax.io.check_outputs`).
    """
    output_path = Path(output_path)
    out_format = volume_format(output_path)
    unc = None if uncertainty is None else Path(uncertainty)
    check_outputs([output_path, *([] if unc is None else [unc])], inputs={"stack": input_path},
                  overwrite=overwrite)
    return output_path, out_format, unc


def _is_real(dtype) -> bool:
    """Whether ``dtype`` holds real numbers (an integer or floating type)."""
    return bool(np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))


def _open_input(input_path, *, spacing, subsample):
    """``(volume, subsample, out_shape, out_spacing)`` of a stack file, checked.

    Opens the stack without reading it and builds its geometry as ``isojax predict`` does
    (:func:`isojax.geometry.open_stack`, without its warning: a caller that passes both a
    factor and a voxel size has chosen); the factor defaults to the voxel size's ``dz / dx``.
    Raises :class:`IsojaxInputError` for fewer than 2 planes, a type that is not real
    numbers, or no voxel size and no ``subsample``.
    """
    volume, geometry = open_stack(input_path, spacing=spacing, subsample=subsample, log=None)
    n_z, n_y, n_x = volume.shape
    if not _is_real(volume.dtype):
        raise IsojaxInputError(
            f"{input_path}: the stack must hold real numbers, got dtype {volume.dtype}; convert "
            "it to an integer or float type first."
        )
    s = geometry.subsample
    out_shape = (upsampled_length(n_z, s), n_y, n_x)
    return volume, s, out_shape, geometry.isotropic_spacing


def _aligned(lines: int, chunk: int, total: int) -> int:
    """``lines`` rounded down to a multiple of ``chunk`` when at least one chunk fits."""
    lines = min(lines, total)
    return lines // chunk * chunk if chunk <= lines < total else lines


def _slab_lines_per_view(views, volume, n_up: int, chunks, budget: int) -> dict[int, int]:
    """Lines per slab of each view (1: y rows of XZ slabs, 2: x columns of YZ slabs).

    :func:`slab_lines` within ``budget`` bytes, rounded down to whole output chunks when at
    least one fits; one line that exceeds ``budget`` is used anyway, with a warning.
    """
    n_z, n_y, n_x = volume.shape
    itemsize = volume.dtype.itemsize
    lines = {}
    for axis in views:
        n_lat, n_lines = (n_x, n_y) if axis == 1 else (n_y, n_x)
        t = slab_lines(n_z=n_z, n_up=n_up, n_lateral=n_lat, itemsize=itemsize, budget=budget)
        need = _slab_bytes(1, n_z=n_z, n_up=n_up, n_lateral=n_lat, itemsize=itemsize)
        if need > budget:
            warnings.warn(
                f"one {'XZ' if axis == 1 else 'YZ'} slice with its copies takes about "
                f"{need / 1e9:.2f} GB, more than the slab budget ({budget / 1e9:.2f} GB "
                f"of memory_budget); going on one slice at a time.",
                stacklevel=4,  # predict_large's caller (through _plan_stream)
            )
        lines[axis] = _aligned(t, chunks[axis], n_lines)
    return lines


class _Options(NamedTuple):
    """:func:`predict_large`'s options, checked (:func:`_check_options`)."""

    multiple: int
    memory_budget: int
    bytes_per_pixel: int
    overlap: int
    batch_size: int | None
    tile: tuple[int, int] | None
    percentiles: tuple[float, float] | None
    output_dtype: np.dtype
    chunks: tuple[int, ...]


def _check_options(interpolation, fuse, apply_fn, *, multiple, memory_budget, bytes_per_pixel,
                   overlap, batch_size, tile, normalization, output_dtype, chunks) -> _Options:
    """:func:`predict_large`'s options checked and normalised, before anything is read.

    Raises:
      ValueError: an unknown ``interpolation`` or ``fuse``, an option out of range (named in
        the message), ``chunks`` not three sizes.
      IsojaxInputError: an ``output_dtype`` that is not a real number type.
    """
    _check_run(interpolation, fuse, apply_fn)
    multiple = _positive_int("multiple", multiple)
    memory_budget = _positive_int("memory_budget", memory_budget)
    bytes_per_pixel = _positive_int("bytes_per_pixel", bytes_per_pixel)
    overlap = _positive_int("overlap", overlap, minimum=0)
    if batch_size is not None:
        batch_size = _positive_int("batch_size", batch_size)
    checked_tile = _check_tile(tile, multiple)
    percentiles = _check_normalization(normalization)
    output_dtype = np.dtype(output_dtype)
    if not _is_real(output_dtype):
        raise IsojaxInputError(
            f"output_dtype must be a real number type, got {output_dtype} (with --keep-dtype: "
            "the stack's); convert the stack to an integer or float type, or drop --keep-dtype."
        )
    chunks = tuple(_positive_int("each chunk size", c) for c in chunks)
    if len(chunks) != 3:
        raise ValueError(f"chunks must be three sizes (z, y, x), got {chunks!r}.")
    return _Options(multiple, memory_budget, bytes_per_pixel, overlap, batch_size,
                    checked_tile, percentiles, output_dtype, chunks)


def _plan_stream(apply_fn, devices, volume, out_shape, fuse, options: _Options, *,
                 with_scale: bool) -> _StreamPlan:
    """The devices, views, tiles, batch size and slab thickness of a streamed prediction.

    The tiles and the batch size as :func:`isojax.predict_stack` chooses them, within the
    quarter of ``memory_budget`` that goes to the network's activations; the slabs within
    the rest (with the uncertainty's scale, its result and read-back: 9 upsampled copies,
    not 7, so ``7 / 9`` of it), rounded to whole output chunks (:func:`_slab_lines_per_view`,
    which warns when one line exceeds them). ``out_shape`` is the upsampled ``(z, y, x)``.

    Raises:
      ValueError: a tile too small for the overlap (:func:`isojax.predict.core._geometry`).
    """
    run, n_dev = _runner(apply_fn, devices, with_scale=with_scale)
    views = {"xz": [1], "yz": [2]}.get(fuse, [1, 2])  # 1: slabs of y (XZ), 2: slabs of x (YZ)
    # On CPU with one device, two network calls run at once from two host threads, as in
    # predict_stack (one XLA call of the U-Net keeps only ~1.2 of 2 cores busy); they share
    # the activation quarter of the budget, which also sets the tiles when none are given.
    in_flight = _in_flight() if n_dev == 1 else 1
    activations = options.memory_budget // 4
    margin = options.overlap // 2
    tiles = _auto_tile(out_shape, views, options.tile, budget=activations // in_flight,
                       bytes_per_pixel=options.bytes_per_pixel, margin=margin,
                       multiple=options.multiple)
    geometries = {a: _geometry(out_shape, a, tiles, margin, options.multiple) for a in views}
    batch_size = options.batch_size
    if batch_size is None:
        th, tw = max(
            geometries.values(), key=lambda g: g.tile_shape[0] * g.tile_shape[1]
        ).tile_shape
        batch_size = _default_batch_size(activations, options.bytes_per_pixel * th * tw,
                                         in_flight)
    batch_size = -(-batch_size // n_dev) * n_dev
    slab_budget = options.memory_budget - activations
    if with_scale:
        slab_budget = slab_budget * _UP_COPIES // (_UP_COPIES + 2)
    lines = _slab_lines_per_view(views, volume, out_shape[0], options.chunks, slab_budget)
    view = dict(run=run, in_flight=in_flight, batch_size=batch_size, budget=activations,
                bytes_per_pixel=options.bytes_per_pixel, on_batch=lambda n: None)
    return _StreamPlan(views, lines, geometries, tiles, n_dev, view)


def _bounds(volume, percentiles, *, max_samples: int, name) -> tuple[float, float] | None:
    """The normalisation values ``(lo, hi)`` of ``volume`` (:func:`estimate_percentiles`),
    or None without ``percentiles``.

    Raises:
      IsojaxInputError: NaN or inf samples, or no contrast (``hi <= lo``; ``name`` is the
        stack named in the message).
    """
    if percentiles is None:
        return None
    lo, hi = estimate_percentiles(volume, percentiles, max_samples=max_samples)
    if not hi > lo:
        raise IsojaxInputError(no_contrast_message(value=lo, percentiles=percentiles, name=name))
    return lo, hi


def predict_large(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    apply_fn: Callable,
    *,
    subsample: float | None = None,
    spacing: Sequence[float] | None = None,
    interpolation: Interpolation = "linear",
    fuse: Fuse = "mean",
    memory_budget: int = _DEFAULT_BUDGET,
    bytes_per_pixel: int = _BYTES_PER_PIXEL,
    batch_size: int | None = None,
    tile: int | tuple[int, int] | None = None,
    overlap: int = 96,
    multiple: int = 4,
    normalization: tuple[float, float] | None = DEFAULT_PERCENTILES,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    output_dtype=np.float32,
    chunks: Sequence[int] = (64, 64, 64),
    overwrite: bool = False,
    devices: Sequence[jax.Device] | None = None,
    progress: Callable[[SlabProgress], None] | None = None,
    uncertainty: str | os.PathLike | None = None,
) -> LargePrediction:
    """Restore a stack file too large for memory into an isotropic OME-Zarr or BigTIFF.

    :func:`isojax.predict_stack`'s result, slab by slab (see the module docstring): the same
    padding, tiling, batching and fusion, so that the output equals the in-memory prediction
    to float precision when the percentiles are exact (stacks of at most ``max_samples``
    voxels); larger stacks use estimated percentiles (:func:`estimate_percentiles`).

    Memory: about ``memory_budget`` bytes of host memory on top of the interpreter, JAX and
    the compiled network: three quarters for a slab (:func:`slab_lines`; whole output
    chunks when at least one fits; one line, and a warning of what it takes, when a single
    y row or x column with all its z exceeds them), a quarter for the batches of network
    activations in flight (``bytes_per_pixel`` per input pixel, as :func:`predict_stack`).

    Args:
      input_path: an uncompressed contiguous TIFF (memory-mapped) or an OME-Zarr 0.5 image
        (:func:`isojax.io.open_volume`); axes ``(z, y, x)``, Z coarse.
      output_path: ``.zarr`` (OME-Zarr 0.5, Zarr v3) or ``.tif``/``.tiff`` (BigTIFF with
        OME-XML); must not exist unless ``overwrite``.
      apply_fn: the network, a pure function ``(b, h, w) -> (b, h, w)`` on float32 (``h``
        lateral, ``w`` axial), or returning ``(mean, scale)``.
      subsample: anisotropy factor ``dz / dx`` >= 1; default from the input's voxel size.
      spacing: voxel size ``(dz, dy, dx)`` in µm overriding the input's metadata.
      interpolation: ``"linear"`` or ``"cubic"``, as in training.
      fuse: ``"mean"``, ``"geometric"``, ``"xz"`` or ``"yz"`` (see :func:`predict_stack`).
      memory_budget: host bytes for a slab and a batch, default 1 GiB.
      bytes_per_pixel: estimated peak network memory per input pixel, in bytes.
      batch_size: images per network call; default from a quarter of ``memory_budget``
        shared by the batches in flight (two on CPU with one device, at most 8 images
        each, as :func:`predict_stack`). Rounded up to a multiple of the number of devices.
      tile: tile size in pixels (int or ``(lateral, axial)``) or None: whole slices when
        one fits the activation budget, else tiles chosen to fit it; see
        :func:`predict_stack`.
      overlap: pixels shared by neighbouring tiles.
      multiple: the network's input sizes must be multiples of this.
      normalization: percentiles ``(pmin, pmax)`` or None.
      max_samples: at most this many voxels are read to estimate the percentiles.
      output_dtype: the stored type: float32 (default), or an integer type (rounded and
        clipped to its range).
      chunks: OME-Zarr chunk shape ``(z, y, x)`` in voxels.
      overwrite: replace an existing output (only once the new one is complete).
      devices: the devices to split batches over; default all of ``jax.devices()``. With
        one device, the network and the slabs' Z upsampling run on it (not on the default
        device).
      progress: called with a :class:`SlabProgress` after each slab.
      uncertainty: a second float32 output (``.zarr`` or ``.tif``) for the Laplace scale of
        a probabilistic ``apply_fn`` (returning ``(mean, scale)``), fused over the views and
        in intensity units as :func:`isojax.predict.predict_stack_uncertainty`; staged and
        renamed with the output. Its two more float32 copies shrink the slabs by ``7 / 9``.

    Returns:
      A :class:`LargePrediction`.

    Raises:
      IsojaxInputError: unreadable or unsupported input (e.g. a compressed TIFF), no way to
        know ``subsample``, an existing output without ``overwrite``, an output that is the
        input or lies inside it (:func:`isojax.io.check_outputs`).
      ValueError: bad options, NaN or inf voxels, a constant stack, or ``apply_fn`` changing
        the batch shape. Whatever fails, nothing is left at ``output_path`` (nor temporary
        files next to it).
    """
    options = _check_options(
        interpolation, fuse, apply_fn, multiple=multiple, memory_budget=memory_budget,
        bytes_per_pixel=bytes_per_pixel, overlap=overlap, batch_size=batch_size, tile=tile,
        normalization=normalization, output_dtype=output_dtype, chunks=chunks)
    output_path, out_format, unc = _check_output_paths(output_path, uncertainty,
                                                       input_path=input_path, overwrite=overwrite)
    volume, s, out_shape, out_spacing = _open_input(input_path, spacing=spacing,
                                                    subsample=subsample)
    plan = _plan_stream(apply_fn, devices, volume, out_shape, fuse, options,
                        with_scale=unc is not None)
    bounds = _bounds(volume, options.percentiles, max_samples=max_samples, name=input_path)
    load, finish, finish_scale = _slab_functions(
        volume, subsample=s, interpolation=interpolation, bounds=bounds,
        output_dtype=options.output_dtype)
    # one device asked for: the slabs' Z upsampling runs there too, not on the default one
    home = (jax.default_device(devices[0]) if devices is not None and len(devices) == 1
            else contextlib.nullcontext())
    with home:
        _write_slabs(
            output_path, volume, plan, load=load, finish=finish, fuse=fuse,
            out_shape=out_shape, out_spacing=out_spacing, output_dtype=options.output_dtype,
            out_format=out_format, chunks=options.chunks, overwrite=overwrite,
            report=None if progress is None else lambda *f: progress(SlabProgress(*f)),
            uncertainty=None if unc is None else (unc, finish_scale))
    return LargePrediction(
        path=output_path, shape=out_shape, dtype=options.output_dtype, spacing=out_spacing,
        subsample=s, percentiles=bounds, slab_lines=(plan.lines.get(1, 0), plan.lines.get(2, 0)),
        n_devices=plan.n_devices, tile=plan.tiles, uncertainty=unc)
