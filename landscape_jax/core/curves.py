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
combination; several ts per minibatch (only when asked) are evaluated in turn (unrolled).

Training (`train_curve`) uses Optax, keeps the endpoints fixed (only interior bends are optimised),
adds the L2 term ``0.5 wd ||phi(t)||^2`` on the sampled point, follows the reference learning-rate
schedule (`curve_lr_schedule`), checkpoints every epoch with orbax and resumes bit-for-bit (the
shuffling and the sampled ts depend only on ``(seed, epoch, step)``). `evaluate_curve` measures a
`metric_fn` at 61 points (BatchNorm statistics recomputed per point when the metric_fn does so; see
`adapters.batchnorm.make_recompute_metric_fn`), and compares with the straight line.
`plane_basis`, `plane_grid_point`, `project_to_plane` and `evaluate_plane` give the plane through
three points of the paper's figures.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape_jax.core import engine as engine_lib
from landscape_jax.core import paths, trees
from landscape_jax.core.engine import EngineOptions, check_grid
from landscape_jax.core.surface import surface_grid

__all__ = [
  "bend_count",
  "bezier_coefficients",
  "check_kind",
  "check_ts",
  "curve_coefficients",
  "curve_in_plane",
  "curve_loss",
  "curve_point",
  "curve_summary",
  "evaluate_curve",
  "evaluate_plane",
  "init_curve",
  "join_curve",
  "KINDS",
  "Plane",
  "plane_basis",
  "plane_grid_point",
  "point_from_parts",
  "polychain_coefficients",
  "project_to_plane",
  "split_curve",
  "squared_norm",
]

PyTree = Any
KINDS = ("bezier", "polychain")


# ----------------------------------------------------------------------------- bases and points


def check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"Unknown curve kind '{kind}'; use one of {KINDS}.")


def bezier_coefficients(t, num_bends: int) -> jax.Array:
  """Bernstein coefficients ``c_k(t) = C(n-1, k) t^k (1-t)^(n-1-k)``, k = 0..n-1 (Garipov et al.).

  Integer powers are used, so ``t = 0`` and ``t = 1`` give exactly one-hot coefficients. The
  coefficients sum to one for every t. Returns an array of shape ``(*t.shape, num_bends)``.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
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

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  if num_bends < 2:
    raise ValueError(f"A curve needs at least 2 control points (the endpoints), got {num_bends}.")
  t = jnp.asarray(t, jnp.float32)[..., None]
  k = jnp.arange(num_bends, dtype=jnp.float32)
  return jnp.maximum(0.0, 1.0 - jnp.abs(t * (num_bends - 1) - k))


def curve_coefficients(t, num_bends: int, kind: str = "bezier") -> jax.Array:
  """The basis coefficients of `kind` ("bezier" | "polychain") at t, shape ``(*t.shape, n)``."""
  check_kind(kind)
  fn = bezier_coefficients if kind == "bezier" else polychain_coefficients
  return fn(t, num_bends)


def bend_count(curve: PyTree) -> int:
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

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
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


def _check_t(t) -> None:
  """ValueError for a concrete t outside [0, 1] or NaN; traced ts (jit, vmap) pass unchecked."""
  if isinstance(t, jax.core.Tracer):
    return
  value = np.asarray(t, np.float64)
  if value.ndim == 0 and not 0.0 <= float(value) <= 1.0:
    raise ValueError(
      f"curve_point: t must lie in [0, 1] (t = 0 is the start, t = 1 the end of the curve), got "
      f"t = {float(value)}. Outside [0, 1] the Bezier basis extrapolates and the polygonal "
      "chain's coefficients are all zero (an all-zero network); clip or rescale t.")


def curve_point(curve: PyTree, t, kind: str = "bezier") -> PyTree:
  """phi(t) = sum_k c_k(t) w_k, one weighted sum over the leading bend axis of every leaf.

  At ``t = 0`` and ``t = 1`` the result is exactly the start and end point.

  Raises:
    ValueError: for a concrete `t` outside [0, 1] or NaN. A traced t (inside `jax.jit`,
      `jax.vmap`, `jax.grad`) cannot be checked: there the caller must keep t in [0, 1]
      (outside it a polychain gives an all-zero network, a Bezier curve extrapolates).

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  _check_t(t)
  coeffs = curve_coefficients(t, bend_count(curve), kind)
  if coeffs.ndim != 1:
    raise ValueError("curve_point takes a scalar t; use jax.vmap over t for several points.")
  return _combine(coeffs, curve)


