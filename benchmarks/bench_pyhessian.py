"""Curvature side by side: landscape-jax's Lanczos and Hutchinson against PyHessian.

Workload: ResNet-20 (random init, BatchNorm statistics of one training-mode pass, as in
``bench_w1.py``), one batch of ``--batch`` synthetic 32 x 32 x 3 images, mean cross-entropy in
inference mode, the Hessian over all parameters. The same weights and batch go to PyTorch through
an ``.npz`` file; PyHessian (``pip install pyhessian``) runs in its own process
(``torch_baseline.py pyhessian``).

* Top-3 eigenvalues. PyHessian: power iteration with deflation, ``eigenvalues(top_n=3,
  tol=1e-3, maxIter=100)`` (stops when an eigenvalue's relative change between two iterations is
  below tol). landscape-jax: Lanczos (``lj.hessian_eigenvalues(top_k=3, num_steps=m)``), m = the
  first step at which every top-3 Ritz pair's residual bound ``|beta_m s_{m,i}|`` is at most
  ``tol |theta_i|`` (found from one ``lj.lanczos`` run of ``--max_steps`` steps over ``lj.hvp``
  products, whose Ritz values at each prefix are known; a Lanczos with this stopping test built in
  would stop there). The residual bound is stricter than PyHessian's relative-change test: the
  Ritz value's error is at most about residual^2 / gap.
* Trace. PyHessian: Hutchinson with Rademacher probes, ``trace(tol=1e-3, maxIter=100)`` (stops
  when the running mean moves by less than tol relative). landscape-jax:
  ``lj.hessian_trace(num_probes=n)`` with PyHessian's probe count n, in compiled chunks of
  ``--probe_chunk`` (a chunk's padding probes are counted); both with their standard error.

Times are wall seconds after compilation (landscape-jax's compile time printed separately);
HVP counts are Hessian-vector products (PyHessian's counted by wrapping its
``hessian_vector_product``).

Run: ``python benchmarks/bench_pyhessian.py`` (a few minutes on 2 cores; appends to RESULTS.md),
``--tiny`` for a smoke run (not recorded).
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
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from scipy.linalg import eigh_tridiagonal  # noqa: E402

import landscape_jax as lj  # noqa: E402


def ritz_convergence(alphas, betas, *, top_k: int, tol: float):
  """First Lanczos step m whose top-k Ritz pairs satisfy ``|beta_m s_{m,i}| <= tol |theta_i|``.

  Returns ``(m or None, top-k Ritz values at m (or at the last step))``.
  """
  alphas, betas = np.asarray(alphas, np.float64), np.asarray(betas, np.float64)
  n = alphas.size
  for m in range(top_k, n + 1):
    theta, s = eigh_tridiagonal(alphas[:m], betas[:m - 1])
    top = theta[::-1][:top_k]
    if m == n:
      return None, top
    resid = np.abs(betas[m - 1] * s[-1, ::-1][:top_k])
    if np.all(resid <= tol * np.abs(top)):
      return m, top
  return None, top


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--model", default="resnet20")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--tol", type=float, default=1e-3)
  p.add_argument("--max_iter", type=int, default=100, help="PyHessian's maxIter")
  p.add_argument("--max_steps", type=int, default=60, help="Lanczos steps of the prefix run")
  p.add_argument("--top_k", type=int, default=3)
  p.add_argument("--probe_chunk", type=int, default=10)
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cpu_convolutions", default="auto", choices=("auto", "onednn", "xla"),
                 help="lj's convolutions and their derivatives: oneDNN (auto) or XLA")
  args = p.parse_args(argv)
  if args.tiny:
    args.model, args.width, args.batch, args.image_size = "resnet8", 0.5, 16, 16
    args.max_iter, args.max_steps, args.tol, args.probe_chunk = 20, 20, 1e-2, 5
  return C.finish_args(args)


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t_start = time.perf_counter()
  data = S.synthetic_dataset(max(args.batch, 16), (args.image_size, args.image_size, 3),
                             seed=args.seed)
  model, variables, _, _ = S.setup(args.model, data, seed=args.seed, dtype=jnp.float32,
                                   width=args.width)
  data = data.subset(slice(0, args.batch))
  params, bs = variables["params"], variables["batch_stats"]
  loss_fn = lj.make_loss_fn(model, mean=data.mean, std=data.std, batch_stats=bs)
  batch = (jnp.asarray(data.images), jnp.asarray(data.labels))
  loss0 = float(loss_fn(params, batch))
  dim = lj.hessian.num_curvature_params(params)
  print(f"{args.model}: {dim} parameters, batch {args.batch}, loss {loss0:.6f}", flush=True)
  out = {"loss": loss0}

  # -- Lanczos prefix run: where a residual-bound stopping test would have stopped
  x0, unravel = ravel_pytree(params)

  @jax.jit  # weights and batch as arguments: closed over, XLA would constant-fold the model
  def run(loss_fn, params, batch, v0, k):
    def matvec(v):
      return ravel_pytree(lj.hvp(loss_fn, params, batch, unravel(v),
                                 cpu_convolutions=args.cpu_convolutions))[0]

    return lj.lanczos(matvec, v0, num_steps=args.max_steps, key=k)

  k_start, k_restart = jax.random.split(jax.random.key(args.seed))
  v0 = jax.random.normal(k_start, x0.shape, x0.dtype)
  t = time.perf_counter()
  res = jax.block_until_ready(run(loss_fn, params, batch, v0, k_restart))
  t_prefix = time.perf_counter() - t
  steps, top_prefix = ritz_convergence(res.alphas, res.betas, top_k=args.top_k, tol=args.tol)
  m = steps or args.max_steps
  print(f"Lanczos prefix run ({args.max_steps} steps, {t_prefix:.1f} s incl. compile): top-"
        f"{args.top_k} converged (residual bound <= {args.tol} |theta|) at step "
        f"{steps if steps else 'NOT within ' + str(args.max_steps)}", flush=True)

  # -- landscape-jax: hessian_eigenvalues at m steps (first call compiles), hessian_trace
  t = time.perf_counter()
  lj.hessian_eigenvalues(loss_fn, params, batch, top_k=args.top_k, num_steps=m,
                         key=jax.random.key(args.seed), cpu_convolutions=args.cpu_convolutions)
  t_first = time.perf_counter() - t
  t = time.perf_counter()
  eig = lj.hessian_eigenvalues(loss_fn, params, batch, top_k=args.top_k, num_steps=m,
                               key=jax.random.key(args.seed),
                               cpu_convolutions=args.cpu_convolutions)
  t_eig = time.perf_counter() - t
  out["lj_eig"] = {"top": [float(v) for v in eig.top], "s": t_eig, "hvps": m,
                   "compile_s": t_first - t_eig}
  print(f"lj.hessian_eigenvalues(num_steps={m}): {eig.top} in {t_eig:.2f} s "
        f"(first call {t_first:.1f} s)", flush=True)

  ph = None
  have_torch, why = C.torch_installed()
  notes = []
  if args.torch and have_torch:
    with tempfile.TemporaryDirectory() as tmp:
      arrays = {"images": data.images, "labels": data.labels.astype(np.int64),
                "mean": data.mean, "std": data.std, "depth": S.depth_of(args.model),
                "width": args.width, "num_classes": data.num_classes}
      for k, v in S.to_torch_state(params, bs).items():
        arrays[f"center/{k}"] = v
      npz = C.save_npz(os.path.join(tmp, "hessian.npz"), arrays)
      ph = C.run_torch("pyhessian", "--npz", npz, "--tol", str(args.tol), "--max_iter",
                       str(args.max_iter), "--top_n", str(args.top_k), "--seed", str(args.seed),
                       timeout=1200)
    if "error" in ph:
      print(f"PyHessian: {ph['error']}; its side is skipped.", flush=True)
      notes.append(f"PyHessian could not run: {ph['error']}.")
      ph = None
    else:
      print(f"PyHessian: {ph}", flush=True)
      notes.append(f"PyHessian {ph['pyhessian']} on torch {ph['torch']}, {ph['threads']} threads, "
                   f"own process; its loss {ph['loss']:.6f} vs JAX {loss0:.6f}.")
  elif args.torch:
    print(why, flush=True)
    notes.append(why + ".")

  n_probes = len(ph["trace_samples"]) if ph else args.max_iter
  chunk = min(args.probe_chunk, n_probes)
  tkey = jax.random.key(args.seed + 1)
  t = time.perf_counter()
  lj.hessian_trace(tkey, loss_fn, params, batch, num_probes=max(2, chunk), chunk_size=chunk,
                   cpu_convolutions=args.cpu_convolutions)
  t_trace_first = time.perf_counter() - t
  t = time.perf_counter()
  tr = lj.hessian_trace(tkey, loss_fn, params, batch, num_probes=max(2, n_probes),
                        chunk_size=chunk, cpu_convolutions=args.cpu_convolutions)
  t_trace = time.perf_counter() - t
  hvps_trace = -(-max(2, n_probes) // chunk) * chunk
  out["lj_trace"] = {"mean": tr.mean, "stderr": tr.stderr, "s": t_trace, "hvps": hvps_trace}
  print(f"lj.hessian_trace({n_probes} probes): {tr.mean:.4g} +- {tr.stderr:.2g} in "
        f"{t_trace:.2f} s (first chunk call {t_trace_first:.1f} s)", flush=True)

  rows = []
  top = np.asarray(eig.top)
  rows.append([f"top-{args.top_k} eigenvalues", f"lj.hessian_eigenvalues (Lanczos, {m} steps)",
               ", ".join(f"{v:.5g}" for v in top), m, t_eig, t_eig / m, "-"])
  if ph:
    pv = np.sort(np.asarray(ph["eigenvalues"]))[::-1]
    rel = np.abs(pv - top) / np.abs(top)
    out["ph_eig"] = {"top": pv.tolist(), "s": ph["eig_s"], "hvps": ph["eig_hvps"],
                     "max_rel_diff": float(rel.max())}
    rows.append([f"top-{args.top_k} eigenvalues", "PyHessian (power iteration, deflation)",
                 ", ".join(f"{v:.5g}" for v in pv), ph["eig_hvps"], ph["eig_s"],
                 ph["eig_s"] / ph["eig_hvps"],
                 f"max rel diff to lj {rel.max():.2g} (per eigenvalue "
                 + ", ".join(f"{r:.1g}" for r in rel) + ")"])
  rows.append(["trace", f"lj.hessian_trace ({n_probes} probes)",
               f"{tr.mean:.5g} +- {tr.stderr:.2g}", hvps_trace, t_trace, t_trace / hvps_trace,
               "-"])
  if ph:
    s = np.asarray(ph["trace_samples"])
    se = float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else float("nan")
    z = abs(s.mean() - tr.mean) / np.hypot(se, tr.stderr)
    out["ph_trace"] = {"mean": float(s.mean()), "stderr": se, "s": ph["trace_s"],
                       "hvps": ph["trace_hvps"], "z": float(z)}
    rows.append(["trace", "PyHessian (Hutchinson)", f"{s.mean():.5g} +- {se:.2g}",
                 ph["trace_hvps"], ph["trace_s"], ph["trace_s"] / ph["trace_hvps"],
                 f"difference {z:.2f} combined standard errors"])
  load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
  lines = [
    C.format_info(info), "",
    f"{args.model} (width {args.width}, random init), one batch of {args.batch} synthetic "
    f"{args.image_size}x{args.image_size}x3 images, mean cross-entropy in inference mode "
    f"(loss {loss0:.5f}), Hessian over all {dim} parameters; lj's convolutions "
    f"cpu_convolutions={args.cpu_convolutions!r} (oneDNN's need AVX-512 for these figures: "
    f"brgconv:avx512_core); tolerance {args.tol} for both "
    f"libraries (PyHessian maxIter {args.max_iter}). Lanczos steps from a residual-bound test "
    f"on one {args.max_steps}-step `lj.lanczos` run ({t_prefix:.1f} s incl. compile): "
    + (f"converged at step {steps}." if steps else
       f"NOT converged within {args.max_steps} steps (the row uses {args.max_steps}).")
    + f" lj compile: eigenvalues {out['lj_eig']['compile_s']:.1f} s, trace chunk "
    f"{t_trace_first:.1f} s (not in the times below).",
    "",
    C.markdown_table(["quantity", "method", "value", "HVPs", "s", "s/HVP", "agreement"], rows),
    "", *[f"- {n}" for n in notes],
    f"Total {time.perf_counter() - t_start:.0f} s; load average at the end {load}.",
  ]
  print("\n".join(lines[2:]), flush=True)
  if args.record:
    C.append_results(f"bench_pyhessian.py: curvature vs PyHessian ({info['date']})",
                     "\n".join(lines))
    print(f"appended to {C.RESULTS}")
  return out


if __name__ == "__main__":
  main()
