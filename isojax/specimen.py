"""Synthetic isotropic specimens: random filaments, vesicles and a smooth background.

:func:`simulate_specimen` (re-exported by :mod:`isojax.simulate`, which images it) draws an
isotropic fluorescent specimen on a fine grid of cubic voxels (one lateral pixel on every
side): smooth random filaments rendered as thin tubes, small vesicles (filled balls and
hollow shells) and a weak smooth background. Nothing in it has a preferred direction:
filament directions are drawn uniformly on the sphere, every object is rendered with an
isotropic profile, and the background is an isotropic band-limited random field with many
Fourier modes, so that even a single specimen has the same power spectrum along z, y and x
(what PSF self-calibration relies on). A pure function of a PRNG key.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from isojax.metrics import _check_positive  # one number check for the package

Array = jax.Array

__all__ = ["simulate_specimen"]

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
