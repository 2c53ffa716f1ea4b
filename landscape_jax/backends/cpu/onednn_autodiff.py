"""oneDNN derivatives of convolutions: gradients, Hessian-vector products and training steps.

`backends.cpu.onednn` runs the forward convolutions of evaluation through oneDNN but leaves their
derivatives to XLA:CPU, whose backward convolutions run far below the machine's matmul peak
(benchmarks/bench_conv_grads.py measures both; numbers in benchmarks/RESULTS.md). This module
makes the derivatives oneDNN's too.

A 2-D convolution ``y = F(x, w)`` (NHWC x HWIO -> NHWC, strides s, padding p, kernel dilation d)
is bilinear, and so are its two adjoints,

* backward data ``D(dy, w) = (dF/dx)^T dy``:
  ``D(dy, w)[n,h,v,c] = sum_{i,j,a,b,o : h = i s_h + a d_h - p_t, v = j s_w + b d_w - p_l}
  dy[n,i,j,o] w[a,b,c,o]``,
* backward weights ``W(x, dy) = (dF/dw)^T dy``:
  ``W(x, dy)[a,b,c,o] = sum_{n,i,j} xp[n, i s_h + a d_h, j s_w + b d_w, c] dy[n,i,j,o]``.

The three are one JAX primitive (``kind`` = "fwd", "bwd_data" or "bwd_weights"; oneDNN's
convolution_forward / convolution_backward_data / convolution_backward_weights through XLA FFI
calls), and the family is closed under transposition: with ``<.,.>`` the sum of products,
``<F(x, w), dy> = <x, D(dy, w)> = <w, W(x, dy)>``, so

====================  ====================  ====================
product               transpose in 1st arg  transpose in 2nd arg
====================  ====================  ====================
``F(x, w)``           ``D(ct, w)``          ``W(x, ct)``
``D(dy, w)``          ``F(ct, w)``          ``W(ct, dy)``
``W(x, dy)``          ``D(dy, ct)``         ``F(x, ct)``
====================  ====================  ====================

Each is given JAX's bilinear JVP rule (``d B(a, b) = B(da, b) + B(a, db)``) and these transposes,
so every order of differentiation stays on oneDNN: `jax.grad` (reverse), `jax.jvp` of a gradient
(the forward-over-reverse Hessian-vector product), `jax.linearize`, and reverse-over-reverse. A
`vmap` rule folds a batch of images into the images' batch axis where the weights are shared and
otherwise runs the items one after another (`lax.map`).

`with_onednn_derivatives(fn)` rewrites a function *before* it is differentiated: each float32
``conv_general_dilated`` with one feature group and batch group, no input dilation and
non-negative padding becomes ``F``; anything else (grouped or depthwise convolutions, bfloat16 or
other dtypes, 1-D / 3-D convolutions) stays XLA's, derivatives included. The numbers are oneDNN's
float32 sums: the same function as XLA's up to float32 rounding (the order of the sums differs).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching, mlir

from landscape_jax.backends.cpu.jaxpr import evaluate, rewritten
from landscape_jax.backends.cpu.onednn_build import (
  TARGET,
  TARGET_BWD_DATA,
  TARGET_BWD_WEIGHTS,
  library,
  resolve,
)

__all__ = ["AUTO_MIN_FLOPS", "KINDS", "conv", "conv_p", "implementation", "min_flops_for",
           "supported", "with_onednn_derivatives"]

KINDS = ("fwd", "bwd_data", "bwd_weights")
# ``"auto"`` routes a convolution to oneDNN from this many FLOPs (2 N OH OW KH KW C O) up:
# bench_conv_grads measured oneDNN 1.5-1.9x faster than XLA on ResNet-20 at batch 128 (about
# 6e8 FLOPs per 3x3 convolution) but 5-20x slower on a ResNet-8 at batch 16 of 16x16 images
# (at most 5e6 FLOPs per convolution: per-call overhead). bench_auto_threshold then measured
# ResNet-20's two 1x1 stride-2 shortcuts (3.4e7 FLOPs): left to XLA (the former floor, 5e7),
# their backward convolutions transpose their inputs in slow XLA fusions; on oneDNN the
# training step is 1.22x faster, while the ResNet-8 (all below 5e6) stays XLA's.
AUTO_MIN_FLOPS = 2e7

conv_p = jex.Primitive("landscape_jax_onednn_bilinear_conv")


def _out_size(size: int, k: int, stride: int, dilation: int, lo: int, hi: int) -> int:
  return (size + lo + hi - (k - 1) * dilation - 1) // stride + 1


def _shape(a_shape, b_shape, *, kind, strides, padding, dilation, in_hw, k_hw):
  if kind == "fwd":  # F(x, w)
    return (a_shape[0],
            _out_size(in_hw[0], k_hw[0], strides[0], dilation[0], padding[0], padding[1]),
            _out_size(in_hw[1], k_hw[1], strides[1], dilation[1], padding[2], padding[3]),
            b_shape[3])
  if kind == "bwd_data":  # D(dy, w)
    return (a_shape[0], *in_hw, b_shape[2])
  return (*k_hw, a_shape[3], b_shape[3])  # W(x, dy)


def _abstract_eval(a, b, **params):
  if a.dtype != jnp.float32 or b.dtype != jnp.float32:
    raise TypeError(f"{conv_p.name} takes float32 operands, got {a.dtype} and {b.dtype}.")
  return jax.core.ShapedArray(_shape(a.shape, b.shape, **params), jnp.float32)


def _ffi(a, b, *, kind, strides, padding, dilation, in_hw, k_hw):
  library()
  out = jax.ShapeDtypeStruct(_shape(a.shape, b.shape, kind=kind, strides=strides,
                                    padding=padding, dilation=dilation, in_hw=in_hw, k_hw=k_hw),
                             jnp.float32)
  attrs = {"strides": np.asarray(strides, np.int64), "padding": np.asarray(padding, np.int64),
           "dilation": np.asarray(dilation, np.int64)}
  if kind == "fwd":
    return jax.ffi.ffi_call(TARGET, out)(a, b, bias=False, residual=False, relu=False, **attrs)
  target = TARGET_BWD_DATA if kind == "bwd_data" else TARGET_BWD_WEIGHTS
  return jax.ffi.ffi_call(target, out)(a, b, **attrs)


def _bind(a, b, kind: str, params: dict):
  return conv_p.bind(a, b, **{**params, "kind": kind})


def _transpose_first(ct, a, b, *, kind, **params):
  """The adjoint in the first operand (`a` undefined): see the module docstring's table."""
  del a
  if kind == "fwd":
    return _bind(ct, b, "bwd_data", params)
  if kind == "bwd_data":
    return _bind(ct, b, "fwd", params)
  return _bind(b, ct, "bwd_data", params)


