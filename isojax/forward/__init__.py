"""The forward operator: how the axial direction of a microscope degrades an image.

An XY slice of a stack is taken as isotropic ground truth. :func:`degrade` makes it look
the way the axial direction does:

1. **blur** with the additional axial PSF (2D, axes ``(lateral, axial)``, sampled at the
   lateral pixel size, summing to 1);
2. **subsample** the blurred slice along its axial axis by the anisotropy factor
   ``subsample`` (any float >= 1, e.g. 10.2): sample ``k`` sits at ``k * subsample`` pixels;
3. **bring it back** to the original grid (linear interpolation by default, cubic as an
   option).

:func:`measure` stops after step 2 and returns the low-resolution samples alone (what the
microscope records), :func:`upsample` is step 3 on its own, and :func:`add_noise` simulates
the detector between them. All are pure functions of arrays: they run under
:func:`jax.jit`, :func:`jax.vmap` and :func:`jax.grad`, in ``x`` and in the PSF.

How it is computed. Only the samples that survive subsampling are blurred: along the
axial axis, blur and sampling together are one banded ``(n_samples, n)`` matrix built
from the PSF's axial profile (the interpolation weights and the boundary rule are folded
into it), applied as a matrix product, which is what CPUs and accelerators do fastest.
Lateral taps are then summed on the low-resolution grid. Along an axis that is not the
last (contiguous) one, the same stage is a few shifted, strided slices summed in one fused
loop instead, so that no data is transposed. A PSF given as a :class:`FactoredPSF` (a sum
of separable terms, e.g. a Gaussian, or a measured PSF passed through
:func:`factorize_psf`) costs one such stage pair per term. Outside ``jit`` a concrete
dense PSF of numerical rank <= 2 is factored automatically; under ``jit`` a traced dense
PSF is factored in the program (a small SVD, then :func:`jax.lax.switch` to rank 1, rank 2
or the exact path, with a hand-written JVP so that no SVD is differentiated). The exact
path for a dense PSF of three or more lateral rows is the lateral Fourier domain (one FFT
of the image, a few strided multiply-adds per sample, one inverse FFT of the samples): its
cost does not grow with the PSF's lateral size, and it is linear in the PSF.

Differences from CSBDeep's ``anisotropic_distortions`` (``mode="physical"``, the default):

* sample ``k`` is taken at ``k * subsample`` (the physical grid of the axial planes, the
  first at 0); CSBDeep resamples with :func:`scipy.ndimage.zoom`, which pins the first and
  last samples to the ends of the axis and so spaces them ``(n - 1) / (m - 1)`` apart,
  not ``subsample``;
* a non-integer factor is honoured as given (the blurred slice is interpolated linearly
  between pixels at ``k * subsample``); CSBDeep rounds the factor's decimals and crops
  the axis until ``n / subsample`` is a whole number of samples;
* CSBDeep takes the nearest pixel (order-0 zoom) as the sample; isojax interpolates;
* the blur mirrors the image at its borders (``boundary="reflect"``); CSBDeep's
  ``fftconvolve(mode="same")`` pads with zeros, which darkens the borders;
* pixels past the last sample are held at its value when brought back; CSBDeep's grid
  ends on a sample by construction;
* noise is added to the measured samples (:func:`measure`, then :func:`add_noise`, then
  :func:`upsample`), where the detector adds it; CSBDeep adds it on the fine grid before
  subsampling, and clips Gaussian noise at zero.

``mode="csbdeep"`` reproduces CSBDeep's transform instead (see :func:`degrade`).

The package: :mod:`~isojax.forward._psf` (the PSF, dense or factored),
:mod:`~isojax.forward._axial` (sampling geometry and the banded axial stage),
:mod:`~isojax.forward._fourier` (the dense PSF in the lateral Fourier domain),
:mod:`~isojax.forward._operator` (measure, upsample, degrade) and
:mod:`~isojax.forward.noise`; every name is importable from here.
"""

from isojax.forward._axial import (  # noqa: F401  (re-exported, private names included)
    _BOUNDARIES,
    _INTERPOLATIONS,
    _MODES,
    Array,
    Boundary,
    Interpolation,
    Mode,
    _apply_axial,
    _axial_geometry,
    _axial_stage,
    _band_matrices,
    _block_plan,
    _boundary_index,
    _check_mode,
    _check_subsample,
    _interp_taps,
    _keys_cubic,
    _lateral_pad,
    _n_csbdeep,
    _n_physical,
    _rational,
    _upsample_matrix,
    sample_positions,
)
from isojax.forward._operator import (  # noqa: F401
    _CPU_CHUNK_ELEMENTS,
    _STATIC,
    _check_common,
    _compute_dtype,
    _degrade_jit,
    _in_chunks,
    _measure,
    _measure_jit,
    _normalise_axes,
    _output_dtype,
    _upsample,
    _upsample_jit,
    degrade,
    measure,
    upsample,
)
from isojax.forward._psf import FactoredPSF, _as_psf, _auto_factor, factorize_psf  # noqa: F401
from isojax.forward.noise import (  # noqa: F401
    _poisson_counts,
    add_noise,
    gaussian_noise,
    poisson_noise,
)

__all__ = [
    "FactoredPSF",
    "add_noise",
    "degrade",
    "factorize_psf",
    "gaussian_noise",
    "measure",
    "poisson_noise",
    "sample_positions",
    "upsample",
]
