"""Whole-stack prediction in memory: upsample Z, restore XZ and YZ slices, fuse the views.

The network was trained on 2D pairs ``(lateral, axial)`` whose last axis is the simulated
axial axis, its input being :func:`isojax.degrade`: axial samples brought back to the fine
grid by :func:`isojax.upsample`. To restore a stack ``(z, y, x)`` we therefore

1. normalise it with stack-level percentiles (as CSBDeep's ``PercentileNormalizer``);
2. bring its Z slices to the lateral pixel size with the same :func:`isojax.upsample`
   (:func:`upsample_z`), on the physical grid: slice ``k`` sits at ``k * subsample``;
3. run the network over the XZ slices (for each ``y`` an ``(x, z)`` image) and over the YZ
   slices (for each ``x`` a ``(y, z)`` image), lateral axis first and axial axis last, as in
   training; slices are reflect-padded to multiples of ``multiple`` (the U-Net's ``2**depth``)
   and, when they are too large, cut into overlapping tiles whose margins are discarded;
4. fuse the two restored volumes (arithmetic or geometric mean) and undo the normalisation.

This is what CSBDeep's ``IsotropicCARE.predict`` does (Weigert et al. 2017, "Isotropic
reconstruction of 3D fluorescence microscopy images using convolutional neural networks",
MICCAI; Weigert et al. 2018, Nature Methods 15, 1090-1097), with these differences:

* Z is upsampled on the physical grid (:func:`upsample_z`); CSBDeep's
  ``scipy.ndimage.zoom(order=1)`` stretches its grid so that the first and last slices land
  on the first and last output slices, which spaces slices ``(m - 1) / (n - 1)`` output pixels
  apart instead of ``subsample`` and shifts structures by up to one output slice;
* CSBDeep rotates the slices by 90 degrees (which also reverses Z); isojax keeps Z increasing
  along the last axis, the orientation the network saw in training;
* isojax can tile slices too large for memory and chooses the batch size from a budget;
* the fusion is selectable; CSBDeep always takes the geometric mean.

The numerical work is pure: arrays in, arrays out. The driver loops over batches on the host
so that volumes larger than the accelerator's memory can be restored (on CPU with two batches
in flight at once, from two host threads); the result is a NumPy array.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from isojax.errors import IsojaxInputError
from isojax.forward import Interpolation
from isojax.geometry import check_subsample
from isojax.predict.core import (
    _BYTES_PER_PIXEL,
    _DEFAULT_BUDGET,
    DEFAULT_PERCENTILES,
    Array,
    Fuse,
    _auto_tile,
    _batch_result,
    _check_normalization,
    _check_run,
    _check_stack_shape,
    _check_tile,
    _geometry,
    _in_flight,
    _positive_int,
    _run_batches,
    _view_batches,
    upsample_z,
    upsampled_length,
)
from isojax.predict.uncertainty import denormalize_scale
from isojax.synth import check_contrast, denormalize

__all__ = ["predict_stack", "predict_stack_uncertainty"]


def _upsample_on_host(x: np.ndarray, s: float, interpolation: Interpolation,
                      budget: int) -> np.ndarray:
    """:func:`upsample_z` in chunks along y, so that each chunk fits ``budget`` bytes."""
    n_z, n_y, n_x = x.shape
    n_up = upsampled_length(n_z, s)
    out = np.empty((n_up, n_y, n_x), np.float32)
    # per y row: the output, the interpolation phases and the input, float32
    chunk = max(1, budget // (3 * 4 * n_up * n_x))
    for y0 in range(0, n_y, chunk):
        part = upsample_z(x[:, y0 : y0 + chunk], s, interpolation=interpolation)
        out[:, y0 : y0 + chunk] = np.asarray(part)
    return out


def predict_stack(
    stack,
    apply_fn: Callable[[Array], Array | tuple[Array, Array]],
    *,
    subsample: float,
    interpolation: Interpolation = "linear",
    fuse: Fuse = "mean",
    batch_size: int | None = None,
    memory_budget: int = _DEFAULT_BUDGET,
    bytes_per_pixel: int = _BYTES_PER_PIXEL,
    tile: int | tuple[int, int] | None = None,
    overlap: int = 96,
    multiple: int = 4,
    normalization: tuple[float, float] | None = DEFAULT_PERCENTILES,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Restore an anisotropic stack into an isotropic one (Isotropic CARE prediction).

    Steps: percentile normalisation of the whole stack; Z upsampling on the physical grid
    (:func:`upsample_z`); the network over every XZ slice (for each ``y`` the image
    ``(x, z)``) and every YZ slice (for each ``x`` the image ``(y, z)``): lateral axis first,
    axial axis last, as in training; fusion of the two views; the normalisation undone.

    Slices are reflect-padded to multiples of ``multiple`` (split before/after as CSBDeep's
    ``PadAndCropResizer``) and the result cropped back. With ``tile``, the padded slices are
    cut into tiles that start on multiples of ``multiple`` and overlap by at least
    ``overlap`` pixels; each tile contributes only its centre (``overlap // 2`` pixels from
    any inner tile edge), so the result equals the untiled one to float precision whenever
    the network's receptive field reaches at most ``overlap // 2`` pixels from a pixel.

    ``apply_fn`` is compiled once per batch shape with :func:`jax.jit` (the last batch is
    filled with zeros to the same shape): at most one compilation per view, one in all when
    ``y == x``, and none on a later call with the same function and shapes. On CPU two
    batches run at once, each called from its own host thread, because one call of a
    U-Net keeps only part of the cores busy; ``apply_fn`` must then be thread-safe (a pure
    function is). The result does not depend on it: every batch is computed alone and
    written back in order.

    Memory: the host holds the normalised stack, its Z-upsampled copy and the result (two
    volumes of the output size, float32). Without ``batch_size``, a batch holds
    ``memory_budget // (bytes_per_pixel * tile pixels * batches at once)`` images (at least
    1; at most 8 on CPU, where larger batches ran slower). The default
    ``bytes_per_pixel`` (1 KiB) estimates CSBDeep's default U-Net (depth 2, 32 filters,
    float32): 128 channels of 4 bytes live at full resolution at its peak, doubled for
    XLA's temporaries; raise it for larger networks. Z upsampling on the device is done in
    chunks of about ``memory_budget`` bytes.

    Args:
      stack: ``(z, y, x)`` array, Z coarse (``z >= 2``), finite values, any real dtype.
      apply_fn: the trained network as a pure function ``(b, h, w) -> (b, h, w)`` on float32
        (``h`` lateral, ``w`` axial, both multiples of ``multiple``). A probabilistic model
        may return a pair ``(mean, scale)``: the mean is used and the scale dropped
        (:func:`predict_stack_uncertainty` keeps it).
      subsample: anisotropy factor ``dz / dx`` (µm / µm), >= 1, e.g. 10.2; the one the
        network was trained for.
      interpolation: ``"linear"`` or ``"cubic"``: how Z is upsampled; use the one that
        made the training inputs (:func:`isojax.degrade`).
      fuse: ``"mean"`` (arithmetic mean of the two views, default), ``"geometric"``
        (CSBDeep's choice: ``sqrt(max(u1, 0) * max(u2, 0))`` of the normalised views, so
        values below the ``pmin`` percentile are clipped to it after the normalisation is
        undone, to 0 without normalisation), ``"xz"`` (XZ slices only) or ``"yz"`` (YZ
        slices only): one view, half the time.
      batch_size: images (slices or tiles) per network call; default from ``memory_budget``.
      memory_budget: bytes a batch of network activations, or a chunk of Z upsampling, may
        use; default 1 GiB.
      bytes_per_pixel: estimated peak network memory per input pixel, in bytes.
      tile: tile size in pixels, an int or ``(lateral, axial)``, rounded up to multiples of
        ``multiple``; a tile larger than a padded slice covers it whole. None (default) runs
        whole slices when one slice's estimated network memory (``bytes_per_pixel`` per
        pixel) fits the memory budget of a batch in flight, and tiles chosen to fit it
        otherwise (the axial axis kept whole where it can be; tiles at least twice the
        overlap).
      overlap: pixels shared by neighbouring tiles, at least twice the network's
        receptive-field radius (:attr:`isojax.unet.UNetConfig.receptive_radius`: 43 px for
        CSBDeep's default U-Net with 5x5 kernels; hence 96). Only used with tiles;
        :func:`isojax.predict_file` sets it from the model.
      multiple: the network's input sizes must be multiples of this (``2**depth``).
      normalization: percentiles ``(pmin, pmax)`` of the whole stack mapped to 0 and 1
        before the network and back after it, as in training; None feeds the raw values.
      progress: called as ``progress(done, total)`` after each batch, counting images
        (slices or tiles) over both views.

    Returns:
      The restored stack, float32 NumPy array ``(upsampled_length(z, subsample), y, x)``
      with isotropic voxels ``(dx, dy, dx)``: output slice ``j`` sits at
      ``z0 + j * dz / subsample``.

    Raises:
      ValueError: if the stack is not 3D, has fewer than 2 slices or non-finite values,
        is constant between the normalisation percentiles, ``subsample < 1``, an option is
        out of range, the tile is too small for the overlap, or ``apply_fn`` changes the
        batch shape; each message says what to change.

    Example:
      >>> import numpy as np
      >>> stack = np.ones((3, 8, 8), np.float32)
      >>> predict_stack(stack, lambda b: b, subsample=2.0, normalization=None).shape
      (5, 8, 8)
    """
    mean, _ = _restore(
        stack, apply_fn, subsample=subsample, interpolation=interpolation, fuse=fuse,
        batch_size=batch_size, memory_budget=memory_budget, bytes_per_pixel=bytes_per_pixel,
        tile=tile, overlap=overlap, multiple=multiple, normalization=normalization,
        progress=progress, uncertainty=False)
    return mean


