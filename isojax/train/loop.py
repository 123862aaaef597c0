"""The training loop: set-up and resume, the steps, validation and checkpoints, the finish.

:func:`train` owns everything stateful (checkpoints, metrics files, the progress report,
the model folder, :mod:`isojax.model_folder`); the steps themselves are pure
(:mod:`isojax.train.steps`).

Exact resume. Everything a step depends on is in the :class:`~isojax.train.steps.TrainState`:
the weights, the optimiser state, the step number and the data key. The batch of step ``t``
is drawn with ``fold_in(data_key, t)``, so it does not depend on how many times training
was interrupted. A run killed at any moment (even ``SIGKILL`` in the middle of a checkpoint
write: orbax writes to a temporary folder and renames it when complete) and restarted with
``resume=True`` gives the same weights as an uninterrupted run with the same seed.

The phases, one function each: :func:`_check_stack` and :func:`_prepare` (the stack, the
PSF or its pre-calibration, the noise, the folder's ``config.json``), the folder check
(:func:`isojax.model_folder.check_resume`), :func:`_set_up_and_run` (state, steps,
checkpoints, :func:`_resume`, data placement), :func:`_run_steps` with
:func:`_validate_and_save` and :func:`_stop_if_signalled`, and :func:`_finish`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from isojax import __version__, distributed, synth
from isojax.errors import IsojaxInputError, log_to_stderr, log_warnings
from isojax.forward import FactoredPSF
from isojax.interrupt import Interrupted, deferred_signals
from isojax.io import write_tiff
from isojax.model_folder import (
    FORMAT,
    best_validation,
    check_resume,
    open_managers,
    read_metrics,
    restore_state,
    save_state,
    summary_from_metrics,
    trim_metrics,
    write_model_config,
)
from isojax.plot import save_loss_png
from isojax.psf import AxialPSF
from isojax.synth import SynthConfig
from isojax.train.config import TrainConfig
from isojax.train.joint import (
    Calibration,
    JointRefinement,
    JointState,
    calibration_meta,
    checkpoint_extra,
    finish_calibration,
    joint_refinement,
    pre_calibrate,
)
from isojax.train.parallel import agree_on_stop, data_parallel
from isojax.train.progress import Progress
from isojax.train.steps import (
    PRNG_IMPL,
    create_train_state,
    make_eval_step,
    make_train_step,
    new_key,
)
from isojax.unet import UNetConfig

__all__ = ["TrainingDiverged", "train"]

Array = jax.Array


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class _Run(NamedTuple):
    """One call's options, grouped once (the synthesis settings with the noise estimate)."""

    workdir: Path
    config: TrainConfig
    net: UNetConfig
    synth: SynthConfig
    psf_pixel_size: float | None
    main: bool  # only process 0 writes files and messages
    log: Callable[[str], None]
    progress: bool
    log_every: float
    should_stop: Callable[[], bool] | None = None  # the caller's stop request (train())


class _Prepared(NamedTuple):
    """What the set-up computes from the stack and the PSF before the folder is touched."""

    normed: Array  # the stack normalised with its percentiles (z, y, x)
    train_z: np.ndarray  # planes pairs are drawn from
    val_z: np.ndarray  # planes of the validation batches
    psf: AxialPSF  # the PSF pairs are synthesised with (checked once, at train()'s entry)
    calibration: Calibration | None  # with calibrate_psf: the pre-calibration
    meta: dict  # config.json


class _Loop(NamedTuple):
    """What the step loop works with; fixed for the run."""

    run: _Run
    train_step: Callable
    validate: Callable  # params -> mean validation metrics
    draw: Callable  # (key, z_indices, psf) -> placed batch
    data_key: Array
    train_z: Array
    stack: Array
    joint: JointRefinement | None
    last: Any  # checkpoint managers
    best: Any
    progress: Progress


