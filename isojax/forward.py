"""The forward operator: how the axial direction of a microscope degrades an image.

An XY slice of a stack is taken as isotropic ground truth. :func:`degrade` makes it look
the way the axial direction does:

1. **blur** with the additional axial PSF (2D, axes ``(lateral, axial)``, sampled at the
   lateral pixel size, summing to 1);
2. **subsample** the blurred slice along its axial axis by the anisotropy factor
   ``subsample`` (any float >= 1, e.g. 10.2): sample ``k`` sits at ``k * subsample`` pixels;
3. **bring it back** to the original grid (linear interpolation by default, cubic as an
   option).

:func:`measure` stops after step 2 and returns the low-resolution samples alone (what the
microscope records), :func:`upsample` is step 3 on its own, and :func:`add_noise` simulates
the detector between them. All are pure functions of arrays: they run under
:func:`jax.jit`, :func:`jax.vmap` and :func:`jax.grad`, in ``x`` and in the PSF.

How it is computed. Only the samples that survive subsampling are blurred: along the
axial axis, blur and sampling together are one banded ``(n_samples, n)`` matrix built
from the PSF's axial profile (the interpolation weights and the boundary rule are folded
into it), applied as a matrix product, which is what CPUs and accelerators do fastest.
Lateral taps are then summed on the low-resolution grid. A PSF given as a
:class:`FactoredPSF` (a sum of separable terms, e.g. a Gaussian, or a measured PSF passed
through :func:`factorize_psf`) costs one such product per term instead of one per
lateral row.

Differences from CSBDeep's ``anisotropic_distortions`` (``mode="physical"``, the default):

* sample ``k`` is taken at ``k * subsample`` (the physical grid of the axial planes, the
  first at 0); CSBDeep resamples with :func:`scipy.ndimage.zoom`, which pins the first and
  last samples to the ends of the axis and so spaces them ``(n - 1) / (m - 1)`` apart,
  not ``subsample``;
* a non-integer factor is honoured as given (the blurred slice is interpolated linearly
  between pixels at ``k * subsample``); CSBDeep rounds the factor's decimals and crops
  the axis until ``n / subsample`` is a whole number of samples;
* CSBDeep takes the nearest pixel (order-0 zoom) as the sample; isojax interpolates;
* the blur mirrors the image at its borders (``boundary="reflect"``); CSBDeep's
  ``fftconvolve(mode="same")`` pads with zeros, which darkens the borders;
* pixels past the last sample are held at its value when brought back; CSBDeep's grid
  ends on a sample by construction;
* noise is added to the measured samples (:func:`measure`, then :func:`add_noise`, then
  :func:`upsample`), where the detector adds it; CSBDeep adds it on the fine grid before
  subsampling, and clips Gaussian noise at zero.

``mode="csbdeep"`` reproduces CSBDeep's transform instead (see :func:`degrade`).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Boundary = Literal["reflect", "edge", "zero"]
Interpolation = Literal["linear", "cubic"]
Mode = Literal["physical", "csbdeep"]

__all__ = [
    "FactoredPSF",
    "add_noise",
    "degrade",
    "factorize_psf",
    "gaussian_noise",
    "measure",
    "poisson_noise",
    "sample_positions",
    "upsample",
]

_BOUNDARIES = ("reflect", "edge", "zero")
_INTERPOLATIONS = ("linear", "cubic")
_MODES = ("physical", "csbdeep")


class FactoredPSF(NamedTuple):
    """A 2D PSF written as a sum of separable terms.

    ``psf[l, a] = sum_r lateral[r, l] * axial[r, a]``. A Gaussian additional axial PSF is
    one term (a delta laterally times a Gaussian axially); a measured PSF usually needs a
    few (:func:`factorize_psf`). It is a pytree, so it passes through ``jit``, ``grad``
    and ``vmap`` like an array, and the operator costs one matrix product per term.

    Attributes:
      lateral: ``(rank, n_lateral)`` lateral profiles of the terms.
      axial: ``(rank, n_axial)`` axial profiles of the terms.
    """

    lateral: Array
    axial: Array

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
    residual = np.sqrt(np.maximum(total - np.cumsum(s**2), 0.0))
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


# ----------------------------------------------------------------------------------------
# Static geometry: sample positions, interpolation weights and boundary rules (NumPy,
# computed once per shape and factor, cached; the PSF enters only later, traced).


def _check_subsample(subsample) -> float:
    if isinstance(subsample, jax.core.Tracer):
        raise ValueError(
            "subsample must be a plain Python number (it sets array shapes), not a traced "
            "value; mark it static, e.g. jax.jit(f, static_argnames='subsample')."
        )
    s = float(subsample)
    if not math.isfinite(s) or s < 1.0:
        raise ValueError(
            f"subsample must be a finite number >= 1 (the ratio axial step / lateral pixel "
            f"size), got {subsample!r}."
        )
    return s


def _n_physical(n: int, s: float) -> int:
    # samples at 0, s, 2s, ... inside [0, n - 1]; the tolerance keeps 510 / 10.2 = 50 whole
    return math.floor((n - 1) / s + 1e-9) + 1


def _n_csbdeep(n: int, s: float) -> int:
    m = n / s
    if abs(m - round(m)) > 1e-6 or round(m) < 2:
        crop = math.floor(n / s) * s
        raise ValueError(
            f"mode='csbdeep' needs an axial length that is a whole multiple of subsample "
            f"(CSBDeep crops the axis otherwise): {n} px / {s} = {m:.4g}. Crop the axis to "
            f"a multiple, e.g. {crop:g} px if that is a whole number, or use mode='physical'."
        )
    return round(m)


def sample_positions(n: int, subsample: float, *, mode: Mode = "physical") -> np.ndarray:
    """Where the axial samples sit, in pixels of the original grid.

    Args:
      n: length of the axial axis in pixels.
      subsample: anisotropy factor (axial step / lateral pixel size), >= 1.
      mode: ``"physical"``: sample ``k`` at ``k * subsample`` for every such position in
        ``[0, n - 1]``; ``"csbdeep"``: ``round(n / subsample)`` samples with the first and
        last pinned to the ends of the axis and taken at the nearest pixel, as
        :func:`scipy.ndimage.zoom` (order 0) does inside CSBDeep.

    Returns:
      float64 array of positions, shape ``(n_samples,)``.

    Example:
      >>> sample_positions(10, 4.0)
      array([0., 4., 8.])
    """
    s = _check_subsample(subsample)
    _check_mode(mode)
    if mode == "physical":
        return np.arange(_n_physical(n, s)) * s
    m = _n_csbdeep(n, s)
    return np.floor(np.arange(m) * ((n - 1) / (m - 1)) + 0.5).clip(0, n - 1)


def _check_mode(mode):
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")


def _boundary_index(j: np.ndarray, n: int, boundary: str) -> tuple[np.ndarray, np.ndarray]:
    """Map (possibly out-of-range) indices into [0, n): returns (index, valid)."""
    if boundary == "zero":
        valid = (j >= 0) & (j < n)
        return np.where(valid, j, 0), valid
    if boundary == "edge" or n == 1:
        return np.clip(j, 0, n - 1), np.ones(j.shape, bool)
    period = 2 * (n - 1)  # whole-sample mirror: ... 2 1 | 0 1 2 ... n-1 | n-2 ...
    r = np.mod(j, period)
    return np.where(r < n, r, period - r), np.ones(j.shape, bool)


def _keys_cubic(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution weights (a = -0.5) for taps at offsets -1, 0, 1, 2.

    R. Keys, "Cubic convolution interpolation for digital image processing",
    IEEE Trans. ASSP 29(6):1153-1160 (1981), eq. (15).
    """
    a = -0.5
    d = np.stack([1 + t, t, 1 - t, 2 - t], axis=-1)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _interp_taps(pos: np.ndarray, n: int, interpolation: str):
    """Indices and weights that interpolate a length-n signal at ``pos >= 0``.

    Samples past either end repeat the end sample (indices are clamped).
    """
    f = np.floor(pos)
    t = pos - f
    f = f.astype(np.int64)
    if interpolation == "linear":
        idx = np.stack([f, f + 1], axis=-1)
        w = np.stack([1 - t, t], axis=-1)
    else:
        idx = f[:, None] + np.arange(-1, 3)
        w = _keys_cubic(t)
    return np.clip(idx, 0, n - 1), w


