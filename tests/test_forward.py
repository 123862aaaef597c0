"""The forward operator against independent references, closed forms and CSBDeep."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import ndimage

import isojax
from isojax.forward import FactoredPSF, factorize_psf, sample_positions

SCIPY_MODE = {"reflect": "mirror", "edge": "nearest", "zero": "constant"}


def reference_measure(x, psf, s, boundary="reflect"):
    """Blur with scipy (centre (n-1)//2 as fftconvolve 'same'), then np.interp at k*s."""
    n_l, n_a = psf.shape
    origin = ((n_l - 1) // 2 - n_l // 2, (n_a - 1) // 2 - n_a // 2)
    blurred = np.stack(
        [
            ndimage.convolve(im, psf, mode=SCIPY_MODE[boundary], origin=origin)
            for im in x.reshape(-1, *x.shape[-2:])
        ]
    ).reshape(x.shape)
    n = x.shape[-1]
    pos = np.arange(0, n - 1 + 1e-9, s)
    return np.apply_along_axis(lambda v: np.interp(pos, np.arange(n), v), -1, blurred)


def reference_upsample(y, n, s):
    pos = np.arange(y.shape[-1]) * s
    return np.apply_along_axis(lambda v: np.interp(np.arange(n), pos, v), -1, y)


def random_psf(rng, shape):
    p = rng.random(shape)
    return p / p.sum()


CASES = [
    # (x shape, psf shape, subsample): small axes use the full matrix, long ones the blocks
    ((3, 20, 37), (5, 7), 3.3),
    ((16, 40), (3, 4), 4.0),
    ((9, 50), (1, 9), 10.2),
    ((12, 31), (6, 5), 1.0),
    ((6, 300), (5, 7), 3.3),
    ((5, 400), (3, 17), 4.0),
    ((2, 4, 520), (1, 9), 10.2),
    ((4, 700), (3, 21), 2.5),
]


@pytest.mark.parametrize(("shape", "psf_shape", "s"), CASES)
def test_measure_matches_independent_reference(shape, psf_shape, s):
    rng = np.random.default_rng(0)
    x = rng.random(shape)
    psf = random_psf(rng, psf_shape)
    ref = reference_measure(x, psf, s)
    with jax.enable_x64(True):
        dense = np.asarray(isojax.measure(x, psf, s))
        factored = np.asarray(isojax.measure(x, factorize_psf(psf, rtol=0), s))
        # the same operator along the second-to-last axis, without a transpose by the caller
        swapped = np.asarray(isojax.measure(np.swapaxes(x, -1, -2), psf, s, axes=(-1, -2)))
    assert dense.shape == ref.shape == (*shape[:-1], len(sample_positions(shape[-1], s)))
    np.testing.assert_allclose(dense, ref, atol=1e-12)
    np.testing.assert_allclose(factored, ref, atol=1e-12)
    np.testing.assert_allclose(np.swapaxes(swapped, -1, -2), ref, atol=1e-12)


@pytest.mark.parametrize("boundary", ["reflect", "edge", "zero"])
@pytest.mark.parametrize("n", [41, 333])
def test_boundaries_match_scipy(boundary, n):
    rng = np.random.default_rng(1)
    x = rng.random((7, n))
    psf = random_psf(rng, (3, 9))
    with jax.enable_x64(True):
        y = np.asarray(isojax.measure(x, psf, 2.7, boundary=boundary))
    np.testing.assert_allclose(y, reference_measure(x, psf, 2.7, boundary), atol=1e-12)


@pytest.mark.parametrize("s", [1.0, 2.5, 4.0, 10.2, 3.7])
def test_upsample_linear_matches_np_interp(s):
    rng = np.random.default_rng(2)
    n = 97
    y = rng.random((3, len(sample_positions(n, s))))
    with jax.enable_x64(True):
        up = np.asarray(isojax.upsample(y, n, s))
        up0 = np.asarray(isojax.upsample(y.T, n, s, axis=0)).T
    np.testing.assert_allclose(up, reference_upsample(y, n, s), atol=1e-12)
    np.testing.assert_allclose(up0, up, atol=1e-12)


@pytest.mark.parametrize("s", [2.0, 2.5, 10.2, 3.7])
def test_cubic_upsample_reproduces_quadratics(s):
    # Keys' kernel (a=-0.5) is exact for polynomials of degree <= 2 away from the ends.
    n = 120
    pos = sample_positions(n, s)
    f = lambda z: 0.3 + 0.02 * z - 1e-4 * z**2  # noqa: E731
    with jax.enable_x64(True):
        up = np.asarray(isojax.upsample(f(pos), n, s, interpolation="cubic"))
    inner = slice(int(np.ceil(s)), int(pos[-2]))
    z = np.arange(n)
    np.testing.assert_allclose(up[inner], f(z)[inner], atol=1e-12)


def test_degrade_is_upsample_of_measure_and_keeps_shape_and_dtype():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.random((2, 24, 64)), jnp.float32)
    psf = random_psf(rng, (3, 5))
    y = isojax.degrade(x, psf, 3.2)
    assert y.shape == x.shape
    assert y.dtype == jnp.float32
    expected = isojax.upsample(isojax.measure(x, psf, 3.2), 64, 3.2)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    yb = isojax.degrade(x.astype(jnp.bfloat16), psf, 3.2)
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32), y, atol=2e-2)


