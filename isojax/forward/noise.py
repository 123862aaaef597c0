"""Detector noise: Poisson shot noise and Gaussian read noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

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
    """Additive white Gaussian noise of standard deviation ``sigma`` (units of ``x``).

    Args:
      key: a ``jax.random`` key.
      x: the clean array, any shape.
      sigma: noise standard deviation (units of ``x``): a scalar, or an array that
        broadcasts against ``x``.

    Returns:
      ``x`` plus the noise, with the shape and dtype of ``x``.
    """
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
