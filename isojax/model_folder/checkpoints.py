"""A model folder's checkpoints: orbax managers, saving and restoring the state, ``load_model``.

``checkpoints/last`` keeps the two newest steps, ``checkpoints/best`` the step with the
lowest validation loss. Each holds the :class:`~isojax.train.steps.TrainState` as a flat
dict of arrays (orbax's ``StandardCheckpointHandler`` sees plain pytrees), and with the
joint PSF refinement its parameters and optimiser state under the ``psf_`` prefix.

orbax writes each step to a temporary folder and renames it when complete, so a killed
run leaves whole steps. A step damaged later (a full disk, a copy cut short) is reported
at one boundary (:func:`_read_step`) as one line that names the damaged file and which
other checkpoint is intact (:func:`_advice`); nothing falls back to another checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from isojax.errors import IsojaxInputError
from isojax.model_folder.damage import damaged_step, describe_damage, quiet_abandoned_reads
from isojax.model_folder.schema import read_model_config
from isojax.train.config import TrainConfig
from isojax.train.steps import PRNG_IMPL, TrainState, init_state, new_key
from isojax.unet import UNetConfig, apply_unet, init_unet

__all__ = ["load_model", "open_managers", "restore_state", "save_state"]


def _keyless(state: TrainState) -> TrainState:
    """The state with its PRNG key as raw data, as checkpoints hold it."""
    return state._replace(key=jax.random.key_data(state.key))


def _flat(tree) -> dict[str, Any]:
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def open_managers(workdir: Path):
    """The ``last`` and ``best`` checkpoint managers of a model folder (created if needed).

    Args:
      workdir: the model folder.

    Returns:
      ``(last, best)``, two ``orbax.checkpoint.CheckpointManager``; close them when done.

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
    """All arrays of one checkpoint step, as saved by :func:`save_state`.

    Raises:
      _Damaged: a file of the step is missing, cut short or corrupt (what orbax, tensorstore
        and ``json`` raise for damaged files, chained).
    """
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


def _intact(workdir: Path, name: Literal["last", "best"]) -> tuple[list[int], list[int]]:
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
        other: Literal["last", "best"] = "last" if which == "best" else "best"
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


def save_state(manager, state: TrainState, *, metrics=None, extra=None) -> None:
    """Save the state at its step, and ``extra`` (the joint PSF state) if given.

    Args:
      manager: ``last`` or ``best`` (:func:`open_managers`).
      state: the training state.
      metrics: for ``best``, ``{"val_loss": ...}`` (it keeps the lowest).
      extra: a pytree of arrays saved with the state (the joint PSF refinement's
        parameters and optimiser state), or None.
    """
    items = _flat(_keyless(state))
    if extra is not None:
        items.update({_EXTRA + k: v for k, v in _flat(extra).items()})
    manager.save(int(state.step), args=ocp.args.StandardSave(items), metrics=metrics)


def restore_state(manager, net: UNetConfig, config: TrainConfig, *, step: int | None = None,
                  extra_template=None, purpose: Literal["resume", "predict"] = "resume"):
    """Read a checkpoint onto this process's first local device (placed later if needed).

    Args:
      manager: ``last`` or ``best`` (:func:`open_managers`).
      net: the network the checkpoint was written for.
      config: its optimisation settings (they shape the optimiser state).
      step: the step to read; None for the newest.
      extra_template: a pytree like the ``extra`` given to :func:`save_state`, or None.
      purpose: what the message about a damaged checkpoint advises for.

    Returns:
      The :class:`~isojax.train.steps.TrainState`; with ``extra_template``,
      ``(state, extra)``, ``extra`` None if the checkpoint has none.

    Raises:
      IsojaxInputError: the checkpoint is damaged, or was written with other settings (its
        network or optimiser, or, with ``extra_template``, PSF state of another shape); the
        message names the step folder and the other checkpoints that are intact, with what
        to do for ``purpose`` (resuming or predicting).
    """
    step = manager.latest_step() if step is None else step
    # one abstract evaluation gives both the tree to rebuild and the leaves to expect
    template = jax.eval_shape(lambda: _keyless(init_state(new_key(0), net, config)))
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
        flat = _read_step(manager, step, sharding)
    except _Damaged as exc:
        workdir = Path(str(manager.directory)).parent.parent
        advice = _advice(workdir, exc, purpose=purpose)
        raise IsojaxInputError(exc.message(advice)) from exc.__cause__
    names = sorted(k for k in flat if not k.startswith(_EXTRA))
    treedef = jax.tree.structure(template)
    n_leaves = len(jax.tree.leaves(template))
    if len(names) != n_leaves:
        raise IsojaxInputError(
            f"checkpoint {step} in {manager.directory} holds {len(names)} arrays where this "
            f"network and optimiser need {n_leaves}; it was written with other "
            "settings. Train into a new folder."
        )
    state = jax.tree.unflatten(treedef, [flat[k] for k in names])
    state = state._replace(key=jax.random.wrap_key_data(state.key, impl=PRNG_IMPL))
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



def load_model(workdir: str | os.PathLike, *, which: Literal["best", "last"] = "best",
               precision: Literal["float32", "bf16"] = "float32"):
    """Load a trained model for prediction.

    Args:
      workdir: the model folder written by :func:`isojax.train.train`.
      which: ``"best"`` (lowest validation loss; the default) or ``"last"``. A folder
        without that checkpoint, or with that checkpoint damaged, is refused (the message
        says which other checkpoint is intact); nothing falls back to the other one.
      precision: ``"float32"``, or ``"bf16"``: the network computes in bfloat16 from the
        float32 weights (:func:`isojax.unet.apply_unet`'s ``compute_dtype``); the input,
        the residual and the output stay float32.

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
    if precision not in ("float32", "bf16"):
        raise ValueError(f"precision must be 'float32' or 'bf16', got {precision!r}")
    dtype = jnp.bfloat16 if precision == "bf16" else None
    try:
        manager = _manager(workdir, which)
    except _Damaged as exc:
        raise IsojaxInputError(
            exc.message(_advice(workdir, exc, purpose="predict"))
        ) from exc.__cause__
    if manager.latest_step() is None:
        other: Literal["last", "best"] = "last" if which == "best" else "best"
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
    state = restore_state(manager, net, config, step=step, purpose="predict")
    params = state.params
    c = net.out_channels

    @jax.jit
    def apply_fn(batch):
        return apply_unet(graphdef, params, batch[..., None],
                          compute_dtype=dtype)[..., :c][..., 0]

    return apply_fn, meta

