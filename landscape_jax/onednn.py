"""oneDNN convolutions for XLA:CPU: the inference convolutions of any JAX model, 1.5x faster.

XLA's CPU backend runs 2-D convolutions through Eigen at about half of a CPU's matmul peak
(ResNet-20's 3x3 layers: ~100 GFLOP/s on 2 Zen 4 cores); oneDNN's brgemm convolutions, which read
and write the same NHWC layout, reach 180-240 GFLOP/s on them (`benchmarks/bench_surface.py`).
This module routes convolutions through oneDNN as an XLA FFI custom call:

* `conv` computes one NHWC/HWIO convolution with an optional epilogue,
  ``y = relu(conv(x, w) + bias + residual)``, where
  ``conv(x, w)[n,i,j,o] = sum_{a,b,c} xp[n, i s_h + a d_h, j s_w + b d_w, c] w[a,b,c,o]``
  (``xp`` the zero-padded input); bias, residual and ReLU are oneDNN post-ops applied while the
  output tile is in cache. A `jax.custom_jvp` gives it XLA's derivatives (`jax.grad` works) and a
  `jax.custom_batching.custom_vmap` rule keeps it on oneDNN under `vmap` (per-item weights, e.g.
  one grid point each, become a sequential `lax.map`: XLA's grouped convolution is 10-15x slower);
* `with_onednn_convolutions(fn)` traces ``fn`` once and evaluates its jaxpr with every
  ``conv_general_dilated`` that oneDNN supports replaced by `conv` (float32, 2 spatial
  dimensions, any dimension numbers, strides, padding >= 0, kernel dilation, one feature group;
  top level and inside nested `jax.jit`; convolutions inside `scan`/`cond`/`while` bodies or
  custom-derivative rules are left to XLA). A convolution whose output only feeds ``+ bias``
  (per channel), then ``+ residual``, then ``relu`` (each optional) is fused with them: after
  BatchNorm folding (`landscape_jax.fused`) that is every convolution of a ResNet. The result is
  the same function up to float rounding.

`evaluation.make_metric_fn`, `batchnorm.make_recompute_metric_fn` / `recompute_batch_stats` (the
statistics pass too) and `ensembles.evaluate_ensemble` use it by default on the CPU
(``cpu_convolutions="auto"``), so every surface, interpolation, curve and ensemble evaluation
gets it, vmapped over points or members or not; training does not (backward convolutions would
still be XLA's).

The kernel (``csrc/onednn_conv.cc``) is compiled on first use (a few seconds) with the system's
C++ compiler against the oneDNN of the ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` wheels
(installed with landscape-jax on Linux x86-64) and cached in ``$LANDSCAPE_JAX_CACHE_DIR``
(default ``~/.cache/landscape_jax``). ``LANDSCAPE_JAX_ONEDNN_ROOT`` points at another oneDNN (a
folder with ``include/`` and ``lib/``); ``LANDSCAPE_JAX_ONEDNN=0`` turns it off. Where it cannot
be built (no compiler, another platform) `available()` is False, `unavailable_reason()` says why
and ``"auto"`` uses XLA's convolutions (with a warning on Linux x86-64).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from landscape_jax._jaxpr import JIT_PRIMITIVES, Environment, bind, rewritten

__all__ = ["available", "conv", "implementation", "resolve", "unavailable_reason",
           "with_onednn_convolutions"]

_SOURCE = pathlib.Path(__file__).parent / "csrc" / "onednn_conv.cc"
_TARGET = "landscape_jax_onednn_conv"


class OnednnUnavailable(RuntimeError):
  """oneDNN convolutions cannot be used here; the message says why and what to do."""


def _cache_dir() -> pathlib.Path:
  if d := os.environ.get("LANDSCAPE_JAX_CACHE_DIR"):
    return pathlib.Path(d)
  base = os.environ.get("XDG_CACHE_HOME")
  return (pathlib.Path(base) if base else pathlib.Path.home() / ".cache") / "landscape_jax"


def _dist_file(dist: str, suffix: str) -> pathlib.Path | None:
  """The installed file of distribution `dist` whose path ends with `suffix`."""
  try:
    files = importlib.metadata.distribution(dist).files or ()
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    path = pathlib.Path(f.locate()).resolve()  # RECORD paths may be relative ("../../lib...")
    if path.as_posix().endswith(suffix) and path.exists():
      return path
  return None


def _find_onednn() -> tuple[pathlib.Path, pathlib.Path]:
  """(include dir, path of libdnnl.so.3)."""
  if root := os.environ.get("LANDSCAPE_JAX_ONEDNN_ROOT"):
    inc, lib = pathlib.Path(root, "include"), pathlib.Path(root, "lib", "libdnnl.so.3")
    if not (inc / "oneapi" / "dnnl" / "dnnl.hpp").exists() or not lib.exists():
      raise OnednnUnavailable(f"LANDSCAPE_JAX_ONEDNN_ROOT={root} has no include/oneapi/dnnl/"
                              "dnnl.hpp and lib/libdnnl.so.3.")
    return inc, lib
  header = _dist_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
  lib = _dist_file("onednn-cpu-gomp", "lib/libdnnl.so.3")
  if header is None or lib is None:
    raise OnednnUnavailable(
      "oneDNN is not installed: pip install 'landscape-jax[cpu]' (the onednn-cpu-gomp and "
      "onednn-devel-cpu-gomp wheels, Linux x86-64), or set LANDSCAPE_JAX_ONEDNN_ROOT.")
  return header.parents[2], lib


def _compile(out: pathlib.Path, compiler: str, include: pathlib.Path, lib: pathlib.Path) -> None:
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    tmp_out = pathlib.Path(tmp) / out.name
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", str(_SOURCE), "-o",
           str(tmp_out), f"-I{include}", f"-I{jax.ffi.include_dir()}", str(lib),
           f"-Wl,-rpath,{lib.parent}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      raise OnednnUnavailable(f"Compiling {_SOURCE.name} failed ({' '.join(cmd)}):\n"
                              f"{proc.stderr[-2000:]}")
    os.replace(tmp_out, out)  # atomic: concurrent builds (test workers) never see half a file


def _cache_outcome(fn: Callable[[], ctypes.CDLL]) -> Callable[[], ctypes.CDLL]:
  """`functools.cache` that also keeps a failure: a kernel that cannot be built or loaded is
  not retried on each call (each `make_metric_fn`); each call raises a fresh
  `OnednnUnavailable` with the first failure's reason. ``cache_clear()`` forgets either."""
  @functools.cache
  def attempt():
    try:
      return fn(), None
    except OnednnUnavailable as e:
      return None, e

  @functools.wraps(fn)
  def cached() -> ctypes.CDLL:
    handle, error = attempt()
    if error is not None:
      raise OnednnUnavailable(str(error)) from error.__cause__
    return handle

  cached.cache_clear = attempt.cache_clear
  return cached


