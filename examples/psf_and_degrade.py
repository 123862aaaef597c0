"""From a real bead to a degraded volume: the PSF toolkit and the forward operator.

1. Derives the additional axial PSF from the measured lattice light-sheet bead shipped in
   ``tests/data/psf`` (pycudadecon's test PSF, MIT licence; its TIFF has no voxel size, so
   it is given here: 0.1 um in z, 0.101 um laterally), at a lateral pixel size of 0.104 um.
2. Checks it, and factorises it into a few separable terms (faster operator).
3. Simulates an isotropic volume and degrades its XY planes the way the axial direction is
   degraded, at a non-integer anisotropy factor (dz = 0.5 um -> subsample 4.8), along X.
4. Writes TIFFs with their voxel sizes and a PNG comparing the planes.

Run from the repository root:  python examples/psf_and_degrade.py [--out psf-example]
"""

import argparse
from pathlib import Path

import jax
import numpy as np

import isojax
from isojax.io import read_tiff, write_tiff
from isojax.plot import save_psf_png
from isojax.psf import axial_psf, check_psf, process_bead
from isojax.simulate import simulate_specimen

HERE = Path(__file__).resolve().parent
BEAD = HERE.parent / "tests" / "data" / "psf" / "lattice_bead_crop.tif"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("psf-example"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pixel = 0.104

    bead, spacing, _ = read_tiff(BEAD, spacing=(0.1, 0.101, 0.101))
    psf3d, spacing, bead_info = process_bead(bead, spacing)
    print(f"bead: background {bead_info['background']:.4g}, peak SNR {bead_info['peak_snr']:.3g}")
    psf2d, info = axial_psf(psf3d, spacing, pixel)
    print(f"axial PSF: {info['method']}, FWHM axial {info['fwhm_um'][1]:.3g} um")
    psf2d, report = check_psf(psf2d, pixel_size=pixel)
    print(report)
    write_tiff(args.out / "axial.tif", psf2d, pixel_size=pixel)
    save_psf_png(args.out / "axial.png", psf2d, pixel_size=pixel, title="Lattice light-sheet bead")

    factored = isojax.factorize_psf(psf2d, rtol=1e-3)
    err = np.linalg.norm(np.asarray(factored.dense()) - psf2d) / np.linalg.norm(psf2d)
    print(f"factorised into {factored.rank} separable terms (relative error {err:.1e})")

    volume = np.asarray(simulate_specimen(jax.random.key(0), (32, 256, 256)))
    subsample = 0.5 / pixel
    degraded = np.asarray(isojax.degrade(volume, factored, subsample))  # along X, every plane
    write_tiff(args.out / "volume.tif", volume, spacing=(pixel, pixel, pixel))
    write_tiff(args.out / "degraded_x.tif", degraded, spacing=(pixel, pixel, pixel))

    from isojax.plot import save_views_png

    save_views_png(
        args.out / "degraded.png",
        {"isotropic": volume, f"degraded along X (subsample {subsample:.3g})": degraded},
        spacing=(pixel, pixel, pixel),
        title="XY planes degraded like the axial direction",
    )
    print(f"wrote {args.out}/axial.tif, axial.png, volume.tif, degraded_x.tif, degraded.png")


if __name__ == "__main__":
    main()
