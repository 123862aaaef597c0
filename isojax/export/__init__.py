"""BioImage Model Zoo packages: ``isojax export`` writes one, ``isojax predict`` runs one.

- :func:`export_model`: a model folder as a bioimage.io model package (spec 0.5) with ONNX
  weights converted by ``jax2onnx`` (:mod:`isojax.export.package`);
- :func:`load_package`: such a package as ``(apply_fn, meta)`` for prediction, the network
  run by onnxruntime (:mod:`isojax.export.runner`).

The optional packages (``jax2onnx``, ``onnx``, ``onnxruntime``: the ``export`` extra) are
imported only inside the functions that need them; a missing one gives a one-line error
naming the extra. The names below are loaded on first use, so that the command line's
``isojax.export.command`` stays light.
"""

import importlib

__all__ = ["PACKAGE_KIND", "export_model", "is_package", "load_package", "tile_sizes"]

_HOMES = {"export_model": "package", "tile_sizes": "package", "PACKAGE_KIND": "runner",
          "is_package": "runner", "load_package": "runner"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"isojax.export.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'isojax.export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
