"""PSF self-calibration when the additional axial PSF is not a Gaussian.

Specimens come from the independent generator of ``examples/calibration_experiments.py``
(scipy.ndimage, not :mod:`isojax.simulate`): filaments with textured nuclei. Each is
blurred in 3D by a lateral Gaussian (sigma 1 px on all three axes: the isotropic
reference), then along Z by an additional axial PSF ``h`` (the truth), sampled every ``s``
px along Z and recorded with Poisson and read noise (500 photons at the 99.9th
percentile, 10 background, read noise 2). Three shapes of ``h`` (pixels of the fine grid):

``lightsheet``  a light-sheet detection PSF seen along Z: the on-axis intensity of a
                paraxial widefield detection PSF, ``sinc^2(z / a)`` (Born & Wolf's
                ``(sin(u/4) / (u/4))^2``; first zero at ``a = s``, side lobes of 4.7% of
                the peak at ``1.43 a``) times a Gaussian light sheet of sigma ``2 a`` (a
                thick sheet, which keeps most of the lobes), cut at ``+-4 a``;
``box``         a box as wide as the Z step (serial-section or FIB-SEM volume EM: each
                plane integrates a slab as thick as the step; for an even ``s`` the two
                end taps carry half weight);
``gaussian``    a Gaussian of sigma ``s / 2`` (the control).

Experiment 1 (``calibrate``): ``isojax.calibrate.fit_psf`` with each family; per cell the
L1 distance between the normalised recovered and true axial profiles (0 = the same, 2 =
disjoint), the second-moment sigma and the FWHM of both, the identifiability verdict and
the time. Rows are appended to ``out/nongauss_calib.jsonl`` as they come.

Experiment 2 (``restore``): :func:`isojax.train.train` on the same stack, same seed and
budget, once with the true ``h`` and once with a recovered one, then
:func:`isojax.predict.predict_stack`; PSNR against the lateral-blurred specimen on the
physical grid (slice ``j`` at ``z = j`` fine px; the stack's first plane is at ``z = 0``).
Rows go to ``out/nongauss_restore.jsonl``.

    python examples/calibration_nongaussian.py calibrate --factors 3 6
    python examples/calibration_nongaussian.py restore --factors 3 --shapes box lightsheet
    python examples/calibration_nongaussian.py table --tables out/nongauss_calib.jsonl ...
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_experiments import KINDS, NOISE

from isojax.calibrate import fit_psf
from isojax.psf import fwhm

SIGMA_LATERAL = 1.0
SHAPES = ("lightsheet", "box", "gaussian")
FAMILIES = ("gaussian", "multi-gaussian", "free")


def true_psf(shape: str, s: int) -> np.ndarray:
    """The additional axial PSF ``h`` (odd length, centred, sums to one), fine-grid px."""
    if shape == "lightsheet":
        a = float(s)
        half = math.ceil(4 * a)
        z = np.arange(-half, half + 1, dtype=np.float64)
        h = np.sinc(z / a) ** 2 * np.exp(-0.5 * (z / (2 * a)) ** 2)
    elif shape == "box":
        half = s // 2
        h = np.ones(2 * half + 1)
        if s % 2 == 0:
            h[0] = h[-1] = 0.5
    elif shape == "gaussian":
        sig = s / 2
        half = math.ceil(4 * sig)
        z = np.arange(-half, half + 1, dtype=np.float64)
        h = np.exp(-0.5 * (z / sig) ** 2)
    else:
        raise ValueError(shape)
    return h / h.sum()


def moments(h: np.ndarray) -> tuple[float, float]:
    """(second-moment sigma, FWHM) of a centred kernel, px."""
    z = np.arange(h.size) - h.size // 2
    h = h / h.sum()
    return float(np.sqrt(np.sum(h * z**2))), float(fwhm(h))


def l1(a: np.ndarray, b: np.ndarray) -> float:
    """L1 distance of two centred kernels, each normalised to sum 1 (padded to one length)."""
    n = max(a.size, b.size)
    pa = np.pad(a / a.sum(), ((n - a.size) // 2,))
    pb = np.pad(b / b.sum(), ((n - b.size) // 2,))
    return float(np.abs(pa - pb).sum())


def make(shape: str, s: int, seed: int, *, planes: int = 32, lateral: int = 128):
    """(stack, reference on the fine grid in the stack's units, true h)."""
    rng = np.random.default_rng(seed)
    vol = KINDS["filaments+nuclei"](rng, (planes * s, lateral, lateral)).astype(np.float64)
    ref = ndi.gaussian_filter(vol, SIGMA_LATERAL, mode="wrap")
    h = true_psf(shape, s)
    b = ndi.convolve1d(ref, h, axis=0, mode="wrap")[::s]
    scale = np.percentile(b, 99.9)
    p = NOISE["moderate"]
    lam = np.clip(b / scale, 0, None) * p["photons"] + p["background"]
    stack = (rng.poisson(lam) + rng.normal(0, p["read_noise"], lam.shape)).astype(np.float32)
    ref = (ref / scale * p["photons"] + p["background"]).astype(np.float32)
    return stack, ref, h


def _append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def calibrate(shapes, factors, families, out: Path, *, seed: int, steps: int) -> list[dict]:
    rows = []
    for s in factors:
        for shape in shapes:
            stack, _, h = make(shape, s, seed + s)
            sig_t, fw_t = moments(h)
            for fam in families:
                t0 = time.perf_counter()
                _, rep = fit_psf(jax.random.key(1), stack, subsample=float(s), family=fam,
                                 steps=steps)
                axial = np.asarray(rep.psf().axial[0], np.float64)
                sig_r, fw_r = moments(axial)
                row = dict(shape=shape, s=s, family=fam, l1=l1(axial, h), sigma_true=sig_t,
                           sigma=sig_r, fwhm_true=fw_t, fwhm=fw_r,
                           identifiable=rep.identifiable, seconds=time.perf_counter() - t0,
                           spectral_loss=rep.spectral_loss, warnings=list(rep.warnings),
                           axial=axial.tolist(), true=h.tolist(), steps=steps, seed=seed + s)
                rows.append(row)
                _append(out, row)
                print(_calib_row(row), flush=True)
    return rows


def _calib_row(r: dict) -> str:
    es = 100 * (r["sigma"] / r["sigma_true"] - 1)
    ef = 100 * (r["fwhm"] / r["fwhm_true"] - 1)
    return (f"| {r['shape']} | {r['s']} | {r['family']} | {r['l1']:.3f} | "
            f"{r['sigma_true']:.2f} / {r['sigma']:.2f} ({es:+.0f}%) | "
            f"{r['fwhm_true']:.2f} / {r['fwhm']:.2f} ({ef:+.0f}%) | "
            f"{'yes' if r['identifiable'] else 'no'} | {r['seconds']:.0f} |")


def train_predict(stack, psf, s: int, workdir: Path, *, steps: int, patch: int, seed: int):
    from isojax.predict import predict_stack
    from isojax.synth import SynthConfig
    from isojax.train import TrainConfig, load_model, train
    from isojax.unet import UNetConfig

    if workdir.exists():
        shutil.rmtree(workdir)
    net = UNetConfig(first_filters=16)
    config = TrainConfig(steps=steps, batch_size=8, seed=seed, warmup_steps=steps // 10,
                         val_every=steps // 4, checkpoint_every=steps)
    t0 = time.perf_counter()
    train(stack, np.asarray(psf, np.float32)[None, :], workdir=workdir,
          synth_config=SynthConfig(subsample=float(s), patch_size=patch), config=config,
          net=net, progress=False, log=lambda m: None)
    apply_fn, meta = load_model(workdir)
    norm = meta["normalization"]
    pred = predict_stack(stack, apply_fn, subsample=float(s), interpolation=meta["interpolation"],
                         multiple=net.divisor, normalization=(norm["pmin"], norm["pmax"]))
    return np.asarray(pred, np.float32), time.perf_counter() - t0


def restore(shapes, factors, families, out: Path, calib: Path, *, seed: int, steps: int,
            patch: int, workroot: Path) -> None:
    """Per cell: train with the true h, then with each family's recovered h (from
    ``calib`` when it holds the cell, else fitted here with fit_psf's defaults)."""
    from isojax.metrics import psnr
    from isojax.predict import upsample_z

    fitted = {}
    if calib.exists():
        for line in calib.read_text().splitlines():
            r = json.loads(line)
            fitted[(r["shape"], r["s"], r["family"])] = np.asarray(r["axial"])
    for s in factors:
        for shape in shapes:
            stack, ref, h = make(shape, s, seed + s)
            lin = np.asarray(upsample_z(stack, float(s)))
            n = lin.shape[0]
            rng = float(ref[:n].max() - ref[:n].min())
            base = dict(shape=shape, s=s, steps=steps, patch=patch, seed=seed + s,
                        psnr_linear=float(psnr(lin, ref[:n], data_range=rng)))
            pred, dt = train_predict(stack, h, s, workroot / f"{shape}_{s}_true",
                                     steps=steps, patch=patch, seed=seed)
            base.update(psnr_true=float(psnr(pred[:n], ref[:n], data_range=rng)),
                        seconds_true=dt)
            print(f"  {shape} s={s} true: {base['psnr_true']:.2f} dB ({dt:.0f} s)", flush=True)
            for family in families:
                rec = fitted.get((shape, s, family))
                if rec is None:
                    _, rep = fit_psf(jax.random.key(1), stack, subsample=float(s), family=family)
                    rec = np.asarray(rep.psf().axial[0], np.float64)
                pred, dt = train_predict(stack, rec, s, workroot / f"{shape}_{s}_{family}",
                                         steps=steps, patch=patch, seed=seed)
                row = dict(base, family=family, l1=l1(rec, h), axial=rec.tolist(),
                           psnr_recovered=float(psnr(pred[:n], ref[:n], data_range=rng)),
                           seconds_recovered=dt)
                row["delta_db"] = row["psnr_true"] - row["psnr_recovered"]
                _append(out, row)
                print(f"  {shape} s={s} {family}: {row['psnr_recovered']:.2f} dB, "
                      f"true - recovered {row['delta_db']:+.2f} dB ({dt:.0f} s)", flush=True)


def tables(calib_files, restore_files) -> str:
    """Markdown tables of the rows in the given ``.jsonl`` files (missing files skipped)."""
    out = ["| additional PSF | subsample | family | L1 | sigma true / recovered (px) | "
           "FWHM true / recovered (px) | identifiable | time (s) |",
           "|---|---|---|---|---|---|---|---|"]
    for f in calib_files:
        if Path(f).exists():
            out += [_calib_row(json.loads(x)) for x in Path(f).read_text().splitlines()]
    out += ["", "| additional PSF | subsample | family of the recovered PSF | L1 | PSNR linear "
            "| PSNR true PSF | PSNR recovered PSF | true - recovered (dB) | within 0.5 dB | "
            "train steps, patch | train s (true, recovered) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in restore_files:
        if not Path(f).exists():
            continue
        for x in Path(f).read_text().splitlines():
            r = json.loads(x)
            out.append(f"| {r['shape']} | {r['s']} | {r['family']} | {r['l1']:.3f} | "
                       f"{r['psnr_linear']:.2f} | {r['psnr_true']:.2f} | "
                       f"{r['psnr_recovered']:.2f} | {r['delta_db']:+.2f} | "
                       f"{'yes' if abs(r['delta_db']) <= 0.5 else 'NO'} | {r['steps']}, "
                       f"{r['patch']} | {r['seconds_true']:.0f}, {r['seconds_recovered']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=("calibrate", "restore", "table"))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    ap.add_argument("--factors", nargs="+", type=int, default=[3, 6])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--fit-steps", type=int, default=40)
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--calib", type=Path, default=Path("out/nongauss_calib.jsonl"))
    ap.add_argument("--workroot", type=Path, default=Path("out/nongauss_models"))
    ap.add_argument("--tables", nargs="+", default=None,
                    help="table: the .jsonl files to tabulate (names holding 'calib' or "
                         "'restore')")
    args = ap.parse_args(argv)
    ap_files = [Path(f) for f in args.tables] if args.tables else []
    if args.experiment == "table":
        print(tables([f for f in ap_files if "calib" in f.name],
                     [f for f in ap_files if "restore" in f.name]))
    elif args.experiment == "calibrate":
        calibrate(args.shapes, args.factors, args.families, args.out or args.calib,
                  seed=args.seed, steps=args.fit_steps)
    else:
        restore(args.shapes, args.factors, args.families,
                args.out or Path("out/nongauss_restore.jsonl"), args.calib, seed=args.seed,
                steps=args.train_steps, patch=args.patch, workroot=args.workroot)


if __name__ == "__main__":
    main()