@_cache_outcome
def _library() -> ctypes.CDLL:
  """Builds (once per machine and version) and loads the kernel; registers the FFI target."""
  if os.environ.get("LANDSCAPE_JAX_ONEDNN", "1") == "0":
    raise OnednnUnavailable("turned off by LANDSCAPE_JAX_ONEDNN=0.")
  if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
    raise OnednnUnavailable(f"only built on Linux x86-64 (this is {platform.system()} "
                            f"{platform.machine()}).")
  include, lib = _find_onednn()
  compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if compiler is None:
    raise OnednnUnavailable("no C++ compiler found (install g++ or set CXX).")
  key = hashlib.sha256(b"\0".join([
    _SOURCE.read_bytes(), jax.__version__.encode(), str(lib).encode(),
    str(lib.stat().st_size).encode(), compiler.encode()])).hexdigest()[:16]
  path = _cache_dir() / f"onednn_conv_{key}.so"
  if not path.exists():
    try:
      _compile(path, compiler, include, lib)
    except OSError as e:  # e.g. a read-only home directory
      raise OnednnUnavailable(f"Cannot build the kernel in {path.parent} ({e}); set "
                              "LANDSCAPE_JAX_CACHE_DIR to a writable folder.") from e
  try:
    handle = ctypes.CDLL(str(path))
  except OSError as e:
    raise OnednnUnavailable(f"Loading {path} failed: {e}") from e
  jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(handle.LandscapeJaxOnednnConv),
                              platform="cpu")
  handle.LandscapeJaxOnednnConvImpl.restype = ctypes.c_char_p
  handle.LandscapeJaxOnednnConvImpl.argtypes = [ctypes.POINTER(ctypes.c_int64)]
  return handle


def available() -> bool:
  """Whether oneDNN convolutions can be used (builds the kernel on the first call)."""
  return unavailable_reason() is None