def test_closed_forms_delta_psf_and_constant():
    # A delta PSF and a linear ramp: sampling then linear interpolation gives the ramp back
    # up to the last sample (and holds it after), for integer and non-integer factors.
    n = 64
    ramp = np.tile(np.arange(n, dtype=np.float64), (4, 1))
    delta = np.zeros((1, 3))
    delta[0, 1] = 1.0
    with jax.enable_x64(True):
        for s in (4.0, 10.2, 2.5):
            last = sample_positions(n, s)[-1]
            y = np.asarray(isojax.degrade(ramp, delta, s))
            np.testing.assert_allclose(y, np.minimum(ramp, last), atol=1e-12)
        # a normalised PSF leaves a constant image unchanged (reflect boundary)
        g = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
        psf = np.outer(g[3:10], g) / np.outer(g[3:10], g).sum()
        np.testing.assert_allclose(isojax.degrade(np.full((20, n), 7.0), psf, 3.3), 7.0, atol=1e-12)


def test_sample_positions_physical_grid():
    np.testing.assert_allclose(sample_positions(10, 4.0), [0, 4, 8])
    np.testing.assert_allclose(sample_positions(510, 10.2), np.arange(50) * 10.2)
    assert len(sample_positions(512, 10.2)) == 51  # 510 < 511
    np.testing.assert_array_equal(sample_positions(512, 4.0, mode="csbdeep")[[0, -1]], [0, 511])


def test_factorize_psf():
    g1 = np.exp(-0.5 * (np.arange(-4, 5) / 1.3) ** 2)
    g2 = np.exp(-0.5 * (np.arange(-6, 7) / 2.1) ** 2)
    sep = np.outer(g1, g2) / np.outer(g1, g2).sum()
    f = factorize_psf(sep)
    assert isinstance(f, FactoredPSF)
    assert f.rank == 1
    assert f.shape == sep.shape
    np.testing.assert_allclose(f.dense(), sep, atol=1e-7)
    rng = np.random.default_rng(4)
    p = random_psf(rng, (5, 7))
    assert factorize_psf(p, rtol=0).rank == 5
    loose = factorize_psf(p, rtol=0.2)
    err = np.linalg.norm(np.asarray(loose.dense()) - p) / np.linalg.norm(p)
    assert loose.rank < 5
    assert err <= 0.2
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(factorize_psf)(p)


# ---------------------------------------------------------------------------------------
# CSBDeep compatibility, against the real package


def csbdeep_distort(img, psf, s):
    from csbdeep.data.transform import anisotropic_distortions

    t = anisotropic_distortions(subsample=s, psf=psf, psf_axes="YX", subsample_axis="X")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, _, _, _ = next(t.generator(iter([(img, img, "YX", None)])))
    return x


