"""Sample data: the demo's simulated anisotropic stack (``isojax demo``'s step 1)."""

from __future__ import annotations

from napari_isojax._jobs import demo_stack

__all__ = ["demo_sample"]


def demo_sample(*, shape=(96, 128, 128)) -> list[tuple]:
    """The simulated stack at its voxel size, as a napari layer data tuple.

    Filaments and vesicles at 0.1 µm voxels, Gaussian PSF of sigma 1 px laterally and 3 px
    axially, Z sampled every 4 pixels (0.4 µm), shot and read noise.
    """
    stack, spacing = demo_stack(shape=shape)
    return [(stack, {"name": "isojax demo stack", "scale": spacing, "colormap": "gray"},
             "image")]
