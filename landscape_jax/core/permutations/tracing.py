"""Automatic permutation specs: which axes of a model's variables can be permuted, by tracing.

`spec_from_model` traces a model -- a Flax linen module, or any function ``fn(variables, x)`` over
a parameter pytree (NNX, Equinox or plain JAX through `adapters.frameworks.inference_fn`) -- to a
jaxpr and propagates axis identities through every primitive (dense and convolution contractions,
element-wise ops, broadcasts, reductions, reshapes such as the conv-to-dense flatten, pooling,
residual additions). An axis is permutable only if every operation that touches it is provably
equivariant to a permutation of it and it never reaches the model input or output; anything the
tracer cannot prove (padding or concatenation of channels, slicing, unknown primitives) removes
the axis, so a derived spec is conservative. The result is also checked numerically on the
example input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from landscape_jax.core import trees
from landscape_jax.core.permutations.specs import (
  PermAxis,
  PermutationSpec,
  apply_permutation,
  as_variables,
  random_permutation,
)

__all__ = [
  "spec_from_model",
]

PyTree = Any

# ------------------------------------------------------------------------------------------------
# Automatic spec derivation by tracing


class _Axes:
  """Union-find over the axes of every array of a jaxpr.

  Each class is a set of axes that must be permuted together; a class is `broken` when some
  operation on it is not permutation-equivariant (or it reaches the model input or output).
  `factors` records that an axis is a C-order flattening of other axes (reshape).
  """

  def __init__(self):
    self.parent: list[int] = []
    self.size: list[int] = []
    self.broken: list[bool] = []
    self.factors: list[list[int] | None] = []

  def new(self, size: int) -> int:
    self.parent.append(len(self.parent))
    self.size.append(int(size))
    self.broken.append(int(size) <= 1)
    self.factors.append(None)
    return len(self.parent) - 1

  def find(self, a: int) -> int:
    while self.parent[a] != a:
      self.parent[a] = self.parent[self.parent[a]]
      a = self.parent[a]
    return a

  def brk(self, a: int) -> None:
    self.broken[self.find(a)] = True

  def union(self, a: int, b: int) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return
    if self.size[ra] != self.size[rb]:
      self.broken[ra] = self.broken[rb] = True
      return
    self.parent[rb] = ra
    self.broken[ra] = self.broken[ra] or self.broken[rb]
    fa, fb = self.factors[ra], self.factors[rb]
    if fa is None:
      self.factors[ra] = fb
    elif fb is not None:
      self._merge_factors(ra, fa, fb)

  def set_factors(self, a: int, nodes: list[int]) -> None:
    r = self.find(a)
    if self.factors[r] is None:
      self.factors[r] = list(nodes)
    else:
      self._merge_factors(r, self.factors[r], nodes)

  def _merge_factors(self, r, fa, fb):
    if [self.size[x] for x in fa] == [self.size[x] for x in fb]:
      for x, y in zip(fa, fb, strict=True):
        self.union(x, y)
    else:
      self.broken[r] = True
      for x in (*fa, *fb):
        self.brk(x)

  def propagate(self) -> None:
    """A broken flattened axis breaks its factors (fixpoint)."""
    changed = True
    while changed:
      changed = False
      for a in range(len(self.parent)):
        r = self.find(a)
        if self.broken[r] and self.factors[r]:
          for x in self.factors[r]:
            if not self.broken[self.find(x)]:
              self.brk(x)
              changed = True


_ELEMENTWISE = frozenset("""
add sub mul div max min neg abs sign exp exp2 log log1p expm1 tanh logistic sqrt rsqrt cbrt square
integer_pow pow erf erfc erf_inv sin cos tan atan2 floor ceil round is_finite select_n clamp
convert_element_type copy copy_p reduce_precision nextafter rem and or not xor eq ne lt le gt ge
add_any stop_gradient real imag shift_right_logical shift_right_arithmetic shift_left
bitcast_convert_type population_count
""".split())
# Random-number primitives (dropout masks): their outputs are fresh values tied to nothing.
_RANDOM = frozenset("""
random_bits random_seed random_fold_in random_split random_wrap random_unwrap threefry2x32
""".split())
_REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or".split())
_WINDOWED = frozenset("reduce_window_sum reduce_window_max reduce_window_min".split())
_CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
          "custom_vjp_call_jaxpr": "fun_jaxpr", "checkpoint": "jaxpr", "remat": "jaxpr"}


def _reshape_groups(a: tuple[int, ...], b: tuple[int, ...]):
  """Groups the non-unit axes of shapes a and b into runs with equal products (C order)."""
  ia = [i for i, s in enumerate(a) if s != 1]
  ib = [i for i, s in enumerate(b) if s != 1]
  groups, i, j = [], 0, 0
  while i < len(ia) or j < len(ib):
    ga, gb = [ia[i]] if i < len(ia) else [], [ib[j]] if j < len(ib) else []
    if not ga or not gb:
      return None
    pa, pb = a[ia[i]], b[ib[j]]
    i, j = i + 1, j + 1
    while pa != pb:
      if pa < pb and i < len(ia):
        ga.append(ia[i])
        pa *= a[ia[i]]
        i += 1
      elif pb < pa and j < len(ib):
        gb.append(ib[j])
        pb *= b[ib[j]]
        j += 1
      else:
        return None
    groups.append((ga, gb))
  return groups


def _trace_eqn(uf: _Axes, eqn, ins: list[list[int]], outs: list[list[int]]) -> None:
  """Unifies the axes that `eqn` maps equivariantly; breaks every other axis it touches."""
  name, p = eqn.primitive.name, eqn.params
  handled: set[int] = set()

  def unify(a, b):
    uf.union(a, b)
    handled.update((a, b))

  if name in _CALLS and p.get(_CALLS[name]) is not None:
    sub = p[_CALLS[name]]
    closed = sub if isinstance(sub, jex.ClosedJaxpr) else None
    jaxpr = closed.jaxpr if closed is not None else sub
    if len(jaxpr.invars) == len(ins) and len(jaxpr.outvars) == len(outs):
      inner_outs = _trace_jaxpr(uf, jaxpr, ins)
      handled.update(a for nodes in ins for a in nodes)
      for o, io in zip(outs, inner_outs, strict=True):
        if len(io) == len(o):
          for a, b in zip(o, io, strict=True):
            unify(a, b)
  elif name in _RANDOM:
    handled.update(a for nodes in outs for a in nodes)
  elif name in _ELEMENTWISE:
    out = outs[0]
    for nodes in ins:
      if len(nodes) == len(out):
        for a, b in zip(nodes, out, strict=True):
          if uf.size[a] == uf.size[b]:
            unify(a, b)
  elif name == "broadcast_in_dim":
    for i, d in enumerate(p["broadcast_dimensions"]):
      if uf.size[ins[0][i]] == uf.size[outs[0][d]]:
        unify(ins[0][i], outs[0][d])
    # The result is constant along every broadcast (new or size-1) axis: any permutation of
    # such an axis leaves it unchanged, so those axes are free.
    handled.update(outs[0])
  elif name == "reshape" and p.get("dimensions") is None:
    a_shape = tuple(uf.size[x] for x in ins[0])
    b_shape = tuple(uf.size[x] for x in outs[0])
    for ga, gb in _reshape_groups(a_shape, b_shape) or ():
      if len(ga) == 1 and len(gb) == 1:
        unify(ins[0][ga[0]], outs[0][gb[0]])
      elif len(gb) == 1:
        uf.set_factors(outs[0][gb[0]], [ins[0][k] for k in ga])
        handled.update([outs[0][gb[0]], *(ins[0][k] for k in ga)])
      elif len(ga) == 1:
        uf.set_factors(ins[0][ga[0]], [outs[0][k] for k in gb])
        handled.update([ins[0][ga[0]], *(outs[0][k] for k in gb)])
  elif name == "squeeze":
    dims = {d % len(ins[0]) for d in p["dimensions"]}
    kept = [a for i, a in enumerate(ins[0]) if i not in dims]
    for a, b in zip(kept, outs[0], strict=True):
      unify(a, b)
  elif name == "transpose":
    for i, d in enumerate(p["permutation"]):
      unify(outs[0][i], ins[0][d])
  elif name in _REDUCTIONS:
    kept = [a for i, a in enumerate(ins[0]) if i not in set(p["axes"])]
    for a, b in zip(kept, outs[0], strict=True):
      unify(a, b)
  elif name in _WINDOWED:
    for i, (a, b) in enumerate(zip(ins[0], outs[0], strict=True)):
      trivial = (p["window_dimensions"][i] == 1 and p["window_strides"][i] == 1
                 and tuple(p["padding"][i]) == (0, 0) and p["base_dilation"][i] == 1
                 and p["window_dilation"][i] == 1)
      if trivial:
        unify(a, b)
  elif name == "dot_general":
    (lc, rc), (lb, rb) = p["dimension_numbers"]
    lhs, rhs, out = ins[0], ins[1], outs[0]
    for i, j in zip(lc, rc, strict=True):
      unify(lhs[i], rhs[j])
    lfree = [a for i, a in enumerate(lhs) if i not in set(lc) | set(lb)]
    rfree = [a for i, a in enumerate(rhs) if i not in set(rc) | set(rb)]
    for a, b in zip([lhs[i] for i in lb] + lfree + rfree, out, strict=True):
      unify(a, b)
    for i, j in zip(lb, rb, strict=True):
      unify(lhs[i], rhs[j])
  elif name == "conv_general_dilated":
    if p["feature_group_count"] == 1 and p["batch_group_count"] == 1:
      dn = p["dimension_numbers"]
      lhs, rhs, out = ins[0], ins[1], outs[0]
      unify(lhs[dn.lhs_spec[0]], out[dn.out_spec[0]])
      unify(lhs[dn.lhs_spec[1]], rhs[dn.rhs_spec[1]])
      unify(rhs[dn.rhs_spec[0]], out[dn.out_spec[1]])
  elif name == "pad":
    for i, (a, b) in enumerate(zip(ins[0], outs[0], strict=True)):
      if tuple(p["padding_config"][i]) == (0, 0, 0):
        unify(a, b)
  elif name == "slice":
    strides = p["strides"] or (1,) * len(ins[0])
    for i, (a, b) in enumerate(zip(ins[0], outs[0], strict=True)):
      if p["start_indices"][i] == 0 and strides[i] == 1 and uf.size[a] == uf.size[b]:
        unify(a, b)
  elif name == "concatenate":
    d = p["dimension"]
    for nodes in ins:
      for i, (a, b) in enumerate(zip(nodes, outs[0], strict=True)):
        if i != d:
          unify(a, b)
  # Everything not provably equivariant is broken (conservative).
  for nodes in (*ins, *outs):
    for a in nodes:
      if a not in handled:
        uf.brk(a)


def _trace_jaxpr(uf: _Axes, jaxpr, in_nodes: list[list[int]]) -> list[list[int]]:
  env: dict[Any, list[int]] = {}
  for v, nodes in zip(jaxpr.invars, in_nodes, strict=True):
    env[v] = nodes
  for v in jaxpr.constvars:
    env[v] = [uf.new(s) for s in v.aval.shape]
    for a in env[v]:
      uf.brk(a)

  def read(v):
    if isinstance(v, jex.Literal):
      return [uf.new(s) for s in np.shape(v.val)]
    return env[v]

  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    outs = [[uf.new(s) for s in getattr(v.aval, "shape", ())] for v in eqn.outvars]
    for v, nodes in zip(eqn.outvars, outs, strict=True):
      env[v] = nodes
    _trace_eqn(uf, eqn, ins, outs)
  return [read(v) for v in jaxpr.outvars]


def _module_of(path: str) -> str:
  """``"params/layer1_0/conv1/kernel"`` -> ``"layer1_0/conv1"`` (an NNX ``.../kernel/value``
  path drops its ``value`` first)."""
  if path.endswith("/value") and path.count("/") > 1:
    path = path[:-len("/value")]
  return path.split("/", 1)[1].rsplit("/", 1)[0] if "/" in path else path


def _is_linen(model) -> bool:
  """A Flax linen module (duck-typed: the core imports no model library)."""
  return callable(getattr(model, "apply", None)) and callable(getattr(model, "init", None)) \
    and callable(getattr(model, "bind", None))


def _model_name(model) -> str:
  return getattr(model, "__name__", None) or type(model).__name__


def spec_from_model(model, variables: PyTree, x, *, apply_kwargs: Mapping | None = None,
                    verify: bool = True) -> PermutationSpec:
  """Derives the permutation symmetries of a model by tracing it.

  The model is traced with `jax.make_jaxpr`: a linen module in inference mode and, when it has
  ``batch_stats``, in training mode (``mutable=["batch_stats"]``); a function ``fn(variables, x)``
  as it is. Every axis of every array is a node; each primitive
  ties the axes it maps equivariantly (element-wise ops and broadcasts tie matching axes,
  ``dot_general`` ties contracted axes -- the activation's feature axis to a kernel's input axis --,
  convolutions tie input features to the kernel's input-feature axis and output features to its
  output-feature axis, reductions and pooling keep the other axes, residual additions tie the
  streams, and a reshape that flattens (H, W, C) records C as the inner factor of the flat axis).
  Every other axis an operation touches is marked non-permutable, as are the model's input and
  output axes (and every axis of an array the function holds as a constant). Each remaining class
  of axes that contains a parameter axis is one permutation. The tracer does not assume a weight
  layout, so ``(out, in)`` (Equinox, PyTorch-style) kernels work as ``(in, out)`` ones do.

  Args:
    model: a linen module called as ``model.apply(variables, x, **apply_kwargs)``, or any
      function ``fn(variables, x) -> outputs`` (e.g. ``lj.inference_fn(nnx_or_equinox_model)``,
      or a plain ``apply_fn(params, x)``).
    variables: linen: its variables (``{"params": ..., "batch_stats": ...}``). A function: what
      it takes, either a bare params pytree (the spec's paths are then ``"params/<leaf path>"``,
      as `apply_permutation` addresses a bare tree) or a dict ``{"params": ..., <state>: ...}``
      (state such as BatchNorm statistics, ``"batch_stats"``, is then permuted with the
      parameters; state held inside the function instead is a constant, and every axis it
      touches is left unpermuted).
    x: an example input batch (only shapes matter for the trace; values for `verify`).
      `variables` may be `jax.eval_shape` structures (then `verify` is skipped).
    apply_kwargs: linen only: extra keyword arguments; default ``{"train": False}`` for the
      bundled models (training mode adds ``train=True``). Bind them into a function instead.
    verify: also checks numerically that a random permutation leaves the outputs unchanged.

  Returns:
    The `PermutationSpec`; permutations are named after the first module whose output units
    they permute (e.g. ``"Dense_0"``; a residual stream is named after its first writer).

  Raises:
    ValueError: if the model has no permutation symmetry the tracer can prove, or the check fails.
    TypeError: `model` is neither a linen module nor callable.
  """
  linen = _is_linen(model)
  if linen:
    variables = dict(variables)
    if "params" not in variables:
      raise ValueError("spec_from_model needs the full variables dict {'params': ..., ...}.")
    kwargs = {"train": False} if apply_kwargs is None else dict(apply_kwargs)
    forward = lambda v, x: model.apply(v, x, **kwargs)
    tree = variables
  elif callable(model):
    if apply_kwargs is not None:
      raise ValueError("apply_kwargs is for linen modules; bind keyword arguments into the "
                       "function instead (functools.partial).")
    kwargs = {}
    forward = model
    tree = as_variables(variables)[0]
  else:
    raise TypeError(f"spec_from_model needs a linen module or a function fn(variables, x); got "
                    f"{type(model).__name__}.")
  has_stats = linen and "batch_stats" in variables and bool(
    jax.tree.leaves(variables["batch_stats"]))
  uf = _Axes()
  leaves = jax.tree.leaves(tree)
  paths = trees.leaf_paths(tree)
  var_nodes = [[uf.new(s) for s in np.shape(v)] for v in leaves]

  first_use: dict[str, int] = {}

  def trace(fn, n_out_vars: int):
    closed = jax.make_jaxpr(fn)(variables, x)
    if not first_use:  # module order = order of first use in the program (dicts may be sorted)
      var_index = {v: i for i, v in enumerate(closed.jaxpr.invars[:len(paths)])}
      for k, eqn in enumerate(closed.jaxpr.eqns):
        for v in eqn.invars:
          if not isinstance(v, jex.Literal) and v in var_index:
            module = _module_of(paths[var_index[v]])
            first_use.setdefault(module, k)
    x_nodes = [[uf.new(s) for s in np.shape(v)] for v in jax.tree.leaves(x)]
    outs = _trace_jaxpr(uf, closed.jaxpr, var_nodes + x_nodes)
    for nodes in x_nodes + outs[:len(outs) - n_out_vars]:
      for a in nodes:
        uf.brk(a)
    return outs[len(outs) - n_out_vars:] if n_out_vars else []

  trace(forward, 0)
  if has_stats and "train" in kwargs:
    train_kwargs = {**kwargs, "train": True}
    stats_paths = trees.leaf_paths({"batch_stats": variables["batch_stats"]})
    rngs = {"dropout": jax.random.key(0)}  # dropout masks are random values, tied to nothing
    new_stats = trace(lambda v, x: jax.tree.leaves(
      model.apply(v, x, mutable=["batch_stats"], rngs=rngs, **train_kwargs)[1]),
      len(stats_paths))
    index = {p: i for i, p in enumerate(paths)}
    for p, nodes in zip(stats_paths, new_stats, strict=True):
      for a, b in zip(var_nodes[index[p]], nodes, strict=True):
        uf.union(a, b)
  uf.propagate()

  # Collect the classes that touch a parameter axis.
  classes: dict[int, list[PermAxis]] = {}
  for path, nodes in zip(paths, var_nodes, strict=True):
    for axis, a in enumerate(nodes):
      r = uf.find(a)
      repeat = 1
      if uf.factors[r]:
        inner = uf.factors[r]
        if any(not uf.broken[uf.find(f)] for f in inner[:-1]):
          continue  # only the innermost factor of a flattened axis may be permuted
        repeat = uf.size[r] // uf.size[inner[-1]]
        r = uf.find(inner[-1])
      if uf.broken[r] or uf.factors[r]:
        continue
      classes.setdefault(r, []).append(PermAxis(path, axis, repeat))
  if not classes:
    raise ValueError(
      f"{_model_name(model)} has no permutation symmetry that spec_from_model can prove (every "
      "hidden axis reaches a concatenation, padding, slicing or an unsupported operation). "
      "Weight matching and swap paths need a model with permutable hidden units.")

  order = {m: i for i, m in enumerate(sorted(first_use, key=first_use.get))}
  named: list[tuple[int, str, int, tuple[PermAxis, ...]]] = []
  for r, entries in classes.items():
    producers = [e for e in entries if e.path.startswith("params/")
                 and e.axis == len(np.shape(leaves[paths.index(e.path)])) - 1
                 and np.ndim(leaves[paths.index(e.path)]) >= 2]
    cands = producers or [e for e in entries if e.path.startswith("params/")] or entries
    first = min(cands, key=lambda e: (order.get(_module_of(e.path), len(order)), e))
    mod = _module_of(first.path) if first.path.startswith("params/") \
      else f"{first.path}:{first.axis}"
    named.append((order.get(mod, len(order)), mod, uf.size[r], tuple(entries)))
  named.sort(key=lambda t: (t[0], t[1]))
  sizes, axes = {}, {}
  for _, mod, n, entries in named:
    name, k = mod, 1
    while name in sizes:
      k += 1
      name = f"{mod}#{k}"
    sizes[name] = n
    axes[name] = entries
  spec = PermutationSpec(sizes, axes)
  abstract = any(isinstance(v, jax.ShapeDtypeStruct) for v in leaves)
  if verify and not abstract:  # (`jax.eval_shape` variables: nothing to evaluate)
    _verify_spec(forward, _model_name(model), variables, x, spec)
  return spec


def _verify_spec(forward, name, variables, x, spec) -> None:
  perm = random_permutation(jax.random.key(0), spec)
  permuted = apply_permutation(spec, perm, variables)
  fwd = jax.jit(forward)
  y0 = jax.tree.leaves(fwd(variables, x))
  y1 = jax.tree.leaves(fwd(permuted, x))
  scale = max(float(jnp.max(jnp.abs(a))) for a in y0) + 1e-6
  err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(y0, y1, strict=True))
  if not err <= 1e-4 * scale + 1e-5:
    raise ValueError(f"The derived permutation spec of {name} changes the outputs "
                     f"(max |diff| {err:.3g}); please report this model. Spec:\n{spec}")


