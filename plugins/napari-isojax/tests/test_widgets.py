"""Each widget runs its real job on tiny data, in its worker thread, inside a headless viewer."""

import json
import os

import numpy as np
import pytest
from conftest import SPACING
from napari_isojax import CalibrateWidget, PSFWidget, RestoreWidget, TrainWidget
from napari_isojax._psf_widget import PSF_KEY

TIMEOUT = 240_000  # ms, per job (compilation included) on a loaded CI machine

# tiny training: 16 px patches, a network of 8 first filters
TINY = dict(steps=4, batch=2, patch=16, filters=8, checkpoint_every=100)


def _wait(qtbot, widget):
    """Until the widget's job has ended and the main thread has handled its result (a job
    may end before a signal could be waited for)."""
    qtbot.waitUntil(lambda: widget.worker.ended, timeout=TIMEOUT)


def _viewer_with(make_napari_viewer, stack, name="stack", *, show=False):
    viewer = make_napari_viewer(show=show)
    viewer.add_image(stack, name=name, scale=SPACING)
    return viewer


def _set(widget, **values):
    for name, v in values.items():
        getattr(widget, name).setValue(v)


def test_psf_from_theory_adds_the_layer_shows_the_report_and_saves(make_napari_viewer, qtbot,
                                                                   tmp_path):
    from isojax.io import read_tiff

    viewer = make_napari_viewer()
    w = PSFWidget(viewer)
    w.source.setCurrentText("theory")
    w.pixel_size.setValue(0.1)
    w.run()
    _wait(qtbot, w)
    layer = viewer.layers["axial PSF"]
    assert layer.data.ndim == 2
    assert layer.data.shape == w.result.psf.shape
    assert np.allclose(layer.scale, (0.1, 0.1))
    assert np.isclose(layer.data.sum(), 1.0, atol=1e-5)
    assert layer.metadata[PSF_KEY] is w.result.psf
    assert "FWHM" in w.report.toPlainText()
    assert w.figure.figure is not None  # the PSF and its profiles
    w.save(str(tmp_path / "axial.tif"))
    saved, _, _ = read_tiff(tmp_path / "axial.tif")
    assert np.allclose(saved, layer.data)


