"""Training: `TrainState`, pure jitted `train_step` / `eval_step`, optax SGD recipes, and `train`.

The functions here are small and pure; `train` is the one loop with side effects (progress bar,
metrics file, checkpoints). It follows the recipes of the papers this library reproduces:

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
`landscape_jax.checkpoints`), a killed run loses at most the epochs since the last checkpoint, and
``metrics.jsonl`` is cut back to the restored epoch on resume.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm.auto as tqdm
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from landscape_jax import checkpoints, fileio, identity, store
from landscape_jax.data import Dataset, normalize_images
from landscape_jax.data import augment as augment_images
from landscape_jax.evaluation import (
  check_model_fits,
  correct,
  cross_entropy,
  device_split,
  evaluate_split,
)

PyTree = Any
log = logging.getLogger(__name__)

SCHEDULES = ("constant", "step", "cosine", "garipov")
OPTIMIZERS = ("sgd", "adam")
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"

# Training fields read by `train`, with their defaults (a config may hold other keys too, e.g. the
# dataset and model names used by experiments/train.py).
DEFAULTS: dict[str, Any] = {
  "seed": 0,
  "num_epochs": 10,
  "batch_size": 128,
  "optimizer": "sgd",
  "learning_rate": 0.1,
  "momentum": 0.9,
  "nesterov": False,
  "weight_decay": 0.0,
  "schedule": "constant",
  "lr_boundaries": (),       # epochs at which the step schedule multiplies the lr by lr_decay
  "lr_decay": 0.1,
  "warmup_epochs": 0,        # linear warm-up from 0 (cosine and step schedules)
  "augment": False,          # random crop (zero padding `augment_pad`) + horizontal flip
  "augment_pad": 4,
  "augment_flip": True,
  "checkpoint_every_epochs": 1,
  "eval_every_epochs": 1,
  "eval_batch_size": 1000,
  "log_every_steps": 50,
}
# Keys that may change between a run and its resumption without mixing results.
_RESUME_FREE = ("eval_batch_size", "log_every_steps", "data_dir", "eval_every_epochs")


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


def create_train_state(model: nn.Module, key: jax.Array, sample_images,
                       tx: optax.GradientTransformation) -> TrainState:
  """Initialises a model (``model.init(key, x, train=False)``) and the optimizer state.

  Args:
    model: a linen module called as ``model.apply(variables, x, train=...)``.
    key: PRNG key for the initialisation.
    sample_images: a batch (any size >= 1) with the input shape; only shape and dtype matter.
    tx: the optax transformation (e.g. from `make_optimizer`).
  """
  x = jnp.zeros((1, *np.shape(sample_images)[1:]), jnp.float32)
  variables = model.init(key, x, train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params))


# ----------------------------------------------------------------------------------- schedules


def step_schedule(base_lr: float, *, boundaries: Sequence[int], factor: float = 0.1,
                  warmup_steps: int = 0) -> optax.Schedule:
  """Piecewise-constant lr: ``base_lr * factor ** (number of boundaries <= step)``.

  Li et al. 2018 use base_lr 0.1, factor 0.1 and boundaries at epochs 150, 225, 275 (pass them in
  steps: ``epoch * steps_per_epoch``). With `warmup_steps`, the lr first rises linearly from 0.
  """
  boundaries = sorted(int(b) for b in boundaries)
  sched = optax.piecewise_constant_schedule(base_lr, {b: factor for b in boundaries if b > 0})
  return _with_warmup(sched, base_lr, warmup_steps)


def cosine_schedule(base_lr: float, total_steps: int, *, warmup_steps: int = 0,
                    final_factor: float = 0.0) -> optax.Schedule:
  """``base_lr * (f + (1 - f) (1 + cos(pi t / T)) / 2)`` after an optional linear warm-up."""
  if warmup_steps:
    return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup_steps, max(total_steps, 1),
                                              end_value=final_factor * base_lr)
  return optax.cosine_decay_schedule(base_lr, max(total_steps, 1), alpha=final_factor)


def garipov_schedule(base_lr: float, total_steps: int, *,
                     steps_per_epoch: int | None = None) -> optax.Schedule:
  """Garipov et al. 2018 schedule: ``base_lr * factor(a)`` with a the fraction of training done.

  factor(a) = 1 for a <= 0.5; 1 - 0.99 (a - 0.5) / 0.4 for 0.5 < a <= 0.9; 0.01 after.
  With `steps_per_epoch` the lr is set once per epoch exactly as the reference code
  (``learning_rate_schedule(base_lr, epoch, total)`` of timgaripov/dnn-mode-connectivity's
  train.py, called at the start of epochs ``1..total``): ``a = (e + 1) / num_epochs`` for the
  0-based epoch ``e = step // steps_per_epoch``, so the first epoch already has
  ``a = 1 / num_epochs`` and the last one ``a = 1``. Otherwise ``a = step / total_steps``.
  This is the one implementation; `landscape_jax.curves.curve_lr_schedule` (curve training and
  the FGE budget runs) uses it.
  """
  if total_steps <= 0:
    raise ValueError(f"garipov_schedule needs total_steps > 0, got {total_steps}.")
  if steps_per_epoch is not None and steps_per_epoch <= 0:
    raise ValueError(f"garipov_schedule needs steps_per_epoch > 0 (or None), got "
                     f"{steps_per_epoch}.")

  def schedule(step):
    step = jnp.asarray(step)
    if steps_per_epoch:
      # integer epoch index (float division could round step / spe up near an epoch's end)
      epoch = (step // steps_per_epoch if jnp.issubdtype(step.dtype, jnp.integer)
               else jnp.floor(step / steps_per_epoch))
      alpha = ((epoch + 1).astype(jnp.float32) * steps_per_epoch) / total_steps
    else:
      alpha = step.astype(jnp.float32) / total_steps
    factor = jnp.where(alpha <= 0.5, 1.0,
                       jnp.where(alpha <= 0.9, 1.0 - (alpha - 0.5) / 0.4 * 0.99, 0.01))
    return base_lr * factor

  return schedule


def _with_warmup(schedule, base_lr, warmup_steps):
  if not warmup_steps:
    return schedule
  warm = optax.linear_schedule(0.0, base_lr, warmup_steps)
  return optax.join_schedules([warm, lambda s: schedule(s + warmup_steps)], [warmup_steps])


def make_optimizer(*, learning_rate: float | optax.Schedule, momentum: float | None = 0.9,
                   nesterov: bool = False, weight_decay: float = 0.0,
                   name: str = "sgd") -> optax.GradientTransformation:
  """SGD (optionally Nesterov) or Adam with weight decay as an L2 gradient term.

  ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum, nesterov))``, i.e. the
  update of PyTorch's ``torch.optim.SGD(weight_decay=wd)`` used by Li et al. and Garipov et al.;
  weight decay applies to every parameter (biases and BatchNorm too, as in both references).
  ``name="adam"`` uses ``optax.adam`` after the same L2 term (momentum/nesterov ignored).
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer '{name}'. Known: {', '.join(OPTIMIZERS)}.")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
  if name == "adam":
    opt = optax.adam(learning_rate)
  else:
    opt = optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)
  if weight_decay:
    return optax.chain(optax.add_decayed_weights(weight_decay), opt)
  return opt


