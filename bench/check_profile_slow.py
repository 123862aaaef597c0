"""A width profile that did not finish: the reproducer (issue 14, found and fixed 2026-12-02).

``isojax.calibrate.fit_psf`` on a textured specimen of the independent grid
(``examples/calibration_experiments.py``: textured, seed 13, subsample 6, sigma 1.5 px,
moderate noise, 32 x 128 x 128) stopped in the interval's second profile
(``fit._interval`` -> ``search.width_profile``) for more than 7 minutes, where the first
profile of 29 widths took 3.5 s with its compilation.

Cause: one width of the 29 (2.44 px). There, the nuisance fit (``search._fit_nuisance``)
ran ``optax.lbfgs`` from two starts under ``jax.vmap``; each start alone converges in
40 iterations (one of them with 20-step line searches, the maximum), but the vmapped zoom
line search (a ``while_loop``) never returned, in jax 0.10.2 and in jax 0.12.0 (Python
3.12), optax 0.2.8. The fit is now a fixed-iteration Levenberg-Marquardt (scan only,
no while loop): its minima agree with L-BFGS's to 1e-6 over four specimens' profiles,
and with scipy's ``least_squares`` (``tests/test_calibrate_search.py``, which holds this
width's inputs and failed, by timeout, before the fix).

Command: ``PYTHONPATH=$PWD timeout 900 python3 bench/check_profile_slow.py`` (prints the
time of each profile; before the fix the last one did not finish, now: 1.4 s, 0.1 s,
0.0 s).
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
