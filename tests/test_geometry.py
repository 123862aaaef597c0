"""isojax.geometry: the stack geometry, checked once where it is built."""

import dataclasses

import jax
import numpy as np
import pytest
import tifffile

from isojax import geometry
from isojax.errors import IsojaxInputError
from isojax.geometry import StackGeometry, check_subsample, from_metadata
from isojax.io import write_ome_zarr, write_tiff

SPACING = (0.3, 0.1, 0.1)  # dz / dx = 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subsample": 0.5}, r"subsample must be a finite number >= 1"),
        ({"subsample": float("nan")}, r">= 1"),
        ({"subsample": float("inf")}, r">= 1"),
        ({"subsample": "three"}, r">= 1.*got 'three'"),
        ({"subsample": 3.0, "spacing": (0.3, 0.1)}, "three positive sizes"),
        ({"subsample": 3.0, "spacing": (0.3, -0.1, 0.1)}, "three positive sizes"),
        ({"subsample": 3.0, "spacing": (0.3, 0.1, 0.2)}, r"not square \(0.1 x 0.2 um\)"),
        ({"subsample": 3.0, "subsample_source": "guess"}, "subsample_source must be one of"),
        ({"subsample": 3.0, "spacing": SPACING}, "spacing_source must be one of"),
        ({"subsample": 3.0, "subsample_source": "metadata"}, "without a voxel size"),
        ({"subsample": 3.3, "spacing": SPACING, "subsample_source": "metadata",
          "spacing_source": "metadata"}, r"must be dz / dx = 3"),
        ({"subsample": 3.0, "axes": "ZXY"}, "end with 'YX'"),
        ({"subsample": 3.0, "axes": "CYX"}, "with a Z axis"),
        ({"subsample": 3.0, "axes": "ZZYX"}, "each axis once"),
        ({"subsample": 3.0, "axes": "QZYX"}, "each axis once"),
    ],
)
def test_an_invalid_geometry_cannot_be_built(kwargs, match):
    with pytest.raises(IsojaxInputError, match=match) as info:
        StackGeometry(**kwargs)
    assert "\n" not in str(info.value)  # one line


def test_a_valid_geometry_is_frozen_and_knows_its_sources():
    g = StackGeometry(3, SPACING, "metadata", "metadata", "imagej")
    assert g.subsample == 3.0
    assert isinstance(g.subsample, float)
    assert g.spacing == SPACING
    assert g.pixel_size == 0.1
    assert g.isotropic_spacing == pytest.approx((0.1, 0.1, 0.1))
    assert g.how == "voxel size 0.3 / 0.1 um (imagej)"
    assert g.axes == "ZYX"
    assert g.channel_axis is None
    assert g.time_axis is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.subsample = 4.0
    assert StackGeometry(2.5).how == "the default"
    assert StackGeometry(2.5, subsample_source="model").how == "the model folder"
    assert StackGeometry(2.5, axes="TCZYX").channel_axis == 1
    assert StackGeometry(2.5, axes="TCZYX").time_axis == 0


def test_check_subsample_refuses_a_traced_factor():
    with pytest.raises(IsojaxInputError, match="plain Python number"):
        jax.jit(lambda s: check_subsample(s))(3.0)
    assert check_subsample(np.float32(10.2)) == pytest.approx(10.2)


def test_from_metadata_takes_the_voxel_size_unless_a_factor_is_given():
    lines = []
    g = from_metadata(SPACING, source="ome", log=lines.append)
    assert (g.subsample, g.subsample_source, g.spacing_source) == (pytest.approx(3.0),
                                                                    "metadata", "metadata")
    g = from_metadata(SPACING, source="override", subsample=3.01, log=lines.append)
    assert (g.subsample, g.how, g.spacing_source) == (3.01, "--subsample", "override")
    assert lines == []  # within 2%: nothing to say
    g = from_metadata(None, source="none", subsample=4.0, log=lines.append)
    assert g.spacing is None
    assert g.spacing_source is None
    assert g.pixel_size is None
    g = from_metadata(SPACING, source="imagej", subsample=3.5, log=lines.append)
    assert g.subsample == 3.5
    assert lines == ["warning: --subsample 3.5 overrides the factor 3 from the voxel size "
                     "(imagej)"]
    with pytest.raises(IsojaxInputError, match="contradicts the voxel size"):
        from_metadata(SPACING, source="imagej", subsample=3.5, on_conflict="error")


