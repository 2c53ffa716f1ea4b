"""Points on lines and planes in parameter space, metrics along a line, and loss barriers.

* `interpolate`: ``(1 - alpha) a + alpha b`` (Goodfellow et al. 2015; Li et al. 2018, Sec. 3);
* `plane_point`: ``center + x d1 + y d2`` (Li et al. 2018), always rebuilt from the centre;
* `linear_path`: metrics at ``interpolate(a, b, alpha)`` for many alphas, in one compiled call;
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

from landscape_jax import trees

PyTree = Any


def interpolate(a: PyTree, b: PyTree, alpha) -> PyTree:
  """``(1 - alpha) a + alpha b`` leafwise (alpha may be a traced scalar; leaf dtypes are kept)."""
  trees.check_same_structure(a, b, names=("a", "b"))
  return jax.tree.map(lambda x, y: (x + alpha * (y - x)).astype(jnp.result_type(x)), a, b)


def plane_point(center: PyTree, d1: PyTree, d2: PyTree | None = None, x=0.0, y=0.0) -> PyTree:
  """``center + x d1 + y d2`` (``d2=None``: ``center + x d1``), computed from the centre directly.

  Li et al. 2018 evaluate ``L(t* + a d1 + b d2)``; building every point from the centre (instead of
  stepping from the previous point) avoids accumulated rounding error. Leaf dtypes are kept.
  """
  if d2 is None:
    return jax.tree.map(lambda c, u: (c + x * u).astype(jnp.result_type(c)), center, d1)
  return jax.tree.map(lambda c, u, v: (c + x * u + y * v).astype(jnp.result_type(c)),
                      center, d1, d2)


def linear_path(metric_fn: Callable[[PyTree], dict], a: PyTree, b: PyTree, alphas, **kwargs
                ) -> dict[str, np.ndarray]:
  """Metrics along the straight line ``interpolate(a, b, alpha)`` for every alpha.

  Implemented as a 1-D `surface.surface_grid` centred at `a` along ``b - a`` (so alpha = 0 is `a`
  and alpha = 1 is `b` exactly up to rounding); `kwargs` go to `surface_grid` (``chunk_size``,
  ``mesh``, ``store``, ``map_mode``, ``progress``, ...). Li et al. 2018 use 401 alphas on
  [-0.5, 1.5].

  Returns:
    ``{metric: array of shape (len(alphas),)}``.
  """
  from landscape_jax.surface import surface_grid
  trees.check_same_structure(a, b, names=("a", "b"))
  direction = jax.tree.map(lambda x, y: y - x, a, b)
  return surface_grid(metric_fn, a, (direction,), alphas, None, **kwargs)


_ENDPOINT_ATOL = 1e-9  # alphas within this of 0 (1) are the endpoint 0 (1); [0, 1] widened by it


def _endpoint_indices(alphas) -> tuple[int, int] | None:
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
  ends = _endpoint_indices(alphas)
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
  """
  values, alphas, l0, l1, inside = _endpoint_values(values, alphas)
  if kind == "frankle":
    return float(np.max(values[inside]) - 0.5 * (l0 + l1))
  if kind == "entezari":
    a = alphas[inside]
    return float(np.max(values[inside] - ((1 - a) * l0 + a * l1)))
  raise ValueError(f"Unknown barrier kind {kind!r}; choose 'frankle' or 'entezari'.")


def barriers(values, alphas=None) -> dict[str, float]:
  """Both barrier definitions and the number of alphas in [0, 1] they used."""
  _, _, _, _, inside = _endpoint_values(values, alphas)
  return {"frankle": barrier(values, alphas, kind="frankle"),
          "entezari": barrier(values, alphas, kind="entezari"),
          "num_alphas": int(np.sum(inside))}


__all__ = ["barrier", "barriers", "interpolate", "linear_path", "plane_point"]
