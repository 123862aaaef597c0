"""Data parallelism over the devices of every process, and agreeing on a stop.

With one device nothing moves. With several (GPUs of one node, CPU devices forced with
``JAX_NUM_CPU_DEVICES=N``, or the hosts of a multi-host job, :mod:`isojax.distributed`)
the state is replicated and each batch split over a 1D ``data`` mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from isojax.errors import IsojaxInputError
from isojax.train.steps import PRNG_IMPL

__all__ = ["Placement", "agree_on_stop", "data_parallel"]


class Placement(NamedTuple):
    """How the state and the batches are laid out over the devices of all processes."""

    place_state: Callable  # local state -> state replicated on every device
    place_batch: Callable  # this process's share of a batch -> the global, sharded batch
    local_batch_size: int  # patches this process synthesises per step
    process_index: int
    process_count: int


def data_parallel(batch_size: int) -> Placement:
    """Replicate the state and shard batches over the devices of every process.

    With one device nothing moves. With several (GPUs of one node, or CPU devices forced
    with ``JAX_NUM_CPU_DEVICES=N``) the state is replicated and each batch split over a 1D
    ``data`` mesh (:func:`jax.make_mesh`); the jitted step then runs data-parallel (XLA
    inserts the gradient all-reduce), with the same global batch and so the same loss
    trajectory as on one device, to float tolerance. With several processes
    (:mod:`isojax.distributed`) the mesh spans the devices of all hosts and each process
    synthesises only its share of the batch, which
    :func:`jax.make_array_from_process_local_data` assembles into the global batch.

    Args:
      batch_size: the global batch size (patches per step over all processes).

    Returns:
      The :class:`Placement`.

    Raises:
      IsojaxInputError: the batch size is not a multiple of the number of devices.
    """
    n, nproc, rank = jax.device_count(), jax.process_count(), jax.process_index()
    if n == 1:
        same = lambda tree: tree  # noqa: E731
        return Placement(same, same, batch_size, 0, 1)
    if batch_size % n:
        raise IsojaxInputError(
            f"the batch size ({batch_size}) must be a multiple of the number of devices ({n}"
            + (f" over {nproc} processes" if nproc > 1 else "")
            + ") to split it evenly; change --batch-size."
        )
    mesh = jax.make_mesh((n,), ("data",), (AxisType.Auto,))
    replicated = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec("data"))

    def place_state(tree):
        if nproc == 1:
            return jax.device_put(tree, replicated)
        # every process holds the same local values: assemble them as one replicated array
        # (device_put cannot target devices of other processes)
        def one(x):
            if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=PRNG_IMPL)
            return jax.make_array_from_process_local_data(replicated, x)

        return jax.tree.map(one, tree)

    if nproc == 1:

        def place_batch(tree):
            return jax.device_put(tree, data)

    else:

        def place_batch(tree):
            return jax.tree.map(
                lambda x: jax.make_array_from_process_local_data(data, x), tree
            )

    return Placement(place_state, place_batch, batch_size // nproc, rank, nproc)


def agree_on_stop(signum: int | None) -> int | None:
    """The signal any process received (so that all stop at the same step), or None.

    Args:
      signum: the signal this process received since the last step, or None.

    Returns:
      The largest signal number any process received, or None.
    """
    if jax.process_count() == 1:
        return signum
    got = multihost_utils.process_allgather(np.int32(signum or 0))
    top = int(np.max(np.asarray(got)))
    return top or None
