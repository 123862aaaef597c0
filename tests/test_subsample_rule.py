"""One rule for `--subsample` against the voxel size, and one behaviour at any stack size.

The voxel size (0.3, 0.1, 0.1) um gives the factor 3; a ``--subsample`` 2% above or below it
(in ratio, either way) contradicts it: prediction and training warn, calibration refuses.
"""

import numpy as np
import pytest

from isojax.cli import main
from isojax.errors import IsojaxInputError
from isojax.io import write_tiff
from isojax.pipeline import stack_geometry, subsample_conflict

SPACING = (0.3, 0.1, 0.1)  # dz / dx = 3
ABOVE, BELOW = 3 * 1.0202, 3 / 1.0202  # 2.02% off, each way
NEAR_ABOVE, NEAR_BELOW = 3 * 1.0198, 3 / 1.0198  # 1.98% off, each way


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("subsample") / "stack.tif"
    rng = np.random.default_rng(0)
    write_tiff(path, (rng.random((10, 32, 32)) * 1000).astype(np.float32), spacing=SPACING)
    return path


def test_the_rule_is_symmetric():
    assert subsample_conflict(ABOVE, SPACING) == pytest.approx(3.0)
    assert subsample_conflict(BELOW, SPACING) == pytest.approx(3.0)
    assert subsample_conflict(NEAR_ABOVE, SPACING) is None
    assert subsample_conflict(NEAR_BELOW, SPACING) is None
    assert subsample_conflict(ABOVE, None) is None


@pytest.mark.parametrize("factor", [ABOVE, BELOW])
def test_a_factor_2_percent_off_either_way_is_warned_about(stack, factor, capsys):
    _, _, s, how = stack_geometry(stack, subsample=factor)
    assert s == factor
    assert how == "--subsample"
    err = capsys.readouterr().err
    assert f"isojax: warning: --subsample {factor:g} overrides the factor 3 " in err


@pytest.mark.parametrize("factor", [NEAR_ABOVE, NEAR_BELOW])
def test_a_factor_within_2_percent_either_way_is_not(stack, factor, capsys):
    stack_geometry(stack, subsample=factor)
    assert "overrides" not in capsys.readouterr().err


@pytest.mark.parametrize("factor", [ABOVE, BELOW])
def test_calibration_refuses_a_factor_2_percent_off_either_way(stack, factor, capsys):
    with pytest.raises(IsojaxInputError, match="contradicts the voxel size"):
        stack_geometry(stack, subsample=factor, on_conflict="error")
    assert "overrides" not in capsys.readouterr().err  # refused, not used


@pytest.fixture(scope="module")
def model(stack):
    folder = stack.parent / "model"
    code = main([
        "train", str(stack), "--model", str(folder), "--na", "0.8", "--wavelength", "0.5",
        "--ri", "1.33", "--modality", "widefield", "--steps", "2", "--batch-size", "2",
        "--patch-size", "16", "--first-filters", "4", "--checkpoint-every", "2", "--quiet",
    ])  # fmt: skip
    assert code == 0
    return folder


@pytest.mark.parametrize("output", ["whole.tif", "streamed.zarr"])
def test_prediction_warns_about_an_overriding_subsample_at_any_size(stack, model, output, capsys):
    """A TIFF output of a small stack is predicted in memory, a Zarr output streamed."""
    out = stack.parent / output
    capsys.readouterr()
    code = main(["predict", str(stack), "--model", str(model), "-o", str(out),
                 "--subsample", "3.1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    warned = [line for line in err.splitlines() if "overrides" in line]
    assert warned == ["isojax: warning: --subsample 3.1 overrides the factor 3 from the voxel "
                      "size (imagej)"], err
    assert "subsample 3.1 from --subsample" in err


def test_fit_psf_reports_micrometres_from_a_pixel_size_and_checks_only_a_real_spacing():
    """Training gives fit_psf its pixel size only (its factor is chosen, any override warned
    about); calibration gives the stack's voxel size, which a contradicting factor fails."""
    import jax

    from isojax.calibrate import fit_psf

    stack = np.random.default_rng(0).random((32, 72, 72)).astype(np.float32)
    _, report = fit_psf(jax.random.key(0), stack, subsample=4.4, steps=2, pixel_size=0.1)
    assert report.pixel_size == 0.1
    assert report.sigma_um == pytest.approx(report.sigma_px * 0.1)
    with pytest.raises(IsojaxInputError, match="contradicts the voxel size"):
        fit_psf(jax.random.key(0), stack, subsample=4.4, steps=2, spacing=(0.4, 0.1, 0.1))


def test_prediction_refuses_a_stack_without_voxel_size_alike_at_any_size(stack, model, capsys):
    """Whole-stack and streamed prediction build the geometry the same way: same message."""
    bare = stack.parent / "bare.tif"
    write_tiff(bare, np.ones((10, 32, 32), np.float32))  # no voxel size
    lines = []
    for output in ("bare_whole.tif", "bare_streamed.zarr"):
        capsys.readouterr()
        code = main(["predict", str(bare), "--model", str(model), "-o",
                     str(stack.parent / output), "--quiet"])
        err = capsys.readouterr().err
        assert code == 1, err
        lines.append(err.strip().splitlines()[-1])
    assert lines[0] == lines[1], lines
    assert "--spacing Z Y X" in lines[0]
    assert "--subsample F" in lines[0]


def test_the_same_command_warns_alike_whole_or_streamed_by_the_memory_budget(stack, model,
                                                                               capsys):
    """One TIFF-to-TIFF command, in memory or streamed (a budget too small for the stack):
    the geometry's warnings are the same."""
    warned = []
    for name, budget in (("budget_whole.tif", []), ("budget_streamed.tif", ["--memory-budget",
                                                                          "0.0003"])):
        capsys.readouterr()
        code = main(["predict", str(stack), "--model", str(model), "-o",
                     str(stack.parent / name), "--subsample", "3.1", "--quiet", *budget])
        err = capsys.readouterr().err
        assert code == 0, err
        assert ("streaming" in err) == bool(budget), err
        warned.append([line for line in err.splitlines() if line.startswith("isojax: warning:")])
    assert warned[0] == warned[1]
    assert any("overrides the factor 3" in line for line in warned[0])
