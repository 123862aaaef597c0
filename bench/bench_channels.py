"""Multichannel data: one network per channel, or one network over all channels?

A simulated two-channel specimen (:func:`isojax.simulate.simulate_specimen`, drawn from
``--seed``): channel 0 holds filaments only, channel 1 blobs only (filled balls, "nuclei"),
independent of each other, each imaged (:func:`isojax.simulate.acquire`) with its own
additional axial PSF (Gaussian sigma ``--widths``, default 2 and 3.5 px, lateral sigma 1 px,
one plane every ``--subsample`` px, Poisson noise ``--photons``). Restored by

  linear        :func:`isojax.predict.upsample_z` of each channel (the floor);
  per-channel   two single-channel networks, one per channel, each trained by
                :func:`isojax.train.train` with its channel's true PSF, and restored by
                :func:`isojax.predict.predict_stack` (the design isojax has chosen);
  shared        one U-Net (:class:`isojax.unet.UNet`, ``in_channels = out_channels = 2``,
                residual) over both channels, CARE's multi-channel input: each training
                patch is cut at the same place from both channels and each channel is
                degraded with its own PSF (:func:`isojax.forward.measure`, its own noise,
                :func:`isojax.forward.upsample`), trained by a minimal loop here with
                isojax's optimiser (:func:`isojax.train.steps.make_optimizer`), loss (MAE)
                and compiler options; restored view by view as :func:`predict_stack` does
                (checked against it with a per-channel model: ``predictor check``).

Budgets. ``shared@N`` trains ``--steps`` steps, as many as each per-channel network
(equal steps per network: half the total compute of the two per-channel networks);
``shared@2N`` trains twice as many (equal total steps, hence about equal total compute
and time: the 2-channel network costs about as much per step as a 1-channel one, only its
first and last convolutions are wider). Train times are measured and printed.

Everything else is the same for both designs: the U-Net (depth 2, ``--first-filters``, 5x5
kernels, residual), the batch of ``--batch-size`` patches of ``--patch-size`` px, Adam 4e-4
with warm-up and cosine decay, MAE, the training planes (the last 10% of planes held out,
:func:`isojax.synth.split_slices`), the foreground-biased patch choice (CARE's; for the
shared network the bias looks at both channels' mean), augmentation by transposes and
flips, the noise model of each channel (:func:`isojax.synth.estimate_noise` on the
normalised stack, given to both designs explicitly), the per-channel percentile
normalisation (1, 99.8), and the last weights (``checkpoint="last"``: no model selection
for either).

Scores: PSNR/SSIM per channel on the physical grid (output slice ``j`` at ``z = j``) against
the lateral-blurred truth (:attr:`Acquisition.reference`), with the helpers of
``bench/bench_quality.py`` (``_score``: :func:`isojax.metrics.psnr`, 3D
:func:`isojax.metrics.ssim`, ``data_range`` the reference's range).

Usage (smoke): ``python bench/bench_channels.py --steps 4 --shape 32 64 64 --patch-size 32``
Full run (the one in bench/RESULTS.md, about 25 min on 2 loaded CPU cores):
``python bench/bench_channels.py`` (``--seed 1`` for the second specimen). Not part of the
test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from _env import describe, maybe_reexec
from bench_quality import _score

DESIGNS = ("linear", "per-channel", "shared@N", "shared@2N")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128], metavar=("Z", "Y", "X"),
                   help="isotropic truth per channel, fine pixels (default 64 128 128)")
    p.add_argument("--subsample", type=float, default=4.0, help="axial step / pixel (default 4)")
    p.add_argument("--widths", type=float, nargs=2, default=[2.0, 3.5],
                   help="additional axial PSF sigma of channels 0 and 1, px (default 2 3.5)")
    p.add_argument("--photons", type=float, default=500.0,
                   help="photons per unit intensity of the truth (Poisson noise; default 500)")
    p.add_argument("--steps", type=int, default=150, help="steps N per network (default 150)")
    p.add_argument("--batch-size", type=int, default=8, help="patches per step (default 8)")
    p.add_argument("--patch-size", type=int, default=64, help="patch side, px (default 64)")
    p.add_argument("--first-filters", type=int, default=16,
                   help="U-Net first-level filters, both designs (default 16)")
    p.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("out/bench_channels"),
                   help="model folders and logs (default out/bench_channels, git-ignored)")
    p.add_argument("--json", type=Path, default=Path("out/bench_channels.json"))
    p.add_argument("--no-hugepages", action="store_true",
                   help="keep the default malloc (see bench/_env.py)")
    return p.parse_args()


# ----------------------------------------------------------------------------------------
# The specimen


def simulate(args):
    """``(stacks, references, psfs, spacing)``: per channel the anisotropic stack, the
    lateral-blurred truth, the true additional axial PSF ``(1, taps)``."""
    import jax

    from isojax.simulate import acquire, simulate_specimen

    k0, k1, k_acq = jax.random.split(jax.random.key(args.seed), 3)
    shape = tuple(args.shape)
    truths = [
        simulate_specimen(k0, shape, vesicle_density=0.0, background=0.02),  # filaments
        simulate_specimen(k1, shape, filament_density=0.0, vesicle_density=0.25,
                          vesicle_radius=(2.0, 5.0), hollow_fraction=0.0,
                          background=0.02),  # blobs
    ]
    stacks, refs, psfs, spacing = [], [], [], None
    for c, (truth, w) in enumerate(zip(truths, args.widths, strict=True)):
        stack, acq = acquire(jax.random.fold_in(k_acq, c), truth, subsample=args.subsample,
                             sigma_lateral=1.0, sigma_axial=math.sqrt(1.0 + w * w),
                             photons=args.photons)
        stacks.append(np.asarray(stack, np.float32))
        refs.append(np.asarray(acq.reference, np.float32))
        psfs.append(np.asarray(acq.psf, np.float32))
        spacing = acq.spacing
    return stacks, refs, psfs, spacing


def noise_models(stacks) -> list[tuple[float | None, float]]:
    """Each channel's ``(photons, read_noise)`` in normalised units, as train() estimates."""
    from isojax.synth import estimate_noise, normalize_percentile

    out = []
    for s in stacks:
        normed, _ = normalize_percentile(s)
        out.append(estimate_noise(np.asarray(normed)))
    return out


