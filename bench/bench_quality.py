"""Restoration quality: isojax vs CSBDeep's IsotropicCARE vs linear interpolation, equal budget.

For each setting (anisotropy factor x noise level) one simulated acquisition of ONE isotropic
specimen (:func:`isojax.simulate.simulate_specimen`, drawn once from ``--seed``) is restored by

  linear            :func:`isojax.predict.upsample_z` (linear interpolation on the physical grid);
  isojax            :func:`isojax.train.train` then :func:`isojax.predict.predict_stack`, with
                    isojax's defaults (CARE U-Net, MAE, Adam 4e-4 with warm-up and cosine decay,
                    pairs synthesised on the fly from the XY planes, mean fusion of the views);
  csbdeep           CSBDeep's isotropic recipe (examples/isotropic_reconstruction): patches from
                    ``create_patches`` with ``anisotropic_distortions(subsample, psf,
                    psf_axes='YX')``, ``IsotropicCARE(Config('YX'))``, ``train`` with the
                    recipe's intensity augmenter, ``IsotropicCARE.predict(stack, 'ZYX', factor)``;
                    its output resampled onto the physical grid (see below);
  csbdeep-own-grid  the same CSBDeep output scored as it comes, slice ``j`` taken to be at
                    ``z = j`` fine pixels: what a user gets who trusts the voxel size ``dz / s``.

Both networks get the same budget: ``--steps`` optimiser steps of ``--batch-size`` patches of
``--patch-size`` pixels, the same architecture (CARE's 2D default: depth 2, ``--first-filters``
32, 5x5 kernels, residual) and the same PSF, the simulation's true additional axial PSF
(``Acquisition.psf``, ``(lateral, axial)``). Both keep the weights of the best validation loss.

Grids. The simulated stack's plane ``k`` sits at ``z = k * s`` fine pixels; the reference
(:attr:`Acquisition.reference`) is on the fine grid. isojax's output slice ``j`` sits at
``z = j`` (``upsampled_length`` slices), so it is scored against ``reference[:n]`` directly.
CSBDeep's ``IsotropicCARE.predict`` upsamples Z with ``scipy.ndimage.zoom(order=1)``: it makes
``m = round(n_z * s)`` slices and maps the first and last input planes onto the first and last
output slices, so its slice ``j`` sits at ``z = j * s (n_z - 1) / (m - 1)`` fine pixels. We
resample it with linear interpolation along Z at the positions ``u_k = k (m - 1) / (s (n_z - 1))``
(``k = 0 .. n - 1``, never past ``m - 1``) to put it on the physical grid. ``--grid-check``
(default on) verifies this model of CSBDeep's grid with an identity network before the runs.

Every score is PSNR/SSIM (:func:`isojax.metrics.psnr`, :func:`isojax.metrics.ssim`, 3D SSIM)
against ``reference[:n]`` with ``data_range`` the range of that reference, in the stack's units.
Train time is wall-clock and includes data preparation (CSBDeep's ``create_patches``),
compilation / graph building and validation; predict time is the whole-stack prediction.

Usage (smoke): ``python bench/bench_quality.py --steps 5 --shape 32 64 64 --patch-size 32``
Full run (quiet machine): ``python bench/bench_quality.py`` (defaults below; see
bench/README_quality.md for timings). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import numpy as np
from _env import describe, maybe_reexec

METHODS = ("linear", "isojax", "isojax-bf16", "csbdeep")


def _parse() -> argparse.Namespace:
    return check_args(build_parser().parse_args())


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command line (shared with ``bench_time_to_quality.py``)."""
    p = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    p.add_argument(
        "--factors",
        type=float,
        nargs="+",
        default=[2.0, 4.0, 10.2],
        help="anisotropy factors dz/dx to simulate (default 2 4 10.2)",
    )
    p.add_argument(
        "--noise",
        nargs="+",
        default=["1000", "100"],
        help="photons per unit intensity of the truth; 'none' for no shot noise (default 1000 100)",
    )
    p.add_argument(
        "--read-noise",
        type=float,
        default=0.0,
        help="Gaussian read noise, in units of the truth (default 0)",
    )
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=[96, 256, 256],
        metavar=("Z", "Y", "X"),
        help="size of the isotropic truth in fine pixels (default 96 256 256)",
    )
    p.add_argument("--sigma-lateral", type=float, default=1.0, help="lateral PSF sigma, px")
    p.add_argument("--sigma-axial", type=float, default=3.0, help="axial PSF sigma, px")
    p.add_argument("--steps", type=int, default=400, help="optimiser steps per model")
    p.add_argument("--batch-size", type=int, default=16, help="patches per step")
    p.add_argument("--patch-size", type=int, default=64, help="patch side in pixels")
    p.add_argument(
        "--first-filters",
        type=int,
        default=32,
        help="U-Net first-level filters, for BOTH methods (CARE default 32)",
    )
    p.add_argument(
        "--csbdeep-patches",
        type=int,
        default=2048,
        help="patches CSBDeep pre-generates per setting (half X-, half Y-degraded); "
        "as many as isojax validates on (4 batches) are kept for validation "
        "(default 2048)",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("out/bench_quality"),
        help="model folders and logs (default out/bench_quality, git-ignored)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=Path("out/bench_quality.json"),
        help="results file (default out/bench_quality.json)",
    )
    p.add_argument(
        "--no-grid-check",
        action="store_true",
        help="skip the identity-network check of CSBDeep's output grid",
    )
    p.add_argument(
        "--no-hugepages",
        action="store_true",
        help="keep the default malloc (see bench/_env.py; default restarts with huge pages)",
    )
    return p


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Check the options; ``--noise`` becomes floats (None for 'none')."""
    for name in ("steps", "batch_size", "patch_size", "first_filters", "csbdeep_patches"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.patch_size % 4:
        raise SystemExit("--patch-size must be a multiple of 4 (2**depth for depth 2)")
    if min(args.shape[1:]) < args.patch_size:
        raise SystemExit(
            f"--patch-size {args.patch_size} exceeds the lateral size {args.shape[1:]}"
        )
    if any(not (math.isfinite(s) and s >= 1) for s in args.factors):
        raise SystemExit("--factors must be numbers >= 1")
    noise = []
    for v in args.noise:
        if v.lower() == "none":
            noise.append(None)
        else:
            try:
                noise.append(float(v))
            except ValueError:
                raise SystemExit(f"--noise takes numbers or 'none', got {v!r}") from None
    args.noise = noise
    for s in args.factors:
        n_low = math.floor((args.shape[0] - 1) / s) + 1
        if n_low < 3:
            raise SystemExit(
                f"--shape z={args.shape[0]} gives only {n_low} planes at factor {s:g}; "
                "use a thicker truth"
            )
    return args


# ----------------------------------------------------------------------------------------
# Grids


def csbdeep_z_positions(n_z: int, subsample: float) -> np.ndarray:
    """Where CSBDeep's ``zoom(order=1)`` output slices sit, in fine pixels (plane k at k*s)."""
    m = round(n_z * subsample)
    return np.arange(m) * subsample * (n_z - 1) / (m - 1)


