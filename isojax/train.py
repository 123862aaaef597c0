"""Training: a pure, jitted step; a loop with orbax checkpoints, exact resume and a model folder.

The shape follows the Flax examples: :func:`create_train_state`, a pure
``train_step(state, batch) -> (state, metrics)`` (:func:`make_train_step`), an
``eval_step``, and :func:`train`, the loop that owns everything stateful (checkpoints,
metrics files, the progress bar, the model folder).

Exact resume. Everything a step depends on is in the :class:`TrainState`: the weights,
the optimiser state, the step number and the data key. The batch of step ``t`` is drawn
with ``fold_in(data_key, t)``, so it does not depend on how many times training was
interrupted. A run killed at any moment (even ``SIGKILL`` in the middle of a checkpoint
write: orbax writes to a temporary folder and renames it when complete) and restarted
with ``resume=True`` gives the same weights as an uninterrupted run with the same seed.

The model folder holds everything prediction needs:

* ``config.json``: human-readable network, training and synthesis settings, the
  subsample factor, the normalisation, voxel sizes and the isojax version. Of the
  normalisation, prediction reads the percentiles ``pmin``/``pmax`` (and recomputes the
  bounds on its own stack, as CARE does); the training stack's bounds ``lo``/``hi`` are
  read by ``resume`` to refuse another stack of the same shape;
* ``psf.tif``: the additional axial PSF used to synthesise training pairs;
* ``checkpoints/last`` and ``checkpoints/best`` (orbax), ``metrics.jsonl``, ``loss.png``;
* with ``calibrate_psf=True``, ``psf_trajectory.json``: the spectral pre-calibration and
  the PSF's path during joint refinement (``psf.tif`` then holds the final PSF).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from isojax import synth
from isojax.errors import IsojaxInputError, log_to_stderr
from isojax.unet import CPU_COMPILER_OPTIONS, UNetConfig, apply_unet, init_unet

FORMAT = 1  # version of the model-folder layout; bump when it changes incompatibly

Array = jax.Array


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings; frozen and checked on construction.

    Attributes:
      steps: number of optimiser steps, >= 1.
      batch_size: patches per step, >= 1.
      learning_rate: peak Adam learning rate (CSBDeep's default is 4e-4).
      warmup_steps: linear warm-up length; then cosine decay to ``final_lr_fraction``.
      final_lr_fraction: learning rate at the last step, as a fraction of the peak.
      loss: ``"mae"`` (CARE's default), ``"mse"``, or ``"laplace"`` (negative
        log-likelihood of a Laplace distribution; needs a network with ``prob_out``).
      seed: seeds the weights and the data.
      checkpoint_every: save the ``last`` checkpoint every this many steps.
      val_every: evaluate on the validation planes (and keep the ``best`` checkpoint)
        every this many steps.
      val_batches: fixed validation batches per evaluation.
      compute_dtype: ``"float32"``, or ``"bfloat16"`` for mixed precision: the network
        computes in bfloat16 while the weights, the optimiser state, the loss and the
        gradients stay float32 (:func:`isojax.unet.apply_unet`). About 2x faster and half
        the activation memory on GPUs and TPUs; on CPUs without native bfloat16
        convolutions it is slower. Prediction uses the float32 weights.
    """

    steps: int
    batch_size: int = 16
    learning_rate: float = 4e-4
    warmup_steps: int = 100
    final_lr_fraction: float = 0.1
    loss: Literal["mae", "mse", "laplace"] = "mae"
    seed: int = 0
    checkpoint_every: int = 100
    val_every: int = 100
    val_batches: int = 4
    compute_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "val_every", "val_batches"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {v!r}.")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(
                f"warmup_steps must be a whole number >= 0, got {self.warmup_steps!r}."
            )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(
                f"learning_rate must be a positive number, got {self.learning_rate!r}."
            )
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(
                f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction!r}."
            )
        if self.loss not in ("mae", "mse", "laplace"):
            raise ValueError(f"loss must be 'mae', 'mse' or 'laplace', got {self.loss!r}.")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}."
            )


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
# Streams are reproducible on a given backend, which is what exact resume needs.
_PRNG_IMPL = "rbg"


def _new_key(seed: int) -> Array:
    return jax.random.key(seed, impl=_PRNG_IMPL)


def create_train_state(key: Array, net: UNetConfig, config: TrainConfig):
    """Fresh weights, optimiser state and data key.

    Returns:
      ``(graphdef, state)``: the network's static structure and a :class:`TrainState`.
    """
    graphdef, _ = jax.eval_shape(lambda: init_unet(jax.random.key(0), net))
    return graphdef, _init_state(key, net, config)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_state(key, net, config):
    # one compiled program instead of one small one per layer (seconds saved on CPU)
    k_init, k_data = jax.random.split(key)
    _, params = init_unet(k_init, net)
    opt_state = make_optimizer(config).init(params)
    return TrainState(jnp.zeros((), jnp.int32), params, opt_state, k_data)


def loss_fn(pred: Array, target: Array, kind: str) -> Array:
    """Mean loss over a batch. ``pred`` is ``(..., c)`` or ``(..., 2c)`` for Laplace."""
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
    """``eval_step(params, batch) -> metrics`` (jitted): the training loss and MAE."""

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


# ----------------------------------------------------------------------------------------
# Checkpoints: the state as a flat dict of arrays, so orbax sees plain pytrees.


def _keyless(state: TrainState) -> TrainState:
    """The state with its PRNG key as raw data, as checkpoints hold it."""
    return state._replace(key=jax.random.key_data(state.key))


def _flat(tree) -> dict[str, Any]:
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def _managers(workdir: Path):
    """The ``last`` and ``best`` checkpoint managers of a model folder (created if needed).

    Raises:
      IsojaxInputError: a checkpoint's metrics or metadata cannot be read; the message
        names the damaged step folder and how to resume.
    """
    try:
        return _manager(workdir, "last"), _manager(workdir, "best")
    except _Damaged as exc:
        raise IsojaxInputError(
            exc.message(_advice(workdir, exc, purpose="resume"))
        ) from exc.__cause__


