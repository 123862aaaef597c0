"""Does the exact (lateral-Fourier) dense path's cost depend on the PSF's values?

One view of a 64x512x512 float32 volume at subsample 4 under ``jax.jit``, the in-program
SVD switch off (``isojax.forward._operator._TRACED_MAX_RANK = 0``: every dense PSF takes
the exact path), four 17x17 PSFs (the separable Gaussian and the full-rank one of
``check_switch_one_view.py``, a constant, a uniform random one), one compiled program,
three rounds in alternating order. Prints every call's wall time.

Command (huge-page malloc as the other benchmarks, ``bench/_env.py``):
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1 PYTHONPATH=$PWD python3 bench/check_exact_path_values.py``
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from check_switch_one_view import _psfs

import isojax
import isojax.forward._operator as operator


def main() -> None:
    x = jnp.asarray(np.random.default_rng(1).random((64, 512, 512)), jnp.float32)
    operator._TRACED_MAX_RANK = 0
    f = jax.jit(lambda a, p: isojax.degrade(a, p, 4.0))
    psfs = _psfs()
    psfs["constant"] = np.full((17, 17), 1 / 289.0)
    r = np.random.default_rng(3).random((17, 17))
    psfs["uniform random"] = r / r.sum()
    for p in psfs.values():
        jax.block_until_ready(f(x, jnp.asarray(p, jnp.float32)))
    for rep in range(3):
        for name in list(psfs) if rep % 2 == 0 else list(psfs)[::-1]:
            p = jnp.asarray(psfs[name], jnp.float32)
            t0 = time.perf_counter()
            jax.block_until_ready(f(x, p))
            print(f"{name}: {(time.perf_counter() - t0) * 1e3:.0f} ms", flush=True)


if __name__ == "__main__":
    main()
