"""Mesh and multi-host helpers (`jax.jit` + `NamedSharding` on a `Mesh`; no `pmap`).

The same code runs on one device, on the 8 devices of one host, and on several hosts started with
`jax.distributed` (a TPU pod slice, several GPU hosts, or several CPU processes on localhost):

    lj.sharding.initialize_distributed()          # no-op on a single process
    mesh = lj.make_mesh()                         # every device of every process, axis "points"
    res = lj.surface_grid(metric_fn, params, dirs, xs, ys, store=path,
                          engine=lj.EngineOptions(mesh=mesh))

Every process must call the same functions with the same arguments (the same checkpoint and the
same direction seed); each device evaluates its share of every chunk, results are gathered, and
only the main process (`is_main_process`) writes files.

**Mesh roles.** The axes of a mesh play up to three roles (docs/scaling.md):

* ``points``: the points of a chunk are split over this axis (every device group evaluates its
  own points; the 1-D mesh of `make_mesh()`);
* ``data``: each point's evaluation split is spread over this axis (`make_metric_fn(...,
  mesh=mesh)` places it); the per-example sums are reduced across it by XLA, then divided, so
  every metric stays the exact ratio of sums over the split;
* ``model``: the parameters (centre, directions, curve bends, Lanczos vectors) are sharded over
  this axis (FSDP: `fsdp_spec`), and XLA's GSPMD partitioner inserts the gathers.

``make_mesh(points=2, data=2, model=2)`` builds a mesh whose axes are named after their roles;
any role may be absent. A mesh with other axis names is given roles with
``MeshRoles(mesh, points="x", model="fsdp")``, accepted wherever ``mesh=`` is. A 1-D mesh whose
axis is not a role name plays ``points`` (as before roles existed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any


ROLES = ("points", "data", "model")


def make_mesh(num_devices: int | None = None, *, axis: str = "points", devices=None,
              points: int | None = None, data: int | None = None,
              model: int | None = None) -> Mesh:
  """A `Mesh` over the first `num_devices` devices (default: all devices of all processes).

  Without role sizes: a 1-D mesh with one axis, `axis`, over which grid points are sharded (the
  behaviour before mesh roles). With role sizes (``points``, ``data``, ``model``; a role left
  None is absent): a mesh with one axis per given role, named after it, in the order points,
  data, model (the model axis varies fastest, so its devices are neighbours, which suits its
  frequent all-gathers on a TPU torus). ``-1`` for one role takes what the others leave.

  Examples: ``make_mesh(points=8)`` (every device evaluates its own points, the model
  replicated), ``make_mesh(model=8)`` (one point at a time, parameters sharded 8 ways),
  ``make_mesh(points=2, data=2, model=2)``.

  Args:
    num_devices: how many devices to use (default all; with roles, the product of their sizes).
      Must not exceed ``len(devices)``.
    axis: the axis name of the 1-D mesh (ignored with role sizes).
    devices: explicit device list (default ``jax.devices()``).
    points, data, model: the size of each role's axis.

  Raises:
    ValueError: more devices asked for than there are, or sizes that do not multiply to the
      device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = {r: s for r, s in (("points", points), ("data", data), ("model", model))
           if s is not None}
  if sizes:
    return _role_mesh(sizes, num_devices, devices)
  n = len(devices) if num_devices is None else int(num_devices)
  if not 1 <= n <= len(devices):
    raise ValueError(f"num_devices must be in [1, {len(devices)}] (the available devices), got "
                     f"{num_devices}. On CPU, simulate more devices with XLA_FLAGS="
                     "--xla_force_host_platform_device_count=8 before importing jax.")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError("In a multi-process run the mesh must span every device of every process; "
                     "leave num_devices=None.")
  return Mesh(np.asarray(devices[:n]), (axis,))


def _role_mesh(sizes: dict[str, int], num_devices, devices) -> Mesh:
  sizes = {r: int(s) for r, s in sizes.items()}
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f"Mesh role sizes must be positive (or -1 for the rest), got {sizes}.")
  total = len(devices) if num_devices is None else int(num_devices)
  free = [r for r, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"Only one mesh role may have size -1, got {sizes}.")
  known = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if total % known:
      raise ValueError(f"{total} devices cannot be split as {sizes}: {known} does not divide it.")
    sizes[free[0]] = total // known
  n = math.prod(sizes.values())
  if n > len(devices):
    raise ValueError(f"The mesh {sizes} needs {n} devices but {len(devices)} are available. On "
                     "CPU, simulate more devices with XLA_FLAGS="
                     "--xla_force_host_platform_device_count=8 before importing jax.")
  if num_devices is not None and n != int(num_devices):
    raise ValueError(f"The role sizes {sizes} multiply to {n}, not num_devices={num_devices}.")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError("In a multi-process run the mesh must span every device of every process; "
                     f"the role sizes {sizes} use {n} of {len(devices)}.")
  return Mesh(np.asarray(devices[:n]).reshape(tuple(sizes.values())), tuple(sizes))


