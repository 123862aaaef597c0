"""Pieces every widget uses: layer choosers, voxel-size fields, a job in a worker thread."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

__all__ = ["LayerChoice", "PathEdit", "SpacingEdit", "StatusLabel", "float_box", "int_box",
           "run_job"]


def float_box(value: float, *, lo: float = 0.0, hi: float = 1e6, decimals: int = 4,
              step: float = 0.1) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def int_box(value: int, *, lo: int = 1, hi: int = 10**7, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box


class LayerChoice(QComboBox):
    """The viewer's image layers (those of ``ndim`` dimensions), kept up to date."""

    def __init__(self, viewer, *, ndim: int | None = 3, parent=None):
        super().__init__(parent)
        self.viewer, self.ndim = viewer, ndim
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed,
                      viewer.layers.events.reordered):
            event.connect(self.refresh)
        self.refresh()

    def _layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)
                and not layer.rgb and (self.ndim is None or layer.ndim == self.ndim)]

    def refresh(self, *_) -> None:
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        self.addItems([layer.name for layer in self._layers()])
        if current:
            self.setCurrentText(current)
        self.blockSignals(False)
        self.currentTextChanged.emit(self.currentText())

    def layer(self):
        """The chosen layer, or None."""
        name = self.currentText()
        return next((la for la in self._layers() if la.name == name), None)


class SpacingEdit(QWidget):
    """The voxel size ``(dz, dy, dx)`` in micrometres: typed in, or read from a layer's scale."""

    def __init__(self, parent=None):
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.boxes = [float_box(v, lo=1e-6, decimals=5, step=0.01) for v in (1.0, 1.0, 1.0)]
        for name, box in zip(("dz", "dy", "dx"), self.boxes, strict=True):
            box.setToolTip(f"{name} in micrometres")
            row.addWidget(box)

    def value(self) -> tuple[float, float, float]:
        dz, dy, dx = (b.value() for b in self.boxes)
        return dz, dy, dx

    def set_value(self, spacing) -> None:
        for box, v in zip(self.boxes, spacing, strict=True):
            box.setValue(float(v))

    def follow(self, choice: LayerChoice) -> None:
        """Fill in the chosen layer's scale whenever the choice changes."""

        def update(*_):
            layer = choice.layer()
            if layer is not None and len(layer.scale) == 3:
                self.set_value(layer.scale)

        choice.currentTextChanged.connect(update)
        update()


class PathEdit(QWidget):
    """A path typed in or chosen with a dialog (a file, or with ``folder`` a folder)."""

    def __init__(self, *, folder: bool = False, save: bool = False, filter: str = "",
                 parent=None):
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.edit = QLineEdit()
        button = QPushButton("...")
        button.setMaximumWidth(30)
        row.addWidget(self.edit)
        row.addWidget(button)
        self.folder, self.save, self.filter = folder, save, filter
        button.clicked.connect(self._choose)

    def _choose(self) -> None:
        if self.folder:
            path = QFileDialog.getExistingDirectory(self, "Choose a folder")
        elif self.save:
            path, _ = QFileDialog.getSaveFileName(self, "Save as", filter=self.filter)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Open", filter=self.filter)
        if path:
            self.edit.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:
        self.edit.setText(str(text))


class StatusLabel(QLabel):
    """One line (or a few) saying what the widget is doing or what went wrong."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWordWrap(True)

    def error(self, exc: BaseException) -> None:
        self.setText(f"error: {exc}")
        self.setStyleSheet("color: #e55")

    def info(self, text: str) -> None:
        self.setText(text)
        self.setStyleSheet("")


class Relay(QObject):
    """Carries a job's progress ``(done, total)`` and its messages from a worker thread to
    the main thread (queued signals)."""

    progressed = Signal(int, int)
    said = Signal(str)


def run_job(func: Callable, *, on_done: Callable, status: StatusLabel,
            buttons=(), on_end: Callable | None = None):
    """Run ``func()`` in a worker thread: ``on_done(result)`` in the main thread,
    an error shown in ``status``; ``buttons`` are disabled meanwhile.

    superqt's worker, which napari's wraps: napari's wrapper (0.9.2) also reports the task in the
    viewer's status, and its ``errored`` handler there raises a TypeError of its own.

    Returns:
      The started worker; its ``ended`` attribute turns True in the main thread once
      ``on_done`` (or the error) and the end of the job have been handled.
    """
    from superqt.utils import create_worker

    for b in buttons:
        b.setEnabled(False)

    def end():
        for b in buttons:
            b.setEnabled(True)
        if on_end is not None:
            on_end()
        worker.ended = True

    # errors go to the status line (connected here, so the worker does not re-raise them)
    worker = create_worker(func, _start_thread=False,
                           _connect={"returned": on_done, "errored": status.error,
                                     "finished": end})
    worker.ended = False  # True once the main thread has handled its end (after on_done)
    worker.start()
    return worker
