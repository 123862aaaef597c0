"""A model folder's ``metrics.jsonl``: one JSON record per training step, read up to a cut.

The loop (:mod:`isojax.train.loop`) appends a line per step and flushes it, so a kill can
cut the last line short; every reader here stops at the first line that is not JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from isojax.io import atomic_write

__all__ = ["best_validation", "metric_records", "read_metrics", "summary_from_metrics",
           "trim_metrics"]


def metric_records(lines: list[str]) -> list[tuple[str, dict]]:
    """The lines of ``metrics.jsonl`` with their records, up to the first cut line.

    A line cut by a kill (or anything after it) is not JSON: it and what follows are dropped.

    Args:
      lines: the file's lines, without their line ends.

    Returns:
      ``(line, record)`` pairs, in the file's order.
    """
    records = []
    for line in lines:
        try:
            records.append((line, json.loads(line)))
        except json.JSONDecodeError:
            break
    return records


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` up to its first cut line ([] if there is no file).

    Args:
      path: the file.

    Returns:
      The records, in the file's order.
    """
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    return [record for _, record in metric_records(lines)]


def trim_metrics(path: Path, upto: int) -> None:
    """Keep only the metric lines of steps <= upto (after a resume).

    The file is replaced atomically (:func:`isojax.io.atomic_write`): a kill or a full disk
    during the rewrite leaves the old file whole, and the next resume trims it again.

    Args:
      path: the ``metrics.jsonl``; nothing happens when it does not exist.
      upto: the step training resumes from.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line, record in metric_records(lines) if record.get("step", 0) <= upto]
    if kept == lines:
        return
    text = "".join(ln + "\n" for ln in kept)
    atomic_write(path, lambda temp: temp.write_text(text))


def summary_from_metrics(path: Path, step: int) -> dict:
    """The summary :func:`isojax.train.train` returns, read back from ``metrics.jsonl``.

    Used when there is nothing to do (the folder is already trained for ``step`` steps).

    Args:
      path: the ``metrics.jsonl``.
      step: the folder's last checkpoint step; later records are ignored.

    Returns:
      ``step``, the last training ``loss`` (NaN without records), ``best_val_loss`` and
      ``best_step`` (None without a validation), and ``steps_run`` 0.
    """
    summary: dict[str, Any] = {"step": step, "loss": float("nan"), "best_val_loss": None,
                               "best_step": None, "steps_run": 0}
    done = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    if done:
        summary["loss"] = done[-1].get("loss", float("nan"))
    summary.update(best_validation(done))
    return summary


def best_validation(records: list[dict]) -> dict:
    """``best_val_loss`` and ``best_step`` of the metric record with the lowest validation
    loss, or {} when none has one.

    Args:
      records: metric records (:func:`read_metrics`).

    Returns:
      ``{"best_val_loss": ..., "best_step": ...}`` or ``{}``.
    """
    vals = [r for r in records if "val_loss" in r]
    if not vals:
        return {}
    b = min(vals, key=lambda r: r["val_loss"])
    return {"best_val_loss": b["val_loss"], "best_step": b["step"]}
