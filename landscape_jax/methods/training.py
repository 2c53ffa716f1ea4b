"""Training: `TrainState`, pure jitted `train_step` / `eval_step`, optax SGD recipes, and `train`.

The functions here are small and pure; `train` is a step function plus a config handed to the
library's one epoch loop (`methods.loop.run_epochs`: run directory, progress bar, metrics file,
checkpoints, divergence check). It follows the recipes of the papers this library reproduces:

* Li et al. 2018: SGD with Nesterov momentum 0.9, lr 0.1 divided by 10 at epochs 150, 225, 275 of
  300, batch 128, weight decay 5e-4, random crop + flip (`step_schedule`).
* Garipov et al. 2018: SGD momentum 0.9; lr factor 1 until 50 % of training, then linear down to
  0.01 at 90 %, then 0.01, set once per epoch (`garipov_schedule`).

Weight decay is an L2 term added to the gradient before momentum, as PyTorch's SGD does:
``g <- g + wd * w; m <- mu * m + g; w <- w - lr * (g + mu * m)`` (Nesterov) or ``w - lr * m``.

Data parallelism: the batch is sharded over a 1-D `Mesh` of all devices (axis ``"data"``,
``NamedSharding(mesh, P("data"))``) and the train state is replicated; `jax.jit` inserts the
gradient all-reduce, and BatchNorm statistics are those of the *global* batch, so one step on any
number of devices computes the same function as on one device.

Reproducibility and fault tolerance: the order of epoch ``e`` is a permutation drawn from
``numpy.random.default_rng([seed, e])`` and the augmentation key of step ``s`` is
``fold_in(key, s)``, so a run resumed from its last checkpoint continues exactly as the
uninterrupted run would (bit for bit on the same machine). Checkpoints are written atomically (see
`methods.checkpoints`), a killed run loses at most the epochs since the last checkpoint, and
``metrics.jsonl`` is cut back to the restored epoch on resume.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from landscape_jax.adapters import data as data_lib
from landscape_jax.adapters.data import Dataset, normalize_images
from landscape_jax.adapters.evaluation import (
  check_model_fits,
  correct,
  cross_entropy,
  prepare_inputs,
  split_metrics,
)
from landscape_jax.adapters.losses import CROSS_ENTROPY, Loss, check_loss
from landscape_jax.backends.cpu.onednn_autodiff import min_flops_for, with_onednn_derivatives
from landscape_jax.core import identity
from landscape_jax.core.sharding import make_mesh
from landscape_jax.core.splits import device_split
from landscape_jax.methods.defaults import DEFAULTS
from landscape_jax.methods.loop import RunDir, as_training_data, run_epochs
from landscape_jax.methods.rundir import (
  check_keys,
  config_dict,
  data_digests,
  model_identity,
  optimizer_identity,
)
from landscape_jax.methods.schedules import (
  SCHEDULES,
  cosine_schedule,
  garipov_schedule,
  make_optimizer,
  step_schedule,
  with_warmup,
)

__all__ = [
  "create_train_state",
  "DEFAULTS",
  "eval_step",
  "evaluate_state",
  "loss_identity",
  "make_schedule",
  "model_input_shapes",
  "optimizer_from_config",
  "train",
  "train_step",
  "TrainState",
]

PyTree = Any
log = logging.getLogger(__name__)


# Training fields read by `train`, with their defaults (a config may hold other keys too, e.g. the
# dataset and model names used by experiments/train.py).
# Keys of the experiment scripts' training configs that `train` itself does not read
# (experiments/configs/defaults.py: `defaults.train`); any other key is refused as a typo.
EXPERIMENT_KEYS = ("dataset", "data_dir", "train_subset", "model", "model_kwargs")

# Keys that may change between a run and its resumption without mixing results.

class TrainState(NamedTuple):
  """Everything a training run carries from step to step (a pytree).

  Attributes:
    step: int32 scalar, number of optimizer steps taken.
    params: the model parameters (``variables["params"]``).
    batch_stats: BatchNorm running statistics (``{}`` for models without BatchNorm).
    opt_state: the optax optimizer state.
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState

  @property
  def variables(self) -> dict[str, PyTree]:
    """``{"params": ..., "batch_stats": ...}`` for ``model.apply`` (no empty batch_stats)."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}


def model_input_shapes(inputs: PyTree, batch_size: int = 1) -> PyTree:
  """`jax.ShapeDtypeStruct`s of a batch of `batch_size` model inputs: uint8 images and floats
  become float32 (the images are normalised), other dtypes (e.g. integer tokens) stay."""
  def one(a):
    dtype = np.asarray(a).dtype if not hasattr(a, "dtype") else np.dtype(a.dtype)
    keep = np.issubdtype(dtype, np.integer) and dtype != np.uint8
    return jax.ShapeDtypeStruct((batch_size, *np.shape(a)[1:]), dtype if keep else np.float32)
  return jax.tree.map(one, inputs)


def create_train_state(model: nn.Module, key: jax.Array, sample_inputs,
                       tx: optax.GradientTransformation) -> TrainState:
  """Initialises a model (``model.init(key, x, train=False)``) and the optimizer state.

  Args:
    model: a linen module called as ``model.apply(variables, x, train=...)``.
    key: PRNG key for the initialisation.
    sample_inputs: a batch (any size >= 1) of inputs (an array or a pytree of arrays); only
      shapes and dtypes matter (`model_input_shapes`: images and floats as float32).
    tx: the optax transformation (e.g. from `make_optimizer`).
  """
  x = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), model_input_shapes(sample_inputs))
  variables = model.init(key, x, train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params))



def _cfg(config, name):
  if isinstance(config, Mapping) or hasattr(config, "get"):
    value = config.get(name, DEFAULTS[name])
  else:
    value = getattr(config, name, DEFAULTS[name])
  return DEFAULTS[name] if value is None and DEFAULTS[name] is not None else value


def make_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """The learning-rate schedule of a config (fields: see `DEFAULTS`), in optimizer steps."""
  lr = float(_cfg(config, "learning_rate"))
  name = _cfg(config, "schedule")
  total = int(_cfg(config, "num_epochs")) * steps_per_epoch
  warmup = int(_cfg(config, "warmup_epochs")) * steps_per_epoch
  if name == "constant":
    return with_warmup(optax.constant_schedule(lr), lr, warmup)
  if name == "step":
    return step_schedule(lr, boundaries=[int(e) * steps_per_epoch
                                         for e in _cfg(config, "lr_boundaries")],
                         factor=float(_cfg(config, "lr_decay")), warmup_steps=warmup)
  if name == "cosine":
    return cosine_schedule(lr, total, warmup_steps=warmup)
  if name == "garipov":
    return garipov_schedule(lr, total, steps_per_epoch=steps_per_epoch)
  raise ValueError(f"Unknown schedule '{name}'. Known: {', '.join(SCHEDULES)}.")


def optimizer_from_config(config, steps_per_epoch: int
                          ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """``(tx, schedule)`` for a config: `make_optimizer` with `make_schedule`."""
  schedule = make_schedule(config, steps_per_epoch)
  tx = make_optimizer(learning_rate=schedule, momentum=float(_cfg(config, "momentum")),
                      nesterov=bool(_cfg(config, "nesterov")),
                      weight_decay=float(_cfg(config, "weight_decay")),
                      name=_cfg(config, "optimizer"))
  return tx, schedule


# ------------------------------------------------------------------------------ steps


def _batch_ratio(loss: Loss, values, weights, name: str) -> jax.Array:
  """``sum_i v_i / sum_i w_i`` of a batch (the mean when the loss is not weighted)."""
  if loss.weighted:
    return jnp.sum(values[name]) / jnp.sum(weights)
  return jnp.mean(values[name])


def _train_step(state: TrainState, batch, key, *, model, tx, loss, norm, augment, pad, flip,
                cpu_convolutions="auto"):
  inputs, targets = batch
  aug_key, dropout_key = jax.random.split(key)
  if augment:
    inputs = data_lib.augment(aug_key, inputs, pad=pad, flip=flip)
  x = prepare_inputs(inputs, norm)

  def loss_fn(params):
    if state.batch_stats:
      logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                    train=True, mutable=["batch_stats"],
                                    rngs={"dropout": dropout_key})
      new_stats = updates["batch_stats"]
    else:
      logits = model.apply({"params": params}, x, train=True, rngs={"dropout": dropout_key})
      new_stats = state.batch_stats
    values, weights = loss.sums(logits, targets)
    return _batch_ratio(loss, values, weights, "loss"), (values, weights, new_stats)

  if (min_flops := min_flops_for(cpu_convolutions)) is not None:  # convs and derivatives: oneDNN
    loss_fn = with_onednn_derivatives(loss_fn, min_flops=min_flops)
  (value, (values, weights, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {k: value if k == "loss" else _batch_ratio(loss, values, weights, k)
             for k in loss.metrics}
  return TrainState(state.step + 1, params, new_stats, opt_state), metrics


@functools.partial(jax.jit, static_argnames=("model", "tx", "loss", "augment", "pad", "flip",
                                             "cpu_convolutions"))
def train_step(state: TrainState, batch, key: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, mean=None, std=None, loss: Loss | None = None,
               augment: bool = False, pad: int = 4, flip: bool = True,
               cpu_convolutions: str = "auto") -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a batch: ``w <- w + tx.update(grad L)``; BatchNorm in training mode.

  ``L = sum_i v_i / sum_i w_i`` over the batch for the `Loss` (`adapters.losses`; default
  `CROSS_ENTROPY`: the mean cross-entropy).

  Args:
    state: the `TrainState`.
    batch: ``(inputs, targets)``, e.g. ``(uint8 images (b, H, W, C), int labels (b,))``; shard
      it on ``P("data")`` for data parallelism (the state replicated).
    key: PRNG key of this step (augmentation and dropout).
    model: the linen module; tx: the optax transformation (both static).
    mean, std: per-channel normalisation of uint8 images (`Dataset.mean`, `Dataset.std`); None
      for inputs used as given.
    loss: the `Loss` (static; default `CROSS_ENTROPY`).
    augment: random crop with `pad` zero pixels and (if `flip`) horizontal flip.
    cpu_convolutions: who computes the convolutions and their derivatives on the CPU:
      ``"auto"`` (oneDNN where available for convolutions of at least
  `onednn_autodiff.AUTO_MIN_FLOPS`), ``"onednn"`` or
      ``"xla"``; both exact float32 (benchmarks/bench_conv_grads.py times them).

  Returns:
    ``(new_state, {metric: value})``: every metric of the loss over the batch (``loss`` and
    ``accuracy`` for the cross-entropies) *before* the update, in training mode. The BatchNorm
    running statistics are updated through ``mutable=["batch_stats"]``.
  """
  norm = None if mean is None and std is None else (mean, std)
  return _train_step(state, batch, key, model=model, tx=tx, loss=check_loss(loss), norm=norm,
                     augment=augment, pad=pad, flip=flip, cpu_convolutions=cpu_convolutions)


