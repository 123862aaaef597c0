"""The slab stream of :func:`isojax.predict.predict_large`: devices, outputs and the slab loop.

:mod:`isojax.predict.large` plans a streamed prediction (the options, the input, the tiles,
the slab thickness and the normalisation); this module carries it out:

* :func:`_slab_functions`: a slab read, checked, normalised and upsampled on its way in,
  its normalisation undone and cast on its way out;
* :func:`_runner`: the network on the host's batches, split over the devices of a 1D mesh
  ``("data",)`` when there are several;
* :func:`_write_slabs`: the staged outputs (and the float32 scratch store where the first
  view's results wait), then the slabs of each view in order: read and upsample, restore,
  fuse with the first view's result, write back; the outputs are renamed into place only
  when every slab is written (:func:`isojax.io.staged_output`);
* :func:`_slab_bytes`: the memory model of one slab, shared with
  :func:`isojax.predict.slab_lines`.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from isojax.errors import IsojaxInputError
from isojax.forward import Interpolation
from isojax.io import _partial_tag, create_volume, staged_output, volume_format
from isojax.predict.core import _batch_result, _cast, _run_view, upsample_z
from isojax.predict.uncertainty import denormalize_scale
from isojax.synth import denormalize

#: float32 copies of the upsampled slab alive at its peak: upsampling output and
#: temporaries (3), its host copy, the restored slab, the read-back XZ result, the cast for
#: writing.
_UP_COPIES = 7

#: ``report(view, start, stop, shape, nbytes, done, total)`` after each slab (the fields of
#: :class:`isojax.predict.SlabProgress`).
_Report = Callable[[str, int, int, tuple, int, int, int], None]


class _StreamPlan(NamedTuple):
    """How a streamed prediction goes: its views, slabs, tiles and network calls.

    Attributes:
      views: the slab axes in order (1: slabs of y, the XZ view; 2: slabs of x, YZ).
      lines: lines per slab of each view ``{axis: lines}``.
      geometries: each view's padding and tiling (:func:`isojax.predict.core._geometry`).
      tiles: the tile size ``(lateral, axial)`` (None for an axis not cut), or None.
      n_devices: devices the batches are split over.
      view: :func:`isojax.predict.core._run_view`'s options shared by every slab (``run``,
        ``in_flight``, ``batch_size``, ``budget``, ``bytes_per_pixel``, ``on_batch``).
    """

    views: list[int]
    lines: dict[int, int]
    geometries: dict
    tiles: tuple[int | None, int | None] | None
    n_devices: int
    view: dict[str, Any]


def _slab_bytes(lines: int, *, n_z: int, n_up: int, n_lateral: int, itemsize: int) -> int:
    """Estimated peak host bytes of a slab of ``lines`` lines (y rows or x columns).

    Per line of ``n_lateral`` voxels: the raw input (``n_z * itemsize`` bytes per lateral
    voxel), its float32 normalised copy (``4 n_z``) and :data:`_UP_COPIES` float32 copies of
    the upsampled line (``4 n_up`` each); see :func:`isojax.predict.slab_lines`.
    """
    return lines * n_lateral * (n_z * (itemsize + 4) + _UP_COPIES * 4 * n_up)


# ----------------------------------------------------------------------------------------
# A slab's way in and out, and the devices


def _slab_functions(volume, *, subsample: float, interpolation: Interpolation,
                    bounds: tuple[float, float] | None, output_dtype) -> tuple[Callable, ...]:
    """``(load, finish, finish_scale)``: a slab's way in and out of the network.

    ``load(index)`` reads the region ``index`` of ``volume``, checks it is finite, maps
    ``bounds`` to 0 and 1 and upsamples Z on the physical grid (float32 ``(z_up, ...)``);
    ``finish(values)`` undoes the normalisation in place and casts to ``output_dtype``;
    ``finish_scale(values)`` brings a Laplace scale to intensity units in place.
    """

    def load(index) -> np.ndarray:
        """Read, check and normalise a slab, then upsample its Z on the physical grid."""
        x = volume.read(index).astype(np.float32)
        if not np.all(np.isfinite(x)):
            bad = int(x.size - np.count_nonzero(np.isfinite(x)))
            raise IsojaxInputError(
                f"the stack holds {bad} NaN or inf voxels in region {index}; replace them "
                "first, e.g. with the median."
            )
        if bounds is not None:
            lo, hi = bounds
            x = (x - np.float32(lo)) / np.float32(hi - lo)
        return np.asarray(upsample_z(x, subsample, interpolation=interpolation))

    def finish(values: np.ndarray) -> np.ndarray:
        if bounds is not None:
            denormalize(values, *bounds, out=values)
        return _cast(values, output_dtype)

    def finish_scale(values: np.ndarray) -> np.ndarray:
        if bounds is not None:
            denormalize_scale(values, *bounds, out=values)
        return values

    return load, finish, finish_scale




def _runner(apply_fn, devices, *, with_scale: bool = False) -> tuple[Callable, int]:
    """``run(batch) -> result`` on the host, the batch split over ``devices`` along axis 0.

    Args:
      apply_fn: the network, ``(b, h, w) -> (b, h, w)`` (or ``(mean, scale)``).
      devices: the devices to split over, or None for all of ``jax.devices()``.
      with_scale: the result is the pair ``(mean, scale)`` of a probabilistic network.

    Returns:
      ``(run, n)``: the function (NumPy batch in, NumPy result out, of the batch's length;
      a batch is filled up with zeros to a multiple of ``n``) and the number of devices.
      With one device the batch is committed to it, so the network runs there (not on the
      default device); weights the network closes over are constants of its compiled
      program, which is compiled for that device.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    jitted = jax.jit(apply_fn)
    sharding = None
    if n > 1:
        mesh = jax.make_mesh((n,), ("data",), (jax.sharding.AxisType.Auto,), devices=devices)
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def run(batch: np.ndarray):
        b = batch.shape[0]
        if sharding is None:  # committed to the one device: the computation runs there
            x = jax.device_put(batch, devices[0])
        else:
            pad = -b % n  # a shard per device: fill the batch up with zeros
            if pad:
                batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
            x = jax.device_put(batch, sharding)
        result = _batch_result(jitted(x), x.shape, with_scale=with_scale)
        return tuple(r[:b] for r in result) if with_scale else result[:b]

    return run, n


