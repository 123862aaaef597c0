"""Peak memory of streaming prediction (predict_large) on a stack larger than its budget.

Writes a synthetic uint16 stack as an uncompressed TIFF (default 512 x 2048 x 2048 = 4 GiB,
plane by plane, never whole in memory), then restores it with
:func:`isojax.predict_large.predict_large` in a child process and reports the child's peak
resident memory, the wall time and the sizes, as a markdown table.

Peak memory is the child's own high-water mark of resident memory, ``VmHWM`` in
``/proc/self/status``, read by the child when it is done (it counts the pages of
memory-mapped files the child touched too). It is not ``getrusage(RUSAGE_CHILDREN).ru_maxrss``:
Linux carries the high-water mark of the address space a child was forked (or vforked)
from across ``exec`` into the child's ``ru_maxrss``, so that number includes whatever this
parent process held when it started the child, here the pages of the 4 GB stack it had
just written. That is how an earlier version of this benchmark reported 4.52 GB for a child
whose own peak was 1.13 GB.

The network is by default deliberately cheap: a fixed 3x3 convolution (``--net conv3``) or
the identity. A full U-Net over 4 GB would take hours on a 2-core CPU; these measure the
memory bound of the streaming machinery (slabs, Z upsampling, stores, fusion). ``--net
unet`` runs CARE's default U-Net (random weights) on a smaller stack, to check that the
network's activations stay within their quarter of the budget (slices that would not fit
are tiled).

Both views are fused (``fuse="mean"``), subsample 2 by default (output ~2x the input's
voxels); the output is an OME-Zarr (uint16, so the XZ view waits in a float32 scratch
store) or a BigTIFF (``--output tif``). Big files are removed at the end unless ``--keep``.

Usage: ``python bench/bench_large.py`` (4 GiB; about 10 minutes here) or, as a smoke test,
``python bench/bench_large.py --shape 16 256 256 --budget 0.05``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_stack(path: Path, shape) -> None:
    """A uint16 stack with structure (blobs on a gradient) and noise, written plane by plane."""
    import tifffile

    nz, ny, nx = shape
    mapped = tifffile.memmap(path, shape=shape, dtype=np.uint16, bigtiff=True,
                             photometric="minisblack", metadata={"axes": "ZYX"})
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:ny, :nx]
    base = 100 + (yy * 200 // max(ny, 1)).astype(np.uint16)
    for z in range(nz):
        blob = 2000 * np.exp(-((yy - ny / 2) ** 2 + (xx - nx / 2 - 20 * np.sin(z / 9)) ** 2)
                             / (2 * (ny / 8) ** 2))
        noise = rng.integers(0, 50, size=(ny, nx), dtype=np.uint16)
        mapped[z] = base + blob.astype(np.uint16) + noise
    mapped.flush()
    del mapped


def child(args) -> None:
    """Run the prediction (in the measured process)."""
    import jax.numpy as jnp
    from jax import lax

    from isojax.predict_large import predict_large

    def conv3(b):
        k = jnp.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
        out = lax.conv_general_dilated(b[:, None], k[None, None], (1, 1), "SAME")
        return out[:, 0]

    if args.net == "unet":  # CARE's default U-Net, random weights (cost does not depend on them)
        import jax

        from isojax.unet import UNetConfig, apply_unet, init_unet

        graphdef, params = init_unet(jax.random.key(0), UNetConfig())

        def net(b):
            return apply_unet(graphdef, params, b[..., None])[..., 0]
    else:
        net = conv3 if args.net == "conv3" else (lambda b: b)
    slabs = []
    t0 = time.perf_counter()
    result = predict_large(
        args.input, args.output_path, net, subsample=args.subsample,
        memory_budget=int(args.budget * 1e9), output_dtype=np.dtype(args.dtype),
        bytes_per_pixel=args.bytes_per_pixel, multiple=4,
        progress=slabs.append)
    elapsed = time.perf_counter() - t0
    biggest = max(s.nbytes for s in slabs)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if ":" in line)
    peak_kib = int(status["VmHWM"].split()[0])
    tile = "whole" if result.tile is None else "x".join(str(t) for t in result.tile)
    print(f"RESULT {elapsed:.1f} {peak_kib} {result.shape} {result.slab_lines} {len(slabs)} "
          f"{biggest} tiles:{tile}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 2048, 2048),
                        metavar=("Z", "Y", "X"))
    parser.add_argument("--subsample", type=float, default=2.0)
    parser.add_argument("--budget", type=float, default=1.0, help="memory budget in GB")
    parser.add_argument("--net", choices=("conv3", "identity", "unet"), default="conv3")
    parser.add_argument("--bytes-per-pixel", type=int, default=None,
                        help="network memory per input pixel for the batch size and tiles "
                        "(default 64 for conv3 and identity, ample for a 3x3 conv; "
                        "predict_large's own default, 1024, for unet)")
    parser.add_argument("--output", choices=("zarr", "tif"), default="zarr")
    parser.add_argument("--dtype", default="uint16", help="output dtype")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the big files (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the big files")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output-path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bytes_per_pixel is None:
        args.bytes_per_pixel = 1024 if args.net == "unet" else 64
    if args.child:
        child(args)
        return

    workdir = Path(tempfile.mkdtemp(prefix="isojax-bench-large-", dir=args.workdir))
    try:
        stack = workdir / "stack.tif"
        t0 = time.perf_counter()
        make_stack(stack, tuple(args.shape))
        t_make = time.perf_counter() - t0
        output = workdir / f"iso.{args.output}"
        cmd = [sys.executable, __file__, "--child", "--input", str(stack), "--output-path",
               str(output), "--subsample", str(args.subsample), "--budget", str(args.budget),
               "--net", args.net, "--dtype", args.dtype,
               "--bytes-per-pixel", str(args.bytes_per_pixel)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"child failed:\n{done.stderr[-3000:]}")
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT"))
        _, seconds, peak_kib, rest = line.split(" ", 3)
        peak_kib = int(peak_kib)
        out_bytes = sum(f.stat().st_size for f in output.rglob("*") if f.is_file()) \
            if output.is_dir() else output.stat().st_size
        in_bytes = stack.stat().st_size
        print(f"command: `python bench/bench_large.py {' '.join(sys.argv[1:])}`")
        print(f"machine: {os.cpu_count()} CPUs; input written in {t_make:.0f} s\n")
        print("| input (z, y, x) uint16 | input size | subsample | network | output | "
              "memory budget | peak RSS (child VmHWM) | wall time | details |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| {tuple(args.shape)} | {in_bytes / 1e9:.2f} GB | {args.subsample:g} | "
              f"{args.net} ({args.bytes_per_pixel} B/px) | {args.output} {args.dtype}, {out_bytes / 1e9:.2f} GB | "
              f"{args.budget:g} GB | **{peak_kib * 1024 / 1e9:.2f} GB** | {float(seconds):.0f} s "
              f"| shape, slab lines (y, x), slabs, largest slab estimate, tiles: {rest} |")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
