"""``isojax export``: a model folder as a BioImage Model Zoo package (model spec 0.5).

The package (one ``.zip``) holds

* ``weights.onnx``: the U-Net with its trained weights (:mod:`isojax.export.convert`);
* ``rdf.yaml``: the model description: the input ``(batch, channel, x, z)`` of a
  Z-upsampled slice, its percentile normalisation (``scale_range``), the outputs (the
  restoration, and the Laplace scale for a probabilistic model) with the halo of the
  network's reach, the sizes (the smallest valid tile and its step), the test tensors,
  the citations, the licence;
* ``test_input.npy`` and ``test_output_<name>.npy``: an XZ slice of a stack simulated with
  the model's own PSF and subsample factor, and what the network makes of it;
* ``cover.png``: orthogonal views of that stack before and after isojax's restoration;
* ``README.md``: how the network is applied for isotropic restoration, the PSF, the
  subsample factor and the training data (:mod:`isojax.export.docs`);
* ``isojax.json``: the model folder's ``config.json`` with an ``export`` section, and
  ``psf.tif``: what ``isojax predict --model NAME.bioimageio.zip`` needs to run the
  package like a model folder (:mod:`isojax.export.runner`).

Everything is written to a temporary file and renamed at the end: a failure leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from isojax import __version__
from isojax.errors import IsojaxInputError, log_to_stderr
from isojax.export import docs
from isojax.export.convert import load_network, network_function, require, to_onnx_file
from isojax.export.runner import PACKAGE_KIND
from isojax.io import atomic_write, check_outputs, read_tiff
from isojax.model_folder import channel_models, is_multichannel
from isojax.unet import UNetConfig

__all__ = ["PACKAGE_KIND", "export_model", "tile_sizes"]

#: The model spec version of ``rdf.yaml``.
FORMAT_VERSION = "0.5.4"
#: The ``eps`` of bioimage.io's ``scale_range`` (its default), in the denominator.
SCALE_RANGE_EPS = 1e-6
#: Side (pixels) of the test slice and of the cover's views, at least.
_TEST_SIDE = 96

Log = Callable[[str], None]


def tile_sizes(net: UNetConfig) -> tuple[int, int, int]:
    """The sizes of the package's spatial axes: ``(minimum, step, halo)`` in pixels.

    The step is the U-Net's ``2**depth``; the halo, cropped from each side of an output
    tile, is the network's reach (:attr:`~isojax.unet.UNetConfig.receptive_radius`); the
    smallest valid tile is the smallest multiple of the step that keeps at least one step
    after the halo is cropped from both sides.

    Args:
      net: the network's settings.

    Returns:
      ``(minimum, step, halo)`` in pixels.

    Example:
      >>> tile_sizes(UNetConfig())
      (92, 4, 43)
    """
    step, halo = net.divisor, net.receptive_radius
    return -(-(2 * halo + step) // step) * step, step, halo


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _package_name(name: str | None, model_dir: Path) -> str:
    text = name if name is not None else f"isojax isotropic restoration {model_dir.name}"
    text = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", text).strip()[:64]
    if len(text) < 5:
        raise IsojaxInputError(
            f"--name {name!r} gives the package name {text!r}; bioimage.io needs at least 5 "
            "letters, digits, spaces or _+-() characters")
    return text


def _simulated_stack(psf: np.ndarray, subsample: float, side: int, seed: int = 0) -> np.ndarray:
    """A stack as the model's microscope would record it: ``(n_z, side, side)``, raw units.

    An isotropic specimen (:func:`isojax.simulate.simulate_specimen`) blurred with the
    model's axial PSF in its XZ planes and sampled every ``subsample`` pixels along Z
    (:func:`isojax.forward.measure`), scaled to camera-like counts; enough slices that the
    Z-upsampled stack has at least ``side`` slices.
    """
    from isojax.forward import measure
    from isojax.simulate import simulate_specimen

    n_fine = side + math.ceil(subsample) + 1
    truth = simulate_specimen(jax.random.key(seed), (n_fine, side, side))
    stack = measure(truth, psf, subsample, axes=(2, 0))  # (n_z, y, x): x lateral, z axial
    return np.asarray(stack, np.float32) * np.float32(1000.0) + np.float32(100.0)


def _test_data(apply_fn, fn, meta: dict, psf: np.ndarray, side: int, work: Path, log: Log):
    """The cover and the test tensors: ``(test_input, test_outputs, stats)`` (see module)."""
    from isojax.plot import save_views_png
    from isojax.predict import predict_stack, upsample_z
    from isojax.predict.files import tile_overlap

    s, norm = float(meta["subsample"]), meta["normalization"]
    pmin, pmax = norm["pmin"], norm["pmax"]
    stack = _simulated_stack(psf, s, side)
    before = np.asarray(upsample_z(stack, s, interpolation=meta["interpolation"]))[:side]
    after = predict_stack(stack, apply_fn, subsample=s, interpolation=meta["interpolation"],
                          overlap=tile_overlap(meta), multiple=2 ** int(meta["unet"]["depth"]),
                          normalization=(pmin, pmax))[:side]
    dx = float(meta["psf"]["pixel_size"])
    save_views_png(work / "cover.png", {"input, Z upsampled (linear)": before,
                                        "isojax restoration": after},
                   spacing=(dx, dx, dx), title=f"subsample {s:.4g}, pixel {dx:.4g} um")
    test_input = np.ascontiguousarray(before[:, side // 2, :].T)[None, None]  # (1, 1, x, z)
    lo, hi = np.percentile(test_input, [pmin, pmax])
    normalised = (test_input - lo) / (hi - lo + SCALE_RANGE_EPS)
    outputs = [np.asarray(o, np.float32) for o in fn(normalised.astype(np.float32))]
    log(f"test slice {test_input.shape[2:]} px (x, z); cover of a simulated "
        f"{stack.shape} stack")
    return test_input.astype(np.float32), outputs


def _exact_scale(dx: float) -> float:
    """``dx`` rounded to a multiple of ``2**-20`` (under 1e-6 of a micrometre away).

    bioimage.io's tools compute an output size as ``size * scale / scale`` rounded down, and
    the input halo as ``halo * scale / scale``, which must be an integer: ``92 * 0.1 / 0.1``
    is ``91.99999999999999``. With a dyadic scale those products are exact.
    """
    return round(float(dx) * 2**20) / 2**20


def _axes(kind: str, size, dx: float, halo: int | None = None) -> list[dict]:
    """The four axes of an input (``size`` a parameterised size) or an output tensor."""
    def space(name: str, what: str) -> dict:
        axis = {"type": "space", "id": name, "unit": "micrometer", "scale": dx,
                "description": what}
        if kind == "input":
            axis["size"] = size
        else:
            axis["size"] = {"tensor_id": "input", "axis_id": name}
            axis["halo"] = halo
        return axis

    return [
        {"type": "batch"},
        {"type": "channel", "channel_names": ["intensity"]},
        space("x", "lateral: x of an XZ slice or y of a YZ slice"),
        space("z", "axial, Z-upsampled to the lateral pixel size"),
    ]


def _rdf(*, name, authors, license_id, meta, net, files, outputs, output_ranges) -> dict:
    """The model description (``rdf.yaml``) as a dict; ``files`` maps roles to file names."""
    minimum, step, halo = tile_sizes(net)
    dx = _exact_scale(float(meta["psf"]["pixel_size"]))
    norm = meta["normalization"]
    described = {
        "mean": "the restoration, normalised: times (p_max - p_min) plus p_min of the input "
                "gives its units",
        "scale": "the Laplace scale b (mean absolute error) of the restoration, normalised",
    }
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": name,
        "description": (
            f"Isotropic restoration (Isotropic CARE) of anisotropic 3D stacks with subsample "
            f"factor {float(meta['subsample']):.4g}, applied to the Z-upsampled XZ and YZ "
            "slices; trained with isojax's differentiable forward operator."),
        "authors": [{"name": a} for a in authors],
        "cite": docs.citations(),
        "license": license_id,
        "tags": ["isotropic-reconstruction", "care", "restoration", "denoising", "deblurring",
                 "fluorescence-light-microscopy", "3d", "unet", "onnx", "isojax"],
        "documentation": files["documentation"],
        "covers": [files["cover"]],
        "attachments": [{"source": files[k], "sha256": files[k + "_sha256"]}
                        for k in ("isojax", "psf")],
        "inputs": [{
            "id": "input",
            "description": "one Z-upsampled slice (lateral, axial) of the stack, raw units",
            "axes": _axes("input", {"min": minimum, "step": step}, dx),
            "test_tensor": {"source": files["test_input"], "sha256": files["test_input_sha256"]},
            "data": {"type": "float32"},
            "preprocessing": [
                {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                {"id": "scale_range", "kwargs": {
                    "min_percentile": float(norm["pmin"]), "max_percentile": float(norm["pmax"]),
                    "eps": SCALE_RANGE_EPS}},
            ],
        }],
        "outputs": [{
            "id": o,
            "description": described[o],
            "axes": _axes("output", None, dx, halo),
            "test_tensor": {"source": files[f"test_{o}"], "sha256": files[f"test_{o}_sha256"]},
            "data": {"type": "float32"},
            "postprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
        } for o in outputs],
        "weights": {"onnx": {
            "source": files["weights"], "sha256": files["weights_sha256"],
            "opset_version": files["opset"],
        }},
        "config": {
            "bioimageio": {"reproducibility_tolerance": [{
                "output_ids": [o], "weights_formats": ["onnx"], "relative_tolerance": 0.0,
                "absolute_tolerance": float(1e-4 * output_ranges[o]),
                "mismatched_elements_per_million": 0,
            } for o in outputs]},
            "isojax": {"kind": PACKAGE_KIND, "version": __version__,
                       "subsample": float(meta["subsample"]),
                       "interpolation": meta["interpolation"],
                       "percentiles": [float(norm["pmin"]), float(norm["pmax"])],
                       "config": files["isojax"]},
        },
    }


def _write_package(zip_path: Path, work: Path) -> None:
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(work.iterdir()):
            z.write(f, f.name)


def export_model(
    model_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    which: str = "best",
    name: str | None = None,
    authors: Sequence[str] = (),
    license_id: str = "CC-BY-4.0",
    overwrite: bool = False,
    log: Log = log_to_stderr,
) -> Path:
    """Write a model folder as a bioimage.io model package (spec 0.5, ONNX weights).

    Args:
      model_dir: the model folder written by ``isojax train``.
      output: the ``.zip`` to write (by convention ``NAME.bioimageio.zip``).
      which: the checkpoint, ``"best"`` or ``"last"``.
      name: the package's name (default from the folder's name).
      authors: the names of the model's authors.
      license_id: the SPDX identifier of the weights' licence.
      overwrite: replace an existing ``output``.
      log: where progress lines go.

    Returns:
      The written package.

    Raises:
      IsojaxInputError: the output may not be written, the model folder is incomplete or
        damaged, or the ``export`` extra (jax2onnx, onnx) is not installed; nothing is
        written then.
    """
    model_dir, output = Path(model_dir), Path(output)
    if is_multichannel(model_dir):  # one network per channel; a package holds one network
        raise IsojaxInputError(f"{model_dir} holds one model per channel: export one channel's "
                               f"folder, e.g. {channel_models(model_dir)[0][1]}")
    check_outputs([output], inputs={"model folder": model_dir}, overwrite=overwrite, log=log)
    if output.suffix.lower() != ".zip":
        raise IsojaxInputError(f"{output}: a bioimage.io package is a .zip; name it "
                               f"{output.name}.bioimageio.zip or NAME.bioimageio.zip")
    require("jax2onnx", "isojax export")
    require("onnx", "isojax export")
    apply_fn, net, params, meta = load_network(model_dir, which=which)
    if net.in_channels != 1 or net.out_channels != 1:
        raise IsojaxInputError(f"{model_dir}: the export handles one-channel models; this one "
                               f"has {net.in_channels} in and {net.out_channels} out")
    package_name = _package_name(name, model_dir)
    psf, _, _ = read_tiff(model_dir / "psf.tif")
    psf = np.asarray(psf, np.float32)
    minimum, step, _ = tile_sizes(net)
    side = minimum + -(-max(0, _TEST_SIDE - minimum) // step) * step
    with tempfile.TemporaryDirectory(prefix="isojax-export-") as tmp:
        work = Path(tmp)
        outputs = to_onnx_file(net, params, work / "weights.onnx")
        fn = network_function(net, params)
        test_input, test_outputs = _test_data(apply_fn, fn, meta, psf, side, work, log)
        np.save(work / "test_input.npy", test_input)
        for o, value in zip(outputs, test_outputs, strict=True):
            np.save(work / f"test_output_{o}.npy", value)
        shutil.copyfile(model_dir / "psf.tif", work / "psf.tif")
        export_info = {"kind": PACKAGE_KIND, "isojax_version": __version__,
                       "model_folder": model_dir.name, "checkpoint": which,
                       "weights": "weights.onnx", "input": "input", "outputs": outputs}
        (work / "isojax.json").write_text(json.dumps({**meta, "export": export_info}, indent=2))
        (work / "README.md").write_text(docs.documentation(meta, net=net, tiles=tile_sizes(net), outputs=outputs, psf=psf))
        files: dict[str, Any] = {"documentation": "README.md", "cover": "cover.png", "isojax": "isojax.json",
                 "psf": "psf.tif", "test_input": "test_input.npy", "weights": "weights.onnx",
                 "opset": int(_opset(work / "weights.onnx"))}
        files.update({f"test_{o}": f"test_output_{o}.npy" for o in outputs})
        for key in [k for k in files if k != "opset"]:
            files[key + "_sha256"] = _sha256(work / files[key])
        ranges = {o: float(np.ptp(v)) or 1.0 for o, v in zip(outputs, test_outputs, strict=True)}
        rdf = _rdf(name=package_name, authors=list(authors), license_id=license_id, meta=meta,
                   net=net, files=files, outputs=outputs, output_ranges=ranges)
        (work / "rdf.yaml").write_text(_yaml(rdf))
        atomic_write(output, lambda temp: _write_package(temp, work), overwrite=overwrite)
    log(f"wrote {output}: bioimage.io model package (ONNX, outputs {', '.join(outputs)})")
    return output


def _yaml(content: dict) -> str:
    """``content`` as YAML, without anchors and aliases (each size written out)."""
    yaml: Any = require("yaml", "isojax export")  # a module object: Any for the type checker

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    return yaml.dump(content, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def _opset(path: Path) -> int:
    onnx = require("onnx", "isojax export")
    model = onnx.load(str(path))
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
