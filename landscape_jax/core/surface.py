"""Loss surfaces on 1-D and 2-D grids around a centre (Li et al. 2018).

``surface_grid(metric_fn, center, (d1, d2), xs, ys)`` evaluates
``metric_fn(center + xs[i] d1 + ys[j] d2)`` for every grid point and returns arrays indexed
``[i, j] = (xs[i], ys[j])`` (the reference code stores the transpose; we do not);
``surface_points`` does the same at arbitrary plane coordinates. Both are thin layers over the
point-evaluation engine (`core.engine.evaluate_points`): chunked and compiled once,
`lax.map` on CPU and `vmap` on GPU/TPU, sharded over a `Mesh`, multi-host, resumable in a store
keyed on the exact identity of the centre, the directions, the coordinates and the metric function
(its code and the data it holds). Every point is rebuilt from the centre (no accumulated error).
Non-finite losses (far from the minimum) are recorded as they are, never fatal.

BatchNorm: by default `metric_fn` evaluates every point with the centre's running statistics
(Li et al.). To recompute them at every point on the training split, pass a metric that does so,
e.g. ``batchnorm.make_recompute_metric_fn(model, splits, train_data=..., batch_stats=...)``, or
use the ``point_fn`` hook (``point_fn(params) -> metric_fn input``, e.g. ``{"params": p,
"batch_stats": recompute(p)}``). Opt-in error-controlled surfaces:
`adapters.error_control.make_error_controlled_metric_fn` (growing random subsets until the
loss's standard error is below a tolerance, with anchored control variates).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from landscape_jax.core import engine as engine_lib
from landscape_jax.core import trees
from landscape_jax.core.engine import MAP_MODES, EngineOptions, check_grid, default_map_mode
from landscape_jax.core.identity import tree_digest
from landscape_jax.core.paths import as_directions, plane_point_fn

PyTree = Any


def grid_coordinates(xs, ys=None) -> np.ndarray:
  """Coordinates of every grid point in row-major ``[i, j]`` order: shape (n, 1) or (n, 2)."""
  xs = np.asarray(xs, np.float64)
  if ys is None:
    return xs[:, None]
  ys = np.asarray(ys, np.float64)
  gx, gy = np.meshgrid(xs, ys, indexing="ij")
  return np.stack([gx.ravel(), gy.ravel()], axis=1)


def _check_plane_inputs(center, directions):
  dirs = as_directions(directions, center)
  # NaN parameters at the centre (or in a direction) are an error; NaN losses far out are values.
  trees.check_finite(center, name="center parameters")
  for k, d in enumerate(dirs):
    trees.check_finite(d, name=f"direction {k + 1}")
    _, _, nonzero = trees.leaf_flags(d)
    if nonzero.size and not nonzero.any():
      raise ValueError(f"direction {k + 1} is zero in every leaf: the surface would be flat "
                       "along it without telling you. Use a random direction "
                       "(lj.random_directions) or the difference of two models.")
  return dirs


def _plane_metadata(center, dirs, metadata):
  return {"center_sha256": tree_digest(center), "directions_sha256": tree_digest(dirs),
          **(metadata or {})}


def surface_points(metric_fn: Callable[[PyTree], dict], center: PyTree, directions, coords, *,
                   store: str | os.PathLike | None = None, metadata: dict | None = None,
                   identity: str | None = None, point_fn: Callable | None = None,
                   engine: EngineOptions | None = None, desc: str = "points"
                   ) -> dict[str, np.ndarray]:
  """``metric_fn(center + c[0] d1 + c[1] d2)`` at arbitrary plane coordinates `coords`.

  Args:
    metric_fn, center, directions, point_fn: as in `surface_grid`.
    coords: (N, number of directions) plane coordinates (any order, finite).
    store, metadata, identity: as in `engine.evaluate_points` (the centre's and directions'
      digests are recorded by name, so a mismatch says which of them differs).
    engine: how the points are computed (`engine.EngineOptions`; default ``EngineOptions()``).
    desc: the progress bar's label.

  Returns:
    ``{metric: array of shape (N,)}``.
  """
  dirs = _check_plane_inputs(center, directions)
  coords = engine_lib.check_coords(coords)
  if coords.shape[1] != len(dirs):
    raise ValueError(f"coords has {coords.shape[1]} columns but {len(dirs)} direction(s) were "
                     "given; pass one column per direction.")
  if store is not None:
    metadata = _plane_metadata(center, dirs, metadata)
  return engine_lib.evaluate_points(metric_fn, plane_point_fn(center, dirs, point_fn), coords,
                                    store=store, metadata=metadata, identity=identity,
                                    engine=engine, desc=desc)


def surface_grid(metric_fn: Callable[[PyTree], dict], center: PyTree, directions, xs,
                 ys=None, *, store: str | os.PathLike | None = None, metadata: dict | None = None,
                 identity: str | None = None,
                 point_fn: Callable[[PyTree], PyTree] | None = None,
                 engine: EngineOptions | None = None) -> dict[str, np.ndarray]:
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
    store: directory for resumable results (`core.store`), written after every chunk and
      keyed on the exact identity of the centre, directions, grid and metric function.
    metadata: extra JSON-able configuration stored with the results and compared on resume
      (direction seed, normalisation, checkpoint, dataset, ...).
    identity: a name for what the automatic identity of `metric_fn` / `point_fn` cannot inspect
      (see `core.identity`); only needed with `store`.
    point_fn: optional hook ``point_fn(params) -> metric_fn input`` applied at every point, e.g.
      to recompute BatchNorm statistics for the point (``{"params": p, "batch_stats": ...}``).
      Default None: Li et al.'s choice, the centre's statistics held by `metric_fn`.
    engine: how the points are computed (`engine.EngineOptions`: ``chunk_size``, ``mesh``,
      ``map_mode``, ``batch_size``, ``progress``, ``precision``); default ``EngineOptions()``.

  Returns:
    ``{metric: numpy array}`` of shape ``(len(xs), len(ys))`` or ``(len(xs),)``. Non-finite values
    are kept (and logged).

  References:
    Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets".
  """
  dirs = _check_plane_inputs(center, directions)
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
  if store is not None:
    metadata = {"grid": {"xs": xs, "ys": ys}, **_plane_metadata(center, dirs, metadata)}
  return engine_lib.evaluate_points(
    metric_fn, plane_point_fn(center, dirs, point_fn), grid_coordinates(xs, ys), shape=shape,
    store=store, metadata=metadata, identity=identity, engine=engine, desc="surface")