def split_curve(curve: PyTree) -> tuple[PyTree, PyTree]:
  """Splits control points into ``(endpoints, interior)``: leading axes of size 2 and n - 2."""
  n = bend_count(curve)
  ends = jax.tree.map(lambda w: jnp.stack([w[0], w[-1]]), curve)
  interior = jax.tree.map(lambda w: w[1:n - 1], curve)
  return ends, interior


def join_curve(ends: PyTree, interior: PyTree) -> PyTree:
  """Inverse of `split_curve`."""
  return jax.tree.map(lambda e, w: jnp.concatenate([e[:1], w, e[1:]]), ends, interior)


def point_from_parts(ends: PyTree, interior: PyTree, coeffs: jax.Array) -> PyTree:
  """phi from fixed endpoints and trainable interior bends (gradients reach only the interior)."""
  def leaf(e, w):
    c = coeffs.astype(w.dtype)
    return c[0] * e[0] + c[-1] * e[1] + jnp.tensordot(c[1:-1], w, axes=1)
  return jax.tree.map(leaf, ends, interior)


def squared_norm(params: PyTree) -> jax.Array:
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
      losses are averaged over them, evaluated one after the other in an unrolled loop: under
      `jax.grad` the unrolled form is much faster on the CPU than `jax.vmap` over ts (per-t
      weights) or `lax.map`, see benchmarks/bench_curve_step.py; compile time grows with the ts).
    kind: "bezier" or "polychain".
    weight_decay: coefficient of the L2 term on the sampled point phi(t).
    fix_endpoints: stop the gradient at the endpoints, so that only interior bends receive one.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  n = bend_count(curve)
  ends, interior = split_curve(curve)
  if fix_endpoints:
    ends = jax.lax.stop_gradient(ends)
  def one(t):
    p = point_from_parts(ends, interior, curve_coefficients(t, n, kind))
    loss = loss_fn(p, batch)
    return loss + 0.5 * weight_decay * squared_norm(p) if weight_decay else loss
  ts = jnp.asarray(ts, jnp.float32)
  if ts.ndim == 0:
    return one(ts)
  if ts.ndim != 1:
    raise ValueError(f"ts must be a scalar or a 1-D array, got shape {ts.shape}.")
  return sum(one(ts[i]) for i in range(ts.shape[0])) / ts.shape[0]



# ----------------------------------------------------------------------------- evaluation


def _stacked_curve_point(kind, curves, c):
  """phi_c[0](c[1]): the point at t = c[1] of curve number c[0] of a stack of curves."""
  which, t = c[0].astype(jnp.int32), c[1]
  curve = jax.tree.map(lambda x: x[which], curves)
  return _combine(curve_coefficients(t, bend_count(curve), kind), curve)


@functools.cache
def _stacked_point(kind: str):
  # one function object per kind, so that the engine's jitted evaluator is compiled once per kind
  return functools.partial(_stacked_curve_point, kind)


def check_ts(ts, *, name: str = "ts") -> np.ndarray:
  """Validates curve parameters: non-empty, finite, strictly increasing, inside [0, 1].

  Outside [0, 1] a curve is not defined (a polygonal chain there is the all-zero network, a
  Bezier curve an extrapolation), so such ts are an error rather than a number that looks right.
  """
  if np.size(ts) == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array of curve parameters in [0, 1]; use "
                     "e.g. np.linspace(0, 1, 61).")
  ts = check_grid(ts, name=name)
  if ts[0] < 0.0 or ts[-1] > 1.0:
    raise ValueError(f"{name} must lie in [0, 1] (the curve's parameter range); got values from "
                     f"{ts[0]} to {ts[-1]}. Use e.g. np.linspace(0, 1, 61).")
  return ts


