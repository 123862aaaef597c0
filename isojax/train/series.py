"""Training on time-lapses with channels: one network per channel, each with its own PSF.

What :func:`isojax.pipeline.train_file` does with a stack that has a time or a channel axis
(an ImageJ hyperstack, OME-TIFF or OME-Zarr ``t c z y x``, read lazily by
:func:`isojax.io.open_hyperstack`):

* the time points: those of ``--timepoints`` (Python slice syntax), or by default a spread
  of at most :data:`SPREAD` through the series, the first and the last included
  (:func:`training_timepoints`), so that a bleached end and a bright start are both seen;
  only those are read, one ``(z, y, x)`` volume at a time;
* the training planes of a channel (:func:`training_planes`): the XY planes of those time
  points, each time point normalised by its own percentiles as prediction normalises it
  (:mod:`isojax.predict.series`), stacked along ``z``; pairs are drawn from single planes,
  so the stacking joins nothing across time points;
* one PSF per channel (:func:`isojax.psf.sources.channel_sources`): ``--psf`` or ``--bead`` given once per
  selected channel in channel order, or ``--wavelength`` once per channel for the
  theoretical PSF; one source given for several channels applies to all (with a warning).
  Each is resolved and checked once, by :func:`isojax.psf.resolve_psf`;
* one network per channel (:func:`train_channels`), trained by :func:`isojax.train.train`
  with the channel's PSF, its own noise estimate and its own normalisation, into the
  subfolder ``c<index>`` of a multi-channel model folder
  (:mod:`isojax.model_folder.channels`). With ``resume`` the channels already finished
  are skipped and the unfinished one continues.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from isojax import distributed
from isojax.errors import IsojaxInputError
from isojax.geometry import StackGeometry, from_metadata
from isojax.io import Hyperstack, open_hyperstack, parse_channels, parse_timepoints
from isojax.io.hyperstack import spread_timepoints  # re-exported: training's default spread
from isojax.model_folder import (
    channel_models,
    is_multichannel,
    open_managers,
    read_channels_file,
    summary_from_metrics,
    write_channels_file,
)
from isojax.psf import AxialPSF
from isojax.psf.sources import channel_sources
from isojax.synth import check_contrast

__all__ = ["SPREAD", "spread_timepoints", "train_channels", "training_planes",
           "training_timepoints"]

Log = Callable[[str], None]

#: Time points trained on by default: at most this many, spread through the series.
SPREAD = 8

#: The training planes of one channel may take at most this share of the physical memory
#: (they are held as float32 on the host and once more on the device).
_MEMORY_SHARE = 0.25


def training_timepoints(n: int, *, timepoints: str | None = None,
                        count: int = SPREAD) -> tuple[int, ...]:
    """The time points training reads: ``--timepoints`` if given, else a spread.

    Args:
      n: the number of time points of the series.
      timepoints: ``"START:STOP[:STEP]"`` or one index (:func:`isojax.io.parse_timepoints`),
        or None for :func:`spread_timepoints`.
      count: the most time points of the default spread.

    Returns:
      The time point indices, in order.

    Raises:
      IsojaxInputError: what :func:`isojax.io.parse_timepoints` refuses.
    """
    if timepoints is None:
        return spread_timepoints(n, count=count)
    return parse_timepoints(timepoints, n)


def training_planes(hyper: Hyperstack, channel: int, timepoints: Sequence[int], *,
                    percentiles: tuple[float, float] = (1.0, 99.8)) -> np.ndarray:
    """The XY planes of one channel at the given time points, each time point normalised.

    Each ``(z, y, x)`` volume is read on its own (:meth:`isojax.io.Hyperstack.read`) and
    mapped so that its ``percentiles`` become 0 and 1, as prediction normalises each time
    point; the volumes are stacked along ``z`` in the order of ``timepoints``.

    Args:
      hyper: the opened hyperstack.
      channel: the channel's index in the file.
      timepoints: the time points to read (indices in the file).
      percentiles: the normalisation percentiles ``(pmin, pmax)``.

    Returns:
      float32 ``(len(timepoints) * z, y, x)``; planes ``k * z .. (k + 1) * z - 1`` are time
      point ``timepoints[k]``.

    Raises:
      IsojaxInputError: a time point or channel out of range, or a volume without contrast
        (named in the message).
    """
    n_z, n_y, n_x = hyper.shape[2:]
    out = np.empty((len(timepoints) * n_z, n_y, n_x), np.float32)
    for k, t in enumerate(timepoints):
        volume = hyper.read(t, channel).astype(np.float32)
        lo, hi = check_contrast(volume, percentiles=percentiles,
                                name=f"{hyper.path}: time point {t}, channel {channel}")
        out[k * n_z:(k + 1) * n_z] = (volume - lo) / (hi - lo)
    return out


def _series_geometry(hyper: Hyperstack, stack_path, subsample, log: Log) -> StackGeometry:
    if hyper.shape[2] < 2:
        raise IsojaxInputError(f"{stack_path}: the stack has {hyper.shape[2]} plane; it needs "
                               "at least 2 (is the Z axis right? see --axes)")
    return from_metadata(hyper.spacing, source=hyper.source, subsample=subsample,
                         name=stack_path, axes="TCZYX", log=log)


def _check_memory(hyper: Hyperstack, timepoints: Sequence[int], stack_path) -> None:
    need = 2 * 4 * len(timepoints) * math.prod(hyper.shape[2:])
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 8 * 2**30
    if need > _MEMORY_SHARE * memory:
        raise IsojaxInputError(
            f"{stack_path}: training on {len(timepoints)} time points needs about "
            f"{need / 1e9:.3g} GB per channel, more than a quarter of the memory "
            f"({memory / 1e9:.3g} GB); select fewer with --timepoints START:STOP:STEP")


def _check_folder(model: Path, record: dict, channels: Sequence[int], *, resume: bool) -> None:
    """Refuse a multi-channel folder trained on another selection (resume), or any model
    without ``resume``; a resume of a single-channel folder."""
    if not resume:
        if is_multichannel(model) or (model / "config.json").exists():
            raise IsojaxInputError(f"{model} already holds a model; pass --resume to continue "
                                   "it, or choose a new --model folder")
        return
    if not is_multichannel(model):
        what = ("a single-channel model (config.json)" if (model / "config.json").exists()
                else "no multi-channel model (no channels.json)")
        raise IsojaxInputError(
            f"nothing to resume in {model}: it holds {what}; drop --resume to start a new "
            "training, or choose a new --model folder")
    old = read_channels_file(model)
    had = [int(e["index"]) for e in old["channels"]]
    differences = [] if had == list(channels) else [
        f"--channels {','.join(map(str, channels))} here, {','.join(map(str, had))} in the model"]
    differences += [f"{key} {record[key]} here, {old.get(key)} in the model"
                    for key in ("axes", "shape", "timepoints") if old.get(key) != record[key]]
    if differences:
        raise IsojaxInputError(
            f"cannot resume {model}: this run differs from the model's: "
            + "; ".join(differences) + ". Use the same stack and selection, or train into a "
            "new folder.")


def _finished(folder: Path, steps: int) -> dict | None:
    """The summary of a channel folder already trained for ``steps`` steps, else None."""
    if not (folder / "config.json").exists():
        return None
    last, best = open_managers(folder)
    done = last.latest_step()
    last.close()
    best.close()
    if done is None or done < steps:
        return None
    return summary_from_metrics(folder / "metrics.jsonl", done)


def train_channels(
    stack_path: str | os.PathLike,
    *,
    model: str | os.PathLike,
    train_volume: Callable[..., dict],
    resolve: Callable[..., AxialPSF],
    steps: int,
    psf=None,
    bead=None,
    theory: dict | None = None,
    axes: str | None = None,
    channels: str | Sequence[int] | None = None,
    timepoints: str | None = None,
    spacing: Sequence[float] | None = None,
    subsample: float | None = None,
    resume: bool = False,
    log: Log,
) -> dict:
    """Train one network per selected channel of a hyperstack into a multi-channel folder.

    Everything is checked before anything is written: the axes and the selection, the
    geometry, the memory the training planes need, every channel's PSF, and (with
    ``resume``) that the folder was trained on the same stack layout and selection.

    Args:
      stack_path: an ImageJ hyperstack, OME-TIFF or OME-Zarr with T and/or C axes.
      model: the multi-channel model folder to write (or continue).
      train_volume: ``(planes, geometry, axial, folder, resume=...) -> summary``: trains one
        channel's planes ``(z, y, x)`` into ``folder`` (:func:`isojax.pipeline.train_file`
        passes its 3D training, :func:`isojax.train.train` with the run's settings).
      resolve: ``(pixel_size=..., psf=..., bead=..., theory=..., log=...) -> AxialPSF``:
        :func:`isojax.psf.resolve_psf` with the bead spacing bound.
      steps: the run's total steps (a channel trained that far is skipped on resume).
      psf, bead, theory: the PSF sources (:func:`isojax.psf.sources.channel_sources`); an
        :class:`~isojax.psf.AxialPSF` is used as it is.
      axes: the stored axes (``--axes TZCYX``) for files that do not name them.
      channels: ``--channels 0,2`` (default all).
      timepoints: ``--timepoints 0:100`` (default: :func:`spread_timepoints`).
      spacing: voxel size ``(dz, dy, dx)`` in micrometres overriding the metadata, or None.
      subsample: the anisotropy factor overriding the voxel size, or None.
      resume: continue the folder: finished channels are skipped, the others resumed (or
        started, when they had not begun).
      log: where messages go (each channel's are prefixed ``channel <index>:``).

    Returns:
      ``{"channels": {index: summary of train()}, "timepoints": (...), "model": folder}``.

    Raises:
      IsojaxInputError: unknown axes, a selection out of range, no voxel size, too many
        time points for the memory, a PSF source given neither once nor once per channel,
        an unusable PSF, a folder holding a model (without ``resume``) or one trained on
        another layout or selection (with it).
    """
    model = Path(model)
    hyper = open_hyperstack(stack_path, axes=axes, spacing=spacing)
    cs = parse_channels(channels, hyper.n_channels)
    ts = training_timepoints(hyper.n_timepoints, timepoints=timepoints)
    g = _series_geometry(hyper, stack_path, subsample, log)
    _check_memory(hyper, ts, stack_path)
    record = {"axes": hyper.file_axes, "shape": list(hyper.shape), "timepoints": list(ts)}
    _check_folder(model, record, cs, resume=resume)
    sources = channel_sources(cs, psf=psf, bead=bead, theory=theory, log=log)
    names = hyper.channel_names
    log(f"stack {stack_path}: channels {', '.join(map(str, cs))} of {hyper.n_channels}, one "
        f"network each, on the XY planes of {len(ts)} of {hyper.n_timepoints} time points "
        f"({', '.join(map(str, ts))}); volumes {hyper.shape[2:]}, subsample "
        f"{g.subsample:.4g} from {g.how}")
    axials = {}
    for c, source in zip(cs, sources, strict=True):
        say = _prefixed(log, c)
        if isinstance(source["psf"], AxialPSF):  # checked by whoever built it
            axials[c] = source["psf"]
            continue
        try:
            axials[c] = resolve(pixel_size=g.pixel_size, log=say, **source)
        except IsojaxInputError as exc:
            raise IsojaxInputError(f"channel {c}: {exc}") from None
    fresh = not resume and not model.exists()
    if distributed.is_main_process() and not resume:
        model.mkdir(parents=True, exist_ok=True)
        write_channels_file(model, [(c, None if names is None else names[c]) for c in cs],
                            input=str(Path(stack_path).resolve()), **record)
    distributed.barrier("isojax-channels-file")  # every process reads it next
    summaries = {}
    try:
        for index, folder in channel_models(model):
            c = int(index or 0)  # a folder written above: every entry has its channel index
            say = _prefixed(log, c)
            done = _finished(folder, steps) if resume else None
            if done is not None:
                say(f"already trained for {done['step']} steps in {folder}; skipped")
                summaries[c] = done
                continue
            planes = training_planes(hyper, c, ts)
            summaries[c] = train_volume(planes, g, axials[c], folder,
                                        resume=resume and (folder / "config.json").exists(),
                                        log=say)
    except IsojaxInputError:
        if not resume and distributed.is_main_process():
            _forget_untrained(model, fresh=fresh)
        raise
    return {"channels": summaries, "timepoints": ts, "model": model}


def _forget_untrained(model: Path, *, fresh: bool) -> None:
    """After a refusal before any channel was written: remove ``channels.json`` (and the
    folder this run created), so that the same command can run again without --resume."""
    if any((folder / "config.json").exists() for _, folder in channel_models(model)):
        return
    (model / "channels.json").unlink(missing_ok=True)
    if fresh and not any(model.iterdir()):
        model.rmdir()


def _prefixed(log: Log, channel: int) -> Log:
    return lambda message: log(f"channel {channel}: {message}")
