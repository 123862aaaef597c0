"""Headless napari.

Qt's ``offscreen`` platform runs every widget but gives vispy no OpenGL (Qt 6: "QOpenGLWidget
is not supported on this platform"), so a screenshot there is blank; ``ci.sh`` therefore runs
the tests on ``xcb`` inside Xvfb, where Mesa's llvmpipe renders. Without a display the tests
default to ``offscreen`` and the screenshot test is skipped.
"""

import os
import tempfile

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the training tests compile the same step twice (two runs): a persistent cache makes the
# second compilation a read
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "napari-isojax-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import numpy as np
import pytest
from scipy import ndimage

SPACING = (0.2, 0.1, 0.1)  # subsample 2


@pytest.fixture(scope="session")
def stack():
    """A small anisotropic stack ``(16, 32, 32)`` at :data:`SPACING`: isotropic blobs,
    blurred axially by a Gaussian of 3 px (sigma) and sampled every 2 px in Z, with noise."""
    rng = np.random.default_rng(0)
    iso = ndimage.gaussian_filter(rng.random((32, 32, 32)), 1.0)
    iso = np.clip(iso - np.percentile(iso, 70), 0, None)
    blurred = ndimage.gaussian_filter1d(iso, 3.0, axis=0, mode="reflect")[::2]
    noisy = blurred * 1000 + rng.normal(0, 0.5, blurred.shape)
    return noisy.astype(np.float32)


@pytest.fixture(scope="session")
def psf_file(tmp_path_factory):
    """A Gaussian additional axial PSF ``(1, 13)`` at 0.1 µm, written as isojax writes one."""
    from isojax.io import write_tiff

    g = np.exp(-0.5 * ((np.arange(13) - 6) / 2.0) ** 2)
    path = tmp_path_factory.mktemp("psf") / "psf.tif"
    write_tiff(path, (g / g.sum())[None].astype(np.float32), pixel_size=0.1)
    return path
