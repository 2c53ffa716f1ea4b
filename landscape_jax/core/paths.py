"""Points on lines and planes in parameter space, metrics along a line, and loss barriers.

* `interpolate`: ``(1 - alpha) a + alpha b`` (Goodfellow et al. 2015; Li et al. 2018, Sec. 3);
* `plane_point`: ``center + x d1 + y d2`` (Li et al. 2018), always rebuilt from the centre;
* `plane_point_fn`: the same as a `jax.tree_util.Partial` of coordinates, for the point-evaluation
  engine (`core.engine`);
* `linear_path`: metrics at ``interpolate(a, b, alpha)`` for many alphas, through the engine;
* `barrier`: the loss barrier along a path, with the definitions of Frankle et al. 2020
  (``max_alpha L(alpha) - (L(0) + L(1)) / 2``) and Entezari et al. 2021
  (``max_alpha L(alpha) - ((1 - alpha) L(0) + alpha L(1))``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from landscape_jax.core import engine as engine_lib
from landscape_jax.core import trees
from landscape_jax.core.engine import EngineOptions
from landscape_jax.core.identity import tree_digest
from landscape_jax.core.trees import as_partial

PyTree = Any


def interpolate(a: PyTree, b: PyTree, alpha) -> PyTree:
  """``(1 - alpha) a + alpha b`` leafwise (alpha may be a traced scalar; leaf dtypes are kept)."""
  trees.check_same_structure(a, b, names=("a", "b"))
  return jax.tree.map(lambda x, y: (x + alpha * (y - x)).astype(jnp.result_type(x)), a, b)


def plane_point(center: PyTree, d1: PyTree, d2: PyTree | None = None, x=0.0, y=0.0) -> PyTree:
  """``center + x d1 + y d2`` (``d2=None``: ``center + x d1``), computed from the centre directly.

  Li et al. 2018 evaluate ``L(t* + a d1 + b d2)``; building every point from the centre (instead of
  stepping from the previous point) avoids accumulated rounding error. Leaf dtypes are kept.

  References:
    Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets".
  """
  if d2 is None:
    return jax.tree.map(lambda c, u: (c + x * u).astype(jnp.result_type(c)), center, d1)
  return jax.tree.map(lambda c, u, v: (c + x * u + y * v).astype(jnp.result_type(c)),
                      center, d1, d2)


def as_directions(directions, center) -> tuple[PyTree, ...]:
  """One direction (a pytree like `center`) or a tuple/list of one or two of them."""
  center_def = jax.tree.structure(center)
  if isinstance(directions, (tuple, list)) and len(directions) in (1, 2) and all(
      jax.tree.structure(d) == center_def for d in directions):
    dirs = tuple(directions)
  elif jax.tree.structure(directions) == center_def:
    dirs = (directions,)
  else:
    if isinstance(directions, (tuple, list)) and len(directions) > 2:
      raise ValueError(f"A plane takes one or two directions, got {len(directions)}.")
    dirs = tuple(directions) if isinstance(directions, (tuple, list)) else (directions,)
  names = ("center",) + tuple(f"direction {k + 1}" for k in range(len(dirs)))
  trees.check_same_structure(center, *dirs, names=names)
  return dirs


def _plane_point(center, dirs, hook, c):
  """``hook(center + c[0] d1 + c[1] d2)`` (no hook: the point), as `plane_point` computes it."""
  def leaf(x, *ds):
    y = x
    for k, d in enumerate(ds):
      y = y + c[k] * d
    return y.astype(jnp.result_type(x))
  p = jax.tree.map(leaf, center, *dirs)
  return p if hook is None else hook(p)


def plane_point_fn(center: PyTree, directions, point_fn: Callable | None = None) -> Partial:
  """``c -> center + c[0] d1 (+ c[1] d2)`` as a `Partial` over its arrays, for `evaluate_points`.

  Args:
    center: the origin of the plane.
    directions: one direction or a tuple of one or two (pytrees like `center`).
    point_fn: optional hook applied to every point (``point_fn(params) -> metric_fn input``).
  """
  dirs = as_directions(directions, center)
  return engine_lib.declare_coordinates(
    Partial(_plane_point, center, dirs, as_partial(point_fn, name="point_fn")), len(dirs))


def linear_path(metric_fn: Callable[[PyTree], dict], a: PyTree, b: PyTree, alphas, *,
                store=None, metadata: dict | None = None, identity: str | None = None,
                engine: EngineOptions | None = None) -> dict[str, np.ndarray]:
  """Metrics along the straight line ``interpolate(a, b, alpha)`` for every alpha.

  Evaluated by the point-evaluation engine (`engine.evaluate_points`) at ``a + alpha (b - a)``
  (alpha = 0 is `a` and alpha = 1 is `b` exactly up to rounding); `store`, `metadata`,
  `identity` as there, `engine` (`engine.EngineOptions`: chunk size, mesh, map mode, ...) says
  how the points are computed. With `store` the results are resumable and keyed on the exact
  bytes of `a` and `b`, the alphas and `metric_fn`. Li et al. 2018 use 401 alphas on
  [-0.5, 1.5].

  Returns:
    ``{metric: array of shape (len(alphas),)}``.
  """
  trees.check_same_structure(a, b, names=("a", "b"))
  trees.check_finite(a, name="a")
  trees.check_finite(b, name="b")
  alphas = engine_lib.check_grid(alphas, name="alphas")
  direction = jax.tree.map(lambda x, y: y - x, a, b)
  if store is not None:
    metadata = {"a_sha256": tree_digest(a), "b_sha256": tree_digest(b), **(metadata or {})}
  return engine_lib.evaluate_points(metric_fn, plane_point_fn(a, (direction,)), alphas[:, None],
                                    store=store, metadata=metadata, identity=identity,
                                    engine=engine, desc="path")


_ENDPOINT_ATOL = 1e-9  # alphas within this of 0 (1) are the endpoint 0 (1); [0, 1] widened by it


def endpoint_indices(alphas) -> tuple[int, int] | None:
  """Indices of the first alpha equal to 0 and to 1 (within 1e-9), or None if one is missing."""
  alphas = np.asarray(alphas, np.float64)
  i0 = np.flatnonzero(np.abs(alphas) <= _ENDPOINT_ATOL)
  i1 = np.flatnonzero(np.abs(alphas - 1.0) <= _ENDPOINT_ATOL)
  return (int(i0[0]), int(i1[0])) if i0.size and i1.size else None


def _endpoint_values(values, alphas):
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or values.size < 2:
    raise ValueError(f"barrier needs a 1-D array of at least 2 values, got shape {values.shape}.")
  if alphas is None:
    alphas = np.linspace(0.0, 1.0, values.size)
  alphas = np.asarray(alphas, np.float64)
  if alphas.shape != values.shape:
    raise ValueError(f"alphas shape {alphas.shape} does not match values shape {values.shape}.")
  if not np.all(np.isfinite(alphas)):
    raise ValueError("barrier: alphas contain NaN/inf; give the finite interpolation coefficient "
                     "of every value.")
  ends = endpoint_indices(alphas)
  if ends is None:
    raise ValueError("barrier needs values at alpha = 0 and alpha = 1 (the two endpoints); "
                     "include them in the alphas.")
  inside = (alphas >= -_ENDPOINT_ATOL) & (alphas <= 1 + _ENDPOINT_ATOL)
  return values, alphas, values[ends[0]], values[ends[1]], inside


def barrier(values, alphas=None, *, kind: str = "frankle") -> float:
  """Loss barrier along a path from its values (only alphas in [0, 1] count).

  * ``kind="frankle"`` (Frankle et al. 2020): ``max_alpha L(alpha) - (L(0) + L(1)) / 2``;
  * ``kind="entezari"`` (Entezari et al. 2021): ``max_alpha [L(alpha) - ((1 - alpha) L(0) +
    alpha L(1))]``.

  The one barrier of the library: `curves.curve_summary` and the legends of
  `plotting.plot_barriers` use it.

  Args:
    values: losses (or errors) along the path.
    alphas: the interpolation coefficient of every value (finite); default
      ``linspace(0, 1, len(values))``. Values outside [0, 1] (e.g. Li et al.'s [-0.5, 1.5] plots)
      are ignored, NaN ones included; alpha = 0 and 1 must be present (within 1e-9; the first
      such value is the endpoint).
    kind: ``"frankle"`` or ``"entezari"``.

  Returns:
    The barrier as a Python float. NaN if a value with alpha in [0, 1] is NaN (the endpoints
    included): a NaN is never skipped, since the maximum could hide behind it; +inf if one is
    +inf.

  Raises:
    ValueError: alphas missing 0 or 1, non-finite alphas, shapes that do not match, fewer than
      two values, or an unknown `kind`.

  References:
    Frankle, Dziugaite, Roy and Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket
    Hypothesis".
  """
  values, alphas, l0, l1, inside = _endpoint_values(values, alphas)
  if kind == "frankle":
    return float(np.max(values[inside]) - 0.5 * (l0 + l1))
  if kind == "entezari":
    a = alphas[inside]
    return float(np.max(values[inside] - ((1 - a) * l0 + a * l1)))
  raise ValueError(f"Unknown barrier kind {kind!r}; choose 'frankle' or 'entezari'.")


def barriers(values, alphas=None) -> dict[str, float]:
  """Both barrier definitions and the number of alphas in [0, 1] they used.

  References:
    Frankle, Dziugaite, Roy and Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket
    Hypothesis".
    Entezari, Sedghi, Saukh and Neyshabur 2022, "The Role of Permutation Invariance in Linear
    Mode Connectivity of Neural Networks".
  """
  _, _, _, _, inside = _endpoint_values(values, alphas)
  return {"frankle": barrier(values, alphas, kind="frankle"),
          "entezari": barrier(values, alphas, kind="entezari"),
          "num_alphas": int(np.sum(inside))}


__all__ = [
  "as_directions",
  "barrier",
  "barriers",
  "endpoint_indices",
  "interpolate",
  "linear_path",
  "plane_point",
  "plane_point_fn",
]
