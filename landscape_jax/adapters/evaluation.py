"""Exact evaluation over a device-resident split, and the `loss_fn` / `metric_fn` adapters.

The core of the library works on two kinds of user function:

* ``loss_fn(params, batch) -> scalar``: a minibatch objective, ``batch = (inputs, targets)``;
* ``metric_fn(params) -> dict[str, scalar]``: a full evaluation, jit-able and vmappable.

`make_loss_fn` and `make_metric_fn` build them for any model (`adapters.frameworks`: Flax linen,
NNX, Equinox, a plain ``apply_fn(params, inputs)``, or a `Model` with state) and any data: a
`Dataset` of uint8 images (normalised inside the compiled function) or an ``(inputs, targets)``
pair of pytrees of arrays sharing the leading example axis, scored by a `Loss`
(`adapters.losses`: cross-entropy by default, token-level cross-entropy, MSE). The split is held
on the device, padded to a whole number of batches and walked with `lax.scan`; padded examples
are masked out, so every metric is an exact ratio of sums over the split, for any split size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from landscape_jax.adapters import folding
from landscape_jax.adapters.data import Dataset, normalize_images
from landscape_jax.adapters.frameworks import as_model
from landscape_jax.adapters.losses import CROSS_ENTROPY, Loss, check_loss
from landscape_jax.backends.cpu import fusion, onednn_build
from landscape_jax.core import sharding as shd
from landscape_jax.core import streaming
from landscape_jax.core.splits import (
  DeviceSplit,
  batch_layout,
  device_split,
  host_targets,
  num_examples,
)

__all__ = [
  "apply_checked",
  "batch_objective",
  "check_classes",
  "check_model_fits",
  "correct",
  "cross_entropy",
  "evaluate",
  "evaluate_split",
  "host_chunk",
  "inference_apply",
  "inference_forward",
  "make_loss_fn",
  "make_metric_fn",
  "model_variables",
  "named_splits",
  "prepare_inputs",
  "split_metrics",
  "split_sums",
  "SplitData",
  "use_onednn",
  "WEIGHT",
]

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy -log softmax(logits)[label] (integer labels)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example 0/1 float: whether the arg-max logit is the label."""
  return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def prepare_inputs(inputs: PyTree, norm) -> PyTree:
  """The model inputs of a batch: uint8 images normalised with ``norm = (mean, std)`` inside the
  compiled function (`data.normalize_images`), or the inputs unchanged when `norm` is None."""
  return inputs if norm is None else normalize_images(inputs, *norm)


def split_metrics(outputs_fn: Callable[[PyTree], Any], split: DeviceSplit,
                  loss: Loss = CROSS_ENTROPY, norm=None) -> dict[str, jax.Array]:
  """Exact metrics of ``outputs_fn`` over a padded split, in one `lax.scan` over its batches.

  ``metric = sum_i m_i v_i / sum_i m_i w_i`` for every metric of `loss` (`adapters.losses`:
  ``v_i`` the example's value, ``w_i`` its weight, 1 unless the loss is weighted, ``m`` the
  padding mask), summed batch by batch in float32. Pure and traceable (vmap over the parameters
  that `outputs_fn` closes over works).

  Args:
    outputs_fn: ``outputs_fn(inputs) -> outputs`` for one batch of model inputs.
    split: from `device_split`.
    loss: the `Loss` (default `CROSS_ENTROPY`: ``loss`` and ``accuracy``).
    norm: ``(mean, std)`` to normalise uint8 image inputs with, or None (`prepare_inputs`).
  """
  sums = split_sums(outputs_fn, split, loss, norm)
  total = sums[WEIGHT] if loss.weighted else (
    split.num_examples if split.mask is None else jnp.sum(split.mask))
  return {k: sums[k] / total for k in loss.metrics}


WEIGHT = "__weight__"  # the name of the weight sum of a weighted loss (`split_sums`)