@pytest.mark.parametrize(
    ("n", "s", "psf_shape"),
    [
        (64, 4.0, (5, 7)),
        (60, 3.0, (3, 3)),
        (102, 10.2, (7, 9)),
        (512, 4.0, (17, 17)),
        (100, 2.5, (4, 6)),
        (90, 1.0, (3, 5)),
    ],
)
def test_csbdeep_mode_matches_csbdeep(n, s, psf_shape):
    pytest.importorskip("csbdeep")
    rng = np.random.default_rng(5)
    img = (rng.random((24, n)) * 100).astype(np.float32)
    psf = random_psf(rng, psf_shape).astype(np.float32)
    ref = csbdeep_distort(img, psf, s)
    y = np.asarray(isojax.degrade(img, psf, s, mode="csbdeep"))
    assert y.shape == ref.shape
    assert np.max(np.abs(y - ref)) <= 1e-4 * np.ptp(ref)


def test_csbdeep_mode_refuses_lengths_csbdeep_would_crop():
    with pytest.raises(ValueError, match="whole multiple"):
        isojax.degrade(np.ones((4, 512)), np.ones((1, 3)) / 3, 10.2, mode="csbdeep")
    with pytest.raises(ValueError, match="linear"):
        isojax.degrade(
            np.ones((4, 64)), np.ones((1, 3)) / 3, 4.0, mode="csbdeep", interpolation="cubic"
        )


def test_physical_mode_differs_from_csbdeep_where_documented():
    # CSBDeep pins its last sample to the end of the axis: at factor 4 on 64 px it samples
    # 16 points spaced 63/15 = 4.2 px apart, isojax at 0, 4, ..., 60.
    assert not np.allclose(sample_positions(64, 4.0, mode="csbdeep"), sample_positions(64, 4.0))


# ---------------------------------------------------------------------------------------
# Differentiability and transformations


@pytest.mark.parametrize("s", [2.0, 2.5])
def test_gradients_in_x_and_psf(s):
    rng = np.random.default_rng(6)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.random((5, 14)))
        psf = jnp.asarray(random_psf(rng, (3, 5)))
        # second order forward over forward, first order reverse (reverse over reverse was
        # 80% of the test's time, 20-30 s; it composes the two checked here)
        check_grads(lambda x, p: isojax.degrade(x, p, s), (x, psf), order=2, modes=["fwd"])
        check_grads(lambda x, p: isojax.degrade(x, p, s), (x, psf), order=1, modes=["rev"])
        check_grads(lambda p: isojax.measure(x, p, s, boundary="zero"), (psf,), order=1)
        fac = factorize_psf(np.asarray(psf), rtol=0)
        check_grads(lambda f: isojax.degrade(x, f, s, interpolation="cubic"), (fac,), order=1)


def test_gradient_in_psf_on_blocked_path_matches_finite_differences():
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.random((3, 260)))
        psf = jnp.asarray(random_psf(rng, (3, 9)))
        check_grads(lambda p: isojax.measure(x, p, 4.0), (psf,), order=1, modes=["rev"])


def test_jit_vmap_and_grad_agree_with_loops():
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.random((4, 12, 40)), jnp.float32)
    psfs = jnp.asarray(np.stack([random_psf(rng, (3, 5)) for _ in range(4)]), jnp.float32)
    batched = jax.vmap(lambda a, p: isojax.degrade(a, p, 3.0))(x, psfs)
    looped = jnp.stack([isojax.degrade(a, p, 3.0) for a, p in zip(x, psfs, strict=True)])
    np.testing.assert_allclose(batched, looped, rtol=1e-6, atol=1e-7)

    loss = lambda p, a: jnp.sum(isojax.degrade(a, p, 3.0) ** 2)  # noqa: E731
    grads = jax.vmap(jax.grad(loss))(psfs, x)
    loop_grads = jnp.stack([jax.grad(loss)(p, a) for p, a in zip(psfs, x, strict=True)])
    np.testing.assert_allclose(grads, loop_grads, rtol=1e-5, atol=1e-7)