def test_psf_from_a_bead_layer_uses_its_scale(make_napari_viewer, qtbot):
    z, y, x = np.mgrid[:21, :25, :25]
    bead = 1000 * np.exp(-0.5 * (((z - 10) * 0.2 / 0.45) ** 2 + ((y - 12) * 0.1 / 0.12) ** 2
                                 + ((x - 12) * 0.1 / 0.12) ** 2)) + 10
    viewer = make_napari_viewer()
    viewer.add_image(bead.astype(np.float32), name="bead", scale=(0.2, 0.1, 0.1))
    w = PSFWidget(viewer)
    assert w.bead_spacing.value() == pytest.approx((0.2, 0.1, 0.1))  # from the layer
    w.pixel_size.setValue(0.1)
    w.run()
    _wait(qtbot, w)
    psf = viewer.layers["axial PSF"].data
    assert psf.shape[1] > psf.shape[0]  # longer axially than laterally
    # the additional axial blur: sqrt(0.45^2 - 0.12^2) um = 4.3 px sigma, FWHM ~10 px
    assert 7 < w.result.info["fwhm_um"][1] / 0.1 < 13


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Where the Train test writes its model folder (Restore and the reader read it)."""
    return tmp_path_factory.mktemp("train") / "model"


def _needs(model):
    if not (model / "config.json").exists():
        pytest.skip("needs the model folder of the Train test")


OFFSCREEN = os.environ.get("QT_QPA_PLATFORM") == "offscreen"


def test_train_runs_in_a_worker_with_progress_and_a_loss_plot(make_napari_viewer, qtbot, stack,
                                                              psf_file, trained):
    viewer = _viewer_with(make_napari_viewer, stack)
    w = TrainWidget(viewer)
    assert w.spacing.value() == pytest.approx(SPACING)
    w.psf_layer.setCurrentText("a PSF file")
    w.psf_file.setText(str(psf_file))
    w.model.setText(str(trained))
    _set(w, **TINY)
    w.run()
    assert w.worker is not None
    _wait(qtbot, w)
    assert not w.result.cancelled, w.status.text()
    assert w.result.summary["step"] == TINY["steps"]
    assert w.progress.value() == TINY["steps"]
    assert w.loss.figure is not None
    meta = json.loads((trained / "config.json").read_text())
    assert meta["spacing"] == list(SPACING)
    assert meta["subsample"] == pytest.approx(2.0)
    assert meta["unet"]["first_filters"] == 8


def test_restore_adds_the_isotropic_layer_lined_up_and_the_screenshot_is_not_blank(
        make_napari_viewer, qtbot, stack, trained, tmp_path):
    from isojax.predict import upsampled_length

    _needs(trained)
    viewer = _viewer_with(make_napari_viewer, stack, show=not OFFSCREEN)
    viewer.layers["stack"].translate = (1.0, 0.5, 0.0)
    w = RestoreWidget(viewer)
    w.model.setText(str(trained))
    w.run()
    _wait(qtbot, w)
    out = viewer.layers["stack isotropic"]
    assert out.data.shape == (upsampled_length(16, 2.0), 32, 32)
    assert np.allclose(out.scale, (0.1, 0.1, 0.1))  # (dz / 2, dy, dx)
    assert np.allclose(out.translate, (1.0, 0.5, 0.0))
    assert w.progress.value() == w.progress.maximum() > 0
    if OFFSCREEN:
        pytest.skip("Qt's offscreen platform has no OpenGL: run under Xvfb (ci.sh) for the "
                    "screenshot")
    viewer.layers["stack"].visible = False
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    from imageio.v3 import imwrite

    imwrite(tmp_path / "restored.png", shot)
    assert shot.ndim == 3
    assert shot[..., :3].std() > 1.0  # not one flat colour
    assert (shot[..., :3].max(axis=-1) > 40).mean() > 0.01  # the volume is drawn


def test_an_unusable_model_is_reported_in_the_widget(make_napari_viewer, qtbot, stack,
                                                    tmp_path):
    viewer = _viewer_with(make_napari_viewer, stack)
    w = RestoreWidget(viewer)
    w.model.setText(str(tmp_path / "no-model"))
    w.run()
    _wait(qtbot, w)
    assert w.status.text().startswith("error: ")
    assert "no-model" in w.status.text()
    assert "stack isotropic" not in viewer.layers
    assert w.button.isEnabled()


def test_reader_opens_the_model_folder(make_napari_viewer, trained, psf_file):
    from napari_isojax import get_reader

    from isojax.io import read_tiff

    _needs(trained)
    assert get_reader(str(trained.parent)) is None  # not a model folder
    viewer = make_napari_viewer()
    layers = viewer.open(str(trained), plugin="napari-isojax")
    assert [la.name for la in layers] == ["model PSF", "model loss"]
    psf, _, _ = read_tiff(psf_file)
    assert np.allclose(viewer.layers["model PSF"].data, psf, atol=1e-6)
    assert np.allclose(viewer.layers["model PSF"].scale, (0.1, 0.1))
    loss = viewer.layers["model loss"]
    assert loss.rgb
    assert loss.data.shape[-1] == 4
    assert loss.data[..., :3].std() > 1  # a drawn plot


def test_cancel_keeps_the_last_checkpoint(make_napari_viewer, qtbot, stack, psf_file, tmp_path):
    from isojax.train import _managers

    viewer = _viewer_with(make_napari_viewer, stack)
    w = TrainWidget(viewer)
    w.psf_layer.setCurrentText("a PSF file")
    w.psf_file.setText(str(psf_file))
    model = tmp_path / "model"
    w.model.setText(str(model))
    _set(w, **{**TINY, "steps": 10_000})
    w.run()
    # the main thread's event loop follows the run while it trains: the viewer is free
    qtbot.waitUntil(lambda: w.progress.value() >= 2, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: w.loss.figure is not None, timeout=TIMEOUT)  # the live loss plot
    assert w.worker.is_running
    assert not w.train_button.isEnabled()
    w.cancel()
    _wait(qtbot, w)
    assert w.result.cancelled
    last, _ = _managers(model)
    try:
        step = last.latest_step()
    finally:
        last.close()
    assert 2 <= step < 10_000  # saved where it stopped (checkpoint_every is 100)
    assert "stopped at step" in w.status.text()


def test_calibrate_adds_the_psf_with_its_profile_plot(make_napari_viewer, qtbot, stack):
    viewer = _viewer_with(make_napari_viewer, stack)
    w = CalibrateWidget(viewer)
    w.steps.setValue(3)
    w.run()
    _wait(qtbot, w)
    layer = viewer.layers["calibrated PSF"]
    assert layer.data.ndim == 2
    assert np.allclose(layer.scale, (0.1, 0.1))
    assert w.figure.figure is not None
    assert "FWHM" in w.status.text()
    # the stack was blurred by sigma 3 px axially (the isotropic blur of 1 px is shared)
    assert 1.5 < w.result.report.sigma_px < 4.5
