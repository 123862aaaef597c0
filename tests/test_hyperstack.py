"""Time-lapses with channels: reading ImageJ, OME-TIFF and OME-Zarr hyperstacks, selection,
prediction time point by time point into TZCYX TIFF and t c z y x OME-Zarr, resume, errors."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from isojax.cli import main
from isojax.errors import IsojaxInputError
from isojax.io import (
    create_hyperstack_zarr,
    open_hyperstack,
    parse_channels,
    parse_timepoints,
    read_hyperstack,
    write_hyperstack_tiff,
    write_tiff,
)
from isojax.pipeline import predict_file
from isojax.predict import predict_stack, upsampled_length
from isojax.predict.series import is_series

SPACING = (0.3, 0.1, 0.1)  # subsample 3
N_T, N_C, N_Z = 3, 2, 8
Z_UP = upsampled_length(N_Z, 3.0)


def _series(dtype=np.uint16) -> np.ndarray:
    """(t, c, z, y, x): blobs that differ per channel, dimmer at each time point (bleaching)."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.arange(n) for n in (N_Z, 32, 32)), indexing="ij")
    out = np.empty((N_T, N_C, N_Z, 32, 32), np.float32)
    for c in range(N_C):
        base = sum(np.exp(-((z - rng.uniform(1, 7)) ** 2 / 2 + (y - rng.uniform(4, 28)) ** 2 / 8
                            + (x - rng.uniform(4, 28)) ** 2 / 8)) for _ in range(6))
        for t in range(N_T):
            out[t, c] = (1000 * base + 100 + rng.normal(0, 5, base.shape)) * 0.6**t
    return out.astype(dtype)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hyper")
    data = _series()
    tifffile.imwrite(
        d / "ij.tif", data.transpose(0, 2, 1, 3, 4), imagej=True, resolution=(10.0, 10.0),
        metadata={"axes": "TZCYX", "spacing": 0.3, "unit": "micron", "finterval": 2.5,
                  "Labels": [n for _ in range(N_T) for _ in range(N_Z) for n in ("GFP", "RFP")]})
    write_tiff(d / "stack.tif", data[0, 0], spacing=SPACING, dtype=np.uint16)
    return d


@pytest.fixture(scope="module")
def model(files):
    """A tiny model folder (2 steps): the network is arbitrary, the prediction real."""
    d = files
    assert main(["psf", "theory", "--na", "0.8", "--wavelength", "0.5", "--ri", "1.33",
                 "--modality", "widefield", "--pixel-size", "0.1", "-o", str(d / "psf.tif")]) == 0
    assert main(["train", str(d / "stack.tif"), "--psf", str(d / "psf.tif"), "--model",
                 str(d / "model"), "--steps", "2", "--batch-size", "2", "--patch-size", "16",
                 "--first-filters", "4", "--checkpoint-every", "2", "--quiet"]) == 0
    return d / "model"


def _network(model):
    from isojax.train import load_model

    apply_fn, meta = load_model(model)
    norm = meta["normalization"]
    return lambda v: predict_stack(v.astype(np.float32), apply_fn, subsample=3.0,
                                   overlap=96, multiple=4,
                                   normalization=(norm["pmin"], norm["pmax"]))


# ----------------------------------------------------------------------------------------
# Reading


def test_imagej_hyperstack_axes_sizes_interval_and_names(files):
    hyper = open_hyperstack(files / "ij.tif")
    assert hyper.file_axes == "TZCYX"
    assert hyper.shape == (N_T, N_C, N_Z, 32, 32)
    np.testing.assert_allclose(hyper.spacing, SPACING)
    assert hyper.source == "imagej"
    assert hyper.time_interval == pytest.approx(2.5)
    assert hyper.channel_names == ("GFP", "RFP")
    np.testing.assert_array_equal(hyper.read(2, 1), _series()[2, 1])


def test_ome_tiff_axes_physical_sizes_time_increment_and_channels(tmp_path):
    data = _series()
    tifffile.imwrite(tmp_path / "a.ome.tif", data, ome=True, metadata={
        "axes": "TCZYX", "PhysicalSizeZ": 300, "PhysicalSizeZUnit": "nm",
        "PhysicalSizeY": 0.1, "PhysicalSizeX": 0.1, "TimeIncrement": 1500,
        "TimeIncrementUnit": "ms", "Channel": {"Name": ["dapi", "actin"]}})
    array, hyper = read_hyperstack(tmp_path / "a.ome.tif")
    assert (hyper.file_axes, hyper.source) == ("TCZYX", "ome")
    np.testing.assert_allclose(hyper.spacing, SPACING)
    assert hyper.time_interval == pytest.approx(1.5)
    assert hyper.channel_names == ("dapi", "actin")
    np.testing.assert_array_equal(array, data)
    # compressed: read page by page instead of through a memory map
    tifffile.imwrite(tmp_path / "z.ome.tif", data, ome=True, compression="zlib",
                     metadata={"axes": "TCZYX"})
    hyper = open_hyperstack(tmp_path / "z.ome.tif")
    np.testing.assert_array_equal(hyper.read(2, 1), data[2, 1])


