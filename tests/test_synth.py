"""Training-pair synthesis (isojax.synth)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from isojax.forward import FactoredPSF
from isojax.psf import gaussian_axial_psf
from isojax.synth import SynthConfig, denormalize, make_pairs, normalize_percentile, split_slices

DELTA = jnp.ones((1, 1))
TINY = (4, 16, 16)  # stack shape for the exact tests (patch 8, subsample 1)
SMALL = (4, 48, 48)  # stack shape for the degradation tests (patch 16, subsample 4)
GAUSS = gaussian_axial_psf(3.0, sigma_lateral_px=1.0)  # (1, 25), sd sqrt(8) px
EXACT = SynthConfig(subsample=1.0, patch_size=8)  # augment, X or Y, foreground bias


def _ramp(shape=TINY):
    """A stack where every value is unique and tells its direction: 100 per y, 1 per x."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return jnp.asarray(10000.0 * z + 100.0 * y + x, jnp.float32)


def _orientation(patch):
    """(step along rows, step along columns) of a patch cut from _ramp: which axis went where."""
    p = np.asarray(patch)
    return (p[1, 0] - p[0, 0], p[0, 1] - p[0, 0])


def _found_in(patch, stack, orientations=True):
    """Whether the patch is a window of one plane, up to the 8 transposes and flips."""
    p = np.asarray(patch)
    windows = sliding_window_view(np.asarray(stack), p.shape, axis=(1, 2))
    cands = [p]
    if orientations:
        cands = [a for t in (p, p.T) for a in (t, t[::-1], t[:, ::-1], t[::-1, ::-1])]
    return any(np.all(windows == c, axis=(-2, -1)).any() for c in cands)


# ----------------------------------------------------------------------------------------
# Normalisation and the split


def test_normalize_percentile_matches_numpy_and_inverts():
    x = jnp.asarray(np.random.default_rng(0).gamma(2.0, size=(5, 20, 20)), jnp.float32)
    y, (lo, hi) = normalize_percentile(x)
    want_lo, want_hi = np.percentile(np.asarray(x), [1.0, 99.8])
    assert float(lo) == pytest.approx(want_lo, rel=1e-5)
    assert float(hi) == pytest.approx(want_hi, rel=1e-5)
    assert float(jnp.percentile(y, 1.0)) == pytest.approx(0.0, abs=1e-5)
    assert float(jnp.percentile(y, 99.8)) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.asarray(denormalize(y, lo, hi)), np.asarray(x), rtol=1e-5)


def test_normalize_constant_stack_gives_zeros_not_nan():
    x = jnp.full((3, 4, 4), 7.0)
    y, (lo, hi) = normalize_percentile(x)
    np.testing.assert_array_equal(np.asarray(y), 0.0)
    np.testing.assert_allclose(np.asarray(denormalize(y, lo, hi)), 7.0)
    with pytest.raises(ValueError, match="pmin < pmax"):
        normalize_percentile(x, pmin=99.0, pmax=1.0)


def test_split_slices_never_overlap():
    for n_z in (2, 3, 10, 57):
        for frac in (0.01, 0.1, 0.5, 0.9):
            for gap in (0, 1):
                try:
                    train, val = split_slices(n_z, val_fraction=frac, gap=gap)
                except ValueError:
                    assert n_z - max(1, round(frac * n_z)) - gap < 1
                    continue
                assert len(train) >= 1
                assert len(val) >= 1
                assert not set(train) & set(val)
                assert np.all(np.diff(val) == 1)  # one contiguous block
                assert val[-1] == n_z - 1
                assert val[0] - train[-1] == gap + 1
    with pytest.raises(ValueError, match="too thin"):
        split_slices(1)
    with pytest.raises(ValueError, match="val_fraction"):
        split_slices(10, val_fraction=0.0)


def test_config_is_checked():
    with pytest.raises(ValueError, match="patch_size"):
        SynthConfig(subsample=4.0, patch_size=0)
    with pytest.raises(ValueError, match="subsample"):
        SynthConfig(subsample=0.5)
    with pytest.raises(ValueError, match="interpolation"):
        SynthConfig(subsample=4.0, interpolation="nearest")
    with pytest.raises(ValueError, match="photons"):
        SynthConfig(subsample=4.0, photons=0.0)
    with pytest.raises(ValueError, match="axial"):
        SynthConfig(subsample=4.0, axial="z")
    with pytest.raises(ValueError, match="val_fraction"):
        SynthConfig(subsample=4.0, val_fraction=1.0)
    with pytest.raises(dataclasses_frozen_error()):
        EXACT.patch_size = 16  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


# ----------------------------------------------------------------------------------------
# Exact checks: delta PSF, subsample 1, no noise


