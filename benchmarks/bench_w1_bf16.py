"""W1 in bfloat16 head to head: `make_metric_fn(..., compute_dtype="bfloat16")` against PyTorch's
bfloat16 autocast, with both float32 paths beside them, as fractions of the measured GEMM peaks.

Workload W1 (as ``bench_w1.py``): ResNet-20 (random init, BatchNorm statistics of one
training-mode pass), two filter-normalised directions (ignore="biasbn"), 1000 synthetic
32 x 32 x 3 images, loss and accuracy per point, timed on the 11 points of one grid row (the
per-point work is the same everywhere on the grid). Four variants, run in interleaved rounds:

1. ``lj.surface_grid`` with `make_metric_fn` at its defaults (float32, exact);
2. the same with ``compute_dtype="bfloat16"`` (oneDNN's bf16 kernels where the CPU has
   avx512_bf16 / AMX; bf16 operands, float32 accumulation, float32 logits and loss);
3. PyTorch tuned (``torch_baseline.py``'s ``best``: BatchNorm folded, channels-last,
   inference mode, its fastest batch, ``torch.compile`` kept if it measured faster);
4. the same under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (``best_bf16``: its own
   fastest batch, its own eager / ``torch.compile`` choice).

PyTorch runs in its own process (``torch_baseline.py serve --bf16``) with
``torch.set_num_threads(<cores>)``, on the same weights, directions and images (an ``.npz``
file). Every round first measures the GEMM peaks (2048^3 products): float32 and bfloat16, with
JAX (XLA's dot) and with PyTorch; the machine's peak for a dtype is the best of the run over
both. The table gives medians over rounds (min-max), GFLOP/s (analytic FLOPs of the
convolutions and matmuls), % of the fp32 and of the bf16 GEMM peak, and each variant's time
over JAX bfloat16's (per round). Losses are compared: each bf16 path with its float32 path, and
the two bf16 paths with each other (relative to max(|loss|, 1)).

Run: ``python benchmarks/bench_w1_bf16.py`` (3-6 minutes on 2 quiet cores, 12 with 5 rounds
at a load average of 4-8; appends to RESULTS.md; ``--rounds``, default 3), ``--tiny`` for a
seconds-long smoke run (not recorded).
``LANDSCAPE_JAX_TORCH_PYTHON`` names the interpreter with torch (default: this one).
"""

from __future__ import annotations

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

JF32, JBF16 = "JAX surface_grid, float32 (default)", "JAX surface_grid, compute_dtype=bfloat16"
TF32, TBF16 = "PyTorch tuned, float32", "PyTorch tuned, bf16 autocast"


