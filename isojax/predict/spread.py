"""A time-lapse prediction spread over the processes of a multi-host job.

Every process runs the same ``isojax predict`` command (:mod:`isojax.distributed` joins
them). Process ``p`` of ``N`` restores the output time points ``p, p + N, p + 2N, ...``
(:func:`my_timepoints`) into one OME-Zarr that all of them see (a shared file system):

1. process 0 alone checks the outputs, adopts a partial (``--resume``) or creates the
   staged store, and then tells the others where it is (:func:`from_main`; if it fails,
   the others stop with a one-line error instead of waiting);
2. every process writes its own time points' chunks (one time point and channel per
   chunk, so no chunk is written by two processes) and their completion markers;
3. all meet at a barrier (:func:`isojax.distributed.barrier`); process 0 then removes the
   markers and renames the store into place.

A process that dies stops the others after ``--host-timeout`` seconds (JAX's heartbeat);
the staged store keeps the markers of every finished time point, and the same command
with ``--resume`` continues it: each process skips its finished time points.

The messages between processes go through :func:`jax.experimental.multihost_utils.
broadcast_one_to_all` (a collective over all devices; gloo on CPUs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np

from isojax import distributed
from isojax.errors import IsojaxInputError

__all__ = ["from_main", "my_timepoints", "rank_and_count"]

T = TypeVar("T")

#: Bytes of a text sent from process 0 (paths of the staged outputs, as UTF-8 JSON).
_TEXT_BYTES = 8192


def rank_and_count() -> tuple[int, int]:
    """This process's index and the number of processes of the job.

    Returns:
      ``(p, N)``: ``jax.process_index()`` and ``jax.process_count()`` (``(0, 1)`` alone).
    """
    return jax.process_index(), jax.process_count()


def my_timepoints(n_timepoints: int) -> list[int]:
    """The output time points this process restores: ``p, p + N, ...`` below ``n_timepoints``.

    Args:
      n_timepoints: time points of the output.

    Returns:
      Indices into the output's time axis, increasing.
    """
    p, n = rank_and_count()
    return list(range(p, n_timepoints, n))


def _broadcast_text(text: str | None) -> str:
    """Process 0's ``text`` on every process (the others pass None)."""
    from jax.experimental import multihost_utils

    buf = np.zeros(_TEXT_BYTES, np.uint8)
    if text is not None:
        raw = text.encode()
        if len(raw) > _TEXT_BYTES - 1:
            raise IsojaxInputError(f"the output paths are too long to share between "
                                   f"processes ({len(raw)} bytes); use shorter paths")
        buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(got[: int(np.argmin(got)) if not got.all() else len(got)]).decode()


def from_main(fn: Callable[[], T], *, share: Callable[[T], str] | None = None,
              what: str = "preparing the prediction") -> tuple[T | None, str]:
    """Run ``fn`` on process 0 only; tell every process whether it worked, and a text.

    Alone (one process) this is ``fn()``. In a job, process 0 calls ``fn`` and broadcasts
    ``share(result)``; the other processes wait for it and get the text. When ``fn``
    raises on process 0, the others raise too, with one line saying so (the cause is in
    process 0's error), instead of waiting for a process that stopped.

    Args:
      fn: what only process 0 does (create or adopt the output, check it).
      share: the text of its result that the others need (at most 8 KiB of UTF-8), or
        None for none.
      what: what ``fn`` does, for the others' error message.

    Returns:
      ``(result, text)`` on process 0; ``(None, text)`` on the others.

    Raises:
      IsojaxInputError: on the other processes, when ``fn`` failed on process 0.
    """
    p, n = rank_and_count()
    if n == 1:
        value = fn()
        return value, "" if share is None else share(value)
    if p == 0:
        try:
            value = fn()
            text = "ok:" + ("" if share is None else share(value))
        except BaseException:
            _broadcast_text("failed")
            raise
        _broadcast_text(text)
        return value, text[3:]
    text = _broadcast_text(None)
    if not text.startswith("ok:"):
        raise IsojaxInputError(f"process {p}: process 0 failed while {what}; its error "
                               "says why")
    return None, text[3:]


def barrier(name: str) -> None:
    """Wait until every process of the job reaches ``name`` (nothing alone).

    Args:
      name: the barrier's name, the same on every process.
    """
    distributed.barrier(name)
