"""Training pairs for isotropic restoration, synthesised on the device from the stack itself.

Isotropic CARE learns from the stack it restores: lateral (XY) slices are isotropic ground
truth, and degrading them along one lateral axis the way the microscope degrades z gives
inputs that look like the axial (XZ/YZ) slices the network will see at prediction
[Weigert2017]. :func:`make_pairs` does this for a whole batch in one jit-compiled call:

1. pick, for each pair, a plane from ``z_indices`` and a patch position, favouring bright
   patches (several candidate positions, one chosen with probability growing with its
   brightness);
2. cut a crop around the patch with a context margin, so that the blur and the axial
   sampling see real neighbours (the crop's offset is jittered, so the phase of the
   sampling grid relative to the patch varies);
3. choose which lateral axis plays the axial one (X, or Y by transposing the crop so that
   the simulated axial axis is always the LAST one, as in the ``(lateral, z)`` slices fed
   to the network at prediction) and augment by flips (only the clean crop is flipped or
   transposed; nothing moves after degradation);
4. degrade the clean crop with the forward operator: blur with the additional axial PSF,
   sample every ``subsample`` pixels (:func:`isojax.forward.measure`), add detector noise
   to the samples (:func:`isojax.forward.add_noise`), interpolate back
   (:func:`isojax.forward.upsample`) -- i.e. :func:`isojax.forward.degrade` plus noise
   where the detector adds it;
5. cut the patch from the degraded crop (source) and from the clean crop (target).

The stack is an argument, not a constant, so it lives on the device and one compilation
serves every call; the PSF is an argument too, and gradients flow into it (PSF
self-calibration trains through this function).

References:
  M. Weigert, L. Royer, F. Jug, G. Myers, "Isotropic reconstruction of 3D fluorescence
  microscopy images using convolutional neural networks", MICCAI 2017. [Weigert2017]
  M. Weigert et al., "Content-aware image restoration: pushing the limits of fluorescence
  microscopy", Nature Methods 15:1090-1097 (2018) (percentile normalisation, CSBDeep's
  defaults 1 / 99.8).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from isojax.errors import IsojaxInputError
from isojax.forward import FactoredPSF, add_noise, degrade, measure, upsample
from isojax.geometry import check_subsample

Array = jax.Array

__all__ = [
    "SynthConfig",
    "check_contrast",
    "denormalize",
    "estimate_noise",
    "make_pairs",
    "normalize_percentile",
    "split_slices",
]

#: Added to ``hi - lo`` by :func:`normalize_percentile` (as in CSBDeep), so that a constant
#: stack maps to zeros instead of dividing by zero.
EPS = 1e-20


# ----------------------------------------------------------------------------------------
# Noise of the data, so that synthetic inputs carry the noise real axial slices carry


def estimate_noise(stack, *, n_bins: int = 16) -> tuple[float | None, float]:
    """Estimate a Poisson-Gaussian noise model of a stack from its XY planes.

    Real axial slices carry the detector's noise on every measured plane; synthetic inputs
    are blurred copies of XY planes, whose noise the blur mostly removes. A network
    trained on such inputs meets much stronger axial noise at prediction and amplifies it.
    Matching the noise (``SynthConfig(photons=..., read_noise=...)``) closes that gap.

    The model is ``variance = a * signal + b`` (shot noise plus read noise). Each pixel's
    noise is isolated with Immerkaer's Laplacian-difference mask (its response to white
    noise of standard deviation ``sigma`` has standard deviation ``6 sigma``; J. Immerkaer,
    "Fast noise variance estimation", CVIU 64(2):300-302, 1996); the local signal is a 3x3
    mean. Pixels are binned by signal and each bin's variance is taken robustly (median
    absolute deviation), then ``a`` and ``b`` are fitted by non-negative least squares, as
    in the binned approach of Foi et al., "Practical Poissonian-Gaussian noise modeling and
    fitting for single-image raw-data", IEEE TIP 17(10), 2008.

    The read noise is set by the dimmest pixels: an image without dim background
    determines it poorly (the shot-noise term is then the reliable part).

    Args:
      stack: ``(z, y, x)`` array in the units the network sees (e.g. normalised).
      n_bins: signal bins for the fit.

    Returns:
      ``(photons, read_noise)`` for :class:`SynthConfig`: photons per unit intensity
      ``1 / a`` (None when no shot noise is detected) and the read-noise standard
      deviation ``sqrt(b)``, both in the stack's units.

    Raises:
      IsojaxInputError: the stack is not 3D or its planes are smaller than 8 px.
    """
    from scipy import ndimage

    x = np.asarray(stack, np.float64)
    if x.ndim != 3 or min(x.shape[1:]) < 8:
        raise IsojaxInputError(
            f"estimating the noise needs a (z, y, x) stack with planes of at least 8 px, got "
            f"{x.shape}; give the noise (--photons, --read-noise) or turn matching off "
            "(--no-match-noise)."
        )
    # at most ~4 M pixels, from evenly spread planes
    step = max(1, int(np.ceil(x.size / 4e6)))
    planes = x[:: max(1, min(step, x.shape[0]))]
    mask = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    resid = np.stack([ndimage.convolve(p, mask, mode="reflect") for p in planes])[:, 1:-1, 1:-1] / 6
    local = np.stack([ndimage.uniform_filter(p, 3, mode="reflect") for p in planes])[:, 1:-1, 1:-1]
    resid, local = resid.ravel(), local.ravel()
    edges = np.quantile(local, np.linspace(0, 1, n_bins + 1))
    means, variances, weights = [], [], []
    for lo, hi in itertools.pairwise(edges):
        sel = (local >= lo) & (local <= hi)
        if sel.sum() < 100:
            continue
        r = resid[sel]
        mad = np.median(np.abs(r - np.median(r))) / 0.6745
        means.append(float(np.mean(local[sel])))
        variances.append(mad**2)
        weights.append(float(sel.sum()))
    if len(means) < 2:
        return None, float(np.sqrt(max(np.mean(variances) if variances else 0.0, 0.0)))
    m, v, w = np.array(means), np.array(variances), np.sqrt(np.array(weights))
    from scipy.optimize import nnls

    (a, b), _ = nnls(np.stack([m, np.ones_like(m)], axis=1) * w[:, None], v * w)
    photons = None if a <= 1e-12 * max(v.max(), 1e-30) else float(1.0 / a)
    return photons, float(np.sqrt(b))


# ----------------------------------------------------------------------------------------
# Normalisation


def _ordinal(p: float) -> str:
    text = f"{p:g}"
    if text.endswith(("11", "12", "13")) or "." in text:
        return f"{text}th"
    return text + {"1": "st", "2": "nd", "3": "rd"}.get(text[-1], "th")


def no_contrast_message(
    *, value: float, percentiles: tuple[float, float] | None = None, name=None,
    differing: str | None = None,
) -> str:
    """The one message for a stack without contrast (see :func:`check_contrast`).

    Args:
      value: the value of all voxels, or of both normalisation percentiles.
      percentiles: the two percentiles that are equal; None when the stack is constant.
      name: the file, prefixed to the message when given.
      differing: how many voxels differ from ``value`` (e.g. ``"3 of 40960"``), if known.

    Returns:
      The message, one line.
    """
    where = _where(name)
    if percentiles is None:
        found = f"all voxels are {value:g}"
    else:
        found = (f"its {_ordinal(percentiles[0])} and {_ordinal(percentiles[1])} percentiles "
                 f"are both {value:g}")
        if differing is not None:
            found += f"; only {differing} voxels differ"
    return (
        f"{where}the stack has no contrast ({found}); a constant or nearly constant stack "
        "normalises to a blank image and holds nothing to learn, calibrate or restore: check "
        "that it is the right file, channel and time point, and that it is not blank or "
        "saturated."
    )


def check_contrast(
    stack, *, percentiles: tuple[float, float] = (1.0, 99.8), name=None
) -> tuple[float, float]:
    """Refuse a stack without contrast, before any work is done on it.

    The rule shared by training, calibration and prediction: the stack is refused when all
    its voxels are equal, and when its two normalisation percentiles are (a nearly constant
    stack, e.g. one bright voxel on a flat background): normalised, it would be zero almost
    everywhere, and training would reach a loss of zero without learning anything.

    Args:
      stack: the stack (any shape, real numbers, finite).
      percentiles: the normalisation percentiles ``(pmin, pmax)`` (training's and
        calibration's are ``(1, 99.8)``; prediction uses the model's).
      name: the file, named in the message.

    Returns:
      The two percentiles ``(lo, hi)`` of the stack, ``lo < hi``.

    Raises:
      IsojaxInputError: the stack holds NaN or infinite voxels, is constant, or its two
        percentiles are equal.
    """
    x = np.asarray(stack)
    if not x.size:
        raise IsojaxInputError(f"{_where(name)}the stack is empty.")
    low, high = float(np.min(x)), float(np.max(x))
    if not (math.isfinite(low) and math.isfinite(high)):  # NaN and inf propagate to min/max
        raise IsojaxInputError(_non_finite_message(x, name=name))
    if low == high:
        raise IsojaxInputError(no_contrast_message(value=low, name=name))
    lo, hi = (float(v) for v in np.percentile(x.astype(np.float32), percentiles))
    if not hi > lo:
        differing = f"{int(np.count_nonzero(x != lo))} of {x.size}"
        raise IsojaxInputError(no_contrast_message(
            value=lo, percentiles=percentiles, name=name, differing=differing))
    return lo, hi


def _where(name) -> str:
    """A message's file prefix (``"stack.tif: "``), empty without a name."""
    return f"{name}: " if name is not None else ""


