"""Evaluating a traced program with some equations replaced (used by `onednn` and
`convolutions`): the two pieces every such rewrite needs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex

__all__ = [
  "bind",
  "Environment",
  "evaluate",
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
