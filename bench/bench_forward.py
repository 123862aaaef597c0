"""Forward-operator speed against CSBDeep and a plain copy, in one run.

Degrades a 64x512x512 float32 volume along X and along Y (both views of an Isotropic-CARE
training set), with a 17x17 PSF, at subsample 4 and 10.2, and times:

* CSBDeep's ``anisotropic_distortions`` on every XY slice, once per view (the reference);
* isojax ``degrade`` with the PSF as a dense 17x17 array passed into ``jax.jit`` (traced:
  the lateral-Fourier path), for the separable Gaussian and for a full-rank PSF (the
  Gaussian plus a random perturbation), and factored (rank 1, exact for the Gaussian);
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
import platform
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from _env import describe, maybe_reexec

import isojax


def timeit(fn, repeats):
    """Fastest of ``repeats`` warm calls: on a shared machine, the least disturbed one."""
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


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
    t0 = time.perf_counter()
    _ = volume.copy()
    t_np_copy = time.perf_counter() - t0

    rows = []
    for s in (4.0, 10.2):
        both_views, grad = make_operators(s)
        row = {"subsample": s}
        cases = (("dense", dense), ("dense_full_rank", full_rank), ("factored", factored))
        for name, psf in cases:
            row[f"isojax_{name}_s"] = timeit(
                lambda psf=psf, f=both_views: jax.block_until_ready(f(x, psf)), args.repeats
            )
            row[f"grad_{name}_s"] = timeit(
                lambda psf=psf, g=grad: jax.block_until_ready(g(psf, x)), args.repeats
            )

        def outside_jit(s=s):
            # a concrete dense PSF given to the public function: no jit by the caller
            a = isojax.degrade(x, dense_np, s, axes=(-2, -1))
            b = isojax.degrade(x, dense_np, s, axes=(-1, -2))
            return jax.block_until_ready((a, b))

        row["isojax_dense_outside_jit_s"] = timeit(outside_jit, args.repeats)
        if not args.no_old:
            plan = isojax.forward._fourier.plan
            isojax.forward._fourier.plan = lambda *a: None  # the row-by-row path, as before
            try:
                old_views, old_grad = make_operators(s)
                row["isojax_dense_rows_s"] = timeit(
                    lambda f=old_views: jax.block_until_ready(f(x, full_rank)), args.repeats
                )
                row["grad_dense_rows_s"] = timeit(
                    lambda g=old_grad: jax.block_until_ready(g(full_rank, x)), args.repeats
                )
            finally:
                isojax.forward._fourier.plan = plan
        if not args.no_csbdeep:
            row["csbdeep_s"] = timeit(
                lambda s=s: csbdeep_views(volume, np.asarray(dense), s), max(1, args.repeats // 2)
            )
        rows.append(row)
        print(json.dumps(row), flush=True)

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
        f"{jax.local_device_count()} JAX device(s), {__import__('os').cpu_count()} CPUs",
        "jax": jax.__version__,
        "malloc": describe(),
        "shape": list(args.shape),
        "copy_jax_s": t_copy,
        "copy_numpy_s": t_np_copy,
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    print()
    labels = {
        "dense": "17x17 dense Gaussian, under jit (Fourier)",
        "dense_full_rank": "17x17 dense full rank, under jit (Fourier)",
        "factored": "17x17 factored (rank 1)",
        "dense_outside_jit": "17x17 dense Gaussian, outside jit (auto-factored)",
        "dense_rows": "17x17 dense full rank, row by row (before)",
    }
    print(
        "| subsample | PSF | isojax (2 views) | vs CSBDeep | vs copy | grad in PSF | grad / forward |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        for name, label in labels.items():
            if f"isojax_{name}_s" not in row:
                continue
            t = row[f"isojax_{name}_s"]
            g = row.get(f"grad_{name}_s")
            vs = f"{row['csbdeep_s'] / t:.1f}x faster" if "csbdeep_s" in row else "n/a"
            gs = f"{g * 1e3:.0f} ms | {g / t:.2f}" if g is not None else "n/a | n/a"
            print(
                f"| {row['subsample']} | {label} | {t * 1e3:.0f} ms | {vs} | "
                f"{t / t_copy:.1f}x copy | {gs} |"
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
