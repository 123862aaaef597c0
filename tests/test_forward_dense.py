"""A dense PSF under ``jit``: the traceable SVD switch and the strided-slice stages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import isojax
from isojax.forward import _operator
from tests.test_forward import random_psf, reference_measure


def _psf_of_rank(rng, rank, shape=(5, 7)):
    if rank is None:  # full rank
        return random_psf(rng, shape)
    g = np.exp(-0.5 * (np.arange(shape[0]) - shape[0] // 2) ** 2)
    u = np.stack([g] + [rng.random(shape[0]) for _ in range(rank - 1)])
    v = rng.random((rank, shape[1]))
    p = np.einsum("rl,ra->la", u, v)
    return p / p.sum()


@pytest.mark.parametrize(
    ("rank", "branch", "shape", "s"),
    [
        (1, 0, (3, 9, 70), 4.0),
        (2, 1, (12, 260), 10.2),
        (None, 2, (7, 50), 2.5),
        (2, 1, (7, 50), 2.5),
    ],
)
def test_traced_dense_psf_takes_its_rank_and_equals_the_reference(rank, branch, shape, s):
    rng = np.random.default_rng(20)
    x = rng.random(shape)
    psf = _psf_of_rank(rng, rank)
    with jax.enable_x64(True):
        assert int(jax.jit(lambda p: _operator._low_rank_split(p)[0])(psf)) == branch
        got = jax.jit(lambda a, p: isojax.measure(a, p, s))(x, psf)
        # the lateral axis last: the axial stage is strided slices, not a matrix product
        swapped = jax.jit(lambda a, p: isojax.measure(a, p, s, axes=(-1, -2)))(
            np.swapaxes(x, -1, -2), psf
        )
    want = reference_measure(x, psf, s)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(np.swapaxes(swapped, -1, -2), want, atol=1e-12)
    # float32: the switch's truncation (1e-6 of the PSF's norm) stays at rounding level
    got32 = jax.jit(lambda a, p: isojax.measure(a, p, s))(
        jnp.asarray(x, jnp.float32), jnp.asarray(psf, jnp.float32)
    )
    np.testing.assert_allclose(got32, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("boundary", ["reflect", "edge", "zero"])
def test_factored_psf_on_either_axis_order_matches_the_reference(boundary):
    rng = np.random.default_rng(21)
    x = rng.random((2, 6, 90))
    psf = random_psf(rng, (5, 9))
    fac = isojax.factorize_psf(psf, rtol=0)
    with jax.enable_x64(True):
        fac = isojax.forward.FactoredPSF(*(jnp.asarray(a, jnp.float64) for a in fac))
        for s in (3.3, 10.2, 1.0):
            got = isojax.measure(np.swapaxes(x, -1, -2), fac, s, boundary=boundary, axes=(-1, -2))
            want = reference_measure(x, psf, s, boundary)
            np.testing.assert_allclose(np.swapaxes(got, -1, -2), want, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2, None])
def test_gradients_through_the_switch_match_finite_differences_and_the_exact_path(
    monkeypatch, rank
):
    # a rank-1 PSF has 16 zero singular values: differentiating its SVD would give NaNs
    rng = np.random.default_rng(22)
    with jax.enable_x64(True):
        psf = jnp.asarray(_psf_of_rank(rng, rank))
        x = jnp.asarray(rng.random((2, 8, 70)))
        axes = (-1, -2) if rank == 1 else (-2, -1)
        f = jax.jit(lambda a, p: isojax.degrade(a, p, 2.5, axes=axes))
        check_grads(f, (x, psf), order=1, modes=["fwd", "rev"])
        loss = lambda p, a: jnp.sum(jnp.sin(3 * isojax.degrade(a, p, 4.0)))  # noqa: E731
        got = jax.jit(jax.grad(loss, argnums=(0, 1)))(psf, x)
        tangent = jax.jvp(lambda p: isojax.measure(x, p, 4.0), (psf,), (psf[::-1],))[1]
        with monkeypatch.context() as m:
            m.setattr(_operator, "_TRACED_MAX_RANK", 0)  # the exact dense path alone
            exact = jax.jit(jax.grad(lambda p, a: loss(p, a) + 0.0, argnums=(0, 1)))(psf, x)
            exact_tangent = jax.jvp(
                lambda p: isojax.measure(x, p, 4.0) + 0.0, (psf,), (psf[::-1],)
            )[1]
        for a, b in zip(got, exact, strict=True):
            assert np.all(np.isfinite(a))
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(tangent, exact_tangent, rtol=1e-9, atol=1e-12)


def test_switch_under_vmap_over_psfs_of_different_ranks():
    rng = np.random.default_rng(23)
    x = jnp.asarray(rng.random((3, 6, 60)), jnp.float32)
    psfs = jnp.asarray(np.stack([_psf_of_rank(rng, r) for r in (1, 2, None)]), jnp.float32)
    fn = lambda a, p: isojax.degrade(a, p, 4.0)  # noqa: E731
    batched = jax.jit(jax.vmap(fn))(x, psfs)
    looped = np.stack([np.asarray(jax.jit(fn)(a, p)) for a, p in zip(x, psfs, strict=True)])
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-6)
    loss = lambda p, a: jnp.sum(fn(a, p) ** 2)  # noqa: E731
    grads = jax.jit(jax.vmap(jax.grad(loss)))(psfs, x)
    loop = np.stack([np.asarray(jax.grad(loss)(p, a)) for p, a in zip(psfs, x, strict=True)])
    np.testing.assert_allclose(grads, loop, rtol=1e-4, atol=1e-6)
