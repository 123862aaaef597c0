"""The Restore and Calibrate widgets: ``isojax predict`` and ``isojax calibrate`` on a layer."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_isojax import _jobs
from napari_isojax._common import (
    LayerChoice,
    PathEdit,
    Relay,
    SpacingEdit,
    StatusLabel,
    float_box,
    int_box,
    run_job,
)
from napari_isojax._figures import FigureView
from napari_isojax._psf_widget import add_psf_layer

__all__ = ["CalibrateWidget", "RestoreWidget"]


class RestoreWidget(QWidget):
    """Restore the chosen layer with a model folder or an exported ``.bioimageio.zip``.

    The result is added as ``<layer> isotropic`` with the isotropic scale ``(dz / subsample,
    dy, dx)`` and the input's translate, so that it lines up with the input in 3D. The
    factor is the layer's ``dz / dx`` when its scale is anisotropic, else the model's, unless
    typed in.
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.result: _jobs.Restored | None = None
        self.image = LayerChoice(napari_viewer, ndim=3)
        self.model = PathEdit(filter="isojax model (config.json *.zip)")
        self.model.edit.setPlaceholderText("a model folder or a .bioimageio.zip")
        self.checkpoint = QComboBox()
        self.checkpoint.addItems(["best", "last"])
        self.fuse = QComboBox()
        self.fuse.addItems(["mean", "geometric", "xz", "yz"])
        self.subsample = float_box(0.0, hi=1000.0, step=0.5)
        self.subsample.setSpecialValueText("from the layer's scale or the model")
        self.button = QPushButton("Restore")
        self.button.clicked.connect(self.run)
        self.progress = QProgressBar()
        self.status = StatusLabel()
        self.relay = Relay()
        self.relay.progressed.connect(self._progressed)
        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("model", self.model)
        form.addRow("checkpoint", self.checkpoint)
        form.addRow("fuse views", self.fuse)
        form.addRow("subsample", self.subsample)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch()

    def _progressed(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def run(self) -> None:
        """Restore in a worker thread, then add the isotropic layer."""
        layer = self.image.layer()
        if layer is None or not self.model.text():
            self.status.error(ValueError("choose a 3D image layer and a model"))
            return
        self._source = layer
        options = dict(model=self.model.text(), scale=tuple(layer.scale),
                       subsample=self.subsample.value() or None,
                       checkpoint=self.checkpoint.currentText(), fuse=self.fuse.currentText(),
                       progress=self.relay.progressed.emit)
        data = layer.data
        self.status.info(f"restoring {layer.name}...")
        self.worker = run_job(lambda: _jobs.restore(data, **options), on_done=self._done,
                              status=self.status, buttons=[self.button])

    def _done(self, result: _jobs.Restored) -> None:
        self.result = result
        source = self._source
        name = f"{source.name} isotropic"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_image(result.volume, name=name, scale=result.scale,
                              translate=tuple(source.translate), colormap=source.colormap.name,
                              blending="additive")
        dz, dy, dx = result.scale
        self.status.info(f"added '{name}': shape {result.volume.shape}, voxel size {dz:.4g} x "
                         f"{dy:.4g} x {dx:.4g} (subsample {result.subsample:.4g})")


class CalibrateWidget(QWidget):
    """Learn the additional axial PSF from the chosen layer (:func:`isojax.calibrate.fit_psf`).

    Adds it as the layer ``calibrated PSF`` (usable by Train) and shows it with its
    profiles and the width's 95% interval; a stack that does not identify the width says so.
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.result: _jobs.CalibrationResult | None = None
        self.image = LayerChoice(napari_viewer, ndim=3)
        self.spacing = SpacingEdit()
        self.spacing.follow(self.image)
        self.family = QComboBox()
        self.family.addItems(["gaussian", "multi-gaussian", "free"])
        self.steps = int_box(40, hi=10000)
        self.button = QPushButton("Calibrate")
        self.button.clicked.connect(self.run)
        self.status = StatusLabel()
        self.figure = FigureView()
        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("voxel size (µm)", self.spacing)
        form.addRow("family", self.family)
        form.addRow("L-BFGS steps", self.steps)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.button)
        layout.addWidget(self.status)
        layout.addWidget(self.figure)
        layout.addStretch()

    def run(self) -> None:
        """Calibrate in a worker thread, then add and show the PSF."""
        layer = self.image.layer()
        if layer is None:
            self.status.error(ValueError("no 3D image layer to calibrate on"))
            return
        data, spacing = layer.data, self.spacing.value()
        family, steps = self.family.currentText(), self.steps.value()
        self.status.info(f"calibrating on {layer.name}...")
        self.worker = run_job(
            lambda: _jobs.calibrate(data, spacing=spacing, family=family, steps=steps),
            on_done=self._done, status=self.status, buttons=[self.button])

    def _done(self, result: _jobs.CalibrationResult) -> None:
        from isojax.plot import psf_figure

        self.result = result
        add_psf_layer(self.viewer, result.psf, name="calibrated PSF")
        self.figure.show_figure(psf_figure(result.psf.dense(), pixel_size=result.psf.pixel_size,
                                           title="Self-calibrated additional axial PSF"))
        warnings = "".join(f"\nwarning: {w}" for w in result.report.warnings)
        self.status.info(result.message + warnings)
