"""The Train widget: ``isojax train`` on a layer, in a worker thread, with a live loss plot."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
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
    int_box,
    run_job,
)
from napari_isojax._figures import FigureView
from napari_isojax._psf_widget import PSF_KEY

__all__ = ["TrainWidget"]

FILE = "a PSF file"


class TrainWidget(QWidget):
    """Train a model folder on the chosen image layer (:func:`isojax.train.train`).

    The PSF is a PSF layer (one made by the Axial PSF or Calibrate widget carries its
    checked PSF; any other 2D layer is checked here) or a PSF file. Training runs in a
    worker thread, so the viewer stays responsive; the progress bar and the loss plot
    follow the folder's ``metrics.jsonl``. Cancel stops after the current step and saves
    the ``last`` checkpoint there (``resume`` continues it).
    """

    POLL_MS = 300

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.result: _jobs.TrainResult | None = None
        self._stop = threading.Event()
        self._records: list[dict] = []
        self._drawn_at = 0.0

        self.image = LayerChoice(napari_viewer, ndim=3)
        self.spacing = SpacingEdit()
        self.spacing.follow(self.image)
        self.psf_layer = QComboBox()
        self.psf_file = PathEdit(filter="TIFF (*.tif *.tiff)")
        self.model = PathEdit(folder=True)
        self.steps = int_box(2000, hi=10**6, step=100)
        self.batch = int_box(16, hi=1024)
        self.patch = int_box(128, lo=4, hi=4096, step=4)
        self.filters = int_box(32, hi=512)
        self.checkpoint_every = int_box(100, hi=10**6)
        self.resume = QCheckBox("continue the folder's training")
        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.train_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setFormat("step %v of %m")
        self.status = StatusLabel()
        self.relay = Relay()  # train()'s messages (noise estimate, time estimate) to the status
        self.relay.said.connect(self.status.info)
        self.loss = FigureView()
        self.timer = QTimer(self)
        self.timer.setInterval(self.POLL_MS)
        self.timer.timeout.connect(self.poll)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_psf_layers)
        self._refresh_psf_layers()

        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("voxel size (µm)", self.spacing)
        form.addRow("PSF", self.psf_layer)
        form.addRow("PSF file", self.psf_file)
        form.addRow("model folder", self.model)
        form.addRow("steps", self.steps)
        form.addRow("batch size", self.batch)
        form.addRow("patch size (px)", self.patch)
        form.addRow("first filters", self.filters)
        form.addRow("checkpoint every", self.checkpoint_every)
        form.addRow(self.resume)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.loss)
        layout.addStretch()

    def _refresh_psf_layers(self, *_) -> None:
        from napari.layers import Image

        current = self.psf_layer.currentText()
        names = [la.name for la in self.viewer.layers if isinstance(la, Image) and la.ndim == 2
                 and not la.rgb]
        self.psf_layer.clear()
        self.psf_layer.addItems([*names, FILE])
        # a PSF made by this plugin first, else what was chosen
        made = [n for n in names if PSF_KEY in self.viewer.layers[n].metadata]
        self.psf_layer.setCurrentText(current if current in names else
                                      (made[-1] if made else (names[0] if names else FILE)))

    def _psf(self, pixel_size: float):
        from isojax.psf import AxialPSF

        choice = self.psf_layer.currentText()
        if choice == FILE:
            if not self.psf_file.text():
                raise ValueError("choose a PSF layer or a PSF file")
            return _jobs.psf_from_file(self.psf_file.text(), pixel_size=pixel_size)
        layer = self.viewer.layers[choice]
        psf = layer.metadata.get(PSF_KEY)
        if isinstance(psf, AxialPSF):
            return psf
        return _jobs.psf_from_array(layer.data, pixel_size=float(layer.scale[-1]), name=choice)

    def run(self) -> None:
        """Start training in a worker thread."""
        from isojax.errors import IsojaxInputError

        layer = self.image.layer()
        try:
            if layer is None:
                raise ValueError("no 3D image layer to train on")
            if not self.model.text():
                raise ValueError("choose a model folder")
            spacing = self.spacing.value()
            psf = self._psf(spacing[2])
        except (ValueError, IsojaxInputError, OSError) as exc:
            self.status.error(exc)
            return
        self._stop.clear()
        self._records = []
        self.progress.setRange(0, self.steps.value())
        self.progress.setValue(0)
        options = dict(workdir=Path(self.model.text()), spacing=spacing,
                       steps=self.steps.value(), batch_size=self.batch.value(),
                       patch_size=self.patch.value(), first_filters=self.filters.value(),
                       checkpoint_every=self.checkpoint_every.value(),
                       val_every=self.checkpoint_every.value(), resume=self.resume.isChecked(),
                       should_stop=self._stop.is_set, log=self.relay.said.emit)
        data = layer.data
        self.status.info(f"training on {layer.name} (compiling first)...")
        self.cancel_button.setEnabled(True)
        self.timer.start()
        self.worker = run_job(lambda: _jobs.train_model(data, psf, **options),
                              on_done=self._done, status=self.status,
                              buttons=[self.train_button], on_end=self._ended)

    def cancel(self) -> None:
        """Stop after the current step; the ``last`` checkpoint keeps it."""
        self._stop.set()
        self.status.info("stopping after this step...")

    def poll(self) -> None:
        """Follow ``metrics.jsonl``: the progress bar, and the loss plot about once a second."""
        from isojax.model_folder import read_metrics
        from isojax.plot import loss_figure

        path = Path(self.model.text()) / "metrics.jsonl"
        records = read_metrics(path)
        if len(records) == len(self._records):
            return
        self._records = records
        self.progress.setValue(int(records[-1].get("step", 0)))
        if time.monotonic() - self._drawn_at > 1.0:
            self.loss.show_figure(loss_figure(records))
            self._drawn_at = time.monotonic()

    def _done(self, result: _jobs.TrainResult) -> None:
        self.result = result
        self.status.info(("cancelled: " if result.cancelled else "") + result.message)

    def _ended(self) -> None:
        self.timer.stop()
        self._drawn_at = 0.0
        self._records = []
        self.poll()  # the final records and plot
        self.cancel_button.setEnabled(False)