def _ome_naming_one_channel(path: Path, data: np.ndarray) -> Path:
    """An OME-TIFF of ``data`` (t, c, z, y, x) whose OME-XML has a Channel for channel 0 only."""
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "TCZYX", "PhysicalSizeZ": 0.3, "PhysicalSizeY": 0.1, "PhysicalSizeX": 0.1,
        "Channel": {"Name": [f"ch{c}" for c in range(data.shape[1])]}})
    xml = tifffile.tiffcomment(path)
    fewer = re.sub(r'<Channel ID="Channel:0:[1-9]\d*".*?</Channel>', "", xml, flags=re.S)
    assert fewer.count("<Channel ") == 1  # SizeC stays at data.shape[1]
    tifffile.tiffcomment(path, fewer)
    return path


def test_ome_tiff_naming_fewer_channels_than_it_has_gives_no_names(tmp_path):
    data = _series()
    hyper = open_hyperstack(_ome_naming_one_channel(tmp_path / "a.ome.tif", data))
    assert hyper.shape == (N_T, N_C, N_Z, 32, 32)
    assert hyper.channel_names is None  # not ("ch0",) for two channels
    np.testing.assert_array_equal(hyper.read(1, 1), data[1, 1])


def test_ome_zarr_with_t_and_c_axes(tmp_path):
    data = _series()
    store = create_hyperstack_zarr(tmp_path / "a.zarr", data.shape, data.dtype, spacing=SPACING,
                                   time_interval=4.0, channel_names=("a", "b"))
    for t in range(N_T):
        for c in range(N_C):
            store.write(t, c, data[t, c])
    array, hyper = read_hyperstack(tmp_path / "a.zarr", channels="1", timepoints="::2")
    assert (hyper.file_axes, hyper.shape, hyper.source) == ("TCZYX", data.shape, "ome-zarr")
    np.testing.assert_allclose(hyper.spacing, SPACING)
    assert (hyper.time_interval, hyper.channel_names) == (4.0, ("a", "b"))
    np.testing.assert_array_equal(array, data[::2, 1:])


@pytest.mark.parametrize("bigtiff", [False, True])
def test_written_hyperstack_tiff_reads_back_one_time_point_at_a_time(tmp_path, bigtiff):
    data = _series(np.float32)
    path = write_hyperstack_tiff(tmp_path / "h.tif", iter(data), shape=data.shape,
                                 dtype=np.float32, spacing=SPACING, time_interval=3.0,
                                 channel_names=("a", "b"), bigtiff=bigtiff)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff == bigtiff
        assert tif.is_imagej
    array, hyper = read_hyperstack(path)
    assert (hyper.file_axes, hyper.time_interval, hyper.channel_names) == ("TZCYX", 3.0,
                                                                           ("a", "b"))
    np.testing.assert_allclose(hyper.spacing, SPACING)
    np.testing.assert_array_equal(array, data)


def test_unnamed_axes_need_axes_and_axes_must_match(tmp_path):
    data = _series()[:, 0]  # (t, z, y, x), no names in a plain TIFF
    tifffile.imwrite(tmp_path / "plain.tif", data)
    with pytest.raises(IsojaxInputError, match=r"pass --axes .* e\.g\. --axes CZYX"):
        open_hyperstack(tmp_path / "plain.tif")
    hyper = open_hyperstack(tmp_path / "plain.tif", axes="tzyx")
    assert hyper.shape == (N_T, 1, N_Z, 32, 32)
    np.testing.assert_array_equal(hyper.read(1, 0), data[1])
    with pytest.raises(IsojaxInputError, match="names 5 axes but the stack has 4"):
        open_hyperstack(tmp_path / "plain.tif", axes="TCZYX")
    with pytest.raises(IsojaxInputError, match="name each axis once"):
        open_hyperstack(tmp_path / "plain.tif", axes="TZYY")


def test_a_3d_stack_is_not_a_series(files):
    assert not is_series(files / "stack.tif")
    assert not is_series(files / "stack.tif", axes="ZYX")
    assert is_series(files / "ij.tif")


