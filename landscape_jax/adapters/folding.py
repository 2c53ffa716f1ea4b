"""Inference-time BatchNorm folding: each BN that follows a convolution or dense layer, and is the
only consumer of that layer's output, is merged into that layer's kernel and bias, inside the
compiled function.

In inference mode a BatchNorm after a linear layer ``z = x * W (+ b)`` computes

    BN(z) = gamma (z - mu) / sqrt(var + eps) + beta = x * (W s) + (beta + (b - mu) s),
    s = gamma / sqrt(var + eps)   (per output channel, the last axis of a Flax kernel),

so the pair is one linear layer with kernel ``W s`` and bias ``beta + (b - mu) s`` (Ioffe & Szegedy
2015, sec. 3.2; the standard "conv-BN folding" of inference engines). `fuse_batchnorm` finds the
pairs of a linen model by tracing it once (abstractly) and returns an ``apply_fn(variables, x)``
that takes the *unfolded* ``{"params", "batch_stats"}`` and folds them on the fly. Folding costs
O(#parameters) per call, so the parameters can be perturbed freely (surface grid points, curve
points), and it skips one elementwise pass (scale and shift) per folded BatchNorm.

What is folded. Folding replaces the layer's output ``z`` by ``BN(z)`` everywhere, so it is exact
only where ``BN`` is the one consumer of ``z``. A (layer, BatchNorm) pair is folded when all of:

* the BatchNorm's input is, as traced, exactly the output of an `nn.Conv` or `nn.Dense` call (no
  activation or other op in between);
* that output has no other consumer in the traced program: no residual shortcut, concatenation
  or model output reads it (the program is traced with `jax.make_jaxpr` and the uses of the
  layer's output variable are counted, inside nested jaxprs too);
* the layer and the BatchNorm are each called once (no weight sharing), and the BatchNorm uses
  its running statistics, normalises the last axis and has no mask.

So in a post-activation ResNet every BatchNorm is folded; in pre-activation nets (PreResNet,
Wide-ResNet) and DenseNet the BatchNorm that reads the stem convolution (whose output is also the
first shortcut or concatenated) is not, the bottleneck ``conv1 -> bn2`` pairs are.
`folding_plan` lists what is folded and why the others are not.

Build-time check. `fuse_batchnorm` then evaluates the folded and the unfolded model once, on a
few random inputs of the given per-example shape with random variables of the given structure
(random running statistics and affine parameters, so that a wrong fold cannot hide behind the
identity statistics of a fresh model), in one small compiled program run at build time (also when
it is built inside a jit or vmap trace). If the outputs differ by more than float rounding
(``max|folded - unfolded| > rtol max|unfolded|``, ``rtol = 1e-4`` in float32, 16 machine epsilons
of a 16-bit computation dtype), it folds nothing: it returns plain ``model.apply`` and logs a
warning saying why. Plan and check are cached per model, variable structure and input shape.
`evaluation.make_metric_fn` folds by default (``fold_batchnorm=True``), so every surface,
interpolation and curve evaluation gets it.

Linen only. Folding finds its pairs by intercepting `nn.Conv` / `nn.Dense` / `nn.BatchNorm`
calls, so it applies to Flax linen modules alone: the builders evaluate every other model (NNX,
Equinox, a plain function, an `adapters.frameworks.Model`) unfolded, exactly as it computes, and
ignore ``fold_batchnorm`` for it; folding never changes such a model's numbers.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from landscape_jax.backends.cpu.jaxpr import JIT_PRIMITIVES

PyTree = Any
Path = tuple[str, ...]
_LINEAR = (nn.Conv, nn.Dense)
_log = logging.getLogger(__name__)

_LIN_TAG = "_landscape_jax_fold_linear_"  # names of the identity `jax.jit`s marking the outputs
_BN_TAG = "_landscape_jax_fold_batchnorm_"
CHECK_BATCH = 4  # random inputs of the build-time check
CHECK_RTOL = 1e-4  # relative tolerance of the check in float32 (see `_check_rtol`)


class FoldPlan(NamedTuple):
  """What `fuse_batchnorm` folds for one model, variable structure and input shape.

  Attributes:
    pairs: ``(linear layer path, BatchNorm path)`` of the folded pairs, in call order.
    epsilons: ``(BatchNorm path, epsilon)`` for each pair.
    skipped: ``(linear layer path, BatchNorm path, reason)`` for each BatchNorm that reads a
      conv/dense output but is not folded.
    check: None when the build-time numerical check passed (or was not run, or there is nothing
      to fold), else why folding is refused (then nothing is folded).
  """

  pairs: tuple[tuple[Path, Path], ...]
  epsilons: tuple[tuple[Path, float], ...]
  skipped: tuple[tuple[Path, Path, str], ...]
  check: str | None


def batchnorm_pairs(model: nn.Module, variables: PyTree, x) -> tuple[tuple[Path, Path], ...]:
  """The ``(linear layer path, BatchNorm path)`` pairs that can be folded, in call order.

  Only pairs whose layer output feeds nothing but the BatchNorm (see the module docstring).

  Args:
    model: a linen model called as ``model.apply(variables, x, train=False)``.
    variables: its ``{"params", "batch_stats"}`` (only shapes are used).
    x: an example input batch (only its shape and dtype are used).

  Returns:
    Tuples of module paths, e.g. ``(("layer1_0", "conv1"), ("layer1_0", "bn1"))``.
  """
  return _structure(model, *_spec(variables, x))[0]


def folding_plan(model: nn.Module, variables: PyTree, x, *, check: bool = True) -> FoldPlan:
  """The folded pairs, the skipped BatchNorms with reasons, and the build-time check's verdict.

  Args:
    model: a linen model called as ``model.apply(variables, x, train=False)``.
    variables: its ``{"params", "batch_stats"}`` (only the structure, shapes and dtypes are used;
      tracers are fine).
    x: an example input batch (only its per-example shape and dtype are used).
    check: run the numerical check (see the module docstring); cached, so it runs once per
      model, variable structure and input shape in a process.
  """
  spec = _spec(variables, x)
  return _cached(_plans, (model, spec, bool(check)), lambda: _plan(model, spec, bool(check)))


_CACHE_SIZE = 64
_structures: dict = {}  # (model, spec) -> `trace_structure`'s result
_plans: dict = {}  # (model, spec, check) -> FoldPlan


def _cached(cache: dict, key, compute):
  """``cache[key]``, computed on a miss (the oldest entry evicted beyond `_CACHE_SIZE`); an
  unhashable key (an unhashable model) is computed every time."""
  try:
    if key in cache:
      return cache[key]
  except TypeError:
    return compute()
  value = compute()
  if len(cache) >= _CACHE_SIZE:
    cache.pop(next(iter(cache)))
  cache[key] = value
  return value


def _spec(variables, x):
  """A hashable description of the shapes: (treedef, leaf (shape, dtype)s, x shape[1:], x dtype)."""
  leaves, treedef = jax.tree.flatten(variables)
  return (treedef, tuple((tuple(jnp.shape(a)), jnp.dtype(jnp.result_type(a))) for a in leaves),
          tuple(jnp.shape(x)[1:]), jnp.dtype(jnp.result_type(x)))


def _abstract(spec):
  treedef, leaves, x_shape, x_dtype = spec
  variables = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
  return variables, jax.ShapeDtypeStruct((CHECK_BATCH, *x_shape), x_dtype)


def _plan(model, spec, check: bool) -> FoldPlan:
  pairs, epsilons, skipped, rtol = _structure(model, *spec)
  verdict = None
  if check and pairs:
    verdict = numerical_check(model, pairs, epsilons, spec, rtol)
    if verdict is not None:
      _log.warning(
        "landscape_jax.adapters.folding: BatchNorm folding refused for %s on inputs of shape "
        "%s: %s. It is "
        "evaluated unfolded (model.apply), which is exact but does one more elementwise pass per "
        "BatchNorm; pass fold_batchnorm=False to make this explicit.",
        type(model).__name__, spec[2], verdict)
  return FoldPlan(pairs, epsilons, skipped, verdict)


def _tag(prefix: str, i: int):
  """An identity `jax.jit` named ``prefix + i``: a marker equation in the traced jaxpr."""

  def identity(y):
    return y

  identity.__name__ = identity.__qualname__ = f"{prefix}{i}"
  return jax.jit(identity)


def _structure(model, *spec):
  """``(pairs, epsilons, skipped, rtol)`` of `trace_structure`, cached."""
  return _cached(_structures, (model, spec), lambda: trace_structure(model, spec))


def trace_structure(model, spec):
  """Finds the BatchNorms that read a conv/dense output (flax interceptor), marks both ends with
  identity equations, traces the model with `jax.make_jaxpr` and keeps the pairs whose layer
  output's only consumer is the BatchNorm."""
  outputs: dict[int, tuple[Path, int]] = {}
  keep = []  # keeps traced outputs alive so that their ids stay unique during the trace
  candidates: list[tuple[Path, Path, float, int, str | None]] = []
  calls: collections.Counter[Path] = collections.Counter()

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    module = context.module
    path = tuple(module.path)
    if isinstance(module, _LINEAR):
      calls[path] += 1
      out = _tag(_LIN_TAG, len(keep))(next_fun(*args, **kwargs))
      outputs[id(out)] = (path, len(keep))
      keep.append(out)
      return out
    if isinstance(module, nn.BatchNorm):
      calls[path] += 1
      src = outputs.get(id(args[0])) if args else None
      if src is not None:
        lin, i = src
        candidates.append((lin, path, float(module.epsilon), i,
                           _batchnorm_unfoldable(module, args, kwargs)))
        args = (_tag(_BN_TAG, i)(args[0]), *args[1:])
    return next_fun(*args, **kwargs)

  def run(v, x):
    with nn.intercept_methods(interceptor):
      return model.apply(v, x, train=False)

  closed = jax.make_jaxpr(run)(*_abstract(spec))  # shapes only, also inside a trace
  consumers: dict[int, list[str]] = {}
  _find_consumers(closed.jaxpr, consumers)
  pairs, epsilons, skipped = [], [], []
  for lin, bn, eps, i, reason in candidates:
    if reason is None and calls[lin] > 1:
      reason = (f"{'/'.join(lin)} runs {calls[lin]} times (shared weights, or a subclass that "
                "calls its parent's __call__)")
    if reason is None and calls[bn] > 1:
      reason = f"the BatchNorm runs {calls[bn]} times (shared statistics)"
    if reason is None and consumers.get(i) != [f"{_BN_TAG}{i}"]:
      others = [c for c in consumers.get(i, []) if c != f"{_BN_TAG}{i}"]
      reason = (f"the output of {'/'.join(lin)} is also read by "
                f"{', '.join(sorted(set(others))) or 'nothing traceable'} (e.g. a shortcut or "
                "a concatenation), which must see the unfolded values")
    if reason is None:
      pairs.append((lin, bn))
      epsilons.append((bn, eps))
    else:
      skipped.append((lin, bn, reason))
  return tuple(pairs), tuple(epsilons), tuple(skipped), _check_rtol(closed.jaxpr)


