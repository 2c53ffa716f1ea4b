"""Inference-time BatchNorm folding: each BN that follows a convolution or dense layer is merged
into that layer's kernel and bias, inside the compiled function.

In inference mode a BatchNorm after a linear layer ``z = x * W (+ b)`` computes

    BN(z) = gamma (z - mu) / sqrt(var + eps) + beta = x * (W s) + (beta + (b - mu) s),
    s = gamma / sqrt(var + eps)   (per output channel, the last axis of a Flax kernel),

so the pair is one linear layer with kernel ``W s`` and bias ``beta + (b - mu) s`` (Ioffe & Szegedy
2015, sec. 3.2; the standard "conv-BN folding" of inference engines). `fuse_batchnorm` finds the
pairs of a linen model by tracing it once (abstractly) and returns an ``apply_fn(variables, x)``
that takes the *unfolded* ``{"params", "batch_stats"}`` and folds them on the fly. Folding costs
O(#parameters) per call, so the parameters can be perturbed freely (surface grid points, curve
points): the function computed is exactly ``model.apply(variables, x, train=False)``, up to
float rounding, and it skips one elementwise pass (scale and shift) per BatchNorm.

A BatchNorm is folded only when its input is, as traced, exactly the output of a `nn.Conv` or
`nn.Dense` (no activation or other op in between); that layer's output must have no other
consumer (true of every bundled model). `evaluation.make_metric_fn` folds by default
(``fold_batchnorm=True``), so every surface, interpolation and curve evaluation gets it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any
Path = tuple[str, ...]
_LINEAR = (nn.Conv, nn.Dense)


def batchnorm_pairs(model: nn.Module, variables: PyTree, x) -> tuple[tuple[Path, Path], ...]:
  """The ``(linear layer path, BatchNorm path)`` pairs that can be folded, in call order.

  Args:
    model: a linen model called as ``model.apply(variables, x, train=False)``.
    variables: its ``{"params", "batch_stats"}`` (only shapes are used).
    x: an example input batch (only its shape and dtype are used).

  Returns:
    Tuples of module paths, e.g. ``(("layer1_0", "conv1"), ("layer1_0", "bn1"))``.
  """
  return tuple(pair for pair, _ in _trace_pairs(model, variables, x))


def _trace_pairs(model, variables, x) -> list[tuple[tuple[Path, Path], float]]:
  """Traces the model abstractly; returns ``((layer, bn), bn.epsilon)`` for each foldable BN."""
  outputs: dict[int, Path] = {}
  keep = []  # keeps traced outputs alive so that their ids stay unique during the trace
  pairs: list[tuple[tuple[Path, Path], float]] = []
  used: set[Path] = set()

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__":
      return out
    module = context.module
    if isinstance(module, _LINEAR):
      outputs[id(out)] = tuple(module.path)
      keep.append(out)
    elif isinstance(module, nn.BatchNorm) and args:
      src = outputs.get(id(args[0]))
      axis = module.axis if isinstance(module.axis, int) else None
      if src is not None and src not in used and axis in (-1, args[0].ndim - 1):
        pairs.append(((src, tuple(module.path)), float(module.epsilon)))
        used.add(src)
    return out

  def run(v, x):
    with nn.intercept_methods(interceptor):
      return model.apply(v, x, train=False)

  spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
                      (variables, x))
  jax.eval_shape(run, *spec)  # also inside a trace: shapes only
  return pairs


def _get(tree, path: Path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path: Path, leaf_key: str, value):
  """Returns a copy of the nested dict `tree` with ``tree[path][leaf_key] = value``."""
  if not path:
    return {**tree, leaf_key: value}
  head, rest = path[0], path[1:]
  return {**tree, head: _set(tree[head], rest, leaf_key, value)}


def fold_batchnorm(variables: PyTree, pairs, *, epsilons: Mapping[Path, float]
                   ) -> tuple[PyTree, dict[Path, jax.Array]]:
  """Folds each BatchNorm of `pairs` into its linear layer.

  ``s = scale / sqrt(var + eps)``; ``kernel <- kernel * s`` (last axis); the folded bias
  ``beta + (b - mean) s`` is written to the layer's own ``bias`` when it has one, else returned in
  the second output keyed by the layer's path (added by `fuse_batchnorm`'s apply).

  Returns:
    ``(folded variables, {layer path: bias to add})``.
  """
  params, stats = variables["params"], variables["batch_stats"]
  extra: dict[Path, jax.Array] = {}
  for lin, bn in pairs:
    bn_params, bn_stats = _get(params, bn), _get(stats, bn)
    mean, var = bn_stats["mean"], bn_stats["var"]
    s = jax.lax.rsqrt(var + epsilons[bn])
    if "scale" in bn_params:
      s = s * bn_params["scale"]
    shift = bn_params["bias"] if "bias" in bn_params else jnp.zeros_like(mean)
    layer = _get(params, lin)
    kernel = layer["kernel"]
    params = _set(params, lin, "kernel", (kernel * s.astype(kernel.dtype)))
    if "bias" in layer:
      params = _set(params, lin, "bias", shift + (layer["bias"] - mean) * s)
    else:
      extra[lin] = shift - mean * s
  return {**variables, "params": params}, extra


def _fused_apply(model, pairs, epsilons, variables, x):
  eps = dict(epsilons)
  folded, extra = fold_batchnorm(variables, pairs, epsilons=eps)
  bns = {bn for _, bn in pairs}

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      path = tuple(context.module.path)
      if path in bns:
        return args[0]
      if path in extra:
        out = next_fun(*args, **kwargs)
        return out + extra[path].astype(out.dtype)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    return model.apply(folded, x, train=False)


def fuse_batchnorm(model: nn.Module, variables: PyTree, x):
  """``apply_fn(variables, x)`` equal to ``model.apply(variables, x, train=False)`` with every
  foldable BatchNorm merged into the preceding conv/dense layer (see the module docstring).

  Args:
    model: a linen model with BatchNorm (``batch_stats``); without foldable pairs the result is
      plain inference.
    variables: example ``{"params", "batch_stats"}`` (shapes only; the returned function takes
      any variables of the same structure, folded at every call).
    x: an example input batch (shape and dtype only).

  Returns:
    A hashable function (usable as a static argument of `jax.jit`).
  """
  traced = _trace_pairs(model, variables, x)
  pairs = tuple(pair for pair, _ in traced)
  epsilons = tuple((pair[1], eps) for pair, eps in traced)
  return functools.partial(_fused_apply, model, pairs, epsilons)


__all__ = ["batchnorm_pairs", "fold_batchnorm", "fuse_batchnorm"]