# ----------------------------------------------------------------------------------------
# One network per channel: isojax.train.train


def train_per_channel(c, stack, psf, noise, spacing, args) -> dict:
    from isojax.predict import predict_stack
    from isojax.synth import SynthConfig
    from isojax.train import TrainConfig, load_model, train
    from isojax.unet import UNetConfig

    workdir = args.workdir / f"per_channel_c{c}"
    if workdir.exists():
        shutil.rmtree(workdir)
    net = UNetConfig(first_filters=args.first_filters)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed + c,
                         warmup_steps=min(100, args.steps // 10), val_every=args.steps,
                         checkpoint_every=args.steps)
    synth = SynthConfig(subsample=args.subsample, patch_size=args.patch_size,
                        photons=noise[0], read_noise=noise[1])
    lines: list[str] = []
    t0 = time.perf_counter()
    summary = train(stack, psf, workdir=workdir, synth_config=synth, config=config, net=net,
                    spacing=spacing, psf_pixel_size=spacing[2], progress=False,
                    log=lines.append, match_noise=False)
    t_train = time.perf_counter() - t0
    apply_fn, meta = load_model(workdir, which="last")
    norm = meta["normalization"]
    t1 = time.perf_counter()
    pred = predict_stack(stack, apply_fn, subsample=args.subsample, multiple=net.divisor,
                         normalization=(norm["pmin"], norm["pmax"]))
    (workdir / "log.txt").write_text("\n".join(lines) + "\n" + json.dumps(summary) + "\n")
    return {"pred": np.asarray(pred, np.float32), "train_s": t_train,
            "predict_s": time.perf_counter() - t1, "apply_fn": apply_fn,
            "final_loss": summary.get("loss")}


# ----------------------------------------------------------------------------------------
# One network over both channels: the same U-Net with 2 input and 2 output channels