@functools.partial(jax.jit, static_argnames=("model",))
def eval_step(state: TrainState, batch, *, model: nn.Module, mean, std) -> dict[str, jax.Array]:
  """Batch-mean cross-entropy and accuracy in inference mode (running BatchNorm statistics)."""
  images, labels = batch
  logits = model.apply(state.variables, normalize_images(images, mean, std), train=False)
  return {"loss": jnp.mean(cross_entropy(logits, labels)),
          "accuracy": jnp.mean(correct(logits, labels))}


@functools.partial(jax.jit, static_argnames=("model", "loss"))
def _evaluate(model, loss, variables, split, norm):
  return split_metrics(functools.partial(model.apply, variables, train=False), split, loss, norm)


def _norm(data) -> tuple | None:
  """``(mean, std)`` of a `Dataset` (uint8 images normalised), None for other data."""
  return (jnp.asarray(data.mean), jnp.asarray(data.std)) if isinstance(data, Dataset) else None


def evaluate_state(model: nn.Module, state: TrainState, data, *, loss: Loss | None = None,
                   batch_size: int = 1000, mesh: Mesh | None = None) -> dict[str, float]:
  """Exact metrics of `state` over a whole split (inference mode), as Python floats.

  ``metric = sum_i v_i / sum_i w_i`` over the split for every metric of the `Loss` (default
  `CROSS_ENTROPY`: ``loss`` and ``accuracy``). `data` is a `Dataset` (its uint8 images
  normalised) or an ``(inputs, targets)`` pair. With a 1-D `mesh` the batches are sharded over
  its devices (the state should be replicated).
  """
  split = _device_split(data, batch_size, mesh, mesh.axis_names[0] if mesh else "data")
  out = _evaluate(model, check_loss(loss), state.variables, split, _norm(data))
  return {k: float(v) for k, v in out.items()}