def unavailable_reason() -> str | None:
  """None when `available()`, else why not and what to do."""
  try:
    _library()
  except OnednnUnavailable as e:
    return str(e)
  return None


CPU_CONVOLUTIONS = ("auto", "onednn", "xla")


def resolve(cpu_convolutions: str = "auto") -> bool:
  """Whether to use oneDNN for a ``cpu_convolutions`` option (`evaluation.make_metric_fn`).

  ``"xla"``: never. ``"onednn"``: always (raises `OnednnUnavailable` where it cannot be built).
  ``"auto"``: when the default backend is the CPU and `available()`; warns once, with the reason,
  when it is not available on Linux x86-64 (where it should be).
  """
  if cpu_convolutions not in CPU_CONVOLUTIONS:
    raise ValueError(f"cpu_convolutions must be one of {CPU_CONVOLUTIONS}, got "
                     f"{cpu_convolutions!r}.")
  if cpu_convolutions == "xla":
    return False
  if cpu_convolutions == "onednn":
    _library()
    return True
  if jax.default_backend() != "cpu":
    return False
  reason = unavailable_reason()
  if reason is not None:
    _warn_once(reason)
  return reason is None


@functools.cache
def _warn_once(reason: str) -> None:
  if (platform.system() == "Linux" and platform.machine() == "x86_64"
      and os.environ.get("LANDSCAPE_JAX_ONEDNN", "1") != "0"):
    warnings.warn(f"landscape_jax.onednn: using XLA's CPU convolutions (about half as fast): "
                  f"{reason} (LANDSCAPE_JAX_ONEDNN=0 silences this).", stacklevel=3)


def _out_size(size: int, k: int, stride: int, dilation: int, lo: int, hi: int) -> int:
  return (size + lo + hi - (k - 1) * dilation - 1) // stride + 1


def _pairs(v, n: int = 2) -> tuple[int, ...]:
  return (int(v),) * n if np.ndim(v) == 0 else tuple(int(a) for a in v)


def _xla_nhwc(x, w, strides, padding, dilation):
  return jax.lax.conv_general_dilated(
    x, w, strides, ((padding[0], padding[1]), (padding[2], padding[3])),
    rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))


class _Config(NamedTuple):
  strides: tuple[int, int]
  padding: tuple[int, int, int, int]
  dilation: tuple[int, int]
  bias: bool
  residual: bool
  relu: bool


def _reference(cfg: _Config, x, w, *rest):
  """The same computation in XLA: relu(conv(x, w) + bias + residual)."""
  y = _xla_nhwc(x, w, cfg.strides, cfg.padding, cfg.dilation)
  rest = list(rest)
  if cfg.bias:
    y = y + rest.pop(0)
  if cfg.residual:
    y = y + rest.pop(0)
  return jax.nn.relu(y) if cfg.relu else y


def _ffi(cfg: _Config, x, w, *rest):
  n, h, wd, _ = x.shape
  kh, kw, _, o = w.shape
  out = jax.ShapeDtypeStruct(
    (n, _out_size(h, kh, cfg.strides[0], cfg.dilation[0], *cfg.padding[:2]),
     _out_size(wd, kw, cfg.strides[1], cfg.dilation[1], *cfg.padding[2:]), o), jnp.float32)
  _library()
  return jax.ffi.ffi_call(_TARGET, out)(
    x, w, *rest, strides=np.asarray(cfg.strides, np.int64),
    padding=np.asarray(cfg.padding, np.int64), dilation=np.asarray(cfg.dilation, np.int64),
    bias=cfg.bias, residual=cfg.residual, relu=cfg.relu)


