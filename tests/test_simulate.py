"""Simulated specimens, their acquisition and the scores (isojax.simulate)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from isojax.forward import degrade
from isojax.simulate import acquire, simulate_specimen, simulate_stack

SHAPE = (24, 40, 40)


@pytest.fixture(scope="module")
def specimen():
    return simulate_specimen(jax.random.key(0), SHAPE)


# ----------------------------------------------------------------------------------------
# The specimen


def test_specimen_shape_range_and_determinism(specimen):
    v = np.asarray(specimen)
    assert v.shape == SHAPE
    assert v.dtype == np.float32
    assert v.min() >= 0
    assert v.max() == pytest.approx(1.0)
    # sparse: most voxels are far below the brightest structures
    assert np.median(v) < 0.2
    again = simulate_specimen(jax.random.key(0), SHAPE)
    np.testing.assert_array_equal(np.asarray(again), v)
    other = simulate_specimen(jax.random.key(1), SHAPE)
    assert not np.allclose(np.asarray(other), v)


def test_specimen_has_no_preferred_direction(specimen):
    # fine structure in every direction: gradient energies along z, y and x are alike
    v = np.asarray(specimen, np.float64)
    energy = [np.mean(np.diff(v, axis=a) ** 2) for a in range(3)]
    assert max(energy) / min(energy) < 1.5, energy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_background_alone_is_isotropic_in_one_specimen(seed):
    # a band-limited random field with many modes: its power in the band (wavelengths 24 to
    # 96 px) is alike along z, y and x in every single specimen, not only on average (a
    # sum of 8 plane waves differed by factors of 1.3 to 2.5 here)
    v = np.asarray(simulate_specimen(jax.random.key(seed), (96, 96, 96), filament_density=0,
                                     vesicle_density=0), np.float64)
    assert v.min() >= 0
    assert v.max() == pytest.approx(1.0)
    f = np.fft.rfftfreq(96)
    band = (f >= 1 / 96) & (f <= 1 / 24)
    power = []
    for axis in range(3):
        x = np.moveaxis(v, axis, -1)
        x = x - x.mean(axis=-1, keepdims=True)
        p = np.abs(np.fft.rfft(x * np.hanning(96), axis=-1)) ** 2
        power.append(p[..., band].sum(-1).mean())
    assert max(power) / min(power) < 1.3, power


def test_specimen_options_are_checked():
    with pytest.raises(ValueError, match="filament_radius"):
        simulate_specimen(jax.random.key(0), SHAPE, filament_radius=(1.0, 0.5))
    with pytest.raises(ValueError, match="shape_zyx"):
        simulate_specimen(jax.random.key(0), (8, 8))
    with pytest.raises(ValueError, match="vesicle_density"):
        simulate_specimen(jax.random.key(0), SHAPE, vesicle_density=-1.0)


# ----------------------------------------------------------------------------------------
# The acquisition


def test_acquire_shapes_and_metadata(specimen):
    stack, acq = acquire(
        jax.random.key(1),
        specimen,
        subsample=2.5,
        sigma_lateral=1.0,
        sigma_axial=2.0,
        pixel_size=0.2,
    )
    n_low = math.floor((SHAPE[0] - 1) / 2.5) + 1
    assert stack.shape == (n_low, *SHAPE[1:])
    assert stack.dtype == jnp.float32
    assert acq.reference.shape == SHAPE
    np.testing.assert_allclose(acq.z_positions, np.arange(n_low) * 2.5)
    assert acq.spacing == pytest.approx((0.5, 0.2, 0.2))
    assert acq.spacing_fine == pytest.approx((0.2, 0.2, 0.2))
    psf = np.asarray(acq.psf)
    assert psf.ndim == 2
    assert psf.shape[0] == 1
    assert psf.sum() == pytest.approx(1.0, abs=1e-6)
    # the additional axial PSF has variance sa^2 - sl^2
    x = np.arange(psf.shape[1]) - psf.shape[1] // 2
    assert (psf[0] * x**2).sum() == pytest.approx(2.0**2 - 1.0**2, rel=1e-3)
    np.testing.assert_allclose(np.asarray(acq.factored_psf().dense()), psf)


def test_reference_is_the_lateral_blur(specimen):
    _, acq = acquire(jax.random.key(1), specimen, subsample=2.5, sigma_lateral=1.0, sigma_axial=2.0)
    # scipy's "mirror" is the whole-sample mirror of boundary="reflect"
    want = ndimage.gaussian_filter(
        np.asarray(specimen, np.float64), 1.0, mode="mirror", truncate=4.0
    )
    np.testing.assert_allclose(np.asarray(acq.reference), want, atol=1e-5)


def test_acquisition_routes_agree(specimen):
    # operator route: lateral blur everywhere, then measure() with the additional axial PSF;
    # direct route: full 3D Gaussian, then linear sampling of z without the operator
    kw = {"subsample": 10.2 / 3, "sigma_lateral": 1.0, "sigma_axial": 2.5}
    op, acq_op = acquire(jax.random.key(2), specimen, **kw)
    direct, acq_direct = acquire(jax.random.key(2), specimen, method="direct", **kw)
    np.testing.assert_allclose(np.asarray(op), np.asarray(direct), atol=1e-4 * float(op.max()))
    np.testing.assert_allclose(np.asarray(acq_op.reference), np.asarray(acq_direct.reference))


def test_acquisition_equals_the_operator_on_the_reference(specimen):
    # with subsample 1 the recorded stack is degrade(reference) along z
    stack, acq = acquire(
        jax.random.key(3), specimen, subsample=1.0, sigma_lateral=1.0, sigma_axial=2.0
    )
    ref = jnp.moveaxis(acq.reference, 0, -1)  # z last: (y, x, z)
    want = jnp.moveaxis(degrade(ref, acq.psf, 1.0), -1, 0)
    np.testing.assert_allclose(np.asarray(stack), np.asarray(want), atol=1e-6)


def test_noise_keeps_the_mean_and_has_the_expected_variance():
    level, photons, read = 0.5, 50.0, 0.02
    truth = jnp.full(SHAPE, level)
    stack, _ = acquire(
        jax.random.key(4),
        truth,
        subsample=2.0,
        sigma_lateral=1.0,
        sigma_axial=2.0,
        photons=photons,
        read_noise=read,
    )
    s = np.asarray(stack, np.float64)
    var = level / photons + read**2
    assert abs(s.mean() - level) < 4 * math.sqrt(var / s.size)
    assert s.var() == pytest.approx(var, rel=0.05)


def test_acquire_checks_its_input(specimen):
    with pytest.raises(ValueError, match="order of the arguments"):
        acquire(jax.random.key(0), specimen, subsample=2.0, sigma_lateral=2.0, sigma_axial=1.0)
    with pytest.raises(ValueError, match="subsample"):
        acquire(jax.random.key(0), specimen, subsample=0.5, sigma_lateral=1.0, sigma_axial=2.0)
    with pytest.raises(ValueError, match="3D"):
        acquire(jax.random.key(0), specimen[0], subsample=2.0, sigma_lateral=1.0, sigma_axial=2.0)


def test_simulate_stack_chains_both():
    stack, truth, acq = simulate_stack(
        jax.random.key(5), shape_zyx=SHAPE, subsample=3.0, sigma_lateral=1.0, sigma_axial=2.0
    )
    want = simulate_specimen(jax.random.split(jax.random.key(5))[0], SHAPE)
    np.testing.assert_array_equal(np.asarray(truth), np.asarray(want))
    assert stack.shape == (8, *SHAPE[1:])
    assert acq.subsample == 3.0
