"""Prediction of a Laplace model's uncertainty map (--uncertainty), and of a time-lapse spread
over two processes (process p takes time points p, p + 2, ...) with its resume."""

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile

from isojax.cli import main
from isojax.io import (
    HyperstackZarr,
    open_hyperstack,
    open_volume,
    read_hyperstack,
    read_tiff,
    write_tiff,
)
from isojax.pipeline import predict_file
from isojax.predict import upsampled_length

SPACING = (0.3, 0.1, 0.1)  # subsample 3
N_T, N_C, N_Z = 4, 2, 6
Z_UP = upsampled_length(N_Z, 3.0)  # 16: no padding to multiples of 4
TESTS = Path(__file__).parent


def _series(dtype=np.uint16) -> np.ndarray:
    """(t, c, z, y, x): blobs that differ per channel, dimmer at each time point."""
    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(*(np.arange(n) for n in (N_Z, 16, 16)), indexing="ij")
    out = np.empty((N_T, N_C, N_Z, 16, 16), np.float32)
    for c in range(N_C):
        base = sum(np.exp(-((z - rng.uniform(1, 5)) ** 2 / 2 + (y - rng.uniform(2, 14)) ** 2 / 6
                            + (x - rng.uniform(2, 14)) ** 2 / 6)) for _ in range(4))
        for t in range(N_T):
            out[t, c] = (1000 * base + 100 + rng.normal(0, 5, base.shape)) * 0.8**t
    return out.astype(dtype)


def _write_imagej(path, data):
    tifffile.imwrite(
        path, data.transpose(0, 2, 1, 3, 4), imagej=True, resolution=(10.0, 10.0),
        metadata={"axes": "TZCYX", "spacing": 0.3, "unit": "micron", "finterval": 2.0,
                  "Labels": [n for _ in range(N_T) for _ in range(N_Z) for n in ("GFP", "RFP")]})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("series")
    _write_imagej(d / "ij.tif", _series())
    write_tiff(d / "stack.tif", _series()[0, 0], spacing=SPACING, dtype=np.uint16)
    assert main(["psf", "theory", "--na", "0.8", "--wavelength", "0.5", "--ri", "1.33",
                 "--modality", "widefield", "--pixel-size", "0.1", "-o", str(d / "psf.tif")]) == 0
    return d


@pytest.fixture(scope="module")
def laplace(files):
    """A tiny probabilistic model (2 steps): the network is arbitrary, the prediction real."""
    assert main(["train", str(files / "stack.tif"), "--psf", str(files / "psf.tif"), "--model",
                 str(files / "laplace"), "--steps", "2", "--batch-size", "2", "--patch-size",
                 "16", "--first-filters", "4", "--checkpoint-every", "2", "--loss", "laplace",
                 "--quiet"]) == 0
    return files / "laplace"


@pytest.fixture(scope="module")
def mae(files, laplace):
    """The Laplace model's folder saying it has no scale (what --loss mae writes): refused
    from its config.json, before any weights are read."""
    folder = files / "mae"
    shutil.copytree(laplace, folder)
    config = json.loads((folder / "config.json").read_text())
    config["unet"]["prob_out"] = False
    config["train"]["loss"] = "mae"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _reference_upsample_z(stack, s):
    """np.interp on the physical grid: slice k at k * s, output slice j at j."""
    n_up = upsampled_length(stack.shape[0], s)
    pos = np.arange(stack.shape[0]) * s
    return np.apply_along_axis(lambda v: np.interp(np.arange(n_up), pos, v), 0, stack)


@functools.cache
def _reference_network(model):
    """The model's U-Net from its weights (isojax.unet), jitted, and its config."""
    from isojax.export.convert import load_network
    from isojax.unet import apply_unet, init_unet

    _, net, params, meta = load_network(model)
    graphdef, _ = jax.eval_shape(lambda: init_unet(jax.random.key(0), net))
    return jax.jit(lambda x: apply_unet(graphdef, params, x[..., None])), meta