def _batchnorm_unfoldable(module: nn.BatchNorm, args, kwargs) -> str | None:
  """Why this BatchNorm call cannot be folded into a linear layer (None if it can)."""
  ura = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
  ura = module.use_running_average if ura is None else ura
  if not isinstance(ura, (bool, np.bool_)) or not ura:
    return "the BatchNorm uses batch statistics at inference (use_running_average is not True)"
  if kwargs.get("mask") is not None:
    return "the BatchNorm has a mask"
  axis = module.axis if isinstance(module.axis, int) else None
  if axis not in (-1, args[0].ndim - 1):
    return f"the BatchNorm normalises axis {module.axis}, not the last (feature) axis"
  return None


def _subjaxprs(eqn):
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, jex.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jex.Jaxpr):
        yield v


def _tag_name(eqn) -> str | None:
  name = eqn.params.get("name") if eqn.primitive.name in JIT_PRIMITIVES else None
  return name if isinstance(name, str) and name.startswith((_LIN_TAG, _BN_TAG)) else None


def _find_consumers(jaxpr, consumers: dict[int, list[str]]) -> None:
  """``consumers[i]``: what reads the output of linear tag ``i`` (in the scope that defines it,
  nested jaxprs included): BatchNorm tag names, primitive names, or ``"the model output"``."""
  users: dict[Any, list[str]] = collections.defaultdict(list)
  for eqn in jaxpr.eqns:
    for v in eqn.invars:
      if not isinstance(v, jex.Literal):
        users[v].append(_tag_name(eqn) or eqn.primitive.name)
    for sub in _subjaxprs(eqn):
      _find_consumers(sub, consumers)
  for v in jaxpr.outvars:
    if not isinstance(v, jex.Literal):
      users[v].append("the model output")
  for eqn in jaxpr.eqns:
    name = _tag_name(eqn)
    if name is not None and name.startswith(_LIN_TAG):
      consumers[int(name[len(_LIN_TAG):])] = users.get(eqn.outvars[0], [])


