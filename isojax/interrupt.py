"""SIGINT and SIGTERM: stop cleanly, keep what can be kept, and say how to continue.

Two ways of handling the signals that end a job (Ctrl-C sends SIGINT; SLURM, Kubernetes and
``kill`` send SIGTERM some seconds before they kill the process):

* :func:`raise_on_signals` (every command): the signal raises :class:`Interrupted` where the
  program is, like Python's ``KeyboardInterrupt``, so that the cleanup of partial outputs
  (``except BaseException`` in :mod:`isojax.io`) runs before the process exits.
* :class:`deferred_signals` (the training loop): the first signal only sets a flag, which
  the loop checks after each step; it then saves a checkpoint and raises
  :class:`Interrupted` itself. A second signal while it stops raises at once.

The command line turns :class:`Interrupted` into one line ``isojax: interrupted (SIGTERM)
...`` and the exit status ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM), as a
shell reports a process killed by that signal. Handlers are installed only in the main
thread (Python allows no other), not for a signal the process was started ignoring (as a
shell starts background jobs for SIGINT), and the previous ones are restored on exit.

Pure standard library.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Interrupted", "deferred_signals", "raise_on_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM.

    A ``BaseException`` like ``KeyboardInterrupt``: ``except Exception`` does not catch it,
    cleanup code (``finally``, ``except BaseException: ...; raise``) runs.

    Attributes:
      signum: the signal number.
      message: what was done about it (e.g. where the checkpoint is), or "".
    """

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(signum, message)
        self.signum = int(signum)
        self.message = message

    @property
    def name(self) -> str:
        """The signal's name, e.g. ``"SIGTERM"``."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """``128 + signum``: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted ({self.name})" + (f": {self.message}" if self.message else "")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _handlers(handler) -> Iterator[None]:
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        for s in SIGNALS:
            if previous[s] is not signal.SIG_IGN:  # e.g. SIGINT of a `cmd &` job stays ignored
                signal.signal(s, handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""

    def handler(signum, frame):
        raise Interrupted(signum)

    with _handlers(handler):
        yield


class deferred_signals:
    """Within the block, the first SIGINT/SIGTERM sets :attr:`signum`; a second one raises.

    >>> with deferred_signals() as stop:  # doctest: +SKIP
    ...     for step in range(n):
    ...         work(step)
    ...         if stop.signum is not None:
    ...             save(step)
    ...             raise Interrupted(stop.signum, "saved")

    Outside the main thread it installs nothing and :attr:`signum` stays None.

    Attributes:
      signum: the first signal received, or None.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._stack = contextlib.ExitStack()

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:  # asked twice: stop now
            raise Interrupted(
                signum, "second signal: stopped at once; --resume continues from the last "
                "checkpoint saved before it"
            )
        self.signum = signum

    def __enter__(self) -> deferred_signals:
        self._stack.enter_context(_handlers(self._handler))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