def test_from_metadata_names_the_file_and_the_fix():
    with pytest.raises(IsojaxInputError, match=r"^s\.tif: anisotropy factor 0\.5 from the "
                       r"voxel size 0\.05 / 0\.1 um is below 1"):
        from_metadata((0.05, 0.1, 0.1), source="ome", name="s.tif")
    with pytest.raises(IsojaxInputError, match=r"^s\.tif: pixels are not square"):
        from_metadata((0.3, 0.1, 0.2), source="ome", name="s.tif")
    with pytest.raises(IsojaxInputError, match=r"--spacing Z Y X.*--subsample F"):
        from_metadata(None, source="none", name="s.tif")
    with pytest.raises(IsojaxInputError, match=r"^s\.zarr: no voxel size in the OME-Zarr "
                       r"metadata; pass it with --spacing Z Y X.*--subsample F"):
        from_metadata(None, source="none", name="s.zarr")


@pytest.mark.parametrize("spacing", [(1.0, 2.0), ("a", 0.1, 0.1), (-0.3, 0.1, 0.1)])
def test_from_metadata_refuses_a_malformed_voxel_size_as_an_input_error(spacing):
    # without a factor, a voxel size of the wrong length or with a non-number was unpacked
    # before it was checked: a bare ValueError, not the one-line input error
    with pytest.raises(IsojaxInputError, match=r"^s\.tif: the voxel size must be three "
                       r"positive sizes \(dz, dy, dx\)"):
        from_metadata(spacing, source="override", name="s.tif")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("geometry")
    stack = (np.random.default_rng(0).random((6, 16, 16)) * 1000).astype(np.float32)
    write_tiff(d / "s.tif", stack, spacing=SPACING)
    write_ome_zarr(d / "s.zarr", stack, spacing=SPACING)
    tifffile.imwrite(d / "bare.tif", stack)
    tifffile.imwrite(d / "flat.tif", stack[:1])
    return d


@pytest.mark.parametrize("subsample", [None, 3.0, 3.5])
@pytest.mark.parametrize("spacing", [None, (0.4, 0.1, 0.1)])
def test_whole_and_streamed_stacks_get_the_same_geometry_and_warnings(files, subsample, spacing):
    whole_log, streamed_log = [], []
    stack, whole = geometry.read_stack(files / "s.tif", spacing=spacing, subsample=subsample,
                                       log=whole_log.append)
    volume, streamed = geometry.open_stack(files / "s.tif", spacing=spacing,
                                           subsample=subsample, log=streamed_log.append)
    assert stack.shape == volume.shape
    assert whole == streamed
    assert whole_log == streamed_log
    if subsample == 3.5 or (spacing is not None and subsample is not None):
        assert len(whole_log) == 1
        assert "overrides the factor" in whole_log[0]


@pytest.mark.parametrize("name", ["bare.tif", "flat.tif"])
def test_whole_and_streamed_stacks_are_refused_alike(files, name):
    with pytest.raises(IsojaxInputError) as whole:
        geometry.read_stack(files / name)
    with pytest.raises(IsojaxInputError) as streamed:
        geometry.open_stack(files / name)
    assert str(whole.value) == str(streamed.value)


def test_an_ome_zarr_stack_gets_its_geometry_from_its_metadata(files):
    _, g = geometry.open_stack(files / "s.zarr")
    assert g.subsample == pytest.approx(3.0)
    assert g.how == "voxel size 0.3 / 0.1 um (ome-zarr)"


def test_a_2d_image_is_not_a_stack(files, tmp_path):
    write_tiff(tmp_path / "plane.tif", np.ones((8, 8), np.float32))
    with pytest.raises(IsojaxInputError, match=r"expected a 3D stack \(z, y, x\), got shape"):
        geometry.read_stack(tmp_path / "plane.tif", subsample=2.0)
