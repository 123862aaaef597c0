"""What isojax tells its user: the bad-input exception and the one message format.

The command line turns :class:`IsojaxInputError` into a one-line ``isojax: error: <reason>``
message; anything else that escapes is a bug and keeps its traceback. Messages go to stderr
through :func:`log_to_stderr`, which gives warnings the one prefix ``isojax: warning:``.
Lengths in messages are written ``um`` (ASCII, so that they survive any terminal and log file).
"""

from __future__ import annotations

import sys

__all__ = ["WARNING_PREFIX", "IsojaxInputError", "log_to_stderr", "log_warnings"]

WARNING_PREFIX = "isojax: warning: "


class IsojaxInputError(ValueError):
    """Bad input from the user: a missing or unreadable file, absent metadata, an unusable PSF.

    It subclasses ``ValueError`` so that code catching ``ValueError`` keeps working; the message
    always says what was wrong and what to do about it.
    """


def log_to_stderr(message: str) -> None:
    """Print one message on stderr and flush it; ``"warning: ..."`` gets the isojax prefix.

    Library functions take a ``log`` callable and send it lines such as ``"stack s.tif: ..."``
    or ``"warning: ..."``; this is the default one. A warning is printed as
    ``isojax: warning: ...``, the prefix the command line uses for every warning.

    Args:
      message: one line of text.
    """
    if message.startswith("warning: "):
        message = WARNING_PREFIX + message[len("warning: "):]
    print(message, file=sys.stderr, flush=True)


def log_warnings(log, caught) -> None:
    """Send each caught warning to ``log`` as one ``warning: ...`` line.

    Args:
      log: a callable of one line of text (e.g. :func:`log_to_stderr`).
      caught: the ``warnings.WarningMessage`` list of ``warnings.catch_warnings(record=True)``.
    """
    for item in caught:
        log(f"warning: {item.message}")