@dataclasses.dataclass(frozen=True)
class MeshRoles:
  """A `Mesh` and the axis that plays each role (None: the role is absent).

  Pass it wherever ``mesh=`` is accepted to give roles to a mesh whose axes are not named
  ``points`` / ``data`` / ``model``: ``MeshRoles(mesh, points="x", model="fsdp")``. Axes that
  play no role must have size 1.

  Attributes:
    mesh: the `jax.sharding.Mesh`.
    points: the axis over which the points of a chunk are split.
    data: the axis over which each point's evaluation split is spread.
    model: the axis over which the parameters are sharded.
  """

  mesh: Mesh
  points: str | None = None
  data: str | None = None
  model: str | None = None

  def __post_init__(self):
    names = self.mesh.axis_names
    used = [a for a in (self.points, self.data, self.model) if a is not None]
    for a in used:
      if a not in names:
        raise ValueError(f"Mesh role axis {a!r} is not an axis of the mesh {names}.")
    if len(set(used)) != len(used):
      raise ValueError(f"Each mesh axis plays at most one role; got points={self.points!r}, "
                       f"data={self.data!r}, model={self.model!r}.")
    for a in names:
      if a not in used and self.mesh.shape[a] != 1:
        raise ValueError(f"Mesh axis {a!r} (size {self.mesh.shape[a]}) plays no role; name it "
                         "points, data or model, or give it with MeshRoles(mesh, points=..., "
                         "data=..., model=...).")

  def size(self, role: str) -> int:
    """The number of devices along `role`'s axis (1 if the role is absent)."""
    axis = getattr(self, role)
    return 1 if axis is None else int(self.mesh.shape[axis])

  @property
  def only_points(self) -> bool:
    """True for a mesh whose devices all split points (the 1-D mesh of `make_mesh()`)."""
    return self.size("points") == self.mesh.devices.size


def mesh_roles(mesh: Mesh | MeshRoles | None) -> MeshRoles | None:
  """The roles of a mesh's axes: by name (``points``, ``data``, ``model``), a 1-D mesh with
  another axis name plays ``points``, and a `MeshRoles` is returned as it is."""
  if mesh is None or isinstance(mesh, MeshRoles):
    return mesh
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh or a MeshRoles, got {type(mesh).__name__}.")
  names = mesh.axis_names
  if len(names) == 1 and names[0] not in ROLES:
    return MeshRoles(mesh, points=names[0])
  unknown = [a for a in names if a not in ROLES and mesh.shape[a] != 1]
  if unknown:
    raise ValueError(f"Mesh axes {unknown} are not roles; name the axes points, data and model "
                     "(lj.make_mesh(points=..., data=..., model=...)) or pass "
                     "MeshRoles(mesh, points=..., data=..., model=...).")
  return MeshRoles(mesh, **{r: r for r in ROLES if r in names})


def as_mesh(mesh: Mesh | MeshRoles | None) -> Mesh | None:
  """The `Mesh` of a mesh or a `MeshRoles`."""
  return mesh.mesh if isinstance(mesh, MeshRoles) else mesh


# ------------------------------------------------------------------------------ parameters


def fsdp_spec(shape: tuple[int, ...], axis: str | None, size: int) -> P:
  """The FSDP `PartitionSpec` of one leaf: its largest axis that `size` divides, over `axis`.

  Ties go to the earliest such axis. A leaf with no axis divisible by `size` (a scalar, a small
  bias) is replicated, ``P()``; so is every leaf when ``size == 1``. This is the rule of
  fully-sharded data parallelism (ZeRO-3, Rajbhandari et al. 2020): every device holds
  ``1 / size`` of each large leaf and gathers a leaf when it is used.

  References:
    Rajbhandari, Rasley, Ruwase and He 2020, "ZeRO: Memory Optimizations Toward Training
    Trillion Parameter Models".
  """
  if axis is None or size <= 1:
    return P()
  best = None
  for i, d in enumerate(shape):
    if d % size == 0 and d >= size and (best is None or d > shape[best]):
      best = i
  if best is None:
    return P()
  return P(*([None] * best + [axis]))


def _on_mesh(x, mesh: Mesh) -> bool:
  s = getattr(x, "sharding", None)
  return isinstance(s, NamedSharding) and s.mesh.shape_tuple == mesh.shape_tuple and (
    s.mesh.devices.shape == mesh.devices.shape and bool(np.all(s.mesh.devices == mesh.devices)))


def param_shardings(params: PyTree, mesh: Mesh | MeshRoles) -> PyTree:
  """The `NamedSharding` of every leaf of `params` on `mesh` (kept or by the FSDP rule).

  A leaf already placed with a `NamedSharding` on this mesh (the user's own, or from linen's
  ``nn.with_partitioning`` metadata) keeps it; every other leaf is sharded over the model axis by
  `fsdp_spec` and replicated over the other axes.
  """
  roles = mesh_roles(mesh)
  size = roles.size("model")

  def one(x):
    if _on_mesh(x, roles.mesh):
      return x.sharding
    return NamedSharding(roles.mesh, fsdp_spec(tuple(np.shape(x)), roles.model, size))
  return jax.tree.map(one, params)


