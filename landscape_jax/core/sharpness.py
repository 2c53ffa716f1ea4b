"""Sharpness and flatness measures of a minimum, over any ``loss_fn(params, batch)``.

Every measure returns a `SharpnessResult` (``value``, ``stderr`` where one applies, the
``settings`` that produced it and the per-batch / per-sample ``samples``). Notation: ``w`` the
parameters, ``L`` the loss (one batch, or the mean over a split given as `splits.DeviceSplit`),
``c`` the perturbation scale:

* ``c = 1`` (*standard*), or ``c = |w| + eta`` elementwise (*adaptive*, Kwon et al. 2021;
  Andriushchenko et al. 2023). With ``eta = 0`` the adaptive measures are unchanged by any
  elementwise rescaling ``w -> D w`` that leaves the function unchanged (ReLU layer rescaling,
  rescaling before BatchNorm), because ``delta = c * u`` moves with ``w`` (docs/sharpness.md).
* ``mask`` (a pytree of Python bools like ``trees.mask_by_ndim(params)``) sets ``c = 0`` on the
  leaves it leaves out: they are never perturbed.

Measures:

* `worst_case_sharpness`: ``S_p(rho) = max_{||delta / c||_p <= rho} L(w + delta) - L(w)``,
  p = 2 or inf (Keskar et al. 2017; adaptive: Kwon et al. 2021, Andriushchenko et al. 2023),
  by projected gradient ascent in ``u = delta / c`` from several restarts (vmapped), with the
  momentum of Auto-PGD (Croce & Hein 2020) and step halving (or their checkpoint rule); per
  batch then averaged, or on the mean loss of the whole split.
* `average_sharpness`: ``E_{delta ~ N(0, rho^2 diag(c^2))} L(w + delta) - L(w)`` with its
  standard error over samples (vmapped) (Jiang et al. 2020; Andriushchenko et al. 2023).
* `sigma_search`: Jiang et al. 2020's PAC-Bayes flatness: the largest ``sigma`` with
  ``E_{u ~ N(0, I)} L(w + sigma c u) - L(w) <= target``, by bisection in ``log sigma``.
* `average_sharpness_metric`, `sigma_search_metric`: the same two for any ``metric_fn(params)``
  through the point-evaluation engine (`engine.evaluate_points`: chunked, sharded over a mesh,
  streamed splits, resumable stores keyed on exact identity); sample s at scale sigma is the
  point ``(sigma, s)`` of `perturbation_point_fn`, the same draws as the direct path.
* `fisher_rao_norm`: ``||w||_fr^2 = E_i <w, grad_w l_i(w)>^2`` over examples (Liang et al. 2019);
  for a ReLU network without biases of depth D, ``<w, grad_w l> = D <d l / d f, f(x)>``.
* `hessian_sharpness`: the top eigenvalue or the trace of the Hessian of ``L`` (`core.hessian`),
  or, adaptive, of ``C H C`` with ``C = diag(c)`` (the Hessian in ``u``).
* `filter_normalized_rise`: Li et al. 2018's 1-D filter-normalised plot as one number,
  ``E_d [(L(w + a d) + L(w - a d)) / 2 - L(w)]`` over filter-normalised Gaussian directions.

Random samples, restarts and directions are vmapped (`lax.map` with a batch size where memory
matters); everything is deterministic for its `jax.random` key. Like `core.hessian`, the measures
compute at ``precision="highest"`` unless told otherwise.

References:
  Keskar, Mudigere, Nocedal, Smelyanskiy and Tang 2017, "On Large-Batch Training for Deep
  Learning: Generalization Gap and Sharp Minima".
  Dinh, Pascanu, Bengio and Bengio 2017, "Sharp Minima Can Generalize For Deep Nets".
  Liang, Poggio, Rakhlin and Stokes 2019, "Fisher-Rao Metric, Geometry, and Complexity of Neural
  Networks".
  Jiang, Neyshabur, Mobahi, Krishnan and Bengio 2020, "Fantastic Generalization Measures and
  Where to Find Them".
  Kwon, Kim, Park and Choi 2021, "ASAM: Adaptive Sharpness-Aware Minimization".
  Andriushchenko, Croce, Mueller, Hein and Flammarion 2023, "A Modern Look at the Relationship
  between Sharpness and Generalization".
  Croce and Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
  diverse parameter-free attacks" (Auto-PGD).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from landscape_jax.core import engine as engine_lib
from landscape_jax.core import fileio, streaming, trees
from landscape_jax.core import hessian as hessian_lib
from landscape_jax.core import sharding as shd
from landscape_jax.core.directions import random_directions
from landscape_jax.core.hessian import mean_loss
from landscape_jax.core.identity import tree_digest
from landscape_jax.core.precision import check_precision, matmul_precision
from landscape_jax.core.splits import DeviceSplit, check_unpadded
from landscape_jax.core.trees import as_partial, check_finite

__all__ = [
  "Ascent",
  "Bracket",
  "average_sharpness",
  "average_sharpness_metric",
  "fisher_rao_norm",
  "filter_normalized_rise",
  "hessian_sharpness",
  "perturbation_point_fn",
  "perturbation_scale",
  "SharpnessResult",
  "sigma_search",
  "sigma_search_metric",
  "split_loss",
  "worst_case_sharpness",
]

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]
NORMS = ("l2", "linf")
SCHEDULES = ("stall", "checkpoints")
PRECISION = "highest"


class SharpnessResult(NamedTuple):
  """One sharpness measure.

  Attributes:
    value: the measure (its formula is in the docstring of the function that made it).
    stderr: its standard error (over batches, samples, examples or directions, as the function
      says), or NaN where none applies.
    settings: every setting that produced it (JSON-able), with diagnostics such as the ascent's
      steps.
    samples: the per-batch, per-sample, per-example or per-direction values behind `value`
      (None for a deterministic measure).
  """

  value: float
  stderr: float
  settings: dict
  samples: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------
# Shared pieces.


def _mask_leaves(params, mask) -> list[bool]:
  leaves = jax.tree.leaves(params)
  if mask is None:
    return [True] * len(leaves)
  if jax.tree.structure(mask) != jax.tree.structure(params):
    raise ValueError("mask must have the structure of params (e.g. trees.mask_by_ndim(params)).")
  out = [bool(m) for m in jax.tree.leaves(mask)]
  if not any(out):
    raise ValueError("mask selects no parameter; select at least one leaf.")
  return out


def perturbation_scale(params: PyTree, *, adaptive: bool = False, eta: float = 0.0,
                       mask: PyTree | None = None) -> PyTree:
  """The scale ``c`` of the perturbations: ``|w| + eta`` (adaptive) or 1, and 0 outside `mask`.

  Args:
    params: the point ``w``.
    adaptive: ``c = |w| + eta`` elementwise (Kwon et al. 2021) instead of 1.
    eta: the adaptive offset (0: exactly invariant to elementwise rescalings; Kwon et al. use
      0.01 so that zero weights can move).
    mask: optional pytree of Python bools; unselected leaves get ``c = 0``.

  Returns:
    A pytree like `params`.
  """
  if eta < 0:
    raise ValueError(f"eta must be >= 0, got {eta}.")
  keep = _mask_leaves(params, mask)
  leaves, treedef = jax.tree.flatten(params)
  out = []
  for x, m in zip(leaves, keep, strict=True):
    x = jnp.asarray(x)
    c = jnp.abs(x) + eta if adaptive else jnp.ones_like(x)
    out.append(c if m else jnp.zeros_like(x))
  return treedef.unflatten(out)


@jax.jit
def _split_loss_jit(loss_fn, params, data):
  return mean_loss(loss_fn, params, data)


def split_loss(loss_fn: LossFn, params: PyTree, data: Any) -> float:
  """``L(w)``: the loss on one batch, or the example-weighted mean over a `DeviceSplit`."""
  return float(_split_loss_jit(as_partial(loss_fn, name="loss_fn"), params, data))


def _shift(w, c, u):
  return jax.tree.map(lambda a, b, x: a + b * x, w, c, u)


def _check(rho=None, norm=None, precision=None):
  if rho is not None and not (rho > 0 and math.isfinite(rho)):
    raise ValueError(f"rho must be a positive finite radius, got {rho}.")
  if norm is not None and norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
  return check_precision(precision)


def _finite(name, *values):
  check_finite(values, name=f"{name}: the loss at the point or at a perturbed point",
               error=FloatingPointError,
               hint="check the parameters and the data (labels within the model's classes), or "
                    "lower rho.")


def _summary(samples) -> tuple[float, float]:
  s = np.asarray(samples, np.float64)
  err = float(s.std(ddof=1) / math.sqrt(s.size)) if s.size > 1 else float("nan")
  return float(s.mean()), err


# ----------------------------------------------------------------------------------------------
# Worst case: projected gradient ascent in u = delta / c.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ascent:
  """The projected gradient ascent of `worst_case_sharpness` (Auto-PGD's momentum, Croce & Hein
  2020; Andriushchenko et al. 2023 use a variant of it, compared in docs/references.md),
  validated on creation.

  Attributes:
    restarts: number of restarts (>= 1; restart 0 starts at the point, the others at random).
    steps: the most ascent steps (>= 1).
    step_size: the first step in units of rho.
    momentum: the Auto-PGD weight ``beta`` in (0, 1] (0.75 as Croce & Hein and Andriushchenko et
      al.; 1: plain projected ascent).
    patience: a restart stops after this many steps without a significant improvement (>= 1;
      ``schedule="stall"`` only).
    halve_every: the step halves after this many steps without one (>= 1; ``"stall"`` only).
    rtol: a significant improvement raises the best loss by more than ``rtol * (best - L(w))``.
    schedule: ``"stall"`` (the default: the step halves after `halve_every` steps without a
      significant improvement, a restart stops after `patience`) or ``"checkpoints"`` (Croce &
      Hein 2020's step-size rule: the step may halve only at the checkpoints
      ``w_j = ceil(p_j steps)``, ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
      0.06)``, when fewer than 0.75 of the steps since the last checkpoint raised the loss or when
      neither the step nor the best loss changed since then; the first step has no momentum; all
      `steps` run).
  """

  restarts: int = 4
  steps: int = 100
  step_size: float = 1.0
  momentum: float = 0.75
  patience: int = 20
  halve_every: int = 5
  rtol: float = 1e-3
  schedule: str = "stall"

  def __post_init__(self):
    counts = (self.restarts, self.steps, self.patience, self.halve_every)
    if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in counts):
      raise ValueError("restarts, steps, patience and halve_every must be integers >= 1; got "
                       f"{self.restarts}, {self.steps}, {self.patience}, {self.halve_every}.")
    if not 0 < self.momentum <= 1:
      raise ValueError(f"momentum must lie in (0, 1], got {self.momentum}.")
    if not (self.step_size > 0 and math.isfinite(self.step_size)):
      raise ValueError(f"step_size must be a positive finite number, got {self.step_size}.")
    if not (self.rtol >= 0 and math.isfinite(self.rtol)):
      raise ValueError(f"rtol must be a finite number >= 0, got {self.rtol}.")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Bracket:
  """The bisection of `sigma_search` on ``log sigma`` in ``[lower, upper]``, validated on
  creation.

  Attributes:
    lower, upper: the bracket (``0 < lower < upper``).
    num_iters: bisection steps (the bracket narrows by ``(upper / lower)^(2^-num_iters)``).
  """

  lower: float = 1e-4
  upper: float = 1.0
  num_iters: int = 16

  def __post_init__(self):
    if not 0 < self.lower < self.upper:
      raise ValueError(f"Need 0 < lower < upper, got lower={self.lower}, upper={self.upper}.")
    if isinstance(self.num_iters, bool) or not isinstance(self.num_iters, (int, np.integer)) or (
        self.num_iters < 0):
      raise ValueError(f"num_iters must be an integer >= 0, got {self.num_iters!r}.")


def _settings(value, cls, name: str):
  value = cls() if value is None else value
  if not isinstance(value, cls):
    raise TypeError(f"{name} must be a {cls.__name__} (lj.{cls.__name__}(...)) or None, got "
                    f"{type(value).__name__}.")
  return value


class AscentState(NamedTuple):
  """The state of one restart of the ascent (all restarts are stacked on a leading axis)."""

  u: jax.Array          # current iterate (flat, in units of c)
  u_prev: jax.Array     # previous iterate (Auto-PGD momentum)
  best_u: jax.Array     # best iterate so far
  best: jax.Array       # best loss so far
  step: jax.Array       # current step size
  stall: jax.Array      # steps since the last significant improvement
  active: jax.Array     # still running (stall < patience)
  prev: jax.Array       # loss at the previous iterate ("checkpoints": counts the rises)
  rises: jax.Array      # steps that raised the loss since the last checkpoint
  cp_step: jax.Array    # step size and best loss at the last checkpoint
  cp_best: jax.Array
  cp_at: jax.Array      # the last checkpoint's step index


def _checkpoints(steps: int) -> np.ndarray:
  """Croce & Hein 2020's checkpoints ``w_j = ceil(p_j steps)`` (j >= 1) as a mask over steps."""
  p, w = [0.0, 0.22], [0, math.ceil(0.22 * steps)]
  while w[-1] < steps and w[-1] != w[-2]:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    w.append(math.ceil(p[-1] * steps))
  out = np.zeros(steps, bool)
  out[[k for k in w[1:] if 0 < k < steps]] = True
  return out


