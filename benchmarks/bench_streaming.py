"""Splits streamed from the host (`make_metric_fn(stream_batches=k)`) against the same split on
the device: surface time, side by side in one run, and the largest difference of the values.

A 4 x 4 surface (chunks of 4 points, `lax.map` on the CPU) of an MLP on the digits training
images repeated to ``--examples`` examples (batches of 256), evaluated by the on-device metric
and by streamed metrics of k = 1, 4 and 16 batches per chunk; the on-device surface first
(compilation excluded: one warm-up surface per metric), then each streamed one, best of
``--repeats``. Printed: seconds per surface, the ratio streamed / on-device and the largest
relative difference of the losses; a markdown table is appended to benchmarks/RESULTS.md.

Run: ``python benchmarks/bench_streaming.py`` (about a minute on 2 CPU cores), ``--tiny`` for a
seconds-long smoke run.
"""

from __future__ import annotations

import datetime
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common
import jax
import numpy as np

import landscape_jax as lj


def main(argv=None) -> dict:
  p = _common.run_parser(__doc__)
  p.add_argument("--examples", type=int, default=16384)
  p.add_argument("--repeats", type=int, default=3)
  args = _common.finish_args(p.parse_args(argv))
  if args.tiny:
    args.examples, args.repeats = 1024, 1
  info = _common.announce_machine()
  tr = lj.load("digits", "train")
  idx = np.arange(args.examples) % len(tr.labels)
  data = tr.subset(idx)
  model = lj.get_model("mlp_small", num_classes=10)
  params = model.init(jax.random.key(0), tr.images[:2].astype(np.float32))["params"]
  dirs = lj.random_directions(jax.random.key(1), params)
  xs = ys = np.linspace(-1.0, 1.0, 4)
  engine = lj.EngineOptions(chunk_size=4, progress=False)
  kw = dict(batch_size=256, cpu_convolutions="xla")
  metrics = {"device": lj.make_metric_fn(model, data, **kw)}
  for k in (1, 4, 16):
    metrics[f"stream k={k}"] = lj.make_metric_fn(model, data, stream_batches=k, **kw)
  rows, ref, times = [], None, {}
  for name, m in metrics.items():
    def run(m=m):
      return lj.surface_grid(m, params, dirs, xs, ys, engine=engine)
    out = run()  # compile
    times[name] = _common.best_time(run, repeats=args.repeats)
    if ref is None:
      ref = out
    diff = float(np.max(np.abs(out["loss"] - ref["loss"]) / np.abs(ref["loss"])))
    rows.append([name, times[name], times[name] / times["device"], diff])
    print(f"{name:>12}: {times[name]:.3f} s per surface, x{times[name] / times['device']:.2f}, "
          f"max relative difference {diff:.1e}", flush=True)
  table = _common.markdown_table(
    ["metric", "s per 4x4 surface", "vs on device", "max rel. diff of loss"], rows)
  if args.record:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    _common.append_results(
      f"Streamed splits vs on device ({when})",
      f"`benchmarks/bench_streaming.py`: MLP (mlp_small) on {args.examples} digits examples "
      f"(batches of 256), 4 x 4 surface in chunks of 4 points, one CPU device, best of "
      f"{args.repeats}. Other agents shared the CPU (load average {os.getloadavg()[0]:.1f} at "
      f"the end): read the ratios, not the seconds.\n\n{_common.format_info(info)}\n\n{table}")
  return {"times": times, "rows": rows}


if __name__ == "__main__":
  main()
