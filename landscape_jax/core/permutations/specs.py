"""Permutation symmetry of neural networks: specs and the algebra of permutations.

Permuting the hidden units of a layer -- the last axis of its kernel, its bias, its BatchNorm scale,
bias and running statistics, and the input axis of every layer that reads it -- leaves the network
function unchanged. Residual connections tie all layers that write into one residual stream to a
single shared permutation (Brea et al. 2019; Ainsworth et al. 2023).

A `PermutationSpec` lists, for every permutation, the axes of the variables it acts on. Axes are
addressed by paths relative to the variables dict, e.g. ``"params/Dense_0/kernel"`` or
``"batch_stats/BatchNorm_0/mean"``. A permutation is a dict ``{name: int array (n,)}``;
`apply_permutation` maps every permuted axis by ``w_new[..., k, ...] = w[..., perm[k], ...]`` (new
unit k is old unit perm[k]). `mlp_spec` builds the spec of a chain of Dense layers from parameter
names alone; `tracing.spec_from_model` derives the spec of any linen model.

References:
  Brea, Simsek, Illing and Gerstner 2019, "Weight-space symmetry in deep networks gives rise to
  permutation saddles, connected by equal-loss valleys".
  Ainsworth, Hayase and Srinivasa 2023, "Git Re-Basin: Merging Models modulo Permutation
  Symmetries".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from landscape_jax.core import sharding as shd
from landscape_jax.core import trees

__all__ = [
  "apply_permutation",
  "as_variables",
  "check_permutation",
  "check_spec",
  "compose_permutations",
  "host_rng",
  "identity_permutation",
  "invert_permutation",
  "mlp_spec",
  "PermAxis",
  "PermutationSpec",
  "permute_leaves",
  "random_permutation",
  "take_units",
]

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


def as_variables(tree: PyTree) -> tuple[dict, bool]:
  """Wraps a bare params tree as ``{"params": tree}``; returns (variables, was_wrapped)."""
  if isinstance(tree, Mapping) and "params" in tree:
    return dict(tree), False
  return {"params": tree}, True


def check_spec(spec: PermutationSpec, variables: PyTree) -> None:
  """Raises ValueError if `spec` names a parameter or axis that `variables` lack or mis-size.

  `variables` is ``{"params": ..., ["batch_stats": ...]}`` or a bare params tree (then the spec's
  ``batch_stats`` entries are not checked).
  """
  variables, wrapped = as_variables(variables)
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


def check_permutation(spec: PermutationSpec, perm: Mapping[str, Any]) -> None:
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


def take_units(x, idx, axis: int, repeat: int, xp=jnp):
  """``x`` with axis `axis`, read as (repeat, n), re-indexed by `idx` on the inner factor."""
  if xp is _HostTake:
    y = take_units(shd.host_copy(x), np.asarray(idx), axis, repeat, np)
    return jax.device_put(y, x.sharding) if isinstance(x, jax.Array) else y
  if repeat == 1:
    return xp.take(x, idx, axis=axis)
  shape = x.shape
  n = shape[axis] // repeat
  y = x.reshape(shape[:axis] + (repeat, n) + shape[axis + 1:])
  return xp.take(y, idx, axis=axis + 1).reshape(shape)


def permute_leaves(variables: dict, leaf_axes, perm, xp=jnp) -> dict:
  def f(path, x):
    for axis, name, repeat in leaf_axes.get(path, ()):
      x = take_units(x, perm[name], axis, repeat, xp)
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
  check_permutation(spec, perm)
  wrapped_vars, wrapped = as_variables(variables)
  check_spec(spec, variables)
  leaves = jax.tree.leaves((wrapped_vars, dict(perm)))
  if any(isinstance(x, jax.core.Tracer) for x in leaves):
    out = permute_leaves(wrapped_vars, spec.leaf_axes(), perm)
  else:  # concrete values: gather on the host (no compilation), back to the leaves' devices
    host_perm = {k: np.asarray(perm[k]) for k in spec.names}
    out = permute_leaves(wrapped_vars, spec.leaf_axes(), host_perm, xp=_HostTake)
  return out["params"] if wrapped else out


class _HostTake:
  """Marker for `take_units`: gather on the host, return a leaf of the input's kind (a jax.Array on
  its own sharding)."""




def identity_permutation(spec: PermutationSpec) -> Permutation:
  """``{name: arange(n)}``."""
  return {k: jnp.arange(n, dtype=jnp.int32) for k, n in spec.sizes.items()}


def random_permutation(key: jax.Array, spec: PermutationSpec) -> Permutation:
  """Independent uniformly random permutations, one per name, a deterministic function of `key`.

  Drawn on the host by a numpy Generator seeded with the key's data (no compilation per width;
  not traceable: call it outside `jax.jit`).
  """
  rng = host_rng(key)
  return {k: jnp.asarray(rng.permutation(n), jnp.int32) for k, n in spec.sizes.items()}


def host_rng(key: jax.Array) -> np.random.Generator:
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
  params = as_variables(params)[0]["params"]
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