def _project(u, rho, norm, m):
  u = u * m
  if norm == "linf":
    return jnp.clip(u, -rho, rho)
  n = jnp.linalg.norm(u)
  return u * jnp.minimum(1.0, rho / jnp.maximum(n, 1e-30))


def _direction(g, norm):
  if norm == "linf":
    return jnp.sign(g)
  return g / jnp.maximum(jnp.linalg.norm(g), 1e-30)


def _init_u(key, r, dim, rho, norm, m, dtype):
  """Restart 0 starts at u = 0 (its first step follows the gradient); the others at a random
  point: uniform in the l_inf ball of radius rho / 2, or on the l_2 sphere of radius rho / 2."""
  k = jax.random.fold_in(key, r)
  if norm == "linf":
    z = jax.random.uniform(k, (dim,), dtype, -0.5 * rho, 0.5 * rho) * m
  else:
    z = jax.random.normal(k, (dim,), dtype) * m
    z = 0.5 * rho * z / jnp.maximum(jnp.linalg.norm(z), 1e-30)
  return jnp.where(r == 0, jnp.zeros_like(z), z)


@functools.partial(jax.jit, static_argnames=("norm", "restarts", "steps", "patience", "halve_every",
                                              "momentum", "schedule"))
def _ascent(loss_fn, params, c, data, key, rho, *, norm, restarts, steps, patience, halve_every,
            momentum, step_size, rtol, schedule="stall"):
  x0, unravel = ravel_pytree(params)
  cf = ravel_pytree(c)[0].astype(x0.dtype)
  m = (cf != 0).astype(x0.dtype)
  dim = x0.shape[0]

  def loss_u(u):
    return mean_loss(loss_fn, unravel(x0 + cf * u), data)

  base = loss_u(jnp.zeros_like(x0))
  vg = jax.value_and_grad(loss_u)
  u0 = jax.vmap(lambda r: _init_u(key, r, dim, rho, norm, m, x0.dtype))(jnp.arange(restarts))
  zeros = jnp.zeros((restarts,), x0.dtype)
  ninf = jnp.full((restarts,), -jnp.inf, x0.dtype)
  state = AscentState(
    u=u0, u_prev=u0, best_u=u0, best=ninf, step=jnp.full((restarts,), step_size * rho, x0.dtype),
    stall=jnp.zeros((restarts,), jnp.int32), active=jnp.ones((restarts,), bool), prev=ninf,
    rises=jnp.zeros((restarts,), jnp.int32), cp_step=zeros, cp_best=ninf,
    cp_at=jnp.zeros((restarts,), jnp.int32))
  at_checkpoint = jnp.asarray(_checkpoints(steps))

  def one(s: AscentState, i):
    val, g = vg(s.u)
    val = jnp.where(jnp.isfinite(val), val, -jnp.inf)
    better = val > s.best
    significant = val > s.best + rtol * jnp.maximum(jnp.abs(s.best - base), 1e-12)
    best = jnp.where(better, val, s.best)
    best_u = jnp.where(better, s.u, s.best_u)
    stall = jnp.where(significant, 0, s.stall + 1)
    z = _project(s.u + s.step * _direction(g, norm), rho, norm, m)
    u_new = _project(s.u + momentum * (z - s.u) + (1 - momentum) * (s.u - s.u_prev), rho, norm,
                     m)
    rises, cp_step, cp_best, cp_at = s.rises, s.cp_step, s.cp_best, s.cp_at
    if schedule == "stall":
      halve = (stall > 0) & (stall % halve_every == 0)
      active = stall < patience
    else:  # Croce & Hein 2020, Sec. 3.2: halve at a checkpoint if the ascent stopped paying
      u_new = jnp.where(i == 0, z, u_new)  # their first step has no momentum
      rises = rises + (val > s.prev).astype(jnp.int32)
      here = at_checkpoint[i]
      few_rises = rises < 0.75 * (i - cp_at)
      unchanged = (cp_step == s.step) & (cp_best == best)
      halve = here & (few_rises | unchanged)
      rises = jnp.where(here, 0, rises)
      cp_step = jnp.where(here, s.step, cp_step)
      cp_best = jnp.where(here, best, cp_best)
      cp_at = jnp.where(here, i, cp_at)
      active = s.active
    step = jnp.where(halve, 0.5 * s.step, s.step)
    u_new = jnp.where(halve, best_u, u_new)
    u_prev = jnp.where(halve, best_u, s.u)
    new = AscentState(u=u_new, u_prev=u_prev, best_u=best_u, best=best, step=step, stall=stall,
                      active=active, prev=val, rises=rises, cp_step=cp_step, cp_best=cp_best,
                      cp_at=cp_at)
    return jax.tree.map(lambda a, b: jnp.where(s.active, a, b), new, s)

  def body(carry):
    i, s = carry
    return i + 1, jax.vmap(one, in_axes=(0, None))(s, i)

  def cond(carry):
    i, s = carry
    return (i < steps) & jnp.any(s.active)

  num, state = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
  # the last iterate has not been evaluated yet
  last = jax.vmap(loss_u)(state.u)
  last = jnp.where(jnp.isfinite(last), last, -jnp.inf)
  best_u = jnp.where((last > state.best)[:, None], state.u, state.best_u)
  best = jnp.maximum(state.best, last)
  # the maximiser: the best point of the best restart, as a perturbation delta = c * u
  delta = unravel(cf * best_u[jnp.argmax(best)])
  return base, jnp.max(best), num, best, delta


