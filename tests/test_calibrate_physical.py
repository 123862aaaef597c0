"""The physical calibration family (isojax.calibrate.physical): the Debye kernel with a
physical free parameter, recovered from a simulated stack by the spectral fit."""

import jax
import numpy as np
import pytest
from scipy import ndimage

from isojax.calibrate.physical import (
    PhysicalFamily,
    _init,
    fit_physical_psf,
    physical_psf,
    physical_values,
)
from isojax.errors import IsojaxInputError
from isojax.forward import measure
from isojax.psf import debye_additional_kernel
from isojax.specimen import simulate_specimen

FAMILY = PhysicalFamily(wavelength_um=0.52, ri=1.33, modality="widefield", pixel_size=0.1,
                        half_size=32)


def test_the_family_is_the_debye_kernel_at_its_physical_value():
    params = _init(FAMILY, 1.05)
    assert float(physical_values(FAMILY, params)["na"]) == pytest.approx(1.05, rel=1e-5)
    psf = physical_psf(FAMILY, params)
    axial = np.asarray(psf.axial[0])
    assert psf.lateral.shape == (1, 1)
    assert axial.sum() == pytest.approx(1.0, abs=1e-5)
    assert axial.min() >= 0
    want, _, _ = debye_additional_kernel(na=1.05, wavelength_um=0.52, ri=1.33,
                                         modality="widefield", pixel_size=0.1, half_size=32)
    np.testing.assert_allclose(axial, np.asarray(want), atol=2e-6)
    # the sheet FWHM as the free parameter of a light sheet
    sheet = PhysicalFamily(wavelength_um=0.52, ri=1.33, modality="lightsheet", pixel_size=0.1,
                           half_size=16, free="sheet_fwhm", na=0.8)
    wide = np.asarray(physical_psf(sheet, _init(sheet, 3.0)).axial[0])
    thin = np.asarray(physical_psf(sheet, _init(sheet, 1.0)).axial[0])
    x = np.arange(-16, 17)
    assert (thin * x**2).sum() < (wide * x**2).sum()


def test_bad_families_are_one_line_errors():
    with pytest.raises(IsojaxInputError, match="sheet"):
        PhysicalFamily(wavelength_um=0.52, ri=1.33, modality="widefield", pixel_size=0.1,
                       free="sheet_fwhm", na=0.8)
    with pytest.raises(IsojaxInputError, match="micrometres"):
        PhysicalFamily(wavelength_um=520, ri=1.33, modality="widefield", pixel_size=0.1)
    with pytest.raises(IsojaxInputError, match="initial NA"):
        _init(FAMILY, 1.4)


@pytest.fixture(scope="module")
def na_stack():
    """A stack blurred by the family's kernel at NA 1.0 and subsampled by 2."""
    truth = np.asarray(simulate_specimen(jax.random.key(0), (48, 64, 64)))
    iso = ndimage.gaussian_filter(truth, 1.0)  # the isotropic part, about the lateral PSF
    psf = physical_psf(FAMILY, _init(FAMILY, 1.0))
    return np.transpose(np.asarray(measure(np.transpose(iso, (1, 2, 0)), psf, 2.0)),
                        (2, 0, 1))


def test_fit_recovers_the_na_from_a_simulated_stack(na_stack):
    stack = na_stack
    _, info = fit_physical_psf(jax.random.key(1), stack, family=FAMILY, init=0.8,
                               subsample=2.0, steps=20)
    assert info["na"] == pytest.approx(1.0, rel=0.02)
    assert info["loss_final"] < 0.1 * info["loss_initial"]


def test_the_global_search_finds_the_na_without_a_start_and_brackets_it(na_stack):
    # no start: the profile over NA 0.2..1.29 picks the cells, L-BFGS refines, and the
    # profile's interval holds the truth
    _, info = fit_physical_psf(jax.random.key(1), na_stack, family=FAMILY, subsample=2.0,
                               steps=20)
    assert info["na"] == pytest.approx(1.0, rel=0.02)
    low, high = info["interval"]
    assert low <= 1.0 <= high
    assert info["identifiable"]
    grid, profile = np.asarray(info["grid"]), np.asarray(info["profile"])
    assert abs(grid[np.argmin(profile)] - 1.0) <= grid[1] - grid[0]  # the best cell is the truth's
