"""``isojax demo``: the whole pipeline on a simulated stack with known ground truth.

:func:`demo` simulates a stack and a bead (:mod:`isojax.simulate`), derives the axial PSF
from the bead, trains and predicts with :func:`isojax.pipeline.train_file` and
:func:`isojax.pipeline.predict_file` (the checked PSF handed over in memory), and scores
the result. :mod:`isojax.pipeline` re-exports :func:`demo` and :data:`DEMO_FILES`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from isojax.errors import IsojaxInputError
from isojax.pipeline import Log, _stderr, predict_file, train_file
from isojax.psf import AxialPSF

__all__ = ["DEMO_FILES", "demo"]


def _simulated_bead(key, *, sigma_lateral_px, sigma_axial_px, pixel_size, z_step, photons=3000.0):
    """A sub-resolution bead imaged with the simulator's Gaussian PSF (background and noise)."""
    import jax

    from isojax.forward import add_noise
    from isojax.psf import gaussian_psf

    spacing = (z_step, pixel_size, pixel_size)
    sigma_um = (
        sigma_axial_px * pixel_size,
        sigma_lateral_px * pixel_size,
        sigma_lateral_px * pixel_size,
    )
    psf3d = np.asarray(gaussian_psf(sigma_um, spacing, shape=(31, 41, 41)))
    psf3d = psf3d / psf3d.max()
    background = 0.05
    bead = add_noise(key, jax.numpy.asarray(psf3d + background), photons=photons, sigma=0.002)
    return (np.asarray(bead) * 1000).astype(np.float32), spacing


#: What :func:`demo` writes into its folder; with ``overwrite`` only these are replaced.
DEMO_FILES = ("stack.tif", "truth.tif", "bead.tif", "psf.tif", "psf.png", "model/",
              "isojax.tif", "linear.tif", "views.png", "scores.json")


