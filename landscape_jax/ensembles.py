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
`landscape_jax.batchnorm.recompute_batch_stats`).

The training loop is small and functional: Optax SGD (momentum, weight decay added to the
gradient as in PyTorch), one `lax.scan` per epoch over device-resident data, shuffling and keys
derived from (seed, epoch, step) only.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape_jax import checkpoints
from landscape_jax import identity as identity_lib
from landscape_jax.curves import (
  EpochCheckpoints,
  _data_digest,
  _epoch_indices,
  _loss_fn_identity,
  _progress,
  make_epoch_fn,
)
from landscape_jax.data import Dataset
from landscape_jax.evaluation import (
  _apply_checked,
  _use_onednn,
  cross_entropy,
  device_split,
  normalize_images,
)

PyTree = Any


# ----------------------------------------------------------------------------- schedules


def cyclic_lr(step, *, lr1: float = 0.05, lr2: float = 1e-4, cycle_epochs: int = 4,
              steps_per_epoch: int) -> jax.Array:
  """The FGE learning rate at global iteration `step` (formula in the module docstring)."""
  step = jnp.asarray(step)
  epoch = step // steps_per_epoch
  i = step % steps_per_epoch
  s = ((epoch % cycle_epochs).astype(jnp.float32) + i.astype(jnp.float32) / steps_per_epoch) \
    / cycle_epochs
  down = lr1 * (1.0 - 2.0 * s) + lr2 * 2.0 * s
  up = lr1 * (2.0 * s - 1.0) + lr2 * (2.0 - 2.0 * s)
  return jnp.where(s < 0.5, down, up)


def cyclic_schedule(*, lr1: float = 0.05, lr2: float = 1e-4, cycle_epochs: int = 4,
                    steps_per_epoch: int) -> optax.Schedule:
  """The FGE cyclic learning rate as an Optax schedule (Garipov et al. 2018, Section 4)."""
  if cycle_epochs < 2 or cycle_epochs % 2:
    raise ValueError(f"cycle_epochs must be even and >= 2 (the snapshot is taken at mid-cycle), "
                     f"got {cycle_epochs}.")
  if steps_per_epoch <= 0:
    raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}.")
  return functools.partial(cyclic_lr, lr1=lr1, lr2=lr2, cycle_epochs=cycle_epochs,
                           steps_per_epoch=steps_per_epoch)