def default_config(**overrides) -> Any:
  """A `ml_collections.ConfigDict` with every field `train` and experiments/train.py read.

  Fields: those of `DEFAULTS` plus ``dataset`` ("digits"), ``data_dir`` (None: TFDS default),
  ``train_subset`` (None: all), ``model`` ("mlp") and ``model_kwargs`` (overrides for
  `get_model`). `overrides` replace defaults; unknown names are an error (catches typos).
  """
  import ml_collections
  from ml_collections import config_dict

  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.data_dir = config_dict.placeholder(str)
  c.train_subset = config_dict.placeholder(int)
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict()
  for k, v in DEFAULTS.items():
    c[k] = v
  return override_config(c, overrides)


def override_config(config, overrides: Mapping[str, Any], *, what: str = "config"):
  """`config` (a ConfigDict) with the fields in `overrides` replaced; unknown names are an error.

  The defaults functions of the experiments (`training.default_config`,
  `surface.default_config`, `curves.default_config`, `ensembles.default_config`) use it so that a
  typo in a config file fails at once, naming the known fields. Mapping values become ConfigDicts.
  """
  import ml_collections

  for k, v in overrides.items():
    if k not in config:
      raise ValueError(f"Unknown {what} field '{k}'. Known: {', '.join(sorted(config))}.")
    config[k] = ml_collections.ConfigDict(v) if isinstance(v, Mapping) else v
  return config


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
    return _with_warmup(optax.constant_schedule(lr), lr, warmup)
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


