"""train(should_stop=...): a caller outside the main thread stops training as SIGINT does."""

import json
import signal
import threading

import numpy as np

from isojax.interrupt import Interrupted
from isojax.synth import SynthConfig
from isojax.train import TrainConfig, _managers, train
from isojax.unet import UNetConfig

NET = UNetConfig(first_filters=4)


def _psf():
    g = np.exp(-0.5 * ((np.arange(9) - 4) / 1.2) ** 2)
    return (g / g.sum())[None].astype(np.float32)


def _train(workdir, *, steps, should_stop=None, resume=False):
    stack = (np.random.default_rng(0).random((8, 32, 32)) * 1000).astype(np.float32)
    return train(stack, _psf(), workdir=workdir, psf_pixel_size=0.1,
                 synth_config=SynthConfig(subsample=3.0, patch_size=16),
                 config=TrainConfig(steps=steps, batch_size=2, checkpoint_every=100,
                                    val_every=100, warmup_steps=0),
                 net=NET, progress=False, log=lambda msg: None, match_noise=False,
                 should_stop=should_stop, resume=resume)


def test_should_stop_in_a_worker_thread_saves_the_step_and_resume_finishes(tmp_path):
    model = tmp_path / "model"
    calls = []

    def should_stop():
        calls.append(threading.current_thread())
        return len(calls) >= 2  # after the second step

    caught = []

    def work():
        try:
            _train(model, steps=6, should_stop=should_stop)
        except Interrupted as exc:
            caught.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive()
    assert len(caught) == 1
    assert caught[0].signum == signal.SIGINT
    assert "stopped at step 2 of 6" in caught[0].message
    assert all(t is not threading.main_thread() for t in calls)
    last, _ = _managers(model)
    try:
        assert last.latest_step() == 2  # saved although checkpoint_every is 100
    finally:
        last.close()
    steps = [json.loads(x)["step"] for x in (model / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    summary = _train(model, steps=6, resume=True)
    assert summary["step"] == 6
    assert summary["steps_run"] == 4


def test_should_stop_at_the_last_step_finishes_normally(tmp_path):
    # a stop asked after the last step is not an interruption: the run is complete
    summary = _train(tmp_path / "model", steps=1, should_stop=lambda: True)
    assert summary["step"] == 1
    assert (tmp_path / "model" / "loss.png").exists()
