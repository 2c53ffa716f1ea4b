"""W1 at accelerator size: ResNet-20, 51 x 51 grid, 10,000 images, vmap over points.

Run by ``benchmarks/accelerator.sh`` on a machine with one GPU (it runs on any backend). Workload
as ``bench_w1.py`` but 51 x 51 points on [-1, 1]^2 and 10,000 synthetic 32 x 32 x 3 images:

* ``lj.surface_grid(engine=lj.EngineOptions(map_mode="vmap"))`` over the whole grid with the
  chunk size that ``lj.surface.auto_chunk_size`` derives from the device's free memory
  (compiled on one chunk first; the compile time is printed), everything else at
  ``make_metric_fn``'s defaults;
* the same metric with ``map_mode="map"`` on one grid row (for the ratio);
* PyTorch in its own process (``torch_baseline.py serve``) on the same device (``cuda`` when JAX
  runs on a GPU): Li et al.'s per-point loop and the tuned form (BatchNorm folded, channels-last,
  inference mode; no torch.compile), on one grid row, extrapolated to the grid; its losses are
  compared with JAX's at that row.

Default precisions are kept (JAX's default float32 matmul/convolution precision and PyTorch's
cuDNN defaults, both may use TF32 on recent GPUs); the fp32 GEMM peaks are measured the same way.
``--dry-run`` shrinks everything (ResNet-8 at half width, 16 x 16 images, a 3 x 3 grid) for a
CPU smoke run; with ``--record`` it appends a block saying it was a dry run.
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
import bench_w1 as W  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import landscape_jax as lj  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dry-run", dest="dry_run", action="store_true",
                 help="tiny sizes on any backend (smoke run)")
  p.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                 help="append to RESULTS.md (default: yes, except with --dry-run)")
  p.add_argument("--results", default=C.RESULTS, help="the results file appended to")
  p.add_argument("--model", default="resnet20")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--images", type=int, default=10000)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--grid", type=int, default=51)
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--allow_cpu", action="store_true", help="full size even without an accelerator")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.dry_run:
    args.model, args.width, args.images, args.image_size, args.grid = "resnet8", 0.5, 64, 16, 3
  if args.record is None:
    args.record = not args.dry_run
  return args


def main(argv=None):
  args = parse_args(argv)
  backend = jax.default_backend()
  if backend == "cpu" and not (args.dry_run or args.allow_cpu):
    raise SystemExit("bench_accelerator.py: JAX runs on the CPU here; this workload is sized for "
                     "an accelerator (use --dry-run for a smoke run, --allow_cpu to insist).")
  info = C.announce_machine()
  t_start = time.perf_counter()
  peak_n = 512 if args.dry_run else 4096 if backend != "cpu" else 2048
  jax_peak = C.matmul_peak(n=peak_n)
  data = S.synthetic_dataset(args.images, (args.image_size, args.image_size, 3), seed=args.seed)
  model, variables, dirs, flops = S.setup(args.model, data, seed=args.seed, dtype=jnp.float32,
                                          width=args.width)
  center, bs = variables["params"], variables["batch_stats"]
  g = np.linspace(-1, 1, args.grid)
  metric = lj.make_metric_fn(model, data, batch_stats=bs)
  chunk = lj.surface.auto_chunk_size(metric, center, dirs, num_devices=1, map_mode="vmap")
  print(f"auto chunk size (vmap): {chunk}", flush=True)
  rows, notes = [], []

  def row_of(name, seconds, points, loss=None, ref=None):
    pps = points / seconds
    gf = pps * args.images * flops / 1e9
    d = W.compare(ref, loss) if loss is not None and ref is not None else (np.nan, np.nan)
    rows.append([name, points, seconds, pps, gf, 100 * gf / best_peak[0],
                 seconds / points * args.grid ** 2, *d])
    print(f"  {name}: {points} points {seconds:.2f} s, {pps:.2f} points/s, {gf:.0f} GFLOP/s",
          flush=True)

  best_peak = [jax_peak]
  t = time.perf_counter()  # compile on one chunk (same shapes as the timed chunks)
  lj.surface_grid(metric, center, dirs, g[:chunk] if chunk <= len(g) else g, g[:1],
                  engine=lj.EngineOptions(map_mode="vmap", chunk_size=chunk, progress=False))
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  full = lj.surface_grid(metric, center, dirs, g, g,
                         engine=lj.EngineOptions(map_mode="vmap", chunk_size=chunk, progress=False))
  t_full = time.perf_counter() - t
  mid = args.grid // 2  # the middle row y = 0: the row the baselines are timed on
  ref = np.asarray(full["loss"][:, mid], np.float64)
  lj.surface_grid(metric, center, dirs, g, g[mid:mid + 1],
                  engine=lj.EngineOptions(map_mode="map", progress=False))
  t = time.perf_counter()
  row_map = lj.surface_grid(metric, center, dirs, g, g[mid:mid + 1],
                            engine=lj.EngineOptions(map_mode="map", progress=False))
  t_map = time.perf_counter() - t

  torch_rows = []
  have_torch, why = C.torch_installed()
  if args.torch and not have_torch:
    print(why, flush=True)
    notes.append(why + ".")
  elif args.torch:
    device = "cuda" if backend == "gpu" else "cpu"
    coords = lj.surface.grid_coordinates(g, g[mid:mid + 1])
    with tempfile.TemporaryDirectory() as tmp:
      npz = W.w1_npz(os.path.join(tmp, "w1.npz"), variables, dirs, data, coords,
                     depth=S.depth_of(args.model), width=args.width)
      try:
        worker = C.TorchWorker(npz, device=device, extra=(
          "--compile", "off", "--best_batch", str(min(1000, args.images)), "--peak_n",
          str(peak_n)))
      except RuntimeError as e:
        worker = None
        notes.append(f"PyTorch on {device} could not start: {e}")
        print(notes[-1], flush=True)
      if worker is not None:
        try:
          tp = worker("peak")["gflops"]
          best_peak[0] = max(jax_peak, tp)
          notes.append(f"PyTorch {worker.ready['torch']} on {device} in its own process; fp32 "
                       f"GEMM {tp:.0f} GFLOP/s (torch default matmul precision).")
          for cmd, label in (("naive", "PyTorch per-point loop (Li et al.)"),
                             ("best", "PyTorch tuned (BN folded, channels-last)")):
            out = worker(cmd)
            torch_rows.append((label, out))
        finally:
          worker.close()

  row_of(f"surface_grid vmap, chunk {chunk}, whole grid", t_full, args.grid ** 2)
  row_of("surface_grid map, one row", t_map, args.grid, row_map["loss"].reshape(-1), ref)
  for label, out in torch_rows:
    row_of(f"{label}, one row", out["seconds"], out["points"], out["loss"], ref)
  total = time.perf_counter() - t_start
  load = C.load_average()
  head = (f"DRY RUN on {backend} at shrunk sizes (a smoke run of the script, not a measurement; "
          "this script has not run on a GPU yet)" if args.dry_run else
          f"{backend} run")
  lines = [
    C.format_info(info), "", head + ".",
    f"Workload: {args.model} (width {args.width}, random init), {args.grid} x {args.grid} grid, "
    f"{args.images} synthetic {args.image_size}x{args.image_size}x3 images, loss + accuracy; "
    f"{flops / 1e6:.2f} MFLOP per image. JAX fp32 GEMM ({peak_n}^3, default precision): "
    f"{jax_peak:.0f} GFLOP/s; % peak of the best GEMM, {best_peak[0]:.0f}. surface_grid compile "
    f"(one vmap chunk): {compile_s:.1f} s.",
    "",
    C.markdown_table(["variant", "points", "s", "points/s", "GFLOP/s", "% best GEMM",
                      f"s per {args.grid}x{args.grid} grid", "max abs dloss", "max rel dloss"],
                     rows),
    "", *[f"- {n}" for n in notes],
    f"Total {total:.0f} s; load average at the end {load}.",
  ]
  C.report(lines, title="bench_accelerator.py" + (" (dry run)" if args.dry_run else ""),
           info=info, record=args.record, path=args.results)
  return {"rows": rows, "chunk": chunk, "total_s": total}


if __name__ == "__main__":
  main()
