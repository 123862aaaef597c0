"""Training: pure configs, state and steps; the loop; the model folder it writes.

In the shape of the Flax examples:

* :mod:`isojax.train.config`: :class:`TrainConfig`, frozen and checked on construction;
* :mod:`isojax.train.steps`: :class:`TrainState`, :func:`create_train_state`,
  :func:`make_optimizer`, :func:`loss_fn`, and the pure, jitted
  ``train_step(state, batch) -> (state, metrics)`` (:func:`make_train_step`) and
  ``eval_step`` (:func:`make_eval_step`);
* :mod:`isojax.train.joint`: the joint PSF refinement (``calibrate_psf=True``) as an
  optax-style ``init``/``update`` pair over a NamedTuple state;
* :mod:`isojax.train.loop`: :func:`train`, which owns everything stateful (checkpoints,
  metrics, the progress report: :mod:`isojax.train.progress`; the data placement:
  :mod:`isojax.train.parallel`).

The model folder (``config.json``, ``psf.tif``, checkpoints, ``metrics.jsonl``) and
:func:`load_model` live in :mod:`isojax.model_folder`; :func:`load_model`,
:func:`read_model_config`, :func:`write_model_config` and ``FORMAT`` are re-exported here.

Imports point down: ``loop -> joint -> model_folder -> steps -> config``. The pure core
(config, steps) is imported eagerly; the loop and the model-folder names load on first
access (PEP 562), so that :mod:`isojax.model_folder` can import the core without
importing the loop that imports it.
"""

from __future__ import annotations

import importlib

from isojax.train.config import TrainConfig
from isojax.train.steps import (
    PRNG_IMPL,
    TrainState,
    create_train_state,
    init_state,
    loss_fn,
    make_eval_step,
    make_optimizer,
    make_train_step,
    new_key,
)
from isojax.train.steps import _compute_dtype as _compute_dtype

__all__ = [
    "FORMAT",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "create_train_state",
    "load_model",
    "loss_fn",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "read_model_config",
    "train",
    "write_model_config",
]

# the private names of the former isojax/train.py that tests and scripts use
_new_key = new_key
_init_state = init_state
_PRNG_IMPL = PRNG_IMPL

# name -> (module, name there), loaded on first access
_LAZY = {
    "train": ("isojax.train.loop", "train"),
    "TrainingDiverged": ("isojax.train.loop", "TrainingDiverged"),
    "FORMAT": ("isojax.model_folder", "FORMAT"),
    "load_model": ("isojax.model_folder", "load_model"),
    "read_model_config": ("isojax.model_folder", "read_model_config"),
    "write_model_config": ("isojax.model_folder", "write_model_config"),
    "_managers": ("isojax.model_folder", "open_managers"),
    "_save": ("isojax.model_folder", "save_state"),
    "_restore": ("isojax.model_folder", "restore_state"),
    "_metrics_lines": ("isojax.model_folder", "trim_metrics"),
    "_resume_differences": ("isojax.model_folder", "resume_differences"),
    "_psf_difference": ("isojax.model_folder", "psf_difference"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'isojax.train' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
