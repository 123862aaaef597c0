"""2D U-Net for content-aware image restoration (CARE), in Flax NNX.

The network follows CSBDeep's default CARE U-Net (``csbdeep.internals.nets.common_unet`` /
``custom_unet`` with ``unet_block``): Weigert et al. 2018, "Content-aware image restoration:
pushing the limits of fluorescence microscopy", Nature Methods 15, 1090-1097; U-Net after
Ronneberger et al. 2015 (MICCAI).

Architecture for ``depth=2, first_filters=32, n_conv_per_depth=2`` (CARE's 2D default), every
convolution "same"-padded, stride 1, with bias and ReLU:

- down level ``n`` (``n = 0 .. depth-1``): ``n_conv_per_depth`` convs with
  ``first_filters * 2**n`` filters, keep as skip, 2x2 max-pool;
- middle: ``n_conv_per_depth - 1`` convs with ``first_filters * 2**depth`` filters, then one with
  ``first_filters * 2**max(0, depth-1)`` filters;
- up level ``n`` (``n = depth-1 .. 0``): 2x nearest-neighbour upsampling, concatenate with the
  skip (upsampled first, skip second), ``n_conv_per_depth - 1`` convs with
  ``first_filters * 2**n`` filters, then one with ``first_filters * 2**max(0, n-1)`` filters;
- head: a linear 1x1 conv to ``out_channels``, plus the input when ``residual`` (the residual is
  added after the linear 1x1 conv, as in CSBDeep); with ``prob_out`` a second 1x1 conv on the
  same features gives a Laplace scale ``softplus(.) + eps_scale``.

Layout: arrays are channels-last, ``(batch, y, x, channel)``; ``y`` and ``x`` (pixels) must be
divisible by ``2**depth``. Kernels are ``(ky, kx, in_channel, out_channel)``.

Speed: all convolutions go through :func:`conv2d`, a ``jax.custom_vjp`` whose forward pass and
input gradient are forward "same" convolutions (which XLA's CPU backend hands to its fast
YNNPACK convolution) and whose weight gradient is computed by :func:`conv2d_weight_grad`.
The numerics are float32 unless :func:`apply_unet` is given a ``compute_dtype`` (mixed
precision); see ``bench/README_train.md`` for measurements.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from isojax.archs import ARCHS, ArchName

__all__ = [
    "ARCHS",
    "CPU_COMPILER_OPTIONS",
    "UNet",
    "UNetConfig",
    "apply_unet",
    "conv2d",
    "conv2d_reference",
    "conv2d_weight_grad",
    "init_unet",
]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

ConvImpl = Literal["custom", "xla"]
#: XLA compiler options for a CPU training step, e.g.
#: ``jax.jit(train_step, compiler_options=CPU_COMPILER_OPTIONS)``. They keep XLA's CPU backend
#: from handing convolutions to YNNPACK (dots still go there), so convolutions run in XLA's
#: Eigen kernels: the weight gradients of the 128x128 levels run about 2x faster there, the
#: forward convolutions about 0.85x as fast (jaxlib 0.10.2, 2-core AMD EPYC; see
#: ``bench/README_train.md``). The option name is experimental in XLA and may change; an
#: unknown option makes compilation fail with INVALID_ARGUMENT, so drop it then.
CPU_COMPILER_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """Settings of the CARE U-Net; defaults are CSBDeep's 2D CARE defaults.

    :meth:`from_arch` builds a named network (:data:`ARCHS`); ``arch`` records which one
    the fields started from (fields given to :meth:`from_arch` apply on top of it).

    Args:
      arch: the name of the preset (:data:`ARCHS`) the other fields started from; a
        label kept in the model folder, it does not set them (use :meth:`from_arch`).
      depth: number of pooling levels (CSBDeep ``unet_n_depth``); ``y`` and ``x`` of the input
        must be divisible by ``2**depth``.
      first_filters: filters of the first level, doubled per level (``unet_n_first``).
      kernel_size: side of the square convolution kernels in pixels; odd (``unet_kern_size``).
      n_conv_per_depth: convolutions per level (CSBDeep ``n_conv_per_depth``).
      residual: add the input to the output of the linear 1x1 head (``unet_residual``); needs
        ``in_channels == out_channels``.
      prob_out: add a Laplace scale head (``probabilistic``); the output then has
        ``2 * out_channels`` channels: the means, then the positive scales.
      in_channels: channels of the input (``n_channel_in``).
      out_channels: channels of the prediction (``n_channel_out``).
      eps_scale: added to the softplus of the scale head so the scale stays positive.
      conv_impl: ``"custom"`` (default) uses :func:`conv2d` with its custom gradient;
        ``"xla"`` uses :func:`conv2d_reference` (``lax.conv_general_dilated`` with XLA's own
        gradient), kept as a reference and for benchmarks.

    Raises:
      ValueError: when a setting is out of range; the message says which and how to fix it.
    """

    arch: ArchName = "care"
    depth: int = 2
    first_filters: int = 32
    kernel_size: int = 5
    n_conv_per_depth: int = 2
    residual: bool = True
    prob_out: bool = False
    in_channels: int = 1
    out_channels: int = 1
    eps_scale: float = 1e-3
    conv_impl: ConvImpl = "custom"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(
                f"UNetConfig.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}."
            )
        for name in ("depth", "first_filters", "kernel_size", "n_conv_per_depth",
                     "in_channels", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be an integer >= 1, got {value!r}.")
        if self.kernel_size % 2 != 1:
            raise ValueError(
                f"UNetConfig.kernel_size must be odd so that 'same' padding is symmetric, got "
                f"{self.kernel_size}; use e.g. 3 or 5 (CARE's 2D default)."
            )
        if self.residual and self.in_channels != self.out_channels:
            raise ValueError(
                f"UNetConfig.residual=True needs in_channels == out_channels, got "
                f"{self.in_channels} and {self.out_channels}; set residual=False or make the "
                "channel counts equal."
            )
        if not self.eps_scale > 0:
            raise ValueError(f"UNetConfig.eps_scale must be > 0, got {self.eps_scale!r}.")
        if self.conv_impl not in ("custom", "xla"):
            raise ValueError(
                f"UNetConfig.conv_impl must be 'custom' or 'xla', got {self.conv_impl!r}."
            )

    @classmethod
    def from_arch(cls, arch: ArchName = "care", **overrides) -> UNetConfig:
        """The named network ``arch`` (:data:`ARCHS`), with ``overrides`` applied on top.

        Args:
          arch: ``"care"`` (CSBDeep's CARE U-Net), ``"light"`` or ``"light24"``.
          **overrides: other :class:`UNetConfig` fields (e.g. ``prob_out=True``); a field
            given as None keeps the preset's value.

        Returns:
          The settings, with ``arch`` recorded.

        Raises:
          ValueError: an unknown ``arch`` or field, or a setting out of range.

        Example:
          >>> UNetConfig.from_arch("light").kernel_size
          3
        """
        if arch not in ARCHS:
            raise ValueError(
                f"unknown network arch {arch!r}; use one of {', '.join(ARCHS)}."
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        if "arch" in given:
            raise ValueError("give the arch as from_arch's first argument, not as an override.")
        return cls(arch=arch, **{**ARCHS[arch], **given})

    @property
    def divisor(self) -> int:
        """Spatial sizes (pixels) of the input must be multiples of this: ``2**depth``."""
        return 2**self.depth

    @property
    def receptive_radius(self) -> int:
        """How far (pixels) an output pixel can see into the input: an upper bound.

        A ``k x k`` convolution at level ``n`` (scale ``2**n``) reaches ``(k - 1) / 2 * 2**n``
        input pixels, a 2x2 max-pooling from level ``n`` one more ``2**n``; with ``c``
        convolutions per level and depth ``d``: ``2 c r (2**d - 1) + (2**d - 1) + c r 2**d``,
        ``r = (k - 1) / 2``. 43 for CARE's default (depth 2, 5x5, 2 per level), which is
        also the measured extent of its input gradient (``tests/test_unet.py``). Tiles must
        overlap by at least twice this to match whole-slice prediction.
        """
        r, c, levels = (self.kernel_size - 1) // 2, self.n_conv_per_depth, 2**self.depth - 1
        return 2 * c * r * levels + levels + c * r * 2**self.depth


# --------------------------------------------------------------------------------------------
# Convolution with a custom gradient
# --------------------------------------------------------------------------------------------


def _check_conv_args(x: jax.Array, kernel: jax.Array) -> None:
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(
            f"conv2d takes x as (batch, y, x, channel) and kernel as (ky, kx, in, out); got "
            f"shapes {x.shape} and {kernel.shape}."
        )
    ky, kx, cin, _ = kernel.shape
    if ky % 2 != 1 or kx % 2 != 1:
        raise ValueError(f"conv2d needs odd kernel sides for 'same' padding, got {(ky, kx)}.")
    if x.shape[-1] != cin:
        raise ValueError(
            f"conv2d: x has {x.shape[-1]} channels but the kernel expects {cin}; check the "
            "channel axis is last (batch, y, x, channel)."
        )


def conv2d_reference(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'Same' 2D cross-correlation, stride 1, via ``lax.conv_general_dilated`` (XLA gradient).

    Args:
      x: input, shape (batch, y, x, in_channel).
      kernel: weights, shape (ky, kx, in_channel, out_channel), odd ky and kx.

    Returns:
      Output of shape (batch, y, x, out_channel).
    """
    _check_conv_args(x, kernel)
    return lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding="SAME", dimension_numbers=_DIMENSION_NUMBERS
    )