def _manager(workdir: Path, name: Literal["last", "best"]):
    """One checkpoint manager: ``last`` keeps 2 steps, ``best`` the lowest validation loss.

    Raises:
      _Damaged: orbax could not read a step's metrics or metadata while listing the steps.
    """
    import orbax.checkpoint as ocp

    root = (workdir / "checkpoints").absolute()
    handler = ocp.StandardCheckpointHandler  # named, so that item_metadata can read it

    def sync(prefix):
        # Both managers may save the same step at once; in a multi-host job orbax's barriers
        # are named after the step, so each manager needs its own prefix (without it the
        # two saves collide on "_async_write_complete.<step>" and the job fails).
        return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix)

    if name == "last":
        options = ocp.CheckpointManagerOptions(
            max_to_keep=2, create=True, multiprocessing_options=sync("last")
        )
    else:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m["val_loss"], best_mode="min",
            multiprocessing_options=sync("best"),
        )
    try:
        return ocp.CheckpointManager(root / name, options=options, item_handlers=handler())
    except ValueError as exc:  # json.JSONDecodeError: a step's metrics file is cut short
        from isojax.model_folder import damaged_step, describe_damage

        step_dir = damaged_step(root / name)
        raise _Damaged(step_dir, describe_damage(step_dir, exc)) from exc


class _Damaged(IsojaxInputError):
    """A checkpoint step that orbax cannot read (raised at the reading boundary only)."""

    def __init__(self, step_dir: Path, damage: str):
        self.step_dir, self.damage = Path(step_dir), damage
        super().__init__(self.message(
            "retrain with `isojax train`, or restore the model folder from a copy"
        ))

    def message(self, advice: str) -> str:
        return f"checkpoint {self.step_dir} is damaged: {self.damage}; {advice}."


def _read_step(manager, step: int, sharding) -> dict:
    """All arrays of one checkpoint step, as saved by :func:`_save`.

    Raises:
      _Damaged: a file of the step is missing, cut short or corrupt (what orbax, tensorstore
        and ``json`` raise for damaged files, chained).
    """
    import orbax.checkpoint as ocp

    from isojax.model_folder import describe_damage, quiet_abandoned_reads

    step_dir = Path(str(manager.directory)) / str(step)
    try:
        # restore every leaf the checkpoint holds (the joint PSF state may be among them)
        on_disk = manager.item_metadata(step)
        if on_disk is None:  # default/_METADATA is gone
            raise _Damaged(step_dir, describe_damage(step_dir, None))
        return manager.restore(step, args=ocp.args.StandardRestore({
            k: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding)
            for k, m in on_disk.items()
        }))
    except _Damaged:
        raise
    except (ValueError, OSError) as exc:  # tensorstore's errors, json.JSONDecodeError
        quiet_abandoned_reads(step_dir)
        raise _Damaged(step_dir, describe_damage(step_dir, exc)) from exc
    except Exception as exc:
        # orbax wraps a failed array read in a bare Exception whose cause is tensorstore's
        if type(exc) is not Exception or not isinstance(exc.__cause__, (ValueError, OSError)):
            raise
        quiet_abandoned_reads(step_dir)
        raise _Damaged(step_dir, describe_damage(step_dir, exc)) from exc


def _intact(workdir: Path, name: str) -> tuple[list[int], list[int]]:
    """The steps of ``checkpoints/<name>`` whose every file reads, and all its steps.

    Both lists are newest first; a folder orbax cannot even list gives two empty lists.
    """
    try:
        manager = _manager(workdir, name)
    except _Damaged:
        return [], []
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    steps = sorted(manager.all_steps(), reverse=True)
    good = []
    try:
        for step in steps:
            try:
                _read_step(manager, step, sharding)
            except _Damaged:
                continue
            good.append(step)
    finally:
        manager.close()
    return good, steps


def _advice(workdir: Path, damaged: _Damaged | None, *,
            purpose: Literal["resume", "predict"], which: str | None = None) -> str:
    """What to do about a damaged (or empty) checkpoint folder: which other one is intact.

    The other checkpoints are read completely to tell. ``damaged`` None means
    ``checkpoints/<which>`` holds no step. Nothing falls back to another checkpoint: the
    advice says how the user can choose it.
    """
    workdir = Path(workdir).absolute()
    if damaged is not None:
        failed = damaged.step_dir
        which = failed.parent.name if failed.parent.parent.name == "checkpoints" else failed.name
    else:
        failed = workdir / "checkpoints" / str(which)

    def rel(path: Path) -> str:
        return str(path.relative_to(workdir)) if path.is_relative_to(workdir) else str(path)

    def steps(name):
        return [s for s in _intact(workdir, name)[0]
                if workdir / "checkpoints" / name / str(s) != failed]

    tips = []
    if purpose == "predict":
        other = "last" if which == "best" else "best"
        good, every = _intact(workdir, other)
        if good:
            where = rel(workdir / "checkpoints" / other / str(good[0]))
            tip = f"{where} is intact: predict from it with --checkpoint {other}"
            if other == "last":
                tip += " (the last training step, not the one with the best validation loss)"
            newer = [s for s in every if s > good[0]]  # --checkpoint last takes the newest
            if newer:
                moved = " and ".join(rel(workdir / "checkpoints" / "last" / str(s))
                                     for s in newer)
                tip += f" after moving {moved} out of the model folder"
            tips.append(tip)
        if which == "last" and damaged is not None:
            older = steps("last")
            if older:
                tips.append(
                    f"move {rel(failed)} out of the model folder to predict from "
                    f"{rel(workdir / 'checkpoints' / 'last' / str(older[0]))}, which is intact"
                )
        if not tips:
            return ("no other checkpoint is intact: retrain with `isojax train`, or restore the "
                    "model folder from a copy")
        return "; or ".join(tips) + "; or retrain with `isojax train`"
    # resume
    if which == "best":
        return (f"move {rel(failed)} out of the model folder and resume again (training keeps "
                "a new best checkpoint from then on), or train into a new folder")
    older = steps("last")
    if older:
        return (f"{rel(workdir / 'checkpoints' / 'last' / str(older[0]))} is intact: move "
                f"{rel(failed)} out of the model folder and resume again to continue from step "
                f"{older[0]}, or train into a new folder")
    return "no older checkpoint to resume from is intact: train into a new folder"


_EXTRA = "psf_"  # prefix of the joint PSF refinement's leaves in a checkpoint


def _save(manager, state: TrainState, metrics=None, extra=None):
    """Save the state, and ``extra`` (the joint PSF parameters and their optimiser) if given."""
    import orbax.checkpoint as ocp

    items = _flat(_keyless(state))
    if extra is not None:
        items.update({_EXTRA + k: v for k, v in _flat(extra).items()})
    manager.save(int(state.step), args=ocp.args.StandardSave(items), metrics=metrics)


