"""Run a package that ``isojax export`` wrote: ``isojax predict STACK --model NAME.bioimageio.zip``.

:func:`load_package` gives what :func:`isojax.train.load_model` gives for a model folder, an
``apply_fn`` and the model's ``config.json``, so that the prediction (Z upsampling, XZ and
YZ slices, fusion, normalisation) is the same code; the network runs in onnxruntime, no
JAX weights needed. onnxruntime is imported here, only when a package is run.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from isojax.errors import IsojaxInputError
from isojax.export.convert import require

__all__ = ["PACKAGE_KIND", "is_package", "load_package"]

#: ``isojax.json["export"]["kind"]`` of a package that ``isojax predict`` can run (the one
#: ``isojax export`` writes: :data:`isojax.export.package.PACKAGE_KIND`).
PACKAGE_KIND = "isojax-isotropic-restoration"


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``--model`` names a package file (a ``.zip``) rather than a model folder.

    Args:
      path: the ``--model`` value.

    Returns:
      True for a ``.zip`` path that is not a directory.
    """
    return Path(path).suffix.lower() == ".zip" and not Path(path).is_dir()


def _read(path: Path) -> tuple[dict, bytes]:
    """``(meta, onnx bytes)`` of a package, checked to be an isojax isotropic model."""
    not_ours = (f"{path}: not an isojax isotropic restoration package (written by `isojax "
                "export`)")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "rdf.yaml" not in names:
                raise IsojaxInputError(f"{not_ours}: it has no rdf.yaml, so it is no "
                                       "bioimage.io package either")
            if "isojax.json" not in names:
                raise IsojaxInputError(f"{not_ours}: it has no isojax.json; only packages "
                                       "exported by isojax can be run by isojax predict")
            meta = json.loads(z.read("isojax.json"))
            info = meta.get("export") if isinstance(meta, dict) else None
            if not isinstance(info, dict) or info.get("kind") != PACKAGE_KIND:
                raise IsojaxInputError(f"{not_ours}: its isojax.json is not an export's")
            weights = info.get("weights")
            if weights not in names:
                raise IsojaxInputError(f"{path}: the package lacks its weights {weights!r}; "
                                       "export the model again")
            return meta, z.read(weights)
    except FileNotFoundError:
        raise IsojaxInputError(f"{path}: no such package") from None
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IsojaxInputError(f"{path}: not a readable package ({exc}); export the model "
                               "again") from None


def load_package(path: str | os.PathLike, *, which: str = "best"):
    """Load an exported package for prediction.

    Args:
      path: the ``.bioimageio.zip`` written by :func:`isojax.export.export_model`.
      which: must be ``"best"`` (the default): a package holds the one network it was
        exported with (its ``isojax.json`` names that checkpoint).

    Returns:
      ``(apply_fn, meta)`` as :func:`isojax.train.load_model`: ``apply_fn(batch)`` maps
      ``(b, h, w)`` float32 images (last axis axial, normalised) to the restoration of the
      same shape (onnxruntime through :func:`jax.pure_callback`, so it also runs under
      :func:`jax.jit`); ``meta`` is the model folder's ``config.json``.

    Raises:
      IsojaxInputError: the file is missing, is not a package exported by isojax, its
        ``isojax.json`` is damaged, ``which`` is ``"last"``, or onnxruntime is missing.
    """
    from isojax.model_folder import check_config

    path = Path(path)
    meta, weights = _read(path)
    if which != "best":
        raise IsojaxInputError(
            f"--checkpoint {which}: {path} is a package that holds the one network it was "
            f"exported with (the {meta['export'].get('checkpoint')!r} checkpoint); leave "
            "--checkpoint out")
    check_config(meta, path=path / "isojax.json")
    ort = require("onnxruntime", "isojax predict with a .bioimageio.zip package")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(weights, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own error types for a bad graph
        raise IsojaxInputError(f"{path}: onnxruntime cannot load its weights "
                               f"({' '.join(str(exc).split())[:200]}); export the model "
                               "again") from None
    name_in = meta["export"].get("input", "input")

    def run(batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(batch, np.float32)[:, None])
        return session.run(["mean"], {name_in: x})[0][:, 0]

    def apply_fn(batch):
        shape = jax.ShapeDtypeStruct(batch.shape, jnp.float32)
        return jax.pure_callback(run, shape, batch, vmap_method="sequential")

    return apply_fn, meta
