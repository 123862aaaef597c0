"""Training: the step, checkpoints, exact resume after SIGKILL, divergence, the model folder."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from isojax.errors import IsojaxInputError
from isojax.synth import SynthConfig
from isojax.train import (
    TrainConfig,
    TrainingDiverged,
    _managers,
    _restore,
    load_model,
    read_model_config,
    train,
)
from isojax.unet import UNetConfig

NET = UNetConfig(first_filters=4)
SYNTH = SynthConfig(subsample=3.0, patch_size=16)


def small_stack(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((12, 40, 40)).astype(np.float32) * 500 + 100


def axial_psf():
    g = np.exp(-0.5 * ((np.arange(9) - 4) / 1.5) ** 2)
    return (g / g.sum())[None].astype(np.float32)


def run_train(workdir, steps, *, resume=False, learning_rate=4e-4, checkpoint_every=5):
    cfg = TrainConfig(
        steps=steps,
        batch_size=4,
        learning_rate=learning_rate,
        checkpoint_every=checkpoint_every,
        val_every=5,
        warmup_steps=2,
    )
    return train(
        small_stack(),
        axial_psf(),
        workdir=workdir,
        synth_config=SYNTH,
        config=cfg,
        net=NET,
        progress=False,
        spacing=(0.3, 0.1, 0.1),
        psf_pixel_size=0.1,
        resume=resume,
    )


def test_training_writes_a_complete_model_folder(tmp_path):
    summary = run_train(tmp_path / "m", 10)
    assert summary["step"] == 10
    assert np.isfinite(summary["loss"])
    folder = tmp_path / "m"
    for name in (
        "config.json",
        "psf.tif",
        "metrics.jsonl",
        "loss.png",
        "checkpoints/last",
        "checkpoints/best",
    ):
        assert (folder / name).exists(), name
    meta = read_model_config(folder)
    assert meta["subsample"] == 3.0
    assert meta["spacing"] == [0.3, 0.1, 0.1]
    assert meta["normalization"]["lo"] < meta["normalization"]["hi"]
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 11))
    assert "val_loss" in lines[4]
    assert "val_loss" in lines[9]
    apply_fn, meta2 = load_model(folder)
    out = apply_fn(np.zeros((3, 16, 16), np.float32))
    assert out.shape == (3, 16, 16)
    assert meta2 == meta


def test_refuses_bad_input_and_overwriting(tmp_path):
    run_train(tmp_path / "m", 2)
    with pytest.raises(IsojaxInputError, match="already holds a model"):
        run_train(tmp_path / "m", 2)
    cfg = TrainConfig(steps=2, batch_size=2)
    with pytest.raises(IsojaxInputError, match="larger than the image"):
        train(
            small_stack()[:, :8, :8],
            axial_psf(),
            workdir=tmp_path / "x",
            synth_config=SYNTH,
            config=cfg,
            net=NET,
        )
    with pytest.raises(IsojaxInputError, match="3D"):
        train(
            small_stack()[0],
            axial_psf(),
            workdir=tmp_path / "y",
            synth_config=SYNTH,
            config=cfg,
            net=NET,
        )
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "y").exists()
    with pytest.raises(IsojaxInputError, match="settings differ"):
        train(
            small_stack(),
            axial_psf(),
            workdir=tmp_path / "m",
            synth_config=SYNTH,
            config=TrainConfig(steps=3, batch_size=4, learning_rate=1e-3),
            net=NET,
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="steps must be"):
        TrainConfig(steps=0)


@pytest.mark.parametrize("kind", ["constant", "one_bright_voxel"])
def test_stack_without_contrast_is_refused_before_any_work(tmp_path, kind):
    # without the check, both trained to a loss of 0: normalised, the stack is blank
    stack = np.full((12, 40, 40), 300.0, np.float32)
    if kind == "one_bright_voxel":
        stack[6, 20, 20] = 4000.0
    cfg = TrainConfig(steps=2, batch_size=2, checkpoint_every=2, val_every=2, warmup_steps=0)
    match = ("all voxels are 300" if kind == "constant"
             else r"its 1st and 99\.8th percentiles are both 300; only 1 of 19200 voxels differ")
    with pytest.raises(IsojaxInputError, match=r"the stack has no contrast \(" + match):
        train(stack, axial_psf(), workdir=tmp_path / "model", synth_config=SYNTH, config=cfg,
              net=NET, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="learning rate") as info:
        run_train(tmp_path / "m", 40, learning_rate=1e30, checkpoint_every=1)
    last, _ = _managers(tmp_path / "m")
    step = last.latest_step()
    assert step is not None
    assert f"step {step})" in str(info.value)
    state = _restore(
        last,
        NET,
        TrainConfig(
            steps=40,
            batch_size=4,
            learning_rate=1e30,
            checkpoint_every=1,
            val_every=5,
            warmup_steps=2,
        ),
    )
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))


WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_train import run_train
    run_train(sys.argv[1], 24, resume=len(sys.argv) > 2, checkpoint_every=3)
    """
)


