"""What every ``isojax`` subcommand shares: exit statuses, the parser class that reports
errors as one line, the help formatter that states each default, and the argument types.
"""

from __future__ import annotations

import argparse

__all__: list[str] = []  # private to isojax.cli

EXIT_OK = 0
EXIT_INPUT = 1  # bad input: missing file, no voxel size, PSF refused, ...
EXIT_USAGE = 2  # bad command line
EXIT_SOFTWARE = 70  # an internal error, a bug in isojax (EX_SOFTWARE of sysexits.h)


class _UsageError(Exception):
    """argparse rejected the command line."""


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (or says it is required).

    A help text that already says ``default`` is left as it is (it explains a default that
    is computed, e.g. "default: from the voxel size in the file"); a switch says
    ``default: off``, an option without a value ``default: none``.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.help is argparse.SUPPRESS or action.default is argparse.SUPPRESS
                or "default" in text or not action.option_strings):
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is False:
            return f"{text} (default: off)"
        if action.default is None:
            return f"{text} (default: none)"
        value = action.default
        if isinstance(value, (list, tuple)):
            value = " ".join(str(v) for v in value)
        return f"{text} (default: {str(value).replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports errors as one line instead of exiting."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _add_stack_geometry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subsample", type=_positive_float, metavar="F",
                   help="anisotropy factor: Z step / lateral pixel size, a number >= 1 (default: "
                   "from the voxel size in the file)")
    p.add_argument("--spacing", type=_positive_float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in micrometres (default: from the file's ImageJ or OME "
                   "metadata)")
