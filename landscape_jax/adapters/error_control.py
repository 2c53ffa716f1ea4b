"""Error-controlled surfaces: each point's loss estimated on a growing random subset of the split.

An exact surface costs one pass over the split per grid point. `make_error_controlled_metric_fn`
walks one fixed random order of the split in batches and stops at a point as soon as the
standard error of its mean loss is at most ``tol + rtol |L|`` (absolute plus relative to the
estimate ``L``; ``rtol`` is 0 unless given), or once the whole split is used (the exact
value). Opt-in, never the default: the stored surface holds estimates, with their standard error
and the number of examples used next to every value.

Estimators, with per-example losses ``l_i`` at the point and ``n`` of the ``N`` examples seen
(sampling without replacement, hence the finite-population factor):

* plain: ``L = mean_n(l)``, ``sem = s(l) / sqrt(n) * sqrt((N - n) / (N - 1))``;
* control variate (e.g. Glasserman 2004, "Monte Carlo Methods in Financial Engineering", sec.
  4.1): given per-example covariates ``c_i`` whose mean ``mu_c`` over the whole split is known,
  ``L = mu_c + mean_n(l - c)``, ``sem = s(l - c) / sqrt(n) * sqrt((N - n) / (N - 1))``. Unbiased for
  any ``c``; the closer ``c_i`` tracks ``l_i``, the fewer examples a point needs.

Anchored control variates (``anchors=anchor_plane(center, directions, xs, ys, stride=4)``): the
model is evaluated exactly once at the anchors, a coarse sub-grid of the surface, and every
example's outputs there are kept. At a point ``(a, b)`` of the plane the covariate comes from the
tensor-product Lagrange interpolation (cubic: the 4 nearest anchors per axis) ``I`` of those
tables:

* ``covariate="logits"``: ``c_i = CE(I[z_i](a, b), y_i)``, the cross-entropy of the
  interpolated logits, and ``mu_c`` its mean over the whole split, computed at the point from the
  tables alone (interpolation and a log-sum-exp per example: no network evaluation). The logits
  are smoother in ``(a, b)`` than the loss, whose log-sum-exp bends sharply where the arg-max
  class changes, so the residual is smaller where the loss is large. Memory: anchors x examples x
  classes float32 values.
* ``covariate="loss"`` (default): ``c_i = I[l_i](a, b)`` and ``mu_c`` the same interpolation
  of the anchors' exact means (anchors x examples x 2 values).

On a trained ResNet-8's plane (benchmarks/bench_error_control.py, RESULTS.md) the logits
reduced the examples an absolute tolerance needs, but with ``rtol`` they stopped most points
after one batch, where the sample standard error is least reliable, and the largest deviation
near the minimum grew compared with ``"loss"``, for about the same time; hence the default.

Far from the minimum per-example losses spread over orders of magnitude (a standard deviation of
10-20 for a mean of 5-20 on digits) so the plain estimator needs ``(s / tol)^2`` examples, more
than the split holds, while the residual ``l_i - c_i`` stays small. ``(a, b)`` are recovered
from the parameters by least squares onto the plane, so the metric remains a function of the
parameters alone and runs inside `surface_grid` (chunks, store, resume, mesh) unchanged. Points
off the plane get a worse covariate, never a biased estimate.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from landscape_jax.adapters.evaluation import (
  apply_checked,
  correct,
  cross_entropy,
  model_variables,
  named_splits,
  prepare_inputs,
  use_onednn,
)
from landscape_jax.core import progress as progress_lib
from landscape_jax.core.paths import plane_point
from landscape_jax.core.splits import DeviceSplit, device_split, num_examples

PyTree = Any
_ORDER = 4  # anchors per axis in the interpolation stencil (cubic Lagrange)


COVARIATES = ("loss", "logits")


class AnchorPlane(NamedTuple):
  """Anchor grid of an anchored control variate: ``center + xs[i] d1 (+ ys[j] d2)``, and what
  the anchors interpolate (`covariate`: ``"loss"`` or ``"logits"``, see the module docstring)."""

  center: PyTree
  directions: tuple
  xs: np.ndarray
  ys: np.ndarray | None = None
  covariate: str = "loss"


class ErrorControlData(NamedTuple):
  """The arrays an error-controlled metric holds: its pytree leaves (jit arguments, never
  constants), bound to the compiled estimator by `jax.tree_util.Partial`.

  Attributes:
    split: the shuffled split on the device (`splits.DeviceSplit`: padded batches and mask).
    norm: ``(mean, std)`` normalising uint8 images inside the compiled function (a `Dataset`),
      or None (inputs used as given).
    batch_stats: the centre's BatchNorm statistics (None without BatchNorm).
    control: the anchors' tables of the control variate (None without anchors).
  """

  split: DeviceSplit
  norm: tuple[jax.Array, jax.Array] | None
  batch_stats: PyTree
  control: dict | None


def anchor_axis(values, *, stride: int) -> np.ndarray:
  """Every `stride`-th value of a sorted grid axis, always with both ends."""
  v = np.unique(np.asarray(values, np.float64))
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}.")
  idx = sorted(set(range(0, v.size, stride)) | {v.size - 1})
  return v[idx]


def anchor_plane(center: PyTree, directions, xs, ys=None, *, stride: int = 4,
                 covariate: str = "loss") -> AnchorPlane:
  """Anchors on every `stride`-th grid line of the surface ``xs x ys`` (1-D without `ys`).

  Cost: one exact pass over the split per anchor, ``(len(xs) / stride)^2`` passes for a 2-D grid
  (169 of a 51 x 51 grid's 2,601 at stride 4). `covariate`: what the anchors interpolate,
  ``"loss"`` (default) or ``"logits"`` (more memory; see the module docstring).
  """
  dirs = tuple(directions) if isinstance(directions, (tuple, list)) else (directions,)
  if len(dirs) not in (1, 2) or (len(dirs) == 2) != (ys is not None):
    raise ValueError("anchor_plane takes one direction with xs, or two directions with xs and ys.")
  if covariate not in COVARIATES:
    raise ValueError(f"covariate must be 'logits' or 'loss', got {covariate!r}.")
  return AnchorPlane(center, dirs, anchor_axis(xs, stride=stride),
                     None if ys is None else anchor_axis(ys, stride=stride), covariate)


def make_error_controlled_metric_fn(model, data, *, tol: float, rtol: float = 0.0,
                                    batch_size: int = 256,
                                    batch_stats: PyTree | None = None, seed: int = 0,
                                    min_batches: int = 1, anchors: AnchorPlane | None = None,
                                    fold_batchnorm: bool = True,
                                    cpu_convolutions: str = "auto",
                                    progress: bool = True) -> Partial:
  """A metric whose loss is estimated on a growing random subset of the split (opt-in).

  The split is shuffled once (`seed`) and walked in batches with `lax.while_loop`; after each
  batch the standard error of the estimate (see the module docstring) is tested and the walk stops
  once ``sem <= tol + rtol * |L|`` (after at least `min_batches`; ``L`` the current estimate of
  the mean loss, as the absolute-plus-relative tests of ODE solvers) or when the whole split is
  used.
  ``metric_fn(params) -> {"loss", "loss_sem", "accuracy", "num_examples"}``; `surface_grid` stores
  all four. ``tol=0`` (with ``rtol=0``) evaluates the whole split (exact, equal to
  `make_metric_fn`).

  Args:
    model: a linen model evaluated in inference mode.
    data: one split: a `Dataset` (uint8 images, normalised inside the compiled function) or an
      ``(inputs, targets)`` pair of arrays (or pytrees of arrays) with a leading example axis,
      the inputs as the model takes them and the targets integer classes (as `make_metric_fn`
      takes them; the loss is the cross-entropy).
    tol: target standard error of the mean loss (>= 0), absolute.
    rtol: relative part of the target (>= 0; default 0: absolute only). Far from the minimum the
      per-example losses spread widely and an absolute ``tol`` of 0.01 at a loss of 10 or 100
      asks for more examples than the split holds; ``rtol=0.01`` there asks for 1 % of the
      value, while near the minimum (loss below ``tol / rtol``) ``tol`` still dominates.
    batch_size: the largest batch (the growth step; batches are balanced, see `device_split`).
    batch_stats: BatchNorm statistics (the centre's).
    seed: shuffling seed (the same order at every point: common random numbers).
    min_batches: batches evaluated before the first stopping test.
    anchors: an `AnchorPlane` (see `anchor_plane`, which also says what the anchors
      interpolate: ``covariate="loss"`` or ``"logits"``) for the anchored control variate; its
      per-example table is computed here, one exact pass per anchor.
    fold_batchnorm: fold BatchNorm into the preceding layers where that is exact (as in
      `make_metric_fn`; `adapters.folding`).
    cpu_convolutions: ``"auto"``, ``"onednn"`` or ``"xla"`` (see `make_metric_fn`).
    progress: a progress bar while the anchors are evaluated.

  Returns:
    ``Partial(estimator, ErrorControlData(...))``: the arrays are the pytree's leaves.
  """
  if not tol >= 0 or not math.isfinite(tol):
    raise ValueError(f"tol must be a finite number >= 0, got {tol}.")
  if not rtol >= 0 or not math.isfinite(rtol):
    raise ValueError(f"rtol must be a finite number >= 0, got {rtol}.")
  if min_batches < 1:
    raise ValueError(f"min_batches must be >= 1, got {min_batches}.")
  if anchors is not None and anchors.covariate not in COVARIATES:
    raise ValueError(f"covariate must be 'logits' or 'loss', got {anchors.covariate!r}.")
  named = named_splits(data)
  if set(named) != {""}:
    raise ValueError("make_error_controlled_metric_fn takes one split (a Dataset or an "
                     f"(inputs, targets) pair), got a mapping of {sorted(named)}; build one "
                     "metric per split.")
  one = named[""]
  total = num_examples(one.inputs, one.targets)
  order = np.random.default_rng(seed).permutation(total)
  shuffled = lambda tree: jax.tree.map(lambda a: np.asarray(a)[order], tree)
  split = device_split(shuffled(one.inputs), shuffled(one.targets), batch_size=batch_size)
  apply_fn = functools.partial(apply_checked, model, one.num_classes,
                               fold_batchnorm=bool(fold_batchnorm),
                               onednn=use_onednn(cpu_convolutions))
  control = None
  if anchors is not None:
    control = _anchor_table(apply_fn, split, one.norm, batch_stats, anchors, progress=progress,
                            logits=anchors.covariate == "logits")
  return Partial(functools.partial(_estimate, apply_fn, float(tol), float(rtol), int(min_batches),
                                   total),
                 ErrorControlData(split, one.norm, batch_stats, control))


# ------------------------------------------------------------------------------------ anchors
@functools.partial(jax.jit, static_argnums=(0, 7))
def _anchor_chunk(apply_fn, split, norm, batch_stats, center, dirs, coords, logits):
  """Per-example outputs at the anchors ``coords`` (C, k): logits ``(C, B, b, K)`` with `logits`,
  else losses and correctness, each ``(C, B, b)``."""

  def one(c):
    p = plane_point(center, dirs[0], dirs[1] if len(dirs) > 1 else None, *c)
    variables = model_variables(p, batch_stats)

    def body(_, batch):
      x, y = batch
      z = apply_fn(variables, prepare_inputs(x, norm))
      return None, (z.astype(jnp.float32) if logits else (cross_entropy(z, y), correct(z, y)))

    return jax.lax.scan(body, None, split.batches)[1]

  return jax.lax.map(one, coords)


def _anchor_table(apply_fn, split, norm, batch_stats, anchors: AnchorPlane, *, progress,
                  logits: bool, chunk: int = 8) -> dict:
  dirs = tuple(anchors.directions)
  xs = np.asarray(anchors.xs, np.float32)
  ys = np.zeros(1, np.float32) if anchors.ys is None else np.asarray(anchors.ys, np.float32)
  grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)[:, :len(dirs)]
  parts = []
  for i in progress_lib.progress_bar(range(0, len(grid), chunk), enabled=progress,
                                     desc="anchors", unit_scale=chunk):
    part = grid[i:i + chunk]
    padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), 0)])
    out = _anchor_chunk(apply_fn, split, norm, batch_stats, anchors.center, dirs,
                        jnp.asarray(padded), logits)
    n = len(part)
    parts.append(jax.tree.map(lambda t: t[:n], out))  # noqa: B023 (used at once)
  shape = (xs.size, ys.size, *split.mask.shape)
  gram = jnp.array([[optax.tree.vdot(a, b) for b in dirs] for a in dirs], jnp.float32)
  table = {"center": anchors.center, "dirs": dirs, "gram_inv": jnp.linalg.inv(gram),
           "xs": jnp.asarray(xs), "ys": jnp.asarray(ys)}
  if logits:
    z = jnp.concatenate(parts)
    return table | {"logits": z.reshape(*shape, z.shape[-1])}
  loss = jnp.concatenate([p[0] for p in parts]).reshape(shape)
  hit = jnp.concatenate([p[1] for p in parts]).reshape(shape)
  total = jnp.sum(split.mask)
  return table | {"loss": loss, "hit": hit,
                  "loss_mean": jnp.sum(loss * split.mask, axis=(2, 3)) / total,
                  "hit_mean": jnp.sum(hit * split.mask, axis=(2, 3)) / total}


def lagrange_weights(nodes: jax.Array, t) -> tuple[jax.Array, jax.Array]:
  """``(start, w)``: Lagrange weights of `t` on the (up to) 4 nodes nearest to it.

  ``f(t) ~ sum_m w_m f(nodes[start + m])`` with ``w_m = prod_{q != m} (t - x_q) / (x_m - x_q)``;
  the stencil is shifted inwards at the ends (`nodes` strictly increasing).
  """
  n = nodes.shape[0]
  k = min(_ORDER, n)
  if k == 1:
    return jnp.zeros((), jnp.int32), jnp.ones((1,), nodes.dtype)
  j = jnp.searchsorted(nodes, t)
  start = jnp.clip(j - k // 2, 0, n - k).astype(jnp.int32)
  x = jax.lax.dynamic_slice(nodes, (start,), (k,))
  diff = t - x
  w = []
  for m in range(k):
    others = [q for q in range(k) if q != m]
    w.append(jnp.prod(jnp.stack([diff[q] / (x[m] - x[q]) for q in others])))
  return start, jnp.stack(w)


def _covariates(control, params, split):
  """``(cov(b) -> (c_loss, c_hit), mu_loss, mu_hit)`` of the interpolated anchors at the point
  `params`, for batch ``b`` of `split`."""
  delta = jax.tree.map(jnp.subtract, params, control["center"])
  rhs = jnp.stack([optax.tree.vdot(delta, d) for d in control["dirs"]]).astype(jnp.float32)
  coords = control["gram_inv"] @ rhs
  sx, wx = lagrange_weights(control["xs"], coords[0])
  if len(control["dirs"]) > 1:
    sy, wy = lagrange_weights(control["ys"], coords[1])
  else:
    sy, wy = jnp.zeros((), jnp.int32), jnp.ones((1,), jnp.float32)
  w = jnp.outer(wx, wy)
  kx, ky = w.shape
  z = jnp.zeros((), jnp.int32)

  def at(table, b):  # the interpolated table at batch b: (b,) or (b, K)
    start = (sx, sy, b) + (z,) * (table.ndim - 3)
    block = jax.lax.dynamic_slice(table, start, (kx, ky, 1, *table.shape[3:]))
    return jnp.einsum("xy,xy...->...", w, block[:, :, 0])

  if "logits" in control:
    # every batch's covariates once, batch by batch (small memory); the walk then reads them
    def batch_cov(_, b):
      zb, yb = at(control["logits"], b), split.batches[1][b]
      return None, (cross_entropy(zb, yb), correct(zb, yb))

    _, (c_loss, c_hit) = jax.lax.scan(batch_cov, None, jnp.arange(split.mask.shape[0]))
    total = jnp.sum(split.mask)
    return (lambda b: (c_loss[b], c_hit[b]), jnp.sum(c_loss * split.mask) / total,
            jnp.sum(c_hit * split.mask) / total)

  def mu(table):
    return jnp.sum(w * jax.lax.dynamic_slice(table, (sx, sy), (kx, ky)))

  return (lambda b: (at(control["loss"], b), at(control["hit"], b)),
          mu(control["loss_mean"]), mu(control["hit_mean"]))


# ---------------------------------------------------------------------------------- estimation
def _combine(stats, values, mask):
  """Chan et al.'s pairwise update of (count, mean, M2) with one masked batch (stable)."""
  n, mean, m2 = stats
  nb = jnp.sum(mask)
  mb = jnp.sum(values * mask) / jnp.maximum(nb, 1.0)
  m2b = jnp.sum(((values - mb) * mask) ** 2)
  tot = n + nb
  delta = mb - mean
  return (tot, mean + delta * nb / jnp.maximum(tot, 1.0),
          m2 + m2b + delta ** 2 * n * nb / jnp.maximum(tot, 1.0))


def _sem(stats, total):
  n, _, m2 = stats
  var = m2 / jnp.maximum(n - 1.0, 1.0)
  fpc = jnp.maximum(total - n, 0.0) / max(total - 1.0, 1.0)
  return jnp.sqrt(var / jnp.maximum(n, 1.0) * fpc)


def _estimate(apply_fn, tol, rtol, min_batches, total, data: ErrorControlData, params):
  split, norm, batch_stats, control = data
  variables = model_variables(params, batch_stats)
  num_batches = split.mask.shape[0]
  if control is None:
    cov = None
    mu_loss = mu_hit = jnp.zeros((), jnp.float32)
  else:
    cov, mu_loss, mu_hit = _covariates(control, params, split)

  def cond(carry):
    b, loss_stats, _ = carry
    target = tol + rtol * jnp.abs(mu_loss + loss_stats[1])
    return (b < num_batches) & ((b < min_batches) | ~(_sem(loss_stats, total) <= target))

  def body(carry):
    b, loss_stats, hit_stats = carry
    x, y, m = jax.tree.map(lambda a: a[b], (*split.batches, split.mask))
    logits = apply_fn(variables, prepare_inputs(x, norm))
    losses, hits = cross_entropy(logits, y), correct(logits, y).astype(jnp.float32)
    if cov is not None:
      c_loss, c_hit = cov(b)
      losses, hits = losses - c_loss, hits - c_hit
    return b + 1, _combine(loss_stats, losses, m), _combine(hit_stats, hits, m)

  zero = jnp.zeros((), jnp.float32)
  init = (jnp.zeros((), jnp.int32), (zero, zero, zero), (zero, zero, zero))
  _, loss_stats, hit_stats = jax.lax.while_loop(cond, body, init)
  return {"loss": mu_loss + loss_stats[1], "loss_sem": _sem(loss_stats, total),
          "accuracy": mu_hit + hit_stats[1], "num_examples": loss_stats[0]}


__all__ = ["COVARIATES", "AnchorPlane", "ErrorControlData", "anchor_axis", "anchor_plane",
           "lagrange_weights", "make_error_controlled_metric_fn"]
