"""Static sampling geometry and the axial blur-and-sample stage (banded matrices).

Everything here that does not take the PSF is NumPy, computed once per shape and factor and
cached; the PSF enters :func:`_band_matrices` and :func:`_axial_stage` traced.
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

_BOUNDARIES = ("reflect", "edge", "zero")
_INTERPOLATIONS = ("linear", "cubic")
_MODES = ("physical", "csbdeep")

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
def _axial_geometry(n: int, s: float, n_taps: int, boundary: str, mode: Mode):
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
    i32 = np.int32  # the same program under and outside jax_enable_x64
    return (
        len(pos),
        k.ravel().astype(i32),
        j.ravel().astype(i32),
        taps.ravel().astype(i32),
        w.ravel(),
    )


@functools.lru_cache(maxsize=256)
def _upsample_matrix(n_low: int, n: int, s: float, interpolation: str, mode: Mode) -> np.ndarray:
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


def _band_matrices(axial: Array, n: int, s: float, boundary: str, mode: Mode) -> Array:
    """``(rank, n_samples, n)`` blur-and-sample matrices from axial profiles ``(rank, taps)``."""
    n_low, k, j, taps, w = _axial_geometry(n, s, int(axial.shape[-1]), boundary, mode)
    vals = axial[:, taps] * jnp.asarray(w, axial.dtype)
    a = jnp.zeros((axial.shape[0], n_low, n), axial.dtype)
    return a.at[:, k, j].add(vals)


def _rational(s: float, max_num: int = 512) -> tuple[int, int] | None:
    """(P, Q) with s == P / Q to float precision and P <= max_num, or None."""
    f = Fraction(s).limit_denominator(max_num)
    if f.numerator <= max_num and abs(f.numerator / f.denominator - s) <= 1e-12 * s:
        return f.numerator, f.denominator
    return None


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
def _block_plan(n: int, s: float, n_taps: int, mode: Mode):
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
        # int32 indices: the same program under and outside jax_enable_x64
        "w_idx": w_idx.ravel().astype(np.int32),
        "k_idx": k_idx.ravel().astype(np.int32),
        "taps": taps.ravel().astype(np.int32),
        "w": w.ravel(),
    }


def _axial_stage(x: Array, ax: int, s: float, n_taps: int, boundary: str, mode: Mode, precision):
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


# ----------------------------------------------------------------------------------------
# The same blur-and-sample stage as strided slices, for an axis that is not the last one.
# Along a non-contiguous axis a matrix product needs a transpose of the data first; shifted,
# strided slices of the padded image summed in one fused loop do not, and they cost
# n_taps + 1 multiply-adds per sample (the banded blocked product: 2 Bs).

# Above this many (phase, tap) slices the fused loop gets long to compile; such factors
# (e.g. 10.23 = 1023 / 100) keep the matrix product.
_MAX_SLICES = 256


class _SlicePlan(NamedTuple):
    """Static geometry of the strided-slice stage for one length, factor and tap count."""

    p: int  # subsample = p / q
    q: int
    n_low: int  # samples kept
    nb: int  # blocks of q samples computed (the last may hold extra ones, cropped)
    pad: tuple[int, int, int]  # padding: before and after (boundary rule), then zeros
    t: tuple[float, ...]  # interpolation fraction of each phase
    starts: tuple[tuple[int, ...], ...]  # per phase: first padded index of each tap 0..n_taps
    taps: tuple[tuple[int, ...], ...]  # per phase: the taps with a nonzero weight


@functools.lru_cache(maxsize=256)
def _slice_plan(n: int, s: float, n_taps: int, mode: Mode) -> _SlicePlan | None:
    """The strided-slice plan for an axis of ``n`` pixels and ``n_taps`` taps, or None.

    Sample ``k = q b + j`` interpolates the blurred signal between pixels ``f = p b + o_j``
    and ``f + 1`` with fraction ``t_j``; the blurred signal at ``f`` reads
    ``x[f + c - m]``, so tap ``m'`` (0..n_taps, weight ``(1 - t) v[m' - 1] + t v[m']``)
    reads ``x[f + 1 + c - m']``: one strided slice of the padded axis per (phase, tap).
    None for CSBDeep's grid, factors that are not a small fraction ``P / Q``, and axes
    too short to be mirrored by the profile's half-width (the matrix product serves them).
    """
    ratio = _rational(s) if mode == "physical" else None
    if ratio is None:
        return None
    p, q = ratio
    if q * (n_taps + 1) > _MAX_SLICES:
        return None
    c = (n_taps - 1) // 2
    left = n_taps - 1 - c
    if max(left, c + 1) > n - 1:
        return None
    n_low = _n_physical(n, s)
    nb = -(-n_low // q)
    offsets = [(j * p) // q for j in range(q)]
    starts = tuple(tuple(o + 1 + c + left - m for m in range(n_taps + 1)) for o in offsets)
    t = tuple(((j * p) % q) / q for j in range(q))
    taps = tuple(tuple(m for m in range(n_taps + 1) if not (tj == 0.0 and m == 0)) for tj in t)
    length = p * (nb - 1) + max(starts[-1]) + 1  # padded length the slices read
    edge = c + 1
    zeros = max(0, length - left - n - edge)
    return _SlicePlan(p, q, n_low, nb, (left, edge, zeros), t, starts, taps)


def _slice_weights(pl: _SlicePlan, v: Array) -> Array:
    """``(q, n_taps + 1)`` weights: the profile ``v`` with the interpolation folded in."""
    vp = jnp.pad(v, (1, 1))  # vp[m'] = v[m' - 1]
    t = jnp.asarray(np.array(pl.t), v.dtype)[:, None]
    return (1 - t) * vp[None, :-1] + t * vp[None, 1:]


def _strided_taps(pl: _SlicePlan, xp: Array, weight, axis: int) -> Array:
    """``sum_m weight(j, m) * xp[p b + start[j][m]]`` for every phase j, interleaved."""
    stop = pl.p * (pl.nb - 1) + 1
    phases: list[Array] = []
    for j in range(pl.q):
        terms = [
            lax.slice_in_dim(xp, pl.starts[j][m], pl.starts[j][m] + stop, pl.p, axis=axis)
            * weight(j, m)
            for m in pl.taps[j]  # every phase has at least its centre tap
        ]
        acc = terms[0]
        for term in terms[1:]:
            acc = acc + term
        phases.append(acc)
    if pl.q == 1:
        return phases[0]
    y = jnp.stack(phases, axis=axis + 1)  # (..., nb, q, ...)
    shape = list(phases[0].shape)
    shape[axis] = pl.nb * pl.q
    return y.reshape(shape)


def _slice_stage(x: Array, ax: int, pl: _SlicePlan, boundary: str):
    """Return ``apply(v)``: :func:`_axial_stage` for ``pl``, as strided slices of x."""
    xp = _lateral_pad(x, ax, pl.pad[0], pl.pad[1], boundary)
    if pl.pad[2]:
        xp = _lateral_pad(xp, ax, 0, pl.pad[2], "zero")

    def apply(v):
        w = _slice_weights(pl, v)
        y = _strided_taps(pl, xp, lambda j, m: w[j, m], ax)
        return lax.slice_in_dim(y, 0, pl.n_low, axis=ax)

    return apply


def _stage(x: Array, ax: int, s: float, n_taps: int, boundary: str, mode: Mode, precision):
    """Return ``apply(v)``, the cheaper of the two blur-and-sample stages for axis ``ax``.

    The last (contiguous) axis takes the blocked matrix product of :func:`_axial_stage`;
    any other axis takes strided slices (:func:`_slice_stage`) where a plan exists, so
    that neither needs a transpose of the data.
    """
    ax = ax % x.ndim
    pl = _slice_plan(x.shape[ax], s, n_taps, mode) if ax != x.ndim - 1 else None
    if pl is None:
        return _axial_stage(x, ax, s, n_taps, boundary, mode, precision)
    return _slice_stage(x, ax, pl, boundary)
