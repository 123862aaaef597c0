"""Prediction over a time-lapse's time points and channels, one time point at a time.

What :func:`isojax.pipeline.predict_file` does with an input that has a time or a channel
axis (:func:`is_series`): every selected time point and channel is one ``(z, y, x)``
volume, read lazily from the file (:func:`isojax.io.open_hyperstack`) and restored by
:func:`isojax.predict.predict_stack`, so that

* memory is bounded by one time point, whatever the length of the series;
* the normalisation percentiles are those of each channel at each time point (bleaching
  lowers them over a series; a bleached time point is restored at its own intensity);
* the single-channel model of today restores every channel with its one PSF (a warning
  says so once) until per-channel models exist.

The output is a ``TZCYX`` ImageJ hyperstack (BigTIFF when large,
:func:`isojax.io.write_hyperstack_tiff`) or an OME-Zarr 0.5 image ``t c z y x``
(:func:`isojax.io.create_hyperstack_zarr`), with the isotropic voxel size, the time
interval and the channel names. Both are staged under ``OUT.partial-...`` and renamed into
place once complete. An OME-Zarr output records a completion marker per time point after
its data; a run that is killed or interrupted leaves its partial output, and ``--resume``
adopts it (when it was written for the same input, model and selection) and continues
from the first unfinished time point.

With ``--uncertainty`` a probabilistic model's scale (:mod:`isojax.predict.uncertainty`)
goes to a second hyperstack of the same format, staged, marked and resumed with the
restoration. In a multi-host job the time points are shared by the processes
(:mod:`isojax.predict.spread`): process ``p`` of ``N`` restores ``p, p + N, ...`` into the
one OME-Zarr that process 0 staged.

The staging, ``--resume``'s adoption of a dead partial and process 0's claim of the outputs
are in :mod:`isojax.predict._series_outputs`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from tqdm import tqdm

from isojax.errors import IsojaxInputError
from isojax.geometry import StackGeometry, from_metadata
from isojax.interrupt import Interrupted
from isojax.io import (
    Hyperstack,
    HyperstackZarr,
    check_new_output,
    hyperstack_axes,
    open_hyperstack,
    parse_channels,
    parse_timepoints,
    staged_output,
    volume_format,
    write_hyperstack_tiff,
)
from isojax.io.hyperstack_write import HyperstackTiff
from isojax.io.tiff import _IMAGEJ_DTYPES
from isojax.predict._series_outputs import Log, _claim, _open_stores, _SeriesStage, _Target
from isojax.predict.core import Fuse, _cast, upsampled_length
from isojax.predict.files import (
    _physical_memory,
    check_model_subsample,
    check_tile_option,
    load_predictor,
    tile_overlap,
)
from isojax.predict.spread import barrier, from_main, my_timepoints, rank_and_count
from isojax.predict.stack import predict_stack, predict_stack_uncertainty
from isojax.predict.uncertainty import check_uncertainty_output

__all__ = ["SeriesPrediction", "is_series", "predict_series_file"]

#: Seconds between progress lines when stderr is not a terminal (a log file, a batch job).
_LOG_EVERY = 30.0


class SeriesPrediction(NamedTuple):
    """What :func:`predict_series_file` wrote.

    Attributes:
      output: the file or folder written.
      shape: ``(t, c, z, y, x)`` of the output.
      dtype: the output's data type.
      spacing: the isotropic voxel size ``(dz, dy, dx)`` in micrometres, or None.
      time_interval: seconds between the output's time points, or None.
      channel_names: the output's channel names, or None.
      timepoints: the input time points restored, in output order.
      channels: the input channels restored, in output order.
      resumed: output time points found finished in an adopted partial (not recomputed).
    """

    output: Path
    shape: tuple
    dtype: np.dtype
    spacing: tuple | None
    time_interval: float | None
    channel_names: tuple | None
    timepoints: tuple
    channels: tuple
    resumed: tuple = ()


def is_series(path: str | os.PathLike, *, axes: str | None = None) -> bool:
    """Whether ``path`` (with ``--axes``) has a time or channel axis, or unnamed extra axes.

    A 3D ``(z, y, x)`` stack is not a series (it goes the way it always went); a file that
    cannot be read is not either (its reader says why).

    Args:
      path: the input stack.
      axes: the user's ``--axes``, or None (from the metadata).

    Returns:
      True when the stack goes through the time-lapse and channel path.
    """
    found = hyperstack_axes(path, axes=axes)
    return found is not None and any(a in found for a in "TC?")


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _Progress:
    """A bar over time points with the estimated time left, or log lines without a terminal."""

    def __init__(self, total: int, done: int, *, show: bool, log: Log):
        self.total, self.done, self.log = total, done, log
        self.start, self.computed, self.last = time.perf_counter(), 0, -math.inf
        self.bar = None
        self.lines = show and not sys.stderr.isatty()
        if show and not self.lines:
            self.bar = tqdm(total=total, initial=done, desc="predict", unit="time point",
                            file=sys.stderr)

    def step(self) -> None:
        self.done += 1
        self.computed += 1
        if self.bar is not None:
            self.bar.update(1)
        now = time.perf_counter()
        if self.lines and (now - self.last >= _LOG_EVERY or self.done == self.total):
            self.last = now
            left = (now - self.start) / self.computed * (self.total - self.done)
            self.log(f"time point {self.done}/{self.total} restored; about {_eta(left)} left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _series_geometry(hyper: Hyperstack, stack_path, subsample, log) -> StackGeometry:
    if hyper.shape[2] < 2:
        raise IsojaxInputError(f"{stack_path}: the stack has {hyper.shape[2]} plane; it needs "
                               "at least 2 (is the Z axis right? see --axes)")
    return from_metadata(hyper.spacing, source=hyper.source, subsample=subsample,
                         name=stack_path, axes="TCZYX", log=log)


def _check_output(hyper, out_shape, n_channels: int, fmt: str, dtype, budget, stack_path,
                  output, uncertainty: bool = False):
    """Refuse a type ImageJ cannot hold in a TIFF output, and a time point that does not
    fit the memory budget (time points are restored in memory; with ``uncertainty`` one
    more float32 volume holds the scale)."""
    if fmt == "tiff" and dtype not in _IMAGEJ_DTYPES:
        raise IsojaxInputError(
            f"{output}: ImageJ TIFFs cannot hold {dtype}; drop --keep-dtype or write an "
            "OME-Zarr (.zarr)")
    n_in = math.prod(hyper.shape[2:])
    n_out = math.prod(out_shape)
    need = n_in * (hyper.dtype.itemsize + 4) + (3 if uncertainty else 2) * 4 * n_out
    if fmt == "tiff":
        need += n_channels * n_out * np.dtype(dtype).itemsize
    limit = budget if budget is not None else _physical_memory() // 2
    if need > limit:
        raise IsojaxInputError(
            f"{stack_path}: one time point needs about {need / 1e9:.3g} GB in memory, more "
            f"than the budget of {limit / 1e9:.3g} GB; time-lapses are restored one time point "
            "at a time in memory: raise --memory-budget, write an OME-Zarr (.zarr), or select "
            "fewer channels with --channels")


def _channel_predictors(model, cs, g: StackGeometry, *, checkpoint, tile, fuse, batch_size,
                        uncertainty: bool, log: Log,
                        precision: Literal["float32", "bf16"] = "float32") -> dict:
    """``{channel: (apply_fn, predict_stack settings)}``: each input channel's own model.

    A multi-channel model folder (:func:`isojax.model_folder.channel_models`) restores each
    channel with the model trained on it; a single-channel model (or a package) restores
    every channel (the same pair for all). With ``uncertainty`` each ``apply_fn`` gives
    ``(mean, scale)`` (:func:`isojax.predict.files.load_predictor`).

    Raises:
      IsojaxInputError: a selected channel the multi-channel folder has no model for, or
        ``uncertainty`` with a model that has no scale.
    """
    from isojax import export
    from isojax.model_folder import channel_models

    models = ((None, Path(model)),) if export.is_package(model) else channel_models(model)
    by_index = {i: folder for i, folder in models}
    missing = [c for c in cs if None not in by_index and c not in by_index]
    if missing:
        raise IsojaxInputError(
            f"{model} has no model for channel{'s' if len(missing) > 1 else ''} "
            f"{', '.join(map(str, missing))}: it has models for channels "
            f"{', '.join(str(i) for i, _ in models)}; select those with --channels")
    loaded: dict = {}
    for c in cs:
        key = None if None in by_index else c
        if key not in loaded:
            folder = by_index[key]
            apply_fn, meta = load_predictor(folder, which=checkpoint,
                                            uncertainty=uncertainty, precision=precision)
            check_tile_option(tile, meta)
            check_model_subsample(g.subsample, meta, model=folder, how=g.how, log=log)
            norm = meta["normalization"]
            loaded[key] = (apply_fn, dict(
                subsample=g.subsample, interpolation=meta["interpolation"], fuse=fuse,
                batch_size=batch_size, tile=tile, overlap=tile_overlap(meta),
                multiple=2 ** int(meta["unet"]["depth"]),
                normalization=(norm["pmin"], norm["pmax"])))
    return {c: loaded[None if None in by_index else c] for c in cs}


def _log_start(log: Log, stack_path, hyper: Hyperstack, ts, cs, g: StackGeometry, *,
               shared: bool = True) -> None:
    if len(cs) > 1 and shared:
        log(f"warning: the model has one PSF; it restores all {len(cs)} channels as if they "
            "shared it (train with one PSF per channel for one model each)")
    log(f"stack {stack_path}: {len(ts)} of {hyper.n_timepoints} time points, channels "
        f"{', '.join(map(str, cs))} of {hyper.n_channels}, volumes {hyper.shape[2:]}, "
        f"subsample {g.subsample:.4g} from {g.how}")


def predict_series_file(
    stack_path: str | os.PathLike,
    *,
    model: str | os.PathLike,
    output: str | os.PathLike,
    subsample: float | None = None,
    spacing=None,
    axes: str | None = None,
    channels: str | None = None,
    timepoints: str | None = None,
    resume: bool = False,
    fuse: Fuse = "mean",
    batch_size: int | None = None,
    tile: int | None = None,
    keep_dtype: bool = False,
    memory_budget: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Log,
    checkpoint: Literal["best", "last"] = "best",
    uncertainty: str | os.PathLike | None = None,
    precision: Literal["float32", "bf16"] = "float32",
) -> SeriesPrediction:
    """Restore every selected time point and channel of a hyperstack into a hyperstack.

    In a multi-host job (:func:`isojax.distributed.initialize`), the processes share the
    time points of one OME-Zarr output (:mod:`isojax.predict.spread`): process ``p`` of
    ``N`` restores output time points ``p, p + N, ...``; process 0 creates (or, with
    ``resume``, adopts) the staged output first and renames it into place once all are done.

    Args:
      stack_path: an ImageJ hyperstack, OME-TIFF or OME-Zarr 0.5 image with T and/or C axes.
      model: the model folder (:func:`isojax.train.load_model`); its one PSF restores every
        channel (a warning says so when there are several).
      output: a ``.tif`` (TZCYX ImageJ hyperstack) or ``.zarr`` (OME-Zarr ``t c z y x``).
      subsample, spacing: as :func:`isojax.pipeline.predict_file`.
      axes: the stored axes (``--axes TZCYX``) for files that do not name them.
      channels: ``--channels 0,2`` (default all), in output order.
      timepoints: ``--timepoints 0:100`` (Python slice syntax; default all).
      resume: continue the dead partial OME-Zarr output of the same command.
      fuse, batch_size, tile, keep_dtype, overwrite, checkpoint, precision: as
        :func:`isojax.pipeline.predict_file`.
      memory_budget: bytes one time point may need in memory (default half the RAM).
      progress: a bar over time points (log lines with the time left without a terminal).
      log: where messages go.
      uncertainty: a hyperstack for the Laplace scale of a probabilistic model, in the
        output's format (:mod:`isojax.predict.uncertainty`), staged, resumed and renamed
        with the output; or None.

    Returns:
      The :class:`SeriesPrediction`.

    Raises:
      IsojaxInputError: before anything is written: unknown or mismatched axes, a channel or
        time point out of range, no voxel size, ``--resume`` or several processes with a
        TIFF output, a partial written for something else, an output that may not be
        written, a time point too large for the memory budget, ``uncertainty`` with a model
        that has no scale; during the run (the partial output is removed): a time point and
        channel without contrast (named in the message).
    """
    output = Path(output)
    unc = None if uncertainty is None else Path(uncertainty)
    fmt = _check_output_format(output, unc, resume=resume)
    hyper = open_hyperstack(stack_path, axes=axes, spacing=spacing)
    ts = parse_timepoints(timepoints, hyper.n_timepoints)
    cs = parse_channels(channels, hyper.n_channels)
    g = _series_geometry(hyper, stack_path, subsample, log)
    for path in (output, *([unc] if unc is not None else [])):
        check_new_output(path, overwrite=overwrite)
    dtype = hyper.dtype if keep_dtype else np.dtype(np.float32)
    out_shape = (upsampled_length(hyper.shape[2], g.subsample), *hyper.shape[3:])
    _check_output(hyper, out_shape, len(cs), fmt, dtype, memory_budget, stack_path, output,
                  unc is not None)
    shape = (len(ts), len(cs), *out_shape)
    targets = _targets(output, unc, stack_path=stack_path, model=model, checkpoint=checkpoint,
                       axes=hyper.file_axes, ts=ts, cs=cs, shape=shape, dtype=dtype, fuse=fuse,
                       subsample=g.subsample)
    claimed, _ = from_main(lambda: _claim(targets, resume=resume, overwrite=overwrite,
                                          inputs={"stack": stack_path, "model folder": model},
                                          log=log), what="checking the outputs")
    targets = claimed or targets
    predictors = _channel_predictors(model, cs, g, checkpoint=checkpoint, tile=tile,
                                     fuse=fuse, batch_size=batch_size,
                                     uncertainty=unc is not None, log=log,
                                     precision=precision)
    shared = len({id(p) for p in predictors.values()}) == 1  # one model for every channel
    _log_start(log, stack_path, hyper, ts, cs, g, shared=shared)
    restore = _restorer(hyper, predictors, stack_path=stack_path, with_scale=unc is not None,
                        keep_dtype=keep_dtype)
    summary = _summary(output, hyper, ts, cs, g, shape=shape, dtype=dtype)
    t0 = time.perf_counter()
    if fmt == "tiff":
        result = _to_tiff(summary, restore, uncertainty=unc, progress=progress,
                          overwrite=overwrite, log=log)
    else:
        result = _to_zarr(summary, restore, targets, progress=progress, overwrite=overwrite,
                          log=log)
    _log_written(log, result, unc, seconds=time.perf_counter() - t0)
    return result


def _check_output_format(output: Path, unc: Path | None, *, resume: bool) -> str:
    """The output's format (``"tiff"`` or ``"zarr"``), checked before the input is read.

    Raises:
      IsojaxInputError: an unknown output format, ``--resume`` or several processes with a
        TIFF output, or an uncertainty map that may not go with the output
        (:func:`isojax.predict.uncertainty.check_uncertainty_output`).
    """
    fmt = volume_format(output)
    n_proc = rank_and_count()[1]
    if resume and fmt != "zarr":
        raise IsojaxInputError(
            f"{output}: --resume continues an OME-Zarr output; name the output .zarr")
    if n_proc > 1 and fmt != "zarr":
        raise IsojaxInputError(
            f"{output}: a prediction spread over {n_proc} processes writes one OME-Zarr that "
            "they share; name the output .zarr")
    if unc is not None:
        check_uncertainty_output(output, unc)
    return fmt


def _summary(output: Path, hyper: Hyperstack, ts, cs, g: StackGeometry, *, shape: tuple,
             dtype: np.dtype) -> SeriesPrediction:
    """What the run writes: ``shape`` ``(t, c, z, y, x)`` and ``dtype``, the isotropic voxel
    size, the time interval (the input's, times the time point step) and the channel names."""
    step = ts[1] - ts[0] if len(ts) > 1 else 1
    interval = None if hyper.time_interval is None else hyper.time_interval * step
    names = None if hyper.channel_names is None else tuple(hyper.channel_names[c] for c in cs)
    return SeriesPrediction(output, shape, dtype, g.isotropic_spacing, interval, names, ts, cs)


def _targets(output: Path, unc: Path | None, *, stack_path, model, checkpoint: str, axes: str,
             ts, cs, shape: tuple, dtype: np.dtype, fuse: Fuse,
             subsample: float) -> list[_Target]:
    """The outputs with the identity each records for ``--resume``: the input, the model,
    the selection ``ts``, ``cs`` and the layout (the uncertainty map's: float32, and
    ``"uncertainty": True``)."""
    identity = {"input": str(Path(stack_path).resolve()), "model": str(Path(model).resolve()),
                "checkpoint": checkpoint, "axes": axes, "timepoints": list(ts),
                "channels": list(cs), "shape": list(shape), "dtype": dtype.name, "fuse": fuse,
                "subsample": subsample}
    targets = [_Target(output, identity)]
    if unc is not None:
        targets.append(_Target(unc, {**identity, "dtype": "float32", "uncertainty": True}))
    return targets


def _restorer(hyper: Hyperstack, predictors: dict, *, stack_path, with_scale: bool,
              keep_dtype: bool) -> Callable:
    """``restore(t, c)``: the restored volume of input time point ``t`` and channel ``c``
    (:func:`isojax.predict.predict_stack` with the channel's model; cast back to the input's
    type with ``keep_dtype``), or with ``with_scale`` the pair ``(restored, scale)``.

    ``restore`` raises :class:`IsojaxInputError` naming the time point and channel (e.g. a
    volume without contrast).
    """

    def restore(t: int, c: int):
        volume = hyper.read(t, c)
        scale = None
        apply_fn, settings = predictors[c]
        try:
            if not with_scale:
                mean = predict_stack(volume.astype(np.float32), apply_fn, **settings)
            else:
                mean, scale = predict_stack_uncertainty(volume.astype(np.float32), apply_fn,
                                                        **settings)
        except IsojaxInputError as exc:
            raise IsojaxInputError(f"{stack_path}: time point {t}, channel {c}: {exc}") from None
        mean = _cast(mean, volume.dtype) if keep_dtype else mean
        return mean if scale is None else (mean, scale)

    return restore


def _log_written(log: Log, result: SeriesPrediction, unc: Path | None, *,
                 seconds: float) -> None:
    """The closing lines: what was written, and the rate over ``seconds``."""
    rate = math.prod(result.shape) / seconds / 1e6
    sp, interval = result.spacing, result.time_interval
    log(f"wrote {result.output}: shape {result.shape} (t, c, z, y, x), {result.dtype}, voxel "
        f"size {'unknown' if sp is None else ', '.join(f'{v:.4g}' for v in sp)} um, time "
        f"interval {'unknown' if interval is None else f'{interval:g} s'}; {rate:.2f} Mvoxel/s")
    if unc is not None:
        log(f"wrote {unc}: the Laplace scale of each voxel, float32, same shape")


def _to_tiff(summary: SeriesPrediction, restore, *, uncertainty: Path | None, progress: bool,
             overwrite: bool, log: Log) -> SeriesPrediction:
    """Write the restoration, and the uncertainty map beside it (:class:`HyperstackTiff`,
    staged: renamed into place after the restoration is)."""
    bar = _Progress(len(summary.timepoints), 0, show=progress, log=log)
    with contextlib.ExitStack() as stack:
        scales = None
        if uncertainty is not None:
            temp = stack.enter_context(staged_output(uncertainty, overwrite=overwrite))
            scales = HyperstackTiff(temp, shape=summary.shape, dtype=np.float32,
                                    spacing=summary.spacing,
                                    time_interval=summary.time_interval,
                                    channel_names=summary.channel_names)

        def restored():
            for i, t in enumerate(summary.timepoints):
                volumes = np.empty(summary.shape[1:], summary.dtype)
                for j, c in enumerate(summary.channels):
                    result = restore(t, c)
                    if scales is not None:
                        result, scale = result
                        scales.write(i, j, scale)
                    volumes[j] = result
                yield volumes
                bar.step()

        try:
            write_hyperstack_tiff(summary.output, restored(), shape=summary.shape,
                                  dtype=summary.dtype, spacing=summary.spacing,
                                  time_interval=summary.time_interval,
                                  channel_names=summary.channel_names, overwrite=overwrite)
        finally:
            bar.close()
            if scales is not None:
                scales.close()
    return summary


def _to_zarr(summary: SeriesPrediction, restore, targets: list[_Target], *,
             progress: bool, overwrite: bool, log: Log) -> SeriesPrediction:
    """Write this process's time points into the staged stores (process 0 stages them)."""
    rank, n_proc = rank_and_count()

    def paths(got: tuple[list[_SeriesStage], list[HyperstackZarr]] | None) -> str:
        return json.dumps([] if got is None else [str(s.path) for s in got[1]])

    with contextlib.ExitStack() as stack:
        opened, text = from_main(
            lambda: _open_stores(summary, targets, stack, overwrite=overwrite, log=log),
            share=paths, what="creating the output")
        stages, stores = (opened if opened is not None
                          else ([], [HyperstackZarr.open(p) for p in json.loads(text)]))
        done = set.intersection(*(s.done() for s in stores)) & set(range(summary.shape[0]))
        mine = my_timepoints(summary.shape[0])
        todo = [i for i in mine if i not in done]
        if n_proc > 1:
            log(f"process {rank} of {n_proc}: {len(todo)} of its {len(mine)} time points to "
                f"restore ({len(mine) - len(todo)} finished)")
        _restore_into(stores, summary, restore, todo, stages,
                      bar=_Progress(len(mine), len(mine) - len(todo), show=progress, log=log))
        barrier("isojax-series-written")
        if rank == 0:
            for store in stores:
                store.finish()
    return summary._replace(resumed=tuple(sorted(done)))


def _restore_into(stores, summary: SeriesPrediction, restore, todo: list[int], stages,
                  *, bar: _Progress) -> None:
    """Restore the output time points ``todo`` into ``stores`` (the restoration, then the
    scale), marking each done after its data; on an interruption with time points
    finished, keep the staged outputs (``stages``) for ``--resume``."""
    try:
        for i in todo:
            t = summary.timepoints[i]
            for j, c in enumerate(summary.channels):
                result = restore(t, c)
                for store, volume in zip(stores, result if len(stores) > 1 else (result,),
                                         strict=True):
                    store.write(i, j, volume)
            for store in stores:
                store.mark_done(i)
            bar.step()
    except (KeyboardInterrupt, Interrupted) as exc:
        finished = len(set.intersection(*(s.done() for s in stores)))
        if finished:
            for stage in stages:
                stage.keep = True
            message = (f"{finished} of {summary.shape[0]} time points are finished in "
                       f"{stores[0].path}; run the same command with --resume to continue")
            signum = exc.signum if isinstance(exc, Interrupted) else 2
            raise Interrupted(signum, message) from None
        raise
    finally:
        bar.close()