def predict_stack_uncertainty(stack, apply_fn: Callable[[Array], tuple[Array, Array]],
                              **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_stack` of a probabilistic network, with its fused uncertainty map.

    The same restoration as :func:`predict_stack` with the same ``options``, and the
    network's per-pixel Laplace scale over the same slices and tiles: fused over the two
    views by the means' rule (:func:`isojax.predict.uncertainty.fuse_scales`: their average
    for ``fuse="mean"``) and brought to intensity units (``scale * (hi - lo)``,
    :func:`isojax.predict.uncertainty.denormalize_scale`). One more output-sized float32
    volume in memory.

    Args:
      stack: as :func:`predict_stack`.
      apply_fn: the network, ``(b, h, w) -> (mean, scale)``, both ``(b, h, w)`` float32,
        the scale > 0 (:func:`isojax.predict.uncertainty.load_probabilistic`).
      **options: :func:`predict_stack`'s keyword options (``subsample`` required).

    Returns:
      ``(restored, scale)``: two float32 arrays ``(upsampled_length(z, subsample), y, x)``.

    Raises:
      ValueError: as :func:`predict_stack`, and when ``apply_fn`` returns no pair.
    """
    mean, scale = _restore(stack, apply_fn, uncertainty=True, **options)
    assert scale is not None
    return mean, scale


def _restore(
    stack,
    apply_fn: Callable,
    *,
    subsample: float,
    interpolation: Interpolation = "linear",
    fuse: Fuse = "mean",
    batch_size: int | None = None,
    memory_budget: int = _DEFAULT_BUDGET,
    bytes_per_pixel: int = _BYTES_PER_PIXEL,
    tile: int | tuple[int, int] | None = None,
    overlap: int = 96,
    multiple: int = 4,
    normalization: tuple[float, float] | None = DEFAULT_PERCENTILES,
    progress: Callable[[int, int], None] | None = None,
    uncertainty: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`predict_stack`, and with ``uncertainty`` the fused scale (else None)."""
    # the option checks, then one pass: normalise, upsample, the batch stream over both
    # views, denormalise
    s = check_subsample(subsample)
    _check_run(interpolation, fuse, apply_fn)
    multiple = _positive_int("multiple", multiple)
    if batch_size is not None:
        batch_size = _positive_int("batch_size", batch_size)
    memory_budget = _positive_int("memory_budget", memory_budget)
    bytes_per_pixel = _positive_int("bytes_per_pixel", bytes_per_pixel)
    overlap = _positive_int("overlap", overlap, minimum=0)
    checked_tile = _check_tile(tile, multiple)
    percentiles = _check_normalization(normalization)

    x = np.asarray(stack)
    _check_stack_shape(x.shape)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise IsojaxInputError(
            f"the stack must hold real numbers, got dtype {x.dtype}; convert it to an integer "
            "or float type first.")
    x = x.astype(np.float32)
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise IsojaxInputError(
            f"the stack holds {bad} NaN or inf voxels; replace them first, e.g. with "
            f"np.nan_to_num(stack, nan=np.nanmedian(stack))."
        )

    if percentiles is not None:
        lo, hi = check_contrast(x, percentiles=percentiles)
        x = (x - np.float32(lo)) / np.float32(hi - lo)

    vol = _upsample_on_host(x, s, interpolation, memory_budget)
    out = np.empty_like(vol)
    scale = np.empty_like(vol) if uncertainty else None

    jitted = jax.jit(apply_fn)  # jax caches compilations per (function, shape) across calls

    def run(batch: np.ndarray):
        return _batch_result(jitted(jnp.asarray(batch)), batch.shape, with_scale=uncertainty)

    views = {"xz": [1], "yz": [2]}.get(fuse, [1, 2])  # batch axis: 1 = y (XZ), 2 = x (YZ)
    in_flight = _in_flight()
    tiles = _auto_tile(vol.shape, views, checked_tile, budget=memory_budget // in_flight,
                       bytes_per_pixel=bytes_per_pixel, margin=overlap // 2, multiple=multiple)
    geometries = {a: _geometry(vol.shape, a, tiles, overlap // 2, multiple) for a in views}
    total = sum(vol.shape[a] * len(geometries[a].tiles) for a in views)
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    # one stream of batches over both views, so that the second view's first batches run
    # while the first view's last ones finish; the stores keep their order, so the second
    # view fuses into the finished first one
    batches = itertools.chain.from_iterable(
        _view_batches(
            vol,
            out if scale is None else (out, scale),
            axis=axis,
            fuse=None if v == 0 else fuse,
            geometry=geometries[axis],
            batch_size=batch_size,
            budget=memory_budget,
            bytes_per_pixel=bytes_per_pixel,
            on_batch=on_batch,
            in_flight=in_flight,
        )
        for v, axis in enumerate(views)
    )
    _run_batches(batches, run, in_flight)

    if percentiles is not None:
        denormalize(out, lo, hi, out=out)
        if scale is not None:
            denormalize_scale(scale, lo, hi, out=scale)
    return out, scale
