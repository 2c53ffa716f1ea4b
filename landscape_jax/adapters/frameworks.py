"""Any JAX model as a pure function over a parameter pytree: linen, NNX, Equinox or plain JAX.

The metric and loss builders (`evaluation.make_metric_fn`, `make_loss_fn`,
`batchnorm.make_recompute_metric_fn`, `recompute_batch_stats`, `methods.ensembles.
evaluate_ensemble`) take, as their ``model``:

* a **Flax linen** module, called as ``model.apply(variables, x, train=...)`` with its BatchNorm
  statistics in ``batch_stats`` (the bundled zoo: the path with BatchNorm folding and oneDNN);
* a **plain function** ``apply_fn(params, inputs) -> outputs`` over any params pytree;
* a `Model`: ``apply(params, state, inputs, train) -> (outputs, new_state)`` with the model
  state evaluated with (BatchNorm running statistics, ...) and, for BatchNorm recomputation,
  `BatchNormHooks`;
* an **NNX** module (``flax.nnx``): params ``nnx.state(module, nnx.Param)``, state everything
  else (BatchNorm statistics, RNG counters); `from_nnx` returns both;
* an **Equinox** module: params ``eqx.filter(module, eqx.is_inexact_array)``, state an
  ``eqx.nn.State`` (``eqx.nn.make_with_state``) passed as ``batch_stats``; `from_equinox`
  returns the `Model` and the params.

`as_model` turns all but linen into a `Model`. Training mode (``train=True``, for training and
curve losses) means BatchNorm normalises with the statistics of the batch; dropout stays off in
every mode, because ``loss_fn(params, batch)`` has no random key to draw masks from.

BatchNorm recomputation (`batchnorm`) needs each BatchNorm layer's per-batch mean and biased
variance in training mode, and a way to write recomputed statistics into the state: NNX
(``nnx.BatchNorm``) and Equinox (``eqx.nn.BatchNorm``) get them here (`BatchNormHooks`);
linen BatchNorms are intercepted directly (`adapters.batchnorm`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from landscape_jax.core import sharding as shd

__all__ = [
  "as_model",
  "BatchNormHooks",
  "from_equinox",
  "from_nnx",
  "inference_fn",
  "is_linen",
  "Model",
  "partitioned_params",
  "Stateless",
]

PyTree = Any
Stats = tuple[tuple[jax.Array, jax.Array], ...]


class BatchNormHooks(NamedTuple):
  """What BatchNorm recomputation needs of a stateful model (see `adapters.batchnorm`).

  Attributes:
    moments: ``moments(params, state, inputs) -> ((mean, var), ...)``: one pass in training mode
      (dropout off) over a batch, returning every BatchNorm layer's per-channel batch mean and
      biased variance, in a fixed layer order; each layer must run once per pass.
    with_stats: ``with_stats(params, state, stats) -> state``: `state` with each layer's running
      statistics replaced by ``stats`` (same order), so that inference normalises with them.
  """

  moments: Callable[[PyTree, PyTree, PyTree], Stats]
  with_stats: Callable[[PyTree, PyTree, Stats], PyTree]


class Model(NamedTuple):
  """A model as a pure function with state.

  Attributes:
    apply: ``apply(params, state, inputs, train) -> (outputs, new_state)``; ``train`` is a Python
      bool (training mode: BatchNorm uses the batch's statistics). Must be traceable, and best
      a hashable object that compares equal for the same model (a module-level function, a
      frozen dataclass): it is the static part of the compiled programs.
    state: the state evaluated with (e.g. BatchNorm running statistics); None if stateless.
    batch_norm: `BatchNormHooks` for `make_recompute_metric_fn` / `recompute_batch_stats`, or
      None.
  """

  apply: Callable[[PyTree, PyTree, PyTree, bool], tuple[Any, PyTree]]
  state: PyTree = None
  batch_norm: BatchNormHooks | None = None


@dataclasses.dataclass(frozen=True)
class Stateless:
  """``apply(params, state, inputs, train) = (fn(params, inputs), state)`` for a plain
  ``fn(params, inputs) -> outputs`` (the same in both modes)."""

  fn: Callable[[PyTree, PyTree], Any]

  def __call__(self, params, state, inputs, train):
    del train
    return self.fn(params, inputs), state


def is_linen(model) -> bool:
  """Whether `model` is a Flax linen module (the builders' linen path)."""
  return isinstance(model, nn.Module)


def _equinox():
  """The equinox module if it has been imported (an Equinox model cannot exist otherwise)."""
  return sys.modules.get("equinox")


def as_model(model, *, batch_stats: PyTree = None) -> Model | None:
  """The `Model` of any supported model (None for a linen module, which has its own path).

  Args:
    model: a linen module, a `Model`, an NNX module, an Equinox module or a plain
      ``apply_fn(params, inputs) -> outputs``.
    batch_stats: the model state to evaluate with, replacing the model's own (a `Model`'s
      ``state``, an NNX module's non-parameter state); for Equinox the ``eqx.nn.State``.

  Raises:
    TypeError: `model` is none of these.
    ValueError: state given for a plain function, or an Equinox model with BatchNorm and no state.
  """
  if is_linen(model):
    return None
  if isinstance(model, Model):
    if not callable(model.apply):
      raise TypeError(f"Model.apply must be callable, got {type(model.apply).__name__}.")
    return model if batch_stats is None else model._replace(state=batch_stats)
  if isinstance(model, nnx.Module):
    m, _ = from_nnx(model)
    return m if batch_stats is None else m._replace(state=batch_stats)
  eqx = _equinox()
  if eqx is not None and isinstance(model, eqx.Module):
    return from_equinox(model, batch_stats)[0]
  if callable(model):
    if batch_stats is not None:
      raise ValueError(
        "A plain apply_fn(params, inputs) has no state, but batch_stats was given. For a model "
        "with state use lj.Model(apply=lambda params, state, inputs, train: (outputs, state), "
        "state=...).")
    return Model(Stateless(model))
  raise TypeError(
    f"model must be a Flax linen or NNX module, an Equinox module, an lj.Model or a function "
    f"apply_fn(params, inputs) -> outputs; got {type(model).__name__}.")


def _variables_apply(apply, default_state, variables, inputs):
  if isinstance(variables, Mapping) and "params" in variables:
    return apply(variables["params"], variables.get("batch_stats", default_state), inputs,
                 False)[0]
  return apply(variables, default_state, inputs, False)[0]


def inference_fn(model, *, batch_stats: PyTree = None) -> Callable[[PyTree, PyTree], Any]:
  """``fn(variables, inputs) -> outputs`` in inference mode, for any supported model.

  ``variables`` is ``{"params": params, "batch_stats": state}`` (the state is then an input,
  e.g. permuted with the parameters by `apply_permutation`), ``{"params": params}`` or the bare
  params (the model's own state, or `batch_stats`, is then held fixed). For a linen module this is
  ``model.apply(variables, inputs, train=False)``. Use it to derive a permutation spec:
  ``spec_from_model(inference_fn(model), {"params": p, "batch_stats": s}, x)``.
  """
  if is_linen(model):
    return functools.partial(model.apply, train=False)
  m = as_model(model, batch_stats=batch_stats)
  return functools.partial(_variables_apply, m.apply, m.state)


# ------------------------------------------------------------------------------------------ NNX


def _nnx_batchnorms(module) -> list:
  return [m for _, m in nnx.iter_graph(module) if isinstance(m, nnx.BatchNorm)]


def _plain(value):
  """Mappings (flax's HashableMapping included) as dicts, sequences as tuples, recursively."""
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, tuple | list):
    return tuple(_plain(v) for v in value)
  return value


def _graphdef_identity(graphdef) -> tuple:
  """What a GraphDef describes (node types, attribute names and static values), for
  `core.identity` (its metadata mappings are not inspectable as they are)."""
  nodes = [(type(n).__name__, getattr(n, "type", None), getattr(n, "index", None),
            getattr(n, "num_attributes", None)) for n in getattr(graphdef, "nodes", ())]
  attrs = [(name, _plain(getattr(a, "value", type(a).__name__)))
           for name, a in getattr(graphdef, "attributes", ())]
  return ("nnx.GraphDef", nodes, attrs)


@dataclasses.dataclass(frozen=True)
class NNXApply:
  """`Model.apply` of an NNX module: ``nnx.merge`` (a copy), set the mode, call, split."""

  graphdef: Any

  def __call__(self, params, state, inputs, train):
    module = nnx.merge(self.graphdef, params, state, copy=True)
    module.set_attributes(use_running_average=not train, deterministic=True,
                          raise_if_not_found=False)
    out = module(inputs)
    return out, nnx.split(module, nnx.Param, ...)[2]

  def __landscape_identity__(self):
    return _graphdef_identity(self.graphdef)


@dataclasses.dataclass(frozen=True)
class NNXBatchNorm:
  """`BatchNormHooks` of an NNX module: its ``nnx.BatchNorm`` layers in graph order, run with
  momentum 0 so that their updated statistics are exactly the batch's."""

  graphdef: Any

  def moments(self, params, state, inputs) -> Stats:
    module = nnx.merge(self.graphdef, params, state, copy=True)
    module.set_attributes(use_running_average=False, deterministic=True,
                          raise_if_not_found=False)
    layers = _nnx_batchnorms(module)
    for bn in layers:
      bn.momentum = 0.0  # running <- 0 * running + 1 * batch statistic
      bn.mean[...] = jnp.zeros_like(bn.mean[...])
      bn.var[...] = jnp.zeros_like(bn.var[...])
    module(inputs)
    return tuple((bn.mean[...], bn.var[...]) for bn in layers)

  def with_stats(self, params, state, stats: Stats):
    module = nnx.merge(self.graphdef, params, state, copy=True)
    for bn, (mean, var) in zip(_nnx_batchnorms(module), stats, strict=True):
      bn.mean[...] = mean.astype(bn.mean[...].dtype)
      bn.var[...] = var.astype(bn.var[...].dtype)
    return nnx.split(module, nnx.Param, ...)[2]

  def __landscape_identity__(self):
    return _graphdef_identity(self.graphdef)


def from_nnx(module) -> tuple[Model, PyTree]:
  """``(Model, params)`` of an NNX module: ``graphdef, params, state = nnx.split(module,
  nnx.Param, ...)``.

  ``Model.apply(params, state, inputs, train)`` merges a copy of the module, sets
  ``use_running_average = not train`` (BatchNorm) and ``deterministic = True`` (dropout off)
  on every layer that has them, calls ``module(inputs)`` and returns the outputs and the new
  non-parameter state. The state (BatchNorm statistics, RNG counters) is ``Model.state``; with
  ``nnx.BatchNorm`` layers ``Model.batch_norm`` recomputes their statistics. The params are an
  ``nnx.State`` (a pytree whose leaves are the arrays); kernels are ``(..., in, out)``, the
  layout filter normalisation assumes.
  """
  if not isinstance(module, nnx.Module):
    raise TypeError(f"from_nnx needs an nnx.Module, got {type(module).__name__}.")
  graphdef, params, state = nnx.split(module, nnx.Param, ...)
  hooks = None
  if _nnx_batchnorms(module):
    bn = NNXBatchNorm(graphdef)
    hooks = BatchNormHooks(bn.moments, bn.with_stats)
  return Model(NNXApply(graphdef), state, hooks), params


# ------------------------------------------------------------------------------------- Equinox


def _eqx_batchnorms(tree) -> list:
  eqx = _equinox()
  is_bn = lambda x: isinstance(x, eqx.nn.BatchNorm)
  return [x for x in jax.tree.leaves(tree, is_leaf=is_bn) if is_bn(x)]


def _eqx_dropouts(tree) -> list:
  eqx = _equinox()
  is_drop = lambda x: isinstance(x, eqx.nn.Dropout)
  return [x for x in jax.tree.leaves(tree, is_leaf=is_drop) if is_drop(x)]


def _eqx_mode(model, train: bool):
  """BatchNorm in training mode iff `train`; dropout always off."""
  eqx = _equinox()
  model = eqx.nn.inference_mode(model, value=not train)
  n = len(_eqx_dropouts(model))
  if n and train:
    model = eqx.tree_at(lambda m: [d.inference for d in _eqx_dropouts(m)], model,
                        replace=[True] * n)
  return model


def _clone_state(state):
  """A fresh ``eqx.nn.State`` object (``State.set`` invalidates the object it is called on)."""
  leaves, treedef = jax.tree_util.tree_flatten(state)
  return jax.tree_util.tree_unflatten(treedef, leaves)


@dataclasses.dataclass(frozen=True)
class EquinoxApply:
  """`Model.apply` of an Equinox module: ``eqx.combine``, set the mode, call (vmapped over the
  examples with ``axis_name`` unless `batched`)."""

  static: Any
  stateful: bool
  batched: bool
  axis_name: Hashable

  def call(self, model, state, inputs):
    if self.stateful:
      state = _clone_state(state)
      if self.batched:
        return model(inputs, state)
      return jax.vmap(model, axis_name=self.axis_name, in_axes=(0, None), out_axes=(0, None))(
        inputs, state)
    out = model(inputs) if self.batched else jax.vmap(model, axis_name=self.axis_name)(inputs)
    return out, state

  def __call__(self, params, state, inputs, train):
    eqx = _equinox()
    return self.call(_eqx_mode(eqx.combine(params, self.static), train), state, inputs)


def _zero_momentum(bn):
  out = copy.copy(bn)
  object.__setattr__(out, "momentum", 0.0)  # a frozen module: a modified copy
  return out


@dataclasses.dataclass(frozen=True)
class EquinoxBatchNorm:
  """`BatchNormHooks` of an Equinox module: its ``eqx.nn.BatchNorm`` layers (both modes,
  ``"ema"`` and ``"batch"``) in pytree order, run with momentum 0."""

  apply: EquinoxApply

  def moments(self, params, state, inputs) -> Stats:
    eqx = _equinox()
    model = _eqx_mode(eqx.combine(params, self.apply.static), True)
    layers = _eqx_batchnorms(model)
    state = _clone_state(state)
    for bn in layers:
      if getattr(bn, "mode", "ema") == "ema":
        state = state.set(bn.ema_first_time_index, jnp.array(True))
      else:
        mean, var = state.get(bn.batch_state_index)
        state = state.set(bn.batch_state_index, (jnp.zeros_like(mean), jnp.zeros_like(var)))
    model = eqx.tree_at(_eqx_batchnorms, model, replace=[_zero_momentum(b) for b in layers])
    _, new_state = self.apply.call(model, state, inputs)
    return tuple(tuple(new_state.get(_running_index(bn))) for bn in layers)

  def with_stats(self, params, state, stats: Stats):
    del params
    state = _clone_state(state)
    for bn, (mean, var) in zip(_eqx_batchnorms(self.apply.static), stats, strict=True):
      index = _running_index(bn)
      old_mean, old_var = state.get(index)
      if getattr(bn, "mode", "ema") != "ema":  # inference divides by 1 - m^counter (1 at 0)
        state = state.set(bn.batch_counter, jnp.zeros_like(state.get(bn.batch_counter)))
      state = state.set(index, (mean.astype(old_mean.dtype), var.astype(old_var.dtype)))
    return state


def _running_index(bn):
  return bn.ema_state_index if getattr(bn, "mode", "ema") == "ema" else bn.batch_state_index


def from_equinox(model, state: PyTree = None, *, batched: bool = False,
                 axis_name: Hashable = "batch") -> tuple[Model, PyTree]:
  """``(Model, params)`` of an Equinox module: ``params, static = eqx.partition(model,
  eqx.is_inexact_array)``.

  The module is called the Equinox way: on one example, ``model(x)`` (stateless) or
  ``model(x, state) -> (y, state)`` (with ``eqx.nn.State``), vmapped over the batch with
  ``axis_name`` (the name its ``eqx.nn.BatchNorm`` layers were built with); with ``batched=True``
  it is called once on the whole batch instead. ``train`` switches ``eqx.nn.inference_mode``
  (BatchNorm uses the batch's statistics in training mode); dropout stays off. The params are a
  module-shaped pytree (None where the model holds no float array). Equinox weights are
  ``(out, in)`` (``Linear``) and ``(out, in, kh, kw)`` (``Conv``), not the ``(..., in, out)``
  layout that filter normalisation assumes.

  Args:
    model: an ``eqx.Module``.
    state: its ``eqx.nn.State`` (``eqx.nn.make_with_state``), required if it has BatchNorm.
    batched: call the module on whole batches instead of vmapping it over the examples.
    axis_name: the vmapped axis name (BatchNorm's ``axis_name``).
  """
  eqx = _equinox()
  if eqx is None or not isinstance(model, eqx.Module):
    raise TypeError(f"from_equinox needs an equinox.Module, got {type(model).__name__}.")
  has_bn = bool(_eqx_batchnorms(model))
  if has_bn and state is None:
    raise ValueError(
      "This Equinox model has BatchNorm layers but no state was given: build it with "
      "model, state = eqx.nn.make_with_state(ModelClass)(...) and pass the state "
      "(from_equinox(model, state), or batch_stats=state to the builders).")
  params, static = eqx.partition(model, eqx.is_inexact_array)
  apply = EquinoxApply(static, state is not None, bool(batched), axis_name)
  hooks = None
  if has_bn:
    bn = EquinoxBatchNorm(apply)
    hooks = BatchNormHooks(bn.moments, bn.with_stats)
  return Model(apply, state, hooks), params


def partitioned_params(params: PyTree, mesh) -> PyTree:
  """Linen parameters with partitioning metadata, unboxed and placed on `mesh`.

  A leaf boxed by ``nn.with_partitioning(init, names)`` (an ``nn.Partitioned``) gets
  ``NamedSharding(mesh, P(*names))``, where names that are not axes of the mesh are replicated
  (so the same model runs on a mesh without a ``model`` axis); every other leaf follows the FSDP
  rule of `core.sharding.param_shardings` (its largest axis divisible by the model axis size, or
  replicated). Leaves already placed on `mesh` are kept. The result is a plain pytree of arrays
  (``nn.meta.unbox``), ready for the rest of the library.

  Args:
    params: e.g. ``model.init(key, x)["params"]`` of a model whose initialisers use
      `nn.with_partitioning` (`models.gpt.GPT` does).
    mesh: a `Mesh` or `core.sharding.MeshRoles`.
  """
  roles = shd.mesh_roles(mesh)
  names = set(roles.mesh.axis_names)

  def one(x):
    if isinstance(x, nn.Partitioned):
      spec = P(*(n if n in names else None for n in x.names))
      return shd.put(x.value, NamedSharding(roles.mesh, spec))
    return shd.place(x, roles, shard_model=True)

  return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
