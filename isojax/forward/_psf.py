"""The PSF as given to the operator: dense, or a sum of separable terms."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from isojax.forward._axial import Array


class FactoredPSF(NamedTuple):
    """A 2D PSF written as a sum of separable terms.

    ``psf[l, a] = sum_r lateral[r, l] * axial[r, a]``. A Gaussian additional axial PSF is
    one term (a delta laterally times a Gaussian axially); a measured PSF usually needs a
    few (:func:`factorize_psf`). It is a pytree, so it passes through ``jit``, ``grad``
    and ``vmap`` like an array, and the operator costs one matrix product per term.

    Attributes:
      lateral: ``(rank, n_lateral)`` lateral profiles of the terms.
      axial: ``(rank, n_axial)`` axial profiles of the terms.

    Either may be a JAX or a NumPy array (a checked PSF keeps NumPy factors on the host).
    """

    lateral: Array | np.ndarray
    axial: Array | np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """The ``(lateral, axial)`` shape of the dense PSF."""
        return (int(self.lateral.shape[-1]), int(self.axial.shape[-1]))

    @property
    def rank(self) -> int:
        """Number of separable terms."""
        return int(self.axial.shape[0])

    def dense(self) -> Array:
        """The PSF as a dense ``(lateral, axial)`` array."""
        return jnp.einsum("rl,ra->la", self.lateral, self.axial)


def factorize_psf(psf, *, rtol: float = 1e-4, max_rank: int | None = None) -> FactoredPSF:
    """Write a 2D PSF as a short sum of separable terms (truncated SVD).

    Keeps the fewest terms whose reconstruction error, in the Frobenius norm, is at most
    ``rtol`` times the PSF's norm (Eckart-Young: the truncated SVD is the best such
    approximation). With ``rtol=0`` the factorisation is exact. A Gaussian PSF has rank
    one; measured additional axial PSFs usually need two to four terms at ``rtol=1e-4``.

    This is a set-up step on a concrete PSF (NumPy, float64), not a traced operation: to
    learn a PSF, build the :class:`FactoredPSF` from parameters directly, or pass the
    dense array to :func:`degrade`.

    Args:
      psf: 2D array ``(lateral, axial)``.
      rtol: tolerated relative Frobenius error of the reconstruction, >= 0.
      max_rank: upper bound on the number of terms (default: no bound).

    Returns:
      A :class:`FactoredPSF` (JAX default float dtype) with ``factors.dense() ~= psf``.

    Raises:
      ValueError: if ``psf`` is traced, not 2D, not finite, or ``rtol`` is negative.

    Example:
      >>> import numpy as np
      >>> g = np.exp(-0.5 * (np.arange(-4, 5) / 1.5) ** 2)
      >>> factorize_psf(np.outer(g, g)).rank
      1
    """
    if isinstance(psf, jax.core.Tracer):
        raise ValueError(
            "factorize_psf needs a concrete PSF, not a traced one: call it outside jit/grad, "
            "or build a FactoredPSF from your parameters directly."
        )
    p = np.asarray(psf, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"factorize_psf needs a 2D (lateral, axial) PSF, got shape {p.shape}.")
    if not np.all(np.isfinite(p)):
        raise ValueError("the PSF holds NaN or inf values; check it with `isojax psf check`.")
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}.")
    u, s, vt = np.linalg.svd(p, full_matrices=False)
    total = float(np.sum(s**2))
    # residual[r] = Frobenius error when keeping r terms
    # (summed from the small end: total - cumsum cancels to sqrt(eps) of the norm)
    residual = np.sqrt(np.append(np.cumsum((s**2)[::-1])[::-1][1:], 0.0))
    keep = len(s)
    for r in range(1, len(s) + 1):
        if residual[r - 1] <= rtol * math.sqrt(total):
            keep = r
            break
    if max_rank is not None:
        keep = max(1, min(keep, int(max_rank)))
    root = np.sqrt(s[:keep])
    lateral = (u[:, :keep] * root).T
    axial = root[:, None] * vt[:keep]
    ftype = jnp.result_type(float)  # float32, or float64 under jax_enable_x64
    return FactoredPSF(jnp.asarray(lateral, ftype), jnp.asarray(axial, ftype))


def _as_psf(psf, dtype) -> tuple[Array | None, FactoredPSF | None]:
    if isinstance(psf, FactoredPSF):
        lat, ax = jnp.asarray(psf.lateral, dtype), jnp.asarray(psf.axial, dtype)
        if lat.ndim != 2 or ax.ndim != 2 or lat.shape[0] != ax.shape[0] or lat.shape[0] < 1:
            raise ValueError(
                "a FactoredPSF needs lateral (rank, n_lateral) and axial (rank, n_axial) "
                f"arrays with the same rank >= 1, got {lat.shape} and {ax.shape}."
            )
        return None, FactoredPSF(lat, ax)
    p = jnp.asarray(psf, dtype)
    if p.ndim != 2:
        hint = (
            " A 3D PSF must first be reduced to its additional axial part: "
            "`isojax psf axial` or isojax.psf.axial_psf."
            if p.ndim == 3
            else " A 1D axial profile v becomes a 2D PSF as v[None, :]."
        )
        raise ValueError(f"psf must be 2D (lateral, axial), got shape {p.shape}.{hint}")
    return p, None


# A concrete dense PSF of at most this numerical rank goes through the factored path
# (one banded product per term), cheaper than the lateral FFT of the dense path.
_AUTO_FACTOR_MAX_RANK = 2


def _auto_factor(psf, compute_dtype):
    """A concrete dense PSF of numerical rank <= 2 as a :class:`FactoredPSF`, else ``psf``.

    Outside ``jit`` the PSF's values are known, so a separable (or nearly separable) one
    can take the factored path by itself. The truncation tolerance is at the rounding
    level of the compute dtype (relative Frobenius error 1e-6 in float32, 1e-13 in
    float64), so the result equals the dense operator's to that precision. Traced PSFs,
    factored ones and anything that is not a finite 2D array are returned unchanged (the
    operator then reports a bad one).
    """
    if isinstance(psf, (FactoredPSF, jax.core.Tracer)):
        return psf
    try:
        p = np.asarray(psf, dtype=np.float64)
    except (TypeError, ValueError):
        return psf
    if p.ndim != 2 or p.shape[0] < 2 or not np.all(np.isfinite(p)):
        return psf
    rtol = 1e-13 if jnp.dtype(compute_dtype) == jnp.float64 else 1e-6
    factored = factorize_psf(p, rtol=rtol)
    return factored if factored.rank <= _AUTO_FACTOR_MAX_RANK else psf
