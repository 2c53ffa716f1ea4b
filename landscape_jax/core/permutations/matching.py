"""Weight matching: align one network to another by permuting its units.

Ainsworth et al. 2023 ("Git Re-Basin: Merging Models modulo Permutation Symmetries"), algorithm 2:
coordinate ascent over the permutations of a `PermutationSpec`, each step a linear assignment
problem solved exactly (`scipy.optimize.linear_sum_assignment`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from landscape_jax.core import progress as progress_lib
from landscape_jax.core import sharding as shd
from landscape_jax.core import trees
from landscape_jax.core.permutations.specs import (
  Permutation,
  PermutationSpec,
  as_variables,
  check_permutation,
  check_spec,
  host_rng,
  take_units,
)

__all__ = [
  "host_leaf",
  "weight_matching",
  "WeightMatchingResult",
]

PyTree = Any

# ------------------------------------------------------------------------------------------------
# Weight matching


class WeightMatchingResult(NamedTuple):
  """Result of `weight_matching`.

  Attributes:
    perm: ``{name: int32 array}``; ``apply_permutation(spec, perm, variables_b)`` is aligned to a.
    objectives: ``sum_l <W_a^l, (P W_b)^l>`` over all params, before the first sweep and after
      each sweep (non-decreasing).
    num_sweeps: sweeps run.
    converged: True if the last sweep improved no permutation (gain <= 1e-12).
  """

  perm: Permutation
  objectives: np.ndarray
  num_sweeps: int
  converged: bool


def _flat_leaves(params) -> dict:
  """``{"params/<path>": leaf}``, the leaves as they are (on their devices, not read)."""
  return {f"params/{p}": x
          for p, x in zip(trees.leaf_paths(params), jax.tree.leaves(params), strict=True)}


def host_leaf(x) -> np.ndarray:
  """One parameter leaf as a float32 host array (`sharding.host_copy`: a leaf split over several
  devices leaves no host copy behind, so weight matching holds one leaf at a time)."""
  return shd.host_copy(x, np.float32)


def _count_nonfinite(x) -> int:
  """Non-finite entries of a leaf, counted where the leaf lives (nothing gathered)."""
  if isinstance(x, jax.Array):
    return int(jnp.sum(~jnp.isfinite(x)))
  return int(np.sum(~np.isfinite(np.asarray(x))))


def _unit_matrix(w: np.ndarray, axis: int, repeat: int) -> np.ndarray:
  """(n, rest): the units of `axis` (inner factor if repeat > 1) as rows."""
  w = np.moveaxis(w, axis, 0)
  n = w.shape[0] // repeat
  return w.reshape(repeat, n, -1).transpose(1, 0, 2).reshape(n, -1)


def weight_matching(key: jax.Array, spec: PermutationSpec, variables_a: PyTree,
                    variables_b: PyTree, *, max_iter: int = 100, tol: float = 1e-12,
                    init_perm: Mapping[str, Any] | None = None,
                    progress: bool = False) -> WeightMatchingResult:
  """Aligns b to a by weight matching (Ainsworth et al. 2023, Git Re-Basin, algorithm 2).

  Maximises ``sum_l <W_a^l, P_l W_b^l P_{l-1}^T>`` over the permutations by coordinate descent:
  each sweep visits the permutations in a random order (from `key`); for permutation p with the
  others fixed, the objective is ``sum_{i} C[i, pi(i)]`` with
  ``C = sum over the weights w touched by p of A_w @ B_w^T``, where A_w (B_w) is w_a (w_b with the
  other permutations applied) with p's axis moved to the front and the rest flattened; the best
  pi is a linear assignment (`scipy.optimize.linear_sum_assignment`, maximize=True). A new pi
  is taken only if it gains more than `tol` (relative); the descent stops after a sweep without
  gain or after `max_iter` sweeps. Only ``params`` enter the objective (running statistics
  follow the permutation in `apply_permutation`). Computed on the host: float32 products
  (BLAS) accumulated into a float64 cost matrix; objectives summed in float64. Parameters
  sharded over several devices stay where they are: each leaf is read to the host when a cost
  matrix or the objective needs it and dropped after (`host_leaf`), so the host holds the two
  models' copies of one leaf at a time, never a model, and the permutation is the one of the
  same parameters on one device (the same float32 arithmetic).

  Args:
    key: PRNG key for the visiting order (the result is a deterministic function of it).
    spec: the model's `PermutationSpec`.
    variables_a, variables_b: variables dicts or bare params trees of the same model.
    max_iter: maximum number of sweeps.
    tol: minimum gain, relative to ``max(1, |objective of p|)``, for p to be updated.
    init_perm: starting permutation (default identity).
    progress: show a tqdm bar over sweeps.

  Returns:
    A `WeightMatchingResult` (perm, objective per sweep, number of sweeps, converged).

  Raises:
    ValueError: a parameter of either model is not finite (the message names the model and the
      leaf), `init_perm` is not a permutation, or the spec does not fit the variables.

  References:
    Ainsworth, Hayase and Srinivasa 2023, "Git Re-Basin: Merging Models modulo Permutation
    Symmetries".
  """
  va, _ = as_variables(variables_a)
  vb, _ = as_variables(variables_b)
  trees.check_same_structure(va["params"], vb["params"], names=("variables_a", "variables_b"),
                             check_dtype=False)
  check_spec(spec, va["params"])
  if max_iter < 1:
    raise ValueError(f"max_iter must be >= 1, got {max_iter}.")
  a = _flat_leaves(va["params"])
  b = _flat_leaves(vb["params"])
  # Parameters split over several devices are read one leaf at a time and never kept on the
  # host (the model may not fit there); others are read once and a's unit matrices cached.
  stream = shd.spans_devices((a, b))
  if not stream:
    a = {p: host_leaf(x) for p, x in a.items()}
    b = {p: host_leaf(x) for p, x in b.items()}
  for which, flat in (("variables_a", a), ("variables_b", b)):
    for path, x in flat.items():
      bad = _count_nonfinite(x)
      if bad:
        raise ValueError(
          f"weight_matching: {which} has NaN/inf values at {path} ({bad} "
          f"of {np.size(x)} entries); weight matching needs finite weights. Check that model's "
          "checkpoint or training run (lj.trees.check_finite).")
  leaf_axes = {p: v for p, v in spec.leaf_axes().items() if p in a}
  names = list(spec.names)
  if init_perm is None:
    perm = {k: np.arange(n) for k, n in spec.sizes.items()}
  else:
    check_permutation(spec, init_perm)
    perm = {k: np.asarray(v, np.int64) for k, v in init_perm.items()}
  rng = host_rng(key)

  def objective():
    total = 0.0
    for p in a:  # one leaf at a time
      pb = host_leaf(b[p])
      for axis, other, repeat in leaf_axes.get(p, ()):
        pb = take_units(pb, perm[other], axis, repeat, np)
      total += np.einsum("i,i->", host_leaf(a[p]).ravel(), pb.ravel(), dtype=np.float64)
      del pb
    return float(total)

  objectives = [objective()]
  a_units: dict[tuple[str, int], np.ndarray] = {}  # a's unit matrices do not change
  converged, sweeps = False, 0
  bar = progress_lib.progress_bar(range(max_iter), desc="weight matching", unit="sweep",
                                  enabled=progress)
  for _ in bar:
    sweeps += 1
    improved = False
    for idx in rng.permutation(len(names)):
      name = names[idx]
      n = spec.sizes[name]
      cost = np.zeros((n, n))
      for e in spec.axes[name]:
        if e.path not in a:
          continue
        wb = host_leaf(b[e.path])
        for axis, other, repeat in leaf_axes[e.path]:
          if axis != e.axis:
            wb = take_units(wb, perm[other], axis, repeat, np)
        ua = a_units.get((e.path, e.axis))
        if ua is None:
          ua = _unit_matrix(host_leaf(a[e.path]), e.axis, e.repeat)
          if not stream:
            a_units[(e.path, e.axis)] = ua
        cost += ua @ _unit_matrix(wb, e.axis, e.repeat).T
        del wb, ua
      rows, cols = scipy.optimize.linear_sum_assignment(cost, maximize=True)
      new = cols[np.argsort(rows)]
      old_val = cost[np.arange(n), perm[name]].sum()
      new_val = cost[np.arange(n), new].sum()
      if new_val - old_val > tol * max(1.0, abs(old_val)):
        perm[name] = new
        improved = True
    objectives.append(objective())
    if not improved:
      converged = True
      break
  out = {k: jnp.asarray(v, jnp.int32) for k, v in perm.items()}
  return WeightMatchingResult(out, np.asarray(objectives), sweeps, converged)


