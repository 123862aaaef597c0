"""napari-isojax: isojax's PSF, training, restoration and calibration inside napari.

The widgets call the library functions that isojax's command line calls
(:mod:`napari_isojax._jobs`); isojax itself never imports napari.
"""

from napari_isojax._psf_widget import PSFWidget
from napari_isojax._reader import get_reader, read_model_folder
from napari_isojax._restore_widget import CalibrateWidget, RestoreWidget
from napari_isojax._sample_data import demo_sample
from napari_isojax._train_widget import TrainWidget

__version__ = "0.1.0"

__all__ = ["CalibrateWidget", "PSFWidget", "RestoreWidget", "TrainWidget", "demo_sample",
           "get_reader", "read_model_folder"]
