"""Mode connectivity (Garipov et al. 2018): parametric curves between two minima.

A curve with ``n = num_bends`` control points ``w_0 .. w_{n-1}`` is

    phi(t) = sum_k c_k(t) w_k,   t in [0, 1],

with ``w_0`` and ``w_{n-1}`` the two fixed endpoints (trained minima) and the interior bends
trained to minimise ``E_{t ~ U(0, 1)} L(phi(t))``. Two bases are provided:

* Bezier: ``c_k(t) = C(n-1, k) t^k (1-t)^(n-1-k)`` (one bend: ``(1-t)^2 w_0 + 2t(1-t) theta +
  t^2 w_2``);
* polygonal chain: ``c_k(t) = max(0, 1 - |t (n-1) - k|)`` (the chain passes through every bend, at
  ``t = k / (n-1)``).

The control points are one pytree whose leaves carry a leading bend axis of size ``n`` (built with
`init_curve`). `curve_point` evaluates phi(t) as a weighted sum over that axis (one `tensordot` per
leaf), so a curve training step costs one forward/backward pass of the model plus O(n P) for the
combination; several ts per minibatch go through `jax.vmap` only when asked.

Training (`train_curve`) uses Optax, keeps the endpoints fixed (only interior bends are optimised),
adds the L2 term ``0.5 wd ||phi(t)||^2`` on the sampled point, follows the reference learning-rate
schedule (`curve_lr_schedule`), checkpoints every epoch with orbax and resumes bit-for-bit (the
shuffling and the sampled ts depend only on ``(seed, epoch, step)``). `evaluate_curve` measures a
`metric_fn` at 61 points (BatchNorm statistics recomputed per point when the metric_fn does so; see
`landscape_jax.batchnorm.make_recompute_metric_fn`), and compares with the straight line.
`plane_basis`, `plane_grid_point`, `project_to_plane` and `evaluate_plane` give the plane through
three points of the paper's figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape_jax import trees

PyTree = Any
KINDS = ("bezier", "polychain")


# ----------------------------------------------------------------------------- bases and points


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"Unknown curve kind '{kind}'; use one of {KINDS}.")


def bezier_coefficients(t, num_bends: int) -> jax.Array:
  """Bernstein coefficients ``c_k(t) = C(n-1, k) t^k (1-t)^(n-1-k)``, k = 0..n-1 (Garipov et al.).

  Integer powers are used, so ``t = 0`` and ``t = 1`` give exactly one-hot coefficients. The
  coefficients sum to one for every t. Returns an array of shape ``(*t.shape, num_bends)``.
  """
  if num_bends < 2:
    raise ValueError(f"A curve needs at least 2 control points (the endpoints), got {num_bends}.")
  t = jnp.asarray(t, jnp.float32)[..., None]
  deg = num_bends - 1
  k = np.arange(num_bends)
  binom = jnp.asarray([math.comb(deg, int(i)) for i in k], jnp.float32)
  return binom * jnp.power(t, k) * jnp.power(1.0 - t, deg - k)


def polychain_coefficients(t, num_bends: int) -> jax.Array:
  """Polygonal-chain coefficients ``c_k(t) = max(0, 1 - |t (n-1) - k|)`` (Garipov et al.).

  Linear interpolation between consecutive bends; at ``t = k / (n-1)`` the chain is exactly at
  bend k. Returns an array of shape ``(*t.shape, num_bends)``.
  """
  if num_bends < 2:
    raise ValueError(f"A curve needs at least 2 control points (the endpoints), got {num_bends}.")
  t = jnp.asarray(t, jnp.float32)[..., None]
  k = jnp.arange(num_bends, dtype=jnp.float32)
  return jnp.maximum(0.0, 1.0 - jnp.abs(t * (num_bends - 1) - k))


def curve_coefficients(t, num_bends: int, kind: str = "bezier") -> jax.Array:
  """The basis coefficients of `kind` ("bezier" | "polychain") at t, shape ``(*t.shape, n)``."""
  _check_kind(kind)
  fn = bezier_coefficients if kind == "bezier" else polychain_coefficients
  return fn(t, num_bends)


def num_bends(curve: PyTree) -> int:
  """Number of control points (the size of the leading axis of every leaf)."""
  leaves = jax.tree.leaves(curve)
  if not leaves:
    raise ValueError("The curve has no leaves; build it with init_curve(start, end, num_bends).")
  sizes = {int(np.shape(x)[0]) if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"Every curve leaf needs the same leading bend axis; got sizes {sizes}. "
                     "Build the curve with init_curve(start, end, num_bends).")
  return sizes.pop()


def init_curve(start: PyTree, end: PyTree, num_bends: int = 3, *,
               bends: PyTree | Sequence[PyTree] | None = None) -> PyTree:
  """Control points stacked on a leading axis, interior bends on the straight line.

  ``w_j = (1 - j/(n-1)) w_0 + (j/(n-1)) w_{n-1}`` (Garipov et al., initialisation of the curve).

  Args:
    start, end: the endpoint parameter pytrees (same structure, shapes, dtypes).
    num_bends: total number of control points n >= 2, endpoints included (3 = one bend).
    bends: optional interior bends to start from instead of the straight line: a list of
      ``num_bends - 2`` pytrees (or a single pytree when ``num_bends == 3``).

  Returns:
    A pytree like `start` whose leaves have shape ``(num_bends, *leaf.shape)``.
  """
  if num_bends < 2:
    raise ValueError(f"num_bends counts the endpoints and must be >= 2, got {num_bends}.")
  trees.check_same_structure(start, end, names=("start", "end"))
  if bends is None:
    fracs = [j / (num_bends - 1) for j in range(1, num_bends - 1)]
    inner = [jax.tree.map(lambda a, b, f=f: ((1 - f) * a + f * b).astype(a.dtype), start, end)
             for f in fracs]
  else:
    inner = [bends] if (num_bends == 3 and not isinstance(bends, list | tuple)) else list(bends)
    if len(inner) != num_bends - 2:
      raise ValueError(f"bends must hold num_bends - 2 = {num_bends - 2} pytrees, "
                       f"got {len(inner)}.")
    for i, b in enumerate(inner):
      trees.check_same_structure(start, b, names=("start", f"bends[{i}]"))
  return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), start, *inner, end)


def _combine(coeffs: jax.Array, curve: PyTree) -> PyTree:
  return jax.tree.map(lambda w: jnp.tensordot(coeffs.astype(w.dtype), w, axes=1), curve)


def curve_point(curve: PyTree, t, kind: str = "bezier") -> PyTree:
  """phi(t) = sum_k c_k(t) w_k, one weighted sum over the leading bend axis of every leaf.

  At ``t = 0`` and ``t = 1`` the result is exactly the start and end point.
  """
  coeffs = curve_coefficients(t, num_bends(curve), kind)
  if coeffs.ndim != 1:
    raise ValueError("curve_point takes a scalar t; use jax.vmap over t for several points.")
  return _combine(coeffs, curve)


def split_curve(curve: PyTree) -> tuple[PyTree, PyTree]:
  """Splits control points into ``(endpoints, interior)``: leading axes of size 2 and n - 2."""
  n = num_bends(curve)
  ends = jax.tree.map(lambda w: jnp.stack([w[0], w[-1]]), curve)
  interior = jax.tree.map(lambda w: w[1:n - 1], curve)
  return ends, interior


def join_curve(ends: PyTree, interior: PyTree) -> PyTree:
  """Inverse of `split_curve`."""
  return jax.tree.map(lambda e, w: jnp.concatenate([e[:1], w, e[1:]]), ends, interior)


def _point_from_parts(ends: PyTree, interior: PyTree, coeffs: jax.Array) -> PyTree:
  """phi from fixed endpoints and trainable interior bends (gradients reach only the interior)."""
  def leaf(e, w):
    c = coeffs.astype(w.dtype)
    return c[0] * e[0] + c[-1] * e[1] + jnp.tensordot(c[1:-1], w, axes=1)
  return jax.tree.map(leaf, ends, interior)


def _l2(params: PyTree) -> jax.Array:
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(params))


def curve_loss(loss_fn: Callable[[PyTree, Any], jax.Array], curve: PyTree, batch, ts,
               kind: str = "bezier", *, weight_decay: float = 0.0,
               fix_endpoints: bool = True) -> jax.Array:
  """Mean of ``loss_fn(phi(t), batch) + 0.5 wd ||phi(t)||^2`` over the ts (Garipov et al.).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` minibatch objective (for BatchNorm models use
      training-mode statistics, e.g. ``make_loss_fn(..., train=True)``).
    curve: control points from `init_curve`.
    batch: the minibatch passed to `loss_fn`.
    ts: a scalar t (one point per minibatch, as the reference code) or a 1-D array of ts (the
      losses are averaged over them with `jax.vmap`; lower variance, more compute).
    kind: "bezier" or "polychain".
    weight_decay: coefficient of the L2 term on the sampled point phi(t).
    fix_endpoints: stop the gradient at the endpoints, so that only interior bends receive one.
  """
  n = num_bends(curve)
  ends, interior = split_curve(curve)
  if fix_endpoints:
    ends = jax.lax.stop_gradient(ends)
  def one(t):
    p = _point_from_parts(ends, interior, curve_coefficients(t, n, kind))
    loss = loss_fn(p, batch)
    return loss + 0.5 * weight_decay * _l2(p) if weight_decay else loss
  ts = jnp.asarray(ts, jnp.float32)
  if ts.ndim == 0:
    return one(ts)
  if ts.ndim != 1:
    raise ValueError(f"ts must be a scalar or a 1-D array, got shape {ts.shape}.")
  return jnp.mean(jax.vmap(one)(ts))


def curve_lr_schedule(base_lr: float, *, total_epochs: int, steps_per_epoch: int,
                      ) -> optax.Schedule:
  """Reference learning-rate schedule of Garipov et al. (constant within an epoch).

  With ``a = epoch / total_epochs``: factor 1 for ``a <= 0.5``, ``1 - 0.99 (a - 0.5) / 0.4`` for
  ``0.5 < a <= 0.9`` (linear down to 0.01), and 0.01 afterwards; lr = base_lr * factor.
  """
  if total_epochs <= 0 or steps_per_epoch <= 0:
    raise ValueError("total_epochs and steps_per_epoch must be positive.")

  def schedule(step):
    a = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32) / total_epochs
    factor = jnp.where(a <= 0.5, 1.0, jnp.where(a <= 0.9, 1.0 - (a - 0.5) / 0.4 * 0.99, 0.01))
    return base_lr * factor

  return schedule