def train(
    stack,
    psf: AxialPSF | FactoredPSF | np.ndarray | None = None,
    *,
    workdir: str | os.PathLike,
    synth_config: SynthConfig,
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
    should_stop: Callable[[], bool] | None = None,
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
      psf: additional axial PSF at the lateral pixel size: an
        :class:`~isojax.psf.AxialPSF` (checked already, used as it is), or a 2D
        ``(lateral, axial)`` array or :class:`~isojax.forward.FactoredPSF`, checked here
        once (:meth:`AxialPSF.checked <isojax.psf.AxialPSF.checked>`, with
        ``psf_pixel_size``).
      workdir: the model folder (created).
      synth_config: how pairs are synthesised (subsample factor, patch size, noise...).
      config: optimisation settings.
      net: network settings (CARE's defaults if None).
      spacing: voxel size ``(dz, dy, dx)`` of the stack in µm, stored for prediction.
      psf_pixel_size: pixel size of the PSF in µm, stored with it (default: the
        :class:`~isojax.psf.AxialPSF`'s; with ``calibrate_psf``, reports widths in µm).
      percentiles: normalisation percentiles ``(pmin, pmax)``.
      resume: continue from the folder's last checkpoint. The settings must be the same
        (the message names each one that differs), and so must the PSF (compared with the
        folder's ``psf.tif``; with ``calibrate_psf``, the calibration settings and the
        pre-calibrated width). ``config.steps`` may be larger than the folder's: training
        then continues to the new total, on the schedule described in
        :func:`~isojax.train.steps.make_optimizer`; at or below the steps already done there is nothing to do
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
      should_stop: called after every step, from the thread that trains; True stops the
        run as SIGINT does (see *Signals*). For callers training outside the main thread,
        where no signal handler can be installed (e.g. a GUI's cancel button).

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
      IsojaxInputError: bad stack or PSF (:func:`isojax.psf.check_psf`), a
        ``psf_pixel_size`` that is not the :class:`~isojax.psf.AxialPSF`'s, folder already
        holding a model without ``resume``, nothing to resume, or settings or a PSF that
        differ from the folder's on resume.
      TrainingDiverged: the loss became NaN or inf; the last good checkpoint is kept.
      isojax.interrupt.Interrupted: SIGINT or SIGTERM; a checkpoint was saved first.
    """
    # Long only by its docstring (the public contract: resume, noise, signals); the body is
    # the set-up order and delegates each phase to one function.
    main = distributed.is_main_process()  # only process 0 writes files and messages
    log = log or log_to_stderr
    if not main:
        log, progress = (lambda msg: None), False
    net = net or UNetConfig()
    workdir = Path(workdir).absolute()
    psf, psf_pixel_size = _checked_psf(psf, psf_pixel_size, log=log)
    stack = _check_stack(stack, patch_size=synth_config.patch_size, net=net,
                         percentiles=percentiles)
    prep, synth_config = _prepare(
        stack, psf, synth_config=synth_config, config=config, net=net, spacing=spacing,
        psf_pixel_size=psf_pixel_size, percentiles=percentiles, calibrate_psf=calibrate_psf,
        calibration=calibration, match_noise=match_noise, log=log,
    )
    run = _Run(workdir, config, net, synth_config, psf_pixel_size, main, log, progress,
               log_every, should_stop)
    done_before = check_resume(workdir, prep.meta, prep.psf.dense(), resume=resume,
                               compare_psf=prep.calibration is None)
    if resume:
        if done_before is not None and done_before >= config.steps:
            log(f"model already trained for {done_before} steps; nothing to do (pass a larger "
                "--steps to continue)")
            return summary_from_metrics(workdir / "metrics.jsonl", done_before)
        if done_before is None:
            log(f"{workdir} holds no checkpoint yet: starting from step 0")
    distributed.barrier("isojax-train-checked")  # every process checked before anyone writes
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        if not resume:  # on resume psf.tif is the same (checked), or the learned PSF
            write_tiff(workdir / "psf.tif", prep.psf.dense(), pixel_size=psf_pixel_size)
        write_model_config(workdir, prep.meta)
    distributed.barrier("isojax-model-folder")
    return _set_up_and_run(run, prep, resume=resume)


def _checked_psf(psf, pixel_size: float | None, *,
                 log: Callable[[str], None]) -> tuple[AxialPSF | None, float | None]:
    """The PSF as an :class:`~isojax.psf.AxialPSF` (checked here unless it is one already)
    and the pixel size it is stored with. The check's warnings go to ``log``, as
    :func:`isojax.psf.resolve_psf` sends them.

    Raises:
      IsojaxInputError: what :func:`isojax.psf.check_psf` refuses; a ``pixel_size`` that is
        not the :class:`~isojax.psf.AxialPSF`'s.
    """
    if psf is None:
        return None, pixel_size
    if not isinstance(psf, AxialPSF):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            checked = AxialPSF.checked(psf, pixel_size=pixel_size, provenance="train(psf=...)")
        log_warnings(log, caught)
        return checked, pixel_size
    if pixel_size is None:
        return psf, psf.pixel_size
    if psf.pixel_size is not None and not math.isclose(psf.pixel_size, pixel_size, rel_tol=1e-6):
        raise IsojaxInputError(
            f"psf_pixel_size {pixel_size:g} um is not the PSF's pixel size "
            f"({psf.pixel_size:g} um, {psf.provenance}): pass one or the other, not both.")
    return psf, pixel_size


def _check_stack(stack, *, patch_size: int, net: UNetConfig,
                 percentiles: tuple[float, float]) -> np.ndarray:
    """The stack as an array, checked for training; and the one rule for the patch size.

    Raises:
      IsojaxInputError: the stack is not 3D, holds NaN or inf, has no contrast, or is
        smaller than the patch; the patch is not a multiple of the network's divisor.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise IsojaxInputError(
            f"the stack must be 3D (z, y, x), got shape {stack.shape}; select one channel/time "
            "point first."
        )
    synth.check_contrast(stack, percentiles=percentiles)  # NaN or inf, then no contrast
    p = patch_size
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
    return stack


def _prepare(stack: np.ndarray, psf: AxialPSF | None, *, synth_config: SynthConfig, config: TrainConfig,
             net: UNetConfig, spacing, psf_pixel_size, percentiles, calibrate_psf: bool,
             calibration, match_noise: bool, log) -> tuple[_Prepared, SynthConfig]:
    """The PSF (or its pre-calibration), the normalised stack, the noise and ``config.json``.

    Returns:
      ``(prepared, synth_config)``, the synthesis settings with the estimated noise.

    Raises:
      IsojaxInputError: no PSF and no calibration, or a calibration in a multi-host job.
    """
    train_z, val_z = synth.split_slices(stack.shape[0], val_fraction=synth_config.val_fraction)
    cal = None
    if calibrate_psf and jax.process_count() > 1:
        raise IsojaxInputError(
            "PSF self-calibration is not available in multi-host training yet: calibrate on "
            "one host first (`isojax calibrate STACK -o AXIAL.tif`), then train on all hosts "
            "with --psf AXIAL.tif."
        )
    if calibrate_psf:
        cal = pre_calibrate(stack, psf, synth_config=synth_config, calibration=calibration,
                            pixel_size=psf_pixel_size, log=log)
        psf = AxialPSF(cal.report.psf(), psf_pixel_size, "the spectral pre-calibration")
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
        "psf": {"file": "psf.tif", "pixel_size": psf_pixel_size, "shape": [int(n) for n in psf.shape]},
        "calibrate_psf": bool(calibrate_psf),
        "stack_shape": list(stack.shape),
        **({} if cal is None else {"calibration": calibration_meta(cal)}),
        "train_planes": [int(train_z[0]), int(train_z[-1])],
        "val_planes": [int(val_z[0]), int(val_z[-1])],
    }
    return _Prepared(normed, train_z, val_z, psf, cal, meta), synth_config


def _set_up_and_run(run: _Run, prep: _Prepared, *, resume: bool) -> dict:
    """State, steps and checkpoints (resumed if asked), then the steps and the finish."""
    config, net = run.config, run.net
    graphdef, state = create_train_state(new_key(config.seed), net, config)
    train_step = make_train_step(graphdef, net, config)
    eval_step = make_eval_step(graphdef, net, config)
    last, best = open_managers(run.workdir)
    joint = (None if prep.calibration is None
             else joint_refinement(prep.calibration, graphdef, synth_config=run.synth))
    state, joint_state, start = _resume(run, last, state, joint, resume=resume)
    metrics_path = run.workdir / "metrics.jsonl"
    if run.main:
        trim_metrics(metrics_path, start)
    placement = data_parallel(config.batch_size)
    if placement.process_count > 1:
        run.log(f"data-parallel over {jax.device_count()} devices of "
                f"{placement.process_count} processes; {placement.local_batch_size} patches "
                "per process and step")
    elif jax.device_count() > 1:
        run.log(f"data-parallel over {jax.device_count()} devices")
    # the data key is the same on every process; a local copy (the state is donated) feeds
    # the pair synthesis
    data_key = jax.random.wrap_key_data(
        jnp.array(jax.random.key_data(state.key)), impl=PRNG_IMPL
    )
    state = placement.place_state(state)
    stack_dev = jnp.asarray(prep.normed)
    psf_dev = prep.psf.kernel if joint_state is None else joint_state.psf

    def draw(key, z_indices, psf):
        """This process's share of a batch, placed as the global batch."""
        if placement.process_count > 1:
            key = jax.random.fold_in(key, placement.process_index)
        return placement.place_batch(
            synth.make_pairs(key, stack_dev, psf, run.synth,
                             batch_size=placement.local_batch_size, z_indices=z_indices)
        )

    val_key, val_z = new_key(config.seed + 1), jnp.asarray(prep.val_z)
    val_set = [draw(jax.random.fold_in(val_key, i), val_z, psf_dev)
               for i in range(config.val_batches)]

    def validate(params):
        vals = [eval_step(params, b) for b in val_set]
        return {k: float(np.mean([float(v[k]) for v in vals])) for k in vals[0]}

    faster = [f"{flag} {v}" for flag, v, now in (
        ("--patch-size", 64, run.synth.patch_size), ("--first-filters", 16, net.first_filters),
        ("--batch-size", 8, config.batch_size)) if now > v]
    progress = Progress(total=config.steps, start=start, show=run.progress, log=run.log,
                        log_every=run.log_every, faster=faster)
    loop = _Loop(run, train_step, validate, draw, data_key, jnp.asarray(prep.train_z),
                 stack_dev, joint, last, best, progress)
    try:
        with (metrics_path.open("a") if run.main else open(os.devnull, "w")) as mf, \
                deferred_signals() as stop:
            state, joint_state, summary = _run_steps(loop, state, joint_state, psf_dev,
                                                     start=start, metrics=mf, stop=stop)
    finally:
        progress.close()
        last.wait_until_finished()
        best.wait_until_finished()
        last.close()
        best.close()
    summary["steps_run"] = int(state.step) - start
    return _finish(run, prep, summary, joint_state)


def _resume(run: _Run, last, state, joint: JointRefinement | None, *, resume: bool):
    """The state to start from: fresh, or the ``last`` checkpoint's on resume.

    Returns:
      ``(state, joint_state, start)``; ``joint_state`` None without a joint refinement.
    """
    joint_state = None if joint is None else joint.init()
    start = 0
    if resume and last.latest_step() is not None:
        if joint is None:
            state = restore_state(last, run.net, run.config)
        else:  # the PSF's parameters and optimiser resume too
            state, extra = restore_state(last, run.net, run.config,
                                         extra_template=checkpoint_extra(joint_state))
            if extra is None:
                run.log("the checkpoint holds no PSF state: the PSF restarts from its calibration")
            else:
                joint_state = joint.init(extra)
        start = int(state.step)
        run.log(f"resuming {run.workdir} at step {start}")
    return state, joint_state, start


def _run_steps(loop: _Loop, state, joint_state: JointState | None, psf, *, start: int,
               metrics, stop) -> tuple[Any, JointState | None, dict]:
    """Steps ``start`` to ``config.steps``, one record per step written to ``metrics``.

    Returns:
      ``(state, joint_state, summary)``: the summary holds the best validation, the final
      step and its training loss.

    Raises:
      TrainingDiverged: the loss became NaN or inf.
      isojax.interrupt.Interrupted: a signal arrived (``stop``); the state is saved.
    """
    run, config = loop.run, loop.run.config
    summary: dict[str, Any] = {"best_val_loss": None, "best_step": None}
    last_loss = float("nan")
    for step in range(start, config.steps):
        t_step = time.perf_counter()
        batch = loop.draw(jax.random.fold_in(loop.data_key, step), loop.train_z, psf)
        new_state, m = loop.train_step(state, batch)
        if loop.joint is not None and (step + 1) % loop.joint.every == 0:
            joint_state, psf_metrics = loop.joint.update(joint_state, new_state.params,
                                                         loop.stack, step)
            psf = joint_state.psf
            m = {**m, **psf_metrics}
        loss = float(m["loss"])
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss} at step {step + 1}; training stopped and "
                f"the last good checkpoint (step {loop.last.latest_step()}) is kept in "
                f"{run.workdir / 'checkpoints'}. Lower the learning rate (now "
                f"{config.learning_rate:g}) or check the stack and PSF."
            )
        state, last_loss, done = new_state, loss, step + 1
        loop.progress.timed(done, t_step)
        record = {"step": done, "loss": loss, "grad_norm": float(m["grad_norm"])}
        record.update({k: float(v) for k, v in m.items() if k.startswith("psf_")})
        record.update(_validate_and_save(loop, state, joint_state, done, summary))
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        loop.progress.report(done, loss, validated="val_loss" in record)
        _stop_if_signalled(loop, stop, state, joint_state, done)
    summary.update(step=int(state.step), loss=last_loss)
    return state, joint_state, summary


