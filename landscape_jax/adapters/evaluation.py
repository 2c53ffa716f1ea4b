"""Exact evaluation over a device-resident split, and the `loss_fn` / `metric_fn` adapters.

The core of the library works on two kinds of user function:

* ``loss_fn(params, batch) -> scalar``: a minibatch objective, ``batch = (images, labels)``;
* ``metric_fn(params) -> dict[str, scalar]``: a full evaluation, jit-able and vmappable.

`make_loss_fn` and `make_metric_fn` build them for the bundled Flax linen models. The split is held
on the device as uint8, padded to a whole number of batches and walked with `lax.scan`; padded
examples are masked out, so the mean cross-entropy and the accuracy are exact for any split size.
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

from landscape_jax.adapters import folding
from landscape_jax.adapters.data import Dataset, normalize_images
from landscape_jax.backends.cpu import fusion, onednn_build

__all__ = [
  "apply_checked",
  "check_model_fits",
  "correct",
  "cross_entropy",
  "device_split",
  "DeviceSplit",
  "evaluate",
  "evaluate_split",
  "inference_apply",
  "make_loss_fn",
  "make_metric_fn",
  "model_variables",
  "use_onednn",
]

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy -log softmax(logits)[label] (integer labels)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example 0/1 float: whether the arg-max logit is the label."""
  return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


class DeviceSplit(NamedTuple):
  """A split padded to whole batches: images (B, b, H, W, C) uint8, labels (B, b), mask (B, b)."""

  images: jax.Array
  labels: jax.Array
  mask: jax.Array

  @property
  def num_examples(self) -> int:
    return int(np.prod(self.mask.shape))


def device_split(images, labels, *, batch_size: int, sharding=None, multiple_of: int = 1,
                 ) -> DeviceSplit:
  """Pads a split to whole batches, reshapes it into batches and puts it on device.

  The batches are balanced: with ``B = ceil(N / batch_size)`` batches each holds
  ``b = ceil(N / B)`` examples (rounded up to `multiple_of`), so at most ``B * multiple_of - 1``
  padded examples are computed and masked, instead of up to ``batch_size - 1`` (1000 images in
  batches of at most 64: 16 batches of 63, 8 padded, rather than 16 of 64 with 24 padded).

  Args:
    images: (N, H, W, C) array (uint8 stays uint8 on the device).
    labels: (N,) integer labels.
    batch_size: the largest number of examples per scanned batch.
    sharding: optional `jax.sharding.Sharding` for the arrays (default: replicated on device 0).
    multiple_of: every batch is a multiple of this (the number of devices a batch is split over).
  """
  images, labels = np.asarray(images), np.asarray(labels, np.int32)
  n = images.shape[0]
  if n == 0:
    raise ValueError("Cannot evaluate on an empty split.")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if multiple_of <= 0:
    raise ValueError(f"multiple_of must be positive, got {multiple_of}.")
  num_batches = -(-n // min(batch_size, n))
  batch_size = -(-n // num_batches)
  batch_size = -(-batch_size // multiple_of) * multiple_of
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, np.int32)])
  arrays = (images.reshape(num_batches, batch_size, *images.shape[1:]),
            labels.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size))
  put = (lambda a: jax.device_put(a, sharding)) if sharding is not None else jnp.asarray
  return DeviceSplit(*map(put, arrays))


def evaluate_split(apply_fn: ApplyFn, variables: PyTree, split: DeviceSplit, mean, std,
                   ) -> dict[str, jax.Array]:
  """Mean cross-entropy and accuracy of ``apply_fn(variables, x)`` over a padded split.

  Pure and traceable (vmap over `variables` works). loss = sum_i m_i CE_i / sum_i m_i,
  accuracy = sum_i m_i [argmax = y_i] / sum_i m_i, with m the padding mask.
  """

  def body(carry, batch):
    x, y, m = batch
    logits = apply_fn(variables, normalize_images(x, mean, std))
    return (carry[0] + jnp.sum(cross_entropy(logits, y) * m),
            carry[1] + jnp.sum(correct(logits, y) * m)), None

  zero = jnp.zeros((), jnp.float32)
  (loss_sum, correct_sum), _ = jax.lax.scan(body, (zero, zero), split)
  total = jnp.sum(split.mask)
  return {"loss": loss_sum / total, "accuracy": correct_sum / total}


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
    if onednn and inference:
      forward = fusion.with_onednn_convolutions(forward, compute_dtype=compute_dtype)
    elif compute_dtype is not None and inference:
      forward = fusion.with_compute_dtype(forward, compute_dtype)
    logits = forward(variables, x)
  except _MISFIT as e:
    raise ValueError(
      f"The parameters do not fit {type(model).__name__} applied to images of shape "
      f"{tuple(x.shape[1:])} (H, W, C): {str(e).split(' (https')[0]}. Either the images do not "
      "match the input the model was initialised for (image size or number of channels: use the "
      "dataset it was built for), or the parameters come from another model (a checkpoint of "
      "another architecture or width).") from e
  out = logits[0] if isinstance(logits, tuple) else logits
  if num_classes is not None and out.shape[-1] < num_classes:
    raise ValueError(
      f"{type(model).__name__} outputs {out.shape[-1]} logits but the dataset has labels "
      f"0..{num_classes - 1} ({num_classes} classes): labels out of the model's range would give a "
      f"NaN loss. Build the model with num_classes={num_classes}.")
  return logits


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


