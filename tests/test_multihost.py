"""Multi-host training for real: two processes over loopback, each with 2 CPU devices.

Each test starts its own worker processes (``JAX_NUM_CPU_DEVICES=2``), so the rest of the
suite keeps its single CPU device.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from isojax import distributed
from isojax.errors import IsojaxInputError
from isojax.io import write_tiff
from isojax.train import load_model

WORKER = textwrap.dedent(
    """
    import hashlib, json, sys
    import jax, numpy as np
    from isojax import distributed
    distributed.initialize(sys.argv[1], 2, int(sys.argv[2]), host_timeout=int(sys.argv[5]))
    assert jax.device_count() == 4 and jax.local_device_count() == 2, jax.devices()
    sys.path.insert(0, {tests!r})
    from test_train import axial_psf, small_stack
    from isojax.synth import SynthConfig
    from isojax.train import TrainConfig, _managers, _restore, train
    from isojax.unet import UNetConfig

    folder, steps = sys.argv[3], int(sys.argv[4])
    net = UNetConfig(first_filters=4)
    cfg = TrainConfig(steps=steps, batch_size=8, checkpoint_every=2, val_every=2, warmup_steps=1)
    summary = train(small_stack(), axial_psf(), workdir=folder, net=net, config=cfg,
                    synth_config=SynthConfig(subsample=3.0, patch_size=16), progress=False)
    last, _ = _managers(__import__("pathlib").Path(folder))
    params = _restore(last, net, cfg).params
    digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(params)))
    out = {{"digest": digest.hexdigest(), "loss": summary["loss"], "step": summary["step"]}}
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(tmp_path, steps, host_timeout=30, cli=False):
    """Two processes over loopback: the Python worker above, or ``isojax train``."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", PYTHONUNBUFFERED="1")
    address = f"127.0.0.1:{free_port()}"
    if cli:
        sys.path.insert(0, str(Path(__file__).parent))
        from test_train import axial_psf, small_stack

        write_tiff(tmp_path / "stack.tif", small_stack(), spacing=(0.3, 0.1, 0.1))
        write_tiff(tmp_path / "psf.tif", axial_psf(), pixel_size=0.1)
        command = [sys.executable, "-m", "isojax", "train", str(tmp_path / "stack.tif"),
                   "--psf", str(tmp_path / "psf.tif"), "--steps", str(steps),
                   "--batch-size", "8", "--patch-size", "16", "--first-filters", "4",
                   "--checkpoint-every", "2", "--model", str(tmp_path / "model"),
                   "--coordinator", address, "--num-processes", "2",
                   "--host-timeout", str(host_timeout), "--process-id"]
    else:
        script = tmp_path / "worker.py"
        script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
        command = [sys.executable, str(script), address, None, str(tmp_path / "model"),
                   str(steps), str(host_timeout)]
    procs = []
    for rank in (0, 1):
        argv = [str(rank) if a is None else a for a in command]
        if cli:
            argv.append(str(rank))
        with open(tmp_path / f"out{rank}", "w") as out, open(tmp_path / f"err{rank}", "w") as err:
            procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=err))
    return procs


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_two_processes_train_the_same_parameters(tmp_path):
    procs = start_workers(tmp_path, steps=4)
    try:
        for p in procs:
            p.wait(timeout=400)
    finally:
        stop(procs)
    results = []
    for rank, p in enumerate(procs):
        assert p.returncode == 0, "\n".join(
            f"--- process {r} (exit {q.returncode}):\n" + (tmp_path / f"err{r}").read_text()[-2000:]
            for r, q in enumerate(procs))
        out = (tmp_path / f"out{rank}").read_text()
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
    # both hosts hold the same weights and saw the same (global) loss
    assert results[0]["digest"] == results[1]["digest"]
    assert results[0]["loss"] == results[1]["loss"]
    assert np.isfinite(results[0]["loss"])
    assert results[0]["step"] == results[1]["step"] == 4
    # only process 0 wrote the metrics: one line per step, not two
    lines = (tmp_path / "model" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    assert (tmp_path / "model" / "loss.png").exists()
    # the checkpoint written by the 4-device job loads in a plain one-device process
    apply_fn, _ = load_model(tmp_path / "model", which="last")
    x = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    y = np.asarray(apply_fn(x))
    assert y.shape == x.shape
    assert np.all(np.isfinite(y))
    digest = hashlib.sha256(b"".join(
        np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(_params(tmp_path / "model"))))
    assert digest.hexdigest() == results[0]["digest"]


def _params(folder):
    from isojax.train import TrainConfig, _managers, _restore
    from isojax.unet import UNetConfig

    last, _ = _managers(folder)
    cfg = TrainConfig(steps=4, batch_size=8, checkpoint_every=2, val_every=2, warmup_steps=1)
    return _restore(last, UNetConfig(first_filters=4), cfg).params


@pytest.mark.slow
def test_a_dead_host_stops_the_others_and_leaves_a_readable_checkpoint(tmp_path):
    """Through the CLI: host 1 is killed after a checkpoint; host 0 stops within the timeout."""
    timeout = 5
    procs = start_workers(tmp_path, steps=100_000, host_timeout=timeout, cli=True)
    last = tmp_path / "model" / "checkpoints" / "last"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait for a complete checkpoint, then kill host 1
            if last.exists() and any(p.name.isdigit() and int(p.name) >= 2 for p in last.iterdir()):
                break
            assert all(p.poll() is None for p in procs), (tmp_path / "err0").read_text()[-3000:]
            time.sleep(0.1)
        else:
            pytest.fail("no checkpoint appeared within 300 s")
        procs[1].kill()
        killed_at = time.time()
        procs[0].wait(timeout=timeout + 90)  # fails fast: no hang in a collective
        waited = time.time() - killed_at
    finally:
        stop(procs)
    err = (tmp_path / "err0").read_text()
    assert procs[0].returncode != 0
    assert waited < timeout + 90
    assert "another task died" in err or "unhealthy" in err, err[-3000:]
    # only process 0 printed the run's messages
    assert "subsample" in err
    assert "subsample" not in (tmp_path / "err1").read_text()
    # the last complete checkpoint is readable
    apply_fn, _ = load_model(tmp_path / "model", which="last")
    y = np.asarray(apply_fn(np.ones((1, 16, 16), np.float32)))
    assert np.all(np.isfinite(y))


def test_initialize_rejects_bad_settings(monkeypatch):
    for name in (distributed.ENV_ADDRESS, distributed.ENV_COUNT, distributed.ENV_ID):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(IsojaxInputError, match="host:port"):
        distributed.initialize("localhost", 2, 0)
    with pytest.raises(IsojaxInputError, match=r"outside 0\.\.1"):
        distributed.initialize("localhost:1234", 2, 2)
    with pytest.raises(IsojaxInputError, match=">= 1"):
        distributed.initialize("localhost:1234", 0, 0)
    monkeypatch.setenv(distributed.ENV_COUNT, "two")
    with pytest.raises(IsojaxInputError, match="JAX_NUM_PROCESSES"):
        distributed.initialize("localhost:1234")
    monkeypatch.delenv(distributed.ENV_COUNT)
    with pytest.raises(IsojaxInputError, match="host_timeout"):
        distributed.initialize("localhost:1234", 2, 0, host_timeout=0)
    # none of these joined a job
    assert not jax.distributed.is_initialized()


def test_cli_distributed_without_a_job_says_what_to_pass(tmp_path, monkeypatch, capsys):
    from isojax.cli import main

    for name in (distributed.ENV_ADDRESS, distributed.ENV_COUNT, distributed.ENV_ID,
                 "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    args = ["train", str(tmp_path / "s.tif"), "--psf", str(tmp_path / "p.tif"), "--steps", "1",
            "--model", str(tmp_path / "m")]
    # a fresh process: this one has run JAX computations, which rules out joining a job
    done = subprocess.run([sys.executable, "-m", "isojax", *args, "--distributed"],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")})
    assert done.returncode == 1
    assert "--coordinator HOST:PORT" in done.stderr
    jax.numpy.zeros(1).block_until_ready()  # in this process JAX has computed:
    assert main([*args, "--distributed"]) == 1  # too late to join, and it says so
    assert "before any other JAX work" in capsys.readouterr().err
    assert main([*args, "--coordinator", "nohost"]) == 1
    assert "host:port" in capsys.readouterr().err
    assert not jax.distributed.is_initialized()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_to_one_host_stops_all_at_the_same_step_with_a_checkpoint(tmp_path):
    """Through the CLI: SIGTERM to host 0 only; both hosts agree, save and exit 143."""
    import signal

    procs = start_workers(tmp_path, steps=100_000, cli=True)
    metrics = tmp_path / "model" / "metrics.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait for real progress
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
                break
            assert all(p.poll() is None for p in procs), (tmp_path / "err0").read_text()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail("no progress within 300 s")
        procs[0].send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=120)  # no hang in a collective
    finally:
        stop(procs)
    stopped = []
    for rank, p in enumerate(procs):
        err = (tmp_path / f"err{rank}").read_text()
        assert p.returncode == 143, err[-3000:]
        assert "Traceback" not in err
        last_line = err.strip().splitlines()[-1]
        assert last_line.startswith("isojax: interrupted (SIGTERM): training stopped at step")
        stopped.append(int(last_line.split("at step ")[1].split()[0]))
    assert stopped[0] == stopped[1]
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, stopped[0] + 1))
    from isojax.train import _managers

    last, _ = _managers(tmp_path / "model")
    assert last.latest_step() == stopped[0]
    last.close()
