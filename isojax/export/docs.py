"""The texts of an exported package: its ``README.md`` and its citations.

The README says exactly how the network is applied for isotropic restoration (it is a 2D
network; the 3D procedure is not in the ONNX graph), the model's PSF and subsample factor,
and how it was trained, all from the model folder's ``config.json``.
"""

from __future__ import annotations

import numpy as np

from isojax import __version__
from isojax.psf.models import fwhm
from isojax.unet import UNetConfig

__all__ = ["citations", "documentation"]


def citations() -> list[dict]:
    """The ``cite`` entries of ``rdf.yaml``: CARE and Isotropic CARE.

    isojax itself has no DOI or web address yet; the README names it with its version.

    Returns:
      A list of ``{"text": ..., "doi": ...}`` dicts, one per paper.
    """
    return [
        {"text": "Weigert, M. et al. Content-aware image restoration: pushing the limits of "
                 "fluorescence microscopy. Nature Methods 15, 1090-1097 (2018). (CARE)",
         "doi": "10.1038/s41592-018-0216-7"},
        {"text": "Weigert, M., Royer, L., Jug, F. & Myers, G. Isotropic reconstruction of 3D "
                 "fluorescence microscopy images using convolutional neural networks. MICCAI "
                 "2017, LNCS 10434, 126-134. (Isotropic CARE)",
         "doi": "10.1007/978-3-319-66185-8_15"},
    ]


def _psf_text(psf: np.ndarray, dx: float) -> str:
    peak = np.unravel_index(int(np.argmax(psf)), psf.shape)
    axial, lateral = psf[peak[0], :], psf[:, peak[1]]
    fa = fwhm(axial, spacing=dx) if axial.size > 1 else float("nan")
    fl = fwhm(lateral, spacing=dx) if lateral.size > 1 else float("nan")
    lateral_text = f"{fl:.3g} µm" if np.isfinite(fl) else "none (one lateral pixel)"
    return (f"a 2D (lateral, axial) array of {psf.shape[0]} x {psf.shape[1]} pixels of "
            f"{dx:.4g} µm (`psf.tif`, summing to 1): axial FWHM {fa:.3g} µm, lateral FWHM "
            f"{lateral_text}")


