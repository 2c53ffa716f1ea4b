"""Permutation symmetry of neural networks: specs, permutations, weight matching, swap paths.

Permuting the hidden units of a layer -- the last axis of its kernel, its bias, its BatchNorm scale,
bias and running statistics, and the input axis of every layer that reads it -- leaves the network
function unchanged. Residual connections tie all layers that write into one residual stream to a
single shared permutation. Brea et al. 2019 ("Weight-space symmetry in deep networks gives rise to
permutation saddles, connected by equal-loss valleys") study the critical points this creates;
Ainsworth et al. 2023 ("Git Re-Basin") align two independently trained networks by choosing the
permutation of one that best matches the weights of the other.

A `PermutationSpec` lists, for every permutation, the axes of the variables it acts on. Specs are
derived automatically from any Flax linen model by `spec_from_model`, which traces the model to a
jaxpr and propagates axis identities through every primitive (dense and convolution contractions,
element-wise ops, broadcasts, reductions, reshapes such as the conv-to-dense flatten, pooling,
residual additions); an axis is permutable only if every operation that touches it is provably
equivariant to a permutation of it and it never reaches the model input or output. Anything the
tracer cannot prove (padding or concatenation of channels, slicing, unknown primitives) removes
the axis, so a derived spec is conservative; it is also checked numerically on the example input.
`spec_for` does the same for a bundled model by name, and `mlp_spec` builds the spec of a chain of
Dense layers from parameter names alone.

Axes are addressed by paths relative to the variables dict, e.g. ``"params/Dense_0/kernel"`` or
``"batch_stats/BatchNorm_0/mean"``. A permutation is a dict ``{name: int array (n,)}``;
`apply_permutation` maps every permuted axis by ``w_new[..., k, ...] = w[..., perm[k], ...]`` (new
unit k is old unit perm[k]).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from landscape_jax import engine, trees

PyTree = Any
Permutation = dict[str, jax.Array]


class PermAxis(NamedTuple):
  """One axis acted on by a permutation.

  Attributes:
    path: leaf path relative to the variables dict, e.g. ``"params/Dense_1/kernel"``.
    axis: the axis of that leaf (non-negative).
    repeat: the axis has length ``repeat * n`` and is read as (repeat, n) in C order, the
      permutation acting on the inner factor; ``repeat > 1`` for the input axis of a Dense layer
      that reads a flattened NHWC feature map (index ``(h * W + w) * C + c``).
  """

  path: str
  axis: int
  repeat: int = 1


@dataclasses.dataclass(frozen=True)
class PermutationSpec:
  """Which axes of which variables each permutation acts on.

  Attributes:
    sizes: ``{name: n}``, the number of units each permutation permutes.
    axes: ``{name: (PermAxis, ...)}``; names are the module whose output units they permute
      (for a residual stream, the first module writing into it).
  """

  sizes: Mapping[str, int]
  axes: Mapping[str, tuple[PermAxis, ...]]

  def __post_init__(self):
    axes = {k: tuple(sorted(PermAxis(*e) for e in v)) for k, v in self.axes.items()}
    if set(axes) != set(self.sizes):
      raise ValueError(f"sizes and axes name different permutations: {sorted(self.sizes)} vs "
                       f"{sorted(axes)}.")
    object.__setattr__(self, "axes", axes)
    object.__setattr__(self, "sizes", {k: int(self.sizes[k]) for k in axes})

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.axes)

  def leaf_axes(self) -> dict[str, list[tuple[int, str, int]]]:
    """``{leaf path: [(axis, perm name, repeat), ...]}``, the inverse view of `axes`."""
    out: dict[str, list[tuple[int, str, int]]] = {}
    for name, entries in self.axes.items():
      for e in entries:
        out.setdefault(e.path, []).append((e.axis, name, e.repeat))
    return out

  def __hash__(self) -> int:
    return hash((tuple(self.sizes.items()), tuple(self.axes.items())))

  def __repr__(self) -> str:
    lines = [f"PermutationSpec({len(self.axes)} permutations:"]
    for name, entries in self.axes.items():
      acts = ", ".join(f"{e.path}[{e.axis}]" + (f"x{e.repeat}" if e.repeat > 1 else "")
                       for e in entries)
      lines.append(f"  {name} (n={self.sizes[name]}): {acts}")
    return "\n".join(lines) + ")"


# ------------------------------------------------------------------------------------------------
# Variables handling


def _as_variables(tree: PyTree) -> tuple[dict, bool]:
  """Wraps a bare params tree as ``{"params": tree}``; returns (variables, was_wrapped)."""
  if isinstance(tree, Mapping) and "params" in tree:
    return dict(tree), False
  return {"params": tree}, True


def check_spec(spec: PermutationSpec, variables: PyTree) -> None:
  """Raises ValueError if `spec` names a parameter or axis that `variables` lack or mis-size.

  `variables` is ``{"params": ..., ["batch_stats": ...]}`` or a bare params tree (then the spec's
  ``batch_stats`` entries are not checked).
  """
  variables, wrapped = _as_variables(variables)
  shapes = {p: np.shape(x) for p, x in zip(trees.leaf_paths(variables),
                                            jax.tree.leaves(variables), strict=True)}
  for name, entries in spec.axes.items():
    n = spec.sizes[name]
    for e in entries:
      if e.path not in shapes:
        if wrapped and not e.path.startswith("params/"):
          continue
        raise ValueError(
          f"Permutation '{name}' acts on {e.path}, which these variables lack. Build the spec "
          "from the same model (spec_from_model(model, variables, x)).")
      shape = shapes[e.path]
      if e.axis >= len(shape) or shape[e.axis] != e.repeat * n:
        raise ValueError(
          f"Permutation '{name}' (n={n}) expects axis {e.axis} of {e.path} to have length "
          f"{e.repeat * n}, but the leaf has shape {shape}. Build the spec from these variables.")


def _check_perm(spec: PermutationSpec, perm: Mapping[str, Any]) -> None:
  missing = [k for k in spec.names if k not in perm]
  extra = [k for k in perm if k not in spec.sizes]
  if missing or extra:
    raise ValueError(f"Permutation keys do not match the spec: missing {missing}, unknown {extra}."
                     " Use random_permutation / identity_permutation(spec) to build one.")
  for k in spec.names:
    n = spec.sizes[k]
    acts = ", ".join(f"{e.path}[{e.axis}]" for e in spec.axes[k])
    if np.shape(perm[k]) != (n,):
      raise ValueError(f"Permutation '{k}' (acting on {acts}) must have shape ({n},), got "
                       f"{np.shape(perm[k])}.")
    if isinstance(perm[k], jax.core.Tracer):
      continue  # traced (under jit): the values cannot be checked
    p = np.asarray(perm[k])
    if not np.issubdtype(p.dtype, np.integer):
      raise ValueError(f"Permutation '{k}' (acting on {acts}) must hold integer indices, got "
                       f"dtype {p.dtype}.")
    if not np.array_equal(np.sort(p), np.arange(n)):
      bad = sorted(set(p[(p < 0) | (p >= n)].tolist()))
      counts = np.bincount(p[(p >= 0) & (p < n)], minlength=n)
      detail = (f"indices out of range [0, {n}): {bad[:5]}" if bad else
                f"repeated indices {np.flatnonzero(counts > 1)[:5].tolist()} and missing "
                f"{np.flatnonzero(counts == 0)[:5].tolist()}")
      raise ValueError(f"Permutation '{k}' (acting on {acts}) is not a permutation of "
                       f"0..{n - 1}: {detail}. Use random_permutation / identity_permutation / "
                       "weight_matching to build one.")


def _take(x, idx, axis: int, repeat: int, xp=jnp):
  """``x`` with axis `axis`, read as (repeat, n), re-indexed by `idx` on the inner factor."""
  if xp is _HostTake:
    y = _take(np.asarray(x), np.asarray(idx), axis, repeat, np)
    return jax.device_put(y, x.sharding) if isinstance(x, jax.Array) else y
  if repeat == 1:
    return xp.take(x, idx, axis=axis)
  shape = x.shape
  n = shape[axis] // repeat
  y = x.reshape(shape[:axis] + (repeat, n) + shape[axis + 1:])
  return xp.take(y, idx, axis=axis + 1).reshape(shape)


def _permute_leaves(variables: dict, leaf_axes, perm, xp=jnp) -> dict:
  def f(path, x):
    for axis, name, repeat in leaf_axes.get(path, ()):
      x = _take(x, perm[name], axis, repeat, xp)
    return x
  return trees.map_with_path(f, variables)


def apply_permutation(spec: PermutationSpec, perm: Mapping[str, Any], variables: PyTree) -> PyTree:
  """Permutes the units of every permuted layer: ``w'[.., k, ..] = w[.., perm[name][k], ..]``.

  Args:
    spec: the model's `PermutationSpec`.
    perm: ``{name: int array (n,)}`` for every permutation of the spec.
    variables: ``{"params": ..., "batch_stats": ...}`` (params and running statistics are both
      permuted), or a bare params tree. Traceable: may be called under `jax.jit`.

  Returns:
    The permuted variables, same structure; the network function is unchanged (Brea et al. 2019).

  Raises:
    ValueError: `perm` lacks or adds a name of the spec, or an entry is not a permutation of
      ``0..n-1`` (wrong length, repeated or out-of-range indices, non-integer dtype); the message
      names the permutation and the leaf axes it acts on. Traced entries (under `jax.jit`) are
      checked for shape only.
  """
  _check_perm(spec, perm)
  wrapped_vars, wrapped = _as_variables(variables)
  check_spec(spec, variables)
  leaves = jax.tree.leaves((wrapped_vars, dict(perm)))
  if any(isinstance(x, jax.core.Tracer) for x in leaves):
    out = _permute_leaves(wrapped_vars, spec.leaf_axes(), perm)
  else:  # concrete values: gather on the host (no compilation), back to the leaves' devices
    host_perm = {k: np.asarray(perm[k]) for k in spec.names}
    out = _permute_leaves(wrapped_vars, spec.leaf_axes(), host_perm, xp=_HostTake)
  return out["params"] if wrapped else out


class _HostTake:
  """Marker for `_take`: gather on the host, return a leaf of the input's kind (a jax.Array on
  its own sharding)."""




def identity_permutation(spec: PermutationSpec) -> Permutation:
  """``{name: arange(n)}``."""
  return {k: jnp.arange(n, dtype=jnp.int32) for k, n in spec.sizes.items()}


def random_permutation(key: jax.Array, spec: PermutationSpec) -> Permutation:
  """Independent uniformly random permutations, one per name, a deterministic function of `key`.

  Drawn on the host by a numpy Generator seeded with the key's data (no compilation per width;
  not traceable: call it outside `jax.jit`).
  """
  rng = _host_rng(key)
  return {k: jnp.asarray(rng.permutation(n), jnp.int32) for k, n in spec.sizes.items()}


def _host_rng(key: jax.Array) -> np.random.Generator:
  if isinstance(key, jax.core.Tracer):
    raise ValueError("random_permutation / weight_matching run on the host; call them outside "
                     "jax.jit with a concrete key.")
  data = np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel()
  return np.random.default_rng(data.tolist())


def compose_permutations(outer: Mapping[str, Any], inner: Mapping[str, Any]) -> Permutation:
  """The permutation that applies `inner` first, then `outer`.

  ``apply_permutation(spec, compose_permutations(p, q), v) ==
  apply_permutation(spec, p, apply_permutation(spec, q, v))``, i.e. ``result[k] = q[k][p[k]]``.
  """
  if set(outer) != set(inner):
    raise ValueError(f"Cannot compose permutations with different names: {sorted(outer)} vs "
                     f"{sorted(inner)}.")
  return {k: jnp.asarray(inner[k])[jnp.asarray(outer[k])] for k in outer}


def invert_permutation(perm: Mapping[str, Any]) -> Permutation:
  """The inverse: ``apply_permutation(spec, invert_permutation(p), apply_permutation(spec, p, v))
  == v``."""
  return {k: jnp.argsort(jnp.asarray(v)).astype(jnp.int32) for k, v in perm.items()}


# ------------------------------------------------------------------------------------------------
# Specs by name


def mlp_spec(params: PyTree) -> PermutationSpec:
  """Spec of a chain of Dense layers ``Dense_0 -> relu -> Dense_1 -> ... -> Dense_L``.

  Built from parameter names and shapes alone (the bundled "mlp"/"mlp_small" and any linen MLP
  whose params are ``{"Dense_i": {"kernel" (in, out), "bias" (out,)}}``): permutation
  ``Dense_i`` (i < L) acts on ``Dense_i/kernel`` axis 1, ``Dense_i/bias`` axis 0 and
  ``Dense_{i+1}/kernel`` axis 0.
  """
  params = _as_variables(params)[0]["params"]
  layers = [k for k in params if k.startswith("Dense_")]
  try:
    layers.sort(key=lambda k: int(k.split("_")[1]))
  except ValueError as e:
    raise ValueError(f"mlp_spec needs params named Dense_0, Dense_1, ...; got {list(params)}. "
                     "Use spec_from_model for other models.") from e
  if len(layers) != len(params) or len(layers) < 2:
    raise ValueError(f"mlp_spec needs a chain of at least two Dense_i layers and nothing else; got "
                     f"{list(params)}. Use spec_from_model for other models.")
  sizes, axes = {}, {}
  for a, b in zip(layers[:-1], layers[1:], strict=True):
    n = int(np.shape(params[a]["kernel"])[-1])
    sizes[a] = n
    entries = [PermAxis(f"params/{a}/kernel", 1)]
    if "bias" in params[a]:
      entries.append(PermAxis(f"params/{a}/bias", 0))
    entries.append(PermAxis(f"params/{b}/kernel", 0))
    axes[a] = tuple(entries)
  return PermutationSpec(sizes, axes)


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
  """``"params/layer1_0/conv1/kernel"`` -> ``"layer1_0/conv1"``."""
  return path.split("/", 1)[1].rsplit("/", 1)[0] if "/" in path else path


def spec_from_model(model, variables: PyTree, x, *, apply_kwargs: Mapping | None = None,
                    verify: bool = True) -> PermutationSpec:
  """Derives the permutation symmetries of a Flax linen model by tracing it.

  The model is traced with `jax.make_jaxpr` in inference mode and, when it has ``batch_stats``, in
  training mode (``mutable=["batch_stats"]``). Every axis of every array is a node; each primitive
  ties the axes it maps equivariantly (element-wise ops and broadcasts tie matching axes,
  ``dot_general`` ties contracted axes -- the activation's feature axis to a kernel's input axis --,
  convolutions tie input features to the kernel's input-feature axis and output features to its
  output-feature axis, reductions and pooling keep the other axes, residual additions tie the
  streams, and a reshape that flattens (H, W, C) records C as the inner factor of the flat axis).
  Every other axis an operation touches is marked non-permutable, as are the model's input and
  output axes. Each remaining class of axes that contains a parameter axis is one permutation.

  Args:
    model: a linen module called as ``model.apply(variables, x, **apply_kwargs)``.
    variables: its variables (``{"params": ..., "batch_stats": ...}``).
    x: an example input batch (only shapes matter for the trace; values for `verify`).
      `variables` may be `jax.eval_shape` structures (then `verify` is skipped).
    apply_kwargs: extra keyword arguments; default ``{"train": False}`` for the bundled models
      (training mode adds ``train=True``).
    verify: also checks numerically that a random permutation leaves ``model.apply`` unchanged.

  Returns:
    The `PermutationSpec`; permutations are named after the first module whose output units
    they permute (e.g. ``"Dense_0"``; a residual stream is named after its first writer).

  Raises:
    ValueError: if the model has no permutation symmetry the tracer can prove, or the check fails.
  """
  variables = dict(variables)
  if "params" not in variables:
    raise ValueError("spec_from_model needs the full variables dict {'params': ..., ...}.")
  kwargs = {"train": False} if apply_kwargs is None else dict(apply_kwargs)
  has_stats = "batch_stats" in variables and bool(jax.tree.leaves(variables["batch_stats"]))
  uf = _Axes()
  leaves = jax.tree.leaves(variables)
  paths = trees.leaf_paths(variables)
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

  trace(lambda v, x: model.apply(v, x, **kwargs), 0)
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
      f"{type(model).__name__} has no permutation symmetry that spec_from_model can prove (every "
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
    _verify_spec(model, variables, x, spec, kwargs)
  return spec


def _verify_spec(model, variables, x, spec, kwargs) -> None:
  perm = random_permutation(jax.random.key(0), spec)
  permuted = apply_permutation(spec, perm, variables)
  fwd = jax.jit(lambda v, x: model.apply(v, x, **kwargs))
  y0 = fwd(variables, x)
  y1 = fwd(permuted, x)
  scale = float(jnp.max(jnp.abs(y0))) + 1e-6
  err = float(jnp.max(jnp.abs(y0 - y1)))
  if not err <= 1e-4 * scale + 1e-5:
    raise ValueError(f"The derived permutation spec of {type(model).__name__} changes the outputs "
                     f"(max |diff| {err:.3g}); please report this model. Spec:\n{spec}")


def spec_for(name: str, variables: PyTree, *, num_classes: int | None = None,
             input_shape: tuple[int, ...] | None = None, verify: bool = True,
             **overrides) -> PermutationSpec:
  """The `PermutationSpec` of a bundled model (``lj.get_model(name, ...)``), by tracing it.

  Works for every bundled family: MLP, VGG (with and without BatchNorm), CIFAR ResNet (one shared
  permutation per residual stream with conv shortcuts; with ``shortcut="pad"`` the streams are
  zero-padded, so only the inner block units are permuted), Wide-ResNet, ConvFC, PreResNet, and
  DenseNet (its concatenated feature maps are fixed; the bottleneck units inside each dense layer
  are permuted). See `spec_from_model` for any other linen model.

  Args:
    name: bundled model name, e.g. "mlp", "resnet20", "vgg16_bn", "wrn16_4", "convfc".
    variables: the model's variables (their shapes fix the widths).
    num_classes: defaults to the output width of the last layer.
    input_shape: (H, W, C) of the inputs the model was initialised with (it matters for heads
      that flatten a feature map, e.g. ConvFC); by default the first square size among 8, 32,
      28, 16 (with a channel count of a conv kernel) that the parameters accept.
    verify: check numerically that a random permutation leaves the outputs unchanged.
    **overrides: model overrides passed to `get_model` (e.g. ``width=0.5``).
  """
  from landscape_jax.models import get_model

  variables = _as_variables(variables)[0]
  kernels = [np.shape(x) for p, x in zip(trees.leaf_paths(variables["params"]),
                                         jax.tree.leaves(variables["params"]), strict=True)
             if p.endswith("kernel")]
  dense = [k for k in kernels if len(k) == 2]
  if num_classes is not None:
    class_options = [num_classes]
  else:  # the classifier is a Dense layer: try the output widths of the Dense kernels
    class_options = list(dict.fromkeys(k[-1] for k in reversed(dense))) or [10]
  if input_shape is not None:
    shapes = [tuple(input_shape)]
  elif len(dense) == len(kernels):  # an MLP: flattened inputs of one of the Dense input widths
    shapes = [(1, 1, d) for d in dict.fromkeys(k[0] for k in dense)]
  else:
    channels = dict.fromkeys(k[-2] for k in kernels if len(k) == 4)
    shapes = [(h, h, c) for c in channels for h in (8, 32, 28, 16)]
  err = None
  for classes in class_options:
    model = get_model(name, num_classes=classes, **overrides)
    for shape in shapes:
      x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
      try:
        jax.eval_shape(lambda v, x, m=model: m.apply(v, x, train=False), variables, x)
      except Exception as e:  # any shape error means: try the next candidate
        err = e
        continue
      return spec_from_model(model, variables, x, verify=verify)
  raise ValueError(f"Could not run model '{name}' with these variables (tried num_classes in "
                   f"{class_options}, inputs of shape {shapes}): {err}. Pass num_classes, "
                   "input_shape=(H, W, C) and the model overrides used.")


# ------------------------------------------------------------------------------------------------
# Weight matching


class WeightMatchingResult(NamedTuple):
  """Result of `weight_matching`.

  Attributes:
    perm: ``{name: int32 array}``; ``apply_permutation(spec, perm, variables_b)`` is aligned to a.
    objectives: ``sum_l <W_a^l, (P W_b)^l>`` over all params, before the first sweep and after
      each sweep (non-decreasing).
    num_sweeps: sweeps run.
    converged: True if the last sweep improved no permutation (gain <= 1e-12).
  """

  perm: Permutation
  objectives: np.ndarray
  num_sweeps: int
  converged: bool


def _flat_numpy(params) -> dict[str, np.ndarray]:
  return {f"params/{p}": np.asarray(x, np.float32)
          for p, x in zip(trees.leaf_paths(params), jax.tree.leaves(params), strict=True)}


def _unit_matrix(w: np.ndarray, axis: int, repeat: int) -> np.ndarray:
  """(n, rest): the units of `axis` (inner factor if repeat > 1) as rows."""
  w = np.moveaxis(w, axis, 0)
  n = w.shape[0] // repeat
  return w.reshape(repeat, n, -1).transpose(1, 0, 2).reshape(n, -1)


def weight_matching(key: jax.Array, spec: PermutationSpec, variables_a: PyTree,
                    variables_b: PyTree, *, max_iter: int = 100, tol: float = 1e-12,
                    init_perm: Mapping[str, Any] | None = None,
                    progress: bool = False) -> WeightMatchingResult:
  """Aligns b to a by weight matching (Ainsworth et al. 2023, Git Re-Basin, algorithm 2).

  Maximises ``sum_l <W_a^l, P_l W_b^l P_{l-1}^T>`` over the permutations by coordinate descent:
  each sweep visits the permutations in a random order (from `key`); for permutation p with the
  others fixed, the objective is ``sum_{i} C[i, pi(i)]`` with
  ``C = sum over the weights w touched by p of A_w @ B_w^T``, where A_w (B_w) is w_a (w_b with the
  other permutations applied) with p's axis moved to the front and the rest flattened; the best
  pi is a linear assignment (`scipy.optimize.linear_sum_assignment`, maximize=True). A new pi
  is taken only if it gains more than `tol` (relative); the descent stops after a sweep without
  gain or after `max_iter` sweeps. Only ``params`` enter the objective (running statistics
  follow the permutation in `apply_permutation`). Computed on the host: float32 products
  (BLAS) accumulated into a float64 cost matrix; objectives summed in float64.

  Args:
    key: PRNG key for the visiting order (the result is a deterministic function of it).
    spec: the model's `PermutationSpec`.
    variables_a, variables_b: variables dicts or bare params trees of the same model.
    max_iter: maximum number of sweeps.
    tol: minimum gain, relative to ``max(1, |objective of p|)``, for p to be updated.
    init_perm: starting permutation (default identity).
    progress: show a tqdm bar over sweeps.

  Returns:
    A `WeightMatchingResult` (perm, objective per sweep, number of sweeps, converged).

  Raises:
    ValueError: a parameter of either model is not finite (the message names the model and the
      leaf), `init_perm` is not a permutation, or the spec does not fit the variables.
  """
  va, _ = _as_variables(variables_a)
  vb, _ = _as_variables(variables_b)
  trees.check_same_structure(va["params"], vb["params"], names=("variables_a", "variables_b"),
                             check_dtype=False)
  check_spec(spec, va["params"])
  if max_iter < 1:
    raise ValueError(f"max_iter must be >= 1, got {max_iter}.")
  a = _flat_numpy(va["params"])
  b = _flat_numpy(vb["params"])
  for which, flat in (("variables_a", a), ("variables_b", b)):
    for path, x in flat.items():
      if not np.all(np.isfinite(x)):
        raise ValueError(
          f"weight_matching: {which} has NaN/inf values at {path} ({int(np.sum(~np.isfinite(x)))} "
          f"of {x.size} entries); weight matching needs finite weights. Check that model's "
          "checkpoint or training run (lj.trees.check_finite).")
  leaf_axes = {p: v for p, v in spec.leaf_axes().items() if p in a}
  names = list(spec.names)
  if init_perm is None:
    perm = {k: np.arange(n) for k, n in spec.sizes.items()}
  else:
    _check_perm(spec, init_perm)
    perm = {k: np.asarray(v, np.int64) for k, v in init_perm.items()}
  rng = _host_rng(key)

  def objective():
    pb = _permute_leaves(b, leaf_axes, perm, xp=np)
    return float(sum(np.einsum("i,i->", a[p].ravel(), pb[p].ravel(), dtype=np.float64)
                     for p in a))

  objectives = [objective()]
  a_units: dict[tuple[str, int], np.ndarray] = {}  # a's unit matrices do not change
  converged, sweeps = False, 0
  bar = range(max_iter)
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(bar, desc="weight matching")
  for _ in bar:
    sweeps += 1
    improved = False
    for idx in rng.permutation(len(names)):
      name = names[idx]
      n = spec.sizes[name]
      cost = np.zeros((n, n))
      for e in spec.axes[name]:
        if e.path not in a:
          continue
        wb = b[e.path]
        for axis, other, repeat in leaf_axes[e.path]:
          if axis != e.axis:
            wb = _take(wb, perm[other], axis, repeat, np)
        if (e.path, e.axis) not in a_units:
          a_units[(e.path, e.axis)] = _unit_matrix(a[e.path], e.axis, e.repeat)
        cost += a_units[(e.path, e.axis)] @ _unit_matrix(wb, e.axis, e.repeat).T
      rows, cols = scipy.optimize.linear_sum_assignment(cost, maximize=True)
      new = cols[np.argsort(rows)]
      old_val = cost[np.arange(n), perm[name]].sum()
      new_val = cost[np.arange(n), new].sum()
      if new_val - old_val > tol * max(1.0, abs(old_val)):
        perm[name] = new
        improved = True
    objectives.append(objective())
    if not improved:
      converged = True
      break
  out = {k: jnp.asarray(v, jnp.int32) for k, v in perm.items()}
  return WeightMatchingResult(out, np.asarray(objectives), sweeps, converged)


# ------------------------------------------------------------------------------------------------
# Permutation saddles (Brea et al. 2019)


def _layer_axes(spec: PermutationSpec, layer: str):
  if layer not in spec.axes:
    raise ValueError(f"Unknown layer '{layer}'; the permutable layers are {list(spec.names)}.")
  return spec.axes[layer]


def swap_units(variables: PyTree, layer: str, i: int, j: int, *, spec: PermutationSpec) -> PyTree:
  """The variables with units i and j of permutation `layer` exchanged (an exact symmetry)."""
  _layer_axes(spec, layer)
  n = spec.sizes[layer]
  idx = jnp.arange(n).at[i].set(j).at[j].set(i)
  wrapped_vars, wrapped = _as_variables(variables)
  leaf_axes = {}
  for e in spec.axes[layer]:
    leaf_axes.setdefault(e.path, []).append((e.axis, layer, e.repeat))
  out = _permute_leaves(wrapped_vars, leaf_axes, {layer: idx})
  return out["params"] if wrapped else out


def swap_path(variables: PyTree, layer: str, i: int, j: int, s, *,
              spec: PermutationSpec | None = None) -> PyTree:
  """The continuous swap of units i and j of one layer (Brea et al. 2019).

  ``theta(s) = (1 - s) theta + s sigma_ij(theta)``, where sigma_ij exchanges the incoming weights,
  bias, BatchNorm entries and outgoing weights of units i and j. theta(0) = theta, theta(1) is the
  swapped copy (same function, same loss), and at s = 1/2 the two units are identical: a
  permutation point, whose gradient is symmetric in the two units.

  Args:
    variables: a variables dict or bare params tree.
    layer: the permutation name (see ``spec.names``, e.g. "Dense_0").
    i, j: the two units.
    s: scalar position in [0, 1] (a traced value is fine: vmap over s for a whole path).
    spec: the model's spec; default `mlp_spec(variables)` (Dense chains).
  """
  if spec is None:
    spec = mlp_spec(variables)
  _layer_axes(spec, layer)
  n = spec.sizes[layer]
  if not (0 <= i < n and 0 <= j < n) or i == j:
    raise ValueError(f"Units must be two different indices in [0, {n}); got i={i}, j={j}.")
  swapped = swap_units(variables, layer, i, j, spec=spec)
  # (1 - s) a + s b (not a + s (b - a)) makes the two units bitwise equal at s = 1/2.
  return jax.tree.map(lambda a, b: (1 - s) * a + s * b, variables, swapped)


def _swap_point(layer, i, j, spec, params, c):
  return swap_path(params, layer, i, j, c[0], spec=spec)


@functools.lru_cache(maxsize=256)
def _swap_point_fn(layer: str, i: int, j: int, spec: PermutationSpec):
  # one function object per (layer, units, spec): the engine's evaluator compiles once for them
  return functools.partial(_swap_point, layer, i, j, spec)


def swap_path_metrics(metric_fn: Callable, params: PyTree, layer: str, i: int, j: int, ss, *,
                      spec: PermutationSpec | None = None, store=None, metadata: dict | None = None,
                      **engine_kwargs) -> dict[str, np.ndarray]:
  """``metric_fn(swap_path(params, layer, i, j, s))`` for every s in `ss` (Brea et al. 2019).

  Evaluated by the point-evaluation engine (`engine.evaluate_points`: chunked, compiled once,
  sharded over ``mesh``, resumable in ``store`` keyed on the exact bytes of `params`, the ss and
  the metric function).

  Args:
    metric_fn: ``metric_fn(params) -> dict`` (e.g. `lj.make_metric_fn`); a plain function is
      wrapped in `jax.tree_util.Partial`.
    params: the parameters passed to metric_fn (the path is taken in this tree).
    layer, i, j: the permutation and the two units exchanged along the path.
    ss: 1-D array of positions in [0, 1], strictly increasing.
    spec: the model's spec; default `mlp_spec(params)`.
    store, metadata: see `engine.evaluate_points`.
    **engine_kwargs: ``chunk_size``, ``mesh``, ``map_mode``, ``identity``, ``progress``.

  Returns:
    ``{metric: array (len(ss),)}``; the loss is symmetric about s = 1/2.
  """
  if spec is None:
    spec = mlp_spec(params)
  _layer_axes(spec, layer)
  n = spec.sizes[layer]
  i, j = int(i), int(j)
  if not (0 <= i < n and 0 <= j < n) or i == j:
    raise ValueError(f"Units must be two different indices in [0, {n}); got i={i}, j={j}.")
  ss = engine.check_grid(ss, name="ss")
  if ss[0] < 0.0 or ss[-1] > 1.0:
    raise ValueError(f"ss must lie in [0, 1] (0: the parameters, 1: the swapped copy); got "
                     f"{ss[0]} to {ss[-1]}.")
  if store is not None:
    metadata = {"what": "swap path", "layer": layer, "units": [i, j], **(metadata or {})}
  point_fn = jax.tree_util.Partial(_swap_point_fn(layer, i, j, spec), params)
  engine_kwargs.setdefault("progress", False)
  return engine.evaluate_points(metric_fn, point_fn, ss[:, None], store=store, metadata=metadata,
                                desc=engine_kwargs.pop("desc", "swap path"), **engine_kwargs)




