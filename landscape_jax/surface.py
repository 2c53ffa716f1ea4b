"""Loss surfaces on 1-D and 2-D grids: chunked, compiled once, sharded, resumable (Li et al. 2018).

``surface_grid(metric_fn, center, (d1, d2), xs, ys)`` evaluates
``metric_fn(center + xs[i] d1 + ys[j] d2)`` for every grid point and returns arrays indexed
``[i, j] = (xs[i], ys[j])`` (the reference code stores the transpose; we do not).

How it runs:

* grid points are evaluated in chunks of a fixed size inside ONE jitted function, by `lax.map`
  (sequential, low memory; the default on CPU) or `vmap` (batched; the default on GPU/TPU);
  the last chunk is padded, so no chunk recompiles;
* every point is rebuilt from the centre (no accumulated error);
* `metric_fn` is a pytree argument of the jitted function (`jax.tree_util.Partial`), so the
  datasets it holds stay on the device as buffers and are not baked into the program;
* with a `Mesh`, each chunk's coordinates are sharded over the mesh axis (`jax.shard_map`) while the
  parameters, directions and the metric's data are replicated; in a multi-process run
  (`jax.distributed`) every process evaluates its devices' share and process 0 writes;
* with ``store=path`` the results are written atomically after every chunk (`landscape_jax.store`);
  a rerun resumes and computes only the missing points, a different configuration is refused;
* non-finite losses (far from the minimum) are recorded as they are, never fatal.

BatchNorm: by default `metric_fn` evaluates every point with the centre's running statistics
(Li et al.). To recompute them at every point on the training split, pass a metric that does so,
e.g. ``batchnorm.make_recompute_metric_fn(model, splits, train_data=..., batch_stats=...)``, or
use the ``point_fn`` hook (``point_fn(params) -> metric_fn input``, e.g. ``{"params": p,
"batch_stats": recompute(p)}``). Opt-in error-controlled surfaces:
`landscape_jax.error_control.make_error_controlled_metric_fn` (growing random subsets until the
loss's standard error is below a tolerance, with anchored control variates).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.tree_util import Partial
from tqdm.auto import tqdm

from landscape_jax import sharding as shd
from landscape_jax import store as store_lib
from landscape_jax import trees
from landscape_jax.error_control import make_error_controlled_metric_fn
from landscape_jax.paths import plane_point

PyTree = Any
MAP_MODES = ("map", "vmap")
_log = logging.getLogger(__name__)


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


def grid_coordinates(xs, ys=None) -> np.ndarray:
  """Coordinates of every grid point in row-major ``[i, j]`` order: shape (n, 1) or (n, 2)."""
  xs = np.asarray(xs, np.float64)
  if ys is None:
    return xs[:, None]
  ys = np.asarray(ys, np.float64)
  gx, gy = np.meshgrid(xs, ys, indexing="ij")
  return np.stack([gx.ravel(), gy.ravel()], axis=1)


def _as_directions(directions, center) -> tuple[PyTree, ...]:
  """One direction (a pytree like `center`) or a tuple/list of one or two of them."""
  center_def = jax.tree.structure(center)
  if isinstance(directions, (tuple, list)) and len(directions) in (1, 2) and all(
      jax.tree.structure(d) == center_def for d in directions):
    dirs = tuple(directions)
  elif jax.tree.structure(directions) == center_def:
    dirs = (directions,)
  else:
    if isinstance(directions, (tuple, list)) and len(directions) > 2:
      raise ValueError(f"surface_grid takes one or two directions, got {len(directions)}.")
    dirs = tuple(directions) if isinstance(directions, (tuple, list)) else (directions,)
  names = ("center",) + tuple(f"direction {k + 1}" for k in range(len(dirs)))
  trees.check_same_structure(center, *dirs, names=names)
  return dirs


def _as_partial(fn) -> Partial | None:
  if fn is None or isinstance(fn, Partial):
    return fn
  if not callable(fn):
    raise TypeError(f"Expected a callable metric_fn, got {type(fn).__name__}.")
  return Partial(fn)


def default_map_mode(platform: str | None = None) -> str:
  """`lax.map` on CPU (no gain from batching points, lower memory), `vmap` on GPU/TPU."""
  platform = platform or jax.devices()[0].platform
  return "map" if platform == "cpu" else "vmap"


def _as_dict(out) -> dict:
  return dict(out) if isinstance(out, dict) else {"loss": out}


def _point_metrics(metric_fn, point_fn, center, dirs, c):
  if len(dirs) == 1:
    p = plane_point(center, dirs[0], None, c[0])
  else:
    p = plane_point(center, dirs[0], dirs[1], c[0], c[1])
  if point_fn is not None:
    p = point_fn(p)
  return _as_dict(metric_fn(p))


@functools.lru_cache(maxsize=64)
def _chunk_fn(mesh: Mesh | None, axis: str | None, map_mode: str, batch_size: int | None):
  """The jitted chunk evaluator ``(metric_fn, point_fn, center, dirs, coords) -> {k: (C,)}``."""

  def local(metric_fn, point_fn, center, dirs, coords):
    one = functools.partial(_point_metrics, metric_fn, point_fn, center, dirs)
    if map_mode == "vmap":
      return jax.vmap(one)(coords)
    return jax.lax.map(one, coords, batch_size=batch_size)

  if mesh is None:
    return jax.jit(local)
  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P(), P(axis)),
                          out_specs=P(axis), check_vma=False)
  return jax.jit(sharded)


def _metric_keys(metric_fn, point_fn, center, dirs) -> dict[str, np.dtype]:
  c = jnp.zeros((len(dirs),), jnp.float32)
  shapes = jax.eval_shape(lambda f, g, p, d, c: _point_metrics(f, g, p, d, c),
                          metric_fn, point_fn, center, dirs, c)
  keys = {}
  for k, s in shapes.items():
    if s.shape != ():
      raise ValueError(f"metric_fn must return scalars; '{k}' has shape {s.shape}.")
    keys[str(k)] = np.float32 if s.dtype in (jnp.float32, jnp.bfloat16, jnp.float16) else (
      np.float64)
  if not keys:
    raise ValueError("metric_fn returned an empty dict.")
  return keys


def auto_chunk_size(metric_fn, center, dirs, *, num_devices: int, map_mode: str,
                    batch_size: int | None = None, point_fn=None, memory_fraction: float = 0.5,
                    max_per_device: int = 256) -> int:
  """Points per chunk (a multiple of `num_devices`) chosen from the device's free memory.

  On GPU/TPU the per-point memory of the compiled evaluator is measured (XLA memory analysis of
  one- and eight-point chunks, at least one copy of the parameters per point) and the chunk fills
  `memory_fraction` of the free device memory; with
  ``map_mode="map"`` memory does not grow with the chunk, which then holds `max_per_device` points
  per device (a store write every chunk). On CPU (no memory statistics) 16 points per device.
  """
  device = jax.local_devices()[0]
  stats = None
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
    local = _chunk_fn(None, None, map_mode, batch_size)
    sizes = []
    for n in (1, 8):
      coords = jnp.zeros((n, len(dirs)), jnp.float32)
      mem = local.lower(metric_fn, point_fn, center, dirs, coords).compile().memory_analysis()
      sizes.append(0 if mem is None else mem.temp_size_in_bytes + mem.output_size_in_bytes)
    # at least one perturbed copy of the parameters per vmapped point
    param_bytes = sum(np.dtype(x.dtype).itemsize * np.size(x) for x in jax.tree.leaves(center))
    per_point = max((sizes[1] - sizes[0]) // 7, param_bytes, 1)
    per_device = int(min(max_per_device, max(1, memory_fraction * free // per_point)))
  per_device = max(mult, per_device // mult * mult)
  return per_device * num_devices


def benchmark_map_modes(metric_fn, center, directions, *, chunk_size: int = 16,
                        mesh: Mesh | None = None, repeats: int = 3, point_fn=None,
                        modes: tuple[str, ...] = MAP_MODES) -> dict[str, float]:
  """Grid points per second of each `map_mode` for this metric on this platform (after compiling).

  Times `repeats` chunks of `chunk_size` points per mode (the median is reported) so that a user
  can pick ``map_mode`` for a long run (``surface_grid(..., map_mode="auto")`` does this on the
  run's own chunk shape). Measured on a 2-core CPU (digits, full splits, 1 device): an MLP 64-64
  ran 310 points/s with `lax.map` and 1400 with `vmap`, a two-layer CNN 16 points/s with `lax.map`
  and 3.4 with `vmap` (a vmapped convolution with per-point weights is slow on CPU), hence the
  default `lax.map` on CPU.
  """
  import time

  metric_fn = _as_partial(metric_fn)
  point_fn = _as_partial(point_fn)
  dirs = _as_directions(directions, center)
  num_devices = 1 if mesh is None else mesh.devices.size
  _check_chunk_size(chunk_size, num_devices, None)
  axis = None if mesh is None else mesh.axis_names[0]
  coords = np.linspace(-1.0, 1.0, chunk_size * len(dirs), dtype=np.float32).reshape(chunk_size, -1)
  if mesh is not None:
    metric_fn, point_fn, center, dirs = shd.replicate((metric_fn, point_fn, center, dirs), mesh)
    coords = shd.shard_leading(coords, mesh, axis)
  out = {}
  for mode in modes:
    fn = _chunk_fn(mesh, axis, mode, None)
    jax.block_until_ready(fn(metric_fn, point_fn, center, dirs, coords))
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(metric_fn, point_fn, center, dirs, coords))
      times.append(time.perf_counter() - t0)
    out[mode] = chunk_size / float(np.median(times))
  return out


def surface_grid(metric_fn: Callable[[PyTree], dict], center: PyTree, directions, xs,
                 ys=None, *, chunk_size: int | None = None, mesh: Mesh | None = None,
                 store: str | os.PathLike | None = None, metadata: dict | None = None,
                 map_mode: str | None = None, batch_size: int | None = None,
                 point_fn: Callable[[PyTree], PyTree] | None = None, progress: bool = True,
                 ) -> dict[str, np.ndarray]:
  """Evaluates ``metric_fn`` on a 1-D or 2-D grid around `center` (Li et al. 2018).

  ``res[k][i, j] = metric_fn(center + xs[i] d1 + ys[j] d2)[k]`` (2-D) and
  ``res[k][i] = metric_fn(center + xs[i] d)[k]`` (1-D). xs and ys are independent (non-square
  grids keep their orientation: the result has shape ``(len(xs), len(ys))``).

  Args:
    metric_fn: ``metric_fn(params) -> dict[str, scalar]`` (e.g. `make_metric_fn` with train and
      test splits gives ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``); a
      scalar result is stored as ``"loss"``. Must be jit-able and vmappable. A plain function is
      wrapped in `jax.tree_util.Partial`; build it as a Partial over its data for large datasets.
    center: the parameters at the origin of the plot (e.g. ``variables["params"]``).
    directions: one direction (a pytree like `center`) or a tuple ``(d1,)`` / ``(d1, d2)``.
    xs: coordinates along ``d1`` (strictly increasing, finite, non-empty).
    ys: coordinates along ``d2`` (required with two directions, None with one).
    chunk_size: grid points per compiled call (a multiple of the mesh size); default from the
      device's memory (`auto_chunk_size`).
    mesh: a 1-D `Mesh` (`sharding.make_mesh`); chunks are sharded over its axis. None: one device.
    store: directory for resumable results (`landscape_jax.store`), written after every chunk.
    metadata: extra JSON-able configuration stored with the results and compared on resume
      (direction seed, normalisation, checkpoint, dataset, ...).
    map_mode: ``"map"`` (`lax.map`), ``"vmap"``, or ``"auto"`` (time one chunk of each with
      `benchmark_map_modes` and keep the faster); default `default_map_mode()` (`lax.map` on CPU,
      `vmap` on GPU/TPU).
    batch_size: `lax.map` batch size (points vmapped together inside the sequential map).
    point_fn: optional hook ``point_fn(params) -> metric_fn input`` applied at every point, e.g.
      to recompute BatchNorm statistics for the point (``{"params": p, "batch_stats": ...}``).
      Default None: Li et al.'s choice, the centre's statistics held by `metric_fn`.
    progress: show a tqdm bar (points/s and ETA) on the main process.

  Returns:
    ``{metric: numpy array}`` of shape ``(len(xs), len(ys))`` or ``(len(xs),)``. Non-finite values
    are kept (and logged).
  """
  metric_fn = _as_partial(metric_fn)
  point_fn = _as_partial(point_fn)
  dirs = _as_directions(directions, center)
  # NaN parameters at the centre (or in a direction) are an error; NaN losses far out are values.
  trees.check_finite(center, name="center parameters")
  for k, d in enumerate(dirs):
    trees.check_finite(d, name=f"direction {k + 1}")
  xs = check_grid(xs, name="xs")
  if len(dirs) == 2:
    if ys is None:
      raise ValueError("Two directions need ys (the coordinates along the second direction).")
    ys = check_grid(ys, name="ys")
    shape = (xs.size, ys.size)
  else:
    if ys is not None:
      raise ValueError("ys was given but only one direction; pass (d1, d2) for a 2-D surface.")
    shape = (xs.size,)
  map_mode = map_mode or default_map_mode()
  if map_mode not in (*MAP_MODES, "auto"):
    raise ValueError(f"map_mode must be one of {(*MAP_MODES, 'auto')}, got {map_mode!r}.")
  if batch_size is not None and (map_mode != "map" or batch_size < 1):
    raise ValueError("batch_size is a positive lax.map batch size; use it with map_mode='map'.")
  num_devices = 1 if mesh is None else mesh.devices.size
  axis = None if mesh is None else mesh.axis_names[0]
  if mesh is not None and len(mesh.axis_names) != 1:
    raise ValueError(f"surface_grid needs a 1-D mesh, got axes {mesh.axis_names}; use make_mesh.")

  coords = grid_coordinates(xs, ys).astype(np.float32)
  num_points = coords.shape[0]
  keys = _metric_keys(metric_fn, point_fn, center, dirs)
  main = shd.is_main_process()

  # Resume: every process reads the same state (process 0's done-mask wins), only process 0 writes.
  if store is not None:
    config = {"grid": {"xs": xs, "ys": ys, "shape": shape},
              "num_directions": len(dirs),
              "metrics": sorted(keys),
              "center_sha256": _fingerprint(center),
              "directions_sha256": _fingerprint(dirs),
              "metadata": metadata or {}}
    if not main:
      shd.sync("landscape_jax.surface.store_created")
    state = store_lib.open_or_create(store, config=config, shape=shape, keys=keys, create=main)
    if main:
      shd.sync("landscape_jax.surface.store_created")
    done = shd.broadcast_from_main(state.done.ravel()).astype(bool)
  else:
    state = store_lib.StoreState(
      config={}, values={k: np.full(shape, np.nan, dt) for k, dt in keys.items()},
      done=np.zeros(shape, bool))
    done = np.zeros(num_points, bool)

  missing = np.flatnonzero(~done)
  if missing.size:
    if chunk_size is None:
      chunk_size = auto_chunk_size(metric_fn, center, dirs, num_devices=num_devices,
                                   map_mode="vmap" if map_mode == "auto" else map_mode,
                                   batch_size=batch_size, point_fn=point_fn)
      per_dev = -(-missing.size // num_devices)
      if batch_size:
        per_dev = -(-per_dev // batch_size) * batch_size
      chunk_size = min(chunk_size, per_dev * num_devices)
    _check_chunk_size(chunk_size, num_devices, batch_size)
    if map_mode == "auto":
      map_mode = _pick_map_mode(metric_fn, point_fn, center, dirs, chunk_size, mesh)
    _evaluate_missing(metric_fn, point_fn, center, dirs, coords, missing, state, store,
                      chunk_size=chunk_size, mesh=mesh, axis=axis, map_mode=map_mode,
                      batch_size=batch_size, progress=progress and main)
  values = {k: np.array(v, copy=True) for k, v in state.values.items()}
  for k, v in values.items():
    bad = int(np.sum(~np.isfinite(v)))
    if bad:
      _log.warning("%d of %d grid points have a non-finite %s (recorded as is; plots mask them).",
                   bad, v.size, k)
  return values


def _pick_map_mode(metric_fn, point_fn, center, dirs, chunk_size, mesh) -> str:
  rates = benchmark_map_modes(metric_fn, center, dirs, chunk_size=chunk_size, mesh=mesh,
                              repeats=1, point_fn=point_fn)
  best = max(MAP_MODES, key=lambda m: rates[m])
  # every process must compile the same program: process 0's choice wins
  best = MAP_MODES[int(shd.broadcast_from_main(np.array([MAP_MODES.index(best)]))[0])]
  _log.info("map_mode='auto': %s (points/s: %s)", best,
            {m: round(r, 2) for m, r in rates.items()})
  return best


def _check_chunk_size(chunk_size, num_devices, batch_size):
  if chunk_size < 1 or chunk_size % num_devices:
    raise ValueError(f"chunk_size must be a positive multiple of the number of devices "
                     f"({num_devices}), got {chunk_size}.")
  if batch_size and (chunk_size // num_devices) % batch_size:
    raise ValueError(f"chunk_size / num_devices ({chunk_size // num_devices}) must be a multiple "
                     f"of batch_size ({batch_size}) so that lax.map needs no remainder.")


def _fingerprint(tree) -> str:


  h = hashlib.sha256()
  for x in jax.tree.leaves(tree):
    a = np.ascontiguousarray(shd.to_host(x))
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _evaluate_missing(metric_fn, point_fn, center, dirs, coords, missing, state, store, *,
                      chunk_size, mesh, axis, map_mode, batch_size, progress):


  fn = _chunk_fn(mesh, axis, map_mode, batch_size)
  if mesh is not None:
    metric_fn, point_fn, center, dirs = shd.replicate((metric_fn, point_fn, center, dirs), mesh)
  shape = state.done.shape
  num_points = int(np.prod(shape))
  flat_values = {k: v.reshape(-1) for k, v in state.values.items()}
  flat_done = state.done.reshape(-1)
  num_chunks = math.ceil(missing.size / chunk_size)
  bar = tqdm(total=num_points, initial=num_points - missing.size, unit="pt", disable=not progress,
             desc=f"surface {'x'.join(map(str, shape))}", dynamic_ncols=True)
  try:
    for c in range(num_chunks):
      idx = missing[c * chunk_size:(c + 1) * chunk_size]
      padded = np.concatenate([idx, np.full(chunk_size - idx.size, idx[-1], idx.dtype)])
      chunk = coords[padded]
      chunk = shd.shard_leading(chunk, mesh, axis) if mesh is not None else jnp.asarray(chunk)
      out = fn(metric_fn, point_fn, center, dirs, chunk)
      for k in flat_values:
        flat_values[k][idx] = shd.to_host(out[k])[:idx.size]
      flat_done[idx] = True
      if store is not None and shd.is_main_process():
        state = store_lib.write(store, state)
      bar.update(idx.size)
  finally:
    bar.close()
  return state


__all__ = [
  "auto_chunk_size",
  "benchmark_map_modes",
  "check_grid",
  "default_map_mode",
  "make_error_controlled_metric_fn",
  "grid_coordinates",
  "surface_grid",
]


def default_config(**overrides):
  """`ml_collections.ConfigDict` read by experiments/surface.py (Li et al. 2018 defaults).

  Fields: ``mode`` ("random" | "interpolation" | "plane"), ``runs`` (training workdirs, or
  ``"init:<model>"``), ``labels``, ``step`` (None: latest checkpoint), ``dataset`` (for ``init:``
  runs), ``data_dir``, ``dim`` (1 or 2), ``x`` / ``y`` ((min, max, num); Li et al.: 51 points on
  [-1, 1]), ``norm`` ("filter"), ``ignore`` ("biasbn"), ``seed``, ``same_direction``,
  ``orthogonal``, ``bn`` ("center": the centre's statistics as Li et al.; "recompute": per point
  on the training split), ``splits`` (("train", "test")), ``eval_subset`` (None: whole splits),
  ``eval_batch_size`` (None: the fastest of 32-512 measured by `choose_batch_size`),
  ``chunk_size`` (None: from device memory), ``map_mode`` (None: per
  platform), ``error_tol`` (None: exact metrics; a number: `make_error_controlled_metric_fn`
  with that standard error), ``error_anchor_stride`` (4: anchored control variates on every 4th
  grid line; 0: plain estimates). Unknown override names are an error.
  """
  import ml_collections
  from ml_collections import config_dict

  from landscape_jax.training import override_config

  c = ml_collections.ConfigDict()
  c.mode = "random"
  c.runs = ("init:mlp",)
  c.labels = config_dict.placeholder(tuple)
  c.step = config_dict.placeholder(int)
  c.dataset = "digits"
  c.data_dir = config_dict.placeholder(str)
  c.dim = 2
  c.x = (-1.0, 1.0, 51)
  c.y = (-1.0, 1.0, 51)
  c.norm = "filter"
  c.ignore = "biasbn"
  c.seed = 0
  c.same_direction = False
  c.orthogonal = False
  c.bn = "center"
  c.splits = ("train", "test")
  c.eval_subset = config_dict.placeholder(int)
  c.eval_batch_size = config_dict.placeholder(int)
  c.chunk_size = config_dict.placeholder(int)
  c.map_mode = config_dict.placeholder(str)
  c.error_tol = config_dict.placeholder(float)
  c.error_anchor_stride = 4
  return override_config(c, overrides, what="surface config")
