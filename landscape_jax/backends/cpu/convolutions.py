"""Convolutions that XLA:CPU runs fast inside loops: explicit transposes to one canonical layout.

XLA:CPU runs a ``conv_general_dilated`` through its fast library paths (Eigen, YNNPACK) only in
the canonical layout ``NHWC x HWIO -> NHWC``; other dimension numbers are rewritten into that
layout by a compiler pass. Inside the body of a ``while`` loop (`lax.scan`, `lax.fori_loop`,
`lax.map`) that rewrite does not happen (jax-ml/jax#12868), and the convolutions that
differentiation creates, which all have other dimension numbers (the weight gradient contracts
over the batch: ``f01b_i01o->01bf``; the input gradient uses the transposed kernel ``HWOI``), fall
back to a generic loop nest, many times slower (`benchmarks/bench_hvp.py` measures it; its
numbers are in benchmarks/RESULTS.md). Every Lanczos iteration, every Hutchinson probe and every
training epoch written as a `lax.scan` (FGE, curves) pays it.

`canonicalize_convolutions(fn)` traces ``fn`` once and evaluates its program with every such
convolution computed as ``transpose(conv(transpose(lhs), transpose(rhs)))`` in the canonical
layout (the same numbers: only the order of the axes changes). Apply it to a function that
*already differentiates* (a gradient, an HVP, a training step): the convolutions of its backward
pass are then canonical wherever the function is later placed in a loop. On other backends it
returns ``fn`` unchanged: GPUs and TPUs choose their layouts themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
from jax import lax

from landscape_jax.backends.cpu.jaxpr import evaluate, rewritten

__all__ = ["canonical_dimension_numbers", "canonicalize_convolutions"]

def canonical_dimension_numbers(num_spatial: int) -> lax.ConvDimensionNumbers:
  """``NHWC x HWIO -> NHWC`` (for 2 spatial dimensions) as `lax.ConvDimensionNumbers`.

  Specs list (batch/out-feature, feature/in-feature, spatial...) positions: lhs
  ``(0, s + 1, 1..s)``, rhs ``(s + 1, s, 0..s - 1)``, out ``(0, s + 1, 1..s)``.
  """
  s = num_spatial
  spatial = tuple(range(1, s + 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, s + 1, *spatial),
                                  rhs_spec=(s + 1, s, *range(s)),
                                  out_spec=(0, s + 1, *spatial))


def _canonical_conv(params: dict, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
  """One ``conv_general_dilated`` (its primitive `params`) computed in the canonical layout."""
  dn = params["dimension_numbers"]
  s = len(dn.lhs_spec) - 2
  canonical = canonical_dimension_numbers(s)
  if (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == tuple(canonical) or (
      params["feature_group_count"] != 1 or params["batch_group_count"] != 1):
    return lax.conv_general_dilated_p.bind(lhs, rhs, **params)
  lhs = lax.transpose(lhs, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))
  rhs = lax.transpose(rhs, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))
  out = lax.conv_general_dilated_p.bind(lhs, rhs, **{**params, "dimension_numbers": canonical})
  # out has axes (batch, spatial..., feature); put each where out_spec wants it
  perm = [0] * (s + 2)
  perm[dn.out_spec[0]] = 0
  perm[dn.out_spec[1]] = s + 1
  for k, axis in enumerate(dn.out_spec[2:]):
    perm[axis] = k + 1
  return lax.transpose(out, tuple(perm))


def _replace(eqn, invals):
  if eqn.primitive.name == "conv_general_dilated":
    return [_canonical_conv(eqn.params, *invals)]
  return None


def canonicalize_convolutions(fn: Callable[..., Any], *,
                              backend: str | None = None) -> Callable[..., Any]:
  """``fn`` with every convolution in XLA:CPU's canonical layout (see the module docstring).

  The wrapped function traces ``fn`` (pytree arguments, pytree result) at each call
  (inside `jax.jit`: once per compilation) and evaluates the traced program with each
  ``conv_general_dilated`` (top level and inside nested `jax.jit`; one feature and batch group)
  computed as transposes around a canonical-layout convolution. It computes the same function,
  and it can be differentiated, vmapped and placed in loops like ``fn``.

  Args:
    fn: the function, typically one that already takes gradients.
    backend: the platform the result will run on (default: `jax.default_backend()`); anything
      but "cpu" returns ``fn`` itself.
  """
  if (backend or jax.default_backend()) != "cpu":
    return fn
  return rewritten(fn, functools.partial(evaluate, replace=_replace))