def _restore(manager, net: UNetConfig, config: TrainConfig, step=None, extra_template=None,
             *, purpose: Literal["resume", "predict"] = "resume"):
    """Read a checkpoint onto this process's first local device (placed later if needed).

    Returns the :class:`TrainState`; with ``extra_template`` (a pytree like the ``extra``
    given to :func:`_save`), ``(state, extra)``, ``extra`` None if the checkpoint has none.

    Raises:
      IsojaxInputError: the checkpoint is damaged, or was written with other settings (its
        network or optimiser, or, with ``extra_template``, PSF state of another shape); the
        message names the step folder and the other checkpoints that are intact, with what
        to do for ``purpose`` (resuming or predicting).
    """
    step = manager.latest_step() if step is None else step
    # one abstract evaluation gives both the tree to rebuild and the leaves to expect
    template = jax.eval_shape(lambda: _keyless(_init_state(_new_key(0), net, config)))
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
        flat = _read_step(manager, step, sharding)
    except _Damaged as exc:
        workdir = Path(str(manager.directory)).parent.parent
        advice = _advice(workdir, exc, purpose=purpose)
        raise IsojaxInputError(exc.message(advice)) from exc.__cause__
    names = sorted(k for k in flat if not k.startswith(_EXTRA))
    treedef = jax.tree.structure(template)
    if len(names) != treedef.num_leaves:
        raise IsojaxInputError(
            f"checkpoint {step} in {manager.directory} holds {len(names)} arrays where this "
            f"network and optimiser need {treedef.num_leaves}; it was written with other "
            "settings. Train into a new folder."
        )
    state = jax.tree.unflatten(treedef, [flat[k] for k in names])
    state = state._replace(key=jax.random.wrap_key_data(state.key, impl=_PRNG_IMPL))
    if extra_template is None:
        return state
    extra_names = sorted(k for k in flat if k.startswith(_EXTRA))
    if not extra_names:
        return state, None
    extra_def = jax.tree.structure(extra_template)
    expected = [jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype)
                for v in jax.tree.leaves(extra_template)]
    found = [flat[k] for k in extra_names]
    if len(found) != len(expected) or any(
            np.shape(a) != e.shape for a, e in zip(found, expected, strict=False)):
        raise IsojaxInputError(
            f"checkpoint {step} in {manager.directory} holds PSF state ({len(found)} arrays) "
            f"that does not fit this run's PSF calibration ({len(expected)} arrays): it was "
            "written with other calibration settings (--family, the PSF's support). Use the "
            "model's settings, or train into a new folder."
        )
    return state, jax.tree.unflatten(extra_def, found)