# ----------------------------------------------------------------------------------------
# The outputs


def _scratch_volume(parent: Path, name: str, shape, chunks):
    """``(folder, volume)``: a float32 OME-Zarr in a new temporary folder beside the output.

    If the store cannot be created (e.g. a full disk, an interruption), the folder is
    removed before the error goes on.
    """
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=f"{name}.{_partial_tag('scratch')}-"))
    try:
        volume = create_volume(
            folder / "xz.zarr", shape, np.float32, spacing=None, format="zarr", chunks=chunks
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, volume


def _staged_volumes(stack: contextlib.ExitStack, output_path: Path, *, out_shape, out_spacing,
                    output_dtype, out_format, chunks, overwrite, finish,
                    uncertainty: tuple[Path, Callable] | None) -> tuple[list, list]:
    """``(outs, finishes)``: the output (and the uncertainty map) created in staged files.

    Each output is staged on ``stack`` (:func:`isojax.io.staged_output`: a temporary
    sibling, renamed into place when ``stack`` closes without an error, removed otherwise);
    ``finishes`` pairs each with the function that turns its float32 results into what is
    stored (``finish`` for the output; the uncertainty's own for the float32 scale).
    """
    temp = stack.enter_context(staged_output(output_path, overwrite=overwrite))
    outs = [create_volume(temp, out_shape, output_dtype, spacing=out_spacing,
                          format=out_format, chunks=chunks)]
    finishes = [finish]
    if uncertainty is not None:
        path, finish_scale = uncertainty
        temp_u = stack.enter_context(staged_output(path, overwrite=overwrite))
        outs.append(create_volume(temp_u, out_shape, np.float32, spacing=out_spacing,
                                  format=volume_format(path), chunks=chunks))
        finishes.append(finish_scale)
    return outs, finishes


# ----------------------------------------------------------------------------------------
# The slab loop


def _slabs(views, lines, shape) -> Iterator[tuple[int, int, int, int, tuple]]:
    """``(v, axis, start, stop, index)`` of every slab, view after view.

    ``v`` is the view's rank (0: the first), ``axis`` its slab axis (1: slabs of y for the
    XZ view, 2: slabs of x for the YZ view), ``index`` the slab's region of ``shape``
    ``(z, y, x)`` (all of z and of the other lateral axis).
    """
    for v, axis in enumerate(views):
        n_lines, t = shape[axis], lines[axis]
        for a0 in range(0, n_lines, t):
            a1 = min(n_lines, a0 + t)
            slices = [slice(None)] * 3
            slices[axis] = slice(a0, a1)
            yield v, axis, a0, a1, tuple(slices)


def _stream_slabs(outs, middles, finishes, plan: _StreamPlan, *, volume, load, fuse, n_up: int,
                  report: _Report | None) -> None:
    """Restore every slab of every view and write it back (:func:`_write_slabs`).

    A slab of the first view is restored into new arrays; one of the second view reads the
    first view's results of the same region back from ``middles`` and fuses into them. With
    two views the first one's results go to ``middles`` as they are (normalised float32),
    else (and for the second view) through ``finishes`` to ``outs``.
    """
    views, lines = plan.views, plan.lines
    n_z, n_y, n_x = volume.shape
    itemsize = volume.dtype.itemsize
    total = sum(-(-(n_y if axis == 1 else n_x) // lines[axis]) for axis in views)
    two_views = len(views) == 2
    for done, (v, axis, a0, a1, index) in enumerate(_slabs(views, lines, volume.shape), 1):
        up = load(index)
        if v == 0:
            results = tuple(np.empty_like(up) for _ in outs)
        else:
            results = tuple(np.asarray(m.read(index), np.float32) for m in middles)
        _run_view(up, results if len(results) > 1 else results[0], axis=axis,
                  fuse=None if v == 0 else fuse, geometry=plan.geometries[axis], **plan.view)
        del up
        for out, middle, end, result in zip(outs, middles, finishes, results, strict=True):
            if two_views and v == 0:
                middle.write(index, result)
            else:
                out.write(index, end(result))
        if report is not None:
            n_lat = n_x if axis == 1 else n_y
            nbytes = _slab_bytes(a1 - a0, n_z=n_z, n_up=n_up, n_lateral=n_lat, itemsize=itemsize)
            report("xz" if axis == 1 else "yz", a0, a1, results[0].shape, nbytes, done, total)
        del results


def _write_slabs(
    output_path: Path, volume, plan: _StreamPlan, *, load, finish, fuse, out_shape, out_spacing,
    output_dtype, out_format, chunks, overwrite, report: _Report | None,
    uncertainty: tuple[Path, Callable] | None = None,
) -> None:
    """Restore the views of ``plan`` slab by slab into a staged ``output_path``.

    ``load(index)`` gives a slab's normalised, Z-upsampled voxels; ``finish(values)`` undoes
    the normalisation and casts. With two views the first one's result waits in the output
    (float32) or in a float32 scratch store (other types, removed at the end whatever
    happens) until the second fuses into it. ``report`` is called after each slab. ``uncertainty`` is
    ``(path, finish_scale)``: the network's scale goes to a second staged float32 output
    (where the first view's scale also waits), through ``finish_scale``. The outputs are
    renamed into place only when every slab is written; on an error they are removed.
    """
    n_up = out_shape[0]
    scratch_dir = None
    try:
        with contextlib.ExitStack() as stack:
            outs, finishes = _staged_volumes(
                stack, output_path, out_shape=out_shape, out_spacing=out_spacing,
                output_dtype=output_dtype, out_format=out_format, chunks=chunks,
                overwrite=overwrite, finish=finish, uncertainty=uncertainty)
            middles = list(outs)  # where the first view's normalised results wait
            if len(plan.views) == 2 and output_dtype != np.float32:
                y_chunk, x_chunk = plan.lines[1], plan.lines[2]
                z_chunk = max(1, min(n_up, 2**23 // (4 * y_chunk * x_chunk)))
                scratch_dir, middles[0] = _scratch_volume(
                    output_path.parent, output_path.name, out_shape, (z_chunk, y_chunk, x_chunk)
                )
            _stream_slabs(outs, middles, finishes, plan, volume=volume, load=load, fuse=fuse,
                          n_up=n_up, report=report)
            del outs, middles  # the stores released before they are renamed into place
    finally:
        if scratch_dir is not None:
            shutil.rmtree(scratch_dir, ignore_errors=True)
