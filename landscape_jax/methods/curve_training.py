"""Training a curve between two minima (Garipov et al. 2018).

`train_curve` optimises the interior bends of a Bezier or polygonal-chain curve (`core.curves`) to
minimise ``E_{t ~ U(0, 1)} L(phi(t)) + 0.5 wd ||phi(t)||^2`` with SGD, keeping the endpoints fixed.
It follows the reference learning-rate schedule (`schedules.curve_lr_schedule`), checkpoints every
epoch with orbax (`loop.RunDir`) and resumes bit for bit: the shuffling and the
sampled ts depend only on ``(seed, epoch, step)``.

References:
  Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity, and
  Fast Ensembling of DNNs".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

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
from landscape_jax.methods.loop import (
  RunDir,
  TrainSettings,
  as_training_data,
  check_positive_int,
  epoch_indices,
  make_epoch_fn,
  run_epochs,
  settings_class,
)
from landscape_jax.methods.rundir import (
  batch_shapes,
  data_digest,
  loss_fn_identity,
  optimizer_identity,
)
from landscape_jax.methods.schedules import curve_lr_schedule

__all__ = [
  "CurveSettings",
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



@settings_class
class CurveSettings(TrainSettings):
  """The hyperparameters of curve training (frozen, checked on creation).

  The fields of `loop.TrainSettings` (with the reference's learning rate 0.015 as the default;
  Garipov et al. use 0.015-0.03 and weight decay 3e-4..5e-4) and:

  Attributes:
    num_bends: control points including the two endpoints (>= 3; ignored when `train_curve`
      is given ``init``, whose bends count).
    kind: the curve basis, ``"bezier"`` or ``"polychain"`` (`core.curves`).
    num_ts: ts sampled per minibatch (their objectives averaged).

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """

  learning_rate: float = 0.015
  num_bends: int = 3
  kind: str = "bezier"
  num_ts: int = 1

  def __post_init__(self):
    super().__post_init__()
    if callable(self.learning_rate):
      raise ValueError("CurveSettings.learning_rate is the base rate of the reference schedule "
                       "(a float); pass a schedule through train_curve's optimizer instead.")
    check_kind(self.kind)
    if isinstance(self.num_bends, bool) or not isinstance(self.num_bends, int) \
        or self.num_bends < 3:
      raise ValueError(f"num_bends must be an integer >= 3 (one interior bend at least), got "
                       f"{self.num_bends!r}.")
    check_positive_int("num_ts", self.num_ts)


def train_curve(loss_fn: Callable[[PyTree, Any], jax.Array], start: PyTree, end: PyTree,
                data, *, settings: CurveSettings, init: PyTree | None = None,
                optimizer: optax.GradientTransformation | None = None, workdir: str | None = None,
                progress: bool = True, callback: Callable | None = None,
                identity: str | None = None, cpu_convolutions: str = "auto",
                ) -> tuple[PyTree, list[dict]]:
  """Trains the interior bends of a curve between two fixed minima (Garipov et al. 2018).

  The objective is ``E_{t ~ U(0,1)} [L(phi(t)) + 0.5 wd ||phi(t)||^2]`` with one t per minibatch
  (``num_ts`` > 1 averages several), stepped by `curve_train_step` inside `loop.run_epochs`.
  For BatchNorm models pass a training-mode `loss_fn` (``make_loss_fn(..., train=True)``):
  every step uses the statistics of its batch, and the running statistics are recomputed at
  evaluation (`adapters.batchnorm`).

  Args:
    loss_fn: ``loss_fn(params, (inputs, targets)) -> scalar`` (e.g. `make_loss_fn` with any
      `Loss`).
    start, end: the two endpoints (fixed).
    data: the training split, kept on the device: an ``(inputs, targets)`` pair of pytrees with
      a leading example axis, or a `Dataset` (its uint8 images and labels).
    settings: the `CurveSettings` (epochs, number of bends, curve kind, ts per batch, batch
      size, learning rate, momentum, weight decay, seed, augmentation, checkpoint cadence).
    init: optional initial control points (default: `init_curve` on the straight line).
    optimizer: any Optax `GradientTransformation` on the interior bends. Default: the reference
      recipe, ``optax.sgd(curve_lr_schedule(settings.learning_rate, ...), settings.momentum)``
      (lr constant for half of the training, linear down to 1 % at 90 %). The settings' weight
      decay always gives the L2 term of the objective.
    workdir: if given, a `loop.RunDir` (``curve_config.json``, ``curve_ckpt/``,
      ``curve_history.json``) checkpoints the state every ``settings.checkpoint_every`` epochs
      (and after the last); a rerun resumes from the last checkpoint and gives the same result
      as an uninterrupted run. The configuration records the hyperparameters and exact
      identities: sha256 digests (`identity.tree_digest`) of `start` and `end` (in order), of
      `init` (when given) and of the data, the traced code of the optimiser, and
      `identity.callable_identity` of `loss_fn` (its code and the arrays it holds). A rerun that
      differs in any of them (swapped or permuted endpoints, other data, another model or
      BatchNorm statistics) raises `store.StoreMismatchError` listing what differs.
    progress: a progress bar over epochs.
    callback: ``callback(epoch, curve, record)`` after every epoch (after the checkpoint).
    identity: with `workdir`, a name you guarantee identifies `loss_fn` where its content cannot
      be inspected (`identity.callable_identity` raises `IdentityError` without it).
    cpu_convolutions: ``"auto"`` (default: the convolutions and their derivatives on oneDNN
      where available), ``"onednn"`` or ``"xla"`` (see `curve_train_step`).

  Returns:
    ``(curve, history)``: the full control points and one ``{"epoch", "loss", "lr"}`` per epoch
    (``lr`` None with a custom optimizer).

  Raises:
    FloatingPointError: the training loss became NaN or infinite.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  s = settings
  if not isinstance(s, CurveSettings):
    raise TypeError(f"settings must be a CurveSettings, got {type(s).__name__}.")
  curve = init if init is not None else init_curve(start, end, s.num_bends)
  num_bends = bend_count(curve)
  if num_bends < 3:
    raise ValueError("train_curve needs at least one interior bend (num_bends >= 3).")
  ends, interior = split_curve(curve)
  trees.check_same_structure(jax.tree.map(lambda e: e[0], ends), start, names=("curve", "start"))
  trees.check_finite(curve, name="curve control points (endpoints and initial bends)")
  inputs, targets, n_train = as_training_data(data)
  steps_per_epoch = n_train // s.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {s.batch_size} is larger than the split ({n_train} examples).")
  if workdir is not None:  # before wrapping: the caller's function is what is identified
    recorded_loss_fn = loss_fn_identity(loss_fn, identity, params=start,
                                        batch=batch_shapes((inputs, targets), s.batch_size))
  schedule = curve_lr_schedule(s.learning_rate, total_epochs=s.epochs,
                               steps_per_epoch=steps_per_epoch)
  opt = optimizer if optimizer is not None else optax.sgd(schedule, momentum=s.momentum)
  state = CurveTrainState(jnp.zeros((), jnp.int32), interior, opt.init(interior))
  loss_fn = loss_fn if isinstance(loss_fn, jax.tree_util.Partial) else jax.tree_util.Partial(
    loss_fn)

  def step_fn(fn_args, st, batch, key):
    lf, e = fn_args
    return curve_train_step(lf, opt, st, e, batch, key, kind=s.kind,
                            weight_decay=s.weight_decay, num_ts=s.num_ts,
                            cpu_convolutions=cpu_convolutions)

  scan_epoch = make_epoch_fn(step_fn, augment=s.augment)
  config = None
  if workdir is not None:
    config = {
      "kind": s.kind, "num_bends": num_bends, "epochs": s.epochs, "batch_size": s.batch_size,
      "learning_rate": s.learning_rate, "momentum": s.momentum,
      "weight_decay": s.weight_decay, "num_ts": s.num_ts, "augment": s.augment, "seed": s.seed,
      "custom_optimizer": optimizer is not None,
      "optimizer_code": optimizer_identity(opt, interior), "versions": identity_lib.versions(),
      "num_examples": n_train, "start_sha256": identity_lib.tree_digest(start),
      "end_sha256": identity_lib.tree_digest(end),
      "init_sha256": None if init is None else identity_lib.tree_digest(init),
      "data_sha256": data_digest((inputs, targets)), "loss_fn": recorded_loss_fn}
  inputs, targets = jax.tree.map(jnp.asarray, (inputs, targets))
  key = jax.random.key(s.seed)

  def epoch_fn(st, epoch, tick):
    del tick
    idx = jnp.asarray(epoch_indices(n_train, s.batch_size, s.seed, epoch))
    lr_now = float(schedule(epoch * steps_per_epoch)) if optimizer is None else None
    st, loss = scan_epoch((loss_fn, ends), st, inputs, targets, idx, key)
    return st, {"epoch": epoch, "loss": float(loss), "lr": lr_now}

  run = None if workdir is None else RunDir(workdir, name="curve", config=config)
  with run if run is not None else contextlib.nullcontext():
    state, history = run_epochs(
      epoch_fn, state, epochs=s.epochs, run=run, checkpoint_every=s.checkpoint_every,
      progress=progress, desc="curve",
      callback=None if callback is None else
      lambda e, st, r: callback(e, join_curve(ends, st.interior), r))
  return join_curve(ends, state.interior), history
