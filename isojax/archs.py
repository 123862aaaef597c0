"""The named networks of ``isojax train --arch``: plain data, importable without JAX.

The command line builds its ``--arch`` choices from :data:`ARCHS` when ``isojax.cli`` is
imported; that import must stay light (no Flax), so the presets live here and
:mod:`isojax.unet` (:meth:`~isojax.unet.UNetConfig.from_arch`) re-exports them.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["ARCHS", "ArchName"]

ArchName = Literal["care", "light", "light24"]

#: The named networks (:meth:`isojax.unet.UNetConfig.from_arch`, ``isojax train --arch NAME``): the
#: fields each one sets. ``care`` is CSBDeep's 2D CARE U-Net (Weigert et al. 2018): 5x5
#: kernels, depth 2, 32 filters at full resolution. ``light`` and ``light24`` follow what
#: later restoration U-Nets do (3x3 kernels stacked deeper, as in VGG, Simonyan & Zisserman
#: 2015, and the 3D/2D U-Nets since; one more level for the same reach; fewer filters at
#: full resolution, where most of the work is): 3x3 kernels, depth 3, 16 or 24 filters at
#: full resolution. Their reach (:attr:`isojax.unet.UNetConfig.receptive_radius`) is 51 px against
#: CARE's 43; their work per pixel about 1/6 and 1/3 of CARE's. What each gives is in
#: ``bench/RESULTS.md``, "Network choice".
ARCHS: dict[str, dict[str, int]] = {
    "care": {"depth": 2, "first_filters": 32, "kernel_size": 5},
    "light": {"depth": 3, "first_filters": 16, "kernel_size": 3},
    "light24": {"depth": 3, "first_filters": 24, "kernel_size": 3},
}
