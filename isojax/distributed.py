"""Multi-host set-up: join a JAX multi-controller job, and which process writes what.

isojax uses JAX's own engine for multi-host work (the "multi-controller" model of
https://docs.jax.dev/en/latest/multi_process.html): every host runs the same program,
``jax.distributed.initialize`` connects them, ``jax.devices()`` then lists the devices of
all hosts, and a jitted step over arrays sharded on a mesh of all devices runs on all of
them, with XLA's collectives (NCCL on GPUs, gloo on CPUs) reducing the gradients.

How the hosts find each other, in this order:

1. explicit arguments (the CLI's ``--coordinator``, ``--num-processes``, ``--process-id``);
2. the environment: ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
   ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``;
3. JAX's cluster auto-detection (SLURM, Open MPI, Kubernetes, Cloud TPU, ...).

Faults. A host that dies stops sending heartbeats to the coordination service; after
``host_timeout`` seconds every other process is terminated by JAX with the message
"Terminating process because the JAX distributed service detected fatal errors. This most
likely indicates that another task died", instead of waiting forever in a collective.
Checkpoints written before the failure stay readable (orbax writes each one to a temporary
folder and renames it when complete); restart all processes with ``--resume``.

Only process 0 writes logs, metrics and output files (:func:`is_main_process`); every
process takes part in checkpoint saves and restores, which orbax coordinates. The model
folder must therefore be on a file system that all hosts see.
"""

from __future__ import annotations

import os

import jax

from isojax.errors import IsojaxInputError

__all__ = ["barrier", "initialize", "is_main_process", "process_count"]

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_COUNT = "JAX_NUM_PROCESSES"
ENV_ID = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise IsojaxInputError(f"environment variable {name}={text!r} is not a whole number.") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    host_timeout: int = 60,
    connect_timeout: int = 300,
) -> None:
    """Join (or start, as process 0) a multi-host job. Call it before any JAX computation.

    Arguments left as None are read from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``, then from JAX's cluster auto-detection. Calling it again in a
    process that already joined does nothing.

    Args:
      coordinator_address: ``host:port`` where process 0 listens (every process passes the
        same address).
      num_processes: number of processes (hosts) in the job.
      process_id: this process's rank, ``0 <= process_id < num_processes``.
      host_timeout: seconds without a heartbeat after which a host counts as dead and the
        other processes stop with an error.
      connect_timeout: seconds to wait for all processes to join.

    Raises:
      IsojaxInputError: inconsistent or missing settings, or JAX already started
        computing in this process; the message says what to pass.
    """
    if jax.distributed.is_initialized():
        return
    address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
    count = num_processes if num_processes is not None else _env_int(ENV_COUNT)
    rank = process_id if process_id is not None else _env_int(ENV_ID)
    if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
        raise IsojaxInputError(
            f"coordinator address {address!r} must be host:port (process 0's host), e.g. "
            "10.0.0.1:12345."
        )
    if count is not None and count < 1:
        raise IsojaxInputError(f"the number of processes must be >= 1, got {count}.")
    if count is not None and rank is not None and not 0 <= rank < count:
        raise IsojaxInputError(
            f"process id {rank} is outside 0..{count - 1} for {count} processes; give each "
            "process a distinct id from 0 to N-1."
        )
    for name, value in (("host_timeout", host_timeout), ("connect_timeout", connect_timeout)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise IsojaxInputError(f"{name} must be a whole number of seconds >= 1, got {value!r}.")
    try:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=count,
            process_id=rank,
            initialization_timeout=connect_timeout,
            heartbeat_timeout_seconds=host_timeout,
        )
    except ValueError as exc:  # nothing given and no cluster detected
        raise IsojaxInputError(
            f"cannot start multi-host training ({exc}): pass --coordinator HOST:PORT "
            "--num-processes N --process-id I (or set JAX_COORDINATOR_ADDRESS, "
            "JAX_NUM_PROCESSES, JAX_PROCESS_ID), or run under a cluster JAX detects "
            "(SLURM, Open MPI, ...)."
        ) from None
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        if "before" in text and "computation" in text:
            raise IsojaxInputError(
                "JAX already ran a computation in this process; call "
                "isojax.distributed.initialize() first thing, before any other JAX work."
            ) from None
        raise IsojaxInputError(
            f"could not join the multi-host job at {address or '(auto-detected)'} within "
            f"{connect_timeout} s: {text}. Check that every process was started with the "
            "same coordinator address and process count, and that the port is reachable."
        ) from None


def process_count() -> int:
    """Number of processes (hosts) in the job; 1 without :func:`initialize`.

    Returns:
      ``jax.process_count()``.
    """
    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0, the one that writes logs, metrics and output files.

    Returns:
      Whether this process is process 0.
    """
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op on one process).

    Args:
      name: the barrier's name, the same on every process.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
