"""Whole-stack prediction: Z placement, orientation, tiling, padding, batching, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from scipy import ndimage
from scipy.signal import correlate2d

import isojax
import isojax.predict.core as predict_mod
from isojax.predict import predict_stack, upsample_z, upsampled_length


def identity(b):
    return b


def blur5(b):
    """A fixed 5x5 "network" (receptive-field radius 2 px), zero boundary, any image size."""
    k = jnp.outer(jnp.arange(1.0, 6.0), jnp.array([1.0, 3.0, 2.0, 5.0, 4.0]))
    k = k / k.sum()  # not symmetric, so a flipped or transposed image would show
    out = lax.conv_general_dilated(
        b[:, None], k[None, None], (1, 1), "SAME", precision=lax.Precision.HIGHEST
    )
    return out[:, 0]


def reference_upsample_z(stack, s):
    """np.interp on the physical grid: slice k at k * s, output slice j at j."""
    n_up = upsampled_length(stack.shape[0], s)
    pos = np.arange(stack.shape[0]) * s
    return np.apply_along_axis(lambda v: np.interp(np.arange(n_up), pos, v), 0, stack)


@pytest.fixture
def stack():
    """Non-negative (5, 6, 7) stack: no size divisible by 4."""
    return np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Z upsampling


@pytest.mark.parametrize(("n_z", "s", "expected"), [(6, 3.5, 18), (51, 10.2, 511), (2, 1.0, 2)])
def test_upsampled_length(n_z, s, expected):
    assert upsampled_length(n_z, s) == expected


@pytest.mark.parametrize(("s", "k"), [(3.5, 2), (3.5, 3), (10.2, 3), (10.2, 4)])
def test_bright_plane_lands_on_its_physical_slice(s, k):
    # k * s: 7, 10.5 (a tie: both neighbours equal), 30.6, 40.8
    n_z = 6
    x = np.zeros((n_z, 2, 3), np.float32)
    x[k] = 1.0
    up = np.asarray(upsample_z(x, s))
    assert up.shape == (upsampled_length(n_z, s), 2, 3)
    profile = up[:, 0, 0]
    peak = k * s
    assert profile.argmax() in {int(np.floor(peak + 0.5)), int(np.ceil(peak - 0.5))}
    np.testing.assert_allclose(
        profile, np.clip(1 - np.abs(np.arange(len(profile)) - peak) / s, 0, 1), atol=1e-6
    )
    # CSBDeep's zoom pins the last slice to the end of its grid and puts the plane elsewhere
    zoomed = ndimage.zoom(x[:, 0, 0], s, order=1)
    if k == 4:
        assert abs(int(zoomed.argmax()) - round(peak)) >= 2


@pytest.mark.parametrize("s", [1.0, 3.5, 10.2, 2.0**0.5])
def test_upsample_z_matches_interp_and_runs_under_jit(stack, s):
    ref = reference_upsample_z(stack, s)
    np.testing.assert_allclose(upsample_z(stack, s), ref, atol=1e-6)
    jitted = jax.jit(upsample_z, static_argnames=("subsample", "interpolation"))
    np.testing.assert_allclose(jitted(stack, subsample=s), ref, atol=1e-6)


def test_upsample_z_never_extrapolates():
    x = np.array([0.0, 1.0, 5.0], np.float32).reshape(3, 1, 1)
    up = np.asarray(upsample_z(x, 3.4))  # last measured slice at 6.8: output ends at 6
    assert up.shape[0] == 7
    assert up.max() <= 5.0
    np.testing.assert_allclose(up[-1, 0, 0], 1.0 + 4.0 * (6 - 3.4) / 3.4, rtol=1e-6)


# ----------------------------------------------------------------------------------------
# predict_stack


@pytest.mark.parametrize("fuse", ["mean", "geometric", "xz", "yz"])
@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_identity_returns_the_upsampled_stack(stack, fuse, interpolation):
    s = 3.5
    expected = isojax.upsample(
        stack, upsampled_length(5, s), s, axis=0, interpolation=interpolation
    )
    expected = np.asarray(expected)
    if fuse == "geometric":
        expected = np.maximum(expected, 0)  # cubic may undershoot; the geometric mean clips
    out = predict_stack(
        stack, identity, subsample=s, fuse=fuse, interpolation=interpolation, normalization=None
    )
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    # with the default percentile normalisation: undone to float precision; the geometric
    # mean clips what lies below the 1st percentile (negative once normalised) to it
    out = predict_stack(stack, identity, subsample=s, fuse=fuse, interpolation=interpolation)
    if fuse == "geometric":
        expected = np.maximum(expected, np.float32(np.percentile(stack, 1.0)))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_axial_axis_is_last_and_increasing():
    """A network that multiplies by a ramp along its last axis scales Z, not x or y."""
    x = np.ones((5, 6, 7), np.float32)
    s = 2.5  # 11 output slices

    def ramp_axial(b):
        return b * jnp.arange(1, b.shape[-1] + 1, dtype=b.dtype)

    for fuse in ("mean", "xz", "yz"):
        out = predict_stack(x, ramp_axial, subsample=s, fuse=fuse, multiple=1, normalization=None)
        expected = np.broadcast_to(np.arange(1.0, 12.0)[:, None, None], out.shape)
        np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_lateral_axis_of_each_view():
    """XZ slices have x as their lateral axis, YZ slices y."""
    x = np.ones((3, 6, 7), np.float32)

    def ramp_lateral(b):
        return b * jnp.arange(1, b.shape[1] + 1, dtype=b.dtype)[:, None]

    kw = {"subsample": 2.0, "multiple": 1, "normalization": None}
    out = predict_stack(x, ramp_lateral, fuse="xz", **kw)
    np.testing.assert_allclose(out, np.broadcast_to(np.arange(1.0, 8.0), out.shape))
    out = predict_stack(x, ramp_lateral, fuse="yz", **kw)
    np.testing.assert_allclose(out, np.broadcast_to(np.arange(1.0, 7.0)[:, None], out.shape))
    out = predict_stack(x, ramp_lateral, fuse="mean", **kw)
    mean = (np.arange(1.0, 8.0)[None, :] + np.arange(1.0, 7.0)[:, None]) / 2
    np.testing.assert_allclose(out, np.broadcast_to(mean, out.shape), rtol=1e-6)


def test_fusion_rules():
    x = np.ones((3, 4, 4), np.float32)
    kw = {"subsample": 2.0, "normalization": None}
    np.testing.assert_allclose(predict_stack(x, lambda b: b - 3.0, fuse="mean", **kw), -2.0)
    # geometric mean clips negative values to 0 before the product
    np.testing.assert_array_equal(predict_stack(x, lambda b: b - 3.0, fuse="geometric", **kw), 0.0)

    def by_view(b):  # padded XZ slices are (x, z) = (8, 8), YZ slices (y, z) = (4, 8)
        return b * (2.0 if b.shape[1] == 8 else 8.0)  # 2 in XZ, 8 in YZ

    y = np.ones((3, 4, 8), np.float32)
    np.testing.assert_allclose(predict_stack(y, by_view, fuse="geometric", **kw), 4.0)
    np.testing.assert_allclose(predict_stack(y, by_view, fuse="mean", **kw), 5.0)


def test_normalisation_maps_percentiles_to_0_and_1_and_back(stack):
    lo, hi = np.percentile(stack, (1.0, 99.8))
    np.testing.assert_allclose(predict_stack(stack, jnp.zeros_like, subsample=2.0), lo, rtol=1e-6)
    np.testing.assert_allclose(predict_stack(stack, jnp.ones_like, subsample=2.0), hi, rtol=1e-6)
    lo, hi = np.percentile(stack, (3.0, 99.0))
    out = predict_stack(stack, jnp.ones_like, subsample=2.0, normalization=(3, 99))
    np.testing.assert_allclose(out, hi, rtol=1e-6)


def test_probabilistic_model_uses_the_mean(stack):
    out = predict_stack(stack, lambda b: (b, jnp.ones_like(b)), subsample=3.5, normalization=None)
    np.testing.assert_array_equal(
        out, predict_stack(stack, identity, subsample=3.5, normalization=None)
    )


@pytest.mark.parametrize(("tile", "overlap"), [(8, 4), ((8, 12), 4), (12, 8), ((4, 8), 0)])
def test_tiling_equals_no_tiling(tile, overlap):
    x = np.random.default_rng(1).random((6, 21, 18)).astype(np.float32)
    kw = {"subsample": 3.5, "normalization": None}
    seen = []
    whole = predict_stack(x, blur5, **kw)
    if overlap == 0:  # tiles abutting: the blur sees the tiles' edges
        assert not np.allclose(predict_stack(x, blur5, tile=tile, overlap=0, **kw), whole)
        return
    tiled = predict_stack(
        x, blur5, tile=tile, overlap=overlap, progress=lambda d, t: seen.append((d, t)), **kw
    )
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)
    assert seen[-1][0] == seen[-1][1] > 21 + 18  # more than one tile per slice
    np.testing.assert_array_equal(
        predict_stack(x, identity, tile=tile, overlap=overlap, **kw),
        predict_stack(x, identity, **kw),
    )


@pytest.mark.parametrize(
    ("shape", "pixels", "expected"),
    [
        ((10, 40, 40), 40 * 12, None),  # padded slices (40, 12) fit: whole slices
        ((10, 40, 40), 20 * 12, (20, None)),  # the axial axis fits in a square: cut laterally
        ((10, 40, 40), 21 * 12, (20, None)),  # rounded down to the multiple
        ((40, 12, 12), 12 * 20, (None, 20)),  # the lateral axis fits: cut axially
        ((40, 40, 40), 17 * 17, (16, 16)),  # neither: square tiles
        ((40, 40, 40), 3 * 3, (16, 16)),  # tiny budget: the smallest useful tile (4 x margin)
        ((10, 40, 8), 20 * 12, (20, None)),  # the widest view (XZ, x = 40 lateral) decides
    ],
)
def test_automatic_tiles_fit_the_budget(shape, pixels, expected):
    bpp = 1024
    got = predict_mod._auto_tile(
        shape, [1, 2], None, budget=pixels * bpp, bytes_per_pixel=bpp, margin=4, multiple=4
    )
    assert got == expected
    given = (8, 8)
    assert predict_mod._auto_tile(shape, [1, 2], given, budget=1, bytes_per_pixel=bpp, margin=4,
                                  multiple=4) == given


def test_automatic_tiles_are_balanced():
    # 476 px fits the budget but needs two tiles for 512 px (overlap 96); two of 304 suffice
    tile = predict_mod._auto_tile(
        (63, 512, 512), [1, 2], None, budget=476 * 64, bytes_per_pixel=1, margin=48, multiple=4
    )
    assert tile == (304, None)
    _, starts, _ = predict_mod._tiles_1d(512, 304, 48, 4)
    assert len(starts) == 2
    assert len(predict_mod._tiles_1d(512, 300, 48, 4)[1]) == 3  # and 304 is the smallest


def test_slices_over_the_memory_budget_are_tiled_automatically():
    # padded XZ/YZ slices are (24, 24) (21 -> 24 lateral, upsampled z 18 -> 24 axial): a
    # budget of 16 x 24 pixels per image cuts them into tiles, which give the whole-slice
    # result since the blur reaches 2 px and the tiles keep 4 px from inner edges
    x = np.random.default_rng(1).random((6, 21, 21)).astype(np.float32)
    kw = {"subsample": 3.5, "normalization": None, "overlap": 8, "batch_size": 2}
    whole, seen = predict_stack(x, blur5, **kw), []
    budget = 16 * 24 * 1024 * predict_mod._in_flight()
    tiled = predict_stack(x, blur5, memory_budget=budget, progress=lambda d, t: seen.append(t),
                          **kw)
    assert seen[-1] > 2 * 21  # more than one tile per slice
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)


def test_padding_to_multiples_does_not_change_results(stack):
    kw = {"subsample": 3.5, "normalization": None}

    def pointwise(b):
        return jnp.tanh(2 * b) + b

    np.testing.assert_allclose(
        predict_stack(stack, pointwise, multiple=4, **kw),
        predict_stack(stack, pointwise, multiple=1, **kw),
        rtol=1e-6,
    )
    # a convolution differs only within its reach (2 px) of the borders
    x = np.random.default_rng(2).random((5, 13, 11)).astype(np.float32)
    a = predict_stack(x, blur5, multiple=8, **kw)
    b = predict_stack(x, blur5, multiple=1, **kw)
    np.testing.assert_allclose(a[2:-2, 2:-2, 2:-2], b[2:-2, 2:-2, 2:-2], rtol=1e-5, atol=1e-6)


def test_batches_compile_once_and_match_any_batch_size():
    traces = []

    def counted(b):
        traces.append(b.shape)
        return blur5(b)

    x = np.random.default_rng(3).random((4, 7, 7)).astype(np.float32)
    kw = {"subsample": 2.0, "normalization": None}
    ref = predict_stack(x, blur5, batch_size=1, **kw)
    out = predict_stack(x, counted, batch_size=3, **kw)  # 7 slices: 3 + 3 + 1 (filled up)
    assert traces == [(3, 8, 8)]  # one shape for both views (y == x), the last batch too
    predict_stack(x, counted, batch_size=3, **kw)
    assert len(traces) == 1  # a second call reuses the compilation
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    # batch size from the memory budget, shared by the batches in flight: 8 x 8 images at
    # 1 KiB per pixel, 2 images per batch
    traces.clear()
    budget = predict_mod._in_flight() * 2 * 64 * 1024 + 1
    out = predict_stack(x, counted, memory_budget=budget, **kw)
    assert traces == [(2, 8, 8)]
    np.testing.assert_allclose(out, ref, rtol=1e-6)


@pytest.mark.parametrize("fuse", ["mean", "geometric", "xz"])
@pytest.mark.parametrize("tile", [None, (8, 12)])
def test_batches_in_flight_do_not_change_results(monkeypatch, fuse, tile):
    # 9 XZ and 10 YZ slices (times the tiles) in batches of 4: the last batch of each view is
    # partial, and with 2 or 3 batches in flight they finish out of order
    x = np.random.default_rng(4).random((5, 9, 10)).astype(np.float32)
    kw = {"subsample": 3.0, "fuse": fuse, "tile": tile, "overlap": 4, "batch_size": 4}
    outs, progress = [], []
    for n in (1, 2, 3):
        monkeypatch.setattr(predict_mod, "_CPU_IN_FLIGHT", n)
        seen: list[tuple[int, int]] = []
        outs.append(predict_stack(x, blur5, progress=lambda d, t, s=seen: s.append((d, t)), **kw))
        progress.append(seen)
    for out, seen in zip(outs[1:], progress[1:], strict=True):
        np.testing.assert_array_equal(out, outs[0])
        assert seen == progress[0]  # batches are stored in order
    # full batches of one image give the same result as the zero-filled partial batches
    np.testing.assert_allclose(
        predict_stack(x, blur5, **{**kw, "batch_size": 1}), outs[0], rtol=1e-6, atol=1e-7
    )


def test_an_error_in_a_batch_in_flight_is_raised(monkeypatch):
    monkeypatch.setattr(predict_mod, "_CPU_IN_FLIGHT", 2)
    x = np.random.default_rng(5).random((3, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="shape it was given"):
        predict_stack(x, lambda b: b[:, :4], subsample=2.0, batch_size=1, normalization=None)


def test_progress_counts_slices_of_both_views(stack):
    seen = []
    predict_stack(
        stack, identity, subsample=2.0, batch_size=4, progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(4, 13), (6, 13), (10, 13), (13, 13)]  # 6 XZ slices, then 7 YZ slices


# ----------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.ones((4, 5)), "must be 3D"),
        (np.ones((2, 4, 5, 6)), "Select one channel"),
        (np.ones((1, 4, 5)), "at least 2 Z slices"),
        (np.where(np.eye(5)[None] > 0, np.nan, 1.0) * np.ones((3, 1, 1)), "5 NaN or inf"),
        (np.ones((3, 4, 5)), "the stack has no contrast"),
    ],
)
def test_bad_stacks_are_refused_with_a_reason(bad, match):
    with pytest.raises(ValueError, match=match):
        predict_stack(bad, identity, subsample=2.0)


def test_upsample_z_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 2 Z slices"):
        upsample_z(np.ones((1, 3, 3)), 2.0)
    with pytest.raises(ValueError, match="must be 3D"):
        upsample_z(np.ones((3, 3)), 2.0)
    with pytest.raises(ValueError, match=r"subsample must be a finite number >= 1"):
        upsample_z(np.ones((3, 3, 3)), 0.5)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"subsample": 0.5}, r"dz / dx"),
        ({"subsample": float("nan")}, r">= 1"),
        ({"fuse": "max"}, "fuse must be one of"),
        ({"interpolation": "nearest"}, "interpolation must be one of"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"multiple": 0}, "multiple must be"),
        ({"normalization": (99, 1)}, "pmin < pmax"),
        ({"tile": 8, "overlap": 8}, r"use tile >= 12"),
        ({"tile": (8, 8, 8)}, "pair"),
    ],
)
def test_bad_options_are_refused_with_a_reason(options, match):
    kw = {"subsample": 2.0, **options}
    with pytest.raises(ValueError, match=match):
        predict_stack(np.random.default_rng(0).random((5, 16, 16)), identity, **kw)


def test_apply_fn_that_changes_the_shape_is_refused(stack):
    with pytest.raises(ValueError, match="drop a channel axis"):
        predict_stack(stack, lambda b: b[..., None], subsample=2.0)


@pytest.mark.parametrize("fuse", ["mean", "xz", "yz"])
def test_whole_pipeline_against_an_independent_reference(fuse):
    """scipy's correlate2d on the (lateral, z) slices of np.interp's upsampled stack."""
    x = np.random.default_rng(4).random((5, 8, 12)).astype(np.float32)
    s = 2.75  # 12 output slices: no padding to multiples of 4
    vol = reference_upsample_z(x.astype(np.float64), s)
    k = np.outer(np.arange(1.0, 6.0), [1.0, 3.0, 2.0, 5.0, 4.0])
    k /= k.sum()
    xz = np.stack([correlate2d(vol[:, j, :].T, k, mode="same").T for j in range(8)], axis=1)
    yz = np.stack([correlate2d(vol[:, :, i].T, k, mode="same").T for i in range(12)], axis=2)
    expected = {"mean": (xz + yz) / 2, "xz": xz, "yz": yz}[fuse]
    out = predict_stack(x, blur5, subsample=s, fuse=fuse, normalization=None)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------
# The uncertainty map of a probabilistic network (predict_stack_uncertainty)


def blur5_laplace(b):
    """A fake probabilistic network: the blur as the mean, a positive scale that varies."""
    m = blur5(b)
    return m, 0.1 + m**2


def test_uncertainty_fuses_the_scales_as_the_means():
    from isojax.predict import predict_stack_uncertainty
    from isojax.predict.uncertainty import fuse_scales

    def by_view(b):  # padded XZ slices are (x, z) = (8, 8), YZ slices (y, z) = (4, 8)
        return b, jnp.full_like(b, 2.0 if b.shape[1] == 8 else 8.0)  # scale 2 in XZ, 8 in YZ

    y = np.ones((3, 4, 8), np.float32)
    kw = {"subsample": 2.0, "normalization": None}
    expected = {"mean": 5.0, "geometric": 4.0, "xz": 2.0, "yz": 8.0}
    for fuse, value in expected.items():
        mean, scale = predict_stack_uncertainty(y, by_view, fuse=fuse, **kw)
        np.testing.assert_allclose(scale, value, rtol=1e-6)
        assert scale.shape == mean.shape == (5, 4, 8)
        np.testing.assert_allclose(fuse_scales(np.float32(2.0), np.float32(8.0), fuse), value)
        np.testing.assert_array_equal(mean, predict_stack(y, by_view, fuse=fuse, **kw))


@pytest.mark.parametrize("fuse", ["mean", "geometric", "xz"])
def test_uncertainty_against_an_independent_reference(fuse):
    """scipy's correlate2d on np.interp's slices, the scales fused, times hi - lo."""
    from isojax.predict import predict_stack_uncertainty

    x = 100 + 50 * np.random.default_rng(4).random((5, 8, 12)).astype(np.float32)
    s = 2.75  # 12 output slices: no padding to multiples of 4
    lo, hi = np.percentile(x.astype(np.float64), (1.0, 99.8))
    vol = reference_upsample_z((x.astype(np.float64) - lo) / (hi - lo), s)
    k = np.outer(np.arange(1.0, 6.0), [1.0, 3.0, 2.0, 5.0, 4.0])
    k /= k.sum()
    xz = np.stack([correlate2d(vol[:, j, :].T, k, mode="same").T for j in range(8)], axis=1)
    yz = np.stack([correlate2d(vol[:, :, i].T, k, mode="same").T for i in range(12)], axis=2)
    b_xz, b_yz = 0.1 + xz**2, 0.1 + yz**2
    expected = {"mean": (b_xz + b_yz) / 2, "geometric": np.sqrt(b_xz * b_yz), "xz": b_xz}[fuse]
    mean, scale = predict_stack_uncertainty(x, blur5_laplace, subsample=s, fuse=fuse)
    np.testing.assert_allclose(scale, expected * (hi - lo), rtol=1e-4)
    assert np.all(scale > 0)
    np.testing.assert_array_equal(mean, predict_stack(x, blur5_laplace, subsample=s, fuse=fuse))


def test_uncertainty_tiled_equals_untiled_and_needs_a_scale():
    from isojax.predict import predict_stack_uncertainty

    x = np.random.default_rng(1).random((6, 21, 18)).astype(np.float32)
    kw = {"subsample": 3.5, "normalization": None}
    whole = predict_stack_uncertainty(x, blur5_laplace, **kw)
    tiled = predict_stack_uncertainty(x, blur5_laplace, tile=12, overlap=8, **kw)
    for a, b in zip(whole, tiled, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"must return a pair \(mean, scale\)"):
        predict_stack_uncertainty(x, blur5, **kw)