def _transpose_second(ct, a, b, *, kind, **params):
  """The adjoint in the second operand (`b` undefined)."""
  del b
  if kind == "fwd":
    return _bind(a, ct, "bwd_weights", params)
  if kind == "bwd_data":
    return _bind(ct, a, "bwd_weights", params)
  return _bind(a, ct, "fwd", params)


def _batch(args, dims, *, kind, **params):
  """vmap: images batched with shared second operand fold into the images' axis; otherwise one
  oneDNN call per item (`lax.map`)."""
  (a, b), (da, db) = args, dims
  if kind in ("fwd", "bwd_data") and db is None:
    a = jnp.moveaxis(a, da, 0)
    size, n = a.shape[:2]
    out = _bind(a.reshape(size * n, *a.shape[2:]), b, kind, params)
    return out.reshape(size, n, *out.shape[1:]), 0
  a = a if da is None else jnp.moveaxis(a, da, 0)
  b = b if db is None else jnp.moveaxis(b, db, 0)
  if da is None:
    return jax.lax.map(lambda bi: _bind(a, bi, kind, params), b), 0
  if db is None:
    return jax.lax.map(lambda ai: _bind(ai, b, kind, params), a), 0
  return jax.lax.map(lambda ab: _bind(ab[0], ab[1], kind, params), (a, b)), 0


conv_p.def_abstract_eval(_abstract_eval)
conv_p.def_impl(jax.jit(_ffi, static_argnames=("kind", "strides", "padding", "dilation", "in_hw",
                                                "k_hw")))
