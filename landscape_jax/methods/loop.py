"""The one resumable epoch loop of the trainers, its run directory and its settings.

Every trainer of the library (`training.train`, `curve_training.train_curve`,
`ensembles.train_sgd` and `ensembles.fast_geometric_ensemble` on top of it) is a step function
plus settings handed to `run_epochs`, which owns everything around the steps:

* the **run directory** (`RunDir`): one writer at a time (`fileio.exclusive`), the configuration
  check (a rerun with other hyperparameters, data, initial parameters, or traced code of the loss
  and optimiser is refused, the differences named), the restore from the latest checkpoint, the
  periodic checkpoint (orbax, with sha256 checksums) and the per-epoch history;
* the progress bar, the divergence check (a non-finite loss stops the run with
  `FloatingPointError`; the last good checkpoint is kept) and a per-epoch callback.

The data are any ``(inputs, targets)`` pair of pytrees with a leading example axis (what the
metric builders `make_loss_fn` / `make_metric_fn` take), or an image `Dataset` (its uint8
``(images, labels)``). An epoch is the seeded permutation ``default_rng([seed, epoch])`` of the
examples in batches of ``batch_size`` (the last partial batch dropped), and the key of step s is
``fold_in(key, s)``, so a run resumed from a checkpoint repeats the uninterrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from landscape_jax.adapters import data as data_lib
from landscape_jax.adapters.data import Dataset
from landscape_jax.backends.cpu.convolutions import canonicalize_convolutions
from landscape_jax.core import fileio, store
from landscape_jax.core import progress as progress_lib
from landscape_jax.core.splits import num_examples
from landscape_jax.methods import checkpoints
from landscape_jax.methods.rundir import (
  CHECKPOINT_DIR,
  append_metrics,
  check_config,
  check_keys,
  read_metrics,
  rewrite_metrics,
  run_lock,
)

__all__ = [
  "as_training_data",
  "CONFIG_REMEDY",
  "epoch_indices",
  "make_epoch_fn",
  "RunDir",
  "run_epochs",
  "settings_class",
  "TrainSettings",
]

PyTree = Any
log = logging.getLogger(__name__)

CONFIG_REMEDY = ("To start fresh, use another workdir or move this one away; to resume, rerun "
                 "with exactly the inputs that computed it.")


# ----------------------------------------------------------------------------- settings


def settings_class(cls: type) -> type:
  """Makes `cls` a frozen, keyword-only dataclass whose constructor refuses an unknown field
  with the closest known one (`rundir.check_keys`: ``learning_rte`` would otherwise be a bare
  TypeError); its ``__post_init__`` checks the values. ``settings.replace(**changes)`` is a
  changed copy, checked again."""
  cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
  init = cls.__init__
  names = tuple(f.name for f in dataclasses.fields(cls))

  @functools.wraps(init)
  def __init__(self, *args, **kwargs):
    if args:
      raise TypeError(f"{cls.__name__} takes keyword arguments only ({', '.join(names)}).")
    check_keys(kwargs, names, what=cls.__name__)
    init(self, **kwargs)

  def replace(self, **changes):
    check_keys(changes, names, what=cls.__name__)
    return dataclasses.replace(self, **changes)

  cls.__init__ = __init__
  cls.replace = replace
  return cls


def check_positive_int(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")


@settings_class
class TrainSettings:
  """The hyperparameters of a minibatch training run (frozen, checked on creation).

  Attributes:
    epochs: number of passes over the training split.
    batch_size: examples per step; the last partial batch of an epoch is dropped.
    learning_rate: a float or an optax schedule of the step (used by the default optimiser).
    momentum: SGD momentum of the default optimiser (0 for none).
    weight_decay: L2 coefficient ``wd``: the default optimiser adds ``wd * w`` to the gradient
      (PyTorch's SGD); curve training adds ``0.5 wd ||phi(t)||^2`` to the objective.
    seed: the shuffling (``numpy.random.default_rng([seed, epoch])``) and the per-step keys
      (``fold_in(key(seed), step)``) depend only on (seed, epoch, step).
    augment: random crop (4 zero pixels) and horizontal flip of uint8 NHWC images.
    checkpoint_every: with a workdir, save every this many epochs (and after the last one).

  Raises:
    ValueError: an unknown field (the closest known one named), a non-positive count, a negative
      weight decay or momentum outside [0, 1).
  """

  epochs: int
  batch_size: int = 128
  learning_rate: optax.ScalarOrSchedule = 0.05
  momentum: float = 0.9
  weight_decay: float = 5e-4
  seed: int = 0
  augment: bool = False
  checkpoint_every: int = 1

  def __post_init__(self):
    for name in ("epochs", "batch_size", "checkpoint_every"):
      check_positive_int(name, getattr(self, name))
    if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
      raise ValueError(f"seed must be an integer, got {self.seed!r}.")
    if not (0.0 <= float(self.momentum) < 1.0):
      raise ValueError(f"momentum must be in [0, 1), got {self.momentum}.")
    if float(self.weight_decay) < 0:
      raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}.")
    if not callable(self.learning_rate) and not float(self.learning_rate) > 0:
      raise ValueError(f"learning_rate must be positive (or an optax schedule), got "
                       f"{self.learning_rate}.")


# ----------------------------------------------------------------------------- data


def as_training_data(data, *, name: str = "data") -> tuple[PyTree, PyTree, int]:
  """``(inputs, targets, n)`` of a `Dataset` (its uint8 images and labels) or of an
  ``(inputs, targets)`` pair of pytrees sharing a leading example axis of size n."""
  if isinstance(data, Dataset):
    return data.images, data.labels, len(data)
  if isinstance(data, Mapping) or not (isinstance(data, tuple | list) and len(data) == 2):
    raise TypeError(f"{name} must be a Dataset or an (inputs, targets) pair of arrays (or pytrees "
                    f"of arrays) with a leading example axis, got {type(data).__name__}.")
  inputs, targets = data
  return inputs, targets, num_examples(inputs, targets, name=name)


def epoch_indices(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """(steps, batch_size) shuffled indices of one epoch; a function of (seed, epoch) only."""
  if batch_size > n:
    raise ValueError(f"batch_size {batch_size} is larger than the split ({n} examples).")
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  steps = n // batch_size
  return perm[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def make_epoch_fn(step_fn: Callable, *, augment: bool = False) -> Callable:
  """Jitted ``epoch(fn_args, state, inputs, targets, indices, key) -> (state, mean loss)``.

  Walks one epoch with `lax.scan` on device-resident data (any pytrees with a leading example
  axis); batch i takes rows ``indices[i]`` of every leaf and the key ``fold_in(key, state.step)``
  (split for the augmentation), so results depend only on (seed, epoch, step) and a resumed run
  repeats an uninterrupted one exactly. `step_fn` is
  ``step_fn(fn_args, state, batch, key) -> (state, loss)``; on the CPU its convolutions are put
  in the canonical layout (`convolutions.canonicalize_convolutions`: XLA:CPU's backward
  convolutions inside a scan are otherwise several times slower). `augment` crops and flips
  uint8 NHWC image inputs (`adapters.data.augment`).
  """
  step_fn = canonicalize_convolutions(step_fn)

  @jax.jit
  def epoch(fn_args, state, inputs, targets, indices, key):
    def body(st, idx):
      k = jax.random.fold_in(key, st.step)
      k_step, k_aug = jax.random.split(k)
      x = jax.tree.map(lambda a: a[idx], inputs)
      if augment:
        x = data_lib.augment(k_aug, x)
      st, loss = step_fn(fn_args, st, (x, jax.tree.map(lambda a: a[idx], targets)), k_step)
      return st, loss
    state, losses = jax.lax.scan(body, state, indices)
    return state, jnp.mean(losses)

  return epoch


# ----------------------------------------------------------------------------- run directory


class RunDir:
  """The directory of one resumable training run: lock, configuration, checkpoints, history.

  Opening it takes the directory's write lock (``<workdir>/.<name>.lock``, `fileio.exclusive`
  on process 0: a second writer gets `fileio.BusyError` at once) and checks `config` against
  the recorded one (`store.check_or_write_config`: a rerun with other hyperparameters or
  inputs raises `store.StoreMismatchError` naming every difference). Two layouts:

  * ``layout="epochs"`` (curve training, SGD / FGE): ``<name>_config.json``,
    ``<name>_ckpt/<epochs done>/`` (an orbax manager keeping the latest two) and
    ``<name>_history.json`` (the records, written before each checkpoint); records carry a
    0-based ``epoch``.
  * ``layout="trajectory"`` (`training.train`, name ``"train"``): ``config.json`` (settings
    in `rundir.RESUME_FREE` may change on resume), ``metrics.jsonl`` (one record per epoch,
    1-based ``epoch``) and ``checkpoints/<optimizer step>/`` (`checkpoints.save`, every one
    kept from the initial point on: the run's trajectory for `checkpoints.load_trajectory`).

  Every checkpoint carries the sha256 of its leaves, verified on restore
  (`checkpoints.CheckpointCorruptError` names a damaged leaf). Use as a context manager or call
  `close` (releases the lock).
  """

  def __init__(self, workdir: str, *, name: str, config: dict, layout: str = "epochs",
               steps_per_epoch: int = 1):
    if layout not in ("epochs", "trajectory"):
      raise ValueError(f"layout must be 'epochs' or 'trajectory', got {layout!r}.")
    self.workdir, self.name, self.layout = workdir, name, layout
    self.steps_per_epoch = int(steps_per_epoch)
    self.manager = None
    fileio.makedirs(workdir)
    self._lock = contextlib.ExitStack()
    self._lock.enter_context(run_lock(workdir, name=f".{name}.lock", what=f"{name} training runs"))
    try:
      if layout == "epochs":
        store.check_or_write_config(fileio.join(workdir, f"{name}_config.json"), config,
                                    what=f"the checkpoints of a {name} training run",
                                    remedy=CONFIG_REMEDY)
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
          checkpoints.orbax_path(fileio.join(workdir, f"{name}_ckpt")),
          options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
      else:
        self.ckpt_dir = fileio.join(workdir, CHECKPOINT_DIR)
        self._resume_step = checkpoints.latest_step(self.ckpt_dir)
        check_config(workdir, config, resuming=self._resume_step is not None)
    except BaseException:
      self._lock.close()
      raise

  def __enter__(self) -> RunDir:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def restore(self, state: PyTree) -> tuple[PyTree, int, list[dict]]:
    """``(state, epochs done, history)`` of the latest checkpoint (`state` unchanged if none).

    A fresh trajectory run saves `state` as step 0 (the initial point) and empties its metrics.
    """
    if self.layout == "trajectory":
      return self._restore_trajectory(state)
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
    checkpoints.verify_leaf_digests(step_dir, restored["state"])
    # orbax returns NamedTuples (optax states too) as lists; the leaf order is the same
    state = jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(restored["state"]))
    history = []
    hist_path = self._history_path()
    if fileio.as_path(hist_path).exists():
      saved = store.read_json(hist_path, remedy="Move it away to resume without the records of "
                              "the finished epochs (the checkpoints are intact).")
      history = [h for h in saved if h["epoch"] < last]
    return state, last, history

  def _restore_trajectory(self, state):
    step = self._resume_step
    if step is None:
      rewrite_metrics(self.workdir, [])
      checkpoints.save(self.ckpt_dir, 0, state)
      return state, 0, []
    if step % self.steps_per_epoch:
      raise ValueError(
        f"Latest checkpoint step {step} in {self.ckpt_dir} is not a whole number of epochs of "
        f"{self.steps_per_epoch} steps: it comes from another batch size or dataset. Use a fresh "
        "workdir.")
    state = checkpoints.restore(self.ckpt_dir, state, step=step)
    done = step // self.steps_per_epoch
    history = [r for r in read_metrics(self.workdir) if r.get("epoch", 0) <= done]
    rewrite_metrics(self.workdir, history)
    return state, done, history

  def record(self, record: dict) -> None:
    """Keeps one epoch's record (a trajectory run appends it to ``metrics.jsonl`` at once)."""
    if self.layout == "trajectory":
      append_metrics(self.workdir, record)

  def save(self, epochs_done: int, state: PyTree, history: list[dict]) -> None:
    """Checkpoints `state` after `epochs_done` epochs: the history first (epochs layout), then
    the state (atomic), then its sha256 file."""
    if self.layout == "trajectory":
      checkpoints.save(self.ckpt_dir, epochs_done * self.steps_per_epoch, state)
      return
    fileio.atomic_write_json(self._history_path(), history, indent=None)
    self.manager.save(epochs_done, args=self._ocp.args.StandardSave({"state": state}))
    self.manager.wait_until_finished()
    checkpoints.write_leaf_digests(self._step_dir(epochs_done), state)

  def close(self) -> None:
    """Closes the checkpoint manager and releases the run directory's write lock."""
    try:
      if self.manager is not None:
        self.manager.close()
    finally:
      self._lock.close()

  def _step_dir(self, epochs_done: int) -> str:
    return fileio.join(self.workdir, f"{self.name}_ckpt", str(epochs_done))

  def _history_path(self) -> str:
    return fileio.join(self.workdir, f"{self.name}_history.json")


# ----------------------------------------------------------------------------- the loop


def _say(progress: bool, message: str) -> None:
  if progress:
    tqdm.tqdm.write(message)
  else:
    log.info(message)


def run_epochs(epoch_fn: Callable, state: PyTree, *, epochs: int, run: RunDir | None = None,
               checkpoint_every: int = 1, progress: bool = True, desc: str = "train",
               steps_per_epoch: int | None = None, loss_key: str = "loss",
               on_epoch: Callable | None = None, callback: Callable | None = None,
               ) -> tuple[PyTree, list[dict]]:
  """Runs ``epoch_fn`` for the epochs not done yet, resuming from `run`'s latest checkpoint.

  For each 0-based epoch e from the restored one: ``state, record = epoch_fn(state, e, tick)``
  (``tick(**postfix)`` advances a step-level bar by one step when `steps_per_epoch` is given);
  a non-finite ``record[loss_key]`` raises `FloatingPointError` (nothing of that epoch is
  saved); the record joins the history (`RunDir.record`); ``on_epoch(e, state, record)`` runs
  (the trainer's own files, e.g. FGE snapshots); every `checkpoint_every` epochs and after the
  last one `run` saves; then ``callback(e, state, record)``.

  Args:
    epoch_fn: ``epoch_fn(state, epoch, tick) -> (state, record dict)``.
    state: the initial state (replaced by the restored one when `run` holds a checkpoint).
    epochs: total number of epochs of the run.
    run: the `RunDir` (None: nothing is written and nothing resumed).
    checkpoint_every: epochs between checkpoints.
    progress: show a progress bar (`core.progress`: nothing in logs, a widget in notebooks).
    desc: the bar's label and the name in messages.
    steps_per_epoch: a bar over steps (with ``tick``) instead of epochs.
    loss_key: the record's entry checked for divergence.
    on_epoch, callback: see above.

  Returns:
    ``(state, history)``: the final state and every epoch's record (the restored ones too).

  Raises:
    FloatingPointError: the loss became NaN or infinite (lower the learning rate).
  """
  history: list[dict] = []
  first = 0
  if run is not None:
    state, first, history = run.restore(state)
    if first:
      _say(progress, f"Resuming {run.workdir} from epoch {first}.")
  per = steps_per_epoch or 1
  bar = progress_lib.progress_bar(total=epochs * per, initial=first * per, desc=desc,
                                  unit="step" if steps_per_epoch else "it", enabled=progress)

  def tick(**postfix):
    bar.update(1)
    if postfix:
      bar.set_postfix(**postfix)

  try:
    for epoch in range(first, epochs):
      state, record = epoch_fn(state, epoch, tick)
      loss = record[loss_key]
      if not math.isfinite(loss):
        where = f" of {run.workdir}" if run is not None else ""
        raise FloatingPointError(
          f"{desc}: the training loss became {loss} in epoch {epoch + 1}{where}; lower the "
          "learning rate or check the data. The last good checkpoint is kept.")
      history.append(record)
      if run is not None:
        run.record(record)
      if on_epoch is not None:
        on_epoch(epoch, state, record)
      if run is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
        run.save(epoch + 1, state, history)
      if steps_per_epoch is None:
        bar.update(1)
      bar.set_postfix(**{loss_key: f"{loss:.4f}"})
      if callback is not None:
        callback(epoch, state, record)
  finally:
    bar.close()
  return state, history
