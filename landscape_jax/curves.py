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
`landscape_jax.batchnorm.make_recompute_metric_fn`), and compares with the straight line.
`plane_basis`, `plane_grid_point`, `project_to_plane` and `evaluate_plane` give the plane through
three points of the paper's figures.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape_jax import checkpoints, engine, fileio, paths, trees
from landscape_jax import identity as identity_lib
from landscape_jax.convolutions import canonicalize_convolutions
from landscape_jax.data import Dataset, augment
from landscape_jax.engine import check_grid
from landscape_jax.store import check_or_write_config, read_json
from landscape_jax.surface import surface_grid
from landscape_jax.training import garipov_schedule

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
      losses are averaged over them, evaluated one after the other in an unrolled loop: under
      `jax.grad` a ResNet-20 step with 4 ts took 2.3 s unrolled, 42 s with `jax.vmap` over ts
      (per-t weights) and 88 s with `lax.map` on 2 CPU cores; compile time grows with the ts).
    kind: "bezier" or "polychain".
    weight_decay: coefficient of the L2 term on the sampled point phi(t).
    fix_endpoints: stop the gradient at the endpoints, so that only interior bends receive one.
  """
  n = bend_count(curve)
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
  return sum(one(ts[i]) for i in range(ts.shape[0])) / ts.shape[0]


def curve_lr_schedule(base_lr: float, *, total_epochs: int, steps_per_epoch: int,
                      ) -> optax.Schedule:
  """Reference learning-rate schedule of Garipov et al. (constant within an epoch).

  ``training.garipov_schedule(base_lr, total_epochs * steps_per_epoch, steps_per_epoch=...)``:
  with ``a = (e + 1) / total_epochs`` for the 0-based epoch e (the reference's train.py counts
  epochs from 1 and uses ``a = epoch / total``), factor 1 for ``a <= 0.5``,
  ``1 - 0.99 (a - 0.5) / 0.4`` for ``0.5 < a <= 0.9`` (linear down to 0.01), and 0.01
  afterwards; lr = base_lr * factor.
  """
  if total_epochs <= 0 or steps_per_epoch <= 0:
    raise ValueError(f"total_epochs and steps_per_epoch must be positive, got {total_epochs} "
                     f"and {steps_per_epoch}.")
  return garipov_schedule(base_lr, total_epochs * steps_per_epoch,
                          steps_per_epoch=steps_per_epoch)


# ----------------------------------------------------------------------------- training


class CurveTrainState(NamedTuple):
  """Trainable state of a curve: the interior bends (leading axis n - 2) and the optimiser."""

  step: jax.Array
  interior: PyTree
  opt_state: optax.OptState


def curve_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation,
                     state: CurveTrainState, ends: PyTree, batch, key: jax.Array, *,
                     kind: str = "bezier", weight_decay: float = 0.0, num_ts: int = 1,
                     ) -> tuple[CurveTrainState, jax.Array]:
  """One optimiser step on ``E_t [L(phi(t)) + 0.5 wd ||phi(t)||^2]`` (Garipov et al.).

  ``t ~ U(0, 1)`` drawn from `key` (``num_ts`` of them, averaged, when > 1: one full-batch pass
  each, unrolled, see `curve_loss`).
  Only the interior bends are differentiated and updated; the endpoints `ends` (leading axis 2,
  see `split_curve`) stay fixed. phi(t) is one weighted sum over the bend axis, so the step costs
  one forward/backward pass of the model plus O(num_bends x params).

  Returns:
    The new state and the mean data loss (without the L2 term) at the sampled ts.
  """
  n = bend_count(state.interior) + 2
  ts = jax.random.uniform(key, () if num_ts == 1 else (num_ts,))

  def objective(interior):
    def one(t):
      p = _point_from_parts(ends, interior, curve_coefficients(t, n, kind))
      loss = loss_fn(p, batch)
      reg = 0.5 * weight_decay * _l2(p) if weight_decay else 0.0
      return loss + reg, loss
    if num_ts == 1:
      return one(ts)
    parts = [one(ts[i]) for i in range(num_ts)]
    return (sum(o for o, _ in parts) / num_ts, sum(lo for _, lo in parts) / num_ts)

  (_, loss), grads = jax.value_and_grad(objective, has_aux=True)(state.interior)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.interior)
  interior = optax.apply_updates(state.interior, updates)
  return CurveTrainState(state.step + 1, interior, opt_state), loss


def _epoch_indices(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """(steps, batch_size) shuffled indices of one epoch; a function of (seed, epoch) only."""
  if batch_size > n:
    raise ValueError(f"batch_size {batch_size} is larger than the split ({n} examples).")
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  steps = n // batch_size
  return perm[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def make_epoch_fn(step_fn: Callable, *, augment_images: bool = False) -> Callable:
  """Jitted ``epoch(fn_args, state, images, labels, indices, key) -> (state, mean loss)``.

  Walks one epoch with `lax.scan` on device-resident uint8 data; batch i uses ``indices[i]`` and
  the key ``fold_in(key, state.step)`` (split for the augmentation), so results depend only on
  (seed, epoch, step) and a resumed run repeats an uninterrupted one exactly. `step_fn` is
  ``step_fn(fn_args, state, batch, key) -> (state, loss)``; on the CPU its convolutions are put
  in the canonical layout (`convolutions.canonicalize_convolutions`: XLA:CPU's backward
  convolutions inside a scan are otherwise several times slower).
  """
  step_fn = canonicalize_convolutions(step_fn)

  @jax.jit
  def epoch(fn_args, state, images, labels, indices, key):
    def body(st, idx):
      k = jax.random.fold_in(key, st.step)
      k_step, k_aug = jax.random.split(k)
      x = images[idx]
      if augment_images:
        x = augment(k_aug, x)
      st, loss = step_fn(fn_args, st, (x, labels[idx]), k_step)
      return st, loss
    state, losses = jax.lax.scan(body, state, indices)
    return state, jnp.mean(losses)

  return epoch


def _data_digest(data: Dataset) -> str:
  """sha256 of a split's images and labels (`identity.tree_digest`): the data a run trained on."""
  return identity_lib.tree_digest({"images": data.images, "labels": data.labels})


