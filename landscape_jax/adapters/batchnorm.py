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

Other models (`adapters.frameworks`: NNX and Equinox modules, or a `Model` with `BatchNormHooks`)
report each BatchNorm layer's batch mean and biased variance through their hooks instead
(`state_on_split`). Every example then weighs the same in a layer (its spatial positions are
the same in every batch), so the pooled formulas above hold with ``n_b`` = the number of examples
of batch b; ``variance="reference"``, which needs the per-layer counts, is linen-only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from landscape_jax.adapters.data import Dataset
from landscape_jax.adapters.evaluation import (
  apply_checked,
  inference_forward,
  named_splits,
  prepare_inputs,
  split_metrics,
  use_onednn,
)
from landscape_jax.adapters.frameworks import BatchNormHooks, as_model
from landscape_jax.adapters.losses import Loss, check_loss
from landscape_jax.backends.cpu import fusion
from landscape_jax.core import sharding as shd
from landscape_jax.core import trees
from landscape_jax.core.splits import DeviceSplit, device_split, make_batches, num_examples

__all__ = [
  "batch_stats_on_split",
  "make_recompute_metric_fn",
  "RecomputeData",
  "recompute_batch_stats",
  "state_on_split",
  "stats_split",
  "train_apply",
  "VARIANCES",
]

PyTree = Any
VARIANCES = ("pooled", "reference")


def stats_split(images, *, batch_size: int) -> DeviceSplit:
  """Puts a split's inputs (uint8 images, or any pytree of arrays with a leading example axis) on
  the device as full batches plus the remainder batch (no padding; `splits.make_batches`)."""
  if any(np.shape(x)[:1] == (0,) for x in jax.tree.leaves(images)):
    raise ValueError("Cannot recompute BatchNorm statistics on an empty split.")
  num_examples(images, name="the statistics split")
  return make_batches(images, batch_size=batch_size)


def _leading(tree) -> int:
  return int(np.shape(jax.tree.leaves(tree)[0])[0])


