"""Pictures for humans: the PNGs isojax writes next to PSFs, training runs and restorations.

Each picture is built by a pure function of arrays that returns a matplotlib ``Figure``
(:func:`psf_figure`, :func:`loss_figure`, :func:`views_figure`; usable in a notebook or a
viewer plugin) and written by a ``save_*_png`` function through :func:`isojax.io.atomic_write`.
The small helpers (:func:`length_unit`, :func:`axis_label`, :func:`nice_length`,
:func:`add_scale_bar`) give every picture the same units ("µm", or "px" when the pixel size
is unknown) and the same scale bar. matplotlib is imported inside the functions, with the
Agg canvas, so importing isojax needs neither matplotlib's start-up time nor a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from isojax.errors import IsojaxInputError
from isojax.io import atomic_write, check_writable

__all__ = [
    "add_scale_bar",
    "axis_label",
    "length_unit",
    "loss_figure",
    "nice_length",
    "psf_figure",
    "save_loss_png",
    "save_psf_png",
    "save_views_png",
    "views_figure",
]

MICROMETRE = "µm"
#: Colours of the three planes of :func:`views_figure` (Okabe-Ito orange, sky blue, pink):
#: a plane's name and the lines where it cuts the other two views share one colour.
PLANE_COLOURS = {"XY": "#e69f00", "XZ": "#56b4e9", "YZ": "#f06ec8"}
_DPI = 100


def length_unit(pixel_size: float | None) -> tuple[float, str]:
    """The length of one pixel and its unit: ``(pixel_size, "µm")``, or ``(1.0, "px")``.

    Args:
      pixel_size: pixel size in micrometres, or None when it is unknown.

    Returns:
      ``(scale, unit)``: multiply pixel offsets by ``scale`` to get lengths in ``unit``.
    """
    if pixel_size is None:
        return 1.0, "px"
    return float(pixel_size), MICROMETRE


def axis_label(name: str, unit: str, *, arrow: bool = False) -> str:
    """An axis label such as ``"axial offset (µm)"``; with ``arrow`` it ends in ``" →"``.

    The arrow points the way the coordinate grows when the label is drawn along its axis
    (for a vertical axis whose values grow downwards, draw the label with ``rotation=270``).

    Args:
      name: what the axis measures, e.g. ``"axial offset"``.
      unit: its unit, e.g. :data:`MICROMETRE` or ``"px"``.
      arrow: end the label in an arrow.

    Returns:
      The label text.
    """
    return f"{name} ({unit})" + (" →" if arrow else "")


def nice_length(span: float, *, fraction: float = 0.2, unit: str = MICROMETRE) -> float:
    """A round scale-bar length (1, 2 or 5 times a power of ten) near ``fraction * span``.

    Args:
      span: the length of the axis the bar lies along, in ``unit``; positive.
      fraction: the bar's target share of ``span``; the bar is at most this long (or one
        pixel, with ``unit`` "px", whichever is longer).
      unit: "px" gives whole pixels only.

    Returns:
      The bar length in ``unit``.
    """
    target = max(float(span) * fraction, 1e-12)
    base = 10.0 ** math.floor(math.log10(target))
    length = next(m * base for m in (5, 2, 1) if m * base <= target * (1 + 1e-9))
    return max(1.0, round(length)) if unit == "px" else length


def add_scale_bar(ax, *, unit: str, length: float | None = None, colour: str = "white",
                  loc: str = "lower right"):
    """Draw a labelled scale bar (e.g. ``"2 µm"``) along the x axis of an image axes.

    The axes must show the image in physical units (``imshow(..., extent=...)``), so that
    the bar is ``length`` data units long.

    Args:
      ax: a matplotlib ``Axes``.
      unit: the unit of the axes' coordinates ("µm" or "px"), printed after the length.
      length: bar length in ``unit``; default :func:`nice_length` of the x range.
      colour: colour of the bar and its label.
      loc: where in the axes, as matplotlib's legend locations.

    Returns:
      The bar length in ``unit``.
    """
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    if length is None:
        length = nice_length(abs(x1 - x0), unit=unit)
    bar = AnchoredSizeBar(ax.transData, length, f"{length:g} {unit}", loc, pad=0.3,
                          sep=2, color=colour, frameon=True, size_vertical=abs(y1 - y0) / 60,
                          fontproperties=FontProperties(size=8))
    backdrop = "black" if colour == "white" else "white"  # readable on any image
    bar.patch.set(facecolor=backdrop, edgecolor="none", alpha=0.45)
    ax.add_artist(bar)
    return length


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained", dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(path: Path, fig, *, overwrite: bool = True) -> Path:
    return atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=_DPI),
                        overwrite=overwrite)


# --------------------------------------------------------------------------- PSF


def _fwhm_text(profile: np.ndarray, scale: float, unit: str) -> str:
    from isojax.psf import fwhm

    if profile.size < 3:
        return "one point: a delta" if profile.size == 1 else f"{profile.size} points"
    try:
        width = fwhm(profile, spacing=scale)
    except ValueError:
        return f"{profile.size} points"
    return f"FWHM {width:.3g} {unit}" if math.isfinite(width) else f"{profile.size} points"


def psf_figure(psf2d, *, pixel_size: float | None = None, title: str = "Additional axial PSF"):
    """A figure of a 2D ``(lateral, axial)`` PSF and its two profiles through the peak.

    Left: the PSF (axial horizontal, lateral vertical) in micrometres (pixels when
    ``pixel_size`` is None), with a scale bar and a colour bar of its values; a PSF much
    longer than it is wide (e.g. the one-row PSF of ``isojax psf theory``) is stretched
    laterally so that it stays visible, and the title says by how much. Right: the lateral
    and axial line profiles through the brightest pixel, with their FWHM; the lateral one is
    drawn on top with open markers, so a one-point profile stays visible at the peak.

    Args:
      psf2d: 2D array, axes ``(lateral, axial)``.
      pixel_size: pixel size in micrometres on both axes, or None.
      title: figure title.

    Returns:
      A matplotlib ``Figure`` (900 x 360 pixels at its 100 dpi) with an Agg canvas.

    Raises:
      IsojaxInputError: the array is not 2D, empty or not finite.
    """
    from matplotlib.ticker import FixedLocator, MaxNLocator

    psf = np.asarray(psf2d, dtype=np.float64)
    if psf.ndim != 2 or psf.size == 0 or not np.all(np.isfinite(psf)):
        raise IsojaxInputError(f"save_psf_png needs a finite 2D PSF, got shape {psf.shape}")
    scale, unit = length_unit(pixel_size)
    n_lat, n_ax = psf.shape
    peak = np.unravel_index(int(np.argmax(psf)), psf.shape)
    lateral = (np.arange(n_lat) - n_lat // 2) * scale
    axial = (np.arange(n_ax) - n_ax // 2) * scale
    # draw the image at most 4 times wider than tall, or 2 times taller than wide (the panel
    # is wide), so that a thin PSF stays visible and its tick labels apart
    ratio = n_ax / n_lat
    stretch = ratio / 4 if ratio > 4 else 2 * ratio if ratio < 1 / 2 else 1.0

    fig = _figure((9, 3.6))
    ax_img, ax_prof = fig.subplots(1, 2, width_ratios=[1.3, 1])
    half = scale / 2
    image = ax_img.imshow(psf, cmap="magma", origin="lower", aspect=stretch,
                          interpolation="nearest",
                          extent=(axial[0] - half, axial[-1] + half,
                                  lateral[0] - half, lateral[-1] + half))
    summed = abs(psf.sum() - 1) < 1e-3
    value = "PSF value (sums to 1)" if summed else "PSF value"
    bar = fig.colorbar(image, ax=ax_img, shrink=0.8)
    bar.set_label(f"{value}\n{psf.min():.3g} to {psf.max():.3g}", fontsize=9)
    ax_img.set_xlabel(axis_label("axial", unit))
    ax_img.set_ylabel(axis_label("lateral", unit))
    for axis, offsets in ((ax_img.yaxis, lateral), (ax_img.xaxis, axial)):
        axis.set_major_locator(FixedLocator(offsets) if len(offsets) <= 3 else MaxNLocator(4))
    shape = f"{n_lat} × {n_ax} px"
    drawn = (f", drawn {stretch:.3g}× taller" if stretch > 1
             else f", drawn {1 / stretch:.3g}× wider" if stretch < 1 else "")
    ax_img.set_title(shape + drawn, fontsize=10)
    add_scale_bar(ax_img, unit=unit)
    along_ax = psf[peak[0], :]
    along_lat = psf[:, peak[1]]
    ax_prof.plot(axial, along_ax, "s-", color="C1", ms=3,
                 label=f"axial ({_fwhm_text(along_ax, scale, unit)})")
    ax_prof.plot(lateral, along_lat, "o-", color="C0", ms=8 if n_lat == 1 else 5, mfc="none",
                 mew=1.6, zorder=3, label=f"lateral ({_fwhm_text(along_lat, scale, unit)})")
    ax_prof.set_xlabel(axis_label("offset from the peak", unit))
    ax_prof.set_ylabel(value)
    # above the axes, where it can hide no part of a curve
    ax_prof.legend(fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax_prof.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def save_psf_png(
    path: str | os.PathLike,
    psf2d,
    *,
    pixel_size: float | None = None,
    title: str = "Additional axial PSF",
    overwrite: bool = True,
) -> Path:
    """Save :func:`psf_figure` of a 2D ``(lateral, axial)`` PSF as a PNG (atomic write).

    Args:
      path: destination ``.png``; its folder must exist and be writable.
      psf2d: 2D array, axes ``(lateral, axial)``.
      pixel_size: pixel size in micrometres on both axes, or None (lengths in pixels).
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
    return _save(path, psf_figure(psf2d, pixel_size=pixel_size, title=title),
                 overwrite=overwrite)