@functools.lru_cache(maxsize=256)
def _axial_geometry(n: int, s: float, n_taps: int, boundary: str, mode: str):
    """Static scatter pattern of the banded blur-and-sample matrix.

    Entry ``A[k, j]`` of the matrix is ``sum`` of ``weight * psf_axial[tap]`` over the
    returned triples with that ``(k, j)``: sample k interpolates the blurred signal at its
    position, and the blurred signal at pixel p is ``sum_m psf[m] * x[p + c - m]`` with
    ``c = (n_taps - 1) // 2`` (the centre convention of ``scipy.signal.fftconvolve``
    ``mode="same"``), the index mapped through the boundary rule.
    """
    pos = sample_positions(n, s, mode=mode)
    if mode == "csbdeep":
        p_idx = pos.astype(np.int64)[:, None]
        p_w = np.ones_like(p_idx, dtype=np.float64)
    else:
        p_idx, p_w = _interp_taps(pos, n, "linear")
    c = (n_taps - 1) // 2
    m = np.arange(n_taps)
    j = p_idx[:, :, None] + c - m  # (K, Q, taps)
    j, valid = _boundary_index(j, n, boundary)
    k = np.broadcast_to(np.arange(len(pos))[:, None, None], j.shape)
    w = p_w[:, :, None] * valid
    taps = np.broadcast_to(m, j.shape)
    return len(pos), k.ravel(), j.ravel(), taps.ravel(), w.ravel()


