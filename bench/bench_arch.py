"""Network choice: time to quality of the named U-Nets (``isojax.unet.ARCHS``), isojax alone.

For each setting, each network in ``--archs`` is trained once on the same acquisition with
the time-to-quality benchmark's protocol (``bench/bench_time_to_quality.py``: the weights of
steps 25 .. 400 snapshotted and each scored after a cold whole-stack prediction; wall time =
training time to that step + that prediction). The networks of one setting run one after the
other, their order rotated from setting to setting so that no network always meets the
same part of a changing machine load; the load average is recorded around each run.

Per network and setting it reports: the parameter count, training patches/s (steps 200 to
400, validation and checkpoint writing included), PSNR at each checkpoint, and the wall time
at which it reaches the ``care`` network's PSNR at the last checkpoint (interpolated in
log(time), as the time-to-quality benchmark does). A network "wins" a setting when it
reaches that PSNR before ``care``'s last checkpoint AND ends at least as high.

With ``--precision-check`` the last checkpoint of each network is also predicted twice more
per precision (float32 and bf16 compute, ``isojax.train.load_model(precision=...)``), warm,
and the whole-stack voxels/s and the PSNR of each are recorded.

Commands::

  # smoke (a minute; meaningless numbers)
  PYTHONPATH=$PWD python3 bench/bench_arch.py --factors 4 --noise 1000 --shape 32 64 64 \\
      --patch-size 32 --steps 8 --checkpoints 4 8 --json out/arch_smoke.json

  # how bench/RESULTS.md ("Network choice") was measured
  PYTHONPATH=$PWD python3 bench/bench_arch.py --factors 4 10.2 --noise 1000 \\
      --shape 96 128 128 --batch-size 4 --precision-check --json out/arch.json
  PYTHONPATH=$PWD python3 bench/bench_arch.py --report out/arch.json   # the table again

Not part of the test suite.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import bench_quality as bq
import bench_time_to_quality as ttq
import numpy as np
from _env import describe, maybe_reexec


def _parse():
    parser = bq.build_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["care", "light", "light24"],
                        help="networks of isojax.unet.ARCHS to compare (default care light "
                        "light24); care is the reference: run it here, or in another process "
                        "side by side and merge the results with --report")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[25, 50, 100, 200, 400],
                        help="steps scored; the last must be --steps (default 25 .. 400)")
    parser.add_argument("--precision-check", action="store_true",
                        help="also time float32 and bf16 prediction of each last checkpoint")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="no runs: the tables from these results files")
    parser.set_defaults(workdir=Path("out/bench_arch"), json=Path("out/bench_arch.json"),
                        methods=["linear", "isojax"])
    if "--report" in sys.argv:
        return parser.parse_args()
    args = bq.check_args(parser.parse_args())
    cps = sorted(set(args.checkpoints))
    if cps[0] < 1 or cps[-1] != args.steps:
        raise SystemExit(f"--checkpoints must be >= 1 and end at --steps {args.steps}")
    args.checkpoints = cps
    args.every = math.gcd(*cps)
    return args


def _n_params(net) -> int:
    import jax

    from isojax.unet import init_unet

    _, params = jax.eval_shape(lambda: init_unet(jax.random.key(0), net))
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))


def _patches_per_s(points: list[dict], batch: int) -> float | None:
    if len(points) < 2:
        return None
    a, b = points[-2], points[-1]
    return (b["step"] - a["step"]) * batch / (b["train_s"] - a["train_s"])


def _precision_check(stack, s, workdir: Path, net, score, step: int) -> dict:
    """Warm whole-stack predictions of the last checkpoint in float32 and bf16."""
    from isojax.train import load_model

    out: dict = {}
    voxels = None
    for precision in ("float32", "bf16", "float32", "bf16"):  # interleaved, each twice
        apply_fn, meta = load_model(workdir / f"snapshot_{step}", which="last",
                                    precision=precision)
        pred = np.asarray(ttq.bq.isojax_predict(stack, apply_fn, meta, s, net))  # compile
        t = time.perf_counter()
        pred = np.asarray(ttq.bq.isojax_predict(stack, apply_fn, meta, s, net), np.float32)
        dt = time.perf_counter() - t
        voxels = pred.size
        r = out.setdefault(precision, {"seconds": [], "psnr_db": None})
        r["seconds"].append(dt)
        r["psnr_db"], r["ssim"] = score(pred)
    for r in out.values():
        r["voxels_per_s"] = voxels / min(r["seconds"])
    out["voxels"] = voxels
    return out


def run(args) -> dict:
    import jax

    from isojax.simulate import simulate_specimen
    from isojax.unet import UNetConfig

    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, {describe()}, load "
          f"{ttq._load()}", flush=True)
    result: dict = {"args": {k: (str(v) if isinstance(v, Path) else v)
                             for k, v in vars(args).items()},
                    "malloc": describe(), "settings": []}
    k_spec, k_acq = jax.random.split(jax.random.key(args.seed))
    truth = simulate_specimen(k_spec, tuple(args.shape))
    rotation = 0
    for s in args.factors:
        for photons in args.noise:
            d = ttq.setting_data(args, truth, k_acq, s, photons, len(result["settings"]))
            entry: dict = {"setting": d["name"], "archs": {}, "order": []}
            entry["linear_psnr_db"] = d["score"](d["linear"])[0]
            print(f"\n## {d['name']}: stack {d['stack'].shape}, linear "
                  f"{entry['linear_psnr_db']:.2f} dB", flush=True)
            order = args.archs[rotation:] + args.archs[:rotation]
            rotation = (rotation + 1) % len(args.archs)
            for arch in order:
                net = UNetConfig.from_arch(arch)
                load0 = ttq._load()
                t = time.perf_counter()
                workdir = args.workdir / f"{arch}_{d['index']}"
                r = ttq.isojax_curve(d["stack"], d["psf"], d["acq"], s, args, workdir,
                                     d["score"], net=net)
                r["elapsed_s"] = time.perf_counter() - t
                r["load"] = [load0, ttq._load()]
                r["params"] = _n_params(net)
                r["patches_per_s"] = _patches_per_s(r["points"], args.batch_size)
                if args.precision_check:
                    r["precision"] = _precision_check(d["stack"], s, workdir, net, d["score"],
                                                      args.steps)
                    r["load_after_precision"] = ttq._load()
                entry["archs"][arch] = r
                entry["order"].append(arch)
                for p in r["points"]:
                    print(f"   {arch:<8} step {p['step']:>4}: train {p['train_s']:7.1f} s + "
                          f"predict {p['predict_s']:5.1f} s = {p['wall_s']:7.1f} s  PSNR "
                          f"{p['psnr_db']:6.2f} dB", flush=True)
                print(f"   {arch} load {r['load']}, {r['params']} params, "
                      f"{r['patches_per_s']:.2f} patches/s", flush=True)
                if args.precision_check:
                    print(f"   {arch} precision {json.dumps(r['precision'])}", flush=True)
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(result | {"settings": result["settings"]
                                                          + [entry]}, indent=2) + "\n")
            result["settings"].append(entry)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_tables(result: dict) -> None:
    cps = result["args"]["checkpoints"]
    print("\n| setting | arch | params | patches/s | "
          + " | ".join(f"PSNR {k}" for k in cps)
          + " | reaches care's last PSNR at (s) | care's last checkpoint (s) | wins | load |")
    print("|---" * (8 + len(cps)) + "|")
    for e in result["settings"]:
        care = e["archs"].get("care")
        if care is None:
            continue
        target, t_care = care["points"][-1]["psnr_db"], care["points"][-1]["wall_s"]
        for arch, r in e["archs"].items():
            reach = ttq.time_to_reach(r["points"], target)
            wins = (reach["wall_s"] is not None and reach["wall_s"] < t_care
                    and r["points"][-1]["psnr_db"] >= target)
            when = ("not reached" if reach["wall_s"] is None
                    else f"{reach['wall_s']:.0f} ({reach['how']})")
            loads = [x[0] for x in r["load"]]
            print(f"| {e['setting']} | {arch} | {r['params']} | {r['patches_per_s']:.2f} | "
                  + " | ".join(f"{p['psnr_db']:.2f}" for p in r["points"])
                  + f" | {when} | {t_care:.0f} | {'-' if arch == 'care' else wins} | "
                  f"{min(loads):.1f}-{max(loads):.1f} |")
    if any("precision" in r for e in result["settings"] for r in e["archs"].values()):
        print("\n| setting | arch | float32 Mvoxel/s | bf16 Mvoxel/s | bf16 / float32 | "
              "PSNR float32 | PSNR bf16 | bf16 - float32 (dB) |")
        print("|---" * 8 + "|")
        for e in result["settings"]:
            for arch, r in e["archs"].items():
                p = r.get("precision")
                if p is None:
                    continue
                f, b = p["float32"], p["bf16"]
                print(f"| {e['setting']} | {arch} | {f['voxels_per_s'] / 1e6:.2f} | "
                      f"{b['voxels_per_s'] / 1e6:.2f} | "
                      f"{b['voxels_per_s'] / f['voxels_per_s']:.2f} | {f['psnr_db']:.3f} | "
                      f"{b['psnr_db']:.3f} | {b['psnr_db'] - f['psnr_db']:+.3f} |")


def merge(results: list[dict]) -> dict:
    """One result with the networks of the same setting from several runs put together (e.g.
    the networks run side by side in two processes on the same data)."""
    settings: dict[str, dict] = {}
    for r in results:
        for e in r["settings"]:
            m = settings.setdefault(e["setting"], {**e, "archs": {}, "order": []})
            m["archs"].update(e["archs"])
            m["order"] += e["order"]
    return {**results[0], "settings": list(settings.values())}


def main() -> int:
    args = _parse()
    if args.report:
        print_tables(merge([json.loads(path.read_text()) for path in args.report]))
        return 0
    maybe_reexec(args.no_hugepages)
    args.workdir.mkdir(parents=True, exist_ok=True)
    result = run(args)
    print_tables(result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