def _train_step(state: TrainState, batch, key, *, model, tx, mean, std, augment, pad, flip):
  images, labels = batch
  aug_key, dropout_key = jax.random.split(key)
  if augment:
    images = augment_images(aug_key, images, pad=pad, flip=flip)
  x = normalize_images(images, mean, std)

  def loss_fn(params):
    if state.batch_stats:
      logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                    train=True, mutable=["batch_stats"],
                                    rngs={"dropout": dropout_key})
      new_stats = updates["batch_stats"]
    else:
      logits = model.apply({"params": params}, x, train=True, rngs={"dropout": dropout_key})
      new_stats = state.batch_stats
    loss = jnp.mean(cross_entropy(logits, labels))
    return loss, (logits, new_stats)

  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "accuracy": jnp.mean(correct(logits, labels))}
  return TrainState(state.step + 1, params, new_stats, opt_state), metrics


@functools.partial(jax.jit, static_argnames=("model", "tx", "augment", "pad", "flip"))
def train_step(state: TrainState, batch, key: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, mean, std, augment: bool = False, pad: int = 4,
               flip: bool = True) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a batch: ``w <- w + tx.update(grad mean CE)``; BatchNorm in training mode.

  Args:
    state: the `TrainState`.
    batch: ``(uint8 images (b, H, W, C), int labels (b,))``; shard it on ``P("data")`` for data
      parallelism (the state replicated).
    key: PRNG key of this step (augmentation and dropout).
    model: the linen module; tx: the optax transformation (both static).
    mean, std: per-channel normalisation (`Dataset.mean`, `Dataset.std`).
    augment: random crop with `pad` zero pixels and (if `flip`) horizontal flip.

  Returns:
    ``(new_state, {"loss", "accuracy"})``: batch-mean cross-entropy and accuracy *before* the
    update, in training mode. The BatchNorm running statistics are updated through
    ``mutable=["batch_stats"]``.
  """
  return _train_step(state, batch, key, model=model, tx=tx, mean=mean, std=std, augment=augment,
                     pad=pad, flip=flip)


@functools.partial(jax.jit, static_argnames=("model",))
def eval_step(state: TrainState, batch, *, model: nn.Module, mean, std) -> dict[str, jax.Array]:
  """Batch-mean cross-entropy and accuracy in inference mode (running BatchNorm statistics)."""
  images, labels = batch
  logits = model.apply(state.variables, normalize_images(images, mean, std), train=False)
  return {"loss": jnp.mean(cross_entropy(logits, labels)),
          "accuracy": jnp.mean(correct(logits, labels))}


@functools.partial(jax.jit, static_argnames=("model",))
def _evaluate(model, variables, split, mean, std):
  return evaluate_split(functools.partial(model.apply, train=False), variables, split, mean, std)


def evaluate_state(model: nn.Module, state: TrainState, data: Dataset, *, batch_size: int = 1000,
                   mesh: Mesh | None = None) -> dict[str, float]:
  """Exact loss and accuracy of `state` over a whole split (inference mode), as Python floats.

  With a 1-D `mesh` the batches are sharded over its devices (the state should be replicated).
  """
  split = _device_split(data, batch_size, mesh, mesh.axis_names[0] if mesh else "data")
  out = _evaluate(model, state.variables, split, jnp.asarray(data.mean), jnp.asarray(data.std))
  return {k: float(v) for k, v in out.items()}


# ------------------------------------------------------------------------------- sharding


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``"data"`` over `devices` (default: every device of every host)."""
  devices = np.asarray(jax.devices() if devices is None else list(devices))
  return Mesh(devices, ("data",))


