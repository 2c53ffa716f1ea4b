"""A ResNet-20 training step on oneDNN under different OpenMP thread settings (own processes).

oneDNN (the ``onednn-cpu-gomp`` wheel) runs its convolutions on libgomp's OpenMP threads while
XLA:CPU runs everything else on its own Eigen thread pool: on a CPU with few cores the two pools
take turns, and each oneDNN call may first wait for its OpenMP workers to wake up (or compete
with XLA's spinning threads). This times one ``training.train_step`` (ResNet-20, batch 128,
float32, ``cpu_convolutions="onednn"``; best of ``--steps`` steps after two warm-up steps) in a
fresh process per setting: libgomp's defaults, ``OMP_WAIT_POLICY=PASSIVE`` (workers sleep at
once), ``OMP_NUM_THREADS=1`` (oneDNN on the calling
XLA thread only), and the same step with XLA's convolutions (``cpu_convolutions="xla"``) as the
reference. The settings are run in turn for ``--rounds`` rounds; the best step of each counts.

Run: ``python benchmarks/bench_onednn_threads.py`` (a few minutes; appends to RESULTS.md),
``--tiny`` for a smoke run (batch 8, not recorded).
"""

from __future__ import annotations

import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import _common as C  # noqa: E402

SETTINGS = {  # name: (environment changes, cpu_convolutions)
  "oneDNN, libgomp defaults": ({}, "onednn"),
  "oneDNN, OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, "onednn"),
  "oneDNN, OMP_NUM_THREADS=1": ({"OMP_NUM_THREADS": "1"}, "onednn"),
  "XLA's convolutions": ({}, "xla"),
}

WORKER = """
import json, sys, time
import jax, jax.numpy as jnp, optax
import landscape_jax as lj
from landscape_jax.methods import training
batch, steps, conv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
model = lj.get_model("resnet20", num_classes=10)
tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
images = jax.random.randint(jax.random.key(0), (batch, 32, 32, 3), 0, 256).astype(jnp.uint8)
labels = jnp.arange(batch) % 10
state = training.create_train_state(model, jax.random.key(1), images, tx)
def step(st, i):
  return training.train_step(st, (images, labels), jax.random.key(i), model=model, tx=tx,
                             mean=jnp.full(3, 120.0), std=jnp.full(3, 60.0), cpu_convolutions=conv)
for i in range(2):
  state, m = step(state, i)
  jax.block_until_ready(state)
best = float("inf")
for i in range(steps):
  t = time.perf_counter()
  state, m = step(state, i + 2)
  jax.block_until_ready(state)
  best = min(best, time.perf_counter() - t)
print(json.dumps({"best": best, "loss": float(m["loss"])}), flush=True)
"""


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--rounds", type=int, default=1)
  args = p.parse_args(argv)
  if args.tiny:
    args.batch, args.steps, args.rounds = 8, 2, 1
  return C.finish_args(args)


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t_start = time.perf_counter()
  best = dict.fromkeys(SETTINGS, float("inf"))
  for r in range(args.rounds):
    for name, (changes, conv) in SETTINGS.items():
      env = {**os.environ, "PYTHONPATH": os.path.dirname(_HERE), **changes}
      out = C.run_json([sys.executable, "-c", WORKER, str(args.batch), str(args.steps), conv],
                       name=name, env=env)
      t = out["best"]
      best[name] = min(best[name], t)
      print(f"round {r}: {name}: {1e3 * t:.1f} ms", flush=True)
  ref = best["oneDNN, libgomp defaults"]
  rows = [[name, f"{1e3 * t:.1f}", f"{args.batch / t:.0f}", f"{ref / t:.2f}"]
          for name, t in best.items()]
  lines = [C.format_info(info), "",
           f"One ResNet-20 `training.train_step` at batch {args.batch} (float32), best of "
           f"{args.steps} steps per process after two warm-up steps, one fresh process per "
           f"setting, settings in turn for {args.rounds} rounds (best kept).", "",
           C.markdown_table(["setting", "step ms", "images/s", "speed vs libgomp defaults"],
                            rows), "",
           C.total_line(t_start)]
  C.report(lines, title="bench_onednn_threads.py: OpenMP settings of the oneDNN training "
           "step", info=info, record=args.record)
  return best


if __name__ == "__main__":
  main()