# ----------------------------------------------------------------------------------------
# The model folder


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_model_config(workdir: Path, meta: dict) -> None:
    """Write ``config.json`` atomically."""
    path = workdir / "config.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def read_model_config(workdir: str | os.PathLike) -> dict:
    """Read and check a model folder's ``config.json`` (and its ``psf.tif``).

    ``config.json`` is checked against the folder's schema
    (:func:`isojax.model_folder.check_config`): required keys, types and ranges, and the
    network, training and synthesis sections must build their settings.

    Raises:
      IsojaxInputError: missing folder or files, a damaged ``config.json`` or ``psf.tif``,
        or a folder written by an incompatible isojax; the message names the file, the key
        and the isojax version that wrote the folder, and says what to do.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise IsojaxInputError(f"{workdir}: no such model folder; train one with `isojax train`.")
    missing = [n for n in ("config.json", "psf.tif", "checkpoints") if not (workdir / n).exists()]
    if missing:
        raise IsojaxInputError(
            f"{workdir}: not a complete isojax model folder, missing {', '.join(missing)}; "
            "train it again with `isojax train`."
        )
    path = workdir / "config.json"
    damaged = "the folder is damaged: retrain with `isojax train`, or restore config.json from a copy"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # also json.JSONDecodeError, UnicodeDecodeError
        raise IsojaxInputError(f"{path}: unreadable ({e}); {damaged}.") from e
    if not isinstance(meta, dict):
        raise IsojaxInputError(
            f"{path}: holds a JSON {type(meta).__name__}, not an object; {damaged}."
        )
    if "format" not in meta:
        raise IsojaxInputError(
            f'{path}: missing key "format" (written by isojax '
            f"{meta.get('isojax_version', '?')}); {damaged}."
        )
    if meta.get("format") != FORMAT:
        raise IsojaxInputError(
            f"{workdir}: model folder format {meta.get('format')!r} written by isojax "
            f"{meta.get('isojax_version', '?')}; this isojax reads format {FORMAT}. Retrain "
            "the model with this version, or predict with the version that wrote it."
        )
    from isojax.model_folder import check_config, check_psf_file

    check_config(meta, path=path)
    check_psf_file(workdir / "psf.tif", meta)
    return meta


def load_model(workdir: str | os.PathLike, *, which: Literal["best", "last"] = "best"):
    """Load a trained model for prediction.

    Args:
      workdir: the model folder written by :func:`train`.
      which: ``"best"`` (lowest validation loss; the default) or ``"last"``. A folder
        without that checkpoint, or with that checkpoint damaged, is refused (the message
        says which other checkpoint is intact); nothing falls back to the other one.

    Returns:
      ``(apply_fn, meta)``: ``apply_fn(batch)`` maps ``(b, h, w)`` float32 images (last
      axis axial) to restored images of the same shape, and ``meta`` is the parsed
      ``config.json``.

    Raises:
      IsojaxInputError: the folder, its ``config.json``, ``psf.tif`` or the checkpoint is
        missing or damaged.
    """
    workdir = Path(workdir).absolute()
    meta = read_model_config(workdir)
    net = UNetConfig(**meta["unet"])
    config = TrainConfig(**meta["train"])
    graphdef, _ = jax.eval_shape(lambda: init_unet(jax.random.key(0), net))
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    try:
        manager = _manager(workdir, which)
    except _Damaged as exc:
        raise IsojaxInputError(
            exc.message(_advice(workdir, exc, purpose="predict"))
        ) from exc.__cause__
    if manager.latest_step() is None:
        other = "last" if which == "best" else "best"
        try:
            other_empty = _manager(workdir, other).latest_step() is None
        except _Damaged:
            other_empty = False
        if other_empty:
            raise IsojaxInputError(
                f"{workdir}: the model folder holds no checkpoint; train it first."
            )
        # no silent fallback to the other checkpoint: it gives other results
        why = "it was removed" + (
            ", or training stopped before its first validation" if which == "best" else "")
        advice = _advice(workdir, None, purpose="predict", which=which)
        raise IsojaxInputError(
            f"{workdir / 'checkpoints' / which}: holds no checkpoint ({why}); {advice}."
        )
    step = manager.best_step() if which == "best" else None
    state = _restore(manager, net, config, step, purpose="predict")
    params = state.params
    c = net.out_channels

    @jax.jit
    def apply_fn(batch):
        return apply_unet(graphdef, params, batch[..., None])[..., :c][..., 0]

    return apply_fn, meta


# ----------------------------------------------------------------------------------------
# Data parallelism over the local devices


class _Placement(NamedTuple):
    """How the state and the batches are laid out over the devices of all processes."""

    place_state: Callable  # local state -> state replicated on every device
    place_batch: Callable  # this process's share of a batch -> the global, sharded batch
    local_batch_size: int  # patches this process synthesises per step
    process_index: int
    process_count: int


def _data_parallel(batch_size: int) -> _Placement:
    """Replicate the state and shard batches over the devices of every process.

    With one device nothing moves. With several (GPUs of one node, or CPU devices forced
    with ``JAX_NUM_CPU_DEVICES=N``) the state is replicated and each batch split over a 1D
    ``data`` mesh (:func:`jax.make_mesh`); the jitted step then runs data-parallel (XLA
    inserts the gradient all-reduce), with the same global batch and so the same loss
    trajectory as on one device, to float tolerance. With several processes
    (:mod:`isojax.distributed`) the mesh spans the devices of all hosts and each process
    synthesises only its share of the batch, which
    :func:`jax.make_array_from_process_local_data` assembles into the global batch.
    """
    n, nproc, rank = jax.device_count(), jax.process_count(), jax.process_index()
    if n == 1:
        same = lambda tree: tree  # noqa: E731
        return _Placement(same, same, batch_size, 0, 1)
    if batch_size % n:
        raise IsojaxInputError(
            f"the batch size ({batch_size}) must be a multiple of the number of devices ({n}"
            + (f" over {nproc} processes" if nproc > 1 else "")
            + ") to split it evenly; change --batch-size."
        )
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((n,), ("data",), (AxisType.Auto,))
    replicated = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec("data"))

    def place_state(tree):
        if nproc == 1:
            return jax.device_put(tree, replicated)
        # every process holds the same local values: assemble them as one replicated array
        # (device_put cannot target devices of other processes)
        def one(x):
            if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=_PRNG_IMPL)
            return jax.make_array_from_process_local_data(replicated, x)

        return jax.tree.map(one, tree)

    if nproc == 1:

        def place_batch(tree):
            return jax.device_put(tree, data)

    else:

        def place_batch(tree):
            return jax.tree.map(
                lambda x: jax.make_array_from_process_local_data(data, x), tree
            )

    return _Placement(place_state, place_batch, batch_size // nproc, rank, nproc)


# ----------------------------------------------------------------------------------------
# The loop


def _metric_records(lines: list[str]) -> list[tuple[str, dict]]:
    """The lines of ``metrics.jsonl`` with their records, up to the first cut line.

    A line cut by a kill (or anything after it) is not JSON: it and what follows are dropped.
    """
    records = []
    for line in lines:
        try:
            records.append((line, json.loads(line)))
        except json.JSONDecodeError:
            break
    return records


def _metrics_lines(path: Path, upto: int) -> None:
    """Keep only the metric lines of steps <= upto (after a resume).

    The file is replaced atomically (:func:`isojax.io.atomic_write`): a kill or a full disk
    during the rewrite leaves the old file whole, and the next resume trims it again.
    """
    from isojax.io import atomic_write

    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line, record in _metric_records(lines) if record.get("step", 0) <= upto]
    if kept == lines:
        return
    text = "".join(ln + "\n" for ln in kept)
    atomic_write(path, lambda temp: temp.write_text(text))


# Settings compared on resume, with the command-line flag that sets each (others are named
# by their place in config.json). train.steps is not among them: a larger --steps extends.
_FLAGS = {
    "train.batch_size": "--batch-size",
    "train.learning_rate": "--learning-rate",
    "train.loss": "--loss",
    "train.seed": "--seed",
    "train.checkpoint_every": "--checkpoint-every",
    "train.val_every": "--checkpoint-every",
    "train.compute_dtype": "--compute-dtype",
    "unet.first_filters": "--first-filters",
    "unet.prob_out": "--loss laplace",
    "synth.patch_size": "--patch-size",
    "synth.interpolation": "--interpolation",
    "synth.photons": "--photons (or the noise estimated from the stack)",
    "synth.read_noise": "--read-noise (or the noise estimated from the stack)",
    "synth.subsample": "--subsample",
    "subsample": "--subsample",
    "calibrate_psf": "--calibrate-psf",
    "calibration.family": "--family",
    "calibration.initial_fwhm_px": "the initial PSF width (--init-fwhm or the PSF source)",
    "calibration.pre_calibrated_fwhm_px": "the pre-calibrated PSF width (its initial guess)",
    "normalization.lo": "the stack's intensity range (normalization.lo)",
    "normalization.hi": "the stack's intensity range (normalization.hi)",
    "stack_shape": "the stack's shape",
}
_RESUME_KEYS = ("unet", "train", "synth", "subsample", "normalization", "stack_shape",
                "calibrate_psf", "calibration")


def _leaves(value, prefix: str) -> dict[str, Any]:
    value = json.loads(json.dumps(value, default=_json_default))
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return "none" if value is None else str(value)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def _resume_differences(old: dict, new: dict) -> list[str]:
    """``"--patch-size 64 here, 128 in the model"`` for each setting that differs."""
    found: list[str] = []
    for key in _RESUME_KEYS:
        if key == "calibration" and (key not in old or key not in new):
            continue  # folders from before the calibration settings were kept
        a, b = _leaves(new.get(key), key), _leaves(old.get(key), key)
        for name in sorted(set(a) | set(b)):
            if name == "train.steps":
                continue
            if not _same(a.get(name), b.get(name)):
                label = _FLAGS.get(name, name)
                line = f"{label} {_show(a.get(name))} here, {_show(b.get(name))} in the model"
                if line not in found:
                    found.append(line)
    return found


def _psf_difference(here: np.ndarray, folder_psf: np.ndarray) -> str | None:
    """What differs between this run's PSF and the model folder's, or None."""
    if here.shape != folder_psf.shape:
        return (f"the PSF: shape {here.shape} here, {folder_psf.shape} in the model's psf.tif "
                "(lateral, axial)")
    peak = float(np.max(np.abs(folder_psf))) or 1.0
    err = float(np.max(np.abs(here.astype(np.float64) - folder_psf)))
    if err > 1e-5 * peak:
        return f"the PSF: differs from the model's psf.tif by up to {100 * err / peak:.3g}% of its peak"
    return None


def _duration(seconds: float) -> str:
    """``"3 h 41 min"``, ``"12 min"``, ``"40 s"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    h, m = divmod(minutes, 60)
    return f"{h} h {m} min" if h else f"{m} min"


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _agree_on_stop(signum: int | None) -> int | None:
    """The signal any process received (so that all stop at the same step), or None."""
    if jax.process_count() == 1:
        return signum
    from jax.experimental import multihost_utils

    got = multihost_utils.process_allgather(np.int32(signum or 0))
    top = int(np.max(np.asarray(got)))
    return top or None