def worst_case_sharpness(key: jax.Array, loss_fn: LossFn, params: PyTree, data: Any, *,
                         rho: float, norm: str = "l2", adaptive: bool = False, eta: float = 0.0,
                         ascent: Ascent | None = None, per_batch: bool = True,
                         mask: PyTree | None = None, precision=PRECISION) -> SharpnessResult:
  """Worst-case (adversarial) sharpness ``max_{||delta / c||_p <= rho} L(w + delta) - L(w)``.

  Solved in ``u = delta / c`` (so the feasible set is the plain ball ``||u||_p <= rho``) by
  projected gradient ascent, each restart independently (restarts are vmapped):

  * start: restart 0 at ``u = 0``, the others at a random point at half the radius;
  * step k (the settings `restarts`, `steps`, `step_size`, `momentum`, `patience`,
    `halve_every`, `rtol` are those of `ascent`): ``g = c * grad L(w + c u_k)``;
    ``z = P(u_k + s_k d)`` with ``d = g / ||g||_2`` (l2) or ``sign(g)`` (linf) and ``P`` the
    projection on the ball; with the Auto-PGD momentum ``beta`` (Croce & Hein 2020),
    ``u_{k+1} = P(u_k + beta (z - u_k) + (1 - beta)(u_k - u_{k-1}))`` (``momentum = 1``: plain
    projected ascent). The first step is ``s_0 = step_size * rho``;
  * step halving (``schedule="stall"``, the default): after every `halve_every` steps without a
    significant improvement of the best loss (by more than ``rtol * (best - L(w))``) the step
    halves and the iterate returns to the best point; ``schedule="checkpoints"``: Croce & Hein
    2020's rule instead (halving decided only at their checkpoints, see `Ascent`);
  * stopping rule: with ``"stall"`` a restart stops after `patience` steps without a significant
    improvement; all stop after `steps` steps. The value is the best loss seen by any restart, so
    it is a lower bound of the maximum that rises with restarts and steps.

  Args:
    key: `jax.random` key of the random restarts.
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the point ``w``.
    data: one batch, or a `splits.DeviceSplit` (`make_batches`).
    rho: the radius.
    norm: ``"l2"`` or ``"linf"``.
    adaptive: ``c = |w| + eta`` instead of 1 (`perturbation_scale`).
    eta: the adaptive offset.
    ascent: the ascent's settings (`Ascent`: restarts, steps, first step, momentum and the
      stopping and step-halving rule above); default ``Ascent()``. Measured against
      Andriushchenko et al.'s code in docs/references.md ("Parity with their code").
    per_batch: with a `DeviceSplit`, the maximum for every batch separately and their mean
      weighted by batch size (Andriushchenko et al.; stderr over batches); False: one maximum of
      the mean loss over the whole split (stderr NaN).
    mask: optional pytree of bools; the unselected leaves are not perturbed.
    precision: matmul precision (`core.precision`; default ``"highest"``).

  Returns:
    A `SharpnessResult`; ``samples`` are the per-batch values (per_batch with a split), and
    ``settings["steps_run"]`` the ascent steps each ascent ran.

  References:
    Keskar et al. 2017; Kwon et al. 2021; Andriushchenko et al. 2023, "A Modern Look at the
    Relationship between Sharpness and Generalization" (their Auto-PGD variant); Croce and Hein
    2020 (Auto-PGD).
  """
  precision = _check(rho, norm, precision)
  ascent = _settings(ascent, Ascent, "ascent")
  loss_fn = as_partial(loss_fn, name="loss_fn")
  c = perturbation_scale(params, adaptive=adaptive, eta=eta, mask=mask)
  kw = dict(norm=norm, restarts=int(ascent.restarts), steps=int(ascent.steps),
            patience=int(ascent.patience), halve_every=int(ascent.halve_every),
            momentum=float(ascent.momentum), step_size=float(ascent.step_size),
            rtol=float(ascent.rtol), schedule=ascent.schedule)
  settings = dict(measure="worst_case", rho=float(rho), adaptive=bool(adaptive), eta=float(eta),
                  per_batch=bool(per_batch), **kw)
  with matmul_precision(precision):
    if isinstance(data, DeviceSplit) and per_batch:
      check_unpadded(data, name="worst_case_sharpness")
      values, sizes, runs = [], [], []
      if data.batches is not None:
        nb, size = jax.tree.leaves(data.batches)[0].shape[:2]
        for b in range(nb):
          batch = jax.tree.map(lambda x, b=b: x[b], data.batches)
          base, best, num, _, _ = _ascent(loss_fn, params, c, batch, jax.random.fold_in(key, b),
                                       rho, **kw)
          values.append(float(best - base))
          sizes.append(size)
          runs.append(int(num))
      if data.rest is not None:
        base, best, num, _, _ = _ascent(loss_fn, params, c, data.rest,
                                     jax.random.fold_in(key, len(values)), rho, **kw)
        values.append(float(best - base))
        sizes.append(jax.tree.leaves(data.rest)[0].shape[0])
        runs.append(int(num))
      _finite("worst_case_sharpness", values)
      v, w = np.asarray(values), np.asarray(sizes, np.float64)
      mean = float(np.sum(v * w) / w.sum())
      err = _summary(v)[1]
      return SharpnessResult(mean, err, {**settings, "steps_run": runs}, v)
    base, best, num, _, _ = _ascent(loss_fn, params, c, data, key, rho, **kw)
    _finite("worst_case_sharpness", base, best)
    return SharpnessResult(float(best - base), float("nan"), {**settings, "steps_run": [int(num)]})


