"""PSF self-calibration: learn the additional axial PSF from the anisotropic stack itself.

Most users have no bead measurement. The forward operator is differentiable in the PSF,
so the stack can tell us its own additional axial PSF ``h``. Three pieces live here,
one module each (this package re-exports their public names):

* **Parameterisations** of ``h`` (:mod:`isojax.calibrate.params`), each differentiable
  and, by construction, non-negative and summing to 1 (:func:`psf_from_params`):

  - ``"gaussian"``: a Gaussian of axial standard deviation ``sigma`` (lateral delta, or a
    fixed lateral Gaussian), returned as a rank-one :class:`~isojax.forward.FactoredPSF`
    so the operator costs one matrix product;
  - ``"multi-gaussian"``: a central Gaussian plus symmetric pairs of side lobes (lobed
    light-sheet profiles), mixture weights from a softmax;
  - ``"free"``: a free-form symmetric axial kernel, the softmax of logits, regularised by
    a width-free roughness penalty (:func:`shape_roughness`: the second-difference
    penalty :func:`smoothness_penalty` times the kernel's variance squared, so that it
    punishes combs and hard edges, not narrowness; also used by ``"multi-gaussian"``).

* **An objective that identifies the PSF** (:func:`spectral_loss`, in
  :mod:`isojax.calibrate.spectra`). A specimen that is statistically isotropic has the same power spectrum along every direction. The
  observed axial (Z) lines are that spectrum, blurred by ``h`` and sampled every
  ``subsample`` pixels (aliasing included). Lateral lines of the XY planes, passed
  through :func:`isojax.forward.measure` with a candidate ``h`` (blur and sampling at the
  real axial step, so aliasing is reproduced by the operator itself), must then have the
  same spectrum as the Z lines only when the candidate is right. Spectra are Welch
  estimates (Hann window, segments covering each line with at least 50% overlap)
  averaged over many lines, both lateral directions and every sampling phase (lateral
  lines start at random offsets), and over the Z lines of all XZ and YZ planes (up to
  :data:`_MAX_PLANES` of each), compared as logarithms, with two fitted nuisance
  constants: a white noise floor and a gain. Detector noise of variance ``v`` reaches the
  two sides through different filters; each side gets white noise added up to ``v``
  (``v (1 - sum h^2)`` and ``v (1 - N_h(f))``), so both carry the same white noise
  whatever the candidate (``v`` is bounded by both the lateral lines' highest
  frequencies and the Z lines' spectrum, so a noise-free stack gets none). The *lateral*
  PSF blurs XY lines and Z lines alike, so it cancels: what the comparison identifies is
  the *additional* axial PSF, the one :func:`isojax.degrade` needs.

* **Global search and an interval** (:mod:`isojax.calibrate.search`): the objective
  profiled over a grid of Gaussian widths (a delta up to three axial steps), the
  refinement's starts, and a likelihood-ratio-like interval for the width that says when
  the stack does not identify it; :mod:`isojax.calibrate.consistency` widens that
  interval by the spread of the widths that the stack's Z slabs find on their own (a
  specimen that is isotropic only on average moves the minimum more than the residuals
  show), so that a stack that disagrees with itself is not reported as identified.

* **Fitting** (:func:`fit_psf`, in :mod:`isojax.calibrate.fit`), and the joint maths the
  training loop uses to refine the PSF with the network (:func:`consistency_loss`,
  :func:`axial_patches`, :func:`make_joint_psf_step`, in :mod:`isojax.calibrate.joint`).

* **Files** (:mod:`isojax.calibrate.files`, not imported here): what ``isojax calibrate``
  writes for one fit, and one PSF file per channel of a hyperstack, each channel fitted
  from a few of its time points pooled (:func:`fit_psf` takes a list of volumes).

Why it identifies the PSF, and where it does not. The power spectrum of the synthetic
lines is ``|H(f)|^2`` times the lateral spectrum (folded by aliasing), so at every
resolvable axial frequency the ratio of the two spectra pins ``|H(f)|^2``; a Gaussian's
single width follows from the curvature of that ratio, which a gain and a white floor
cannot mimic. A consistency term alone (re-degrading a restoration reproduces the
observation) does not identify ``h``: a sharper restoration with a wider ``h``, or a
blurrier one with a narrower ``h``, are equally consistent. The spectral objective fails
when its premise fails or its signal vanishes:

* specimens with a preferred orientation (aligned fibres, layered tissue, a coverslip
  surface): Z and XY spectra differ for reasons other than the PSF;
* too few planes or too small planes: the spectra are noisy or have too few frequencies
  (at least :data:`MIN_SAMPLES` samples per line are required);
* noise-dominated spectra: above the frequency where the floor dominates, there is no
  information about ``h``;
* PSFs narrower than the axial sampling can resolve: when ``sigma << subsample / pi``,
  ``|H(f)|^2`` is nearly 1 below the axial Nyquist frequency, and only aliasing carries
  the width. The sampled spectra then depend on ``h`` only through the small correlation
  of adjacent planes (the covariance of the specimen at lags of one axial step), and the
  difference between that correlation along z and along x in one finite specimen can
  exceed what ``h`` changes (e.g. subsample 10, sigma 1.5 px, lateral sigma 1 px: adjacent
  planes correlate by ~0.05 and the fit is not determined; ``fit_psf`` warns when it ends
  at a near-delta);
* power spectra are blind to phase, so only the symmetric part of ``h`` is identified;
  all parameterisations here are symmetric by construction. The lateral extent of the
  additional PSF is not identified by line spectra and is kept fixed.

References:
  M. Weigert, L. Royer, F. Jug, G. Myers, "Isotropic reconstruction of 3D fluorescence
  microscopy images using convolutional neural networks", MICCAI 2017 (the additional
  axial PSF and the isotropy assumption). [Weigert2017]
  P. Welch, "The use of fast Fourier transform for the estimation of power spectra",
  IEEE Trans. Audio Electroacoustics 15(2):70-73 (1967). [Welch1967]
"""

from isojax.calibrate.fit import (
    CalibrationConfig,
    CalibrationReport,
    check_subsample_against_spacing,
    fit_psf,
)
from isojax.calibrate.joint import axial_patches, consistency_loss, make_joint_psf_step
from isojax.calibrate.params import (
    FAMILIES,
    Family,
    continuous_sigma,
    init_params,
    psf_from_params,
    psf_sigma,
    shape_roughness,
    smoothness_penalty,
)
from isojax.calibrate.spectra import (
    MIN_SAMPLES,
    SpectralTarget,
    observed_spectrum,
    prepare_spectra,
    spectral_loss,
    synthetic_spectrum,
)

__all__ = [
    "FAMILIES",
    "MIN_SAMPLES",
    "CalibrationConfig",
    "CalibrationReport",
    "Family",
    "SpectralTarget",
    "axial_patches",
    "check_subsample_against_spacing",
    "consistency_loss",
    "continuous_sigma",
    "fit_psf",
    "init_params",
    "make_joint_psf_step",
    "observed_spectrum",
    "prepare_spectra",
    "psf_from_params",
    "psf_sigma",
    "shape_roughness",
    "smoothness_penalty",
    "spectral_loss",
    "synthetic_spectrum",
]