def split_sums(outputs_fn: Callable[[PyTree], Any], split: DeviceSplit,
               loss: Loss = CROSS_ENTROPY, norm=None) -> dict[str, jax.Array]:
  """The sums behind `split_metrics`: ``{metric: sum_i m_i v_i}`` over a padded split (and
  ``{WEIGHT: sum_i m_i w_i}`` for a weighted loss), float32, batch after batch in one
  `lax.scan` (arguments as in `split_metrics`; a split of `make_batches`, unpadded, also adds
  its ``rest`` batch)."""
  names = loss.metrics

  def body(carry, batch):
    (x, y), m = batch
    values, weights = loss.sums(outputs_fn(prepare_inputs(x, norm)), y)
    missing = [k for k in names if k not in values]
    if missing or (weights is None) == loss.weighted:
      raise ValueError(f"The loss's sums returned metrics {sorted(values)} and "
                       f"{'no ' if weights is None else ''}weights; the Loss declares metrics "
                       f"{names} and weighted={loss.weighted}.")
    sums = [carry[i] + jnp.sum(values[k] * m) for i, k in enumerate(names)]
    if loss.weighted:
      sums.append(carry[-1] + jnp.sum(weights * m))
    return tuple(sums), None

  zero = jnp.zeros((), jnp.float32)
  mask = split.mask
  if mask is None:
    mask = jnp.ones(jax.tree.leaves(split.batches)[0].shape[:2], jnp.float32)
  sums, _ = jax.lax.scan(body, (zero,) * (len(names) + int(loss.weighted)),
                         (split.batches, mask))
  if split.rest is not None:
    rest_mask = jnp.ones(jax.tree.leaves(split.rest)[0].shape[:1], jnp.float32)
    sums, _ = body(sums, (split.rest, rest_mask))
  out = {k: sums[i] for i, k in enumerate(names)}
  if loss.weighted:
    out[WEIGHT] = sums[-1]
  return out


def evaluate_split(apply_fn: ApplyFn, variables: PyTree, split: DeviceSplit, mean, std,
                   ) -> dict[str, jax.Array]:
  """Mean cross-entropy and accuracy of ``apply_fn(variables, x)`` over a padded image split.

  Pure and traceable (vmap over `variables` works). loss = sum_i m_i CE_i / sum_i m_i,
  accuracy = sum_i m_i [argmax = y_i] / sum_i m_i, with m the padding mask (`split_metrics` with
  `CROSS_ENTROPY`; the images are normalised with `mean` and `std`).
  """
  return split_metrics(functools.partial(apply_fn, variables), split, CROSS_ENTROPY, (mean, std))


def evaluate(apply_fn: ApplyFn, variables: PyTree, images, labels, *, batch_size: int = 256,
             mean=0.0, std=1.0) -> dict[str, float]:
  """Exact mean cross-entropy and accuracy over a whole split, in one jitted `lax.scan`.

  Args:
    apply_fn: ``apply_fn(variables, normalised_images) -> logits``, e.g.
      ``functools.partial(model.apply, train=False)``.
    variables: the model variables (``{"params": ..., "batch_stats": ...}``).
    images: (N, H, W, C) uint8 (or float) images; labels: (N,) integers.
    batch_size: examples per batch; the last batch is padded and masked.
    mean, std: per-channel normalisation in [0, 1] units (see `data.normalize_images`).

  Returns:
    ``{"loss": mean cross-entropy, "accuracy": fraction correct}`` as Python floats.
  """
  split = device_split(images, labels, batch_size=batch_size)
  out = _jit_evaluate(apply_fn, variables, split, jnp.asarray(mean), jnp.asarray(std))
  return {k: float(v) for k, v in out.items()}


@functools.partial(jax.jit, static_argnums=0)
def _jit_evaluate(apply_fn, variables, split, mean, std):
  return evaluate_split(apply_fn, variables, split, mean, std)


def inference_apply(model: nn.Module) -> ApplyFn:
  """``apply_fn(variables, x) = model.apply(variables, x, train=False)`` (hashable for jit)."""
  return functools.partial(model.apply, train=False)


def _inference_backend(forward, onednn: bool, compute_dtype):
  """`forward` with its convolutions on oneDNN (at `compute_dtype`), or, without oneDNN, with its
  convolutions and products at `compute_dtype` (`backends.cpu.fusion`); unchanged for float32
  without oneDNN. Applied to inference-mode forward passes only."""
  if onednn_build.is_auto(compute_dtype):
    compute_dtype = onednn_build.auto_compute_dtype(onednn=onednn)
  if onednn:
    return fusion.with_onednn_convolutions(forward, compute_dtype=compute_dtype)
  if compute_dtype is not None:
    return fusion.with_compute_dtype(forward, compute_dtype)
  return forward


_MISFIT = (flax.errors.ScopeParamShapeError, flax.errors.ScopeParamNotFoundError)


