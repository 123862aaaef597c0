"""Forward-operator speed against CSBDeep and a plain copy, in one run.

Degrades a 64x512x512 float32 volume along X and along Y (both views of an Isotropic-CARE
training set), with a 17x17 PSF, at subsample 4 and 10.2, and times:

* CSBDeep's ``anisotropic_distortions`` on every XY slice, once per view (the reference);
* isojax ``degrade`` with the PSF as a dense 17x17 array passed into ``jax.jit`` (traced:
  an SVD in the program picks rank 1, rank 2 or the exact lateral-Fourier path), for the
  separable Gaussian (rank 1) and for a full-rank PSF (the Gaussian plus a random
  perturbation: exact path), and factored (rank 1, exact for the Gaussian);
* the dense Gaussian under ``jit`` with the SVD switch off (the Fourier path, as before);
* the same dense array given to ``isojax.degrade`` outside ``jit`` (concrete: factored
  automatically when its rank is <= 2), one call per view;
* the row-by-row dense path that was used before the Fourier path (``--no-old`` skips it);
* the gradient of a loss over both views with respect to the PSF;
* a plain copy of the volume (jitted, producing a new buffer like the operator does).

Run:  python bench/bench_forward.py [--repeats 5] [--out bench/forward.json] [--no-hugepages]
      [--no-old] [--no-csbdeep]
(see bench/_env.py for the malloc setting both sides run under).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from _env import describe, maybe_reexec

import isojax

CPU_TIMES: dict[int, float] = {}  # id of the figure -> its CPU time, filled by timeit


def timeit(fn, repeats):
    """Fastest of ``repeats`` warm calls: on a shared machine, the least disturbed one.

    Also records the least CPU time of the process (all threads) over the calls in
    ``CPU_TIMES`` (see :func:`cpu_of`): under heavy load, wall time measures the other
    jobs as much as this one, CPU time much less so.
    """
    fn()  # compile / warm up
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    wall = min(times)
    CPU_TIMES[len(CPU_TIMES)] = min(cpu)
    return wall


def cpu_of(row, key):
    """Store the CPU time of the figure just measured next to it as ``key_cpu``."""
    row[key.replace("_s", "_cpu_s") if key.endswith("_s") else key + "_cpu"] = CPU_TIMES[
        len(CPU_TIMES) - 1
    ]


def gaussian_psf(size=17, sigma_lateral=1.2, sigma_axial=3.0):
    r = np.arange(size) - size // 2
    g = np.outer(np.exp(-0.5 * (r / sigma_lateral) ** 2), np.exp(-0.5 * (r / sigma_axial) ** 2))
    return (g / g.sum()).astype(np.float32)


def csbdeep_views(volume, psf, s):
    from csbdeep.data.transform import anisotropic_distortions

    out = []
    for axis, p in (("X", psf), ("Y", psf.T)):
        # CSBDeep normalises the PSF in place: give it a writable copy
        t = anisotropic_distortions(
            subsample=s, psf=np.array(p), psf_axes="YX", subsample_axis=axis
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = [(im, im, "YX", None) for im in volume]
            out.append([x for x, _, _, _ in t.generator(iter(data))])
    return out


def make_operators(s):
    """Both views of a volume, jitted together, and the gradient of a loss in the PSF."""

    @jax.jit
    def both_views(v, psf):
        return (
            isojax.degrade(v, psf, s, axes=(-2, -1)),
            isojax.degrade(v, psf, s, axes=(-1, -2)),
        )

    def loss(psf, v):
        a, b = both_views(v, psf)
        return jnp.mean((a - v) ** 2) + jnp.mean((b - v) ** 2)

    return both_views, jax.jit(jax.grad(loss))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 512, 512))
    ap.add_argument("--no-csbdeep", action="store_true")
    ap.add_argument("--no-old", action="store_true", help="skip the row-by-row dense path")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--no-hugepages", action="store_true", help="keep the default malloc")
    args = ap.parse_args(argv)
    maybe_reexec(args.no_hugepages)

    rng = np.random.default_rng(0)
    volume = rng.random(tuple(args.shape), dtype=np.float32)
    x = jnp.asarray(volume)
    dense = jnp.asarray(gaussian_psf())
    factored = isojax.factorize_psf(dense)
    perturbed = np.asarray(dense) * (1 + 0.2 * rng.random(dense.shape, dtype=np.float32))
    full_rank = jnp.asarray(perturbed / perturbed.sum())
    dense_np = np.asarray(dense)

    @jax.jit
    def copy(v):
        return v + 0.0

    t_copy = timeit(lambda: copy(x).block_until_ready(), args.repeats)
    t_copy_cpu = CPU_TIMES[len(CPU_TIMES) - 1]
    t0 = time.perf_counter()
    _ = volume.copy()
    t_np_copy = time.perf_counter() - t0

    rows = []
    for s in (4.0, 10.2):
        both_views, grad = make_operators(s)
        row = {"subsample": s, "load_average_start": os.getloadavg()}
        cases = (("dense", dense), ("dense_full_rank", full_rank), ("factored", factored))
        for name, psf in cases:
            row[f"isojax_{name}_s"] = timeit(
                lambda psf=psf, f=both_views: jax.block_until_ready(f(x, psf)), args.repeats
            )
            cpu_of(row, f"isojax_{name}_s")
            row[f"grad_{name}_s"] = timeit(
                lambda psf=psf, g=grad: jax.block_until_ready(g(psf, x)), args.repeats
            )
            cpu_of(row, f"grad_{name}_s")

        def outside_jit(s=s):
            # a concrete dense PSF given to the public function: no jit by the caller
            a = isojax.degrade(x, dense_np, s, axes=(-2, -1))
            b = isojax.degrade(x, dense_np, s, axes=(-1, -2))
            return jax.block_until_ready((a, b))

        row["isojax_dense_outside_jit_s"] = timeit(outside_jit, args.repeats)
        cpu_of(row, "isojax_dense_outside_jit_s")
        max_rank = isojax.forward._operator._TRACED_MAX_RANK
        isojax.forward._operator._TRACED_MAX_RANK = 0  # no SVD switch: the exact path
        try:
            fourier_views, fourier_grad = make_operators(s)
            row["isojax_dense_fourier_s"] = timeit(
                lambda f=fourier_views: jax.block_until_ready(f(x, dense)), args.repeats
            )
            cpu_of(row, "isojax_dense_fourier_s")
            row["grad_dense_fourier_s"] = timeit(
                lambda g=fourier_grad: jax.block_until_ready(g(dense, x)), args.repeats
            )
            cpu_of(row, "grad_dense_fourier_s")
        finally:
            isojax.forward._operator._TRACED_MAX_RANK = max_rank
        if not args.no_old:
            plan = isojax.forward._fourier.plan
            isojax.forward._fourier.plan = lambda *a: None  # the row-by-row path, as before
            try:
                old_views, old_grad = make_operators(s)
                row["isojax_dense_rows_s"] = timeit(
                    lambda f=old_views: jax.block_until_ready(f(x, full_rank)), args.repeats
                )
                cpu_of(row, "isojax_dense_rows_s")
                row["grad_dense_rows_s"] = timeit(
                    lambda g=old_grad: jax.block_until_ready(g(full_rank, x)), args.repeats
                )
                cpu_of(row, "grad_dense_rows_s")
            finally:
                isojax.forward._fourier.plan = plan
        if not args.no_csbdeep:
            row["csbdeep_s"] = timeit(
                lambda s=s: csbdeep_views(volume, np.asarray(dense), s), max(1, args.repeats // 2)
            )
            cpu_of(row, "csbdeep_s")
        row["load_average_end"] = os.getloadavg()
        rows.append(row)
        print(json.dumps(row), flush=True)

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg(),
        "machine": f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
        f"{jax.local_device_count()} JAX device(s), {os.cpu_count()} CPUs",
        "jax": jax.__version__,
        "malloc": describe(),
        "shape": list(args.shape),
        "copy_jax_s": t_copy,
        "copy_jax_cpu_s": t_copy_cpu,
        "copy_numpy_s": t_np_copy,
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    print()
    labels = {
        "dense": "17x17 dense Gaussian, under jit (SVD switch: rank 1)",
        "dense_full_rank": "17x17 dense full rank, under jit (SVD switch: exact, Fourier)",
        "dense_fourier": "17x17 dense Gaussian, under jit, switch off (Fourier, before)",
        "factored": "17x17 factored (rank 1)",
        "dense_outside_jit": "17x17 dense Gaussian, outside jit (auto-factored)",
        "dense_rows": "17x17 dense full rank, row by row (before)",
    }
    print(
        "| subsample | PSF | isojax (2 views) | vs CSBDeep | vs copy | grad in PSF | grad / forward "
        "| CPU time | CPU vs CSBDeep | CPU vs copy | CPU grad / forward |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for name, label in labels.items():
            if f"isojax_{name}_s" not in row:
                continue
            t = row[f"isojax_{name}_s"]
            g = row.get(f"grad_{name}_s")
            vs = f"{row['csbdeep_s'] / t:.1f}x faster" if "csbdeep_s" in row else "n/a"
            gs = f"{g * 1e3:.0f} ms | {g / t:.2f}" if g is not None else "n/a | n/a"
            c = row[f"isojax_{name}_cpu_s"]
            cvs = f"{row['csbdeep_cpu_s'] / c:.1f}x" if "csbdeep_cpu_s" in row else "n/a"
            gc = row.get(f"grad_{name}_cpu_s")
            gcs = f"{gc / c:.2f}" if gc is not None else "n/a"
            print(
                f"| {row['subsample']} | {label} | {t * 1e3:.0f} ms | {vs} | "
                f"{t / t_copy:.1f}x copy | {gs} | {c * 1e3:.0f} ms | {cvs} | "
                f"{c / t_copy_cpu:.1f}x | {gcs} |"
            )
    if any("csbdeep_s" in r for r in rows):
        print()
        for row in rows:
            print(
                f"CSBDeep, subsample {row['subsample']}: {row['csbdeep_s']:.2f} s per volume (2 views)"
            )
    print(
        f"plain copy of the volume: {t_copy * 1e3:.1f} ms (jax), {t_np_copy * 1e3:.1f} ms (numpy)"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