def reference_scale(stack, model, fuse="mean"):
    """The uncertainty map computed directly: the network on every XZ and YZ slice of the
    normalised, Z-upsampled stack (np.percentile, np.interp), the scales fused, in units."""
    network, meta = _reference_network(model)

    def scales(images):  # (b, lateral, axial) -> the scale head's output
        return np.asarray(network(jnp.asarray(images, jnp.float32)))[..., 1]

    norm = meta["normalization"]
    x = stack.astype(np.float64)
    lo, hi = np.percentile(x, (norm["pmin"], norm["pmax"]))
    up = _reference_upsample_z((x - lo) / (hi - lo), 3.0)
    b_xz = scales(up.transpose(1, 2, 0)).transpose(2, 0, 1)  # slice y: image (x, z)
    b_yz = scales(up.transpose(2, 1, 0)).transpose(2, 1, 0)  # slice x: image (y, z)
    fused = {"mean": (b_xz + b_yz) / 2, "geometric": np.sqrt(b_xz * b_yz), "xz": b_xz,
             "yz": b_yz}[fuse]
    return fused * (hi - lo)


# ----------------------------------------------------------------------------------------
# The uncertainty map


@pytest.mark.parametrize("fuse", ["mean", "geometric"])
def test_uncertainty_of_a_stack_equals_the_network_on_its_slices(files, laplace, tmp_path, fuse):
    out, unc = tmp_path / "iso.tif", tmp_path / "unc.tif"
    restored = predict_file(files / "stack.tif", model=laplace, output=out, uncertainty=unc,
                            fuse=fuse, progress=False, log=lambda m: None)
    scale, sp, _ = read_tiff(unc)
    data, sp_out, _ = read_tiff(out)
    assert scale.dtype == np.float32
    assert scale.shape == data.shape == restored.shape == (Z_UP, 16, 16)
    np.testing.assert_allclose(sp, sp_out)
    np.testing.assert_allclose(sp, (0.1, 0.1, 0.1))
    assert np.all(scale > 0)
    expected = reference_scale(_series()[0, 0], laplace, fuse)
    np.testing.assert_allclose(scale, expected, rtol=1e-4, atol=1e-4 * expected.max())
    if fuse != "mean":
        return
    # the restoration is what it is without --uncertainty
    plain = predict_file(files / "stack.tif", model=laplace, output=tmp_path / "plain.tif",
                         fuse=fuse, progress=False, log=lambda m: None)
    np.testing.assert_array_equal(plain, restored)


def test_uncertainty_of_a_time_lapse_in_tiff_and_zarr(files, laplace, tmp_path):
    data = _series()
    for ext in (".tif", ".zarr"):
        out, unc = tmp_path / f"iso{ext}", tmp_path / f"unc{ext}"
        assert main(["predict", str(files / "ij.tif"), "--model", str(laplace), "-o", str(out),
                     "--uncertainty", str(unc), "--timepoints", "1:4:2", "--quiet"]) == 0
        hyper, ref = open_hyperstack(unc), open_hyperstack(out)
        assert hyper.shape == ref.shape == (2, N_C, Z_UP, 16, 16)
        assert hyper.dtype == np.float32
        np.testing.assert_allclose(hyper.spacing, ref.spacing)
        assert hyper.time_interval == ref.time_interval == pytest.approx(4.0)
        assert hyper.channel_names == ref.channel_names == ("GFP", "RFP")
        for i, t in enumerate((1, 3)):
            for c in range(N_C):
                scale = hyper.read(i, c)
                assert np.all(scale > 0)
                expected = reference_scale(data[t, c], laplace)
                np.testing.assert_allclose(scale, expected, rtol=1e-4,
                                           atol=1e-4 * expected.max())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iso.tif", "iso.zarr", "unc.tif",
                                                          "unc.zarr"]
    assert not (tmp_path / "unc.zarr" / "isojax-done").exists()


def _one_line_error(argv, capsys, match):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("isojax: error:"), err
    assert match in err[0], err[0]


