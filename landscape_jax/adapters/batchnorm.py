"""Recomputing BatchNorm statistics for a parameter point (Garipov et al. 2018, ``update_bn``).

Running statistics are not part of a curve, an interpolation or an averaged model (SWA): before
evaluating such a point its BatchNorm statistics are recomputed by one pass over the training split
in training mode (dropout off). The reference code resets the running statistics and uses the
momentum ``b / (n_seen + b)``, which makes the running value the batch-size-weighted cumulative
mean of the per-batch statistics. Here the statistics are computed exactly and directly:

* ``mean = sum_b n_b mean_b / sum_b n_b`` -- the cumulative mean of the reference, i.e. the mean of
  the layer's input over the whole split (n_b = examples x spatial positions of batch b);
* ``var`` (``variance="pooled"``, the default) -- the variance of the layer's input over the whole
  split, combining the per-batch means and centred second moments with Chan's parallel formula:
  ``M2 = sum_b M2_b + sum_b n_b (mean_b - mean)^2``, ``var = M2 / n``. For a layer whose input does
  not depend on the batch composition (the first BatchNorm) it equals the variance computed over
  the whole split at once. ``variance="reference"`` reproduces PyTorch/``update_bn`` instead: the
  size-weighted mean of the *unbiased* per-batch variances ``n_b / (n_b - 1) M2_b / n_b``.

Batch statistics are captured with a `flax.linen.intercept_methods` interceptor on every
`nn.BatchNorm` called in training mode (the statistics are taken of the very input the layer
normalises), so any linen model with standard BatchNorm layers works without changes. The split is
walked in full batches with `lax.scan`, plus one smaller batch for the remainder, so no padding
enters any statistic; the whole computation is pure and traceable (jit, vmap, lax.map).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from landscape_jax.adapters.data import Dataset, normalize_images
from landscape_jax.adapters.evaluation import (
  apply_checked,
  device_split,
  evaluate_split,
  use_onednn,
)
from landscape_jax.backends.cpu import fusion
from landscape_jax.core import trees

__all__ = [
  "batch_stats_on_split",
  "make_recompute_metric_fn",
  "recompute_batch_stats",
  "stats_split",
  "StatsSplit",
  "train_apply",
  "VARIANCES",
]

PyTree = Any
VARIANCES = ("pooled", "reference")


class StatsSplit(NamedTuple):
  """Full batches (B, b, H, W, C) and the remainder (r, H, W, C) of a split, on the device."""

  batches: jax.Array
  remainder: jax.Array


def stats_split(images, *, batch_size: int) -> StatsSplit:
  """Puts uint8 images on the device as full batches plus the remainder batch (no padding)."""
  images = np.asarray(images)
  n = images.shape[0]
  if n == 0:
    raise ValueError("Cannot recompute BatchNorm statistics on an empty split.")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  batch_size = min(batch_size, n)
  full = n // batch_size * batch_size
  batches = images[:full].reshape(n // batch_size, batch_size, *images.shape[1:])
  return StatsSplit(jnp.asarray(batches), jnp.asarray(images[full:]))


def _feature_axes(module: nn.BatchNorm, ndim: int) -> tuple[int, ...]:
  axis = module.axis if isinstance(module.axis, tuple | list) else (module.axis,)
  return tuple(a % ndim for a in axis)


def _is_train_mode(module: nn.BatchNorm, args, kwargs) -> bool:
  call_arg = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
  return not nn.merge_param("use_running_average", module.use_running_average, call_arg)


def _batch_moments(apply_train: Callable, variables: PyTree, x: jax.Array) -> dict:
  """Runs the model in training mode and returns {module path: (count, mean, M2)} per BN layer."""
  captured: dict[tuple[str, ...], tuple] = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.Dropout) and context.method_name == "__call__":
      return args[0]  # dropout off during the statistics pass (deterministic = identity)
    if (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"
        and _is_train_mode(module, args, kwargs)):
      if kwargs.get("mask") is not None:
        raise ValueError("recompute_batch_stats does not support masked BatchNorm calls.")
      inp = args[0]
      path = tuple(module.path)
      if path in captured:
        raise ValueError(f"BatchNorm {'/'.join(path)} is called twice in one forward pass; "
                         "recompute_batch_stats needs one call per layer.")
      feat = _feature_axes(module, inp.ndim)
      red = tuple(i for i in range(inp.ndim) if i not in feat)
      xf = inp.astype(jnp.float32)
      mean = jnp.mean(xf, red)
      m2 = jnp.sum(jnp.square(xf - jnp.expand_dims(mean, red)), red)
      count = float(np.prod([inp.shape[i] for i in red]))
      captured[path] = (count, mean, m2)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    apply_train(variables, x)
  return captured


def _set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def batch_stats_on_split(apply_train: Callable, params: PyTree, template: PyTree,
                         split: StatsSplit, mean, std, *, variance: str = "pooled",
                         onednn: bool = False) -> PyTree:
  """Pure, traceable core of `recompute_batch_stats` (see the module docstring for the formulas).

  Args:
    apply_train: ``apply_train(variables, x)`` running the model in training mode, e.g.
      ``functools.partial(model.apply, train=True, mutable=["batch_stats"])``.
    params: the model parameters of the point.
    template: a batch_stats pytree of the model (its values are not used, only its structure).
    split: from `stats_split`.
    mean, std: input normalisation (see `data.normalize_images`).
    variance: "pooled" (exact variance over the split) or "reference" (mean of unbiased per-batch
      variances, as PyTorch's ``update_bn``).
    onednn: run the convolutions of the pass on oneDNN (`backends.cpu.onednn`; CPU only).
  """
  if variance not in VARIANCES:
    raise ValueError(f"Unknown variance '{variance}'; use one of {VARIANCES}.")
  variables = {"params": params, "batch_stats": template}
  batch_moments = functools.partial(_batch_moments, apply_train)
  if onednn:
    batch_moments = fusion.with_onednn_convolutions(batch_moments)

  def moments(images):
    return batch_moments(variables, normalize_images(images, mean, std))

  # (count, mean, M2) per batch: scan over the full batches, then the remainder batch.
  counts, means, m2s = {}, {}, {}

  def add(path, count, m, m2):
    counts.setdefault(path, []).append(count)
    means.setdefault(path, []).append(m)
    m2s.setdefault(path, []).append(m2)

  if split.batches.shape[0] > 0:
    def body(_, images):
      mom = moments(images)
      return None, {"/".join(k): (jnp.full((), c, jnp.float32), m, m2)
                    for k, (c, m, m2) in mom.items()}
    _, stacked = jax.lax.scan(body, None, split.batches)
    for name, (c, m, m2) in stacked.items():
      add(tuple(name.split("/")), c, m, m2)
  if split.remainder.shape[0] > 0:
    for path, (c, m, m2) in moments(split.remainder).items():
      add(path, jnp.full((1,), c, jnp.float32), m[None], m2[None])
  if not counts:
    raise ValueError("No BatchNorm layer ran in training mode: check that the model has BatchNorm "
                     "and that apply_train calls it with train=True.")
  out: dict = {}
  for path in counts:
    n_b = jnp.concatenate(counts[path])
    mean_b = jnp.concatenate(means[path])
    m2_b = jnp.concatenate(m2s[path])
    shape = (-1,) + (1,) * (mean_b.ndim - 1)
    w = n_b.reshape(shape)
    total = jnp.sum(n_b)
    mu = jnp.sum(w * mean_b, 0) / total
    if variance == "pooled":
      var = (jnp.sum(m2_b, 0) + jnp.sum(w * jnp.square(mean_b - mu), 0)) / total
    else:
      var = jnp.sum(w * m2_b / jnp.maximum(w - 1.0, 1.0), 0) / total
    _set_path(out, path, {"mean": mu, "var": var})
  diff = trees.first_difference(template, out, check_dtype=False)
  if diff is not None:
    raise ValueError(f"The recomputed statistics do not match the model's batch_stats ({diff}). "
                     "Every BatchNorm layer must run once in training mode per forward pass.")
  return jax.tree.map(lambda t, o: o.astype(t.dtype), template, out)


def recompute_batch_stats(model: nn.Module, params: PyTree, batch_stats: PyTree, data: Dataset, *,
                          batch_size: int = 256, variance: str = "pooled",
                          cpu_convolutions: str = "auto") -> PyTree:
  """Exact BatchNorm statistics of `params` over a split (Garipov et al.'s ``update_bn``).

  One training-mode pass over `data` (dropout off) in batches of `batch_size`; every BatchNorm
  layer gets the size-weighted mean of its per-batch input means, and the pooled variance of its
  input (or, with ``variance="reference"``, the mean of the unbiased per-batch variances).

  Args:
    model: a linen model called as ``model.apply(variables, x, train=True,
      mutable=["batch_stats"])``.
    params: the parameters of the point (e.g. ``curve_point(curve, t)``).
    batch_stats: any batch_stats of the model (only the structure and dtypes are used).
    data: the training split (uint8 images, normalised with its mean and std).
    batch_size: examples per batch (statistics of the deeper layers depend on it, as in the
      reference, because training-mode BatchNorm normalises with the batch statistics).
    variance: see `batch_stats_on_split`.
    cpu_convolutions: as in `make_metric_fn` (oneDNN's convolutions on the CPU by default).

  Returns:
    A batch_stats pytree with the same structure as `batch_stats`.

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
    Izmailov, Podoprikhin, Garipov, Vetrov and Wilson 2018, "Averaging Weights Leads to Wider
    Optima and Better Generalization".
  """
  split = stats_split(data.images, batch_size=batch_size)
  return _jit_stats(train_apply(model), params, batch_stats, split, jnp.asarray(data.mean),
                    jnp.asarray(data.std), variance, use_onednn(cpu_convolutions))


def train_apply(model: nn.Module) -> Callable:
  """``model.apply(variables, x, train=True, mutable=["batch_stats"])`` (hashable for jit; the
  same object for equal models, so jitted callers compile once per model)."""
  try:
    return _train_apply(model)
  except TypeError:  # an unhashable model
    return functools.partial(model.apply, train=True, mutable=["batch_stats"])


@functools.lru_cache(maxsize=64)
def _train_apply(model: nn.Module) -> Callable:
  return functools.partial(model.apply, train=True, mutable=["batch_stats"])


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _jit_stats(apply_train, params, template, split, mean, std, variance, onednn):
  return batch_stats_on_split(apply_train, params, template, split, mean, std, variance=variance,
                              onednn=onednn)


def make_recompute_metric_fn(model: nn.Module, data: Dataset | Mapping[str, Dataset], *,
                             train_data: Dataset, batch_stats: PyTree, batch_size: int = 256,
                             bn_batch_size: int = 128, variance: str = "pooled",
                             fold_batchnorm: bool = True, cpu_convolutions: str = "auto",
                             ) -> Callable[[PyTree], dict[str, jax.Array]]:
  """Like `make_metric_fn`, but recomputes the BatchNorm statistics of every point first.

  ``metric_fn(params)`` = metrics in inference mode with ``batch_stats = recompute(params)`` on
  `train_data` (Garipov et al.: every point of a curve, a plane or an SWA average is evaluated
  with its own statistics). Pure and traceable; a `jax.tree_util.Partial` whose data are leaves.

  Args:
    model: a linen model with BatchNorm.
    data: a `Dataset` or a mapping such as ``{"train": ds_train, "test": ds_test}`` (keys become
      prefixes, as in `make_metric_fn`).
    train_data: the split the statistics are recomputed on (the training split).
    batch_stats: a batch_stats pytree of the model (structure only).
    batch_size: evaluation batch size; bn_batch_size: batch size of the statistics pass.
    variance: see `batch_stats_on_split`.
    fold_batchnorm, cpu_convolutions: as in `make_metric_fn` (the recomputed statistics folded
      into the convolutions for the evaluation where that is exact; oneDNN's convolutions on the
      CPU, in the statistics pass too).
  """
  if variance not in VARIANCES:
    raise ValueError(f"Unknown variance '{variance}'; use one of {VARIANCES}.")
  single = isinstance(data, Dataset)
  datasets = {"": data} if single else dict(data)
  splits = {k: device_split(d.images, d.labels, batch_size=batch_size) for k, d in datasets.items()}
  norms = {k: (jnp.asarray(d.mean), jnp.asarray(d.std)) for k, d in datasets.items()}
  sp = stats_split(train_data.images, batch_size=bn_batch_size)
  train_norm = (jnp.asarray(train_data.mean), jnp.asarray(train_data.std))
  onednn = use_onednn(cpu_convolutions)
  apply_fn = functools.partial(apply_checked, model, max(int(d.num_classes) for d in
                                                          datasets.values()),
                               fold_batchnorm=bool(fold_batchnorm), onednn=onednn)
  return jax.tree_util.Partial(
    functools.partial(_recompute_metrics, apply_fn, train_apply(model), variance, onednn),
    splits, norms, sp, train_norm, batch_stats)


def _recompute_metrics(apply_fn, apply_train, variance, onednn, splits, norms, sp, train_norm,
                       template, params):
  stats = batch_stats_on_split(apply_train, params, template, sp, *train_norm, variance=variance,
                               onednn=onednn)
  variables = {"params": params, "batch_stats": stats}
  out = {}
  for k, split in splits.items():
    res = evaluate_split(apply_fn, variables, split, *norms[k])
    out.update({(f"{k}_{m}" if k else m): v for m, v in res.items()})
  return out