def _conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding="SAME", dimension_numbers=_DIMENSION_NUMBERS
    )


def conv2d_weight_grad(x: jax.Array, g: jax.Array, *, kernel_size: tuple[int, int]) -> jax.Array:
    """Gradient of ``sum(conv2d(x, kernel) * g)`` with respect to ``kernel``.

    ``dk[i, j, c, o] = sum_{b, y, x} xpad[b, y + i, x + j, c] * g[b, y, x, o]`` with ``xpad``
    the input zero-padded by ``(k - 1) // 2`` on each side. It is computed as a "valid"
    convolution whose batch axis is the input channel, whose feature axis is the batch and whose
    kernel is ``g``; see ``bench/README_train.md`` for the measured alternatives.

    Args:
      x: input of the convolution, shape (batch, y, x, in_channel).
      g: cotangent of the output, shape (batch, y, x, out_channel).
      kernel_size: (ky, kx), odd.

    Returns:
      Weight gradient of shape (ky, kx, in_channel, out_channel).
    """
    ky, kx = kernel_size
    py, px = (ky - 1) // 2, (kx - 1) // 2
    xt = jnp.transpose(x, (3, 1, 2, 0))  # (in_channel, y, x, batch)
    gt = jnp.transpose(g, (1, 2, 0, 3))  # (y, x, batch, out_channel)
    dk = lax.conv_general_dilated(
        xt, gt, window_strides=(1, 1), padding=((py, py), (px, px)),
        dimension_numbers=_DIMENSION_NUMBERS,
    )  # (in_channel, ky, kx, out_channel)
    return jnp.transpose(dk, (1, 2, 0, 3))


