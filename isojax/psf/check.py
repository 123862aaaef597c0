"""The PSF check: :func:`check_psf`, the :class:`PSFReport` it returns, and :class:`AxialPSF`.

Before a 2D ``(lateral, axial)`` PSF reaches the forward operator, the check measures it, fixes
what is safe (with a warning), warns about what it cannot fix and refuses what is unusable.
:class:`AxialPSF` is the checked PSF as it travels on: built once by :meth:`AxialPSF.checked`
(from :func:`isojax.psf.sources.resolve_psf` for files, beads, theory and calibrations), it
carries the PSF, its pixel size and its provenance into synthesis and training, which trust it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from isojax.errors import IsojaxInputError
from isojax.forward import FactoredPSF, factorize_psf
from isojax.psf.models import _positive, fwhm

__all__ = ["AxialPSF", "PSFReport", "check_psf"]


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PSFReport:
    """What :func:`check_psf` found about a 2D ``(lateral, axial)`` PSF.

    Attributes:
      shape: array shape ``(lateral, axial)``.
      total: sum of the values as given.
      n_negative: number of negative values as given.
      negative_mass: their total magnitude as a fraction of the positive mass.
      edge_fraction: fraction of the mass in the outer one-pixel frame (axes of length >= 3).
      centre_offset_px: centroid minus array centre ``n // 2``, ``(lateral, axial)`` pixels.
      fwhm_px: FWHM through the peak, ``(lateral, axial)`` pixels.
      fwhm_um: the same in micrometres, or None when the pixel size is unknown.
      pixel_size: the PSF's pixel size in micrometres, or None.
      image_pixel_size: the image's lateral pixel size in micrometres, or None.
      fixes: what the check changed (renormalised, clipped negatives); each was warned.
      warnings: problems it could not fix (mass on the edges, off-centre); each was warned.
      notes: remarks that need no warning (even size, unknown pixel size).
    """

    shape: tuple[int, ...]
    total: float
    n_negative: int
    negative_mass: float
    edge_fraction: float
    centre_offset_px: tuple[float, float]
    fwhm_px: tuple[float, float]
    fwhm_um: tuple[float, float] | None
    pixel_size: float | None
    image_pixel_size: float | None
    axes: tuple[str, str] = ("lateral", "axial")
    fixes: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        lines = [
            f"PSF shape {self.shape[0]} x {self.shape[1]} (axes {self.axes[0]}, {self.axes[1]})",
            f"  sum as given:   {self.total:.6g}",
            f"  negative values: {self.n_negative} ({100 * self.negative_mass:.3g}% of the "
            "positive mass)",
            f"  mass on edges:  {100 * self.edge_fraction:.3g}% (outer 1-pixel frame)",
            f"  centre offset:  lateral {self.centre_offset_px[0]:+.2f} px, "
            f"axial {self.centre_offset_px[1]:+.2f} px",
            f"  FWHM:           lateral {self.fwhm_px[0]:.2f} px, axial {self.fwhm_px[1]:.2f} px",
        ]
        if self.fwhm_um is not None:
            lines.append(f"                  lateral {self.fwhm_um[0]:.3g} um, "
                         f"axial {self.fwhm_um[1]:.3g} um")
        pixel = f"{self.pixel_size:g} um" if self.pixel_size is not None else "unknown"
        image = f"{self.image_pixel_size:g} um" if self.image_pixel_size is not None else "unknown"
        lines.append(f"  pixel size:     PSF {pixel}, image {image}")
        lines.extend(f"  fixed:   {text}" for text in self.fixes)
        lines.extend(f"  warning: {text}" for text in self.warnings)
        lines.extend(f"  note:    {text}" for text in self.notes)
        if not self.fixes and not self.warnings:
            lines.append("  usable as is")
        return "\n".join(lines)


def check_psf(
    psf,
    *,
    pixel_size: float | None = None,
    image_pixel_size: float | None = None,
    edge_tol: float = 0.01,
    negative_tol: float = 0.01,
    pixel_rtol: float = 0.01,
) -> tuple[np.ndarray, PSFReport]:
    """Check a 2D ``(lateral, axial)`` PSF before it reaches the forward operator.

    It measures shape, sum, negative values, mass on the edges, centre offset and FWHMs. It
    fixes what is safe, with a warning that says what it did: renormalising to sum 1 (when off
    by more than 1e-6) and clipping small negative noise (negative mass up to ``negative_tol``
    of the positive mass). It warns, without fixing, when more than ``edge_tol`` of the mass
    sits on the outer 1-pixel frame (the PSF was cropped too tightly) or the centroid is more
    than one pixel off the centre. It refuses what it cannot fix.

    Args:
      psf: 2D array-like, axes ``(lateral, axial)``.
      pixel_size: the PSF's pixel size in micrometres, if known (reports FWHMs in micrometres).
      image_pixel_size: the image's lateral pixel size in micrometres, if known.
      edge_tol: largest acceptable mass fraction on the outer frame before a warning.
      negative_tol: largest negative mass (fraction of the positive mass) that is clipped as
        noise; more is refused.
      pixel_rtol: relative tolerance on ``pixel_size`` versus ``image_pixel_size``.

    Returns:
      ``(fixed_psf, report)``: the PSF as a float numpy array (the input's float dtype, float32
      for integers), non-negative and summing to 1; and a :class:`PSFReport`.

    Raises:
      IsojaxInputError: a 3D PSF (derive the 2D one with ``isojax psf axial`` /
        :func:`axial_psf`), a 1D PSF (make it ``psf[None, :]``), other dimensionalities,
        non-numeric, NaN or infinite values, all zeros, a non-positive total, too much negative
        mass, or a pixel size that differs from the image's (resample with
        :func:`resample_psf`).
    """
    # Long, and kept whole: it reads top to bottom in the docstring's order (refuse, fix,
    # measure, warn, report), each step using what the previous ones found.
    try:
        a = np.asarray(psf)
    except (TypeError, ValueError) as exc:
        raise IsojaxInputError(f"the PSF is not a numeric array ({exc})") from exc
    if a.dtype.kind not in "fiub":
        raise IsojaxInputError(f"the PSF must hold real numbers, got dtype {a.dtype}")
    dtype = a.dtype if a.dtype.kind == "f" else np.dtype(np.float32)
    if a.ndim == 3:
        raise IsojaxInputError(
            f"the PSF is 3D {a.shape}; the forward operator needs the 2D (lateral, axial) "
            "additional axial PSF: derive it with `isojax psf axial BEAD.tif --pixel-size UM` "
            "(Python: isojax.psf.axial_psf)")
    if a.ndim == 1:
        raise IsojaxInputError(
            f"the PSF is 1D ({a.size} values); make it 2D (lateral, axial): if it is an axial "
            "profile with no lateral blur use psf[None, :] (shape (1, n)); or build one with "
            "isojax.psf.gaussian_axial_psf")
    if a.ndim != 2:
        raise IsojaxInputError(
            f"the PSF must be a 2D (lateral, axial) array, got {a.ndim} dimensions {a.shape}")
    if a.size == 0:
        raise IsojaxInputError("the PSF is empty")
    values = a.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise IsojaxInputError(
            f"the PSF contains {int(np.sum(~np.isfinite(values)))} NaN or infinite values; "
            "regenerate it")
    if not np.any(values):
        raise IsojaxInputError("the PSF is all zeros; regenerate it")
    total = float(values.sum())
    if total <= 0:
        raise IsojaxInputError(
            f"the PSF's total mass is {total:.3g} (not positive): it is not a PSF; check its sign "
            "and background subtraction")
    positive = float(values[values > 0].sum())
    negative = values < 0
    negative_mass = max(0.0, float(-values[negative].sum() / positive))
    if negative_mass > negative_tol:
        raise IsojaxInputError(
            f"{100 * negative_mass:.3g}% of the PSF's mass is negative (more than "
            f"{100 * negative_tol:g}% noise): subtract the background correctly or rederive it "
            "with `isojax psf axial`")
    pixel = None if pixel_size is None else _positive(pixel_size, "pixel_size", " micrometres")
    image = (None if image_pixel_size is None
             else _positive(image_pixel_size, "image_pixel_size", " micrometres"))
    if pixel is not None and image is not None and abs(pixel / image - 1) > pixel_rtol:
        raise IsojaxInputError(
            f"the PSF's pixel size ({pixel:g} um) differs from the image's lateral pixel size "
            f"({image:g} um); resample it with isojax.psf.resample_psf(psf, pixel_size={pixel:g},"
            f" target_pixel_size={image:g}) or rederive it with --pixel-size {image:g}")

    fixes = []
    if negative.any():
        values = np.clip(values, 0.0, None)
        fixes.append(f"clipped {int(negative.sum())} small negative values "
                     f"({100 * negative_mass:.3g}% of the mass) to zero")
    mass = values.sum()
    if abs(mass - 1.0) > 1e-6:
        fixes.append(f"renormalised to sum 1 (the sum was {total:.6g})")
    values = values / mass

    frame = np.zeros(values.shape, dtype=bool)
    if values.shape[0] >= 3:
        frame[[0, -1], :] = True
    if values.shape[1] >= 3:
        frame[:, [0, -1]] = True
    edge_fraction = float(values[frame].sum())
    grids = np.meshgrid(*(np.arange(n) for n in values.shape), indexing="ij")
    offset = tuple(float((g * values).sum() - n // 2)
                   for g, n in zip(grids, values.shape, strict=True))
    peak = np.unravel_index(int(np.argmax(values)), values.shape)
    widths = (fwhm(values[:, peak[1]]), fwhm(values[peak[0], :]))

    problems = []
    notes = []
    if edge_fraction > edge_tol:
        problems.append(
            f"{100 * edge_fraction:.3g}% of the mass is on the outer 1-pixel frame (more than "
            f"{100 * edge_tol:g}%): the PSF is too small or was cropped; use a larger one")
    if max(abs(o) for o in offset) > 1.0:
        problems.append(
            f"the centroid is off the centre by ({offset[0]:+.2f}, {offset[1]:+.2f}) px: the "
            "forward operator will shift images by that much; centre the PSF")
    if any(n % 2 == 0 for n in values.shape):
        notes.append(f"even size {values.shape}: the centre (index n // 2) is ambiguous; "
                     "odd sizes are preferred")
    if pixel is None:
        notes.append("the PSF's pixel size is unknown: make sure it is the image's lateral "
                     "pixel size")
    if fixes:
        warnings.warn(f"check_psf fixed the PSF: {'; '.join(fixes)}", UserWarning, stacklevel=2)
    for text in problems:
        warnings.warn(f"check_psf: {text}", UserWarning, stacklevel=2)

    report = PSFReport(
        shape=tuple(int(n) for n in values.shape),
        total=total,
        n_negative=int(negative.sum()),
        negative_mass=negative_mass,
        edge_fraction=edge_fraction,
        centre_offset_px=offset,  # type: ignore[arg-type]
        fwhm_px=widths,
        fwhm_um=None if pixel is None else (widths[0] * pixel, widths[1] * pixel),
        pixel_size=pixel,
        image_pixel_size=image,
        fixes=tuple(fixes),
        warnings=tuple(problems),
        notes=tuple(notes),
    )
    return values.astype(dtype), report


# --------------------------------------------------------------------------------------------
# The checked PSF
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AxialPSF:
    """The additional axial PSF once checked, with its pixel size and where it came from.

    Build it with :meth:`checked` (:func:`check_psf` runs once there); everything downstream
    (synthesis, training, the model folder) takes :attr:`kernel` as the forward operator's
    PSF and :meth:`dense` as the array to save or compare, without checking, normalising or
    casting it again.

    A measured or theoretical PSF is kept dense: the operator's dense path is exact, and the
    file written is the PSF that was checked. A calibrated PSF is kept as the
    :class:`~isojax.forward.FactoredPSF` it was fitted as (rank one), the operator's cheap
    path. :meth:`factored` gives either as factors.

    Attributes:
      kernel: the PSF as the operator takes it: a read-only float32 ``(lateral, axial)``
        array, non-negative and summing to 1, or a :class:`~isojax.forward.FactoredPSF`.
      pixel_size: its pixel size in micrometres on both axes (the image's lateral pixel
        size), or None when unknown.
      provenance: where it came from, one line (e.g. ``"file psf.tif"``).
      report: what :func:`check_psf` found, or None.

    Raises:
      IsojaxInputError: a kernel that is not such an array or factors of matching rank, a
        pixel size that is not positive, an empty provenance.
    """

    kernel: np.ndarray | FactoredPSF
    pixel_size: float | None
    provenance: str
    report: PSFReport | None = None

    def __post_init__(self) -> None:
        k = self.kernel
        if isinstance(k, FactoredPSF):
            lat, ax = np.shape(k.lateral), np.shape(k.axial)
            if len(lat) != 2 or len(ax) != 2 or lat[0] != ax[0] or lat[0] < 1:
                raise IsojaxInputError(
                    f"an AxialPSF's factors must be (rank, n_lateral) and (rank, n_axial) with "
                    f"the same rank >= 1, got {lat} and {ax}; build it with AxialPSF.checked.")
        elif not (isinstance(k, np.ndarray) and k.ndim == 2 and k.dtype == np.float32):
            raise IsojaxInputError(
                f"an AxialPSF's kernel must be a float32 2D (lateral, axial) numpy array or a "
                f"FactoredPSF, got {type(k).__name__} {np.shape(k)}; build it with "
                "AxialPSF.checked.")
        else:
            k.flags.writeable = False
        if self.pixel_size is not None:
            px = float(self.pixel_size)
            if not (math.isfinite(px) and px > 0):
                raise IsojaxInputError(
                    f"an AxialPSF's pixel size must be positive micrometres or None, got "
                    f"{self.pixel_size!r}.")
            object.__setattr__(self, "pixel_size", px)
        if not (isinstance(self.provenance, str) and self.provenance.strip()):
            raise IsojaxInputError("an AxialPSF needs its provenance, e.g. 'file psf.tif'.")

    @classmethod
    def checked(
        cls,
        psf,
        *,
        pixel_size: float | None,
        provenance: str,
        image_pixel_size: float | None = None,
    ) -> AxialPSF:
        """Check a PSF once (:func:`check_psf`) and wrap it.

        Args:
          psf: a 2D ``(lateral, axial)`` array-like, or a
            :class:`~isojax.forward.FactoredPSF` (checked through its dense form, kept
            factored when the check changed nothing).
          pixel_size: its pixel size in micrometres, or None.
          provenance: where it came from, one line.
          image_pixel_size: the image's lateral pixel size in micrometres, to refuse a PSF
            at another pixel size (:func:`check_psf`).

        Returns:
          The :class:`AxialPSF`; a dense kernel is float32, non-negative and sums to 1.

        Raises:
          IsojaxInputError: what :func:`check_psf` refuses.
        """
        dense = np.asarray(psf.dense()) if isinstance(psf, FactoredPSF) else psf
        fixed, report = check_psf(dense, pixel_size=pixel_size, image_pixel_size=image_pixel_size)
        kernel: np.ndarray | FactoredPSF
        if isinstance(psf, FactoredPSF) and not report.fixes:
            kernel = FactoredPSF(np.asarray(psf.lateral, np.float32),
                                 np.asarray(psf.axial, np.float32))
        else:
            kernel = np.asarray(fixed, np.float32)
        return cls(kernel, pixel_size, provenance, report)

    @property
    def shape(self) -> tuple[int, int]:
        """The ``(lateral, axial)`` shape of the dense PSF."""
        k = self.kernel
        return k.shape if isinstance(k, FactoredPSF) else (int(k.shape[0]), int(k.shape[1]))

    def dense(self) -> np.ndarray:
        """The PSF as a float32 ``(lateral, axial)`` numpy array (read-only when kept dense)."""
        k = self.kernel
        return np.asarray(k.dense(), np.float32) if isinstance(k, FactoredPSF) else k

    def factored(self, *, rtol: float = 1e-4) -> FactoredPSF:
        """The PSF as separable terms (:func:`isojax.forward.factorize_psf` for a dense one)."""
        k = self.kernel
        return k if isinstance(k, FactoredPSF) else factorize_psf(k, rtol=rtol)
