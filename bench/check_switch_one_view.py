"""One view of the dense-PSF operator under ``jit``, with the in-program SVD switch on and off.

Degrades a 64x512x512 float32 volume along one axis at subsample 4 with a 17x17 dense PSF
passed into ``jax.jit`` (traced): a separable Gaussian (sigma 1.2 px laterally, 3 px
axially) and a full-rank one (the Gaussian times 1 + 0.2 U(0, 1), renormalised), as in
``bench/bench_forward.py``. "Switch off" sets ``isojax.forward._operator._TRACED_MAX_RANK``
to 0, so that every dense PSF takes the exact path. Prints the fastest of 4 warm calls.

Command: ``PYTHONPATH=$PWD python3 bench/check_switch_one_view.py``
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import isojax
import isojax.forward._operator as operator


def _psfs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    taps = np.arange(-8, 9)
    gauss = np.exp(-(taps**2) / (2 * 1.2**2))[:, None] * np.exp(-(taps**2) / (2 * 3.0**2))[None]
    full = gauss * (1 + 0.2 * rng.random(gauss.shape))
    return {"gaussian": gauss / gauss.sum(), "full rank": full / full.sum()}


def _fastest(x: jax.Array, psf: np.ndarray, repeats: int = 4) -> float:
    f = jax.jit(lambda a, p: isojax.degrade(a, p, 4.0))
    p = jnp.asarray(psf, jnp.float32)
    jax.block_until_ready(f(x, p))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x, p))
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    x = jnp.asarray(np.random.default_rng(1).random((64, 512, 512)), jnp.float32)
    kept = operator._TRACED_MAX_RANK
    for switch in ("on", "off"):
        operator._TRACED_MAX_RANK = kept if switch == "on" else 0
        for name, psf in _psfs().items():
            print(f"{name}, switch {switch}: {_fastest(x, psf) * 1e3:.0f} ms")
    operator._TRACED_MAX_RANK = kept


if __name__ == "__main__":
    main()
