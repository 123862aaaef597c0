"""`isojax export` (a bioimage.io package with ONNX weights) and `isojax predict` with one.

The tests marked ``needs_extra`` need the ``export`` extra (jax2onnx, onnxruntime,
bioimage.io.core); they are skipped with that reason without it, and ``.ci/run`` runs this
module again in a venv that has it. The bad-input tests run everywhere.
"""

import importlib.util
import json
import zipfile

import numpy as np
import pytest

from isojax.cli import main
from isojax.io import read_tiff, write_tiff

_MISSING = [m for m in ("jax2onnx", "onnx", "onnxruntime", "bioimageio.core")
            if importlib.util.find_spec(m.split(".")[0]) is None
            or (m == "bioimageio.core" and importlib.util.find_spec(m) is None)]
needs_extra = pytest.mark.skipif(
    bool(_MISSING), reason=f"the export extra is not installed (missing {', '.join(_MISSING)}): "
    "pip install 'isojax[export]', or run .ci/run, which creates a venv with it")
# bioimageio.core and jax2onnx warn about things that are theirs (pydantic, conda, fields)
third_party_warnings = pytest.mark.filterwarnings("ignore::UserWarning",
                                                  "ignore::FutureWarning")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith("isojax: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A tiny Laplace model (2 steps, 4 filters) trained on a 10x32x32 stack, and its export."""
    d = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    stack = (rng.random((10, 32, 32)) * 1000).astype(np.uint16)
    write_tiff(d / "stack.tif", stack, spacing=(0.3, 0.1, 0.1), dtype=np.uint16)
    assert main(["psf", "theory", "--na", "0.8", "--wavelength", "0.5", "--ri", "1.33",
                 "--modality", "widefield", "--pixel-size", "0.1", "-o", str(d / "psf.tif")]) == 0
    assert main(["train", str(d / "stack.tif"), "--psf", str(d / "psf.tif"), "--model",
                 str(d / "model"), "--steps", "2", "--batch-size", "2", "--patch-size", "16",
                 "--first-filters", "4", "--checkpoint-every", "2", "--loss", "laplace",
                 "--quiet"]) == 0
    assert main(["export", str(d / "model"), "-o", str(d / "m.bioimageio.zip"),
                 "--author", "Test Author"]) == 0
    return d


@needs_extra
@third_party_warnings
def test_package_passes_bioimageio_test(package):
    from bioimageio.core import test_model

    summary = test_model(package / "m.bioimageio.zip")
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed


@needs_extra
@third_party_warnings
def test_onnxruntime_matches_isojax_network(package):
    import onnxruntime as ort
    import yaml

    from isojax.export.convert import load_network, network_function
    from isojax.train import load_model

    with zipfile.ZipFile(package / "m.bioimageio.zip") as z:
        weights = z.read("weights.onnx")
        x = np.load(z.open("test_input.npy"))
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    scale_range = rdf["inputs"][0]["preprocessing"][1]["kwargs"]
    lo, hi = np.percentile(x, [scale_range["min_percentile"], scale_range["max_percentile"]])
    u = ((x - lo) / (hi - lo + scale_range["eps"])).astype(np.float32)
    session = ort.InferenceSession(weights, providers=["CPUExecutionProvider"])
    apply_fn, _ = load_model(package / "model")
    _, net, params, _ = load_network(package / "model")
    rng = np.random.default_rng(1)
    # the test slice, and another (batch, size) to check the graph's sizes are symbolic
    for batch in (u, rng.random((2, 1, 100, 116), np.float32)):
        mean, scale = session.run(["mean", "scale"], {"input": batch})
        expected = np.asarray(apply_fn(batch[:, 0]))
        assert mean.shape == batch.shape
        assert scale.shape == batch.shape
        assert np.abs(mean[:, 0] - expected).max() <= 1e-4 * np.ptp(expected)
        _, expected_scale = network_function(net, params)(batch)
        expected_scale = np.asarray(expected_scale)
        assert np.abs(scale - expected_scale).max() <= 1e-4 * np.ptp(expected_scale)
        assert scale.min() > 0


@needs_extra
@third_party_warnings
def test_rdf_describes_the_model(package):
    import yaml

    from isojax.unet import UNetConfig

    meta = json.loads((package / "model" / "config.json").read_text())
    with zipfile.ZipFile(package / "m.bioimageio.zip") as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        readme = z.read(rdf["documentation"]).decode()
        names = set(z.namelist())
    net = UNetConfig(**meta["unet"])
    (inp,) = rdf["inputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert inp["axes"][2]["size"] == {"min": 92, "step": 4}  # 2 * 43 + 4, multiples of 2**2
    assert [o["id"] for o in rdf["outputs"]] == ["mean", "scale"]
    for out in rdf["outputs"]:
        assert [a.get("halo") for a in out["axes"][2:]] == [net.receptive_radius] * 2
    kw = inp["preprocessing"][1]["kwargs"]
    assert (kw["min_percentile"], kw["max_percentile"]) == (1.0, 99.8)
    assert abs(inp["axes"][2]["scale"] - 0.1) < 1e-6
    assert {c["doi"] for c in rdf["cite"]} >= {"10.1038/s41592-018-0216-7"}
    assert rdf["weights"]["onnx"]["opset_version"] == 17
    assert {"cover.png", "test_input.npy", "test_output_mean.npy", "test_output_scale.npy",
            "isojax.json", "psf.tif", "weights.onnx", "README.md"} <= names
    for words in ("**3**", "axial FWHM", "XZ and the YZ slices", "Fuse"):
        assert words in readme


@needs_extra
@third_party_warnings
def test_predict_with_the_package_matches_the_model_folder(package, capsys):
    for model, out in (("m.bioimageio.zip", "pkg.tif"), ("model", "dir.tif")):
        assert main(["predict", str(package / "stack.tif"), "--model", str(package / model),
                     "-o", str(package / out), "--quiet"]) == 0
    a, spacing, _ = read_tiff(package / "pkg.tif")
    b, _, _ = read_tiff(package / "dir.tif")
    assert a.shape == b.shape == (28, 32, 32)
    np.testing.assert_allclose(spacing, (0.1, 0.1, 0.1), rtol=1e-6)
    assert np.abs(a - b).max() <= 1e-4 * np.ptp(b)


@needs_extra
@third_party_warnings
@pytest.mark.parametrize("damage", ["empty", "no checkpoint"])
def test_export_of_an_incomplete_model_folder_writes_nothing(package, tmp_path, capsys, damage):
    model = tmp_path / "model"
    model.mkdir()
    if damage == "no checkpoint":
        for name in ("config.json", "psf.tif"):
            (model / name).write_bytes((package / "model" / name).read_bytes())
    capsys.readouterr()
    assert main(["export", str(model), "-o", str(tmp_path / "m.bioimageio.zip")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert str(model) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_export_without_the_extra_names_it(tmp_path, capsys):
    if not _MISSING or "jax2onnx" not in _MISSING:
        pytest.skip("jax2onnx is installed: the export runs")
    (tmp_path / "model").mkdir()
    assert main(["export", str(tmp_path / "model"), "-o", str(tmp_path / "m.bioimageio.zip")]) == 1
    assert "isojax[export]" in _one_error_line(capsys.readouterr().err)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("content", ["not a zip", "rdf only", "foreign isojax.json"])
def test_predict_with_a_package_isojax_did_not_export_writes_nothing(tmp_path, capsys,
                                                                      content):
    stack = tmp_path / "stack.tif"
    write_tiff(stack, np.random.default_rng(0).random((4, 8, 8), np.float32),
               spacing=(0.3, 0.1, 0.1))
    bad = tmp_path / "other.bioimageio.zip"
    if content == "not a zip":
        bad.write_bytes(b"PK but not really")
    else:
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("rdf.yaml", "type: model\nformat_version: 0.5.4\n")
            if content == "foreign isojax.json":
                z.writestr("isojax.json", json.dumps({"format": 1}))
    capsys.readouterr()
    assert main(["predict", str(stack), "--model", str(bad), "-o",
                 str(tmp_path / "out.tif"), "--quiet"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert str(bad) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name, "stack.tif"]