def apply_checked(model: nn.Module, num_classes: int | None, variables, x, train: bool = False,
                   fold_batchnorm: bool = False, onednn: bool = False, compute_dtype=None,
                   **kwargs):
  """``model.apply(variables, x, train=train)`` with clear errors for inputs that do not fit.

  Checked while tracing (shapes are static, nothing is added to the compiled program): images
  whose size or channels do not fit the parameters, parameters of another model, and (with
  `num_classes`) a model with fewer logits than the dataset has classes, whose cross-entropy
  would otherwise be NaN for the labels out of its range. With `fold_batchnorm` (inference only)
  each BatchNorm that is the only consumer of a conv/dense output is folded into that layer, if the
  build-time check agrees (`adapters.folding.fuse_batchnorm`); with `onednn` (inference only)
  the convolutions run on oneDNN (`backends.cpu.onednn`); `compute_dtype` as in `make_metric_fn`.
  """
  inference = not train and not kwargs
  try:
    if fold_batchnorm and inference and "batch_stats" in variables:
      forward = folding.fuse_batchnorm(model, variables, x)
    else:
      forward = functools.partial(model.apply, train=train, **kwargs)
    if inference:
      forward = _inference_backend(forward, onednn, compute_dtype)
    logits = forward(variables, x)
  except _MISFIT as e:
    raise ValueError(
      f"The parameters do not fit {type(model).__name__} applied to images of shape "
      f"{tuple(x.shape[1:])} (H, W, C): {str(e).split(' (https')[0]}. Either the images do not "
      "match the input the model was initialised for (image size or number of channels: use the "
      "dataset it was built for), or the parameters come from another model (a checkpoint of "
      "another architecture or width).") from e
  out = logits[0] if isinstance(logits, tuple) else logits
  check_classes(type(model).__name__, out, num_classes)
  return logits


def check_classes(name: str, outputs, num_classes: int | None) -> None:
  """Raises a ValueError if `outputs` has fewer entries on its last axis than `num_classes`
  (labels out of the model's range would give a NaN loss). Trace-time (shapes only)."""
  if num_classes is not None and np.shape(outputs)[-1] < num_classes:
    raise ValueError(
      f"{name} outputs {np.shape(outputs)[-1]} logits but the dataset has labels "
      f"0..{num_classes - 1} ({num_classes} classes): labels out of the model's range would give a "
      f"NaN loss. Build the model with num_classes={num_classes}.")


def check_model_fits(model: nn.Module, variables: PyTree, data: Dataset) -> None:
  """Raises a ValueError if `data` does not fit the model (image size/channels, classes).

  Abstract evaluation only (`jax.eval_shape` of one image): no computation, no device memory.
  """
  x = jax.ShapeDtypeStruct((1, *data.image_shape), jnp.float32)
  jax.eval_shape(functools.partial(apply_checked, model, data.num_classes), variables, x)


def model_variables(params: PyTree, batch_stats: PyTree | None) -> dict[str, PyTree]:
  """``{"params": params}``, with ``"batch_stats"`` when given: the variables of ``model.apply``."""
  return {"params": params} if batch_stats is None else {"params": params,
                                                          "batch_stats": batch_stats}


# ------------------------------------------------------------------------------------ data


class SplitData(NamedTuple):
  """One split on the host, as the builders use it.

  Attributes:
    inputs: a pytree of (N, ...) arrays (uint8 NHWC images for a `Dataset`).
    targets: a pytree of (N, ...) arrays (int labels for a `Dataset`).
    norm: ``(mean, std)`` float32 arrays normalising image inputs, or None (inputs as given).
    num_classes: the number of classes the targets select from, or None.
  """

  inputs: PyTree
  targets: PyTree
  norm: tuple[jax.Array, jax.Array] | None
  num_classes: int | None


