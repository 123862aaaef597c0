"""A dense PSF in the lateral Fourier domain: cost independent of the PSF's lateral size.

Along the lateral axis the blur is a convolution, so after a real FFT of the (boundary
padded) lateral axis every lateral frequency ``f`` is blurred axially by its own complex
profile ``H[f, m] = sum_l psf[l, m] exp(2 pi i f (n_l - 1 - l) / N)``. Blur and sampling
along the axial axis are then a few shifted, strided slices of the transformed image per
sample phase (``subsample = P / Q``: ``Q`` phases of ``n_taps + 1`` taps, the linear
interpolation folded into the taps), summed in one fused loop; an inverse FFT of the
samples alone brings the lateral axis back. A dense ``17 x 17`` PSF costs one FFT of the
volume, about ``18 Q`` complex multiply-adds per sample and one inverse FFT of the samples,
where the row-by-row product costs one banded product per lateral row.

The output is linear in the PSF, so its gradient is well defined for any PSF, rank
deficient or not (no SVD is differentiated), in forward and reverse mode and to any order.
(A custom VJP that computes the gradient in the taps as one batched product was tried: it
made reverse mode about 1.3x faster but forbids forward mode, which the operator supports.)

The polyphase split of a resampling filter follows the standard multirate treatment
(P. P. Vaidyanathan, "Multirate Systems and Filter Banks", Prentice Hall, 1993, ch. 4).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from isojax.forward._axial import Array, _lateral_pad, _slice_plan


class _Plan(NamedTuple):
    """Static geometry of the Fourier path for one shape, factor and PSF size."""

    p: int  # subsample = p / q
    q: int
    n_low: int  # samples kept
    nb: int  # blocks of q samples computed (the last may hold extra ones, cropped)
    ax_pad: tuple[int, int, int]  # axial padding: before and after (boundary rule), zeros
    lat_pad: tuple[int, int]  # lateral padding before and after (boundary rule)
    n_fft: int  # lateral FFT length
    t: tuple[float, ...]  # interpolation fraction of each phase
    starts: tuple[tuple[int, ...], ...]  # per phase: first padded index of each tap 0..n_taps
    taps: tuple[tuple[int, ...], ...]  # per phase: the taps with a nonzero weight


@functools.lru_cache(maxsize=256)
def plan(n: int, n_lat: int, s: float, n_l: int, n_taps: int, mode: str) -> _Plan | None:
    """The static plan for an ``(n_lat, n)`` image and an ``(n_l, n_taps)`` PSF, or None.

    None where the row-by-row product is the better or the only choice: CSBDeep's grid,
    factors that are not a small fraction, a PSF of one or two lateral rows, or axes too
    short to be mirrored by the PSF's half-width.
    """
    if n_l < 3:
        return None
    # the axial geometry is the strided-slice stage's: the same polyphase split of the
    # factor, the same slices of the padded axis (see _axial._slice_plan)
    ax = _slice_plan(n, s, n_taps, mode)
    lat_before, lat_after = n_l - 1 - (n_l - 1) // 2, (n_l - 1) // 2
    if ax is None or max(lat_before, lat_after) > n_lat - 1:
        return None
    return _Plan(
        p=ax.p,
        q=ax.q,
        n_low=ax.n_low,
        nb=ax.nb,
        ax_pad=ax.pad,
        lat_pad=(lat_before, lat_after),
        n_fft=n_lat + n_l - 1,
        t=ax.t,
        starts=ax.starts,
        taps=ax.taps,
    )


def _taps_impl(pl: _Plan, w: Array, xh: Array) -> Array:
    """``(..., nb * q, F)`` samples from taps ``w`` ``(F, q, n_taps + 1)`` and ``xh`` ``(..., L, F)``."""
    stop = pl.p * (pl.nb - 1) + 1
    phases = []
    for j in range(pl.q):
        acc = None
        for m in pl.taps[j]:
            st = pl.starts[j][m]
            term = lax.slice_in_dim(xh, st, st + stop, pl.p, axis=-2) * w[:, j, m]
            acc = term if acc is None else acc + term
        if acc is None:  # every output phase reads at least its centre tap
            raise ValueError(f"phase {j} of the Fourier plan has no taps")
        phases.append(acc)
    y = jnp.stack(phases, axis=-2)  # (..., nb, q, F)
    return y.reshape(*y.shape[:-3], pl.nb * pl.q, y.shape[-1])


def _frequency_taps(pl: _Plan, psf: Array) -> Array:
    """``(F, q, n_taps + 1)`` complex taps: lateral DFT of the PSF, interpolation folded in."""
    n_l = psf.shape[0]
    ctype = jnp.result_type(psf.dtype, jnp.complex64)
    freqs = np.arange(pl.n_fft // 2 + 1)
    phase = np.exp(2j * np.pi * np.outer(freqs, n_l - 1 - np.arange(n_l)) / pl.n_fft)
    h = jnp.asarray(phase, ctype) @ psf.astype(ctype)  # (F, n_taps)
    hp = jnp.pad(h, ((0, 0), (1, 1)))  # hp[:, m'] = h[:, m' - 1]
    t = jnp.asarray(np.array(pl.t), psf.dtype)[None, :, None]
    return (1 - t) * hp[:, None, :-1] + t * hp[:, None, 1:]


def measure(x: Array, psf: Array, pl: _Plan, *, lat: int, ax: int, boundary: str, precision):
    """Blur with the dense ``psf`` and keep the axial samples, through the lateral FFT.

    Args:
      x: real image(s) in the compute dtype, lateral axis ``lat``, axial axis ``ax``.
      psf: dense ``(n_l, n_taps)`` PSF, same dtype.
      pl: :func:`plan` for these shapes (not None).
      boundary: ``"reflect"``, ``"edge"`` or ``"zero"``, on both axes.
      precision: unused (FFTs and elementwise products only); kept for a uniform call.

    Returns:
      The samples, x's shape with axis ``ax`` of length ``pl.n_low``, x's dtype.
    """
    x = jnp.moveaxis(x, (ax, lat), (-2, -1))
    before, edge, zeros = pl.ax_pad
    xp = _lateral_pad(x, x.ndim - 2, before, edge, boundary)
    xp = _lateral_pad(xp, x.ndim - 2, 0, zeros, "zero")
    xp = _lateral_pad(xp, x.ndim - 1, *pl.lat_pad, boundary)
    xh = jnp.fft.rfft(xp, n=pl.n_fft, axis=-1)
    yh = _taps_impl(pl, _frequency_taps(pl, psf), xh)
    yh = lax.slice_in_dim(yh, 0, pl.n_low, axis=-2)
    y = jnp.fft.irfft(yh, n=pl.n_fft, axis=-1)[..., : x.shape[-1]].astype(x.dtype)
    return jnp.moveaxis(y, (-2, -1), (ax, lat))
