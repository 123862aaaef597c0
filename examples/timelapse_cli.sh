#!/usr/bin/env bash
# A two-channel time-lapse on the command line, end to end: one bead per channel ->
# `isojax psf axial` per bead -> `isojax train --psf a0.tif --psf a1.tif` -> `isojax predict`
# to a TZCYX TIFF and to an OME-Zarr (t c z y x), then PSNR per time point and channel
# against the truth, for linear interpolation and for isojax.
#
#   isojax demo --channels 2 --timepoints 3 --out series     # the simulated data (and its own run)
#   bash examples/timelapse_cli.sh series [STEPS]             # the same with the commands
#
# The folder is what `isojax demo --channels 2 --timepoints 3` writes: stack.tif (TZCYX),
# truth.tif, bead_c0.tif, bead_c1.tif. Writes cli/ inside it (replaced on every run).
set -euo pipefail
d="${1:?give the folder written by isojax demo --channels 2 --timepoints 3}"
steps="${2:-300}"
out="$d/cli"
rm -rf "$out" && mkdir -p "$out"
for c in 0 1; do
    isojax psf axial "$d/bead_c$c.tif" --pixel-size 0.1 -o "$out/a$c.tif"
done
isojax train "$d/stack.tif" --psf "$out/a0.tif" --psf "$out/a1.tif" --model "$out/model" \
    --steps "$steps" --batch-size 8 --patch-size 64 --first-filters 16 --quiet
isojax psf check "$out/model"
isojax predict "$d/stack.tif" --model "$out/model" -o "$out/iso.tif" --quiet
isojax predict "$d/stack.tif" --model "$out/model" -o "$out/iso.zarr" --quiet
python3 - "$d" "$out" <<'PY'
import sys
from pathlib import Path

import numpy as np

from isojax.io import open_hyperstack
from isojax.metrics import psnr
from isojax.predict import upsample_z

d, out = Path(sys.argv[1]), Path(sys.argv[2])
stack, truth = open_hyperstack(d / "stack.tif"), open_hyperstack(d / "truth.tif")
tif, zarr = open_hyperstack(out / "iso.tif"), open_hyperstack(out / "iso.zarr")
print(f"OME-Zarr axes {zarr.file_axes}, voxel size {zarr.spacing} um, interval {zarr.time_interval} s")
s = stack.spacing[0] / stack.spacing[2]
print(f"{'time':>4} {'channel':>7} {'linear':>8} {'TIFF':>8} {'Zarr':>8} {'gain':>7}  (PSNR, dB)")
worst = np.inf
for t in range(stack.n_timepoints):
    for c in range(stack.n_channels):
        pred, pz = tif.read(t, c), zarr.read(t, c)
        ref = truth.read(t, c)[: pred.shape[0]]
        lin = np.asarray(upsample_z(stack.read(t, c).astype(np.float32), s))[: pred.shape[0]]
        rng = float(ref.max() - ref.min())
        p_lin, p_tif, p_zarr = (float(psnr(v, ref, data_range=rng)) for v in (lin, pred, pz))
        worst = min(worst, p_tif - p_lin)
        print(f"{t:>4} {c:>7} {p_lin:>8.2f} {p_tif:>8.2f} {p_zarr:>8.2f} {p_tif - p_lin:>+7.2f}")
print(f"smallest gain over linear interpolation: {worst:+.2f} dB")
PY
