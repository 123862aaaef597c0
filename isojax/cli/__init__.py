"""The ``isojax`` command line: argument parsing, then one library call per command.

Commands are argparse subparsers grouped by topic (``isojax psf axial|theory|check``); later
topics (train, predict, demo, calibrate) are added with :func:`_add_psf_commands`-style
functions in :func:`build_parser`. Each command is a function ``(args) -> int``. Bad input ends
with one line ``isojax: error: <reason>`` on stderr and exit status 1; anything else is a bug
in isojax: its traceback, one ``isojax: internal error`` line and exit status 70 (see
:func:`main`). SIGINT and SIGTERM end with one line ``isojax: interrupted (SIG...)`` and exit
status 130 or 143, after partial outputs are removed (and, in training, a checkpoint saved).

The package: :mod:`isojax.cli.options` (exit statuses, the parser and help formatter,
argument types), :mod:`isojax.cli.psf` (``isojax psf ...``), :mod:`isojax.cli.pipeline`
(``train``, ``predict``, ``calibrate``, ``demo``); this module builds the parser and runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from isojax.cli.options import (
    EXIT_INPUT,
    EXIT_SOFTWARE,
    EXIT_USAGE,
    _Parser,
    _UsageError,
)
from isojax.cli.options import EXIT_OK as EXIT_OK  # the exit statuses stay importable here
from isojax.cli.pipeline import _add_pipeline_commands
from isojax.cli.psf import _add_psf_commands
from isojax.errors import IsojaxInputError
from isojax.export.command import add_export_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``isojax`` argument parser; add new topics here as further subparsers.

    Returns:
      The parser with every subcommand.
    """
    parser = _Parser(prog="isojax", description="Isotropic restoration of 3D stacks in JAX.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)
    _add_psf_commands(commands)
    _add_pipeline_commands(commands)
    add_export_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``isojax`` command line.

    Args:
      argv: the arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
      The exit status:

      - 0: success.
      - 1: bad input: one ``isojax: error: ...`` line on stderr naming the problem and the
        fix, for an :class:`~isojax.errors.IsojaxInputError`, an ``OSError`` on a file (the
        line names it) or a full disk.
      - 2: a bad command line (one ``isojax: error: ...`` line).
      - 70 (``EX_SOFTWARE``): an internal error, i.e. a bug in isojax: any other exception.
        Its traceback is printed, then one line ``isojax: internal error: this is a bug in
        isojax <version>; please report it with the traceback above``.
      - 128 + the signal number (130 for SIGINT, 143 for SIGTERM) when interrupted (one
        ``isojax: interrupted`` line; partial outputs are removed, and training saves a
        checkpoint first: :mod:`isojax.interrupt`).
      - 141 (128 + SIGPIPE): the reader of its output went away (``isojax ... | head``);
        it stops quietly.
    """
    try:
        return _main(argv)
    except BrokenPipeError:
        return _stop_on_broken_pipe()


def _stop_on_broken_pipe() -> int:
    """stdout or stderr was closed by its reader (``isojax ... | head``): stop quietly.

    Both streams are pointed at ``/dev/null`` so that nothing else (the interpreter's own
    flush at exit included) tries to write to the closed pipe; the status is that of a
    process ended by SIGPIPE, as for other command-line tools.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        # a stream that is not a real file (a test's capture) has nothing to redirect
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"isojax: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    from isojax.interrupt import Interrupted, raise_on_signals

    try:
        with raise_on_signals():
            return args.func(args)
    except Interrupted as exc:
        print(f"isojax: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # a SIGINT outside raise_on_signals' reach (another thread)
        print("isojax: interrupted (SIGINT)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout or stderr went away: see main
        raise
    except IsojaxInputError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"isojax: error: {message}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        os_message = _os_error_message(exc)
        if os_message is None:
            return _internal_error()
        print(f"isojax: error: {os_message}", file=sys.stderr)
        return EXIT_INPUT
    except Exception as exc:
        if _out_of_memory(exc):
            print(f"isojax: error: out of memory ({' '.join(str(exc).split())[:200]}); "
                  f"{_MEMORY_HINTS.get(args.command, 'use a smaller stack')}", file=sys.stderr)
            return EXIT_INPUT
        return _internal_error()


#: What to change when a command runs out of host or device memory.
_MEMORY_HINTS = {
    "train": "use a smaller --batch-size, --patch-size or --first-filters",
    "predict": "use a smaller --batch-size, --tile or --memory-budget",
    "calibrate": "calibrate a crop of the stack",
    "demo": "close other programs and run it again",
}


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the host (``MemoryError``) or an accelerator (XLA's
    ``RESOURCE_EXHAUSTED``) running out of memory: the user's settings, not a bug."""
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "RESOURCE_EXHAUSTED" in str(exc))


#: ``errno`` values of an ``OSError`` that come from the user's machine, not from isojax,
#: even when the error names no file: a full disk or quota.
_ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT") if hasattr(errno, name))


#: ``errno`` values of an ``OSError`` that come from the user's machine, not from isojax,
#: even when the error names no file: a full disk or quota.
_ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT") if hasattr(errno, name))


def _os_error_message(exc: OSError) -> str | None:
    """The one-line message of an I/O error on the user's paths or disk, or None for a bug.

    An ``OSError`` naming a file (``exc.filename``) is about a path the user gave or that
    isojax writes for them; one with a full disk or quota is about their machine. Any other
    (no file, e.g. a broken internal pipe) is treated as a bug.
    """
    def name(f) -> str:  # a path, or (os.fstat and the like) a file descriptor
        return os.fsdecode(f) if isinstance(f, (str, bytes, os.PathLike)) else str(f)

    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if exc.filename is not None:
        names = name(exc.filename)
        if getattr(exc, "filename2", None) is not None:
            names += f" -> {name(exc.filename2)}"
        return f"{names}: {reason}"
    if exc.errno in _ENVIRONMENT_ERRNOS:
        return f"{reason}; free some space (or raise the quota) and run the command again"
    return None


def _internal_error() -> int:
    """Print the traceback of the exception being handled and the bug line; EXIT_SOFTWARE."""
    from isojax import __version__

    traceback.print_exc(file=sys.stderr)
    print(f"isojax: internal error: this is a bug in isojax {__version__}; please report it "
          "with the traceback above", file=sys.stderr)
    return EXIT_SOFTWARE