@functools.lru_cache(maxsize=256)
def _upsample_matrix(n_low: int, n: int, s: float, interpolation: str, mode: str) -> np.ndarray:
    """Static ``(n, n_low)`` matrix that brings samples back to the fine grid."""
    if mode == "csbdeep":
        # scipy.ndimage.zoom(order=1): output pixel j reads input coordinate j (m-1)/(n-1)
        pos = np.arange(n) * ((n_low - 1) / (n - 1))
    else:
        pos = np.arange(n) / s  # physical grid: sample k sits at pixel k * s
    idx, w = _interp_taps(pos, n_low, interpolation)
    u = np.zeros((n, n_low))
    np.add.at(u, (np.broadcast_to(np.arange(n)[:, None], idx.shape), idx), w)
    return u


def _band_matrices(axial: Array, n: int, s: float, boundary: str, mode: str) -> Array:
    """``(rank, n_samples, n)`` blur-and-sample matrices from axial profiles ``(rank, taps)``."""
    n_low, k, j, taps, w = _axial_geometry(n, s, int(axial.shape[-1]), boundary, mode)
    vals = axial[:, taps] * jnp.asarray(w, axial.dtype)
    a = jnp.zeros((axial.shape[0], n_low, n), axial.dtype)
    return a.at[:, k, j].add(vals)


# ----------------------------------------------------------------------------------------
# The operator


def _compute_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def _output_dtype(dtype):
    # float inputs keep their dtype (bfloat16 in, bfloat16 out); integer data becomes float32
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32


def _normalise_axes(ndim: int, axes) -> tuple[int, int]:
    if ndim < 2:
        raise ValueError(
            f"x must have at least 2 axes (lateral, axial), got {ndim}; a single line has no "
            "lateral axis, add one with x[None]."
        )
    try:
        lat, ax = (int(a) % ndim for a in axes)
    except (TypeError, ValueError):
        raise ValueError(f"axes must be two axis indices (lateral, axial), got {axes!r}.") from None
    if lat == ax:
        raise ValueError(f"the lateral and axial axes must differ, got {axes!r}.")
    return lat, ax


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


def _lateral_pad(y: Array, axis: int, before: int, after: int, boundary: str) -> Array:
    widths = [(0, 0)] * y.ndim
    widths[axis] = (before, after)
    mode = {"reflect": "reflect", "edge": "edge", "zero": "constant"}[boundary]
    if mode == "reflect" and y.shape[axis] == 1:
        mode = "edge"
    return jnp.pad(y, widths, mode=mode)


def _apply_axial(x: Array, a: Array, ax: int, precision) -> Array:
    """Contract axis ``ax`` of x (length n) with the ``(n_low, n)`` matrix a."""
    y = jnp.tensordot(x, a, axes=((ax,), (1,)), precision=precision)  # axial moved last
    return jnp.moveaxis(y, -1, ax) if ax != x.ndim - 1 else y


