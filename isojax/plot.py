"""Pictures of PSFs for humans: a PNG next to every PSF the command line writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from isojax.errors import IsojaxInputError
from isojax.io import atomic_write, check_writable

__all__ = ["save_loss_png", "save_psf_png", "save_views_png"]


def save_psf_png(
    path: str | os.PathLike,
    psf2d,
    *,
    pixel_size: float | None = None,
    title: str = "Additional axial PSF",
    overwrite: bool = True,
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
      overwrite: replace an existing ``path`` (default); with False it is refused, also
        one that appeared meanwhile.

    Returns:
      The path written.

    Raises:
      IsojaxInputError: the array is not 2D or not finite, or the folder is not writable,
        or ``path`` exists and ``overwrite`` is False.
    """
    path = check_writable(path)
    psf = np.asarray(psf2d, dtype=np.float64)
    if psf.ndim != 2 or not np.all(np.isfinite(psf)):
        raise IsojaxInputError(f"save_psf_png needs a finite 2D PSF, got shape {psf.shape}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale = pixel_size if pixel_size is not None else 1.0
    unit = "um" if pixel_size is not None else "px"
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
    return atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=100),
                        overwrite=overwrite)


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_loss_png(path: str | os.PathLike, records: list[dict]) -> Path:
    """Save the loss curves of a training run (``metrics.jsonl`` records) as a PNG.

    Training loss per step (faint) with a running mean, and the validation loss at the
    steps where it was measured. The write is atomic.
    """
    path = check_writable(path)
    steps = np.array([r["step"] for r in records if "loss" in r])
    loss = np.array([r["loss"] for r in records if "loss" in r])
    fig = _figure((6, 3.6))
    ax = fig.subplots()
    if len(loss):
        ax.plot(steps, loss, color="C0", alpha=0.3, lw=0.8, label="train (per step)")
        w = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, color="C0", label=f"train (mean of {w})")
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if val:
        vs, vl = zip(*val, strict=True)
        ax.plot(vs, vl, "o-", color="C1", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=100))


def save_views_png(
    path: str | os.PathLike,
    volumes: dict[str, np.ndarray],
    *,
    spacing: tuple[float, float, float] | None = None,
    title: str = "",
) -> Path:
    """Save orthogonal views (XY, XZ, YZ through the centre) of one or more volumes.

    One row per volume, named by the dict keys; all volumes must share one ``(z, y, x)``
    grid (e.g. truth, input brought to the fine grid, restorations). XZ and YZ views are
    drawn with the voxel aspect of ``spacing`` so that Z is not squashed. Each row uses
    the 0.1-99.9 percentile range of the first volume for display.
    """
    path = check_writable(path)
    names = list(volumes)
    ref = np.asarray(volumes[names[0]], np.float64)
    lo, hi = np.percentile(ref, [0.1, 99.9])
    dz, dy, dx = spacing if spacing is not None else (1.0, 1.0, 1.0)
    fig = _figure((10, 2.8 * len(names)))
    axes = np.atleast_2d(fig.subplots(len(names), 3))
    for row, name in zip(axes, names, strict=True):
        v = np.asarray(volumes[name], np.float64)
        z, y, x = (s // 2 for s in v.shape)
        views = (("XY", v[z], dy / dx), ("XZ", v[:, y, :], dz / dx), ("YZ", v[:, :, x], dz / dy))
        for ax, (label, im, aspect) in zip(row, views, strict=True):
            ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=90))
