"""Checks of a model folder: ``config.json`` against its schema, ``psf.tif``, damaged checkpoints.

A model folder (:mod:`isojax.train`) is read long after it was written, often by another
isojax, and it can be damaged on the way (a full disk, a copy cut short, a hand edit). These
checks turn what would be a ``KeyError`` or a storage library's traceback into one line that
names the file, the isojax version that wrote the folder, and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from isojax.errors import IsojaxInputError

__all__ = [
    "check_config", "check_psf_file", "damaged_step", "describe_damage", "quiet_abandoned_reads",
]

# Keys that format 1 gained after it first shipped: a folder written before lacks them, and
# their absence means the default. Every other key of the schema is required.
_ADDED_LATER = frozenset({"calibrate_psf", "train.compute_dtype"})

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


def _sections() -> dict[str, type]:
    from isojax.synth import SynthConfig
    from isojax.train import TrainConfig
    from isojax.unet import UNetConfig

    return {"unet": UNetConfig, "train": TrainConfig, "synth": SynthConfig}


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

    from isojax import __version__

    for section, cls in _sections().items():
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
    import numpy as np
    import tifffile

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


# ---------------------------------------------------------------------- damaged checkpoints

# tensorstore's status codes, as a reader would say them
_STATUS = {
    "NOT_FOUND": "missing",
    "OUT_OF_RANGE": "truncated",
    "DATA_LOSS": "corrupt",
    "FAILED_PRECONDITION": "unreadable",
}
# the JSON files orbax writes in a step folder (StandardCheckpointHandler with metrics)
_JSON_FILES = ("_CHECKPOINT_METADATA", "default/_METADATA", "default/_sharding",
               "default/array_metadatas/*", "metrics/metrics")


def _bad_json(step_dir: Path) -> tuple[Path, str] | None:
    for pattern in _JSON_FILES:
        for path in sorted(step_dir.glob(pattern)):
            try:
                json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                return path, f"not valid JSON ({exc})"
    return None


def describe_damage(step_dir: Path, exc: BaseException | None) -> str:
    """Which file of a checkpoint step folder is damaged, and how, in a few words.

    Args:
      step_dir: the step folder (``.../checkpoints/best/<step>``).
      exc: what reading it raised (orbax, tensorstore or ``json``), or None when the
        reading gave nothing back.

    Returns:
      ``"<file> is <how>"``, or a shortened reason when the file cannot be known.
    """
    texts = []
    e = exc
    while e is not None and len(texts) < 4:
        texts.append(str(e))
        e = e.__cause__ or e.__context__
    for text in texts:
        text = text.split(" [tensorstore_spec=")[0]
        files = [f for f in re.findall(r'local file "([^"]+)"', text)
                 if Path(f).is_relative_to(step_dir)]
        if files:
            code = text.split(":", 1)[0]
            tail = text.rsplit(f'"{files[-1]}"', 1)[-1].lstrip(": ").strip()
            how = _STATUS.get(code, "unreadable")
            if tail and how != "missing":
                how += f" ({tail})"
            if files[-1].endswith("/"):  # the OCDBT database: one of its data files
                return f"a data file of the checkpoint database {files[-1]} is {how}"
            return f"{files[-1]} is {how}"
    bad = _bad_json(step_dir)
    if bad is not None:
        return f"{bad[0]} is {bad[1]}"
    for needed in ("default", "default/_METADATA", "default/manifest.ocdbt"):
        if not (step_dir / needed).exists():
            return f"{step_dir / needed} is missing"
    if exc is None:
        return f"{step_dir / 'default' / '_METADATA'} describes no arrays"
    reason = " ".join(texts[0].split(" [tensorstore_spec=")[0].split())
    return f"unreadable ({reason[:300]})"


def damaged_step(root: Path) -> Path:
    """The first step folder under a checkpoint folder whose JSON files do not parse.

    Args:
      root: ``.../checkpoints/best`` or ``.../checkpoints/last``.

    Returns:
      That step folder, or ``root`` itself when none is found.
    """
    steps = sorted((p for p in Path(root).iterdir() if p.is_dir() and p.name.isdigit()),
                   key=lambda p: int(p.name)) if Path(root).is_dir() else []
    for step_dir in steps:
        if _bad_json(step_dir) is not None:
            return step_dir
    return Path(root)


_quiet: set[str] = set()  # the damaged step folders whose abandoned reads are silenced


def _abandoned_read(unraisable) -> bool:
    """Whether an unraisable exception is an abandoned read of orbax's reporting back."""
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True  # tensorstore finishing a read for the event loop orbax has closed
    return isinstance(obj, types.CoroutineType) and "orbax" in obj.cr_code.co_filename


class _AbandonedFutures(logging.Filter):
    """Drops asyncio's "exception was never retrieved" about a damaged checkpoint's reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("exception was never retrieved" in text
                    and any(step in text for step in _quiet))


def quiet_abandoned_reads(step_dir: Path) -> None:
    """Silence the reads orbax abandons when one read of a damaged checkpoint fails.

    orbax reads a checkpoint's arrays concurrently in an event loop that it closes as
    soon as one read fails; the other reads, still running in tensorstore's threads, then
    report to that closed loop (``RuntimeError("Event loop is closed")``), their coroutines
    are dropped unfinished, and asyncio logs their failures as "Future exception was never
    retrieved": tracebacks on stderr, up to seconds after the one-line error. This drops
    exactly those reports (asyncio's only when they name ``step_dir``) and hands every
    other one to the previous handlers.

    Args:
      step_dir: the damaged checkpoint step folder.
    """
    if not _quiet:
        previous = sys.unraisablehook

        def hook(unraisable):
            if not _abandoned_read(unraisable):
                previous(unraisable)

        sys.unraisablehook = hook
        logging.getLogger("asyncio").addFilter(_AbandonedFutures())
    _quiet.add(str(step_dir))