def _split_data(data, loss: Loss, name: str) -> SplitData:
  if isinstance(data, Dataset):
    return SplitData(data.images, data.labels,
                     (jnp.asarray(data.mean), jnp.asarray(data.std)), int(data.num_classes))
  if isinstance(data, tuple | list) and len(data) == 2:
    inputs, targets = data
    n = num_examples(inputs, targets, name=name)
    if n == 0:
      raise ValueError(f"{name} is empty; cannot evaluate on an empty split.")
    if any(getattr(x, "dtype", None) == np.uint8 for x in jax.tree.leaves(inputs)):
      raise ValueError(
        f"The inputs of {name} are uint8 but an (inputs, targets) pair carries no normalisation: "
        "uint8 inputs are images, which must be normalised (make_loss_fn refuses them the same "
        "way without mean= and std=). Pass a Dataset (it carries its mean and std), or "
        "normalise the images yourself (e.g. lj.data.normalize_images(x, mean, std)) and pass "
        "floats.")
    num_classes = None
    if loss.classes is not None:
      classes = scored_classes(loss, jax.tree.map(np.asarray, targets), name)
      num_classes = int(classes.max()) + 1 if classes.size else None
    return SplitData(inputs, targets, None, num_classes)
  raise TypeError(
    f"{name} must be a Dataset (uint8 images with labels) or an (inputs, targets) pair of arrays "
    f"or pytrees of arrays with a leading example axis; got {type(data).__name__}.")


def scored_classes(loss: Loss, targets, name: str) -> np.ndarray:
  """The class indices the scored targets select (host arrays), checked: integers, none negative.

  Negative labels (``-1``, the usual "unlabelled" marker) are refused: cross-entropy would score
  them (``optax`` gives them a one-hot of zeros: the loss of no class) without a word. The one
  documented way to leave targets out is `TOKEN_CROSS_ENTROPY`'s mask: masked tokens (mask 0) are
  not checked. Remove unlabelled examples, or use such a mask.

  Raises:
    ValueError: non-integer or negative classes, naming the first offending example.
  """
  classes = np.asarray(loss.classes(targets))
  if not np.issubdtype(classes.dtype, np.integer):
    raise ValueError(f"The targets of {name} must be integer classes for this loss, got "
                     f"{classes.dtype}; for real-valued targets use loss=MSE.")
  scored = np.ones(classes.shape, bool)
  if isinstance(targets, tuple | list) and len(targets) == 2 and loss.weighted:
    scored = np.broadcast_to(np.asarray(targets[1]) != 0, classes.shape)
  bad = np.argwhere(scored & (classes < 0))
  if bad.size:
    where = tuple(int(i) for i in bad[0])
    raise ValueError(
      f"The targets of {name} hold negative class labels ({int(classes[where])} at index "
      f"{where[0] if len(where) == 1 else where}; {len(bad)} in all), e.g. -1 for unlabelled "
      "examples: cross-entropy would score them as a class. Remove those examples (or, for "
      "sequences, give TOKEN_CROSS_ENTROPY a (tokens, mask) pair with mask 0 there).")
  return classes[scored]


def named_splits(data, loss: Loss = CROSS_ENTROPY) -> dict[str, SplitData]:
  """``{prefix: SplitData}`` of a builder's `data` argument.

  `data` is one split (a `Dataset` or an ``(inputs, targets)`` pair; prefix ``""``) or a mapping
  such as ``{"train": ..., "test": ...}`` of them (the keys become metric prefixes).
  """
  if isinstance(data, Mapping):
    if not data:
      raise ValueError("data is an empty mapping; give at least one split, e.g. "
                       "{'test': (inputs, targets)}.")
    return {str(k): _split_data(v, loss, f"data[{k!r}]") for k, v in data.items()}
  return {"": _split_data(data, loss, "data")}


def _num_classes(named: Mapping[str, SplitData]) -> int | None:
  counts = [d.num_classes for d in named.values() if d.num_classes is not None]
  return max(counts) if counts else None


# ------------------------------------------------------------------------------------ forward


def _linen_forward(apply_fn, params, batch_stats, x):
  return apply_fn(model_variables(params, batch_stats), x)


def _model_outputs(apply, params, state, x):
  return apply(params, state, x, False)[0]


def _model_forward(apply, num_classes, onednn, compute_dtype, params, state, x):
  forward = _inference_backend(functools.partial(_model_outputs, apply), onednn, compute_dtype)
  out = forward(params, state, x)
  check_classes("The model", out, num_classes)
  return out


