"""Regenerate the cropped bead files in this folder from /work/shared/data/psf (run once).

Usage: python tests/data/psf/make_test_data.py [SOURCE_FOLDER]
"""

import sys
from pathlib import Path

import numpy as np
import tifffile

source = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/psf")
here = Path(__file__).parent

# Lattice light-sheet bead: bead at (z, y, x) = (30, 71, 64); keep all planes, 41 x 41 pixels.
with tifffile.TiffFile(source / "lattice_lightsheet_bead_psf.tif") as tif:
    lattice = tif.asarray()
    description = tif.pages.first.description
tifffile.imwrite(here / "lattice_bead_crop.tif", lattice[:, 51:92, 44:85],
                 description=description, metadata=None)

# Confocal averaged PSF (no tags): centre near (25, 20, 24); 35^3 voxels as float32.
average = tifffile.imread(source / "confocal_bead_average_psf.tif")
tifffile.imwrite(here / "confocal_psf_crop.tif", average[8:43, 3:38, 7:42].astype(np.float32),
                 metadata=None)

# Confocal bead image with ImageJ tags: one bead near (24, 80, 75), 41 x 40 x 40 voxels; the
# original ImageJ metadata (unit written as the escaped text \u00B5m, spacing 0.125) is kept.
with tifffile.TiffFile(source / "confocal_bead_image.tif") as tif:
    image = tif.asarray()
    meta = tif.imagej_metadata
    xres = tif.pages.first.tags["XResolution"].value
    yres = tif.pages.first.tags["YResolution"].value
tifffile.imwrite(here / "confocal_bead_crop.tif", image[:, 60:100, 55:95], imagej=True,
                 resolution=(xres[0] / xres[1], yres[0] / yres[1]),
                 metadata={"unit": meta["unit"], "spacing": meta["spacing"], "axes": "ZYX"})
