"""Per-call compiled programs with and without `backends.cpu.malloc.keep_freed_memory`.

Each call of a compiled program allocates its temporary buffer and frees it at the end; glibc
maps a block that large afresh on every call unless `keep_freed_memory` (opt-in:
``LANDSCAPE_JAX_KEEP_FREED_MEMORY=1`` when `landscape_jax` is imported) keeps it in the heap.
This runs, in a fresh process per setting (``=1`` and unset, the default), settings in turn
for ``--rounds`` rounds: a ResNet-20 `training.train_step` at batch 128 called step after step
(Python loop), and `lj.hvp` on one batch of 128 called product after product. Reported per call:
the median wall time, the minor page faults and the system CPU time (`resource.getrusage`),
and each process's peak resident memory; the results are compared bit for bit.

Run: ``python benchmarks/bench_malloc.py`` (about 3 minutes; appends to RESULTS.md), ``--tiny``
for a smoke run (not recorded).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import _common as C  # noqa: E402

SETTINGS = {"kept (LANDSCAPE_JAX_KEEP_FREED_MEMORY=1)": {"LANDSCAPE_JAX_KEEP_FREED_MEMORY": "1"},
            "returned (default)": {}}

WORKER = """
import json, resource, sys, time
import landscape_jax as lj
import jax, jax.numpy as jnp, numpy as np
from landscape_jax.backends.cpu import malloc
from landscape_jax.methods import training
name, batch, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = lj.get_model(name, num_classes=10)
tx = lj.make_optimizer(learning_rate=0.05, momentum=0.9, weight_decay=5e-4)
images = jax.random.randint(jax.random.key(0), (batch, 32, 32, 3), 0, 256).astype(jnp.uint8)
labels = jnp.arange(batch) % 10
state = training.create_train_state(model, jax.random.key(1), images, tx)
norm = dict(mean=jnp.full(3, 120.0), std=jnp.full(3, 60.0))
x = (images.astype(jnp.float32) - 120.0) / 60.0
loss_fn = lj.make_loss_fn(model, batch_stats=state.batch_stats)
v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), state.params)
def step(st):
  return training.train_step(st, (images, labels), jax.random.key(3), model=model, tx=tx, **norm)[0]
def hvp(_):
  return lj.hvp(loss_fn, state.params, (x, labels), v)
out = {"applied": bool(malloc._applied)}  # set at import (=1) or not
for key, fn in (("train_step", step), ("hvp", hvp)):
  st = jax.block_until_ready(fn(state))
  st = jax.block_until_ready(fn(state))
  times, r0 = [], resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(calls):
    t = time.perf_counter()
    st = jax.block_until_ready(fn(st if key == "train_step" else state))
    times.append(time.perf_counter() - t)
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  leaves = jax.tree.leaves(st)
  out[key] = {"median_s": float(np.median(times)), "faults": (r1.ru_minflt - r0.ru_minflt) / calls,
              "sys_s": (r1.ru_stime - r0.ru_stime) / calls,
              "cpu_s": (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / calls,
              "checksum": float(sum(float(jnp.sum(jnp.abs(a))) for a in leaves))}
out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out), flush=True)
"""


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--model", default="resnet20")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--calls", type=int, default=8)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--small", action=argparse.BooleanOptionalAction, default=True,
                 help="also a ResNet-8 (width 0.25) at batch 8, where one arena costs")
  args = p.parse_args(argv)
  if args.tiny:
    args.model, args.batch, args.calls, args.rounds = "resnet8", 8, 2, 1
  return C.finish_args(args)


def run(setting: dict, model: str, batch: int, calls: int) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k != "LANDSCAPE_JAX_KEEP_FREED_MEMORY" and not k.startswith("MALLOC_")}
  env.update(setting, PYTHONPATH=os.path.dirname(_HERE))
  return C.run_json([sys.executable, "-c", WORKER, model, str(batch), str(calls)],
                    name=f"the {model} worker", env=env, timeout=900)


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t_start = time.perf_counter()
  workloads = [(args.model, args.batch, args.calls)]
  if args.small and not args.tiny:
    workloads.append(("resnet8", 8, 5 * args.calls))
  rows, applied = [], []
  for model, batch, calls in workloads:
    runs = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
      for name, setting in SETTINGS.items():
        runs[name].append(run(setting, model, batch, calls))
        print(f"round {r}: {model} {name}: {runs[name][-1]}", flush=True)
    applied += [o["applied"] for o in runs["kept (LANDSCAPE_JAX_KEEP_FREED_MEMORY=1)"]]
    ref = runs["returned (default)"]
    for key in ("train_step", "hvp"):
      base = min(o[key]["median_s"] for o in ref)
      for name, outs in runs.items():
        best = min(outs, key=lambda o, k=key: o[k]["median_s"])[key]
        same = all(o[key]["checksum"] == ref[0][key]["checksum"] for o in outs)
        rows.append([f"{model}, batch {batch}", key, name, 1e3 * best["median_s"],
                     f"{base / best['median_s']:.2f}", f"{best['faults']:.0f}",
                     1e3 * best["sys_s"], 1e3 * best["cpu_s"],
                     f"{max(o['max_rss_mb'] for o in outs):.0f}", "yes" if same else "NO"])
  lines = [C.format_info(info), "",
           "32x32x3 images, float32, default cpu_convolutions; "
           f"{args.calls} calls (the small model {5 * args.calls}) after two warm-up calls per "
           "process, one fresh process per setting, settings in turn for "
           f"{args.rounds} rounds (the round with the lowest median kept). Applied in the "
           "processes with =1: "
           f"{all(applied)}.", "",
           C.markdown_table(["workload", "program (per call)", "freed memory", "median ms",
                             "speed vs returned", "minor page faults", "system CPU ms",
                             "CPU ms (user + system)",
                             "peak RSS MB (process)", "same results"], rows), "",
           "- Command: `python benchmarks/bench_malloc.py`.", "",
           C.total_line(t_start)]
  C.report(lines, title="bench_malloc.py: freed memory kept or returned", info=info,
           record=args.record)
  return rows


if __name__ == "__main__":
  main()