def test_identity_degradation_gives_source_equal_target_and_real_patches():
    stack = jnp.asarray(np.random.default_rng(1).random(TINY), jnp.float32)
    src, tgt = make_pairs(
        jax.random.key(0), stack, DELTA, EXACT, batch_size=8, z_indices=jnp.arange(4)
    )
    assert src.shape == tgt.shape == (8, 8, 8)
    assert src.dtype == tgt.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(src), np.asarray(tgt), atol=1e-6)
    for t in tgt:  # every target is a window of the stack, transposed or flipped at most
        assert _found_in(t, stack)


def test_z_indices_are_honoured():
    stack = _ramp()
    _, tgt = make_pairs(
        jax.random.key(1), stack, DELTA, EXACT, batch_size=8, z_indices=jnp.full(4, 2, jnp.int32)
    )
    planes = np.floor(np.asarray(tgt) / 10000.0)
    np.testing.assert_array_equal(planes, 2)
    for t in tgt:
        assert _found_in(t, stack[2:3])


def test_x_and_y_both_act_as_axial_and_augmentations_cover_all_eight():
    seen = set()
    for i in range(8):  # same batch size as the other EXACT calls: no recompilation
        _, tgt = make_pairs(
            jax.random.key(i), _ramp(), DELTA, EXACT, batch_size=8, z_indices=jnp.arange(4)
        )
        seen |= {_orientation(t) for t in tgt}
    # last-axis step 1: X is axial; 100: Y is axial (transposed); signs: flips
    assert {abs(last) for _, last in seen} == {1.0, 100.0}
    assert len(seen) == 8


@pytest.mark.parametrize(("axial", "step"), [("x", 1.0), ("y", 100.0)])
def test_single_axial_axis_is_respected(axial, step):
    cfg = SynthConfig(subsample=1.0, patch_size=8, axial=axial, augment=False)
    _, tgt = make_pairs(
        jax.random.key(3), _ramp(), DELTA, cfg, batch_size=8, z_indices=jnp.arange(4)
    )
    assert {_orientation(t)[1] for t in tgt} == {step}
    for t in tgt:
        want = t.T if axial == "y" else t
        assert _found_in(want, _ramp(), orientations=False)


def test_patch_larger_than_the_image_is_a_clear_error():
    with pytest.raises(ValueError, match="larger than the stack"):
        make_pairs(
            jax.random.key(0),
            jnp.zeros((4, 16, 6)),
            DELTA,
            EXACT,
            batch_size=2,
            z_indices=jnp.arange(4),
        )
    with pytest.raises(ValueError, match="z_indices"):
        make_pairs(
            jax.random.key(0),
            jnp.zeros(TINY),
            DELTA,
            EXACT,
            batch_size=2,
            z_indices=jnp.zeros(0, jnp.int32),
        )
    with pytest.raises(ValueError, match="2D"):
        make_pairs(
            jax.random.key(0),
            jnp.zeros(TINY),
            jnp.ones((1, 1, 1)),
            EXACT,
            batch_size=2,
            z_indices=jnp.arange(4),
        )


# ----------------------------------------------------------------------------------------
# Degradation with a Gaussian axial PSF

PLAIN = SynthConfig(subsample=4.0, patch_size=16, foreground_fraction=0.0)


@pytest.fixture(scope="module")
def noise_stack():
    return jnp.asarray(np.random.default_rng(2).random(SMALL), jnp.float32)


def _gradient_energy(x, axis):
    return float(jnp.mean(jnp.diff(x, axis=axis) ** 2))


def test_degradation_blurs_the_last_axis_only(noise_stack):
    src, tgt = make_pairs(
        jax.random.key(4), noise_stack, GAUSS, PLAIN, batch_size=8, z_indices=jnp.arange(4)
    )
    # white noise: the target is equally rough along both axes, the source is smooth along
    # the last (axial) axis only
    assert _gradient_energy(tgt, 2) == pytest.approx(_gradient_energy(tgt, 1), rel=0.2)
    assert _gradient_energy(src, 2) < 0.05 * _gradient_energy(src, 1)


def test_determinism_and_no_recompilation(noise_stack):
    z = jnp.arange(4)
    a = make_pairs(jax.random.key(5), noise_stack, GAUSS, PLAIN, batch_size=8, z_indices=z)
    size = make_pairs._cache_size()
    b = make_pairs(jax.random.key(5), noise_stack, GAUSS, PLAIN, batch_size=8, z_indices=z)
    c = make_pairs(
        jax.random.key(6), noise_stack + 1.0, GAUSS * 1.0, PLAIN, batch_size=8, z_indices=z + 0
    )
    assert make_pairs._cache_size() == size
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.allclose(np.asarray(a[1]), np.asarray(c[1]) - 1.0)


