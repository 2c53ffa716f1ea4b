"""Function-preserving reparametrisations: ReLU layer rescaling and rescaling before BatchNorm.

Dinh et al. 2017's objection to sharpness: a ReLU network computes the same function after
``W_l -> alpha W_l, b_l -> alpha b_l, W_{l+1} -> W_{l+1} / alpha`` (``relu(alpha x) = alpha
relu(x)`` for ``alpha > 0``, and max pooling commutes with it), yet its Hessian, worst-case and
average sharpness change by up to ``alpha^2``. The same holds per hidden unit (a vector
``alpha``) and for the weights before a BatchNorm, which normalises any positive scale away.
These functions make such models so that a measure can be checked against them
(docs/sharpness.md has the table of which measure is invariant to which); the permutations of
hidden units are `core.permutations.apply_permutation`.

Layers are named by their path prefix in the parameter pytree (``"Dense_0"``, ``"conv_1"``,
``"layer1_0/conv1"``, as `trees.leaf_paths` prints them); a layer's ``kernel`` has its output
units on the last axis and its input units on the axis before (Flax Dense ``(in, out)`` and
convolution ``HWIO`` kernels alike, docs/design.md). A Dense layer after a flatten takes
``H * W * C`` inputs in NHWC order (channel fastest); a per-channel ``alpha`` is tiled to match.

References:
  Dinh, Pascanu, Bengio and Bengio 2017, "Sharp Minima Can Generalize For Deep Nets", Sec. 4.
  Neyshabur, Salakhutdinov and Srebro 2015, "Path-SGD: Path-Normalized Optimization in Deep
  Neural Networks" (rescaling invariance of ReLU networks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape_jax.core.trees import leaf_paths, map_with_path

__all__ = [
  "random_rescaling",
  "rescale_before_batchnorm",
  "rescale_relu_layers",
]

PyTree = Any


def _in_layer(path: str, layer: str) -> bool:
  return path == layer or path.startswith(layer + "/")


def _check_layer(params: PyTree, layer: str, arg: str) -> None:
  paths = leaf_paths(params)
  if not any(_in_layer(p, layer) and p.endswith("kernel") for p in paths):
    raise ValueError(f"{arg}={layer!r} names no layer with a kernel; the parameter paths are "
                     f"{paths}.")


def _alpha(alpha) -> np.ndarray:
  a = np.asarray(alpha, np.float64)
  if a.ndim > 1 or not np.all(a > 0) or not np.all(np.isfinite(a)):
    raise ValueError("alpha must be a positive finite scalar (layer-wise) or a vector of positive "
                     f"factors (one per output unit); got {alpha!r}.")
  return a


def _out_scale(leaf, a):
  """``leaf * a`` along the last (output-unit) axis."""
  if a.ndim == 1 and leaf.shape[-1] != a.shape[0]:
    raise ValueError(f"alpha has {a.shape[0]} factors but the layer has {leaf.shape[-1]} output "
                     "units.")
  return (leaf * jnp.asarray(a, leaf.dtype)).astype(leaf.dtype)


def _in_scale(kernel, a):
  """``kernel / a`` along the input axis (-2), tiling a per-channel `a` over a flatten."""
  if a.ndim == 1:
    n_in = kernel.shape[-2]
    if n_in % a.shape[0]:
      raise ValueError(f"The next layer has {n_in} inputs, not a multiple of the {a.shape[0]} "
                       "factors of alpha.")
    a = np.tile(a, n_in // a.shape[0])[:, None]
  return (kernel / jnp.asarray(a, kernel.dtype)).astype(kernel.dtype)


def rescale_relu_layers(params: PyTree, *, first: str, second: str, alpha) -> PyTree:
  """``W_1 -> W_1 diag(alpha)``, ``b_1 -> alpha b_1``, ``W_2 -> diag(1 / alpha) W_2``.

  The network computes the same function when only a positively homogeneous map (ReLU, max
  pooling, a flatten) lies between `first` and `second`.

  Args:
    params: the parameters.
    first: path prefix of the layer whose outputs are scaled (its kernel and bias).
    second: path prefix of the next layer, whose inputs are scaled back (its kernel).
    alpha: a positive scalar (every unit) or a vector of positive factors, one per output unit of
      `first` (per unit).

  Returns:
    The rescaled parameters (same structure and dtypes).

  References:
    Dinh et al. 2017, Sec. 4 ("alpha-scale transformation").
  """
  a = _alpha(alpha)
  _check_layer(params, first, "first")
  _check_layer(params, second, "second")

  def fn(path, leaf):
    if _in_layer(path, first) and (path.endswith("kernel") or path.endswith("bias")):
      return _out_scale(leaf, a)
    if _in_layer(path, second) and path.endswith("kernel"):
      return _in_scale(leaf, a)
    return leaf

  return map_with_path(fn, params)


def rescale_before_batchnorm(variables: dict, *, layer: str, batch_norm: str | None = None,
                             alpha) -> dict:
  """Scales the kernel (and bias) of `layer`, which feeds a BatchNorm, by `alpha` > 0.

  BatchNorm divides by the standard deviation of its input, so the function is unchanged: with
  batch statistics (training mode) up to its ``epsilon``, and with running statistics when
  those are rescaled too (``mean -> alpha mean``, ``var -> alpha^2 var``), which this does for
  the ``batch_stats`` entry `batch_norm` of `variables`. With ``var >> epsilon`` the outputs agree
  to a relative ``epsilon / var``.

  Args:
    variables: ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` optional).
    layer: path prefix (in ``params``) of the layer before the BatchNorm.
    batch_norm: path prefix (in ``batch_stats``) of the BatchNorm whose running ``mean`` and
      ``var`` are rescaled; None: leave ``batch_stats`` as they are.
    alpha: a positive scalar or one positive factor per channel.

  Returns:
    The rescaled variables.

  References:
    Ioffe and Szegedy 2015 (BatchNorm's scale invariance); Dinh et al. 2017; Li et al. 2018,
    Sec. 4 (the reason for filter normalisation).
  """
  if "params" not in variables:
    raise ValueError("variables must be a dict with a 'params' entry (and optionally "
                     "'batch_stats').")
  a = _alpha(alpha)
  _check_layer(variables["params"], layer, "layer")
  out = dict(variables)
  out["params"] = map_with_path(
    lambda p, x: _out_scale(x, a) if _in_layer(p, layer) and (p.endswith("kernel") or
                                                               p.endswith("bias")) else x,
    variables["params"])
  if batch_norm is not None:
    stats = variables.get("batch_stats")
    if stats is None or not any(_in_layer(p, batch_norm) for p in leaf_paths(stats)):
      raise ValueError(f"batch_norm={batch_norm!r} names no entry of variables['batch_stats'].")

    def fn(p, x):
      if _in_layer(p, batch_norm) and p.endswith("mean"):
        return _out_scale(x, a)
      if _in_layer(p, batch_norm) and p.endswith("var"):
        return _out_scale(x, a * a)
      return x

    out["batch_stats"] = map_with_path(fn, stats)
  return out


def random_rescaling(key: jax.Array, params: PyTree, layers: Sequence[str], *,
                     low: float = 0.25, high: float = 4.0, per_unit: bool = True) -> PyTree:
  """Rescales every consecutive pair of a chain of ReLU layers by random factors.

  For each pair ``(layers[i], layers[i + 1])`` draws factors log-uniformly in ``[low, high]``
  (one per output unit of ``layers[i]`` with `per_unit`, else one) and applies
  `rescale_relu_layers`. The function of the network is unchanged.

  Args:
    key: `jax.random` key.
    params: the parameters.
    layers: path prefixes of the layers in order (e.g. ``["Dense_0", "Dense_1", "Dense_2"]``).
    low, high: the range of the factors (0 < low <= high).
    per_unit: one factor per unit instead of per layer.

  Returns:
    The rescaled parameters.
  """
  if not 0 < low <= high:
    raise ValueError(f"Need 0 < low <= high, got low={low}, high={high}.")
  if len(layers) < 2:
    raise ValueError(f"layers must name at least two consecutive layers, got {list(layers)}.")
  paths = leaf_paths(params)
  for i, (first, second) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
    _check_layer(params, first, "layers")
    kernel = next(x for p, x in zip(paths, jax.tree.leaves(params), strict=True)
                  if _in_layer(p, first) and p.endswith("kernel"))
    n = kernel.shape[-1] if per_unit else 1
    u = np.asarray(jax.random.uniform(jax.random.fold_in(key, i), (n,), jnp.float32))
    a = np.exp(np.log(low) + u * (np.log(high) - np.log(low)))
    params = rescale_relu_layers(params, first=first, second=second,
                                 alpha=a if per_unit else float(a[0]))
  return params
