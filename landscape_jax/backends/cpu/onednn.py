"""oneDNN convolutions for XLA:CPU: the inference convolutions of any JAX model.

XLA's CPU backend runs 2-D convolutions through Eigen, well below a CPU's matmul peak; oneDNN's
brgemm convolutions read and write the same NHWC layout and come much closer to it (measured per
layer by `benchmarks/bench_conv_layers.py`, recorded in benchmarks/RESULTS.md). This module is the
numerical part of routing convolutions through oneDNN as an XLA FFI custom call:

* `conv` computes one NHWC/HWIO convolution with an optional epilogue,
  ``y = relu(conv(x, w) + bias + residual)``, where
  ``conv(x, w)[n,i,j,o] = sum_{a,b,c} xp[n, i s_h + a d_h, j s_w + b d_w, c] w[a,b,c,o]``
  (``xp`` the zero-padded input); bias, residual and ReLU are oneDNN post-ops applied while the
  output tile is in cache. A `jax.custom_jvp` gives it XLA's derivatives (`jax.grad` works) and a
  `jax.custom_batching.custom_vmap` rule keeps it on oneDNN under `vmap` (per-item weights, e.g.
  one grid point each, become a sequential `lax.map`: XLA's grouped convolution is far slower).
  With ``compute_dtype="bfloat16"`` it convolves ``bf16(x)`` with ``bf16(w)`` (round to nearest
  even) and accumulates in float32 (oneDNN's bf16 kernels: AVX512-BF16 / AMX on CPUs that have
  them, see `onednn_build.cpu_bf16_flags`); the epilogue stays float32. There a float32
  residual with a float32 result is passed as the output buffer itself (XLA aliases the two) and
  added by oneDNN's sum post-op, the same float32 additions as the binary-add post-op it
  replaces (bit-identical where measured) at a fraction of the cost
  (`benchmarks/bench_bf16_breakdown.py`).
* `implementation` names the oneDNN kernel chosen for a shape.

`backends.cpu.fusion.with_onednn_convolutions` rewrites a whole function to use `conv`;
`backends.cpu.onednn_build` builds and loads the kernel. `adapters.evaluation.make_metric_fn`,
`adapters.batchnorm.make_recompute_metric_fn` / `recompute_batch_stats` and
`methods.ensembles.evaluate_ensemble` use it by default on the CPU (``cpu_convolutions="auto"``);
training does not (backward convolutions would still be XLA's).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from landscape_jax.backends.cpu.onednn_build import (
  TARGET,
  OnednnUnavailable,
  canonical_compute_dtype,
  library,
)

__all__ = ["OnednnUnavailable", "conv", "implementation"]


_SUM_RESIDUAL = True  # tests compare it with the binary-add post-op (False)


def _out_size(size: int, k: int, stride: int, dilation: int, lo: int, hi: int) -> int:
  return (size + lo + hi - (k - 1) * dilation - 1) // stride + 1


def _pairs(v, n: int = 2) -> tuple[int, ...]:
  return (int(v),) * n if np.ndim(v) == 0 else tuple(int(a) for a in v)


class Config(NamedTuple):
  strides: tuple[int, int]
  padding: tuple[int, int, int, int]
  dilation: tuple[int, int]
  bias: bool
  residual: bool
  relu: bool
  bf16: bool = False  # x and w rounded to bfloat16, float32 accumulation
  out_bf16: bool = False  # the result rounded to bfloat16 (after the epilogue)


def _operands(cfg: Config, x, w):
  """The FFI call's x and w: with bf16 compute the kernel rounds a float32 x itself (a few
  images at a time, in cache: no pass over the activations of its own)."""
  return (x, w.astype(jnp.bfloat16)) if cfg.bf16 else (x, w)


def _reference(cfg: Config, x, w, *rest):
  """The same computation in XLA: relu(conv(x, w) + bias + residual)."""
  if cfg.bf16:
    x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  y = jax.lax.conv_general_dilated(
    x, w, cfg.strides, ((cfg.padding[0], cfg.padding[1]), (cfg.padding[2], cfg.padding[3])),
    rhs_dilation=cfg.dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
    preferred_element_type=jnp.float32 if cfg.bf16 else None)
  rest = list(rest)
  if cfg.bias:
    y = y + rest.pop(0)
  if cfg.residual:
    y = y + rest.pop(0)
  y = jax.nn.relu(y) if cfg.relu else y
  return y.astype(jnp.bfloat16) if cfg.out_bf16 else y


def _ffi(cfg: Config, x, w, *rest):
  n, h, wd, _ = x.shape
  kh, kw, _, o = w.shape
  out = jax.ShapeDtypeStruct(
    (n, _out_size(h, kh, cfg.strides[0], cfg.dilation[0], *cfg.padding[:2]),
     _out_size(wd, kw, cfg.strides[1], cfg.dilation[1], *cfg.padding[2:]), o),
    jnp.bfloat16 if cfg.out_bf16 else jnp.float32)
  library()
  # bf16 compute with a float32 residual and output: the residual is passed as the output buffer
  # (aliased) and oneDNN adds the product onto it (a sum post-op, faster than a binary add there)
  alias = ({2 + cfg.bias: 0} if cfg.residual and cfg.bf16 and not cfg.out_bf16 and _SUM_RESIDUAL
           else {})
  return jax.ffi.ffi_call(TARGET, out, input_output_aliases=alias)(
    *_operands(cfg, x, w), *rest, strides=np.asarray(cfg.strides, np.int64),
    padding=np.asarray(cfg.padding, np.int64), dilation=np.asarray(cfg.dilation, np.int64),
    bias=cfg.bias, residual=cfg.residual, relu=cfg.relu)


def _batched_call(fn, cfg: Config, axis_size: int, in_batched, args):
  """``vmap(fn)`` of a convolution ``fn(x, w, [bias], [residual])`` with FFI calls only.

  One vmapped item: squeezed. Weights (and bias) shared by the batch: the batch axis is folded
  into the images' (what XLA's batching of a convolution does too). Weights per item (e.g. one
  grid point each): a sequential `lax.map` over the items, one oneDNN convolution each; XLA
  would turn this into one grouped convolution, which its CPU backend runs far slower than the
  same convolutions one after another.
  """
  is_weight = [False, True] + [True] * cfg.bias + [False] * cfg.residual  # x, w, bias, residual
  if axis_size == 1:
    return fn(*[a[0] if b else a for a, b in zip(args, in_batched, strict=True)])[None]
  if not any(b for b, wt in zip(in_batched, is_weight, strict=True) if wt):
    folded = [a if wt else  # images and residual: (B, N, ...) -> (B N, ...)
              (a if b else jnp.broadcast_to(a, (axis_size, *a.shape))).reshape(-1, *a.shape[-3:])
              for a, b, wt in zip(args, in_batched, is_weight, strict=True)]
    y = fn(*folded)
    return y.reshape(axis_size, -1, *y.shape[1:])
  mapped = [a for a, b in zip(args, in_batched, strict=True) if b]

  def one(items):
    items = iter(items)
    return fn(*[next(items) if b else a for a, b in zip(args, in_batched, strict=True)])

  return jax.lax.map(one, mapped)


@functools.cache
def _conv_fn(cfg: Config):
  """custom_jvp(custom_vmap(FFI call)) for one static configuration: the derivative is
  `_reference`'s, in XLA; under `vmap` the FFI call is batched by `_batched_call`."""
  ref = functools.partial(_reference, cfg)

  @jax.custom_batching.custom_vmap
  def unbatched(*args):
    return _ffi(cfg, *args)

  @unbatched.def_vmap
  def _batched(axis_size, in_batched, *args):
    return _batched_call(unbatched, cfg, axis_size, in_batched, args), True

  @jax.custom_jvp
  def f(*args):
    return unbatched(*args)

  @f.defjvp
  def _jvp(primals, tangents):
    return f(*primals), jax.jvp(ref, primals, tangents)[1]

  return f


