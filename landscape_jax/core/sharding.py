"""Mesh and multi-host helpers (`jax.jit` + `NamedSharding` on a `Mesh`; no `pmap`).

The same code runs on one device, on the 8 devices of one host, and on several hosts started with
`jax.distributed` (a TPU pod slice, several GPU hosts, or several CPU processes on localhost):

    lj.sharding.initialize_distributed()          # no-op on a single process
    mesh = lj.make_mesh()                         # every device of every process, axis "points"
    res = lj.surface_grid(metric_fn, params, dirs, xs, ys, mesh=mesh, store=path)

Every process must call the same functions with the same arguments (the same checkpoint and the
same direction seed); each device evaluates its share of every chunk, results are gathered, and
only the main process (`is_main_process`) writes files.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any


def make_mesh(num_devices: int | None = None, *, axis: str = "points", devices=None) -> Mesh:
  """A 1-D `Mesh` over the first `num_devices` devices (default: all devices of all processes).

  Args:
    num_devices: how many devices to use (default all). Must not exceed ``len(devices)``.
    axis: the mesh axis name over which grid points are sharded.
    devices: explicit device list (default ``jax.devices()``).
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices) if num_devices is None else int(num_devices)
  if not 1 <= n <= len(devices):
    raise ValueError(f"num_devices must be in [1, {len(devices)}] (the available devices), got "
                     f"{num_devices}. On CPU, simulate more devices with XLA_FLAGS="
                     "--xla_force_host_platform_device_count=8 before importing jax.")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError("In a multi-process run the mesh must span every device of every process; "
                     "leave num_devices=None.")
  return Mesh(np.asarray(devices[:n]), (axis,))


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           **kwargs) -> None:
  """Starts `jax.distributed` once (safe to call twice; a no-op for a plain single process).

  With no arguments, JAX detects the cluster (TPU pod, SLURM, Open MPI, ...). For processes on
  one machine pass ``coordinator_address="127.0.0.1:PORT"``, ``num_processes`` and ``process_id``.
  Call it before any other JAX call of the program.
  """
  if jax.distributed.is_initialized():
    return
  if coordinator_address is None and num_processes is None and process_id is None and not kwargs:
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError):
      return  # no cluster detected: a single-process run
    return
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id, **kwargs)


def is_main_process() -> bool:
  """True on process 0, the one that writes result files and shows progress bars."""
  return jax.process_index() == 0


def process_share(n: int, *, process_index: int | None = None,
                  process_count: int | None = None) -> slice:
  """The contiguous block of ``range(n)`` that this process owns (sizes differ by at most one)."""
  i = jax.process_index() if process_index is None else process_index
  k = jax.process_count() if process_count is None else process_count
  if not 0 <= i < k:
    raise ValueError(f"process_index {i} out of range for {k} processes.")
  base, extra = divmod(int(n), k)
  start = i * base + min(i, extra)
  return slice(start, start + base + (1 if i < extra else 0))


def _put_global(x, sharding: NamedSharding):
  """Puts a host value that is identical on every process into a (possibly global) sharding."""
  if isinstance(x, jax.Array) and x.sharding == sharding:
    return x
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Every array leaf replicated on every device of `mesh` (all processes pass the same values)."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: _put_global(x, sharding) if hasattr(x, "shape") else x, tree)


def shard_leading(x, mesh: Mesh, axis: str | None = None):
  """Shards the leading axis of a host array over the mesh axis (length divisible by its size)."""
  axis = mesh.axis_names[0] if axis is None else axis
  return _put_global(x, NamedSharding(mesh, P(axis)))


def to_host(x) -> np.ndarray:
  """A global array as a numpy array on every process (all-gather across processes if needed)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def broadcast_from_main(x: np.ndarray) -> np.ndarray:
  """Process 0's value of a host array on every process (identity on a single process)."""
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.broadcast_one_to_all(x))


def sync(name: str) -> None:
  """Barrier across processes (no-op on a single process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


__all__ = [
  "broadcast_from_main",
  "initialize_distributed",
  "is_main_process",
  "make_mesh",
  "process_share",
  "replicate",
  "shard_leading",
  "sync",
  "to_host",
]