def curve_summary(values: Mapping[str, np.ndarray], ts=None) -> dict[str, dict[str, float]]:
  """min / max / mean of every metric along a path, and the barrier of loss-like metrics.

  ``barrier = max_{t in [0, 1]} v(t) - (v(0) + v(1)) / 2`` (Frankle et al. 2020), computed by
  `core.paths.barrier` (the one implementation), for losses and for errors
  (``1 - accuracy``, reported under ``"<split>_error"``). ``start`` and ``end`` are the values at
  ``t = 0`` and ``t = 1``.

  Args:
    values: ``{metric: (T,) values}`` along the path.
    ts: the T curve parameters of the values (default ``linspace(0, 1, T)``, as
      `evaluate_curve`'s default grid).

  Returns:
    ``{metric: {"min", "max", "mean", "start", "end"[, "barrier"]}}``. When the ts omit t = 0 or
    t = 1, the endpoints are unknown: ``start``, ``end`` and ``barrier`` are left out and a
    `UserWarning` says so. A NaN value inside [0, 1] gives a NaN barrier (and NaN min / max /
    mean): nothing is silently dropped.
  """
  out = {}
  keys = list(values)
  n = len(np.asarray(values[keys[0]])) if keys else 0
  ts = np.linspace(0.0, 1.0, n) if ts is None else np.asarray(ts, np.float64)
  ends = paths.endpoint_indices(ts)  # the endpoints exactly as paths.barrier finds them
  has_ends = ends is not None
  if not has_ends and keys:
    warnings.warn("curve_summary: the ts do not include both t = 0 and t = 1, so the summary has "
                  "no start, end or barrier (the barrier needs the endpoint values); evaluate "
                  "the curve on a grid that includes its endpoints.", UserWarning, stacklevel=2)

  def stats(v):
    v = np.asarray(v, np.float64)
    if v.shape != ts.shape:
      raise ValueError(f"curve_summary: {v.shape} values but {ts.shape} ts; give one value per t.")
    summary = {"min": float(np.min(v)), "max": float(np.max(v)), "mean": float(np.mean(v))}
    if has_ends:
      summary.update(start=float(v[ends[0]]), end=float(v[ends[1]]))
    return v, summary

  for k in keys:
    v, out[k] = stats(values[k])
    if "loss" in k and has_ends:
      out[k]["barrier"] = paths.barrier(v, ts)
    if k.endswith("accuracy"):
      err, e = stats(1.0 - v)
      if has_ends:
        e["barrier"] = paths.barrier(err, ts)
      out[k[:-len("accuracy")] + "error"] = e
  return out


