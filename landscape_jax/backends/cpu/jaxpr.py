"""Evaluating a traced program with some equations replaced (used by `onednn` and
`convolutions`): the two pieces every such rewrite needs; and evaluating it with repeated
equations computed once (`evaluate_once`, used by `core.hessian`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
import numpy as np

__all__ = [
  "bind",
  "Environment",
  "evaluate",
  "evaluate_once",
  "JIT_PRIMITIVES",
  "rewritten",
]

JIT_PRIMITIVES = ("jit", "pjit")


class Environment:
  """The values of a jaxpr's variables while it is evaluated equation by equation."""

  def __init__(self, jaxpr, consts, args):
    self._values: dict = {}
    self.write(jaxpr.constvars, consts)
    self.write(jaxpr.invars, args)

  def read(self, v):
    return v.val if isinstance(v, jex.Literal) else self._values[v]

  def write(self, variables, values) -> None:
    for v, a in zip(variables, values, strict=True):
      self._values[v] = a


def evaluate(jaxpr, consts, args, replace: Callable[[Any, list], list | None]) -> list:
  """Evaluates `jaxpr`, giving each equation (also inside nested `jax.jit`) to
  ``replace(eqn, invals)`` first: its outputs replace the equation's, None keeps it."""
  env = Environment(jaxpr, consts, args)
  for eqn in jaxpr.eqns:
    invals = [env.read(v) for v in eqn.invars]
    outs = replace(eqn, invals)
    if outs is None and eqn.primitive.name in JIT_PRIMITIVES:
      sub = eqn.params["jaxpr"]
      outs = evaluate(sub.jaxpr, sub.consts, invals, replace)
    env.write(eqn.outvars, bind(eqn, invals) if outs is None else outs)
  return [env.read(v) for v in jaxpr.outvars]


def _key(value):
  """A hashable stand-in for an equation parameter or literal: itself where hashable (jaxprs
  hash by identity), else its identity (never equal to another object's)."""
  try:
    hash(value)
  except TypeError:
    return ("id", id(value))
  return (type(value).__name__, value)


def evaluate_once(jaxpr, consts, args) -> list:
  """Evaluates `jaxpr` with each repeated pure equation computed once (common subexpressions).

  Two equations are one when they apply the same primitive with equal parameters to the same
  variables or equal literals (after the earlier repeats are merged), and have no effects (a
  callback, a print, randomness by state is never merged). Same values as `jax.core.eval_jaxpr`,
  with fewer operations where the program repeats itself: e.g. ``jax.jvp`` of a ``jax.jvp``
  along the same direction computes the first-order tangents twice, as the inner tangent and as
  the outer tangent of the primal, and XLA does not merge custom calls (oneDNN's convolutions).
  """
  env = Environment(jaxpr, consts, args)
  alias: dict = {}  # variable -> the variable of the equation it repeats
  seen: dict = {}

  def name(v):
    if isinstance(v, jex.Literal):  # scalars by type and value (NaN never equals itself)
      if np.ndim(v.val) == 0:
        return ("literal", str(v.aval), np.asarray(v.val).item())
      return ("id", id(v))
    return alias.get(v, v)

  for eqn in jaxpr.eqns:
    key = None
    if not eqn.effects:
      params = tuple(sorted((k, _key(p)) for k, p in eqn.params.items()))
      key = (eqn.primitive, params, tuple(name(v) for v in eqn.invars))
      if key in seen:
        for v, first in zip(eqn.outvars, seen[key], strict=True):
          alias[v] = first
          env.write([v], [env.read(first)])
        continue
    env.write(eqn.outvars, bind(eqn, [env.read(v) for v in eqn.invars]))
    if key is not None:
      seen[key] = eqn.outvars  # computed here, so never an alias
  return [env.read(v) for v in jaxpr.outvars]


def bind(eqn, invals: list) -> list:
  """Applies equation `eqn`'s primitive to `invals` as the traced program did; a list of outputs."""
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns, params = params if isinstance(params, tuple) else ((), params)  # jax < 0.8: a pair
  outs = eqn.primitive.bind(*subfuns, *invals, **params)
  return outs if eqn.primitive.multiple_results else [outs]


def rewritten(fn: Callable[..., Any], evaluate: Callable[[Any, list, list], list]
              ) -> Callable[..., Any]:
  """``fn`` traced at each call (pytree args and kwargs) and run by ``evaluate(jaxpr, consts,
  args) -> outputs`` instead of as written."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    leaves, tree = jax.tree.flatten((args, kwargs))

    def flat_fn(*flat):
      a, k = jax.tree.unflatten(tree, flat)
      return fn(*a, **k)

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*leaves)
    out = evaluate(closed.jaxpr, closed.consts, leaves)
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  return wrapped
