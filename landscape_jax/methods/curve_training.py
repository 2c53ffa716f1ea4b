"""Training a curve between two minima (Garipov et al. 2018).

`train_curve` optimises the interior bends of a Bezier or polygonal-chain curve (`core.curves`) to
minimise ``E_{t ~ U(0, 1)} L(phi(t)) + 0.5 wd ||phi(t)||^2`` with SGD, keeping the endpoints fixed.
It follows the reference learning-rate schedule (`schedules.curve_lr_schedule`), checkpoints every
epoch with orbax (`checkpoints.EpochCheckpoints`) and resumes bit for bit: the shuffling and the
sampled ts depend only on ``(seed, epoch, step)``.

References:
  Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity, and
  Fast Ensembling of DNNs".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from landscape_jax.adapters.data import Dataset
from landscape_jax.backends.cpu.onednn_autodiff import min_flops_for, with_onednn_derivatives
from landscape_jax.core import identity as identity_lib
from landscape_jax.core import trees
from landscape_jax.core.curves import (
  bend_count,
  check_kind,
  curve_coefficients,
  init_curve,
  join_curve,
  point_from_parts,
  split_curve,
  squared_norm,
)
from landscape_jax.methods.checkpoints import EpochCheckpoints
from landscape_jax.methods.rundir import (
  batch_shapes,
  data_digest,
  loss_fn_identity,
  optimizer_identity,
)
from landscape_jax.methods.schedules import curve_lr_schedule
from landscape_jax.methods.training import (
  epoch_indices,
  make_epoch_fn,
  progress_bar,
)

__all__ = [
  "curve_train_step",
  "CurveTrainState",
  "train_curve",
]

PyTree = Any

# ----------------------------------------------------------------------------- training


class CurveTrainState(NamedTuple):
  """Trainable state of a curve: the interior bends (leading axis n - 2) and the optimiser."""

  step: jax.Array
  interior: PyTree
  opt_state: optax.OptState


def curve_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation,
                     state: CurveTrainState, ends: PyTree, batch, key: jax.Array, *,
                     kind: str = "bezier", weight_decay: float = 0.0, num_ts: int = 1,
                     cpu_convolutions: str = "auto") -> tuple[CurveTrainState, jax.Array]:
  """One optimiser step on ``E_t [L(phi(t)) + 0.5 wd ||phi(t)||^2]`` (Garipov et al.).

  ``t ~ U(0, 1)`` drawn from `key` (``num_ts`` of them, averaged, when > 1: one full-batch pass
  each, unrolled, see `curve_loss`).
  Only the interior bends are differentiated and updated; the endpoints `ends` (leading axis 2,
  see `split_curve`) stay fixed. phi(t) is one weighted sum over the bend axis, so the step costs
  one forward/backward pass of the model plus O(num_bends x params).

  ``cpu_convolutions``: who computes the convolutions and their derivatives on the CPU,
  ``"auto"`` (oneDNN where available for convolutions of at least
  `onednn_autodiff.AUTO_MIN_FLOPS`), ``"onednn"`` or
  ``"xla"``; both exact float32 (benchmarks/bench_conv_grads.py times them).

  Returns:
    The new state and the mean data loss (without the L2 term) at the sampled ts.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  n = bend_count(state.interior) + 2
  if (min_flops := min_flops_for(cpu_convolutions)) is not None:
    loss_fn = with_onednn_derivatives(loss_fn, min_flops=min_flops)
  ts = jax.random.uniform(key, () if num_ts == 1 else (num_ts,))

  def objective(interior):
    def one(t):
      p = point_from_parts(ends, interior, curve_coefficients(t, n, kind))
      loss = loss_fn(p, batch)
      reg = 0.5 * weight_decay * squared_norm(p) if weight_decay else 0.0
      return loss + reg, loss
    if num_ts == 1:
      return one(ts)
    parts = [one(ts[i]) for i in range(num_ts)]
    return (sum(o for o, _ in parts) / num_ts, sum(lo for _, lo in parts) / num_ts)

  (_, loss), grads = jax.value_and_grad(objective, has_aux=True)(state.interior)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.interior)
  interior = optax.apply_updates(state.interior, updates)
  return CurveTrainState(state.step + 1, interior, opt_state), loss