def _check_rtol(jaxpr) -> float:
  """`CHECK_RTOL`, or 16 machine epsilons of the least precise float type the program computes
  in if that is larger (bfloat16: 0.125)."""
  eps = []

  def walk(j):
    for eqn in j.eqns:
      for v in eqn.outvars:
        dtype = getattr(getattr(v, "aval", None), "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
          eps.append(float(jnp.finfo(dtype).eps))
      for sub in _subjaxprs(eqn):
        walk(sub)

  walk(jaxpr)
  return max([CHECK_RTOL] + [16 * e for e in eps])


def _random_variables(variables, seed: int = 0):
  """Concrete random values for abstract `variables`: BatchNorm running means N(0, 0.5^2),
  variances U(0.5, 2), ``scale`` +-U(0.5, 1.5) (random signs), ``bias`` N(0, 0.2^2), kernels
  N(0, 1/fan_in), other float leaves N(0, 0.2^2), integer leaves 0."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    keys = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    collection, name = keys[0], keys[-1]
    shape, dtype = a.shape, a.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      return np.zeros(shape, dtype)
    if collection == "batch_stats" and name == "var":
      v = rng.uniform(0.5, 2.0, shape)
    elif collection == "batch_stats":
      v = 0.5 * rng.standard_normal(shape)
    elif name == "scale":
      v = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    elif name == "bias" or len(shape) < 2:
      v = 0.2 * rng.standard_normal(shape)
    else:
      v = rng.standard_normal(shape) / math.sqrt(max(1, math.prod(shape[:-1])))
    return np.asarray(v).astype(dtype)

  return jax.tree_util.tree_map_with_path(leaf, variables)


def numerical_check(model, pairs, epsilons, spec, rtol: float) -> str | None:
  """Evaluates the folded and unfolded model on random inputs and variables, in one small
  compiled program run at once (also when called inside a trace); None if they agree to `rtol`
  (relative to the largest output), else why not."""
  abstract_vars, abstract_x = _abstract(spec)
  variables = _random_variables(abstract_vars)
  rng = np.random.default_rng(1)
  if jnp.issubdtype(abstract_x.dtype, jnp.floating):
    x = rng.standard_normal(abstract_x.shape).astype(abstract_x.dtype)
  else:
    x = rng.integers(0, 8, abstract_x.shape).astype(abstract_x.dtype)

  def both(variables, x):
    return (jax.tree.leaves(model.apply(variables, x, train=False)),
            jax.tree.leaves(_fused_apply(model, pairs, epsilons, variables, x)))

  try:
    # Lowered and compiled on its own: a compiled program runs now, also inside a jit or vmap
    # trace (ensure_compile_time_eval around the lowering would run every constant op eagerly).
    compiled = _compile_fast(jax.jit(both).lower(variables, x))
    with jax.ensure_compile_time_eval():
      ref, out = compiled(variables, x)
    ref = [np.asarray(r, np.float64) for r in ref]
    out = [np.asarray(o, np.float64) for o in out]
  except Exception as e:  # any failure of the folded model refuses folding
    return f"the folded model could not be evaluated ({type(e).__name__}: {e})"
  if [r.shape for r in ref] != [o.shape for o in out]:
    return "the folded model's outputs have other shapes than the unfolded model's"
  if not all(np.all(np.isfinite(r)) for r in ref):
    return "the check is inconclusive: the unfolded model's outputs on random inputs are not finite"
  scale = max((float(np.max(np.abs(r), initial=0.0)) for r in ref), default=0.0) or 1.0
  err = max((float(np.max(np.abs(o - r), initial=0.0)) for o, r in zip(out, ref, strict=True)),
            default=0.0)
  if not err <= rtol * scale:
    return (f"on random inputs and BatchNorm statistics the folded outputs differ from the "
            f"unfolded ones by {err / scale:.2e} relative to the largest output, more than float "
            f"rounding ({rtol:.0e})")
  return None


def _compile_fast(lowered):
  """Compiles a lowered program run once: on the CPU without LLVM's optimisations (the check's
  program then compiles in less than half the time); elsewhere, or if refused, as usual."""
  if jax.default_backend() == "cpu":
    try:
      return lowered.compile({"xla_backend_optimization_level": 0,
                              "xla_llvm_disable_expensive_passes": True})
    except Exception:  # an XLA without these options: compile as usual
      pass
  return lowered.compile()


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
  the second output keyed by the layer's path (added by `fuse_batchnorm`'s apply). Exact only for
  pairs whose layer output has no other consumer (`batchnorm_pairs` finds those).

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


def fuse_batchnorm(model: nn.Module, variables: PyTree, x, *, check: bool = True):
  """``apply_fn(variables, x)`` equal to ``model.apply(variables, x, train=False)`` up to float
  rounding, with each safely foldable BatchNorm merged into the conv/dense layer before it.

  A pair is folded only when the layer's output feeds nothing but the BatchNorm (see the module
  docstring and `folding_plan`); BatchNorms after shortcuts, concatenations or activations stay
  as they are. With `check`, the folded and unfolded models are compared once on random inputs
  and statistics; if they differ beyond float rounding nothing is folded, a warning is logged and
  the plain ``model.apply`` is returned.

  Args:
    model: a linen model with BatchNorm (``batch_stats``); without foldable pairs the result is
      plain inference.
    variables: example ``{"params", "batch_stats"}`` (structure and shapes only; the returned
      function takes any variables of the same structure, folded at every call).
    x: an example input batch (per-example shape and dtype only).
    check: run the build-time numerical check (cached per model, structure and input shape).

  Returns:
    A hashable function (usable as a static argument of `jax.jit`).
  """
  plan = folding_plan(model, variables, x, check=check)
  if plan.check is not None or not plan.pairs:
    return functools.partial(model.apply, train=False)
  return functools.partial(_fused_apply, model, plan.pairs, plan.epsilons)


__all__ = ["FoldPlan", "batchnorm_pairs", "fold_batchnorm", "folding_plan", "fuse_batchnorm"]
