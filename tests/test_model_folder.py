"""Damaged model folders: one `isojax: error:` line naming the file and what to do.

One tiny model is trained per module (checkpoints: best/4, last/2 and last/4); each test damages
a copy of it the way a full disk, a cut-short copy or a hand edit would, and runs the command
line on it.
"""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

from isojax.cli import main
from isojax.io import write_tiff

SPACING = (0.3, 0.1, 0.1)  # subsample 3
TRAIN = ["--steps", "4", "--batch-size", "2", "--patch-size", "16", "--first-filters", "4",
         "--checkpoint-every", "2", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("model_folder")
    rng = np.random.default_rng(0)
    write_tiff(d / "stack.tif", (rng.random((10, 32, 32)) * 1000).astype(np.uint16),
               spacing=SPACING, dtype=np.uint16)
    g = np.exp(-0.5 * ((np.arange(9) - 4) / 1.5) ** 2)
    write_tiff(d / "psf.tif", (g / g.sum())[None].astype(np.float32), pixel_size=0.1)
    code = main(["train", str(d / "stack.tif"), "--psf", str(d / "psf.tif"), "--model",
                 str(d / "model"), *TRAIN])
    assert code == 0
    steps = {k: sorted(p.name for p in (d / "model" / "checkpoints" / k).iterdir())
             for k in ("best", "last")}
    assert steps == {"best": ["4"], "last": ["2", "4"]}
    return d


@pytest.fixture
def model(trained, tmp_path):
    """A fresh copy of the trained model folder."""
    return shutil.copytree(trained / "model", tmp_path / "model")


def predict(trained, model, out, *extra):
    return main(["predict", str(trained / "stack.tif"), "--model", str(model), "-o", str(out),
                 "--quiet", *extra])


def one_error_line(capsys) -> str:
    """The captured stderr, which must be exactly one `isojax: error:` line."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("isojax: error: ")
    return lines[0]


def truncate(path, fraction=0.5):
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * fraction))


def largest(folder, pattern):
    return max(folder.glob(pattern), key=lambda p: p.stat().st_size)


# ------------------------------------------------------------------------- checkpoints

BEST = "checkpoints/best/4"

# (what is done to which file of best/4, the file the message must name)
DAMAGE = {
    "_METADATA truncated": ("truncate", "default/_METADATA", "default/_METADATA"),
    "_METADATA deleted": ("delete", "default/_METADATA", "default/_METADATA"),
    "_sharding truncated": ("truncate", "default/_sharding", "default/_sharding"),
    "array metadata emptied": ("empty", "default/array_metadatas/process_0",
                               "default/array_metadatas/process_0"),
    "array data truncated": ("truncate", "default/d/*", "default/d/"),
    "array data deleted": ("delete", "default/d/*", "default/d/"),
    "manifest truncated": ("truncate", "default/manifest.ocdbt", "default/manifest.ocdbt"),
    "database data truncated": ("truncate", "default/ocdbt.process_0/d/*", "default/"),
    "metrics truncated": ("truncate", "metrics/metrics", "metrics/metrics"),
    "array folder deleted": ("delete", "default", "default"),
}


def damage(folder, action, pattern):
    path = largest(folder, pattern) if "*" in pattern else folder / pattern
    if action == "delete" and path.is_dir():
        shutil.rmtree(path)
    elif action == "delete":
        path.unlink()
    else:
        truncate(path, 0.0 if action == "empty" else 0.5)


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_best_checkpoint_names_the_file_and_the_intact_last(trained, model, tmp_path,
                                                                    capsys, case):
    action, pattern, named = DAMAGE[case]
    damage(model / BEST, action, pattern)
    out = tmp_path / "iso.tif"
    assert predict(trained, model, out) == 1
    line = one_error_line(capsys)
    assert f"checkpoint {model / BEST} is damaged: " in line
    assert str(model / BEST / named) in line
    assert "checkpoints/last/4 is intact: predict from it with --checkpoint last" in line
    assert not out.exists()


def test_checkpoint_last_predicts_when_only_best_is_damaged(trained, model, tmp_path, capsys):
    reference = tmp_path / "reference.tif"
    assert predict(trained, trained / "model", reference, "--checkpoint", "last") == 0
    truncate(model / BEST / "default" / "manifest.ocdbt")
    out = tmp_path / "iso.tif"
    assert predict(trained, model, out, "--checkpoint", "last") == 0
    assert "error" not in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(reference))


def test_checkpoint_option_picks_the_checkpoint_and_names_the_intact_ones(trained, model,
                                                                          tmp_path, capsys):
    last4 = model / "checkpoints" / "last" / "4"
    largest(last4, "default/ocdbt.process_0/d/*").unlink()
    out = tmp_path / "iso.tif"
    assert predict(trained, model, out, "--checkpoint", "last") == 1
    line = one_error_line(capsys)
    assert f"checkpoint {last4} is damaged" in line
    assert "checkpoints/best/4 is intact: predict from it with --checkpoint best" in line
    assert "move checkpoints/last/4 out of the model folder to predict from checkpoints/last/2" \
        in line
    assert not out.exists()
    assert predict(trained, model, out) == 0  # best (the default) is intact
    assert out.exists()


def test_no_silent_fallback_when_best_is_gone(trained, model, tmp_path, capsys):
    shutil.rmtree(model / BEST)
    out = tmp_path / "iso.tif"
    assert predict(trained, model, out) == 1
    line = one_error_line(capsys)
    assert f"{model / 'checkpoints' / 'best'}: holds no checkpoint" in line
    assert "--checkpoint last" in line
    assert not out.exists()


def test_only_an_older_last_step_intact_says_how_to_reach_it(trained, model, tmp_path, capsys):
    for step in ("best/4", "last/4"):
        truncate(model / "checkpoints" / step / "default" / "manifest.ocdbt")
    out = tmp_path / "iso.tif"
    assert predict(trained, model, out) == 1
    line = one_error_line(capsys)
    assert ("checkpoints/last/2 is intact: predict from it with --checkpoint last (the last "
            "training step, not the one with the best validation loss) after moving "
            "checkpoints/last/4 out of the model folder") in line
    assert not out.exists()
    shutil.move(model / "checkpoints" / "last" / "4", tmp_path / "last-4-damaged")
    assert predict(trained, model, out, "--checkpoint", "last") == 0
    assert out.exists()


def test_nothing_intact_says_retrain(trained, model, tmp_path, capsys):
    for step in ("best/4", "last/2", "last/4"):
        truncate(model / "checkpoints" / step / "default" / "_METADATA")
    out = tmp_path / "iso.tif"
    assert predict(trained, model, out, "--checkpoint", "last") == 1
    line = one_error_line(capsys)
    assert "checkpoints/last/4/default/_METADATA is not valid JSON" in line
    assert "no other checkpoint is intact: retrain with `isojax train`" in line


@pytest.mark.slow  # a fresh interpreter
def test_a_damaged_checkpoint_leaves_no_traceback_on_the_real_stderr(trained, model, tmp_path):
    """orbax's abandoned concurrent reads report to stderr after the error; none is left."""
    truncate(largest(model / BEST, "default/ocdbt.process_0/d/*"))
    out = tmp_path / "iso.tif"
    proc = subprocess.run(
        [sys.executable, "-m", "isojax", "predict", str(trained / "stack.tif"), "--model",
         str(model), "-o", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("isojax: error: checkpoint ")
    assert not out.exists()


# --------------------------------------------------------------------------- resume


def resume(trained, model, steps="4"):
    args = list(TRAIN)
    args[args.index("--steps") + 1] = steps
    return main(["train", str(trained / "stack.tif"), "--psf", str(trained / "psf.tif"),
                 "--model", str(model), *args, "--resume"])


@pytest.mark.slow  # resumes a training run
def test_resume_from_a_damaged_last_checkpoint_says_how_to_continue(trained, model, capsys):
    last4 = model / "checkpoints" / "last" / "4"
    truncate(last4 / "default" / "_METADATA")
    metrics = (model / "metrics.jsonl").read_text()
    # extended to 6 steps: a resume that has work to do reads the last checkpoint (one at
    # --steps already would have nothing to do and read none)
    assert resume(trained, model, steps="6") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("isojax: error:")]
    assert errors == [err.strip().splitlines()[-1]]
    assert f"checkpoint {last4} is damaged: {last4 / 'default' / '_METADATA'}" in errors[0]
    assert ("checkpoints/last/2 is intact: move checkpoints/last/4 out of the model folder and "
            "resume again to continue from step 2") in errors[0]
    assert (model / "metrics.jsonl").read_text() == metrics
    # the advice works: training continues from step 2
    shutil.move(last4, model.parent / "last-4-damaged")
    assert resume(trained, model, steps="6") == 0
    steps = [json.loads(x)["step"] for x in (model / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (model / "checkpoints" / "last" / "6" / "default" / "_METADATA").exists()


def test_resume_with_damaged_best_metrics_names_the_file(trained, model, capsys):
    metrics = model / BEST / "metrics" / "metrics"
    truncate(metrics)
    assert resume(trained, model) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"isojax: error: checkpoint {model / BEST} is damaged: {metrics}")
    assert "move checkpoints/best/4 out of the model folder and resume again" in line


# ---------------------------------------------------------------------- config.json


def edit(key_path, value=None, *, drop=False):
    def apply(meta):
        *parents, last = key_path.split(".")
        d = meta
        for k in parents:
            d = d[k]
        if drop:
            del d[last]
        else:
            d[last] = value
        return meta

    return apply


CONFIG = {
    "no normalization": (edit("normalization", drop=True), 'missing key "normalization"'),
    "no normalization.pmin": (edit("normalization.pmin", drop=True),
                              'missing key "normalization.pmin"'),
    "no unet": (edit("unet", drop=True), 'missing key "unet"'),
    "no unet.depth": (edit("unet.depth", drop=True), 'missing key "unet.depth"'),
    "no subsample": (edit("subsample", drop=True), 'missing key "subsample"'),
    "no interpolation": (edit("interpolation", drop=True), 'missing key "interpolation"'),
    "unknown unet key": (edit("unet.foo", 1), 'unknown key "unet.foo"'),
    "depth as text": (edit("unet.depth", "2"), 'key "unet.depth" is "2", where a whole number'),
    "normalization a list": (edit("normalization", [1, 99]), 'key "normalization" is [1, 99]'),
    "steps out of range": (edit("train.steps", -1), 'key "train": steps must be'),
    "pmin above pmax": (edit("normalization.pmin", 99.9), "pmin < pmax"),
    "subsample disagrees": (edit("subsample", 2.0), '"synth.subsample" is'),
    "psf shape missing": (edit("psf.shape", drop=True), 'missing key "psf.shape"'),
}


@pytest.mark.parametrize("case", list(CONFIG))
def test_damaged_config_names_the_file_key_and_version(trained, model, tmp_path, capsys, case):
    change, expected = CONFIG[case]
    path = model / "config.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    out = tmp_path / "iso.tif"
    assert predict(trained, model, out) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"isojax: error: {path}: ")
    assert expected in line
    assert "(written by isojax 0.1.0)" in line
    assert "isojax train" in line
    assert not out.exists()


@pytest.mark.parametrize("text", ['{"format": 1, "unet": {', "[1, 2]", b"\xff\xfe\x00"],
                         ids=["cut short", "a list", "binary"])
def test_unreadable_config_names_the_file(trained, model, tmp_path, capsys, text):
    path = model / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "iso.tif"
    assert predict(trained, model, out) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"isojax: error: {path}: ")
    assert "retrain with `isojax train`, or restore config.json from a copy" in line
    assert not out.exists()


def test_config_without_the_keys_added_later_still_loads(trained, model):
    """Folders written before format 1 gained calibrate_psf and train.compute_dtype load."""
    from isojax.train import load_model

    path = model / "config.json"
    meta = json.loads(path.read_text())
    del meta["calibrate_psf"], meta["train"]["compute_dtype"]
    path.write_text(json.dumps(meta))
    apply_fn, loaded = load_model(model)
    assert apply_fn(np.zeros((2, 16, 16), np.float32)).shape == (2, 16, 16)
    assert loaded == meta


@pytest.mark.parametrize("how", ["truncated", "empty", "other shape"])
def test_damaged_psf_file_names_it(trained, model, tmp_path, capsys, how):
    psf = model / "psf.tif"
    if how == "other shape":
        write_tiff(psf, np.ones((3, 9), np.float32) / 27, pixel_size=0.1)
    else:
        truncate(psf, 0.5 if how == "truncated" else 0.0)
    out = tmp_path / "iso.tif"
    assert predict(trained, model, out) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"isojax: error: {psf}: ")
    assert "restore psf.tif from a copy" in line
    assert not out.exists()


IMPORT_ORDERS = textwrap.dedent(
    """
    import importlib, sys
    first = sys.argv[1]
    importlib.import_module(first)  # any module first: no import cycle between the layers
    import isojax.model_folder as mf
    import isojax.train as t
    from isojax.train import loop
    assert t.train is loop.train and t.load_model is mf.load_model
    assert t.read_model_config is mf.read_model_config and t.FORMAT == mf.FORMAT == 1
    assert t._managers is mf.open_managers and t._restore is mf.restore_state
    print("ok", first)
    """
)


@pytest.mark.parametrize("first", ["isojax.model_folder.checkpoints", "isojax.train.loop"])
def test_model_folder_and_training_import_in_any_order(first):
    """isojax.train re-exports the model folder's names; the layers import without a cycle."""
    r = subprocess.run([sys.executable, "-c", IMPORT_ORDERS, first], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ok {first}"
