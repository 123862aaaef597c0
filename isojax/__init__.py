"""isojax: isotropic restoration of anisotropic 3D microscopy stacks, in JAX.

The forward operator (:func:`degrade`, :func:`measure`, ...) is imported eagerly; the
rest of the public API loads on first use, so ``import isojax`` stays light.

Modules, from the physics outwards: :mod:`isojax.forward` (the operator and noise),
:mod:`isojax.psf` (PSF models, beads, the additional axial PSF, the check),
:mod:`isojax.simulate` (stacks with known truth), :mod:`isojax.metrics` (PSNR, SSIM),
:mod:`isojax.synth` (training pairs), :mod:`isojax.calibrate` (PSF self-calibration),
:mod:`isojax.unet`, :mod:`isojax.train`, :mod:`isojax.predict`,
:mod:`isojax.pipeline` (the command line's steps as functions), :mod:`isojax.io`.
"""

from __future__ import annotations

import importlib

from isojax.forward import (
    FactoredPSF,
    add_noise,
    degrade,
    factorize_psf,
    gaussian_noise,
    measure,
    poisson_noise,
    sample_positions,
    upsample,
)

__version__ = "0.1.0"

# name -> module that defines it, loaded on first access (PEP 562)
_LAZY = {
    "IsojaxInputError": "isojax.errors",
    "read_tiff": "isojax.io",
    "write_tiff": "isojax.io",
    "axial_psf": "isojax.psf",
    "check_psf": "isojax.psf",
    "gaussian_axial_psf": "isojax.psf",
    "process_bead": "isojax.psf",
    "theoretical_axial_psf": "isojax.psf",
    "PSFReport": "isojax.psf",
    "simulate_stack": "isojax.simulate",
    "psnr": "isojax.metrics",
    "ssim": "isojax.metrics",
    "SynthConfig": "isojax.synth",
    "make_pairs": "isojax.synth",
    "UNetConfig": "isojax.unet",
    "TrainConfig": "isojax.train",
    "load_model": "isojax.train",
    "predict_stack": "isojax.predict",
    "upsample_z": "isojax.predict",
    "train_file": "isojax.pipeline",
    "predict_file": "isojax.pipeline",
    "demo": "isojax.pipeline",
}

__all__ = [
    "FactoredPSF",
    "__version__",
    "add_noise",
    "degrade",
    "factorize_psf",
    "gaussian_noise",
    "measure",
    "poisson_noise",
    "sample_positions",
    "upsample",
    *sorted(_LAZY),
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'isojax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
