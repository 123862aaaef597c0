"""A stack's geometry, checked once where it is built and trusted everywhere after.

:class:`StackGeometry` holds what isojax needs to know about a stack besides its voxels: the
anisotropy factor ``subsample = dz / dx``, the voxel size ``(dz, dy, dx)`` in micrometres
(when known), where each came from, and the stack's axes (``"ZYX"`` today; channel ``C``
and time ``T`` axes are accepted for the multichannel time-lapses to come). It is frozen and
checks itself in ``__post_init__``, so a geometry that exists is a valid one.

It is built once, at the edge, from what the user and the file say:

* :func:`from_metadata`: a voxel size (from the file's metadata or ``--spacing``) and an
  optional ``--subsample``, by the one rule between them (:func:`subsample_conflict`: 2%,
  the same either way; a warning, or a refusal for calibration);
* :func:`read_stack`: a whole TIFF in memory; :func:`open_stack`: a TIFF or OME-Zarr opened
  for streaming, with the same checks and the same warnings, so that a command behaves the
  same at any stack size.

:func:`check_subsample` is the one "finite number >= 1" rule for a factor given as a plain
number to a public library function (``SynthConfig``, ``predict_stack``, ``acquire``, ...);
the forward operator keeps its own (:mod:`isojax.forward`, which stands alone).

This module reads metadata through :mod:`isojax.io` and imports nothing else of isojax but
:mod:`isojax.errors`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from isojax.errors import IsojaxInputError, log_to_stderr
from isojax.io import open_volume, read_tiff, require_spacing

__all__ = [
    "SQUARE_TOLERANCE",
    "SUBSAMPLE_TOLERANCE",
    "Source",
    "StackGeometry",
    "check_subsample",
    "check_subsample_against_spacing",
    "from_metadata",
    "open_stack",
    "read_stack",
    "subsample_conflict",
    "um_to_px",
]

Log = Callable[[str], None]

#: Where a value of the geometry came from: the file's metadata, the user (``--subsample``,
#: ``--spacing`` or a Python argument), a model folder's configuration, or a default.
Source = Literal["metadata", "override", "model", "default"]
_SOURCES = ("metadata", "override", "model", "default")

#: How far ``--subsample`` may differ from the voxel size's ``dz / dx`` before it counts as a
#: contradiction (2%, the same either way: see :func:`subsample_conflict`).
SUBSAMPLE_TOLERANCE = 0.02

#: How far ``dy`` and ``dx`` may differ before the pixels count as not square (1%).
SQUARE_TOLERANCE = 0.01

#: The axes a stack may have (OME-NGFF's names): time, channel and the three spatial ones.
_AXES = "TCZYX"


def check_subsample(value, *, name: str = "subsample") -> float:
    """The anisotropy factor as a Python float, if it is a finite number >= 1.

    The one rule for a factor given as a plain number (the forward operator keeps its own).
    A traced value is refused: the factor sets array shapes.

    Args:
      value: the factor ``dz / dx`` (axial step over lateral pixel size), e.g. 10.2.
      name: what to call it in the message (e.g. ``"SynthConfig.subsample"``).

    Returns:
      ``float(value)``.

    Raises:
      IsojaxInputError: ``value`` is not a number, is traced, not finite, or below 1.
    """
    try:
        s = float(value)
    except TypeError:
        if "Tracer" in type(value).__name__:
            raise IsojaxInputError(
                f"{name} must be a plain Python number (it sets array shapes), not a traced "
                "value; mark it static, e.g. jax.jit(f, static_argnames='subsample')."
            ) from None
        s = math.nan
    except ValueError:
        s = math.nan
    if not (math.isfinite(s) and s >= 1.0):
        raise IsojaxInputError(
            f"{name} must be a finite number >= 1: the Z step over the lateral pixel size, "
            f"dz / dx (spacing (2.04, 0.2, 0.2) um gives 10.2), got {value!r}. If Z is finer "
            "than X, the stack is not anisotropic in the sense isojax restores."
        )
    return s


def subsample_conflict(subsample: float, spacing: Sequence[float] | None) -> float | None:
    """The voxel size's factor ``dz / dx`` if ``subsample`` contradicts it, else None.

    The one rule for a given factor against the voxel size (prediction and training warn,
    calibration refuses): they contradict each other when they differ by more than
    :data:`SUBSAMPLE_TOLERANCE` (2%), measured symmetrically, ``|log(subsample / (dz /
    dx))| > log(1.02)``, so that a factor 2% above the voxel size's and one 2% below it
    count alike.

    Args:
      subsample: the given anisotropy factor.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, or None (nothing to contradict).

    Returns:
      ``dz / dx`` when the two differ by more than 2%, otherwise None.
    """
    if spacing is None:
        return None
    dz, _, dx = (float(v) for v in spacing)
    from_spacing = dz / dx
    if abs(math.log(float(subsample) / from_spacing)) > math.log1p(SUBSAMPLE_TOLERANCE):
        return from_spacing
    return None


def check_subsample_against_spacing(subsample: float, spacing: Sequence[float] | None) -> None:
    """Refuse a subsample factor that contradicts the voxel size (:func:`subsample_conflict`).

    Args:
      subsample: the given anisotropy factor.
      spacing: the stack's own voxel size ``(dz, dy, dx)`` in micrometres, or None.

    Raises:
      IsojaxInputError: naming both values and how to choose between them.
    """
    from_meta = subsample_conflict(subsample, spacing)
    if from_meta is not None and spacing is not None:  # a conflict needs a voxel size
        dz, _, dx = (float(v) for v in spacing)
        raise IsojaxInputError(
            f"the subsample factor {float(subsample):g} contradicts the voxel size "
            f"({dz:g} / {dx:g} um gives {from_meta:.4g}): give only one of them. Trust the "
            "voxel size if the metadata is right (drop --subsample), or fix it with "
            "--spacing Z Y X if the factor is what you know."
        )


def _check_axes(axes) -> str:
    ok = (isinstance(axes, str) and axes.endswith("YX") and "Z" in axes
          and set(axes) <= set(_AXES) and len(set(axes)) == len(axes))
    if not ok:
        raise IsojaxInputError(
            f"axes must name each axis once from {_AXES!r} and end with 'YX', with a Z axis "
            f"(e.g. 'ZYX', 'CZYX', 'TCZYX'), got {axes!r}."
        )
    return axes


def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        sp = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        sp = ()
    if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise IsojaxInputError(
            f"the voxel size must be three positive sizes (dz, dy, dx) in micrometres, got "
            f"{spacing!r}; pass --spacing Z Y X."
        )
    dz, dy, dx = sp
    if abs(dy / dx - 1) > SQUARE_TOLERANCE:
        raise IsojaxInputError(
            f"pixels are not square ({dy:g} x {dx:g} um); resample the stack so that y and x "
            "have the same pixel size."
        )
    return dz, dy, dx


@dataclass(frozen=True)
class StackGeometry:
    """A stack's anisotropy factor, voxel size, their sources and its axes; valid once built.

    Attributes:
      subsample: the anisotropy factor ``dz / dx``, a finite float >= 1.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres, or None when unknown (then the
        factor was given); pixels are square (``dy`` within 1% of ``dx``).
      subsample_source: where the factor came from (:data:`Source`); ``"metadata"`` means
        from ``spacing`` (then ``subsample == dz / dx``).
      spacing_source: where the voxel size came from, or None when there is none.
      spacing_detail: which metadata (``"imagej"``, ``"ome"``, ``"ome-zarr"``) or
        ``"override"`` (``--spacing``), as :func:`isojax.io.read_tiff` reports it; for messages.
      axes: the stack's axes, e.g. ``"ZYX"`` (default), ``"CZYX"`` or ``"TCZYX"``.

    Raises:
      IsojaxInputError: any attribute out of range (one line, naming the fix).
    """

    subsample: float
    spacing: tuple[float, float, float] | None = None
    subsample_source: Source = "default"
    spacing_source: Source | None = None
    spacing_detail: str = ""
    axes: str = "ZYX"

    def __post_init__(self) -> None:
        object.__setattr__(self, "subsample", check_subsample(self.subsample))
        _check_axes(self.axes)
        if self.subsample_source not in _SOURCES:
            raise IsojaxInputError(
                f"subsample_source must be one of {', '.join(_SOURCES)}, got "
                f"{self.subsample_source!r}.")
        if self.spacing is None:
            if self.spacing_source is not None or self.subsample_source == "metadata":
                raise IsojaxInputError(
                    "a geometry without a voxel size has no spacing_source and its factor "
                    "cannot come from the metadata; give spacing=(dz, dy, dx).")
            return
        sp = _check_spacing(self.spacing)
        object.__setattr__(self, "spacing", sp)
        if self.spacing_source not in _SOURCES:
            raise IsojaxInputError(
                f"spacing_source must be one of {', '.join(_SOURCES)}, got "
                f"{self.spacing_source!r}.")
        if self.subsample_source == "metadata" and abs(self.subsample / (sp[0] / sp[2]) - 1) > 1e-9:
            raise IsojaxInputError(
                f"a factor from the voxel size must be dz / dx = {sp[0] / sp[2]:.6g}, got "
                f"{self.subsample:.6g}; give it as subsample_source='override'.")

    @property
    def how(self) -> str:
        """Where the factor came from, for messages (``"--subsample"``, ``"voxel size ..."``)."""
        if self.subsample_source == "metadata" and self.spacing is not None:  # __post_init__
            dz, _, dx = self.spacing
            return f"voxel size {dz:g} / {dx:g} um ({self.spacing_detail or 'metadata'})"
        return {"override": "--subsample", "model": "the model folder",
                "default": "the default"}[self.subsample_source]

    @property
    def pixel_size(self) -> float | None:
        """The lateral pixel size ``dx`` in micrometres, or None."""
        return None if self.spacing is None else self.spacing[2]

    @property
    def isotropic_spacing(self) -> tuple[float, float, float] | None:
        """The voxel size after Z upsampling, ``(dz / subsample, dy, dx)`` µm, or None."""
        if self.spacing is None:
            return None
        dz, dy, dx = self.spacing
        return dz / self.subsample, dy, dx

    @property
    def channel_axis(self) -> int | None:
        """Index of the channel axis ``C`` in :attr:`axes`, or None."""
        return self.axes.index("C") if "C" in self.axes else None

    @property
    def time_axis(self) -> int | None:
        """Index of the time axis ``T`` in :attr:`axes`, or None."""
        return self.axes.index("T") if "T" in self.axes else None


def _no_voxel_size(name) -> IsojaxInputError:
    """The message for a stack with neither a voxel size nor a factor (quotes a TIFF's text)."""
    factor = "or pass only the anisotropy factor with --subsample F (subsample= in Python)"
    if name is not None and (Path(name).suffix.lower() == ".zarr" or Path(name).is_dir()):
        return IsojaxInputError(
            f"{name}: no voxel size in the OME-Zarr metadata; pass it with --spacing Z Y X "
            f"(command line) or spacing=(dz, dy, dx) (Python), in micrometres; {factor}")
    try:
        require_spacing(None, path=name)
    except IsojaxInputError as exc:
        return IsojaxInputError(f"{exc}; {factor}")
    raise AssertionError("unreachable: require_spacing(None) raises")


def from_metadata(
    spacing: Sequence[float] | None,
    *,
    source: str,
    subsample: float | None = None,
    name: str | os.PathLike | None = None,
    on_conflict: Literal["warn", "error"] = "warn",
    axes: str = "ZYX",
    log: Log | None = log_to_stderr,
) -> StackGeometry:
    """The geometry from a voxel size and an optional factor, by the one rule between them.

    ``subsample`` wins when given; if it contradicts the voxel size by more than 2%
    (:func:`subsample_conflict`) it is refused with ``on_conflict="error"`` (calibration:
    a wrong factor gives a wrong PSF), else used with a warning through ``log`` (None: no
    warning, for library functions whose caller has warned). Without ``subsample`` the
    factor is the voxel size's ``dz / dx``.

    Args:
      spacing: the voxel size ``(dz, dy, dx)`` in micrometres, or None.
      source: where it came from, as :func:`isojax.io.read_tiff` and
        :func:`isojax.io.open_volume` say: ``"override"`` (``--spacing``), ``"ome"``,
        ``"imagej"``, ``"ome-zarr"`` or ``"none"``.
      subsample: the factor the user gave (``--subsample``), or None.
      name: the file, to prefix messages and quote its description.
      on_conflict: ``"warn"`` or ``"error"``.
      axes: the stack's axes (:attr:`StackGeometry.axes`).
      log: where the warning goes, or None.

    Returns:
      The :class:`StackGeometry`.

    Raises:
      IsojaxInputError: neither a voxel size nor a factor; a factor below 1 (given or from
        the voxel size); non-square pixels; a contradicting factor with
        ``on_conflict="error"``. Messages start with ``name``.
    """
    if subsample is None and spacing is None:
        raise _no_voxel_size(name)
    prefix = "" if name is None else f"{name}: "
    spacing_source: Source | None = (
        None if spacing is None else "override" if source == "override" else "metadata")
    try:
        if subsample is None:
            assert spacing is not None, "refused above"
            voxel = _check_spacing(spacing)  # three positive sizes, square pixels
            dz, _, dx = voxel
            try:
                s = check_subsample(dz / dx, name="the anisotropy factor")
            except IsojaxInputError:
                raise IsojaxInputError(
                    f"anisotropy factor {dz / dx:g} from the voxel size {dz:g} / {dx:g} um is "
                    "below 1 (z step smaller than the pixel); isojax restores coarse Z stacks: "
                    "check the voxel size or pass --subsample.") from None
            return StackGeometry(s, voxel, "metadata", spacing_source, source, axes)
        geometry = StackGeometry(check_subsample(subsample),
                                 None if spacing is None else _check_spacing(spacing),
                                 "override", spacing_source, source, axes)
    except IsojaxInputError as exc:
        raise IsojaxInputError(f"{prefix}{exc}") from None
    if on_conflict == "error":
        check_subsample_against_spacing(geometry.subsample, geometry.spacing)
    from_spacing = subsample_conflict(geometry.subsample, geometry.spacing)
    if from_spacing is not None and log is not None:
        log(f"warning: --subsample {geometry.subsample:g} overrides the factor "
            f"{from_spacing:.4g} from the voxel size ({source})")
    return geometry


def _check_planes(name, shape, axes: str) -> None:
    if len(shape) != len(axes):
        raise IsojaxInputError(
            f"{name}: expected a {len(axes)}D stack ({', '.join(axes.lower())}), got shape "
            f"{tuple(shape)}; select one channel or time point first.")
    n_z = shape[axes.index("Z")]
    if n_z < 2:
        raise IsojaxInputError(f"{name}: the stack has {n_z} plane; it needs at least 2.")


def read_stack(
    path: str | os.PathLike,
    *,
    spacing: Sequence[float] | None = None,
    subsample: float | None = None,
    on_conflict: Literal["warn", "error"] = "warn",
    log: Log | None = log_to_stderr,
) -> tuple[np.ndarray, StackGeometry]:
    """Read a whole stack TIFF and build its geometry (:func:`from_metadata`).

    Args:
      path: the TIFF, axes ``(z, y, x)``.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres overriding the metadata.
      subsample: the factor the user gave, or None (from the voxel size).
      on_conflict: ``"warn"`` (prediction, training) or ``"error"`` (calibration).
      log: where warnings go.

    Returns:
      ``(stack, geometry)``.

    Raises:
      IsojaxInputError: unreadable file, not 3D, fewer than 2 planes, or what
        :func:`from_metadata` refuses.
    """
    stack, sp, source = read_tiff(path, spacing=spacing)
    _check_planes(path, stack.shape, "ZYX")
    return stack, from_metadata(sp, source=source, subsample=subsample, name=path,
                                on_conflict=on_conflict, log=log)


def open_stack(
    path: str | os.PathLike,
    *,
    spacing: Sequence[float] | None = None,
    subsample: float | None = None,
    on_conflict: Literal["warn", "error"] = "warn",
    log: Log | None = log_to_stderr,
):
    """Open a stack for streaming (:func:`isojax.io.open_volume`) and build its geometry.

    The streamed sibling of :func:`read_stack`: the same checks, the same warnings.

    Args:
      path: a TIFF or an OME-Zarr (``.zarr``) holding a 3D ``(z, y, x)`` stack.
      spacing: voxel size ``(dz, dy, dx)`` in micrometres overriding the metadata, or None.
      subsample: the anisotropy factor, overriding the voxel size's ``dz / dx``, or None.
      on_conflict: ``"warn"`` or ``"error"`` when ``subsample`` contradicts the voxel size.
      log: where warnings go, or None.

    Returns:
      ``(volume, geometry)``: the opened :class:`~isojax.io.TiffVolume` or
      :class:`~isojax.io.ZarrVolume` (nothing read yet) and its :class:`StackGeometry`.

    Raises:
      IsojaxInputError: as :func:`read_stack`, and an unsupported (e.g. compressed) TIFF.
    """
    volume = open_volume(path, spacing=spacing)
    _check_planes(path, volume.shape, "ZYX")
    return volume, from_metadata(volume.spacing, source=volume.source, subsample=subsample,
                                 name=path, on_conflict=on_conflict, log=log)


def um_to_px(value_um: float | None, *, pixel: float | None, name: str) -> float | None:
    """A length the user gave in micrometres, in lateral pixels: the commands' one rule.

    Args:
      value_um: the length in micrometres, or None (not given).
      pixel: the stack's lateral pixel size in micrometres, or None (unknown).
      name: the option's name, for the message (e.g. ``"--init-fwhm"``).

    Returns:
      ``value_um / pixel``, or None when ``value_um`` is None.

    Raises:
      IsojaxInputError: a length is given but the pixel size is unknown.
    """
    if value_um is None:
        return None
    if pixel is None:
        raise IsojaxInputError(
            f"{name} is in micrometres but the stack's pixel size is unknown; pass --spacing Z Y X."
        )
    return float(value_um) / pixel