def final_params(folder):
    last, _ = _managers(folder)
    cfg = TrainConfig(steps=24, batch_size=4, checkpoint_every=3, val_every=5, warmup_steps=2)
    return _restore(last, NET, cfg).params


@pytest.mark.slow
def test_exact_resume_after_sigkill(tmp_path):
    """Kill a training process with SIGKILL mid-run, resume it: same weights as a clean run."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(__import__("pathlib").Path(__file__).parent)))
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run([sys.executable, str(script), str(clean)], check=True, timeout=300)

    proc = subprocess.Popen([sys.executable, str(script), str(killed)])
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 8:
            break
        if proc.poll() is not None:
            pytest.fail("the worker finished before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(metrics.read_text().splitlines())
    assert done_before < 24
    subprocess.run([sys.executable, str(script), str(killed), "--resume"], check=True, timeout=300)

    a, b = final_params(clean), final_params(killed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, 25))


DP_WORKER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import jax
    from test_train import run_train
    assert jax.device_count() == int(sys.argv[2]), jax.device_count()
    run_train(sys.argv[1], 6)
    """
)


@pytest.mark.slow
def test_data_parallel_training_on_two_devices_matches_one(tmp_path):
    """Same global batch on 1 and on 2 (forced CPU) devices: the same loss trajectory."""
    import os

    script = tmp_path / "dp.py"
    script.write_text(DP_WORKER.format(tests=str(__import__("pathlib").Path(__file__).parent)))
    losses = {}
    for n in (1, 2):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        subprocess.run(
            [sys.executable, str(script), str(tmp_path / f"m{n}"), str(n)],
            check=True,
            env=env,
            timeout=300,
        )
        lines = (tmp_path / f"m{n}" / "metrics.jsonl").read_text().splitlines()
        losses[n] = [json.loads(x)["loss"] for x in lines]
    assert len(losses[2]) == 6
    np.testing.assert_allclose(losses[2], losses[1], rtol=2e-4)


def test_mixed_precision_training_keeps_float32_weights_and_learns(tmp_path):
    """compute_dtype='bfloat16': float32 weights and optimiser state, and it learns as float32."""
    from isojax.train import _compute_dtype, create_train_state, make_train_step

    rng = np.random.default_rng(0)
    x = rng.random((4, 16, 16)).astype(np.float32)
    batch = (x, 0.5 * x + 0.25)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        cfg = TrainConfig(steps=40, batch_size=4, learning_rate=3e-3, warmup_steps=0,
                          compute_dtype=dtype)
        graphdef, state = create_train_state(jax.random.key(0), NET, cfg)
        step = make_train_step(graphdef, NET, cfg)
        losses[dtype] = []
        for _ in range(40):
            state, m = step(state, batch)
            losses[dtype].append(float(m["loss"]))
    assert _compute_dtype(cfg) == jax.numpy.bfloat16
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.opt_state)
               if np.issubdtype(leaf.dtype, np.floating))
    f32, b16 = np.array(losses["float32"]), np.array(losses["bfloat16"])
    assert b16[-1] < 0.8 * b16[0]
    assert b16 != pytest.approx(f32, rel=1e-6)  # bfloat16 really computed
    np.testing.assert_allclose(b16[-10:].mean(), f32[-10:].mean(), rtol=0.25)
    with pytest.raises(ValueError, match="compute_dtype"):
        TrainConfig(steps=1, compute_dtype="float16")