@pytest.mark.parametrize(("text", "n", "expected"), [
    (None, 3, (0, 1, 2)), ("1", 3, (1,)), ("-1", 3, (2,)), ("0:2", 3, (0, 1)),
    ("::2", 5, (0, 2, 4)), ("1:", 3, (1, 2)), ("0:3", 3, (0, 1, 2)), ("::-1", 3, (2, 1, 0))])
def test_timepoints_take_python_slice_syntax(text, n, expected):
    assert parse_timepoints(text, n) == expected


@pytest.mark.parametrize(("text", "match"), [
    ("3", "time point 3 is out of range; the stack has 3 time points"),
    ("0:100", "100 is out of range"), ("a:b", "expected an index or a slice"),
    ("::0", "step must not be 0"), ("2:1", "selects no time point")])
def test_bad_timepoints_are_refused(text, match):
    with pytest.raises(IsojaxInputError, match=match):
        parse_timepoints(text, 3)


def test_channels_selection():
    assert parse_channels("0,2", 3) == (0, 2)
    assert parse_channels("2, 0", 3) == (2, 0)
    assert parse_channels(None, 2) == (0, 1)
    for text, match in (("0,3", "channel 3 is out of range; the stack has 3 channels"),
                        ("0,0", "named twice"), ("x", "channel numbers separated by commas")):
        with pytest.raises(IsojaxInputError, match=match):
            parse_channels(text, 3)


# ----------------------------------------------------------------------------------------
# Prediction