@pytest.mark.parametrize("stack", ["stack.tif", "ij.tif"])
def test_uncertainty_errors_write_nothing(files, laplace, mae, tmp_path, capsys, stack):
    base = ["predict", str(files / stack), "-o", str(tmp_path / "iso.tif"), "--quiet"]
    _one_line_error([*base, "--model", str(mae), "--uncertainty", str(tmp_path / "u.tif")],
                    capsys, "--uncertainty needs a probabilistic model, trained with --loss "
                    "laplace")
    _one_line_error([*base, "--model", str(laplace), "--uncertainty", str(tmp_path / "u.zarr")],
                    capsys, "name it .tif like iso.tif")
    assert list(tmp_path.iterdir()) == []
    # an existing map is not replaced without --overwrite, and the restoration not written
    (tmp_path / "u.tif").write_text("keep")
    _one_line_error([*base, "--model", str(laplace), "--uncertainty", str(tmp_path / "u.tif")],
                    capsys, "u.tif already exists; pass --overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.tif"]
    assert (tmp_path / "u.tif").read_text() == "keep"
    assert main([*base, "--model", str(laplace), "--uncertainty", str(tmp_path / "u.tif"),
                 "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iso.tif", "u.tif"]
    assert open_hyperstack(tmp_path / "u.tif").dtype == np.float32


@pytest.mark.parametrize("keep_dtype", [False, True])
def test_streamed_uncertainty_equals_the_in_memory_one(files, laplace, tmp_path, keep_dtype):
    """Slab by slab into OME-Zarr (with --keep-dtype the first view waits in a scratch store,
    its scale in the map itself): the map of the in-memory prediction."""
    predict_file(files / "stack.tif", model=laplace, output=tmp_path / "mem.tif",
                 uncertainty=tmp_path / "mem-u.tif", progress=False, log=lambda m: None)
    expected, sp, _ = read_tiff(tmp_path / "mem-u.tif")
    result = predict_file(files / "stack.tif", model=laplace, output=tmp_path / "big.zarr",
                          uncertainty=tmp_path / "big-u.zarr", memory_budget=100_000,
                          keep_dtype=keep_dtype, progress=False, log=lambda m: None)
    assert result.uncertainty == tmp_path / "big-u.zarr"
    assert result.slab_lines[0] < 16  # several slabs
    volume = open_volume(tmp_path / "big-u.zarr")
    assert volume.dtype == np.float32
    np.testing.assert_allclose(volume.spacing, sp)
    scale = volume.read((slice(None),) * 3)
    np.testing.assert_allclose(scale, expected, rtol=1e-5, atol=1e-5 * expected.max())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big-u.zarr", "big.zarr", "mem-u.tif",
                                                          "mem.tif"]


def test_a_failure_during_the_run_leaves_neither_output(files, laplace, tmp_path, capsys):
    """A time point without contrast fails the run: no restoration, no map, no partial."""
    data = _series()
    data[1, 1] = 7
    _write_imagej(tmp_path / "flat.tif", data)
    for ext in (".tif", ".zarr"):
        assert main(["predict", str(tmp_path / "flat.tif"), "--model", str(laplace), "-o",
                     str(tmp_path / f"iso{ext}"), "--uncertainty", str(tmp_path / f"u{ext}"),
                     "--quiet"]) == 1
        assert "time point 1, channel 1" in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.tif"]


def _dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _killed_partial(finished, name, marked=(0, 3)):
    """What a killed run leaves: ``finished`` copied to ``NAME.partial-<host>-<dead pid>-...``,
    the time points ``marked`` done and set to -7 (a value no network gives), the rest 0."""
    from isojax.io.outputs import _host

    partial = finished.parent / f"{name}.partial-{_host()}-{_dead_pid()}-abcd1234"
    shutil.copytree(finished, partial)
    store = HyperstackZarr.open(partial)
    for t in range(store.shape[0]):
        for c in range(store.shape[1]):
            store.write(t, c, np.full(store.shape[2:], -7.0 if t in marked else 0.0, np.float32))
    for t in marked:
        store.mark_done(t)
    return partial