def make_loss_fn(model: nn.Module, *, mean, std, batch_stats: PyTree | None = None,
                 train: bool = False) -> Callable[[PyTree, tuple], jax.Array]:
  """Builds ``loss_fn(params, batch) -> mean cross-entropy`` for a bundled linen model.

  Args:
    model: a linen module called as ``model.apply(variables, x, train=...)``.
    mean, std: per-channel normalisation of the dataset.
    batch_stats: BatchNorm running statistics used when ``train=False``.
    train: if True, BatchNorm uses the statistics of the batch (training mode; the updated running
      statistics are discarded, as Garipov et al. recompute them afterwards).

  ``batch = (uint8 images (b, H, W, C), int labels (b,))``. The result is a
  `jax.tree_util.Partial` (a pytree), so it can be passed to jitted functions as an argument.
  """
  return jax.tree_util.Partial(functools.partial(_loss, model, train),
                               jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32),
                               batch_stats)


def _loss(model, train, mean, std, batch_stats, params, batch):
  images, labels = batch
  x = normalize_images(images, mean, std)
  variables = model_variables(params, batch_stats)
  if train and batch_stats is not None:
    logits, _ = apply_checked(model, None, variables, x, train=True, mutable=["batch_stats"])
  else:
    logits = apply_checked(model, None, variables, x, train=train)
  return jnp.mean(cross_entropy(logits, labels))


def make_metric_fn(model: nn.Module, data: Dataset | Mapping[str, Dataset], *,
                   batch_stats: PyTree | None = None, batch_size: int = 256,
                   fold_batchnorm: bool = True, cpu_convolutions: str = "auto",
                   compute_dtype=None) -> Callable[[PyTree], dict[str, jax.Array]]:
  """Builds ``metric_fn(params) -> {"loss", "accuracy"}`` over whole splits held on the device.

  Args:
    model: a bundled linen model (inference mode is used: BatchNorm uses `batch_stats`).
    data: one `Dataset`, or a mapping such as ``{"train": ds_train, "test": ds_test}``; with a
      mapping the keys become prefixes: ``{"train_loss", "train_accuracy", "test_loss", ...}``.
    batch_stats: the running statistics evaluated with (Li et al.: the centre's statistics).
    batch_size: the largest number of examples per scanned batch (batches are balanced, see
      `device_split`).
    fold_batchnorm: fold each BatchNorm whose input is a conv/dense output read by nothing else
      into that layer, inside the compiled function (``W s``, ``beta + (b - mu) s`` with
      ``s = gamma / sqrt(var + eps)``; Ioffe & Szegedy 2015), one elementwise pass less per
      folded BatchNorm. BatchNorms whose layer output also feeds a shortcut or a concatenation
      (the stem of pre-activation nets and DenseNets) are left unfolded, and a build-time check
      on random statistics falls back to unfolded inference, with a logged warning, if the
      folded model differs beyond float rounding: the same function up to float rounding for
      any linen model (see `adapters.folding`). Without `batch_stats` there is nothing to
      fold.
    cpu_convolutions: ``"auto"`` (default: oneDNN's convolutions when the default backend is the
      CPU and they can be built, else XLA's), ``"onednn"`` or ``"xla"``; see
      `backends.cpu.onednn` (the same function up to float rounding, faster convolutions on
      the CPU than XLA's; benchmarks/bench_conv_layers.py measures them).
    compute_dtype: None (default: float32) or "bfloat16": convolutions and matrix products from
      bfloat16 inputs and weights with float32 accumulation (oneDNN on CPUs with avx512_bf16 /
      AMX, XLA elsewhere; see `backends.cpu.fusion`, `backends.cpu.onednn_build.resolve`).

  The returned function is pure (jit-able, vmappable over params). It is a
  `jax.tree_util.Partial`: the uint8 splits are pytree leaves, so a jitted function that takes the
  metric_fn as an argument receives the data as device buffers instead of baking it into the
  compiled program as constants (write your own metric_fn the same way for large datasets).

  Calling (or tracing) it raises a ValueError when the images do not fit the parameters (image
  size or channels, or parameters of another model) or when the model has fewer logits than the
  datasets have classes (see `check_model_fits`).
  """
  single = isinstance(data, Dataset)
  datasets = {"": data} if single else dict(data)
  if not datasets:
    raise ValueError("make_metric_fn needs at least one dataset.")
  splits = {k: device_split(d.images, d.labels, batch_size=batch_size) for k, d in datasets.items()}
  norms = {k: (jnp.asarray(d.mean), jnp.asarray(d.std)) for k, d in datasets.items()}
  num_classes = max(int(d.num_classes) for d in datasets.values())
  apply_fn = functools.partial(apply_checked, model, num_classes,
                               fold_batchnorm=bool(fold_batchnorm),
                               onednn=onednn_build.resolve(cpu_convolutions,
                                                           compute_dtype=compute_dtype),
                               compute_dtype=onednn_build.canonical_compute_dtype(compute_dtype))
  return jax.tree_util.Partial(functools.partial(_metrics, apply_fn), splits, norms, batch_stats)


def use_onednn(cpu_convolutions: str) -> bool:
  """Whether a ``cpu_convolutions`` option ("auto", "onednn", "xla") runs convolutions on oneDNN."""
  return onednn_build.resolve(cpu_convolutions)


def _metrics(apply_fn, splits, norms, batch_stats, params):
  out = {}
  for k, split in splits.items():
    res = evaluate_split(apply_fn, model_variables(params, batch_stats), split, *norms[k])
    out.update({(f"{k}_{m}" if k else m): v for m, v in res.items()})
  return out
