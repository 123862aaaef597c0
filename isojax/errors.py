"""Exceptions that isojax raises for bad input (files, metadata, PSFs).

The command line turns these into a one-line ``isojax: error: <reason>`` message; anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["IsojaxInputError"]


class IsojaxInputError(ValueError):
    """Bad input from the user: a missing or unreadable file, absent metadata, an unusable PSF.

    It subclasses ``ValueError`` so that code catching ``ValueError`` keeps working; the message
    always says what was wrong and what to do about it.
    """
