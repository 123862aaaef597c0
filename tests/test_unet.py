"""Tests for isojax.unet: architecture, custom-gradient convolution, training step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

from isojax.unet import (
    CPU_COMPILER_OPTIONS,
    UNet,
    UNetConfig,
    apply_unet,
    conv2d,
    conv2d_reference,
    conv2d_weight_grad,
    init_unet,
)

TINY = {"first_filters": 4, "depth": 2, "kernel_size": 3}

# One compiled program per config instead of op-by-op eager dispatch keeps the suite fast.
_apply = jax.jit(apply_unet, static_argnums=0)


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


# ------------------------------------------------------------------------------ convolution


@pytest.mark.parametrize(("shape", "k", "cout"), [((2, 8, 8, 1), 3, 4), ((1, 6, 10, 3), 5, 2),
                                                  ((3, 4, 4, 17), 1, 5)])
def test_conv2d_matches_lax_forward_and_gradients(shape, k, cout):
    x = _x(shape)
    w = _x((k, k, shape[-1], cout), seed=1)
    y, vjp = jax.vjp(conv2d, x, w)
    y_ref, vjp_ref = jax.vjp(conv2d_reference, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = _x(y.shape, seed=2)
    for got, want in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv2d_weight_grad_against_explicit_sum():
    # Independent of XLA: dk[i, j, c, o] = sum_{b,y,x} xpad[b, y+i, x+j, c] g[b, y, x, o].
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    g = rng.standard_normal((2, 5, 6, 4)).astype(np.float32)
    k = 3
    xpad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((k, k, 3, 4), np.float64)
    for i in range(k):
        for j in range(k):
            want[i, j] = np.einsum("byxc,byxo->co", xpad[:, i:i + 5, j:j + 6], g)
    got = conv2d_weight_grad(jnp.asarray(x), jnp.asarray(g), kernel_size=(k, k))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv2d_check_grads_finite_differences():
    x = _x((1, 4, 4, 2))
    w = 0.5 * _x((3, 3, 2, 3), seed=1)
    check_grads(conv2d, (x, w), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)


def test_conv2d_rejects_even_kernel_and_channel_mismatch():
    with pytest.raises(ValueError, match="odd"):
        conv2d(_x((1, 4, 4, 1)), _x((2, 2, 1, 1)))
    with pytest.raises(ValueError, match="channel"):
        conv2d(_x((1, 4, 4, 2)), _x((3, 3, 1, 1)))


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kernel_size": 4}, "odd"), ({"depth": 0}, "depth"),
     ({"in_channels": 1, "out_channels": 2}, "residual"), ({"conv_impl": "fft"}, "conv_impl"),
     ({"first_filters": 2.5}, "first_filters")],
)
def test_config_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_csbdeep_default_architecture():
    # CARE 2D default (depth 2, 32 filters, 5x5): 10 5x5 convs + 1x1 head, 922,977 parameters
    # as reported by CSBDeep's keras model.
    model = nnx.eval_shape(lambda: UNet(UNetConfig(), rngs=nnx.Rngs(0)))
    n = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == 922_977
    assert [c.kernel.shape for c in model.down[0]] == [(5, 5, 1, 32), (5, 5, 32, 32)]
    assert [c.kernel.shape for c in model.middle] == [(5, 5, 64, 128), (5, 5, 128, 64)]
    assert [c.kernel.shape for c in model.up[0]] == [(5, 5, 128, 64), (5, 5, 64, 32)]
    assert [c.kernel.shape for c in model.up[1]] == [(5, 5, 64, 32), (5, 5, 32, 32)]
    assert model.head.kernel.shape == (1, 1, 32, 1)


# ------------------------------------------------------------------------------ network


@pytest.mark.parametrize(("prob_out", "cin", "cout", "residual", "depth"),
                         [(False, 1, 1, True, 2), (True, 1, 1, True, 1), (False, 2, 3, False, 1)])
def test_output_shape(prob_out, cin, cout, residual, depth):
    config = UNetConfig(**{**TINY, "depth": depth}, prob_out=prob_out, in_channels=cin,
                        out_channels=cout, residual=residual)
    graphdef, params = init_unet(jax.random.key(0), config)
    y = _apply(graphdef, params, _x((2, 16, 12, cin)))
    assert y.shape == (2, 16, 12, cout * (2 if prob_out else 1))
    assert y.dtype == jnp.float32


def test_residual_identity_when_head_is_zero():
    model = UNet(UNetConfig(**TINY), rngs=nnx.Rngs(0))
    model.head.kernel = nnx.Param(jnp.zeros_like(model.head.kernel[...]))
    x = _x((2, 16, 16, 1))
    np.testing.assert_array_equal(_apply(*nnx.split(model), x), x)


def test_prob_head_scale_positive():
    config = UNetConfig(**TINY, prob_out=True)
    graphdef, params = init_unet(jax.random.key(0), config)
    y = _apply(graphdef, params, 10.0 * _x((2, 16, 16, 1)))
    scale = y[..., 1:]
    assert bool(jnp.all(scale >= config.eps_scale))


@pytest.mark.parametrize(
    ("kwargs", "tight"),
    [({}, True), ({"depth": 1, "kernel_size": 3, "first_filters": 4}, True),
     ({"depth": 3, "first_filters": 8}, False), ({"n_conv_per_depth": 3, "first_filters": 16}, False)],
)
def test_receptive_radius_bounds_the_input_gradient(kwargs, tight):
    # where the gradient of one output pixel is nonzero: the input pixels it sees
    config = UNetConfig(**kwargs)
    graphdef, params = init_unet(jax.random.key(0), config)
    # the smallest side that holds the reach with 8 px to spare on each side, with the
    # centre on the pooling grid (n // 2 a multiple of 2^depth), as 224 did for all
    step = 2 ** (config.depth + 1)
    n = step * math.ceil((2 * config.receptive_radius + 17) / step)
    x = jax.random.normal(jax.random.key(1), (1, n, n, 1))
    grad = jax.jit(jax.grad(lambda v: apply_unet(graphdef, params, v)[0, n // 2, n // 2, 0]))(x)
    ys, xs = np.nonzero(np.asarray(grad)[0, :, :, 0])
    reach = max(n // 2 - ys.min(), ys.max() - n // 2, n // 2 - xs.min(), xs.max() - n // 2)
    assert reach <= config.receptive_radius
    assert (reach == config.receptive_radius) == tight
    assert config.receptive_radius - reach <= 3  # a tight bound: only pooling offsets


def test_divisibility_error():
    graphdef, params = init_unet(jax.random.key(0), UNetConfig(**TINY))
    with pytest.raises(ValueError, match="divisible by 4"):
        apply_unet(graphdef, params, _x((1, 18, 16, 1)))
    with pytest.raises(ValueError, match="channels last"):
        apply_unet(graphdef, params, _x((1, 1, 16, 16)))


def test_jit_matches_eager_and_custom_matches_xla_impl():
    x = _x((2, 16, 16, 1))
    custom = init_unet(jax.random.key(0), UNetConfig(**TINY))
    ref = init_unet(jax.random.key(0), UNetConfig(**TINY, conv_impl="xla"))
    eager = apply_unet(*custom, x)
    jitted = _apply(*custom, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_apply(*ref, x), eager, rtol=1e-5, atol=1e-5)

    def loss(params, graphdef):
        return jnp.mean(jnp.abs(apply_unet(graphdef, params, x) - 0.5 * x))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_custom = grad(custom[1], custom[0])
    g_ref = grad(ref[1], ref[0])
    for a, b in zip(jax.tree.leaves(g_custom), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _train_step_fn(graphdef, tx):
    def loss_fn(params, x, y):
        return jnp.mean(jnp.abs(apply_unet(graphdef, params, x) - y))

    def train_step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss}

    return train_step, loss_fn


@pytest.mark.parametrize("compiler_options", [None, CPU_COMPILER_OPTIONS])
def test_adam_step_decreases_loss(compiler_options):
    graphdef, params = init_unet(jax.random.key(0), UNetConfig(**TINY))
    tx = optax.adam(1e-3)
    train_step, loss_fn = _train_step_fn(graphdef, tx)
    step = jax.jit(train_step, compiler_options=compiler_options)
    x = _x((4, 16, 16, 1))
    y = 0.5 * x + 0.2
    state = (params, tx.init(params))
    before = jax.jit(loss_fn)(params, x, y)
    state, metrics = step(state, (x, y))
    np.testing.assert_allclose(metrics["loss"], before, rtol=1e-5)
    after = jax.jit(loss_fn)(state[0], x, y)
    assert after < before
    state, _ = step(state, (x, y))  # same shapes: no recompilation
    assert step._cache_size() == 1


# ------------------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("prob_out", [False, True])
def test_bfloat16_compute_matches_float32_and_keeps_float32_gradients(prob_out):
    """bf16 activations, f32 master weights: close outputs, f32 gradients in the same direction."""
    cfg = UNetConfig(**TINY, prob_out=prob_out)
    graphdef, params = init_unet(jax.random.key(0), cfg)
    x = _x((2, 16, 16, 1))
    f32 = jax.jit(lambda p: apply_unet(graphdef, p, x))
    b16 = jax.jit(lambda p: apply_unet(graphdef, p, x, compute_dtype=jnp.bfloat16))
    y32, y16 = f32(params), b16(params)
    assert y16.dtype == jnp.float32  # the head, residual and scale come back in float32
    err = np.abs(np.asarray(y16) - np.asarray(y32)).max() / np.abs(np.asarray(y32)).max()
    assert 0 < err < 3e-2  # bfloat16 really was used, and only rounds

    def loss(p, dtype):
        return jnp.mean(jnp.abs(apply_unet(graphdef, p, x, compute_dtype=dtype) - 0.5 * x))

    g32 = jax.jit(jax.grad(lambda p: loss(p, None)))(params)
    g16 = jax.jit(jax.grad(lambda p: loss(p, jnp.bfloat16)))(params)
    a = np.concatenate([np.ravel(v) for v in jax.tree.leaves(g32)])
    b = np.concatenate([np.ravel(v) for v in jax.tree.leaves(g16)])
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(g16))
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine > 0.99, cosine