def inference_forward(model, *, batch_stats: PyTree = None, num_classes: int | None = None,
                      fold_batchnorm: bool = True, onednn: bool = False, compute_dtype=None,
                      ) -> tuple[Callable[[PyTree, PyTree, PyTree], Any], PyTree]:
  """``(forward, state)``: ``forward(params, state, inputs) -> outputs`` in inference mode for any
  model (`adapters.frameworks`), and the state to call it with.

  For a linen module ``forward`` is `apply_checked` (BatchNorm folded where that is exact, with
  `fold_batchnorm`) and the state its `batch_stats`; for every other model it is
  ``Model.apply(params, state, inputs, False)`` (no folding: BatchNorm folding is linen-only) and
  the state the model's own unless `batch_stats` replaces it. With `onednn` the convolutions run
  on oneDNN; `compute_dtype` as in `make_metric_fn` (``"auto"`` resolved for `onednn`).
  `num_classes` adds the trace-time check that the outputs have enough classes.
  """
  compute_dtype = (onednn_build.auto_compute_dtype(onednn=bool(onednn))
                   if onednn_build.is_auto(compute_dtype)
                   else onednn_build.canonical_compute_dtype(compute_dtype))
  m = as_model(model, batch_stats=batch_stats)
  if m is None:
    apply_fn = functools.partial(apply_checked, model, num_classes,
                                 fold_batchnorm=bool(fold_batchnorm), onednn=bool(onednn),
                                 compute_dtype=compute_dtype)
    return functools.partial(_linen_forward, apply_fn), batch_stats
  return (functools.partial(_model_forward, m.apply, num_classes, bool(onednn), compute_dtype),
          m.state)


# ------------------------------------------------------------------------------------ builders


def batch_objective(loss: Loss, outputs, targets) -> jax.Array:
  """The minibatch objective of `loss`: ``sum_i v_i / sum_i w_i`` over the batch (the mean
  ``v_i`` when the loss is not weighted).

  Called with concrete targets (not under `jit`), class targets are checked first: negative labels
  (`scored_classes`: -1 would be scored as a class, a finite wrong loss) are a ValueError. Labels
  beyond the model's outputs give a NaN loss, which the Hessian routines and training refuse.
  Traced targets cannot be checked (the builders check their data on the host instead).
  """
  leaves = jax.tree.leaves(targets)
  if loss.classes is not None and leaves and not any(
      isinstance(x, jax.core.Tracer) for x in leaves):
    scored_classes(loss, jax.tree.map(np.asarray, targets), "the batch")
  values, weights = loss.sums(outputs, targets)
  if loss.weighted:
    return jnp.sum(values["loss"]) / jnp.sum(weights)
  return jnp.mean(values["loss"])


def _norm(mean, std):
  if mean is None and std is None:
    return None
  if mean is None or std is None:
    raise ValueError("Give both mean and std (the image normalisation of a Dataset), or neither "
                     "(inputs used as given).")
  return jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)


def _loss_inputs(inputs, norm):
  if norm is None and any(getattr(x, "dtype", None) == jnp.uint8 for x in jax.tree.leaves(inputs)):
    raise ValueError(
      "The inputs are uint8 but no normalisation was given: uint8 inputs are images, which are "
      "normalised inside the loss. Pass mean= and std= (the training Dataset's .mean and .std) to "
      "make_loss_fn, or convert the inputs to another dtype.")
  return prepare_inputs(inputs, norm)


