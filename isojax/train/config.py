"""Training's settings: :class:`TrainConfig`, frozen and checked on construction.

Pure configuration, as in the Flax examples' ``configs/``: no arrays, no files. The model
folder (:mod:`isojax.model_folder`) stores it as the ``train`` section of ``config.json``
and rebuilds it from there, so every field is a JSON scalar.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

__all__ = ["TrainConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings; frozen and checked on construction.

    Attributes:
      steps: number of optimiser steps, >= 1.
      batch_size: patches per step, >= 1.
      learning_rate: peak Adam learning rate (CSBDeep's default is 4e-4).
      warmup_steps: linear warm-up length; then cosine decay to ``final_lr_fraction``.
      final_lr_fraction: learning rate at the last step, as a fraction of the peak.
      loss: ``"mae"`` (CARE's default), ``"mse"``, or ``"laplace"`` (negative
        log-likelihood of a Laplace distribution; needs a network with ``prob_out``).
      seed: seeds the weights and the data.
      checkpoint_every: save the ``last`` checkpoint every this many steps.
      val_every: evaluate on the validation planes (and keep the ``best`` checkpoint)
        every this many steps.
      val_batches: fixed validation batches per evaluation.
      compute_dtype: ``"float32"``, or ``"bfloat16"`` for mixed precision: the network
        computes in bfloat16 while the weights, the optimiser state, the loss and the
        gradients stay float32 (:func:`isojax.unet.apply_unet`). About 2x faster and half
        the activation memory on GPUs and TPUs; on CPUs without native bfloat16
        convolutions it is slower. Prediction uses the float32 weights.
    """

    steps: int
    batch_size: int = 16
    learning_rate: float = 4e-4
    warmup_steps: int = 100
    final_lr_fraction: float = 0.1
    loss: Literal["mae", "mse", "laplace"] = "mae"
    seed: int = 0
    checkpoint_every: int = 100
    val_every: int = 100
    val_batches: int = 4
    compute_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "val_every", "val_batches"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {v!r}.")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(
                f"warmup_steps must be a whole number >= 0, got {self.warmup_steps!r}."
            )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(
                f"learning_rate must be a positive number, got {self.learning_rate!r}."
            )
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(
                f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction!r}."
            )
        if self.loss not in ("mae", "mse", "laplace"):
            raise ValueError(f"loss must be 'mae', 'mse' or 'laplace', got {self.loss!r}.")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}."
            )