def to_physical_grid(vol: np.ndarray, n_z: int, subsample: float, n_out: int) -> np.ndarray:
    """Resample CSBDeep's output (zoom grid) onto the physical grid ``z = 0 .. n_out - 1``.

    Linear interpolation along Z: physical slice ``k`` lies at ``u = k (m - 1) / (s (n_z - 1))``
    output slices of CSBDeep (``m = vol.shape[0]``), between slices ``floor(u)`` and
    ``floor(u) + 1``.
    """
    m = vol.shape[0]
    u = np.arange(n_out) * (m - 1) / (subsample * (n_z - 1))
    if u[-1] > m - 1 + 1e-6:
        raise ValueError(f"physical grid of {n_out} slices runs past CSBDeep's {m} slices")
    lo = np.clip(np.floor(u).astype(int), 0, m - 2)
    t = (u - lo).astype(np.float32)[:, None, None]
    return (1 - t) * vol[lo] + t * vol[lo + 1]


# ----------------------------------------------------------------------------------------
# CSBDeep


def _import_csbdeep():
    with contextlib.redirect_stderr(io.StringIO()):
        import tensorflow as tf  # noqa: F401
        from csbdeep.data import RawData, create_patches
        from csbdeep.data.transform import anisotropic_distortions
        from csbdeep.models import Config, IsotropicCARE
    return RawData, create_patches, anisotropic_distortions, Config, IsotropicCARE


