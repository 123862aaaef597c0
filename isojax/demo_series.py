"""``isojax demo --channels N --timepoints T``: the whole pipeline on a simulated
multichannel time-lapse with known ground truth.

Each channel is its own specimen (filaments, vesicles, ...) imaged with its own optics (a
wider axial PSF for a longer emission wavelength); the specimen drifts between time points
and every channel bleaches at its own rate. One bead per channel gives that channel's axial
PSF (:func:`isojax.psf.resolve_psf`), training takes the hyperstack and one PSF per channel
(:func:`isojax.pipeline.train_file`), and prediction writes a ``TZCYX`` hyperstack
(:func:`isojax.pipeline.predict_file`). Every time point and channel is scored against the
truth and against linear interpolation.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from isojax.errors import IsojaxInputError
from isojax.pipeline import Log, _stderr, predict_file, train_file

__all__ = ["SERIES_DEMO_FILES", "demo_series"]

#: What :func:`demo_series` writes into its folder; with ``overwrite`` only these are
#: replaced (``bead_c<k>.tif`` and ``psf_c<k>.tif`` for every channel ``k``).
SERIES_DEMO_FILES = ("stack.tif", "truth.tif", "bead_c*.tif", "psf_c*.tif", "model/",
                     "isojax.tif", "linear.tif", "scores.json")

# Per channel: the specimen's options for :func:`isojax.simulate_specimen` and a name.
_CHANNEL_SPECIMENS = (
    ("filaments", {"filament_density": 4.0, "vesicle_density": 0.02}),
    ("vesicles", {"filament_density": 0.0, "vesicle_density": 0.25,
                  "vesicle_radius": (1.5, 4.0)}),
    ("mixed", {"filament_density": 2.0, "vesicle_density": 0.1}),
    ("fine filaments", {"filament_density": 6.0, "filament_radius": (0.3, 0.6),
                        "vesicle_density": 0.0}),
)
#: Drift per time point, ``(z, y, x)`` in fine-grid pixels.
_DRIFT_PX = (0.4, 1.3, -0.9)


def _simulate_series(key, *, n_channels: int, n_timepoints: int, shape, subsample: float,
                     sigma_lateral: float, sigmas_axial: Sequence[float], photons: float,
                     pixel_size: float):
    """The anisotropic series ``(t, c, z_low, y, x)``, its truth on the fine grid
    ``(t, c, z, y, x)`` (lateral-blurred, as the restoration is scored) and the spacings."""
    import jax
    from scipy.ndimage import shift as nd_shift

    from isojax.simulate import acquire, simulate_specimen

    keys = jax.random.split(key, n_channels * (n_timepoints + 1))
    stacks: list[list[np.ndarray]] = []
    truths: list[list[np.ndarray]] = []
    acq = None
    for t in range(n_timepoints):
        stacks.append([])
        truths.append([])
        for c in range(n_channels):
            _, options = _CHANNEL_SPECIMENS[c % len(_CHANNEL_SPECIMENS)]
            base = np.asarray(simulate_specimen(keys[c], tuple(shape), **options))
            moved = nd_shift(base, [t * d for d in _DRIFT_PX], order=1, mode="mirror")
            bleach = math.exp(-(0.25 + 0.1 * c) * t)  # each channel bleaches at its own rate
            low, acq = acquire(
                keys[n_channels + t * n_channels + c], moved * bleach, subsample=subsample,
                sigma_lateral=sigma_lateral, sigma_axial=sigmas_axial[c], photons=photons,
                read_noise=0.002, pixel_size=pixel_size,
            )
            stacks[t].append(np.asarray(low) * 1000)
            truths[t].append(np.asarray(acq.reference) * 1000)
    assert acq is not None
    return (np.asarray(stacks, np.float32), np.asarray(truths, np.float32), acq.spacing,
            acq.spacing_fine)


def _write_series(path: Path, data: np.ndarray, *, spacing, names, interval: float) -> None:
    from isojax.io.hyperstack_write import write_hyperstack_tiff

    write_hyperstack_tiff(path, iter(data), shape=data.shape, dtype=np.float32,
                          spacing=spacing, time_interval=interval, channel_names=names,
                          overwrite=True)


def demo_series(
    out: str | os.PathLike = "isojax-demo-series",
    *,
    channels: int = 2,
    timepoints: int = 3,
    seed: int = 0,
    subsample: float = 4.0,
    shape: Sequence[int] = (64, 96, 96),
    steps: int = 300,
    batch_size: int = 8,
    patch_size: int = 64,
    first_filters: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    log: Log = _stderr,
) -> dict:
    """``isojax demo --channels N --timepoints T``: a simulated multichannel time-lapse,
    one bead and one axial PSF per channel, per-channel training, prediction to a ``TZCYX``
    hyperstack, and scores per time point and channel.

    Channel ``k`` has an axial PSF of sigma ``2.5 + k`` px (lateral 1 px), its own specimen
    (filaments, vesicles, ...), a drift of ``(0.4, 1.3, -0.9)`` px per time point and a
    bleaching of ``exp(-(0.25 + 0.1 k) t)``; 500 photons per unit intensity.

    Writes into ``out``: ``stack.tif`` (the anisotropic ``TZCYX`` hyperstack), ``truth.tif``,
    ``bead_c<k>.tif`` and ``psf_c<k>.tif`` per channel, ``model/`` (one network per
    channel), ``isojax.tif``, ``linear.tif`` and ``scores.json`` (:data:`SERIES_DEMO_FILES`).

    Args:
      out: the folder to write into.
      channels: number of channels, 1 to 4.
      timepoints: number of time points, >= 1.
      seed: the random seed of the simulation and the training.
      subsample: the simulated anisotropy factor.
      shape: the isotropic specimen's shape ``(z, y, x)`` in voxels.
      steps: training steps per channel.
      batch_size: patches per training step.
      patch_size: side of the square training patches in pixels.
      first_filters: filters of the U-Net's first level.
      overwrite: replace the demo's own files in a non-empty ``out``.
      progress: show progress.
      log: where messages go.

    Returns:
      The scores: ``{"linear": [[{psnr_db, ssim} per channel] per time point], "isojax":
      ..., "seconds": ...}``.

    Raises:
      IsojaxInputError: ``channels`` outside 1 to 4 or ``timepoints`` < 1; ``out`` is a
        file, or a folder that is not empty and ``overwrite`` is False.
    """
    import jax

    from isojax.demo_pipeline import _demo_folder, _simulated_bead
    from isojax.io import write_tiff
    from isojax.psf.sources import resolve_psf

    if not 1 <= int(channels) <= len(_CHANNEL_SPECIMENS):
        raise IsojaxInputError(f"--channels must be 1 to {len(_CHANNEL_SPECIMENS)}, got "
                               f"{channels}.")
    if int(timepoints) < 1:
        raise IsojaxInputError(f"--timepoints must be at least 1, got {timepoints}.")
    n_c, n_t = int(channels), int(timepoints)
    t_start = time.perf_counter()
    out = Path(out)
    _demo_folder(out, overwrite=overwrite, files=SERIES_DEMO_FILES)
    k_sim, k_bead = jax.random.split(jax.random.key(seed))
    sxy, pixel = 1.0, 0.1
    sigmas = [2.5 + c for c in range(n_c)]
    names = [_CHANNEL_SPECIMENS[c][0] for c in range(n_c)]
    log(f"1/4 simulating {n_t} time point(s) x {n_c} channel(s) of a {tuple(shape)} specimen "
        f"(subsample {subsample:g}, drift and bleaching)")
    stack, truth, spacing, spacing_fine = _simulate_series(
        k_sim, n_channels=n_c, n_timepoints=n_t, shape=shape, subsample=subsample,
        sigma_lateral=sxy, sigmas_axial=sigmas, photons=500.0, pixel_size=pixel)
    _write_series(out / "stack.tif", stack, spacing=spacing, names=names, interval=60.0)
    _write_series(out / "truth.tif", truth, spacing=spacing_fine, names=names, interval=60.0)

    log("2/4 deriving each channel's axial PSF from its own simulated bead")
    psfs = []
    for c, key in enumerate(jax.random.split(k_bead, n_c)):
        bead, bead_spacing = _simulated_bead(key, sigma_lateral_px=sxy, sigma_axial_px=sigmas[c],
                                             pixel_size=pixel, z_step=2 * pixel)
        write_tiff(out / f"bead_c{c}.tif", bead, spacing=bead_spacing)
        axial = resolve_psf(pixel_size=pixel, bead=out / f"bead_c{c}.tif", log=log)
        write_tiff(out / f"psf_c{c}.tif", axial.dense(), pixel_size=pixel)
        psfs.append(out / f"psf_c{c}.tif")

    log(f"3/4 training one network per channel for {steps} steps (batch {batch_size}, "
        f"patch {patch_size})")
    model = out / "model"
    if model.exists():
        import shutil

        shutil.rmtree(model)  # the demo's own folder: start afresh each run
    train_file(
        out / "stack.tif", model=model, psf=psfs, steps=steps, batch_size=batch_size,
        patch_size=patch_size, first_filters=first_filters, seed=seed,
        checkpoint_every=max(steps // 4, 1), val_every=max(steps // 4, 1), progress=progress,
        log=log,
    )
    log("4/4 predicting every time point and channel, and scoring")
    predict_file(out / "stack.tif", model=model, output=out / "isojax.tif", overwrite=True,
                 progress=progress, log=log)
    return _series_scores(out, stack, truth, spacing_fine=spacing_fine, subsample=subsample,
                          names=names, t_start=t_start)


def _series_scores(out: Path, stack, truth, *, spacing_fine, subsample: float, names,
                   t_start: float) -> dict:
    """Linear interpolation and isojax against the truth, per time point and channel;
    writes ``linear.tif`` and ``scores.json`` and prints the table."""
    import tifffile

    from isojax.metrics import psnr, ssim
    from isojax.predict import upsample_z

    pred = tifffile.imread(out / "isojax.tif")  # (t, z, c, y, x) as ImageJ stores it
    pred = np.moveaxis(pred.reshape(truth.shape[0], -1, truth.shape[1], *truth.shape[3:]), 2, 1)
    linear = np.asarray([[np.asarray(upsample_z(v, subsample)) for v in tp] for tp in stack],
                        np.float32)
    _write_series(out / "linear.tif", linear, spacing=spacing_fine, names=names, interval=60.0)
    scores: dict = {"linear": [], "isojax": []}
    print(f"{'time':>4} {'channel':<12} {'linear PSNR':>12} {'isojax PSNR':>12} {'gain (dB)':>10}")
    for t in range(truth.shape[0]):
        for name in ("linear", "isojax"):
            scores[name].append([])
        for c in range(truth.shape[1]):
            n_z = min(pred.shape[2], linear.shape[2], truth.shape[2])
            ref = truth[t, c, :n_z]
            rng = float(ref.max() - ref.min())
            row = {}
            for name, v in (("linear", linear[t, c, :n_z]), ("isojax", pred[t, c, :n_z])):
                row[name] = {"psnr_db": float(psnr(v, ref, data_range=rng)),
                             "ssim": float(ssim(v, ref, data_range=rng))}
                scores[name][t].append(row[name])
            gain = row["isojax"]["psnr_db"] - row["linear"]["psnr_db"]
            print(f"{t:>4} {names[c]:<12} {row['linear']['psnr_db']:>12.2f} "
                  f"{row['isojax']['psnr_db']:>12.2f} {gain:>+10.2f}")
    scores["seconds"] = time.perf_counter() - t_start
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    print(f"outputs in {out}/ (stack.tif, isojax.tif and linear.tif are TZCYX hyperstacks); "
          f"{scores['seconds']:.0f} s")
    return scores
