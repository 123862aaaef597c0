"""A/B of the dense-PSF operator under ``jit``: the lateral-Fourier path against the row path.

Both views of a 64x512x512 float32 volume, a full-rank 17x17 PSF passed into ``jax.jit``,
fastest of 3 warm calls per arm, the two arms alternated twice per subsample factor in one
process (the row path is forced by switching ``forward._fourier.plan`` off).
Run from the repository root: ``python3 bench/bench_dense_ab.py``.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

import isojax
from isojax.forward import _fourier

ORIGINAL_PLAN = _fourier.plan


def _time(s: float, fourier: bool, x, psf) -> float:
    """Fastest of 3 warm calls of both views, with the Fourier plan on or off."""
    _fourier.plan = ORIGINAL_PLAN if fourier else (lambda *a, **k: None)
    views = jax.jit(lambda v, p: (isojax.degrade(v, p, s, axes=(2, 1)),
                                  isojax.degrade(v, p, s, axes=(1, 2))))
    jax.block_until_ready(views(x, psf))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(views(x, psf))
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    x = jnp.asarray(np.random.default_rng(0).random((64, 512, 512), np.float32))
    psf = np.random.default_rng(1).random((17, 17)).astype(np.float32)
    psf /= psf.sum()
    for s in (4.0, 10.2, 2.0):
        for _ in range(2):
            row, fourier = _time(s, False, x, psf), _time(s, True, x, psf)
            print(f"subsample {s}: row {row:.2f} s, Fourier {fourier:.2f} s, "
                  f"row / Fourier {row / fourier:.2f}", flush=True)


if __name__ == "__main__":
    main()
