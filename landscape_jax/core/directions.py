"""Random and model-defined directions in parameter space, and their normalisation (Li et al. 2018).

Li, Xu, Taylor, Studer and Goldstein, "Visualizing the Loss Landscape of Neural Nets" (NeurIPS
2018) plot ``f(a) = L(t* + a d)`` and ``f(a, b) = L(t* + a d1 + b d2)`` along random Gaussian
directions that are *filter-normalised*: every filter of ``d`` is rescaled to the norm of the
corresponding filter of the parameters, so that the plot does not depend on the scale invariance
of ReLU networks with BatchNorm.

Layout: a *filter* (output unit) of a kernel is one slice of its output axis, and its norm is
taken over every other axis. The output axis is the LAST one by default, the Flax layout (Dense
``(in, out)``, Conv ``(kh, kw, in, out)``). Parameters in another layout, Equinox's or those
converted from PyTorch (Linear ``(out, in)``, Conv ``(out, in, kh, kw)``), pass
``out_axis=0``; a model that mixes layouts passes the axis per leaf (a pytree of ints, or a
function of the leaf's path and value).

All functions are pure and work on any pytree of arrays (Flax, Equinox, NNX-split, dicts).
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape_jax.core import sharding as shd
from landscape_jax.core import trees

PyTree = Any

NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", None)
IGNORES = ("biasbn", None)
EPS = 1e-10


def _check_floating(params: PyTree) -> None:
  for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
      raise ValueError(f"random_direction needs floating-point leaves; {trees.path_str(p)} has "
                       f"dtype {jnp.result_type(x)}. Pass only the trainable parameters.")


def random_direction(key: jax.Array, params: PyTree) -> PyTree:
  """A Gaussian direction ``d ~ N(0, I)`` with the structure, shapes and dtypes of `params`.

  Each leaf gets an independent draw (``optax.tree.random_like``), as in Li et al. 2018, Sec. 4.
  Integer leaves are not allowed (a direction lives in a real vector space). Sharded parameters
  give a direction with their sharding, drawn in place (`sharding.sharded_like`); the values do
  not depend on the sharding.

  References:
    Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets".
  """
  _check_floating(params)
  # sharded parameters: drawn shard by shard with their sharding, never on one device
  return shd.sharded_like(lambda k: optax.tree.random_like(k, params, jax.random.normal),
                          params)(key)


def _check_norm(norm, ignore):
  if norm not in NORMS:
    raise ValueError(f"Unknown norm {norm!r}; choose one of {NORMS}.")
  if ignore not in IGNORES:
    raise ValueError(f"Unknown ignore {ignore!r}; choose 'biasbn' (zero 1-D leaves) or None.")


def _other_axes(ndim: int, axis: int) -> tuple[int, ...]:
  """Every axis but the output axis `axis` (normalised to ``[0, ndim)``)."""
  return tuple(a for a in range(ndim) if a != axis % ndim)


def _filter_norm(x: jax.Array, axis: int = -1) -> jax.Array:
  """Norm of every output unit (slice of `axis`, over all other axes), broadcastable to ``x``."""
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=_other_axes(x.ndim, axis),
                          keepdims=True))


def _check_axis(axis, shape: tuple[int, ...], path: str) -> int:
  if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
    raise ValueError(f"out_axis for {path} must be an integer axis, got {axis!r}; pass an int, a "
                     "pytree of ints like params, or a function (path, leaf) -> int.")
  ndim = len(shape)
  if not -ndim <= int(axis) < ndim:
    raise ValueError(f"out_axis {int(axis)} is out of range for {path} of shape {shape} "
                     f"(ndim {ndim}); give an axis in [{-ndim}, {ndim - 1}], e.g. -1 for Flax "
                     "kernels (..., in, out) or 0 for PyTorch (out, in, ...).")
  return int(axis)


def output_axes(params: PyTree, out_axis=None) -> PyTree:
  """The output (filter) axis of every leaf, as a pytree of ints with the structure of `params`.

  Args:
    params: the parameters.
    out_axis: None (every leaf's last axis: the Flax layout), an int for every leaf (e.g. 0 for
      PyTorch layouts), a pytree of ints with the structure of `params`, or a function
      ``out_axis(path, leaf) -> int`` of the leaf's ``"a/b/kernel"`` path and the leaf.

  Returns:
    A pytree of Python ints, each in ``[0, ndim)`` (0 for leaves with ``ndim <= 1``, which filter
    normalisation does not rescale).

  Raises:
    ValueError: an axis is not an integer or out of range for its leaf (the message names it), or
      the pytree of axes has another structure.
  """
  def resolve(p, x, a):
    shape = tuple(np.shape(x))
    return 0 if len(shape) <= 1 else _check_axis(a, shape, p) % len(shape)

  if out_axis is None:
    out_axis = -1
  # A pytree of axes is tested first: one shaped like an Equinox module is itself callable.
  if callable(out_axis) and jax.tree.structure(out_axis) != jax.tree.structure(params):
    return trees.map_with_path(lambda p, x: resolve(p, x, out_axis(p, x)), params)
  if jax.tree_util.treedef_is_leaf(jax.tree.structure(out_axis)):  # one axis for every leaf
    return trees.map_with_path(lambda p, x: resolve(p, x, out_axis), params)
  try:
    return trees.map_with_path(resolve, params, out_axis)
  except (ValueError, TypeError) as e:
    if "out_axis" in str(e):
      raise
    raise ValueError("out_axis must be an int, a function (path, leaf) -> int, or a pytree of "
                     "ints with the structure of params; got a pytree of another structure "
                     f"({e}).") from e


def _layer_norm(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))


def _warn_if_zero(d, w, path, norm) -> None:
  """Warns (naming the leaf) when filter normalisation leaves a kernel's direction at zero: the
  direction is zero there, or (``"filter"``) the parameters are (a zero-initialised layer), so the
  leaf does not move in the plot. Concrete values only (nothing is checked under `jit`)."""
  if isinstance(d, jax.core.Tracer) or isinstance(w, jax.core.Tracer) or (
      any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in (d, w))):
    return
  if not np.any(np.asarray(d) != 0):
    warnings.warn(f"The direction is zero at {path}: under '{norm}' normalisation it stays zero, "
                  "so this leaf does not move in the plot.", stacklevel=4)
  elif w is not None and not np.any(np.asarray(w) != 0):
    warnings.warn(f"The parameters are zero at {path} (a zero-initialised layer?): '{norm}' "
                  "normalisation scales the direction by their norm, so this leaf does not move "
                  "in the plot. Use norm='dfilter' or 'layer' to move it.", stacklevel=4)


def _normalize_leaf(d, w, norm, ignore, path, axis=-1):
  if jnp.ndim(w) <= 1:
    # Biases, BatchNorm scale/bias (and scalars): Li et al. zero them ("biasbn") or copy w.
    return jnp.zeros_like(d) if ignore == "biasbn" else jnp.asarray(w, d.dtype)
  if norm is None:
    return d
  if norm == "weight":
    return (d * w).astype(d.dtype)
  if norm in ("filter", "dfilter"):
    dn = _filter_norm(d, axis)
    _warn_if_zero(d, w if norm == "filter" else None, path, norm)
    scale = (_filter_norm(w, axis) if norm == "filter" else 1.0) / (dn + EPS)
    return (d * scale).astype(d.dtype)
  # layer / dlayer: one norm per tensor, no epsilon (as in the reference); a zero direction is an
  # error instead of a silent NaN.
  dn = _layer_norm(d)
  if not isinstance(dn, jax.core.Tracer) and float(dn) == 0.0:
    raise ValueError(f"The direction is zero at {path}; '{norm}' normalisation divides by its "
                     "norm. Use a random direction, or norm='filter' (which has an epsilon).")
  scale = (_layer_norm(w) if norm == "layer" else 1.0) / dn
  return (d * scale).astype(d.dtype)


def normalize_directions(direction: PyTree, params: PyTree, *, norm: str | None = "filter",
                         ignore: str | None = "biasbn", out_axis=None) -> PyTree:
  """Rescales a direction relative to the parameters (Li et al. 2018, Sec. 4).

  For every leaf with ``ndim >= 2`` (kernels), with ``f`` running over output units (the slices
  of the leaf's output axis, `out_axis`) and norms over all other axes:

  * ``"filter"``:  ``d_f <- d_f * ||w_f|| / (||d_f|| + 1e-10)``;
  * ``"layer"``:   ``d <- d * ||w|| / ||d||``;
  * ``"weight"``:  ``d <- d * w`` (elementwise);
  * ``"dfilter"``: ``d_f <- d_f / (||d_f|| + 1e-10)``;
  * ``"dlayer"``:  ``d <- d / ||d||``;
  * ``None``:      ``d`` unchanged.

  Leaves with ``ndim <= 1`` (biases, BatchNorm scale and bias) become 0 under
  ``ignore="biasbn"`` and ``w`` otherwise (as the reference code does). BatchNorm running
  statistics are not parameters: pass only ``variables["params"]``.

  Args:
    direction: a pytree with the structure, shapes and dtypes of `params`.
    params: the parameters at the centre of the plot.
    norm: one of ``"filter"``, ``"layer"``, ``"weight"``, ``"dfilter"``, ``"dlayer"``, None.
    ignore: ``"biasbn"`` or None.
    out_axis: the output axis of the kernels (used by ``"filter"`` / ``"dfilter"``): None for the
      last axis (Flax: Dense ``(in, out)``, Conv ``(kh, kw, in, out)``), an int for every leaf
      (``0`` for PyTorch: Linear ``(out, in)``, Conv ``(out, in, kh, kw)``), a pytree of ints with
      the structure of `params`, or a function ``(path, leaf) -> int`` (see `output_axes`).

  Returns:
    The normalised direction (same structure and dtypes).

  Raises:
    ValueError: an unknown `norm` / `ignore`, directions and params of other structures, a zero
      direction under a layer norm, or an `out_axis` out of range for a leaf (named).

  References:
    Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets".
  """
  _check_norm(norm, ignore)
  trees.check_same_structure(direction, params, names=("direction", "params"))
  axes = output_axes(params, out_axis)
  return trees.map_with_path(lambda p, d, w, a: _normalize_leaf(d, w, norm, ignore, p, a),
                             direction, params, axes)


def orthogonalize(direction: PyTree, *others: PyTree, normalize_to: str = "keep") -> PyTree:
  """Gram-Schmidt: removes from `direction` its components along each of `others`.

  ``d <- d - sum_k <d, o_k> / <o_k, o_k> o_k`` (the `others` are orthogonalised among themselves
  first, so they need not be orthogonal). Inner products over the whole pytree
  (``optax.tree.vdot``), accumulated in float32.

  Args:
    direction: the direction to make orthogonal.
    *others: directions to remove (at least one).
    normalize_to: ``"keep"`` rescales the result to the norm `direction` had (the usual choice for a
      second random direction), ``"none"`` returns the plain projection residual.
  """
  if not others:
    raise ValueError("orthogonalize needs at least one direction to orthogonalise against.")
  if normalize_to not in ("keep", "none"):
    raise ValueError(f"normalize_to must be 'keep' or 'none', got {normalize_to!r}.")
  trees.check_same_structure(direction, *others,
                             names=("direction",) + tuple(f"other {i}" for i in range(len(others))))
  basis = []
  for o in others:
    for b in basis:
      o = optax.tree.add_scale(o, -optax.tree.vdot(o, b) / optax.tree.vdot(b, b), b)
    nn = optax.tree.vdot(o, o)
    if not isinstance(nn, jax.core.Tracer) and float(nn) == 0.0:
      raise ValueError("Cannot orthogonalise against a zero (or linearly dependent) direction.")
    basis.append(o)
  out = direction
  for b in basis:
    out = optax.tree.add_scale(out, -optax.tree.vdot(out, b) / optax.tree.vdot(b, b), b)
  if normalize_to == "keep":
    out = optax.tree.scale(optax.tree.norm(direction) / (optax.tree.norm(out) + EPS), out)
  return jax.tree.map(lambda r, d: r.astype(d.dtype), out, direction)


def _orthogonal_leaf(d, d0, w, norm, axis=-1):
  """`d` minus its component along `d0`, unit by unit, each unit's norm restored.

  The units are those of the normalisation: every filter (output unit, a slice of `axis`) for
  ``"filter"`` / ``"dfilter"``, the whole leaf otherwise. Orthogonal units make orthogonal
  leaves, and restoring each unit's norm keeps the normalisation of `d`.
  """
  if jnp.ndim(w) <= 1:  # not normalised: zeros (ignore="biasbn") or a copy of w
    return d
  axes = _other_axes(d.ndim, axis) if norm in ("filter", "dfilter") else tuple(range(d.ndim))
  x, x0 = d.astype(jnp.float32), d0.astype(jnp.float32)

  def dot(a, b):
    return jnp.sum(a * b, axis=axes, keepdims=True)

  nn0 = dot(x0, x0)
  r = x - jnp.where(nn0 > 0, dot(x, x0) / jnp.where(nn0 > 0, nn0, 1.0), 0.0) * x0
  rn, dn = jnp.sqrt(dot(r, r)), jnp.sqrt(dot(x, x))
  # a unit with nothing left after the projection (a 1-element filter, say) stays zero
  return (r * jnp.where(rn > 0, dn / jnp.where(rn > 0, rn, 1.0), 0.0)).astype(d.dtype)


def random_directions(key: jax.Array, params: PyTree, *, num: int = 2,
                      norm: str | None = "filter", ignore: str | None = "biasbn",
                      same_direction: bool = False, orthogonal: bool = False,
                      out_axis=None) -> tuple[PyTree, ...]:
  """`num` (1 or 2) normalised random directions for a 1-D or 2-D plot around `params`.

  Args:
    key: PRNG key; direction ``k`` uses ``jax.random.fold_in(key, k)``, so the first direction of
      a 2-D plot equals the direction of the 1-D plot with the same key.
    params: the centre.
    num: number of directions.
    norm, ignore, out_axis: see `normalize_directions` (`out_axis`: the output axis of the
      kernels, last by default; ``0`` for PyTorch layouts).
    same_direction: the second direction equals the first (the reference's ``--same_dir``; the 2-D
      plot then shows ``L(t* + (a + b) d)``).
    orthogonal: make the second direction exactly orthogonal to the first, keeping it
      normalised: after normalisation, Gram-Schmidt is applied unit by unit (every filter for
      ``"filter"`` / ``"dfilter"``, every leaf otherwise) and each unit's norm is restored, so
      ``<d1, d2> = 0`` and, e.g., every filter of d2 still has the norm of the parameters'
      filter. (Orthogonalising the raw draws and then rescaling every filter, as before, left
      ``|cos(d1, d2)|`` as large as for independent draws.) With ``ignore=None`` the 1-D leaves
      are copies of `params` in both directions and are not made orthogonal. The first direction
      is unchanged. Random high-dimensional directions are nearly orthogonal already (Li et al.),
      so this is off by default.

  Returns:
    A tuple of `num` directions, with the sharding of `params` when they are sharded over a
    mesh (built under ``jax.jit(..., out_shardings=...)``, never gathered on one device).

  References:
    Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets".
  """
  if num not in (1, 2):
    raise ValueError(f"num must be 1 or 2, got {num}.")
  _check_norm(norm, ignore)
  axes = output_axes(params, out_axis)

  def build(key, params):
    raw = [optax.tree.random_like(jax.random.fold_in(key, k), params, jax.random.normal)
           for k in range(num)]
    if num == 2 and same_direction:
      raw[1] = raw[0]
    out = [normalize_directions(d, params, norm=norm, ignore=ignore, out_axis=axes) for d in raw]
    if num == 2 and orthogonal and not same_direction:
      out[1] = jax.tree.map(lambda d, d0, w, a: _orthogonal_leaf(d, d0, w, norm, a), out[1],
                            out[0], params, axes)
    return tuple(out)

  _check_floating(params)
  # sharded parameters: the directions are built shard by shard with their sharding
  return shd.sharded_like(build, (params,) * num)(key, params)


def directions_from_models(origin: PyTree, *others: PyTree) -> tuple[PyTree, ...]:
  """Directions towards other models: ``x = t2 - t1`` and ``y = t3 - t1`` (no normalisation).

  Used for the two-model interpolation plot (one other model) and the plane through three models
  (Li et al. 2018, Sec. 5; Garipov et al. 2018). With these directions, grid point ``(1, 0)`` is
  `others[0]` and ``(0, 1)`` is `others[1]` exactly.

  References:
    Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets".
  """
  if not others or len(others) > 2:
    raise ValueError("directions_from_models takes the origin and one or two other models.")
  trees.check_same_structure(origin, *others, names=("origin",) + tuple(
    f"model {i + 2}" for i in range(len(others))))
  return tuple(optax.tree.sub(o, origin) for o in others)


def direction_norms(direction: PyTree) -> dict[str, float]:
  """Per-leaf Euclidean norms, keyed by leaf path (for logging and checks)."""
  return {p: float(np.linalg.norm(np.asarray(x, np.float64)))
          for p, x in zip(trees.leaf_paths(direction), jax.tree.leaves(direction), strict=True)}


__all__ = [
  "direction_norms",
  "directions_from_models",
  "normalize_directions",
  "orthogonalize",
  "output_axes",
  "random_direction",
  "random_directions",
]