def _loss_fn_identity(loss_fn: Callable, identity_name: str | None) -> dict:
  """`identity.callable_identity` of a training run's `loss_fn`, with a remedy if it cannot be
  determined (pass ``identity=`` to the training function)."""
  try:
    return identity_lib.callable_identity(loss_fn, identity=identity_name, name="loss_fn")
  except identity_lib.IdentityError as e:
    raise identity_lib.IdentityError(
      f"A resumable training run (workdir given) records the exact identity of its loss_fn, and "
      f"this one cannot be determined: {e} Pass identity='<a name you guarantee identifies "
      "loss_fn and what it holds>' to the training function (train_curve, train_sgd, "
      "fast_geometric_ensemble), or run without a workdir.") from e


_CONFIG_REMEDY = ("To start fresh, use another workdir or move this one away; to resume, rerun "
                  "with exactly the inputs that computed it.")


def train_curve(loss_fn: Callable[[PyTree, Any], jax.Array], start: PyTree, end: PyTree,
                data: Dataset, *, epochs: int, num_bends: int = 3, kind: str = "bezier",
                init: PyTree | None = None, batch_size: int = 128, lr: float = 0.015,
                momentum: float = 0.9, weight_decay: float = 5e-4,
                optimizer: optax.GradientTransformation | None = None, num_ts: int = 1,
                augment_images: bool = False, seed: int = 0, workdir: str | None = None,
                checkpoint_every: int = 1, progress: bool = True,
                callback: Callable | None = None,
                identity: str | None = None) -> tuple[PyTree, list[dict]]:
  """Trains the interior bends of a curve between two fixed minima (Garipov et al. 2018).

  The objective is ``E_{t ~ U(0,1)} [L(phi(t)) + 0.5 wd ||phi(t)||^2]`` with one t per minibatch
  (``num_ts`` > 1 averages several). The default optimiser is the reference recipe: SGD with
  momentum and `curve_lr_schedule` (lr constant for half of the training, linear down to 1 % at
  90 %). For BatchNorm models pass a training-mode `loss_fn` (``make_loss_fn(..., train=True)``):
  every step uses the statistics of its batch, and the running statistics are recomputed at
  evaluation (`landscape_jax.batchnorm`).

  Args:
    loss_fn: ``loss_fn(params, (uint8 images, labels)) -> scalar``.
    start, end: the two endpoints (fixed).
    data: training split (uint8 images are kept on the device).
    epochs: number of epochs; num_bends: control points incl. endpoints; kind: curve basis.
    init: optional initial control points (default: `init_curve` on the straight line).
    batch_size, lr, momentum, weight_decay: the reference hyperparameters (lr 0.015-0.03,
      wd 3e-4..5e-4); `optimizer` replaces SGD + schedule entirely (weight_decay still gives the
      L2 term of the loss).
    num_ts: ts sampled per minibatch. augment_images: random crop + flip (CIFAR).
    seed: shuffling and t sampling depend only on (seed, epoch, step).
    workdir: if given, an orbax checkpoint is written after every epoch (atomically) with the
      configuration; a rerun resumes from the last completed epoch and gives the same result as an
      uninterrupted run. The configuration records the hyperparameters and exact identities:
      sha256 digests (`identity.tree_digest`) of `start` and `end` (in order), of `init` (when
      given) and of the data (images and labels), and `identity.callable_identity` of `loss_fn`
      (its code and the arrays it holds). A rerun that differs in any of them (swapped or
      permuted endpoints, other data, another model or BatchNorm statistics) raises
      `store.StoreMismatchError` listing what differs.
    checkpoint_every: save every this many epochs (and after the last one).
    progress: tqdm progress bar over epochs. callback: ``callback(epoch, curve, record)`` after
      every epoch (after the checkpoint).
    identity: with `workdir`, a name you guarantee identifies `loss_fn` where its content cannot
      be inspected (`identity.callable_identity` raises `IdentityError` without it).

  Returns:
    ``(curve, history)``: the full control points and one ``{"epoch", "loss", "lr"}`` per epoch.
  """
  _check_kind(kind)
  if checkpoint_every <= 0:
    raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}.")
  curve = init if init is not None else init_curve(start, end, num_bends)
  num_bends = bend_count(curve)
  if num_bends < 3:
    raise ValueError("train_curve needs at least one interior bend (num_bends >= 3).")
  ends, interior = split_curve(curve)
  trees.check_same_structure(jax.tree.map(lambda e: e[0], ends), start, names=("curve", "start"))
  if workdir is not None:  # before wrapping: the caller's function is what is identified
    recorded_loss_fn = _loss_fn_identity(loss_fn, identity)
  trees.check_finite(curve, name="curve control points (endpoints and initial bends)")
  n_train = len(data)
  steps_per_epoch = n_train // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {batch_size} is larger than the split ({n_train} examples).")
  schedule = curve_lr_schedule(lr, total_epochs=epochs, steps_per_epoch=steps_per_epoch)
  opt = optimizer if optimizer is not None else optax.sgd(schedule, momentum=momentum)
  state = CurveTrainState(jnp.zeros((), jnp.int32), interior, opt.init(interior))
  loss_fn = loss_fn if isinstance(loss_fn, jax.tree_util.Partial) else jax.tree_util.Partial(
    loss_fn)

  def step_fn(fn_args, st, batch, key):
    lf, e = fn_args
    return curve_train_step(lf, opt, st, e, batch, key, kind=kind, weight_decay=weight_decay,
                            num_ts=num_ts)

  epoch_fn = make_epoch_fn(step_fn, augment_images=augment_images)
  history: list[dict] = []
  first_epoch = 0
  saver = None
  if workdir is not None:
    saver = EpochCheckpoints(workdir, "curve", {
      "kind": kind, "num_bends": num_bends, "epochs": epochs, "batch_size": batch_size,
      "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "num_ts": num_ts,
      "augment": augment_images, "seed": seed, "custom_optimizer": optimizer is not None,
      "num_examples": n_train, "start_sha256": identity_lib.tree_digest(start),
      "end_sha256": identity_lib.tree_digest(end),
      "init_sha256": None if init is None else identity_lib.tree_digest(init),
      "data_sha256": _data_digest(data), "loss_fn": recorded_loss_fn})
    state, first_epoch, history = saver.restore(state)
  images, labels = jnp.asarray(data.images), jnp.asarray(data.labels)
  key = jax.random.key(seed)
  bar = _progress(range(first_epoch, epochs), progress, "curve", initial=first_epoch,
                  total=epochs)
  for epoch in bar:
    idx = jnp.asarray(_epoch_indices(n_train, batch_size, seed, epoch))
    lr_now = float(schedule(epoch * steps_per_epoch)) if optimizer is None else None
    state, loss = epoch_fn((loss_fn, ends), state, images, labels, idx, key)
    loss = float(loss)
    if not math.isfinite(loss):
      raise FloatingPointError(f"Curve training diverged at epoch {epoch} (loss {loss}); lower "
                               "the learning rate.")
    record = {"epoch": epoch, "loss": loss, "lr": lr_now}
    history.append(record)
    if saver is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
      saver.save(epoch + 1, state, history)
    if hasattr(bar, "set_postfix"):
      bar.set_postfix(loss=f"{loss:.4f}")
    if callback is not None:
      callback(epoch, join_curve(ends, state.interior), record)
  if saver is not None:
    saver.close()
  return join_curve(ends, state.interior), history