def conv(x: jax.Array, w: jax.Array, *, strides: int | Sequence[int] = 1,
         padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
         bias: jax.Array | None = None, residual: jax.Array | None = None,
         relu: bool = False, compute_dtype=None, out_dtype=jnp.float32) -> jax.Array:
  """A 2-D float32 convolution (cross-correlation) computed by oneDNN on the CPU.

  ``z[n,i,j,o] = sum_{a,b,c} xp[n, i*s_h + a*d_h, j*s_w + b*d_w, c] * w[a,b,c,o] (+ bias[o])
  (+ residual[n,i,j,o])`` and ``y = max(z, 0)`` if `relu` else ``z``, where ``xp`` is ``x``
  zero-padded by ``padding``: ``lax.conv_general_dilated(x, w, strides, ((top, bottom), (left,
  right)), rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))`` followed by the
  additions and the ReLU, up to float rounding. Bias, residual and ReLU are applied by oneDNN
  while each output tile is in cache (post-ops), which saves XLA a pass over the activations.
  Differentiable (XLA's derivatives) and vmappable: under `vmap` shared weights fold the batch
  into the images, per-item weights run the items one after another (`lax.map`).

  With ``compute_dtype="bfloat16"`` the sum runs over ``bf16(xp)`` and ``bf16(w)`` (each rounded
  to the nearest bfloat16) with float32 accumulation; bias, residual and ReLU stay float32. That
  is ``lax.conv_general_dilated(x.astype(bf16), w.astype(bf16), ...,
  preferred_element_type=float32)`` up to float32 rounding: each product of two bfloat16 numbers
  is exact in float32, so the only change from the float32 convolution is the rounding of the
  operands (relative error <= 2^-9 each).

  Args:
    x: (N, H, W, C) float32 images, NHWC (bfloat16 also accepted with ``compute_dtype``
      "bfloat16").
    w: (KH, KW, C, O) float32 kernel, HWIO (a Flax ``nn.Conv`` kernel; bfloat16 as for x).
    strides: (s_h, s_w) or one int.
    padding: (top, bottom, left, right) or one int for all four; each >= 0.
    dilation: kernel dilation (d_h, d_w) or one int (1 = none).
    bias: optional (O,) float32 added per output channel.
    residual: optional float32 array of the output's shape, added.
    relu: apply ``max(., 0)`` last.
    compute_dtype: None (or "float32"): float32 throughout; "bfloat16": bfloat16 operands,
      float32 accumulation (needs a CPU with avx512_bf16 or AMX to be fast, see
      `onednn_build.cpu_bf16_flags`).
    out_dtype: float32 (default) or bfloat16: the result rounded once, after the epilogue (for a
      result that only feeds bfloat16 convolutions, which round it anyway).

  Raises:
    OnednnUnavailable: where oneDNN cannot be built (see `unavailable_reason`).
    ValueError: for other dtypes, ranks or shapes, or negative padding.
  """
  strides, dilation = _pairs(strides), _pairs(dilation)
  padding = _pairs(padding, 4)
  bf16 = canonical_compute_dtype(compute_dtype) == "bfloat16"
  if x.ndim != 4 or w.ndim != 4 or x.shape[3] != w.shape[2]:
    raise ValueError(f"conv needs NHWC x and HWIO w with matching channels; got {x.shape} and "
                     f"{w.shape}.")
  rest = [a for a in (bias, residual) if a is not None]
  allowed = (jnp.float32, jnp.bfloat16) if bf16 else (jnp.float32,)
  if (any(a.dtype not in allowed for a in (x, w)) or any(a.dtype != jnp.float32 for a in rest)):
    raise ValueError(f"conv takes float32 x, w, bias and residual (x and w may be bfloat16 with "
                     f"compute_dtype='bfloat16'); got {[a.dtype.name for a in (x, w, *rest)]}.")
  if jnp.dtype(out_dtype) not in (jnp.float32, jnp.bfloat16):
    raise ValueError(f"out_dtype must be float32 or bfloat16, got {out_dtype!r}.")
  if len(strides) != 2 or len(dilation) != 2 or len(padding) != 4 or min(padding) < 0 or min(
      strides + dilation) < 1:
    raise ValueError(f"conv needs 2 strides >= 1, 2 dilations >= 1 and 4 paddings >= 0; got "
                     f"strides={strides}, dilation={dilation}, padding={padding}.")
  if bias is not None and bias.shape != (w.shape[3],):
    raise ValueError(f"bias must have shape ({w.shape[3]},), got {bias.shape}.")
  cfg = Config(strides, padding, dilation, bias is not None, residual is not None, bool(relu),
               bf16, jnp.dtype(out_dtype) == jnp.bfloat16)
  if residual is not None:
    out_shape = jax.eval_shape(functools.partial(_reference, cfg._replace(
      residual=False, bias=False)), x, w)
    if residual.shape != out_shape.shape:
      raise ValueError(f"residual must have the output's shape {out_shape.shape}, got "
                       f"{residual.shape}.")
  return _conv_fn(cfg)(x, w, *rest)


def implementation(x_shape: Sequence[int], w_shape: Sequence[int], *, strides=1, padding=0,
                   dilation=1, bias: bool = False, residual: bool = False,
                   relu: bool = False, compute_dtype=None) -> str:
  """The oneDNN implementation used for a shape, e.g. ``"brgconv:avx512_core"`` (diagnostics;
  with ``compute_dtype="bfloat16"`` e.g. ``"brgconv:avx512_core_amx"``)."""
  strides, dilation, padding = _pairs(strides), _pairs(dilation), _pairs(padding, 4)
  n, h, w, c = (int(a) for a in x_shape)
  kh, kw, _, o = (int(a) for a in w_shape)
  key = (n, h, w, c, kh, kw, o, _out_size(h, kh, strides[0], dilation[0], *padding[:2]),
         _out_size(w, kw, strides[1], dilation[1], *padding[2:]), *strides, *dilation, *padding,
         int(bias), int(residual), int(relu),
         int(canonical_compute_dtype(compute_dtype) == "bfloat16"), 0, 0)
  return library().LandscapeJaxOnednnConvImpl((ctypes.c_int64 * len(key))(*key)).decode()


# ----------------------------------------------------------------------------- jaxpr rewriting