def _non_finite_message(stack, *, name=None) -> str:
    """The one-line refusal of a stack with NaN or infinite voxels (how many, the first)."""
    bad = ~np.isfinite(np.asarray(stack))
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"{_where(name)}the stack holds {int(bad.sum())} NaN or "
            f"infinite voxel(s) of {bad.size} (the first at index {first}); replace them "
            "(e.g. with the background level, np.nan_to_num) and save the stack again: they "
            "would make every normalised value, loss and PSF NaN.")


@functools.partial(jax.jit, static_argnames=("pmin", "pmax"))
def _percentiles(x, *, pmin, pmax):
    return jnp.percentile(x, jnp.asarray([pmin, pmax], x.dtype))


def normalize_percentile(
    x: Array, *, pmin: float = 1.0, pmax: float = 99.8
) -> tuple[Array, tuple[Array, Array]]:
    """Map the stack's ``pmin`` percentile to 0 and its ``pmax`` percentile to 1.

    ``(x - lo) / (hi - lo + EPS)`` with ``lo, hi`` the percentiles of the whole stack (one
    pair for all planes), CSBDeep's ``normalize`` with its defaults 1 and 99.8. Values
    outside ``[lo, hi]`` are not clipped. A constant stack (``hi == lo``) does not fail:
    ``EPS = 1e-20`` in the denominator maps it to all zeros, and :func:`denormalize` still
    inverts it.

    Args:
      x: the stack (any shape; integer data becomes float32).
      pmin: lower percentile, in ``[0, 100)``.
      pmax: upper percentile, in ``(pmin, 100]``.

    Returns:
      ``(normalized, (lo, hi))``: float array of x's shape, and the two percentiles as
      scalars (keep them to :func:`denormalize` the restoration).

    Raises:
      ValueError: percentiles out of order or outside ``[0, 100]``.

    Example:
      >>> import jax.numpy as jnp
      >>> y, (lo, hi) = normalize_percentile(jnp.arange(101.0), pmin=0, pmax=100)
      >>> float(y[50]), float(lo), float(hi)
      (0.5, 0.0, 100.0)
    """
    lo_p, hi_p = float(pmin), float(pmax)
    if not 0.0 <= lo_p < hi_p <= 100.0:
        raise ValueError(
            f"percentiles must satisfy 0 <= pmin < pmax <= 100, got pmin={pmin!r}, pmax={pmax!r}."
        )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    lo, hi = _percentiles(x, pmin=lo_p, pmax=hi_p)
    return (x - lo) / (hi - lo + EPS), (lo, hi)