@pytest.mark.slow  # two short joint-calibration runs
def test_resume_with_psf_calibration_continues_the_psf_exactly(tmp_path):
    """The joint PSF state is checkpointed: resuming from step 4 ends where the clean run did."""
    import math
    import shutil

    from isojax import calibrate
    from isojax.io import read_tiff
    from isojax.simulate import simulate_stack

    stack, _, _ = simulate_stack(jax.random.key(0), shape_zyx=(96, 96, 96), subsample=4.0,
                                 sigma_axial=math.sqrt(5.0), photons=500.0, read_noise=0.005)
    stack = np.asarray(stack)
    net = UNetConfig(depth=1, first_filters=4, kernel_size=3, n_conv_per_depth=1)
    cfg = TrainConfig(steps=8, batch_size=2, warmup_steps=1, checkpoint_every=4, val_every=4,
                      val_batches=1, learning_rate=1e-2)
    # a wide start and a fast PSF learning rate, so the PSF really moves between checkpoints
    cal = calibrate.CalibrationConfig(joint_every=1, steps=15, init_fwhm=9.4,
                                      joint_learning_rate=5e-2)
    folder = tmp_path / "m"

    def run(resume):
        return train(stack, None, workdir=folder, synth_config=SynthConfig(subsample=4.0, patch_size=16),
                     config=cfg, net=net, progress=False, calibrate_psf=True, calibration=cal,
                     resume=resume, log=lambda m: None)

    run(False)
    clean_psf = read_tiff(folder / "psf.tif")[0]
    clean = final_params_of(folder, net, cfg)
    traj = [json.loads(x)["psf_sigma_px"] for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert abs(traj[-1] - traj[3]) > 1e-4  # the PSF moved after the step-4 checkpoint
    shutil.rmtree(folder / "checkpoints" / "last" / "8")  # as if killed after step 4's save
    run(True)
    resumed_psf = read_tiff(folder / "psf.tif")[0]
    np.testing.assert_allclose(resumed_psf, clean_psf, rtol=1e-5, atol=1e-7)
    for x, y in zip(jax.tree.leaves(clean), jax.tree.leaves(final_params_of(folder, net, cfg)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def final_params_of(folder, net, cfg):
    last, _ = _managers(folder)
    return _restore(last, net, cfg).params


REWRITE = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    import isojax.io
    from isojax.train import _metrics_lines
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk: writes fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    _metrics_lines(Path(sys.argv[1]), 300)
    """
)


def test_metrics_rewrite_on_resume_keeps_the_old_file_when_the_write_fails(tmp_path):
    """The resume trims metrics.jsonl atomically: a failed rewrite loses no metric line."""
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": i, "loss": 0.001 * i, "grad_norm": 1.0}) for i in range(1, 401)]
    path.write_text("".join(x + "\n" for x in lines))
    r = subprocess.run([sys.executable, "-c", REWRITE, str(path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0  # the rewrite (12 kB) did not fit under the 4 kB limit
    assert "File too large" in r.stderr
    assert path.read_text().splitlines() == lines
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_resume_check_names_the_calibration_settings_that_differ(tmp_path):
    """With --calibrate-psf the PSF file is the learned one: the start of the fit is compared."""
    from isojax.train import _resume_differences

    run_train(tmp_path / "m", 2)
    meta = read_model_config(tmp_path / "m")
    cal = {"family": "gaussian", "init_fwhm": None, "steps": 40, "initial_fwhm_px": 3.0,
           "pre_calibrated_fwhm_px": 4.2}
    old = {**meta, "calibrate_psf": True, "calibration": cal}
    assert _resume_differences(old, old) == []
    assert _resume_differences(old, {**old, "train": {**meta["train"], "steps": 99}}) == []
    new = {**old, "calibration": {**cal, "family": "free", "pre_calibrated_fwhm_px": 6.0}}
    assert _resume_differences(old, new) == [
        "--family free here, gaussian in the model",
        "the pre-calibrated PSF width (its initial guess) 6 here, 4.2 in the model",
    ]
    assert _resume_differences(old, {**meta, "calibrate_psf": False}) == [
        "--calibrate-psf off here, on in the model"
    ]
    # the shape penalty's weight (default 1 before, 3e-4 now) is unused by the Gaussian
    # family: a Gaussian folder from before the change resumes; a free-form one is refused
    # with the reason
    before = {**old, "calibration": {**cal, "smoothness": 1.0, "n_lobes": 1}}
    now = {**old, "calibration": {**cal, "smoothness": 3e-4, "n_lobes": 1}}
    assert _resume_differences(before, now) == []
    free = {"family": "free"}
    lines = _resume_differences({**before, "calibration": {**before["calibration"], **free}},
                                {**now, "calibration": {**now["calibration"], **free}})
    assert len(lines) == 1
    assert lines[0].startswith("the shape penalty's weight")
    assert "0.0003 here, 1 in the model" in lines[0]
