"""Does the specimen look the same along x and along y? A lead for the sheets' misses.

The spectral objective takes the lateral (XY) lines as the isotropic reference for the Z
lines. The thin-sheets specimen of the independent grid (12 curved discs at random
orientations, ``examples/calibration_experiments.py``) is isotropic only on average, and
its identifiable cells miss by more than 10% in 6 of 12 moderate-noise cells
(bench/calibration_grid.md). This script measures, on the grid's own stacks (same
seeds), the best width on the search grid with the reference lines along x only, along
y only, and along both (``isojax.calibrate.prepare_spectra(lateral=...)``): a specimen
that is not isotropic in XY gives two different widths, and its Z lines are a third draw
of the same direction dependence.

Result (2026-12-02, jax 0.10.2; best grid width by parabola, px; ratio = larger / smaller
of x and y):

| specimen | s | true | xy | x | y | ratio |
|---|---|---|---|---|---|---|
| sheets | 3 | 0.75 | 1.974 | 1.959 | 1.988 | 1.015 |
| sheets | 10 | 2.5 | 7.428 | 8.965 | 6.411 | 1.398 |
| sheets | 3 | 1.5 | 1.343 | 1.093 | 1.491 | 1.364 |
| sheets | 10 | 5 | 5.749 | 5.745 | 5.721 | 1.004 |
| sheets | 10 | 10 | 8.948 | 9.548 | 8.311 | 1.149 |
| sheets | 6 | 12 | 13.349 | 13.548 | 12.537 | 1.081 |
| sheets | 3 | 3 | 2.914 | 2.313 | 3.249 | 1.405 |
| sheets | 4 | 4 | 3.993 | 3.550 | 4.457 | 1.256 |
| points | 4 | 2 | 2.212 | 2.183 | 2.231 | 1.022 |
| points | 6 | 3 | 3.208 | 3.196 | 3.246 | 1.015 |
| filaments+nuclei | 3 | 3 | 2.863 | 2.850 | 2.876 | 1.009 |
| filaments+nuclei | 4 | 2 | 1.991 | 1.968 | 2.083 | 1.058 |
| textured | 4 | 8 | 7.431 | 7.516 | 7.341 | 1.024 |
| textured | 2 | 2 | 2.066 | 2.029 | 2.082 | 1.026 |
| neuron | 3 | 1.5 | 1.543 | 1.538 | 1.544 | 1.004 |
| neuron | 4 | 2 | 2.109 | 2.103 | 2.108 | 1.002 |

The x/y disagreement separates the sheets (1.08-1.41 in 6 of 8 stacks) from every other
specimen (at most 1.06), so it does measure the specimen's direction dependence. It is
not adopted as a check (yet): the worst sheets miss (subsample 3, 0.75 px: 1.97 px,
+164%) and another (subsample 10, 5 px: +17%) have x and y in agreement (1.015, 1.004);
the other large one (subsample 10, 2.5 px: +202%) disagrees (1.40), but widening its
interval by that spread would still leave the truth outside it; and the same widening
would refuse two sheets cells that are right (subsample 3, 3 px; 4, 4 px). A test of
Z against XY isotropy needs more than the two lateral directions.

Command: ``PYTHONPATH=$PWD python3 bench/check_xy_consistency.py`` (about 4 minutes on 2
cores; the neuron rows need flowdec's wheel, see the grid script).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import calibration_experiments as ce

from isojax.calibrate import prepare_spectra, search
from isojax.calibrate.consistency import _grid_best

# (specimen, subsample, true sigma px, the full grid's seed for that cell at moderate noise)
CELLS = [("sheets", 3, 0.75, 9), ("sheets", 10, 2.5, 33), ("sheets", 3, 1.5, 11),
         ("sheets", 10, 5, 35), ("sheets", 10, 10, 37), ("sheets", 6, 12, 31),
         ("sheets", 3, 3, 13), ("sheets", 4, 4, 21), ("points", 4, 2, 10), ("points", 6, 3, 14),
         ("filaments+nuclei", 3, 3, 13), ("filaments+nuclei", 4, 2, 19),
         ("textured", 4, 8, 12), ("textured", 2, 2, 3), ("neuron", 3, 1.5, 11),
         ("neuron", 4, 2, 19)]


def main() -> None:
    print("| specimen | s | true | xy | x | y | ratio |\n|---|---|---|---|---|---|---|")
    for kind, s, w, seed in CELLS:
        stack = ce.make_stack(kind, seed, subsample=s, width=w, noise="moderate",
                              lateral=ce.lateral_for(s, kind))
        grid = search.width_grid(float(s), n_lat=stack.shape[-1])
        taps = search.grid_taps(stack.shape[-1])
        best = {}
        for lateral in ("xy", "x", "y"):
            target, segment = prepare_spectra(jax.random.key(1), stack, subsample=float(s),
                                              lateral=lateral)
            losses, _ = search.width_profile(target, grid, subsample=float(s), segment=segment,
                                             taps=taps)
            best[lateral] = _grid_best(np.asarray(grid), losses)
        ratio = max(best["x"], best["y"]) / max(min(best["x"], best["y"]), 1e-9)
        print(f"| {kind} | {s} | {w:g} | {best['xy']:.3f} | {best['x']:.3f} | {best['y']:.3f} "
              f"| {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
