"""The operator: :func:`measure`, :func:`upsample` and :func:`degrade`."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from isojax.forward import _fourier
from isojax.forward._axial import (
    _BOUNDARIES,
    _INTERPOLATIONS,
    Array,
    Boundary,
    Interpolation,
    Mode,
    _apply_axial,
    _axial_stage,
    _check_mode,
    _check_subsample,
    _keys_cubic,
    _lateral_pad,
    _rational,
    _stage,
    _upsample_matrix,
    sample_positions,
)
from isojax.forward._psf import _as_psf, _auto_factor

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
    opts = (s, lat, ax, boundary, mode, precision)
    if dense is None:
        return _factored(x, factored.lateral, factored.axial, *opts)
    if dense.shape[0] < 2:
        return _dense_exact(x, dense, *opts)
    return _dense(x, dense, *opts)


def _factored(x, lat_f, ax_f, s, lat, ax, boundary, mode, precision):
    """Samples of x blurred by ``sum_r outer(lat_f[r], ax_f[r])``: two stages per term.

    Per term, one axial blur-and-sample stage, then a lateral filter on the samples (the
    same stage with a factor of 1). Each stage is a blocked matrix product along the last
    axis and strided slices along any other (:func:`_stage`), so no data is transposed;
    both are matrix products or fused loops in the gradient too, where shifted sums of
    full-size arrays would cost one array per tap.
    """
    n_l = lat_f.shape[1]
    axial = _stage(x, ax, s, int(ax_f.shape[-1]), boundary, mode, precision)
    y = None
    for r in range(ax_f.shape[0]):
        t = axial(ax_f[r])
        if n_l > 1:
            t = _stage(t, lat, 1.0, n_l, boundary, "physical", precision)(lat_f[r])
        else:
            t = lat_f[r, 0] * t
        y = t if y is None else y + t
    return y


def _dense_exact(x, dense, s, lat, ax, boundary, mode, precision):
    """Samples of x blurred by the dense PSF, exact for any rank (Fourier or row path)."""
    n, n_lat = x.shape[ax], x.shape[lat]
    fourier = _fourier.plan(n, n_lat, s, dense.shape[0], dense.shape[1], mode)
    if fourier is not None:
        # A dense PSF of three or more rows: lateral FFT (see _fourier), where possible.
        return _fourier.measure(
            x, dense, fourier, lat=lat, ax=ax, boundary=boundary, precision=precision
        )
    axial = _axial_stage(x, ax, s, int(dense.shape[-1]), boundary, mode, precision)
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
    y, _ = lax.scan(term, jnp.zeros(shape, x.dtype), (dense, jnp.arange(n_l)))
    return y


# A dense PSF whose relative Frobenius distance to its best rank-r approximation is at most
# this (per compute dtype) takes the factored path of rank r under jit too.
_TRACED_RTOL = {"float32": 1e-6, "float64": 1e-13}
_TRACED_MAX_RANK = 2


def _low_rank_split(dense):
    """Index of the branch (rank 1, 2, ..., exact) and the SVD factors, traceable."""
    u, sv, vt = jnp.linalg.svd(dense, full_matrices=False)
    total = jnp.sum(sv**2)
    rtol = _TRACED_RTOL.get(jnp.dtype(dense.dtype).name, 1e-6)
    # error keeping r + 1 terms: summed from the small end (total - cumsum cancels)
    tail = jnp.sqrt(jnp.concatenate([jnp.cumsum((sv**2)[::-1])[::-1][1:], jnp.zeros(1, sv.dtype)]))
    ok = tail[:_TRACED_MAX_RANK] <= rtol * jnp.sqrt(total)
    # first rank that is good enough, else the exact path (index _TRACED_MAX_RANK)
    index = jnp.argmax(jnp.concatenate([ok, jnp.ones((1,), bool)]))
    root = jnp.sqrt(sv)
    return index, u * root, root[:, None] * vt


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _dense(x, dense, s, lat, ax, boundary, mode, precision):
    """The dense PSF's samples, through the factored path when its rank is low.

    Under ``jit`` the PSF's rank cannot be inspected in Python, so it is inspected in the
    program: a 17x17 SVD, then :func:`jax.lax.switch` runs one branch (rank 1, rank 2 or
    the exact dense path) on CPU and GPU. The result is the dense operator's to a relative
    Frobenius error of the PSF of ``_TRACED_RTOL``. The derivative is defined by hand
    (the operator is bilinear in x and the PSF): the tangent in x goes through the same
    switch, the tangent in the PSF through the exact dense path, which is linear in it;
    so no SVD factor of a rank-deficient PSF is ever differentiated, and forward mode,
    reverse mode (by transposition) and vmap all work.
    """
    opts = (s, lat, ax, boundary, mode, precision)
    index, lat_f, ax_f = _low_rank_split(dense)
    branches = [
        functools.partial(_factored_rank, r=r + 1, opts=opts) for r in range(_TRACED_MAX_RANK)
    ]
    branches.append(lambda x, _lf, _af, d: _dense_exact(x, d, *opts))
    return lax.switch(index, branches, x, lat_f, ax_f, dense)


def _factored_rank(x, lat_f, ax_f, _dense_psf, *, r, opts):
    return _factored(x, lat_f.T[:r], ax_f[:r], *opts)


def _dense_jvp(s, lat, ax, boundary, mode, precision, primals, tangents):
    x, dense = primals
    dx, ddense = tangents
    opts = (s, lat, ax, boundary, mode, precision)
    y = _dense(x, dense, *opts)
    dy = None
    if not isinstance(dx, SymbolicZero):
        dy = _dense(dx, dense, *opts)
    if not isinstance(ddense, SymbolicZero):
        t = _dense_exact(x, ddense, *opts)
        dy = t if dy is None else dy + t
    if dy is None:
        dy = jnp.zeros_like(y)
    return y, dy


_dense.defjvp(_dense_jvp, symbolic_zeros=True)


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
        :func:`isojax.psf.check_psf`. A dense PSF of numerical rank <= 2 is factored
        automatically (exact to rounding): in Python when it is concrete, inside the
        program (SVD and :func:`jax.lax.switch`) when it is traced; a dense one of higher
        rank and three or more rows goes through the lateral FFT
        (:mod:`isojax.forward._fourier`).
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
    psf = _auto_factor(psf, _compute_dtype(x.dtype))
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
        lateral pixel size, summing to 1; or a :class:`FactoredPSF`. Which path is taken
        is decided statically, as in :func:`measure`.
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
    psf = _auto_factor(psf, _compute_dtype(x.dtype))
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