def evaluate_curve(metric_fn: Callable[[PyTree], Mapping[str, jax.Array]], curve: PyTree, *,
                   kind: str = "bezier", num_points: int = 61, ts=None, line: bool = True,
                   store: str | None = None, metadata: dict | None = None,
                   identity: str | None = None, engine: EngineOptions | None = None) -> dict:
  """Metrics along the curve (and along the straight line between its endpoints).

  Evaluates ``metric_fn(phi(t))`` at ``t = linspace(0, 1, num_points)`` (61 in Garipov et al.)
  with the point-evaluation engine (`engine.evaluate_points`: chunked, compiled once, sharded over
  ``mesh``, resumable in ``store``, keyed on the exact bytes of the control points, the ts and
  the metric function). For BatchNorm models use ``make_recompute_metric_fn``: the statistics are
  then recomputed on the training split at every t, as the reference does.

  Args:
    metric_fn: ``metric_fn(params) -> dict[str, scalar]``.
    curve: control points (`init_curve`), finite.
    kind: "bezier" or "polychain".
    num_points: number of equally spaced ts on [0, 1] (ignored when `ts` is given).
    ts: explicit curve parameters: strictly increasing, inside [0, 1].
    line: also evaluate the straight line between the endpoints at the same ts.
    store: a store directory (`core.store`); a rerun continues where it stopped, and a
      store of any other evaluation is refused.
    metadata: extra JSON-able configuration recorded in the store.
    identity: see `engine.evaluate_points` (only needed with `store`).
    engine: how the points are computed (`engine.EngineOptions`: chunk size, mesh, map mode,
      batch size, progress, matmul precision); default ``EngineOptions()``.

  Returns:
    ``{"t": ts, "curve": {metric: (T,)}, "line": {metric: (T,)}, "summary": {"curve": ...,
    "line": ...}}`` with summaries from `curve_summary` (min, max, mean, barrier per metric).

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  check_kind(kind)
  if ts is None:
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or (
        num_points < 2):
      raise ValueError(f"num_points must be an integer >= 2, got {num_points!r}.")
    ts = np.linspace(0.0, 1.0, num_points)
  ts = check_ts(ts)
  n = bend_count(curve)
  trees.check_finite(curve, name="curve control points")
  stacked = [curve]
  if line:
    ends, _ = split_curve(curve)
    stacked.append(init_curve(jax.tree.map(lambda e: e[0], ends),
                              jax.tree.map(lambda e: e[1], ends), n))
  pair = jax.tree.map(lambda *xs: jnp.stack(xs), *stacked)
  coords = np.concatenate([np.stack([np.full_like(ts, i), ts], 1) for i in range(len(stacked))])
  if store is not None:
    metadata = {"what": "curve", "kind": kind, "line": line, **(metadata or {})}
  # (selector, t): which of the stacked curves, and where on it
  point_fn = engine_lib.declare_coordinates(jax.tree_util.Partial(_stacked_point(kind), pair), 2)
  res = engine_lib.evaluate_points(metric_fn, point_fn, coords, store=store, metadata=metadata,
                                   identity=identity, engine=engine, desc="curve points")
  m = len(ts)
  out = {"t": ts, "curve": {k: v[:m] for k, v in res.items()}}
  out["summary"] = {"curve": curve_summary(out["curve"], ts)}
  if line:
    out["line"] = {k: v[m:] for k, v in res.items()}
    out["summary"]["line"] = curve_summary(out["line"], ts)
  return out


# ----------------------------------------------------------------------------- plane


class Plane(NamedTuple):
  """Plane through three points: ``p(a, b) = origin + a scale_u u + b scale_v v``.

  ``u``, ``v`` are orthonormal pytrees; ``scale_u = ||w2 - w0||``, ``scale_v`` = the norm of the
  component of ``w1 - w0`` orthogonal to u. In these units w0 = (0, 0), w2 = (1, 0) and w1 has
  b = 1.
  """

  origin: PyTree
  u: PyTree
  v: PyTree
  scale_u: jax.Array
  scale_v: jax.Array


def plane_basis(w0: PyTree, w1: PyTree, w2: PyTree) -> Plane:
  """Orthonormal basis of the plane through w0, w1, w2 (Garipov et al., Figure 1).

  ``u = (w2 - w0) / ||w2 - w0||``, ``v = (w1 - w0 - <w1 - w0, u> u) / ||.||`` (Gram-Schmidt).
  With a 3-point curve: w0, w2 the endpoints and w1 the bend.

  Raises:
    ValueError: if a point is not finite, if w0 == w2, or if the three points are collinear to
      the precision of their dtype: ``scale_v < sqrt(eps) * scale_u`` (eps of the least precise
      leaf dtype, e.g. 3.5e-4 for float32), below which rounding alone can make up ``v``.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  trees.check_same_structure(w0, w1, w2, names=("w0", "w1", "w2"))
  for name, w in (("w0", w0), ("w1", w1), ("w2", w2)):
    trees.check_finite(w, name=f"plane_basis: {name}")
  eps = max((float(jnp.finfo(jnp.result_type(x)).eps) for x in jax.tree.leaves((w0, w1, w2))
             if jnp.issubdtype(jnp.result_type(x), jnp.inexact)),
            default=float(jnp.finfo(jnp.float32).eps))
  du = optax.tree.sub(w2, w0)
  su = optax.tree.norm(du)
  if float(su) == 0.0:
    raise ValueError("plane_basis: w0 and w2 coincide, so no plane is defined; pass three "
                     "distinct, non-collinear points (e.g. two endpoints and the bend).")
  u = optax.tree.scale(1.0 / su, du)
  dv = optax.tree.sub(w1, w0)
  dv = optax.tree.add_scale(dv, -optax.tree.vdot(dv, u), u)
  sv = optax.tree.norm(dv)
  if float(sv) < math.sqrt(eps) * float(su):
    raise ValueError(
      f"plane_basis: the points are collinear: w1 lies on the line through w0 and w2 (its "
      f"distance from the line is {float(sv):.3g}, {float(sv) / float(su):.2g} of |w2 - w0|, "
      f"below sqrt(eps) = {math.sqrt(eps):.2g} for this dtype), so no plane is defined; pass a "
      "bend that is off the straight line (e.g. a trained curve's middle control point).")
  v = optax.tree.scale(1.0 / sv, dv)
  return Plane(w0, u, v, su, sv)


