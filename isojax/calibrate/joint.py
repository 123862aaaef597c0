"""The joint maths: refining the calibrated PSF together with the network during training.

:func:`consistency_loss` (re-degrading a restoration reproduces the observed samples),
:func:`axial_patches` (observed axial patches and their upsampled views) and
:func:`make_joint_psf_step` (one Adam step on the PSF of the spectral anchor plus the
consistency term, the network held fixed).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from isojax.calibrate.fit import CalibrationConfig, CalibrationReport
from isojax.calibrate.params import psf_from_params, psf_sigma, shape_roughness
from isojax.calibrate.spectra import SpectralTarget, spectral_loss
from isojax.forward import FactoredPSF, Interpolation, measure, sample_positions, upsample

Array = jax.Array

__all__ = [
    "axial_patches",
    "consistency_loss",
    "make_joint_psf_step",
]

def consistency_loss(restored: Array, samples: Array, psf, *, subsample: float) -> Array:
    """Mean absolute difference between re-degraded restorations and the observed samples.

    ``mean |measure(restored, psf, subsample) - samples|`` over the samples whose blur lies
    inside the patch (the operator mirrors the patch at its edges, which real data do not).

    Args:
      restored: network outputs on upsampled axial slices ``(b, lateral, axial)``.
      samples: the observed axial samples they came from ``(b, lateral, n_samples)``.
      psf: the PSF (array or :class:`~isojax.forward.FactoredPSF`); differentiable.
      subsample: anisotropy factor (static).

    Returns:
      The scalar mean absolute error (the units of ``samples``).
    """
    y = measure(restored, psf, subsample)
    n = restored.shape[-1]
    taps = psf.axial.shape[-1] if isinstance(psf, FactoredPSF) else jnp.shape(psf)[-1]
    r = taps // 2
    pos = sample_positions(n, subsample)
    keep = (pos >= r) & (pos <= n - 1 - r)
    if not keep.any():
        keep = np.ones_like(keep)
    err = jnp.abs(y - samples)[..., np.flatnonzero(keep)]
    return jnp.mean(err)


@functools.partial(jax.jit, static_argnames=("subsample", "patch_size", "batch_size",
                                             "interpolation"))
def axial_patches(key: Array, stack: Array, *, subsample: float, patch_size: int,
                  batch_size: int, interpolation: Interpolation = "linear") -> tuple[Array, Array]:
    """Random observed axial (XZ or YZ) patches: their samples and their upsampled view.

    Args:
      key: a ``jax.random`` key.
      stack: normalised anisotropic stack ``(z, y, x)``, at least
        ``len(sample_positions(patch_size, subsample))`` planes.
      subsample: anisotropy factor (static).
      patch_size: side in pixels of the upsampled patch (static).
      batch_size: patches (static).
      interpolation: how samples are brought to the fine grid, as at prediction.

    Returns:
      ``(upsampled, samples)``: ``(b, patch, patch)`` network inputs (last axis axial) and
      the ``(b, patch, m)`` samples they were made from.
    """
    nz, ny, nx = stack.shape
    p = patch_size
    m = len(sample_positions(p, subsample))
    ku = jax.random.uniform(key, (batch_size, 4))
    z0 = jnp.minimum((ku[:, 0] * (nz - m + 1)).astype(jnp.int32), nz - m)
    a0 = jnp.minimum((ku[:, 1] * min(ny, nx)).astype(jnp.int32), min(ny, nx) - 1)
    b0 = jnp.minimum((ku[:, 2] * (min(ny, nx) - p + 1)).astype(jnp.int32), min(ny, nx) - p)
    use_y = ku[:, 3] < 0.5

    def one(z, a, b, yz):
        xz = jax.lax.dynamic_slice(stack, (z, a, b), (m, 1, p))[:, 0, :]  # (m, p): XZ at row a
        yzs = jax.lax.dynamic_slice(stack, (z, b, a), (m, p, 1))[:, :, 0]  # (m, p): YZ at col a
        return jnp.where(yz, yzs, xz).T  # (p, m): lateral, axial

    samples = jax.vmap(one)(z0, a0, b0, use_y).astype(jnp.float32)
    up = upsample(samples, p, subsample, interpolation=interpolation)
    return up, samples


def make_joint_psf_step(apply_fn, report: CalibrationReport, target: SpectralTarget, *,
                        segment: int, config: CalibrationConfig):
    """A jitted ``psf_step(theta, opt_state, net_params, batch) -> (theta, opt_state, metrics)``.

    One Adam step on the PSF parameters (and the spectral nuisance constants) of
    ``spectral_weight * spectral_loss + consistency_weight * consistency_loss`` (plus the
    smoothness penalty for non-Gaussian families). The network's outputs enter the
    consistency term with a stop-gradient: the network learns only from the supervised
    pairs, and those pairs (synthesised with the current PSF outside this step) send no
    gradient to the PSF, which would otherwise be driven to a delta.

    Args:
      apply_fn: ``apply_fn(net_params, images (b, h, w)) -> restored (b, h, w)``.
      report: the spectral pre-calibration (family, support, starting parameters).
      target: from :func:`prepare_spectra`.
      segment: its Welch segment length.
      config: weights and the learning rate.

    Returns:
      ``(psf_step, theta0, opt_state0)``.
    """
    family, taps, s = report.family, report.taps, report.subsample
    tx = optax.adam(config.joint_learning_rate)
    theta0 = {"psf": jax.tree.map(jnp.asarray, report.params),
              "nuisance": jax.tree.map(jnp.asarray, report.nuisance)}

    def objective(theta, restored, samples):
        psf = psf_from_params(family, theta["psf"], taps=taps)
        spec = spectral_loss(psf, theta["nuisance"], target, subsample=s, segment=segment)
        cons = consistency_loss(restored, samples, psf, subsample=s)
        rough = shape_roughness(psf.axial[0]) if family != "gaussian" else 0.0
        total = (config.spectral_weight * spec + config.consistency_weight * cons
                 + config.smoothness * rough)
        return total, {"psf_spectral_loss": spec, "psf_consistency": cons,
                       "psf_sigma_px": psf_sigma(psf)}

    @jax.jit
    def psf_step(theta, opt_state, net_params, batch):
        upsampled, samples = batch
        restored = jax.lax.stop_gradient(apply_fn(net_params, upsampled))
        (_, metrics), g = jax.value_and_grad(objective, has_aux=True)(theta, restored, samples)
        updates, opt_state = tx.update(g, opt_state)
        return optax.apply_updates(theta, updates), opt_state, metrics

    return psf_step, theta0, tx.init(theta0)
