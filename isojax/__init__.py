"""isojax: isotropic restoration of anisotropic 3D microscopy stacks, in JAX."""

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
]