# ----------------------------------------------------------------------------------------------
# Average case and Jiang et al.'s sigma search.


@functools.partial(jax.jit, static_argnames=("num_samples", "batch_size"))
def _noisy_losses(loss_fn, params, c, data, key, sigma, *, num_samples, batch_size):
  """``L(w + sigma c z_s) - L(w)`` for ``z_s ~ N(0, I)``, s = 1..num_samples (same z per key)."""
  base = mean_loss(loss_fn, params, data)
  keys = jax.random.split(key, num_samples)

  def one(k):
    return mean_loss(loss_fn, _noise_point(params, c, k, sigma), data)

  return jax.lax.map(one, keys, batch_size=batch_size) - base, base


def _noise_point(params, c, k, sigma):
  """``w + sigma c z`` with ``z ~ N(0, I)`` drawn leaf by leaf from ``split(k, num_leaves)``."""
  leaves, treedef = jax.tree.flatten(params)
  ks = jax.random.split(k, len(leaves))
  z = treedef.unflatten([jax.random.normal(kk, jnp.shape(x), jnp.result_type(x))
                         for kk, x in zip(ks, leaves, strict=True)])
  return _shift(params, jax.tree.map(lambda a: sigma * a, c), z)


def average_sharpness(key: jax.Array, loss_fn: LossFn, params: PyTree, data: Any, *,
                      rho: float, adaptive: bool = False, eta: float = 0.0,
                      num_samples: int = 100, sample_batch_size: int | None = None,
                      mask: PyTree | None = None, precision=PRECISION) -> SharpnessResult:
  """Average-case sharpness ``E_{delta ~ N(0, rho^2 diag(c^2))} L(w + delta) - L(w)``.

  Monte Carlo over `num_samples` Gaussian perturbations ``delta_s = rho c z_s`` (evaluated
  `sample_batch_size` at a time with `vmap` inside `lax.map`); the value is the mean of
  ``L(w + delta_s) - L(w)`` and ``stderr = std / sqrt(num_samples)``. For a quadratic loss at
  a minimum it is ``rho^2 / 2 tr(diag(c^2) H)``.

  Args:
    key: `jax.random` key of the samples.
    loss_fn, params, data: as in `worst_case_sharpness` (the loss over a split is its mean).
    rho: the noise scale.
    adaptive, eta, mask: the scale ``c`` (`perturbation_scale`).
    num_samples: number of perturbations (at least 2).
    sample_batch_size: perturbations vmapped together (default 1: least memory).
    precision: matmul precision (default ``"highest"``).

  Returns:
    A `SharpnessResult` whose ``samples`` are the per-sample loss increases.

  References:
    Jiang et al. 2020 (Sec. 2.1, "sharpness" as expected loss under noise); Andriushchenko et al.
    2023 (average-case adaptive sharpness).
  """
  precision = _check(rho, None, precision)
  if num_samples < 2:
    raise ValueError(f"num_samples must be >= 2 for a standard error, got {num_samples}.")
  loss_fn = as_partial(loss_fn, name="loss_fn")
  c = perturbation_scale(params, adaptive=adaptive, eta=eta, mask=mask)
  with matmul_precision(precision):
    d, _ = _noisy_losses(loss_fn, params, c, data, key, jnp.float32(rho),
                         num_samples=int(num_samples), batch_size=sample_batch_size)
  d = np.asarray(d)
  _finite("average_sharpness", d)
  mean, err = _summary(d)
  return SharpnessResult(mean, err, dict(measure="average_case", rho=float(rho),
                                         adaptive=bool(adaptive), eta=float(eta),
                                         num_samples=int(num_samples)), d)