def _stats_inputs(data, name: str = "train_data"):
  """``(inputs, norm)`` of one split: a `Dataset` (normalised images) or ``(inputs, targets)``."""
  if isinstance(data, Dataset):
    return data.images, (jnp.asarray(data.mean), jnp.asarray(data.std))
  if isinstance(data, tuple | list) and len(data) == 2:
    return data[0], None
  raise TypeError(f"{name} must be one split: a Dataset or an (inputs, targets) pair of arrays "
                  f"with a leading example axis; got {type(data).__name__}.")


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
                         split: DeviceSplit, mean=None, std=None, *, variance: str = "pooled",
                         onednn: bool = False) -> PyTree:
  """Pure, traceable core of `recompute_batch_stats` (see the module docstring for the formulas).

  Args:
    apply_train: ``apply_train(variables, x)`` running the model in training mode, e.g.
      ``functools.partial(model.apply, train=True, mutable=["batch_stats"])``.
    params: the model parameters of the point.
    template: a batch_stats pytree of the model (its values are not used, only its structure).
    split: from `stats_split`.
    mean, std: input normalisation of uint8 images (see `data.normalize_images`); None for
      inputs used as given.
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

  norm = None if mean is None else (mean, std)

  def moments(images):
    return batch_moments(variables, prepare_inputs(images, norm))

  # (count, mean, M2) per batch: scan over the full batches, then the remainder batch.
  counts, means, m2s = {}, {}, {}

  def add(path, count, m, m2):
    counts.setdefault(path, []).append(count)
    means.setdefault(path, []).append(m)
    m2s.setdefault(path, []).append(m2)

  if _leading(split.batches) > 0:
    def body(_, images):
      mom = moments(images)
      return None, {"/".join(k): (jnp.full((), c, jnp.float32), m, m2)
                    for k, (c, m, m2) in mom.items()}
    _, stacked = jax.lax.scan(body, None, split.batches)
    for name, (c, m, m2) in stacked.items():
      add(tuple(name.split("/")), c, m, m2)
  if split.rest is not None:
    for path, (c, m, m2) in moments(split.rest).items():
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


def state_on_split(batch_norm: BatchNormHooks, params: PyTree, state: PyTree, split: DeviceSplit,
                   norm=None, *, onednn: bool = False) -> PyTree:
  """Pure, traceable recomputation of a `adapters.frameworks.Model`'s BatchNorm statistics.

  One training-mode pass over the split through ``batch_norm.moments`` gives every layer's batch
  mean ``mean_b`` and biased variance ``var_b`` per batch b of ``n_b`` examples; the running
  statistics become the pooled ones (see the module docstring):

      mean = sum_b n_b mean_b / n,    var = sum_b n_b (var_b + (mean_b - mean)^2) / n,

  the mean and variance of the layer's input over the whole split, written into the state with
  ``batch_norm.with_stats``.

  Args:
    batch_norm: the model's `BatchNormHooks` (`from_nnx`, `from_equinox`).
    params: the parameters of the point.
    state: the model state the statistics are written into (its other entries are kept).
    split: from `stats_split`.
    norm: ``(mean, std)`` normalising uint8 image inputs, or None.
    onednn: run the convolutions of the pass on oneDNN (`backends.cpu.onednn`; CPU only).
  """
  moments = batch_norm.moments
  if onednn:
    moments = fusion.with_onednn_convolutions(moments)

  def layer_moments(x):
    return tuple((m.astype(jnp.float32), v.astype(jnp.float32))
                 for m, v in moments(params, state, prepare_inputs(x, norm)))

  parts = []  # (weights (B,), ((means (B, C), vars (B, C)) per layer))
  if _leading(split.batches) > 0:
    _, stacked = jax.lax.scan(lambda _, x: (None, layer_moments(x)), None, split.batches)
    b = np.shape(jax.tree.leaves(split.batches)[0])
    parts.append((jnp.full((b[0],), b[1], jnp.float32), stacked))
  if split.rest is not None:
    rest = layer_moments(split.rest)
    parts.append((jnp.full((1,), _leading(split.rest), jnp.float32),
                  jax.tree.map(lambda a: a[None], rest)))
  if not parts or not parts[0][1]:
    raise ValueError("No BatchNorm layer ran in training mode: the model has no BatchNorm whose "
                     "statistics could be recomputed.")
  w = jnp.concatenate([p[0] for p in parts])
  total = jnp.sum(w)
  stats = []
  for layer in range(len(parts[0][1])):
    means = jnp.concatenate([p[1][layer][0] for p in parts])
    variances = jnp.concatenate([p[1][layer][1] for p in parts])
    wl = w.reshape((-1,) + (1,) * (means.ndim - 1))
    mu = jnp.sum(wl * means, 0) / total
    var = jnp.sum(wl * (variances + jnp.square(means - mu)), 0) / total
    stats.append((mu, var))
  return batch_norm.with_stats(params, state, tuple(stats))


def _generic_model(model, batch_stats, variance: str, what: str):
  """The `Model` of a non-linen model with BatchNorm hooks, or a ValueError."""
  m = as_model(model, batch_stats=batch_stats)
  if m.batch_norm is None:
    raise ValueError(
      f"{what} needs a model with BatchNorm layers whose statistics it can recompute: a linen "
      "model, an NNX module with nnx.BatchNorm, an Equinox module with eqx.nn.BatchNorm and its "
      "state, or an lj.Model with batch_norm=BatchNormHooks(...). This model has none.")
  if variance != "pooled":
    raise ValueError(f"variance={variance!r} needs per-layer element counts, which only linen "
                     "models report; use variance='pooled' (the exact variance over the split).")
  return m


def recompute_batch_stats(model, params: PyTree, batch_stats: PyTree, data, *,
                          batch_size: int = 256, variance: str = "pooled",
                          cpu_convolutions: str = "auto") -> PyTree:
  """Exact BatchNorm statistics of `params` over a split (Garipov et al.'s ``update_bn``).

  One training-mode pass over `data` (dropout off) in batches of `batch_size`; every BatchNorm
  layer gets the size-weighted mean of its per-batch input means, and the pooled variance of its
  input (or, with ``variance="reference"``, linen only, the mean of the unbiased per-batch
  variances).

  Args:
    model: a linen model called as ``model.apply(variables, x, train=True,
      mutable=["batch_stats"])``; or an NNX module, an Equinox module or an
      `adapters.frameworks.Model` with `BatchNormHooks` (`state_on_split`).
    params: the parameters of the point (e.g. ``curve_point(curve, t)``).
    batch_stats: linen: any batch_stats of the model (only the structure and dtypes are used);
      other models: the model state to write the statistics into (None: the model's own; for
      Equinox its ``eqx.nn.State``).
    data: the training split: a `Dataset` (uint8 images, normalised with its mean and std) or an
      ``(inputs, targets)`` pair (the targets are not used).
    batch_size: examples per batch (statistics of the deeper layers depend on it, as in the
      reference, because training-mode BatchNorm normalises with the batch statistics).
    variance: see `batch_stats_on_split`.
    cpu_convolutions: as in `make_metric_fn` (oneDNN's convolutions on the CPU by default;
      XLA's for parameters or statistics placed on several devices, which GSPMD partitions).

  Sharded parameters (docs/scaling.md) stay sharded: the pass is partitioned by GSPMD like any
  evaluation, and the statistics come back with the shardings of `batch_stats` (other models:
  of the state's leaves) wherever those span several devices.

  Returns:
    A batch_stats pytree with the same structure as `batch_stats` (other models: the state).

  References:
    Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss Surfaces, Mode Connectivity,
    and Fast Ensembling of DNNs".
    Izmailov, Podoprikhin, Garipov, Vetrov and Wilson 2018, "Averaging Weights Leads to Wider
    Optima and Better Generalization".
  """
  inputs, norm = _stats_inputs(data, "data")
  split = stats_split(inputs, batch_size=batch_size)
  if cpu_convolutions == "auto" and shd.spans_devices((params, batch_stats)):
    cpu_convolutions = "xla"  # oneDNN's custom calls cannot be partitioned by GSPMD
  onednn = use_onednn(cpu_convolutions)
  if isinstance(model, nn.Module):
    mean, std = (None, None) if norm is None else norm
    out = _jit_stats(train_apply(model), params, batch_stats, split, mean, std, variance, onednn)
    return _keep_placement(out, batch_stats)
  m = _generic_model(model, batch_stats, variance, "recompute_batch_stats")
  return _keep_placement(_jit_state(m.batch_norm, params, m.state, split, norm, onednn), m.state)


def _keep_placement(out: PyTree, like: PyTree) -> PyTree:
  """`out` with the shardings of `like`'s leaves where those span several devices (a no-op for
  leaves already placed so, and for unsharded statistics)."""
  if not shd.spans_devices(like) or jax.tree.structure(out) != jax.tree.structure(like):
    return out
  return jax.tree.map(lambda o, t: jax.device_put(o, t.sharding)
                      if isinstance(t, jax.Array) and len(t.sharding.device_set) > 1 else o,
                      out, like)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _jit_state(batch_norm, params, state, split, norm, onednn):
  return state_on_split(batch_norm, params, state, split, norm, onednn=onednn)


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


class RecomputeData(NamedTuple):
  """The arrays a BatchNorm-recompute metric holds: its pytree leaves (jit arguments, never
  constants), bound to the compiled metric by `jax.tree_util.Partial`.

  Attributes:
    splits: ``{prefix: splits.DeviceSplit}``, the evaluated splits on the device.
    norms: ``{prefix: (mean, std) or None}``, their input normalisation.
    stats_split: the split the statistics are recomputed on (`splits.DeviceSplit`).
    train_norm: its normalisation ``(mean, std)`` (``(None, None)`` or None without one).
    template: linen: a batch_stats pytree (the structure written); other models: the state the
      statistics are written into.
  """

  splits: dict
  norms: dict
  stats_split: DeviceSplit
  train_norm: Any
  template: PyTree


def make_recompute_metric_fn(model, data, *, train_data, batch_stats: PyTree = None,
                             loss: Loss | None = None, batch_size: int = 256,
                             bn_batch_size: int = 128, variance: str = "pooled",
                             fold_batchnorm: bool = True, cpu_convolutions: str = "auto",
                             ) -> Callable[[PyTree], dict[str, jax.Array]]:
  """Like `make_metric_fn`, but recomputes the BatchNorm statistics of every point first.

  ``metric_fn(params)`` = metrics in inference mode with ``batch_stats = recompute(params)`` on
  `train_data` (Garipov et al.: every point of a curve, a plane or an SWA average is evaluated
  with its own statistics). Pure and traceable; a `jax.tree_util.Partial` whose data are leaves.

  Args:
    model: a linen model with BatchNorm; or an NNX module, an Equinox module or an
      `adapters.frameworks.Model` with `BatchNormHooks` (see `recompute_batch_stats`).
    data: one split or a mapping such as ``{"train": ds_train, "test": ds_test}`` (keys become
      prefixes), each a `Dataset` or an ``(inputs, targets)`` pair, as in `make_metric_fn`.
    train_data: the split the statistics are recomputed on (the training split): a `Dataset` or
      an ``(inputs, targets)`` pair.
    batch_stats: linen: a batch_stats pytree of the model (structure only, required); other
      models: the state the statistics are written into (None: the model's own; for Equinox its
      ``eqx.nn.State``).
    loss: the `Loss` and its metrics (`adapters.losses`; default `CROSS_ENTROPY`).
    batch_size: evaluation batch size; bn_batch_size: batch size of the statistics pass.
    variance: see `batch_stats_on_split` (``"reference"`` is linen-only).
    fold_batchnorm, cpu_convolutions: as in `make_metric_fn` (linen only: the recomputed
      statistics folded into the convolutions for the evaluation where that is exact; oneDNN's
      convolutions on the CPU, in the statistics pass too, for every model).
  """
  if variance not in VARIANCES:
    raise ValueError(f"Unknown variance '{variance}'; use one of {VARIANCES}.")
  loss = check_loss(loss)
  named = named_splits(data, loss)
  splits = {k: device_split(d.inputs, d.targets, batch_size=batch_size) for k, d in named.items()}
  norms = {k: d.norm for k, d in named.items()}
  counts = [d.num_classes for d in named.values() if d.num_classes is not None]
  num_classes = max(counts) if counts else None
  inputs, train_norm = _stats_inputs(train_data)
  sp = stats_split(inputs, batch_size=bn_batch_size)
  onednn = use_onednn(cpu_convolutions)
  if isinstance(model, nn.Module):
    if batch_stats is None:
      raise ValueError("make_recompute_metric_fn needs batch_stats for a linen model: any "
                       "batch_stats pytree of it (only the structure is used).")
    apply_fn = functools.partial(apply_checked, model, num_classes,
                                 fold_batchnorm=bool(fold_batchnorm), onednn=onednn)
    return jax.tree_util.Partial(
      functools.partial(_recompute_metrics, apply_fn, train_apply(model), variance, onednn, loss),
      RecomputeData(splits, norms, sp, (None, None) if train_norm is None else train_norm,
                    batch_stats))
  m = _generic_model(model, batch_stats, variance, "make_recompute_metric_fn")
  forward, state = inference_forward(m, num_classes=num_classes, onednn=onednn)
  return jax.tree_util.Partial(
    functools.partial(_recompute_model_metrics, forward, m.batch_norm, onednn, loss),
    RecomputeData(splits, norms, sp, train_norm, state))


def _recompute_metrics(apply_fn, apply_train, variance, onednn, loss, data: RecomputeData,
                       params):
  splits, norms, sp, train_norm, template = data
  stats = batch_stats_on_split(apply_train, params, template, sp, *train_norm, variance=variance,
                               onednn=onednn)
  variables = {"params": params, "batch_stats": stats}
  out = {}
  for k, split in splits.items():
    res = split_metrics(functools.partial(apply_fn, variables), split, loss, norms[k])
    out.update({(f"{k}_{m}" if k else m): v for m, v in res.items()})
  return out


def _recompute_model_metrics(forward, batch_norm, onednn, loss, data: RecomputeData, params):
  splits, norms, sp, train_norm, template = data
  state = state_on_split(batch_norm, params, template, sp, train_norm, onednn=onednn)
  out = {}
  for k, split in splits.items():
    res = split_metrics(functools.partial(forward, params, state), split, loss, norms[k])
    out.update({(f"{k}_{m}" if k else m): v for m, v in res.items()})
  return out