def demo(
    out: str | os.PathLike = "isojax-demo",
    *,
    seed: int = 0,
    subsample: float = 4.0,
    shape: Sequence[int] = (96, 128, 128),
    steps: int = 300,
    batch_size: int = 8,
    patch_size: int = 64,
    first_filters: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    log: Log = _stderr,
) -> dict:
    """``isojax demo``: the whole pipeline on a simulated stack with known ground truth.

    1. Simulates an isotropic specimen (filaments, vesicles) at 0.1 µm voxels and its
       anisotropic acquisition: Gaussian PSF of sigma 1 px laterally and 3 px axially,
       Z sampled every ``subsample`` pixels, shot and read noise.
    2. Simulates a bead stack with the same optics, derives the additional axial PSF from
       it with the PSF toolkit, and compares it with the known answer
       (sigma ``sqrt(3^2 - 1^2)`` px).
    3. Trains a U-Net briefly (``first_filters=16`` by default so that the demo takes a few
       minutes on two CPU cores; ``isojax train`` uses CARE's 32), then predicts the
       isotropic stack.
    4. Scores linear interpolation and isojax against the truth on the physical grid (PSNR,
       SSIM) and draws orthogonal views.

    Writes into ``out``: ``stack.tif`` (anisotropic input), ``truth.tif``, ``bead.tif``,
    ``psf.tif``/``psf.png``, ``model/``, ``isojax.tif``, ``linear.tif``, ``views.png``,
    ``scores.json`` (:data:`DEMO_FILES`). An existing ``out`` that is not empty is refused
    unless ``overwrite``; then only these files are replaced and any other file in ``out``
    is kept.

    Args:
      out: the folder to write into.
      seed: the random seed of the simulation and the training.
      subsample: the simulated anisotropy factor.
      shape: the isotropic specimen's shape ``(z, y, x)`` in voxels.
      steps: training steps.
      batch_size: patches per training step.
      patch_size: side of the square training patches in pixels.
      first_filters: filters of the U-Net's first level.
      overwrite: replace the demo's own files in a non-empty ``out``.
      progress: show progress.
      log: where messages go.

    Returns:
      The scores: PSNR and SSIM of linear interpolation and of isojax.

    Raises:
      IsojaxInputError: ``out`` is a file, or a folder that is not empty and ``overwrite``
        is False.
    """
    import jax

    from isojax.io import write_tiff
    from isojax.simulate import simulate_stack

    t_start = time.perf_counter()
    out = Path(out)
    _demo_folder(out, overwrite=overwrite)
    k_spec, k_bead = jax.random.split(jax.random.key(seed))
    sxy, sz, pixel = 1.0, 3.0, 0.1
    log(
        f"1/4 simulating a {tuple(shape)} isotropic specimen and its acquisition (subsample {subsample:g})"
    )
    simulated, _, acq = simulate_stack(
        k_spec, shape_zyx=tuple(shape), subsample=subsample, sigma_lateral=sxy,
        sigma_axial=sz, photons=500.0, read_noise=0.002, pixel_size=pixel,
    )
    stack = np.asarray(simulated) * 1000  # camera-like units
    reference = np.asarray(acq.reference) * 1000
    write_tiff(out / "stack.tif", stack, spacing=acq.spacing)
    write_tiff(out / "truth.tif", reference, spacing=acq.spacing_fine)

    log("2/4 deriving the axial PSF from a simulated bead")
    axial = _demo_psf(out, k_bead, sigma_lateral_px=sxy, sigma_axial_px=sz, pixel_size=pixel,
                      log=log)

    log(f"3/4 training for {steps} steps (batch {batch_size}, patch {patch_size})")
    model = out / "model"
    if model.exists():
        import shutil

        shutil.rmtree(model)  # the demo's own folder: start afresh each run
    train_file(  # the checked PSF in memory; psf.tif is only the user's copy
        out / "stack.tif", model=model, psf=axial, steps=steps,
        batch_size=batch_size, patch_size=patch_size, first_filters=first_filters, seed=seed,
        checkpoint_every=max(steps // 4, 1), val_every=max(steps // 4, 1), progress=progress,
        log=log,
    )
    log("4/4 predicting and scoring")
    pred = predict_file(
        out / "stack.tif", model=model, output=out / "isojax.tif", overwrite=True,
        progress=progress, log=log,
    )
    return _demo_scores(out, stack, reference, pred, spacing_fine=acq.spacing_fine,
                        subsample=subsample, t_start=t_start)


def _demo_folder(out: Path, *, overwrite: bool, files: Sequence[str] = DEMO_FILES) -> None:
    """Create a demo's output folder; refuse a file, or a non-empty folder without overwrite
    (``files``: what that demo writes, named in the message).

    Raises:
      IsojaxInputError: ``out`` is a file, or a folder that is not empty and ``overwrite``
        is False.
    """
    if out.exists() and not out.is_dir():
        raise IsojaxInputError(f"{out} is a file: choose a folder for the demo's outputs (--out)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise IsojaxInputError(
            f"{out} exists and is not empty; pass --overwrite to replace the demo's own files "
            f"in it ({', '.join(files)}; other files are kept), or choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def _demo_psf(out: Path, key, *, sigma_lateral_px: float, sigma_axial_px: float,
              pixel_size: float, log: Log) -> AxialPSF:
    """``demo``'s step 2: a simulated bead, the axial PSF derived from it, compared with the
    known answer; writes ``bead.tif``, ``psf.tif`` and ``psf.png``.

    Returns:
      The checked :class:`~isojax.psf.AxialPSF` that training then takes in memory.
    """
    from isojax.io import write_tiff
    from isojax.plot import save_psf_png
    from isojax.psf import fwhm
    from isojax.psf.sources import resolve_psf

    sxy, sz, pixel = sigma_lateral_px, sigma_axial_px, pixel_size
    bead, bead_spacing = _simulated_bead(
        key, sigma_lateral_px=sxy, sigma_axial_px=sz, pixel_size=pixel, z_step=2 * pixel
    )
    write_tiff(out / "bead.tif", bead, spacing=bead_spacing)
    axial = resolve_psf(pixel_size=pixel, bead=out / "bead.tif", log=log)
    dense = axial.dense()
    write_tiff(out / "psf.tif", dense, pixel_size=pixel)
    save_psf_png(out / "psf.png", dense, pixel_size=pixel, title="Axial PSF derived from the bead")
    measured = fwhm(dense[dense.shape[0] // 2])
    expected = 2.3548 * math.sqrt(sz**2 - sxy**2)
    log(f"    axial FWHM {measured:.2f} px; the simulated optics give {expected:.2f} px")
    return axial


def _demo_scores(out: Path, stack, reference, pred, *, spacing_fine, subsample: float,
                 t_start: float) -> dict:
    """``demo``'s scores: linear interpolation and isojax against the truth (PSNR, SSIM);
    writes ``linear.tif``, ``scores.json`` and ``views.png``, and prints the table.

    Returns:
      The scores (see :func:`demo`).
    """
    import json

    from isojax.io import write_tiff
    from isojax.metrics import psnr, ssim
    from isojax.plot import save_views_png
    from isojax.predict import upsample_z

    linear = np.asarray(upsample_z(stack, subsample))
    write_tiff(out / "linear.tif", linear, spacing=spacing_fine)
    truth = reference[: pred.shape[0]]
    rng = float(truth.max() - truth.min())
    methods = {
        name: {
            "psnr_db": float(psnr(v, truth, data_range=rng)),
            "ssim": float(ssim(v, truth, data_range=rng)),
        }
        for name, v in (("linear", linear), ("isojax", pred))
    }
    seconds = time.perf_counter() - t_start
    scores: dict[str, dict[str, float] | float] = {**methods, "seconds": seconds}
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    save_views_png(
        out / "views.png",
        {"truth": truth, "input (linear)": linear, "isojax": pred},
        spacing=spacing_fine,
        title=f"subsample {subsample:g}: orthogonal views through the centre",
    )
    print(f"{'method':<10} {'PSNR (dB)':>10} {'SSIM':>8}")
    for name in ("linear", "isojax"):
        print(f"{name:<10} {methods[name]['psnr_db']:>10.2f} {methods[name]['ssim']:>8.4f}")
    print(
        f"outputs in {out}/ (views.png shows truth, input and restoration); {seconds:.0f} s"
    )
    return scores