def sigma_search(key: jax.Array, loss_fn: LossFn, params: PyTree, data: Any, *,
                 target: float = 0.1, adaptive: bool = False, eta: float = 0.0,
                 num_samples: int = 32, bracket: Bracket | None = None,
                 sample_batch_size: int | None = None,
                 mask: PyTree | None = None, precision=PRECISION) -> SharpnessResult:
  """Jiang et al.'s PAC-Bayes flatness: the largest ``sigma`` with a loss increase <= `target`.

  ``f(sigma) = mean_s L(w + sigma c z_s) - L(w)`` with the same ``z_s ~ N(0, I)`` at every
  ``sigma`` (common random numbers, so ``f`` is a smooth function of ``sigma``); bisection on
  ``log sigma`` in ``[lower, upper]`` for `num_iters` steps (`bracket`) keeps
  ``f(lo) <= target < f(hi)``; the value is ``lo``. Jiang et al. correlate ``1 / sigma^2`` with
  the generalisation gap (a flatter minimum tolerates a larger sigma). They bound the *error*
  increase by 0.1; this function bounds the loss increase (any ``loss_fn``; use an error as the
  loss for theirs).

  Args:
    key: `jax.random` key of the samples.
    loss_fn, params, data: as in `average_sharpness`.
    target: the allowed expected loss increase.
    adaptive, eta, mask: the scale ``c`` (`perturbation_scale`; Jiang et al.'s "magnitude-aware"
      variant is the adaptive one with ``eta > 0``).
    num_samples: perturbations per sigma.
    bracket: the bisection (`Bracket`: ``lower``, ``upper``, ``num_iters``; default
      ``Bracket()``: [1e-4, 1], 16 steps); if ``f(upper) <= target`` the value is `upper` and
      ``settings["bracketed"]`` is False (raise `upper`); likewise if ``f(lower) > target``.
    sample_batch_size, precision: as in `average_sharpness`.

  Returns:
    A `SharpnessResult` with ``value = sigma``, ``stderr`` NaN, and the loss increase at sigma
    (``settings["increase"]``, ``settings["increase_stderr"]``).

  References:
    Jiang et al. 2020, "Fantastic Generalization Measures and Where to Find Them", Sec. 2.1 and
    App. C.2 (pacbayes.sharpness, pacbayes.mag.sharpness).
  """
  precision = _check(None, None, precision)
  bracket = _settings(bracket, Bracket, "bracket")
  if target <= 0:
    raise ValueError(f"target must be positive, got {target}.")
  loss_fn = as_partial(loss_fn, name="loss_fn")
  c = perturbation_scale(params, adaptive=adaptive, eta=eta, mask=mask)
  kw = dict(num_samples=int(num_samples), batch_size=sample_batch_size)

  def f(sigma):
    with matmul_precision(precision):
      d, _ = _noisy_losses(loss_fn, params, c, data, key, jnp.float32(sigma), **kw)
    d = np.asarray(d)
    return float(np.nan_to_num(d.mean(), nan=np.inf)), d

  settings = dict(measure="sigma_search", target=float(target), adaptive=bool(adaptive),
                  eta=float(eta), num_samples=int(num_samples))
  return _bisect(f, target, bracket, settings)


def _bisect(f, target, bracket: Bracket, settings: dict) -> SharpnessResult:
  """The bisection of `sigma_search` on ``log sigma``: ``f(sigma) -> (mean increase, samples)``."""
  lo, hi, num_iters = float(bracket.lower), float(bracket.upper), int(bracket.num_iters)
  f_hi, d_hi = f(hi)
  settings = dict(settings, lower=lo, upper=hi, num_iters=num_iters)
  if f_hi <= target:
    return SharpnessResult(hi, float("nan"), {**settings, "bracketed": False,
                                               "increase": f_hi}, d_hi)
  f_lo, d_lo = f(lo)
  if f_lo > target:
    return SharpnessResult(lo, float("nan"), {**settings, "bracketed": False,
                                               "increase": f_lo}, d_lo)
  for _ in range(num_iters):
    mid = math.sqrt(lo * hi)
    f_mid, d_mid = f(mid)
    if f_mid <= target:
      lo, f_lo, d_lo = mid, f_mid, d_mid
    else:
      hi = mid
  return SharpnessResult(lo, float("nan"), {**settings, "bracketed": True, "increase": f_lo,
                                             "increase_stderr": _summary(d_lo)[1]}, d_lo)


