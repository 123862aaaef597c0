"""Global search and an honest interval: the spectral objective profiled over the width.

:func:`width_profile` evaluates the objective for Gaussian additional axial PSFs on a grid
of widths (a delta, then geometric steps up to at least three axial steps), with the two
nuisance constants (gain, white floor) fitted at each width: a profile in the sense of
profile likelihood. :func:`fit_psf` starts its gradient refinement from the best cells of
that profile rather than from one default width, and :func:`profile_interval` reads an
uncertainty interval off it.

The interval is a likelihood-ratio-like threshold on the profile. Treat the log-spectrum
residuals at the best width as Gaussian with an unknown variance estimated from the
residuals themselves (``L_min = RSS / n``); the profile-likelihood ratio of ``n_eff``
effectively independent residuals, ``n_eff log(L(w) / L_min)``, is then compared with the
95% point of chi-square with one degree of freedom. Adjacent Welch frequencies of a Hann
window overlap, so ``n_eff`` is half the number of frequencies (conservative). Because
the residual variance includes whatever the model does not explain (a specimen that is
not quite isotropic, estimation noise), the interval widens when the fit is poor. It is
never narrower than :data:`MODEL_ERROR` either side of the best width: a specimen that
is isotropic only on average moves the minimum by a few percent while fitting well.

References:
  S. A. Murphy, A. W. van der Vaart, "On profile likelihood", JASA 95:449-465 (2000)
  (profiling out nuisance parameters); the threshold as in Wilks' theorem.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from isojax.calibrate.params import psf_from_params
from isojax.calibrate.spectra import SpectralTarget, _noised_spectra

__all__ = ["WidthInterval", "profile_interval", "width_grid", "width_profile"]

#: A sampled Gaussian this narrow (px) is a delta in float32: the grid's "zero width".
DELTA_SIGMA = 0.05
_CHI2_1_95 = 3.841458820694124
#: Relative model error added around the best width: the interval is at least
#: ``best * (1 -+ MODEL_ERROR)``. The residual-based threshold measures how well the model
#: fits this stack, not how far an imperfectly isotropic specimen moves the minimum; on
#: the independent-specimen grid (bench/calibration_grid.md) identifiable cells miss the
#: truth by a few percent with residual-based intervals of +-1%.
MODEL_ERROR = 0.10
#: An interval whose upper end exceeds this many times its lower end is "wide".
MAX_INTERVAL_RATIO = 2.0
_GRID_POINTS = 28


class WidthInterval(NamedTuple):
    """An uncertainty interval for the Gaussian width, read off the profile.

    Attributes:
      best: the grid's (or refined) best sigma, px (0 for the delta).
      low: lower end, px; 0 when the delta is inside (the interval touches zero).
      high: upper end, px; ``inf`` when the profile stays below the threshold to the
        grid's top.
      threshold: the objective's value that bounds the interval.
      identifiable: the interval neither touches zero nor is wide (``high / low`` at
        most :data:`MAX_INTERVAL_RATIO`).
    """

    best: float
    low: float
    high: float
    threshold: float
    identifiable: bool


def width_grid(subsample: float, *, n_lat: int, init_sigma: float | None = None) -> np.ndarray:
    """Widths (sigma, px) of the global search: a delta, then geometric steps.

    From an eighth of the axial step (at most 0.25 px) to three axial steps (or three
    times ``init_sigma`` if larger), capped at ``(n_lat - 1) / 8`` so that +-4 sigma fits in
    a lateral line.

    Args:
      subsample: the anisotropy factor (the axial step in lateral pixels).
      n_lat: the length of the lateral lines the spectra are taken along, in pixels.
      init_sigma: a user's starting width in px (``--init-fwhm``), or None.

    Returns:
      ``(k,)`` float64, ascending, the first entry :data:`DELTA_SIGMA`.
    """
    top = max(3.0 * subsample, 3.0 * (init_sigma or 0.0))
    top = min(top, (n_lat - 1) / 8.0)
    bottom = min(0.25, subsample / 8.0, top / 4.0)
    return np.concatenate([[DELTA_SIGMA], np.geomspace(bottom, top, _GRID_POINTS)])


def grid_taps(n_lat: int) -> int:
    """Odd kernel length of the search: the line length (odd), which holds +-4 sigma of the
    widest width :func:`width_grid` allows. Fixed by the stack alone, so that every start
    shares one compiled profile and one compiled refinement."""
    return max(3, n_lat if n_lat % 2 else n_lat - 1)


#: Levenberg-Marquardt iterations of :func:`_fit_nuisance` (a fixed count: no while loop).
_NUISANCE_ITERS = 60


def _fit_nuisance(log_obs: jax.Array, syn: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Best ``(loss, [log_gain, log_floor])`` of ``mean (log_obs - log(g syn + c))^2``.

    Levenberg-Marquardt (K. Levenberg, Q. Appl. Math. 2:164 (1944); D. W. Marquardt,
    J. SIAM 11:431 (1963)) in the two log-constants, a fixed number of iterations from two
    starts (no floor; a floor at the observed minimum), the better kept. With ``w = g syn /
    (g syn + c)`` the model's Jacobian is ``[w, 1 - w]``, so each step is a 2 x 2 solve of
    the damped normal equations (Marquardt's scaling by the diagonal); a step is taken only
    where it lowers the loss, and the damping falls (x0.3) or rises (x10) accordingly.

    Every loop is a ``scan`` of fixed length, so the fit terminates under ``jit`` and
    ``vmap`` whatever the data. It replaced ``optax.lbfgs``, whose zoom line search (a
    ``while_loop``) never returned under ``vmap`` of the two starts on one textured stack
    at subsample 6 (optax 0.2.8, jax 0.10.2 and 0.12.0); the minima agree to 1e-6
    (``tests/test_calibrate_search.py``).
    """

    def resid(n):
        return log_obs - jnp.log(jnp.exp(n[0]) * syn + jnp.exp(n[1]))

    def loss(n):
        return jnp.mean(resid(n) ** 2)

    low = max(1, log_obs.shape[0] // 2)
    g0 = jnp.median(log_obs[:low] - jnp.log(syn[:low]))
    lo_min = jnp.min(log_obs)
    starts = jnp.stack([jnp.stack([g0, lo_min - 9.0]), jnp.stack([g0 - 1.0, lo_min - 0.7])])
    # a box that keeps exp() finite in float32; the floor's lower end is "no floor at all"
    box_lo = jnp.stack([g0 - 30.0, lo_min - 40.0])
    box_hi = jnp.stack([g0 + 30.0, jnp.max(log_obs) + 5.0])

    def run(n0):
        def step(carry, _):
            n, lam, v = carry
            gs = jnp.exp(n[0]) * syn
            w = gs / (gs + jnp.exp(n[1]))
            jac = jnp.stack([w, 1.0 - w], axis=-1)
            a = jac.T @ jac
            b = jac.T @ resid(n)
            m = a + jnp.diag(lam * jnp.diagonal(a) + 1e-9 * jnp.trace(a) + 1e-30)
            det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
            delta = jnp.stack([m[1, 1] * b[0] - m[0, 1] * b[1],
                               m[0, 0] * b[1] - m[1, 0] * b[0]]) / det
            trial = jnp.clip(n + delta, box_lo, box_hi)
            vt = loss(trial)
            better = jnp.isfinite(vt) & (vt < v)
            lam = jnp.clip(jnp.where(better, 0.3 * lam, 10.0 * lam), 1e-9, 1e9)
            return (jnp.where(better, trial, n), lam, jnp.where(better, vt, v)), None

        v0 = loss(n0)
        carry = (n0, jnp.asarray(1e-3, n0.dtype), jnp.where(jnp.isfinite(v0), v0, jnp.inf))
        (n, _, v), _ = jax.lax.scan(step, carry, None, length=_NUISANCE_ITERS)
        return jnp.where(jnp.isfinite(v), v, jnp.inf), n

    values, params = jax.vmap(run)(starts)
    i = jnp.argmin(values)
    return values[i], params[i]


@functools.partial(jax.jit, static_argnames=("taps", "subsample", "segment"))
def _profile(log_sigmas, target, *, taps, subsample, segment):
    def one(log_sigma):
        psf = psf_from_params("gaussian", {"log_sigma": log_sigma}, taps=taps)
        obs, syn = _noised_spectra(psf, target, subsample, segment)
        return _fit_nuisance(jnp.log(jnp.maximum(obs, 1e-30)), syn)

    return jax.lax.map(one, log_sigmas)


def width_profile(target: SpectralTarget, sigmas, *, subsample: float, segment: int,
                  taps: int) -> tuple[np.ndarray, np.ndarray]:
    """The spectral objective for Gaussian PSFs of each width, nuisance constants fitted.

    Args:
      target: from :func:`~isojax.calibrate.prepare_spectra`.
      sigmas: ``(k,)`` axial standard deviations in px (> 0; :data:`DELTA_SIGMA` is a delta).
      subsample: anisotropy factor.
      segment: its Welch length.
      taps: odd kernel length, the same for every width (one compiled program).

    Returns:
      ``(losses (k,), nuisance (k, 2))``: the objective and the fitted ``[log_gain,
      log_floor]`` at each width.
    """
    log_s = jnp.log(jnp.asarray(np.asarray(sigmas, np.float32)))
    losses, nuis = _profile(log_s, target, taps=int(taps), subsample=float(subsample),
                            segment=int(segment))
    return np.asarray(losses, np.float64), np.asarray(nuis, np.float64)


def local_minima(losses: np.ndarray, count: int = 2) -> list[int]:
    """Indices of the ``count`` lowest local minima of a profile (ends included)."""
    v = np.asarray(losses)
    idx = [i for i in range(len(v))
           if (i == 0 or v[i] <= v[i - 1]) and (i == len(v) - 1 or v[i] <= v[i + 1])]
    return sorted(idx, key=lambda i: v[i])[:count]


def _crossing(s0, l0, s1, l1, t):
    """Where the segment from (s0, l0) to (s1, l1) crosses level t (l0 <= t < l1)."""
    return s0 + (s1 - s0) * (t - l0) / max(l1 - l0, 1e-300)


def profile_interval(sigmas, losses, *, n_freq: int) -> WidthInterval:
    """A likelihood-ratio-like interval for the width from a profile (see the module).

    Args:
      sigmas: ``(k,)`` ascending widths in px, the first :data:`DELTA_SIGMA` (a delta).
      losses: ``(k,)`` the profile at those widths.
      n_freq: frequencies in the objective (the Welch segment's half length).

    Returns:
      A :class:`WidthInterval`; widths at the delta are reported as 0.
    """
    s = np.asarray(sigmas, np.float64)
    v = np.asarray(losses, np.float64)
    v = np.where(np.isfinite(v), v, np.inf)
    i = int(np.argmin(v))
    n_eff = max(2.0, n_freq / 2.0)
    threshold = float(v[i] * math.exp(_CHI2_1_95 / n_eff))
    sz = np.where(s <= DELTA_SIGMA, 0.0, s)
    j = i
    while j > 0 and v[j - 1] <= threshold:
        j -= 1
    low = 0.0 if j == 0 else _crossing(sz[j], v[j], sz[j - 1], v[j - 1], threshold)
    k = i
    while k < len(v) - 1 and v[k + 1] <= threshold:
        k += 1
    high = math.inf if k == len(v) - 1 else _crossing(sz[k], v[k], sz[k + 1], v[k + 1], threshold)
    low = min(low, sz[i] * (1.0 - MODEL_ERROR))
    high = max(high, sz[i] * (1.0 + MODEL_ERROR))
    ok = low > 0 and math.isfinite(high) and high <= MAX_INTERVAL_RATIO * low
    return WidthInterval(float(sz[i]), float(low), float(high), threshold, bool(ok))
