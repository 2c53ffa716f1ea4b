"""`backends.cpu.malloc`: opt-in, respects glibc's own variables, and with it a compiled program
called again reuses its freed temporary buffer (far fewer page faults) with the same results."""

import json
import os
import subprocess
import sys

import pytest

from landscape_jax.backends.cpu import malloc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = """
import json, resource
import landscape_jax
import jax, jax.numpy as jnp
from landscape_jax.backends.cpu import malloc

@jax.jit
def f(x):  # a 266 MB temporary: cumulative sums over 32 scaled copies of x
  y = jnp.cumsum(jnp.broadcast_to(x, (32,) + x.shape) * jnp.arange(32.0)[:, None, None], axis=0)
  return jnp.sum(jnp.sin(y[::2]) * y[1::2], axis=0)

x = (jnp.linspace(-1.0, 1.0, 1 << 20).reshape(1024, 1024),)
for _ in range(8):  # the heap settles within a few calls
  out = jax.block_until_ready(f(*x))
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  out = jax.block_until_ready(f(*x))
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 4
print(json.dumps({"applied": malloc._applied, "faults": faults, "sum": float(out.sum())}))
"""


def _run(**env):
  base = {k: v for k, v in os.environ.items()  # one CPU device, XLA's default options
          if k != malloc.ENV and not k.startswith("MALLOC_") and k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", WORKER], env={**base, **env, "PYTHONPATH": ROOT},
                        capture_output=True, text=True, timeout=300, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kept_memory_removes_the_page_faults_of_each_call():
  off, on = _run(), _run(**{malloc.ENV: "1"})
  assert off["applied"] is None and on["applied"] is True  # opt-in
  assert off["faults"] > 20_000  # 266 MB mapped afresh: 68,096 pages each call
  assert on["faults"] < 0.5 * off["faults"]  # 0 once the heap has settled; fewer always
  assert on["sum"] == off["sum"]
  # glibc's own variables take precedence: nothing is changed
  assert _run(**{malloc.ENV: "1", "MALLOC_ARENA_MAX": "4"})["applied"] is False


def test_keep_freed_memory_is_idempotent_and_refuses_glibc_variables(monkeypatch):
  monkeypatch.setattr(malloc, "_applied", None)
  monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
  assert malloc.keep_freed_memory() is False
  monkeypatch.delenv("MALLOC_MMAP_MAX_")
  assert malloc.keep_freed_memory() is False  # the first call's answer
  monkeypatch.setattr(malloc, "_applied", None)
  monkeypatch.delenv(malloc.ENV, raising=False)
  assert malloc.apply_from_environment() is False and malloc._applied is None
