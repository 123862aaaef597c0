"""A model folder's ``config.json`` and ``psf.tif``: writing, reading and the schema check.

A model folder (:func:`isojax.train.train`) is read long after it was written, often by
another isojax, and it can be damaged on the way (a full disk, a copy cut short, a hand
edit). These checks turn what would be a ``KeyError`` into one line that names the file,
the isojax version that wrote the folder, and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile

from isojax import __version__
from isojax.errors import IsojaxInputError
from isojax.model_folder.channels import channel_models, describe_channels, is_multichannel
from isojax.synth import SynthConfig
from isojax.train.config import TrainConfig
from isojax.unet import UNetConfig

__all__ = [
    "FORMAT", "check_config", "check_psf_file", "json_default", "read_model_config",
    "write_json", "write_model_config",
]

FORMAT = 1  # version of the model-folder layout; bump when it changes incompatibly

# Keys that format 1 gained after it first shipped: a folder written before lacks them, and
# their absence means the default. Every other key of the schema is required.
_ADDED_LATER = frozenset({"calibrate_psf", "train.compute_dtype", "unet.arch"})

_DAMAGED = "the folder is damaged: retrain with `isojax train`, or restore config.json from a copy"


def _version(meta: dict) -> str:
    v = meta.get("isojax_version")
    return f"isojax {v}" if isinstance(v, str) else "an unknown isojax version"


# ------------------------------------------------------------------------------ the schema
# Each check takes the value and returns None when it is fine, or what is expected.


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _number(*, lo: float | None = None, hi: float | None = None, positive: bool = False,
            optional: bool = False):
    def check(v):
        if v is None and optional:
            return None
        ok = _is_number(v) and (not positive or v > 0)
        ok = ok and (lo is None or v >= lo) and (hi is None or v <= hi)
        if ok:
            return None
        what = "a positive number" if positive else "a number"
        if lo is not None and hi is not None:
            what = f"a number in [{lo:g}, {hi:g}]"
        return what + (" or null" if optional else "")

    return check


def _list(n: int, *, minimum: int | None = None, positive: bool = False, optional: bool = False):
    def check(v):
        if v is None and optional:
            return None
        if isinstance(v, list) and len(v) == n:
            if minimum is not None and all(_is_int(x) and x >= minimum for x in v):
                return None
            if minimum is None and all(_is_number(x) and (not positive or x > 0) for x in v):
                return None
        if minimum is not None:
            what = f"a list of {n} whole numbers >= {minimum}"
        else:
            what = f"a list of {n} {'positive ' if positive else ''}numbers"
        return what + (" or null" if optional else "")

    return check


def _of_type(t: type, what: str):
    return lambda v: None if isinstance(v, t) else what


def _choice(*values):
    return lambda v: None if v in values else "one of " + ", ".join(map(repr, values))


def _hint_check(hint):
    """The check for a dataclass field's type hint (int, float, bool, str, Literal, X | None)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return _choice(*args)
    if hint is bool:
        return _of_type(bool, "true or false")
    if hint is int:
        return lambda v: None if _is_int(v) else "a whole number"
    if hint is float:
        return _number()
    if hint is str:
        return _of_type(str, "a string")
    if type(None) in args and len(args) == 2:
        inner = _hint_check(next(a for a in args if a is not type(None)))
        return lambda v: None if v is None else (None if inner(v) is None else f"{inner(v)} or null")
    return lambda v: None


_SECTIONS: dict[str, type] = {"unet": UNetConfig, "train": TrainConfig, "synth": SynthConfig}


_FIELDS: dict[str, Any] = {
    "isojax_version": _of_type(str, "a string"),
    "subsample": _number(positive=True),
    "interpolation": _choice("linear", "cubic"),
    "normalization": {
        "pmin": _number(lo=0, hi=100),
        "pmax": _number(lo=0, hi=100),
        "lo": _number(),
        "hi": _number(),
    },
    "spacing": _list(3, positive=True, optional=True),
    "psf": {
        "file": _of_type(str, "a string"),
        "pixel_size": _number(positive=True, optional=True),
        "shape": _list(2, minimum=1),
    },
    "calibrate_psf": _of_type(bool, "true or false"),
    "stack_shape": _list(3, minimum=1),
    "train_planes": _list(2, minimum=0),
    "val_planes": _list(2, minimum=0),
}


