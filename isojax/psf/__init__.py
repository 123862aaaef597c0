"""The PSF toolkit: PSF models, bead processing, the additional axial PSF and the PSF check.

Modules: :mod:`isojax.psf.models` (Gaussian and theoretical PSFs, FWHM),
:mod:`isojax.psf.optics` (wave-optics PSFs: the scalar Debye integral in JAX, its 3D PSFs
and additional axial PSF),
:mod:`isojax.psf.bead` (bead processing, the additional axial PSF by deconvolution,
resampling), :mod:`isojax.psf.check` (:func:`check_psf`, its report and :class:`AxialPSF`, the checked PSF
with its pixel size and provenance) and
:mod:`isojax.psf.sources` (:func:`~isojax.psf.sources.resolve_psf`: a PSF file, a bead or
theory options to one checked PSF; it reads files, so this package does not import it: use
``isojax.psf.sources.resolve_psf`` or ``isojax.pipeline.resolve_psf``). This package
re-exports the public names of the first four, so ``isojax.psf.axial_psf`` and the like work
as before the split.

Conventions. A 3D PSF has axes ``(z, y, x)`` and voxel size ``spacing = (dz, dy, dx)`` in
micrometres. The 2D PSF consumed by the forward operator ``isojax.degrade`` has axes
``(lateral, axial)``, is sampled at the image's *lateral* pixel size on both axes, is
non-negative, sums to 1, has odd sizes with its peak at index ``n // 2`` and decays to zero at its
edges. It is the *additional* axial blur: the full PSF deconvolved by its isotropic part, so that
blurring an isotropic image with it mimics the worse axial resolution.

The Gaussian widths and the references are in :mod:`isojax.psf.models` and
:mod:`isojax.psf.bead`.
"""

from isojax.psf.bead import axial_psf, process_bead, resample_psf
from isojax.psf.check import AxialPSF, PSFReport, check_psf
from isojax.psf.models import (
    FWHM_PER_SIGMA,
    GaussianSigmas,
    fwhm,
    gaussian_axial_psf,
    gaussian_psf,
    theoretical_axial_psf,
    theoretical_psf,
    theoretical_sigmas,
)
from isojax.psf.optics import (
    additional_axial_kernel,
    debye_additional_kernel,
    debye_axial_psf,
    debye_intensity,
    debye_psf,
    sheet_fwhm_from_na,
)

__all__ = [
    "FWHM_PER_SIGMA",
    "AxialPSF",
    "GaussianSigmas",
    "PSFReport",
    "additional_axial_kernel",
    "axial_psf",
    "check_psf",
    "debye_additional_kernel",
    "debye_axial_psf",
    "debye_intensity",
    "debye_psf",
    "fwhm",
    "gaussian_axial_psf",
    "gaussian_psf",
    "process_bead",
    "resample_psf",
    "sheet_fwhm_from_na",
    "theoretical_axial_psf",
    "theoretical_psf",
    "theoretical_sigmas",
]
