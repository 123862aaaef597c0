"""The scalar Debye PSF (isojax.psf.optics): closed forms, an independent integral, the
additional axial PSF, gradients, and ``isojax psf theory --model debye``."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from isojax.cli import main
from isojax.errors import IsojaxInputError
from isojax.io import read_tiff
from isojax.psf import (
    FWHM_PER_SIGMA,
    additional_axial_kernel,
    check_psf,
    debye_additional_kernel,
    debye_axial_psf,
    debye_intensity,
    debye_psf,
    fwhm,
    sheet_fwhm_from_na,
)
from isojax.psf.optics import bessel_j0
from isojax.psf.sources import one_source_each, resolve_psf


def test_bessel_j0_matches_scipy_up_to_large_arguments():
    x = np.linspace(0.0, 300.0, 3001)
    assert np.abs(np.asarray(bessel_j0(x)) - special.j0(x)).max() < 2e-5
    # differentiable: J0' = -J1
    d = jax.vmap(jax.grad(lambda t: bessel_j0(t, terms=40)))(jnp.asarray([0.5, 3.0, 20.0]))
    np.testing.assert_allclose(np.asarray(d), -special.j1([0.5, 3.0, 20.0]), atol=1e-5)


def test_in_focus_small_na_is_the_airy_pattern():
    lam, na = 0.5, 0.1
    r = np.linspace(0.0, 3.0 * 0.61 * lam / na, 91)
    got = np.asarray(debye_intensity(r, [0.0], na=na, wavelength_um=lam, ri=1.0))[:, 0]
    v = 2 * np.pi / lam * na * r
    airy = np.ones_like(v)
    airy[1:] = (2 * special.j1(v[1:]) / v[1:]) ** 2
    assert np.abs(got - airy).max() < 1e-3
    # the deviation is non-paraxial: it grows with the NA
    wide = np.asarray(debye_intensity(r * 0.1 / 0.5, [0.0], na=0.5, wavelength_um=lam,
                                      ri=1.0))[:, 0]
    assert np.abs(wide - airy).max() > 3 * np.abs(got - airy).max()


def test_on_axis_small_na_is_sinc_squared():
    lam, na, n = 0.5, 0.1, 1.0
    z = np.linspace(-150.0, 150.0, 121)  # +-3 zeros of the axial profile
    got = np.asarray(debye_intensity([0.0], z, na=na, wavelength_um=lam, ri=n))[0]
    u = 2 * np.pi / lam * na**2 * z / n
    assert np.abs(got - np.sinc(u / 4 / np.pi) ** 2).max() < 5e-3


def _quad_intensity(r, z, *, na, lam, n):
    k = 2 * np.pi * n / lam
    alpha = math.asin(na / n)

    def part(f):
        return integrate.quad(f, 0.0, alpha, limit=400, epsabs=1e-12, epsrel=1e-10)[0]

    def amp(t):
        return math.sqrt(math.cos(t)) * math.sin(t) * special.j0(k * r * math.sin(t))

    re = part(lambda t: amp(t) * math.cos(k * z * math.cos(t)))
    im = part(lambda t: amp(t) * math.sin(k * z * math.cos(t)))
    e0 = part(lambda t: math.sqrt(math.cos(t)) * math.sin(t))
    return (re * re + im * im) / (e0 * e0)


def test_high_na_matches_an_independent_quadrature():
    na, lam, n = 1.2, 0.52, 1.33
    r = np.array([0.0, 0.15, 0.3, 0.8, 1.5])
    z = np.array([-2.5, 0.0, 0.4, 1.0, 4.0])
    got = np.asarray(debye_intensity(r, z, na=na, wavelength_um=lam, ri=n))
    want = np.array([[_quad_intensity(a, b, na=na, lam=lam, n=n) for b in z] for a in r])
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-3)
    assert got[0, 1] == pytest.approx(1.0, abs=1e-6)


def test_psf_on_a_grid_is_normalised_centred_and_symmetric():
    opts = dict(na=1.0, wavelength_um=0.52, ri=1.33, spacing=(0.2, 0.1, 0.1),
                shape=(9, 11, 11))
    wide = np.asarray(debye_psf(modality="widefield", **opts))
    assert wide.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(wide.argmax(), wide.shape) == (4, 5, 5)
    np.testing.assert_allclose(wide, wide.transpose(0, 2, 1), atol=1e-9)  # round
    np.testing.assert_allclose(wide, wide[::-1, ::-1, ::-1], atol=1e-7)  # no aberration
    # confocal: excitation times emission (a point pinhole); light sheet: detection times sheet
    conf = np.asarray(debye_psf(modality="confocal", excitation_um=0.488, **opts))
    ex = np.asarray(debye_psf(modality="widefield", **{**opts, "wavelength_um": 0.488}))
    np.testing.assert_allclose(conf, wide * ex / (wide * ex).sum(), rtol=1e-3, atol=1e-8)
    sheet = np.asarray(debye_psf(modality="lightsheet", sheet_fwhm_um=0.6, **opts))
    zs = (np.arange(9) - 4) * 0.2
    profile = np.exp(-0.5 * (zs * FWHM_PER_SIGMA / 0.6) ** 2)[:, None, None]
    np.testing.assert_allclose(sheet, wide * profile / (wide * profile).sum(), rtol=1e-3,
                               atol=1e-8)
    # voxel integration averages 3x3x3 samples: still normalised, flatter peak
    integrated = np.asarray(debye_psf(modality="widefield", oversample=3, **opts))
    assert integrated.sum() == pytest.approx(1.0, abs=1e-5)
    assert integrated.max() < wide.max()


def test_gradients_match_finite_differences():
    r, z = np.array([0.2]), np.array([0.4])

    def value(na, lam, n):
        return debye_intensity(r, z, na=na, wavelength_um=lam, ri=n, n_theta=64,
                               bessel_terms=24)[0, 0]

    x0 = (1.1, 0.55, 1.4)
    grads = jax.grad(value, argnums=(0, 1, 2))(*x0)
    for i, g in enumerate(grads):
        step = 1e-3
        up = [float(v) for v in x0]
        down = list(up)
        up[i] += step
        down[i] -= step
        fd = (float(value(*up)) - float(value(*down))) / (2 * step)
        assert float(g) == pytest.approx(fd, rel=0.02, abs=1e-3), i
    # and through the additional kernel: its axial second moment shrinks as the NA grows
    x = jnp.arange(-32, 33, dtype=jnp.float32)

    def width(na):
        h, _, _ = debye_additional_kernel(na=na, wavelength_um=0.52, ri=1.33,
                                          modality="widefield", pixel_size=0.1, half_size=32)
        return jnp.sum(h * x**2)

    g = float(jax.grad(width)(1.0))
    fd = (float(width(1.001)) - float(width(0.999))) / 0.002  # small: clipping bends it
    assert g < 0
    assert g == pytest.approx(fd, rel=0.01)
    # jit and vmap over the NA
    widths = jax.jit(jax.vmap(width))(jnp.asarray([0.9, 1.0, 1.1]))
    assert np.all(np.diff(np.asarray(widths)) < 0)


def test_additional_kernel_of_gaussians_is_the_quadrature_rule():
    x = np.arange(-60, 61, dtype=np.float64)
    for s_xy, s_z in [(2.0, 6.0), (1.5, 3.0), (3.0, 10.0)]:
        a = np.exp(-0.5 * (x / s_z) ** 2)
        g = np.exp(-0.5 * (x / s_xy) ** 2)
        h = np.asarray(additional_axial_kernel(a, g[30:-30]))
        assert h.sum() == pytest.approx(1.0, abs=1e-5)
        assert h.min() >= 0
        want = math.sqrt(s_z**2 - s_xy**2)
        assert fwhm(h) / FWHM_PER_SIGMA == pytest.approx(want, rel=0.02)


def test_debye_additional_kernel_reproduces_the_axial_profile():
    for modality, extra in [("widefield", {}), ("confocal", {"excitation_um": 0.488}),
                            ("lightsheet", {"sheet_fwhm_um": 1.0})]:
        h, a, g = debye_additional_kernel(na=1.1, wavelength_um=0.52, ri=1.33,
                                          modality=modality, pixel_size=0.08, half_size=96,
                                          **extra)
        h, a, g = (np.asarray(v, dtype=np.float64) for v in (h, a, g))
        a = a / a.sum()
        again = np.convolve(g / g.sum(), h, mode="same")
        assert np.abs(again - a).sum() < 0.03, modality  # L1 of the profile of mass 1
        assert fwhm(h) < fwhm(a)


def test_debye_axial_psf_has_the_known_widths_and_passes_the_check():
    # NA 1.4 oil at 520 nm: lateral FWHM ~0.51 lambda/NA, axial ~0.88 lambda/(n-sqrt(n2-NA2))
    psf, info = debye_axial_psf(na=1.4, wavelength_um=0.52, ri=1.515, modality="widefield",
                                pixel_size=0.05)
    assert info["fwhm_lateral_um"] == pytest.approx(0.51 * 0.52 / 1.4, rel=0.05)
    assert info["fwhm_axial_um"] == pytest.approx(
        0.88 * 0.52 / (1.515 - math.sqrt(1.515**2 - 1.4**2)), rel=0.08)
    assert psf.dtype == np.float32
    assert psf.shape[0] == 1
    assert psf.shape[1] % 2 == 1
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert psf.min() >= 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_psf(psf, pixel_size=0.05)
    assert not caught, [str(w.message) for w in caught]
    assert info["fwhm_additional_um"] < info["fwhm_axial_um"]


def test_sheet_fwhm_from_na():
    # waist w0 = lambda / (pi NA); FWHM = w0 sqrt(2 ln 2)
    assert sheet_fwhm_from_na(0.05, wavelength_um=0.488) == pytest.approx(
        0.488 / (math.pi * 0.05) * 1.1774, rel=1e-4)


@pytest.mark.parametrize(("options", "words"), [
    (dict(na=1.4, ri=1.33), "smaller than the refractive index"),
    (dict(na=1.0, ri=1.33, wavelength_um=520.0), "micrometres"),
    (dict(na=1.0, ri=1.33, modality="confocal"), "excitation"),
    (dict(na=1.0, ri=1.33, modality="lightsheet"), "sheet"),
    (dict(na=1.0, ri=1.33, modality="spinning"), "unknown modality"),
    # a very weak objective at fine pixels: its kernel would take ~146 GB (was a traceback)
    (dict(na=0.05, ri=1.0), "spans about .* px along z"),
])
def test_bad_optics_are_one_line_errors(options, words):
    kw = {"wavelength_um": 0.52, "modality": "widefield", "pixel_size": 0.1, **options}
    with pytest.raises(IsojaxInputError, match=words) as err:
        debye_axial_psf(**kw)
    assert "\n" not in str(err.value)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("isojax: error: ")
    return lines[0]


THEORY = ["psf", "theory", "--wavelength", "0.52", "--ri", "1.33", "--pixel-size", "0.1"]


def test_cli_theory_model_debye_writes_the_psf(tmp_path, capsys):
    out = tmp_path / "axial.tif"
    code = main([*THEORY, "--na", "1.1", "--modality", "widefield", "--model", "debye",
                 "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    psf, spacing, _ = read_tiff(out)
    assert spacing == pytest.approx((0.1, 0.1))
    want, info = debye_axial_psf(na=1.1, wavelength_um=0.52, ri=1.33, modality="widefield",
                                 pixel_size=0.1)
    np.testing.assert_allclose(psf, want, atol=1e-7)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "Debye" in printed
    assert f"{info['fwhm_additional_px']:.3g} px" in printed
    # the default stays the Gaussian model, whose kernel is wider than the Debye one here
    gauss = tmp_path / "gauss.tif"
    assert main([*THEORY, "--na", "1.1", "--modality", "widefield", "-o", str(gauss)]) == 0
    assert "Gaussian approximation" in capsys.readouterr().out
    g, _, _ = read_tiff(gauss)
    assert fwhm(g[0]) > 1.1 * fwhm(psf[0])


def test_cli_theory_debye_bad_input_is_one_line(tmp_path, capsys):
    out = tmp_path / "axial.tif"
    assert main([*THEORY, "--na", "1.4", "--modality", "widefield", "--model", "debye",
                 "-o", str(out)]) == 1
    assert "refractive index" in _one_error_line(capsys.readouterr().err)
    assert main([*THEORY, "--na", "1.0", "--modality", "confocal", "--model", "debye",
                 "-o", str(out)]) == 1
    assert "--excitation" in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_resolve_psf_takes_the_debye_model():
    theory = dict(na=1.1, wavelength_um=0.52, ri=1.33, modality="lightsheet",
                  sheet_fwhm_um=1.5, model="debye")
    lines = []
    got = resolve_psf(pixel_size=0.1, theory=theory, log=lines.append)
    want, _ = debye_axial_psf(pixel_size=0.1, **{k: v for k, v in theory.items()
                                                 if k != "model"})
    np.testing.assert_allclose(np.asarray(got.dense()), want, atol=1e-7)
    assert "debye" in got.provenance
    with pytest.raises(IsojaxInputError, match="unknown PSF model"):
        resolve_psf(pixel_size=0.1, theory={**theory, "model": "vectorial"})


def test_train_psf_model_option_routes_to_the_debye_model(tmp_path):
    from isojax.cli import build_parser
    from isojax.cli.pipeline import _theory

    base = ["train", str(tmp_path / "stack.tif"), "--model", str(tmp_path / "m"), "--steps",
            "1", "--na", "1.1", "--wavelength", "0.52", "--ri", "1.33", "--modality",
            "widefield"]
    # --wavelength is given once per channel; a stack without channels takes one (as train)
    _, _, theory = one_source_each(
        theory=_theory(build_parser().parse_args([*base, "--psf-model", "debye"])))
    assert theory["model"] == "debye"
    got = resolve_psf(pixel_size=0.1, theory=theory, log=lambda msg: None)
    want, _ = debye_axial_psf(na=1.1, wavelength_um=0.52, ri=1.33, modality="widefield",
                              pixel_size=0.1)
    np.testing.assert_allclose(np.asarray(got.dense()), want, atol=1e-7)
    # the default stays the Gaussian model
    _, _, default = one_source_each(theory=_theory(build_parser().parse_args(base)))
    assert default["model"] is None
    gauss = resolve_psf(pixel_size=0.1, theory=default, log=lambda msg: None)
    assert gauss.dense().shape != want.shape
    # --psf-model alone is a theory option: with a PSF file it is a second source
    alone = _theory(build_parser().parse_args(
        ["train", "s.tif", "--model", "m", "--steps", "1", "--psf-model", "debye"]))
    with pytest.raises(IsojaxInputError, match="exactly one PSF source"):
        resolve_psf(pixel_size=0.1, psf="a.tif", theory=alone)
    with pytest.raises(IsojaxInputError, match="missing --na"):
        resolve_psf(pixel_size=0.1, theory=alone)