def make_loss_fn(model, *, mean=None, std=None, loss: Loss | None = None,
                 batch_stats: PyTree | None = None, train: bool = False,
                 fold_batchnorm: bool = True) -> Callable[[PyTree, tuple], jax.Array]:
  """Builds ``loss_fn(params, batch) -> scalar``, the minibatch objective of any model.

  ``loss_fn(params, (inputs, targets)) = sum_i v_i / sum_i w_i`` over the batch for the
  `Loss` (default `CROSS_ENTROPY`: the mean cross-entropy; `TOKEN_CROSS_ENTROPY`: the mean over
  the batch's scored tokens; `MSE`: the mean squared error).

  Args:
    model: a linen module (``model.apply(variables, x, train=...)``), an NNX or Equinox module, an
      `adapters.frameworks.Model`, or a plain ``apply_fn(params, inputs) -> outputs``.
    mean, std: per-channel normalisation of uint8 image inputs (a `Dataset`'s); None for inputs
      used as given (uint8 inputs then raise: they are images that need normalising).
    loss: the `Loss` (`adapters.losses`).
    batch_stats: the model state used when ``train=False`` (linen BatchNorm statistics; an NNX
      module's non-parameter state or an Equinox ``eqx.nn.State`` replacing the model's own).
    train: if True, BatchNorm uses the statistics of the batch (training mode; the updated running
      statistics are discarded, as Garipov et al. recompute them afterwards). Dropout is off for
      NNX and Equinox models (the function has no random key).
    fold_batchnorm: linen models in inference mode only: each BatchNorm that is the only consumer
      of a conv/dense output is folded into that layer's weights at every call
      (`adapters.folding.fuse_batchnorm`, as `make_metric_fn` does). The same function of
      ``params`` up to float32 rounding, and so are its derivatives (they flow through the
      weight-sized fold): a gradient or a Hessian-vector product (Lanczos, spectral density)
      skips BatchNorm's passes over the activations. A second derivative along one direction
      (`hessian_trace`'s forward-over-forward samples) would run slower folded, since the
      folded weight ``W * a(gamma)`` has one and each layer one more convolution; the function
      names its unfolded twin for those (`core.hessian.forward_over_forward_loss`;
      docs/performance.md). False: BatchNorm as the model computes it.

  ``batch = (inputs, targets)`` (for images: ``(uint8 images (b, H, W, C), int labels (b,))``).
  The result is a `jax.tree_util.Partial` (a pytree), so it can be passed to jitted functions as
  an argument.
  """
  loss = check_loss(loss)
  norm = _norm(mean, std)
  m = as_model(model, batch_stats=batch_stats)
  if m is None:
    fn = functools.partial(_loss, model, train, bool(fold_batchnorm), loss)
    if fold_batchnorm:  # its twin for forward-over-forward derivatives (hessian_trace)
      fn.forward_over_forward = functools.partial(_loss, model, train, False, loss)
    return jax.tree_util.Partial(fn, norm, batch_stats)
  return jax.tree_util.Partial(functools.partial(_model_loss, m.apply, bool(train), loss), norm,
                               m.state)


def _loss(model, train, fold, loss, norm, batch_stats, params, batch):
  inputs, targets = batch
  x = _loss_inputs(inputs, norm)
  variables = model_variables(params, batch_stats)
  if train and batch_stats is not None:
    logits, _ = apply_checked(model, None, variables, x, train=True, mutable=["batch_stats"])
  else:
    logits = apply_checked(model, None, variables, x, train=train, fold_batchnorm=fold)
  return batch_objective(loss, logits, targets)


def _model_loss(apply, train, loss, norm, state, params, batch):
  inputs, targets = batch
  outputs, _ = apply(params, state, _loss_inputs(inputs, norm), train)
  return batch_objective(loss, outputs, targets)