def test_second_call_does_not_recompile():
    rng = np.random.default_rng(9)
    psf = jnp.asarray(random_psf(rng, (3, 5)), jnp.float32)
    x = jnp.asarray(rng.random((2, 16, 48)), jnp.float32)
    isojax.degrade(x, psf, 2.5).block_until_ready()
    before = isojax.forward._degrade_jit._cache_size()
    isojax.degrade(x + 1, psf * 1.0, 2.5).block_until_ready()
    assert isojax.forward._degrade_jit._cache_size() == before


# ---------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subsample": 0.5}, "subsample must be a finite number >= 1"),
        ({"subsample": float("nan")}, "finite"),
        ({"psf": np.ones((3, 3, 3)) / 27}, "isojax psf axial"),
        ({"psf": np.ones(5) / 5}, r"v\[None, :\]"),
        ({"x": np.ones(16)}, "at least 2 axes"),
        ({"boundary": "wrap"}, "boundary must be one of"),
        ({"interpolation": "quintic"}, "interpolation must be one of"),
        ({"mode": "scipy"}, "mode must be one of"),
        ({"axes": (-1, -1)}, "must differ"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(kwargs, match):
    args = {"x": np.ones((8, 16)), "psf": np.ones((1, 3)) / 3, "subsample": 2.0}
    args.update(kwargs)
    x, psf, s = args.pop("x"), args.pop("psf"), args.pop("subsample")
    with pytest.raises(ValueError, match=match):
        isojax.degrade(x, psf, s, **args)


def test_traced_subsample_is_refused():
    with pytest.raises(ValueError, match="static"):
        jax.jit(lambda s: isojax.degrade(jnp.ones((4, 8)), jnp.ones((1, 1)), s))(2.0)


# ---------------------------------------------------------------------------------------
# Noise


def test_poisson_and_gaussian_noise_statistics():
    key = jax.random.key(0)
    x = jnp.full((200_000,), 3.0)
    photons = 10.0
    y = jax.jit(lambda k, a: isojax.poisson_noise(k, a, photons=photons))(key, x)
    # Poisson(30)/10: mean 3, variance 30/100; tolerances are 6 standard errors
    n = x.size
    assert abs(float(y.mean()) - 3.0) < 6 * np.sqrt(0.3 / n)
    assert abs(float(y.var()) - 0.3) < 6 * 0.3 * np.sqrt(2 / n) * 1.2
    np.testing.assert_allclose(
        np.asarray(y * photons), np.round(np.asarray(y * photons)), atol=1e-4
    )
    g = isojax.gaussian_noise(key, x, sigma=0.5)
    assert abs(float(g.std()) - 0.5) < 6 * 0.5 / np.sqrt(2 * n)
    both = isojax.add_noise(key, x, photons=photons, sigma=0.5)
    assert abs(float(both.var()) - (0.3 + 0.25)) < 0.02
    np.testing.assert_array_equal(both, isojax.add_noise(key, x, photons=photons, sigma=0.5))
    assert not np.array_equal(
        both, isojax.add_noise(jax.random.key(1), x, photons=photons, sigma=0.5)
    )


def test_poisson_noise_gradient_is_straight_through():
    key = jax.random.key(3)
    g = jax.grad(lambda a: jnp.sum(isojax.poisson_noise(key, a, photons=5.0)))(jnp.full((10,), 2.0))
    np.testing.assert_allclose(g, 1.0)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_poisson_noise_accepts_any_key_implementation(impl):
    # jax.random.poisson itself supports threefry keys only; training uses faster rbg keys
    key = jax.random.key(5, impl=impl)
    y = jax.jit(lambda k: isojax.poisson_noise(k, jnp.full((50_000,), 2.0), photons=4.0))(key)
    assert abs(float(y.mean()) - 2.0) < 6 * np.sqrt(0.5 / 50_000)
    np.testing.assert_array_equal(
        y, isojax.poisson_noise(key, jnp.full((50_000,), 2.0), photons=4.0)
    )


# ---------------------------------------------------------------------------------------
# The dense PSF in the lateral Fourier domain (forward._fourier) and the automatic factoring

FOURIER_CASES = [
    # (x shape, psf shape, subsample, boundary): all take the Fourier path (3+ PSF rows)
    ((2, 30, 300), (17, 17), 4.0, "reflect"),
    ((3, 24, 260), (5, 9), 10.2, "edge"),
    ((20, 77), (3, 4), 2.5, "zero"),
    ((2, 9, 61), (6, 7), 3.3, "reflect"),
    ((16, 40), (4, 5), 1.0, "reflect"),
]


def _row_by_row(monkeypatch, x, psf, s, boundary, axes=(-2, -1)):
    """The operator with the Fourier path switched off (a fresh trace: the PSF is traced)."""
    with monkeypatch.context() as m:
        m.setattr(isojax.forward._fourier, "plan", lambda *a: None)
        f = jax.jit(
            lambda x, p: isojax.forward._measure(
                x, p, s, boundary=boundary, axes=axes, mode="physical", precision="highest"
            )
        )
        return np.asarray(f(x, psf))


@pytest.mark.parametrize(("shape", "psf_shape", "s", "boundary"), FOURIER_CASES)
def test_fourier_dense_path_matches_reference_and_row_path(
    monkeypatch, shape, psf_shape, s, boundary
):
    rng = np.random.default_rng(10)
    x = rng.random(shape)
    psf = random_psf(rng, psf_shape)
    n_lat, n = shape[-2:]
    assert isojax.forward._fourier.plan(n, n_lat, s, *psf_shape, "physical") is not None
    under_jit = jax.jit(lambda x, p: isojax.measure(x, p, s, boundary=boundary))
    with jax.enable_x64(True):
        got = np.asarray(under_jit(x, psf))
        swapped = np.asarray(
            jax.jit(lambda x, p: isojax.measure(x, p, s, boundary=boundary, axes=(-1, -2)))(
                np.swapaxes(x, -1, -2), psf
            )
        )
    np.testing.assert_allclose(got, reference_measure(x, psf, s, boundary), atol=1e-12)
    np.testing.assert_allclose(np.swapaxes(swapped, -1, -2), got, atol=1e-12)
    # float32: the Fourier path against the row-by-row product it replaces
    x32, p32 = jnp.asarray(x, jnp.float32), jnp.asarray(psf, jnp.float32)
    rows = _row_by_row(monkeypatch, x32, p32, s, boundary)
    np.testing.assert_allclose(np.asarray(under_jit(x32, p32)), rows, rtol=2e-6, atol=2e-6)


def test_fourier_dense_path_under_vmap_and_its_gradients(monkeypatch):
    rng = np.random.default_rng(11)
    xs = jnp.asarray(rng.random((3, 10, 90)), jnp.float32)
    psfs = jnp.asarray(np.stack([random_psf(rng, (5, 7)) for _ in range(3)]), jnp.float32)
    fn = lambda a, p: isojax.degrade(a, p, 4.0)  # noqa: E731
    batched = jax.jit(jax.vmap(fn))(xs, psfs)
    looped = np.stack([np.asarray(jax.jit(fn)(a, p)) for a, p in zip(xs, psfs, strict=True)])
    np.testing.assert_allclose(batched, looped, rtol=1e-6, atol=1e-6)
    # the gradient in the PSF against the row-by-row path's (an independent formulation)
    loss = lambda p, a: jnp.sum(jnp.sin(3 * isojax.measure(a, p, 4.0)))  # noqa: E731
    fourier = jax.jit(jax.grad(loss))(psfs[0], xs[0])
    with monkeypatch.context() as m:
        m.setattr(isojax.forward._fourier, "plan", lambda *a: None)
        rows = jax.jit(jax.grad(lambda p, a: loss(p, a) + 0.0))(psfs[0], xs[0])
    np.testing.assert_allclose(fourier, rows, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_fourier_gradient_in_psf_of_any_rank(rank):
    # rank-deficient PSFs have repeated (zero) singular values: the gradient must not care
    rng = np.random.default_rng(12)
    with jax.enable_x64(True):
        u, v = rng.random((rank, 5)), rng.random((rank, 7))
        p = np.einsum("rl,ra->la", u, v)
        psf = jnp.asarray(p / p.sum())
        x = jnp.asarray(rng.random((2, 8, 70)))
        f = jax.jit(lambda p: isojax.degrade(x, p, 2.5))
        check_grads(f, (psf,), order=1, modes=["fwd", "rev"])
        if rank == 1:  # second order in the PSF (the operator is linear in x)
            x_small = x[:1, :4]
            check_grads(jax.jit(lambda p: isojax.measure(x_small, p, 10.2)), (psf,), order=2,
                        modes=["rev"])


def test_concrete_dense_psf_is_factored_outside_jit_when_its_rank_is_low():
    rng = np.random.default_rng(13)
    g = np.exp(-0.5 * (np.arange(-8, 9) / 2.0) ** 2)
    separable = np.outer(g, g) / np.outer(g, g).sum()
    auto = isojax.forward._auto_factor(separable, jnp.float32)
    assert isinstance(auto, FactoredPSF)
    assert auto.rank == 1
    full = random_psf(rng, (17, 17))
    assert isojax.forward._auto_factor(full, jnp.float32) is full
    seen = []  # under jit the PSF is traced: it stays dense (the Fourier path)
    jax.jit(lambda p: seen.append(isojax.forward._auto_factor(p, jnp.float32) is p) or p)(full)
    assert seen == [True]
    # the automatically factored operator equals the dense one (Fourier path, under jit)
    x = jnp.asarray(rng.random((2, 40, 200)), jnp.float32)
    outside = isojax.degrade(x, separable, 10.2)
    inside = jax.jit(lambda x, p: isojax.degrade(x, p, 10.2))(x, separable)
    np.testing.assert_allclose(outside, inside, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# jaxlib 0.10.2 miscompiles vmapped matrix-vector products followed by a reduction on CPU
# at large sizes (fixed after 0.10.2). isojax's axial stage is such a product: check it at
# realistic sizes against NumPy, so that a jaxlib that gets it wrong fails here.


def test_vmapped_band_products_then_sums_match_numpy():
    rng = np.random.default_rng(14)
    n, s = 512, 4.0
    profiles = rng.random((24, 17)).astype(np.float32)
    a = isojax.forward._band_matrices(jnp.asarray(profiles), n, s, "reflect", "physical")
    v = rng.random((24, 512)).astype(np.float32)
    a64, v64 = np.asarray(a, np.float64), v.astype(np.float64)
    expected = np.einsum("bkn,bn->bk", a64, v64)
    matvec = jax.vmap(jnp.dot)
    total = jax.jit(lambda a, v: jnp.sum(matvec(a, v), axis=0))(a, v)
    np.testing.assert_allclose(total, expected.sum(0), rtol=1e-5)
    grand = jax.jit(lambda a, v: jnp.sum(matvec(a, v)))(a, v)
    np.testing.assert_allclose(grand, expected.sum(), rtol=1e-5)
    # the same pattern through the public operator: vmap over images, then a sum
    xs = rng.random((8, 64, 512)).astype(np.float32)
    fac = factorize_psf(np.outer(profiles[0, :5], profiles[1]), rtol=0)
    summed = jax.jit(lambda xs: jnp.sum(jax.vmap(lambda im: isojax.measure(im, fac, s))(xs), 0))
    ref = reference_measure(xs.astype(np.float64), np.asarray(fac.dense(), np.float64), s)
    np.testing.assert_allclose(summed(jnp.asarray(xs)), ref.sum(0), rtol=2e-5, atol=1e-4)