class EpochCheckpoints:
  """Per-epoch checkpoints of a training loop in `workdir`, resumed exactly.

  Files (``<name>`` is e.g. "curve" or "sgd"): ``<name>_config.json`` (the run's configuration
  with the exact identities of its inputs; a rerun with another one is refused by
  `store.check_or_write_config`), ``<name>_ckpt/<epochs done>/`` (an orbax manager keeping
  the latest two, each with the sha256 of every leaf, verified on restore) and
  ``<name>_history.json`` (the per-epoch records, written before each checkpoint, so a record
  newer than the last checkpoint is dropped on resume). Used by `train_curve` and
  `ensembles.train_sgd`.
  """

  def __init__(self, workdir: str, name: str, config: dict):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.workdir = workdir
    self.name = name
    os.makedirs(workdir, exist_ok=True)
    check_or_write_config(os.path.join(workdir, f"{name}_config.json"), config,
                          what=f"the checkpoints of a {name} training run",
                          remedy=_CONFIG_REMEDY)
    self.manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, f"{name}_ckpt")),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))

  def _step_dir(self, epochs_done: int) -> str:
    return os.path.join(self.workdir, f"{self.name}_ckpt", str(epochs_done))

  def restore(self, state: PyTree) -> tuple[PyTree, int, list[dict]]:
    """``(state, epochs done, history)`` of the latest checkpoint (`state` unchanged if none)."""
    last = self.manager.latest_step()
    if last is None:
      return state, 0, []
    ocp = self._ocp
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"state": state})
    step_dir = self._step_dir(last)
    try:
      restored = self.manager.restore(last, args=ocp.args.StandardRestore(target))
    except Exception as e:  # tensorstore/orbax raise plain Exceptions for unreadable data
      raise checkpoints.CheckpointCorruptError(
        f"Checkpoint {step_dir} could not be read, it is truncated or corrupt "
        f"({str(e)[:300]}). Move it away to resume from the previous epoch.") from e
    _verify_leaf_digests(step_dir, restored["state"])
    # orbax returns NamedTuples (optax states too) as lists; the leaf order is the same
    state = jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(restored["state"]))
    history = []
    hist_path = os.path.join(self.workdir, f"{self.name}_history.json")
    if os.path.exists(hist_path):
      saved = read_json(hist_path, remedy="Move it away to resume without the records of the "
                        "finished epochs (the checkpoints are intact).")
      history = [h for h in saved if h["epoch"] < last]
    return state, last, history

  def save(self, epochs_done: int, state: PyTree, history: list[dict]) -> None:
    """History first, then the state (orbax, atomic), then its sha256 file."""
    fileio.atomic_write_json(os.path.join(self.workdir, f"{self.name}_history.json"), history,
                             indent=None)
    self.manager.save(epochs_done, args=self._ocp.args.StandardSave({"state": state}))
    self.manager.wait_until_finished()
    _write_leaf_digests(self._step_dir(epochs_done), state)

  def close(self) -> None:
    self.manager.close()