def documentation(meta: dict, net: UNetConfig, *, tiles: tuple[int, int, int],
                  outputs: list[str], psf: np.ndarray) -> str:
    """The package's ``README.md``.

    Args:
      meta: the model folder's ``config.json``.
      net: its network settings.
      tiles: ``(minimum, step, halo)`` of :func:`isojax.export.package.tile_sizes`.
      outputs: the output names (``mean``, and ``scale`` for a Laplace model).
      psf: the model's axial PSF ``(lateral, axial)``.

    Returns:
      Markdown text.
    """
    s, interp = float(meta["subsample"]), meta["interpolation"]
    norm, synth, train = meta["normalization"], meta["synth"], meta["train"]
    dx = float(meta["psf"]["pixel_size"])
    dz = meta.get("spacing") and meta["spacing"][0]
    minimum, step, halo = tiles
    noise = ("no added noise" if synth["photons"] is None and not synth["read_noise"] else
             f"shot noise of {synth['photons']} photons per unit" if synth["photons"] else
             "no shot noise") + (f", Gaussian read noise of {synth['read_noise']:.3g} "
                                 "(normalised units)" if synth["read_noise"] else "")
    laplace = (
        "\n- `scale`: the Laplace scale *b* of each pixel (the expected absolute error), in "
        "the same normalised units; fuse it like the mean or keep the XZ one.\n"
        if "scale" in outputs else "\n")
    return f"""# Isotropic restoration (isojax)

A CARE U-Net that restores the axial resolution of anisotropic 3D fluorescence stacks
(Isotropic CARE, Weigert et al. 2017, 2018), trained with isojax {meta.get("isojax_version")}
and exported by isojax {__version__}. The network is 2D: it restores one slice
`(lateral, axial)` at a time. Isotropic restoration of a stack is the procedure below; the
ONNX graph is step 3.

## The model

- **Subsample factor** (Z step over lateral pixel size, `dz / dx`): **{s:.4g}**
  ({"voxel size of the training stack " + ", ".join(f"{v:.4g}" for v in meta["spacing"]) +
   " µm (z, y, x)" if dz else "voxel size of the training stack not recorded"}).
  Use it on stacks with this factor (isojax refuses factors more than 10% away).
- **Axial PSF** (the blur the network undoes, beyond the lateral one): {_psf_text(psf, dx)}.
- **Lateral pixel size**: {dx:.4g} µm; the output voxels are {dx:.4g} µm in x, y and z.
- **Network**: 2D U-Net (CSBDeep's CARE layout), depth {net.depth}, {net.first_filters}
  first-level filters, {net.kernel_size}x{net.kernel_size} kernels, {net.n_conv_per_depth}
  convolutions per level, residual {net.residual}; {"Laplace (probabilistic) outputs: mean and scale" if net.prob_out else "one output"}.
- **Tiles**: any size `{minimum} + n * {step}` pixels on each axis (multiples of
  {step} = 2^depth); the network reaches {halo} pixels, so crop {halo} pixels (the halo)
  from each side of a tile's output, or let neighbouring tiles overlap by {2 * halo}.

## How to apply it to a stack `(z, y, x)` (what `isojax predict` does)

1. **Normalise** the whole stack: `u = (x - p_lo) / (p_hi - p_lo)` with `p_lo`, `p_hi`
   the {norm["pmin"]:g} and {norm["pmax"]:g} percentiles of the whole stack.
2. **Upsample Z on the physical grid**, {interp} interpolation: measured slice `k` sits at
   output slice `k * {s:.4g}`; the output has `floor((n_z - 1) * {s:.4g}) + 1` slices (no
   extrapolation past the last slice), output slice `j` at `z0 + j * dz / {s:.4g}`.
   (Not `scipy.ndimage.zoom`, which stretches the grid so that the last slices line up.)
3. **Restore the XZ and the YZ slices**: for every `y` the image `(x, z)`, for every `x`
   the image `(y, z)`, the lateral axis first and Z last (the input axes `x`, `z`; not
   rotated). Pad each slice by reflection to multiples of {step} (split before/after as
   CSBDeep's `PadAndCropResizer`) and crop the result back; large slices may be tiled as
   above.
4. **Fuse** the two restored volumes: their arithmetic mean (isojax's default; CSBDeep
   takes the geometric mean of the clipped views).
5. **Undo the normalisation**: `x = u * (p_hi - p_lo) + p_lo`.

The package's own pre- and postprocessing describe step 3 on a single slice: its
`scale_range` preprocessing normalises with the percentiles of the tensor it is given, and
its outputs stay in those normalised units (`ensure_dtype` only: bioimage.io's
postprocessing has no inverse of `scale_range`). For the stack-wide normalisation of step 1,
feed all slices of a stack as one tensor, or normalise beforehand. `isojax predict STACK
--model THIS.bioimageio.zip` runs the whole procedure with onnxruntime.

## Outputs

- `mean`: the restored slice, in the normalised units of the input.{laplace}
## Training data

Trained on the stack itself, as isojax does: its lateral (XY) planes, of a stack of
{" x ".join(str(v) for v in meta["stack_shape"])} voxels (z, y, x), are the ground truth;
planes {meta["train_planes"][0]}-{meta["train_planes"][1]} trained and
{meta["val_planes"][0]}-{meta["val_planes"][1]} validated. Training pairs are patches of
{synth["patch_size"]} pixels degraded by isojax's forward operator along one of their axes
(which plays Z): blurred with the axial PSF above, sampled every {s:.4g} pixels and brought back to the fine
grid by {interp} interpolation, {noise}. {train["steps"]} steps of batch
{train["batch_size"]}, learning rate {train["learning_rate"]:g}, loss {train["loss"]},
seed {train["seed"]}{"; the PSF was refined jointly (self-calibration)" if meta.get("calibrate_psf") else ""}.
The model folder's `config.json` is `isojax.json` in this package.

## Validation

The test tensors are an XZ slice of a stack simulated with this model's PSF and subsample
factor (`test_input.npy`) and the network's output on it, computed by isojax in JAX; the
ONNX weights reproduce it to 1e-4 of its range. The cover shows orthogonal views of that
simulated stack after Z upsampling (top) and after isojax's restoration (bottom). Judge a
model on your data against a reference (e.g. the lateral planes, or beads imaged
isotropically), not from the training loss.

## Cite

- CARE: Weigert et al., Nature Methods 15, 1090-1097 (2018), doi:10.1038/s41592-018-0216-7.
- Isotropic CARE: Weigert et al., MICCAI 2017, doi:10.1007/978-3-319-66185-8_15.
- isojax {__version__}: isotropic restoration with a differentiable JAX forward operator.
"""