def make_metric_fn(model, data, *, loss: Loss | None = None, batch_stats: PyTree | None = None,
                   batch_size: int = 256, fold_batchnorm: bool = True,
                   cpu_convolutions: str = "auto", compute_dtype=None, mesh=None,
                   stream_batches: int | None = None,
                   ) -> Callable[[PyTree], dict[str, jax.Array]]:
  """Builds ``metric_fn(params) -> {metric: scalar}`` over whole splits held on the device.

  Every metric is exact over the whole split: ``sum_i m_i v_i / sum_i m_i w_i``
  (`split_metrics`), e.g. ``loss`` = mean cross-entropy and ``accuracy`` = fraction correct
  for the default `CROSS_ENTROPY`.

  Args:
    model: a linen module, an NNX or Equinox module, an `adapters.frameworks.Model`, or a plain
      ``apply_fn(params, inputs) -> outputs`` (`adapters.frameworks`), evaluated in inference mode
      (BatchNorm uses its running statistics).
    data: one split, or a mapping such as ``{"train": ..., "test": ...}`` whose keys become
      prefixes: ``{"train_loss", "train_accuracy", "test_loss", ...}``. A split is a `Dataset`
      (uint8 images, normalised inside the compiled function) or an ``(inputs, targets)`` pair of
      arrays or pytrees of arrays with a leading example axis (inputs passed to the model as
      given).
    loss: the `Loss` and its metrics (`adapters.losses`; default `CROSS_ENTROPY`).
    batch_stats: the state evaluated with: a linen model's running statistics (Li et al.: the
      centre's statistics); for other models it replaces the model's own state (an NNX module's
      non-parameter state, a `Model`'s ``state``; for an Equinox module with BatchNorm, its
      ``eqx.nn.State``).
    batch_size: the largest number of examples per scanned batch (batches are balanced, see
      `device_split`).
    fold_batchnorm: linen models only (ignored for every other model, which is evaluated
      unfolded, so never approximated): fold each BatchNorm whose input is a conv/dense output
      read by nothing else into that layer, inside the compiled function (``W s``,
      ``beta + (b - mu) s`` with ``s = gamma / sqrt(var + eps)``; Ioffe & Szegedy 2015), one
      elementwise pass less per folded BatchNorm. BatchNorms whose layer output also feeds a
      shortcut or a concatenation (the stem of pre-activation nets and DenseNets) are left
      unfolded, and a build-time check on random statistics falls back to unfolded inference,
      with a logged warning, if the folded model differs beyond float rounding: the same function
      up to float rounding for any linen model (see `adapters.folding`). Without `batch_stats`
      there is nothing to fold.
    cpu_convolutions: ``"auto"`` (default: oneDNN's convolutions when the default backend is the
      CPU and they can be built, else XLA's), ``"onednn"`` or ``"xla"``; see
      `backends.cpu.onednn` (the same function up to float rounding, faster convolutions on
      the CPU than XLA's; benchmarks/bench_conv_layers.py measures them). Applies to every model.
    compute_dtype: None (default: float32) or "bfloat16": convolutions and matrix products from
      bfloat16 inputs and weights with float32 accumulation (oneDNN on CPUs with avx512_bf16 /
      AMX, XLA elsewhere, with a one-time warning naming the missing instructions on a CPU
      without them, where it is slower than float32; see `backends.cpu.fusion`,
      `backends.cpu.onednn_build.resolve`). ``"auto"`` (opt-in): bfloat16 where it pays (oneDNN
      on a CPU with avx512_bf16 / amx_bf16, or a GPU / TPU backend), float32 otherwise
      (`backends.cpu.onednn_build.auto_compute_dtype`).
    mesh: a mesh with roles (`sharding.make_mesh(points=, data=, model=)` or a
      `sharding.MeshRoles`) to evaluate on: every batch of every split is spread over its
      ``data`` axis (batches rounded up to a multiple of its size, padding masked) and replicated
      over its other axes; XLA sums the per-example values across the data axis, so the metrics
      are the same exact ratios of sums. None (default): the default device.
    stream_batches: keep the splits in host memory and stream them to the devices
      `stream_batches` batches at a time (double-buffered; each chunk sharded over the mesh's
      ``data`` axis), for splits larger than the devices' memory: returns a
      `streaming.StreamedMetric`, the same ratios of sums (the chunks' float32 sums added in
      float64 on the host) from the same batches. It is called like a metric_fn on concrete
      parameters and taken by every function of the point-evaluation engine (`surface_grid`,
      `linear_path`, `evaluate_curve`, ...: one pass over the chunks per chunk of points), but
      it cannot be traced (no `jit`, `vmap` or `grad` of it). None (default): on the devices.

  The returned function is pure (jit-able, vmappable over params). It is a
  `jax.tree_util.Partial`: the splits are pytree leaves, so a jitted function that takes the
  metric_fn as an argument receives the data as device buffers instead of baking it into the
  compiled program as constants (write your own metric_fn the same way for large datasets).

  Calling (or tracing) it raises a ValueError when the images do not fit the parameters of a
  linen model (image size or channels, or parameters of another model), or when the model has
  fewer logits than the targets have classes (see `check_model_fits`).
  """
  loss = check_loss(loss)
  named = named_splits(data, loss)
  roles = shd.mesh_roles(mesh)
  placement = {}
  if roles is not None:
    placement = {"sharding": NamedSharding(roles.mesh, P(None, roles.data)),
                 "multiple_of": roles.size("data")}
  if stream_batches is not None and (isinstance(stream_batches, bool) or not isinstance(
      stream_batches, int | np.integer) or stream_batches < 1):
    raise ValueError(f"stream_batches must be a positive number of batches per streamed chunk "
                     f"(or None: the splits on the devices), got {stream_batches!r}.")
  splits = {} if stream_batches else {
    k: device_split(d.inputs, d.targets, batch_size=batch_size, **placement)
    for k, d in named.items()}
  partitioned = roles is not None and not roles.only_points
  norms = {k: d.norm for k, d in named.items()}
  # oneDNN's custom calls cannot be partitioned by GSPMD
  convs = "xla" if partitioned and cpu_convolutions == "auto" else cpu_convolutions
  compute_dtype = onednn_build.resolve_compute_dtype(compute_dtype, convs)
  forward, state = inference_forward(model, batch_stats=batch_stats,
                                     num_classes=_num_classes(named),
                                     fold_batchnorm=fold_batchnorm,
                                     onednn=use_onednn(convs, compute_dtype=compute_dtype),
                                     compute_dtype=compute_dtype)
  if stream_batches:
    return _streamed_metric(forward, loss, named, state, batch_size=batch_size,
                            stream_batches=int(stream_batches),
                            multiple_of=placement.get("multiple_of", 1),
                            sharding=placement.get("sharding") if partitioned else None)
  return jax.tree_util.Partial(functools.partial(_metrics, forward, loss), splits, norms, state)