mlir.register_lowering(conv_p, mlir.lower_fun(_ffi, multiple_results=False), platform="cpu")
ad.defbilinear(conv_p, _transpose_first, _transpose_second)
batching.primitive_batchers[conv_p] = _batch


def _pairs(v, n: int = 2) -> tuple[int, ...]:
  return (int(v),) * n if np.ndim(v) == 0 else tuple(int(a) for a in v)


def conv(x: jax.Array, w: jax.Array, *, strides: int | Sequence[int] = 1,
         padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1) -> jax.Array:
  """A float32 2-D convolution whose derivatives of every order are oneDNN convolutions.

  ``y[n,i,j,o] = sum_{a,b,c} xp[n, i s_h + a d_h, j s_w + b d_w, c] w[a,b,c,o]`` with ``xp``
  the zero-padded ``x``: ``lax.conv_general_dilated(x, w, strides, ((top, bottom), (left,
  right)), rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))`` up to float32
  rounding. `jax.grad`, `jax.jvp`, `jax.linearize`, `jax.vjp` (any nesting) and `jax.vmap` of it
  run oneDNN's forward, backward-data and backward-weights convolutions (module docstring).

  Args:
    x: (N, H, W, C) float32 images.
    w: (KH, KW, C, O) float32 kernel.
    strides: (s_h, s_w) or one int.
    padding: (top, bottom, left, right) or one int; each >= 0.
    dilation: kernel dilation (d_h, d_w) or one int.

  Raises:
    OnednnUnavailable: where oneDNN cannot be built (`onednn_build.unavailable_reason`).
    ValueError: for other ranks, dtypes, channel counts or negative padding.
  """
  strides, dilation, padding = _pairs(strides), _pairs(dilation), _pairs(padding, 4)
  if x.ndim != 4 or w.ndim != 4 or x.shape[3] != w.shape[2]:
    raise ValueError(f"conv needs NHWC x and HWIO w with matching channels; got {x.shape} and "
                     f"{w.shape}.")
  if x.dtype != jnp.float32 or w.dtype != jnp.float32:
    raise ValueError(f"conv takes float32 x and w, got {x.dtype} and {w.dtype}; use "
                     "lax.conv_general_dilated for other dtypes.")
  if min(padding) < 0 or min(strides + dilation) < 1 or len(padding) != 4:
    raise ValueError(f"conv needs strides and dilations >= 1 and 4 paddings >= 0; got "
                     f"strides={strides}, dilation={dilation}, padding={padding}.")
  if min(_shape(x.shape, w.shape, kind="fwd", strides=strides, padding=padding,
                dilation=dilation, in_hw=x.shape[1:3], k_hw=w.shape[:2])) < 1:
    raise ValueError(f"conv of {x.shape} with {w.shape} (padding {padding}, dilation "
                     f"{dilation}) has an empty output.")
  library()
  return conv_p.bind(x, w, kind="fwd", strides=strides, padding=padding, dilation=dilation,
                     in_hw=tuple(int(s) for s in x.shape[1:3]),
                     k_hw=tuple(int(s) for s in w.shape[:2]))


