"""Damaged checkpoints: which file of a step folder is damaged, and quiet abandoned reads.

orbax and tensorstore report a damaged checkpoint as a traceback (or several, printed
after the fact by asyncio); :func:`describe_damage` names the file and how it is damaged,
and :func:`quiet_abandoned_reads` silences the reads orbax abandons, so that the command
line can say it in one line (:mod:`isojax.model_folder.checkpoints`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import types
from pathlib import Path

__all__ = ["damaged_step", "describe_damage", "quiet_abandoned_reads"]

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
    texts: list[str] = []
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