def shard_params(params: PyTree, mesh: Mesh | MeshRoles) -> PyTree:
  """`params` placed on `mesh` with `param_shardings` (placed leaves are left as they are).

  Every process passes the same values (a multi-host run builds each global array from them).
  """
  shardings = param_shardings(params, mesh)
  return jax.tree.map(lambda x, s: put(x, s) if hasattr(x, "shape") else x, params,
                      shardings)


def place(tree: PyTree, mesh: Mesh | MeshRoles, *, shard_model: bool = False) -> PyTree:
  """Every array leaf of `tree` on `mesh`: leaves already on this mesh keep their sharding, the
  others are replicated (``shard_model=False``) or sharded by the FSDP rule (`param_shardings`)."""
  roles = mesh_roles(mesh)
  if shard_model and roles.model is not None:
    return shard_params(tree, roles)
  rep = NamedSharding(roles.mesh, P())
  return jax.tree.map(
    lambda x: x if _on_mesh(x, roles.mesh) or not hasattr(x, "shape") else put(x, rep),
    tree)


def sharded_like(fn: Callable, like: PyTree) -> Callable:
  """`fn` jitted so that its outputs, pytrees like `like`, have the shardings of `like`.

  For direction builders: a random or normalised direction of sharded parameters is created
  shard by shard (``jax.jit(fn, out_shardings=...)``), never gathered on one device. With
  ``jax_threefry_partitionable`` (the default) the random values do not depend on the sharding.
  `fn` is returned unchanged when no leaf of `like` is split over several devices (replicated
  leaves included: op by op, their values are bit-identical to one device's, which a program
  compiled for the whole mesh does not promise).
  """
  leaves = jax.tree.leaves(like)
  shardings = [getattr(x, "sharding", None) for x in leaves]
  if not any(isinstance(s, NamedSharding) and s.mesh.devices.size > 1
             and not s.is_fully_replicated for s in shardings):
    return fn
  return jax.jit(fn, out_shardings=jax.tree.map(lambda x: x.sharding, like))


def memory_per_device(compiled) -> dict[str, int]:
  """Per-device bytes of a compiled program (``jax.jit(f).lower(...).compile()``), from XLA's
  memory analysis: ``arguments``, ``outputs``, ``temporaries``, ``total`` (all three, less the
  aliased bytes). Raises RuntimeError where the backend gives no memory analysis."""
  mem = compiled.memory_analysis()
  if mem is None:
    raise RuntimeError("This backend gives no memory analysis of compiled programs.")
  out = {"arguments": int(mem.argument_size_in_bytes), "outputs": int(mem.output_size_in_bytes),
         "temporaries": int(mem.temp_size_in_bytes), "aliased": int(mem.alias_size_in_bytes)}
  out["total"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
  return out


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


def put(x, sharding: NamedSharding):
  """Puts a host value that is identical on every process into a (possibly global) sharding
  (`jax.device_put` on one process; built shard by shard from the host value across processes).
  """
  if isinstance(x, jax.Array) and x.sharding == sharding:
    return x
  if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Every array leaf replicated on every device of `mesh` (all processes pass the same values)."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: put(x, sharding) if hasattr(x, "shape") else x, tree)


def shard_leading(x, mesh: Mesh, axis: str | None = None):
  """Shards the leading axis of a host array over the mesh axis (length divisible by its size)."""
  axis = mesh.axis_names[0] if axis is None else axis
  return put(x, NamedSharding(mesh, P(axis)))


def to_host(x) -> np.ndarray:
  """A global array as a numpy array on every process (all-gather across processes if needed)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def spans_devices(tree: PyTree) -> bool:
  """Whether a leaf of `tree` is a `jax.Array` placed on several devices (sharded or replicated
  over a mesh): computations on it are partitioned by GSPMD, so custom calls without a sharding
  rule (oneDNN's) would be gathered and are better left out."""
  return any(isinstance(x, jax.Array) and len(x.sharding.device_set) > 1
             for x in jax.tree.leaves(tree))


_fresh_copy = jax.jit(jnp.copy)


def host_copy(x, dtype=None) -> np.ndarray:
  """One array as a numpy array on the host, leaving no host copy behind on `x`.

  JAX keeps the host value of an array split over several devices on the array itself once it
  was read (``np.asarray(x)`` caches it), so reading every leaf of a sharded model that way would
  leave the whole model on the host for as long as the model lives. Such a leaf is read here
  through a temporary device copy (sharded like `x`), whose cache dies with it: a caller that
  reads one leaf at a time holds one leaf at a time. Other arrays are read as ``np.asarray``.
  """
  if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
    x = _fresh_copy(x) if x.is_fully_addressable else to_host(x)
  return np.asarray(x, dtype)


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
  "ROLES",
  "MeshRoles",
  "as_mesh",
  "broadcast_from_main",
  "fsdp_spec",
  "host_copy",
  "initialize_distributed",
  "is_main_process",
  "make_mesh",
  "memory_per_device",
  "mesh_roles",
  "param_shardings",
  "place",
  "process_share",
  "put",
  "replicate",
  "shard_leading",
  "shard_params",
  "sharded_like",
  "spans_devices",
  "sync",
  "to_host",
]
