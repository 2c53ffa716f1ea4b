"""Keeping the memory that XLA:CPU frees for its next call (glibc's malloc settings).

Every call of a compiled program allocates its temporary buffer (a ResNet-20 training step at
batch 128: about 300 MB of activations kept for the backward pass) and frees it at the end. glibc
serves a block that large with a fresh ``mmap`` from a worker thread's arena and returns it to the
system on ``free``, so the next call touches every page again: about 75,000 page faults per
step, a third of its CPU time spent in the kernel (benchmarks/bench_malloc.py).

`keep_freed_memory` sets three of glibc's ``mallopt`` parameters so that freed blocks stay in the
heap and the next call reuses them: one arena (``M_ARENA_MAX = 1``: worker-thread arenas cannot
hold a block above 64 MB), no ``mmap`` for large blocks (``M_MMAP_MAX = 0``) and no trimming of
the heap's top (``M_TRIM_THRESHOLD``). The price is memory: the process keeps its peak heap
until it exits instead of returning freed memory to the system (the ResNet-20 process's peak
went from 1205 to 2179 MB), and small programs can lose: with one arena the threads' many small
allocations contend for its lock (bench_malloc.py: a ResNet-20 training step at batch 128 called
step by step ran 1.67x faster and its Hessian-vector product 1.30x, a ResNet-8 step at batch 8
1.13x faster but its product 1.22x slower). So it is
opt-in: ``LANDSCAPE_JAX_KEEP_FREED_MEMORY=1`` in the environment applies it when
`landscape_jax` is first imported (on Linux with glibc; glibc's own ``MALLOC_ARENA_MAX``,
``MALLOC_MMAP_MAX_`` or ``MALLOC_TRIM_THRESHOLD_`` take precedence: then nothing is changed), or
call `keep_freed_memory` at the top of a script. It takes effect for the threads that first
allocate after it: before JAX's first computation (importing jax first is fine); with JAX
already computing, set glibc's three variables before starting Python instead.
Results do not change: only where the memory comes from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["ENV", "GLIBC_SETTINGS", "GLIBC_VARIABLES", "apply_from_environment",
           "keep_freed_memory"]

ENV = "LANDSCAPE_JAX_KEEP_FREED_MEMORY"
# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# glibc's environment variable, mallopt parameter and value of each setting
_SETTINGS = (("MALLOC_ARENA_MAX", _M_ARENA_MAX, 1), ("MALLOC_MMAP_MAX_", _M_MMAP_MAX, 0),
             ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, 2**31 - 1))
GLIBC_VARIABLES = tuple(name for name, _, _ in _SETTINGS)
# the same settings as glibc's environment variables, for a process started from here (one that
# cannot call `keep_freed_memory` itself, e.g. a PyTorch baseline)
GLIBC_SETTINGS = {name: str(value) for name, _, value in _SETTINGS}
_applied: bool | None = None


def keep_freed_memory() -> bool:
  """Makes glibc keep and reuse freed large blocks (see the module docstring); True if set.

  Does nothing (False) off Linux, without glibc's ``mallopt``, or when one of `GLIBC_VARIABLES`
  is set. Idempotent: later calls return the first call's result.
  """
  global _applied
  if _applied is not None:
    return _applied
  _applied = False
  if not sys.platform.startswith("linux") or any(v in os.environ for v in GLIBC_VARIABLES):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (musl has no mallopt)
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  _applied = all(mallopt(param, value) == 1 for _, param, value in _SETTINGS)
  return _applied


def apply_from_environment() -> bool:
  """`keep_freed_memory` if ``LANDSCAPE_JAX_KEEP_FREED_MEMORY`` is ``1`` (what `landscape_jax`
  runs when first imported); False otherwise."""
  return os.environ.get(ENV, "").strip() == "1" and keep_freed_memory()
