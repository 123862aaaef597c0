"""Whole-stack prediction throughput: isojax's predict_stack vs CSBDeep's IsotropicCARE.predict.

Both restore the same stack with both views fused (XZ and YZ slices through the network) and
percentile normalisation, on CPU, with the same untrained network architecture (CARE's 2D
default U-Net: depth 2, ``--first-filters`` 32, 5x5 kernels, residual; weights are random:
throughput does not depend on them). The parameter counts of the two are printed to show the
networks match.

  isojax   ``predict_stack(stack, apply_fn, subsample=s)`` with defaults (mean fusion, batch
           size from the 1 GiB memory budget, at most 8, two batches at once on CPU) and
           ``apply_fn`` a jitted :func:`isojax.unet.apply_unet`; output
           ``upsampled_length(z, s)`` slices.
  isojax-large  the same network through :func:`isojax.predict_large.predict_large`, the
           streaming predictor for stacks larger than memory (input: the stack written once
           as an uncompressed TIFF; output: a float32 BigTIFF, removed after each call), with
           its defaults (1 GiB budget).
  csbdeep  ``IsotropicCARE(Config('YX')).predict(stack, 'ZYX', s)`` with defaults (geometric
           fusion, batch size 8); output ``round(z * s)`` slices.

Throughput is output voxels per second (each method's own output size: the two grids differ by
a few slices, see bench/README_quality.md). The last column compares the time per stack
instead: both pad Z to the same multiple before the network, so they do the same network
work, and the voxels/s ratio counts isojax's shorter output against it. The first call of each
(``cold``) includes jit compilation / TensorFlow tracing; then ``--repeats`` warm calls,
interleaved between the methods so that load from other processes hits both alike; the table
gives the median warm time.

Usage: ``python bench/bench_predict.py`` (32x256x256 at subsample 4) or, as a smoke test,
``python bench/bench_predict.py --shape 8 64 64 --repeats 1``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import numpy as np
from _env import describe, maybe_reexec


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=[32, 256, 256],
        metavar=("Z", "Y", "X"),
        help="anisotropic input stack (z, y, x) (default 32 256 256)",
    )
    p.add_argument("--subsample", type=float, default=4.0, help="anisotropy factor (default 4)")
    p.add_argument(
        "--first-filters",
        type=int,
        default=32,
        help="U-Net first-level filters, both methods (CARE default 32)",
    )
    p.add_argument("--repeats", type=int, default=3, help="warm calls per method (median)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per network call for BOTH (default: each method's own: isojax "
        "from its memory budget, CSBDeep 8)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["isojax", "csbdeep"],
        choices=["isojax", "isojax-large", "csbdeep"],
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json",
        type=Path,
        default=Path("out/bench_predict.json"),
        help="results file (default out/bench_predict.json, git-ignored)",
    )
    p.add_argument(
        "--no-hugepages",
        action="store_true",
        help="keep the default malloc (see bench/_env.py; default restarts with huge pages)",
    )
    args = p.parse_args()
    if args.repeats < 1 or args.first_filters < 1 or min(args.shape) < 2:
        raise SystemExit("--repeats and --first-filters must be >= 1, --shape sizes >= 2")
    if args.subsample < 1:
        raise SystemExit("--subsample must be >= 1")
    return args


def _isojax_net(args):
    import jax

    from isojax.unet import UNetConfig, apply_unet, init_unet

    net = UNetConfig(first_filters=args.first_filters)
    graphdef, params = init_unet(jax.random.key(args.seed), net)

    @jax.jit
    def apply_fn(batch):
        return apply_unet(graphdef, params, batch[..., None])[..., 0]

    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    return apply_fn, net.divisor, n_params


def _isojax(args):
    from isojax.predict import predict_stack

    apply_fn, multiple, n_params = _isojax_net(args)

    def run(stack):
        return predict_stack(
            stack,
            apply_fn,
            subsample=args.subsample,
            multiple=multiple,
            batch_size=args.batch_size,
        )

    return run, n_params


def _isojax_large(args, workdir: Path):
    import tifffile

    from isojax.predict_large import predict_large

    apply_fn, multiple, n_params = _isojax_net(args)
    source = workdir / "stack.tif"
    target = workdir / "iso.tif"

    def run(stack):
        if not source.exists():
            tifffile.imwrite(source, stack)
        result = predict_large(
            source,
            target,
            apply_fn,
            subsample=args.subsample,
            multiple=multiple,
            batch_size=args.batch_size,
            overwrite=True,
        )
        target.unlink()
        return result

    return run, n_params


def _csbdeep(args):
    with contextlib.redirect_stderr(io.StringIO()):
        import keras
        from csbdeep.models import Config, IsotropicCARE

    keras.utils.set_random_seed(args.seed)
    model = IsotropicCARE(Config("YX", 1, 1, unet_n_first=args.first_filters), basedir=None)
    n_params = int(sum(np.prod(w.shape) for w in model.keras_model.weights))
    batch_size = 8 if args.batch_size is None else args.batch_size

    def run(stack):
        with contextlib.redirect_stdout(io.StringIO()):
            return model.predict(stack, "ZYX", args.subsample, batch_size=batch_size)

    return run, n_params


def main() -> int:
    args = _parse()
    maybe_reexec(args.no_hugepages)
    import jax

    rng = np.random.default_rng(args.seed)
    # a positive, textured stack (values do not change the cost)
    stack = rng.gamma(2.0, 100.0, tuple(args.shape)).astype(np.float32)
    workdir = Path(tempfile.mkdtemp(prefix="isojax-bench-predict-"))
    runners = {}
    for name in args.methods:
        if name == "isojax-large":
            runners[name] = _isojax_large(args, workdir)
        else:
            runners[name] = (_isojax if name == "isojax" else _csbdeep)(args)
    print(
        f"stack {tuple(args.shape)} (z, y, x), subsample {args.subsample:g}; jax "
        f"{jax.__version__}, {os.cpu_count()} CPUs, {describe()}",
        flush=True,
    )
    for name, (_, n_params) in runners.items():
        print(f"  {name}: {n_params} parameters", flush=True)

    cold, warm, out_shape = {}, {n: [] for n in runners}, {}
    for name, (run, _) in runners.items():
        t0 = time.perf_counter()
        out = run(stack)
        cold[name] = time.perf_counter() - t0
        out_shape[name] = tuple(int(v) for v in out.shape)
        print(f"  {name}: cold call {cold[name]:.1f} s, output {out_shape[name]}", flush=True)
    for i in range(args.repeats):
        for name, (run, _) in runners.items():
            t0 = time.perf_counter()
            run(stack)
            warm[name].append(time.perf_counter() - t0)
            print(f"  {name}: warm call {i + 1}: {warm[name][-1]:.1f} s", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)

    results = {}
    for name in runners:
        n_vox = int(np.prod(out_shape[name]))
        med = statistics.median(warm[name])
        results[name] = {
            "output_shape": list(out_shape[name]),
            "output_voxels": n_vox,
            "cold_s": cold[name],
            "warm_s": warm[name],
            "median_warm_s": med,
            "voxels_per_s": n_vox / med,
            "n_params": runners[name][1],
        }
    ref = "csbdeep" if "csbdeep" in results else next(iter(results))
    for r in results.values():
        r["voxels_per_s_vs_ref"] = r["voxels_per_s"] / results[ref]["voxels_per_s"]
        # the same input stack: isojax's output has a few slices fewer (physical grid) but
        # both pad Z to the same multiple before the network, so this is the work ratio
        r["speed_vs_ref_same_stack"] = results[ref]["median_warm_s"] / r["median_warm_s"]
    print(
        f"\n| method | output (z, y, x) | cold (s) | median warm (s) | Mvoxel/s | vs {ref} "
        f"(voxels/s) | vs {ref} (time per stack) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {'x'.join(map(str, r['output_shape']))} | {r['cold_s']:.1f} | "
            f"{r['median_warm_s']:.1f} | {r['voxels_per_s'] / 1e6:.3f} | "
            f"{r['voxels_per_s_vs_ref']:.2f}x | {r['speed_vs_ref_same_stack']:.2f}x |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "malloc": describe(),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
