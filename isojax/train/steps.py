"""Training's state and steps: pure functions, state in and state out.

The shape follows the Flax examples: :func:`create_train_state`, a pure
``train_step(state, batch) -> (state, metrics)`` (:func:`make_train_step`) and an
``eval_step`` (:func:`make_eval_step`). Everything a step depends on is in the
:class:`TrainState`: the weights, the optimiser state, the step number and the data key,
which is what exact resume needs (:mod:`isojax.train.loop`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from isojax.train.config import TrainConfig
from isojax.unet import CPU_COMPILER_OPTIONS, UNetConfig, apply_unet, init_unet

__all__ = [
    "PRNG_IMPL",
    "TrainState",
    "create_train_state",
    "init_state",
    "loss_fn",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "new_key",
]

Array = jax.Array


class TrainState(NamedTuple):
    """Everything a training step depends on (a pytree)."""

    step: Array  # int32 scalar
    params: Any  # network weights (nnx.State)
    opt_state: Any
    key: Array  # data key (typed PRNG key)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam with linear warm-up and cosine decay (Loshchilov & Hutter, SGDR, ICLR 2017).

    The schedule is a function of the step number and of ``config.steps``, which is not
    part of the optimiser state. A run extended on resume (:func:`train` with ``resume=True``
    and a larger ``steps``) therefore continues on the cosine of the new total: the steps
    already done keep the learning rates they were trained with, and from the resumed step
    on the rate is the new schedule's (higher than where the old one ended, then decaying
    to ``final_lr_fraction`` of the peak at the new last step: a warm restart, as in SGDR).
    The warm-up keeps its original length (the model folder's ``warmup_steps``).

    Args:
      config: the training settings (learning rate, steps, warm-up, final fraction).

    Returns:
      The optax transformation.
    """
    warmup = min(config.warmup_steps, max(config.steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else config.learning_rate,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(config.steps, warmup + 1),
        end_value=config.learning_rate * config.final_lr_fraction,
    )
    return optax.adam(schedule)


# Random numbers use the "rbg" generator (XLA's RngBitGenerator): its programs compile
# about four times faster on CPU than threefry's, which matters for short runs and tests.
# Random numbers use the "rbg" generator (XLA's RngBitGenerator): its programs compile
# about four times faster on CPU than threefry's, which matters for short runs and tests.
# Streams are reproducible on a given backend, which is what exact resume needs.
PRNG_IMPL = "rbg"


def new_key(seed: int) -> Array:
    """The typed PRNG key training draws from (the ``rbg`` generator, :data:`PRNG_IMPL`).

    Args:
      seed: a whole number.

    Returns:
      A scalar typed key.
    """
    return jax.random.key(seed, impl=PRNG_IMPL)


def create_train_state(key: Array, net: UNetConfig, config: TrainConfig):
    """Fresh weights, optimiser state and data key.

    Args:
      key: the PRNG key of the weights' initialisation and the data stream.
      net: the U-Net's settings.
      config: the training settings (the optimiser's).

    Returns:
      ``(graphdef, state)``: the network's static structure and a :class:`TrainState`.
    """
    graphdef, _ = jax.eval_shape(lambda: init_unet(jax.random.key(0), net))
    return graphdef, init_state(key, net, config)


@functools.partial(jax.jit, static_argnums=(1, 2))
def init_state(key: Array, net: UNetConfig, config: TrainConfig) -> TrainState:
    """The :class:`TrainState` of :func:`create_train_state`, without the graph definition.

    One compiled program instead of one small one per layer (seconds saved on CPU). The
    checkpoint reader evaluates it abstractly for the tree a checkpoint must fill.

    Args:
      key: a typed key (:func:`new_key`); split into the weights' and the data's.
      net: the network (static).
      config: the optimisation settings (static).

    Returns:
      The state at step 0.
    """
    k_init, k_data = jax.random.split(key)
    _, params = init_unet(k_init, net)
    opt_state = make_optimizer(config).init(params)
    return TrainState(jnp.zeros((), jnp.int32), params, opt_state, k_data)


def loss_fn(pred: Array, target: Array, kind: str) -> Array:
    """Mean loss over a batch.

    Args:
      pred: the network's output ``(..., c)``, or ``(..., 2c)`` (mean and scale) for
        ``"laplace"``.
      target: the clean planes ``(..., c)``.
      kind: ``"mse"``, ``"mae"`` or ``"laplace"`` (the negative log-likelihood).

    Returns:
      The scalar loss.
    """
    if kind == "laplace":
        c = target.shape[-1]
        mean, scale = pred[..., :c], pred[..., c:]
        return jnp.mean(jnp.abs(target - mean) / scale + jnp.log(2 * scale))
    pred = pred[..., : target.shape[-1]]
    if kind == "mse":
        return jnp.mean((pred - target) ** 2)
    return jnp.mean(jnp.abs(pred - target))


def _compute_dtype(config: TrainConfig):
    return None if config.compute_dtype == "float32" else jnp.dtype(config.compute_dtype)


def make_train_step(graphdef, net: UNetConfig, config: TrainConfig):
    """``train_step(state, batch) -> (state, metrics)``, pure and jitted.

    ``batch`` is ``(source, target)``, each ``(b, h, w)`` with the last axis axial.

    Args:
      graphdef: the network's static structure (:func:`create_train_state`).
      net: the U-Net's settings.
      config: the training settings (the loss and the compute dtype).

    Returns:
      The jitted ``train_step``.
    """
    if config.loss == "laplace" and not net.prob_out:
        raise ValueError("loss='laplace' needs a probabilistic network: set prob_out=True.")
    tx = make_optimizer(config)
    dtype = _compute_dtype(config)

    def objective(params, source, target):
        pred = apply_unet(graphdef, params, source[..., None], compute_dtype=dtype)
        return loss_fn(pred, target[..., None], config.loss)

    def train_step(state: TrainState, batch):
        source, target = batch
        loss, grads = jax.value_and_grad(objective)(state.params, source, target)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(state.step + 1, params, opt_state, state.key)
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    # The state is donated (updated in place). On CPU, convolutions go to XLA's Eigen
    # kernels, whose weight gradients are about twice as fast here (isojax.unet).
    options = CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(train_step, donate_argnums=0, compiler_options=options)


def make_eval_step(graphdef, net: UNetConfig, config: TrainConfig):
    """``eval_step(params, batch) -> metrics`` (jitted): the training loss and MAE.

    Args:
      graphdef: the network's static structure (:func:`create_train_state`).
      net: the U-Net's settings.
      config: the training settings (the loss and the compute dtype).

    Returns:
      The jitted ``eval_step``.
    """

    dtype = _compute_dtype(config)

    @jax.jit
    def eval_step(params, batch):
        source, target = batch
        pred = apply_unet(graphdef, params, source[..., None], compute_dtype=dtype)
        t = target[..., None]
        return {
            "loss": loss_fn(pred, t, config.loss),
            "mae": jnp.mean(jnp.abs(pred[..., :1] - t)),
        }

    return eval_step