# --------------------------------------------------------------------------- loss


def loss_figure(records: list[dict]):
    """A figure of the loss curves of a training run (``metrics.jsonl`` records).

    The training loss per step, with a running mean over ``n // 50`` steps once a run has
    100 steps or more (before that the per-step curve is drawn alone, with markers while it
    has 30 points or fewer, so that a one-step run shows a point); the validation loss where
    it was measured; the best validation in the title. The loss axis is logarithmic when the
    losses are positive and span more than two decades.

    Args:
      records: dicts with ``"step"`` and any of ``"loss"``, ``"val_loss"``.

    Returns:
      A matplotlib ``Figure`` (600 x 360 pixels at its 100 dpi) with an Agg canvas.
    """
    from matplotlib.ticker import MaxNLocator

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig = _figure((6, 3.6))
    ax = fig.subplots()
    if train:
        steps, loss = (np.asarray(v, np.float64) for v in zip(*train, strict=True))
        w = len(loss) // 50
        if w >= 2:
            ax.plot(steps, loss, color="C0", alpha=0.3, lw=0.8, label="train (per step)")
            smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1 :], smooth, color="C0", label=f"train (mean of {w} steps)")
        else:
            ax.plot(steps, loss, "o-" if len(loss) <= 30 else "-", color="C0", ms=4,
                    label="train")
    if val:
        vs, vl = zip(*val, strict=True)
        ax.plot(vs, vl, "o-", color="C1", ms=5, label="validation")
        best = int(np.nanargmin(np.asarray(vl, np.float64))) if np.isfinite(vl).any() else 0
        ax.set_title(f"best validation {vl[best]:.4g} at step {vs[best]}", fontsize=10)
    every = np.asarray([v for _, v in train + val], np.float64)
    every = every[np.isfinite(every)]
    if every.size and every.min() > 0 and every.max() / every.min() > 100:
        ax.set_yscale("log")
    if not train and not val:
        ax.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=ax.transAxes)
    ticks = sorted({s for s, _ in train + val})
    if len(ticks) <= 8:  # a short run: a tick at each step, never at a fraction of one
        ax.set_xticks(ticks)
        if len(ticks) == 1:
            ax.set_xlim(ticks[0] - 1, ticks[0] + 1)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend(fontsize=9)
    fig.suptitle("Training loss")
    return fig


