"""Compatibility module: streamed prediction now lives in :mod:`isojax.predict.large`.

``from isojax.predict_large import predict_large`` (and the other names below) keeps
working; new code imports them from :mod:`isojax.predict`.
"""

from isojax.predict.large import (
    DEFAULT_MAX_SAMPLES,
    LargePrediction,
    SlabProgress,
    estimate_percentiles,
    predict_large,
    slab_lines,
)

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "LargePrediction",
    "SlabProgress",
    "estimate_percentiles",
    "predict_large",
    "slab_lines",
]