def _validate_and_save(loop: _Loop, state, joint_state: JointState | None, done: int,
                       summary: dict) -> dict:
    """Validate (keeping ``best``) every ``val_every`` steps and save ``last`` every
    ``checkpoint_every``, both at the last step; the best validation goes into ``summary``.

    Returns:
      The validation metrics as ``val_<name>`` record entries ({} when not validated).
    """
    config = loop.run.config
    extra = checkpoint_extra(joint_state)
    record = {}
    if done % config.val_every == 0 or done == config.steps:
        v = loop.validate(state.params)
        record = {f"val_{k}": val for k, val in v.items()}
        loop.progress.validated(done, v["loss"])
        save_state(loop.best, state, metrics={"val_loss": v["loss"]}, extra=extra)
        if summary["best_val_loss"] is None or v["loss"] < summary["best_val_loss"]:
            summary.update(best_val_loss=v["loss"], best_step=done)
    if done % config.checkpoint_every == 0 or done == config.steps:
        save_state(loop.last, state, extra=extra)
    return record


def _stop_if_signalled(loop: _Loop, stop, state, joint_state: JointState | None,
                       done: int) -> None:
    """After step ``done``: if any process got SIGINT or SIGTERM (or the caller's
    ``should_stop`` says so), save ``last`` and stop.

    Raises:
      isojax.interrupt.Interrupted: with how to continue.
    """
    config = loop.run.config
    signum = stop.signum
    if signum is None and loop.run.should_stop is not None and loop.run.should_stop():
        signum = int(signal.SIGINT)  # the caller asked to stop: as Ctrl-C
    signum = agree_on_stop(signum)  # every step, on every process (a collective)
    if signum is not None and done < config.steps:
        if done % config.checkpoint_every:  # not saved above
            save_state(loop.last, state, extra=checkpoint_extra(joint_state))
        loop.last.wait_until_finished()
        raise Interrupted(
            signum,
            f"training stopped at step {done} of {config.steps}; checkpoint saved in "
            f"{loop.run.workdir / 'checkpoints'}; to continue, run the same command with "
            "--resume",
        )


def _finish(run: _Run, prep: _Prepared, summary: dict, joint_state: JointState | None) -> dict:
    """The loss plot, the learned PSF's files, and the best validation from the metrics."""
    if not run.main:
        return summary
    records = read_metrics(run.workdir / "metrics.jsonl")
    save_loss_png(run.workdir / "loss.png", records)
    if prep.calibration is not None:
        if joint_state is None:  # a joint refinement is built whenever there is a calibration
            raise RuntimeError("internal: a calibration without its joint refinement state")
        summary["psf"] = finish_calibration(joint_state, prep.calibration, records,
                                            workdir=run.workdir,
                                            pixel_size=run.psf_pixel_size)
    if summary["best_step"] is None:
        summary.update(best_validation(records))
    return summary
