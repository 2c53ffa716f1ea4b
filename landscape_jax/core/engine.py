"""The point-evaluation engine: ``metric_fn(point_fn(c))`` for many coordinates c, resumably.

Every evaluation of many points in parameter space goes through `evaluate_points`: the 1-D and
2-D surfaces of Li et al. 2018 (`surface.surface_grid`, `surface.surface_points`), straight lines
between models (`paths.linear_path`), curves and their planes (`curves.evaluate_curve`,
`curves.evaluate_plane`, Garipov et al. 2018) and the swap paths of Brea et al. 2019
(`permutations.swap_path_metrics`). Each of those only builds a `point_fn` (coordinates ->
parameters) and the coordinates and takes the same ``engine=EngineOptions(...)`` (chunk size,
mesh, map mode, batch size, progress, precision); the engine does the rest, the same way for all
of them:

* **compiled once**: points are evaluated in chunks of a fixed size inside one jitted function, by
  `lax.map` (sequential, low memory; the default on CPU) or `vmap` (batched; the default on
  GPU/TPU); the last chunk is padded, so no chunk recompiles. `metric_fn` and `point_fn` are
  pytree arguments (`jax.tree_util.Partial`), so the data and parameters they hold stay on the
  device as buffers instead of being baked into the program;
* **sharded**: with a 1-D `Mesh`, each chunk's coordinates are split over the mesh axis by
  `jax.shard_map` (every device evaluates its points locally, so custom calls are never
  auto-partitioned) while the functions' arrays are replicated; in a multi-process run
  (`jax.distributed`) every process evaluates its devices' share and process 0 writes. A mesh
  with roles (`sharding.make_mesh(points=, data=, model=)`) is partitioned by XLA's GSPMD: the
  chunk's points are cut into one block per ``points`` index, vmapped with that axis sharded
  over the points axis, and the ``data`` and ``model`` axes follow the inputs' shardings: arrays
  already placed on the mesh (the split by ``make_metric_fn(..., mesh=)``, parameters the user
  sharded) keep their sharding, the
  arrays of `point_fn` that are not are sharded by the FSDP rule (`sharding.fsdp_spec`), and
  every other array is replicated;
* **resumable and exact**: with ``store=directory`` the results are written atomically after every
  chunk (`core.store`, one format for every result). The store records the exact identity
  of what computed it (`core.identity`): a digest of the coordinates, the code and arrays
  of `metric_fn` (its data, labels, BatchNorm statistics) and of `point_fn` (the centre and
  directions, the curve, the endpoints), and the programs JAX traces from both (model code,
  helpers, constants, dtypes). A rerun with the same identity computes only the missing points
  (a finished store: no compilation at all); any difference is refused with a message that lists
  what differs. One process writes a store at a time (`store.lock`: a second writer gets
  `store.StoreBusyError`);
* **precision**: ``EngineOptions(precision=)`` sets the matmul precision of every dot and
  convolution of the compiled evaluator, the model's included (`core.precision`; default None:
  the backend's default, bfloat16 passes on TPU and TF32 on recent GPUs); a store records an
  explicit choice;
* **streamed splits**: a `streaming.StreamedMetric` (``make_metric_fn(..., stream_batches=)``:
  splits kept on the host) is evaluated by the same compiled evaluator, once per data chunk for
  every chunk of points (the chunks double-buffered onto the devices), its sums added on the
  host and divided there;
* **progress**: a tqdm bar with points/s and ETA on the main process (`core.progress`);
* non-finite metric values (far from a minimum) are recorded as they are, never fatal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.tree_util import Partial

from landscape_jax.core import identity as identity_lib
from landscape_jax.core import progress as progress_lib
from landscape_jax.core import sharding as shd
from landscape_jax.core import store as store_lib
from landscape_jax.core import streaming
from landscape_jax.core.precision import check_precision, matmul_precision
from landscape_jax.core.trees import as_partial

PyTree = Any
MAP_MODES = ("map", "vmap")
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineOptions:
  """How the point-evaluation engine computes: one frozen, validated object for every function
  that evaluates points (`evaluate_points`, `surface_grid`, `surface_points`, `linear_path`,
  `evaluate_curve`, `evaluate_plane`, `swap_path_metrics`, `adaptive_surface`, `adaptive_path`),
  all of which take it as ``engine=EngineOptions(...)`` (default: ``EngineOptions()``;
  ``EngineOptions(progress=False)`` for the short swap paths).

  What a result is and where it is kept (``store``, ``metadata``, ``identity``) stays with each
  call; these options only say how it is computed, so one object serves many calls
  (``dataclasses.replace(options, chunk_size=64)`` derives another). None of them changes a
  result's numbers except `precision` (recorded in a store when given).

  Example::

    engine = lj.EngineOptions(mesh=lj.make_mesh(), chunk_size=64, progress=False)
    res = lj.surface_grid(metric_fn, params, (d1, d2), xs, ys, engine=engine)
    line = lj.linear_path(metric_fn, a, b, alphas, engine=engine)

  Attributes:
    chunk_size: points per compiled call (a positive multiple of the mesh's points size); default
      None: from the device's memory (`auto_chunk_size`).
    mesh: a `Mesh` (`sharding.make_mesh`) or `sharding.MeshRoles`: a 1-D mesh splits the chunks'
      points over its axis; a mesh with roles splits them over its ``points`` axis, each point's
      split over its ``data`` axis and the parameters over its ``model`` axis. None: one device.
    map_mode: ``"map"`` (`lax.map`: sequential, low memory), ``"vmap"`` (batched), or ``"auto"``
      (time one chunk of each with `benchmark_map_modes` and keep the faster); default None:
      `default_map_mode()` (``"map"`` on CPU, ``"vmap"`` on GPU/TPU).
    batch_size: `lax.map` batch size (points vmapped together inside the sequential map); only
      with ``map_mode="map"`` (or None on CPU, where it is the default).
    progress: show a tqdm bar (points/s and ETA) on the main process.
    precision: matmul precision of every dot and convolution of the evaluation, the model's
      included (`core.precision`): None (default: the backend's default; bfloat16 passes on TPU,
      TF32 on recent GPUs), ``"default"``, ``"high"``, ``"highest"`` (full float32 everywhere),
      or a `jax.lax.Precision` (kept by its lower-case name). The CPU computes the same numbers at
      every setting.

  Raises:
    ValueError, TypeError: on creation, an option of the wrong kind or value (the message names
      it and says what to pass).
  """

  chunk_size: int | None = None
  mesh: Mesh | shd.MeshRoles | None = None
  map_mode: str | None = None
  batch_size: int | None = None
  progress: bool = True
  precision: str | jax.lax.Precision | None = None

  def __post_init__(self):
    for name in ("chunk_size", "batch_size"):
      v = getattr(self, name)
      if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
        raise ValueError(f"{name} must be a positive integer (or None: the default), got "
                         f"{v!r}; pass e.g. EngineOptions({name}=16).")
    if self.map_mode is not None and self.map_mode not in (*MAP_MODES, "auto"):
      raise ValueError(f"map_mode must be one of {(*MAP_MODES, 'auto')}, got {self.map_mode!r}.")
    if self.batch_size is not None and self.map_mode not in (None, "map"):
      raise ValueError("batch_size is a positive lax.map batch size; use it with map_mode='map'.")
    if not isinstance(self.progress, (bool, np.bool_)):
      raise TypeError(f"EngineOptions(progress=...) must be True or False, got "
                      f"{self.progress!r}.")
    shd.mesh_roles(self.mesh)  # a Mesh, a MeshRoles or None (TypeError / ValueError otherwise)
    object.__setattr__(self, "precision", check_precision(self.precision))


def engine_options(engine: EngineOptions | None) -> EngineOptions:
  """`engine` itself, or the defaults for None; anything else is refused with what to pass."""
  if engine is None:
    return EngineOptions()
  if not isinstance(engine, EngineOptions):
    raise TypeError(f"engine must be an EngineOptions (lj.EngineOptions(chunk_size=..., mesh=..., "
                    f"...)) or None, got {type(engine).__name__}.")
  return engine


def declare_coordinates(point_fn: Partial, num_coords: int) -> Partial:
  """Declares that `point_fn` reads exactly `num_coords` coordinates; returns `point_fn`.

  `evaluate_points` then refuses coordinates with another number of columns (an extra column
  would otherwise be silently ignored). Every point function the library builds (planes, paths,
  curves, swap paths) declares its width; a user's own `point_fn` without a declaration is not
  checked. The declaration is a plain attribute (``point_fn.num_coordinates``): it is not part of
  the pytree, so it changes neither tracing nor the identity (which records the coordinates'
  width itself).
  """
  if not isinstance(point_fn, Partial):
    raise TypeError(f"declare_coordinates takes a jax.tree_util.Partial, got "
                    f"{type(point_fn).__name__}.")
  point_fn.num_coordinates = int(num_coords)
  return point_fn


def check_coordinate_width(point_fn, num_coords: int) -> None:
  """Refuses coordinates whose width differs from the one `point_fn` declares (if it does)."""
  declared = getattr(point_fn, "num_coordinates", None)
  if declared is not None and int(declared) != int(num_coords):
    raise ValueError(f"coords has {num_coords} column(s) but point_fn reads {declared} "
                     f"coordinate(s); pass coordinates of shape (N, {declared}).")


def default_map_mode(platform: str | None = None) -> str:
  """`lax.map` on CPU (no gain from batching points, lower memory), `vmap` on GPU/TPU."""
  platform = platform or jax.devices()[0].platform
  return "map" if platform == "cpu" else "vmap"


def check_grid(values, *, name: str = "xs") -> np.ndarray:
  """Validates grid coordinates: a non-empty, finite, strictly increasing 1-D sequence."""
  try:
    arr = np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a 1-D sequence of numbers; got {values!r}.") from e
  if arr.ndim == 0:
    arr = arr[None]
  if arr.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
  if arr.size == 0:
    raise ValueError(f"{name} has no points; use e.g. np.linspace(-1, 1, 51).")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} contains non-finite values ({arr[~np.isfinite(arr)][:3]}); grid "
                     "bounds must be finite.")
  if arr.size > 1 and not np.all(np.diff(arr) > 0):
    raise ValueError(f"{name} must be strictly increasing (a reversed range or repeated values "
                     f"were given: {arr[:4]}...); use np.linspace(lo, hi, n) with lo < hi.")
  return arr


def check_coords(coords, *, name: str = "coords") -> np.ndarray:
  """Validates point coordinates: a non-empty (N, k) array (or (N,) for k = 1) of finite numbers."""
  try:
    arr = np.asarray(coords, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be an array of numbers; got {type(coords).__name__}.") from e
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"{name} must have shape (num_points, num_coordinates) with at least one "
                     f"point, got shape {np.shape(coords)}.")
  if not np.all(np.isfinite(arr)):
    bad = np.argwhere(~np.isfinite(arr))[0]
    raise ValueError(f"{name} contains non-finite values (first at row {bad[0]}: "
                     f"{arr[bad[0]]}); every point must have finite coordinates.")
  return arr


def _as_metrics(out) -> dict:
  if isinstance(out, dict):
    return dict(out)
  if isinstance(out, (tuple, list)):
    raise ValueError(
      f"metric_fn returned a {type(out).__name__} of {len(out)} values; it must return a dict of "
      "scalars (e.g. {'loss': loss, 'accuracy': acc}) or a single scalar (stored as 'loss').")
  return {"loss": out}


def _point_metrics(metric_fn, point_fn, c):
  return _as_metrics(metric_fn(point_fn(c)))


def metric_dtypes(metric_fn, point_fn, num_coords: int) -> dict[str, type]:
  """``{metric name: numpy dtype}`` of ``metric_fn(point_fn(c))`` by abstract evaluation.

  Raises:
    ValueError: the metric function returns a tuple, a non-scalar or an empty dict.
  """
  c = jax.ShapeDtypeStruct((num_coords,), jnp.float32)
  try:
    shapes = jax.eval_shape(_point_metrics, metric_fn, point_fn, c)
  except TypeError as e:
    if "JAX type" in str(e) or "not a valid JAX type" in str(e):
      raise ValueError(f"metric_fn must return JAX arrays (a dict of scalars); {e}") from e
    raise
  keys = {}
  for k, s in shapes.items():
    if not hasattr(s, "shape"):
      raise ValueError(f"metric_fn's '{k}' is a {type(s).__name__}, not an array; return a dict "
                       "of scalars.")
    if s.shape != ():
      raise ValueError(f"metric_fn must return scalars; '{k}' has shape {s.shape} (reduce it over "
                       "the examples, e.g. with jnp.mean, or return one key per entry).")
    keys[str(k)] = np.float32 if s.dtype in (jnp.float32, jnp.bfloat16, jnp.float16) else (
      np.float64)
  if not keys:
    raise ValueError("metric_fn returned an empty dict.")
  return keys


@functools.lru_cache(maxsize=64)
def chunk_fn(mesh: Mesh | None, axis: str | None, map_mode: str, batch_size: int | None):
  """The jitted chunk evaluator ``(metric_fn, point_fn, coords (C, k)) -> {metric: (C,)}``.

  `axis` is the mesh axis the points are split over (None: every device evaluates every point of
  the chunk together, the model and data axes partitioned by GSPMD).
  """

  def local(metric_fn, point_fn, coords):
    one = functools.partial(_point_metrics, metric_fn, point_fn)
    if map_mode == "vmap":
      return jax.vmap(one)(coords)
    return jax.lax.map(one, coords, batch_size=batch_size)

  if mesh is None or axis is None:
    return jax.jit(local)
  if mesh.shape[axis] == mesh.devices.size:  # every device splits points: each runs its own
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(axis)), out_specs=P(axis),
                            check_vma=False)
    return jax.jit(sharded)
  # points with data / model axes: all of it by GSPMD. The chunk is cut into one block per
  # points-axis index, the blocks vmapped with that axis sharded over it (each device group
  # evaluates its own block with `local`), the data and model axes partitioned from the inputs'
  # shardings. (A shard_map manual over the points axis only trips an XLA partitioner check.)
  blocks = NamedSharding(mesh, P(axis))

  def gspmd(metric_fn, point_fn, coords):
    n, k = coords.shape
    c = jax.lax.with_sharding_constraint(coords.reshape(mesh.shape[axis], -1, k), blocks)
    out = jax.vmap(functools.partial(local, metric_fn, point_fn))(c)
    return jax.tree.map(lambda v: jax.lax.with_sharding_constraint(v, blocks).reshape(n), out)

  return jax.jit(gspmd)


def check_chunk_size(chunk_size, num_devices: int, batch_size: int | None = None) -> int:
  """Validates `chunk_size`: a positive integer multiple of the devices (and of `batch_size`)."""
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
    raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
  if chunk_size < 1 or chunk_size % num_devices:
    raise ValueError(f"chunk_size must be a positive multiple of the number of devices "
                     f"({num_devices}), got {chunk_size}.")
  if batch_size and (chunk_size // num_devices) % batch_size:
    raise ValueError(f"chunk_size / num_devices ({chunk_size // num_devices}) must be a multiple "
                     f"of batch_size ({batch_size}) so that lax.map needs no remainder.")
  return int(chunk_size)


def auto_chunk_size(metric_fn, point_fn, num_coords: int, *, num_devices: int, map_mode: str,
                    batch_size: int | None = None, memory_fraction: float = 0.5,
                    max_per_device: int = 256) -> int:
  """Points per chunk (a multiple of `num_devices`) chosen from the device's free memory.

  On GPU/TPU the per-point memory of the compiled evaluator is measured (XLA memory analysis of
  one- and eight-point chunks, at least one copy of the parameters per point) and the chunk fills
  `memory_fraction` of the free device memory; with ``map_mode="map"`` memory does not grow with
  the chunk, which then holds `max_per_device` points per device (a store write every chunk). On
  CPU (no memory statistics) 16 points per device.
  """
  device = jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except (AttributeError, RuntimeError, NotImplementedError):
    stats = None
  mult = batch_size or 1
  if not stats or "bytes_limit" not in stats:
    per_device = 16
  elif map_mode == "map":
    per_device = max_per_device
  else:
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    local = chunk_fn(None, None, map_mode, batch_size)
    sizes = []
    for n in (1, 8):
      coords = jax.ShapeDtypeStruct((n, num_coords), jnp.float32)
      mem = local.lower(metric_fn, point_fn, coords).compile().memory_analysis()
      sizes.append(0 if mem is None else mem.temp_size_in_bytes + mem.output_size_in_bytes)
    params = jax.eval_shape(point_fn, jax.ShapeDtypeStruct((num_coords,), jnp.float32))
    param_bytes = sum(np.dtype(x.dtype).itemsize * math.prod(x.shape)
                      for x in jax.tree.leaves(params))
    per_point = max((sizes[1] - sizes[0]) // 7, param_bytes, 1)
    per_device = int(min(max_per_device, max(1, memory_fraction * free // per_point)))
  per_device = max(mult, per_device // mult * mult)
  return per_device * num_devices


def benchmark_map_modes(metric_fn, point_fn, num_coords: int, *, chunk_size: int = 16,
                        mesh: Mesh | None = None, repeats: int = 3,
                        modes: tuple[str, ...] = MAP_MODES) -> dict[str, float]:
  """Points per second of each `map_mode` for this metric on this platform (after compiling).

  Times `repeats` chunks of `chunk_size` points per mode (the median is reported) at coordinates
  spread over [-1, 1], so that a user can pick ``map_mode`` for a long run
  (``map_mode="auto"`` does this on the run's own chunk shape).
  """
  metric_fn = as_partial(metric_fn)
  point_fn = as_partial(point_fn, name="point_fn")
  roles = shd.mesh_roles(mesh)
  num_devices = 1 if roles is None else roles.size("points")
  check_chunk_size(chunk_size, num_devices)
  coords = np.linspace(-1.0, 1.0, chunk_size * num_coords, dtype=np.float32)
  coords = coords.reshape(chunk_size, num_coords)
  metric_fn, point_fn, coords = place_inputs(metric_fn, point_fn, coords, roles)
  out = {}
  for mode in modes:
    fn = chunk_fn(shd.as_mesh(roles), None if roles is None else roles.points, mode, None)
    jax.block_until_ready(fn(metric_fn, point_fn, coords))
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(metric_fn, point_fn, coords))
      times.append(time.perf_counter() - t0)
    out[mode] = chunk_size / float(np.median(times))
  return out


def _pick_map_mode(metric_fn, point_fn, num_coords, chunk_size, mesh) -> str:
  rates = benchmark_map_modes(metric_fn, point_fn, num_coords, chunk_size=chunk_size, mesh=mesh,
                              repeats=1)
  best = max(MAP_MODES, key=lambda m: rates[m])
  # every process must compile the same program: process 0's choice wins
  best = MAP_MODES[int(shd.broadcast_from_main(np.array([MAP_MODES.index(best)]))[0])]
  _log.info("map_mode='auto': %s (points/s: %s)", best,
            {m: round(r, 2) for m, r in rates.items()})
  return best


def identity_config(metric_fn, point_fn, coords: np.ndarray, *, identity: str | None,
                    metadata: dict | None, precision=None) -> dict:
  """What a store records and compares on resume: exact digests of everything that computed it.

  Functions are identified by their code and held arrays and by the program JAX traces from them
  (``metric_fn`` at the shapes ``point_fn`` returns, ``point_fn`` at one coordinate vector:
  `identity.callable_identity` with ``args``), so an edit of the model, of a helper or of a
  module-level constant changes the identity. ``versions`` (`identity.versions`) is recorded and
  named in a refusal, but not compared by itself. An explicit matmul `precision` is recorded as
  ``"precision"`` (None records nothing).
  """
  c = jax.ShapeDtypeStruct((int(coords.shape[1]),), jnp.float32)
  params = jax.eval_shape(point_fn, c)
  if isinstance(metric_fn, streaming.StreamedMetric):
    # every host array byte for byte (`StreamedMetric.__landscape_identity__`), and the program
    # of one chunk's sums
    metric_id = identity_lib.callable_identity(metric_fn, identity=identity, name="metric_fn")
    metric_id["traced"] = identity_lib.traced_identity(probe_metric(metric_fn), params,
                                                       name="metric_fn")
  else:
    metric_id = identity_lib.callable_identity(metric_fn, identity=identity, name="metric_fn",
                                               args=(params,))
  config = {
    "num_points": int(coords.shape[0]),
    "num_coordinates": int(coords.shape[1]),
    "coords_sha256": identity_lib.tree_digest(coords),
    "metric_fn": metric_id,
    "point_fn": identity_lib.callable_identity(point_fn, identity=identity, name="point_fn",
                                               args=(c,)),
    "metadata": metadata or {},
    "versions": identity_lib.versions(),
  }
  precision = check_precision(precision)
  if precision is not None:
    config["precision"] = precision
  return config


def evaluate_points(metric_fn: Callable[[PyTree], dict], point_fn: Callable[[jax.Array], PyTree],
                    coords, *, shape: tuple[int, ...] | None = None,
                    store: str | os.PathLike | None = None, metadata: dict | None = None,
                    identity: str | None = None, engine: EngineOptions | None = None,
                    desc: str = "points") -> dict[str, np.ndarray]:
  """``res[k][i] = metric_fn(point_fn(coords[i]))[k]`` for every row of `coords`.

  Args:
    metric_fn: ``metric_fn(params) -> dict[str, scalar]`` (a scalar result is stored as
      ``"loss"``); jit-able and vmappable. A plain function is wrapped in `jax.tree_util.Partial`:
      build it as a Partial over its data (as `evaluation.make_metric_fn` does) so that large
      datasets are arguments, not constants, of the compiled program. A
      `streaming.StreamedMetric` (splits on the host) is streamed chunk by chunk.
    point_fn: ``point_fn(c) -> params`` for one float32 coordinate vector ``c`` of length k, best a
      `jax.tree_util.Partial` holding its arrays (e.g. ``Partial(plane_fn, center, directions)``).
      If it declares its width (`declare_coordinates`, as every point function the library
      builds does), coordinates of another width are refused; an undeclared one is not checked.
    coords: (N, k) coordinates (or (N,) for k = 1), finite.
    shape: shape of every returned array (its size must be N; default ``(N,)``); row-major order.
    store: directory for resumable results (`core.store`), written after every chunk; a
      rerun computes only missing points and refuses results of anything else.
    metadata: extra JSON-able configuration stored with the results and compared on resume.
    identity: a name you guarantee identifies whatever the automatic identity cannot inspect in
      `metric_fn` / `point_fn` (see `core.identity`); only needed with `store`.
    engine: how the points are computed (`EngineOptions`: chunk size, mesh, map mode, lax.map
      batch size, progress bar, matmul precision); default ``EngineOptions()``. An explicit
      precision is recorded in the store.
    desc: the progress bar's label.

  Returns:
    ``{metric: numpy array of shape `shape`}``; non-finite values are kept (and logged).

  Raises:
    ValueError: bad coordinates (or a width other than `point_fn` declares), chunk size, map
      mode or metric outputs; a store computed by
      anything else (`store.StoreMismatchError`, listing what differs).
    identity.IdentityError: with `store`, something in the functions cannot be identified and no
      `identity` name was given.
    store.StoreCorruptError: the store on disk is damaged (it is left untouched).
  """
  engine = engine_options(engine)
  with matmul_precision(engine.precision):
    return _evaluate_points(metric_fn, point_fn, coords, shape=shape, store=store,
                            metadata=metadata, identity=identity, chunk_size=engine.chunk_size,
                            mesh=engine.mesh, map_mode=engine.map_mode,
                            batch_size=engine.batch_size, progress=engine.progress, desc=desc,
                            precision=engine.precision)


def _evaluate_points(metric_fn, point_fn, coords, *, shape, store, metadata, identity, chunk_size,
                     mesh, map_mode, batch_size, progress, desc, precision):
  streamed = isinstance(metric_fn, streaming.StreamedMetric)
  if not streamed:
    metric_fn = as_partial(metric_fn)
  point_fn = as_partial(point_fn, name="point_fn")
  coords = check_coords(coords)
  num_points, num_coords = coords.shape
  check_coordinate_width(point_fn, num_coords)
  shape = (num_points,) if shape is None else tuple(int(s) for s in shape)
  if math.prod(shape) != num_points:
    raise ValueError(f"shape {shape} does not hold the {num_points} points.")
  map_mode = map_mode or default_map_mode()
  if map_mode not in (*MAP_MODES, "auto"):
    raise ValueError(f"map_mode must be one of {(*MAP_MODES, 'auto')}, got {map_mode!r}.")
  if batch_size is not None and (map_mode != "map" or batch_size < 1):
    raise ValueError("batch_size is a positive lax.map batch size; use it with map_mode='map'.")
  mesh = shd.mesh_roles(mesh)
  num_devices = 1 if mesh is None else mesh.size("points")
  if chunk_size is not None:
    check_chunk_size(chunk_size, num_devices, batch_size)
  if streamed:
    metric_dtypes(probe_metric(metric_fn), point_fn, num_coords)  # the chunk sums are scalars
    keys = {k: np.float32 for k in metric_fn.metric_names}
  else:
    keys = metric_dtypes(metric_fn, point_fn, num_coords)
  main = shd.is_main_process()

  config = None
  if store is not None:  # before anything is written: an unidentifiable function writes nothing
    config = identity_config(metric_fn, point_fn, coords, identity=identity, metadata=metadata,
                             precision=precision)
  with contextlib.ExitStack() as stack:
    if store is not None and main:  # one writer at a time (store_lib.StoreBusyError otherwise)
      store_lib.ensure_dir(store)
      stack.enter_context(store_lib.lock(store))
    return _evaluate_locked(metric_fn, point_fn, coords, shape, store, config, chunk_size, mesh,
                            map_mode, batch_size, progress, desc, keys, main, num_devices)


def _evaluate_locked(metric_fn, point_fn, coords, shape, store, config, chunk_size, mesh,
                     map_mode, batch_size, progress, desc, keys, main, num_devices):
  num_points, num_coords = coords.shape
  # Resume: every process reads the same state (process 0's done-mask wins), only process 0 writes.
  if store is not None:
    if not main:
      shd.sync("landscape_jax.core.engine.store_created")
    state = store_lib.open_or_create(store, config=config, shape=shape, keys=keys, create=main)
    if main:
      shd.sync("landscape_jax.core.engine.store_created")
    done = shd.broadcast_from_main(state.done.ravel()).astype(bool)
  else:
    state = store_lib.StoreState(
      config={}, values={k: np.full(shape, np.nan, dt) for k, dt in keys.items()},
      done=np.zeros(shape, bool))
    done = np.zeros(num_points, bool)

  missing = np.flatnonzero(~done)
  if store is not None and main:
    found = f"{num_points - missing.size} of {num_points} points found on disk in {store}"
    found += f"; computing {missing.size}" if missing.size else "; nothing left to compute"
    _log.info("%s: %s", desc, found)
    if progress:
      print(f"{desc}: {found}", file=sys.stderr)
  if missing.size:
    probe = probe_metric(metric_fn)
    if chunk_size is None:
      chunk_size = auto_chunk_size(probe, point_fn, num_coords, num_devices=num_devices,
                                   map_mode="vmap" if map_mode == "auto" else map_mode,
                                   batch_size=batch_size)
      per_dev = -(-missing.size // num_devices)
      if batch_size:
        per_dev = -(-per_dev // batch_size) * batch_size
      chunk_size = min(chunk_size, per_dev * num_devices)
    if map_mode == "auto":
      map_mode = _pick_map_mode(probe, point_fn, num_coords, chunk_size, mesh)
    state = evaluate_missing(metric_fn, point_fn, coords.astype(np.float32), missing, state,
                              store, chunk_size=chunk_size, mesh=mesh, map_mode=map_mode,
                              batch_size=batch_size, progress=progress and main, desc=desc)
  values = {k: np.array(v, copy=True) for k, v in state.values.items()}
  for k, v in values.items():
    bad = int(np.sum(~np.isfinite(v)))
    if bad:
      _log.warning("%d of %d points have a non-finite %s (recorded as is; plots mask them).",
                   bad, v.size, k)
  return values


def place_inputs(metric_fn, point_fn, coords, roles: shd.MeshRoles | None):
  """The chunk evaluator's inputs on the mesh: ``(*place_functions(...), place_coords(...))``."""
  if roles is None:
    return metric_fn, point_fn, jnp.asarray(coords)
  return (*place_functions(metric_fn, point_fn, roles), place_coords(coords, roles))


def place_functions(metric_fn, point_fn, roles: shd.MeshRoles):
  """The arrays of `metric_fn` and `point_fn` on the mesh: replicated on a points-only mesh;
  with data / model roles, arrays already on the mesh keep their sharding, `point_fn`'s others
  are sharded by the FSDP rule (`sharding.param_shardings`) and `metric_fn`'s replicated."""
  if roles.only_points:
    return shd.replicate((metric_fn, point_fn), roles.mesh)
  return shd.place(metric_fn, roles), shd.place(point_fn, roles, shard_model=True)


def place_coords(coords, roles: shd.MeshRoles):
  """A chunk's coordinates split over the points axis (replicated when there is none)."""
  if roles.points is None:
    return shd.replicate(coords, roles.mesh)
  return shd.shard_leading(coords, roles.mesh, roles.points)


def evaluate_missing(metric_fn, point_fn, coords, missing, state, store, *, chunk_size, mesh,
                      map_mode, batch_size, progress, desc):
  roles = shd.mesh_roles(mesh)
  fn = chunk_fn(shd.as_mesh(roles), None if roles is None else roles.points, map_mode,
                batch_size)
  streamed = isinstance(metric_fn, streaming.StreamedMetric)
  if roles is not None:
    if streamed:
      point_fn = place_functions(Partial(dict), point_fn, roles)[1]
    else:
      metric_fn, point_fn = place_functions(metric_fn, point_fn, roles)
  evaluate_chunk = functools.partial(_streamed_chunk, fn, metric_fn, point_fn, roles) if \
    streamed else (lambda chunk: {k: shd.to_host(v) for k, v in fn(metric_fn, point_fn,
                                                                   chunk).items()})
  shape = state.done.shape
  num_points = math.prod(shape)
  flat_values = {k: v.reshape(-1) for k, v in state.values.items()}
  flat_done = state.done.reshape(-1)
  num_chunks = math.ceil(missing.size / chunk_size)
  label = f"{desc} {'x'.join(map(str, shape))}" if len(shape) > 1 else desc
  bar = progress_lib.progress_bar(total=num_points, initial=num_points - missing.size, unit="pt",
                                  enabled=progress, desc=label)
  try:
    for c in range(num_chunks):
      idx = missing[c * chunk_size:(c + 1) * chunk_size]
      padded = np.concatenate([idx, np.full(chunk_size - idx.size, idx[-1], idx.dtype)])
      chunk = coords[padded]
      chunk = place_coords(chunk, roles) if roles is not None else jnp.asarray(chunk)
      out = evaluate_chunk(chunk)
      for k in flat_values:
        flat_values[k][idx] = np.asarray(out[k])[:idx.size]
      flat_done[idx] = True
      if store is not None and shd.is_main_process():
        state = store_lib.write(store, state)
      bar.update(idx.size)
  finally:
    bar.close()
  return state


def probe_metric(metric_fn):
  """`metric_fn` itself, or for a `streaming.StreamedMetric` the metric of its first chunk (the
  sums of a chunk: the program the engine compiles), for shape, memory and timing probes."""
  if not isinstance(metric_fn, streaming.StreamedMetric):
    return metric_fn
  name, s = next(iter(metric_fn.streams.items()))
  return metric_fn.chunk_metric(name, s.chunk(0))


def _streamed_chunk(fn, metric, point_fn, roles, coords):
  """The metrics of a `streaming.StreamedMetric` at one chunk of points: every data chunk of
  every stream through the compiled evaluator `fn` (double-buffered), sums added on the host,
  then the ratios."""
  mesh = None if roles is None else roles.mesh
  sums = {}
  for name, s in metric.streams.items():
    consts = shd.replicate(s.constants, mesh) if mesh is not None else jax.device_put(
      s.constants)
    outs = streaming.stream(s, functools.partial(metric.put, mesh=mesh),
                            lambda chunk, name=name, consts=consts: fn(
                              metric.chunk_metric(name, chunk, consts), point_fn, coords))
    sums[name] = streaming.add_sums(outs)
  return metric.finish(sums)


__all__ = [
  "MAP_MODES",
  "EngineOptions",
  "auto_chunk_size",
  "benchmark_map_modes",
  "check_chunk_size",
  "check_coords",
  "check_grid",
  "chunk_fn",
  "default_map_mode",
  "engine_options",
  "evaluate_points",
  "identity_config",
  "metric_dtypes",
  "place_coords",
  "place_functions",
  "place_inputs",
  "probe_metric",
]
