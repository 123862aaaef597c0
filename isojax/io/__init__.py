"""File input and output with voxel sizes: the stateful edge of isojax.

Volumes are arrays with axes ``(z, y, x)`` and voxel sizes ``spacing = (dz, dy, dx)`` in
micrometres. The package has four modules, each re-exported here so that ``isojax.io.X``
works for every name they define:

* :mod:`isojax.io.tiff`: reading TIFF files and their voxel sizes (ImageJ, OME-XML), writing
  ImageJ TIFFs;
* :mod:`isojax.io.omezarr`: OME-Zarr 0.5 metadata and Zarr v3 volumes (tensorstore);
* :mod:`isojax.io.volumes`: volumes larger than memory, read and written by regions
  (:func:`open_volume`, :func:`create_volume`), and whole OME-Zarr images;
* :mod:`isojax.io.hyperstack`: time-lapses with channels (ImageJ hyperstacks, OME-TIFF,
  OME-Zarr ``t c z y x``) read one volume at a time; :mod:`isojax.io.hyperstack_write`:
  written as a ``TZCYX`` ImageJ TIFF or a ``t c z y x`` OME-Zarr;
* :mod:`isojax.io.outputs`: the one output rule (:func:`check_outputs`), atomic and staged
  writes, stale partials.

Writes are atomic: a temporary file in the destination folder is renamed over the target
only once it is complete, so a failed write leaves nothing behind.
"""

from isojax.errors import IsojaxInputError
from isojax.io.hyperstack import (
    HYPERSTACK_AXES,
    Hyperstack,
    hyperstack_axes,
    open_hyperstack,
    parse_channels,
    parse_timepoints,
    read_hyperstack,
    spread_timepoints,
    unit_to_seconds,
)
from isojax.io.hyperstack_write import (
    HyperstackZarr,
    create_hyperstack_zarr,
    write_hyperstack_tiff,
)
from isojax.io.omezarr import NGFF_VERSION, ZarrVolume, ome_zarr_attributes, ome_zarr_spacing
from isojax.io.outputs import (  # noqa: F401 (predict.large, the tests)
    _host,
    _partial_tag,
    atomic_write,
    check_new_output,
    check_outputs,
    check_writable,
    remove_stale_partials,
    staged_output,
)
from isojax.io.tiff import (
    _tifffile_log,  # noqa: F401 (predict.files)
    read_tiff,
    require_spacing,
    tiff_description,
    unit_to_um,
    write_tiff,
)
from isojax.io.volumes import (
    TiffVolume,
    create_volume,
    open_volume,
    read_ome_zarr,
    volume_format,
    write_ome_zarr,
)

__all__ = [
    "HYPERSTACK_AXES",
    "NGFF_VERSION",
    "Hyperstack",
    "HyperstackZarr",
    "IsojaxInputError",
    "TiffVolume",
    "ZarrVolume",
    "atomic_write",
    "check_new_output",
    "check_outputs",
    "check_writable",
    "create_hyperstack_zarr",
    "create_volume",
    "hyperstack_axes",
    "ome_zarr_attributes",
    "ome_zarr_spacing",
    "open_hyperstack",
    "open_volume",
    "parse_channels",
    "parse_timepoints",
    "read_hyperstack",
    "read_ome_zarr",
    "read_tiff",
    "remove_stale_partials",
    "require_spacing",
    "spread_timepoints",
    "staged_output",
    "tiff_description",
    "unit_to_seconds",
    "unit_to_um",
    "volume_format",
    "write_hyperstack_tiff",
    "write_ome_zarr",
    "write_tiff",
]
