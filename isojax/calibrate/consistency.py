"""Consistency between sub-volumes: does the stack agree with itself about the width?

The profile interval (:func:`~isojax.calibrate.search.profile_interval`) measures how
well a Gaussian ``h`` explains *this* stack's two spectra. It cannot see the specimen's
own sampling variance: a finite specimen made of a few large objects (nuclei, a dozen
sheets) is isotropic only on average, so its Z and lateral spectra differ by a smooth,
specimen-dependent amount. The misfit is correlated across frequencies, a wrong width
absorbs much of it, the residuals at the minimum stay small and the interval comes out
narrow around a wrong width. Where the width is weakly constrained (widths well below
``subsample / pi``, where only aliasing carries it) that difference moves the minimum by
a factor 2 or 3 (bench/calibration_grid.md, 'Confident misses').

A specimen-agnostic check: cut the stack along Z into ``K`` slabs of equal thickness
(independent parts of the specimen, each with its own Z lines and its own XY planes), find
each slab's best width on the same grid, and widen the interval by their spread. With
``l_k`` the slabs' log-widths, the full stack's log-width is close to their mean, so its
standard error is about ``sd(l_k) / sqrt(K)``; the interval is widened to at least
``best * exp(+-Z sd / sqrt(K))`` (``Z`` = :data:`CONSISTENCY_Z`) and to contain every
slab's width. A slab whose best width is a delta (or the search's top) makes the interval
touch zero (or have no upper end): the stack does not agree with itself. With ``K = 2``
the spread is a one-degree-of-freedom estimate, so this is a screen rather than an exact
interval: it turns stacks whose halves disagree by more than a factor of about 1.4 into
"not identifiable".

This is split-sample validation (the idea of the jackknife / of half-sample replication,
e.g. B. Efron, C. Stein, "The jackknife estimate of variance", Ann. Statist. 9:586-596,
1981); it needs no model of the specimen.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from isojax.calibrate.search import DELTA_SIGMA, MAX_INTERVAL_RATIO, WidthInterval, width_profile
from isojax.calibrate.spectra import MIN_SAMPLES, prepare_spectra
from isojax.errors import IsojaxInputError

__all__ = ["CONSISTENCY_Z", "MAX_SLABS", "consistent_interval", "n_slabs", "slab_widths"]

#: Standard errors either side of the best width that the slabs' spread adds.
CONSISTENCY_Z = 2.0
#: At most this many slabs (each at least :data:`~isojax.calibrate.MIN_SAMPLES` planes).
MAX_SLABS = 4


def _vertex(x: np.ndarray, y: np.ndarray, i: int) -> float:
    """Abscissa of the parabola through the points ``i - 1, i, i + 1`` (clipped to them)."""
    x0, x1, x2 = x[i - 1], x[i], x[i + 1]
    y0, y1, y2 = y[i - 1], y[i], y[i + 1]
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den
    if not (np.isfinite(a) and a > 0):
        return float(x1)
    return float(np.clip(-b / (2 * a), x0, x2))


def _grid_best(sigmas: np.ndarray, losses: np.ndarray) -> float:
    """The profile's best width (px): 0 at the delta, ``inf`` at the grid's top, otherwise
    the vertex of a parabola in log-width through the lowest cell and its neighbours."""
    v = np.where(np.isfinite(losses), losses, np.inf)
    i = int(np.argmin(v))
    if i == 0 or sigmas[i] <= DELTA_SIGMA:
        return 0.0
    if i == len(v) - 1:
        return math.inf
    return float(np.exp(_vertex(np.log(sigmas), v, i)))


def n_slabs(n_planes: int) -> int:
    """How many Z slabs a stack of ``n_planes`` planes is cut into.

    Args:
      n_planes: the stack's number of Z planes.

    Returns:
      ``min(MAX_SLABS, n_planes // MIN_SAMPLES)``; 1 or 0 means no consistency check.
    """
    return int(min(MAX_SLABS, n_planes // MIN_SAMPLES))


def slab_widths(key: jax.Array, stack: np.ndarray, grid: np.ndarray, *, subsample: float,
                taps: int, max_lines: int | None = None) -> np.ndarray:
    """Each Z slab's best Gaussian width on the search grid.

    Args:
      key: a ``jax.random`` key (the slabs' lateral lines).
      stack: ``(z, y, x)`` float32 stack, as given to :func:`~isojax.calibrate.fit_psf`.
      grid: ``(k,)`` widths in px from :func:`~isojax.calibrate.search.width_grid` (the
        full stack's grid, so every slab is searched alike).
      subsample: anisotropy factor.
      taps: kernel length of the search (:func:`~isojax.calibrate.search.grid_taps`).
      max_lines: lateral lines per slab (default: as :func:`prepare_spectra`).

    Returns:
      ``(K,)`` widths in px (0: the slab's best is a delta; ``inf``: the grid's top);
      empty when the stack is too thin for two slabs of :data:`MIN_SAMPLES` planes, or
      when a slab has no contrast to measure (no check).
    """
    k = n_slabs(stack.shape[0])
    if k < 2:
        return np.zeros((0,), np.float64)
    thick = stack.shape[0] // k
    out = []
    for j, kj in enumerate(jax.random.split(key, k)):
        try:
            target, segment = prepare_spectra(kj, stack[j * thick:(j + 1) * thick],
                                              subsample=subsample, max_lines=max_lines)
        except IsojaxInputError:  # e.g. a slab without contrast: nothing to compare
            return np.zeros((0,), np.float64)
        losses, _ = width_profile(target, grid, subsample=subsample, segment=segment, taps=taps)
        out.append(_grid_best(np.asarray(grid, np.float64), losses))
    return np.asarray(out, np.float64)


def consistent_interval(interval: WidthInterval, widths: np.ndarray) -> WidthInterval:
    """Widen ``interval`` by the slabs' spread (see the module) and recheck identifiability.

    Args:
      interval: the full stack's profile interval.
      widths: ``(K,)`` the slabs' best widths from :func:`slab_widths` (px; fewer than two:
        ``interval`` is returned unchanged).

    Returns:
      A :class:`~isojax.calibrate.search.WidthInterval` with the same ``best`` and
      ``threshold``; identifiable by the same rule (off zero, ``high / low`` at most
      :data:`~isojax.calibrate.search.MAX_INTERVAL_RATIO`).
    """
    w = np.asarray(widths, np.float64)
    if w.size < 2 or interval.best <= 0:
        return interval
    if np.any(w <= 0) or not np.all(np.isfinite(w)):
        low = 0.0 if np.any(w <= 0) else interval.low
        high = math.inf if not np.all(np.isfinite(w)) else max(interval.high, float(w.max()))
        return interval._replace(low=low, high=high, identifiable=False)
    se = float(np.std(np.log(w), ddof=1)) / math.sqrt(w.size)
    low = min(interval.low, interval.best * math.exp(-CONSISTENCY_Z * se), float(w.min()))
    high = max(interval.high, interval.best * math.exp(CONSISTENCY_Z * se), float(w.max()))
    ok = low > 0 and math.isfinite(high) and high <= MAX_INTERVAL_RATIO * low
    return interval._replace(low=float(low), high=float(high), identifiable=bool(ok))
