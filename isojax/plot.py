"""Pictures of PSFs for humans: a PNG next to every PSF the command line writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from isojax.errors import IsojaxInputError
from isojax.io import atomic_write, check_writable

__all__ = ["save_psf_png"]


def save_psf_png(
    path: str | os.PathLike,
    psf2d,
    *,
    pixel_size: float | None = None,
    title: str = "Additional axial PSF",
) -> Path:
    """Save an image of a 2D ``(lateral, axial)`` PSF and its profiles through the peak.

    The left panel shows the PSF (axial horizontal, lateral vertical); the right panel its
    lateral and axial line profiles through the brightest pixel, in micrometres when
    ``pixel_size`` is given, else in pixels. matplotlib is imported here, with the Agg canvas,
    so importing isojax does not need a display. The write is atomic.

    Args:
      path: destination ``.png``; its folder must exist and be writable.
      psf2d: 2D array, axes ``(lateral, axial)``.
      pixel_size: pixel size in micrometres on both axes, or None.
      title: figure title.

    Returns:
      The path written.

    Raises:
      IsojaxInputError: the array is not 2D or not finite, or the folder is not writable.
    """
    path = check_writable(path)
    psf = np.asarray(psf2d, dtype=np.float64)
    if psf.ndim != 2 or not np.all(np.isfinite(psf)):
        raise IsojaxInputError(f"save_psf_png needs a finite 2D PSF, got shape {psf.shape}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale = pixel_size if pixel_size is not None else 1.0
    unit = "µm" if pixel_size is not None else "px"
    peak = np.unravel_index(int(np.argmax(psf)), psf.shape)
    lateral = (np.arange(psf.shape[0]) - psf.shape[0] // 2) * scale
    axial = (np.arange(psf.shape[1]) - psf.shape[1] // 2) * scale

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_img, ax_prof = fig.subplots(1, 2, width_ratios=[1.3, 1])
    half = scale / 2
    image = ax_img.imshow(psf, cmap="magma", origin="lower", aspect="equal",
                          extent=(axial[0] - half, axial[-1] + half,
                                  lateral[0] - half, lateral[-1] + half))
    fig.colorbar(image, ax=ax_img, shrink=0.8)
    ax_img.set_xlabel(f"axial ({unit})")
    ax_img.set_ylabel(f"lateral ({unit})")
    ax_img.set_title(f"{psf.shape[0]} x {psf.shape[1]} px")
    ax_prof.plot(lateral, psf[:, peak[1]], "o-", label="lateral", ms=3)
    ax_prof.plot(axial, psf[peak[0], :], "s-", label="axial", ms=3)
    ax_prof.set_xlabel(f"offset from centre ({unit})")
    ax_prof.set_ylabel("value (PSF sums to 1)")
    ax_prof.legend()
    ax_prof.grid(alpha=0.3)
    fig.suptitle(title)
    return atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=100))
