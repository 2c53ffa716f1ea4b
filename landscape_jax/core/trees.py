"""Pytree helpers that `optax.tree` does not provide.

Pytree arithmetic (sums, scalings, inner products, norms) uses `optax.tree` (`tree_add`,
`tree_scale`, `tree_add_scale`, `tree_vdot`, `tree_norm`, ...). This module only adds what it lacks:
readable leaf paths, masks by path or rank, structure checks with errors that name the first
differing path, and a float64-free ravel for host-side linear algebra.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "apply_mask",
  "as_partial",
  "check_finite",
  "check_same_structure",
  "first_difference",
  "index",
  "leaf_paths",
  "map_with_path",
  "mask_by_ndim",
  "mask_by_path",
  "num_params",
  "path_str",
  "stack",
  "unstack",
]

PyTree = Any


def path_str(path: tuple) -> str:
  """Formats a `jax.tree_util` key path as ``"a/b/kernel"``."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(str(key.name))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    else:
      parts.append(str(key))
  return "/".join(parts)


def leaf_paths(tree: PyTree) -> list[str]:
  """Returns the ``"a/b/kernel"`` path of every leaf, in `jax.tree.leaves` order."""
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def map_with_path(fn: Callable[[str, Any], Any], tree: PyTree, *rest: PyTree) -> PyTree:
  """`jax.tree.map` whose function also receives the leaf's ``"a/b/kernel"`` path first."""
  return jax.tree_util.tree_map_with_path(lambda p, x, *r: fn(path_str(p), x, *r), tree, *rest)


def mask_by_ndim(tree: PyTree, *, min_ndim: int = 2) -> PyTree:
  """Boolean pytree: True for leaves with ``ndim >= min_ndim`` (Li et al.: not biases or BN)."""
  return jax.tree.map(lambda x: jnp.ndim(x) >= min_ndim, tree)


def mask_by_path(tree: PyTree, pattern: str) -> PyTree:
  """Boolean pytree: True where the leaf path matches the regular expression `pattern`."""
  regex = re.compile(pattern)
  return map_with_path(lambda p, _: bool(regex.search(p)), tree)


def apply_mask(tree: PyTree, mask: PyTree) -> PyTree:
  """Zeroes the leaves whose mask entry is False (keeps structure, shapes and dtypes)."""
  return jax.tree.map(lambda x, m: x if m else jnp.zeros_like(x), tree, mask)


def first_difference(a: PyTree, b: PyTree, *, check_dtype: bool = True) -> str | None:
  """Describes the first difference in structure, shape or dtype between two pytrees.

  Returns None when they agree. The message names the leaf path so that a user can find the
  offending parameter (e.g. ``"Dense_1/kernel: shape (64, 10) vs (32, 10)"``).
  """
  la, ta = jax.tree_util.tree_flatten_with_path(a)
  lb, tb = jax.tree_util.tree_flatten_with_path(b)
  pa = [path_str(p) for p, _ in la]
  pb = [path_str(p) for p, _ in lb]
  if pa != pb:
    set_b, set_a = set(pb), set(pa)
    only_a = [p for p in pa if p not in set_b]
    only_b = [p for p in pb if p not in set_a]
    if only_a or only_b:
      return (
        f"structure differs: only in first: {only_a[:3]}; only in second: {only_b[:3]}"
      )
    return f"leaf order differs: {pa[:3]}... vs {pb[:3]}..."
  if ta != tb:
    return f"tree structure differs: {ta} vs {tb}"
  for p, (_, x), (_, y) in zip(pa, la, lb, strict=True):
    if np.shape(x) != np.shape(y):
      return f"{p}: shape {np.shape(x)} vs {np.shape(y)}"
    if check_dtype and jnp.result_type(x) != jnp.result_type(y):
      return f"{p}: dtype {jnp.result_type(x)} vs {jnp.result_type(y)}"
  return None


