"""Simulated specimens and their anisotropic acquisition, with the truth to score against.

Three steps, each a pure function of a PRNG key and arrays:

1. :func:`simulate_specimen` draws an isotropic fluorescent specimen on a fine grid of cubic
   voxels (one lateral pixel on every side): smooth random filaments rendered as thin tubes,
   small vesicles (filled balls and hollow shells) and a weak smooth background. Nothing in
   it has a preferred direction: filament directions are drawn uniformly on the sphere,
   every object is rendered with an isotropic profile, and the background is an isotropic
   band-limited random field with many Fourier modes, so that even a single specimen has
   the same power spectrum along z, y and x (what PSF self-calibration relies on).
2. :func:`acquire` images it the way a microscope does: a 3D Gaussian PSF (``sigma_lateral``
   pixels in y and x, ``sigma_axial`` in z), axial planes every ``subsample`` pixels (plane
   ``k`` at ``z = k * subsample``), then shot and read noise on the recorded planes. It also
   returns the lateral-blurred truth, the best a restoration can reach (the lateral PSF is
   not undone), with the additional axial PSF and voxel sizes (:class:`Acquisition`).
3. :func:`psnr` and :func:`ssim` score a restoration against that truth (they live in
   :mod:`isojax.metrics` and are re-exported here).

:func:`simulate_stack` chains 1 and 2.

How the acquisition is computed (``method="operator"``, the default): the truth is blurred
with a Gaussian of ``sigma_lateral`` along all three axes (this is the reference), then
:func:`isojax.forward.measure` blurs z with the *additional* axial PSF, a Gaussian of
``sqrt(sigma_axial**2 - sigma_lateral**2)`` (variances of convolved Gaussians add), and
samples it. That is the forward model isojax trains with, so PSF self-calibration can in
principle recover the PSF exactly. ``method="direct"`` blurs with the full 3D Gaussian in
one go and samples z by linear interpolation without the operator; the two agree up to the
discretisation of the Gaussians (tested).

References:
  M. Weigert, L. Royer, F. Jug, G. Myers, "Isotropic reconstruction of 3D fluorescence
  microscopy images using convolutional neural networks", MICCAI 2017 (the acquisition
  model and the additional axial PSF).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from isojax.forward import FactoredPSF, add_noise, measure, sample_positions
from isojax.geometry import check_subsample
from isojax.metrics import _check_positive, psnr, ssim  # one number check for both

Array = jax.Array

__all__ = [
    "Acquisition",
    "acquire",
    "psnr",
    "simulate_specimen",
    "simulate_stack",
    "ssim",
]

_CHUNK = 2048  # objects rendered per scatter in simulate_specimen (bounds memory)
_STEP = 0.5  # spacing of the points that trace a filament, in pixels


# ----------------------------------------------------------------------------------------
# Small helpers



def _check_range(value, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max) in pixels, got {value!r}.") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi < lo:
        raise ValueError(f"{name} must satisfy 0 < min <= max (pixels), got {value!r}.")
    return lo, hi


def _check_shape(shape_zyx) -> tuple[int, int, int]:
    try:
        shape = tuple(int(n) for n in shape_zyx)
    except (TypeError, ValueError):
        raise ValueError(f"shape_zyx must be three sizes (z, y, x), got {shape_zyx!r}.") from None
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(
            f"shape_zyx must be three sizes (z, y, x) of at least 2 pixels each, got {shape_zyx!r}."
        )
    nz, ny, nx = shape
    return nz, ny, nx


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Sampled Gaussian of standard deviation ``sigma`` pixels, radius ``ceil(truncate sigma)``."""
    radius = max(1, math.ceil(truncate * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _blur_axis(v: Array, sigma: float, axis: int) -> Array:
    """Gaussian blur along one axis, mirroring about the edge pixels (``boundary='reflect'``).

    The mirror is the one :func:`isojax.forward.measure` uses, so that the two acquisition
    routes see the same image past the edges.
    """
    if sigma == 0:
        return v
    kernel = _gaussian_kernel(sigma)
    r = len(kernel) // 2
    n = v.shape[axis]
    widths = [(0, 0)] * v.ndim
    widths[axis] = (r, r)
    vp = jnp.pad(v, widths, mode="reflect" if n > 1 else "edge")
    terms = [lax.slice_in_dim(vp, i, i + n, axis=axis) * jnp.asarray(w, v.dtype)
             for i, w in enumerate(kernel)]
    return functools.reduce(operator.add, terms)


# ----------------------------------------------------------------------------------------
# The specimen


def _render(shape, centres: Array, params: Array, profile, half: int) -> Array:
    """Sum isotropic objects into a volume by scatter-adding each on its neighbourhood.

    ``profile(d2, p)`` gives an object's values at squared distances ``d2`` (pixels^2) from
    its centre, for parameters ``p``; it is evaluated on the ``(2 half + 1)^3`` voxels around
    the nearest voxel. Objects are processed in chunks to bound memory; voxels outside the
    volume are dropped.
    """
    nz, ny, nx = shape
    size = nz * ny * nx
    n = centres.shape[0]
    pad = (-n) % _CHUNK
    # padding objects sit far outside the volume and are dropped
    centres = jnp.pad(centres, ((0, pad), (0, 0)), constant_values=-1e4)
    params = jnp.pad(params, ((0, pad), (0, 0)))
    centres = centres.reshape(-1, _CHUNK, 3)
    params = params.reshape(-1, _CHUNK, params.shape[-1])
    off = jnp.arange(-half, half + 1)

    def add(vol, chunk):
        c, p = chunk
        base = jnp.round(c).astype(jnp.int32)
        idx = [base[:, a, None] + off for a in range(3)]  # 3 x (chunk, K)
        d = [(i - c[:, a, None]) ** 2 for a, i in enumerate(idx)]
        d2 = d[0][:, :, None, None] + d[1][:, None, :, None] + d[2][:, None, None, :]
        val = profile(d2, p)
        ok = [(i >= 0) & (i < m) for i, m in zip(idx, shape, strict=True)]
        inside = ok[0][:, :, None, None] & ok[1][:, None, :, None] & ok[2][:, None, None, :]
        flat = (idx[0][:, :, None, None] * ny + idx[1][:, None, :, None]) * nx + idx[2][
            :, None, None, :
        ]
        flat = jnp.where(inside, flat, size)
        return vol.at[flat.ravel()].add(val.ravel(), mode="drop"), None

    vol, _ = lax.scan(add, jnp.zeros(size, jnp.float32), (centres, params))
    return vol.reshape(shape)


class _Draws:
    """Uniform and normal numbers for a whole simulation, from ONE ``jax.random`` call.

    Every random call site costs about half a second of XLA compilation on a CPU, so the
    simulator draws one flat vector of uniforms and hands out pieces of it; normals come
    from pairs of uniforms (Box-Muller).
    """

    def __init__(self, key: Array, sizes: Sequence[tuple[str, int]]):
        self._slices = {}
        start = 0
        for name, n in sizes:
            self._slices[name] = (start, n)
            start += n
        self._u = jax.random.uniform(key, (max(start, 1),), minval=1e-7, maxval=1.0)

    @staticmethod
    def normal_size(n: int) -> int:
        return 2 * (-(-n // 2))

    def uniform(self, name: str, shape, minval=0.0, maxval=1.0) -> Array:
        start, n = self._slices[name]
        u = lax.dynamic_slice_in_dim(self._u, start, n) if n else jnp.zeros(0)
        return (minval + (maxval - minval) * u[: math.prod(shape)]).reshape(shape)

    def normal(self, name: str, shape) -> Array:
        start, n = self._slices[name]
        u = lax.dynamic_slice_in_dim(self._u, start, n).reshape(2, -1)
        r = jnp.sqrt(-2.0 * jnp.log(u[0]))
        z = jnp.concatenate([r * jnp.cos(2 * math.pi * u[1]), r * jnp.sin(2 * math.pi * u[1])])
        return z[: math.prod(shape)].reshape(shape)


def _unit_vectors(draws: _Draws, name: str, n: int) -> Array:
    v = draws.normal(name, (n, 3))
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def _filament_draws(n_fil: int, n_steps: int) -> list[tuple[str, int]]:
    return [
        ("fil_mid", 3 * n_fil),
        ("fil_dir", _Draws.normal_size(3 * n_fil)),
        ("fil_noise", _Draws.normal_size(n_steps * n_fil * 3)),
        ("fil_radius", n_fil),
        ("fil_bright", n_fil),
    ]


def _filaments(draws: _Draws, shape, n_fil, n_steps, length, persistence, radius, brightness):
    """Points along smooth random curves and their per-point (radius, amplitude).

    Each curve is a worm-like chain traced from its midpoint in both directions: the
    curvature vector is an Ornstein-Uhlenbeck process (correlation length 4 pixels) scaled so
    that tangents decorrelate as ``exp(-s / persistence)``. Midpoints are uniform in the
    volume grown by half a filament on every side, so filaments enter from outside and the
    density is uniform inside.
    """
    lc = 4.0
    rho = math.exp(-_STEP / lc)
    sc = math.sqrt(1.0 / (2.0 * lc * persistence))
    grow = length / 2
    lo = jnp.full(3, -grow)
    hi = jnp.asarray(shape, jnp.float32) - 1 + grow
    mid = lo + (hi - lo) * draws.uniform("fil_mid", (n_fil, 3))
    d0 = _unit_vectors(draws, "fil_dir", n_fil)
    half_steps = n_steps // 2
    noise = draws.normal("fil_noise", (2, half_steps, n_fil, 3))

    def walk(d_start, xi):
        def step(carry, e):
            p, d, c = carry
            c = rho * c + math.sqrt(1.0 - rho * rho) * sc * e
            c = c - jnp.sum(c * d, axis=-1, keepdims=True) * d  # curvature is normal to d
            d = d + _STEP * c
            d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
            p = p + _STEP * d
            return (p, d, c), p

        _, pts = lax.scan(step, (mid, d_start, jnp.zeros_like(mid)), xi)
        return pts  # (half_steps, n_fil, 3)

    pts = jnp.concatenate([walk(d0, noise[0]), mid[None], walk(-d0, noise[1])], axis=0)
    r = draws.uniform("fil_radius", (n_fil,), *radius)
    b = draws.uniform("fil_bright", (n_fil,), *brightness)
    # a tube of Gaussian cross-section: points every _STEP px with this amplitude sum to a
    # line whose peak is b
    amp = b * _STEP / (math.sqrt(2 * math.pi) * r)
    n_pts = pts.shape[0]
    params = jnp.stack([jnp.tile(r, n_pts), jnp.tile(amp, n_pts)], axis=-1)
    return pts.reshape(-1, 3), params


def _tube_profile(d2, p):
    r, amp = p[:, 0], p[:, 1]
    s2 = (r * r)[:, None, None, None]
    return amp[:, None, None, None] * jnp.exp(-0.5 * d2 / s2)


def _vesicle_profile(d2, p):
    # p = (radius, brightness, hollow): a ball with a soft edge (a ball blurred by a
    # Gaussian of 0.5 px) or a shell of Gaussian profile, 0.5 px thick (sd)
    r, b, hollow = (p[:, i, None, None, None] for i in range(3))
    d = jnp.sqrt(d2)
    ball = 0.5 * jax.scipy.special.erfc((d - r) / (0.5 * math.sqrt(2.0)))
    shell = jnp.exp(-0.5 * ((d - r) / 0.5) ** 2)
    return b * jnp.where(hollow > 0.5, shell, ball)


_BG_WAVELENGTH = (24.0, 96.0)  # pixels
_BG_SPREAD = 0.25  # standard deviation of the background field in units of its [0, 1] range


def _background_grid(shape, wavelength=_BG_WAVELENGTH) -> tuple[int, tuple[int, int, int]]:
    """Coarsening factor and coarse grid on which the background's white noise is drawn.

    The band stops at ``1 / wavelength[0]`` cycles per pixel, at most half the coarse
    grid's Nyquist frequency, so the coarse noise holds every mode the band needs.
    """
    c = max(1, int(wavelength[0] // 4))
    return c, tuple(-(-n // c) for n in shape)


def _background(draws: _Draws, shape, wavelength=_BG_WAVELENGTH) -> Array:
    """A smooth random field in [0, 1]: a band-limited, isotropic Gaussian random field.

    White noise is filtered to the spatial frequencies ``1 / wavelength[1] <= |f| <= 1 /
    wavelength[0]`` (an isotropic band), mean ``0.5``, standard deviation
    ``_BG_SPREAD``, clipped to [0, 1]. It holds every Fourier mode of that band the
    volume supports (thousands in a ``(320, 256, 256)`` volume), so a single specimen is
    already isotropic: its power along z, y and x agrees to a few percent. (A sum of a few
    plane waves in random directions, the earlier background, is isotropic only on average
    over specimens; each one had a handful of preferred directions, and its power in the
    band differed between z and x by factors of 0.3 to 1.3.)

    The noise is drawn on a grid ``c`` times coarser (see :func:`_background_grid`), and
    its in-band Fourier coefficients are placed in the spectrum of the full grid: an
    exact band-limited interpolation, at the cost of one inverse FFT of the volume.
    """
    c, coarse = _background_grid(shape, wavelength)
    full = tuple(c * m for m in coarse)
    spec = jnp.fft.rfftn(draws.normal("bg_noise", coarse))
    freqs = [np.fft.fftfreq(coarse[0]) / c, np.fft.fftfreq(coarse[1]) / c,
             np.fft.rfftfreq(coarse[2]) / c]  # cycles per fine pixel
    k = np.sqrt(freqs[0][:, None, None] ** 2 + freqs[1][None, :, None] ** 2
                + freqs[2][None, None, :] ** 2)
    iz, iy, ix = np.nonzero((k >= 1.0 / wavelength[1]) & (k <= 1.0 / wavelength[0]))
    # coarse bin -> fine bin: the same frequency (negative ones sit at the end of an axis)
    fz = np.where(iz < (coarse[0] + 1) // 2, iz, iz + full[0] - coarse[0])
    fy = np.where(iy < (coarse[1] + 1) // 2, iy, iy + full[1] - coarse[1])
    fine = jnp.zeros((full[0], full[1], full[2] // 2 + 1), spec.dtype)
    fine = fine.at[fz, fy, ix].set(spec[iz, iy, ix])
    field = jnp.fft.irfftn(fine, full)[: shape[0], : shape[1], : shape[2]]
    field = field - jnp.mean(field)
    sd = jnp.std(field)
    field = jnp.where(sd > 0, field / jnp.maximum(sd, 1e-30), 0.0)
    return jnp.clip(0.5 + _BG_SPREAD * field, 0.0, 1.0)


@functools.partial(jax.jit, static_argnums=tuple(range(1, 12)))
def _specimen(
    key,
    shape,
    n_fil,
    n_steps,
    length,
    persistence,
    fil_radius,
    n_ves,
    ves_radius,
    hollow_fraction,
    background,
    half_fil,
):
    sizes = _filament_draws(n_fil, n_steps) if n_fil else []
    sizes += [("ves_" + name, n_ves) for name in ("z", "y", "x", "radius", "bright", "hollow")]
    sizes += [("bg_noise", _Draws.normal_size(math.prod(_background_grid(shape)[1])))]
    draws = _Draws(key, sizes)
    vol = jnp.zeros(shape, jnp.float32)
    if n_fil > 0:
        pts, params = _filaments(
            draws, shape, n_fil, n_steps, length, persistence, fil_radius, (0.3, 1.0)
        )
        vol = vol + _render(shape, pts, params, _tube_profile, half_fil)
    if n_ves > 0:
        centres = jnp.stack(
            [
                draws.uniform("ves_" + a, (n_ves,), 0.0, m - 1.0)
                for a, m in zip("zyx", shape, strict=True)
            ],
            -1,
        )
        r = draws.uniform("ves_radius", (n_ves,), *ves_radius)
        b = draws.uniform("ves_bright", (n_ves,), 0.3, 1.0)
        hollow = (draws.uniform("ves_hollow", (n_ves,)) < hollow_fraction).astype(jnp.float32)
        half = math.ceil(ves_radius[1] + 2.0)
        vol = vol + _render(shape, centres, jnp.stack([r, b, hollow], -1), _vesicle_profile, half)
    if background > 0:
        vol = vol + background * _background(draws, shape)
    return vol / jnp.maximum(jnp.max(vol), 1e-12)


def simulate_specimen(
    key: Array,
    shape_zyx: Sequence[int],
    *,
    filament_density: float = 4.0,
    filament_length: float = 64.0,
    persistence_length: float = 48.0,
    filament_radius: tuple[float, float] = (0.4, 1.0),
    vesicle_density: float = 0.05,
    vesicle_radius: tuple[float, float] = (1.0, 3.0),
    hollow_fraction: float = 0.5,
    background: float = 0.05,
) -> Array:
    """An isotropic fluorescent specimen with fine structure in every direction.

    The volume holds, on a grid of cubic voxels (sizes in pixels of that grid):

    * filaments: smooth random curves (worm-like chains, directions uniform on the sphere)
      rendered as tubes whose cross-section is a Gaussian of standard deviation
      ``filament_radius`` (drawn per filament), peak brightness 0.3 to 1;
    * vesicles: balls with a soft edge or, with probability ``hollow_fraction``, hollow
      shells, radius ``vesicle_radius``, brightness 0.3 to 1;
    * a weak smooth background between 0 and ``background``: a Gaussian random field of
      wavelengths 24 to 96 pixels (an isotropic band of spatial frequencies), mean half of
      ``background``, clipped to that range.

    The sum is divided by its maximum. Rendering scatters each object onto the voxels
    around it and runs under :func:`jax.jit`; a ``(64, 128, 128)`` volume takes well under
    a second on two CPU cores once compiled (compilation is per shape and options).

    Args:
      key: a ``jax.random`` key.
      shape_zyx: ``(z, y, x)`` size of the volume in pixels, at least 2 each.
      filament_density: total filament length per 1000 voxels, in pixels (0 for none).
      filament_length: length of each filament in pixels.
      persistence_length: length in pixels over which a filament's direction decorrelates
        (larger is straighter).
      filament_radius: ``(min, max)`` standard deviation of the tube cross-section, pixels.
      vesicle_density: vesicles per 1000 voxels (0 for none).
      vesicle_radius: ``(min, max)`` vesicle radius in pixels.
      hollow_fraction: probability that a vesicle is a hollow shell rather than a ball.
      background: level of the smooth background relative to the brightest object, >= 0.

    Returns:
      float32 array of shape ``shape_zyx``, values in ``[0, 1]`` with maximum 1 (all zeros
      if nothing is drawn).

    Raises:
      ValueError: a shape that is not three sizes >= 2, or a negative, non-finite or
        inverted option; the message names it.

    Example:
      >>> import jax
      >>> v = simulate_specimen(jax.random.key(0), (16, 32, 32))
      >>> v.shape, float(v.max())
      ((16, 32, 32), 1.0)
    """
    shape = _check_shape(shape_zyx)
    density = _check_positive(filament_density, "filament_density", allow_zero=True)
    length = _check_positive(filament_length, "filament_length")
    persistence = _check_positive(persistence_length, "persistence_length")
    fil_radius = _check_range(filament_radius, "filament_radius")
    ves_density = _check_positive(vesicle_density, "vesicle_density", allow_zero=True)
    ves_radius = _check_range(vesicle_radius, "vesicle_radius")
    hollow = _check_positive(hollow_fraction, "hollow_fraction", allow_zero=True)
    if hollow > 1:
        raise ValueError(f"hollow_fraction is a probability in [0, 1], got {hollow_fraction!r}.")
    bg = _check_positive(background, "background", allow_zero=True)

    n_vox = math.prod(shape)
    grown = math.prod(n + length for n in shape)  # midpoints live in the grown box
    n_fil = round(density * grown / 1000.0 / length)
    n_steps = 2 * max(1, math.ceil(length / (2 * _STEP)))
    n_ves = round(ves_density * n_vox / 1000.0)
    half_fil = max(1, math.ceil(3.0 * fil_radius[1]))
    return _specimen(
        key,
        shape,
        n_fil,
        n_steps,
        length,
        persistence,
        fil_radius,
        n_ves,
        ves_radius,
        hollow,
        bg,
        half_fil,
    )


# ----------------------------------------------------------------------------------------
# The acquisition


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compare fields yourself
class Acquisition:
    """What :func:`acquire` did, and what a restoration is scored against.

    Attributes:
      reference: the truth blurred by the lateral PSF (``sigma_lateral`` on all three axes),
        on the fine grid, float32 ``(z, y, x)`` of the truth's shape: what a perfect
        restoration reaches. Plane ``k`` of the stack sits at its ``z = k * subsample``.
      psf: the additional axial PSF, a 2D float32 array ``(lateral, axial)`` (a delta
        laterally, a Gaussian of ``sqrt(sigma_axial**2 - sigma_lateral**2)`` pixels
        axially), summing to 1: what :func:`isojax.degrade` should be given.
      subsample: anisotropy factor, axial step / lateral pixel size.
      spacing: voxel size of the stack ``(dz, dy, dx)`` in micrometres.
      z_positions: where the stack's planes sit on the fine grid, in pixels, ``(n_z_low,)``.
      sigma_lateral: standard deviation of the lateral PSF, in lateral pixels.
      sigma_axial: standard deviation of the axial PSF, in lateral pixels.
      photons: photons per unit intensity of the shot noise, or None for none.
      read_noise: standard deviation of the read noise, in units of the truth.
      pixel_size: lateral pixel size in micrometres (the fine grid is cubic with this side).
    """

    reference: Array
    psf: Array
    subsample: float
    spacing: tuple[float, float, float]
    z_positions: np.ndarray
    sigma_lateral: float
    sigma_axial: float
    photons: float | None
    read_noise: float
    pixel_size: float

    @property
    def spacing_fine(self) -> tuple[float, float, float]:
        """Voxel size of the reference (and of a restoration) ``(dz, dy, dx)``, micrometres."""
        return (self.pixel_size, self.pixel_size, self.pixel_size)

    def factored_psf(self) -> FactoredPSF:
        """The additional axial PSF as a rank-one :class:`~isojax.forward.FactoredPSF`."""
        return FactoredPSF(jnp.ones((1, 1), self.psf.dtype), self.psf[0][None])


def _axial_psf(sigma_lateral: float, sigma_axial: float) -> np.ndarray:
    """``(1, taps)`` Gaussian of ``sqrt(sa^2 - sl^2)`` pixels (a delta when they are equal)."""
    extra = math.sqrt(max(sigma_axial**2 - sigma_lateral**2, 0.0))
    if extra == 0:
        return np.ones((1, 1), np.float32)
    return _gaussian_kernel(extra)[None].astype(np.float32)


def _sample_z(v: Array, positions: np.ndarray) -> Array:
    """Linear interpolation of axis 0 at the given (static) positions in pixels."""
    n = v.shape[0]
    lo = np.minimum(np.floor(positions).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    t = jnp.asarray(positions - lo, v.dtype)[:, None, None]
    return (1 - t) * v[lo] + t * v[hi]


@functools.partial(
    jax.jit,
    static_argnames=("subsample", "sigma_lateral", "sigma_axial", "method", "shot", "read"),
)
def _acquire(
    key, truth, photons, read_noise, *, subsample, sigma_lateral, sigma_axial, method, shot, read
):
    ref = truth
    for axis in (1, 2):
        ref = _blur_axis(ref, sigma_lateral, axis)
    if method == "operator":
        ref = _blur_axis(ref, sigma_lateral, 0)
        psf = _axial_psf(sigma_lateral, sigma_axial)
        factored = FactoredPSF(jnp.ones((1, 1), jnp.float32), jnp.asarray(psf))
        low = measure(ref, factored, subsample, axes=(1, 0))
    else:
        low = _sample_z(
            _blur_axis(ref, sigma_axial, 0), sample_positions(truth.shape[0], subsample)
        )
        ref = _blur_axis(ref, sigma_lateral, 0)
    if shot or read:
        low = add_noise(
            key, low, photons=photons if shot else None, sigma=read_noise if read else 0.0
        )
    return low, ref


def acquire(
    key: Array,
    truth: Array,
    *,
    subsample: float,
    sigma_lateral: float,
    sigma_axial: float,
    photons: float | None = None,
    read_noise: float = 0.0,
    pixel_size: float = 0.1,
    method: Literal["operator", "direct"] = "operator",
) -> tuple[Array, Acquisition]:
    """Image an isotropic truth with a microscope of coarse, blurry z.

    The truth is blurred by a 3D Gaussian PSF (``sigma_lateral`` in y and x, ``sigma_axial``
    in z), plane ``k`` is taken at ``z = k * subsample`` pixels of the fine grid (linear
    interpolation between pixels for a non-integer factor), and the recorded planes get
    Poisson shot noise (``photons``) and Gaussian read noise (``read_noise``) through
    :func:`isojax.forward.add_noise`. The blur mirrors the volume at its faces.

    Args:
      key: a ``jax.random`` key (used for the noise).
      truth: isotropic specimen, ``(z, y, x)`` on a grid of cubic voxels (e.g. from
        :func:`simulate_specimen`), non-negative.
      subsample: anisotropy factor, axial step / lateral pixel size, >= 1 (e.g. 10.2).
      sigma_lateral: standard deviation of the PSF in y and x, lateral pixels, >= 0.
      sigma_axial: standard deviation of the PSF in z, lateral pixels, >= ``sigma_lateral``.
      photons: detected photons per unit intensity of the truth (larger is less noisy), or
        None for no shot noise.
      read_noise: standard deviation of Gaussian read noise in units of the truth, >= 0.
      pixel_size: lateral pixel size in micrometres; sets :attr:`Acquisition.spacing`.
      method: ``"operator"`` (default) blurs with ``sigma_lateral`` on every axis and then
        applies :func:`isojax.forward.measure` along z with the additional axial PSF, as
        isojax's training does; ``"direct"`` blurs with the full 3D Gaussian and samples z
        by linear interpolation, without the operator. They agree up to the sampling of
        the Gaussians.

    Returns:
      ``(stack, acquisition)``: the anisotropic stack, float32 ``(n_z_low, y, x)`` with
      ``n_z_low = floor((z - 1) / subsample) + 1``, and an :class:`Acquisition` with the
      lateral-blurred reference and everything else needed to score a restoration.

    Raises:
      ValueError: truth not 3D, ``subsample < 1``, negative widths, ``sigma_axial <
        sigma_lateral``, or non-positive ``photons``; the message says what to change.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> stack, acq = acquire(jax.random.key(0), jnp.ones((21, 8, 8)), subsample=4.0,
      ...                      sigma_lateral=1.0, sigma_axial=2.0)
      >>> stack.shape, acq.spacing
      ((6, 8, 8), (0.4, 0.1, 0.1))
    """
    truth = jnp.asarray(truth, jnp.float32)
    if truth.ndim != 3:
        raise ValueError(f"truth must be a 3D (z, y, x) volume, got shape {truth.shape}.")
    s = check_subsample(subsample)
    if truth.shape[0] < 2:
        raise ValueError(f"truth needs at least 2 planes in z, got {truth.shape[0]}.")
    sl = _check_positive(sigma_lateral, "sigma_lateral", allow_zero=True)
    sa = _check_positive(sigma_axial, "sigma_axial", allow_zero=True)
    if sa < sl:
        raise ValueError(
            f"sigma_axial ({sa} px) is smaller than sigma_lateral ({sl} px): the axial PSF must "
            "be at least as wide as the lateral one; check the order of the arguments."
        )
    if photons is not None:
        _check_positive(photons, "photons (or None for no shot noise)")
    read = _check_positive(read_noise, "read_noise", allow_zero=True)
    px = _check_positive(pixel_size, "pixel_size")
    if method not in ("operator", "direct"):
        raise ValueError(f"method must be 'operator' or 'direct', got {method!r}.")
    stack, ref = _acquire(
        key,
        truth,
        jnp.float32(1.0 if photons is None else photons),
        jnp.float32(read),
        subsample=s,
        sigma_lateral=sl,
        sigma_axial=sa,
        method=method,
        shot=photons is not None,
        read=read > 0,
    )
    info = Acquisition(
        reference=ref,
        psf=jnp.asarray(_axial_psf(sl, sa)),
        subsample=s,
        spacing=(s * px, px, px),
        z_positions=sample_positions(truth.shape[0], s),
        sigma_lateral=sl,
        sigma_axial=sa,
        photons=None if photons is None else float(photons),
        read_noise=read,
        pixel_size=px,
    )
    return stack, info


def simulate_stack(
    key: Array,
    *,
    shape_zyx: Sequence[int],
    subsample: float,
    sigma_lateral: float = 1.0,
    sigma_axial: float = 3.0,
    photons: float | None = None,
    read_noise: float = 0.0,
    pixel_size: float = 0.1,
    **specimen_options,
) -> tuple[Array, Array, Acquisition]:
    """A specimen and its anisotropic acquisition in one call.

    Args:
      key: a ``jax.random`` key (split into one for the specimen, one for the noise).
      shape_zyx: ``(z, y, x)`` size of the isotropic truth in pixels.
      subsample: anisotropy factor, >= 1.
      sigma_lateral: standard deviation of the lateral PSF in pixels.
      sigma_axial: standard deviation of the axial PSF in (lateral) pixels.
      photons: photons per unit intensity for shot noise, or None for none.
      read_noise: standard deviation of the read noise (intensity units).
      pixel_size: lateral pixel size in micrometres.
      **specimen_options: passed to :func:`simulate_specimen` (densities, radii, ...).

    Returns:
      ``(stack, truth, acquisition)``: the anisotropic stack ``(n_z_low, y, x)``, the
      truth ``shape_zyx`` and the :class:`Acquisition` (see :func:`acquire`).

    Raises:
      ValueError: as :func:`simulate_specimen` and :func:`acquire`.
    """
    k_spec, k_acq = jax.random.split(key)
    truth = simulate_specimen(k_spec, shape_zyx, **specimen_options)
    stack, info = acquire(
        k_acq,
        truth,
        subsample=subsample,
        sigma_lateral=sigma_lateral,
        sigma_axial=sigma_axial,
        photons=photons,
        read_noise=read_noise,
        pixel_size=pixel_size,
    )
    return stack, truth, info
