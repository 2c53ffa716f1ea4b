"""Shared benchmark helpers: the --tiny / --record flags, machine and version info (with the CPU
features the figures need and the oneDNN kernels chosen), the measured fp32 / bf16 matmul peak,
FLOP counts, timing, peak memory and appending results to ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


# --------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def version(pkg: str) -> str:
  try:
    return importlib.metadata.version(pkg)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def machine_info() -> dict[str, Any]:
  """Date, machine, load, accelerator and package versions (recorded with every result)."""
  dev = jax.devices()[0]
  try:
    load = os.getloadavg()
  except OSError:
    load = (float("nan"),) * 3
  return {
    "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    "cpu": f"{cpu_model()} ({os.cpu_count()} cores)",
    "load": "{:.2f} {:.2f} {:.2f}".format(*load),
    "device": f"{dev.platform}: {getattr(dev, 'device_kind', dev.platform)} x{jax.device_count()}",
    "python": platform.python_version(),
    "versions": ", ".join(f"{p} {version(p)}" for p in ("jax", "jaxlib", "flax", "numpy", "torch",
                                                         "onednn-cpu-gomp")),
    "cpu convolutions": onednn_info(),
    "cpu features": cpu_features(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
  }


def onednn_info() -> str:
  """Which convolutions `make_metric_fn` uses here by default ("auto"), and why."""
  if jax.default_backend() != "cpu":
    return ""
  from landscape_jax.backends.cpu import onednn, onednn_build

  if not onednn_build.available():
    return f"XLA ({onednn_build.unavailable_reason()})"
  impl = onednn.implementation((128, 32, 32, 16), (3, 3, 16, 16), padding=1)
  return f"oneDNN ({impl} for ResNet-20's 3x3 16-channel layers)"


FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# oneDNN's ISA names (the tail of an implementation such as "brgconv:avx512_core_bf16") and the
# /proc/cpuinfo flags they need
_ISA_NEEDS = (("amx", "amx_tile, amx_bf16"), ("avx512_core_bf16", "avx512_bf16"),
              ("avx512", "avx512f"), ("avx2", "avx2"), ("sse41", "sse4_1"))


def isa_needs(implementation: str) -> str:
  """The CPU flags a oneDNN implementation (``"brgconv:avx512_core"``) needs: ``"avx512f"``."""
  isa = implementation.rpartition(":")[2]
  return next((flags for key, flags in _ISA_NEEDS if key in isa), "none (reference kernel)")


def cpu_features() -> str:
  """Which of the CPU features the figures may need (`FEATURES`) this CPU has, and which the
  oneDNN kernels chosen here need, float32 and bfloat16 (for ResNet-20's 3x3 16-channel
  layers): a figure measured with a kernel needs its flags to be reproduced."""
  flags = cpu_flags()
  if not flags:
    return "unknown (no flags in /proc/cpuinfo)"
  have = [f for f in FEATURES if f in flags]
  lacks = [f for f in FEATURES if f not in flags]
  out = f"{', '.join(have) or 'none'} present" + (f"; {', '.join(lacks)} absent" if lacks else "")
  if jax.default_backend() != "cpu":
    return out
  from landscape_jax.backends.cpu import onednn, onednn_build

  if not onednn_build.available():
    return out + "; oneDNN unavailable (XLA's own CPU kernels)"
  shape = ((128, 32, 32, 16), (3, 3, 16, 16))
  kernels = [("float32", onednn.implementation(*shape, padding=1))]
  if onednn_build.bf16_unsupported_reason() is None:
    kernels.append(("bfloat16", onednn.implementation(*shape, padding=1,
                                                      compute_dtype="bfloat16")))
  else:
    kernels.append(("bfloat16", "XLA (no native bf16 instructions)"))
  return out + "; oneDNN kernels: " + ", ".join(
    f"{dt} {k}" + (f" (needs {isa_needs(k)})" if ":" in k else "") for dt, k in kernels)


def format_info(info: dict[str, Any]) -> str:
  return "\n".join(f"- {k}: {v}" for k, v in info.items() if v != "")


# ------------------------------------------------------------------------------------------ time
def block(x):
  return jax.block_until_ready(x)


def best_time(fn: Callable[[], Any], *, repeats: int = 3, min_time: float = 0.0) -> float:
  """Minimum wall time of ``fn()`` (its result blocked on) over `repeats` runs (>= 1)."""
  best = float("inf")
  start = time.perf_counter()
  n = 0
  while n < repeats or (time.perf_counter() - start < min_time and n < 100):
    t = time.perf_counter()
    block(fn())
    best = min(best, time.perf_counter() - t)
    n += 1
  return best


def matmul_peak(*, n: int = 2048, dtype=jnp.float32, repeats: int = 5, precision=None
                ) -> float:
  """Measured matmul throughput in GFLOP/s: best of `repeats` jitted ``(n, n) @ (n, n)``.

  Several multiplications per call (a `lax.fori_loop` over 4 products) amortise the dispatch, so
  the figure is the machine's practical dense-matmul peak for `dtype` (2 n^3 FLOPs each) as XLA
  computes it. For ``jnp.bfloat16`` that is XLA:CPU's bf16 dot, which need not use the CPU's
  bf16 instructions: take the larger of it and PyTorch's (``torch_baseline.py``'s ``peak``,
  bf16 included) as the machine's bf16 peak.
  """
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
  b = (jax.random.normal(k2, (n, n), jnp.float32) / np.sqrt(n)).astype(dtype)
  inner = 4

  @jax.jit
  def f(a, b):
    def body(_, c):
      return jnp.dot(c, b, precision=precision)
    return jax.lax.fori_loop(0, inner, body, a)

  block(f(a, b))
  t = best_time(lambda: f(a, b), repeats=repeats)
  return inner * 2 * n ** 3 / t / 1e9


def cpu_flags() -> frozenset[str]:
  """The flags /proc/cpuinfo lists for the first core (empty where it cannot be read): the
  library's own `onednn_build.cpu_flags`."""
  from landscape_jax.backends.cpu.onednn_build import cpu_flags as flags

  return flags()


