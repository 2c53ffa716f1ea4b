"""Fast Geometric Ensembling, SWA and ensemble metrics (Garipov et al. 2018; Izmailov et al. 2018).

FGE starts from a trained model and runs SGD with a cyclic learning rate; within a cycle of c
epochs (N iterations per epoch), at iteration i of epoch e,

    s = ((e mod c) + i / N) / c,
    lr = lr_1 (1 - 2 s) + lr_2 2 s        for s < 1/2,
    lr = lr_1 (2 s - 1) + lr_2 (2 - 2 s)  otherwise,

so the rate falls linearly from lr_1 to lr_2 in the first half of the cycle and climbs back. A
snapshot is taken at the end of the epoch where ``(e mod c) + 1 = c / 2``, i.e. where lr = lr_2.
The ensemble predicts the mean of the members' softmax probabilities (then argmax). SWA averages
the snapshots' weights instead (recompute BatchNorm statistics for the average with
`adapters.batchnorm.recompute_batch_stats`).

The training loop is small and functional: Optax SGD (momentum, weight decay added to the
gradient as in PyTorch), one `lax.scan` per epoch over device-resident data, shuffling and keys
derived from (seed, epoch, step) only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape_jax.adapters.evaluation import (
  inference_forward,
  named_splits,
  prepare_inputs,
  use_onednn,
)
from landscape_jax.adapters.losses import Loss, check_loss
from landscape_jax.backends.cpu.onednn_autodiff import min_flops_for, with_onednn_derivatives
from landscape_jax.core import fileio
from landscape_jax.core import identity as identity_lib
from landscape_jax.core.splits import device_split
from landscape_jax.methods import checkpoints
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
from landscape_jax.methods.schedules import cyclic_schedule, make_optimizer
from landscape_jax.methods.training import TrainState

__all__ = [
  "evaluate_ensemble",
  "fast_geometric_ensemble",
  "FGESettings",
  "fge_snapshot_epochs",
  "stack_members",
  "swa_average",
  "train_sgd",
]

PyTree = Any


# ----------------------------------------------------------------------------- schedules


def fge_snapshot_epochs(epochs: int, cycle_epochs: int) -> list[int]:
  """0-based epochs after which FGE takes a snapshot: ``(e mod c) + 1 == c / 2`` (lr = lr_2).

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  return [e for e in range(epochs) if (e % cycle_epochs) + 1 == cycle_epochs // 2]


# ----------------------------------------------------------------------------- training


def train_sgd(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, data, *,
              settings: TrainSettings, optimizer: optax.GradientTransformation | None = None,
              snapshot_epochs: Sequence[int] = (), workdir: str | None = None,
              progress: bool = True, desc: str = "train", callback: Callable | None = None,
              identity: str | None = None, cpu_convolutions: str = "auto",
              ) -> tuple[PyTree, list[PyTree], list[dict]]:
  """Minibatch training of `params` with Optax, one `lax.scan` per epoch (`loop.run_epochs`).

  Each step is ``g = grad loss_fn(w, batch); u, s = optimizer.update(g, s, w); w <- w + u``.

  Args:
    loss_fn: ``loss_fn(params, (inputs, targets)) -> scalar`` (e.g. `make_loss_fn` with any
      `Loss`; training mode for BatchNorm).
    params: initial parameters.
    data: the training split, kept on the device: an ``(inputs, targets)`` pair of pytrees with
      a leading example axis, or a `Dataset` (its uint8 images and labels).
    settings: the `loop.TrainSettings` (epochs, batch size, learning rate, momentum, weight
      decay, seed, augmentation, checkpoint cadence).
    optimizer: any Optax `GradientTransformation`; default `schedules.make_optimizer` with the
      settings' learning rate, momentum and weight decay: ``optax.chain(add_decayed_weights(wd),
      sgd(lr, momentum))``, PyTorch's SGD with weight decay as an L2 gradient term.
    snapshot_epochs: 0-based epochs after which a copy of the parameters is kept.
    workdir: if given, a `loop.RunDir` (``sgd_config.json``, ``sgd_ckpt/``,
      ``sgd_history.json``) checkpoints the state every ``settings.checkpoint_every`` epochs
      (and after the last) and every snapshot as ``sgd_snapshots/<epoch>``; a rerun resumes
      from the last checkpoint and returns what an uninterrupted run returns. The configuration
      records the hyperparameters and exact identities: the sha256 digest
      (`identity.tree_digest`) of the initial `params` and of the data, the traced code of the
      optimiser and `identity.callable_identity` of `loss_fn`; a rerun that differs in any of
      them (e.g. permuted initial parameters, other data or BatchNorm statistics) raises
      `store.StoreMismatchError` listing what differs.
    progress: a progress bar over epochs, labelled `desc`.
    callback: ``callback(epoch, params, record)`` after every epoch (after its checkpoint).
    identity: with `workdir`, a name you guarantee identifies `loss_fn` where its content cannot
      be inspected (`identity.callable_identity` raises `IdentityError` without it).
    cpu_convolutions: who computes the convolutions and their derivatives on the CPU:
      ``"auto"`` (default: oneDNN where available, for convolutions of at least
      `onednn_autodiff.AUTO_MIN_FLOPS`), ``"onednn"`` or ``"xla"``, as in `training.train_step`
      and `curve_training.train_curve`; both exact float32 (the sums' order differs). Not part
      of the recorded configuration: a resumed run may change it.

  Returns:
    ``(params, snapshots, history)`` with one ``{"epoch", "loss"}`` per epoch.

  Raises:
    FloatingPointError: the training loss became NaN or infinite.
  """
  s = settings
  if not isinstance(s, TrainSettings):
    raise TypeError(f"settings must be a TrainSettings, got {type(s).__name__}.")
  inputs, targets, n = as_training_data(data)
  steps_per_epoch = n // s.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {s.batch_size} is larger than the split ({n} examples).")
  opt = optimizer if optimizer is not None else make_optimizer(
    learning_rate=s.learning_rate, momentum=s.momentum, weight_decay=s.weight_decay)
  recorded_loss_fn = None if workdir is None else loss_fn_identity(
    loss_fn, identity, params=params, batch=batch_shapes((inputs, targets), s.batch_size))
  loss_fn = loss_fn if isinstance(loss_fn, jax.tree_util.Partial) else jax.tree_util.Partial(
    loss_fn)
  min_flops = min_flops_for(cpu_convolutions)  # checks the option before any compilation

  def step_fn(lf, st, batch, key):
    del key
    if min_flops is not None:  # convolutions and their derivatives: oneDNN
      lf = with_onednn_derivatives(lf, min_flops=min_flops)
    loss, grads = jax.value_and_grad(lf)(st.params, batch)
    updates, opt_state = opt.update(grads, st.opt_state, st.params)
    return st._replace(step=st.step + 1, params=optax.apply_updates(st.params, updates),
                       opt_state=opt_state), loss

  scan_epoch = make_epoch_fn(step_fn, augment=s.augment)
  state = TrainState(jnp.zeros((), jnp.int32), params, {}, opt.init(params))
  key = jax.random.key(s.seed)
  wanted = {int(e) for e in snapshot_epochs}
  snaps: dict[int, PyTree] = {}
  config = None
  if workdir is not None:
    total = max(s.epochs * steps_per_epoch - 1, 0)
    lr = s.learning_rate
    lr_config = (float(lr) if not callable(lr) else
                 [float(lr(t)) for t in sorted({0, total // 4, total // 2, 3 * total // 4, total})])
    config = {
      "epochs": s.epochs, "batch_size": s.batch_size, "learning_rate": lr_config,
      "momentum": s.momentum, "weight_decay": s.weight_decay, "seed": s.seed,
      "augment": s.augment, "custom_optimizer": optimizer is not None, "num_examples": n,
      "optimizer_code": optimizer_identity(opt, params), "versions": identity_lib.versions(),
      "snapshot_epochs": sorted(wanted), "init_sha256": identity_lib.tree_digest(params),
      "data_sha256": data_digest((inputs, targets)), "loss_fn": recorded_loss_fn}
  snap_dir = None if workdir is None else fileio.join(workdir, "sgd_snapshots")
  inputs, targets = jax.tree.map(jnp.asarray, (inputs, targets))

  def epoch_fn(st, epoch, tick):
    del tick
    idx = jnp.asarray(epoch_indices(n, s.batch_size, s.seed, epoch))
    st, loss = scan_epoch(loss_fn, st, inputs, targets, idx, key)
    return st, {"epoch": epoch, "loss": float(loss)}

  def on_epoch(epoch, st, record):
    if epoch in wanted:
      snaps[epoch] = st.params
      if snap_dir is not None:  # a rerun of this epoch writes the same snapshot again
        checkpoints.save(snap_dir, epoch, st.params, overwrite=True)

  run = None if workdir is None else RunDir(workdir, name="sgd", config=config)
  with run if run is not None else contextlib.nullcontext():
    state, history = run_epochs(
      epoch_fn, state, epochs=s.epochs, run=run, checkpoint_every=s.checkpoint_every,
      progress=progress, desc=desc, on_epoch=on_epoch,
      callback=None if callback is None else lambda e, st, r: callback(e, st.params, r))
    for e in sorted(e for e in wanted if e < s.epochs and e not in snaps):  # before the resume
      snaps[e] = checkpoints.restore(snap_dir, params, step=e)
  return state.params, [snaps[e] for e in sorted(snaps)], history


@settings_class
class FGESettings:
  """The hyperparameters of Fast Geometric Ensembling (frozen, checked on creation).

  Attributes:
    cycles: number of learning-rate cycles (one ensemble member each).
    cycle_epochs: epochs per cycle c (even, >= 2: the snapshot is taken at mid-cycle).
    lr1, lr2: the cycle's highest and lowest learning rates (`schedules.cyclic_schedule`).
    batch_size, momentum, weight_decay, seed, augment, checkpoint_every: as in
      `loop.TrainSettings`.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """

  cycles: int
  cycle_epochs: int = 4
  lr1: float = 0.05
  lr2: float = 1e-4
  batch_size: int = 128
  momentum: float = 0.9
  weight_decay: float = 5e-4
  seed: int = 0
  augment: bool = False
  checkpoint_every: int = 1

  def __post_init__(self):
    check_positive_int("cycles", self.cycles)
    if (isinstance(self.cycle_epochs, bool) or not isinstance(self.cycle_epochs, int)
        or self.cycle_epochs < 2 or self.cycle_epochs % 2):
      raise ValueError(f"cycle_epochs must be even and >= 2 (the snapshot is taken at "
                       f"mid-cycle), got {self.cycle_epochs!r}.")
    if not (float(self.lr1) > 0 and float(self.lr2) > 0):
      raise ValueError(f"lr1 and lr2 must be positive, got {self.lr1} and {self.lr2}.")
    self.sgd_settings(1)  # checks the shared fields

  def sgd_settings(self, steps_per_epoch: int) -> TrainSettings:
    """The `TrainSettings` of the SGD run: ``cycles * cycle_epochs`` epochs of the cyclic rate."""
    return TrainSettings(
      epochs=self.cycles * self.cycle_epochs, batch_size=self.batch_size,
      learning_rate=cyclic_schedule(lr1=self.lr1, lr2=self.lr2, cycle_epochs=self.cycle_epochs,
                                    steps_per_epoch=steps_per_epoch),
      momentum=self.momentum, weight_decay=self.weight_decay, seed=self.seed,
      augment=self.augment, checkpoint_every=self.checkpoint_every)


def fast_geometric_ensemble(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree,
                            data, *, settings: FGESettings, workdir: str | None = None,
                            progress: bool = True, callback: Callable | None = None,
                            identity: str | None = None, cpu_convolutions: str = "auto",
                            ) -> tuple[PyTree, list[dict]]:
  """Fast Geometric Ensembling (Garipov et al. 2018) from trained `params`.

  Runs ``cycles * cycle_epochs`` epochs of SGD (`train_sgd`) with `cyclic_schedule` and takes a
  snapshot at every cycle's lowest learning rate (`fge_snapshot_epochs`). `data` is an
  ``(inputs, targets)`` pair or a `Dataset`; `settings` an `FGESettings`. With `workdir` the
  run is checkpointed and resumable, keyed on the exact identity of `params`, the data and
  `loss_fn` (`identity` names a `loss_fn` whose content cannot be inspected); `callback` and
  `cpu_convolutions` (oneDNN's convolutions and derivatives on the CPU by default) as in
  `train_sgd`.

  Returns:
    ``(members, history)``: the snapshots stacked on a leading axis (``cycles`` members), and
    the per-epoch history.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  if not isinstance(settings, FGESettings):
    raise TypeError(f"settings must be an FGESettings, got {type(settings).__name__}.")
  *_, n = as_training_data(data)
  sgd = settings.sgd_settings(max(n // settings.batch_size, 1))
  _, snaps, history = train_sgd(
    loss_fn, params, data, settings=sgd,
    snapshot_epochs=fge_snapshot_epochs(sgd.epochs, settings.cycle_epochs), workdir=workdir,
    progress=progress, desc="fge", callback=callback, identity=identity,
    cpu_convolutions=cpu_convolutions)
  return stack_members(snaps), history


def stack_members(members: Sequence[PyTree]) -> PyTree:
  """Stacks member pytrees on a leading axis (the layout `evaluate_ensemble` takes)."""
  if not members:
    raise ValueError("No ensemble members to stack.")
  return jax.tree.map(lambda *xs: jnp.stack(xs), *members)


def swa_average(members: PyTree) -> PyTree:
  """Stochastic Weight Averaging: the mean of stacked snapshots over the leading axis.

  Recompute BatchNorm statistics for the result (`recompute_batch_stats`) before evaluating.

  References:
    Izmailov, Podoprikhin, Garipov, Vetrov and Wilson 2018, "Averaging Weights Leads to Wider
    Optima and Better Generalization".
  """
  return jax.tree.map(lambda x: jnp.mean(x, 0).astype(x.dtype), members)


# ----------------------------------------------------------------------------- evaluation


def evaluate_ensemble(model, members: PyTree, data, *, loss: Loss | None = None,
                      batch_stats: PyTree | None = None, batch_size: int = 256,
                      fold_batchnorm: bool = True, cpu_convolutions: str = "auto",
                      ) -> dict[str, np.ndarray]:
  """Ensemble of members = mean of their softmax probabilities, then argmax.

  For the cross-entropy losses the ensemble predicts ``p = (1/k) sum_j softmax(logits_j)`` (per
  token for `TOKEN_CROSS_ENTROPY`), scored by ``-log p[y]`` and ``argmax p = y``; for `MSE` it
  predicts the mean of the members' outputs. Every metric is exact over the split (masked sums,
  as `make_metric_fn`).

  Args:
    model: any model `make_metric_fn` takes (a linen module, an NNX or Equinox module, an
      `adapters.frameworks.Model`, a plain ``apply_fn(params, inputs)``), in inference mode.
    members: parameters stacked on a leading axis of size K (`stack_members`).
    data: the split to evaluate on: a `Dataset` or an ``(inputs, targets)`` pair.
    loss: the `Loss` (default `CROSS_ENTROPY`); it must define an ensemble.
    batch_stats: None (linen: no statistics; other models: the model's own state for every
      member), or per-member statistics / states stacked on a leading axis (recomputed for each
      member with `recompute_batch_stats`).
    batch_size: the largest number of examples per scanned batch.
    fold_batchnorm, cpu_convolutions: as in `make_metric_fn` (linen only: BatchNorm folded into
      the convolutions where that is exact; oneDNN's convolutions on the CPU, the members one
      after another).

  Returns:
    For every metric m of the loss (``loss`` and ``accuracy`` for the cross-entropies): ``m`` of
    the full ensemble (loss = mean of ``-log mean_k p_k[y]``), ``member_m`` (K,) of each member,
    and ``size_m`` (K,): the ensemble of the first k members for k = 1..K.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
  """
  loss = check_loss(loss)
  if loss.ensemble is None:
    raise ValueError("This loss defines no ensemble (Loss.ensemble is None); evaluate_ensemble "
                     "needs one (CROSS_ENTROPY, TOKEN_CROSS_ENTROPY and MSE have one).")
  if isinstance(data, Mapping):
    raise TypeError("evaluate_ensemble takes one split (a Dataset or an (inputs, targets) pair), "
                    "not a mapping of splits.")
  one = named_splits(data, loss)[""]
  split = device_split(one.inputs, one.targets, batch_size=batch_size)
  stacked = batch_stats is not None
  forward, state = _ensemble_forward(model, batch_stats, one.num_classes, bool(fold_batchnorm),
                                     use_onednn(cpu_convolutions))
  out = _jit_ensemble(forward, loss, stacked, members, state, split, one.norm)
  return {k: np.asarray(v) for k, v in out.items()}


def _ensemble_forward(model, batch_stats, num_classes, fold_batchnorm: bool, onednn: bool):
  """``(forward, state)``: one forward per linen configuration (cached, so that `_jit_ensemble`
  compiles once for it), or the `Model`'s; the state is the stacked `batch_stats` if given."""
  if isinstance(model, nn.Module):
    return _linen_ensemble_forward(model, num_classes, fold_batchnorm, onednn), batch_stats
  forward, state = inference_forward(model, num_classes=num_classes, onednn=onednn)
  return forward, state if batch_stats is None else batch_stats


@functools.lru_cache(maxsize=32)
def _linen_ensemble_forward(model: nn.Module, num_classes, fold_batchnorm: bool, onednn: bool):
  return inference_forward(model, num_classes=num_classes, fold_batchnorm=fold_batchnorm,
                           onednn=onednn)[0]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _jit_ensemble(forward, loss, stacked, members, state, split, norm):
  k = jax.tree.leaves(members)[0].shape[0]
  names = loss.metrics

  def masked_sums(outputs, y, m):
    """(len(names) [+ 1], K) masked sums of the per-member values (and weights)."""
    values, weights = jax.vmap(lambda o: loss.sums(o, y))(outputs)
    sums = [jnp.sum(values[n] * m, -1) for n in names]
    if loss.weighted:
      sums.append(jnp.sum(weights * m, -1))
    return sums

  def body(carry, batch):
    (x, y), m = batch
    x = prepare_inputs(x, norm)
    outputs = jax.vmap(forward, in_axes=(0, 0 if stacked else None, None))(
      members, state, x)                                              # (K, b, ...)
    sums = masked_sums(outputs, y, m) + masked_sums(loss.ensemble(outputs), y, m)
    return jax.tree.map(jnp.add, carry, sums), None

  n = len(names) + int(loss.weighted)
  zero = [jnp.zeros((k,), jnp.float32) for _ in range(2 * n)]
  sums, _ = jax.lax.scan(body, zero, (split.batches, split.mask))
  member, size = sums[:n], sums[n:]
  total_member = member[-1] if loss.weighted else jnp.sum(split.mask)
  total_size = size[-1] if loss.weighted else jnp.sum(split.mask)
  out = {}
  for i, name in enumerate(names):
    out[f"member_{name}"] = member[i] / total_member
    out[f"size_{name}"] = size[i] / total_size
    out[name] = out[f"size_{name}"][-1]
  return out
