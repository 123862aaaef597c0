"""What every ``isojax`` subcommand shares: exit statuses, the parser class that reports
errors as one line, the help formatter that states each default, the argument types, and
the optics options (``--na``, ``--wavelength``, ...) of ``psf theory``, ``train`` and
``calibrate --family debye``, defined once here (:func:`_add_optics_option`).
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

    def __init__(self, *args, check=None, **kwargs):
        """``check``: None, or ``(namespace) -> str | None``, run after parsing; a message
        is a usage error (exit status 2), for options that are valid one by one but not
        together (e.g. ``--wavelength`` with a family that takes no optics)."""
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self._check = check

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        message = None if self._check is None else self._check(namespace)
        if message:
            self.error(message)
        return namespace, extras

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


#: The theory models of ``isojax psf theory --model`` and ``isojax train --psf-model``: the
#: keys of :data:`isojax.psf.sources.THEORY_MODELS` (plain data here, so that building the
#: parser imports no JAX; a test checks that they agree).
THEORY_MODEL_NAMES = ("gaussian", "debye")

#: The modalities of the theory models and of the physical calibration family.
MODALITIES = ("widefield", "confocal", "lightsheet")

#: The optics options, each defined once: ``flag -> add_argument keywords``; a command may
#: change its help, ``required`` or ``action`` (:func:`_add_optics_option`).
_OPTICS_OPTIONS: dict[str, dict] = {
    "--na": {"type": _positive_float, "help": "numerical aperture of the objective"},
    "--wavelength": {"type": _positive_float, "metavar": "UM",
                     "help": "emission wavelength in micrometres"},
    "--ri": {"type": _positive_float, "metavar": "N",
             "help": "refractive index of the immersion medium"},
    "--modality": {"choices": MODALITIES, "help": "the microscope's PSF model"},
    "--excitation": {"type": _positive_float, "metavar": "UM",
                     "help": "excitation wavelength in micrometres, confocal only (default: the "
                     "emission wavelength)"},
    "--pinhole": {"type": float, "default": 1.0, "metavar": "AU",
                  "help": "confocal pinhole diameter in Airy units, 0 for a very small pinhole"},
    "--sheet-fwhm": {"type": _positive_float, "metavar": "UM",
                     "help": "light-sheet thickness (FWHM along z) in micrometres, lightsheet "
                     "only (default: no sheet, the detection PSF alone)"},
}


def _add_optics_option(p, flag: str, **changes) -> argparse.Action:
    """Add one optics option (``--na``, ``--wavelength``, ``--ri``, ``--modality``,
    ``--excitation``, ``--pinhole``, ``--sheet-fwhm``) with its shared type, unit and help.

    Args:
      p: the parser or argument group.
      flag: the option, a key of :data:`_OPTICS_OPTIONS`.
      **changes: keywords of ``add_argument`` that replace the shared ones (``help``,
        ``required``, ``default``, ``action``).

    Returns:
      The argparse action.
    """
    return p.add_argument(flag, **{**_OPTICS_OPTIONS[flag], **changes})