def test_predict_to_a_tzcyx_imagej_hyperstack(files, model, tmp_path, capsys):
    out = tmp_path / "iso.tif"
    assert main(["predict", str(files / "ij.tif"), "--model", str(model), "-o",
                 str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("one PSF; it restores all 2 channels") == 1
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        assert tif.series[0].axes == "TZCYX"
        assert tif.series[0].shape == (N_T, Z_UP, N_C, 32, 32)
    hyper = open_hyperstack(out)
    np.testing.assert_allclose(hyper.spacing, (0.1, 0.1, 0.1))
    assert hyper.time_interval == pytest.approx(2.5)
    assert hyper.channel_names == ("GFP", "RFP")
    restore, data = _network(model), _series()
    for t, c in ((0, 0), (2, 1)):
        np.testing.assert_allclose(hyper.read(t, c), restore(data[t, c]), rtol=1e-5, atol=1e-3)


def test_predict_a_selection_to_ome_zarr(files, model, tmp_path):
    out = tmp_path / "iso.zarr"
    result = predict_file(files / "ij.tif", model=model, output=out,
                          channels="1", timepoints="0:3:2", progress=False, log=lambda m: None)
    assert result.shape == (2, 1, Z_UP, 32, 32)
    hyper = open_hyperstack(out)
    assert (hyper.file_axes, hyper.shape) == ("TCZYX", (2, 1, Z_UP, 32, 32))
    np.testing.assert_allclose(hyper.spacing, (0.1, 0.1, 0.1))
    assert hyper.time_interval == pytest.approx(5.0)  # every second time point
    assert hyper.channel_names == ("RFP",)
    assert not (out / "isojax-done").exists()
    np.testing.assert_allclose(hyper.read(1, 0), _network(model)(_series()[2, 1]),
                               rtol=1e-5, atol=1e-3)


def test_each_time_point_is_normalised_on_its_own(files, model, tmp_path):
    # t2 is t0 bleached to 20%: restored at its own intensity, i.e. exactly 0.2 x t0's result
    data = _series(np.float32)
    data[2] = 0.2 * data[0]
    tifffile.imwrite(tmp_path / "bleach.tif", data.transpose(0, 2, 1, 3, 4), imagej=True,
                     resolution=(10.0, 10.0),
                     metadata={"axes": "TZCYX", "spacing": 0.3, "unit": "micron"})
    out = tmp_path / "bleach.zarr"
    predict_file(tmp_path / "bleach.tif", model=model, output=out, progress=False,
                 log=lambda m: None)
    array, _ = read_hyperstack(out)
    for c in range(N_C):
        np.testing.assert_allclose(array[2, c], 0.2 * array[0, c], rtol=1e-4,
                                   atol=1e-4 * np.abs(array[0, c]).max())
        assert abs(array[1, c].mean() / array[0, c].mean() - 0.6) < 0.1  # the data's bleaching


_KILLED_RUN = r"""
import sys
from isojax.cli import main
sys.exit(main(["predict", sys.argv[1], "--model", sys.argv[2], "-o", sys.argv[3], "--quiet"]))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_zarr_prediction_resumes_without_recomputing(files, model, tmp_path, sig):
    # SIGKILL: no cleanup at all (an out-of-memory kill); SIGTERM: a batch job's time limit,
    # which isojax answers by keeping the finished time points and saying how to go on
    data = np.concatenate([_series()] * 3)[:, :1]  # 9 time points, one channel
    tifffile.imwrite(tmp_path / "long.tif", data.transpose(0, 2, 1, 3, 4), imagej=True,
                     resolution=(10.0, 10.0),
                     metadata={"axes": "TZCYX", "spacing": 0.3, "unit": "micron"})
    out = tmp_path / "long.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(tmp_path / "long.tif"),
                             str(model), str(out)],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                            stderr=subprocess.PIPE, text=True)
    deadline, partial = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None:
        found = [p for p in tmp_path.glob("long.zarr.partial-*") if (p / "isojax-done").is_dir()
                 and any((p / "isojax-done").iterdir())]
        if found:
            proc.send_signal(sig)
            partial = found[0]
            break
        time.sleep(0.005)
    err = proc.communicate()[1]
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
        assert "isojax: interrupted (SIGTERM)" in err
        assert "run the same command with --resume to continue" in err
    assert partial is not None, "the run ended before its first time point was marked done"
    assert not out.exists()
    done = sorted(int(p.name[1:]) for p in (partial / "isojax-done").iterdir())
    assert 0 < len(done) < 9
    # mark what is finished: a recomputed time point would lose the mark
    from isojax.io import HyperstackZarr

    store = HyperstackZarr.open(partial)
    store.write(done[0], 0, np.full((Z_UP, 32, 32), -7.0, np.float32))
    lines = []
    result = predict_file(tmp_path / "long.tif", model=model, output=out,
                          resume=True, progress=False, log=lines.append)
    assert result.resumed == tuple(done)
    assert any("--resume: continuing" in line for line in lines)
    array, _ = read_hyperstack(out)
    assert np.all(array[done[0]] == -7.0)
    np.testing.assert_allclose(array[8, 0], _network(model)(data[8, 0]), rtol=1e-5, atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.tif", "long.zarr"]


def test_predict_an_ome_tiff_naming_fewer_channels_than_it_has(files, model, tmp_path):
    data = _series()
    src = _ome_naming_one_channel(tmp_path / "a.ome.tif", data)
    out = tmp_path / "iso.zarr"
    assert main(["predict", str(src), "--model", str(model), "-o", str(out), "--channels",
                 "1", "--timepoints", "0", "--quiet"]) == 0
    hyper = open_hyperstack(out)
    assert hyper.shape == (1, 1, Z_UP, 32, 32)
    assert hyper.channel_names == ("channel 0",)  # the writer's label of an unnamed channel
    np.testing.assert_allclose(hyper.read(0, 0), _network(model)(data[0, 1]),
                               rtol=1e-5, atol=1e-3)


def _one_line_error(argv, capsys, match):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("isojax: error:"), err
    assert match in err[0], err[0]


@pytest.mark.parametrize(("extra", "match"), [
    (["--axes", "CZYX"], "names 4 axes but the stack has 5"),
    (["--channels", "2"], "channel 2 is out of range; the stack has 2 channels"),
    (["--timepoints", "0:5"], "5 is out of range; the stack has 3 time points"),
    (["--resume"], "--resume continues an OME-Zarr output")])
def test_bad_input_gives_one_line_and_writes_nothing(files, model, tmp_path, capsys, extra, match):
    out = tmp_path / "out.tif"
    _one_line_error(["predict", str(files / "ij.tif"), "--model", str(model), "-o",
                     str(out), "--quiet", *extra], capsys, match)
    assert list(tmp_path.iterdir()) == []


def test_time_points_of_different_shapes_are_refused(files, model, tmp_path, capsys):
    data = _series()[:, :, :, :, :]
    with tifffile.TiffWriter(tmp_path / "ragged.tif") as tif:
        tif.write(data[0], metadata={"axes": "CZYX"})
        tif.write(data[1, :, :, :30], metadata={"axes": "CZYX"})
    out = tmp_path / "out.zarr"
    _one_line_error(["predict", str(tmp_path / "ragged.tif"), "--model", str(model),
                     "-o", str(out)], capsys, "every time point must have the same shape")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ragged.tif"]


def test_selection_flags_on_a_3d_stack_are_refused(files, model, tmp_path, capsys):
    _one_line_error(["predict", str(files / "stack.tif"), "--model", str(model),
                     "-o", str(tmp_path / "o.tif"), "--timepoints", "0"], capsys,
                    "--timepoints is for stacks with a time or channel axis")
    assert list(tmp_path.iterdir()) == []
