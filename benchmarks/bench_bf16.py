"""bfloat16 evaluation against the exact float32 path: speed-up and largest loss deviation, side by
side in one run.

* **W1** (speed): a CIFAR ResNet-20 at random initialisation, two filter-normalised directions,
  an 11 x 11 grid on [-1, 1]^2, 1000 synthetic 32 x 32 x 3 images, loss + accuracy;
  `make_metric_fn` with its defaults (BatchNorm folded, oneDNN convolutions on the CPU) against
  the same with ``compute_dtype="bfloat16"``, each at the batch size `choose_batch_size` picks
  for it (32 to 256: bfloat16 activations take half the cache). Each round runs
  `surface_grid` over the whole grid with both, interleaved row by row (order alternating), so
  that a change of machine load hits both alike; the table gives the medians of the per-round
  totals and the range of the per-round ratios. The two surfaces also give the deviation on W1.
* **Deviation near a minimum**: a ResNet-8 trained briefly on digits (`training.train`), its
  11 x 11 train-loss surface (the whole digits training split) in both precisions.

Deviation = |L_bf16 - L_f32| / |L_f32| per grid point; reported as the maximum over the grid and
over the central 3 x 3 points (|x|, |y| <= 0.2), with the largest accuracy difference.

Prints the results and appends them to benchmarks/RESULTS.md (``--no-record`` to skip);
``--tiny`` is a smoke run (ResNet-8, 64 images, 3 x 3 grid, one epoch; not recorded).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as C

import landscape_jax as lj
from landscape_jax.backends.cpu import autotune, onednn, onednn_build
from landscape_jax.methods import training

BF16 = "bfloat16"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (not recorded)")
  p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--grid", type=int, default=11, help="points per side of both grids")
  p.add_argument("--images", type=int, default=1000)
  p.add_argument("--epochs", type=int, default=10, help="training epochs of the digits ResNet-8")
  p.add_argument("--batch_sizes", default="32,64,128,256", help="choose_batch_size candidates")
  args = p.parse_args(argv)
  if args.tiny:
    args.rounds, args.grid, args.images, args.epochs, args.batch_sizes = 1, 3, 64, 1, "32"
  return args


def deviations(f32: dict, bf16: dict, xs, ys) -> dict:
  """Largest relative loss deviation over the grid and near its centre, largest accuracy gap."""
  loss_key = next(k for k in f32 if k.endswith("loss"))
  acc_key = next(k for k in f32 if k.endswith("accuracy"))
  a, b = np.asarray(f32[loss_key], np.float64), np.asarray(bf16[loss_key], np.float64)
  rel = np.abs(b - a) / np.abs(a)
  centre = (np.abs(np.asarray(xs))[:, None] <= 0.2 + 1e-9) & (np.abs(np.asarray(ys))[None]
                                                               <= 0.2 + 1e-9)
  return {"max rel dev": float(rel.max()), "max rel dev, centre": float(rel[centre].max()),
          "max |dacc|": float(np.abs(np.asarray(bf16[acc_key]) - np.asarray(f32[acc_key])).max()),
          "loss range": (float(a.min()), float(a.max())), "centre loss": float(a[centre].min())}


def w1(args) -> dict:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, args.images).astype(np.int32)
  data = lj.Dataset(images=images, labels=labels, num_classes=10,
                    mean=np.full(3, 0.5, np.float32), std=np.full(3, 0.25, np.float32),
                    name="random", split="test")
  name = "resnet8" if args.tiny else "resnet20"
  model = lj.get_model(name, num_classes=10)
  v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  params, bs = v["params"], v["batch_stats"]
  dirs = lj.random_directions(jax.random.key(1), params, num=2)
  xs = ys = np.linspace(-1.0, 1.0, args.grid)
  fns, batch = {}, {}
  for k, dtype in (("float32", None), (BF16, BF16)):
    make = lambda b, dtype=dtype: lj.make_metric_fn(model, data, batch_stats=bs, batch_size=b,
                                                    compute_dtype=dtype)
    b, tried = autotune.choose_batch_size(
      make, params, candidates=[int(c) for c in args.batch_sizes.split(",")], repeats=3)
    print(f"{k}: batch size {b} ({', '.join(f'{c}: {t:.3f} s' for c, t in tried.items())})",
          flush=True)
    fns[k], batch[k] = make(b), b
  engine = lj.EngineOptions(chunk_size=len(ys), progress=False)
  for fn in fns.values():  # compile (the same chunk shape as the timed rows)
    lj.surface_grid(fn, params, dirs, xs[:1], ys, engine=engine)
  times = {k: [] for k in fns}
  rows = {k: [None] * len(xs) for k in fns}
  for r in range(args.rounds):
    total = dict.fromkeys(fns, 0.0)
    for i in range(len(xs)):  # row by row, the order alternating
      for k in (list(fns) if (r + i) % 2 == 0 else list(fns)[::-1]):
        t = time.perf_counter()
        rows[k][i] = lj.surface_grid(fns[k], params, dirs, xs[i:i + 1], ys, engine=engine)
        total[k] += time.perf_counter() - t
    for k in fns:
      times[k].append(total[k])
    print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f} s" for k, v in total.items()), flush=True)
  surfaces = {k: {m: np.concatenate([row[m] for row in v]) for m in v[0]}
              for k, v in rows.items()}
  ratios = np.asarray(times["float32"]) / np.asarray(times[BF16])
  med = {k: float(np.median(v)) for k, v in times.items()}
  return {"model": name, "points": len(xs) * len(ys), "times": times, "median": med,
          "batch": batch, "speedup": med["float32"] / med[BF16],
          "ratio range": (ratios.min(), ratios.max()),
          **deviations(surfaces["float32"], surfaces[BF16], xs, ys)}


def trained(args, workdir: str) -> dict:
  train_ds, test_ds = lj.load("digits", "train"), lj.load("digits", "test")
  if args.tiny:
    train_ds = train_ds.subset(slice(0, args.images))
  model = lj.get_model("resnet8", num_classes=10)
  config = dict(model="resnet8", seed=0, num_epochs=args.epochs, batch_size=64,
                learning_rate=0.05, weight_decay=5e-4, schedule="cosine", momentum=0.9,
                nesterov=True)
  state, records = training.train(model, train_ds, test_ds, config=config, workdir=workdir,
                                  progress=False)
  dirs = lj.random_directions(jax.random.key(7), state.params, num=2)
  xs = ys = np.linspace(-1.0, 1.0, args.grid)
  surfaces = {k: lj.surface_grid(
    lj.make_metric_fn(model, {"train": train_ds}, batch_stats=state.batch_stats,
                      compute_dtype=dtype), state.params, dirs, xs, ys,
                                 engine=lj.EngineOptions(progress=False))
    for k, dtype in (("float32", None), (BF16, BF16))}
  return {"model": "resnet8 (digits)", "examples": len(train_ds.labels),
          "test accuracy": float(records[-1].get("test_accuracy", float("nan"))),
          **deviations(surfaces["float32"], surfaces[BF16], xs, ys)}


def main(argv=None):
  args = parse_args(argv)
  info = C.machine_info()
  if jax.default_backend() == "cpu":
    flags = onednn_build.cpu_bf16_flags()
    info["bf16 instructions"] = ", ".join(flags) or "none (bfloat16 runs through XLA)"
    if not onednn_build.bf16_unsupported_reason():
      info["bf16 convolutions"] = onednn.implementation((128, 32, 32, 16), (3, 3, 16, 16),
                                                        padding=1, compute_dtype=BF16)
  print(C.format_info(info), flush=True)
  start = time.perf_counter()
  speed = w1(args)
  with tempfile.TemporaryDirectory() as workdir:
    near = trained(args, workdir)
  total = time.perf_counter() - start
  g = f"{args.grid} x {args.grid}"
  table = C.markdown_table(
    ["W1 variant", "batch size", "s / grid (median)", "s / point", "points/s", "per-round s"],
    [[k, speed["batch"][k], v, v / speed["points"], speed["points"] / v,
      " ".join(f"{t:.1f}" for t in speed["times"][k])] for k, v in speed["median"].items()])
  dev = C.markdown_table(
    ["surface", "loss range (f32)", "max rel loss dev", "max rel loss dev, |x|,|y| <= 0.2",
     "max |acc diff|"],
    [[f"W1 {speed['model']}, random init", "{:.3g}-{:.3g}".format(*speed["loss range"]),
      speed["max rel dev"], speed["max rel dev, centre"], speed["max |dacc|"]],
     [f"{near['model']}, trained {args.epochs} epochs (test acc {near['test accuracy']:.3f}), "
      f"{near['examples']} train images", "{:.3g}-{:.3g}".format(*near["loss range"]),
      near["max rel dev"], near["max rel dev, centre"], near["max |dacc|"]]])
  met_speed = speed["speedup"] >= 2.0
  met_dev = max(near["max rel dev, centre"], speed["max rel dev, centre"]) <= 1e-2
  body = (
    f"W1: {speed['model']} at random initialisation, filter-normalised directions, {g} grid "
    f"on [-1, 1]^2, {args.images} images 32x32x3, loss + accuracy, `make_metric_fn` (float32, "
    f"BatchNorm folded, oneDNN on the CPU) against `compute_dtype=\"bfloat16\"`, each at the "
    f"batch size "
    f"`choose_batch_size` picked for it from {args.batch_sizes}; {args.rounds} rounds of the "
    f"whole grid, interleaved row by row (order alternating), medians of the round totals."
    f"\n\n{table}\n\n"
    f"- bfloat16 / float32 on W1: **{speed['speedup']:.2f}x** the speed (per-round ratios "
    f"{speed['ratio range'][0]:.2f}-{speed['ratio range'][1]:.2f})\n\n"
    f"Deviation |L_bf16 - L_f32| / |L_f32| over the {g} grids (filter-normalised directions on "
    f"[-1, 1]^2; centre = the 3 x 3 points with |x|, |y| <= 0.2):\n\n{dev}\n\n"
    f"Targets: >= 2x the float32 path on W1 {'met' if met_speed else 'NOT met'} "
    f"({speed['speedup']:.2f}x); relative loss deviation <= 1e-2 near the minimum "
    f"{'met' if met_dev else 'NOT met'} ({near['max rel dev, centre']:.2g} trained, "
    f"{speed['max rel dev, centre']:.2g} W1; whole grids {near['max rel dev']:.2g} / "
    f"{speed['max rel dev']:.2g}).\n\n"
    f"Load average at the end: {'{:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())} (other "
    f"sessions share the cores: absolute times are noisy, the interleaved ratios less so). "
    f"Total benchmark time {total:.0f} s.\n\n{C.format_info(info)}")
  print(body)
  if not (args.tiny or args.no_record):
    C.append_results("bfloat16 evaluation against float32 (bench_bf16.py)", body)
  return {"speed": speed, "trained": near}


if __name__ == "__main__":
  main()