# ----------------------------------------------------------------------------------------------
# The same two through the point-evaluation engine: a perturbation is a point (sigma, s).


def _noise_point_fn(params, c, keys, coords):
  """``w + coords[0] c z_s`` with ``s = coords[1]``: `_noisy_losses`' sample s at that sigma."""
  return _noise_point(params, c, keys[coords[1].astype(jnp.int32)], coords[0])


def perturbation_point_fn(key: jax.Array, params: PyTree, *, num_samples: int,
                          scale: PyTree | None = None) -> Partial:
  """``(sigma, s) -> w + sigma c z_s``: Gaussian perturbations as points of the engine.

  ``z_s ~ N(0, I)`` is the sample s of `average_sharpness` and `sigma_search` for the same `key`
  and `num_samples` (drawn from ``jax.random.split(key, num_samples)[s]``, leaf by leaf), so the
  engine evaluates exactly their perturbations. The result is a `jax.tree_util.Partial` over
  ``w``, ``c`` and the sample keys, declared to read two coordinates: `engine.evaluate_points`
  takes it as its `point_fn`, and a store records the exact bytes of all three.

  Args:
    key: `jax.random` key of the samples.
    params: the point ``w``.
    num_samples: number of samples (s in ``0 .. num_samples - 1``).
    scale: the scale ``c`` (`perturbation_scale`); default None: ``c = 1`` on every leaf.

  Returns:
    ``point_fn(coords) -> params`` for float32 coordinates ``(sigma, s)``.

  References:
    Jiang et al. 2020, Sec. 2.1 (the perturbed points of average-case sharpness).
  """
  num_samples = _num_samples(num_samples, minimum=1)
  c = _scale(params, scale)
  point_fn = Partial(_noise_point_fn, params, c, jax.random.split(key, num_samples))
  return engine_lib.declare_coordinates(point_fn, 2)


def _num_samples(n, *, minimum):
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
    raise ValueError(f"num_samples must be an integer >= {minimum}, got {n!r}.")
  if n > 2 ** 24:  # the sample index travels as a float32 coordinate
    raise ValueError(f"num_samples must be <= 2**24, got {n}.")
  return int(n)


def _scale(params, scale):
  if scale is None:
    return perturbation_scale(params)
  trees.check_same_structure(params, scale, names=("params", "scale"))  # shapes and dtypes too
  return scale


class _NoiseEvaluator(NamedTuple):
  """Evaluates the perturbation points of one `perturbation_point_fn` through the engine: the
  base ``L(w)`` at ``(0, 0)`` (``w + 0 c z = w`` exactly) in ``<store>/base``, every sigma's
  samples in ``<store>/sigma-<sigma>``."""

  metric_fn: Any
  point_fn: Partial
  num_samples: int
  metric: str
  store: Any
  identity: str | None
  engine: engine_lib.EngineOptions

  def _evaluate(self, coords, name, engine):
    store = None if self.store is None else fileio.join(self.store, name)
    res = engine_lib.evaluate_points(self.metric_fn, self.point_fn, coords, store=store,
                                     identity=self.identity, engine=engine, desc=name)
    return np.asarray(res[self.metric])

  def base(self) -> np.ndarray:
    roles = shd.mesh_roles(self.engine.mesh)
    chunk = (1 if roles is None else roles.size("points")) * (self.engine.batch_size or 1)
    engine = dataclasses.replace(self.engine, chunk_size=chunk)  # one point: the least padding
    return self._evaluate(np.zeros((1, 2)), "base", engine)[0]

  def losses(self, sigma: float) -> np.ndarray:
    coords = np.stack([np.full(self.num_samples, sigma), np.arange(self.num_samples)], axis=1)
    return self._evaluate(coords, f"sigma-{sigma!r}", self.engine)


def _noise_evaluator(key, metric_fn, params, scale, num_samples, metric, store, identity,
                     engine):
  if not isinstance(metric, str):
    raise TypeError(f"metric must be the name of one of metric_fn's metrics, got {metric!r}.")
  point_fn = perturbation_point_fn(key, params, num_samples=num_samples, scale=scale)
  names = metric_fn.metric_names if isinstance(metric_fn, streaming.StreamedMetric) else (
    engine_lib.metric_dtypes(as_partial(metric_fn, name="metric_fn"), point_fn, 2))
  if metric not in names:  # before anything is computed or written
    raise ValueError(f"metric={metric!r} is not one of metric_fn's metrics {sorted(names)}; "
                     "pass one of them (e.g. metric='train_loss').")
  return _NoiseEvaluator(metric_fn, point_fn, int(num_samples), metric, store, identity,
                         engine_lib.engine_options(engine))


def _scale_settings(scale) -> dict:
  return {"scale": "ones" if scale is None else "given",
          **({} if scale is None else {"scale_sha256": tree_digest(scale)})}


def average_sharpness_metric(key: jax.Array, metric_fn: Callable[[PyTree], Any], params: PyTree,
                             *, rho: float, scale: PyTree | None = None,
                             num_samples: int = 100, metric: str = "loss",
                             store: str | os.PathLike | None = None,
                             identity: str | None = None,
                             engine: engine_lib.EngineOptions | None = None) -> SharpnessResult:
  """`average_sharpness` of a ``metric_fn(params)``, its samples evaluated by the engine.

  ``E_{delta ~ N(0, rho^2 diag(c^2))} M(w + delta) - M(w)`` with ``M = metric_fn(.)[metric]``:
  the same estimator as `average_sharpness` (mean of ``M(w + rho c z_s) - M(w)``, ``stderr =
  std / sqrt(num_samples)``, the same ``z_s`` for the same key), but every perturbed point is a
  point ``(rho, s)`` of `perturbation_point_fn` evaluated by `engine.evaluate_points`: in chunks,
  sharded over `engine`'s mesh, over a split held on the devices or streamed from the host
  (``make_metric_fn(..., mesh=)``, ``make_metric_fn(..., stream_batches=)``), and resumable with
  `store`. With ``metric_fn`` the mean of ``loss_fn`` over the same data it is `average_sharpness`
  up to float rounding.

  Args:
    key: `jax.random` key of the samples.
    metric_fn: ``metric_fn(params) -> {metric: scalar}`` (`make_metric_fn`, a
      `streaming.StreamedMetric`, or any Partial; a scalar result is named ``"loss"``).
    params: the point ``w``.
    rho: the noise scale.
    scale: the scale ``c`` (``perturbation_scale(params, adaptive=, eta=, mask=)``); default None:
      ``c = 1`` (standard).
    num_samples: number of perturbations (at least 2).
    metric: the metric whose increase is measured (e.g. ``"train_loss"``).
    store: a directory: ``<store>/base`` holds ``M(w)`` and ``<store>/sigma-<rho>`` the samples,
      each an engine store written after every chunk: a rerun computes only the samples not yet
      there and refuses a store of another key, point, scale, number of samples or metric_fn
      (`store.StoreMismatchError`).
    identity: as in `engine.evaluate_points` (only for what the automatic identity cannot see).
    engine: `engine.EngineOptions` (chunk size, mesh, map mode, precision, progress).

  Returns:
    A `SharpnessResult` whose ``samples`` are the per-sample increases.

  References:
    Jiang et al. 2020 (Sec. 2.1); Andriushchenko et al. 2023 (average-case adaptive sharpness).
  """
  _check(rho)
  num_samples = _num_samples(num_samples, minimum=2)
  ev = _noise_evaluator(key, metric_fn, params, scale, num_samples, metric, store, identity,
                        engine)
  base = ev.base()
  d = ev.losses(float(rho)) - base
  _finite("average_sharpness_metric", d)
  mean, err = _summary(d)
  return SharpnessResult(mean, err, dict(measure="average_case", rho=float(rho), metric=metric,
                                         num_samples=num_samples, **_scale_settings(scale)), d)


