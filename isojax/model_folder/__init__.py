"""The model folder: everything prediction needs, written by training, read long after.

A folder written by :func:`isojax.train.train` holds:

* ``config.json``: human-readable network, training and synthesis settings, the
  subsample factor, the normalisation, voxel sizes and the isojax version
  (:mod:`~isojax.model_folder.schema`: :func:`write_model_config`,
  :func:`read_model_config`, :func:`check_config`). Of the normalisation, prediction reads
  the percentiles ``pmin``/``pmax`` (and recomputes the bounds on its own stack, as CARE
  does); the training stack's bounds ``lo``/``hi`` are read by ``resume`` to refuse
  another stack of the same shape;
* ``psf.tif``: the additional axial PSF used to synthesise training pairs
  (:func:`check_psf_file`);
* ``checkpoints/last`` and ``checkpoints/best`` (orbax;
  :mod:`~isojax.model_folder.checkpoints`: :func:`open_managers`, :func:`save_state`,
  :func:`restore_state`, :func:`load_model`; damaged steps are described by
  :mod:`~isojax.model_folder.damage`);
* ``metrics.jsonl`` (:mod:`~isojax.model_folder.metrics`) and ``loss.png``;
* with ``calibrate_psf=True``, ``psf_trajectory.json``: the spectral pre-calibration and
  the PSF's path during joint refinement (``psf.tif`` then holds the final PSF).

A multi-channel folder (``isojax train`` of a stack with channels) holds ``channels.json``
and one such folder per channel, ``c<index>/`` (:mod:`~isojax.model_folder.channels`:
:func:`channel_models` lists the models of either layout).

Resuming a folder is gated by :func:`check_resume` (:mod:`~isojax.model_folder.resume`).

Layering: this package sits between training's pure core (:mod:`isojax.train.config`,
:mod:`isojax.train.steps`, which it stores and rebuilds) and the training loop
(:mod:`isojax.train.loop`, which writes it); prediction imports :func:`load_model` from here.
"""

from __future__ import annotations

from isojax.model_folder.channels import (
    CHANNELS_FILE,
    channel_models,
    describe_channels,
    is_multichannel,
    read_channels_file,
    write_channels_file,
)
from isojax.model_folder.checkpoints import load_model, open_managers, restore_state, save_state
from isojax.model_folder.damage import damaged_step, describe_damage, quiet_abandoned_reads
from isojax.model_folder.metrics import (
    best_validation,
    metric_records,
    read_metrics,
    summary_from_metrics,
    trim_metrics,
)
from isojax.model_folder.resume import (
    check_model_folder,
    check_resume,
    psf_difference,
    resume_differences,
    warmup_steps,
)
from isojax.model_folder.schema import (
    FORMAT,
    check_config,
    check_psf_file,
    json_default,
    read_model_config,
    write_json,
    write_model_config,
)

__all__ = [
    "CHANNELS_FILE",
    "FORMAT",
    "best_validation",
    "channel_models",
    "check_config",
    "check_model_folder",
    "check_psf_file",
    "check_resume",
    "damaged_step",
    "describe_channels",
    "describe_damage",
    "is_multichannel",
    "json_default",
    "load_model",
    "metric_records",
    "open_managers",
    "psf_difference",
    "quiet_abandoned_reads",
    "read_channels_file",
    "read_metrics",
    "read_model_config",
    "restore_state",
    "resume_differences",
    "save_state",
    "summary_from_metrics",
    "trim_metrics",
    "warmup_steps",
    "write_channels_file",
    "write_json",
    "write_model_config",
]
