"""The restoration network of a model folder as a pure function, and as ONNX (``jax2onnx``).

The ONNX graph is the U-Net of :mod:`isojax.unet` with the model's trained weights baked in
as constants, on the layout of a bioimage.io tensor: input ``(batch, 1, lateral, axial)``
float32, already normalised and Z-upsampled (see :mod:`isojax.export.package`), outputs of
the same shape: the restoration (``mean``) and, for a model trained with ``--loss laplace``,
the Laplace scale (``scale``) in the same normalised units.

The sizes of the two spatial axes are symbolic in the graph (any multiple of
``2**depth``). ``jax2onnx`` needs plain symbols for them, so the function first crops the
input to multiples of ``2**depth`` (a no-op for valid sizes, and what lets JAX's shape
polymorphism prove the divisibility the U-Net checks).

``jax2onnx`` and ``onnx`` are imported inside the functions that need them: they are the
``export`` extra, never part of ``import isojax``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from isojax.errors import IsojaxInputError
from isojax.unet import UNetConfig, apply_unet, init_unet

__all__ = ["EXTRA_HINT", "load_network", "network_function", "require", "to_onnx_file"]

#: What to install when an optional package of the export is missing.
EXTRA_HINT = "pip install 'isojax[export]' (jax2onnx, onnx, onnxruntime)"

#: The ONNX opset of the exported graph: 17 is read by onnxruntime >= 1.13 and by the
#: bioimage.io tools of 2023 on; the U-Net needs nothing newer.
OPSET = 17


def require(module: str, purpose: str):
    """Import an optional module of the ``export`` extra, or fail with one line.

    Args:
      module: the module's name, e.g. ``"onnxruntime"``.
      purpose: what it is needed for (for the message), e.g. ``"isojax export"``.

    Returns:
      The imported module.

    Raises:
      IsojaxInputError: the module is not installed; the message names the extra.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise IsojaxInputError(
            f"{purpose} needs the Python package {module!r}, which is not installed "
            f"({exc}); install the export extra: {EXTRA_HINT}"
        ) from None


def _weights(apply_fn) -> nnx.State:
    """The trained weights inside the network function :func:`isojax.train.load_model` returns.

    ``load_model`` gives the mean of the network only (the Laplace scale is dropped); the
    export needs the whole network, so it takes the weights from the function's closure.

    Raises:
      RuntimeError: ``load_model`` no longer returns a closure over its weights (a bug in
        isojax: update this function with it).
    """
    wrapped = getattr(apply_fn, "__wrapped__", apply_fn)
    cells = [c.cell_contents for c in (getattr(wrapped, "__closure__", None) or ())]
    found = [c for c in cells if isinstance(c, nnx.State)]
    if len(found) != 1:
        raise RuntimeError(
            "isojax.export: the network function of isojax.train.load_model holds "
            f"{len(found)} weight states, expected 1; isojax.export.convert._weights must "
            "follow load_model's change"
        )
    return found[0]


def load_network(model_dir, *, which: str = "best"):
    """Load a model folder's network for export.

    Args:
      model_dir: the model folder written by ``isojax train``.
      which: ``"best"`` or ``"last"`` checkpoint (see :func:`isojax.train.load_model`).

    Returns:
      ``(apply_fn, net, params, meta)``: the mean-only function of ``load_model``
      (``(b, h, w) -> (b, h, w)``), the :class:`~isojax.unet.UNetConfig`, the weights and
      the parsed ``config.json``.

    Raises:
      IsojaxInputError: the folder, its ``config.json``, ``psf.tif`` or the checkpoint is
        missing or damaged (from ``load_model``).
    """
    from isojax import train

    apply_fn, meta = train.load_model(model_dir, which=which)
    net = UNetConfig(**meta["unet"])
    return apply_fn, net, _weights(apply_fn), meta


def network_function(net: UNetConfig, params: nnx.State) -> Callable:
    """The whole network on the bioimage.io layout, as a pure JAX function.

    Args:
      net: the network's settings.
      params: its weights.

    Returns:
      ``fn(x)`` for ``x`` of shape ``(batch, 1, lateral, axial)`` float32 (spatial sizes
      multiples of ``2**depth``): a tuple ``(mean,)``, or ``(mean, scale)`` for a
      probabilistic network, each ``(batch, 1, lateral, axial)``.
    """
    # the forward pass of "custom" equals "xla" (only the gradient differs); "xla" is the
    # plain lax convolution that jax2onnx converts
    net = dataclasses.replace(net, conv_impl="xla")
    graphdef, _ = jax.eval_shape(lambda: init_unet(jax.random.key(0), net))
    d = net.divisor

    def fn(x):
        h, w = x.shape[2] // d * d, x.shape[3] // d * d
        y = apply_unet(graphdef, params, jnp.transpose(x[:, :, :h, :w], (0, 2, 3, 1)))
        y = jnp.transpose(y, (0, 3, 1, 2))
        c = net.out_channels
        return (y[:, :c], y[:, c:]) if net.prob_out else (y[:, :c],)

    return fn


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Silence the named loggers (onnx_ir's serialiser warns about shape helper values)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def to_onnx_file(net: UNetConfig, params: nnx.State, path: Path) -> list[str]:
    """Write the network (:func:`network_function`) as an ONNX file, with symbolic sizes.

    Args:
      net: the network's settings.
      params: its weights.
      path: the ``.onnx`` file to write (weights inside it).

    Returns:
      The output names: ``["mean"]`` or ``["mean", "scale"]``; the input is ``"input"``.

    Raises:
      IsojaxInputError: ``jax2onnx`` or ``onnx`` is not installed.
    """
    jax2onnx = require("jax2onnx", "isojax export")
    onnx = require("onnx", "isojax export")
    outputs = ["mean", "scale"] if net.prob_out else ["mean"]
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, c, h, w"), np.float32)
    spec = jax.ShapeDtypeStruct((spec.shape[0], 1, *spec.shape[2:]), np.float32)
    with _quiet_loggers("onnx_ir.serde", "jax2onnx"):
        model = jax2onnx.to_onnx(network_function(net, params), inputs=[spec],
                                 model_name="isojax_unet", opset=OPSET,
                                 input_names=["input"], output_names=outputs)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return outputs