def _intensity_augmenter(rng: np.random.Generator):
    """The recipe's augmentation: per patch and channel, ``x * a + b``, a in [0.5, 2], b in [-1, 1]."""

    def augment(x, y):
        shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
        a = rng.uniform(0.5, 2.0, shape).astype(x.dtype)
        b = rng.uniform(-1.0, 1.0, shape).astype(x.dtype)
        return x * a + b, y * a + b

    return augment


def _n_params_keras(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.keras_model.weights))


def csbdeep_patches(stack, psf, subsample, args, rng: np.random.Generator) -> dict:
    """CSBDeep's training patches for one stack (the recipe, both lateral orientations).

    Returns:
      ``x``, ``y`` (``(n, p, p, 1)`` float32, shuffled), ``n_val`` (the first ``n_val`` are
      for validation) and ``warnings`` (CSBDeep's messages).
    """
    RawData, create_patches, anisotropic_distortions, _, _ = _import_csbdeep()
    psf = np.array(psf, np.float32)  # (lateral, axial); CSBDeep divides it by its sum in place
    p = args.patch_size
    raw = RawData.from_arrays([stack], [stack], axes="ZYX")
    xs, ys = [], []
    caught_warnings = []
    n_half = [args.csbdeep_patches // 2, args.csbdeep_patches - args.csbdeep_patches // 2]
    # the recipe degrades X (rows of the PSF in 'YX' are lateral, columns axial); we also
    # degrade Y with the transposed PSF and transpose those patches so that the degraded axis
    # is the last one, as IsotropicCARE.predict feeds Z (and as isojax's axial='both' does)
    for (axis, psf_yx), n in zip((("X", psf.copy()), ("Y", psf.T.copy())), n_half, strict=True):
        transform = anisotropic_distortions(
            subsample=subsample, psf=psf_yx, psf_axes="YX", subsample_axis=axis
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                x, y, axes = create_patches(
                    raw, (1, p, p), n, transforms=[transform], verbose=False
                )
            except ValueError as e:
                raise SystemExit(
                    f"CSBDeep's create_patches failed at factor {subsample:g}: {e}. If the "
                    "patch does not fit: anisotropic_distortions crops the degraded axis to a "
                    "multiple of the factor (up to 20%), so use a smaller --patch-size or a "
                    "larger --shape."
                ) from e
        caught_warnings += sorted({str(w.message) for w in caught} - set(caught_warnings))
        assert axes == "SCZYX", axes
        x, y = x[:, 0, 0], y[:, 0, 0]
        if axis == "Y":
            x, y = x.swapaxes(1, 2), y.swapaxes(1, 2)
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs)[..., None], np.concatenate(ys)[..., None]
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    # validate on as many patches as isojax does (TrainConfig.val_batches batches of the same
    # size), so that validation costs both the same time
    n_val = min(_isojax_val_patches(args), len(x) // 2)
    return {"x": x, "y": y, "n_val": n_val, "warnings": caught_warnings}


def csbdeep_config(args, epochs: int):
    """CSBDeep's ``Config`` for the budget: ``epochs`` epochs of ``args.steps // epochs`` steps."""
    Config = _import_csbdeep()[3]
    return Config(
        "YX",
        1,
        1,
        unet_n_first=args.first_filters,
        train_batch_size=args.batch_size,
        train_epochs=epochs,
        train_steps_per_epoch=args.steps // epochs,
        train_tensorboard=False,
    )


def csbdeep_train_predict(stack, psf, subsample, args, workdir: Path, log: Path) -> dict:
    IsotropicCARE = _import_csbdeep()[4]
    import keras

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    patches = csbdeep_patches(stack, psf, subsample, args, rng)
    x, y, n_val = patches["x"], patches["y"], patches["n_val"]
    caught_warnings = patches["warnings"]
    t_data = time.perf_counter() - t0

    epochs = _epochs(args.steps)
    config = csbdeep_config(args, epochs)
    if workdir.exists():
        shutil.rmtree(workdir)
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        model = IsotropicCARE(config, workdir.name, basedir=str(workdir.parent))
        model.train(
            x[n_val:],
            y[n_val:],
            validation_data=(x[:n_val], y[:n_val]),
            augmenter=_intensity_augmenter(rng),
        )
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        pred = model.predict(np.asarray(stack, np.float32), "ZYX", subsample)
    t_pred = time.perf_counter() - t1
    return {
        "pred": np.asarray(pred, np.float32),
        "train_s": t_train,
        "data_s": t_data,
        "predict_s": t_pred,
        "n_params": _n_params_keras(model),
        "n_patches": [len(x) - n_val, n_val],
        "epochs": epochs,
        "warnings": caught_warnings,
    }


def _isojax_val_patches(args) -> int:
    from isojax.train import TrainConfig

    return TrainConfig(steps=1).val_batches * args.batch_size


def _epochs(steps: int) -> int:
    """Validation rounds: the largest divisor of ``steps`` up to 10 (CSBDeep validates per epoch)."""
    return max(d for d in range(1, 11) if steps % d == 0)


def grid_check(subsample: float, seed: int) -> dict:
    """Identity network (zero last layer, residual) through IsotropicCARE.predict.

    On a positive stack that is linear in z at every pixel it confirms (1) that the output
    equals ``zoom(stack, (s, 1, 1), order=1)``, i.e. it is on the zoom grid and not flipped,
    and (2) that
    :func:`to_physical_grid` of it equals isojax's linear ``upsample_z`` (exact for such a
    stack), while the output taken as it comes does not.
    """
    from scipy.ndimage import zoom

    from isojax.predict import upsample_z

    _, _, _, Config, IsotropicCARE = _import_csbdeep()
    rng = np.random.default_rng(seed)
    n_z = 7
    # linear in z at every pixel: linear interpolation is exact on any grid, so a correctly
    # placed (resampled) output equals isojax's upsample_z to rounding, a misplaced one not
    offset, slope = rng.uniform(0.5, 1.0, (2, 1, 16, 16))
    stack = (offset + slope * np.arange(n_z)[:, None, None]).astype(np.float32)
    model = IsotropicCARE(Config("YX", 1, 1, unet_n_first=4), basedir=None)
    last = [layer for layer in model.keras_model.layers if layer.weights][-1]
    last.set_weights([np.zeros_like(w) for w in last.get_weights()])
    with contextlib.redirect_stdout(io.StringIO()):
        # no normaliser: the grid does not depend on it, and the percentile clipping of the
        # geometric fusion would blur the comparison (all values here are positive)
        out = np.asarray(model.predict(stack, "ZYX", subsample, normalizer=None), np.float32)
    expected = zoom(stack, (subsample, 1, 1), order=1)
    linear = np.asarray(upsample_z(stack, subsample))
    physical = to_physical_grid(out, n_z, subsample, linear.shape[0])
    return {
        "subsample": subsample,
        "zoom_slices": int(out.shape[0]),
        "max_abs_vs_zoom": float(np.max(np.abs(out - expected))),
        "max_abs_resampled_vs_isojax_linear": float(np.max(np.abs(physical - linear))),
        "max_abs_unresampled_vs_isojax_linear": float(
            np.max(np.abs(out[: linear.shape[0]] - linear))
        ),
    }


# ----------------------------------------------------------------------------------------
# isojax


def isojax_configs(args, subsample, *, val_every: int, checkpoint_every: int,
                   compute_dtype="float32"):
    """isojax's ``(UNetConfig, TrainConfig, SynthConfig)`` for the budget in ``args``."""
    from isojax.synth import SynthConfig
    from isojax.train import TrainConfig
    from isojax.unet import UNetConfig

    net = UNetConfig(first_filters=args.first_filters)
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        warmup_steps=min(100, args.steps // 10),  # as isojax.pipeline.train_file
        val_every=val_every,
        checkpoint_every=checkpoint_every,
        compute_dtype=compute_dtype,
    )
    return net, config, SynthConfig(subsample=subsample, patch_size=args.patch_size)


def isojax_predict(stack, apply_fn, meta: dict, subsample, net):
    """``predict_stack`` with the model folder's normalisation and interpolation."""
    from isojax.predict import predict_stack

    norm = meta["normalization"]
    return predict_stack(
        stack,
        apply_fn,
        subsample=subsample,
        interpolation=meta["interpolation"],
        multiple=net.divisor,
        normalization=(norm["pmin"], norm["pmax"]),
    )


def isojax_train_predict(
    stack, psf, acq, subsample, args, workdir: Path, log: Path, compute_dtype="float32"
) -> dict:
    import jax

    from isojax.train import load_model, train

    if workdir.exists():
        shutil.rmtree(workdir)
    epochs = _epochs(args.steps)
    net, config, synth_config = isojax_configs(
        args, subsample, val_every=args.steps // epochs, checkpoint_every=args.steps,
        compute_dtype=compute_dtype,
    )
    lines = []
    t0 = time.perf_counter()
    summary = train(
        stack,
        psf,
        workdir=workdir,
        synth_config=synth_config,
        config=config,
        net=net,
        spacing=acq.spacing,
        psf_pixel_size=acq.pixel_size,
        progress=False,
        log=lines.append,
    )
    t_train = time.perf_counter() - t0
    apply_fn, meta = load_model(workdir)
    t1 = time.perf_counter()
    pred = isojax_predict(stack, apply_fn, meta, subsample, net)
    t_pred = time.perf_counter() - t1
    with open(log, "a") as f:
        f.writelines(line + "\n" for line in lines)
        f.write(json.dumps(summary) + "\n")
    from isojax.unet import init_unet

    _, params = init_unet(jax.random.key(0), net)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    return {
        "pred": np.asarray(pred, np.float32),
        "train_s": t_train,
        "predict_s": t_pred,
        "n_params": n_params,
        "best_step": summary.get("best_step"),
        "epochs": epochs,
    }


# ----------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class Row:
    setting: str
    method: str
    psnr: float
    ssim: float
    train_s: float | None
    predict_s: float | None


def _score(pred, ref, data_range) -> tuple[float, float]:
    from isojax.metrics import psnr, ssim

    return (
        float(psnr(pred, ref, data_range=data_range)),
        float(ssim(pred, ref, data_range=data_range)),
    )


def main() -> int:
    args = _parse()
    maybe_reexec(args.no_hugepages)
    import jax

    from isojax.predict import upsample_z
    from isojax.simulate import acquire, simulate_specimen

    args.workdir.mkdir(parents=True, exist_ok=True)
    log = args.workdir / "log.txt"
    print(
        f"logs and models in {args.workdir}/; jax {jax.__version__}, {os.cpu_count()} CPUs, "
        f"{describe()}",
        flush=True,
    )
    result: dict = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "malloc": describe(),
        "settings": [],
    }

    if "csbdeep" in args.methods and not args.no_grid_check:
        checks = [grid_check(s, args.seed) for s in args.factors]
        result["grid_check"] = checks
        for c in checks:
            print(
                f"grid check s={c['subsample']:g}: CSBDeep identity output vs zoom "
                f"max|diff| {c['max_abs_vs_zoom']:.2e}; resampled vs isojax linear "
                f"{c['max_abs_resampled_vs_isojax_linear']:.2e} "
                f"(unresampled {c['max_abs_unresampled_vs_isojax_linear']:.2e})",
                flush=True,
            )
            if c["max_abs_vs_zoom"] > 1e-4 or c["max_abs_resampled_vs_isojax_linear"] > 1e-4:
                print(
                    "WARNING: CSBDeep's output is not on the zoom grid assumed here; the "
                    "csbdeep scores are suspect.",
                    flush=True,
                )

    k_spec, k_acq = jax.random.split(jax.random.key(args.seed))
    t0 = time.perf_counter()
    truth = simulate_specimen(k_spec, tuple(args.shape))
    print(f"specimen {tuple(args.shape)} simulated in {time.perf_counter() - t0:.1f} s", flush=True)

    rows: list[Row] = []
    i = 0
    for s in args.factors:
        for photons in args.noise:
            name = f"s={s:g}, photons={'none' if photons is None else f'{photons:g}'}"
            stack, acq = acquire(
                jax.random.fold_in(k_acq, i),
                truth,
                subsample=s,
                sigma_lateral=args.sigma_lateral,
                sigma_axial=args.sigma_axial,
                photons=photons,
                read_noise=args.read_noise,
            )
            i += 1
            stack = np.array(stack, np.float32)  # a writable copy (CSBDeep writes in place)
            psf = np.asarray(acq.psf, np.float32)
            n_z = stack.shape[0]
            linear = np.asarray(upsample_z(stack, s))
            n = linear.shape[0]
            ref = np.asarray(acq.reference)[:n]
            data_range = float(ref.max() - ref.min())
            entry = {
                "setting": name,
                "subsample": s,
                "photons": photons,
                "stack_shape": list(stack.shape),
                "scored_shape": list(ref.shape),
                "data_range": data_range,
                "methods": {},
            }
            print(f"\n## {name}: stack {stack.shape}, scored on {ref.shape}", flush=True)

            def add(
                method, pred, info=None, entry=entry, ref=ref, data_range=data_range, name=name
            ):
                ps, ss = _score(pred, ref, data_range)
                info = dict(info or {})
                info.pop("pred", None)
                rows.append(Row(name, method, ps, ss, info.get("train_s"), info.get("predict_s")))
                entry["methods"][method] = {"psnr_db": ps, "ssim": ss, **info}
                print(f"   {method:<17} PSNR {ps:6.2f} dB  SSIM {ss:.4f}", flush=True)
                for w in info.get("warnings", []):
                    print(f"   {method} warned: {w}", flush=True)

            if "linear" in args.methods:
                add("linear", linear)
            if "isojax" in args.methods:
                r = isojax_train_predict(
                    stack, psf, acq, s, args, args.workdir / f"isojax_{i}", log
                )
                add("isojax", r["pred"], r)
            if "isojax-bf16" in args.methods:  # mixed precision, same seed and budget
                r = isojax_train_predict(
                    stack, psf, acq, s, args, args.workdir / f"isojax_bf16_{i}", log,
                    compute_dtype="bfloat16",
                )
                add("isojax-bf16", r["pred"], r)
            if "csbdeep" in args.methods:
                r = csbdeep_train_predict(stack, psf, s, args, args.workdir / f"csbdeep_{i}", log)
                own = r["pred"]
                physical = to_physical_grid(own, n_z, s, n)
                add(
                    "csbdeep",
                    physical,
                    {
                        **r,
                        "grid": "resampled to the physical grid",
                        "own_grid_slices": int(own.shape[0]),
                    },
                )
                if own.shape[0] >= n:
                    add("csbdeep-own-grid", own[:n], {"grid": "zoom grid, slice j taken at z=j"})
            result["settings"].append(entry)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\nbudget per model: {args.steps} steps x batch {args.batch_size} x "
        f"{args.patch_size}x{args.patch_size} px; U-Net depth 2, {args.first_filters} filters; "
        f"truth {tuple(args.shape)}, PSF sigma {args.sigma_lateral:g}/{args.sigma_axial:g} px\n"
    )
    print("| setting | method | PSNR (dB) | SSIM | train (s) | predict (s) |")
    print("|---|---|---|---|---|---|")

    def fmt(v):
        return "" if v is None else f"{v:.0f}"

    for r in rows:
        print(
            f"| {r.setting} | {r.method} | {r.psnr:.2f} | {r.ssim:.4f} | {fmt(r.train_s)} | "
            f"{fmt(r.predict_s)} |"
        )
    if {"isojax", "csbdeep"} <= set(args.methods):
        print(
            "\nisojax - csbdeep (physical grid), PSNR dB:",
            ", ".join(
                f"{e['setting']}: {e['methods']['isojax']['psnr_db'] - e['methods']['csbdeep']['psnr_db']:+.2f}"
                for e in result["settings"]
            ),
        )
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
