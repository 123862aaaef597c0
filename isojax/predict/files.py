"""The file-level policy of ``isojax predict``: what :func:`isojax.pipeline.predict_file` decides.

Between a model folder and a stack file on one side and :func:`isojax.predict.predict_stack`
or :func:`isojax.predict.predict_large` on the other:

* whether to stream (:func:`stream_prediction`): Zarr in or out, or an in-memory prediction
  that would need more than the memory budget (default half the physical memory);
* the tiles: the overlap a model needs (twice its network's reach), the ``--tile`` checks
  (:func:`check_tile_option`: too small is refused; too expensive is raised, with a warning);
* the model's subsample against the stack's (refused beyond 10%, a warning beyond 1%);
* the cast of the result to the stack's type (``--keep-dtype``), the output file, the
  progress bar and the log lines (:func:`predict_stack_file`, :func:`predict_volume_file`).

Reading the stack and working out its geometry are :mod:`isojax.geometry`'s
(:func:`~isojax.geometry.read_stack`, :func:`~isojax.geometry.open_stack`), shared with
training and calibration; the functions here receive the :class:`~isojax.geometry.StackGeometry`.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from tqdm import tqdm

from isojax.errors import IsojaxInputError, log_warnings
from isojax.geometry import StackGeometry
from isojax.io import _tifffile_log, write_tiff
from isojax.predict.core import Fuse, _cast, _geometry, upsampled_length
from isojax.predict.large import LargePrediction, predict_large
from isojax.predict.stack import predict_stack, predict_stack_uncertainty
from isojax.predict.uncertainty import load_probabilistic, write_tiff_pair
from isojax.synth import check_contrast
from isojax.unet import UNetConfig

__all__ = [
    "check_model_subsample",
    "check_tile_option",
    "load_predictor",
    "predict_stack_file",
    "predict_volume_file",
    "stream_prediction",
    "tile_overlap",
]

Log = Callable[[str], None]


def load_predictor(model, *, which: Literal["best", "last"] = "best",
                   uncertainty: bool = False,
                   precision: Literal["float32", "bf16"] = "float32"):
    """``(apply_fn, meta)`` of ``--model``: a model folder, or a package of ``isojax export``.

    A ``.zip`` is run by onnxruntime (:func:`isojax.export.load_package`); anything else is
    a model folder (:func:`isojax.model_folder.load_model`). With ``uncertainty`` the
    network gives the pair ``(mean, scale)`` of a probabilistic model
    (:func:`isojax.predict.uncertainty.load_probabilistic`); the one loader of both
    ``isojax predict`` paths (whole stacks and time-lapses).

    Args:
      model: a model folder or a ``.bioimageio.zip`` package.
      which: the checkpoint, ``"best"`` or ``"last"`` (model folders only).
      uncertainty: load the mean and the Laplace scale (``--uncertainty``).
      precision: the network's arithmetic, ``"float32"`` or ``"bf16"`` (model folders
        only; :func:`isojax.model_folder.load_model`).

    Returns:
      ``(apply_fn, meta)``: the network and the model's configuration.

    Raises:
      IsojaxInputError: an unusable model folder or package; with ``uncertainty``, a model
        without a scale or a package; ``bf16`` with a package or with ``uncertainty``.
    """
    # here, not at the top: isojax.export imports this module (tile overlap, prediction)
    from isojax import export, model_folder

    if uncertainty:
        if precision != "float32":
            raise IsojaxInputError("--uncertainty is predicted in float32: drop --precision")
        return load_probabilistic(model, which=which)
    if export.is_package(model):
        if precision != "float32":
            raise IsojaxInputError(
                f"{model}: --precision {precision} is for model folders; an exported package "
                "runs in float32 (onnxruntime): drop --precision")
        return export.load_package(model, which=which)
    return model_folder.load_model(model, which=which, precision=precision)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def stream_prediction(stack_path, output: Path, subsample: float, budget: int | None) -> bool:
    """Whether ``predict_file`` streams: Zarr in or out, or too large for ``budget`` bytes.

    The in-memory prediction holds the stack, its float32 copy, then the upsampled copy and
    the result; it streams when that would exceed ``budget`` (default half the physical
    memory). A TIFF that cannot be read is left to the in-memory path, which reports it.

    Args:
      stack_path: the input stack (TIFF or OME-Zarr).
      output: the output path.
      subsample: the anisotropy factor (the model's), which sets the upsampled size.
      budget: the memory budget in bytes, or None for half the physical memory.

    Returns:
      True to stream with :func:`isojax.predict.predict_large`.
    """

    def is_zarr(path) -> bool:
        return Path(path).suffix.lower() == ".zarr" or Path(path).is_dir()

    if is_zarr(stack_path) or is_zarr(output):
        return True
    try:
        with _tifffile_log() as caught, tifffile.TiffFile(stack_path) as tif:
            shape, dtype = tif.series[0].shape, np.dtype(tif.series[0].dtype)
            if caught.errors:  # damaged: the in-memory path reports it
                raise tifffile.TiffFileError("damaged")
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return False  # the in-memory path reports the problem
    voxels = math.prod(shape)
    # in memory: the stack, its float32 copy, then the upsampled copy and the result
    need = voxels * (dtype.itemsize + 4) + 2 * 4 * voxels * max(1.0, subsample)
    return need > (budget if budget is not None else _physical_memory() // 2)


def check_model_subsample(s: float, meta: dict, *, model, how: str, log: Log) -> None:
    """Refuse a stack whose subsample is more than 10% off the one the model was trained for.

    A difference of 1-10% is allowed with a warning (voxel sizes in files are rounded).

    Args:
      s: the stack's subsample (Z step over the lateral pixel size).
      meta: the model's configuration (:func:`load_predictor`).
      model: the model's path, for the message.
      how: where ``s`` came from (``StackGeometry.how``), for the message.
      log: where the warning goes.

    Raises:
      IsojaxInputError: ``s`` differs from the model's subsample by more than 10%.
    """
    trained = float(meta["subsample"])
    if abs(s / trained - 1) > 0.1:
        raise IsojaxInputError(
            f"the model in {model} was trained for subsample {trained:.4g}, but this stack has "
            f"{s:.4g} ({how}); train a model for this stack, or pass --subsample if the voxel "
            "size in the file is wrong."
        )
    if abs(s / trained - 1) > 0.01:
        log(f"warning: stack subsample {s:.4g} differs from the model's {trained:.4g}")


def tile_overlap(meta: dict) -> int:
    """Tile overlap for a model: twice its network's receptive radius, at least 96 px.

    Args:
      meta: the model's configuration (:func:`load_predictor`; its ``"unet"`` settings).

    Returns:
      The overlap in pixels between neighbouring tiles of ``--tile``.
    """
    return max(96, 2 * UNetConfig(**meta["unet"]).receptive_radius)


#: A ``--tile`` whose tiles put more than this many times the slices' own pixels through the
#: network is raised until they do not: every tile computes again the overlap it shares with
#: its neighbours, so a tile little larger than the overlap adds only a sliver of new pixels
#: (``--tile 100`` with the 96 px overlap: 4 px per tile, 9x the time of whole slices).
_MAX_TILE_COST = 2.0


def _tile_multiple(meta: dict) -> int:
    return 2 ** int(meta["unet"]["depth"])


def check_tile_option(tile: int | None, meta: dict) -> None:
    """Refuse a ``--tile`` too small for the model's tile overlap (before any work).

    Args:
      tile: the ``--tile`` size in pixels, or None (isojax chooses).
      meta: the model's configuration (:func:`isojax.train.load_model`).

    Raises:
      IsojaxInputError: the tile, rounded up to the network's multiple, is smaller than the
        overlap plus one multiple.
    """
    if tile is None:
        return
    overlap, multiple = tile_overlap(meta), _tile_multiple(meta)
    minimum = overlap // 2 * 2 + multiple
    if -(-int(tile) // multiple) * multiple < minimum:  # rounded up as prediction does
        raise IsojaxInputError(
            f"--tile {tile} is too small for this model: tiles overlap by {overlap} px (at "
            f"least twice the network's reach), so --tile must be at least {minimum} px; leave "
            "--tile out to let isojax choose."
        )


def _tile_cost(out_shape, views, tile: int, overlap: int, multiple: int) -> float:
    """Pixels that tiles of ``tile`` px put through the network, over those of the slices."""
    computed = whole = 0
    for axis in views:
        g = _geometry(out_shape, axis, (tile, tile), overlap // 2, multiple)
        n = out_shape[axis]
        computed += n * len(g.tiles) * g.tile_shape[0] * g.tile_shape[1]
        whole += n * (out_shape[3 - axis] + sum(g.pad_lat)) * (out_shape[0] + sum(g.pad_ax))
    return computed / whole


def _affordable_tile(tile: int | None, out_shape, fuse: str, meta: dict, log: Log) -> int | None:
    """``tile``, or the smallest larger one whose tiles cost at most :data:`_MAX_TILE_COST`.

    ``out_shape`` is the Z-upsampled stack's ``(z, y, x)``; a raised tile is logged as a
    warning with both costs.
    """
    if tile is None:
        return None
    overlap, multiple = tile_overlap(meta), _tile_multiple(meta)
    views = {"xz": [1], "yz": [2]}.get(fuse, [1, 2])
    t = -(-int(tile) // multiple) * multiple
    cost = _tile_cost(out_shape, views, t, overlap, multiple)
    if cost <= _MAX_TILE_COST:
        return tile
    largest = max(out_shape[0], *(out_shape[3 - a] for a in views)) + multiple
    u, new_cost = t, cost
    while u < largest and new_cost > _MAX_TILE_COST:
        u += multiple
        new_cost = _tile_cost(out_shape, views, u, overlap, multiple)
    log(
        f"warning: --tile {tile} would put {cost:.1f}x the slices' pixels through the network "
        f"(neighbouring tiles share {overlap} px, which each tile computes again); using "
        f"--tile {u} instead ({new_cost:.2f}x); leave --tile out to let isojax choose"
    )
    return u




def _wrote_line(output, shape, dtype, spacing, elapsed: float) -> str:
    """The line ``isojax predict`` ends with: what was written, its voxel size, the rate."""
    size = ("unknown (the stack had none; pass --spacing to record one)" if spacing is None
            else ", ".join(f"{v:.4g}" for v in spacing) + " um")
    return (f"wrote {output}: shape {tuple(shape)}, {np.dtype(dtype)}, voxel size {size}; "
            f"{math.prod(shape) / elapsed / 1e6:.2f} Mvoxel/s")


def predict_stack_file(
    stack_path,
    stack: np.ndarray,
    apply_fn: Callable,
    meta: dict,
    *,
    geometry: StackGeometry,
    model,
    output: Path,
    fuse: Fuse,
    batch_size: int | None,
    tile: int | None,
    keep_dtype: bool,
    overwrite: bool,
    progress: bool,
    log: Log,
    uncertainty: Path | None = None,
) -> np.ndarray:
    """The in-memory branch of :func:`isojax.pipeline.predict_file`: restore, cast, write.

    Checks the stack's contrast at the model's percentiles and its subsample against the
    model's, raises an expensive ``--tile`` (:func:`_affordable_tile`), runs
    :func:`isojax.predict.predict_stack` with the model's interpolation, normalisation,
    tile overlap and multiple, and writes an ImageJ TIFF with the isotropic voxel size.

    Args:
      stack_path: the stack's file (for messages).
      stack: its array ``(z, y, x)``.
      apply_fn: the network (:func:`isojax.train.load_model`).
      meta: the model's configuration.
      geometry: the stack's geometry (:func:`isojax.geometry.read_stack`).
      model: the model folder (for messages).
      output: the TIFF to write (checked writable).
      fuse: how the two views are fused (:func:`isojax.predict.predict_stack`).
      batch_size: images per network call, or None.
      tile: ``--tile`` in pixels, or None.
      keep_dtype: round and clip the result to the stack's type instead of float32.
      overwrite: replace an existing output.
      progress: show a progress bar on stderr.
      log: where messages go.
      uncertainty: a TIFF for the Laplace scale of a probabilistic ``apply_fn`` (one
        returning ``(mean, scale)``: :func:`isojax.predict.uncertainty.load_probabilistic`),
        float32 with the output's voxel size, written with the output
        (:func:`isojax.predict.uncertainty.write_tiff_pair`); or None.

    Returns:
      The restored stack, float32 (before any cast).

    Raises:
      IsojaxInputError: a constant stack, a subsample more than 10% from the model's, or
        an output that may not be written.
    """
    s = geometry.subsample
    norm = meta["normalization"]
    check_contrast(stack, percentiles=(norm["pmin"], norm["pmax"]), name=stack_path)
    check_model_subsample(s, meta, model=model, how=geometry.how, log=log)
    log(f"stack {stack_path}: shape {stack.shape}, subsample {s:.4g} from {geometry.how}")
    tile = _affordable_tile(tile, (upsampled_length(stack.shape[0], s), *stack.shape[1:]), fuse,
                            meta, log)
    depth = int(meta["unet"]["depth"])
    bar = None
    if progress:
        bar = tqdm(desc="predict", unit="slice", file=sys.stderr, disable=None)

    def report(done, total):
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    t0 = time.perf_counter()
    options = dict(subsample=s, interpolation=meta["interpolation"], fuse=fuse,
                   batch_size=batch_size, tile=tile, overlap=tile_overlap(meta),
                   multiple=2**depth, normalization=(norm["pmin"], norm["pmax"]),
                   progress=report)
    scale = None
    try:
        if uncertainty is None:
            volume = predict_stack(stack.astype(np.float32), apply_fn, **options)
        else:
            volume, scale = predict_stack_uncertainty(stack.astype(np.float32), apply_fn,
                                                      **options)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    out_spacing = geometry.isotropic_spacing
    data = _cast(volume, stack.dtype) if keep_dtype else volume.astype(np.float32)
    if uncertainty is None or scale is None:
        write_tiff(output, data, spacing=out_spacing, dtype=data.dtype, overwrite=overwrite)
    else:
        write_tiff_pair(data, scale, output=output, uncertainty=uncertainty,
                        spacing=out_spacing, overwrite=overwrite)
    log(_wrote_line(output, data.shape, data.dtype, out_spacing, elapsed))
    if uncertainty is not None:
        log(f"wrote {uncertainty}: the Laplace scale of each voxel, float32, same shape")
    return volume


def predict_volume_file(
    stack_path: str | os.PathLike,
    volume,
    apply_fn: Callable,
    meta: dict,
    *,
    geometry: StackGeometry,
    model,
    output: Path,
    fuse: Fuse,
    batch_size: int | None,
    tile: int | None,
    keep_dtype: bool,
    memory_budget: int | None,
    overwrite: bool,
    progress: bool,
    log: Log,
    uncertainty: Path | None = None,
) -> LargePrediction:
    """The streaming branch of :func:`isojax.pipeline.predict_file`: slab by slab to a file.

    Checks the subsample against the model's, raises an expensive ``--tile``, and runs
    :func:`isojax.predict.predict_large` with the model's settings and ``memory_budget``
    (default 1 GiB); its warnings go to ``log``.

    Args:
      stack_path: the stack's file (TIFF or OME-Zarr).
      volume: the stack opened by :func:`isojax.io.open_volume` (for its shape and type).
      apply_fn: the network (:func:`isojax.train.load_model`).
      meta: the model's configuration.
      geometry: the stack's geometry (:func:`isojax.geometry.open_stack`), built with the
        same rule and warnings as :func:`predict_stack_file`'s.
      model: the model folder (for messages).
      output: the ``.zarr`` or ``.tif`` to write.
      fuse: how the two views are fused.
      batch_size: images per network call, or None.
      tile: ``--tile`` in pixels, or None.
      keep_dtype: store the stack's type (rounded and clipped) instead of float32.
      memory_budget: host bytes for a slab and a batch, or None for 1 GiB.
      overwrite: replace an existing output.
      progress: show a progress bar on stderr.
      log: where messages go.
      uncertainty: where :func:`isojax.predict.predict_large` writes the Laplace scale of a
        probabilistic ``apply_fn`` (one returning ``(mean, scale)``), or None.

    Returns:
      The :class:`isojax.predict.LargePrediction` summary.

    Raises:
      IsojaxInputError: a subsample more than 10% from the model's, or what
        :func:`isojax.predict.predict_large` refuses.
    """
    s, how = geometry.subsample, geometry.how
    check_model_subsample(s, meta, model=model, how=how, log=log)
    tile = _affordable_tile(tile, (upsampled_length(volume.shape[0], s), *volume.shape[1:]),
                            fuse, meta, log)
    budget = memory_budget if memory_budget is not None else 2**30
    log(f"stack {stack_path}: shape {volume.shape}, subsample {s:.4g} from {how}; streaming "
        f"with a memory budget of {budget / 1e9:.3g} GB")
    bar = None
    if progress:
        bar = tqdm(desc="predict", unit="slab", file=sys.stderr, disable=None)

    def report(p):
        if bar is not None:
            bar.total = p.total
            bar.n = p.done
            bar.refresh()

    norm = meta["normalization"]
    dtype = volume.dtype if keep_dtype else np.dtype(np.float32)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = predict_large(
                stack_path, output, apply_fn, subsample=s, spacing=geometry.spacing,
                interpolation=meta["interpolation"], fuse=fuse, memory_budget=budget,
                batch_size=batch_size, tile=tile, overlap=tile_overlap(meta),
                multiple=2 ** int(meta["unet"]["depth"]),
                normalization=(norm["pmin"], norm["pmax"]), output_dtype=dtype,
                overwrite=overwrite, progress=report, uncertainty=uncertainty,
            )
    finally:
        if bar is not None:
            bar.close()
    log_warnings(log, caught)
    elapsed = time.perf_counter() - t0
    sp_out = result.spacing
    if tile is None and result.tile is not None:
        cut = " x ".join("whole" if t is None else f"{t}" for t in result.tile)
        log(f"slices did not fit the network's share of the memory budget: tiles of {cut} px "
            "(lateral x axial)")
    log(_wrote_line(output, result.shape, result.dtype, sp_out, elapsed))
    if uncertainty is not None:
        log(f"wrote {uncertainty}: the Laplace scale of each voxel, float32, same shape")
    return result
