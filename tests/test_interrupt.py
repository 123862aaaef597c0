"""SIGINT/SIGTERM on real `python -m isojax` processes, and progress lines in a log file."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from isojax.interrupt import Interrupted, deferred_signals, raise_on_signals
from isojax.io import write_tiff
from isojax.train import TrainConfig, _managers, _restore
from isojax.unet import UNetConfig

STEPS = 400
EVERY = 100
TRAIN_ARGS = ["--steps", str(STEPS), "--batch-size", "2", "--patch-size", "16",
              "--first-filters", "4", "--checkpoint-every", str(EVERY), "--log-every", "0.5"]
NET = UNetConfig(first_filters=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("interrupt")
    rng = np.random.default_rng(0)
    write_tiff(d / "stack.tif", (rng.random((8, 64, 64)) * 1000).astype(np.uint16),
               spacing=(0.3, 0.1, 0.1), dtype=np.uint16)
    g = np.exp(-0.5 * ((np.arange(13) - 6) / 1.5) ** 2)
    write_tiff(d / "psf.tif", (g / g.sum())[None].astype(np.float32), pixel_size=0.1)
    return d


# `python -m isojax`, with SIGINT at its default even where the tests run as a background job
# (a shell starts those with SIGINT ignored, and isojax leaves an ignored signal ignored)
MAIN = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'isojax'; runpy.run_module('isojax', run_name='__main__')")


def isojax(*args):
    return subprocess.Popen([sys.executable, "-c", MAIN, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train_cmd(data, model, *extra):
    return ["train", data / "stack.tif", "--psf", data / "psf.tif", "--model", model,
            *TRAIN_ARGS, *extra]


@pytest.fixture(scope="module")
def clean(data):
    """An uninterrupted run of the same command; stderr is a pipe, as under SLURM or nohup."""
    model = data / "clean"
    proc = isojax(*train_cmd(data, model))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return model, err


def params(model):
    cfg = TrainConfig(steps=STEPS, batch_size=2, checkpoint_every=EVERY, val_every=EVERY)
    last, _ = _managers(model)
    try:
        return last.latest_step(), _restore(last, NET, cfg).params
    finally:
        last.close()


def metrics(model):
    return [json.loads(x) for x in (model / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_resume_ends_where_a_clean_run_does(data, clean, sig):
    model = data / f"stopped-{sig.name}"
    proc = isojax(*train_cmd(data, model))
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for real progress, past the first checkpoint
        path = model / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= EVERY + 5:
            break
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith(f"isojax: interrupted ({sig.name}): training stopped at step")
    assert "--resume" in last_line
    stopped = int(re.search(r"at step (\d+) of", last_line).group(1))
    assert EVERY + 5 <= stopped < STEPS
    assert stopped % EVERY  # saved because of the signal, not by the periodic checkpoint
    step, _ = params(model)
    assert step == stopped  # the checkpoint is at the step where it stopped
    assert [r["step"] for r in metrics(model)] == list(range(1, stopped + 1))

    proc = isojax(*train_cmd(data, model, "--resume"))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"resuming {model} at step {stopped}" in err
    clean_step, clean_params = params(clean[0])
    step, resumed = params(model)
    assert step == clean_step == STEPS
    for x, y in zip(jax.tree.leaves(clean_params), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
    a, b = metrics(clean[0]), metrics(model)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-5)


@pytest.mark.slow
def test_progress_lines_and_time_estimate_when_stderr_is_not_a_terminal(clean):
    _, err = clean
    estimate = [x for x in err.splitlines() if "s/step on cpu" in x]
    assert len(estimate) == 1, err
    m = re.fullmatch(r"about .+ for the (\d+) steps left of 400 \(([\d.e-]+) s/step on cpu\)",
                     estimate[0])
    assert m, estimate[0]
    assert float(m.group(2)) > 0
    lines = [x for x in err.splitlines() if re.match(r"step \d+/400: loss ", x)]
    # one at each validation (every 100 steps) at least, plus the timed ones
    assert len(lines) >= STEPS // EVERY
    for step in range(EVERY, STEPS + 1, EVERY):
        val = [x for x in lines if x.startswith(f"step {step}/400:")]
        assert val, step
        assert "val_loss" in val[0]
        assert f"(step {step})" in val[0]
        assert re.search(r"[\d.]+ steps/s, about .+ left$", val[0]), val[0]
    steps = [int(re.match(r"step (\d+)/", x).group(1)) for x in lines]
    assert steps == sorted(steps)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iso.tif", "iso.zarr"])  # in memory, and streamed
def test_sigterm_during_prediction_leaves_no_output(data, clean, tmp_path, name):
    rng = np.random.default_rng(2)
    write_tiff(tmp_path / "big.tif", (rng.random((30, 128, 128)) * 1000).astype(np.uint16),
               spacing=(0.3, 0.1, 0.1), dtype=np.uint16)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = isojax("predict", tmp_path / "big.tif", "--model", clean[0], "-o", out_dir / name)
    err = []
    for line in proc.stderr:  # the stack is read and the prediction starts after this line
        err.append(line)
        if line.startswith("stack "):
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=300)[1]
    err = "".join(err) + rest
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "isojax: interrupted (SIGTERM)"
    assert list(out_dir.iterdir()) == []  # no output, no temporary file


def signal_self(sig):
    os.kill(os.getpid(), sig)
    time.sleep(5)  # a handler that raises does so here, at once


def test_signal_handlers_raise_or_defer_and_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with raise_on_signals(), pytest.raises(Interrupted) as info:
        signal_self(signal.SIGTERM)
    assert info.value.exit_code == 143
    assert str(info.value) == "interrupted (SIGTERM)"
    t0 = time.monotonic()
    with deferred_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.signum == signal.SIGTERM  # only noted
        with pytest.raises(Interrupted) as info:
            signal_self(signal.SIGTERM)  # a second one stops at once
    assert time.monotonic() - t0 < 4
    assert info.value.exit_code == 143
    assert "second signal" in str(info.value)
    assert {s: signal.getsignal(s) for s in before} == before