@pytest.mark.parametrize("factored", [False, True])
def test_gradients_flow_into_the_psf(noise_stack, factored):
    key, z = jax.random.key(7), jnp.arange(4)
    weights = jnp.asarray(np.random.default_rng(3).standard_normal((8, 16, 16)), jnp.float32)

    def loss(p):
        psf = FactoredPSF(jnp.ones((1, 1)), p) if factored else p
        src, _ = make_pairs(key, noise_stack, psf, PLAIN, batch_size=8, z_indices=z)
        return jnp.sum(src * weights)

    g = jax.grad(loss)(GAUSS)
    assert g.shape == GAUSS.shape
    assert bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.max(jnp.abs(g))) > 0
    # the source is linear in the PSF: a finite difference is exact up to rounding
    v = jnp.asarray(np.random.default_rng(4).standard_normal(GAUSS.shape), jnp.float32)
    eps = 1e-2
    fd = (loss(GAUSS + eps * v) - loss(GAUSS - eps * v)) / (2 * eps)
    assert float(jnp.vdot(g, v)) == pytest.approx(float(fd), rel=1e-2, abs=1e-3)


def test_noise_sits_on_the_samples_and_keeps_the_mean():
    cfg = SynthConfig(subsample=4.0, patch_size=16, read_noise=0.1)  # Poisson: test_simulate
    stack = jnp.full(SMALL, 0.5)
    src, tgt = make_pairs(
        jax.random.key(8), stack, GAUSS, cfg, batch_size=8, z_indices=jnp.arange(4)
    )
    np.testing.assert_array_equal(np.asarray(tgt), 0.5)
    s = np.asarray(src, np.float64)
    assert s.std() > 0.05
    # noise was added to samples 4 px apart and interpolated: along the axial axis, the
    # source is linear between samples, so its second differences vanish at most pixels
    assert np.mean(np.abs(np.diff(s, 2, axis=2)) < 1e-5) > 0.5
    assert np.mean(np.abs(np.diff(s, 2, axis=1)) < 1e-5) < 0.05
    assert abs(s.mean() - 0.5) < 0.02


def test_foreground_bias_favours_bright_patches():
    rng = np.random.default_rng(5)
    stack = np.zeros(SMALL, np.float32)
    for _ in range(6):  # a few bright spots in an empty stack
        z, y, x = rng.integers(0, SMALL[0]), rng.integers(0, 44), rng.integers(0, 44)
        stack[z, y : y + 4, x : x + 4] = 1.0
    stack = jnp.asarray(stack)
    biased = SynthConfig(subsample=4.0, patch_size=16, foreground_fraction=1.0, n_candidates=8)
    z = jnp.arange(4)
    t_biased, t_plain = [], []
    for i in range(8):
        t_biased.append(
            make_pairs(jax.random.key(i), stack, GAUSS, biased, batch_size=8, z_indices=z)[1]
        )
        t_plain.append(
            make_pairs(jax.random.key(i), stack, GAUSS, PLAIN, batch_size=8, z_indices=z)[1]
        )
    t_biased, t_plain = jnp.concatenate(t_biased), jnp.concatenate(t_plain)
    empty_biased = float(jnp.mean(jnp.max(t_biased, axis=(1, 2)) == 0))
    empty_plain = float(jnp.mean(jnp.max(t_plain, axis=(1, 2)) == 0))
    assert float(t_biased.mean()) > 2 * float(t_plain.mean())
    assert empty_biased < 0.5 * empty_plain


@pytest.mark.parametrize(
    ("photons", "read_noise"), [(1000.0, 0.0), (100.0, 0.0), (None, 0.02), (300.0, 0.01)]
)
def test_estimate_noise_recovers_a_known_poisson_gaussian_model(photons, read_noise):
    from scipy import ndimage

    from isojax.synth import estimate_noise

    rng = np.random.default_rng(1)
    clean = ndimage.gaussian_filter(rng.random((12, 96, 96)), (0, 3, 3))
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    clean = np.clip(2 * clean - 1, 0.02, None)  # fluorescence-like: structures on a dim background
    x = rng.poisson(clean * photons) / photons if photons else clean.copy()
    x = x + rng.normal(0, read_noise, x.shape)
    est_photons, est_read = estimate_noise(x)
    if photons is None:
        assert est_photons is None or est_photons > 1e4  # no shot noise detected
    else:
        assert est_photons == pytest.approx(photons, rel=0.15)
    # the read-noise intercept is the weakly determined part of the fit: absolute tolerance
    assert est_read == pytest.approx(read_noise, abs=0.006)
