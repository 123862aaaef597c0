"""TIFF reading and writing with voxel sizes (isojax.io)."""

import os

import numpy as np
import pytest
import tifffile

from isojax.io import (
    IsojaxInputError,
    read_tiff,
    require_spacing,
    unit_to_um,
    write_tiff,
)


@pytest.mark.parametrize(
    ("unit", "factor"),
    [("nm", 1e-3), ("µm", 1.0), ("\u03bcm", 1.0), ("\\u00B5m", 1.0), ("um", 1.0),
     ("micron", 1.0), ("Microns", 1.0), ("mm", 1e3), ("pixel", None), ("", None), (None, None)],
)
def test_unit_to_um(unit, factor):
    assert unit_to_um(unit) == factor


def test_roundtrip_3d_imagej(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    path = write_tiff(tmp_path / "stack.tif", data, spacing=(0.3, 0.101, 0.1))
    array, spacing, source = read_tiff(path)
    np.testing.assert_array_equal(array, data)
    assert array.dtype == np.float32
    assert source == "imagej"
    np.testing.assert_allclose(spacing, (0.3, 0.101, 0.1), rtol=1e-6)
    with tifffile.TiffFile(path) as tif:  # what ImageJ itself reads
        assert tif.is_imagej
        assert tif.imagej_metadata["unit"] == "micron"


def test_roundtrip_2d_pixel_size(tmp_path):
    data = np.ones((5, 7))
    path = write_tiff(tmp_path / "psf.tif", data, pixel_size=0.065)
    array, spacing, source = read_tiff(path)
    assert array.shape == (5, 7)
    assert source == "imagej"
    np.testing.assert_allclose(spacing, (0.065, 0.065), rtol=1e-6)


def test_write_without_spacing_reads_none(tmp_path):
    path = write_tiff(tmp_path / "plain.tif", np.zeros((3, 4, 5)))
    _, spacing, source = read_tiff(path)
    assert (spacing, source) == (None, "none")


def test_ome_units_are_converted(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 5), np.float32), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 300, "PhysicalSizeZUnit": "nm",
                               "PhysicalSizeY": 0.2, "PhysicalSizeX": 0.0001,
                               "PhysicalSizeXUnit": "mm"})
    _, spacing, source = read_tiff(path)
    assert source == "ome"
    np.testing.assert_allclose(spacing, (0.3, 0.2, 0.1))


def test_override_wins_over_metadata(tmp_path):
    path = write_tiff(tmp_path / "stack.tif", np.zeros((2, 3, 4)), spacing=(1.0, 1.0, 1.0))
    _, spacing, source = read_tiff(path, spacing=(0.5, 0.1, 0.1))
    assert (spacing, source) == ((0.5, 0.1, 0.1), "override")


def test_override_is_validated(tmp_path):
    path = write_tiff(tmp_path / "stack.tif", np.zeros((2, 3, 4)))
    with pytest.raises(IsojaxInputError, match="3 values"):
        read_tiff(path, spacing=(0.1, 0.1))
    with pytest.raises(IsojaxInputError, match="positive"):
        read_tiff(path, spacing=(0.1, -0.1, 0.1))


def test_real_imagej_file_with_escaped_micro_sign(psf_data):
    # The file says unit=\u00B5m (escaped text), spacing=0.125, XResolution 44.46 px/unit.
    array, spacing, source = read_tiff(psf_data / "confocal_bead_crop.tif")
    assert array.shape == (41, 40, 40)
    assert source == "imagej"
    np.testing.assert_allclose(spacing, (0.125, 0.02249, 0.02249), rtol=1e-3)


def test_free_text_description_is_quoted_not_guessed(psf_data):
    path = psf_data / "lattice_bead_crop.tif"
    _, spacing, source = read_tiff(path)
    assert (spacing, source) == (None, "none")
    with pytest.raises(IsojaxInputError, match=r"--spacing Z Y X.*BoundingBox 0 12\.938871"):
        require_spacing(spacing, path=path)


def test_require_spacing_without_description(psf_data):
    with pytest.raises(IsojaxInputError, match=r"spacing=\(dz, dy, dx\)") as info:
        require_spacing(None, path=psf_data / "confocal_psf_crop.tif")
    assert "description" not in str(info.value)
    assert require_spacing([0.2, 0.1, 0.1]) == (0.2, 0.1, 0.1)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(IsojaxInputError, match="no such file"):
        read_tiff(tmp_path / "nope.tif")
    text = tmp_path / "notes.tif"
    text.write_text("not a tiff")
    with pytest.raises(IsojaxInputError, match=r"notes\.tif: cannot be read as a TIFF"):
        read_tiff(text)


def test_write_refuses_missing_folder_before_work(tmp_path):
    target = tmp_path / "missing" / "out.tif"
    with pytest.raises(IsojaxInputError, match="does not exist"):
        write_tiff(target, np.zeros((3, 3)))
    assert not target.parent.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_write_refuses_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(IsojaxInputError, match="not writable"):
            write_tiff(folder / "out.tif", np.zeros((3, 3)))
    finally:
        folder.chmod(0o700)


