"""The reader of isojax model folders: the PSF and the training loss plot as layers."""

from __future__ import annotations

from pathlib import Path

__all__ = ["get_reader", "read_model_folder"]


def _is_model_folder(path) -> bool:
    if not isinstance(path, str | Path):
        return False
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and (p / "psf.tif").is_file()


def get_reader(path):
    """napari's reader hook: :func:`read_model_folder` for a model folder, else None."""
    if isinstance(path, list) and len(path) == 1:
        path = path[0]
    return read_model_folder if _is_model_folder(path) else None


def read_model_folder(path) -> list[tuple]:
    """A model folder as layers: ``psf.tif`` at its pixel size and the loss plot (RGB).

    Args:
      path: a folder written by ``isojax train`` (or a one-item list of it).

    Returns:
      napari layer data tuples ``(data, kwargs, "image")``.

    Raises:
      IsojaxInputError: a damaged ``config.json`` or ``psf.tif``.
    """
    from isojax.io import read_tiff
    from isojax.model_folder import read_metrics, read_model_config
    from isojax.plot import loss_figure
    from napari_isojax._figures import figure_rgba
    from napari_isojax._psf_widget import PSF_KEY

    if isinstance(path, list):
        path = path[0]
    folder = Path(path)
    meta = read_model_config(folder)
    psf, _, _ = read_tiff(folder / "psf.tif")
    px = (meta.get("psf") or {}).get("pixel_size") or 1.0
    name = folder.name
    from isojax.psf import AxialPSF

    axial = AxialPSF.checked(psf, pixel_size=(meta.get("psf") or {}).get("pixel_size"),
                             provenance=f"model folder {folder}")
    layers = [(axial.dense(), {"name": f"{name} PSF", "scale": (px, px), "colormap": "magma",
                               "metadata": {PSF_KEY: axial, "model_folder": str(folder)}},
               "image")]
    records = read_metrics(folder / "metrics.jsonl")
    rgba = figure_rgba(loss_figure(records))
    layers.append((rgba, {"name": f"{name} loss", "rgb": True,
                          "metadata": {"model_folder": str(folder)}}, "image"))
    return layers
