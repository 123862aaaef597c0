"""The manifest (npe2) and the sample data."""

import pytest


def test_manifest_is_registered():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    assert "napari-isojax" in pm._manifests
    names = {w.display_name for w in pm.get_manifest("napari-isojax").contributions.widgets}
    assert names == {"Axial PSF", "Train", "Restore", "Calibrate"}


@pytest.mark.parametrize("shape", [(16, 32, 32)])
def test_sample_data_is_the_demo_stack_at_its_voxel_size(shape):
    from napari_isojax import demo_sample

    [(data, kwargs, kind)] = demo_sample(shape=shape)
    assert kind == "image"
    assert data.shape == (4, 32, 32)  # subsample 4
    assert kwargs["scale"] == pytest.approx((0.4, 0.1, 0.1))
    assert data.std() > 0