def test_write_refuses_dtype_imagej_cannot_open(tmp_path):
    with pytest.raises(IsojaxInputError, match="float64"):
        write_tiff(tmp_path / "x.tif", np.zeros((3, 3)), dtype=np.float64)
    assert list(tmp_path.iterdir()) == []


def _half_bad_stack() -> np.ndarray:
    """An object array whose first plane converts to float32 and whose second does not."""
    stack = np.zeros((2, 2, 2), dtype=object)
    stack[1, 0, 0] = "not a number"
    return stack


def test_failed_write_leaves_nothing(tmp_path):
    # Plane 0 is converted and written before plane 1 fails: a genuine mid-write failure.
    with pytest.raises(IsojaxInputError, match="plane 1 cannot be converted"):
        write_tiff(tmp_path / "out.tif", _half_bad_stack(), spacing=(1.0, 1.0, 1.0))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path):
    path = write_tiff(tmp_path / "out.tif", np.full((2, 2, 2), 7.0), spacing=(1.0, 0.5, 0.5))
    with pytest.raises(IsojaxInputError):
        write_tiff(path, _half_bad_stack(), spacing=(1.0, 1.0, 1.0))
    array, spacing, _ = read_tiff(path)
    np.testing.assert_array_equal(array, 7.0)
    assert spacing == pytest.approx((1.0, 0.5, 0.5))
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_integer_overflow_is_refused(tmp_path):
    with pytest.raises(IsojaxInputError, match="outside the range"):
        write_tiff(tmp_path / "x.tif", np.array([[300.0, 1.0]]), dtype=np.uint8)
    assert list(tmp_path.iterdir()) == []


def _truncated_copies(tmp_path):
    """Real damaged files: an ImageJ stack cut at several points, and one whose metadata
    promises more planes than it holds."""
    data = np.random.default_rng(0).random((8, 64, 64)).astype(np.float32)
    whole = write_tiff(tmp_path / "whole.tif", data, spacing=(0.3, 0.1, 0.1))
    raw = whole.read_bytes()
    with tifffile.TiffFile(whole) as tif:
        first_data = tif.pages[0].dataoffsets[0]
        ifds = [page.offset for page in tif.pages]
    cuts = {
        "in_first_ifd": 60,                       # tags of page 0 cut off
        "in_image_data": first_data + len(raw) // 2 - first_data // 2,
        "before_last_pages": ifds[-3],            # the last three pages' IFDs missing
        "in_last_ifd": len(raw) - 20,
    }
    files = {}
    for name, cut in cuts.items():
        files[name] = tmp_path / f"{name}.tif"
        files[name].write_bytes(raw[:cut])
    six = write_tiff(tmp_path / "six.tif", data[:6], spacing=(0.3, 0.1, 0.1)).read_bytes()
    assert six.count(b"images=6") == 1
    assert six.count(b"slices=6") == 1
    files["imagej_fewer_pages"] = tmp_path / "imagej_fewer_pages.tif"
    files["imagej_fewer_pages"].write_bytes(
        six.replace(b"images=6", b"images=8").replace(b"slices=6", b"slices=8"))
    return files


@pytest.mark.parametrize(
    "damage", ["in_first_ifd", "in_image_data", "before_last_pages", "in_last_ifd",
               "imagej_fewer_pages"])
@pytest.mark.parametrize("reader", ["read_tiff", "open_volume"])
def test_truncated_or_damaged_tiff_is_one_error_and_no_tifffile_log(tmp_path, caplog, damage,
                                                                   reader):
    import logging

    from isojax.io import open_volume

    path = _truncated_copies(tmp_path)[damage]
    logger = logging.getLogger("tifffile")
    filters = list(logger.filters)
    read = {"read_tiff": read_tiff, "open_volume": open_volume}[reader]
    with caplog.at_level(logging.DEBUG, logger="tifffile"), \
            pytest.raises(IsojaxInputError) as info:
        read(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the TIFF is truncated or damaged (")
    assert message.endswith("); copy or export it again")
    assert "3D stack" not in message
    assert "memory-mapped" not in message
    if damage == "imagej_fewer_pages":
        assert "promises 8 planes, the file holds 6" in message
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []  # none escaped
    assert logger.filters == filters  # nothing left behind on the logger


def test_intact_tiff_reads_without_complaint(tmp_path, caplog):
    import logging

    data = np.arange(8 * 16 * 16, dtype=np.float32).reshape(8, 16, 16)
    path = write_tiff(tmp_path / "whole.tif", data, spacing=(0.3, 0.1, 0.1))
    with caplog.at_level(logging.DEBUG, logger="tifffile"):
        array, _, _ = read_tiff(path)
    np.testing.assert_array_equal(array, data)
    assert caplog.records == []