def check_config(meta: Any, *, path: str | os.PathLike) -> None:
    """Check a parsed ``config.json`` against the model folder's schema (format 1).

    Every key is required (except those format 1 gained later, whose absence means the
    default), has its type and range, and the ``unet``, ``train`` and ``synth`` sections
    build their dataclasses (:class:`~isojax.unet.UNetConfig`,
    :class:`~isojax.train.TrainConfig`, :class:`~isojax.synth.SynthConfig`). Keys the
    schema does not know are allowed at the top level, not in those sections.

    Args:
      meta: the parsed JSON (its ``format`` already checked).
      path: the file it came from, for the messages.

    Raises:
      IsojaxInputError: the first problem found, naming the file, the key and the isojax
        version that wrote the folder, and what to do.
    """
    where = f"{path}:"
    version = _version(meta)

    def fail(problem: str, fix: str = _DAMAGED):
        raise IsojaxInputError(f"{where} {problem} (written by {version}); {fix}.")

    def walk(schema: dict, values: dict, prefix: str):
        for key, check in schema.items():
            name = prefix + key
            if key not in values:
                if name in _ADDED_LATER:
                    continue
                fail(f'missing key "{name}"')
            value = values[key]
            if isinstance(check, dict):
                if not isinstance(value, dict):
                    fail(f'key "{name}" is {json.dumps(value)}, where an object is needed')
                walk(check, value, name + ".")
                continue
            expected = check(value)
            if expected is not None:
                fail(f'key "{name}" is {json.dumps(value)}, where {expected} is needed')

    for section, cls in _SECTIONS.items():
        values = meta.get(section)
        if section not in meta:
            fail(f'missing key "{section}"')
        if not isinstance(values, dict):
            fail(f'key "{section}" is {json.dumps(values)}, where an object is needed')
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            newer = meta.get("isojax_version") != __version__
            fail(f'unknown key "{section}.{unknown[0]}"',
                 f"a newer isojax than this {__version__} may have written it: predict with "
                 "that version, or retrain with this one" if newer else _DAMAGED)
        hints = typing.get_type_hints(cls)
        schema = {name: _hint_check(hints[name]) for name in fields}
        walk(schema, values, section + ".")
        try:
            cls(**values)
        except (TypeError, ValueError) as exc:
            fail(f'key "{section}": {" ".join(str(exc).split()).rstrip(".")}')
    walk(_FIELDS, meta, "")
    norm = meta["normalization"]
    if not norm["pmin"] < norm["pmax"]:
        fail(f'keys "normalization.pmin" and "normalization.pmax" are {norm["pmin"]} and '
             f'{norm["pmax"]}, where pmin < pmax is needed')
    synth = meta["synth"]
    if not math.isclose(meta["subsample"], synth["subsample"], rel_tol=1e-9):
        fail(f'key "subsample" is {meta["subsample"]} but "synth.subsample" is '
             f'{synth["subsample"]}; they must agree')
    if meta["interpolation"] != synth["interpolation"]:
        fail(f'key "interpolation" is {json.dumps(meta["interpolation"])} but '
             f'"synth.interpolation" is {json.dumps(synth["interpolation"])}; they must agree')


def check_psf_file(path: Path, meta: dict) -> None:
    """Check that the model folder's ``psf.tif`` reads as the 2D PSF ``config.json`` describes.

    Args:
      path: the ``psf.tif`` file.
      meta: the folder's checked ``config.json``.

    Raises:
      IsojaxInputError: the file is unreadable, not a finite 2D array, or not the shape
        ``config.json`` records.
    """
    fix = (f"(written by {_version(meta)}); the folder is damaged: retrain with `isojax train`, "
           "or restore psf.tif from a copy")
    try:
        psf = tifffile.imread(path)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise IsojaxInputError(f"{path}: unreadable ({reason}) {fix}.") from exc
    expected = list(meta["psf"]["shape"])
    if list(psf.shape) != expected:
        raise IsojaxInputError(
            f"{path}: holds an array of shape {list(psf.shape)} where config.json records "
            f"{expected} {fix}."
        )
    if not np.all(np.isfinite(psf)):
        raise IsojaxInputError(f"{path}: holds NaN or inf values {fix}.")


