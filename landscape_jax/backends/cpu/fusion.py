"""The jaxpr rewriter that routes a function's convolutions through oneDNN (`onednn.conv`).

`with_onednn_convolutions(fn)` traces ``fn`` once and evaluates its jaxpr with every supported
``conv_general_dilated`` replaced by `onednn.conv`; a convolution whose output only feeds
``+ bias`` (per channel), then ``+ residual``, then ``relu`` (each optional) is fused with them
as oneDNN post-ops. The result is the same function up to float rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from landscape_jax.backends.cpu.jaxpr import JIT_PRIMITIVES, Environment, bind, rewritten
from landscape_jax.backends.cpu.onednn import conv
from landscape_jax.backends.cpu.onednn_build import library

__all__ = ["plan_fusions", "with_onednn_convolutions"]



def _supported(eqn) -> bool:
  p = eqn.params
  lhs, rhs = (v.aval for v in eqn.invars)
  return (lhs.ndim == 4 and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
          and p["preferred_element_type"] in (None, jnp.float32)
          and all(d == 1 for d in p["lhs_dilation"])
          and p["feature_group_count"] == 1 and p["batch_group_count"] == 1
          and all(lo >= 0 and hi >= 0 for lo, hi in p["padding"])
          and all(s > 0 for s in lhs.shape))


def _conv_eqn(eqn, x, w, bias=None, residual=None, relu=False):
  """A conv_general_dilated equation computed by `conv`, in its own dimension numbers (with the
  epilogue of a `_Fusion`: only planned for NHWC outputs)."""
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  x = jnp.transpose(x, (lhs_spec[0], lhs_spec[2], lhs_spec[3], lhs_spec[1]))  # -> NHWC
  w = jnp.transpose(w, (rhs_spec[2], rhs_spec[3], rhs_spec[1], rhs_spec[0]))  # -> HWIO
  (t, b), (lft, r) = p["padding"]
  y = conv(x, w, strides=p["window_strides"], padding=(t, b, lft, r), dilation=p["rhs_dilation"],
           bias=None if bias is None else jnp.reshape(bias, (-1,)), residual=residual, relu=relu)
  perm = [0] * 4  # NHWC -> the equation's output layout
  for nhwc_axis, out_axis in zip((0, 3, 1, 2), out_spec, strict=True):
    perm[out_axis] = nhwc_axis
  return jnp.transpose(y, perm)


class _Fusion(NamedTuple):
  """A convolution and its epilogue ``relu(conv + bias + residual)``, evaluated at `last`."""
  conv: Any  # the conv_general_dilated equation
  bias: Any  # jaxpr atoms (or None)
  residual: Any
  relu: bool
  out: Any  # the variable the fused call defines
  last: int  # index of the last absorbed equation


def _is_relu(eqn) -> bool:
  """``max(v, 0)``, or `jax.nn.relu` (a custom_jvp_call of it)."""
  if eqn.primitive.name in ("custom_jvp_call", *JIT_PRIMITIVES):
    inner = eqn.params["call_jaxpr" if eqn.primitive.name == "custom_jvp_call" else "jaxpr"].jaxpr
    return len(inner.eqns) == 1 and len(eqn.invars) == 1 and _is_relu(inner.eqns[0])
  return eqn.primitive.name == "max" and any(
    isinstance(v, jex.Literal) and np.ndim(v.val) == 0 and v.val == 0 for v in eqn.invars)


def plan_fusions(jaxpr) -> tuple[dict[int, _Fusion], set[int]]:
  """Finds ``conv -> [+ per-channel bias] -> [+ residual] -> [relu]`` chains whose intermediate
  values have no other use. Returns {index to evaluate at: fusion} and the absorbed indices."""
  consumers: dict = {}
  for i, e in enumerate(jaxpr.eqns):
    for v in e.invars:
      if not isinstance(v, jex.Literal):
        consumers.setdefault(v, []).append(i)
  outputs = {v for v in jaxpr.outvars if not isinstance(v, jex.Literal)}

  def only_consumer(v):  # (equation, index) of v's single use, if not claimed by another chain
    uses = consumers.get(v, [])
    if len(uses) != 1 or v in outputs or uses[0] in absorbed:
      return None, -1
    return jaxpr.eqns[uses[0]], uses[0]

  def other_operand(e, v):
    if e.primitive.name != "add" or len(e.invars) != 2 or list(e.invars).count(v) != 1:
      return None
    return e.invars[1] if e.invars[0] is v else e.invars[0]

  plans, absorbed = {}, set()
  for i, e in enumerate(jaxpr.eqns):
    if (e.primitive.name != "conv_general_dilated" or not _supported(e)
        or tuple(e.params["dimension_numbers"].out_spec) != (0, 3, 1, 2)):
      continue
    cur, shape = e.outvars[0], e.outvars[0].aval.shape
    bias = residual = None
    relu, last, chain = False, i, []
    nxt, j = only_consumer(cur)
    o = other_operand(nxt, cur) if nxt is not None else None
    if o is not None and o.aval.dtype == jnp.float32 and o.aval.shape in (
        (shape[-1],), (1, 1, 1, shape[-1])):
      bias, cur, last = o, nxt.outvars[0], j
      chain.append(j)
      nxt, j = only_consumer(cur)
      o = other_operand(nxt, cur) if nxt is not None else None
    if o is not None and o.aval.dtype == jnp.float32 and o.aval.shape == shape:
      residual, cur, last = o, nxt.outvars[0], j
      chain.append(j)
      nxt, j = only_consumer(cur)
    if nxt is not None and _is_relu(nxt):
      relu, cur, last = True, nxt.outvars[0], j
      chain.append(j)
    if chain:
      plans[last] = _Fusion(e, bias, residual, relu, cur, last)
      absorbed.update([i, *chain])
  return plans, absorbed


def _eval(jaxpr, consts, args, fuse: bool = True) -> list:
  env = Environment(jaxpr, consts, args)
  read = env.read
  plans, absorbed = plan_fusions(jaxpr) if fuse else ({}, set())
  for i, eqn in enumerate(jaxpr.eqns):
    if i in plans:  # a convolution with its epilogue, now that all its operands exist
      f = plans[i]
      env.write([f.out], [_conv_eqn(f.conv, *(read(v) for v in f.conv.invars),
                             bias=None if f.bias is None else read(f.bias),
                             residual=None if f.residual is None else read(f.residual),
                             relu=f.relu)])
      continue
    if i in absorbed:
      continue
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name == "conv_general_dilated" and _supported(eqn):
      outs = [_conv_eqn(eqn, *invals)]
    elif name in JIT_PRIMITIVES:
      sub = eqn.params["jaxpr"]
      outs = _eval(sub.jaxpr, sub.consts, invals, fuse)
    else:
      outs = bind(eqn, invals)
    env.write(eqn.outvars, outs)
  return [read(v) for v in jaxpr.outvars]


def with_onednn_convolutions(fn: Callable[..., Any], *,
                             fuse_epilogues: bool = True) -> Callable[..., Any]:
  """``fn`` with its float32 2-D convolutions computed by oneDNN (see the module docstring).

  ``fn`` takes pytrees of arrays (positional or keyword arguments) and returns a pytree of
  arrays; the wrapped function traces it once per call (inside `jax.jit`: once per compilation) and
  evaluates the traced program with each supported ``conv_general_dilated`` replaced by `conv`.
  Use it inside `jax.jit`; it computes the same function up to float rounding.

  Args:
    fn: the function.
    fuse_epilogues: fuse ``+ bias``, ``+ residual`` and ``relu`` that follow a convolution into
      it (oneDNN post-ops); False leaves them to XLA (for comparison).

  Raises:
    OnednnUnavailable: where oneDNN cannot be built (see `unavailable_reason`).
  """
  library()

  return rewritten(fn, functools.partial(_eval, fuse=fuse_epilogues))