def auto_chunk_size(metric_fn, center, directions, *, num_devices: int, map_mode: str,
                    batch_size: int | None = None, point_fn=None, memory_fraction: float = 0.5,
                    max_per_device: int = 256) -> int:
  """`engine.auto_chunk_size` for the points of a plane around `center` (the arguments as
  there)."""
  dirs = as_directions(directions, center)
  return engine_lib.auto_chunk_size(trees.as_partial(metric_fn),
                                    plane_point_fn(center, dirs, point_fn), len(dirs),
                                    num_devices=num_devices, map_mode=map_mode,
                                    batch_size=batch_size, memory_fraction=memory_fraction,
                                    max_per_device=max_per_device)


def benchmark_map_modes(metric_fn, center, directions, *, point_fn=None, chunk_size: int = 16,
                        mesh=None, repeats: int = 3, modes: tuple[str, ...] = MAP_MODES
                        ) -> dict[str, float]:
  """`engine.benchmark_map_modes` for the points of a plane around `center`: points/s per mode
  (the arguments as there)."""
  dirs = as_directions(directions, center)
  return engine_lib.benchmark_map_modes(metric_fn, plane_point_fn(center, dirs, point_fn),
                                        len(dirs), chunk_size=chunk_size, mesh=mesh,
                                        repeats=repeats, modes=modes)


__all__ = [
  "MAP_MODES",
  "auto_chunk_size",
  "benchmark_map_modes",
  "check_grid",
  "default_map_mode",
  "grid_coordinates",
  "plane_point_fn",
  "surface_grid",
  "surface_points",
]