def sigma_search_metric(key: jax.Array, metric_fn: Callable[[PyTree], Any], params: PyTree, *,
                        target: float = 0.1, scale: PyTree | None = None, num_samples: int = 32,
                        bracket: Bracket | None = None, metric: str = "loss",
                        store: str | os.PathLike | None = None, identity: str | None = None,
                        engine: engine_lib.EngineOptions | None = None) -> SharpnessResult:
  """`sigma_search` of a ``metric_fn(params)``, every sigma's samples evaluated by the engine.

  The largest ``sigma`` with ``mean_s M(w + sigma c z_s) - M(w) <= target`` (``M =
  metric_fn(.)[metric]``), by the bisection of `sigma_search` on ``log sigma`` (`bracket`) with
  the same samples ``z_s`` for the same key; each sigma's samples are the points ``(sigma, s)``
  of `perturbation_point_fn`, evaluated by `engine.evaluate_points` (chunked, sharded over
  `engine`'s mesh, streamed with ``make_metric_fn(..., stream_batches=)``). Jiang et al. bound
  the error: pass ``metric="error"`` of a metric_fn that returns one (or the loss, as here by
  default).

  Args:
    key, metric_fn, params, scale, num_samples, metric, identity, engine: as in
      `average_sharpness_metric`.
    target: the allowed expected increase of the metric.
    bracket: the bisection (`Bracket`; default ``Bracket()``), as in `sigma_search`.
    store: a directory: ``<store>/base`` holds ``M(w)`` and ``<store>/sigma-<sigma>`` the samples
      at each sigma the bisection visits, each an engine store keyed on its exact identity, so a
      rerun (after an interruption, or with another `target` or bracket) recomputes no sigma
      already there.

  Returns:
    A `SharpnessResult` with ``value = sigma``, as `sigma_search` returns it.

  References:
    Jiang et al. 2020, "Fantastic Generalization Measures and Where to Find Them", Sec. 2.1 and
    App. C.2.
  """
  bracket = _settings(bracket, Bracket, "bracket")
  if not (target > 0 and math.isfinite(target)):
    raise ValueError(f"target must be a positive finite number, got {target}.")
  num_samples = _num_samples(num_samples, minimum=1)
  ev = _noise_evaluator(key, metric_fn, params, scale, num_samples, metric, store, identity,
                        engine)
  base = ev.base()
  _finite("sigma_search_metric", base)

  def f(sigma):
    d = ev.losses(sigma) - base
    return float(np.nan_to_num(d.mean(), nan=np.inf)), d

  settings = dict(measure="sigma_search", target=float(target), metric=metric,
                  num_samples=num_samples, **_scale_settings(scale))
  return _bisect(f, target, bracket, settings)


# ----------------------------------------------------------------------------------------------
# Fisher-Rao norm.


@functools.partial(jax.jit, static_argnames=("keep",))
def _fr_terms(loss_fn, params, batch, keep):
  leaves, treedef = jax.tree.flatten(params)
  tangent = treedef.unflatten([x if k else jnp.zeros_like(x)
                               for x, k in zip(leaves, keep, strict=True)])

  def one(example):
    single = jax.tree.map(lambda a: a[None], example)
    return jax.jvp(lambda p: loss_fn(p, single), (params,), (tangent,))[1]

  return jax.vmap(one)(batch)


def fisher_rao_norm(loss_fn: LossFn, params: PyTree, data: Any, *, mask: PyTree | None = None,
                    precision=PRECISION) -> SharpnessResult:
  """The (empirical) Fisher-Rao norm ``||w||_fr^2 = (1/n) sum_i <w, grad_w l_i(w)>^2``.

  ``l_i`` is the loss of example i alone (``loss_fn(params, batch_of_one)``); ``<w, grad_w l_i>
  = d/dt l_i((1 + t) w)`` at ``t = 0`` is one forward-mode product per example (vmapped).
  Liang et al. show that for a ReLU network without biases of depth D (D weight layers),
  ``<w, grad_w l> = D <dl/df, f(x)>``; the definition here holds for any network. Being
  ``d/dt l(x; (1 + t) w)``, it is unchanged by every *linear* reparametrisation that leaves the
  function unchanged (layer rescalings, rescaling before BatchNorm, permutations). This is the
  squared norm with the training labels, the form Jiang et al. 2020 correlate ("fisher-rao").

  Args:
    loss_fn: ``loss_fn(params, batch)``; it must accept a batch of one example (BatchNorm in
      evaluation mode).
    params: the point ``w``.
    data: one batch or a `splits.DeviceSplit` (pytrees of arrays with a leading example axis).
    mask: optional pytree of bools: ``<w_S, grad_S l>`` over the selected leaves only.
    precision: matmul precision (default ``"highest"``).

  Returns:
    A `SharpnessResult` with ``value = ||w||_fr^2``; ``samples`` the per-example
    ``<w, grad l_i>``, ``stderr`` the standard error of the mean of their squares.

  References:
    Liang, Poggio, Rakhlin and Stokes 2019, "Fisher-Rao Metric, Geometry, and Complexity of
    Neural Networks", Def. 2 and Lemma 2.1; Jiang et al. 2020, App. C.
  """
  precision = check_precision(precision)
  loss_fn = as_partial(loss_fn, name="loss_fn")
  keep = tuple(_mask_leaves(params, mask))
  batches = []
  if isinstance(data, DeviceSplit):
    check_unpadded(data, name="fisher_rao_norm")
    if data.batches is not None:
      nb = jax.tree.leaves(data.batches)[0].shape[0]
      batches += [jax.tree.map(lambda x, b=b: x[b], data.batches) for b in range(nb)]
    if data.rest is not None:
      batches.append(data.rest)
  else:
    batches = [data]
  with matmul_precision(precision):
    terms = np.concatenate([np.asarray(_fr_terms(loss_fn, params, b, keep)) for b in batches])
  _finite("fisher_rao_norm", terms)
  mean, err = _summary(terms.astype(np.float64) ** 2)
  return SharpnessResult(mean, err, dict(measure="fisher_rao"), terms)