def _device_split(data: Dataset, batch_size: int, mesh: Mesh | None, axis: str = "data"):
  n, ndev = len(data), (1 if mesh is None else mesh.shape[axis])
  if mesh is None or n < ndev:
    return device_split(data.images, data.labels, batch_size=batch_size)
  # Batches must split evenly over the devices: a multiple of the mesh size.
  batch_size = max(ndev, min(batch_size, n) // ndev * ndev)
  return device_split(data.images, data.labels, batch_size=batch_size, multiple_of=ndev,
                      sharding=NamedSharding(mesh, P(None, axis)))


# --------------------------------------------------------------------------------- loop


def _config_dict(config) -> dict:
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.loads(json.dumps(dict(config), default=str))


def _data_digests(train_ds: Dataset, test_ds: Dataset | None) -> dict[str, str | None]:
  """sha256 (`identity.tree_digest`) of the images and labels of the splits a run uses."""
  digest = lambda ds: identity.tree_digest({"images": ds.images, "labels": ds.labels})
  return {"train_data_sha256": digest(train_ds),
          "test_data_sha256": None if test_ds is None else digest(test_ds)}


def _check_config(workdir: str, config: dict, resuming: bool) -> None:
  """Refuses to resume a run with another configuration or data; (re)writes ``config.json``.

  A fresh run (no checkpoints) replaces the file; a resumed one compares everything but
  `_RESUME_FREE` (`store.check_or_write_config`) and rewrites it with the new free settings.
  """
  store.check_or_write_config(
    os.path.join(workdir, CONFIG_FILE), config, what="the checkpoints of a training run",
    remedy="To start fresh, use another workdir (--workdir) or move this one away; to resume, "
    "rerun with the old settings and data.", ignore=_RESUME_FREE, compare=resuming,
    write=jax.process_index() == 0, rewrite=True)


def read_config(workdir: str) -> dict:
  """The configuration ``<workdir>/config.json`` that `train` wrote for the run in `workdir`.

  Raises:
    FileNotFoundError: `workdir` holds no training run.
    StoreCorruptError: the file is damaged (it is left as it is).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} holds no training run (no {CONFIG_FILE}): pass the "
                            "--workdir of a run of experiments/train.py.")
  return store.read_json(path, remedy="Restore it from a copy, or retrain into a fresh workdir.")


def load_run(workdir: str, *, step: int | None = None, data_dir: str | None = None,
             split: str = "train") -> tuple[nn.Module, dict[str, PyTree], Dataset, dict]:
  """``(model, variables, dataset, config)`` of a training run written by experiments/train.py.

  The model is rebuilt from the run's ``model`` / ``model_kwargs`` and its `split` of ``dataset``
  loaded (from `data_dir` if given, else the run's own ``data_dir``); the variables are those of
  checkpoint `step` (default: the latest complete one, verified against its checksums).
  """
  from landscape_jax.data import load
  from landscape_jax.models import get_model

  config = read_config(workdir)
  missing = [k for k in ("dataset", "model") if k not in config]
  if missing:
    raise ValueError(f"{os.path.join(workdir, CONFIG_FILE)} names no {' or '.join(missing)}: "
                     "it was written by `training.train` directly. Rebuild the model and load "
                     "the variables with `checkpoints.load_variables` instead.")
  data = load(config["dataset"], split, data_dir=data_dir or config.get("data_dir"))
  model = get_model(config["model"], num_classes=data.num_classes,
                    **dict(config.get("model_kwargs") or {}))
  variables = checkpoints.load_variables(os.path.join(workdir, CHECKPOINT_DIR), step=step)
  return model, dict(variables), data, config


def read_metrics(workdir: str) -> list[dict]:
  """The per-epoch records of ``<workdir>/metrics.jsonl`` (a torn last line is skipped)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out


def _rewrite_metrics(workdir: str, records: list[dict]) -> None:
  if jax.process_index() != 0:
    return
  fileio.atomic_write_text(os.path.join(workdir, METRICS_FILE),
                           "".join(json.dumps(r) + "\n" for r in records))


def _append_metrics(workdir: str, record: dict) -> None:
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, METRICS_FILE), "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _say(progress: bool, message: str) -> None:
  if progress:
    tqdm.tqdm.write(message)
  else:
    log.info(message)


def _loop_step(state, totals, images, labels, idx, base_key, *, step_kwargs):
  batch = (images[idx], labels[idx])
  state, m = _train_step(state, batch, jax.random.fold_in(base_key, state.step), **step_kwargs)
  return state, totals + jnp.stack([m["loss"], m["accuracy"]])


def train(model: nn.Module, train_ds: Dataset, test_ds: Dataset | None = None, *, config,
          workdir: str, mesh: Mesh | None = None, progress: bool = True,
          callback: Callable[[int, TrainState, dict], None] | None = None,
          ) -> tuple[TrainState, list[dict]]:
  """Trains `model` on `train_ds`, checkpointing into `workdir`; resumes if checkpoints exist.

  Each epoch is a seeded permutation of the training split in batches of ``config.batch_size``
  (the last incomplete batch is dropped), with optional crop+flip augmentation on the device.
  After every epoch a JSON line is appended to ``<workdir>/metrics.jsonl``: ``epoch`` (1-based),
  ``step``, ``lr`` (of the epoch's last step), ``train_loss`` / ``train_accuracy`` (mean over the
  epoch's batches, training mode), ``test_loss`` / ``test_accuracy`` (exact, inference mode, every
  ``eval_every_epochs``), ``images_per_sec`` (training only; epoch 1 includes compilation) and
  ``time``. Checkpoints (`TrainState` as a state dict) go to ``<workdir>/checkpoints/<step>``: the
  initial point, every ``checkpoint_every_epochs`` epochs and the last epoch; all are kept so the
  run leaves a trajectory (`checkpoints.load_trajectory`).

  Args:
    model: a linen module (``model.apply(variables, x, train=...)``).
    train_ds, test_ds: `Dataset` splits (uint8 images); test_ds may be None.
    config: a `ml_collections.ConfigDict` or mapping with the fields of `DEFAULTS`.
    workdir: output directory. If it holds checkpoints, training resumes from the latest one
      (after checking that ``config.json`` matches: the configuration and the sha256 digests of
      the training and test splits' images and labels, ``train_data_sha256`` /
      ``test_data_sha256``; the initial variables come from ``config.seed``) and
      ``metrics.jsonl`` is cut back to it.
    mesh: the devices to shard each batch over: a 1-D mesh (any axis name, e.g. `make_mesh()`
      or ``lj.make_mesh()``) or a mesh with a ``"data"`` axis (default: every device).
    progress: show a tqdm progress bar.
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
  cfg = {k: _cfg(config, k) for k in DEFAULTS}
  batch_size, num_epochs, seed = int(cfg["batch_size"]), int(cfg["num_epochs"]), int(cfg["seed"])
  n = len(train_ds)
  if batch_size <= 0 or num_epochs <= 0:
    raise ValueError(f"batch_size and num_epochs must be positive, got {batch_size}, {num_epochs}.")
  if batch_size > n:
    raise ValueError(f"batch_size {batch_size} is larger than the training split ({n} examples).")
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

  os.makedirs(workdir, exist_ok=True)
  ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(axis))

  init_key, base_key = jax.random.split(jax.random.key(seed))
  state = create_train_state(model, init_key, train_ds.images[:1], tx)
  for ds in (train_ds, test_ds) if test_ds is not None else (train_ds,):
    check_model_fits(model, state.variables, ds)  # image shape and number of classes
  state = jax.device_put(state, replicated)
  resume_step = checkpoints.latest_step(ckpt_dir)
  full_config = _config_dict({**_config_dict(config), **cfg, **_data_digests(train_ds, test_ds)})
  _check_config(workdir, full_config, resuming=resume_step is not None)
  if resume_step is None:
    _rewrite_metrics(workdir, [])
    checkpoints.save(ckpt_dir, 0, state)
    start_epoch = 0
  else:
    if resume_step % steps_per_epoch:
      raise ValueError(
        f"Latest checkpoint step {resume_step} in {ckpt_dir} is not a whole number of epochs of "
        f"{steps_per_epoch} steps: it comes from another batch size or dataset. Use a fresh "
        "workdir.")
    state = checkpoints.restore(ckpt_dir, state, step=resume_step)
    start_epoch = resume_step // steps_per_epoch
    _rewrite_metrics(workdir, [r for r in read_metrics(workdir)
                               if r.get("epoch", 0) <= start_epoch])
    _say(progress, f"Resuming {workdir} from step {resume_step} (epoch {start_epoch}).")

  images = jax.device_put(train_ds.images, replicated)
  labels = jax.device_put(train_ds.labels, replicated)
  test_split = None if test_ds is None else _device_split(test_ds, int(cfg["eval_batch_size"]),
                                                          mesh, axis)
  step_kwargs = dict(model=model, tx=tx, mean=jnp.asarray(train_ds.mean),
                     std=jnp.asarray(train_ds.std), augment=bool(cfg["augment"]),
                     pad=int(cfg["augment_pad"]), flip=bool(cfg["augment_flip"]))
  step_fn = jax.jit(functools.partial(_loop_step, step_kwargs=step_kwargs),
                    donate_argnums=(0, 1), out_shardings=replicated)

  bar = tqdm.tqdm(total=num_epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
                  unit="step", disable=not progress, dynamic_ncols=True, desc="train")
  try:
    for epoch in range(start_epoch, num_epochs):
      t0 = time.perf_counter()
      order = np.random.default_rng([seed, epoch]).permutation(n)
      totals = jax.device_put(jnp.zeros(2, jnp.float32), replicated)
      for i in range(steps_per_epoch):
        idx = jax.device_put(order[i * batch_size:(i + 1) * batch_size].astype(np.int32),
                             batch_sharding)
        state, totals = step_fn(state, totals, images, labels, idx, base_key)
        bar.update(1)
        if (i + 1) % log_every == 0:
          loss, acc = np.asarray(totals) / (i + 1)
          bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}",
                          img_s=f"{(i + 1) * batch_size / (time.perf_counter() - t0):.0f}")
      train_loss, train_acc = (float(v) for v in np.asarray(totals) / steps_per_epoch)
      seconds = time.perf_counter() - t0
      if not math.isfinite(train_loss):
        raise FloatingPointError(
          f"Training loss became {train_loss} in epoch {epoch + 1} of {workdir}; lower the "
          "learning rate or check the data. The last good checkpoint is kept.")
      step = int(state.step)
      record = {"epoch": epoch + 1, "step": step, "lr": float(schedule(step - 1)),
                "train_loss": train_loss, "train_accuracy": train_acc}
      if test_split is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == num_epochs):
        res = _evaluate(model, state.variables, test_split, jnp.asarray(test_ds.mean),
                        jnp.asarray(test_ds.std))
        record.update(test_loss=float(res["loss"]), test_accuracy=float(res["accuracy"]))
      record.update(images_per_sec=steps_per_epoch * batch_size / seconds, time=time.time())
      _append_metrics(workdir, record)
      if (epoch + 1) % ckpt_every == 0 or epoch + 1 == num_epochs:
        checkpoints.save(ckpt_dir, step, state)
      bar.set_postfix(loss=f"{train_loss:.4f}", acc=f"{train_acc:.4f}",
                      test_acc=f"{record.get('test_accuracy', float('nan')):.4f}",
                      img_s=f"{record['images_per_sec']:.0f}")
      _say(progress, "epoch {epoch}: {summary}".format(epoch=epoch + 1, summary=", ".join(
        f"{k}={v:.4g}" for k, v in record.items() if k not in ("epoch", "time"))))
      if callback is not None:
        callback(epoch + 1, state, record)
  finally:
    bar.close()
  return state, read_metrics(workdir)