def _summary_from_metrics(path: Path, step: int) -> dict:
    lines = path.read_text().splitlines() if path.exists() else []
    records = [record for _, record in _metric_records(lines)]
    summary: dict[str, Any] = {"step": step, "loss": float("nan"), "best_val_loss": None,
                               "best_step": None, "steps_run": 0}
    done = [r for r in records if r.get("step", 0) <= step]
    if done:
        summary["loss"] = done[-1].get("loss", float("nan"))
    summary.update(_best_validation(done))
    return summary


def _best_validation(records: list[dict]) -> dict:
    """``best_val_loss`` and ``best_step`` of the metric records with the lowest validation
    loss, or {} when none has one."""
    vals = [r for r in records if "val_loss" in r]
    if not vals:
        return {}
    b = min(vals, key=lambda r: r["val_loss"])
    return {"best_val_loss": b["val_loss"], "best_step": b["step"]}


def train(
    stack,
    psf=None,
    *,
    workdir: str | os.PathLike,
    synth_config: synth.SynthConfig,
    config: TrainConfig,
    net: UNetConfig | None = None,
    spacing: tuple[float, float, float] | None = None,
    psf_pixel_size: float | None = None,
    percentiles: tuple[float, float] = (1.0, 99.8),
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    calibrate_psf: bool = False,
    calibration=None,
    match_noise: bool = True,
    log_every: float = 60.0,
) -> dict:
    """Train a restoration network on pairs synthesised from the stack's XY planes.

    With ``calibrate_psf=True`` the PSF is learned from the stack (:mod:`isojax.calibrate`):
    ``psf`` (or, if None, ``calibration.init_fwhm``) is only the initial guess; the
    spectral objective calibrates it before training, then every
    ``calibration.joint_every`` steps one Adam step refines it with the spectral term plus
    the consistency term (re-degrading the network's restorations of real axial patches
    must reproduce the observed samples). The supervised loss on synthesised pairs sends
    no gradient to the PSF. Pairs are synthesised with the current PSF. The PSF's
    parameters and their optimiser state are saved in every checkpoint with the network,
    so a resumed run repeats the (deterministic) pre-calibration and then continues the
    PSF's path exactly where it stopped.

    Noise. Real axial slices carry the detector's noise on every measured plane, while a
    blurred XY patch has lost most of its own; a network trained on clean-looking inputs
    amplifies the noise it meets at prediction. With ``match_noise`` (the default) and no
    noise set in ``synth_config``, a Poisson-Gaussian noise model is estimated from the
    normalised stack (:func:`isojax.synth.estimate_noise`) and added to the synthetic
    samples; the estimate is logged and stored with the synthesis settings.

    Args:
      stack: anisotropic stack ``(z, y, x)`` (raw intensities; normalised here with
        stack-level percentiles, stored in the model folder for prediction).
      psf: additional axial PSF, 2D ``(lateral, axial)`` at the lateral pixel size, or a
        :class:`~isojax.forward.FactoredPSF`.
      workdir: the model folder (created).
      synth_config: how pairs are synthesised (subsample factor, patch size, noise...).
      config: optimisation settings.
      net: network settings (CARE's defaults if None).
      spacing: voxel size ``(dz, dy, dx)`` of the stack in µm, stored for prediction.
      psf_pixel_size: pixel size of the PSF in µm, stored with it.
      percentiles: normalisation percentiles ``(pmin, pmax)``.
      resume: continue from the folder's last checkpoint. The settings must be the same
        (the message names each one that differs), and so must the PSF (compared with the
        folder's ``psf.tif``; with ``calibrate_psf``, the calibration settings and the
        pre-calibrated width). ``config.steps`` may be larger than the folder's: training
        then continues to the new total, on the schedule described in
        :func:`make_optimizer`; at or below the steps already done there is nothing to do
        and nothing is written. A folder without a model is refused; one with settings but
        no checkpoint yet starts from step 0.
      progress: show a progress bar on stderr; when stderr is not a terminal (a log file,
        SLURM, nohup) write a progress line instead every ``log_every`` seconds and at
        each validation.
      log: where to send one-line messages (default: stderr).
      calibrate_psf: learn the PSF jointly (see above); ``psf`` may then be None.
      calibration: a :class:`isojax.calibrate.CalibrationConfig` (family, initial width,
        weights); default ``CalibrationConfig()``.
      match_noise: estimate the stack's noise and add it to the synthetic inputs when
        ``synth_config`` sets none (see above).
      log_every: seconds between progress lines when stderr is not a terminal.

    After the first steps (the compilation excluded) one line estimates the time the run
    will take; on CPU, with more than 10 minutes to go, it adds a hint about faster settings.

    Signals. SIGINT (Ctrl-C) or SIGTERM (SLURM, Kubernetes) during the loop lets the
    current step finish, saves the ``last`` checkpoint and the metrics at that step, and
    raises :class:`isojax.interrupt.Interrupted` whose message says how to continue
    (``resume=True``); a second signal stops at once. In a multi-host job the processes
    agree on the signal after every step (a small all-gather), so all of them stop at the
    same step.

    Returns:
      A summary: final step, last training loss, best validation loss and its step, and
      ``steps_run``, the steps run by this call (0 when there was nothing to do).

    Raises:
      IsojaxInputError: bad stack, folder already holding a model without ``resume``,
        nothing to resume, or settings or a PSF that differ from the folder's on resume.
      TrainingDiverged: the loss became NaN or inf; the last good checkpoint is kept.
      isojax.interrupt.Interrupted: SIGINT or SIGTERM; a checkpoint was saved first.
    """
    from isojax import __version__, distributed
    from isojax.interrupt import Interrupted, deferred_signals
    from isojax.io import read_tiff, write_tiff
    from isojax.plot import save_loss_png

    main = distributed.is_main_process()  # only process 0 writes files and messages
    log = log or log_to_stderr
    if not main:
        log, progress = (lambda msg: None), False
    net = net or UNetConfig()
    workdir = Path(workdir).absolute()
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise IsojaxInputError(
            f"the stack must be 3D (z, y, x), got shape {stack.shape}; select one channel/time "
            "point first."
        )
    if not np.all(np.isfinite(stack)):
        raise IsojaxInputError("the stack holds NaN or inf values; clean it before training.")
    synth.check_contrast(stack, percentiles=percentiles)
    p = synth_config.patch_size
    if min(stack.shape[1:]) < p:
        raise IsojaxInputError(
            f"patch size {p} px is larger than the image ({stack.shape[1]} x {stack.shape[2]} "
            "px); use a smaller --patch-size."
        )
    if p % net.divisor:  # the one rule for the patch size (SynthConfig only needs p >= 1)
        lower = p // net.divisor * net.divisor
        choices = f"{lower} or {lower + net.divisor}" if lower else f"{net.divisor}"
        raise IsojaxInputError(
            f"patch size {p} px must be a multiple of {net.divisor} for a network of depth "
            f"{net.depth} (it halves the patch {net.depth} times): use --patch-size {choices}."
        )
    train_z, val_z = synth.split_slices(stack.shape[0], val_fraction=synth_config.val_fraction)
    joint = None
    if calibrate_psf and jax.process_count() > 1:
        raise IsojaxInputError(
            "PSF self-calibration is not available in multi-host training yet: calibrate on "
            "one host first (`isojax calibrate STACK -o AXIAL.tif`), then train on all hosts "
            "with --psf AXIAL.tif."
        )
    if calibrate_psf:
        joint = _start_calibration(stack, psf, synth_config, calibration, psf_pixel_size, log)
        psf = joint["psf"]
    elif psf is None:
        raise IsojaxInputError(
            "no PSF given: pass one (--psf, --bead or the theory options), or learn it from "
            "the stack with calibrate_psf=True (--calibrate-psf)."
        )

    normed, (lo, hi) = synth.normalize_percentile(
        jnp.asarray(stack, jnp.float32), pmin=percentiles[0], pmax=percentiles[1]
    )
    if match_noise and synth_config.photons is None and synth_config.read_noise == 0:
        photons, read_noise = synth.estimate_noise(normed)
        synth_config = dataclasses.replace(synth_config, photons=photons, read_noise=read_noise)
        log(
            "noise of the stack (normalised units): "
            + (f"{photons:.4g} photons per unit, " if photons is not None else "no shot noise, ")
            + f"read noise {read_noise:.3g}; added to the synthetic inputs"
        )
    psf_dense = np.asarray(psf.dense() if hasattr(psf, "dense") else psf, np.float32)
    meta = {
        "format": FORMAT,
        "isojax_version": __version__,
        "unet": dataclasses.asdict(net),
        "train": dataclasses.asdict(config),
        "synth": dataclasses.asdict(synth_config),
        "subsample": float(synth_config.subsample),
        "interpolation": synth_config.interpolation,
        "normalization": {  # lo, hi: read by the resume check (the same stack?)
            "pmin": float(percentiles[0]),
            "pmax": float(percentiles[1]),
            "lo": float(lo),
            "hi": float(hi),
        },
        "spacing": None if spacing is None else [float(v) for v in spacing],
        "psf": {"file": "psf.tif", "pixel_size": psf_pixel_size, "shape": list(psf_dense.shape)},
        "calibrate_psf": bool(calibrate_psf),
        "stack_shape": list(stack.shape),
        **({} if joint is None else {"calibration": _calibration_meta(joint)}),
        "train_planes": [int(train_z[0]), int(train_z[-1])],
        "val_planes": [int(val_z[0]), int(val_z[-1])],
    }

    existing = workdir / "config.json"
    if existing.exists() and not resume:
        raise IsojaxInputError(
            f"{workdir} already holds a model; pass --resume to continue it, or choose a new "
            "--model folder."
        )
    if resume and not existing.exists():
        raise IsojaxInputError(
            f"nothing to resume in {workdir}: it holds no model (no config.json); drop --resume "
            "to start a new training."
        )
    done_before = None  # the folder's last checkpoint step, on resume
    if resume:
        old = read_model_config(workdir)
        differences = _resume_differences(old, meta)
        if joint is None and not old.get("calibrate_psf"):
            psf_diff = _psf_difference(psf_dense, np.asarray(read_tiff(workdir / "psf.tif")[0]))
            if psf_diff is not None:
                differences.append(psf_diff)
        if differences:
            raise IsojaxInputError(
                f"cannot resume {workdir}: this run's settings differ from the model's: "
                + "; ".join(differences)
                + ". Use the same stack and options, or train into a new folder."
            )
        last, best = _managers(workdir)
        done_before = last.latest_step()
        last.close()
        best.close()
        if done_before is not None and done_before >= config.steps:
            log(f"model already trained for {done_before} steps; nothing to do (pass a larger "
                "--steps to continue)")
            return _summary_from_metrics(workdir / "metrics.jsonl", done_before)
        if done_before is None:
            log(f"{workdir} holds no checkpoint yet: starting from step 0")
    distributed.barrier("isojax-train-checked")  # every process checked before anyone writes
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        if not resume:  # on resume psf.tif is the same (checked), or the learned PSF
            write_tiff(workdir / "psf.tif", psf_dense, pixel_size=psf_pixel_size)
        write_model_config(workdir, meta)
    distributed.barrier("isojax-model-folder")

    graphdef, state = create_train_state(_new_key(config.seed), net, config)
    train_step = make_train_step(graphdef, net, config)
    eval_step = make_eval_step(graphdef, net, config)
    last, best = _managers(workdir)
    metrics_path = workdir / "metrics.jsonl"
    start = 0
    if joint is not None:
        _init_joint(joint, graphdef)
    if resume and last.latest_step() is not None:
        if joint is None:
            state = _restore(last, net, config)
        else:  # the PSF's parameters and optimiser resume too
            state, extra = _restore(last, net, config, extra_template=_joint_extra(joint))
            if extra is None:
                log("the checkpoint holds no PSF state: the PSF restarts from its calibration")
            else:
                psf = _set_joint(joint, extra)
        start = int(state.step)
        log(f"resuming {workdir} at step {start}")
    if main:
        _metrics_lines(metrics_path, start)
    placement = _data_parallel(config.batch_size)
    if placement.process_count > 1:
        log(f"data-parallel over {jax.device_count()} devices of {placement.process_count} "
            f"processes; {placement.local_batch_size} patches per process and step")
    elif jax.device_count() > 1:
        log(f"data-parallel over {jax.device_count()} devices")
    # the data key is the same on every process; a local copy (the state is donated) feeds
    # the pair synthesis
    data_key = jax.random.wrap_key_data(
        np.asarray(jax.random.key_data(state.key)), impl=_PRNG_IMPL
    )
    state = placement.place_state(state)

    stack_dev = jnp.asarray(normed)
    train_z_dev, val_z_dev = jnp.asarray(train_z), jnp.asarray(val_z)
    psf_dev = jax.tree.map(jnp.asarray, psf)

    def draw(key, z_indices):
        """This process's share of a batch, placed as the global batch."""
        if placement.process_count > 1:
            key = jax.random.fold_in(key, placement.process_index)
        return placement.place_batch(
            synth.make_pairs(key, stack_dev, psf_dev, synth_config,
                             batch_size=placement.local_batch_size, z_indices=z_indices)
        )

    val_key = _new_key(config.seed + 1)
    val_set = [draw(jax.random.fold_in(val_key, i), val_z_dev) for i in range(config.val_batches)]

    def validate(params):
        vals = [eval_step(params, b) for b in val_set]
        return {k: float(np.mean([float(v[k]) for v in vals])) for k in vals[0]}

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=config.steps,
            initial=start,
            desc="train",
            unit="step",
            file=sys.stderr,
            disable=None,
        )
    summary: dict[str, Any] = {"best_val_loss": None, "best_step": None}
    last_loss = float("nan")
    lines = progress and not _stderr_is_terminal()  # progress lines instead of the bar
    clock = {"steps": 0, "seconds": 0.0, "first": None, "line": time.perf_counter(),
             "estimated": False, "val": None}

    def remaining_time(done: int) -> str:
        if clock["first"] is None or done <= clock["first"][0]:
            return "steps/s not known yet"
        rate = (done - clock["first"][0]) / max(time.perf_counter() - clock["first"][1], 1e-9)
        return f"{rate:.3g} steps/s, about {_duration((config.steps - done) / rate)} left"

    def progress_line(done: int, loss: float) -> None:
        val = "" if clock["val"] is None else (
            f", val_loss {clock['val'][1]:.4g} (step {clock['val'][0]})")
        log(f"step {done}/{config.steps}: loss {loss:.4g}{val}, {remaining_time(done)}")
        sys.stderr.flush()
        clock["line"] = time.perf_counter()

    def estimate(done: int) -> None:
        """Log once the run's estimated time, from the steps after the first (compiled)."""
        per_step = clock["seconds"] / clock["steps"]
        left = (config.steps - done) * per_step
        backend = jax.default_backend()
        msg = (f"about {_duration(left)} for the {config.steps - done} steps left of "
               f"{config.steps} ({per_step:.3g} s/step on {backend})")
        if backend == "cpu" and left > 600:
            smaller = [f"{flag} {v}" for flag, v, now in (
                ("--patch-size", 64, synth_config.patch_size),
                ("--first-filters", 16, net.first_filters),
                ("--batch-size", 8, config.batch_size)) if now > v]
            msg += ("; on CPU, smaller settings are faster per step: " + " ".join(smaller)
                    + " (about 20x with CARE's defaults), or train on a GPU"
                    if smaller else "; a GPU is much faster")
        log(msg)
        clock["estimated"] = True

    try:
        with (metrics_path.open("a") if main else open(os.devnull, "w")) as mf, \
                deferred_signals() as stop:
            for step in range(start, config.steps):
                t_step = time.perf_counter()
                batch = draw(jax.random.fold_in(data_key, step), train_z_dev)
                new_state, m = train_step(state, batch)
                if joint is not None and (step + 1) % joint["config"].joint_every == 0:
                    psf_dev, psf_metrics = _refine_psf(joint, new_state, step, stack_dev)
                    m = {**m, **psf_metrics}
                loss = float(m["loss"])
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"the training loss became {loss} at step {step + 1}; training stopped and "
                        f"the last good checkpoint (step {last.latest_step()}) is kept in "
                        f"{workdir / 'checkpoints'}. Lower the learning rate (now "
                        f"{config.learning_rate:g}) or check the stack and PSF."
                    )
                state = new_state
                last_loss = loss
                if clock["first"] is None:  # the first step compiles: not timed
                    clock["first"] = (step + 1, time.perf_counter())
                else:
                    clock["steps"] += 1
                    clock["seconds"] += time.perf_counter() - t_step
                record = {"step": step + 1, "loss": loss, "grad_norm": float(m["grad_norm"])}
                record.update({k: float(v) for k, v in m.items() if k.startswith("psf_")})
                done = step + 1
                if done % config.val_every == 0 or done == config.steps:
                    v = validate(state.params)
                    record.update({f"val_{k}": val for k, val in v.items()})
                    clock["val"] = (done, v["loss"])
                    _save(best, state, metrics={"val_loss": v["loss"]}, extra=_joint_extra(joint))
                    if summary["best_val_loss"] is None or v["loss"] < summary["best_val_loss"]:
                        summary.update(best_val_loss=v["loss"], best_step=done)
                if done % config.checkpoint_every == 0 or done == config.steps:
                    _save(last, state, extra=_joint_extra(joint))
                mf.write(json.dumps(record) + "\n")
                mf.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                if not clock["estimated"] and done < config.steps and (
                    clock["steps"] >= 3 or clock["seconds"] >= 30
                ):
                    estimate(done)
                if lines and (
                    "val_loss" in record or time.perf_counter() - clock["line"] >= log_every
                ):
                    progress_line(done, loss)
                signum = _agree_on_stop(stop.signum)
                if signum is not None and done < config.steps:
                    if done % config.checkpoint_every:  # not saved above
                        _save(last, state, extra=_joint_extra(joint))
                    last.wait_until_finished()
                    raise Interrupted(
                        signum,
                        f"training stopped at step {done} of {config.steps}; checkpoint saved in "
                        f"{workdir / 'checkpoints'}; to continue, run the same command with "
                        "--resume",
                    )
    finally:
        if bar is not None:
            bar.close()
        last.wait_until_finished()
        best.wait_until_finished()
        last.close()
        best.close()
    summary.update(step=int(state.step), loss=last_loss, steps_run=int(state.step) - start)
    if not main:
        return summary
    records = [record for _, record in _metric_records(metrics_path.read_text().splitlines())]
    save_loss_png(workdir / "loss.png", records)
    if joint is not None:
        summary["psf"] = _finish_calibration(joint, records, workdir, psf_pixel_size)
    if summary["best_step"] is None:
        summary.update(_best_validation(records))
    return summary