def _pick(u, n):
    import jax.numpy as jnp

    return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def shared_pairs(key, stacks, psfs, z_idx, *, s, p, margin, batch, noise, fg=0.9, n_cand=8):
    """A batch ``(source, target)``, each ``(batch, p, p, C)``: one crop of all channels.

    The steps of :func:`isojax.synth.make_pairs` (foreground-biased position among
    ``n_cand`` candidates, here on the channels' mean; a sampling-phase jitter; a random
    transpose and flips; blur and sampling by the operator, noise on the samples, linear
    interpolation back), with channel ``c`` degraded by ``psfs[c]`` and noise ``noise[c]``
    (independent noise per channel). The last patch axis is the simulated axial one.
    Traced inside the jitted training step (the options are Python constants).
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    from isojax.forward import add_noise, measure, upsample

    n_c, _nz, ny, nx = stacks.shape
    jitter = math.ceil(s)
    crop = min(p + 2 * margin + jitter, ny, nx)
    k_choice, k_noise = jax.random.split(key)
    u = jax.random.uniform(k_choice, (batch, 4 * n_cand + 6))
    u_z, u_y, u_x, u_g = (u[:, i * n_cand:(i + 1) * n_cand] for i in range(4))
    u_bias, u_jy, u_jx, u_t, u_f0, u_f1 = (u[:, 4 * n_cand + i] for i in range(6))
    cz = z_idx[_pick(u_z, z_idx.shape[0])]
    cy, cx = _pick(u_y, ny - p + 1), _pick(u_x, nx - p + 1)

    def mean_patch(z, y, x):
        return jnp.mean(lax.dynamic_slice(stacks, (0, z, y, x), (n_c, 1, p, p)))

    score = jax.vmap(jax.vmap(mean_patch))(cz, cy, cx)
    w = score - jnp.min(score, axis=1, keepdims=True)
    tiny = 1e-6 * jnp.max(w, axis=1, keepdims=True) + 1e-30
    gumbel = -jnp.log(-jnp.log(jnp.clip(u_g, 1e-12, 1 - 1e-7)))
    best = jnp.argmax(jnp.log(w + tiny) + gumbel, axis=1)
    choice = jnp.where(u_bias < fg, best, 0)
    z0, y0, x0 = (jnp.take_along_axis(v, choice[:, None], 1)[:, 0] for v in (cz, cy, cx))
    sy = jnp.clip(y0 - margin - _pick(u_jy, jitter), 0, ny - crop)
    sx = jnp.clip(x0 - margin - _pick(u_jx, jitter), 0, nx - crop)
    clean = jax.vmap(lambda z, y, x: lax.dynamic_slice(
        stacks, (0, z, y, x), (n_c, 1, crop, crop))[:, 0])(z0, sy, sx)  # (b, C, crop, crop)
    o0, o1 = y0 - sy, x0 - sx
    swap = u_t < 0.5
    clean = jnp.where(swap[:, None, None, None], jnp.swapaxes(clean, 2, 3), clean)
    o0, o1 = jnp.where(swap, o1, o0), jnp.where(swap, o0, o1)
    f0, f1 = u_f0 < 0.5, u_f1 < 0.5
    clean = jnp.where(f0[:, None, None, None], clean[:, :, ::-1, :], clean)
    clean = jnp.where(f1[:, None, None, None], clean[:, :, :, ::-1], clean)
    o0 = jnp.where(f0, crop - p - o0, o0)
    o1 = jnp.where(f1, crop - p - o1, o1)
    degraded = []
    for c in range(n_c):
        photons, read = noise[c]
        samples = measure(clean[:, c], psfs[c], s)
        samples = add_noise(jax.random.fold_in(k_noise, c), samples, photons=photons,
                            sigma=read)
        degraded.append(upsample(samples, crop, s, interpolation="linear"))
    degraded = jnp.stack(degraded, axis=1)

    def cut(img, a, b):
        return lax.dynamic_slice(img, (0, a, b), (n_c, p, p))

    source = jnp.moveaxis(jax.vmap(cut)(degraded, o0, o1), 1, -1)
    target = jnp.moveaxis(jax.vmap(cut)(clean, o0, o1), 1, -1)
    return source, target


def train_shared(normed, psfs, noise, steps, args) -> dict:
    """The 2-channel U-Net trained ``steps`` steps on :func:`shared_pairs`; its apply."""
    import jax
    import jax.numpy as jnp
    import optax

    from isojax.synth import split_slices
    from isojax.train import TrainConfig
    from isojax.train.steps import create_train_state, loss_fn, make_optimizer, new_key
    from isojax.unet import CPU_COMPILER_OPTIONS, UNetConfig, apply_unet

    n_c = len(normed)
    net = UNetConfig(first_filters=args.first_filters, in_channels=n_c, out_channels=n_c)
    config = TrainConfig(steps=steps, batch_size=args.batch_size, seed=args.seed,
                         warmup_steps=min(100, steps // 10))
    graphdef, state = create_train_state(new_key(args.seed), net, config)
    tx = make_optimizer(config)
    stacks = jnp.asarray(np.stack(normed))
    train_z, _val_z = split_slices(stacks.shape[1], val_fraction=0.1)
    z_idx = jnp.asarray(train_z)
    margin = max(int(p.shape[-1]) // 2 + 1 + math.ceil(args.subsample) for p in psfs)
    jpsfs = tuple(jnp.asarray(p) for p in psfs)
    noise = tuple((None if ph is None else float(ph), float(rd)) for ph, rd in noise)

    def step(state, key):
        source, target = shared_pairs(key, stacks, jpsfs, z_idx, s=args.subsample,
                                      p=args.patch_size, margin=margin,
                                      batch=args.batch_size, noise=noise)

        def objective(params):
            return loss_fn(apply_unet(graphdef, params, source), target, "mae")

        loss, grads = jax.value_and_grad(objective)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state._replace(step=state.step + 1, params=params, opt_state=opt_state), loss

    options = CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    step = jax.jit(step, donate_argnums=0, compiler_options=options)
    key = jax.random.fold_in(state.key, 1)  # a buffer of its own: the state is donated
    t0 = time.perf_counter()
    loss = None
    for i in range(steps):
        state, loss = step(state, jax.random.fold_in(key, i))
    loss = float(loss)
    t_train = time.perf_counter() - t0
    params = state.params

    @jax.jit
    def apply_fn(x):  # (b, h, w, C) -> (b, h, w, C)
        return apply_unet(graphdef, params, x)

    return {"apply_fn": apply_fn, "train_s": t_train, "final_loss": loss,
            "multiple": net.divisor}


def predict_views(normed, apply_fn, *, subsample: float, multiple: int, batch: int = 8):
    """Restore normalised channels ``(C, z, y, x)`` with a C-channel network: Z upsampled
    on the physical grid, XZ and YZ slices (lateral axis first, axial last, reflect-padded
    to ``multiple``), mean of the two views; as :func:`isojax.predict.predict_stack`."""
    import jax.numpy as jnp

    from isojax.predict import upsample_z

    up = np.stack([np.asarray(upsample_z(v, subsample)) for v in normed])  # (C, Z, Y, X)
    out = np.zeros_like(up)
    for axis in (2, 3):  # XZ slices (one per y), then YZ slices (one per x)
        # images (slice, lateral, axial, channel)
        imgs = np.moveaxis(up, (axis, 5 - axis, 1, 0), (0, 1, 2, 3))
        h, w = imgs.shape[1:3]
        ph, pw = -h % multiple, -w % multiple
        pad = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
        padded = np.pad(imgs, pad, mode="reflect")
        res = np.empty_like(padded)
        for i in range(0, len(padded), batch):
            res[i:i + batch] = np.asarray(apply_fn(jnp.asarray(padded[i:i + batch])))
        res = res[:, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]
        out += 0.5 * np.moveaxis(res, (0, 1, 2, 3), (axis, 5 - axis, 1, 0))
    return out


# ----------------------------------------------------------------------------------------
# The run


def main() -> int:
    args = _parse()
    maybe_reexec(args.no_hugepages)
    import jax

    from isojax.predict import upsample_z
    from isojax.synth import denormalize, normalize_percentile

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, {describe()}", flush=True)
    t0 = time.perf_counter()
    stacks, refs, psfs, spacing = simulate(args)
    n = np.asarray(upsample_z(stacks[0], args.subsample)).shape[0]
    refs = [r[:n] for r in refs]
    ranges = [float(r.max() - r.min()) for r in refs]
    noise = noise_models(stacks)
    print(f"specimen 2 x {tuple(args.shape)}, stacks {stacks[0].shape}, scored on "
          f"{refs[0].shape}; noise (photons, read) per channel {noise}; "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    norms = [normalize_percentile(s) for s in stacks]
    normed = [np.asarray(v) for v, _ in norms]
    result: dict = {"args": {k: (str(v) if isinstance(v, Path) else v)
                             for k, v in vars(args).items()},
                    "malloc": describe(), "noise": noise, "designs": {}}
    rows = []

    def add(design, preds, info):
        scores = [_score(p, r, d) for p, r, d in zip(preds, refs, ranges, strict=True)]
        entry = {"psnr_db": [s[0] for s in scores], "ssim": [s[1] for s in scores], **info}
        result["designs"][design] = entry
        rows.append((design, scores, info))
        print(f"  {design:<12} " + "  ".join(
            f"c{c}: PSNR {ps:6.2f} dB SSIM {ss:.4f}" for c, (ps, ss) in enumerate(scores))
            + (f"  train {info['train_s']:.0f} s" if "train_s" in info else ""), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")

    def undo(pred, c):
        lo, hi = norms[c][1]
        return np.asarray(denormalize(pred, lo, hi))

    if "linear" in args.designs:
        add("linear", [np.asarray(upsample_z(s, args.subsample)) for s in stacks], {})
    if "per-channel" in args.designs:
        runs = [train_per_channel(c, stacks[c], psfs[c], noise[c], spacing, args)
                for c in range(2)]
        # the view-by-view predictor of the shared design, checked against predict_stack
        mine = predict_views(normed[:1], lambda x: runs[0]["apply_fn"](x[..., 0])[..., None],
                             subsample=args.subsample, multiple=4)
        gap = float(np.max(np.abs(undo(mine[0], 0) - runs[0]["pred"])))
        print(f"  predictor check: max |predict_views - predict_stack| = {gap:.2e}", flush=True)
        result["predictor_check_max_abs"] = gap
        add("per-channel", [r["pred"] for r in runs],
            {"train_s": sum(r["train_s"] for r in runs),
             "train_s_each": [r["train_s"] for r in runs], "steps_each": args.steps,
             "networks": 2, "final_loss": [r["final_loss"] for r in runs]})
    for design, steps in (("shared@N", args.steps), ("shared@2N", 2 * args.steps)):
        if design not in args.designs:
            continue
        r = train_shared(normed, psfs, noise, steps, args)
        pred = predict_views(normed, r["apply_fn"], subsample=args.subsample,
                             multiple=r["multiple"])
        add(design, [undo(pred[c], c) for c in range(2)],
            {"train_s": r["train_s"], "steps": steps, "networks": 1,
             "final_loss": r["final_loss"]})

    print(f"\nbudget: N = {args.steps} steps x batch {args.batch_size} x {args.patch_size} px "
          f"patches; U-Net depth 2, {args.first_filters} filters; truth 2 x "
          f"{tuple(args.shape)}, s = {args.subsample:g}, additional axial sigma "
          f"{args.widths[0]:g} / {args.widths[1]:g} px, {args.photons:g} photons\n")
    print("| design | steps | c0 filaments PSNR / SSIM | c1 blobs PSNR / SSIM | train (s) |")
    print("|---|---|---|---|---|")
    for design, scores, info in rows:
        steps = {"linear": "", "per-channel": f"2 x {args.steps}"}.get(design, info.get("steps"))
        train_s = "" if "train_s" not in info else f"{info['train_s']:.0f}"
        print(f"| {design} | {steps} | {scores[0][0]:.2f} / {scores[0][1]:.4f} | "
              f"{scores[1][0]:.2f} / {scores[1][1]:.4f} | {train_s} |")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
