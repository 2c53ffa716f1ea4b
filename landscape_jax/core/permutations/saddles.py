"""Permutation saddles: continuous swaps of two units (Brea et al. 2019).

Brea, Simsek, Illing and Gerstner 2019 ("Weight-space symmetry in deep networks gives rise to
permutation saddles, connected by equal-loss valleys"): moving two units of one layer towards each
other reaches a permutation point where they coincide; `swap_path_metrics` measures a metric
along that path with the point-evaluation engine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape_jax.core import engine as engine_lib
from landscape_jax.core.engine import EngineOptions
from landscape_jax.core.permutations.specs import (
  PermutationSpec,
  as_variables,
  mlp_spec,
  permute_leaves,
)

__all__ = [
  "swap_path",
  "swap_path_metrics",
  "swap_units",
]

PyTree = Any

# ------------------------------------------------------------------------------------------------
# Permutation saddles (Brea et al. 2019)


def _layer_axes(spec: PermutationSpec, layer: str):
  if layer not in spec.axes:
    raise ValueError(f"Unknown layer '{layer}'; the permutable layers are {list(spec.names)}.")
  return spec.axes[layer]


def swap_units(variables: PyTree, layer: str, i: int, j: int, *, spec: PermutationSpec) -> PyTree:
  """The variables with units i and j of permutation `layer` exchanged (an exact symmetry)."""
  _layer_axes(spec, layer)
  n = spec.sizes[layer]
  idx = jnp.arange(n).at[i].set(j).at[j].set(i)
  wrapped_vars, wrapped = as_variables(variables)
  leaf_axes = {}
  for e in spec.axes[layer]:
    leaf_axes.setdefault(e.path, []).append((e.axis, layer, e.repeat))
  out = permute_leaves(wrapped_vars, leaf_axes, {layer: idx})
  return out["params"] if wrapped else out


def swap_path(variables: PyTree, layer: str, i: int, j: int, s, *,
              spec: PermutationSpec | None = None) -> PyTree:
  """The continuous swap of units i and j of one layer (Brea et al. 2019).

  ``theta(s) = (1 - s) theta + s sigma_ij(theta)``, where sigma_ij exchanges the incoming weights,
  bias, BatchNorm entries and outgoing weights of units i and j. theta(0) = theta, theta(1) is the
  swapped copy (same function, same loss), and at s = 1/2 the two units are identical: a
  permutation point, whose gradient is symmetric in the two units.

  Args:
    variables: a variables dict or bare params tree.
    layer: the permutation name (see ``spec.names``, e.g. "Dense_0").
    i, j: the two units.
    s: scalar position in [0, 1] (a traced value is fine: vmap over s for a whole path).
    spec: the model's spec; default `mlp_spec(variables)` (Dense chains).

  References:
    Brea, Simsek, Illing and Gerstner 2019, "Weight-space symmetry in deep networks gives rise
    to permutation saddles, connected by equal-loss valleys across the loss landscape".
  """
  if spec is None:
    spec = mlp_spec(variables)
  _layer_axes(spec, layer)
  n = spec.sizes[layer]
  if not (0 <= i < n and 0 <= j < n) or i == j:
    raise ValueError(f"Units must be two different indices in [0, {n}); got i={i}, j={j}.")
  swapped = swap_units(variables, layer, i, j, spec=spec)
  # (1 - s) a + s b (not a + s (b - a)) makes the two units bitwise equal at s = 1/2.
  return jax.tree.map(lambda a, b: (1 - s) * a + s * b, variables, swapped)


def _swap_point(layer, i, j, spec, params, c):
  return swap_path(params, layer, i, j, c[0], spec=spec)


@functools.lru_cache(maxsize=256)
def _swap_point_fn(layer: str, i: int, j: int, spec: PermutationSpec):
  # one function object per (layer, units, spec): the engine's evaluator compiles once for them
  return functools.partial(_swap_point, layer, i, j, spec)


def swap_path_metrics(metric_fn: Callable, params: PyTree, layer: str, i: int, j: int, ss, *,
                      spec: PermutationSpec | None = None, store=None, metadata: dict | None = None,
                      identity: str | None = None, engine: EngineOptions | None = None
                      ) -> dict[str, np.ndarray]:
  """``metric_fn(swap_path(params, layer, i, j, s))`` for every s in `ss` (Brea et al. 2019).

  Evaluated by the point-evaluation engine (`engine.evaluate_points`: chunked, compiled once,
  sharded over ``mesh``, resumable in ``store`` keyed on the exact bytes of `params`, the ss and
  the metric function).

  Args:
    metric_fn: ``metric_fn(params) -> dict`` (e.g. `lj.make_metric_fn`); a plain function is
      wrapped in `jax.tree_util.Partial`.
    params: the parameters passed to metric_fn (the path is taken in this tree).
    layer, i, j: the permutation and the two units exchanged along the path.
    ss: 1-D array of positions in [0, 1], strictly increasing.
    spec: the model's spec; default `mlp_spec(params)`.
    store, metadata, identity: see `engine.evaluate_points`.
    engine: how the points are computed (`engine.EngineOptions`); default
      ``EngineOptions(progress=False)`` (a swap path is short).

  Returns:
    ``{metric: array (len(ss),)}``; the loss is symmetric about s = 1/2.

  References:
    Brea, Simsek, Illing and Gerstner 2019, "Weight-space symmetry in deep networks gives rise
    to permutation saddles, connected by equal-loss valleys across the loss landscape".
  """
  if spec is None:
    spec = mlp_spec(params)
  _layer_axes(spec, layer)
  n = spec.sizes[layer]
  i, j = int(i), int(j)
  if not (0 <= i < n and 0 <= j < n) or i == j:
    raise ValueError(f"Units must be two different indices in [0, {n}); got i={i}, j={j}.")
  ss = engine_lib.check_grid(ss, name="ss")
  if ss[0] < 0.0 or ss[-1] > 1.0:
    raise ValueError(f"ss must lie in [0, 1] (0: the parameters, 1: the swapped copy); got "
                     f"{ss[0]} to {ss[-1]}.")
  if store is not None:
    metadata = {"what": "swap path", "layer": layer, "units": [i, j], **(metadata or {})}
  point_fn = engine_lib.declare_coordinates(
    jax.tree_util.Partial(_swap_point_fn(layer, i, j, spec), params), 1)
  engine = EngineOptions(progress=False) if engine is None else engine
  return engine_lib.evaluate_points(metric_fn, point_fn, ss[:, None], store=store,
                                    metadata=metadata, identity=identity, engine=engine,
                                    desc="swap path")




