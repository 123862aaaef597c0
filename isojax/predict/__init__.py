"""Prediction: restore an anisotropic stack into an isotropic one with a trained network.

One story per module:

* :mod:`isojax.predict.core`: the shared core of both predictors: option checks, Z
  upsampling on the physical grid (:func:`upsample_z`), padding and tiling of the XZ/YZ
  slices, batched network runs and the fusion of the two views;
* :mod:`isojax.predict.stack`: whole-stack prediction in memory (:func:`predict_stack`;
  with a probabilistic model's uncertainty map, :func:`predict_stack_uncertainty`:
  :mod:`isojax.predict.uncertainty`);
* :mod:`isojax.predict.large`: streamed prediction of a file too large for memory, slab by
  slab into an OME-Zarr or BigTIFF (:func:`predict_large`);
* :mod:`isojax.predict.series`: time-lapses with channels, time point by time point, also
  spread over the processes of a multi-host job (:mod:`isojax.predict.spread`);
* :mod:`isojax.predict.files`: the file-level policy of ``isojax predict``
  (:func:`isojax.pipeline.predict_file`): whether to stream and its memory model, the tile
  overlap and the ``--tile`` checks, the output cast, the model's subsample check.

The public names are re-exported here: ``from isojax.predict import predict_stack``.
:mod:`isojax.predict_large` remains as a compatibility module.
"""

from isojax.predict.core import DEFAULT_PERCENTILES, upsample_z, upsampled_length
from isojax.predict.large import (
    LargePrediction,
    SlabProgress,
    estimate_percentiles,
    predict_large,
    slab_lines,
)
from isojax.predict.stack import predict_stack, predict_stack_uncertainty

__all__ = [
    "DEFAULT_PERCENTILES",
    "LargePrediction",
    "SlabProgress",
    "estimate_percentiles",
    "predict_large",
    "predict_stack",
    "predict_stack_uncertainty",
    "slab_lines",
    "upsample_z",
    "upsampled_length",
]
