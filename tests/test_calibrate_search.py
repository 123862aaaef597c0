"""The profile's nuisance fit (``isojax.calibrate.search._fit_nuisance``): it terminates, and
it finds the least-squares gain and white floor an independent float64 solver finds.

The first case is the one that hung: on a textured stack of the independent grid
(``examples/calibration_experiments.py`` textured, seed 13, subsample 6, sigma 1.5 px) the
width profile at 2.44 px never returned, because optax's L-BFGS zoom line search under
``vmap`` of the two starts did not terminate (``bench/check_profile_slow.py``). Its inputs
are the 11 log-spectrum values and model spectra of that width, written out in hex.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import least_squares

from isojax.calibrate.search import _fit_nuisance

_HUNG_LOG_OBS = ["-0x1.c83f0ap+1", "-0x1.c56e86p+1", "-0x1.db2ed0p+1", "-0x1.ff4d7ap+1",
                 "-0x1.10fca2p+2", "-0x1.236dccp+2", "-0x1.3434ecp+2", "-0x1.438884p+2",
                 "-0x1.4f3b54p+2", "-0x1.5464ecp+2", "-0x1.55c35cp+2"]
_HUNG_SYN = ["0x1.ec04dcp-6", "0x1.d3db4ep-6", "0x1.621174p-6", "0x1.050f8ap-6",
             "0x1.64eb68p-7", "0x1.05cbeep-7", "0x1.6d0430p-8", "0x1.0bb9bcp-8",
             "0x1.a4d4d4p-9", "0x1.4746dcp-9", "0x1.27d12cp-9"]


def _hex(values) -> np.ndarray:
    return np.array([float.fromhex(v) for v in values], np.float32)


def _reference(log_obs: np.ndarray, syn: np.ndarray) -> float:
    """The least-squares minimum in float64 by scipy's trust-region solver from a spread of
    starts (an independent method)."""
    y, s = np.asarray(log_obs, np.float64), np.asarray(syn, np.float64)

    def resid(n):
        return y - np.log(np.exp(n[0]) * s + np.exp(n[1]))

    g0 = float(np.median(y - np.log(s)))
    best = np.inf
    for a in (g0 - 2.0, g0, g0 + 2.0):
        for b in (y.min() - 12.0, y.min() - 3.0, y.min() - 0.5, y.min() + 0.5):
            r = least_squares(resid, [a, b], method="trf", xtol=1e-14, ftol=1e-14, gtol=1e-14)
            best = min(best, float(np.mean(r.fun**2)))
    return best


def test_the_fit_that_hung_returns_and_finds_the_minimum():
    code = textwrap.dedent(f"""
        import jax, numpy as np
        from isojax.calibrate.search import _fit_nuisance
        lo = np.array([float.fromhex(v) for v in {_HUNG_LOG_OBS!r}], np.float32)
        syn = np.array([float.fromhex(v) for v in {_HUNG_SYN!r}], np.float32)
        v, n = jax.jit(_fit_nuisance)(lo, syn)
        print(float(v))
    """)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, check=True).stdout
    except subprocess.TimeoutExpired:
        pytest.fail("the nuisance fit did not return within 120 s (it hung before the fix)")
    value = float(out.split()[-1])
    ref = _reference(_hex(_HUNG_LOG_OBS), _hex(_HUNG_SYN))
    assert value == pytest.approx(ref, rel=1e-4)


def test_nuisance_fit_matches_an_independent_solver_under_vmap():
    """Spectra made from a known gain and floor (from no floor to floor-dominated), with
    noise: the vmapped fit reaches the float64 least-squares minimum, and recovers the gain
    and floor where the data pin them."""
    rng = np.random.default_rng(0)
    f = np.linspace(0.02, 0.5, 24)
    cases = []
    for width, log_g, log_c in [(1.0, 0.3, -30.0), (2.5, -0.5, -6.0), (4.0, 1.0, -3.0),
                                (0.5, 0.0, -9.0), (6.0, -2.0, -4.0)]:
        syn = np.exp(-4 * np.pi**2 * width**2 * f**2) + 1e-4
        clean = np.log(np.exp(log_g) * syn + np.exp(log_c))
        cases.append((clean + 0.02 * rng.standard_normal(f.size), syn, log_g, log_c))
    lo = jnp.asarray(np.stack([c[0] for c in cases]), jnp.float32)
    syn = jnp.asarray(np.stack([c[1] for c in cases]), jnp.float32)
    values, params = jax.jit(jax.vmap(_fit_nuisance))(lo, syn)
    for k, (y, s, log_g, log_c) in enumerate(cases):
        ref = _reference(y, s)
        assert float(values[k]) == pytest.approx(ref, rel=1e-3, abs=1e-7)
        assert float(params[k][0]) == pytest.approx(log_g, abs=0.05)
        if np.exp(log_c) > 0.1 * np.exp(log_g) * s.min():  # else the data do not pin it
            assert float(params[k][1]) == pytest.approx(log_c, abs=0.15)
