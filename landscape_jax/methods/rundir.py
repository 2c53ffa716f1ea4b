"""Run directories: the configuration, metrics and data identity of a resumable training run.

A run directory holds ``config.json`` (the configuration with the sha256 of the data it trained
on; a resumed run with another one is refused), ``metrics.jsonl`` (one JSON record per epoch, cut
back to the restored epoch on resume) and ``checkpoints/`` (see `methods.checkpoints`).

A run directory may be remote (``gs://bucket/runs/resnet``): its files go through `etils.epath`
(`core.fileio`); ``metrics.jsonl`` is then rewritten whole at every epoch, as object stores
cannot append.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from landscape_jax.adapters.data import Dataset, load
from landscape_jax.core import fileio, identity, store
from landscape_jax.methods import checkpoints
from landscape_jax.models import get_model

__all__ = [
  "append_metrics",
  "batch_shapes",
  "check_config",
  "check_keys",
  "CHECKPOINT_DIR",
  "config_dict",
  "CONFIG_FILE",
  "data_digest",
  "data_digests",
  "load_run",
  "loss_fn_identity",
  "METRICS_FILE",
  "model_identity",
  "optimizer_identity",
  "read_config",
  "read_metrics",
  "RESUME_FREE",
  "rewrite_metrics",
  "run_lock",
]

PyTree = Any
log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Keys that may change between a run and its resumption without mixing results.
RESUME_FREE = ("eval_batch_size", "log_every_steps", "data_dir", "eval_every_epochs")


def run_lock(workdir: str, *, name: str, what: str):
  """The write lock of a run directory (`fileio.exclusive`, lock file ``workdir/name``) on the
  process that writes (process 0); a second writer gets `fileio.BusyError` at once."""
  import contextlib

  if jax.process_index() != 0:
    return contextlib.nullcontext()
  return fileio.exclusive(workdir, name=name, what=what)


def config_dict(config) -> dict:
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.loads(json.dumps(dict(config), default=str))


def check_keys(config, known, *, what: str) -> None:
  """Refuses a configuration key that is not in `known`, naming the closest known key.

  A misspelt key (``learning_rte``) would otherwise be ignored and its default used in silence.

  Raises:
    ValueError: ``"Unknown key 'learning_rte' in <what>; did you mean 'learning_rate'? ..."``.
  """
  import difflib

  keys = list(config_dict(config)) if config is not None else []
  known = sorted(set(known))
  for key in keys:
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
      hint = f"did you mean {close[0]!r}? " if close else ""
      raise ValueError(f"Unknown key {key!r} in {what}; {hint}The known keys are: "
                       f"{', '.join(known)}.")


def data_digests(train_data, test_data) -> dict[str, str | None]:
  """sha256 (`identity.tree_digest`) of the inputs and targets of the splits a run uses (each a
  `Dataset` or an ``(inputs, targets)`` pair; `data_digest`)."""
  return {"train_data_sha256": data_digest(train_data),
          "test_data_sha256": None if test_data is None else data_digest(test_data)}


def check_config(workdir: str, config: dict, resuming: bool) -> None:
  """Refuses to resume a run with another configuration or data; (re)writes ``config.json``.

  A fresh run (no checkpoints) replaces the file; a resumed one compares everything but
  `RESUME_FREE` (`store.check_or_write_config`) and rewrites it with the new free settings.
  """
  store.check_or_write_config(
    fileio.join(workdir, CONFIG_FILE), config, what="the checkpoints of a training run",
    remedy="To start fresh, use another workdir (--workdir) or move this one away; to resume, "
    "rerun with the old settings and data.", ignore=RESUME_FREE, compare=resuming,
    write=jax.process_index() == 0, rewrite=True)


def read_config(workdir: str) -> dict:
  """The configuration ``<workdir>/config.json`` that `train` wrote for the run in `workdir`.

  Raises:
    FileNotFoundError: `workdir` holds no training run.
    StoreCorruptError: the file is damaged (it is left as it is).
  """
  path = fileio.join(workdir, CONFIG_FILE)
  if not fileio.as_path(path).exists():
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
  config = read_config(workdir)
  missing = [k for k in ("dataset", "model") if k not in config]
  if missing:
    raise ValueError(f"{fileio.join(workdir, CONFIG_FILE)} names no {' or '.join(missing)}: "
                     "it was written by `training.train` directly. Rebuild the model and load "
                     "the variables with `checkpoints.load_variables` instead.")
  data = load(config["dataset"], split, data_dir=data_dir or config.get("data_dir"))
  model = get_model(config["model"], num_classes=data.num_classes,
                    **dict(config.get("model_kwargs") or {}))
  variables = checkpoints.load_variables(fileio.join(workdir, CHECKPOINT_DIR), step=step)
  return model, dict(variables), data, config


def read_metrics(workdir: str) -> list[dict]:
  """The per-epoch records of ``<workdir>/metrics.jsonl`` (a torn last line is skipped)."""
  path = fileio.join(workdir, METRICS_FILE)
  if not fileio.as_path(path).exists():
    return []
  out = []
  for line in fileio.read_bytes(path).decode("utf-8", errors="replace").splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return out


def rewrite_metrics(workdir: str, records: list[dict]) -> None:
  if jax.process_index() != 0:
    return
  fileio.atomic_write_text(fileio.join(workdir, METRICS_FILE),
                           "".join(json.dumps(r) + "\n" for r in records))


def append_metrics(workdir: str, record: dict) -> None:
  if jax.process_index() != 0:
    return
  fileio.append_text(fileio.join(workdir, METRICS_FILE), json.dumps(record) + "\n")



def _pair(data) -> tuple:
  return (data.images, data.labels) if isinstance(data, Dataset) else tuple(data)


def data_digest(data) -> str:
  """sha256 (`identity.tree_digest`) of a split's inputs and targets: the data a run trained on
  (a `Dataset`'s images and labels, or an ``(inputs, targets)`` pair of pytrees)."""
  inputs, targets = _pair(data)
  return identity.tree_digest({"images": inputs, "labels": targets})


def _shapes(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def batch_shapes(data, batch_size: int) -> tuple:
  """``(inputs, targets)`` shapes of one training batch of `data` (a `Dataset` or an
  ``(inputs, targets)`` pair: what a `loss_fn` is called with), as `jax.ShapeDtypeStruct`s."""
  def one(a):
    dtype = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
    return jax.ShapeDtypeStruct((batch_size, *np.shape(a)[1:]), dtype)
  return jax.tree.map(one, _pair(data))


def loss_fn_identity(loss_fn: Callable, identity_name: str | None, *,
                     params: PyTree | None = None, batch: tuple | None = None) -> dict:
  """`identity.callable_identity` of a training run's `loss_fn`, with a remedy if it cannot be
  determined (pass ``identity=`` to the training function).

  With `params` and `batch` (arrays or shapes: what the loss is called with) the traced program
  of ``loss_fn(params, batch)`` is part of it (``"traced"``): the model's forward pass, helpers,
  globals and dtypes, not only the source of `loss_fn` itself.
  """
  args = None if params is None or batch is None else (_shapes(params), batch)
  try:
    return identity.callable_identity(loss_fn, identity=identity_name, name="loss_fn", args=args)
  except identity.IdentityError as e:
    raise identity.IdentityError(
      f"A resumable training run (workdir given) records the exact identity of its loss_fn, and "
      f"this one cannot be determined: {e} Pass identity='<a name you guarantee identifies "
      "loss_fn and what it holds>' to the training function (train_curve, train_sgd, "
      "fast_geometric_ensemble), or run without a workdir.") from e


def model_identity(model: nn.Module, variables: PyTree, sample_shape) -> dict:
  """The identity of a linen model's computation: the traced programs of its forward pass in
  inference mode and in training mode (BatchNorm statistics updated, a dropout key), at the shapes
  of `variables` and of a float32 batch of `sample_shape` (a shape tuple, or a pytree of
  `jax.ShapeDtypeStruct`s for other inputs), and its class name.

  An edited forward pass (relu to tanh), a helper or module-level constant it reads, or another
  computation dtype (float32 to bfloat16) changes the traced programs; the parameters' values do
  not enter (a checkpoint holds those).
  """
  v = _shapes(variables)
  if isinstance(sample_shape, tuple) and all(isinstance(d, int) for d in sample_shape):
    x = jax.ShapeDtypeStruct(tuple(sample_shape), np.float32)
  else:
    x = sample_shape
  key = jax.eval_shape(lambda: jax.random.key(0))

  def inference(v, x):
    return model.apply(v, x, train=False)

  def training(v, x, k):
    if "batch_stats" in v:
      return model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k})
    return model.apply(v, x, train=True, rngs={"dropout": k})

  return {"class": type(model).__qualname__,
          "inference_traced": identity.traced_identity(inference, v, x, name="model (inference)"),
          "training_traced": identity.traced_identity(training, v, x, key,
                                                      name="model (training)")}


def optimizer_identity(tx, params: PyTree) -> dict:
  """`identity.optimizer_identity` of an optax transformation for `params` (a training run's
  ``optimizer_code``: its hyperparameters, schedule and update code)."""
  return identity.optimizer_identity(tx, _shapes(params))
