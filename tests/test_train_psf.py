"""The PSF reaches training as one checked object (isojax.train.train and isojax.psf.AxialPSF)."""

import json

import numpy as np
import pytest

from isojax.errors import IsojaxInputError
from isojax.io import read_tiff
from isojax.psf import AxialPSF
from isojax.synth import SynthConfig
from isojax.train import TrainConfig, train
from isojax.unet import UNetConfig

SYNTH = SynthConfig(subsample=3.0, patch_size=16)
CONFIG = TrainConfig(steps=1, batch_size=2, warmup_steps=0, checkpoint_every=1, val_every=1,
                     val_batches=1)
NET = UNetConfig(depth=1, first_filters=4, n_conv_per_depth=1)


def _stack(shape=(12, 24, 24)):
    return np.random.default_rng(0).random(shape).astype(np.float32) * 500 + 100


def _profile(n=11, sigma=1.5):
    g = np.exp(-0.5 * ((np.arange(n) - n // 2) / sigma) ** 2)
    return (g / g.sum())[None].astype(np.float32)


def test_a_3d_array_is_refused_at_the_entry_before_the_folder_exists(tmp_path):
    with pytest.raises(IsojaxInputError, match="the PSF is 3D"):
        train(_stack(), np.ones((3, 3, 3)), workdir=tmp_path / "m", synth_config=SYNTH,
              config=CONFIG, net=NET, progress=False, log=lambda m: None)
    assert not (tmp_path / "m").exists()


def test_a_pixel_size_that_is_not_the_objects_is_refused(tmp_path):
    psf = AxialPSF.checked(_profile(), pixel_size=0.1, provenance="test")
    with pytest.raises(IsojaxInputError, match="not the PSF's pixel size"):
        train(_stack(), psf, workdir=tmp_path / "m", synth_config=SYNTH, config=CONFIG,
              net=NET, psf_pixel_size=0.2, progress=False, log=lambda m: None)
    assert not (tmp_path / "m").exists()


def test_a_plain_arrays_check_warnings_go_to_the_log(tmp_path):
    logged = []
    with pytest.raises(IsojaxInputError, match="3D"):  # the 2D stack stops it after the PSF
        train(np.ones((24, 24)), _profile(n=9), workdir=tmp_path / "m", synth_config=SYNTH,
              config=CONFIG, net=NET, progress=False, log=logged.append)
    assert any(m.startswith("warning: check_psf:") and "outer 1-pixel frame" in m
               for m in logged), logged


def test_the_object_is_carried_into_the_model_folder_as_it_is(tmp_path):
    psf = AxialPSF.checked(_profile(), pixel_size=0.1, provenance="test")
    train(_stack(), psf, workdir=tmp_path / "m", synth_config=SYNTH, config=CONFIG, net=NET,
          progress=False, log=lambda m: None)
    saved = read_tiff(tmp_path / "m" / "psf.tif")[0]
    np.testing.assert_array_equal(np.asarray(saved), psf.dense())
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["psf"]["pixel_size"] == 0.1  # the object's, without psf_pixel_size
    assert meta["psf"]["shape"] == [1, 11]
