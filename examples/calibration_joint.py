"""Joint PSF refinement (``isojax train --calibrate-psf``) on specimens that isojax's
training simulator did not make: the joint-refinement half of isojax issue 14.

Each cell draws one stack from the independent generator of
``examples/calibration_experiments.py`` (``make_stack``'s specimen, blur, sampling and
moderate noise, bit for bit) and keeps its truth, then trains twice with the same seed,
steps and network:

- ``joint``: ``isojax.pipeline.train_file(..., calibrate_psf=True)`` without a PSF, what
  ``isojax train --calibrate-psf`` does (spectral pre-calibration, then joint refinement);
- ``true``: the same with the TRUE additional axial PSF (a Gaussian of sigma w px,
  :func:`isojax.psf.gaussian_axial_psf`);

predicts both (:func:`isojax.predict.predict_stack` with the model's normalisation, as
bench/bench_quality.py does) and scores them, and linear interpolation
(:func:`isojax.predict.upsample_z`), on the physical grid: output slice ``j`` sits at fine
plane ``phase + j`` of the specimen, and the reference is the specimen blurred by the
lateral PSF only (sigma 1 px, on all three axes as in :mod:`isojax.simulate`), in the
stack's units (the noise-free expected counts: the same scale and background as the stack);
PSNR/SSIM with ``data_range`` the reference's range (:mod:`isojax.metrics`).

The joint run's final width: ``psf.tif`` of its model folder, its axial profile, as
``isojax.calibrate.continuous_sigma`` (the continuous Gaussian it stands for) and as the
kernel's second moment.

    nice -n 10 python examples/calibration_joint.py            # the five cells (hours)
    nice -n 10 python examples/calibration_joint.py --cells 0  # the issue's cell only
    python examples/calibration_joint.py --report tables.md    # the rows file's tables
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tifffile
from calibration_experiments import (
    KINDS,
    NOISE,
    SIGMA_LATERAL,
    acquire,
    lateral_for,
    make_stack,
    neuron_planes,
)
from scipy import ndimage as ndi

from isojax.calibrate import continuous_sigma
from isojax.metrics import psnr, ssim
from isojax.pipeline import train_file
from isojax.predict import predict_stack, upsample_z
from isojax.psf import AxialPSF, gaussian_axial_psf
from isojax.train import load_model

#: (specimen, subsample, true additional axial sigma in px), in the order they run.
CELLS = [("filaments+nuclei", 3, 4.22), ("filaments+nuclei", 4, 2.0), ("textured", 3, 3.0),
         ("points", 2, 1.0), ("neuron", 4, 2.0)]
NOISE_LEVEL = "moderate"


def stack_and_reference(kind, seed, *, subsample, width, planes=32):
    """``make_stack``'s stack and the scoring reference on the physical grid.

    Returns:
      ``(stack, reference)``: ``(planes, n, n)`` and ``((planes - 1) s + 1, n, n)`` float32;
      the reference is the specimen blurred laterally (sigma 1 px on all axes), from the
      stack's first plane, scaled to the stack's noise-free counts.
    """
    lateral = lateral_for(subsample, kind)
    rng = np.random.default_rng(seed)
    vol = KINDS[kind](rng, (planes * subsample, lateral, lateral))
    phase = int(copy.deepcopy(rng).integers(0, subsample))  # acquire's first draw
    stack = acquire(rng, vol, subsample=subsample, width=width, noise=NOISE_LEVEL)
    sa = math.sqrt(SIGMA_LATERAL**2 + width**2)  # acquire's scale (99.9th percentile)
    b = ndi.gaussian_filter(vol.astype(np.float64), (sa, SIGMA_LATERAL, SIGMA_LATERAL),
                            mode="wrap")[phase::subsample]
    n = (planes - 1) * subsample + 1
    ref = ndi.gaussian_filter(vol.astype(np.float64), SIGMA_LATERAL, mode="wrap")
    p = NOISE[NOISE_LEVEL]
    ref = ref[phase:phase + n] / np.percentile(b, 99.9) * p["photons"] + p["background"]
    return stack, ref.astype(np.float32)


def kernel_widths(model: Path) -> tuple[float, float]:
    """The model folder's PSF: (continuous width, kernel second moment), px."""
    dense = np.asarray(tifffile.imread(model / "psf.tif"), np.float64)
    k = dense.reshape(-1, dense.shape[-1])[dense.reshape(-1, dense.shape[-1]).shape[0] // 2]
    k = k / k.sum()
    x = np.arange(k.size) - k.size // 2
    mean = float(np.sum(k * x))
    moment = math.sqrt(float(np.sum(k * (x - mean) ** 2)))
    return float(continuous_sigma(jnp.asarray(k, jnp.float32))), moment


def train_and_score(stack, ref, *, subsample, psf, workdir: Path, args, log) -> dict:
    """Train (``psf=None``: ``--calibrate-psf`` from no PSF), predict, score."""
    if workdir.exists():
        shutil.rmtree(workdir)
    path = workdir.parent / f"{workdir.name}.tif"
    tifffile.imwrite(path, stack)
    lines: list[str] = []
    t0 = time.perf_counter()
    summary = train_file(path, model=workdir, psf=psf, subsample=float(subsample),
                         steps=args.steps, batch_size=args.batch_size,
                         patch_size=args.patch_size, first_filters=args.first_filters,
                         seed=args.seed, checkpoint_every=args.steps, val_every=args.steps // 4,
                         progress=False, log=lines.append, calibrate_psf=psf is None)
    dt = time.perf_counter() - t0
    apply_fn, meta = load_model(workdir)
    norm = meta["normalization"]
    pred = np.asarray(predict_stack(stack, apply_fn, subsample=float(subsample),
                                    interpolation=meta["interpolation"], multiple=4,
                                    normalization=(norm["pmin"], norm["pmax"])), np.float32)
    rng_ = float(ref.max() - ref.min())
    out = dict(psnr=float(psnr(pred, ref, data_range=rng_)),
               ssim=float(ssim(pred, ref, data_range=rng_)), train_s=dt,
               summary={k: v for k, v in summary.items() if k != "psf"})
    if psf is None:
        out["sig_c"], out["sig_k"] = kernel_widths(workdir)
        traj = json.loads((workdir / "psf_trajectory.json").read_text())
        cal = traj["calibration"]
        out["pre_sigma_px"] = cal.get("sigma_px")
        out["pre_sigma_c"] = cal.get("sigma_continuous_px")
        out["joint_path"] = [(r["step"], r["psf_sigma_px"]) for r in traj["joint"]][::10]
    for line in lines:
        if "calibrat" in line or "PSF" in line or "psf" in line:
            log(f"    {line}")
    return out


def run_cell(i, kind, s, w, args, tmp: Path, log) -> dict:
    seed = args.stack_seed + i
    stack, ref = stack_and_reference(kind, seed, subsample=s, width=w)
    # the same stack as the grid's generator makes for this seed
    assert np.array_equal(stack, make_stack(kind, seed, subsample=s, width=w, noise=NOISE_LEVEL,
                                            lateral=lateral_for(s, kind)))
    lin = np.asarray(upsample_z(stack, float(s)), np.float32)
    assert lin.shape == ref.shape, (lin.shape, ref.shape)
    rng_ = float(ref.max() - ref.min())
    row = dict(kind=kind, s=s, w=w, seed=seed, shape=list(stack.shape),
               linear=dict(psnr=float(psnr(lin, ref, data_range=rng_)),
                           ssim=float(ssim(lin, ref, data_range=rng_))))
    log(f"cell {i}: {kind} s={s} w={w} stack {stack.shape}; linear {row['linear']['psnr']:.2f} dB")
    true_psf = AxialPSF.checked(np.asarray(gaussian_axial_psf(w)), pixel_size=None,
                                provenance="the true additional axial PSF")
    row["joint"] = train_and_score(stack, ref, subsample=s, psf=None, workdir=tmp / f"joint{i}",
                                   args=args, log=log)
    j = row["joint"]
    log(f"  joint: {j['psnr']:.2f} dB, SSIM {j['ssim']:.4f}, width {j['sig_c']:.3f} px "
        f"(kernel {j['sig_k']:.3f}), pre-calibration {j['pre_sigma_c']}, {j['train_s']:.0f} s")
    row["true"] = train_and_score(stack, ref, subsample=s, psf=true_psf, workdir=tmp / f"true{i}",
                                  args=args, log=log)
    t = row["true"]
    log(f"  true PSF: {t['psnr']:.2f} dB, SSIM {t['ssim']:.4f}, {t['train_s']:.0f} s")
    return row


def table(row) -> str:
    j, t, lin = row["joint"], row["true"], row["linear"]
    err = j["sig_c"] / row["w"] - 1
    return "\n".join([
        f"### {row['kind']}, subsample {row['s']}, true w = {row['w']:g} px "
        f"(stack {tuple(row['shape'])}, seed {row['seed']})\n",
        "| true w (px) | pre-calibration (continuous, px) | joint final width, continuous "
        "(px) | joint final width, kernel 2nd moment (px) | error (continuous) | PSNR joint "
        "(dB) | PSNR true PSF (dB) | PSNR linear (dB) | gap joint - true (dB) | SSIM joint / "
        "true / linear | train time joint / true (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {row['w']:g} | {j['pre_sigma_c']:.3f} | {j['sig_c']:.3f} | {j['sig_k']:.3f} | "
        f"{100 * err:+.1f}% | {j['psnr']:.2f} | {t['psnr']:.2f} | {lin['psnr']:.2f} | "
        f"{j['psnr'] - t['psnr']:+.2f} | {j['ssim']:.4f} / {t['ssim']:.4f} / {lin['ssim']:.4f} "
        f"| {j['train_s']:.0f} / {t['train_s']:.0f} |", ""])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", type=int, default=list(range(len(CELLS))),
                    help="indices into CELLS (0: the issue's filaments+nuclei s=3 w=4.22)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--first-filters", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="training seed (both runs)")
    ap.add_argument("--stack-seed", type=int, default=1000,
                    help="cell i's stack is drawn with seed STACK_SEED + i")
    ap.add_argument("--rows", type=Path, default=Path("bench/calibration_joint.rows.jsonl"),
                    help="each cell's results appended here (JSON lines) when done")
    ap.add_argument("--report", type=Path, default=None, metavar="OUT.md",
                    help="no training: tabulate the rows file into OUT.md")
    args = ap.parse_args(argv)

    def log(m):
        print(m, flush=True)

    if args.report is not None:
        rows = [json.loads(x) for x in args.rows.read_text().splitlines() if x.strip()]
        args.report.write_text("\n".join(table(r) for r in rows) + "\n")
        log(f"wrote {args.report}")
        return

    with tempfile.TemporaryDirectory() as tmp:
        for i in args.cells:
            kind, s, w = CELLS[i]
            if kind == "neuron":
                try:
                    neuron_planes()
                except SystemExit as e:
                    log(f"cell {i} skipped: {e}")
                    continue
            row = run_cell(i, kind, s, w, args, Path(tmp), log)
            row.update(settings=dict(steps=args.steps, batch_size=args.batch_size,
                                     patch_size=args.patch_size,
                                     first_filters=args.first_filters, seed=args.seed,
                                     command=" ".join(sys.argv), jax=jax.__version__))
            with open(args.rows, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            log(table(row))


if __name__ == "__main__":
    main()
