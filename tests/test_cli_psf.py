"""The `isojax psf` commands, through main() and once through `python -m isojax`."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from isojax.cli import main
from isojax.io import read_tiff, write_tiff
from isojax.psf import FWHM_PER_SIGMA, fwhm, theoretical_sigmas

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("isojax: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_theory_widefield_writes_tiff_and_png(tmp_path, capsys):
    out = tmp_path / "axial.tif"
    code = main(["psf", "theory", "--na", "1.0", "--wavelength", "0.5", "--ri", "1.33",
                 "--modality", "widefield", "--pixel-size", "0.1", "-o", str(out)])
    assert code == 0
    psf, spacing, source = read_tiff(out)
    assert source == "imagej"
    assert spacing == pytest.approx((0.1, 0.1))
    assert psf.dtype == np.float32
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    s = theoretical_sigmas(na=1.0, wavelength_um=0.5, ri=1.33, modality="widefield")
    expected_px = math.sqrt(s.axial_um**2 - s.lateral_um**2) / 0.1
    assert fwhm(psf[0]) == pytest.approx(FWHM_PER_SIGMA * expected_px, rel=0.02)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "sigma lateral" in printed
    assert "wrote" in printed


def test_theory_confocal_needs_excitation(tmp_path, capsys):
    out = tmp_path / "axial.tif"
    code = main(["psf", "theory", "--na", "1.4", "--wavelength", "0.52", "--ri", "1.515",
                 "--modality", "confocal", "--pixel-size", "0.05", "-o", str(out)])
    assert code == 1
    assert "--excitation" in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_axial_from_lattice_bead(tmp_path, psf_data, capsys):
    out = tmp_path / "lattice_axial.tif"
    code = main(["psf", "axial", str(psf_data / "lattice_bead_crop.tif"), "--pixel-size",
                 "0.101", "--spacing", "0.1", "0.101", "0.101", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    psf, spacing, _ = read_tiff(out)
    assert spacing == pytest.approx((0.101, 0.101))
    assert psf.min() >= 0
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert out.with_suffix(".png").exists()
    printed = capsys.readouterr().out
    assert "from override" in printed
    assert "richardson-lucy" in printed


def test_axial_from_confocal_bead_passes_psf_check(tmp_path, psf_data, capsys):
    # the command: at 0.2 um, 12.4% of the derived PSF's mass sat on its outer frame
    out = tmp_path / "confocal_axial.tif"
    assert main(["psf", "axial", str(psf_data / "confocal_bead_crop.tif"), "--pixel-size",
                 "0.2", "-o", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["psf", "check", str(out), "--pixel-size", "0.2"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert "mass on edges" in captured.out


def test_axial_without_voxel_size_quotes_description(tmp_path, psf_data, capsys):
    out = tmp_path / "axial.tif"
    code = main(["psf", "axial", str(psf_data / "lattice_bead_crop.tif"), "--pixel-size",
                 "0.1", "-o", str(out)])
    assert code == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "--spacing Z Y X" in line
    assert "BoundingBox" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("problem", ["missing", "not_tiff", "two_d", "no_folder"])
def test_axial_bad_input_writes_nothing(tmp_path, capsys, problem):
    source = tmp_path / "in.tif"
    out = tmp_path / "out" / "axial.tif"
    out.parent.mkdir()
    if problem == "not_tiff":
        source.write_text("hello")
    elif problem == "two_d":
        write_tiff(source, np.ones((9, 9)), pixel_size=0.1)
    elif problem == "no_folder":
        write_tiff(source, np.ones((9, 9, 9)), spacing=(0.2, 0.1, 0.1))
        out = tmp_path / "nowhere" / "axial.tif"
    code = main(["psf", "axial", str(source), "--pixel-size", "0.1", "-o", str(out)])
    assert code == 1
    line = _one_error_line(capsys.readouterr().err)
    expected = {"missing": "no such file", "not_tiff": "cannot be read as a TIFF",
                "two_d": "needs a 3D bead stack", "no_folder": "does not exist"}[problem]
    assert expected in line
    assert list((tmp_path / "out").iterdir()) == []


def test_check_reports_and_refuses(tmp_path, capsys):
    out = tmp_path / "axial.tif"
    assert main(["psf", "theory", "--na", "0.8", "--wavelength", "0.6", "--ri", "1.33",
                 "--modality", "lightsheet", "--sheet-fwhm", "2", "--pixel-size", "0.2",
                 "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["psf", "check", str(out), "--pixel-size", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "FWHM" in printed
    assert "PSF 0.2 um, image 0.2 um" in printed

    assert main(["psf", "check", str(out), "--pixel-size", "0.1"]) == 1
    assert "resample" in _one_error_line(capsys.readouterr().err)

    stack = write_tiff(tmp_path / "stack.tif", np.ones((5, 5, 5)), spacing=(0.2, 0.1, 0.1))
    assert main(["psf", "check", str(stack)]) == 1
    assert "isojax psf axial" in _one_error_line(capsys.readouterr().err)


def test_check_prints_fixes_as_warnings(tmp_path, capsys):
    psf = np.zeros((3, 21))
    psf[1, 8:13] = [1, 3, 5, 3, 1]
    path = write_tiff(tmp_path / "psf.tif", psf, pixel_size=0.1)
    assert main(["psf", "check", str(path)]) == 0
    captured = capsys.readouterr()
    assert "renormalised to sum 1" in captured.out
    assert "isojax: warning: check_psf fixed the PSF" in captured.err


def test_usage_error_is_one_line(capsys):
    assert main(["psf", "bogus"]) == 2
    assert "invalid choice" in _one_error_line(capsys.readouterr().err)
    assert main(["psf", "theory", "--na", "-1", "--wavelength", "0.5", "--ri", "1.33",
                 "--modality", "widefield", "--pixel-size", "0.1", "-o", "x.tif"]) == 2
    assert "positive" in _one_error_line(capsys.readouterr().err)


def test_python_dash_m_isojax(tmp_path):
    out = tmp_path / "axial.tif"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    ok = subprocess.run(
        [sys.executable, "-m", "isojax", "psf", "theory", "--na", "1.4", "--wavelength", "0.52",
         "--ri", "1.515", "--modality", "confocal", "--excitation", "0.488", "--pixel-size",
         "0.05", "-o", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    _, spacing, _ = read_tiff(out)
    assert spacing == pytest.approx((0.05, 0.05))

    bad = subprocess.run([sys.executable, "-m", "isojax", "psf", "check",
                          str(tmp_path / "missing.tif")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1
    assert "no such file" in _one_error_line(bad.stderr)


# ----------------------------------------------------------------------------------------
# Outputs never overwrite a user's data

THEORY = ["psf", "theory", "--wavelength", "0.5", "--ri", "1.33", "--modality", "widefield",
          "--pixel-size", "0.1"]


def _contents(folder: Path) -> dict:
    return {p.name: p.read_bytes() if p.is_file() else None for p in sorted(folder.iterdir())}


def test_theory_refuses_an_existing_output_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "axial.tif"
    assert main([*THEORY, "--na", "1.0", "-o", str(out)]) == 0
    capsys.readouterr()
    before = _contents(tmp_path)
    assert sorted(before) == ["axial.png", "axial.tif"]
    assert main([*THEORY, "--na", "0.8", "-o", str(out)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "axial.tif already exists; pass --overwrite" in line
    assert _contents(tmp_path) == before  # both files byte-identical, nothing else written
    # the PNG alone is an output too: the TIFF is not written either
    out.unlink()
    assert main([*THEORY, "--na", "0.8", "-o", str(out)]) == 1
    assert "axial.png already exists" in _one_error_line(capsys.readouterr().err)
    assert sorted(_contents(tmp_path)) == ["axial.png"]
    # with --overwrite both are replaced by the new PSF
    assert main([*THEORY, "--na", "1.0", "-o", str(out)]) == 1
    capsys.readouterr()
    assert main([*THEORY, "--na", "0.8", "--overwrite", "-o", str(out)]) == 0
    psf, _, _ = read_tiff(out)
    s = theoretical_sigmas(na=0.8, wavelength_um=0.5, ri=1.33, modality="widefield")
    expected_px = math.sqrt(s.axial_um**2 - s.lateral_um**2) / 0.1
    assert fwhm(psf[0]) == pytest.approx(FWHM_PER_SIGMA * expected_px, rel=0.02)
    assert out.with_suffix(".png").read_bytes() != before["axial.png"]
    assert sorted(_contents(tmp_path)) == ["axial.png", "axial.tif"]


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "dot-dot", "relative"])
def test_axial_never_writes_over_the_bead(tmp_path, psf_data, capsys, monkeypatch, how):
    bead = tmp_path / "bead.tif"
    bead.write_bytes((psf_data / "lattice_bead_crop.tif").read_bytes())
    (tmp_path / "sub").mkdir()
    out = {"same path": bead, "symlink": tmp_path / "link.tif", "hard link": tmp_path / "hard.tif",
           "dot-dot": tmp_path / "sub" / ".." / "bead.tif", "relative": Path("bead.tif")}[how]
    if how == "symlink":
        out.symlink_to(bead)
    elif how == "hard link":
        os.link(bead, out)
    monkeypatch.chdir(tmp_path)
    before = _contents(tmp_path)
    code = main(["psf", "axial", str(bead), "--pixel-size", "0.101", "--spacing", "0.1", "0.101",
                 "0.101", "-o", str(out), "--overwrite"])
    assert code == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "is the input bead stack" in line
    assert "never writes over its input" in line
    assert _contents(tmp_path) == before


def test_psf_output_cleans_up_after_a_killed_writer(tmp_path, start_writer, capsys):
    out = tmp_path / "axial.tif"
    proc, partial = start_writer("file", out)  # a write of axial.tif, to be killed half-way
    alive, in_use = start_writer("file", out)  # another one, still writing
    proc.kill()
    proc.wait()
    assert Path(partial).exists()
    assert main([*THEORY, "--na", "1.0", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert not Path(partial).exists()
    assert f"removed {partial}" in err
    assert f"process {proc.pid} on this host, which is no longer running" in err
    assert Path(in_use).exists()  # may still be in use: left, and the warning says how to remove it
    assert f"warning: {in_use} is a partial output of axial.tif" in err
    assert f"rm -r '{in_use}'" in err
    assert read_tiff(out)[0].shape[0] > 0
    alive.kill()
    alive.wait()
