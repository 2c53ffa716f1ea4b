"""W1 head to head: JAX's surface_grid and per-point loop against PyTorch in its own process.

Workload W1: ResNet-20 (``landscape_jax.models``, random init, BatchNorm statistics of one
training-mode pass), two filter-normalised directions (ignore="biasbn"), an 11 x 11 grid on
[-1, 1]^2, 1000 synthetic 32 x 32 x 3 images, loss and accuracy per point. Four variants, run in
interleaved rounds on the same grid row (the per-point work is the same everywhere on the grid):

1. ``lj.surface_grid`` with everything at its default (``make_metric_fn(model, data,
   batch_stats=...)``, default batch size, map mode and chunk size);
2. the JAX per-point loop: weights assigned with ``jax.tree.map`` and a jitted whole-split
   evaluation per point (batches of 128);
3. PyTorch, Li et al.'s reference strategy (``torch_baseline.py``'s ``naive``);
4. PyTorch as a user would write it for speed (``torch_baseline.py``'s ``best``: BatchNorm folded,
   channels-last, inference mode, ``torch.compile`` if it measured faster).

PyTorch runs in a separate process (``torch_baseline.py serve``; same weights, directions and
images through an ``.npz`` file) with ``torch.set_num_threads(<cores>)``. Each round measures the
fp32 GEMM peak of JAX and of PyTorch first; the table gives medians over rounds with the min-max
spread, GFLOP/s (analytic FLOPs of the convolutions and matmuls), % of the best GEMM of the run
and % of the CPU's theoretical fp32 FMA peak (assumptions printed). Both PyTorch forms' losses
are compared with JAX's (max abs and relative difference).

Run: ``python benchmarks/bench_w1.py`` (a few minutes on 2 cores; appends to RESULTS.md),
``--tiny`` for a seconds-long smoke run (not recorded).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import _common as C  # noqa: E402
import bench_surface as S  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import landscape_jax as lj  # noqa: E402


def w1_npz(path, variables, dirs, data, coords, *, depth: int, width: float) -> str:
  """Weights (``center/``), directions (``d1/``, ``d2/``), data and coordinates for PyTorch."""
  arrays = {"images": data.images, "labels": data.labels.astype(np.int64), "mean": data.mean,
            "std": data.std, "coords": np.asarray(coords, np.float64), "depth": depth,
            "width": width, "num_classes": data.num_classes}
  for k, v in S.to_torch_state(variables["params"], variables["batch_stats"]).items():
    arrays[f"center/{k}"] = v
  for name, d in zip(("d1", "d2"), dirs, strict=True):
    for k, v in S.to_torch_state(d).items():
      arrays[f"{name}/{k}"] = v
  return C.save_npz(path, arrays)


def compare(ref: np.ndarray, other) -> tuple[float, float]:
  """Max abs and max relative (to max(|ref|, 1)) difference of two loss vectors."""
  other = np.asarray(other, np.float64)
  d = np.abs(ref - other)
  return float(d.max()), float(np.max(d / np.maximum(np.abs(ref), 1.0)))


def workload_parser(doc: str):
  """The W1 workload's flags (model, data, grid row, rounds, PyTorch's tuned form), shared by
  this script and ``bench_w1_bf16.py``."""
  p = C.run_parser(doc)
  p.add_argument("--model", default="resnet20")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--images", type=int, default=1000)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--grid", type=int, default=11, help="points of the timed row")
  p.add_argument("--row", type=float, default=0.0, help="y of the grid row timed in each round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--warmup_rounds", type=int, default=1, help="untimed rounds first")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                 help="torch.compile in PyTorch's tuned forms (auto: keep if faster)")
  p.add_argument("--best_batch", type=int, default=0,
                 help="batch of PyTorch's tuned forms (0: each picks its fastest)")
  p.add_argument("--seed", type=int, default=0)
  return p


def finish_workload_args(args):
  """``--tiny`` sizes of the workload, then `_common.finish_args`."""
  if args.tiny:
    args.model, args.width, args.images, args.image_size = "resnet8", 0.5, 48, 16
    args.grid, args.rounds, args.compile, args.best_batch = 3, 2, "off", 32
    args.warmup_rounds = 0
  return C.finish_args(args)


def parse_args(argv=None):
  p = workload_parser(__doc__)
  p.add_argument("--points", type=int, default=0,
                 help="time only the row's first k points per round (0: the whole row)")
  return finish_workload_args(p.parse_args(argv))


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t_start = time.perf_counter()
  theo, theo_note = C.theoretical_fp32_peak()
  print(f"theoretical fp32 peak: {theo_note}", flush=True)
  peak_n = 512 if args.tiny else 2048

  data = S.synthetic_dataset(args.images, (args.image_size, args.image_size, 3), seed=args.seed)
  model, variables, dirs, flops = S.setup(args.model, data, seed=args.seed, dtype=jnp.float32,
                                          width=args.width)
  center, bs = variables["params"], variables["batch_stats"]
  g = np.linspace(-1, 1, args.grid)
  row = np.asarray([args.row])
  coords = lj.surface.grid_coordinates(g, row)[: args.points or None]
  print(f"{args.model}: {flops / 1e6:.2f} MFLOP per image; timed row y={args.row} "
        f"({len(coords)} points) per round", flush=True)

  worker, notes = None, []
  have_torch, why = C.torch_installed()
  if args.torch and not have_torch:
    print(why, flush=True)
    notes.append(why + ".")
  tmp = tempfile.TemporaryDirectory()
  if args.torch and have_torch:
    npz = w1_npz(os.path.join(tmp.name, "w1.npz"), variables, dirs, data, coords,
                 depth=S.depth_of(args.model), width=args.width)
    extra = ("--compile", args.compile, "--best_batch", str(args.best_batch), "--peak_n",
             str(peak_n))
    worker = C.TorchWorker(npz, extra=extra)
    print(f"PyTorch worker: {worker.ready}", flush=True)
    notes.append(f"PyTorch {worker.ready['torch']} in its own process, "
                 f"{worker.ready['threads']} threads; best form: BatchNorm folded, channels-last, "
                 f"inference_mode, {worker.ready['best_batch_note']}; "
                 f"{worker.ready['compile']}.")

  metric = lj.make_metric_fn(model, data, batch_stats=bs)  # everything at its default
  xs = g[: len(coords)]  # the timed points: (xs[i], row)
  lj.surface_grid(metric, center, dirs, xs, row,
                  engine=lj.EngineOptions(progress=False))  # compile (same chunk shape)

  def jax_default():
    t = time.perf_counter()
    res = lj.surface_grid(metric, center, dirs, xs, row, engine=lj.EngineOptions(progress=False))
    return {"seconds": time.perf_counter() - t, "points": len(coords),
            "loss": res["loss"].reshape(-1), "accuracy": res["accuracy"].reshape(-1)}

  def jax_loop():
    return S.run_jax_reference(model, variables, dirs, data, coords)

  variants = {"JAX surface_grid (defaults)": jax_default, "JAX per-point loop": jax_loop}
  if worker is not None:
    variants["PyTorch naive (Li et al. loop)"] = lambda: worker("naive")
    variants["PyTorch best"] = lambda: worker("best")
  runs = {k: [] for k in variants}
  peaks = {"JAX": [], "PyTorch": []}
  try:
    for _ in range(args.warmup_rounds):  # first-call costs (allocators, caches), not recorded
      for fn in variants.values():
        fn()
    for r in range(args.rounds):
      peaks["JAX"].append(C.matmul_peak(n=peak_n))
      if worker is not None:
        peaks["PyTorch"].append(worker("peak")["gflops"])
      for name, fn in variants.items():
        out = fn()
        runs[name].append(out)
        print(f"  round {r + 1}: {name:<32} {out['seconds'] / out['points']:.3f} s/point",
              flush=True)
  finally:
    if worker is not None:
      worker.close()
    tmp.cleanup()

  best_gemm = max(max(v) for v in peaks.values() if v)
  ref = np.asarray(runs["JAX surface_grid (defaults)"][0]["loss"], np.float64)
  spp = {k: np.array([o["seconds"] / o["points"] for o in v]) for k, v in runs.items()}
  base = spp["JAX surface_grid (defaults)"]
  header = ["variant", "s/point median (min-max)", "s per 121-point grid", "GFLOP/s",
            "% best GEMM", "% theoretical", "JAX default faster by (median; rounds min-max)",
            "max abs dloss", "max rel dloss", "max abs dacc"]
  body, checks = [], {}
  for k, t in spp.items():
    med = float(np.median(t))
    gf = args.images * flops / med / 1e9
    dl, rl = compare(ref, runs[k][-1]["loss"])
    da = float(np.max(np.abs(np.asarray(runs[k][-1]["accuracy"], np.float64)
                             - np.asarray(runs["JAX surface_grid (defaults)"][0]["accuracy"]))))
    checks[k] = (dl, rl)
    ratio = t / base
    body.append([k, C.spread(t), med * args.grid ** 2, gf, 100 * gf / best_gemm,
                 100 * gf / theo if theo else float("nan"),
                 f"{np.median(t) / np.median(base):.2f}x ({ratio.min():.2f}-{ratio.max():.2f})",
                 dl, rl, da])
    print(f"{k}: losses vs JAX default: max abs diff {dl:.3g}, max rel diff {rl:.3g}", flush=True)
  lines = [
    C.format_info(info), "",
    f"Workload W1: {args.model} (width {args.width}, random init), {args.grid} x {args.grid} "
    f"grid on [-1, 1]^2, {args.images} synthetic {args.image_size}x{args.image_size}x3 images, "
    f"loss + accuracy; {flops / 1e6:.2f} MFLOP per image. {args.rounds} interleaved rounds, each "
    f"on the row y={args.row} ({len(coords)} points) after a warm-up point, variants in turn.",
    f"fp32 GEMM peak (2048^3 products, best of 5, measured at every round): JAX "
    f"{C.spread(peaks['JAX'])}"
    + (f", PyTorch {C.spread(peaks['PyTorch'])}" if peaks["PyTorch"] else "")
    + f" GFLOP/s; best of the run {best_gemm:.0f} GFLOP/s.",
    f"Theoretical fp32 peak: {theo_note}.", "",
    C.markdown_table(header, body), "",
    *[f"- {n}" for n in notes],
    f"- Losses compared at the row's {len(coords)} points with the first JAX default round.",
    "", C.total_line(t_start),
  ]
  C.report(lines, title="bench_w1.py: W1 head to head", info=info, record=args.record)
  return {"seconds_per_point": {k: float(np.median(v)) for k, v in spp.items()},
          "checks": checks, "peaks": peaks, "theoretical": theo}


if __name__ == "__main__":
  main()
