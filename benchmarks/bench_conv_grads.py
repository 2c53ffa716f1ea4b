"""Derivatives of the convolutions on the CPU: XLA's against oneDNN's (`with_onednn_derivatives`).

Workload: ResNet-20 (random init, BatchNorm statistics of one training-mode pass, as in
``bench_w1.py``), one batch of ``--batch`` synthetic 32 x 32 x 3 images, mean cross-entropy in
inference mode. Timed, interleaved call after call in one process (so that load from other
processes hits all alike): the gradient ``jax.grad(loss)`` and the forward-over-reverse
Hessian-vector product ``jax.jvp(jax.grad(loss), (p,), (v,))[1]``, each (a) as XLA computes it
(with its convolutions in the canonical layout, as `core.hessian` runs them), (b) with every
convolution and its derivatives on oneDNN (`backends.cpu.onednn_autodiff`). Each variant of XLA's
own options (``--xla_flags``, e.g. ``--xla_cpu_use_onednn=true``) runs in its own process, which
times (a) and (b) side by side again; the ratio (a) / (b) is the figure to compare. Also printed:
the results' largest relative difference, and the achieved GFLOP/s as a fraction of the
measured float32 GEMM peak (`_common.matmul_peak`).

Run: ``python benchmarks/bench_conv_grads.py`` (about 5 minutes on 2 cores; appends to
RESULTS.md), ``--tiny`` for a smoke run (not recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import _common as C  # noqa: E402
import bench_surface as S  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import landscape_jax as lj  # noqa: E402
from landscape_jax.backends.cpu.convolutions import canonicalize_convolutions  # noqa: E402
from landscape_jax.backends.cpu.onednn_autodiff import with_onednn_derivatives  # noqa: E402

DEFAULT_FLAGS = ("", "--xla_cpu_use_onednn=true",
                 "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true")


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--model", default="resnet20")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--xla_flags", nargs="*", default=list(DEFAULT_FLAGS),
                 help="XLA_FLAGS variants, each timed in its own process")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.tiny:
    args.model, args.width, args.batch, args.image_size, args.repeats = "resnet8", 0.5, 16, 16, 2
    args.xla_flags = [""]
  return C.finish_args(args)


def worker(args) -> dict:
  """Times (a) XLA and (b) oneDNN gradient and HVP, interleaved, in this process."""
  data = S.synthetic_dataset(max(args.batch, 16), (args.image_size, args.image_size, 3), seed=0)
  model, variables, _, _ = S.setup(args.model, data, seed=0, dtype=jnp.float32, width=args.width)
  data = data.subset(slice(0, args.batch))
  params, bs = variables["params"], variables["batch_stats"]
  loss_fn = lj.make_loss_fn(model, mean=data.mean, std=data.std, batch_stats=bs)
  batch = (jnp.asarray(data.images), jnp.asarray(data.labels))
  v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)

  def grad_of(f):
    return canonicalize_convolutions(jax.grad(f))

  fns = {}
  for name, f in (("xla", loss_fn), ("onednn", with_onednn_derivatives(loss_fn))):
    g = grad_of(f)
    fns[f"grad {name}"] = (jax.jit(g), (params, batch))
    fns[f"hvp {name}"] = (jax.jit(lambda p, b, u, g=g: jax.jvp(lambda q: g(q, b), (p,), (u,))[1]),
                          (params, batch, v))
  out, compile_s = {}, {}
  for k, (fn, a) in fns.items():
    t = time.perf_counter()
    out[k] = jax.block_until_ready(fn(*a))
    compile_s[k] = time.perf_counter() - t
  times = {k: [] for k in fns}
  for _ in range(args.repeats):
    for k, (fn, a) in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(*a))
      times[k].append(time.perf_counter() - t)

  flops = {k: C.xla_flops(fn, *a) for k, (fn, a) in fns.items() if k.endswith("xla")}
  return {"flags": os.environ.get("XLA_FLAGS", ""), "median": {k: float(np.median(t))
                                                               for k, t in times.items()},
          "min": {k: float(np.min(t)) for k, t in times.items()}, "compile": compile_s,
          "rel_diff": {"grad": C.max_rel_diff(out["grad onednn"], out["grad xla"]),
                       "hvp": C.max_rel_diff(out["hvp onednn"], out["hvp xla"])},
          "flops": flops, "load": os.getloadavg()}


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    print("RESULT " + json.dumps(worker(args)), flush=True)
    return
  info = C.announce_machine()
  t_start = time.perf_counter()
  peak = C.matmul_peak()
  print(f"float32 GEMM peak {peak:.1f} GFLOP/s", flush=True)
  fwd = [f"--model={args.model}", f"--width={args.width}", f"--batch={args.batch}",
         f"--image_size={args.image_size}", f"--repeats={args.repeats}"]
  rows, results = [], []
  for flags in args.xla_flags:
    env = dict(os.environ, XLA_FLAGS=flags)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--no-record", *fwd]
    proc = subprocess.run(cmd,
                          env=env, capture_output=True, text=True, check=False)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
      print(f"XLA_FLAGS={flags!r} failed:\n{proc.stderr[-3000:]}", flush=True)
      continue
    r = json.loads(line[0][7:])
    results.append(r)
    med = r["median"]
    for what in ("grad", "hvp"):
      x, o = med[f"{what} xla"], med[f"{what} onednn"]
      gf = (r["flops"].get(f"{what} xla") or float("nan")) / 1e9
      rows.append([flags or "(none)", what, x, o, x / o, gf / x / peak, gf / o / peak,
                   r["rel_diff"][what], " ".join(f"{a:.1f}" for a in r["load"])])
      print(f"XLA_FLAGS={flags!r} {what}: XLA {x:.3f} s, oneDNN {o:.3f} s, ratio {x / o:.2f}, "
            f"max rel diff {r['rel_diff'][what]:.1e}", flush=True)
  table = C.markdown_table(
    ["XLA_FLAGS", "product", "XLA s", "oneDNN s", "XLA / oneDNN", "XLA frac. of peak",
     "oneDNN frac. of peak", "max rel diff", "load (1, 5, 15 min)"], rows)
  print(table)
  body = (f"{C.format_info(info)}\n\n{args.model} (width {args.width}), batch {args.batch} of "
          f"{args.image_size}x{args.image_size}x3 synthetic images; medians of {args.repeats} "
          f"interleaved calls per process, each XLA_FLAGS variant in its own process; float32 "
          f"GEMM peak {peak:.1f} GFLOP/s (fractions: XLA's FLOP count of the same product / "
          f"time / peak). Needs: AVX-512 (oneDNN brgconv:avx512_core) for the oneDNN figures."
          f"\n\n{table}\n\nTotal {time.perf_counter() - t_start:.0f} s; load average at the end "
          f"{' '.join(f'{a:.2f}' for a in os.getloadavg())}.")
  if args.record and results:
    C.append_results(f"bench_conv_grads.py: convolution derivatives, XLA vs oneDNN "
                     f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", body)


if __name__ == "__main__":
  main()
