"""A width profile that does not finish: a reproducer (issue 14, found 2026-12-01).

``isojax.calibrate.fit_psf`` on a textured specimen of the independent grid
(``examples/calibration_experiments.py``: textured, seed 13, subsample 6, sigma 1.5 px,
moderate noise, 32 x 128 x 128) stops in the interval's second profile
(``fit._interval`` -> ``search.width_profile``) for more than 7 minutes, where the first
profile of 29 widths took 3.5 s with its compilation. The same compiled program over 29
copies of any one of those widths takes 0.1-0.2 s each; over the 29 widths together
(1.27-3.52 px, saved by running ``fit_psf``) it does not finish in 6 minutes. Not
explained yet (candidates: optax's zoom line search inside ``search._fit_nuisance`` under
``vmap``, whose while loop runs until every lane is done); the points cell at subsample 6,
sigma 6 px, which ran for an hour before, is probably the same.

Command: ``PYTHONPATH=$PWD timeout 900 python3 bench/check_profile_slow.py`` (prints the
time of each profile; the last one is the slow one).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import calibration_experiments as ce

from isojax.calibrate import prepare_spectra, search

# the 29 widths fit_psf's _interval profiles for this stack (sigma_px 2.1104 x geomspace)
EXTRA = 2.1104073524475098 * np.geomspace(0.6, 1.0 / 0.6, 29)


def main() -> None:
    stack = ce.make_stack("textured", 13, subsample=6, width=1.5, noise="moderate",
                          lateral=128)
    target, segment = prepare_spectra(jax.random.key(1), stack, subsample=6.0)
    grid = search.width_grid(6.0, n_lat=stack.shape[-1])
    for name, widths in [("the search grid", grid), ("29 x 2.11 px", np.full(29, 2.11)),
                         ("the interval's widths", EXTRA)]:
        t0 = time.perf_counter()
        search.width_profile(target, widths, subsample=6.0, segment=segment, taps=127)
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
