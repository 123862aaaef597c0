"""TIFF reading and writing with voxel sizes (isojax.io)."""

import os
from pathlib import Path

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


# ----------------------------------------------------------------------------------------
# Outputs never overwrite a user's data (check_outputs, write_tiff overwrite=, partials)


def _spellings(tmp_path, target):
    """The same file as ``target`` under other names: a symbolic link, a hard link, a path
    through ``sub/..``, and ``target`` relative to the working directory (``tmp_path``)."""
    (tmp_path / "sub").mkdir(exist_ok=True)
    link = tmp_path / "link.tif"
    link.symlink_to(target)
    hard = tmp_path / "hard.tif"
    os.link(target, hard)
    return {"same path": target, "symlink": link, "hard link": hard,
            "dot-dot": tmp_path / "sub" / ".." / target.name,
            "relative": type(target)(target.name)}


def test_check_outputs_refuses_an_existing_output_unless_overwrite(tmp_path):
    from isojax.io import check_outputs

    out = write_tiff(tmp_path / "out.tif", np.ones((2, 3, 4)))
    png = tmp_path / "out.png"
    before = out.read_bytes()
    with pytest.raises(IsojaxInputError, match=r"out.tif already exists; pass --overwrite"):
        check_outputs([out, png], overwrite=False)
    assert out.read_bytes() == before
    assert check_outputs([out, png], overwrite=True) == [out, png]
    # a companion file that exists counts as well
    png.write_bytes(b"png")
    with pytest.raises(IsojaxInputError, match=r"out.png already exists"):
        check_outputs([tmp_path / "new.tif", png], overwrite=False)


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "dot-dot", "relative"])
def test_check_outputs_refuses_the_input_even_with_overwrite(tmp_path, monkeypatch, how):
    from isojax.io import check_outputs

    stack = write_tiff(tmp_path / "stack.tif", np.arange(24.0).reshape(2, 3, 4))
    before = stack.read_bytes()
    monkeypatch.chdir(tmp_path)
    out = _spellings(tmp_path, stack)[how]
    for overwrite in (False, True):
        with pytest.raises(IsojaxInputError, match=r"is the input stack.*never writes over"):
            check_outputs([out], inputs={"stack": stack}, overwrite=overwrite)
    # and the other way round: the input spelled differently from the output
    with pytest.raises(IsojaxInputError, match=r"is the input stack"):
        check_outputs([stack], inputs={"stack": out}, overwrite=True)
    assert stack.read_bytes() == before


def test_check_outputs_refuses_writing_into_or_over_an_input_folder(tmp_path):
    from isojax.io import check_outputs

    model = tmp_path / "model"
    model.mkdir()
    (model / "psf.tif").write_bytes(b"model psf")
    (tmp_path / "alias").symlink_to(model)
    for out in (model / "psf.tif", model / "new.tif", tmp_path / "alias" / "new.tif", model):
        with pytest.raises(IsojaxInputError, match=r"model folder|is the input"):
            check_outputs([out], inputs={"model folder": model}, overwrite=True)
    # an input inside an output folder that would be replaced
    store = tmp_path / "old.zarr"
    store.mkdir()
    inner = write_tiff(store / "stack.tif", np.ones((2, 3, 4)))
    with pytest.raises(IsojaxInputError, match=r"input stack .* is inside the output"):
        check_outputs([store], inputs={"stack": inner}, overwrite=True)
    # an output and its companion that are one file
    with pytest.raises(IsojaxInputError, match=r"would be the same file"):
        check_outputs([tmp_path / "x.json", tmp_path / "x.json"], overwrite=True)
    assert (model / "psf.tif").read_bytes() == b"model psf"
    assert check_outputs([tmp_path / "elsewhere.tif"], inputs={"model folder": model}) == [
        tmp_path / "elsewhere.tif"]


def test_write_tiff_refuses_to_replace_unless_told(tmp_path):
    path = write_tiff(tmp_path / "a.tif", np.ones((3, 4)))
    before = path.read_bytes()
    with pytest.raises(IsojaxInputError, match="already exists"):
        write_tiff(path, np.zeros((3, 4)), overwrite=False)
    assert path.read_bytes() == before
    write_tiff(path, np.zeros((3, 4)))  # the default replaces (a model folder's own files)
    assert read_tiff(path)[0].max() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]


