"""Matplotlib figures of isojax (:mod:`isojax.plot`) inside Qt widgets, and as RGBA images."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

__all__ = ["FigureView", "figure_rgba"]


def figure_rgba(fig) -> np.ndarray:
    """A figure rendered by its Agg canvas as an ``(h, w, 4)`` uint8 array (an RGB layer)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


class FigureView(QWidget):
    """A panel that shows one matplotlib figure at a time (replaced by :meth:`show_figure`)."""

    def __init__(self, parent=None, *, min_height: int = 220):
        super().__init__(parent)
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(0, 0, 0, 0)
        self.setMinimumHeight(min_height)
        self.canvas = None
        self.figure = None

    def show_figure(self, fig) -> None:
        """Show ``fig`` (e.g. :func:`isojax.plot.psf_figure`) in place of the last one."""
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

        if self.canvas is not None:
            self.layout().removeWidget(self.canvas)
            self.canvas.setParent(None)
            self.canvas.deleteLater()
        self.figure = fig
        self.canvas = FigureCanvasQTAgg(fig)  # takes the figure over from its Agg canvas
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.layout().addWidget(self.canvas)
        self.canvas.draw_idle()