def _streamed_metric(forward, loss: Loss, named: Mapping[str, SplitData], state, *,
                     batch_size: int, stream_batches: int, multiple_of: int, sharding):
  """The `streaming.StreamedMetric` of `make_metric_fn(..., stream_batches=...)`: the batches of
  `device_split` (same sizes, same padding), cut into chunks of `stream_batches` batches."""
  streams, counts = {}, {}
  for k, d in named.items():
    inputs = jax.tree.map(np.asarray, d.inputs)
    targets = jax.tree.map(host_targets, d.targets)
    n = num_examples(inputs, targets, name=f"data[{k!r}]" if k else "data")
    num_batches, b = batch_layout(n, batch_size, multiple_of)
    per_chunk = min(stream_batches, num_batches)
    cut = functools.partial(host_chunk, num_examples=n, batch_size=b, num_batches=per_chunk)
    streams[k] = streaming.HostChunks(arrays=(inputs, targets), constants=d.norm,
                                      num_chunks=-(-num_batches // per_chunk), cut=cut)
    counts[k] = n
  names = tuple(f"{k}_{m}" if k else m for k in named for m in loss.metrics)
  return streaming.StreamedMetric(
    sums_fn=jax.tree_util.Partial(functools.partial(_chunk_sums, forward, loss), state),
    streams=streams, finish=functools.partial(_ratios, loss.metrics, loss.weighted, counts),
    metric_names=names, sharding=sharding)


def host_chunk(arrays, i: int, *, num_examples: int, batch_size: int, num_batches: int,
               ) -> DeviceSplit:
  """Chunk `i` of a host split ``arrays = (inputs, targets)``: its ``num_batches`` batches of
  ``batch_size`` examples as a host `DeviceSplit` (``(num_batches, batch_size, ...)`` leaves),
  examples past the split's end zero and masked out, so every chunk has the same shape."""
  per = num_batches * batch_size
  start = i * per
  stop = min(start + per, num_examples)
  if start >= num_examples:
    raise IndexError(f"chunk {i} starts at example {start} of {num_examples}.")

  def cut(a):
    part = a[start:stop]
    if stop - start < per:
      part = np.concatenate([part, np.zeros((per - (stop - start), *a.shape[1:]), a.dtype)])
    return part.reshape(num_batches, batch_size, *a.shape[1:])

  inputs, targets = arrays
  mask = np.zeros(per, np.float32)
  mask[:stop - start] = 1.0
  return DeviceSplit((jax.tree.map(cut, inputs), jax.tree.map(cut, targets)),
                     mask.reshape(num_batches, batch_size))


def _chunk_sums(forward, loss, state, norm, chunk, params):
  return split_sums(functools.partial(forward, params, state), chunk, loss, norm)


def _ratios(names, weighted, counts, sums):
  out = {}
  for k, s in sums.items():
    total = s[WEIGHT] if weighted else np.float64(counts[k])
    out.update({(f"{k}_{m}" if k else m): s[m] / total for m in names})
  return out


def use_onednn(cpu_convolutions: str, *, compute_dtype=None) -> bool:
  """Whether a ``cpu_convolutions`` option ("auto", "onednn", "xla") runs convolutions on oneDNN
  (at `compute_dtype`, see `backends.cpu.onednn_build.resolve`)."""
  return onednn_build.resolve(cpu_convolutions, compute_dtype=compute_dtype)


def _metrics(forward, loss, splits, norms, state, params):
  out = {}
  for k, split in splits.items():
    res = split_metrics(functools.partial(forward, params, state), split, loss, norms[k])
    out.update({(f"{k}_{m}" if k else m): v for m, v in res.items()})
  return out