def train_curve(loss_fn: Callable[[PyTree, Any], jax.Array], start: PyTree, end: PyTree,
                data: Dataset, *, epochs: int, num_bends: int = 3, kind: str = "bezier",
                init: PyTree | None = None, batch_size: int = 128, learning_rate: float = 0.015,
                momentum: float = 0.9, weight_decay: float = 5e-4,
                optimizer: optax.GradientTransformation | None = None, num_ts: int = 1,
                augment: bool = False, seed: int = 0, workdir: str | None = None,
                checkpoint_every: int = 1, progress: bool = True,
                callback: Callable | None = None,
                identity: str | None = None, cpu_convolutions: str = "auto"
                ) -> tuple[PyTree, list[dict]]:
  """Trains the interior bends of a curve between two fixed minima (Garipov et al. 2018).

  The objective is ``E_{t ~ U(0,1)} [L(phi(t)) + 0.5 wd ||phi(t)||^2]`` with one t per minibatch
  (``num_ts`` > 1 averages several). The default optimiser is the reference recipe: SGD with
  momentum and `curve_lr_schedule` (lr constant for half of the training, linear down to 1 % at
  90 %). For BatchNorm models pass a training-mode `loss_fn` (``make_loss_fn(..., train=True)``):
  every step uses the statistics of its batch, and the running statistics are recomputed at
  evaluation (`adapters.batchnorm`).

  Args:
    loss_fn: ``loss_fn(params, (uint8 images, labels)) -> scalar``.
    start, end: the two endpoints (fixed).
    data: training split (uint8 images are kept on the device).
    epochs: number of epochs; num_bends: control points incl. endpoints; kind: curve basis.
    init: optional initial control points (default: `init_curve` on the straight line).
    batch_size, learning_rate, momentum, weight_decay: the reference hyperparameters
      (learning rate 0.015-0.03, wd 3e-4..5e-4); `optimizer` replaces SGD + schedule entirely
      (weight_decay still gives the L2 term of the loss).
    num_ts: ts sampled per minibatch. augment: random crop + flip (CIFAR).
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
    cpu_convolutions: ``"auto"`` (default: the convolutions and their derivatives on oneDNN
      where available), ``"onednn"`` or ``"xla"`` (see `curve_train_step`).

  Returns:
    ``(curve, history)``: the full control points and one ``{"epoch", "loss", "lr"}`` per epoch.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  check_kind(kind)
  if checkpoint_every <= 0:
    raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}.")
  curve = init if init is not None else init_curve(start, end, num_bends)
  num_bends = bend_count(curve)
  if num_bends < 3:
    raise ValueError("train_curve needs at least one interior bend (num_bends >= 3).")
  ends, interior = split_curve(curve)
  trees.check_same_structure(jax.tree.map(lambda e: e[0], ends), start, names=("curve", "start"))
  trees.check_finite(curve, name="curve control points (endpoints and initial bends)")
  n_train = len(data)
  steps_per_epoch = n_train // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {batch_size} is larger than the split ({n_train} examples).")
  if workdir is not None:  # before wrapping: the caller's function is what is identified
    recorded_loss_fn = loss_fn_identity(loss_fn, identity, params=start,
                                        batch=batch_shapes(data, batch_size))
  schedule = curve_lr_schedule(learning_rate, total_epochs=epochs, steps_per_epoch=steps_per_epoch)
  opt = optimizer if optimizer is not None else optax.sgd(schedule, momentum=momentum)
  state = CurveTrainState(jnp.zeros((), jnp.int32), interior, opt.init(interior))
  loss_fn = loss_fn if isinstance(loss_fn, jax.tree_util.Partial) else jax.tree_util.Partial(
    loss_fn)

  def step_fn(fn_args, st, batch, key):
    lf, e = fn_args
    return curve_train_step(lf, opt, st, e, batch, key, kind=kind, weight_decay=weight_decay,
                            num_ts=num_ts, cpu_convolutions=cpu_convolutions)

  epoch_fn = make_epoch_fn(step_fn, augment=augment)
  history: list[dict] = []
  first_epoch = 0
  saver = None
  if workdir is not None:
    saver = EpochCheckpoints(workdir, "curve", {
      "kind": kind, "num_bends": num_bends, "epochs": epochs, "batch_size": batch_size,
      "learning_rate": learning_rate, "momentum": momentum, "weight_decay": weight_decay,
      "num_ts": num_ts,
      "augment": augment, "seed": seed, "custom_optimizer": optimizer is not None,
      "optimizer_code": optimizer_identity(opt, interior), "versions": identity_lib.versions(),
      "num_examples": n_train, "start_sha256": identity_lib.tree_digest(start),
      "end_sha256": identity_lib.tree_digest(end),
      "init_sha256": None if init is None else identity_lib.tree_digest(init),
      "data_sha256": data_digest(data), "loss_fn": recorded_loss_fn})
  try:  # from here on, every exit releases the workdir's write lock (saver.close)
    if saver is not None:
      state, first_epoch, history = saver.restore(state)
    images, labels = jnp.asarray(data.images), jnp.asarray(data.labels)
    key = jax.random.key(seed)
    bar = progress_bar(range(first_epoch, epochs), progress, "curve", initial=first_epoch,
                       total=epochs)
    for epoch in bar:
      idx = jnp.asarray(epoch_indices(n_train, batch_size, seed, epoch))
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
  finally:
    if saver is not None:
      saver.close()
  return join_curve(ends, state.interior), history