def _device_split(data, batch_size: int, mesh: Mesh | None, axis: str = "data"):
  inputs, targets, n = as_training_data(data)
  ndev = 1 if mesh is None else mesh.shape[axis]
  if mesh is None or n < ndev:
    return device_split(inputs, targets, batch_size=batch_size)
  # Batches must split evenly over the devices: a multiple of the mesh size.
  batch_size = max(ndev, min(batch_size, n) // ndev * ndev)
  return device_split(inputs, targets, batch_size=batch_size, multiple_of=ndev,
                      sharding=NamedSharding(mesh, P(None, axis)))



def loss_identity(loss: Loss) -> dict:
  """What a run records of its `Loss`: the qualified names of its functions, its metrics and
  whether it is weighted (a Loss is built from module-level functions)."""
  name = lambda f: None if f is None else f"{f.__module__}.{f.__qualname__}"
  return {"sums": name(loss.sums), "metrics": list(loss.metrics), "weighted": loss.weighted,
          "ensemble": name(loss.ensemble), "classes": name(loss.classes)}


def _say(progress: bool, message: str) -> None:
  if progress:
    tqdm.tqdm.write(message)
  else:
    log.info(message)


def _loop_step(state, totals, inputs, targets, idx, base_key, *, step_kwargs):
  batch = jax.tree.map(lambda a: a[idx], (inputs, targets))
  state, m = _train_step(state, batch, jax.random.fold_in(base_key, state.step), **step_kwargs)
  return state, totals + jnp.stack([m[k] for k in step_kwargs["loss"].metrics])


def train(model: nn.Module, train_data, test_data=None, *, config, workdir: str,
          loss: Loss | None = None, optimizer: optax.GradientTransformation | None = None,
          mesh: Mesh | None = None, progress: bool = True,
          callback: Callable[[int, TrainState, dict], None] | None = None,
          ) -> tuple[TrainState, list[dict]]:
  """Trains `model` on `train_data`, checkpointing into `workdir`; resumes if checkpoints exist.

  Each epoch is a seeded permutation of the training split in batches of ``config.batch_size``
  (the last incomplete batch is dropped), with optional crop+flip augmentation of images on the
  device; each step minimises the batch's ``L = sum_i v_i / sum_i w_i`` of the `Loss` (default
  `CROSS_ENTROPY`: the mean cross-entropy). After every epoch a JSON line is appended to
  ``<workdir>/metrics.jsonl``: ``epoch`` (1-based), ``step``, ``lr`` (of the epoch's last step),
  ``train_<metric>`` for every metric of the loss (``train_loss`` / ``train_accuracy``: the mean
  over the epoch's batches, training mode), ``test_<metric>`` (exact over the split, inference
  mode, every ``eval_every_epochs``), ``images_per_sec`` (``examples_per_sec`` for other data;
  training only, epoch 1 includes compilation) and ``time``. Checkpoints (`TrainState` as a state
  dict) go to ``<workdir>/checkpoints/<step>``: the initial point, every
  ``checkpoint_every_epochs`` epochs and the last epoch; all are kept so the run leaves a
  trajectory (`checkpoints.load_trajectory`). The loop is `loop.run_epochs` with a
  ``layout="trajectory"`` `loop.RunDir`.

  Args:
    model: a linen module (``model.apply(variables, x, train=...)``).
    train_data, test_data: `Dataset` splits (uint8 images, normalised with the training split's
      mean and std) or ``(inputs, targets)`` pairs of arrays (or pytrees of arrays) with a
      leading example axis, used as given; test_data may be None.
    config: a `ml_collections.ConfigDict` or mapping with the fields of `DEFAULTS` (missing ones
      take the default) and optionally `EXPERIMENT_KEYS`; any other key is refused with the
      closest known one (a typo such as ``learning_rte`` would otherwise train at the default
      rate).
    workdir: output directory, local or remote (``gs://bucket/run``, through `etils.epath`;
      see `methods.rundir` and `methods.checkpoints`). If it holds checkpoints, training
      resumes from the latest one (after checking that ``config.json`` matches: the
      configuration and the sha256 digests of the training and test splits' inputs and targets,
      ``train_data_sha256`` / ``test_data_sha256``, the loss (when not the default, ``loss``),
      the traced forward passes of the model ``model_code`` (`rundir.model_identity`: an edited
      activation or dtype is refused) and the traced optimiser ``optimizer_code``; the initial
      variables come from ``config.seed``) and ``metrics.jsonl`` is cut back to it.
    loss: the `Loss` (`adapters.losses`; default `CROSS_ENTROPY`).
    optimizer: any optax `GradientTransformation`, replacing the config's optimiser and
      schedule (``lr`` is then None in the records). Default: `optimizer_from_config`, i.e.
      `schedules.make_optimizer` (SGD or Adam after weight decay as an L2 gradient term) with
      `make_schedule` (``schedule``: constant, step, cosine or garipov, with warm-up).
    mesh: the devices to shard each batch over: a 1-D mesh of any axis name
      (`sharding.make_mesh()`) or a mesh with a ``"data"`` axis (default: every device).
    progress: show a progress bar (`core.progress`: nothing in logs, a widget in notebooks).
    callback: called as ``callback(epoch, state, record)`` after each epoch's record is written.

  Returns:
    ``(final_state, records)`` with the records of every epoch of the run (resumed ones too).

  Raises:
    FloatingPointError: when the training loss becomes NaN/inf (lower the learning rate).
    ValueError: bad configuration, a batch size not divisible by the devices, or a workdir holding
      a different run (`store.StoreMismatchError`, listing what differs).
  """
  mesh = make_mesh() if mesh is None else mesh
  if len(mesh.axis_names) == 1:
    axis = mesh.axis_names[0]
  elif "data" in mesh.axis_names:
    axis = "data"
  else:
    raise ValueError(f"train needs a 1-D mesh or one with a 'data' axis, got {mesh.axis_names}.")
  if not (isinstance(config, Mapping) or hasattr(config, "to_dict")):
    raise TypeError(f"config must be a mapping or an ml_collections.ConfigDict with the keys of "
                    f"training.DEFAULTS, got {type(config).__name__}.")
  check_keys(config, (*DEFAULTS, *EXPERIMENT_KEYS), what="train's config")
  cfg = {k: _cfg(config, k) for k in DEFAULTS}
  batch_size, num_epochs, seed = int(cfg["batch_size"]), int(cfg["num_epochs"]), int(cfg["seed"])
  loss = check_loss(loss)
  inputs, targets, n = as_training_data(train_data, name="train_data")
  images = isinstance(train_data, Dataset)
  if not images and any(np.asarray(x).dtype == np.uint8 for x in jax.tree.leaves(inputs)):
    raise ValueError("train_data has uint8 inputs, which are images to normalise: pass a Dataset "
                     "(its mean and std normalise them) or convert the inputs to float32.")
  if batch_size <= 0 or num_epochs <= 0:
    raise ValueError(f"batch_size and num_epochs must be positive, got {batch_size}, {num_epochs}.")
  if batch_size > n:
    raise ValueError(f"batch_size {batch_size} is larger than the training split ({n} examples).")
  if cfg["augment"] and not images:
    raise ValueError("augment crops and flips images: it needs a Dataset of images, not an "
                     "(inputs, targets) pair; set augment=False.")
  ndev = mesh.shape[axis]
  if batch_size % ndev:
    raise ValueError(
      f"batch_size {batch_size} is not divisible by the {ndev} devices of the mesh; use a "
      f"multiple of {ndev} or pass mesh=make_mesh(jax.devices()[:k]).")
  ckpt_every = max(1, int(cfg["checkpoint_every_epochs"]))
  eval_every = max(1, int(cfg["eval_every_epochs"]))
  log_every = max(1, int(cfg["log_every_steps"]))
  steps_per_epoch = n // batch_size
  tx, schedule = optimizer_from_config(cfg, steps_per_epoch)
  if optimizer is not None:
    tx, schedule = optimizer, None

  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(axis))
  init_key, base_key = jax.random.split(jax.random.key(seed))
  state = create_train_state(model, init_key, jax.tree.map(lambda a: a[:1], inputs), tx)
  if images:
    for ds in (train_data, test_data) if test_data is not None else (train_data,):
      check_model_fits(model, state.variables, ds)  # image shape and number of classes
  state = jax.device_put(state, replicated)
  full_config = config_dict({**config_dict(config), **cfg, **data_digests(train_data, test_data)})
  full_config["model_code"] = model_identity(
    model, state.variables,
    (batch_size, *train_data.images.shape[1:]) if images else model_input_shapes(inputs,
                                                                                  batch_size))
  full_config["optimizer_code"] = optimizer_identity(tx, state.params)
  # (absent for the defaults: runs of earlier versions still resume)
  if optimizer is not None:
    full_config["custom_optimizer"] = True
  if loss != CROSS_ENTROPY:
    full_config["loss"] = loss_identity(loss)
  full_config["versions"] = identity.versions()

  inputs, targets = jax.device_put((inputs, targets), replicated)
  test_split = None if test_data is None else _device_split(
    test_data, int(cfg["eval_batch_size"]), mesh, axis)
  test_norm = None if test_data is None else _norm(test_data)
  step_kwargs = dict(model=model, tx=tx, loss=loss, norm=_norm(train_data),
                     augment=bool(cfg["augment"]), pad=int(cfg["augment_pad"]),
                     flip=bool(cfg["augment_flip"]),
                     # oneDNN's FFI calls have no sharding rule: several devices keep XLA's
                     cpu_convolutions="auto" if mesh.size == 1 else "xla")
  step_fn = jax.jit(functools.partial(_loop_step, step_kwargs=step_kwargs),
                    donate_argnums=(0, 1), out_shardings=replicated)
  names = loss.metrics
  rate = "images_per_sec" if images else "examples_per_sec"

  def epoch_fn(state, epoch, tick):
    t0 = time.perf_counter()
    order = np.random.default_rng([seed, epoch]).permutation(n)
    totals = jax.device_put(jnp.zeros(len(names), jnp.float32), replicated)
    for i in range(steps_per_epoch):
      idx = jax.device_put(order[i * batch_size:(i + 1) * batch_size].astype(np.int32),
                           batch_sharding)
      state, totals = step_fn(state, totals, inputs, targets, idx, base_key)
      if (i + 1) % log_every == 0:
        means = np.asarray(totals) / (i + 1)
        tick(**{k[:4]: f"{v:.4f}" for k, v in zip(names, means, strict=True)},
             ex_s=f"{(i + 1) * batch_size / (time.perf_counter() - t0):.0f}")
      else:
        tick()
    means = [float(v) for v in np.asarray(totals) / steps_per_epoch]
    seconds = time.perf_counter() - t0
    step = int(state.step)
    lr = None if schedule is None else float(schedule(step - 1))
    record = {"epoch": epoch + 1, "step": step, "lr": lr,
              **{f"train_{k}": v for k, v in zip(names, means, strict=True)}}
    if (test_split is not None and math.isfinite(record["train_loss"])
        and ((epoch + 1) % eval_every == 0 or epoch + 1 == num_epochs)):
      res = _evaluate(model, loss, state.variables, test_split, test_norm)
      record.update({f"test_{k}": float(res[k]) for k in names})
    record.update({rate: steps_per_epoch * batch_size / seconds, "time": time.time()})
    return state, record

  def on_epoch(epoch, state, record):
    _say(progress, "epoch {epoch}: {summary}".format(epoch=epoch + 1, summary=", ".join(
      f"{k}={v:.4g}" for k, v in record.items() if k not in ("epoch", "time") and v is not None)))

  with RunDir(workdir, name="train", config=full_config, layout="trajectory",
              steps_per_epoch=steps_per_epoch) as run:
    return run_epochs(
      epoch_fn, state, epochs=num_epochs, run=run, checkpoint_every=ckpt_every,
      progress=progress, desc="train", steps_per_epoch=steps_per_epoch, loss_key="train_loss",
      on_epoch=on_epoch,
      callback=None if callback is None else lambda e, st, r: callback(e + 1, st, r))
