"""Training's rules in one place: the patch size, and what a checkpoint's PSF state must fit."""

import jax.numpy as jnp
import numpy as np
import pytest

from isojax.cli import main
from isojax.errors import IsojaxInputError
from isojax.io import write_tiff
from isojax.synth import SynthConfig
from isojax.train import (
    TrainConfig,
    _managers,
    _new_key,
    _restore,
    _save,
    create_train_state,
    train,
)
from isojax.unet import UNetConfig

NET = UNetConfig(first_filters=4)


def _stack():
    rng = np.random.default_rng(0)
    return rng.random((12, 40, 40)).astype(np.float32) * 500 + 100


def _psf():
    g = np.exp(-0.5 * ((np.arange(9) - 4) / 1.5) ** 2)
    return (g / g.sum())[None].astype(np.float32)


def test_the_patch_size_rule_is_the_networks_divisor(tmp_path):
    """A depth-1 network halves the patch once: 18 px patches (not a multiple of 4) train."""
    net = UNetConfig(depth=1, first_filters=4, n_conv_per_depth=1)
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0, checkpoint_every=2, val_every=2,
                      val_batches=1)
    summary = train(_stack(), _psf(), workdir=tmp_path / "m",
                    synth_config=SynthConfig(subsample=3.0, patch_size=18), config=cfg, net=net,
                    progress=False, log=lambda m: None)
    assert summary["step"] == 2
    assert np.isfinite(summary["loss"])


def test_a_patch_size_the_network_cannot_halve_is_one_line_naming_the_option(tmp_path, capsys):
    write_tiff(tmp_path / "stack.tif", _stack(), spacing=(0.3, 0.1, 0.1))
    code = main(["train", str(tmp_path / "stack.tif"), "--model", str(tmp_path / "m"),
                 "--na", "0.8", "--wavelength", "0.5", "--ri", "1.33", "--modality",
                 "widefield", "--steps", "1", "--patch-size", "30", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        "isojax: error: patch size 30 px must be a multiple of 4 for a network of depth 2 (it "
        "halves the patch 2 times): use --patch-size 28 or 32.")


def _psf_state(n):
    return {"theta": {"psf": {"w": jnp.arange(n, dtype=jnp.float32)}}, "opt": jnp.zeros(n)}


@pytest.mark.parametrize("other", [
    {"theta": {"psf": {"w": jnp.zeros(7)}}, "opt": jnp.zeros(7)},  # same arrays, other shapes
    {"theta": {"psf": {"w": jnp.zeros(5), "v": jnp.zeros(5)}}, "opt": jnp.zeros(5)},  # more
])
def test_psf_state_that_does_not_fit_is_refused_not_dropped(tmp_path, other):
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0)
    _, state = create_train_state(_new_key(0), NET, cfg)
    last, best = _managers(tmp_path)
    _save(last, state, extra=_psf_state(5))
    last.wait_until_finished()
    _, extra = _restore(last, NET, cfg, extra_template=_psf_state(5))
    np.testing.assert_array_equal(np.asarray(extra["theta"]["psf"]["w"]), np.arange(5))
    with pytest.raises(IsojaxInputError, match="PSF state"):
        _restore(last, NET, cfg, extra_template=other)
    last.close()
    best.close()


def test_a_checkpoint_without_psf_state_gives_none(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0)
    _, state = create_train_state(_new_key(0), NET, cfg)
    last, best = _managers(tmp_path)
    _save(last, state)
    last.wait_until_finished()
    _, extra = _restore(last, NET, cfg, extra_template=_psf_state(5))
    assert extra is None
    last.close()
    best.close()

