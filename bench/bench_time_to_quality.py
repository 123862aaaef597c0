"""Time to quality: restoration PSNR against wall time (training + prediction), isojax vs CSBDeep.

On the quality benchmark's data (``bench/bench_quality.py``: one simulated specimen, one
acquisition per setting, the same stack for both methods, scored on the physical grid
against ``Acquisition.reference``) both methods are trained ONCE to ``--steps`` steps at the
quality benchmark's budget (batch ``--batch-size``, ``--patch-size`` px patches, the same
U-Net and PSF), and the weights at each of ``--checkpoints`` steps (default 25 50 100 200
400) are restored and scored (PSNR, SSIM).

Wall time to quality at step ``k`` = cumulative training time at ``k`` (from the call that
starts training: set-up, compilation or graph building, CSBDeep's patch generation,
validation and checkpoint writing included; the snapshotting for this benchmark excluded)
+ the time of one prediction of the whole stack with those weights (model loading and, for
CSBDeep, the resampling onto the physical grid included; each prediction is cold: a freshly
loaded model).

How the weights are taken at step ``k`` (the weights OF that step, not the best validation
so far):

  isojax   ``isojax.train.train`` runs once with ``val_every = checkpoint_every = g`` (``g``
           the greatest common divisor of the checkpoints, 25 by default) and the progress
           lines on; at each requested step the ``log`` callback (called right after that
           step's ``last`` checkpoint is written) copies that checkpoint into a snapshot
           folder, which ``isojax.train.load_model(which='last')`` reads after training.
  CSBDeep  ``IsotropicCARE.train`` runs once as ``steps / g`` epochs of ``g`` steps (so it
           validates every ``g`` steps too, like isojax); a Keras callback appended after
           CSBDeep's own copies the weights at the end of the requested epochs.

In one process the two methods run one after the other in each setting, alternating which
goes first. On a machine whose load changes from minute to minute the fairer way is to run
them side by side from the same start, in two processes (``--methods linear isojax`` and
``--methods csbdeep``, same data: same seed and setting) and to merge the two results files
with ``--report``, which puts the methods of the same setting together. The load average is
recorded before and after each method.

Reported per setting: CSBDeep's PSNR at the last checkpoint (``--steps``), the first isojax
checkpoint reaching it, the wall time at which isojax reaches it (interpolated linearly in
log(time) between the two checkpoints around it; the first checkpoint's time if it is
already above, which is then an upper bound), and the ratio to CSBDeep's wall time at
``--steps``. The issue's target is a ratio of at most 1/3.

Commands::

  # smoke (a few minutes; meaningless numbers)
  PYTHONPATH=$PWD /tmp/bench-venv/bin/python bench/bench_time_to_quality.py \\
      --factors 4 --noise 1000 --shape 32 64 64 --patch-size 32 --steps 8 --checkpoints 4 8 \\
      --json out/ttq_smoke.json --png out/ttq_smoke.png

  # one setting at the quality benchmark's defaults (96x256x256, 400 x 16 x 64 px)
  PYTHONPATH=$PWD /tmp/bench-venv/bin/python bench/bench_time_to_quality.py \\
      --factors 4 --noise 1000 --json out/ttq_s4_p1000.json

  # the same, the two methods side by side (how bench/RESULTS.md was measured), then merged
  PYTHONPATH=$PWD /tmp/bench-venv/bin/python bench/bench_time_to_quality.py --factors 4 \
      --noise 1000 --methods linear isojax --json out/ttq_s4_p1000_isojax.json \
      --workdir out/bench_ttq_isojax &
  PYTHONPATH=$PWD /tmp/bench-venv/bin/python bench/bench_time_to_quality.py --factors 4 \
      --noise 1000 --methods csbdeep --json out/ttq_s4_p1000_csbdeep.json \
      --workdir out/bench_ttq_csbdeep &
  wait
  PYTHONPATH=$PWD python3 bench/bench_time_to_quality.py --report out/ttq_s4_p1000_*.json

  # all six settings (the default), or the table and plot again from saved results
  PYTHONPATH=$PWD /tmp/bench-venv/bin/python bench/bench_time_to_quality.py
  PYTHONPATH=$PWD python3 bench/bench_time_to_quality.py --report out/ttq_*.json

Needs the ``bench`` extra (``csbdeep``, ``tensorflow-cpu``). Not part of the test suite.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import bench_quality as bq
import numpy as np
from _env import describe, maybe_reexec

# the quality benchmark's default grid: a setting's acquisition key is its index in it, so the
# data are the same as bench_quality.py's default run
DEFAULT_GRID = [(s, p) for s in (2.0, 4.0, 10.2) for p in (1000.0, 100.0)]


def _parse():
    parser = bq.build_parser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoints",
        type=int,
        nargs="+",
        default=[25, 50, 100, 200, 400],
        help="steps at which both methods are scored; the last must be --steps "
        "(default 25 50 100 200 400)",
    )
    parser.add_argument(
        "--png",
        type=Path,
        default=Path("bench/time_to_quality.png"),
        help="the plot (default bench/time_to_quality.png)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="no runs: table and plot from these results files",
    )
    parser.set_defaults(
        workdir=Path("out/bench_ttq"),
        json=Path("out/bench_time_to_quality.json"),
        methods=["linear", "isojax", "csbdeep"],
    )
    for action in parser._actions:  # the help of the defaults changed above
        if action.dest == "workdir":
            action.help = "model folders and logs (default out/bench_ttq, git-ignored)"
        elif action.dest == "json":
            action.help = "results file (default out/bench_time_to_quality.json)"
        elif action.dest == "no_grid_check":
            action.help = "no effect here (bench_quality.py runs the grid check)"
    if "--report" in sys.argv:
        return parser.parse_args()
    args = bq.check_args(parser.parse_args())
    if not set(args.methods) <= {"linear", "isojax", "csbdeep"}:
        raise SystemExit("--methods: only linear, isojax and csbdeep here")
    cps = sorted(set(args.checkpoints))
    if cps[0] < 1 or cps[-1] != args.steps:
        raise SystemExit(f"--checkpoints must be >= 1 and end at --steps {args.steps}")
    args.checkpoints = cps
    args.every = math.gcd(*cps)
    return args


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ----------------------------------------------------------------------------------------
# isojax


def isojax_curve(stack, psf, acq, s, args, workdir: Path, score, *, net=None) -> dict:
    """Train once, snapshot the ``last`` checkpoint at each requested step, then score each.

    ``net`` (a :class:`~isojax.unet.UNetConfig`) replaces the quality benchmark's network
    (``bench/bench_arch.py`` compares named networks this way).
    """
    from isojax.train import load_model, train

    if workdir.exists():
        shutil.rmtree(workdir)
    bench_net, config, synth_config = bq.isojax_configs(
        args, s, val_every=args.every, checkpoint_every=args.every
    )
    net = bench_net if net is None else net
    wanted = set(args.checkpoints)
    train_s: dict[int, float] = {}
    excluded = [0.0]
    lines: list[str] = []
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        t_in = time.perf_counter()
        lines.append(f"{t_in - t0:9.2f} {msg}")
        m = re.match(r"step (\d+)/", msg)
        k = int(m.group(1)) if m else None
        if k in wanted and k not in train_s:
            train_s[k] = t_in - t0 - excluded[0]
            _snapshot(workdir, k)
            excluded[0] += time.perf_counter() - t_in

    # progress lines (not a bar) need a stderr that is not a terminal; log_every: only the
    # validation steps write one
    with open(workdir.parent / f"{workdir.name}.stderr", "w") as err, \
            contextlib.redirect_stderr(err):
        summary = train(
            stack,
            psf,
            workdir=workdir,
            synth_config=synth_config,
            config=config,
            net=net,
            spacing=acq.spacing,
            psf_pixel_size=acq.pixel_size,
            progress=True,
            log=log,
            log_every=1e9,
        )
    total = time.perf_counter() - t0 - excluded[0]
    (workdir.parent / f"{workdir.name}.log").write_text("\n".join(lines) + "\n")
    missing = wanted - set(train_s)
    if missing:
        raise RuntimeError(f"isojax: no progress line at steps {sorted(missing)}")
    points = []
    for k in args.checkpoints:
        t1 = time.perf_counter()
        apply_fn, meta = load_model(workdir / f"snapshot_{k}", which="last")
        pred = np.asarray(bq.isojax_predict(stack, apply_fn, meta, s, net), np.float32)
        t_pred = time.perf_counter() - t1
        points.append(_point(k, train_s[k], t_pred, *score(pred)))
    return {"points": points, "train_total_s": total, "snapshot_s": excluded[0],
            "best_step": summary.get("best_step")}


def _snapshot(workdir: Path, step: int, timeout: float = 300.0) -> None:
    """Copy checkpoint ``last/<step>`` (once its write is committed) into ``snapshot_<step>``."""
    src = workdir / "checkpoints" / "last" / str(step)
    deadline = time.perf_counter() + timeout
    while not src.is_dir():  # orbax writes to a temporary folder and renames it when done
        if time.perf_counter() > deadline:
            raise RuntimeError(f"checkpoint {src} did not appear within {timeout:g} s")
        time.sleep(0.05)
    dst = workdir / f"snapshot_{step}"
    (dst / "checkpoints" / "last").mkdir(parents=True)
    for name in ("config.json", "psf.tif"):
        shutil.copy2(workdir / name, dst / name)
    shutil.copytree(src, dst / "checkpoints" / "last" / str(step))


# ----------------------------------------------------------------------------------------
# CSBDeep


def csbdeep_curve(stack, psf, s, args, workdir: Path, n_out: int, score) -> dict:
    """Train once as ``steps / g`` epochs of ``g`` steps, keep the weights at the requested
    epochs (Keras callback), then score each with a freshly built model."""
    IsotropicCARE = bq._import_csbdeep()[4]
    import keras

    class Snapshots(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights: dict[int, list] = {}
            self.train_s: dict[int, float] = {}
            self.excluded = 0.0

        def on_epoch_end(self, epoch, logs=None):
            t_in = time.perf_counter()
            k = (epoch + 1) * args.every
            if k in args.checkpoints:
                self.train_s[k] = t_in - t0 - self.excluded
                self.weights[k] = [np.array(w) for w in self.model.get_weights()]
                self.excluded += time.perf_counter() - t_in

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if workdir.exists():
        shutil.rmtree(workdir)
    log = workdir.parent / f"{workdir.name}.log"
    t0 = time.perf_counter()
    patches = bq.csbdeep_patches(stack, psf, s, args, rng)
    x, y, n_val = patches["x"], patches["y"], patches["n_val"]
    config = bq.csbdeep_config(args, args.steps // args.every)
    snaps = Snapshots()
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        model = IsotropicCARE(config, workdir.name, basedir=str(workdir.parent))
        model.prepare_for_training()
        model.callbacks.append(snaps)
        model.train(
            x[n_val:],
            y[n_val:],
            validation_data=(x[:n_val], y[:n_val]),
            augmenter=bq._intensity_augmenter(rng),
        )
    total = time.perf_counter() - t0 - snaps.excluded
    points = []
    for k in args.checkpoints:
        t1 = time.perf_counter()
        with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            fresh = IsotropicCARE(config, basedir=None)
            fresh.keras_model.set_weights(snaps.weights[k])
            own = np.asarray(fresh.predict(stack, "ZYX", s), np.float32)
        pred = bq.to_physical_grid(own, stack.shape[0], s, n_out)
        t_pred = time.perf_counter() - t1
        points.append(_point(k, snaps.train_s[k], t_pred, *score(pred)))
        del fresh
        keras.backend.clear_session()
    return {"points": points, "train_total_s": total, "snapshot_s": snaps.excluded,
            "warnings": patches["warnings"]}


def _point(step, train_s, predict_s, psnr, ssim) -> dict:
    return {"step": step, "train_s": train_s, "predict_s": predict_s,
            "wall_s": train_s + predict_s, "psnr_db": psnr, "ssim": ssim}


# ----------------------------------------------------------------------------------------
# Summary, table, plot


def time_to_reach(points: list[dict], target: float) -> dict:
    """When a curve first reaches ``target`` dB: interpolated linearly in log(wall time).

    Returns:
      ``{"wall_s", "step", "how"}``: ``how`` is ``"interpolated"`` (between two
      checkpoints), ``"first checkpoint"`` (already reached there: an upper bound) or
      ``"not reached"`` (``wall_s`` None).
    """
    for i, p in enumerate(points):
        if p["psnr_db"] >= target:
            if i == 0:
                return {"wall_s": p["wall_s"], "step": p["step"], "how": "first checkpoint"}
            q = points[i - 1]
            f = (target - q["psnr_db"]) / (p["psnr_db"] - q["psnr_db"])
            log_t = math.log(q["wall_s"]) + f * (math.log(p["wall_s"]) - math.log(q["wall_s"]))
            return {"wall_s": math.exp(log_t), "step": p["step"], "how": "interpolated"}
    return {"wall_s": None, "step": None, "how": "not reached"}


def summarise(entry: dict) -> dict | None:
    m = entry["methods"]
    if not {"isojax", "csbdeep"} <= set(m):
        return None
    c_last = m["csbdeep"]["points"][-1]
    reach = time_to_reach(m["isojax"]["points"], c_last["psnr_db"])
    ratio = None if reach["wall_s"] is None else reach["wall_s"] / c_last["wall_s"]
    return {"csbdeep_last": c_last, "isojax_reach": reach, "ratio": ratio,
            "target_met": ratio is not None and ratio <= 1 / 3}


def print_tables(entries: list[dict]) -> None:
    print("\n| setting | method | step | train (s) | predict (s) | wall (s) | PSNR (dB) | SSIM |")
    print("|---|---|---|---|---|---|---|---|")
    for e in entries:
        for method in ("isojax", "csbdeep"):
            for p in e["methods"].get(method, {}).get("points", []):
                print(f"| {e['setting']} | {method} | {p['step']} | {p['train_s']:.0f} | "
                      f"{p['predict_s']:.0f} | {p['wall_s']:.0f} | {p['psnr_db']:.2f} | "
                      f"{p['ssim']:.4f} |")
    print("\n| setting | CSBDeep at its last step: PSNR (dB), wall (s) | isojax reaches it at "
          "(s) | first isojax checkpoint at or above | isojax / CSBDeep wall time | "
          "target (<= 1/3) | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for e in entries:
        summ = summarise(e)
        if summ is None:
            continue
        c, r = summ["csbdeep_last"], summ["isojax_reach"]
        reach = "not reached" if r["wall_s"] is None else f"{r['wall_s']:.0f} ({r['how']})"
        ratio = "-" if summ["ratio"] is None else f"{summ['ratio']:.3f}"
        loads = [v[k][0] for v in e.get("load", {}).values() for k in (0, 1)]
        load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else ""
        print(f"| {e['setting']} | {c['psnr_db']:.2f} dB at {c['step']} steps, "
              f"{c['wall_s']:.0f} s | {reach} | {r['step'] or '-'} | {ratio} | "
              f"{'met' if summ['target_met'] else 'NOT met'} | {load} |")


def plot(entries: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    n = len(entries)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    styles = {"isojax": ("C0", "o"), "csbdeep": ("C3", "s")}
    for ax, e in zip(axes.flat, entries, strict=False):
        for method, (color, marker) in styles.items():
            pts = e["methods"].get(method, {}).get("points", [])
            if not pts:
                continue
            t = [p["wall_s"] for p in pts]
            ax.plot(t, [p["psnr_db"] for p in pts], marker=marker, color=color,
                    label="isojax" if method == "isojax" else "CSBDeep IsotropicCARE")
            for p in pts:
                ax.annotate(str(p["step"]), (p["wall_s"], p["psnr_db"]), fontsize=7,
                            xytext=(3, -9), textcoords="offset points", color=color)
        summ = summarise(e)
        if summ is not None:
            c = summ["csbdeep_last"]
            ax.axhline(c["psnr_db"], color="C3", ls="--", lw=0.8,
                       label=f"CSBDeep's PSNR at {c['step']} steps")
            ax.axvline(c["wall_s"] / 3, color="grey", ls=":", lw=0.8,
                       label="1/3 of CSBDeep's time")
        if "linear" in e["methods"]:
            ax.axhline(e["methods"]["linear"]["psnr_db"], color="grey", ls="-.", lw=0.8,
                       label="linear interpolation")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{e['setting']} ({e.get('budget', '')})", fontsize=9)
        ax.set_xlabel("wall time, training + one prediction (s)")
        ax.set_ylabel("PSNR on the physical grid (dB)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle("Time to quality (labels: training steps)", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


def merge_settings(entries: list[dict]) -> list[dict]:
    """One entry per setting: the methods of runs of the same setting (e.g. the two methods
    run side by side in two processes, ``--methods linear isojax`` and ``--methods
    csbdeep``) are put together, with their loads and runs."""
    merged: dict[str, dict] = {}
    for e in entries:
        m = merged.setdefault(e["setting"], {**e, "methods": {}, "load": {}, "runs": []})
        m["methods"].update(e["methods"])
        m["load"].update(e.get("load", {}))
        m["runs"].append(e.get("run"))
    return list(merged.values())


def report(paths: list[Path], png: Path) -> int:
    entries = []
    for path in paths:
        result = json.loads(path.read_text())
        budget = f"batch {result['args']['batch_size']} x {result['args']['patch_size']} px"
        entries += [{"budget": budget, "run": str(path), **e} for e in result["settings"]]
    entries = merge_settings(entries)
    order = {name: i for i, name in enumerate(f"s={s:g}, photons={p:g}" for s, p in DEFAULT_GRID)}
    entries.sort(key=lambda e: order.get(e["setting"], len(order)))
    print_tables(entries)
    plot(entries, png)
    return 0


# ----------------------------------------------------------------------------------------
# The run


def setting_data(args, truth, k_acq, s, photons, n_before: int) -> dict:
    """One setting's acquisition (the quality benchmark's, for a setting of its grid).

    Returns:
      ``index`` (the acquisition key), ``stack``, ``acq``, ``psf``, ``linear`` (linear
      interpolation), ``ref`` (the reference on the physical grid), ``name`` and
      ``score(pred) -> (psnr, ssim)``.
    """
    import jax

    from isojax.predict import upsample_z
    from isojax.simulate import acquire

    # the quality benchmark's key for this setting (its default grid), else a new one
    index = (DEFAULT_GRID.index((s, photons)) if (s, photons) in DEFAULT_GRID
             else 100 + n_before)
    stack, acq = acquire(
        jax.random.fold_in(k_acq, index), truth, subsample=s,
        sigma_lateral=args.sigma_lateral, sigma_axial=args.sigma_axial,
        photons=photons, read_noise=args.read_noise,
    )
    stack = np.array(stack, np.float32)  # writable (CSBDeep writes in place)
    linear = np.asarray(upsample_z(stack, s))
    ref = np.asarray(acq.reference)[:linear.shape[0]]
    data_range = float(ref.max() - ref.min())

    def score(pred):
        return bq._score(pred, ref, data_range)

    return {"index": index, "stack": stack, "acq": acq, "psf": np.asarray(acq.psf, np.float32),
            "linear": linear, "ref": ref, "score": score,
            "name": f"s={s:g}, photons={'none' if photons is None else f'{photons:g}'}"}


def main() -> int:
    args = _parse()
    if args.report:
        return report(args.report, args.png)
    maybe_reexec(args.no_hugepages)
    import jax

    from isojax.simulate import simulate_specimen

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, {describe()}, load {_load()}",
          flush=True)
    result: dict = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "malloc": describe(),
        "settings": [],
    }
    k_spec, k_acq = jax.random.split(jax.random.key(args.seed))
    truth = simulate_specimen(k_spec, tuple(args.shape))
    for s in args.factors:
        for photons in args.noise:
            d = setting_data(args, truth, k_acq, s, photons, len(result["settings"]))
            index, stack, acq, psf, linear, ref, name, score = (
                d["index"], d["stack"], d["acq"], d["psf"], d["linear"], d["ref"], d["name"],
                d["score"])
            n = linear.shape[0]
            entry = {"setting": name, "subsample": s, "photons": photons,
                     "stack_shape": list(stack.shape), "scored_shape": list(ref.shape),
                     "budget": f"batch {args.batch_size} x {args.patch_size} px",
                     "methods": {}, "load": {}, "order": []}
            print(f"\n## {name}: stack {stack.shape}, scored on {ref.shape}", flush=True)
            if "linear" in args.methods:
                ps, ss = score(linear)
                entry["methods"]["linear"] = {"psnr_db": ps, "ssim": ss}
            order = [m for m in ("isojax", "csbdeep") if m in args.methods]
            if index % 2:
                order.reverse()  # alternate which method goes first (by setting)
            for method in order:
                load0 = _load()
                t = time.perf_counter()
                if method == "isojax":
                    r = isojax_curve(stack, psf, acq, s, args,
                                     args.workdir / f"isojax_{index}", score)
                else:
                    r = csbdeep_curve(stack, psf, s, args, args.workdir / f"csbdeep_{index}",
                                      n, score)
                entry["load"][method] = [load0, _load()]
                entry["order"].append(method)
                r["elapsed_s"] = time.perf_counter() - t
                entry["methods"][method] = r
                for p in r["points"]:
                    print(f"   {method:<8} step {p['step']:>4}: train {p['train_s']:7.1f} s "
                          f"+ predict {p['predict_s']:5.1f} s = {p['wall_s']:7.1f} s  "
                          f"PSNR {p['psnr_db']:6.2f} dB  SSIM {p['ssim']:.4f}", flush=True)
                print(f"   {method} load {load0} -> {_load()}", flush=True)
            result["settings"].append(entry)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result["settings"])
    plot(result["settings"], args.png)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