def cpu_mhz() -> float | None:
  """The clock /proc/cpuinfo reports (the first core's "cpu MHz"; None where absent)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("cpu MHz"):
          return float(line.split(":", 1)[1])
  except (OSError, ValueError):
    pass
  return None


def theoretical_fp32_peak(*, fma_units: int = 2) -> tuple[float | None, str]:
  """The CPU's theoretical fp32 FMA peak in GFLOP/s and the assumptions behind it.

  ``cores x GHz x FMA units x fp32 lanes x 2`` with the cores this process may use, the clock
  /proc/cpuinfo reports (under a hypervisor the nominal one; turbo and the lower AVX-512 clock
  licence are not known from inside), the vector width from the flags (16 lanes with avx512f, 8
  with avx/avx2 and fma) and `fma_units` FMA pipes per core (2 on Xeon Scalable cores with two
  AVX-512 FMA units: an assumption, the flags do not tell). AMX tiles are bf16/int8 only, so
  they do not raise the fp32 peak. None where the clock or the flags cannot be read.
  """
  flags, mhz = cpu_flags(), cpu_mhz()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  if not flags or not mhz:
    return None, "the clock or the CPU flags cannot be read from /proc/cpuinfo"
  lanes = 16 if "avx512f" in flags else 8 if "fma" in flags else 4
  units = fma_units if "fma" in flags or "avx512f" in flags else 1
  peak = cores * mhz / 1e3 * units * lanes * 2
  isa = "avx512f" if lanes == 16 else "fma/avx2" if lanes == 8 else "sse"
  return peak, (f"{cores} cores x {mhz / 1e3:.2f} GHz (/proc/cpuinfo) x {units} FMA units "
                f"(assumed) x {lanes} fp32 lanes ({isa}) x 2 FLOP per FMA = {peak:.0f} GFLOP/s")


def torch_matmul_peak(*, n: int = 2048, repeats: int = 5) -> float | None:
  """The same measurement with PyTorch on its default device (None without torch)."""
  try:
    import torch
  except ImportError:
    return None
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  a = torch.randn(n, n, device=dev)
  b = torch.randn(n, n, device=dev) / n ** 0.5
  best = float("inf")
  for _ in range(repeats + 1):
    t = time.perf_counter()
    c = a
    for _ in range(4):
      c = c @ b
    if dev == "cuda":
      torch.cuda.synchronize()
    best = min(best, time.perf_counter() - t)
  return 4 * 2 * n ** 3 / best / 1e9


# ------------------------------------------------------------------------ PyTorch in a subprocess
TORCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_baseline.py")


def torch_python() -> str:
  """The interpreter of the PyTorch side: ``$LANDSCAPE_JAX_TORCH_PYTHON`` (e.g. a separate venv
  with torch and pyhessian) or this one."""
  return os.environ.get("LANDSCAPE_JAX_TORCH_PYTHON") or sys.executable


def torch_installed() -> tuple[bool, str]:
  """Whether PyTorch can be imported (found without importing it here) and, if not, why."""
  if os.environ.get("LANDSCAPE_JAX_TORCH_PYTHON"):
    ok = subprocess.run([torch_python(), "-c", "import torch"], capture_output=True,
                        check=False).returncode == 0
    return ok, "" if ok else f"torch cannot be imported by {torch_python()}"
  if importlib.util.find_spec("torch") is None:
    return False, ("PyTorch is not installed: the PyTorch baselines are skipped "
                   "(pip install '.[bench]' or the CPU wheel of torch)")
  return True, ""


def run_json(cmd: Sequence[str], *, name: str, env: dict[str, str] | None = None,
             timeout: float = 600) -> dict:
  """Runs `cmd` in its own process and returns the last JSON object it printed (a line that
  starts with ``{``); RuntimeError naming `name`, the exit status and the end of its stderr if
  it fails or prints none."""
  proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout,
                        check=False)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"{name} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
  return json.loads(lines[-1])


def run_torch(command: str, *args: str, timeout: float = 600) -> dict:
  """Runs ``torch_baseline.py COMMAND ARGS`` in its own process and returns its JSON answer."""
  return run_json([torch_python(), TORCH_SCRIPT, command, *args],
                  name=f"torch_baseline.py {command}", timeout=timeout)


class TorchWorker:
  """``torch_baseline.py serve``: a PyTorch process answering one JSON line per command."""

  def __init__(self, npz: str, *, threads: int | None = None, device: str = "cpu",
               extra: tuple[str, ...] = ()):
    cmd = [torch_python(), TORCH_SCRIPT, "serve", "--npz", npz, "--device", device,
           "--threads", str(threads or os.cpu_count()), *extra]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.ready = self._read()

  def _read(self) -> dict:
    while True:
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f"torch_baseline.py serve exited (code {self.proc.poll()}); see its "
                           "stderr above.")
      if line.startswith("{"):
        out = json.loads(line)
        if "error" in out:
          raise RuntimeError(f"torch_baseline.py: {out['error']}")
        return out

  def __call__(self, command: str) -> dict:
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
      except OSError:
        pass
      self.proc.wait(timeout=60)


def save_npz(path: str, arrays: dict) -> str:
  """Plain arrays to ``path`` (``np.savez``; read back with ``allow_pickle=False``)."""
  np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
  return path


def max_rel_diff(a, b) -> float:
  """``max |a - b| / max |b|`` over all leaves of two pytrees of arrays (float64; 1 for the
  scale where ``b`` is all zeros): how far a result is from its reference."""
  la = [np.asarray(x, np.float64) for x in jax.tree.leaves(a)]
  lb = [np.asarray(y, np.float64) for y in jax.tree.leaves(b)]
  scale = max(float(np.max(np.abs(y))) for y in lb) or 1.0
  return max(float(np.max(np.abs(x - y))) for x, y in zip(la, lb, strict=True)) / scale


def spread(values) -> str:
  """``median (min-max)`` of a sequence of numbers."""
  v = np.asarray(values, np.float64)
  return f"{np.median(v):.3g} ({v.min():.3g}-{v.max():.3g})"


# ----------------------------------------------------------------------------------------- FLOPs
def _sub_jaxprs(params: dict):
  for v in params.values():
    vs = v if isinstance(v, (tuple, list)) else (v,)
    for u in vs:
      if isinstance(u, jax.extend.core.ClosedJaxpr):
        yield u.jaxpr
      elif isinstance(u, jax.extend.core.Jaxpr):
        yield u


def jaxpr_flops(jaxpr) -> float:
  """Analytic FLOPs of the convolutions and matrix products of a jaxpr (2 per multiply-add).

  conv: ``2 * prod(out.shape) * C_in/groups * prod(kernel window)``; dot_general:
  ``2 * prod(out.shape) * prod(contracted sizes)``; scans multiply their body by the length.
  Elementwise work (BatchNorm, ReLU, softmax) is not counted, as is customary for model FLOPs.
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out = eqn.outvars[0].aval
      rhs = eqn.invars[1].aval
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out feat, in feat, spatial...)
      window = np.prod([rhs.shape[d] for d in spec[2:]])
      total += 2.0 * np.prod(out.shape) * rhs.shape[spec[1]] * window
    elif name == "dot_general":
      out = eqn.outvars[0].aval
      lhs = eqn.invars[0].aval
      (lc, _), _ = eqn.params["dimension_numbers"]
      total += 2.0 * np.prod(out.shape) * np.prod([lhs.shape[d] for d in lc])
    else:
      mult = eqn.params.get("length", 1) if name == "scan" else 1
      for sub in _sub_jaxprs(eqn.params):
        total += mult * jaxpr_flops(sub)
  return float(total)