def _write_leaf_digests(step_dir: str, state: PyTree) -> None:
  """sha256 of every leaf (in leaf order) next to an orbax step: its compression has no checksum."""
  digests = checkpoints._leaf_digests(state)
  if digests is not None and os.path.isdir(step_dir):
    fileio.atomic_write_json(os.path.join(step_dir, checkpoints.CHECKSUM_FILE),
                             list(digests.values()), indent=None)


def _verify_leaf_digests(step_dir: str, restored: PyTree) -> None:
  path = os.path.join(step_dir, checkpoints.CHECKSUM_FILE)
  if not os.path.exists(path):
    return  # killed between the orbax commit and this file: restored unverified
  try:
    with open(path) as f:
      expected = json.load(f)
  except (OSError, ValueError) as e:
    raise checkpoints.CheckpointCorruptError(f"Checksums {path} are unreadable ({e!r}).") from e
  got = checkpoints._leaf_digests(restored)
  if got is not None and list(got.values()) != expected:
    names = list(got)
    bad = next((i for i, (g, x) in enumerate(zip(got.values(), expected, strict=False)) if g != x),
               min(len(names), len(expected)))
    leaf = names[bad] if bad < len(names) else f"#{bad}"
    raise checkpoints.CheckpointCorruptError(
      f"Checkpoint {step_dir} is corrupt: leaf {leaf} does not match its checksum "
      "(a truncated or damaged file). The files were not modified; move this step away to resume "
      "from the previous epoch.")