def json_default(o):
    """``json.dumps``'s ``default``: numpy scalars as Python numbers.

    Args:
      o: a value ``json`` cannot write by itself.

    Returns:
      The Python number of a numpy scalar.

    Raises:
      TypeError: anything else that JSON cannot hold.
    """
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: Path, value) -> None:
    """Write ``value`` as indented JSON, atomically (a temporary file renamed over ``path``).

    Args:
      path: the file (``config.json``, ``psf_trajectory.json``); its folder must exist.
      value: JSON-serialisable, numpy scalars allowed (:func:`json_default`).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=json_default) + "\n")
    os.replace(tmp, path)


def write_model_config(workdir: Path, meta: dict) -> None:
    """Write ``config.json`` atomically.

    Args:
      workdir: the model folder (it must exist).
      meta: the settings (:func:`isojax.train.train` builds them).
    """
    write_json(Path(workdir) / "config.json", meta)


def read_model_config(workdir: str | os.PathLike) -> dict:
    """Read and check a model folder's ``config.json`` (and its ``psf.tif``).

    ``config.json`` is checked against the folder's schema
    (:func:`check_config`): required keys, types and ranges, and the
    network, training and synthesis sections must build their settings.

    Args:
      workdir: the model folder.

    Returns:
      The configuration as a dict.

    Raises:
      IsojaxInputError: missing folder or files, a damaged ``config.json`` or ``psf.tif``,
        a multi-channel folder (:mod:`~isojax.model_folder.channels`: give one channel's
        subfolder), or a folder written by an incompatible isojax; the message names the file, the key
        and the isojax version that wrote the folder, and says what to do.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise IsojaxInputError(f"{workdir}: no such model folder; train one with `isojax train`.")
    if is_multichannel(workdir) and not (workdir / "config.json").exists():
        first = channel_models(workdir)[0][1]
        raise IsojaxInputError(
            f"{workdir} holds one model per channel ({describe_channels(workdir)}); give one "
            f"channel's folder here, e.g. {first} (`isojax predict` of a stack with channels "
            "takes the whole folder)")
    missing = [n for n in ("config.json", "psf.tif", "checkpoints") if not (workdir / n).exists()]
    if missing:
        raise IsojaxInputError(
            f"{workdir}: not a complete isojax model folder, missing {', '.join(missing)}; "
            "train it again with `isojax train`."
        )
    path = workdir / "config.json"
    damaged = "the folder is damaged: retrain with `isojax train`, or restore config.json from a copy"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # also json.JSONDecodeError, UnicodeDecodeError
        raise IsojaxInputError(f"{path}: unreadable ({e}); {damaged}.") from e
    if not isinstance(meta, dict):
        raise IsojaxInputError(
            f"{path}: holds a JSON {type(meta).__name__}, not an object; {damaged}."
        )
    if "format" not in meta:
        raise IsojaxInputError(
            f'{path}: missing key "format" (written by isojax '
            f"{meta.get('isojax_version', '?')}); {damaged}."
        )
    if meta.get("format") != FORMAT:
        raise IsojaxInputError(
            f"{workdir}: model folder format {meta.get('format')!r} written by isojax "
            f"{meta.get('isojax_version', '?')}; this isojax reads format {FORMAT}. Retrain "
            "the model with this version, or predict with the version that wrote it."
        )
    check_config(meta, path=path)
    check_psf_file(workdir / "psf.tif", meta)
    # folders from before the named networks hold CARE's (UNetConfig's defaults)
    meta["unet"].setdefault("arch", "care")
    return meta