def model_flops_per_example(apply_fn: Callable, variables, x) -> float:
  """Analytic forward FLOPs per example of ``apply_fn(variables, x)`` (x a batch)."""
  jaxpr = jax.make_jaxpr(apply_fn)(variables, x)
  return jaxpr_flops(jaxpr.jaxpr) / x.shape[0]


def xla_flops(fn: Callable, *args) -> float | None:
  """FLOPs that XLA's cost analysis reports for ``jax.jit(fn)(*args)`` (None if unavailable).

  Loops (``while``, ``lax.map``, ``lax.scan``) count their body once, so call it on loop-free code.
  """
  try:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  except Exception:
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return None if not cost else float(cost.get("flops", float("nan")))


# ---------------------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except OSError:
    return 0


class PeakMemory:
  """Context manager: peak memory while its block runs.

  On accelerators, the device allocator's ``peak_bytes_in_use`` (a running maximum over the
  process); on the CPU, the peak resident set size sampled every 5 ms, minus the size on entry
  (``.peak_mb``).
  """

  def __init__(self, interval: float = 0.005):
    self.interval = interval
    self.peak_mb = float("nan")

  def __enter__(self):
    dev = jax.devices()[0]
    self._device = dev if dev.platform != "cpu" else None
    self._start = _rss_bytes()
    self._peak = self._start
    self._stop = threading.Event()
    if self._device is None:
      self._thread = threading.Thread(target=self._sample, daemon=True)
      self._thread.start()
    return self

  def _sample(self):
    while not self._stop.is_set():
      self._peak = max(self._peak, _rss_bytes())
      time.sleep(self.interval)

  def __exit__(self, *exc):
    self._stop.set()
    if self._device is None:
      self._thread.join()
      self._peak = max(self._peak, _rss_bytes())
      self.peak_mb = (self._peak - self._start) / 2 ** 20
    else:
      stats = self._device.memory_stats() or {}
      self.peak_mb = stats.get("peak_bytes_in_use", float("nan")) / 2 ** 20
    return False