def parse_args(argv=None):
  return W.finish_workload_args(W.workload_parser(__doc__).parse_args(argv))


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t_start = time.perf_counter()
  peak_n = 512 if args.tiny else 2048
  data = S.synthetic_dataset(args.images, (args.image_size, args.image_size, 3), seed=args.seed)
  model, variables, dirs, flops = S.setup(args.model, data, seed=args.seed, dtype=jnp.float32,
                                          width=args.width)
  center, bs = variables["params"], variables["batch_stats"]
  xs = np.linspace(-1, 1, args.grid)
  row = np.asarray([args.row])
  coords = lj.surface.grid_coordinates(xs, row)
  print(f"{args.model}: {flops / 1e6:.2f} MFLOP per image; timed row y={args.row} "
        f"({len(coords)} points) per round", flush=True)

  worker, notes = None, []
  have_torch, why = C.torch_installed()
  if args.torch and not have_torch:
    print(why, flush=True)
    notes.append(why + ".")
  tmp = tempfile.TemporaryDirectory()
  if args.torch and have_torch:
    npz = W.w1_npz(os.path.join(tmp.name, "w1.npz"), variables, dirs, data, coords,
                   depth=S.depth_of(args.model), width=args.width)
    worker = C.TorchWorker(npz, extra=("--bf16", "--compile", args.compile, "--best_batch",
                                       str(args.best_batch), "--peak_n", str(peak_n)))
    r = worker.ready
    print(f"PyTorch worker: {r}", flush=True)
    notes.append(f"PyTorch {r['torch']} in its own process, {r['threads']} threads, oneDNN bf16 "
                 f"supported: {r['mkldnn_bf16']}; tuned float32: BatchNorm folded, channels-last, "
                 f"inference_mode, {r['best_batch_note']}; {r['compile']}.")
    notes.append(f"PyTorch bf16 autocast (same tuned model): {r['bf16_batch_note']}; "
                 f"{r['bf16_compile']}.")

  engine = lj.EngineOptions(progress=False)
  metrics = {JF32: lj.make_metric_fn(model, data, batch_stats=bs),
             JBF16: lj.make_metric_fn(model, data, batch_stats=bs, compute_dtype="bfloat16")}
  for m in metrics.values():  # compile (the same chunk shape as the timed row)
    lj.surface_grid(m, center, dirs, xs, row, engine=engine)

  def jax_variant(metric):
    def run():
      t = time.perf_counter()
      res = lj.surface_grid(metric, center, dirs, xs, row, engine=engine)
      return {"seconds": time.perf_counter() - t, "points": len(coords),
              "loss": res["loss"].reshape(-1), "accuracy": res["accuracy"].reshape(-1)}
    return run

  variants = {k: jax_variant(m) for k, m in metrics.items()}
  if worker is not None:
    variants[TF32] = lambda: worker("best")
    variants[TBF16] = lambda: worker("best_bf16")
  runs = {k: [] for k in variants}
  peaks = {"JAX fp32": [], "JAX bf16": [], "PyTorch fp32": [], "PyTorch bf16": []}
  try:
    for _ in range(args.warmup_rounds):
      for fn in variants.values():
        fn()
    for r in range(args.rounds):
      peaks["JAX fp32"].append(C.matmul_peak(n=peak_n))
      peaks["JAX bf16"].append(C.matmul_peak(n=peak_n, dtype=jnp.bfloat16))
      if worker is not None:
        p = worker("peak")
        peaks["PyTorch fp32"].append(p["gflops"])
        peaks["PyTorch bf16"].append(p["bf16_gflops"])
      names = list(variants) if r % 2 == 0 else list(variants)[::-1]  # order alternating
      for name in names:
        out = variants[name]()
        runs[name].append(out)
        print(f"  round {r + 1}: {name:<42} {out['seconds'] / out['points']:.3f} s/point",
              flush=True)
  finally:
    if worker is not None:
      worker.close()
    tmp.cleanup()

  fp32_peak = max(max(v) for k, v in peaks.items() if v and "fp32" in k)
  bf16_peak = max(max(v) for k, v in peaks.items() if v and "bf16" in k)
  spp = {k: np.array([o["seconds"] / o["points"] for o in v]) for k, v in runs.items()}
  base = spp[JBF16]
  header = ["variant", "s/point median (min-max)", "GFLOP/s", "% fp32 GEMM peak",
            "% bf16 GEMM peak", "time / JAX bf16 (median; rounds min-max)"]
  body = []
  for k, t in spp.items():
    med = float(np.median(t))
    gf = args.images * flops / med / 1e9
    ratio = t / base
    body.append([k, C.spread(t), gf, 100 * gf / fp32_peak, 100 * gf / bf16_peak,
                 f"{med / np.median(base):.2f}x ({ratio.min():.2f}-{ratio.max():.2f})"])
  loss = {k: np.asarray(v[-1]["loss"], np.float64) for k, v in runs.items()}
  acc = {k: np.asarray(v[-1]["accuracy"], np.float64) for k, v in runs.items()}
  pairs = [(JBF16, JF32), (JF32, JF32)]
  if worker is not None:
    pairs = [(JBF16, JF32), (TBF16, TF32), (TF32, JF32), (TBF16, JBF16)]
  else:
    pairs = pairs[:1]
  agree = {}
  for a, b in pairs:
    dl, rl = W.compare(loss[b], loss[a])
    agree[(a, b)] = (dl, rl, float(np.max(np.abs(acc[a] - acc[b]))))
  agree_table = C.markdown_table(
    ["losses of", "against", "max abs dloss", "max rel dloss", "max abs dacc"],
    [[a, b, *v] for (a, b), v in agree.items()])
  speed = {"JAX bf16 / JAX f32": float(np.median(spp[JF32] / base))}
  if worker is not None:
    speed["PyTorch bf16 / PyTorch f32"] = float(np.median(spp[TF32] / spp[TBF16]))
    speed["JAX bf16 / PyTorch bf16"] = float(np.median(spp[TBF16] / base))
  lines = [
    C.format_info(info), "",
    f"Workload W1: {args.model} (width {args.width}, random init), filter-normalised "
    f"directions, {args.images} synthetic {args.image_size}x{args.image_size}x3 images, loss + "
    f"accuracy; {flops / 1e6:.2f} MFLOP per image. {args.rounds} interleaved rounds (after "
    f"{args.warmup_rounds} untimed), each on the row y={args.row} ({len(coords)} points in "
    f"[-1, 1]) after a warm-up point, variants in turn, order alternating.",
    "GEMM peaks (2048^3 products, best of 5, measured at every round; GFLOP/s, median (min-max)): "
    + ", ".join(f"{k} {C.spread(v)}" for k, v in peaks.items() if v)
    + f". The machine's peaks (best of the run): fp32 {fp32_peak:.0f}, bf16 {bf16_peak:.0f}.",
    "", C.markdown_table(header, body), "",
    "Speed-ups (medians of the per-round ratios): "
    + "; ".join(f"{k} **{v:.2f}x**" for k, v in speed.items()) + ".", "",
    f"Loss agreement at the row's {len(coords)} points (last round; relative to "
    f"max(|loss|, 1)):", "", agree_table, "",
    f"- JAX: `make_metric_fn(model, data, batch_stats=...)` at its defaults (batch 256, "
    f"BatchNorm folded, {info.get('cpu convolutions') or 'XLA'}), float32 and with "
    f"`compute_dtype=\"bfloat16\"`; `surface_grid` at its defaults.",
    *[f"- {n}" for n in notes],
    f"- Command: `python benchmarks/bench_w1_bf16.py --rounds {args.rounds}`"
    + ("" if worker is None else " (with torch: `LANDSCAPE_JAX_TORCH_PYTHON=<venv python>`)")
    + ".",
    "", C.total_line(t_start),
  ]
  C.report(lines, title="bench_w1_bf16.py: W1 in bfloat16 against PyTorch autocast",
           info=info, record=args.record)
  return {"seconds_per_point": {k: float(np.median(v)) for k, v in spp.items()},
          "agreement": agree, "speed": speed, "peaks": peaks, "fp32_peak": fp32_peak,
          "bf16_peak": bf16_peak, "backend": jax.default_backend()}


if __name__ == "__main__":
  main()
