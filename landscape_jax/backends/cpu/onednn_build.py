"""Building and loading the oneDNN convolution kernel (an XLA FFI custom call) for the CPU.

The kernel (``csrc/onednn_conv.cc``) is compiled on first use (a few seconds) with the system's
C++ compiler against the oneDNN of the ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` wheels and
cached in ``$LANDSCAPE_JAX_CACHE_DIR`` (default ``~/.cache/landscape_jax``). The wheels come with
the ``cpu`` extra (``pip install 'landscape-jax[cpu]'``, what the README's make commands install);
without them, or where the build fails, the reason is remembered (no retry per call).
``LANDSCAPE_JAX_ONEDNN_ROOT`` points at another oneDNN (a folder with ``include/`` and ``lib/``);
``LANDSCAPE_JAX_ONEDNN=0`` turns it off. Where it cannot be built (no compiler, another platform)
`available()` is False, `unavailable_reason()` says why and ``"auto"`` (`resolve`) uses XLA's
convolutions (with a warning on Linux x86-64). The numerics are in `backends.cpu.onednn`, the
jaxpr rewriter in `backends.cpu.fusion`.

Precision (``compute_dtype``, off by default): ``"bfloat16"`` evaluates every convolution and
matrix product from bfloat16-rounded inputs and weights with float32 accumulation. On the CPU it
runs on oneDNN's bf16 kernels where the CPU has the instructions (`cpu_bf16_flags`: avx512_bf16
or amx_bf16); elsewhere `resolve` routes it to XLA (bf16 operands, float32 results), with a
one-time warning naming the missing instructions on CPUs without them, where that is slower than
float32. ``"auto"`` (`auto_compute_dtype`, opt-in) picks bfloat16 only where it pays: oneDNN with
those instructions, or a GPU / TPU backend; float32 elsewhere.
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
from collections.abc import Callable

import jax

__all__ = ["COMPUTE_DTYPES", "CPU_CONVOLUTIONS", "OnednnUnavailable", "TARGET", "TARGET_BWD_DATA",
           "TARGET_BWD_WEIGHTS", "available",
           "auto_compute_dtype", "bf16_unsupported_reason", "canonical_compute_dtype",
           "cpu_bf16_flags", "cpu_flags", "is_auto", "library", "resolve",
           "resolve_compute_dtype", "unavailable_reason"]

_SOURCE = pathlib.Path(__file__).parent / "csrc" / "onednn_conv.cc"
TARGET = "landscape_jax_onednn_conv"
TARGET_BWD_DATA = "landscape_jax_onednn_conv_bwd_data"
TARGET_BWD_WEIGHTS = "landscape_jax_onednn_conv_bwd_weights"


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
def library() -> ctypes.CDLL:
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
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handle.LandscapeJaxOnednnConv),
                              platform="cpu")
  jax.ffi.register_ffi_target(TARGET_BWD_DATA,
                              jax.ffi.pycapsule(handle.LandscapeJaxOnednnConvBwdData),
                              platform="cpu")
  jax.ffi.register_ffi_target(TARGET_BWD_WEIGHTS,
                              jax.ffi.pycapsule(handle.LandscapeJaxOnednnConvBwdWeights),
                              platform="cpu")
  for impl in (handle.LandscapeJaxOnednnConvImpl, handle.LandscapeJaxOnednnConvBwdImpl):
    impl.restype = ctypes.c_char_p
    impl.argtypes = [ctypes.POINTER(ctypes.c_int64)]
  return handle


def available() -> bool:
  """Whether oneDNN convolutions can be used (builds the kernel on the first call)."""
  return unavailable_reason() is None


def unavailable_reason() -> str | None:
  """None when `available()`, else why not and what to do."""
  try:
    library()
  except OnednnUnavailable as e:
    return str(e)
  return None


CPU_CONVOLUTIONS = ("auto", "onednn", "xla")
COMPUTE_DTYPES = (None, "float32", "bfloat16")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_VECTOR_FLAGS = ("amx_tile", "avx512f", "avx2", "avx", "sse4_2")  # widest first


def canonical_compute_dtype(compute_dtype) -> str | None:
  """None (float32: the exact default) or ``"bfloat16"`` for a ``compute_dtype`` option.

  Accepts None, ``"float32"`` / ``jnp.float32`` (both meaning the default) and ``"bfloat16"`` /
  ``jnp.bfloat16``; anything else raises a ValueError naming the argument (``"auto"``, where an
  API takes it, is resolved first: `resolve_compute_dtype`).
  """
  if compute_dtype is None:
    return None
  try:
    name = jax.numpy.dtype(compute_dtype).name
  except TypeError:
    name = None
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES} (or jnp.float32 / "
                     f"jnp.bfloat16), got {compute_dtype!r}.")
  return None if name == "float32" else name


def is_auto(compute_dtype) -> bool:
  """Whether `compute_dtype` is the ``"auto"`` choice (`auto_compute_dtype`)."""
  return isinstance(compute_dtype, str) and compute_dtype == "auto"


def resolve_compute_dtype(compute_dtype, cpu_convolutions: str = "auto") -> str | None:
  """`canonical_compute_dtype`, with ``"auto"`` resolved by `auto_compute_dtype` for the
  convolutions a ``cpu_convolutions`` option (`resolve`) gives in float32."""
  if is_auto(compute_dtype):
    return auto_compute_dtype(onednn=resolve(cpu_convolutions))
  return canonical_compute_dtype(compute_dtype)


def auto_compute_dtype(*, onednn: bool) -> str | None:
  """What ``compute_dtype="auto"`` means here: ``"bfloat16"`` where it pays, else None (float32).

  bfloat16 where the matrix units take it natively: on a GPU or TPU backend (XLA with bfloat16
  operands), and on the CPU when its convolutions run on oneDNN (`onednn`) and the CPU has
  bfloat16 instructions (`cpu_bf16_flags`: avx512_bf16 or amx_bf16). Float32 on every other CPU
  (an AVX2-only or AVX-512 CPU without them, or XLA's convolutions), where bfloat16 operands
  are converted to float32 and back and evaluate slower than float32. No warning: float32 is the
  choice there. The default (None) stays exact float32: ``"auto"`` is opt-in.
  """
  if jax.default_backend() != "cpu":
    return "bfloat16"
  return "bfloat16" if onednn and bf16_unsupported_reason() is None else None


@functools.cache
def cpu_flags() -> frozenset[str]:
  """The instruction-set flags of this CPU listed in /proc/cpuinfo (empty where it cannot be
  read, e.g. on macOS or Windows)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def cpu_bf16_flags() -> tuple[str, ...]:
  """The bfloat16 instruction-set flags of this CPU (``avx512_bf16``, ``amx_bf16``) listed in
  /proc/cpuinfo; empty where there are none or the file cannot be read."""
  flags = cpu_flags()
  return tuple(f for f in _BF16_FLAGS if f in flags)


def bf16_unsupported_reason() -> str | None:
  """None where oneDNN can run bfloat16 convolutions natively, else why not (naming the missing
  instructions and the widest vector instructions the CPU has)."""
  if not cpu_bf16_flags():
    flags = cpu_flags()
    has = next((f for f in _VECTOR_FLAGS if f in flags), None)
    widest = (f"; its widest vector instructions are {has}" if has
              else "; /proc/cpuinfo lists no flags" if not flags else "")
    return (f"this CPU has no bfloat16 instructions ({' / '.join(_BF16_FLAGS)} are not in "
            f"/proc/cpuinfo{widest})")
  return unavailable_reason()


def resolve(cpu_convolutions: str = "auto", *, compute_dtype=None) -> bool:
  """Whether to use oneDNN for a ``cpu_convolutions`` option (`evaluation.make_metric_fn`).

  ``"xla"``: never. ``"onednn"``: always (raises `OnednnUnavailable` where it cannot be built).
  ``"auto"``: when the default backend is the CPU and `available()`; warns once, with the reason,
  when it is not available on Linux x86-64 (where it should be).

  With ``compute_dtype="bfloat16"`` oneDNN also needs the CPU's bfloat16 instructions
  (`cpu_bf16_flags`): without them ``"onednn"`` raises `OnednnUnavailable` and ``"auto"`` returns
  False (XLA then evaluates in bfloat16); on a CPU backend without them a one-time warning names
  the missing instructions and says that bfloat16 will be slower than float32 there
  (``compute_dtype="auto"``, `auto_compute_dtype`, keeps float32 there instead).
  """
  if cpu_convolutions not in CPU_CONVOLUTIONS:
    raise ValueError(f"cpu_convolutions must be one of {CPU_CONVOLUTIONS}, got "
                     f"{cpu_convolutions!r}.")
  if canonical_compute_dtype(compute_dtype) is None:
    return _resolve_float32(cpu_convolutions)
  use = _resolve_float32(cpu_convolutions)  # raises for "onednn" where it cannot be built
  if cpu_convolutions == "onednn" and (reason := bf16_unsupported_reason()) is not None:
    raise OnednnUnavailable(
      f"compute_dtype='bfloat16' with cpu_convolutions='onednn' needs oneDNN's bfloat16 "
      f"convolutions, but {reason}. Use compute_dtype=None (float32, faster on this CPU) or "
      "cpu_convolutions='auto' / 'xla' (XLA evaluates in bfloat16, slowly).")
  if jax.default_backend() == "cpu" and not cpu_bf16_flags():
    _warn_bf16_once(bf16_unsupported_reason())
  return use and bf16_unsupported_reason() is None


@functools.cache
def _warn_bf16_once(reason: str) -> None:
  warnings.warn(f"compute_dtype='bfloat16': {reason}, so XLA evaluates the convolutions and "
                "matrix products from bfloat16 operands, which is slower on this CPU than the "
                "float32 default (compute_dtype=None; compute_dtype='auto' picks bfloat16 only "
                "where the CPU has those instructions).", stacklevel=4)


def _resolve_float32(cpu_convolutions: str) -> bool:
  if cpu_convolutions == "xla":
    return False
  if cpu_convolutions == "onednn":
    library()
    return True
  if jax.default_backend() != "cpu":
    return False
  reason = unavailable_reason()
  if reason is not None:
    warn_once(reason)
  return reason is None


@functools.cache
def warn_once(reason: str) -> None:
  if (platform.system() == "Linux" and platform.machine() == "x86_64"
      and os.environ.get("LANDSCAPE_JAX_ONEDNN", "1") != "0"):
    warnings.warn(f"landscape_jax.backends.cpu.onednn: using XLA's CPU convolutions (slower): "
                  f"{reason} (LANDSCAPE_JAX_ONEDNN=0 silences this).", stacklevel=3)

