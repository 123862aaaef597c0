"""The Axial PSF widget: from a bead layer or from theory, checked, shown, added, saved."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QPlainTextEdit,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from napari_isojax import _jobs
from napari_isojax._common import (
    LayerChoice,
    PathEdit,
    SpacingEdit,
    StatusLabel,
    float_box,
    int_box,
    run_job,
)
from napari_isojax._figures import FigureView

__all__ = ["PSFWidget", "add_psf_layer"]

#: where a PSF layer keeps its checked :class:`~isojax.psf.AxialPSF` (read by Train)
PSF_KEY = "isojax_axial_psf"


def add_psf_layer(viewer, psf, *, name: str):
    """Add (or replace) a 2D ``(lateral, axial)`` PSF layer at its pixel size."""
    px = psf.pixel_size or 1.0
    if name in viewer.layers:
        viewer.layers.remove(name)
    return viewer.add_image(psf.dense(), name=name, scale=(px, px), colormap="magma",
                            metadata={PSF_KEY: psf, "provenance": psf.provenance})


class PSFWidget(QWidget):
    """Derive the additional axial PSF as ``isojax psf axial`` / ``isojax psf theory`` do.

    Shows the PSF with its lateral and axial profiles (:func:`isojax.plot.psf_figure`) and
    the :func:`isojax.psf.check_psf` report, adds it as a layer ``axial PSF`` (its
    :class:`~isojax.psf.AxialPSF` in the layer's metadata, which Train uses), and saves it
    as a TIFF.
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result: _jobs.PSFResult | None = None
        self.worker = None
        self.source = QComboBox()
        self.source.addItems(["bead layer", "theory"])
        self.pixel_size = float_box(0.1, lo=1e-5, decimals=5, step=0.01)
        self.pixel_size.setToolTip("the image's lateral pixel size in micrometres")

        bead = QWidget()
        bead_form = QFormLayout(bead)
        self.bead_layer = LayerChoice(napari_viewer, ndim=3)
        self.bead_spacing = SpacingEdit()
        self.bead_spacing.follow(self.bead_layer)
        self.planes = QComboBox()
        self.planes.addItems(["both", "xz", "yz"])
        self.iterations = int_box(50, hi=10000)
        bead_form.addRow("bead layer", self.bead_layer)
        bead_form.addRow("bead voxel size (µm)", self.bead_spacing)
        bead_form.addRow("planes", self.planes)
        bead_form.addRow("RL iterations", self.iterations)

        theory = QWidget()
        th_form = QFormLayout(theory)
        self.modality = QComboBox()
        self.modality.addItems(["widefield", "confocal", "lightsheet"])
        self.na = float_box(0.8, lo=0.01, hi=1.7, step=0.05)
        self.wavelength = float_box(0.52, lo=0.1, hi=5.0, step=0.01)
        self.ri = float_box(1.33, lo=1.0, hi=2.0, step=0.01)
        self.excitation = float_box(0.0, hi=5.0, step=0.01)
        self.excitation.setSpecialValueText("none")
        self.pinhole = float_box(1.0, lo=0.01, hi=20.0)
        self.sheet = float_box(0.0, hi=100.0)
        self.sheet.setSpecialValueText("none")
        for label, w in (("modality", self.modality), ("NA", self.na),
                         ("emission (µm)", self.wavelength), ("refractive index", self.ri),
                         ("excitation (µm)", self.excitation), ("pinhole (AU)", self.pinhole),
                         ("sheet FWHM (µm)", self.sheet)):
            th_form.addRow(label, w)

        self.pages = QStackedWidget()
        self.pages.addWidget(bead)
        self.pages.addWidget(theory)
        self.source.currentIndexChanged.connect(self.pages.setCurrentIndex)
        self.make_button = QPushButton("Make PSF")
        self.make_button.clicked.connect(self.run)
        self.save_path = PathEdit(save=True, filter="TIFF (*.tif *.tiff)")
        self.save_button = QPushButton("Save PSF")
        self.save_button.clicked.connect(lambda: self.save(self.save_path.text()))
        self.status = StatusLabel()
        self.figure = FigureView()
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setMaximumHeight(160)

        top = QFormLayout()
        top.addRow("source", self.source)
        top.addRow("image pixel size (µm)", self.pixel_size)
        save_box = QGroupBox("save")
        save_form = QFormLayout(save_box)
        save_form.addRow("PSF file", self.save_path)
        save_form.addRow(self.save_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.pages)
        layout.addWidget(self.make_button)
        layout.addWidget(self.status)
        layout.addWidget(self.figure)
        layout.addWidget(self.report)
        layout.addWidget(save_box)
        layout.addStretch()

    def _job(self):
        px = self.pixel_size.value()
        if self.source.currentText() == "theory":
            options = dict(na=self.na.value(), wavelength_um=self.wavelength.value(),
                           ri=self.ri.value(), modality=self.modality.currentText(),
                           pixel_size=px, excitation_um=self.excitation.value() or None,
                           pinhole_au=self.pinhole.value(),
                           sheet_fwhm_um=self.sheet.value() or None)
            return lambda: _jobs.theory_psf(**options)
        layer = self.bead_layer.layer()
        if layer is None:
            raise ValueError("no 3D image layer to take the bead from: open a bead stack")
        data, spacing = layer.data, self.bead_spacing.value()
        planes, iterations = self.planes.currentText(), self.iterations.value()
        return lambda: _jobs.bead_psf(data, spacing=spacing, pixel_size=px, planes=planes,
                                      iterations=iterations)

    def run(self) -> None:
        """Make the PSF in a worker thread; then show, report and add it."""
        try:
            job = self._job()
        except ValueError as exc:
            self.status.error(exc)
            return
        self.status.info("making the PSF...")
        self.worker = run_job(job, on_done=self._done, status=self.status,
                              buttons=[self.make_button])

    def _done(self, result: _jobs.PSFResult) -> None:
        from isojax.plot import psf_figure

        self.result = result
        psf = result.psf
        add_psf_layer(self.viewer, psf, name="axial PSF")
        self.figure.show_figure(psf_figure(psf.dense(), pixel_size=psf.pixel_size,
                                           title=f"Additional axial PSF ({psf.provenance})"))
        lines = [str(result.report), *(f"warning: {w}" for w in result.warnings)]
        self.report.setPlainText("\n".join(lines))
        self.status.info(f"PSF {psf.shape[0]} x {psf.shape[1]} px (lateral, axial) added as "
                         "layer 'axial PSF'")

    def save(self, path: str) -> None:
        """Write the last PSF as a TIFF with its pixel size (as ``isojax psf`` does)."""
        if self.result is None:
            self.status.error(ValueError("make a PSF first"))
            return
        if not path:
            self.status.error(ValueError("choose a PSF file to save to"))
            return
        from isojax.errors import IsojaxInputError

        try:
            written = _jobs.save_psf(path, self.result.psf, overwrite=True)
        except (IsojaxInputError, OSError) as exc:
            self.status.error(exc)
            return
        self.status.info(f"saved {written}")