def _progress(iterable, enabled: bool, desc: str, **kwargs):
  if not enabled:
    return iterable
  from tqdm.auto import tqdm
  return tqdm(iterable, desc=desc, **kwargs)


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
  `landscape_jax.paths.barrier` (the one implementation), for losses and for errors
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
                   **engine_kwargs) -> dict:
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
    store: a store directory (`landscape_jax.store`); a rerun continues where it stopped, and a
      store of any other evaluation is refused.
    metadata: extra JSON-able configuration recorded in the store.
    **engine_kwargs: ``chunk_size``, ``mesh``, ``map_mode``, ``batch_size``, ``identity``,
      ``progress`` (see `engine.evaluate_points`).

  Returns:
    ``{"t": ts, "curve": {metric: (T,)}, "line": {metric: (T,)}, "summary": {"curve": ...,
    "line": ...}}`` with summaries from `curve_summary` (min, max, mean, barrier per metric).
  """
  _check_kind(kind)
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
  point_fn = jax.tree_util.Partial(_stacked_point(kind), pair)
  res = engine.evaluate_points(metric_fn, point_fn, coords, store=store, metadata=metadata,
                               desc=engine_kwargs.pop("desc", "curve points"), **engine_kwargs)
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
                   alphas=None, betas=None, chunk_size: int | None = None, mesh=None,
                   store: str | None = None, progress: bool = True, **surface_kwargs) -> dict:
  """Metrics on the grid ``p(a_i, b_j)`` of the plane, ``res[k][i, j]`` (Garipov et al.).

  Default ``a, b = linspace(-0.2, 1.2, 21)``. Evaluated by `landscape_jax.surface.surface_grid`
  with centre w0 and directions ``(scale_u u, scale_v v)`` (so it is chunked, vmapped, sharded
  over `mesh` and resumable in the `store` directory like any surface; further keyword arguments
  go to `surface_grid`). For BatchNorm models pass a `make_recompute_metric_fn` metric_fn.
  Returns the metric grids and the plot coordinates ``x = a scale_u``, ``y = b scale_v`` (the
  units of `project_to_plane`).
  """
  alphas = np.linspace(-0.2, 1.2, 21) if alphas is None else check_grid(alphas, name="alphas")
  betas = np.linspace(-0.2, 1.2, 21) if betas is None else check_grid(betas, name="betas")
  d1 = optax.tree.scale(plane.scale_u, plane.u)
  d2 = optax.tree.scale(plane.scale_v, plane.v)
  out = surface_grid(metric_fn, plane.origin, (d1, d2), alphas, betas, chunk_size=chunk_size,
                     mesh=mesh, store=store, progress=progress, **surface_kwargs)
  out = dict(out)
  out["alphas"], out["betas"] = alphas, betas
  out["x"] = alphas * float(plane.scale_u)
  out["y"] = betas * float(plane.scale_v)
  return out


def default_config(**overrides):
  """`ml_collections.ConfigDict` read by experiments/connect.py (small digits defaults).

  Fields: ``dataset``, ``data_dir``, ``model``, ``model_kwargs``; the endpoints: ``endpoints``
  (two experiments/train.py workdirs as ``"a,b"``; empty: train two here), ``endpoint_seeds``,
  ``endpoint_epochs``, ``endpoint_lr``; the curve (Garipov et al. 2018: SGD momentum 0.9, L2 on
  phi(t), the reference's learning-rate schedule): ``num_bends``, ``kind`` ("bezier" |
  "polychain"), ``epochs``, ``lr``, ``momentum``, ``weight_decay``, ``batch_size``, ``num_ts``
  (ts per minibatch), ``augment`` (crop + flip), ``seed``, ``checkpoint_every``; the evaluation:
  ``num_points`` (61 in the paper), ``chunk_size``, ``eval_batch_size``, ``bn_batch_size``, and
  the plane through the endpoints and the bend: ``plane_points`` per side over
  [``plane_min``, ``plane_max``], ``plane_metrics``. Unknown override names are an error.
  """
  import ml_collections

  from landscape_jax.training import override_config

  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.data_dir = None
  c.model = "mlp"
  c.model_kwargs = {"features": (32,)}
  c.endpoints = ""
  c.endpoint_seeds = (1, 2)
  c.endpoint_epochs = 30
  c.endpoint_lr = 0.05
  c.num_bends = 3
  c.kind = "bezier"
  c.epochs = 30
  c.lr = 0.05
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.batch_size = 64
  c.num_ts = 1
  c.augment = False
  c.seed = 0
  c.checkpoint_every = 10
  c.num_points = 61
  c.chunk_size = 8
  c.eval_batch_size = 512
  c.bn_batch_size = 128
  c.plane_points = 21
  c.plane_min = -0.2
  c.plane_max = 1.2
  c.plane_metrics = ("train_loss", "test_loss")
  return override_config(c, overrides, what="connect config")