def denormalize(
    y: ArrayLike, lo: Array | float, hi: Array | float, *, out: np.ndarray | None = None
) -> Array | np.ndarray:
    """Undo :func:`normalize_percentile`: ``y * (hi - lo + EPS) + lo``.

    The one implementation of the inverse, used by training's callers and by prediction
    (:func:`isojax.predict.predict_stack`, :func:`isojax.predict_large.predict_large`),
    which pass ``out`` to restore a large volume without a second copy.

    Args:
      y: normalised data (e.g. a restoration), any shape.
      lo: the lower percentile returned by :func:`normalize_percentile`.
      hi: the upper percentile returned by :func:`normalize_percentile`.
      out: a NumPy float array of y's shape to write the result into (it may be ``y``
        itself); by default a new JAX array is returned.

    Returns:
      Array of y's shape in the stack's original intensity units (``out`` if given).
    """
    if out is not None:
        scale, offset = float(hi) - float(lo) + EPS, float(lo)
        np.multiply(y, scale, out=out)
        out += offset
        return out
    y = jnp.asarray(y)
    return y * (hi - lo + EPS) + lo


# ----------------------------------------------------------------------------------------
# Configuration and the train / validation split


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """How training pairs are synthesised; frozen and checked on construction.

    Attributes:
      subsample: anisotropy factor, axial step / lateral pixel size, >= 1 (e.g. 10.2).
      patch_size: side of the square patches in pixels, >= 1. The network it trains sets
        the one rule on top of that (:func:`isojax.train.train` checks it): a multiple of
        its ``UNetConfig.divisor``, ``2**depth`` (4 at CARE's default depth 2).
      interpolation: how degraded samples are brought back, ``"linear"`` or ``"cubic"``;
        use the same at prediction.
      photons: photons per unit intensity of the (normalised) stack for Poisson shot noise
        on the samples, or None for none. Negative intensities count as 0 photons.
      read_noise: standard deviation of Gaussian read noise on the samples, in units of
        the (normalised) stack; 0 for none.
      foreground_fraction: fraction of patches, in ``[0, 1]``, drawn with the foreground
        bias; the rest are uniform. Biased patches are chosen among ``n_candidates``
        random positions with probability proportional to how much brighter each is than
        the dimmest (mean intensity), so empty patches are rarely used.
      n_candidates: candidate positions per biased patch (more is a stronger bias), >= 1.
      axial: which lateral axis plays the axial one: ``"both"`` (each patch picks X or Y at
        random), ``"x"`` or ``"y"``.
      augment: flip the clean crop at random along each axis; with ``axial="both"`` the
        X/Y choice is a transpose, so together they give all eight 90-degree rotations
        and flips. With ``"x"`` or ``"y"`` only flips are used (a rotation would move the
        chosen axis).
      val_fraction: fraction of planes kept for validation by :func:`split_slices`, in
        ``(0, 1)``.

    Raises:
      ValueError: when a setting is out of range; the message says what to change.
    """

    subsample: float
    patch_size: int = 128
    interpolation: Literal["linear", "cubic"] = "linear"
    photons: float | None = None
    read_noise: float = 0.0
    foreground_fraction: float = 0.9
    n_candidates: int = 8
    axial: Literal["both", "x", "y"] = "both"
    augment: bool = True
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        s = check_subsample(self.subsample, name="SynthConfig.subsample")
        object.__setattr__(self, "subsample", s)
        p = self.patch_size
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise ValueError(
                f"SynthConfig.patch_size must be a whole number of pixels >= 1, got {p!r}; e.g. "
                "64 or 128 (a multiple of the network's UNetConfig.divisor)."
            )
        if self.interpolation not in ("linear", "cubic"):
            raise ValueError(
                f"SynthConfig.interpolation must be 'linear' or 'cubic', got "
                f"{self.interpolation!r}."
            )
        if self.photons is not None and not (
            isinstance(self.photons, int | float)
            and math.isfinite(self.photons)
            and self.photons > 0
        ):
            raise ValueError(
                f"SynthConfig.photons must be a number > 0 (photons per unit intensity) or None "
                f"for no shot noise, got {self.photons!r}."
            )
        if not (isinstance(self.read_noise, int | float) and 0 <= self.read_noise < math.inf):
            raise ValueError(
                f"SynthConfig.read_noise must be a finite number >= 0 (0 for none), got "
                f"{self.read_noise!r}."
            )
        if not (
            isinstance(self.foreground_fraction, int | float) and 0 <= self.foreground_fraction <= 1
        ):
            raise ValueError(
                f"SynthConfig.foreground_fraction must be in [0, 1] (0: uniform patches), got "
                f"{self.foreground_fraction!r}."
            )
        n = self.n_candidates
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"SynthConfig.n_candidates must be an integer >= 1, got {n!r}; e.g. 8."
            )
        if self.axial not in ("both", "x", "y"):
            raise ValueError(f"SynthConfig.axial must be 'both', 'x' or 'y', got {self.axial!r}.")
        if not isinstance(self.augment, bool):
            raise ValueError(f"SynthConfig.augment must be True or False, got {self.augment!r}.")
        if not (isinstance(self.val_fraction, int | float) and 0 < self.val_fraction < 1):
            raise ValueError(
                f"SynthConfig.val_fraction must be in (0, 1), e.g. 0.1, got {self.val_fraction!r}."
            )


