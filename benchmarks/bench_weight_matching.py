"""Weight matching time (Ainsworth et al. 2023) for ResNet-20 and WRN-28-10-sized parameters.

For each model the permutation spec is derived by tracing (`spec_from_model` on
`jax.eval_shape` variables, so no parameters are initialised), parameters are drawn with numpy
(normal / sqrt(fan_in); BatchNorm variances in [0.5, 1.5]), and `weight_matching` is timed on

  * "planted": b = a with a random permutation applied (recovery is checked to be exact);
  * "independent": two unrelated random draws (the descent runs until no permutation improves).

Printed per case: wall seconds (best of 3 for ResNet-20), process CPU seconds, sweeps and seconds
per sweep; one dated line per case (machine, load,
versions) is appended to benchmarks/RESULTS.md. Target (issue #8): ResNet-20 under 2 s on this CPU.

Run: ``python benchmarks/bench_weight_matching.py`` (about 2-4 minutes on 2 CPU cores),
``--tiny`` for ResNet-20 only, ``--no_record`` to skip RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

import landscape_jax as lj
from landscape_jax.core import permutations as P

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  versions = ", ".join(f"{p} {importlib.metadata.version(p)}"
                       for p in ("jax", "numpy", "scipy"))
  load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
  return f"{cpu} ({os.cpu_count()} cores, load {load}); {jax.devices()[0].platform}; {versions}"


def random_variables(model, x, seed):
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def draw(path, s):
    if path.endswith("var"):
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 4
    return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)
  return shapes, lj.trees.map_with_path(draw, shapes)


def bench(name: str, input_shape, record: bool, repeats: int) -> None:
  model = lj.get_model(name, num_classes=10)
  x = np.zeros((2, *input_shape), np.float32)
  shapes, a = random_variables(model, x, 0)
  t = time.perf_counter()
  spec = P.spec_from_model(model, shapes, x, verify=False)
  t_spec = time.perf_counter() - t
  n = lj.trees.num_params(shapes["params"])
  print(f"{name}: {n / 1e6:.2f}M params, {len(spec.names)} permutations "
        f"(spec by tracing in {t_spec:.2f} s)")
  planted = P.random_permutation(jax.random.key(1), spec)
  cases = {"planted": P.apply_permutation(spec, planted, a),
           "independent": random_variables(model, x, 1)[1]}
  lines = []
  for case, b in cases.items():
    dt, cpu = float("inf"), float("inf")
    for _ in range(repeats):  # best of `repeats` (the machine may be shared)
      t, c = time.perf_counter(), time.process_time()
      res = P.weight_matching(jax.random.key(0), spec, a, b)
      dt, cpu = min(dt, time.perf_counter() - t), min(cpu, time.process_time() - c)
    if case == "planted":
      inv = P.invert_permutation(planted)
      exact = all(np.array_equal(res.perm[k], inv[k]) for k in spec.names)
      assert exact, "planted permutation not recovered"
    msg = (f"{name} ({n / 1e6:.2f}M params, {len(spec.names)} perms), {case}: {dt:.2f} s wall "
           f"(best of {repeats}; {cpu:.2f} s CPU), {res.num_sweeps} sweeps "
           f"({dt / res.num_sweeps:.2f} s/sweep), "
           f"converged={res.converged}")
    print("  " + msg)
    lines.append(msg)
  if record:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with open(RESULTS, "a") as f:
      for msg in lines:
        f.write(f"- {stamp} weight_matching: {msg}; {machine()}\n")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tiny", action="store_true", help="ResNet-20 only")
  parser.add_argument("--no_record", action="store_true", help="do not append to RESULTS.md")
  args = parser.parse_args()
  print(machine())
  # Warm-up (imports, first host/device conversions) on a tiny MLP, not timed.
  mlp = lj.get_model("mlp_small", num_classes=10)
  v = mlp.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
  P.weight_matching(jax.random.key(0), P.mlp_spec(v), v, v)
  bench("resnet20", (32, 32, 3), not args.no_record, repeats=3)
  if not args.tiny:
    bench("wrn28_10", (32, 32, 3), not args.no_record, repeats=1)


if __name__ == "__main__":
  main()
