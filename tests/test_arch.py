"""Named networks (``isojax.unet.ARCHS``, ``isojax train --arch``) and bf16 prediction.

One tiny model per network is trained through the command line (module fixture); the tests
read their folders back, predict with them and check what ``config.json`` records.
"""

import functools
import json
import shutil

import jax
import numpy as np
import pytest

from isojax.cli import main
from isojax.io import read_tiff, write_tiff
from isojax.model_folder import read_model_config
from isojax.train import load_model
from isojax.unet import ARCHS, UNetConfig, apply_unet, init_unet

SPACING = (0.3, 0.1, 0.1)  # subsample 3
TRAIN = ["--steps", "2", "--batch-size", "2", "--patch-size", "16", "--first-filters", "4",
         "--checkpoint-every", "2", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("arch")
    rng = np.random.default_rng(0)
    write_tiff(d / "stack.tif", (rng.random((8, 32, 32)) * 1000).astype(np.uint16),
               spacing=SPACING, dtype=np.uint16)
    g = np.exp(-0.5 * ((np.arange(9) - 4) / 1.5) ** 2)
    write_tiff(d / "psf.tif", (g / g.sum())[None].astype(np.float32), pixel_size=0.1)
    for arch in ARCHS:
        code = main(["train", str(d / "stack.tif"), "--psf", str(d / "psf.tif"), "--model",
                     str(d / arch), "--arch", arch, *TRAIN])
        assert code == 0
    return d


def test_presets_are_the_documented_networks():
    care = UNetConfig.from_arch("care")
    assert care == UNetConfig()  # CARE's U-Net is the plain default
    assert (care.kernel_size, care.depth, care.first_filters) == (5, 2, 32)
    light = UNetConfig.from_arch("light", prob_out=True, first_filters=None)
    assert (light.arch, light.kernel_size, light.depth, light.first_filters) == (
        "light", 3, 3, 16)
    assert light.prob_out
    assert UNetConfig.from_arch("light24").first_filters == 24
    assert care.receptive_radius == 43
    assert light.receptive_radius == 51
    with pytest.raises(ValueError, match="unknown network arch 'big'"):
        UNetConfig.from_arch("big")
    with pytest.raises(ValueError, match=r"UNetConfig\.arch must be one of"):
        UNetConfig(arch="big")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_each_arch_trains_records_and_predicts(trained, tmp_path, arch):
    meta = json.loads((trained / arch / "config.json").read_text())
    expected = {**ARCHS[arch], "first_filters": 4}  # --first-filters applies on top
    assert meta["unet"]["arch"] == arch
    assert {k: meta["unet"][k] for k in expected} == expected
    net = UNetConfig(**read_model_config(trained / arch)["unet"])
    assert net == UNetConfig.from_arch(arch, first_filters=4)
    out = tmp_path / "out.tif"
    code = main(["predict", str(trained / "stack.tif"), "--model", str(trained / arch),
                 "-o", str(out), "--quiet"])
    assert code == 0
    pred = np.asarray(read_tiff(out)[0])
    assert pred.shape == (22, 32, 32)
    assert np.all(np.isfinite(pred))


def test_old_folder_without_arch_reads_as_care(trained, tmp_path):
    model = shutil.copytree(trained / "care", tmp_path / "old")
    path = model / "config.json"
    meta = json.loads(path.read_text())
    del meta["unet"]["arch"]  # as written before the named networks
    path.write_text(json.dumps(meta))
    assert read_model_config(model)["unet"]["arch"] == "care"
    apply_fn, _ = load_model(model, which="last")
    x = np.random.default_rng(1).random((2, 16, 16), np.float32)
    ref, _ = load_model(trained / "care", which="last")
    np.testing.assert_array_equal(np.asarray(apply_fn(x)), np.asarray(ref(x)))
    # and resuming it with the default network is not refused as a different network
    code = main(["train", str(trained / "stack.tif"), "--psf", str(trained / "psf.tif"),
                 "--model", str(model), "--resume", *TRAIN[:1], "4", *TRAIN[2:]])
    assert code == 0


def test_resume_with_another_arch_is_refused(trained, tmp_path, capsys):
    model = shutil.copytree(trained / "light", tmp_path / "m")
    capsys.readouterr()
    code = main(["train", str(trained / "stack.tif"), "--psf", str(trained / "psf.tif"),
                 "--model", str(model), "--resume", "--arch", "care", *TRAIN[:1], "4",
                 *TRAIN[2:]])
    assert code != 0
    assert "--arch care here, light in the model" in capsys.readouterr().err


def test_cli_refuses_an_unknown_arch(tmp_path, capsys):
    code = main(["train", str(tmp_path / "s.tif"), "--model", str(tmp_path / "m"), "--steps",
                 "1", "--arch", "big"])
    assert code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("isojax: error: argument --arch: invalid choice: 'big'")


def test_bf16_prediction_is_close_to_float32(trained):
    x = np.random.default_rng(2).random((3, 16, 16), np.float32)
    f32, _ = load_model(trained / "light", which="last")
    bf16, _ = load_model(trained / "light", which="last", precision="bf16")
    a, b = np.asarray(f32(x)), np.asarray(bf16(x))
    assert b.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: relative error about 2**-8 per operation
    np.testing.assert_allclose(b, a, atol=0.02 * float(np.abs(a).max()))
    assert not np.array_equal(a, b)  # it did compute in bfloat16
    with pytest.raises(ValueError, match="precision must be"):
        load_model(trained / "light", which="last", precision="float16")


def test_bf16_compute_of_a_wider_network_is_close():
    net = UNetConfig.from_arch("light24")
    graphdef, params = init_unet(jax.random.key(0), net)
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
    # jitted: op by op, the bf16 network took 30 s on 2 CPU cores, compiled 3 s
    apply = jax.jit(functools.partial(apply_unet, graphdef), static_argnames="compute_dtype")
    a = np.asarray(apply(params, x))
    b = np.asarray(apply(params, x, compute_dtype=jax.numpy.bfloat16))
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=0.02 * float(np.abs(a - np.asarray(x)).max()) + 1e-3)


def test_predict_precision_bf16_is_close_to_float32(trained, tmp_path):
    outs = {}
    for precision in ("float32", "bf16"):
        outs[precision] = tmp_path / f"{precision}.tif"
        code = main(["predict", str(trained / "stack.tif"), "--model", str(trained / "care"),
                     "-o", str(outs[precision]), "--precision", precision, "--quiet"])
        assert code == 0
    a, b = (np.asarray(read_tiff(outs[p])[0]) for p in ("float32", "bf16"))
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, atol=0.02 * float(np.abs(a).max()))
    assert not np.array_equal(a, b)
