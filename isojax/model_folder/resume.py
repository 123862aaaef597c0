"""Resuming a model folder: the folder must hold a model, with the same settings and PSF.

:func:`check_resume` is the one gate: a new training refuses a folder that holds a model, a
resume refuses a folder without one, and one whose settings (:func:`resume_differences`,
each named by its command-line flag) or PSF (:func:`psf_difference`) differ from this run's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from isojax.errors import IsojaxInputError
from isojax.io import check_outputs, read_tiff
from isojax.model_folder.checkpoints import open_managers
from isojax.model_folder.schema import json_default, read_model_config

__all__ = [
    "check_model_folder",
    "check_resume",
    "psf_difference",
    "resume_differences",
    "warmup_steps",
]

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
    "unet.arch": "--arch",
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
    "calibration.smoothness": ("the shape penalty's weight of the free-form PSF families "
                               "(isojax's default; folders from before it changed cannot "
                               "resume: start a new model folder)"),
    "normalization.lo": "the stack's intensity range (normalization.lo)",
    "normalization.hi": "the stack's intensity range (normalization.hi)",
    "stack_shape": "the stack's shape",
}
_RESUME_KEYS = ("unet", "train", "synth", "subsample", "normalization", "stack_shape",
                "calibrate_psf", "calibration")
#: Calibration settings that only shape families other than the Gaussian use: not compared
#: when both runs fit a Gaussian (the default), so that a folder written before a default
#: of theirs changed still resumes.
_SHAPE_ONLY = ("calibration.smoothness", "calibration.n_lobes")


def _gaussian_calibration(config: dict) -> bool:
    cal = config.get("calibration")
    return isinstance(cal, dict) and cal.get("family", "gaussian") == "gaussian"


def _leaves(value, prefix: str) -> dict[str, Any]:
    value = json.loads(json.dumps(value, default=json_default))
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


def resume_differences(old: dict, new: dict) -> list[str]:
    """``"--patch-size 64 here, 128 in the model"`` for each setting that differs.

    Args:
      old: the model folder's ``config.json``.
      new: this run's settings, in the same layout.

    Returns:
      One line per differing setting (none for ``train.steps``: a larger one extends).
    """
    found: list[str] = []
    for key in _RESUME_KEYS:
        if key == "calibration" and (key not in old or key not in new):
            continue  # folders from before the calibration settings were kept
        a, b = _leaves(new.get(key), key), _leaves(old.get(key), key)
        gaussian = _gaussian_calibration(old) and _gaussian_calibration(new)
        for name in sorted(set(a) | set(b)):
            if name == "train.steps" or (gaussian and name in _SHAPE_ONLY):
                continue
            if not _same(a.get(name), b.get(name)):
                label = _FLAGS.get(name, name)
                line = f"{label} {_show(a.get(name))} here, {_show(b.get(name))} in the model"
                if line not in found:
                    found.append(line)
    return found


def psf_difference(here: np.ndarray, folder_psf: np.ndarray) -> str | None:
    """What differs between this run's PSF and the model folder's, or None.

    Args:
      here: this run's 2D PSF ``(lateral, axial)``.
      folder_psf: the folder's ``psf.tif``.

    Returns:
      One line saying what differs (shape, or the largest difference in % of the peak),
      or None when they agree to 1e-5 of the peak.
    """
    if here.shape != folder_psf.shape:
        return (f"the PSF: shape {here.shape} here, {folder_psf.shape} in the model's psf.tif "
                "(lateral, axial)")
    peak = float(np.max(np.abs(folder_psf))) or 1.0
    err = float(np.max(np.abs(here.astype(np.float64) - folder_psf)))
    if err > 1e-5 * peak:
        return f"the PSF: differs from the model's psf.tif by up to {100 * err / peak:.3g}% of its peak"
    return None


def check_resume(workdir: Path, meta: dict, psf: np.ndarray, *, resume: bool,
                 compare_psf: bool) -> int | None:
    """Check that training may write into ``workdir``; on resume, that it continues the model.

    Args:
      workdir: the model folder.
      meta: this run's ``config.json`` (:func:`isojax.train.train` builds it).
      psf: this run's 2D PSF ``(lateral, axial)``.
      resume: whether the run continues the folder's training.
      compare_psf: compare ``psf`` with the folder's ``psf.tif`` (not when the PSF is
        learned: there ``psf.tif`` holds the learned one).

    Returns:
      On resume, the folder's last checkpoint step (None when it holds none yet); None for
      a new training.

    Raises:
      IsojaxInputError: the folder holds a model and ``resume`` is False; it holds none and
        ``resume`` is True; or on resume its settings or PSF differ (each one named).
    """
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
    if not resume:
        return None
    old = read_model_config(workdir)
    differences = resume_differences(old, meta)
    if compare_psf and not old.get("calibrate_psf"):
        psf_diff = psf_difference(psf, np.asarray(read_tiff(workdir / "psf.tif")[0]))
        if psf_diff is not None:
            differences.append(psf_diff)
    if differences:
        raise IsojaxInputError(
            f"cannot resume {workdir}: this run's settings differ from the model's: "
            + "; ".join(differences)
            + ". Use the same stack and options, or train into a new folder."
        )
    last, best = open_managers(workdir)
    done_before = last.latest_step()
    last.close()
    best.close()
    return done_before


def warmup_steps(model, *, steps: int, resume: bool) -> int:
    """The learning-rate warm-up of a training: a tenth of the steps (at most 100), or on
    resume the folder's own.

    The warm-up is part of the run's schedule, so an extended run keeps the folder's.

    Args:
      model: the model folder to be written or resumed.
      steps: the training's total steps.
      resume: whether the folder's training is continued.

    Returns:
      The warm-up length in steps.
    """
    if resume and (Path(model) / "config.json").exists():
        kept = read_model_config(model).get("train", {}).get("warmup_steps")
        if isinstance(kept, int) and not isinstance(kept, bool) and kept >= 0:
            return kept
    return min(100, steps // 10)


def check_model_folder(model, *, inputs: dict) -> None:
    """Refuse a ``--model`` folder that is, holds or lies inside an input, or is not a model.

    An existing model (``config.json`` or ``channels.json``) is left to
    :func:`isojax.train.train` and :func:`check_resume` (``resume``); an empty or missing
    folder is fine.

    Args:
      model: the model folder training is to write.
      inputs: ``{what: path}`` of the training's inputs (stack, PSF, bead), never to be
        written over (:func:`isojax.io.check_outputs`).

    Raises:
      IsojaxInputError: ``model`` is an input, holds one or lies inside one; is a file; or
        is a folder of other files without an isojax model.
    """
    model = Path(model)
    check_outputs([model], inputs=inputs, overwrite=True)
    if model.exists() and not model.is_dir():
        raise IsojaxInputError(
            f"{model} is a file, not a model folder: choose a new folder for --model")
    held = any((model / name).exists() for name in ("config.json", "channels.json"))
    if model.is_dir() and not held and any(model.iterdir()):
        raise IsojaxInputError(
            f"{model} holds other files and no isojax model (no config.json): choose a new or "
            "empty folder for --model; isojax writes config.json, psf.tif, metrics and "
            "checkpoints there")