def _batched_call(fn, cfg: _Config, axis_size: int, in_batched, args):
  """``vmap(fn)`` of a convolution ``fn(x, w, [bias], [residual])`` with FFI calls only.

  One vmapped item: squeezed. Weights (and bias) shared by the batch: the batch axis is folded
  into the images' (what XLA's batching of a convolution does too). Weights per item (e.g. one
  grid point each): a sequential `lax.map` over the items, one oneDNN convolution each; XLA
  would turn this into one grouped convolution, which its CPU backend runs 10-15x slower than
  the same convolutions one after another.
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
def _conv_fn(cfg: _Config):
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
         relu: bool = False) -> jax.Array:
  """A 2-D float32 convolution (cross-correlation) computed by oneDNN on the CPU.

  ``z[n,i,j,o] = sum_{a,b,c} xp[n, i*s_h + a*d_h, j*s_w + b*d_w, c] * w[a,b,c,o] (+ bias[o])
  (+ residual[n,i,j,o])`` and ``y = max(z, 0)`` if `relu` else ``z``, where ``xp`` is ``x``
  zero-padded by ``padding``: ``lax.conv_general_dilated(x, w, strides, ((top, bottom), (left,
  right)), rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))`` followed by the
  additions and the ReLU, up to float rounding. Bias, residual and ReLU are applied by oneDNN
  while each output tile is in cache (post-ops), which saves XLA a pass over the activations.
  Differentiable (XLA's derivatives) and vmappable: under `vmap` shared weights fold the batch
  into the images, per-item weights run the items one after another (`lax.map`).

  Args:
    x: (N, H, W, C) float32 images, NHWC.
    w: (KH, KW, C, O) float32 kernel, HWIO (a Flax ``nn.Conv`` kernel).
    strides: (s_h, s_w) or one int.
    padding: (top, bottom, left, right) or one int for all four; each >= 0.
    dilation: kernel dilation (d_h, d_w) or one int (1 = none).
    bias: optional (O,) float32 added per output channel.
    residual: optional float32 array of the output's shape, added.
    relu: apply ``max(., 0)`` last.

  Raises:
    OnednnUnavailable: where oneDNN cannot be built (see `unavailable_reason`).
    ValueError: for other dtypes, ranks or shapes, or negative padding.
  """
  strides, dilation = _pairs(strides), _pairs(dilation)
  padding = _pairs(padding, 4)
  if x.ndim != 4 or w.ndim != 4 or x.shape[3] != w.shape[2]:
    raise ValueError(f"conv needs NHWC x and HWIO w with matching channels; got {x.shape} and "
                     f"{w.shape}.")
  rest = [a for a in (bias, residual) if a is not None]
  if any(a.dtype != jnp.float32 for a in (x, w, *rest)):
    raise ValueError(f"conv is float32 only; got {[a.dtype.name for a in (x, w, *rest)]}.")
  if len(strides) != 2 or len(dilation) != 2 or len(padding) != 4 or min(padding) < 0 or min(
      strides + dilation) < 1:
    raise ValueError(f"conv needs 2 strides >= 1, 2 dilations >= 1 and 4 paddings >= 0; got "
                     f"strides={strides}, dilation={dilation}, padding={padding}.")
  if bias is not None and bias.shape != (w.shape[3],):
    raise ValueError(f"bias must have shape ({w.shape[3]},), got {bias.shape}.")
  cfg = _Config(strides, padding, dilation, bias is not None, residual is not None, bool(relu))
  if residual is not None:
    out_shape = jax.eval_shape(functools.partial(_reference, cfg._replace(residual=False,
                                                                          bias=False)), x, w)
    if residual.shape != out_shape.shape:
      raise ValueError(f"residual must have the output's shape {out_shape.shape}, got "
                       f"{residual.shape}.")
  return _conv_fn(cfg)(x, w, *rest)


def implementation(x_shape: Sequence[int], w_shape: Sequence[int], *, strides=1, padding=0,
                   dilation=1, bias: bool = False, residual: bool = False,
                   relu: bool = False) -> str:
  """The oneDNN implementation used for a shape, e.g. ``"brgconv:avx512_core"`` (diagnostics)."""
  strides, dilation, padding = _pairs(strides), _pairs(dilation), _pairs(padding, 4)
  n, h, w, c = (int(a) for a in x_shape)
  kh, kw, _, o = (int(a) for a in w_shape)
  key = (n, h, w, c, kh, kw, o, _out_size(h, kh, strides[0], dilation[0], *padding[:2]),
         _out_size(w, kw, strides[1], dilation[1], *padding[2:]), *strides, *dilation, *padding,
         int(bias), int(residual), int(relu))
  return _library().LandscapeJaxOnednnConvImpl((ctypes.c_int64 * len(key))(*key)).decode()


# ----------------------------------------------------------------------------- jaxpr rewriting


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


def _plan_fusions(jaxpr) -> tuple[dict[int, _Fusion], set[int]]:
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
  plans, absorbed = _plan_fusions(jaxpr) if fuse else ({}, set())
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
  _library()

  return rewritten(fn, functools.partial(_eval, fuse=fuse_epilogues))
