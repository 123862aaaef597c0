"""The model-folder reader and the sample data, through napari's plugin manager (npe2)."""

import numpy as np
import pytest


def test_manifest_is_registered():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    assert "napari-isojax" in pm._manifests
    names = {w.display_name for w in pm.get_manifest("napari-isojax").contributions.widgets}
    assert names == {"Axial PSF", "Train", "Restore", "Calibrate"}


def test_reader_opens_a_model_folder(make_napari_viewer, tmp_path, stack, psf_file):
    from napari_isojax import _jobs, get_reader

    psf = _jobs.psf_from_file(psf_file, pixel_size=0.1)
    model = tmp_path / "model"
    _jobs.train_model(stack, psf, workdir=model, spacing=(0.2, 0.1, 0.1), steps=1,
                      batch_size=2, patch_size=16, first_filters=4)
    assert get_reader(str(tmp_path)) is None  # not a model folder
    viewer = make_napari_viewer()
    layers = viewer.open(str(model), plugin="napari-isojax")
    names = [la.name for la in layers]
    assert names == ["model PSF", "model loss"]
    assert np.allclose(viewer.layers["model PSF"].data, psf.dense())
    assert np.allclose(viewer.layers["model PSF"].scale, (0.1, 0.1))
    assert viewer.layers["model loss"].rgb


@pytest.mark.parametrize("shape", [(16, 32, 32)])
def test_sample_data_is_the_demo_stack_at_its_voxel_size(shape):
    from napari_isojax import demo_sample

    [(data, kwargs, kind)] = demo_sample(shape=shape)
    assert kind == "image"
    assert data.shape == (4, 32, 32)  # subsample 4
    assert kwargs["scale"] == pytest.approx((0.4, 0.1, 0.1))
    assert data.std() > 0