@functools.lru_cache(maxsize=256)
def _block_plan(n: int, s: float, n_taps: int, mode: str):
    """Static plan for the blocked blur-and-sample product, or None for the full matrix.

    With ``s = P / Q``, ``Bs = j P`` fine pixels hold exactly ``B = j Q`` samples, and
    every block of samples reads only its own chunk of ``Bs`` pixels and the next one
    (once ``Bs > n_taps``), through the same ``(2 Bs, B)`` matrix. Splitting the
    axis into chunks turns one ``(n, n_samples)`` product into ``n / Bs`` products of
    ``(Bs, 2 B)``: about ``n / (2 Bs)`` times fewer multiplications.
    """
    ratio = _rational(s) if mode == "physical" else None
    if ratio is None:
        return None
    p, q = ratio
    j = max(-(-(n_taps + 1) // p), -(-64 // p))
    bs, b = j * p, j * q
    n_low = _n_physical(n, s)
    n_blocks = -(-n_low // b)
    padded = (n_blocks + 1) * bs
    if n <= 2 * bs + n_taps or padded > 2 * n:
        return None  # small axis: the full matrix is cheap and simpler
    kk = np.arange(b)
    f, rem = np.divmod(kk * p, q)  # floor and remainder of kk * s, exactly
    t = rem / q
    p_idx = np.stack([f, f + 1], axis=-1)
    p_w = np.stack([1 - t, t], axis=-1)
    m = np.arange(n_taps)
    # padded pixel of x read by tap m of the blur at p: p + n_taps - 1 - m (see _axial_geometry)
    w_idx = p_idx[:, :, None] + n_taps - 1 - m
    k_idx = np.broadcast_to(kk[:, None, None], w_idx.shape)
    taps = np.broadcast_to(m, w_idx.shape)
    w = np.broadcast_to(p_w[:, :, None], w_idx.shape)
    left = n_taps - 1 - (n_taps - 1) // 2
    return {
        "bs": bs,
        "b": b,
        "n_blocks": n_blocks,
        "n_low": n_low,
        "left": left,
        "right": padded - n - left,
        "w_idx": w_idx.ravel(),
        "k_idx": k_idx.ravel(),
        "taps": taps.ravel(),
        "w": w.ravel(),
    }


def _axial_stage(x: Array, ax: int, s: float, n_taps: int, boundary: str, mode: str, precision):
    """Return ``apply(v)``: blur axis ``ax`` of x with the profile v and keep the samples.

    Everything that does not depend on v (padding, reshaping) is done once, so that the
    rows or terms of a PSF share it.
    """
    n = x.shape[ax]
    plan = _block_plan(n, s, n_taps, mode)
    if plan is None:
        return lambda v: _apply_axial(
            x, _band_matrices(v[None], n, s, boundary, mode)[0], ax, precision
        )
    bs, b, nb = plan["bs"], plan["b"], plan["n_blocks"]
    xp = _lateral_pad(x, ax, plan["left"], plan["right"], boundary)
    chunks = xp.reshape((*x.shape[:ax], nb + 1, bs, *x.shape[ax + 1 :]))
    w_idx, k_idx, taps = plan["w_idx"], plan["k_idx"], plan["taps"]
    w = plan["w"]

    def apply(v):
        win = (
            jnp.zeros((2 * bs, b), v.dtype).at[w_idx, k_idx].add(v[taps] * jnp.asarray(w, v.dtype))
        )
        mat = jnp.concatenate([win[:bs], win[bs:]], axis=1)  # (bs, 2b): this chunk | next
        z = jnp.tensordot(chunks, mat, axes=((ax + 1,), (0,)), precision=precision)
        # z: (..., nb + 1, rest..., 2b); block i = its own chunk's part + the next chunk's
        own = lax.slice_in_dim(lax.slice_in_dim(z, 0, nb, axis=ax), 0, b, axis=-1)
        nxt = lax.slice_in_dim(lax.slice_in_dim(z, 1, nb + 1, axis=ax), b, 2 * b, axis=-1)
        y = jnp.moveaxis(own + nxt, -1, ax + 1)
        y = y.reshape((*x.shape[:ax], nb * b, *x.shape[ax + 1 :]))
        return lax.slice_in_dim(y, 0, plan["n_low"], axis=ax)

    return apply


def _measure(x, psf, s, *, boundary, axes, mode, precision):
    lat, ax = _normalise_axes(x.ndim, axes)
    dtype = _compute_dtype(x.dtype)
    dense, factored = _as_psf(psf, dtype)
    x = x.astype(dtype)
    n = x.shape[ax]
    if n < 2:
        raise ValueError(f"the axial axis must have at least 2 pixels, got {n}.")
    if mode == "csbdeep":
        boundary = "zero"  # fftconvolve(mode="same")
    n_lat = x.shape[lat]
    profiles = dense if dense is not None else factored.axial
    axial = _axial_stage(x, ax, s, int(profiles.shape[-1]), boundary, mode, precision)

    if dense is not None:
        # One blurred-and-sampled image per lateral row of the PSF, each shifted laterally:
        # y[i] = sum_l axial(psf[l])[i + c - l], accumulated in a scan to bound memory.
        n_l = dense.shape[0]
        c = (n_l - 1) // 2

        def term(acc, row_and_l):
            row, l_idx = row_and_l
            t = _lateral_pad(axial(row), lat, n_l - 1 - c, c, boundary)
            return acc + lax.dynamic_slice_in_dim(t, n_l - 1 - l_idx, n_lat, axis=lat), None

        shape = list(x.shape)
        shape[ax] = len(sample_positions(n, s, mode=mode))
        y, _ = lax.scan(term, jnp.zeros(shape, dtype), (dense, jnp.arange(n_l)))
        return y

    # Factored: per term, one axial product, then a lateral filter on the samples. The
    # lateral filter is the same blocked product with a factor of 1 (a blur that keeps every
    # pixel): its gradient is then matrix products too, where shifted sums would cost one
    # full-size array per tap.
    lat_f, _ = factored
    n_l = lat_f.shape[1]
    y = None
    for r in range(factored.rank):
        t = axial(factored.axial[r])
        if n_l > 1:
            t = _axial_stage(t, lat, 1.0, n_l, boundary, "physical", precision)(lat_f[r])
        else:
            t = lat_f[r, 0] * t
        y = t if y is None else y + t
    return y


def _rational(s: float, max_num: int = 512) -> tuple[int, int] | None:
    """(P, Q) with s == P / Q to float precision and P <= max_num, or None."""
    f = Fraction(s).limit_denominator(max_num)
    if f.numerator <= max_num and abs(f.numerator / f.denominator - s) <= 1e-12 * s:
        return f.numerator, f.denominator
    return None


def _upsample(y, n, s, *, interpolation, axis, mode, precision):
    axis = axis % y.ndim
    n_low = int(y.shape[axis])
    ratio = _rational(s) if mode == "physical" else None
    if ratio is None:
        # General factor: one static (n, n_low) interpolation matrix, one matrix product.
        u = jnp.asarray(_upsample_matrix(n_low, n, s, interpolation, mode), y.dtype)
        return _apply_axial(y, u, axis, precision)
    # s = P / Q: fine pixel b P + r sits at sample coordinate b Q + r Q / P, so each of the
    # P phases r is a strided slice of the samples; interleaving them is one fused loop.
    p, q = ratio
    n_blocks = -(-n // p)
    left = 1 if interpolation == "cubic" else 0
    widths = [(0, 0)] * y.ndim
    widths[axis] = (left, n_blocks * q + 3 - n_low)
    yp = jnp.pad(y, widths, mode="edge")  # samples past the last one repeat it
    # Phases share their strided slices (at most q + 3 distinct ones): slicing each once
    # keeps the transpose (used by gradients) to one strided pad per slice, not per phase.
    slices: dict[int, Array] = {}

    def strided(i):
        if i not in slices:
            slices[i] = lax.slice_in_dim(yp, i + left, i + left + (n_blocks - 1) * q + 1, q, axis)
        return slices[i]

    phases = []
    for r in range(p):
        f, t = divmod(r * q, p)
        if interpolation == "linear":
            taps = zip((f, f + 1), (1.0 - t / p, t / p), strict=True)
        else:
            taps = zip(range(f - 1, f + 3), _keys_cubic(np.array(t / p)), strict=True)
        acc = None
        for i, wi in taps:
            if wi == 0.0:
                continue
            t = strided(i) * jnp.asarray(wi, y.dtype)
            acc = t if acc is None else acc + t
        phases.append(acc)
    out = jnp.stack(phases, axis=axis + 1)
    shape = list(y.shape)
    shape[axis] = n_blocks * p
    return lax.slice_in_dim(out.reshape(shape), 0, n, axis=axis)


def _check_common(boundary, interpolation, mode):
    if boundary not in _BOUNDARIES:
        raise ValueError(f"boundary must be one of {_BOUNDARIES}, got {boundary!r}.")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}.")
    _check_mode(mode)
    if mode == "csbdeep" and interpolation != "linear":
        raise ValueError(
            "mode='csbdeep' upsamples linearly (zoom order 1); use interpolation='linear'."
        )


# On a CPU, fresh memory costs more than arithmetic here: every large intermediate buffer
# is page-faulted in on each call. Processing a big batch a few images at a time (a
# sequential lax.map inside the same compiled program) keeps the intermediates small and
# reused, about twice as fast for a 64x512x512 volume. Accelerators get the whole batch.
_CPU_CHUNK_ELEMENTS = 1 << 21


def _in_chunks(fn, x, axes):
    """``fn(x)``, computed over chunks of the leading batch axes on CPU."""
    lat, ax = _normalise_axes(x.ndim, axes)
    if x.ndim < 3 or {lat, ax} != {x.ndim - 2, x.ndim - 1} or jax.default_backend() != "cpu":
        return fn(x)
    batch = math.prod(x.shape[:-2])
    per_image = x.shape[-2] * x.shape[-1]
    size = max(1, min(batch, _CPU_CHUNK_ELEMENTS // per_image))
    while batch % size:  # largest divisor of the batch that fits
        size -= 1
    if size == batch:
        return fn(x)
    xs = x.reshape(batch // size, size, *x.shape[-2:])
    out = lax.map(fn, xs)
    return out.reshape(*x.shape[:-2], *out.shape[-2:])


_STATIC = ("subsample", "boundary", "axes", "mode", "precision")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _measure_jit(x, psf, subsample, *, boundary, axes, mode, precision):
    def one(xc):
        y = _measure(
            xc, psf, subsample, boundary=boundary, axes=axes, mode=mode, precision=precision
        )
        return y.astype(_output_dtype(x.dtype))

    return _in_chunks(one, x, axes)


def measure(
    x: Array,
    psf,
    subsample: float,
    *,
    boundary: Boundary = "reflect",
    axes: tuple[int, int] = (-2, -1),
    mode: Mode = "physical",
    precision=lax.Precision.HIGHEST,
) -> Array:
    """Blur with the axial PSF and keep the axial samples: what the microscope records.

    Args:
      x: image(s), shape ``(..., lateral, axial)`` (see ``axes``), any float dtype;
        leading axes are batch.
      psf: additional axial PSF, a 2D array ``(lateral, axial)`` sampled at the lateral
        pixel size and summing to 1, or a :class:`FactoredPSF`. It is used as given (not
        renormalised) so that gradients in it are honest; check it with
        :func:`isojax.psf.check_psf`.
      subsample: anisotropy factor (axial step / lateral pixel size), a Python float
        >= 1, e.g. 10.2. Static: each value compiles once.
      boundary: how the blur sees past the image's edges: ``"reflect"`` (mirror about
        the edge pixel), ``"edge"`` (repeat it) or ``"zero"``.
      axes: the ``(lateral, axial)`` axes of ``x``; ``(-1, -2)`` degrades along the
        second-to-last axis without transposing the data.
      mode: ``"physical"`` (sample k at ``k * subsample``) or ``"csbdeep"`` (see
        :func:`degrade`).
      precision: matrix-product precision (default highest, so float32 stays float32 on
        accelerators).

    Returns:
      Samples, x's shape with the axial axis replaced by ``len(sample_positions(n,
      subsample, mode=mode))``, x's dtype (float32 for integer input). Computed in at
      least float32 whatever the input dtype.
    """
    s = _check_subsample(subsample)
    _check_common(boundary, "linear", mode)
    x = jnp.asarray(x)
    _normalise_axes(x.ndim, axes)
    return _measure_jit(x, psf, s, boundary=boundary, axes=axes, mode=mode, precision=precision)


@functools.partial(
    jax.jit, static_argnames=("n", "subsample", "interpolation", "axis", "mode", "precision")
)
def _upsample_jit(y, n, subsample, *, interpolation, axis, mode, precision):
    out = _upsample(
        y.astype(_compute_dtype(y.dtype)),
        n,
        subsample,
        interpolation=interpolation,
        axis=axis,
        mode=mode,
        precision=precision,
    )
    return out.astype(_output_dtype(y.dtype))


def upsample(
    y: Array,
    n: int,
    subsample: float,
    *,
    interpolation: Interpolation = "linear",
    axis: int = -1,
    mode: Mode = "physical",
    precision=lax.Precision.HIGHEST,
) -> Array:
    """Bring axial samples back to the fine grid of ``n`` pixels.

    In ``mode="physical"`` sample k sits at pixel ``k * subsample``; pixels past the last
    sample take its value. Cubic interpolation uses Keys' kernel (a = -0.5), which
    reproduces quadratics and may overshoot at steps.

    Args:
      y: samples, the axis ``axis`` holding them (e.g. the output of :func:`measure`).
      n: length of the fine axis in pixels.
      subsample: the factor that produced the samples.
      interpolation: ``"linear"`` or ``"cubic"``.
      axis: the sampled axis of ``y``.
      mode: ``"physical"`` or ``"csbdeep"`` (first and last sample pinned to the ends).
      precision: matrix-product precision.

    Returns:
      Array of y's shape with ``axis`` of length ``n``, y's dtype (float32 for integers).
    """
    s = _check_subsample(subsample)
    _check_common("reflect", interpolation, mode)
    y = jnp.asarray(y)
    if not -y.ndim <= axis < y.ndim:
        raise ValueError(f"axis {axis} is out of range for an array of {y.ndim} dimensions.")
    if int(n) < 1:
        raise ValueError(f"n must be a positive number of pixels, got {n}.")
    return _upsample_jit(
        y,
        int(n),
        s,
        interpolation=interpolation,
        axis=axis % y.ndim,
        mode=mode,
        precision=precision,
    )


@functools.partial(jax.jit, static_argnames=(*_STATIC, "interpolation"))
def _degrade_jit(x, psf, subsample, *, interpolation, boundary, axes, mode, precision):
    _, ax = _normalise_axes(x.ndim, axes)

    def one(xc):
        y = _measure(
            xc, psf, subsample, boundary=boundary, axes=axes, mode=mode, precision=precision
        )
        out = _upsample(
            y,
            x.shape[ax],
            subsample,
            interpolation=interpolation,
            axis=ax,
            mode=mode,
            precision=precision,
        )
        return out.astype(_output_dtype(x.dtype))

    return _in_chunks(one, x, axes)


def degrade(
    x: Array,
    psf,
    subsample: float,
    *,
    interpolation: Interpolation = "linear",
    boundary: Boundary = "reflect",
    axes: tuple[int, int] = (-2, -1),
    mode: Mode = "physical",
    precision=lax.Precision.HIGHEST,
) -> Array:
    """Degrade images the way the axial direction is degraded: blur, subsample, bring back.

    The order is fixed and physical: blur with ``psf`` first, then subsample along the
    axial axis, then interpolate back to the original grid.

    Args:
      x: image(s), shape ``(..., lateral, axial)``: the last axis is the one whose axial
        degradation is simulated, leading axes are batch (see ``axes`` for others).
      psf: additional axial PSF, 2D ``(lateral, axial)``, last axis axial, sampled at the
        lateral pixel size, summing to 1; or a :class:`FactoredPSF`.
      subsample: anisotropy factor, a Python float >= 1 (e.g. 10.2).
      interpolation: how samples are brought back: ``"linear"`` (default) or
        ``"cubic"`` (Keys).
      boundary: ``"reflect"`` (default), ``"edge"`` or ``"zero"``; see :func:`measure`.
      axes: the ``(lateral, axial)`` axes of ``x``.
      mode: ``"physical"`` (default; sample k at ``k * subsample``) or ``"csbdeep"``,
        which reproduces ``csbdeep.data.anisotropic_distortions`` (no noise, PSF axes
        as ``x``, ``subsample_axis`` the axial axis): zero-padded "same" blur, nearest
        pixel at ``round(k (n - 1) / (m - 1))`` for ``m = n / subsample`` samples, linear
        zoom back. It needs ``n / subsample`` to be whole (sizes CSBDeep does not crop).
        It does not reproduce a float quirk of :func:`scipy.ndimage.zoom` that, at some
        sizes (e.g. 256 px at factor 8, 510 px at 10.2), makes CSBDeep read its last
        low-resolution sample as 0.
      precision: matrix-product precision.

    Returns:
      Array of x's shape and dtype (float32 for integer input); computed in at least
      float32, so bfloat16 input loses nothing inside the operator.

    Raises:
      ValueError: bad shapes, a PSF that is not 2D, ``subsample < 1`` or traced, or
        unknown options; each message says what to change.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((8, 32))
      >>> psf = jnp.array([[0.25, 0.5, 0.25]])
      >>> degrade(x, psf, 4.0).shape
      (8, 32)
    """
    s = _check_subsample(subsample)
    _check_common(boundary, interpolation, mode)
    x = jnp.asarray(x)
    _normalise_axes(x.ndim, axes)
    return _degrade_jit(
        x,
        psf,
        s,
        interpolation=interpolation,
        boundary=boundary,
        axes=axes,
        mode=mode,
        precision=precision,
    )


# ----------------------------------------------------------------------------------------
# Noise


@jax.custom_jvp
def _poisson_counts(key, lam):
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(key))
        if "threefry" not in impl:
            # jax.random.poisson is implemented for threefry keys only: derive one
            bits = jax.random.bits(key, (2,), jnp.uint32)
            key = jax.random.wrap_key_data(bits, impl="threefry2x32")
    return jax.random.poisson(key, lam).astype(lam.dtype)


@_poisson_counts.defjvp
def _poisson_counts_jvp(primals, tangents):
    # Straight-through: the derivative of the expected count, E[N] = lam.
    key, lam = primals
    _, dlam = tangents
    return _poisson_counts(key, lam), dlam


def poisson_noise(key: Array, x: Array, *, photons: float | Array) -> Array:
    """Shot noise: ``Poisson(photons * x) / photons``, same units and mean as ``x``.

    Args:
      key: a ``jax.random`` key.
      x: non-negative expected intensities (negative values count as 0).
      photons: detected photons per unit of ``x`` (larger is less noisy); may be an
        array broadcastable to ``x``, e.g. one value per image.

    Returns:
      Noisy array of x's shape and dtype. Its derivative in ``x`` is the identity (the
      derivative of the mean), so it can sit inside a differentiated pipeline.
    """
    x = jnp.asarray(x)
    scale = jnp.asarray(photons, jnp.float32)
    lam = jnp.maximum(x.astype(jnp.float32), 0.0) * scale
    return (_poisson_counts(key, lam) / scale).astype(x.dtype)


def gaussian_noise(key: Array, x: Array, *, sigma: float | Array) -> Array:
    """Additive white Gaussian noise of standard deviation ``sigma`` (units of ``x``)."""
    x = jnp.asarray(x)
    noise = jax.random.normal(key, x.shape, jnp.float32) * jnp.asarray(sigma, jnp.float32)
    return (x.astype(jnp.float32) + noise).astype(x.dtype)


def add_noise(
    key: Array,
    x: Array,
    *,
    photons: float | Array | None = None,
    sigma: float | Array = 0.0,
) -> Array:
    """Detector noise: Poisson shot noise (if ``photons`` is given), then Gaussian read noise.

    Unlike CSBDeep, Gaussian noise is not clipped at zero (clipping would bias the mean).
    Apply it to measured samples: ``upsample(add_noise(key, measure(x, psf, s)), n, s)``.

    Args:
      key: a ``jax.random`` key (split internally).
      x: intensities.
      photons: photons per unit intensity for shot noise, or None for none.
      sigma: standard deviation of the read noise in units of ``x`` (0 for none).

    Returns:
      Noisy array of x's shape and dtype.
    """
    k_shot, k_read = jax.random.split(key)
    if photons is not None:
        x = poisson_noise(k_shot, x, photons=photons)
    return gaussian_noise(k_read, x, sigma=sigma)