def split_slices(
    n_z: int, *, val_fraction: float = 0.1, gap: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split the planes of a stack into training and validation planes that never overlap.

    Validation takes the last ``max(1, round(val_fraction * n_z))`` planes, one contiguous
    block, so validation patches do not come from planes interleaved with training ones;
    ``gap`` planes before that block are left out of both, to keep neighbouring planes
    (which the axial PSF couples) out of training.

    Args:
      n_z: number of planes of the stack (its z size).
      val_fraction: fraction of planes for validation, in ``(0, 1)``.
      gap: planes between the two sets used for neither, >= 0.

    Returns:
      ``(train_z, val_z)``: sorted int arrays of plane indices, each non-empty, disjoint.

    Raises:
      ValueError: ``val_fraction`` outside ``(0, 1)``, a negative gap, or a stack too thin
        for one training plane, the gap and one validation plane.

    Example:
      >>> split_slices(10, val_fraction=0.2)
      (array([0, 1, 2, 3, 4, 5, 6, 7]), array([8, 9]))
    """
    n_z = int(n_z)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), e.g. 0.1, got {val_fraction!r}.")
    if int(gap) != gap or gap < 0:
        raise ValueError(f"gap must be a whole number of planes >= 0, got {gap!r}.")
    n_val = max(1, round(val_fraction * n_z))
    n_train = n_z - n_val - int(gap)
    if n_train < 1:
        raise ValueError(
            f"a stack of {n_z} planes is too thin for {n_val} validation plane(s), a gap of "
            f"{gap} and at least one training plane; lower val_fraction or gap, or use a "
            "thicker stack."
        )
    return np.arange(n_train), np.arange(n_z - n_val, n_z)


# ----------------------------------------------------------------------------------------
# Pair synthesis


def _psf_shape(psf) -> tuple[int, int]:
    """The ``(lateral, axial)`` extent of a PSF, for the margin; its dimensionality is checked
    once, by the operator (:func:`isojax.forward.measure`), or before (an
    :class:`~isojax.psf.AxialPSF`'s kernel)."""
    shape = psf.shape if isinstance(psf, FactoredPSF) else jnp.shape(psf)
    return (int(shape[-2]) if len(shape) > 1 else 1), int(shape[-1])


def _margin(psf_shape: tuple[int, int], config: SynthConfig) -> int:
    """Context (pixels) each side of a patch so that it degrades as inside a whole image.

    Along the axial axis a patch pixel depends on the samples within ``taps`` samples of it
    (2 for linear, 4 for cubic interpolation), each a blur over half the PSF's axial
    length; laterally, on half the PSF's lateral length.
    """
    n_lat, n_ax = psf_shape
    reach = 2 if config.interpolation == "cubic" else 1
    axial = n_ax // 2 + 1 + math.ceil(reach * config.subsample)
    return max(axial, n_lat // 2)


def _pick(u: Array, n: int) -> Array:
    """Integers uniform in ``[0, n)`` from uniforms in ``[0, 1)``."""
    return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


@functools.partial(jax.jit, static_argnames=("config", "batch_size"))
def make_pairs(
    key: Array,
    stack: Array,
    psf,
    config: SynthConfig,
    *,
    batch_size: int,
    z_indices: Array,
) -> tuple[Array, Array]:
    """A batch of training pairs ``(source, target)`` cut from the stack's XY planes.

    See the module docstring for the steps. The target is a clean patch of the stack
    (transposed and flipped as described); the source is the same patch degraded along
    its last axis by the additional axial PSF, sampled every ``config.subsample`` pixels,
    with noise on the samples, and interpolated back. One compilation per stack shape,
    PSF shape, config, batch size and number of planes; a new key or stack or PSF of the
    same shapes does not recompile.

    Args:
      key: a ``jax.random`` key.
      stack: the anisotropic stack ``(z, y, x)``, normalised (e.g. by
        :func:`normalize_percentile`); lateral axes at least ``config.patch_size``.
      psf: the additional axial PSF, 2D ``(lateral, axial)`` at the lateral pixel size,
        summing to 1, or a :class:`~isojax.forward.FactoredPSF`. Differentiable.
      config: a :class:`SynthConfig` (static: hashable, each value compiles once).
      batch_size: number of pairs, >= 1 (static).
      z_indices: 1D int array of the planes to draw from (e.g. one of the arrays from
        :func:`split_slices`); they must be valid plane indices (under jit they are not
        checked, and out-of-range indices are clamped to the stack).

    Returns:
      ``(source, target)``, each float32 ``(batch_size, patch_size, patch_size)``, axes
      ``(lateral, axial)``: the last axis is the simulated axial one.

    Raises:
      ValueError: a stack that is not 3D, a patch larger than its lateral planes, an
        empty ``z_indices``, a PSF that is not 2D, or ``batch_size < 1``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> cfg = SynthConfig(subsample=4.0, patch_size=16)
      >>> src, tgt = make_pairs(jax.random.key(0), jnp.ones((3, 32, 32)),
      ...                       jnp.ones((1, 5)) / 5, cfg, batch_size=2, z_indices=jnp.arange(3))
      >>> src.shape, tgt.dtype
      ((2, 16, 16), dtype('float32'))
    """
    # Long, and kept whole: one jitted function whose discrete choices share one uniform draw
    # (each random call site costs compile time); a third of its length is the docstring.
    if stack.ndim != 3:
        raise ValueError(f"stack must be 3D (z, y, x), got shape {stack.shape}.")
    _nz, ny, nx = stack.shape
    p = config.patch_size
    if p > ny or p > nx:
        raise ValueError(
            f"patch_size {p} px is larger than the stack's lateral planes ({ny} x {nx} px); use "
            f"SynthConfig(patch_size=...) at most {min(ny, nx)}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    z_indices = jnp.asarray(z_indices)
    if z_indices.ndim != 1 or z_indices.shape[0] < 1:
        raise ValueError(
            f"z_indices must be a non-empty 1D array of plane indices, got shape "
            f"{z_indices.shape}; see split_slices."
        )
    s = config.subsample
    margin = _margin(_psf_shape(psf), config)
    jitter = math.ceil(s)
    crop = min(p + 2 * margin + jitter, ny, nx)  # square, so that X and Y can swap
    b, k = batch_size, config.n_candidates
    biased = config.foreground_fraction > 0 and k > 1
    n_cand = k if biased else 1

    # one uniform draw for all the discrete choices (each random call site costs compile time)
    k_choice, k_noise = jax.random.split(key)
    u = jax.random.uniform(k_choice, (b, 3 * n_cand + n_cand + 6))
    u_z, u_y, u_x, u_g = (u[:, i * n_cand : (i + 1) * n_cand] for i in range(4))
    u_bias, u_jy, u_jx, u_t, u_f0, u_f1 = (u[:, 4 * n_cand + i] for i in range(6))
    cz = z_indices.astype(jnp.int32)[_pick(u_z, z_indices.shape[0])]
    cy = _pick(u_y, ny - p + 1)
    cx = _pick(u_x, nx - p + 1)

    if biased:

        def mean_patch(z, y, x):
            return jnp.mean(lax.dynamic_slice(stack, (z, y, x), (1, p, p)).astype(jnp.float32))

        score = jax.vmap(jax.vmap(mean_patch))(cz, cy, cx)  # (b, n_cand)
        w = score - jnp.min(score, axis=1, keepdims=True)
        tiny = 1e-6 * jnp.max(w, axis=1, keepdims=True) + 1e-30
        gumbel = -jnp.log(-jnp.log(jnp.clip(u_g, 1e-12, 1 - 1e-7)))
        best = jnp.argmax(jnp.log(w + tiny) + gumbel, axis=1)  # P(i) proportional to w_i
        choice = jnp.where(u_bias < config.foreground_fraction, best, 0)
        z0, y0, x0 = (jnp.take_along_axis(c, choice[:, None], 1)[:, 0] for c in (cz, cy, cx))
    else:
        z0, y0, x0 = cz[:, 0], cy[:, 0], cx[:, 0]

    # crop with context; the jitter moves the sampling grid relative to the patch
    sy = jnp.clip(y0 - margin - _pick(u_jy, jitter), 0, ny - crop)
    sx = jnp.clip(x0 - margin - _pick(u_jx, jitter), 0, nx - crop)
    clean = jax.vmap(lambda z, y, x: lax.dynamic_slice(stack, (z, y, x), (1, crop, crop))[0])(
        z0, sy, sx
    ).astype(jnp.float32)
    o0, o1 = y0 - sy, x0 - sx  # patch offset in the crop along (rows, columns)

    # the axial axis must end up last: X already is; Y is moved there by a transpose
    if config.axial == "both":
        swap = u_t < 0.5
    else:
        swap = jnp.full((b,), config.axial == "y")
    if config.axial != "x":
        clean = jnp.where(swap[:, None, None], jnp.swapaxes(clean, 1, 2), clean)
        o0, o1 = jnp.where(swap, o1, o0), jnp.where(swap, o0, o1)
    if config.augment:
        f0, f1 = u_f0 < 0.5, u_f1 < 0.5
        clean = jnp.where(f0[:, None, None], clean[:, ::-1, :], clean)
        clean = jnp.where(f1[:, None, None], clean[:, :, ::-1], clean)
        o0 = jnp.where(f0, crop - p - o0, o0)
        o1 = jnp.where(f1, crop - p - o1, o1)

    noisy = config.photons is not None or config.read_noise > 0
    if noisy:
        samples = measure(clean, psf, s)
        samples = add_noise(k_noise, samples, photons=config.photons, sigma=config.read_noise)
        degraded = upsample(samples, crop, s, interpolation=config.interpolation)
    else:
        degraded = degrade(clean, psf, s, interpolation=config.interpolation)

    def cut(img, a, c):
        return lax.dynamic_slice(img, (a, c), (p, p))

    source = jax.vmap(cut)(degraded, o0, o1).astype(jnp.float32)
    target = jax.vmap(cut)(clean, o0, o1)
    return source, target