def plane_grid_point(plane: Plane, a, b) -> PyTree:
  """``origin + a scale_u u + b scale_v v`` (a, b in units where w2 = (1, 0))."""
  return jax.tree.map(lambda o, u, v: o + (a * plane.scale_u) * u + (b * plane.scale_v) * v,
                      plane.origin, plane.u, plane.v)


def project_to_plane(plane: Plane, w: PyTree) -> jax.Array:
  """Coordinates ``(<w - w0, u>, <w - w0, v>)`` of w in the plane, in parameter-space units."""
  d = optax.tree.sub(w, plane.origin)
  return jnp.stack([optax.tree.vdot(d, plane.u), optax.tree.vdot(d, plane.v)])


def curve_in_plane(plane: Plane, curve: PyTree, *, kind: str = "bezier", num_points: int = 61,
                   ) -> np.ndarray:
  """(num_points, 2) projections of phi(t) onto the plane (a 3-point curve lies in it)."""
  ts = jnp.linspace(0.0, 1.0, num_points)
  return np.asarray(jax.vmap(lambda t: project_to_plane(plane, curve_point(curve, t, kind)))(ts))


def evaluate_plane(metric_fn: Callable[[PyTree], Mapping[str, jax.Array]], plane: Plane, *,
                   alphas=None, betas=None, store: str | None = None,
                   metadata: dict | None = None, identity: str | None = None,
                   point_fn: Callable | None = None, engine: EngineOptions | None = None
                   ) -> dict:
  """Metrics on the grid ``p(a_i, b_j)`` of the plane, ``res[k][i, j]`` (Garipov et al.).

  Default ``a, b = linspace(-0.2, 1.2, 21)``. Evaluated by `core.surface.surface_grid`
  with centre w0 and directions ``(scale_u u, scale_v v)`` (so it is chunked, vmapped, sharded
  over the mesh of `engine` and resumable in the `store` directory like any surface; `store`,
  `metadata`, `identity`, `point_fn` and `engine` as there). For BatchNorm models pass a
  `make_recompute_metric_fn` metric_fn.
  Returns the metric grids and the plot coordinates ``x = a scale_u``, ``y = b scale_v`` (the
  units of `project_to_plane`).
  """
  alphas = np.linspace(-0.2, 1.2, 21) if alphas is None else check_grid(alphas, name="alphas")
  betas = np.linspace(-0.2, 1.2, 21) if betas is None else check_grid(betas, name="betas")
  d1 = optax.tree.scale(plane.scale_u, plane.u)
  d2 = optax.tree.scale(plane.scale_v, plane.v)
  out = surface_grid(metric_fn, plane.origin, (d1, d2), alphas, betas, store=store,
                     metadata=metadata, identity=identity, point_fn=point_fn, engine=engine)
  out = dict(out)
  out["alphas"], out["betas"] = alphas, betas
  out["x"] = alphas * float(plane.scale_u)
  out["y"] = betas * float(plane.scale_v)
  return out