def test_a_file_that_appears_during_the_write_is_not_replaced(tmp_path):
    from isojax.io import atomic_write, staged_output

    out = tmp_path / "out.tif"

    def write(temp):
        temp.write_bytes(b"new")
        out.write_bytes(b"someone else's")  # another program writes the same name meanwhile

    with pytest.raises(IsojaxInputError, match="appeared while it was being written"):
        atomic_write(out, write, overwrite=False)
    assert out.read_bytes() == b"someone else's"
    out.unlink()
    with (pytest.raises(IsojaxInputError, match="appeared while it was being written"),
          staged_output(out) as temp):
        write(temp)
    assert out.read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]  # no partial left


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_stale_partial_of_a_killed_writer_is_removed(tmp_path, start_writer, kind):
    from isojax.io import remove_stale_partials

    out = tmp_path / ("out.tif" if kind == "file" else "out.zarr")
    proc, partial = start_writer(kind, out)
    partial = Path(partial)
    assert partial.parent == tmp_path
    assert partial.exists()
    assert f"-{proc.pid}-" in partial.name
    # while it runs, its partial is left, with a warning that says how to remove it
    lines = []
    assert remove_stale_partials(out, log=lines.append) == []
    assert partial.exists()
    assert len(lines) == 1
    assert f"rm -r '{partial}'" in lines[0]
    assert "still running" in lines[0]
    proc.kill()  # kill -9
    proc.wait()
    assert partial.exists()  # nothing cleans it up by itself
    # others' files next to it, and partials of other outputs, are never touched
    keep = [tmp_path / "out.tif.txt", tmp_path / f"other.tif.partial-h-{proc.pid}-abc",
            tmp_path / f"{out.name}.partial-notes"]
    for p in keep:
        p.write_bytes(b"keep")
    lines = []
    assert remove_stale_partials(out, log=lines.append) == [partial]
    assert not partial.exists()
    assert len(lines) == 1
    assert "removed" in lines[0]
    assert str(proc.pid) in lines[0]
    assert "no longer running" in lines[0]
    assert all(p.read_bytes() == b"keep" for p in keep)
    assert not out.exists()


def test_partials_that_may_be_in_use_are_left_with_a_warning(tmp_path):
    from isojax.io import check_outputs

    out = tmp_path / "out.zarr"
    other_host = tmp_path / f"out.zarr.partial-elsewhere.cluster-{os.getpid()}-abcd1234"
    old_style = tmp_path / "out.zarr.partial-k3j_9x2q"
    for p in (other_host, old_style):
        p.mkdir()
        (p / "zarr.json").write_text("{}")
    lines = []
    check_outputs([out], overwrite=False, log=lines.append)
    assert other_host.is_dir()
    assert old_style.is_dir()
    assert len(lines) == 2
    assert any("host elsewhere.cluster" in line and f"rm -r '{other_host}'" in line
               for line in lines)
    assert any("older isojax" in line and f"rm -r '{old_style}'" in line for line in lines)


def test_a_previous_output_moved_aside_by_a_killed_writer(tmp_path):
    import subprocess
    import sys

    from isojax.io import _host, remove_stale_partials

    # a real process that has exited: its pid is no longer running
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(done.stdout)
    out = tmp_path / "out.zarr"
    aside = tmp_path / f"out.zarr.old-{_host()}-{dead}-abcd1234"
    aside.mkdir()
    (aside / "zarr.json").write_text("the user's previous result")
    # killed between moving the old output aside and renaming the new one into place: the
    # output is missing, so the old one is kept and the warning says how to restore it
    lines = []
    assert remove_stale_partials(out, log=lines.append) == []
    assert (aside / "zarr.json").read_text() == "the user's previous result"
    assert len(lines) == 1
    assert f"mv '{aside}' '{out}'" in lines[0]
    # killed while deleting the old output, the new one in place: the old one goes
    out.mkdir()
    lines = []
    assert remove_stale_partials(out, log=lines.append) == [aside]
    assert not aside.exists()
    assert "removed" in lines[0]
    assert out.is_dir()
    # one whose writer still runs is left
    live = tmp_path / f"out.zarr.old-{_host()}-{os.getpid()}-abcd1234"
    live.mkdir()
    lines = []
    assert remove_stale_partials(out, log=lines.append) == []
    assert live.is_dir()
    assert f"rm -r '{live}'" in lines[0]


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