def save_loss_png(path: str | os.PathLike, records: list[dict]) -> Path:
    """Save :func:`loss_figure` of a training run's records as a PNG (atomic write).

    Args:
      path: destination ``.png``; its folder must exist and be writable.
      records: the ``metrics.jsonl`` records (dicts with ``"step"``, ``"loss"``, ...).

    Returns:
      The path written.

    Raises:
      IsojaxInputError: the folder is not writable.
    """
    path = check_writable(path)
    return _save(path, loss_figure(records))


# --------------------------------------------------------------------------- views


def _check_volumes(volumes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not volumes:
        raise IsojaxInputError("save_views_png needs at least one volume, got none")
    out = {}
    for name, v in volumes.items():
        a = np.asarray(v, np.float64)
        if a.ndim != 3 or a.size == 0:
            raise IsojaxInputError(
                f"save_views_png needs 3D (z, y, x) volumes, got shape {a.shape} for {name!r}")
        out[name] = a
    return out


def _display_range(ref: np.ndarray) -> tuple[float, float]:
    finite = ref[np.isfinite(ref)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(p) for p in np.percentile(finite, [0.1, 99.9]))
    if hi <= lo:
        lo, hi = lo - 0.5, lo + 0.5
    return lo, hi


def _ortho_block(fig, spec, v: np.ndarray, name: str, *, cuts, spacing, unit: str,
                 lo: float, hi: float):
    """Draw one volume's XY, XZ (below) and YZ (right) views into ``spec``; return the XY image."""
    dz, dy, dx = spacing
    nz, ny, nx = v.shape
    cz, cy, cx = (min(c, s - 1) for c, s in zip(cuts, v.shape, strict=True))
    ext = {a: (-d / 2, (n - 0.5) * d) for a, d, n in (("z", dz, nz), ("y", dy, ny), ("x", dx, nx))}
    grid = spec.subgridspec(2, 2, width_ratios=[nx * dx, nz * dz],
                            height_ratios=[ny * dy, nz * dz], wspace=0.0, hspace=0.0)
    ax_xy, ax_yz, ax_xz = (fig.add_subplot(grid[i, j]) for i, j in ((0, 0), (0, 1), (1, 0)))
    kw = {"cmap": "gray", "vmin": lo, "vmax": hi, "interpolation": "nearest", "aspect": "equal"}
    # extent is (left, right, bottom, top): rows grow downwards, as in every image viewer
    image = ax_xy.imshow(v[cz], extent=(*ext["x"], *ext["y"][::-1]), **kw)
    ax_xz.imshow(v[:, cy, :], extent=(*ext["x"], *ext["z"][::-1]), **kw)
    ax_yz.imshow(v[:, :, cx].T, extent=(*ext["z"], *ext["y"][::-1]), **kw)
    z, y, x = cz * dz, cy * dy, cx * dx
    line = {"ls": (0, (4, 3)), "lw": 0.9, "alpha": 0.8}
    ax_xy.axhline(y, color=PLANE_COLOURS["XZ"], **line)
    ax_xy.axvline(x, color=PLANE_COLOURS["YZ"], **line)
    ax_xz.axhline(z, color=PLANE_COLOURS["XY"], **line)
    ax_xz.axvline(x, color=PLANE_COLOURS["YZ"], **line)
    ax_yz.axvline(z, color=PLANE_COLOURS["XY"], **line)
    ax_yz.axhline(y, color=PLANE_COLOURS["XZ"], **line)
    for ax, plane in ((ax_xy, "XY"), (ax_xz, "XZ"), (ax_yz, "YZ")):
        ax.text(0.03, 0.97, plane, transform=ax.transAxes, ha="left", va="top", fontsize=8,
                color=PLANE_COLOURS[plane], fontweight="bold",
                bbox={"facecolor": "black", "alpha": 0.45, "edgecolor": "none", "pad": 1.5})
        for spine in ax.spines.values():
            spine.set_edgecolor(PLANE_COLOURS[plane])
        ax.tick_params(labelsize=7)
    vertical = {"rotation": 270, "va": "top", "fontsize": 8}  # reads downwards, as y and z grow
    ax_xy.set_ylabel(axis_label("y", unit, arrow=True), **vertical)
    ax_xy.tick_params(labelbottom=False)
    ax_xz.set_ylabel(axis_label("z", unit, arrow=True), **vertical)
    ax_xz.set_xlabel(axis_label("x", unit, arrow=True), fontsize=8)
    ax_yz.set_xlabel(axis_label("z", unit, arrow=True), fontsize=8)
    ax_yz.xaxis.set_label_position("top")  # above, so that XZ sits right under XY
    ax_yz.tick_params(labelleft=False, labelbottom=False, labeltop=True, top=True)
    ax_xy.set_title(name, fontsize=10, loc="left")
    add_scale_bar(ax_xy, unit=unit)
    return image


def views_figure(
    volumes: Mapping[str, np.ndarray],
    *,
    spacing: tuple[float, float, float] | None = None,
    title: str = "",
):
    """A figure of orthogonal views (XY, XZ, YZ through the centre) of one or more volumes.

    One block per volume, named by the dict keys, three blocks to a row, laid out as in
    Fiji's orthogonal views: XY, with XZ below it (Z growing downwards) and YZ to its right
    (Z growing to the right), all in micrometres with the voxel size ``spacing`` (so Z is not
    squashed), or in pixels ("px") when it is None. Each view is framed in its plane's colour,
    and dashed lines of that colour mark where the plane cuts the other two views; the legend
    below says where the planes lie. The XY view has a scale bar. The cut is the centre of the
    first volume (clipped to the others' shape); all volumes should share one ``(z, y, x)``
    grid (e.g. truth, input brought to the fine grid, restorations) and are shown with one
    grey scale, the 0.1-99.9 percentile range of the first volume, in the colour bar.

    Args:
      volumes: name -> 3D array ``(z, y, x)``; at least one.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, or None.
      title: figure title, or "" for none.

    Returns:
      A matplotlib ``Figure`` at 100 dpi with an Agg canvas; its size follows the volumes'
      physical shape.

    Raises:
      IsojaxInputError: no volume, or one that is not 3D or is empty, or ``spacing`` is not
        three positive numbers.
    """
    from matplotlib.lines import Line2D

    vols = _check_volumes(volumes)
    names = list(vols)
    ref = vols[names[0]]
    lo, hi = _display_range(ref)
    unit = "px" if spacing is None else MICROMETRE
    voxel = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    if len(voxel) != 3 or not all(math.isfinite(s) and s > 0 for s in voxel):
        raise IsojaxInputError(f"save_views_png needs a voxel size (dz, dy, dx) of three "
                               f"positive micrometres, or None, got spacing={voxel}")
    dz, dy, dx = voxel
    nz, ny, nx = ref.shape
    cuts = (nz // 2, ny // 2, nx // 2)
    ncols = min(len(names), 3)
    nrows = -(-len(names) // ncols)
    across, down = nx * dx + nz * dz, ny * dy + nz * dz
    ratio = min(max(down / across, 0.3), 3.0)
    panel = 3.4 if ncols > 1 else 4.6  # inches of image across one block
    size = (ncols * (panel + 0.9) + 1.3, nrows * (panel * ratio + 0.9) + 0.9)
    fig = _figure(tuple(round(s, 2) for s in size))  # whole pixels at 100 dpi
    outer = fig.add_gridspec(nrows, ncols + 1, width_ratios=[1] * ncols + [0.04])
    image = None
    for k, name in enumerate(names):
        image = _ortho_block(fig, outer[k // ncols, k % ncols], vols[name], name, cuts=cuts,
                             spacing=(dz, dy, dx), unit=unit, lo=lo, hi=hi)
    clipped_lo = any(np.any(v < lo) for v in vols.values())  # NaN compares False
    clipped_hi = any(np.any(v > hi) for v in vols.values())
    extend = {(True, True): "both", (True, False): "min", (False, True): "max"}.get(
        (clipped_lo, clipped_hi), "neither")
    cax = fig.add_subplot(outer[:, -1])
    bar = fig.colorbar(image, cax=cax, extend=extend, extendfrac=0.03)
    bar.set_label(f"intensity, {lo:.3g} to {hi:.3g}\n(0.1-99.9 percentile of {names[0]})",
                  fontsize=8)
    bar.ax.tick_params(labelsize=7)
    where = {"XY": ("z", cuts[0] * dz), "XZ": ("y", cuts[1] * dy), "YZ": ("x", cuts[2] * dx)}
    handles = [Line2D([], [], color=c, ls=(0, (4, 3)), lw=1.5) for c in PLANE_COLOURS.values()]
    labels = [f"{p} plane at {a} = {pos:.4g} {unit}" for p, (a, pos) in where.items()]
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def save_views_png(
    path: str | os.PathLike,
    volumes: dict[str, np.ndarray],
    *,
    spacing: tuple[float, float, float] | None = None,
    title: str = "",
) -> Path:
    """Save :func:`views_figure` (orthogonal views of one or more volumes) as a PNG.

    Args:
      path: destination ``.png``; its folder must exist and be writable.
      volumes: name -> 3D array ``(z, y, x)``, all on one grid; at least one.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, or None (lengths in pixels).
      title: figure title, or "" for none.

    Returns:
      The path written (atomically).

    Raises:
      IsojaxInputError: as :func:`views_figure`, or the folder is not writable.
    """
    path = check_writable(path)
    return _save(path, views_figure(volumes, spacing=spacing, title=title))