@jax.custom_vjp
def _conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _conv_same(x, kernel)


def _conv2d_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _conv_same(x, kernel), (x, kernel)


def _conv2d_bwd(
    residuals: tuple[jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    # Input gradient: a forward 'same' conv of g with the flipped, in/out-swapped kernel.
    gx = _conv_same(g, jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
    kh, kw = kernel.shape[:2]
    gk = conv2d_weight_grad(x, g, kernel_size=(kh, kw))
    return gx, gk


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'Same' 2D cross-correlation, stride 1, with a hand-written gradient for fast CPU training.

    Equal to :func:`conv2d_reference` (forward and both gradients, up to float32 rounding);
    the backward pass only uses forward-style convolutions, see :func:`conv2d_weight_grad`.

    Args:
      x: input, shape (batch, y, x, in_channel).
      kernel: weights, shape (ky, kx, in_channel, out_channel), odd ky and kx.

    Returns:
      Output of shape (batch, y, x, out_channel).

    Example:
      >>> import jax.numpy as jnp
      >>> conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2))).shape
      (1, 4, 4, 2)
    """
    _check_conv_args(x, kernel)
    return _conv2d(x, kernel)


# --------------------------------------------------------------------------------------------
# Layers and network
# --------------------------------------------------------------------------------------------


class Conv(nnx.Module):
    """'Same' convolution with bias; kernel Glorot-uniform, bias zero (Keras' defaults)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 conv_impl: ConvImpl, rngs: nnx.Rngs) -> None:
        init = jax.nn.initializers.glorot_uniform()
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.kernel = nnx.Param(init(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))
        self.conv_impl = conv_impl

    def __call__(self, x: jax.Array) -> jax.Array:
        # weights are cast to the activations' dtype (mixed precision keeps float32 masters)
        kernel = self.kernel[...].astype(x.dtype)
        if kernel.shape[0] == 1:  # 1x1 conv: a matmul over channels
            y = jnp.einsum("byxc,co->byxo", x, kernel[0, 0])
        elif self.conv_impl == "custom":
            y = conv2d(x, kernel)
        else:
            y = conv2d_reference(x, kernel)
        return y + self.bias[...].astype(y.dtype)


def _max_pool2(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _upsample2(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


class UNet(nnx.Module):
    """CARE U-Net (see the module docstring for the layer list).

    Args:
      config: network settings.
      rngs: random streams; the ``params`` stream initialises the weights.

    Calling it on ``x`` of shape (batch, y, x, in_channels), with y and x multiples of
    ``2**config.depth``, returns (batch, y, x, out_channels), or with ``prob_out``
    (batch, y, x, 2 * out_channels): means first, then positive Laplace scales.
    """

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        c, k, impl = config, config.kernel_size, config.conv_impl

        def conv(cin: int, cout: int, size: int = k) -> Conv:
            return Conv(cin, cout, size, conv_impl=impl, rngs=rngs)

        def filters(n: int) -> int:
            return c.first_filters * 2**n

        cin = c.in_channels
        down, skips = [], []
        for n in range(c.depth):
            level = []
            for _ in range(c.n_conv_per_depth):
                level.append(conv(cin, filters(n)))
                cin = filters(n)
            down.append(nnx.List(level))
            skips.append(cin)
        middle = []
        for _ in range(c.n_conv_per_depth - 1):
            middle.append(conv(cin, filters(c.depth)))
            cin = filters(c.depth)
        middle.append(conv(cin, filters(max(0, c.depth - 1))))
        cin = filters(max(0, c.depth - 1))
        up = []
        for n in reversed(range(c.depth)):
            cin = cin + skips[n]
            level = []
            for _ in range(c.n_conv_per_depth - 1):
                level.append(conv(cin, filters(n)))
                cin = filters(n)
            level.append(conv(cin, filters(max(0, n - 1))))
            cin = filters(max(0, n - 1))
            up.append(nnx.List(level))
        self.down = nnx.List(down)
        self.middle = nnx.List(middle)
        self.up = nnx.List(up)  # ordered from the deepest level to level 0
        self.head = conv(cin, c.out_channels, 1)
        self.scale_head = conv(cin, c.out_channels, 1) if c.prob_out else None

    def __call__(self, x: jax.Array, compute_dtype=None) -> jax.Array:
        c = self.config
        if x.ndim != 4 or x.shape[-1] != c.in_channels:
            raise ValueError(
                f"UNet expects x of shape (batch, y, x, {c.in_channels}) (channels last), got "
                f"{x.shape}; add a trailing channel axis with x[..., None] if needed."
            )
        if x.shape[1] % c.divisor or x.shape[2] % c.divisor:
            raise ValueError(
                f"UNet with depth={c.depth} needs y and x divisible by {c.divisor}, got "
                f"{x.shape[1:3]}; crop or pad the patch (e.g. to "
                f"{(-(-x.shape[1] // c.divisor) * c.divisor, -(-x.shape[2] // c.divisor) * c.divisor)})."
            )
        h, skips = x if compute_dtype is None else x.astype(compute_dtype), []
        for level in self.down:
            for layer in level:
                h = jax.nn.relu(layer(h))
            skips.append(h)
            h = _max_pool2(h)
        for layer in self.middle:
            h = jax.nn.relu(layer(h))
        for level, skip in zip(self.up, reversed(skips), strict=True):
            h = jnp.concatenate([_upsample2(h), skip], axis=-1)
            for layer in level:
                h = jax.nn.relu(layer(h))
        # the head's output, the residual and the scale are in the input's precision
        out = self.head(h).astype(x.dtype)
        if c.residual:
            out = out + x
        if self.scale_head is not None:
            scale = jax.nn.softplus(self.scale_head(h).astype(x.dtype)) + c.eps_scale
            out = jnp.concatenate([out, scale], axis=-1)
        return out


def init_unet(key: jax.Array, config: UNetConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Create the network's structure and float32 weights.

    Args:
      key: PRNG key for the Glorot-uniform kernels (biases start at zero).
      config: network settings.

    Returns:
      ``(graphdef, params)``: the static structure and the weights (a pytree), for
      :func:`apply_unet`; ``nnx.merge(graphdef, params)`` gives the :class:`UNet` module.

    Example:
      >>> import jax
      >>> graphdef, params = init_unet(jax.random.key(0), UNetConfig(first_filters=4))
      >>> apply_unet(graphdef, params, jax.numpy.zeros((1, 8, 8, 1))).shape
      (1, 8, 8, 1)
    """
    model = UNet(config, rngs=nnx.Rngs(params=key))
    return nnx.split(model)


def apply_unet(
    graphdef: nnx.GraphDef, params: nnx.State, x: jax.Array, *, compute_dtype=None
) -> jax.Array:
    """Pure forward pass, for use inside ``jax.jit`` / ``jax.grad``.

    Mixed precision (Micikevicius et al. 2018, "Mixed precision training", ICLR; bfloat16
    needs no loss scaling, having float32's exponent range): with ``compute_dtype`` set to
    ``jnp.bfloat16`` the convolutions and activations run in bfloat16 while ``params``
    stay float32 (each layer casts its weights, so gradients arrive in float32 for the
    optimiser); the head's output, the residual input and the Laplace scale are computed
    in the input's precision.

    Args:
      graphdef: structure from :func:`init_unet`.
      params: weights from :func:`init_unet` (or updated by an optimiser).
      x: input, shape (batch, y, x, in_channels), y and x multiples of ``2**depth``.
      compute_dtype: dtype of the network's internal computation (default: ``x``'s).

    Returns:
      Prediction of shape (batch, y, x, out_channels), or (batch, y, x, 2 * out_channels)
      with ``prob_out`` (means, then scales).
    """
    return nnx.merge(graphdef, params)(x, compute_dtype)
