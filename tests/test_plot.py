"""The PNGs isojax writes: written, decodable, not blank, and free of the old defects.

Each picture is checked through its file (size, contrast, colours) and through the Figure its
pure builder returns (labels, legend entries, cut lines, text that does not overlap).
"""

import itertools
import re

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.text import Text

from isojax.errors import IsojaxInputError
from isojax.plot import (
    PLANE_COLOURS,
    axis_label,
    length_unit,
    loss_figure,
    nice_length,
    psf_figure,
    save_loss_png,
    save_psf_png,
    save_views_png,
    views_figure,
)


def _gaussian_psf(n_lateral: int, n_axial: int) -> np.ndarray:
    lat = np.arange(n_lateral) - n_lateral // 2
    ax = np.arange(n_axial) - n_axial // 2
    psf = np.exp(-(lat[:, None] ** 2) / 2 / 1.2**2 - ax[None, :] ** 2 / 2 / 3.0**2)
    return psf / psf.sum()


def _volume(shape=(12, 20, 24), seed=0) -> np.ndarray:
    """A few bright blobs on a dim background, ``(z, y, x)``."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    v = np.full(shape, 10.0)
    for _ in range(4):
        c = rng.uniform(0, 1, 3) * np.array(shape)
        v += 100 * np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / 4)
    return v + rng.normal(0, 1, shape)


def _records(n: int) -> list[dict]:
    out = [{"step": s, "loss": 1.0 / s, "grad_norm": 1.0} for s in range(1, n + 1)]
    out[-1]["val_loss"] = 1.2 / n
    return out


VOLUMES = {"truth": _volume(), "restored": _volume(seed=1)}
SPACING = (0.2, 0.1, 0.1)
CASES = {
    "psf": (lambda p: save_psf_png(p, _gaussian_psf(1, 25), pixel_size=0.1),
            lambda: psf_figure(_gaussian_psf(1, 25), pixel_size=0.1)),
    "loss": (lambda p: save_loss_png(p, _records(3)), lambda: loss_figure(_records(3))),
    "views": (lambda p: save_views_png(p, VOLUMES, spacing=SPACING, title="t"),
              lambda: views_figure(VOLUMES, spacing=SPACING, title="t")),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_png_is_written_decodes_has_its_size_and_is_not_blank(tmp_path, kind):
    save, build = CASES[kind]
    path = save(tmp_path / f"{kind}.png")
    assert path == tmp_path / f"{kind}.png"
    image = mpimg.imread(path)
    width, height = build().get_size_inches() * 100
    assert image.shape[:2] == (round(height), round(width))
    if kind == "psf":
        assert image.shape[:2] == (360, 900)
    if kind == "loss":
        assert image.shape[:2] == (360, 600)
    rgb = image[..., :3]
    assert rgb.std() > 0.05
    colours = np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50
    assert list(tmp_path.iterdir()) == [path]  # no partial file left beside it


def _drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _overlapping_tick_labels(fig) -> list[tuple[str, str]]:
    """Pairs of visible tick labels of one axis of one Axes whose drawn boxes overlap."""
    renderer = _drawn(fig)
    bad = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for labels in (axis.get_ticklabels(), axis.get_ticklabels(minor=True)):
                shown = [t for t in labels if t.get_visible() and t.get_text()]
                boxes = [t.get_window_extent(renderer) for t in shown]
                lo, hi = (axis.get_view_interval().min(), axis.get_view_interval().max())
                inside = [(t, b) for t, b in zip(shown, boxes, strict=True)
                          if lo - 1e-9 <= (t.get_position()[0] if axis is ax.xaxis
                                           else t.get_position()[1]) <= hi + 1e-9]
                for (t1, b1), (t2, b2) in itertools.combinations(inside, 2):
                    if b1.overlaps(b2):
                        bad.append((t1.get_text(), t2.get_text()))
    return bad


@pytest.mark.parametrize("shape", [(1, 25), (2, 41), (3, 9), (15, 25), (25, 3), (31, 1)])
def test_psf_tick_labels_never_overlap(shape):
    assert _overlapping_tick_labels(psf_figure(_gaussian_psf(*shape), pixel_size=0.1)) == []


def test_views_and_loss_tick_labels_never_overlap():
    assert _overlapping_tick_labels(views_figure(VOLUMES, spacing=SPACING)) == []
    assert _overlapping_tick_labels(loss_figure(_records(600))) == []


def test_one_point_lateral_profile_is_visible_at_the_peak():
    """The old plot drew the lateral point under the axial marker at the same place."""
    psf = _gaussian_psf(1, 25)
    fig = psf_figure(psf, pixel_size=0.1)
    _drawn(fig)
    ax_prof = next(ax for ax in fig.axes if ax.get_xlabel().startswith("offset"))
    lateral = next(line for line in ax_prof.get_lines() if line.get_label().startswith("lateral"))
    assert len(lateral.get_xdata()) == 1
    assert "one point" in lateral.get_label()
    x, y = ax_prof.transData.transform((0.0, psf.max()))
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255
    row, col = pixels.shape[0] - round(y), round(x)
    window = pixels[row - 8 : row + 9, col - 8 : col + 9]
    colour = np.array(to_rgb(lateral.get_color()))
    assert (np.abs(window - colour).max(axis=-1) < 0.12).sum() >= 10


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_short_run_has_no_mean_of_one_and_shows_every_point(n):
    fig = loss_figure(_records(n))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "validation"]
    train = next(line for line in ax.get_lines() if line.get_label() == "train")
    assert train.get_marker() not in ("None", "", None)  # a single point is drawn
    ticks = ax.get_xticks()
    assert np.array_equal(ticks, np.arange(1, n + 1))  # whole steps only
    assert ax.get_xlabel() == "step"
    assert ax.get_ylabel() == "loss"


def test_a_long_run_shows_its_running_mean():
    ax = loss_figure(_records(200)).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["train (per step)", "train (mean of 4 steps)", "validation"]
    assert ax.get_yscale() == "log"  # 1/s over 200 steps spans more than two decades


def test_no_records_is_a_labelled_empty_plot(tmp_path):
    fig = loss_figure([])
    assert fig.axes[0].get_legend() is None
    assert any(t.get_text() == "no loss recorded" for t in fig.axes[0].texts)
    assert mpimg.imread(save_loss_png(tmp_path / "loss.png", [])).shape[:2] == (360, 600)


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_views_have_axes_in_micrometres_cut_lines_scale_bar_and_colour_bar():
    fig = views_figure(VOLUMES, spacing=SPACING)
    _drawn(fig)
    images = [ax for ax in fig.axes if ax.images]
    colour_bars = [ax for ax in fig.axes if not ax.images and ax.get_ylabel().startswith("int")]
    assert len(images) == 3 * len(VOLUMES)
    assert len(colour_bars) == 1
    lo, hi = np.percentile(VOLUMES["truth"], [0.1, 99.9])  # the first volume's range
    assert f"intensity, {lo:.3g} to {hi:.3g}" in colour_bars[0].get_ylabel()
    assert colour_bars[0].get_ylim() == pytest.approx((lo, hi))
    assert all(ax.images[0].get_clim() == pytest.approx((lo, hi)) for ax in images)
    labels = {ax.get_xlabel() for ax in images} | {ax.get_ylabel() for ax in images}
    assert labels >= {"x (µm) →", "y (µm) →", "z (µm) →"}
    texts = _texts(fig)
    assert not any(re.search(r"\bum\b", t) for t in texts)
    nz, ny, nx = VOLUMES["truth"].shape
    dz, dy, dx = SPACING
    cut = {"XY": nz // 2 * dz, "XZ": ny // 2 * dy, "YZ": nx // 2 * dx}
    for plane, position in cut.items():
        assert any(t.startswith(f"{plane} plane at ") and f"= {position:.4g} µm" in t
                   for t in texts), (plane, texts)
    # in each view, a line of each other plane's colour at that plane's position
    for ax in images:
        plane = next(t.get_text() for t in ax.texts if t.get_text() in PLANE_COLOURS)
        lines = {line.get_color(): line for line in ax.get_lines()}
        others = [p for p in PLANE_COLOURS if p != plane]
        assert sorted(lines) == sorted(PLANE_COLOURS[p] for p in others)
        for other in others:
            data = lines[PLANE_COLOURS[other]]
            xs, ys = np.asarray(data.get_xdata(), float), np.asarray(data.get_ydata(), float)
            position = xs[0] if xs[0] == xs[-1] else ys[0]
            assert position == pytest.approx(cut[other])
    scale_bars = [t for t in texts if t.endswith(" µm") and t[0].isdigit()]
    assert len(scale_bars) == len(VOLUMES)  # one on each XY view


def test_views_without_voxel_size_are_in_pixels_labelled_px():
    fig = views_figure({"v": _volume()})
    texts = _texts(fig)
    assert "x (px) →" in texts
    assert "z (px) →" in texts
    assert not any("µm" in t for t in texts)
    assert any(t.endswith(" px") and t[0].isdigit() for t in texts)  # the scale bar


@pytest.mark.parametrize(("volumes", "spacing"), [
    ({}, None),
    ({"flat": np.ones((4, 4))}, None),
    ({"empty": np.ones((0, 4, 4))}, None),
    ({"v": np.ones((4, 4, 4))}, (0.1, 0.1)),
    ({"v": np.ones((4, 4, 4))}, (0.0, 0.1, 0.1)),
])
def test_views_refuse_what_they_cannot_draw(volumes, spacing):
    with pytest.raises(IsojaxInputError, match="save_views_png needs"):
        views_figure(volumes, spacing=spacing)


def test_views_of_a_constant_or_partly_nan_volume_still_draw(tmp_path):
    v = np.full((4, 6, 6), 3.0)
    v[0, 0, 0] = np.nan
    image = mpimg.imread(save_views_png(tmp_path / "v.png", {"constant": v}))
    assert image[..., :3].std() > 0.05  # labels, frames and colour bar at least


def test_psf_text_is_in_micrometres_or_pixels():
    texts = _texts(psf_figure(_gaussian_psf(5, 25), pixel_size=0.1))
    assert "axial (µm)" in texts
    assert "lateral (µm)" in texts
    assert not any(re.search(r"\bum\b", t) for t in texts)
    assert any(t.endswith(" µm") and t[0].isdigit() for t in texts)  # the scale bar
    texts = _texts(psf_figure(_gaussian_psf(5, 25)))
    assert "axial (px)" in texts
    assert not any("µm" in t for t in texts)
    with pytest.raises(IsojaxInputError, match="finite 2D PSF"):
        psf_figure(np.ones((2, 2, 2)))


def test_shared_helpers():
    assert length_unit(0.1) == (0.1, "µm")
    assert length_unit(None) == (1.0, "px")
    assert axis_label("axial offset", "µm") == "axial offset (µm)"
    assert axis_label("z", "px", arrow=True) == "z (px) →"
    assert nice_length(6.4) == pytest.approx(1.0)
    assert nice_length(10.0) == pytest.approx(2.0)
    assert nice_length(2.5) == pytest.approx(0.5)
    assert nice_length(0.3) == pytest.approx(0.05)
    assert nice_length(64, unit="px") == 10
    assert nice_length(3, unit="px") == 1  # never a fraction of a pixel