def program_memory_mb(lowered) -> float:
  """Memory of a compiled XLA program in MiB: arguments + outputs + scratch (``temp``), from
  ``lowered.compile().memory_analysis()``; NaN where the backend does not report it."""
  try:
    m = lowered.compile().memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - getattr(m, "alias_size_in_bytes", 0))
    return total / 2 ** 20
  except Exception:
    return float("nan")


# ----------------------------------------------------------------------------------- arguments
def run_parser(doc: str) -> argparse.ArgumentParser:
  """A benchmark's parser (description: the first line of `doc`) with ``--tiny`` (a seconds-long
  smoke run) and ``--record`` / ``--no-record`` (append to RESULTS.md; see `finish_args`)."""
  p = argparse.ArgumentParser(description=doc.split("\n")[0])
  p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (not recorded)")
  p.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                 help="append to benchmarks/RESULTS.md (default: yes, except with --tiny)")
  return p


def announce_machine() -> dict[str, Any]:
  """`machine_info()`, printed (`format_info`) before a run starts, and returned for its record."""
  info = machine_info()
  print(format_info(info), flush=True)
  return info


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
  """`args` with ``record`` resolved: recorded unless ``--tiny``, when not given."""
  if args.record is None:
    args.record = not args.tiny
  return args


# --------------------------------------------------------------------------------------- results
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  def fmt(v):
    if isinstance(v, float):
      if v != v:
        return "-"
      return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)

  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def load_average() -> str:
  """The 1, 5 and 15 minute load averages, as a benchmark's record quotes them."""
  return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def total_line(t_start: float, note: str = "") -> str:
  """A record's closing line: the run's wall time since `t_start` (``time.perf_counter()``)
  and the load averages at its end, then `note`."""
  return (f"Total {time.perf_counter() - t_start:.0f} s; load average at the end "
          f"{load_average()}{note}.")


def report(lines: Sequence[str], *, title: str, info: dict[str, Any], record: bool,
           path: str = RESULTS) -> None:
  """Prints a run's record, ``lines`` (`format_info`'s machine block, a blank line, then the
  results: the block is not printed again, `announce_machine` printed it first) and, with
  `record`, appends it to RESULTS.md as ``## title (date)``."""
  print("\n".join(lines[2:]), flush=True)
  if record:
    append_results(f"{title} ({info['date']})", "\n".join(lines), path=path)
    print(f"appended to {path}", flush=True)


def append_results(title: str, body: str, *, path: str = RESULTS) -> None:
  """Appends a ``## title`` section to RESULTS.md (created with a heading if missing)."""
  new = not os.path.exists(path)
  with open(path, "a") as f:
    if new:
      f.write("# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n")
    f.write(f"\n## {title}\n\n{body.rstrip()}\n")
