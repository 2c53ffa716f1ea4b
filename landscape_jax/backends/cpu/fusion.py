"""The jaxpr rewriter that routes a function's convolutions through oneDNN (`onednn.conv`).

`with_onednn_convolutions(fn)` traces ``fn`` once and evaluates its jaxpr with every supported
``conv_general_dilated`` replaced by `onednn.conv`; a convolution whose output only feeds
``+ bias`` (per channel), then ``+ residual``, then ``relu`` (each optional) is fused with them
as oneDNN post-ops. The result is the same function up to float rounding.

Precision as an option (``compute_dtype="bfloat16"``, off by default): every float32 convolution
and matrix product is computed from bfloat16-rounded operands with float32 accumulation,
``conv(bf16(x), bf16(w))`` and ``dot(bf16(a), bf16(b))``; everything else (bias, residual, ReLU,
BatchNorm, softmax, the loss) stays float32. `with_onednn_convolutions` runs the convolutions on
oneDNN's bf16 kernels (CPUs with avx512_bf16 or AMX); `with_compute_dtype` is the same rewrite
for XLA (GPU, TPU, and CPUs without the instructions). A convolution whose result only feeds
other convolutions writes it in bfloat16 directly: they would round it anyway, so this saves a
float32 pass over the activations without changing any value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from landscape_jax.backends.cpu.jaxpr import JIT_PRIMITIVES, Environment, bind, evaluate, rewritten
from landscape_jax.backends.cpu.onednn import conv
from landscape_jax.backends.cpu.onednn_build import (
  OnednnUnavailable,
  bf16_unsupported_reason,
  canonical_compute_dtype,
  library,
)

__all__ = ["plan_fusions", "with_compute_dtype", "with_onednn_convolutions"]


def _supported(eqn) -> bool:
  p = eqn.params
  lhs, rhs = (v.aval for v in eqn.invars)
  return (lhs.ndim == 4 and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
          and p["preferred_element_type"] in (None, jnp.float32)
          and all(d == 1 for d in p["lhs_dilation"])
          and p["feature_group_count"] == 1 and p["batch_group_count"] == 1
          and all(lo >= 0 and hi >= 0 for lo, hi in p["padding"])
          and all(s > 0 for s in lhs.shape))


def _reduced_eqn(eqn, invals) -> list | None:
  """A float32 conv_general_dilated or dot_general equation evaluated by XLA from bfloat16
  operands with float32 accumulation (``preferred_element_type``); None for any other."""
  if (eqn.primitive.name not in ("conv_general_dilated", "dot_general")
      or any(v.aval.dtype != jnp.float32 for v in eqn.invars)
      or eqn.params.get("preferred_element_type") not in (None, jnp.float32)):
    return None
  params = dict(eqn.params, preferred_element_type=jnp.dtype(jnp.float32))
  return bind(eqn.replace(params=params), [jnp.asarray(a, jnp.bfloat16) for a in invals])


def _conv_eqn(eqn, x, w, bias=None, residual=None, relu=False, compute_dtype=None,
              out_dtype=jnp.float32):
  """A conv_general_dilated equation computed by `conv`, in its own dimension numbers (with the
  epilogue of a `_Fusion`: only planned for NHWC outputs)."""
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  x = jnp.transpose(x, (lhs_spec[0], lhs_spec[2], lhs_spec[3], lhs_spec[1]))  # -> NHWC
  w = jnp.transpose(w, (rhs_spec[2], rhs_spec[3], rhs_spec[1], rhs_spec[0]))  # -> HWIO
  (t, b), (lft, r) = p["padding"]
  y = conv(x, w, strides=p["window_strides"], padding=(t, b, lft, r), dilation=p["rhs_dilation"],
           bias=None if bias is None else jnp.reshape(bias, (-1,)), residual=residual, relu=relu,
           compute_dtype=compute_dtype, out_dtype=out_dtype)
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


def _conv_inputs_only(jaxpr) -> set:
  """The variables whose every use is as the input (lhs) of a supported convolution."""
  uses: dict = {}
  for e in jaxpr.eqns:
    for k, v in enumerate(e.invars):
      if not isinstance(v, jex.Literal):
        ok = e.primitive.name == "conv_general_dilated" and k == 0 and _supported(e)
        uses[v] = uses.get(v, True) and ok
  outputs = {v for v in jaxpr.outvars if not isinstance(v, jex.Literal)}
  return {v for v, ok in uses.items() if ok and v not in outputs}


def _eval(jaxpr, consts, args, fuse: bool = True, compute_dtype: str | None = None) -> list:
  env = Environment(jaxpr, consts, args)
  read = env.read
  plans, absorbed = plan_fusions(jaxpr) if fuse else ({}, set())
  bf16_out = _conv_inputs_only(jaxpr) if compute_dtype == "bfloat16" else set()

  def out_dtype(v):
    return jnp.bfloat16 if v in bf16_out else jnp.float32

  for i, eqn in enumerate(jaxpr.eqns):
    if i in plans:  # a convolution with its epilogue, now that all its operands exist
      f = plans[i]
      env.write([f.out], [_conv_eqn(f.conv, *(read(v) for v in f.conv.invars),
                             bias=None if f.bias is None else read(f.bias),
                             residual=None if f.residual is None else read(f.residual),
                             relu=f.relu, compute_dtype=compute_dtype,
                             out_dtype=out_dtype(f.out))])
      continue
    if i in absorbed:
      continue
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name == "conv_general_dilated" and _supported(eqn):
      outs = [_conv_eqn(eqn, *invals, compute_dtype=compute_dtype,
                        out_dtype=out_dtype(eqn.outvars[0]))]
    elif name in JIT_PRIMITIVES:
      sub = eqn.params["jaxpr"]
      outs = _eval(sub.jaxpr, sub.consts, invals, fuse, compute_dtype)
    elif compute_dtype == "bfloat16" and (reduced := _reduced_eqn(eqn, invals)) is not None:
      outs = reduced
    else:
      outs = bind(eqn, invals)
    env.write(eqn.outvars, outs)
  return [read(v) for v in jaxpr.outvars]


def with_onednn_convolutions(fn: Callable[..., Any], *, fuse_epilogues: bool = True,
                             compute_dtype=None) -> Callable[..., Any]:
  """``fn`` with its float32 2-D convolutions computed by oneDNN (see the module docstring).

  ``fn`` takes pytrees of arrays (positional or keyword arguments) and returns a pytree of
  arrays; the wrapped function traces it once per call (inside `jax.jit`: once per compilation) and
  evaluates the traced program with each supported ``conv_general_dilated`` replaced by `conv`.
  Use it inside `jax.jit`; it computes the same function up to float rounding.

  With ``compute_dtype="bfloat16"`` each convolution is ``conv(bf16(x), bf16(w))`` with float32
  accumulation on oneDNN, and each other float32 convolution or matrix product
  (``dot_general``) the same in XLA (`with_compute_dtype`); the rest of ``fn`` is unchanged.

  Args:
    fn: the function.
    fuse_epilogues: fuse ``+ bias``, ``+ residual`` and ``relu`` that follow a convolution into
      it (oneDNN post-ops); False leaves them to XLA (for comparison).
    compute_dtype: None or "float32" (default: float32 throughout, the exact function) or
      "bfloat16" (see above).

  Raises:
    OnednnUnavailable: where oneDNN cannot be built (see `unavailable_reason`), or, with
      ``compute_dtype="bfloat16"``, where the CPU has no bfloat16 instructions (use
      `with_compute_dtype` there, or float32).
  """
  library()
  compute_dtype = canonical_compute_dtype(compute_dtype)
  if compute_dtype is not None and (reason := bf16_unsupported_reason()) is not None:
    raise OnednnUnavailable(f"oneDNN bfloat16 convolutions: {reason}. Use compute_dtype=None, "
                            "or with_compute_dtype (XLA) for bfloat16 evaluation here.")
  return rewritten(fn, functools.partial(_eval, fuse=fuse_epilogues, compute_dtype=compute_dtype))


def with_compute_dtype(fn: Callable[..., Any], compute_dtype) -> Callable[..., Any]:
  """``fn`` with its float32 convolutions and matrix products evaluated in `compute_dtype` by XLA.

  ``compute_dtype="bfloat16"``: each float32 ``conv_general_dilated`` and ``dot_general`` of
  ``fn`` (also inside nested `jax.jit`) becomes the same operation on ``bf16(lhs)`` and
  ``bf16(rhs)`` with ``preferred_element_type=float32`` (float32 accumulation and result): the
  bfloat16 path for GPUs and TPUs (native bf16 matrix units) and for CPUs without bfloat16
  instructions. None or "float32" returns ``fn`` itself. The wrapped function traces ``fn`` once
  per call (inside `jax.jit`: once per compilation).

  Raises:
    ValueError: for another `compute_dtype`.
  """
  if canonical_compute_dtype(compute_dtype) is None:
    return fn
  return rewritten(fn, lambda jaxpr, consts, args: evaluate(jaxpr, consts, args, _reduced_eqn))
