"""The uncertainty map of a probabilistic (Laplace) model: its per-voxel scale, fused.

A model trained with ``--loss laplace`` (:class:`isojax.unet.UNetConfig` ``prob_out``)
predicts for every pixel of a slice a Laplace distribution: a mean ``mu`` (the
restoration) and a scale ``b > 0`` (``softplus(.) + eps``), the expected absolute error
``E|X - mu| = b`` (the standard deviation is ``sqrt(2) b``), in the normalised units of
the network. ``isojax predict --uncertainty OUT`` writes the scale beside the restoration:

* **the views.** Every voxel is restored twice, once in its XZ slice and once in its YZ
  slice; the restoration fuses the two means (:func:`fuse_scales` gives the rule used for
  the scales and why);
* **the units.** The normalisation ``u = (v - lo) / (hi - lo)`` is affine, so a scale in
  normalised units times ``hi - lo`` is the scale in the stack's intensity units (the
  offset ``lo`` does not apply to a spread): :func:`denormalize_scale`;
* **the output.** Same shape, voxel size, format (TIFF, OME-Zarr; a hyperstack for a
  time-lapse) and overwrite rules as the restoration; always float32.

The network comes from :func:`load_probabilistic`, which refuses a model without a scale.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from isojax.errors import IsojaxInputError
from isojax.io import staged_output, write_tiff
from isojax.synth import EPS

__all__ = ["check_uncertainty_output", "denormalize_scale", "fuse_scales",
           "load_probabilistic", "write_tiff_pair"]


def fuse_scales(b1: np.ndarray, b2: np.ndarray, fuse: str) -> np.ndarray:
    """Fuse the Laplace scales of a voxel's two views the way their means are fused.

    * ``"mean"`` (the restoration is ``(mu1 + mu2) / 2``): the average ``(b1 + b2) / 2``.
      The two views restore the same voxel from the same measured data, so their errors
      are strongly positively correlated. If they are fully correlated (``X_v = mu_v + b_v
      E`` with one standard Laplace ``E``), ``(X1 + X2) / 2`` is again Laplace, with scale
      exactly ``(b1 + b2) / 2``. For any dependence the spread of the average is at most
      this (Minkowski's inequality, ``sd(X1 + X2) <= sd(X1) + sd(X2)``), so the map never
      understates the moment-matched scale. Independent views would give the smaller
      ``sqrt(b1**2 + b2**2) / 2`` (the scale of the Laplace with the average's variance),
      down to ``1 / sqrt(2)`` of the average; that assumption does not hold here.
    * ``"geometric"`` (``sqrt(mu1 mu2)``, CSBDeep's fusion): the geometric mean
      ``sqrt(b1 b2)``: the first-order (delta-method) scale of ``sqrt(X1 X2)`` when the
      views' errors are fully correlated and of the same relative size (``b_v = r mu_v``):
      ``sqrt(X1 X2) ~ sqrt(mu1 mu2) (1 + r E)``.
    * ``"xz"`` or ``"yz"`` (one view only): that view's scale, ``b1`` or ``b2``.

    This is the rule :func:`isojax.predict.predict_stack` applies while it fuses (the one
    fusion function of :mod:`isojax.predict.core` for means and scales); this function
    states it on its own, for references and tests.

    The disagreement between the two views' means is not added: each view's scale is the
    network's own estimate of its error, and the fused map is their fusion only.

    Args:
      b1: the scales of the first view (XZ), any shape, > 0.
      b2: the scales of the second view (YZ), the same shape.
      fuse: ``"mean"``, ``"geometric"``, ``"xz"`` or ``"yz"``.

    Returns:
      The fused scales, float32, the shape of ``b1``.
    """
    b1, b2 = np.asarray(b1, np.float32), np.asarray(b2, np.float32)
    if fuse == "mean":
        return (b1 + b2) * np.float32(0.5)
    if fuse == "geometric":
        return np.sqrt(b1 * b2)
    if fuse == "xz":
        return b1
    if fuse == "yz":
        return b2
    raise ValueError(f"fuse must be 'mean', 'geometric', 'xz' or 'yz', got {fuse!r}.")


def denormalize_scale(scale: np.ndarray, lo: float, hi: float, *, out=None) -> np.ndarray:
    """A scale in normalised units in the stack's intensity units: ``scale * (hi - lo)``.

    The slope of :func:`isojax.synth.denormalize` (``hi - lo + EPS``), without its offset.

    Args:
      scale: scales in normalised units, any shape.
      lo, hi: the normalisation percentiles' values (intensity units).
      out: a float32 array to write into (may be ``scale``), or None.

    Returns:
      The scales in intensity units (``out`` if given).
    """
    slope = float(hi) - float(lo) + EPS
    return np.multiply(scale, np.float32(slope), out=out)


def check_uncertainty_output(output: Path, uncertainty: Path) -> None:
    """Refuse an uncertainty map whose format differs from the restoration's.

    Args:
      output: the restoration's path.
      uncertainty: the ``--uncertainty`` path.

    Raises:
      IsojaxInputError: one is a TIFF and the other an OME-Zarr (``.zarr``).
    """
    from isojax.io import volume_format

    fmt, unc_fmt = volume_format(output), volume_format(uncertainty)
    if fmt != unc_fmt:
        ext = ".zarr" if fmt == "zarr" else ".tif"
        raise IsojaxInputError(
            f"--uncertainty {uncertainty}: the map is written in the output's format; name it "
            f"{ext} like {output.name}")


def load_probabilistic(model: str | os.PathLike, *,
                       which: Literal["best", "last"] = "best") -> tuple[Callable, dict]:
    """``(apply_fn, meta)`` of a probabilistic model folder: ``apply_fn`` gives mean and scale.

    Args:
      model: a model folder written by ``isojax train --loss laplace``.
      which: ``"best"`` or ``"last"`` (:func:`isojax.train.load_model`).

    Returns:
      ``(apply_fn, meta)``: ``apply_fn(batch)`` maps ``(b, h, w)`` float32 to the pair
      ``(mean, scale)``, each ``(b, h, w)`` (normalised units); ``meta`` the
      ``config.json``.

    Raises:
      IsojaxInputError: the model has no scale (not trained with ``--loss laplace``), is an
        exported package, or cannot be loaded.
    """
    import jax

    from isojax import export
    from isojax.export.convert import load_network
    from isojax.model_folder import read_model_config
    from isojax.unet import apply_unet, init_unet

    if export.is_package(model):
        raise IsojaxInputError(
            f"--uncertainty: {model} is an exported package; pass the model folder it was "
            "exported from (packages give the restoration only)")
    config = read_model_config(model)  # checked before the weights are loaded
    if not config["unet"].get("prob_out", False):
        loss = config.get("train", {}).get("loss", "mae")
        raise IsojaxInputError(
            f"--uncertainty needs a probabilistic model, trained with --loss laplace; {model} "
            f"was trained with --loss {loss} and has no scale: drop --uncertainty")
    _, net, params, meta = load_network(model, which=which)
    graphdef, _ = jax.eval_shape(lambda: init_unet(jax.random.key(0), net))
    c = net.out_channels

    @jax.jit
    def apply_fn(batch):
        y = apply_unet(graphdef, params, batch[..., None])
        return y[..., 0], y[..., c]

    return apply_fn, meta


def write_tiff_pair(data: np.ndarray, scale: np.ndarray, *, output: Path, uncertainty: Path,
                    spacing, overwrite: bool) -> None:
    """Write a restoration and its uncertainty map as two TIFFs, neither of them partial.

    The map is written under a temporary name first, then the restoration
    (:func:`isojax.io.write_tiff`, atomic), then the map is renamed into place: a failure
    while writing either leaves neither (nor a temporary file).

    Args:
      data: the restoration ``(z, y, x)``, written in its dtype.
      scale: the map ``(z, y, x)``, written float32.
      output: the restoration's TIFF.
      uncertainty: the map's TIFF.
      spacing: the voxel size ``(dz, dy, dx)`` of both, in micrometres, or None.
      overwrite: replace existing files (refused otherwise).
    """
    with staged_output(uncertainty, overwrite=overwrite) as temp:
        write_tiff(temp, scale, spacing=spacing, dtype=np.float32, overwrite=False)
        write_tiff(output, data, spacing=spacing, dtype=data.dtype, overwrite=overwrite)
