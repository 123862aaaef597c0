"""Normalisation: one inverse for training and prediction; the bounds in config.json are read.

``normalization.lo``/``hi`` in a model folder's config.json are the training stack's
percentiles; prediction recomputes them on its own stack (from ``pmin``/``pmax``), and
``--resume`` reads them to refuse a different stack of the same shape.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from isojax.errors import IsojaxInputError
from isojax.synth import SynthConfig, check_contrast, denormalize, normalize_percentile
from isojax.train import TrainConfig, train
from isojax.unet import UNetConfig


def test_denormalize_in_place_is_the_same_inverse():
    rng = np.random.default_rng(0)
    x = (rng.random((4, 8, 8)) * 900 + 50).astype(np.float32)
    y, (lo, hi) = normalize_percentile(jnp.asarray(x))
    expected = np.asarray(denormalize(y, lo, hi))
    buffer = np.array(y)
    result = denormalize(buffer, lo, hi, out=buffer)
    assert result is buffer
    assert buffer.dtype == np.float32
    np.testing.assert_allclose(buffer, expected, rtol=1e-6)
    np.testing.assert_allclose(buffer, x, rtol=1e-4)


def test_prediction_returns_the_stacks_intensity_units():
    """With an identity network, prediction is the Z-upsampled stack in its own units."""
    from isojax.predict import predict_stack, upsample_z

    rng = np.random.default_rng(1)
    x = (rng.random((6, 16, 16)) * 900 + 50).astype(np.float32)
    restored = predict_stack(x, lambda b: b, subsample=2.0, multiple=1)
    np.testing.assert_allclose(restored, np.asarray(upsample_z(x, 2.0)), rtol=1e-4, atol=1e-2)


def _train(folder, stack, *, resume=False):
    g = np.exp(-0.5 * ((np.arange(9) - 4) / 1.5) ** 2)
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0, checkpoint_every=2, val_every=2,
                      val_batches=1)
    return train(stack, (g / g.sum())[None].astype(np.float32), workdir=folder,
                 synth_config=SynthConfig(subsample=3.0, patch_size=16), config=cfg,
                 net=UNetConfig(depth=1, first_filters=4, n_conv_per_depth=1), progress=False,
                 resume=resume, log=lambda m: None)


def test_resume_reads_the_intensity_bounds_to_refuse_another_stack(tmp_path):
    rng = np.random.default_rng(2)
    stack = (rng.random((10, 32, 32)) * 500 + 100).astype(np.float32)
    _train(tmp_path / "m", stack)
    brighter = stack * 3  # same shape, same settings: only its intensity range differs
    with pytest.raises(IsojaxInputError, match="the stack's intensity range"):
        _train(tmp_path / "m", brighter, resume=True)


def test_read_ome_zarr_reads_what_write_ome_zarr_wrote(tmp_path):
    from isojax.io import read_ome_zarr, write_ome_zarr, write_tiff

    x = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    write_ome_zarr(tmp_path / "x.zarr", x, spacing=(0.5, 0.1, 0.1), chunks=(2, 3, 4))
    data, spacing, source = read_ome_zarr(tmp_path / "x.zarr")
    np.testing.assert_array_equal(data, x)
    assert spacing == pytest.approx((0.5, 0.1, 0.1))
    assert source == "ome-zarr"
    write_tiff(tmp_path / "x.tif", x, spacing=(0.5, 0.1, 0.1))
    with pytest.raises(IsojaxInputError, match="read_tiff"):
        read_ome_zarr(tmp_path / "x.tif")


def test_check_contrast_names_a_path_in_its_refusals():
    """A file name given as a Path (as the commands pass it): the empty and the non-finite
    refusals raised TypeError ("Path + str") instead of naming the file."""
    with pytest.raises(IsojaxInputError, match=r"^a\.tif: the stack is empty\.$"):
        check_contrast(np.zeros((0, 4, 4)), name=Path("a.tif"))
    x = np.ones((2, 3, 4))
    x[1, 2, 3] = -np.inf
    with pytest.raises(IsojaxInputError, match=r"^a\.tif: the stack holds 1 NaN or infinite "
                                               r"voxel\(s\) of 24 \(the first at index \(1, 2, 3\)\)"):
        check_contrast(x, name=Path("a.tif"))