def check_same_structure(*trees: PyTree, names: tuple[str, ...] | None = None,
                         check_dtype: bool = True) -> None:
  """Raises ValueError naming the first differing leaf path if the pytrees do not match."""
  if len(trees) < 2:
    return
  names = names or tuple(f"tree {i}" for i in range(len(trees)))
  for name, other in zip(names[1:], trees[1:], strict=True):
    diff = first_difference(trees[0], other, check_dtype=check_dtype)
    if diff is not None:
      raise ValueError(
        f"{names[0]} and {name} must have the same pytree structure, shapes and dtypes; {diff}. "
        "Pass parameters of the same model (e.g. both variables['params'])."
      )


@jax.jit
def _finite_and_nonzero(leaves):
  """``(all finite, any non-zero)`` per leaf, as two bool vectors: one compiled program per tree
  shape (eager per-leaf checks compiled two small programs per leaf shape, seconds on a ResNet)."""
  finite = [jnp.all(jnp.isfinite(x)) for x in leaves]
  nonzero = [jnp.any(x != 0) for x in leaves]
  return jnp.stack(finite), jnp.stack(nonzero)


def leaf_flags(tree: PyTree) -> tuple[list[str], np.ndarray, np.ndarray]:
  """``(paths, finite, nonzero)``: each leaf's path and whether it is all finite / has a non-zero
  entry (host bools; one compiled program per tree shape)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = [path_str(p) for p, _ in flat]
  if not flat:
    return [], np.zeros(0, bool), np.zeros(0, bool)
  if all(not isinstance(x, jax.Array) or x.is_fully_addressable for _, x in flat):
    # on the host: no compilation at all (a copy from an accelerator, as an identity digest makes)
    arrays = [np.asarray(x) for _, x in flat]
    return (paths, np.array([bool(np.all(np.isfinite(a))) if a.dtype.kind in "fc" else True
                             for a in arrays]),
            np.array([bool(np.any(a != 0)) for a in arrays]))
  finite, nonzero = _finite_and_nonzero([jnp.asarray(x) for _, x in flat])
  return paths, np.asarray(finite), np.asarray(nonzero)


def check_finite(tree: PyTree, *, name: str = "parameters", error: type[Exception] = ValueError,
                 hint: str = "check the checkpoint.") -> None:
  """Raises `error` naming the first leaf of `tree` with a NaN or infinite value: ``"{name}
  contain non-finite values at {leaf path}; {hint}"`` (host-side check; the one
  finiteness check of the library: parameters, directions, Lanczos and Hutchinson outputs,
  sharpness values)."""
  paths, finite, _ = leaf_flags(tree)
  bad = np.flatnonzero(~finite)
  if bad.size:
    raise error(f"{name} contain non-finite values at {paths[bad[0]] or 'the root'}; "
                f"{hint}")


def as_partial(fn, *, name: str = "metric_fn") -> jax.tree_util.Partial | None:
  """`fn` as a `jax.tree_util.Partial` (a pytree whose arrays are jit arguments, so one
  compilation serves any data of the same shapes); a Partial and None are returned as they are.

  Raises:
    TypeError: `fn` is not callable (the message names it as `name`).
  """
  if fn is None or isinstance(fn, jax.tree_util.Partial):
    return fn
  if not callable(fn):
    raise TypeError(f"{name} must be a callable, got {type(fn).__name__}.")
  return jax.tree_util.Partial(fn)


def num_params(tree: PyTree) -> int:
  """Total number of scalar entries of a pytree (works on `jax.eval_shape` results too)."""
  return int(sum(np.prod(np.shape(x), dtype=np.int64) for x in jax.tree.leaves(tree)))


def stack(trees: list[PyTree]) -> PyTree:
  """Stacks pytrees of the same structure along a new leading axis."""
  check_same_structure(*trees)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: PyTree) -> list[PyTree]:
  """Inverse of `stack`: splits the leading axis into a list of pytrees."""
  n = jax.tree.leaves(tree)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def index(tree: PyTree, i) -> PyTree:
  """Selects entry `i` of the leading axis of every leaf."""
  return jax.tree.map(lambda x: x[i], tree)