def implementation(kind: str, x_shape: Sequence[int], w_shape: Sequence[int], *, strides=1,
                   padding=0, dilation=1) -> str:
  """The oneDNN implementation of a product for a shape (diagnostics), e.g.
  ``implementation("bwd_weights", (128, 32, 32, 16), (3, 3, 16, 16), padding=1)`` ->
  ``"brgconv_bwd_w:avx512_core"``; with ``ONEDNN_MAX_CPU_ISA=AVX2`` an ``avx2`` kernel. ``kind``
  "fwd" gives the forward (inference) kernel of `onednn.implementation`."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
  strides, dilation, padding = _pairs(strides), _pairs(dilation), _pairs(padding, 4)
  n, h, w, c = (int(a) for a in x_shape)
  kh, kw, _, o = (int(a) for a in w_shape)
  oh, ow = (_out_size(h, kh, strides[0], dilation[0], *padding[:2]),
            _out_size(w, kw, strides[1], dilation[1], *padding[2:]))
  if kind == "fwd":
    key = (n, h, w, c, kh, kw, o, oh, ow, *strides, *dilation, *padding, 0, 0, 0, 0, 0, 0)
    return library().LandscapeJaxOnednnConvImpl((ctypes.c_int64 * len(key))(*key)).decode()
  key = (n, h, w, c, kh, kw, o, oh, ow, *strides, *dilation, *padding,
         1 if kind == "bwd_data" else 2, 0, 0, 0, 0, 0)
  return library().LandscapeJaxOnednnConvBwdImpl((ctypes.c_int64 * len(key))(*key)).decode()


def min_flops_for(cpu_convolutions: str) -> float | None:
  """The ``min_flops`` of `with_onednn_derivatives` for a ``cpu_convolutions`` option: None
  (XLA's convolutions) for ``"xla"`` and wherever ``"auto"`` does not use oneDNN
  (`onednn_build.resolve`), 0 for ``"onednn"``, `AUTO_MIN_FLOPS` for ``"auto"``."""
  if not resolve(cpu_convolutions):
    return None
  return 0.0 if cpu_convolutions == "onednn" else AUTO_MIN_FLOPS


def _flops(eqn) -> float:
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  return 2.0 * float(np.prod(out)) * float(np.prod(rhs)) / max(
    1, rhs[eqn.params["dimension_numbers"].rhs_spec[0]])


def supported(eqn) -> bool:
  """Whether a ``conv_general_dilated`` equation can be computed by `conv`: 2-D, float32 operands
  and result, no input (lhs) dilation, one feature group and one batch group, padding >= 0, a
  non-empty output."""
  if eqn.primitive.name != "conv_general_dilated":
    return False
  p = eqn.params
  lhs, rhs = (v.aval for v in eqn.invars)
  out = eqn.outvars[0].aval
  return (lhs.ndim == 4 and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
          and out.dtype == jnp.float32
          and p["preferred_element_type"] in (None, jnp.float32)
          and all(d == 1 for d in p["lhs_dilation"])
          and p["feature_group_count"] == 1 and p["batch_group_count"] == 1
          and all(lo >= 0 and hi >= 0 for lo, hi in p["padding"])
          and all(s > 0 for s in (*lhs.shape, *rhs.shape, *out.shape)))


def _replace(eqn, invals, min_flops=0.0):
  if not supported(eqn) or _flops(eqn) < min_flops:
    return None
  x, w = invals
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  x = jnp.transpose(x, (lhs_spec[0], lhs_spec[2], lhs_spec[3], lhs_spec[1]))  # -> NHWC
  w = jnp.transpose(w, (rhs_spec[2], rhs_spec[3], rhs_spec[1], rhs_spec[0]))  # -> HWIO
  (t, b), (lft, r) = p["padding"]
  y = conv(x, w, strides=p["window_strides"], padding=(t, b, lft, r), dilation=p["rhs_dilation"])
  perm = [0] * 4  # NHWC -> the equation's output layout
  for nhwc_axis, out_axis in zip((0, 3, 1, 2), out_spec, strict=True):
    perm[out_axis] = nhwc_axis
  return [jnp.transpose(y, perm)]


def with_onednn_derivatives(fn: Callable[..., Any], *, min_flops: float = 0.0
                            ) -> Callable[..., Any]:
  """``fn`` with its supported convolutions (`supported`) computed by `conv`, so that its
  derivatives of every order are oneDNN convolutions too.

  Apply it to the function *before* differentiating, e.g.
  ``jax.grad(with_onednn_derivatives(loss_fn))`` or
  ``jax.jvp(jax.grad(with_onednn_derivatives(loss_fn)), (p,), (v,))``. The wrapped function
  traces ``fn`` (pytree arguments and result) at each call (inside `jax.jit`: once per
  compilation) and evaluates its program with each supported ``conv_general_dilated`` (also
  inside nested `jax.jit`) replaced; other convolutions stay XLA's. Same function up to float32
  rounding. ``min_flops``: only convolutions of at least this many FLOPs (``2 N OH OW KH KW C
  O``) are replaced (small ones run faster on XLA: per-call overhead; `AUTO_MIN_FLOPS`).

  Raises:
    OnednnUnavailable: where oneDNN cannot be built (see `onednn_build.unavailable_reason`).
  """
  library()
  return rewritten(fn, functools.partial(evaluate, replace=functools.partial(
    _replace, min_flops=float(min_flops))))