def test_a_killed_run_with_its_map_resumes_both(files, laplace, tmp_path):
    stack = files / "ij.tif"
    kw = {"model": laplace, "progress": False, "log": lambda m: None}
    predict_file(stack, output=tmp_path / "one.zarr", uncertainty=tmp_path / "one-u.zarr", **kw)
    expected, _ = read_hyperstack(tmp_path / "one.zarr")
    expected_u, _ = read_hyperstack(tmp_path / "one-u.zarr")
    partials = [_killed_partial(tmp_path / "one.zarr", "iso.zarr"),
                _killed_partial(tmp_path / "one-u.zarr", "u.zarr", marked=(0,))]
    lines = []
    result = predict_file(stack, output=tmp_path / "iso.zarr", uncertainty=tmp_path / "u.zarr",
                          resume=True, **{**kw, "log": lines.append})
    assert result.resumed == (0,)  # finished in both: time point 3 lacks its map
    assert sum("--resume: continuing" in line for line in lines) == 2
    got, _ = read_hyperstack(tmp_path / "iso.zarr")
    got_u, _ = read_hyperstack(tmp_path / "u.zarr")
    assert np.all(got[0] == -7.0)
    assert np.all(got_u[0] == -7.0)
    np.testing.assert_allclose(got[1:], expected[1:], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(got_u[1:], expected_u[1:], rtol=1e-5, atol=1e-5)
    assert not any(p.exists() for p in partials)


# ----------------------------------------------------------------------------------------
# Two processes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, argv, tag):
    """``isojax predict ARGV`` as processes 0 and 1 of a job over loopback; their stderr."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(TESTS.parent))
    address = f"127.0.0.1:{_free_port()}"
    procs = []
    for rank in (0, 1):
        command = [sys.executable, "-m", "isojax", "predict", *argv, "--quiet", "--coordinator",
                   address, "--num-processes", "2", "--process-id", str(rank),
                   "--host-timeout", "10"]
        with open(tmp_path / f"{tag}{rank}.err", "w") as err:
            procs.append(subprocess.Popen(command, env=env, stderr=err,
                                          stdout=subprocess.DEVNULL))
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes, [(tmp_path / f"{tag}{r}.err").read_text() for r in (0, 1)]


def test_two_processes_share_the_time_points_and_resume(files, laplace, tmp_path):
    stack = str(files / "ij.tif")
    reference = tmp_path / "one.zarr"
    predict_file(stack, model=laplace, output=reference, progress=False, log=lambda m: None)
    expected, _ = read_hyperstack(reference)

    out = tmp_path / "two.zarr"
    codes, errs = _two_processes(tmp_path, [stack, "--model", str(laplace), "-o", str(out)],
                                 "run")
    assert codes == [0, 0], errs
    assert "process 0 of 2: 2 of its 2 time points to restore" in errs[0]
    assert "wrote" not in errs[1]  # only process 0 speaks
    assert "process 1" not in errs[1]
    got, _ = read_hyperstack(out)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    assert json.loads((out / "zarr.json").read_text()) == \
        json.loads((reference / "zarr.json").read_text())
    assert not (out / "isojax-done").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if ".zarr" in p.name) == \
        ["one.zarr", "two.zarr"]

    # a killed run: time point 0 (process 0's) and 3 (process 1's) finished, 1 and 2 not
    partial = _killed_partial(out, "again.zarr", marked=(0, 3))
    codes, errs = _two_processes(
        tmp_path, [stack, "--model", str(laplace), "-o", str(tmp_path / "again.zarr"),
                   "--resume"], "resume")
    assert codes == [0, 0], errs
    assert "--resume: continuing" in errs[0]
    assert "process 0 of 2: 1 of its 2 time points to restore (1 finished)" in errs[0]
    again, _ = read_hyperstack(tmp_path / "again.zarr")
    assert np.all(again[[0, 3]] == -7.0)  # not recomputed
    np.testing.assert_allclose(again[[1, 2]], expected[[1, 2]], rtol=1e-5, atol=1e-3)
    assert not partial.exists()


def test_two_processes_refuse_a_tiff_output(files, laplace, tmp_path):
    codes, errs = _two_processes(
        tmp_path, [str(files / "ij.tif"), "--model", str(laplace), "-o",
                   str(tmp_path / "two.tif")], "tiff")
    assert codes == [1, 1], errs
    line = errs[0].strip().splitlines()[-1]
    assert line.startswith("isojax: error:"), errs[0]
    assert "spread over 2 processes" in line
    assert "name the output .zarr" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiff0.err", "tiff1.err"]


def test_when_process_0_fails_the_others_stop_with_one_line(files, laplace, tmp_path):
    """Only process 0 looks at partials: one written for another selection stops it; process
    1 then stops too, at once, instead of waiting for it."""
    stack = str(files / "ij.tif")
    predict_file(stack, model=laplace, output=tmp_path / "one.zarr", timepoints="0:2",
                 progress=False, log=lambda m: None)
    _killed_partial(tmp_path / "one.zarr", "two.zarr", marked=(0,))
    shutil.rmtree(tmp_path / "one.zarr")
    codes, errs = _two_processes(tmp_path, [stack, "--model", str(laplace), "-o",
                                            str(tmp_path / "two.zarr"), "--resume"], "fail")
    assert codes == [1, 1], errs
    assert "was written with another timepoints" in errs[0].strip().splitlines()[-1]
    assert errs[1].strip().splitlines()[-1] == (
        "isojax: error: process 1: process 0 failed while checking the outputs; its error "
        "says why")