# ----------------------------------------------------------------------------------------------
# Hessian and the filter-normalised rise.


def _u_loss(loss_fn, w, c, u, batch):
  return loss_fn(_shift(w, c, u), batch)


def hessian_sharpness(loss_fn: LossFn, params: PyTree, data: Any, *, kind: str = "top",
                      adaptive: bool = False, eta: float = 0.0, key: jax.Array | None = None,
                      num_steps: int = 30, num_probes: int = 30, mask: PyTree | None = None,
                      precision=PRECISION) -> SharpnessResult:
  """The Hessian's top eigenvalue or trace (`core.hessian`), standard or adaptive.

  Standard: ``lambda_max(H)`` by Lanczos (`hessian_eigenvalues`), or ``tr H`` by Hutchinson
  (`hessian_trace`, with its standard error). Adaptive: the same of ``C H C``, ``C = diag(c)``,
  the Hessian of ``u -> L(w + c u)`` at ``u = 0``, which is unchanged by elementwise rescalings
  (with ``eta = 0``). For a quadratic loss, ``rho^2 / 2 lambda_max`` is the l2 worst-case
  sharpness at a minimum and ``rho^2 / 2 tr`` the average-case sharpness.

  Args:
    loss_fn, params, data, mask: as in `hessian.hessian_eigenvalues` (mask: only these leaves).
    kind: ``"top"`` or ``"trace"``.
    adaptive, eta: the scale ``c`` (`perturbation_scale`).
    key: key of the Lanczos start vector / the probes (default ``jax.random.key(0)``).
    num_steps: Lanczos steps (``"top"``).
    num_probes: Hutchinson probes (``"trace"``).
    precision: matmul precision (default ``"highest"``).

  Returns:
    A `SharpnessResult`.

  References:
    Keskar et al. 2017 (curvature and sharp minima); Yao et al. 2020 (PyHessian); Kwon et al.
    2021 (adaptive scaling).
  """
  if kind not in ("top", "trace"):
    raise ValueError(f"kind must be 'top' or 'trace', got {kind!r}.")
  key = jax.random.key(0) if key is None else key
  loss_fn = as_partial(loss_fn, name="loss_fn")
  settings = dict(measure=f"hessian_{kind}", adaptive=bool(adaptive), eta=float(eta))
  if adaptive:
    c = perturbation_scale(params, adaptive=True, eta=eta)
    fn = Partial(_u_loss, loss_fn, params, c)
    point = jax.tree.map(jnp.zeros_like, params)
  else:
    fn, point = loss_fn, params
  if kind == "top":
    eig = hessian_lib.hessian_eigenvalues(fn, point, data, top_k=1, num_steps=num_steps, key=key,
                                          mask=mask, precision=precision)
    return SharpnessResult(float(eig.top[0]), float("nan"),
                           {**settings, "num_steps": int(num_steps)})
  tr = hessian_lib.hessian_trace(key, fn, point, data, num_probes=num_probes, mask=mask,
                                 precision=precision)
  return SharpnessResult(float(tr.mean), float(tr.stderr),
                         {**settings, "num_probes": int(num_probes)}, np.asarray(tr.samples))


@jax.jit
def _rise(loss_fn, params, data, dirs, alpha):
  base = mean_loss(loss_fn, params, data)

  def one(d):
    plus = mean_loss(loss_fn, jax.tree.map(lambda w, x: w + alpha * x, params, d), data)
    minus = mean_loss(loss_fn, jax.tree.map(lambda w, x: w - alpha * x, params, d), data)
    return 0.5 * (plus + minus) - base

  return jax.lax.map(one, dirs)


def filter_normalized_rise(key: jax.Array, loss_fn: LossFn, params: PyTree, data: Any, *,
                           alpha: float = 0.5, num_directions: int = 8,
                           ignore: str | None = "biasbn", out_axis=None,
                           precision=PRECISION) -> SharpnessResult:
  """Li et al.'s 1-D filter-normalised plot as a number: the mean rise at distance `alpha`.

  ``E_d [(L(w + alpha d) + L(w - alpha d)) / 2 - L(w)]`` over filter-normalised Gaussian
  directions ``d`` (`directions.random_directions` with ``norm="filter"``: every filter of ``d``
  has the norm of the same filter of ``w``; `ignore` as there), with the standard error over
  directions. Because every filter of ``d`` scales with ``w``'s, it is unchanged (for the same
  key) by rescaling whole layers or the filters before a BatchNorm, but not by rescaling single
  input units of a filter.

  Args:
    key: key of the directions (direction k uses ``fold_in(key, k)``).
    loss_fn, params, data: as in `average_sharpness`.
    alpha: the step along each direction (Li et al. plot [-1, 1]).
    num_directions: number of random directions (at least 2).
    ignore, out_axis: as in `directions.random_directions`.
    precision: matmul precision (default ``"highest"``).

  Returns:
    A `SharpnessResult` whose ``samples`` are the per-direction rises.

  References:
    Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets".
  """
  precision = _check(None, None, precision)
  if num_directions < 2:
    raise ValueError(f"num_directions must be >= 2, got {num_directions}.")
  dirs = [random_directions(jax.random.fold_in(key, k), params, num=1, norm="filter",
                            ignore=ignore, out_axis=out_axis)[0] for k in range(num_directions)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *dirs)
  with matmul_precision(precision):
    r = np.asarray(_rise(as_partial(loss_fn, name="loss_fn"), params, data, stacked,
                         jnp.float32(alpha)))
  _finite("filter_normalized_rise", r)
  mean, err = _summary(r)
  return SharpnessResult(mean, err, dict(measure="filter_rise", alpha=float(alpha),
                                         num_directions=int(num_directions), ignore=ignore), r)
