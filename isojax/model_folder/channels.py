"""Multi-channel model folders: one complete single-channel model folder per channel.

``isojax train`` of a stack with channels (a hyperstack, :mod:`isojax.train.series`) trains
one network per channel, each with its own PSF, noise and normalisation, and writes::

    MODEL/channels.json   {"format": "isojax-channels", "version": 1, "design": "per-channel",
                           "channels": [{"index": 0, "name": "GFP", "folder": "c0"}, ...],
                           "axes": "TZCYX", "timepoints": [0, 4, 9], ...}
    MODEL/c0/             a model folder as a 3D training writes it (config.json, psf.tif,
    MODEL/c1/             checkpoints, metrics, pictures)

``index`` is the channel's index in the training file; prediction restores input channel
``index`` with the folder's model. :func:`channel_models` lists the models of any model
folder (``((None, MODEL),)`` for a single-channel one), so that prediction, ``isojax psf
check`` and the export read both layouts the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from isojax.errors import IsojaxInputError

__all__ = ["CHANNELS_FILE", "channel_models", "describe_channels", "is_multichannel",
           "read_channels_file", "write_channels_file"]

#: The file that makes a folder a multi-channel model folder.
CHANNELS_FILE = "channels.json"
_FORMAT = "isojax-channels"
_VERSION = 1
_DAMAGED = "retrain with `isojax train`, or restore it from a copy"


def is_multichannel(model_dir: str | os.PathLike) -> bool:
    """Whether ``model_dir`` is a multi-channel model folder (it holds ``channels.json``).

    Args:
      model_dir: a model folder (or anything else: a file, a missing path).

    Returns:
      True when ``model_dir/channels.json`` exists.
    """
    return (Path(model_dir) / CHANNELS_FILE).is_file()


def read_channels_file(model_dir: str | os.PathLike) -> dict:
    """Read and check ``model_dir/channels.json``.

    Args:
      model_dir: a multi-channel model folder.

    Returns:
      The record: ``format``, ``version``, ``design``, ``channels`` (each ``index``, ``name``,
      ``folder``), and what the training recorded (``axes``, ``timepoints``, ...).

    Raises:
      IsojaxInputError: the file is missing, unreadable, of another format or version, or
        its channel list is malformed (the message names the file and the fix).
    """
    path = Path(model_dir) / CHANNELS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise IsojaxInputError(f"{path}: unreadable ({reason}); {_DAMAGED}") from None
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        raise IsojaxInputError(f"{path}: not an isojax channel list (format "
                               f"{_FORMAT!r} expected); {_DAMAGED}")
    if record.get("version") != _VERSION:
        raise IsojaxInputError(
            f"{path}: channel list version {record.get('version')!r}; this isojax reads "
            f"version {_VERSION}: predict with the isojax that trained it, or retrain")
    channels = record.get("channels")
    problem = _channels_problem(channels)
    if problem:
        raise IsojaxInputError(f"{path}: {problem}; {_DAMAGED}")
    return record


def _channels_problem(channels) -> str | None:
    """What is wrong with a ``channels`` list, or None."""
    if not isinstance(channels, list) or not channels:
        return '"channels" must be a non-empty list'
    seen = set()
    for entry in channels:
        if not isinstance(entry, dict):
            return 'each entry of "channels" must be an object'
        index, folder, name = entry.get("index"), entry.get("folder"), entry.get("name")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            return f'channel index {index!r} is not a whole number >= 0'
        if index in seen:
            return f"channel {index} is listed twice"
        seen.add(index)
        if (not isinstance(folder, str) or not folder or Path(folder).name != folder
                or folder in (".", "..")):
            return f"channel {index}: folder {folder!r} is not a subfolder name"
        if name is not None and not isinstance(name, str):
            return f"channel {index}: name {name!r} is not a string or null"
    return None


def write_channels_file(model_dir: str | os.PathLike, channels, **recorded) -> Path:
    """Write ``model_dir/channels.json`` atomically (the folder must exist).

    Args:
      model_dir: the multi-channel model folder.
      channels: ``(index, name)`` per channel, in training order; channel ``index`` is
        written to the subfolder ``c<index>``.
      **recorded: what else to record (``axes``, ``timepoints``, ``input``, ...; JSON values).

    Returns:
      The path written.

    Raises:
      IsojaxInputError: a malformed channel list (a repeated or negative index).
    """
    entries = [{"index": int(i), "name": None if n is None else str(n), "folder": f"c{int(i)}"}
               for i, n in channels]
    problem = _channels_problem(entries)
    if problem:
        raise IsojaxInputError(f"cannot write {CHANNELS_FILE}: {problem}")
    record = {"format": _FORMAT, "version": _VERSION, "design": "per-channel",
              "channels": entries, **recorded}
    path = Path(model_dir) / CHANNELS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def channel_models(model_dir: str | os.PathLike) -> tuple[tuple[int | None, Path], ...]:
    """The models of a model folder: ``(input channel index, folder)`` per channel.

    Args:
      model_dir: a model folder: a single-channel one (``config.json``) or a multi-channel
        one (``channels.json`` and one subfolder per channel).

    Returns:
      ``((None, model_dir),)`` for a single-channel folder (anything without
      ``channels.json``: the folder's own reader reports what is missing), else one
      ``(index, model_dir / folder)`` per channel in the file's order.

    Raises:
      IsojaxInputError: a broken ``channels.json`` (:func:`read_channels_file`).
    """
    model_dir = Path(model_dir)
    if not is_multichannel(model_dir):
        return ((None, model_dir),)
    record = read_channels_file(model_dir)
    return tuple((int(e["index"]), model_dir / e["folder"]) for e in record["channels"])


def describe_channels(model_dir: str | os.PathLike) -> str:
    """``"channels 0 (c0), 2 (c2)"``: a multi-channel folder's models, for messages.

    Args:
      model_dir: a multi-channel model folder.

    Returns:
      The channel indices with their subfolders.

    Raises:
      IsojaxInputError: a broken ``channels.json``.
    """
    models = channel_models(model_dir)
    return "channels " + ", ".join(f"{i} ({p.name})" for i, p in models)