def fge_snapshot_epochs(epochs: int, cycle_epochs: int) -> list[int]:
  """0-based epochs after which FGE takes a snapshot: ``(e mod c) + 1 == c / 2`` (lr = lr_2)."""
  return [e for e in range(epochs) if (e % cycle_epochs) + 1 == cycle_epochs // 2]


# ----------------------------------------------------------------------------- training


class TrainState(NamedTuple):
  """Plain SGD state: step counter, parameters, optimiser state."""

  step: jax.Array
  params: PyTree
  opt_state: optax.OptState


def sgd(schedule: optax.ScalarOrSchedule, *, momentum: float = 0.9,
        weight_decay: float = 0.0) -> optax.GradientTransformation:
  """PyTorch-style SGD: ``g + wd w`` then momentum (the optimiser of the reference code)."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum))


def train_sgd(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, data: Dataset, *,
              epochs: int, batch_size: int = 128,
              optimizer: optax.GradientTransformation | None = None,
              lr: optax.ScalarOrSchedule = 0.05, momentum: float = 0.9,
              weight_decay: float = 5e-4, seed: int = 0, augment_images: bool = False,
              snapshot_epochs: Sequence[int] = (), progress: bool = True, desc: str = "train",
              workdir: str | None = None, checkpoint_every: int = 1,
              callback: Callable | None = None, identity: str | None = None,
              ) -> tuple[PyTree, list[PyTree], list[dict]]:
  """Minibatch training of `params` with Optax (default `sgd`), one `lax.scan` per epoch.

  Args:
    loss_fn: ``loss_fn(params, (uint8 images, labels)) -> scalar`` (training mode for BatchNorm).
    params: initial parameters.
    data: training split (kept on the device).
    epochs, batch_size: length of training; the last partial batch of an epoch is dropped.
    optimizer: any Optax optimiser; default ``sgd(lr, momentum=, weight_decay=)``.
    seed: shuffling (numpy, per epoch) and per-step keys depend only on (seed, epoch, step).
    augment_images: random crop + flip.
    snapshot_epochs: 0-based epochs after which a copy of the parameters is kept.
    workdir: if given, the state is checkpointed every `checkpoint_every` epochs (and after the
      last) with `curves.EpochCheckpoints` (``sgd_config.json``, ``sgd_ckpt/``,
      ``sgd_history.json``) and every snapshot as ``sgd_snapshots/<epoch>``; a rerun resumes
      from the last checkpoint and returns what an uninterrupted run returns. The configuration
      records the hyperparameters and exact identities: the sha256 digest
      (`identity.tree_digest`) of the initial `params` and of the data (images and labels), and
      `identity.callable_identity` of `loss_fn`; a rerun that differs in any of them (e.g.
      permuted initial parameters, other data or BatchNorm statistics) raises
      `store.StoreMismatchError` listing what differs.
    callback: ``callback(epoch, params, record)`` after every epoch (after its checkpoint).
    identity: with `workdir`, a name you guarantee identifies `loss_fn` where its content cannot
      be inspected (`identity.callable_identity` raises `IdentityError` without it).

  Returns:
    ``(params, snapshots, history)`` with one ``{"epoch", "loss"}`` per epoch.
  """
  if checkpoint_every <= 0:
    raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}.")
  steps_per_epoch = len(data) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {batch_size} is larger than the split ({len(data)} examples).")
  opt = optimizer if optimizer is not None else sgd(lr, momentum=momentum,
                                                    weight_decay=weight_decay)
  recorded_loss_fn = None if workdir is None else _loss_fn_identity(loss_fn, identity)
  loss_fn = loss_fn if isinstance(loss_fn, jax.tree_util.Partial) else jax.tree_util.Partial(
    loss_fn)

  def step_fn(lf, st, batch, key):
    del key
    loss, grads = jax.value_and_grad(lf)(st.params, batch)
    updates, opt_state = opt.update(grads, st.opt_state, st.params)
    return TrainState(st.step + 1, optax.apply_updates(st.params, updates), opt_state), loss

  epoch_fn = make_epoch_fn(step_fn, augment_images=augment_images)
  state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
  images, labels = jnp.asarray(data.images), jnp.asarray(data.labels)
  key = jax.random.key(seed)
  snaps, history = [], []
  wanted = set(snapshot_epochs)
  first_epoch, saver = 0, None
  if workdir is not None:
    total = max(epochs * steps_per_epoch - 1, 0)
    lr_config = (float(lr) if not callable(lr) else
                 [float(lr(s)) for s in sorted({0, total // 4, total // 2, 3 * total // 4, total})])
    saver = EpochCheckpoints(workdir, "sgd", {
      "epochs": epochs, "batch_size": batch_size, "lr": lr_config, "momentum": momentum,
      "weight_decay": weight_decay, "seed": seed, "augment": augment_images,
      "custom_optimizer": optimizer is not None, "num_examples": len(data),
      "snapshot_epochs": sorted(int(e) for e in wanted),
      "init_sha256": identity_lib.tree_digest(params), "data_sha256": _data_digest(data),
      "loss_fn": recorded_loss_fn})
    state, first_epoch, history = saver.restore(state)
    snap_dir = os.path.join(workdir, "sgd_snapshots")
    for e in sorted(e for e in wanted if e < first_epoch):
      snaps.append(checkpoints.restore(snap_dir, params, step=e))
  bar = _progress(range(first_epoch, epochs), progress, desc, initial=first_epoch, total=epochs)
  for epoch in bar:
    idx = jnp.asarray(_epoch_indices(len(data), batch_size, seed, epoch))
    state, loss = epoch_fn(loss_fn, state, images, labels, idx, key)
    loss = float(loss)
    if not math.isfinite(loss):
      raise FloatingPointError(f"Training diverged at epoch {epoch} (loss {loss}); lower lr.")
    record = {"epoch": epoch, "loss": loss}
    history.append(record)
    if epoch in wanted:
      snaps.append(state.params)
      if saver is not None:  # a rerun of this epoch writes the same snapshot again
        checkpoints.save(snap_dir, epoch, state.params, overwrite=True)
    if saver is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
      saver.save(epoch + 1, state, history)
    if callback is not None:
      callback(epoch, state.params, record)
  if saver is not None:
    saver.close()
  return state.params, snaps, history


def fast_geometric_ensemble(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree,
                            data: Dataset, *, cycles: int, cycle_epochs: int = 4,
                            lr1: float = 0.05, lr2: float = 1e-4, batch_size: int = 128,
                            momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
                            augment_images: bool = False, progress: bool = True,
                            workdir: str | None = None, checkpoint_every: int = 1,
                            identity: str | None = None) -> tuple[PyTree, list[dict]]:
  """Fast Geometric Ensembling (Garipov et al. 2018) from trained `params`.

  Runs ``cycles * cycle_epochs`` epochs of SGD with `cyclic_schedule` and takes a snapshot at
  every cycle's lowest learning rate (`fge_snapshot_epochs`). With `workdir` the run is
  checkpointed and resumable, keyed on the exact identity of `params`, the data and `loss_fn`
  (`train_sgd`; `identity` names a `loss_fn` whose content cannot be inspected).

  Returns:
    ``(members, history)``: the snapshots stacked on a leading axis (``cycles`` members), and
    the per-epoch history.
  """
  if cycles <= 0:
    raise ValueError(f"cycles must be positive, got {cycles}.")
  steps = len(data) // batch_size
  schedule = cyclic_schedule(lr1=lr1, lr2=lr2, cycle_epochs=cycle_epochs, steps_per_epoch=steps)
  epochs = cycles * cycle_epochs
  _, snaps, history = train_sgd(
    loss_fn, params, data, epochs=epochs, batch_size=batch_size,
    lr=schedule, momentum=momentum, weight_decay=weight_decay, seed=seed,
    augment_images=augment_images, snapshot_epochs=fge_snapshot_epochs(epochs, cycle_epochs),
    progress=progress, desc="fge", workdir=workdir, checkpoint_every=checkpoint_every,
    identity=identity)
  return stack_members(snaps), history


def stack_members(members: Sequence[PyTree]) -> PyTree:
  """Stacks member pytrees on a leading axis (the layout `evaluate_ensemble` takes)."""
  if not members:
    raise ValueError("No ensemble members to stack.")
  return jax.tree.map(lambda *xs: jnp.stack(xs), *members)


def swa_average(members: PyTree) -> PyTree:
  """Stochastic Weight Averaging: the mean of stacked snapshots over the leading axis.

  Recompute BatchNorm statistics for the result (`recompute_batch_stats`) before evaluating.
  """
  return jax.tree.map(lambda x: jnp.mean(x, 0).astype(x.dtype), members)


# ----------------------------------------------------------------------------- evaluation


def evaluate_ensemble(model: nn.Module, members: PyTree, data: Dataset, *,
                      batch_stats: PyTree | None = None, batch_size: int = 256,
                      fold_batchnorm: bool = True, cpu_convolutions: str = "auto",
                      ) -> dict[str, np.ndarray]:
  """Ensemble of members = mean of their softmax probabilities, then argmax.

  Args:
    model: a linen model (inference mode).
    members: parameters stacked on a leading axis of size K (`stack_members`).
    data: the split to evaluate on.
    batch_stats: None, or per-member statistics stacked on a leading axis (recomputed for each
      member with `recompute_batch_stats`).
    batch_size: the largest number of examples per scanned batch.
    fold_batchnorm, cpu_convolutions: as in `make_metric_fn` (BatchNorm folded into the
      convolutions; oneDNN's convolutions on the CPU, the members one after another).

  Returns:
    ``loss`` / ``accuracy`` of the full ensemble (loss = mean of ``-log mean_k p_k[y]``),
    ``member_loss`` / ``member_accuracy`` (K,), and ``size_loss`` / ``size_accuracy`` (K,): the
    ensemble of the first k members for k = 1..K.
  """
  split = device_split(data.images, data.labels, batch_size=batch_size)
  apply_fn = _ensemble_apply(model, data.num_classes, bool(fold_batchnorm),
                             _use_onednn(cpu_convolutions))
  out = _jit_ensemble(apply_fn, members, batch_stats, split,
                      jnp.asarray(data.mean), jnp.asarray(data.std))
  return {k: np.asarray(v) for k, v in out.items()}


@functools.lru_cache(maxsize=32)
def _ensemble_apply(model: nn.Module, num_classes: int, fold_batchnorm: bool, onednn: bool):
  """One apply function per configuration, so that `_jit_ensemble` compiles once for it."""
  return functools.partial(_apply_checked, model, num_classes, fold_batchnorm=fold_batchnorm,
                           onednn=onednn)


@functools.partial(jax.jit, static_argnums=0)
def _jit_ensemble(apply_fn, members, batch_stats, split, mean, std):
  k = jax.tree.leaves(members)[0].shape[0]
  sizes = jnp.arange(1, k + 1, dtype=jnp.float32)

  def member_logits(p, bs, x):
    variables = {"params": p} if bs is None else {"params": p, "batch_stats": bs}
    return apply_fn(variables, x)

  def body(carry, batch):
    x, y, m = batch
    x = normalize_images(x, mean, std)
    logits = jax.vmap(member_logits, in_axes=(0, 0 if batch_stats is not None else None, None))(
      members, batch_stats, x).astype(jnp.float32)                    # (K, b, C)
    logp = jax.nn.log_softmax(logits, -1)
    mem_loss = jax.vmap(cross_entropy, in_axes=(0, None))(logits, y)   # (K, b)
    mem_acc = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    # log of the mean probability of the first k members, k = 1..K
    cum = jax.lax.associative_scan(jnp.logaddexp, logp, axis=0) - jnp.log(sizes)[:, None, None]
    size_loss = -jnp.take_along_axis(cum, y[None, :, None], -1)[..., 0]
    size_acc = (jnp.argmax(cum, -1) == y).astype(jnp.float32)
    sums = [jnp.sum(v * m, -1) for v in (mem_loss, mem_acc, size_loss, size_acc)]
    return jax.tree.map(jnp.add, carry, sums), None

  zero = [jnp.zeros((k,), jnp.float32) for _ in range(4)]
  sums, _ = jax.lax.scan(body, zero, split)
  total = jnp.sum(split.mask)
  mem_loss, mem_acc, size_loss, size_acc = (s / total for s in sums)
  return {"loss": size_loss[-1], "accuracy": size_acc[-1], "member_loss": mem_loss,
          "member_accuracy": mem_acc, "size_loss": size_loss, "size_accuracy": size_acc}


def default_config(**overrides):
  """`ml_collections.ConfigDict` read by experiments/fge.py (small digits defaults).

  Fields: ``dataset``, ``data_dir``, ``model``, ``model_kwargs``; ``start`` (an
  experiments/train.py workdir to start FGE from; empty: train the first model here);
  ``budget_epochs`` (one training budget), ``lr``, ``weight_decay``, ``batch_size``, ``augment``
  (crop + flip), ``seeds`` and ``num_independent`` (the independently trained ensemble compared
  at equal budget); FGE (Garipov et al. 2018): ``cycles`` of ``cycle_epochs`` epochs with the
  cyclic rate between ``lr1`` and ``lr2``; ``eval_batch_size``, ``bn_batch_size``. Unknown
  override names are an error.
  """
  import ml_collections

  from landscape_jax.training import override_config

  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.data_dir = None
  c.model = "mlp"
  c.model_kwargs = {"features": (32,)}
  c.start = ""
  c.budget_epochs = 20
  c.lr = 0.05
  c.weight_decay = 5e-4
  c.batch_size = 64
  c.augment = False
  c.seeds = (0, 1, 2, 3)
  c.num_independent = 3
  c.cycles = 6
  c.cycle_epochs = 4
  c.lr1 = 0.2
  c.lr2 = 1e-3
  c.eval_batch_size = 512
  c.bn_batch_size = 128
  return override_config(c, overrides, what="FGE config")