# ----------------------------------------------------------------------------------------
# Joint PSF refinement (calibrate_psf=True)


def _start_calibration(stack, psf, synth_config, calibration, pixel_size, log) -> dict:
    """Spectral pre-calibration from the initial guess; returns the joint-refinement state."""
    from isojax import calibrate
    from isojax.psf import fwhm

    config = calibration or calibrate.CalibrationConfig()
    s = float(synth_config.subsample)
    if psf is not None:
        dense = np.asarray(psf.dense() if hasattr(psf, "dense") else psf, np.float64)
        if dense.ndim != 2:
            raise IsojaxInputError(f"the initial PSF must be 2D (lateral, axial), got {dense.shape}")
        init = fwhm(dense[dense.shape[0] // 2])
        how = "the given PSF"
    else:
        init = config.init_fwhm if config.init_fwhm is not None else s
        how = "--init-fwhm" if config.init_fwhm is not None else "the subsample factor"
    key = jax.random.key(0)
    # training's factor was chosen (and any override warned about) by the caller: the pixel
    # size only reports widths in micrometres, it checks nothing
    _, report = calibrate.fit_psf(
        key, stack, subsample=s, family=config.family, init_fwhm=float(init),
        steps=config.steps, n_lobes=config.n_lobes, smoothness=config.smoothness,
        max_lines=config.max_lines, pixel_size=pixel_size,
    )
    log(f"PSF self-calibration ({config.family}) from FWHM {init:.3g} px ({how}): axial FWHM "
        f"{report.fwhm_px:.3g} px, sigma {report.sigma_px:.3g} px, objective {report.loss:.3g} "
        f"in {report.seconds:.1f} s")
    for w in report.warnings:
        log(f"warning: {w}")
    target, segment = calibrate.prepare_spectra(key, stack, subsample=s,
                                                max_lines=config.max_lines)
    return {"config": config, "report": report, "target": target, "segment": segment,
            "psf": report.psf(), "synth": synth_config, "theta": None, "opt": None,
            "step_fn": None, "init_fwhm_px": float(init)}


def _calibration_meta(joint) -> dict:
    """The calibration settings and their deterministic start, kept to check a resume."""
    return {**dataclasses.asdict(joint["config"]), "initial_fwhm_px": joint["init_fwhm_px"],
            "pre_calibrated_fwhm_px": float(joint["report"].fwhm_px)}


def _init_joint(joint, graphdef) -> None:
    """Compile the joint PSF step and set its starting parameters and optimiser state."""
    from isojax import calibrate

    def apply_fn(params, images):
        return apply_unet(graphdef, params, images[..., None])[..., 0]

    joint["step_fn"], joint["theta"], joint["opt"] = calibrate.make_joint_psf_step(
        apply_fn, joint["report"], joint["target"], segment=joint["segment"],
        config=joint["config"],
    )


def _joint_extra(joint):
    """What a checkpoint keeps of the joint refinement (None without one)."""
    return None if joint is None else {"theta": joint["theta"], "opt": joint["opt"]}


def _set_joint(joint, extra):
    """Resume the joint refinement from a checkpoint's ``extra``; returns the PSF."""

    joint["theta"], joint["opt"] = extra["theta"], extra["opt"]
    return _joint_psf(joint)


def _joint_psf(joint):
    """The PSF of the joint refinement's current parameters (also kept as ``joint["psf"]``)."""
    from isojax import calibrate

    report = joint["report"]
    joint["psf"] = calibrate.psf_from_params(report.family, joint["theta"]["psf"], taps=report.taps)
    return joint["psf"]


def _refine_psf(joint, state, step, stack_dev):
    """One joint PSF step; returns the new PSF (for pair synthesis) and its metrics."""
    from isojax import calibrate

    synth_config = joint["synth"]
    p = synth_config.patch_size
    batch = calibrate.axial_patches(
        jax.random.fold_in(jax.random.key(1), step), stack_dev,
        subsample=synth_config.subsample, patch_size=p, batch_size=4,
        interpolation=synth_config.interpolation,
    )
    joint["theta"], joint["opt"], metrics = joint["step_fn"](
        joint["theta"], joint["opt"], state.params, batch
    )
    return _joint_psf(joint), metrics


def _finish_calibration(joint, records, workdir: Path, pixel_size) -> dict:
    """Write the final PSF (psf.tif) and psf_trajectory.json; return a summary."""
    from isojax.io import write_tiff
    from isojax.psf import fwhm

    report = joint["report"]
    dense = np.asarray(joint["psf"].dense(), np.float32)
    write_tiff(workdir / "psf.tif", dense, pixel_size=pixel_size)
    final_fwhm = float(fwhm(dense[dense.shape[0] // 2].astype(np.float64)))
    joint_path = [
        {k: r[k] for k in ("step", "psf_sigma_px", "psf_spectral_loss", "psf_consistency")}
        for r in records if "psf_sigma_px" in r
    ]
    out = {
        "calibration": report.to_json(),
        "joint": joint_path,
        "final": {"fwhm_px": final_fwhm,
                  "fwhm_um": None if pixel_size is None else final_fwhm * pixel_size,
                  "shape": list(dense.shape)},
    }
    path = workdir / "psf_trajectory.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return out["final"]
