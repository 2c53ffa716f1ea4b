"""Curvature side by side: landscape-jax's Hessian-vector products, Lanczos and Hutchinson
against PyHessian.

Workload: ResNet-20 (random init, BatchNorm statistics of one training-mode pass, as in
``bench_w1.py``), one batch of ``--batch`` synthetic 32 x 32 x 3 images, mean cross-entropy in
inference mode (lj's ``make_loss_fn`` with its default ``fold_batchnorm=True``: each
BatchNorm folded into the convolution before it, the same function and derivatives up to float32
rounding; the trace differentiates its unfolded twin; ``--no-fold_batchnorm``: BatchNorm as the
model computes it everywhere), the Hessian over all parameters. The same weights
and batch go to PyTorch through an ``.npz`` file; PyHessian (``pip install pyhessian``) runs in
its own process (``torch_baseline.py pyhessian``).

* One HVP, and where its time goes: the forward pass, the gradient, and the product computed
  four ways, timed interleaved (medians of ``--repeats`` rounds) and checked against `lj.hvp`:
  forward-over-reverse (what `lj.hvp` and the curvature routines run; in a call of its own, and
  in compiled loops of 4 and 12 products, whose difference over 8 is one more product: its
  tangent pass alone, the work each of PyHessian's products does), reverse-over-reverse,
  ``linearize=True`` (the gradient linearised once, then four products reusing its residuals,
  per product; PyHessian keeps its gradient's graph the same way), and two products vmapped
  together (``probe_batch_size=2``, per product). PyHessian's per-HVP time is its eigenvalue
  run's time over its products (it builds its gradient graph once, outside that time). Then
  ``--pair_rounds`` paired rounds, so that a drift of the machine's load hits both sides alike:
  one more product of ours (each loop timed once), then 12 of PyHessian's products in a fresh
  process of its own (``torch_baseline.py pyhessian --products``), in turn; the per-round
  ratios and their median.
* Top-3 eigenvalues. PyHessian: power iteration with deflation, ``eigenvalues(top_n=3,
  tol=1e-3, maxIter=100)`` (stops when an eigenvalue's relative change between two iterations is
  below tol). landscape-jax: Lanczos on the flat HVP operator of ``lj.hessian_eigenvalues``
  (the same start vector), stopping at the first step whose top-3 Ritz pairs satisfy the
  residual bound ``|beta_m s_{m,i}| <= tol |theta_i|`` (``lj.lanczos(tol=tol, tol_ends=(3, 0),
  num_steps=--max_steps)``; stricter than PyHessian's relative-change test: the Ritz value's
  error is at most about residual^2 / gap), with and without ``linearize=True``.
* Trace. PyHessian: Hutchinson with Rademacher probes, ``trace(tol=1e-3, maxIter=100)`` (stops
  when the running mean moves by less than tol relative). landscape-jax:
  ``lj.hessian_trace(num_probes=n)`` with PyHessian's probe count n (the same estimator and
  number of probes, so the same expected standard error), all in one compiled call (the
  library's default; ``--probe_chunk`` to split), timed on a second call; both with their
  standard error.
* Fractions of the float32 GEMM peak (``_common.matmul_peak``, measured in this run): XLA's FLOP
  count of the same computation with XLA's convolutions (oneDNN's calls are opaque to it) and
  BatchNorm unfolded (the loss's twin: the folded product's tangent pass also reads the primal
  weight gradient, which a loop computes once) over the time. A product's FLOPs:
  forward-over-reverse ``F_hvp`` (primal and tangent); a linearised product, one more product in
  a loop, and PyHessian's, which reuses its graph: ``F_hvp - F_grad`` (the tangent pass only).

Times are wall seconds after compilation (landscape-jax's compile times printed separately);
HVP counts are Hessian-vector products (PyHessian's counted by wrapping its
``hessian_vector_product``).

Run: ``python benchmarks/bench_pyhessian.py`` (about 5 minutes on 2 quiet cores; appends to
RESULTS.md; PyTorch from ``LANDSCAPE_JAX_TORCH_PYTHON``), ``--tiny`` for a smoke run (not
recorded).
"""

from __future__ import annotations

import argparse
import functools
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
from landscape_jax.backends.cpu.convolutions import canonicalize_convolutions  # noqa: E402
from landscape_jax.backends.cpu.onednn_autodiff import with_onednn_derivatives  # noqa: E402
from landscape_jax.core import hessian as hs  # noqa: E402


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


def add_workload_args(p: argparse.ArgumentParser) -> None:
  """The arguments of `workload` (``--model``, ``--width``, ``--batch``, ``--image_size``,
  ``--seed``); `tiny_workload` shrinks them for ``--tiny``."""
  p.add_argument("--model", default="resnet20")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)


def tiny_workload(args) -> None:
  """``--tiny``'s workload: ResNet-8 at width 0.5, a batch of 16 images of 16x16."""
  args.model, args.width, args.batch, args.image_size = "resnet8", 0.5, 16, 16


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  add_workload_args(p)
  p.add_argument("--fold_batchnorm", action=argparse.BooleanOptionalAction, default=True,
                 help="lj's loss with BatchNorm folded into the convolutions (make_loss_fn's "
                      "default; --no-fold_batchnorm: BatchNorm as the model computes it)")
  p.add_argument("--tol", type=float, default=1e-3)
  p.add_argument("--max_iter", type=int, default=100, help="PyHessian's maxIter")
  p.add_argument("--max_steps", type=int, default=60, help="cap on the Lanczos steps")
  p.add_argument("--repeats", type=int, default=3, help="rounds of the HVP timings")
  p.add_argument("--top_k", type=int, default=3)
  p.add_argument("--probe_chunk", type=int, default=0,
                 help="Hutchinson probes per compiled call (padding counted; 0: all, the "
                      "library's default)")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--pair_rounds", type=int, default=3,
                 help="rounds of one more product of ours, then PyHessian's products")
  p.add_argument("--cpu_convolutions", default="auto", choices=("auto", "onednn", "xla"),
                 help="lj's convolutions and their derivatives: oneDNN (auto) or XLA")
  args = p.parse_args(argv)
  if args.tiny:
    tiny_workload(args)
    args.max_iter, args.max_steps, args.tol, args.repeats = 20, 20, 1e-2, 1
    args.pair_rounds = min(args.pair_rounds, 1)
  return C.finish_args(args)


HVP = "HVP forward-over-reverse (lj.hvp)"


def loop_key(loop: int) -> str:
  return f"HVP forward-over-reverse, {loop} in a loop"


def hvp_parts(loss_fn, params, batch, *, cpu_convolutions: str, repeats: int, loop: int = 4,
              full: bool = True):
  """Times the forward pass, the gradient and one HVP computed four ways (interleaved rounds,
  medians), checks each product against `lj.hvp`, and counts XLA's FLOPs of the forward pass,
  the gradient and the forward-over-reverse product (with XLA's convolutions). ``full=False``
  (--tiny) keeps the forward pass, the gradient, one product and the loop of products."""
  onednn = hs.min_flops_for(cpu_convolutions)
  x0, unravel = ravel_pytree(params)
  v = jax.random.normal(jax.random.key(11), x0.shape, x0.dtype)
  w = jax.random.normal(jax.random.key(12), x0.shape, x0.dtype)

  def operator(p, b, linearize=False):
    return hs.flat_hvp_operator(loss_fn, p, b, None, linearize, None, onednn)

  def flat_grad():
    def lf(x, b):
      return loss_fn(unravel(x), b)
    lf = lf if onednn is None else with_onednn_derivatives(lf, min_flops=onednn)
    return canonicalize_convolutions(jax.grad(lf))

  def products(linearize, n=loop):
    def f(p, b, u):
      op = operator(p, b, linearize)
      return jax.lax.fori_loop(0, n, lambda i, x: op.matvec(x / jnp.linalg.norm(x)), u)
    return f

  def samples(quadratic):  # `loop` Hutchinson samples z^T H z (the trace's work per probe)
    def f(p, b, u):
      del u
      op = operator(p, b)
      one = op.quadratic if quadratic else (lambda z: jnp.vdot(z, op.matvec(z)))
      return jax.lax.map(lambda k: one(jax.random.rademacher(k, op.x0.shape, op.x0.dtype)),
                         jax.random.split(jax.random.key(13), loop))
    return f

  def rev_rev(p, b, u):
    g = flat_grad()
    return jax.grad(lambda y: jnp.vdot(g(y, b), u))(ravel_pytree(p)[0])

  k_rev, k_lin, k_vmap = ("HVP reverse-over-reverse",
                           f"HVP linearize=True, linearise + {loop} in a loop",
                           "HVP vmap of 2 (probe_batch_size=2)")
  k_vdot, k_quad = (f"z^T H z as vdot(z, H z), {loop} in a loop (lj.hessian_trace before)",
                    f"z^T H z forward-over-forward, {loop} in a loop (lj.hessian_trace now)")
  fns = {
    "forward": (lambda p, b, u: loss_fn(p, b)),
    "gradient": (lambda p, b, u: flat_grad()(ravel_pytree(p)[0], b)),
    HVP: (lambda p, b, u: operator(p, b).matvec(u)),
    k_rev: rev_rev,
    loop_key(loop): products(False),
    loop_key(3 * loop): products(False, 3 * loop),
    k_lin: products(True),
    k_vmap: (lambda p, b, u: jax.vmap(operator(p, b).matvec)(jnp.stack([u, w]))),
    k_vdot: samples(False),
    k_quad: samples(True),
  }
  if not full:
    fns = {k: f for k, f in fns.items() if k not in (k_rev, k_lin, k_vmap, k_vdot, k_quad)}
  jitted = {k: jax.jit(f) for k, f in fns.items()}
  out, compile_s = {}, {}
  for k, f in jitted.items():
    t = time.perf_counter()
    out[k] = jax.block_until_ready(f(params, batch, v))
    compile_s[k] = time.perf_counter() - t
    print(f"  {k}: first call {compile_s[k]:.1f} s", flush=True)
  times = {k: [] for k in jitted}
  for _ in range(repeats):
    for k, f in jitted.items():
      t = time.perf_counter()
      jax.block_until_ready(f(params, batch, v))
      times[k].append(time.perf_counter() - t)
  med = {k: float(np.median(t)) for k, t in times.items()}
  ref = np.asarray(ravel_pytree(lj.hvp(loss_fn, params, batch, unravel(v),
                                       cpu_convolutions=cpu_convolutions))[0], np.float64)

  keys = list(fns)
  diffs = {HVP: C.max_rel_diff(out[HVP], ref)}
  if full:
    diffs.update({k_rev: C.max_rel_diff(out[k_rev], ref),
                  k_lin: C.max_rel_diff(out[k_lin], out[loop_key(loop)]),
                  k_vmap: C.max_rel_diff(out[k_vmap][0], ref),
                  k_quad: C.max_rel_diff(out[k_quad], out[k_vdot])})
  # FLOPs of the unfolded loss (the loss itself where it names no twin): folded, a product's
  # tangent pass also reads the primal weight gradient, which a loop computes once but a
  # product in a call of its own computes, so F_hvp - F_grad would overstate its work
  plain = hs.forward_over_forward_loss(loss_fn)

  def plain_op(p, b):
    return hs.flat_hvp_operator(plain, p, b, None, False, None, None)

  flops = {
    "forward": C.xla_flops(lambda p, b: plain(p, b), params, batch),
    "gradient": C.xla_flops(lambda p, b: jax.grad(plain)(p, b), params, batch),
    "hvp": C.xla_flops(lambda p, b, u: plain_op(p, b).matvec(u), params, batch, v),
    "quadratic": C.xla_flops(lambda p, b, u: plain_op(p, b).quadratic(u), params, batch, v),
  }
  def one_more_product() -> float:  # one timing of each loop: `marginal_product` of one round
    t = {}
    for n in (loop, 3 * loop):
      start = time.perf_counter()
      jax.block_until_ready(jitted[loop_key(n)](params, batch, v))
      t[loop_key(n)] = time.perf_counter() - start
    return marginal_product(t, loop)

  return {"median": med, "compile": compile_s, "diffs": diffs, "flops": flops, "keys": keys,
          "loop": loop, "one_more_product": one_more_product}


def marginal_product(med: dict, loop: int) -> float:
  """Seconds of one more product in a compiled loop: ``(T(3 loop) - T(loop)) / (2 loop)``, the
  two loops' medians. The primal forward and backward passes, which XLA computes once per loop,
  cancel: what is left is the tangent pass of a product, the work of each of PyHessian's
  products (it builds its gradient's graph once, outside their time)."""
  return (med[loop_key(3 * loop)] - med[loop_key(loop)]) / (2 * loop)


def workload(args):
  """``--model`` (random init, BatchNorm statistics of one training-mode pass) and one batch of
  ``--batch`` synthetic images: ``(model, data, params, batch_stats, (images, labels))``."""
  data = S.synthetic_dataset(max(args.batch, 16), (args.image_size, args.image_size, 3),
                             seed=args.seed)
  model, variables, _, _ = S.setup(args.model, data, seed=args.seed, dtype=jnp.float32,
                                   width=args.width)
  data = data.subset(slice(0, args.batch))
  batch = (jnp.asarray(data.images), jnp.asarray(data.labels))
  return model, data, variables["params"], variables["batch_stats"], batch


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t_start = time.perf_counter()
  peak = C.matmul_peak()
  print(f"float32 GEMM peak {peak:.1f} GFLOP/s", flush=True)
  model, data, params, bs, batch = workload(args)
  loss_fn = lj.make_loss_fn(model, mean=data.mean, std=data.std, batch_stats=bs,
                            fold_batchnorm=args.fold_batchnorm)
  loss0 = float(loss_fn(params, batch))
  dim = lj.hessian.num_curvature_params(params)
  print(f"{args.model}: {dim} parameters, batch {args.batch}, loss {loss0:.6f}", flush=True)
  out = {"loss": loss0, "peak": peak}

  # -- one HVP and where its time goes
  parts = hvp_parts(loss_fn, params, batch, cpu_convolutions=args.cpu_convolutions,
                    repeats=args.repeats, full=not args.tiny)
  out["parts"] = parts
  med, keys, flops, loop = parts["median"], parts["keys"], parts["flops"], parts["loop"]
  f_hvp = flops["hvp"] or float("nan")
  f_tangent = f_hvp - (flops["gradient"] or float("nan"))
  t_hvp = med[HVP]
  print(f"one HVP {t_hvp:.3f} s; FLOPs forward {flops['forward']:.3g}, gradient "
        f"{flops['gradient']:.3g}, HVP {f_hvp:.3g} (tangent pass {f_tangent:.3g})", flush=True)

  # -- landscape-jax: top eigenvalues to the tolerance (Lanczos stopping on the residual bound)
  onednn = hs.min_flops_for(args.cpu_convolutions)

  @functools.partial(jax.jit, static_argnums=(4,))
  def top_lanczos(loss_fn, params, batch, tol, linearize):
    op = hs.flat_hvp_operator(loss_fn, params, batch, None, linearize, None, onednn)
    k_start, k_restart = jax.random.split(jax.random.key(args.seed))
    v0 = jax.random.normal(k_start, op.x0.shape, op.x0.dtype)  # as hessian_eigenvalues
    # lj.lanczos(tol=, tol_ends=) without its checks, so that tol is traced: one program
    return lj.krylov.lanczos_iteration(op.matvec, v0, args.max_steps, k_restart, tol=tol,
                                       tol_ends=(args.top_k, 0))

  def top_eigenvalues(tol, linearize):
    with lj.precision.matmul_precision("highest"):
      res = jax.block_until_ready(top_lanczos(loss_fn, params, batch, tol, linearize))
    m = int(res.steps)
    evals, _ = lj.krylov.tridiagonal_eigh(res.alphas[:m], res.betas[:m - 1])
    return evals[::-1][:args.top_k], m

  eig = {}
  lins = (False,) if args.tiny else (False, True)
  for lin in lins:
    t = time.perf_counter()  # compiles the program (every tol shares it), a few steps
    top_eigenvalues(0.9, lin)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    e = top_eigenvalues(args.tol, lin)
    t_eig = time.perf_counter() - t
    eig[lin] = (e, t_eig, t_first)
    print(f"Lanczos (tol={args.tol}, linearize={lin}): {e[0]} in {t_eig:.2f} s, {e[1]} steps "
          f"(compile call {t_first:.1f} s)", flush=True)
  e0 = eig[False][0]
  out["lj_eig"] = {"top": [float(x) for x in e0[0]], "s": eig[False][1], "hvps": e0[1],
                   "s_linearize": eig[True][1] if True in eig else None}

  ph, pairs = None, []
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
      if "error" not in ph:  # paired rounds: ours, then PyHessian's products, in turn
        for _ in range(args.pair_rounds):
          ours = parts["one_more_product"]()
          theirs = C.run_torch("pyhessian", "--npz", npz, "--products",
                               str(3 * parts["loop"]), "--seed", str(args.seed), timeout=600)
          if "error" in theirs:
            break
          pairs.append((ours, theirs["product_s"]))
    if "error" in ph:
      print(f"PyHessian: {ph['error']}; its side is skipped.", flush=True)
      notes.append(f"PyHessian could not run: {ph['error']}.")
      ph = None
    else:
      print(f"PyHessian: {ph}", flush=True)
      notes.append(f"PyHessian {ph['pyhessian']} on torch {ph['torch']}, {ph['threads']} threads, "
                   f"own process; its loss {ph['loss']:.6f} vs JAX {loss0:.6f}; its setup "
                   f"(forward and graph-keeping backward, not in its times) {ph['setup_s']:.2f} s.")
  elif args.torch:
    print(why, flush=True)
    notes.append(why + ".")

  # -- landscape-jax: Hutchinson with PyHessian's number of probes
  n_probes = max(2, len(ph["trace_samples"]) if ph else args.max_iter)
  chunk = min(args.probe_chunk or n_probes, n_probes)
  tkey = jax.random.key(args.seed + 1)
  kw = dict(chunk_size=chunk, cpu_convolutions=args.cpu_convolutions, progress=False)
  t = time.perf_counter()  # compiles the chunk (its shape: `chunk` probes) and runs it
  lj.hessian_trace(tkey, loss_fn, params, batch, num_probes=max(2, chunk), **kw)
  t_trace_first = time.perf_counter() - t
  t = time.perf_counter()
  tr = lj.hessian_trace(tkey, loss_fn, params, batch, num_probes=n_probes, **kw)
  t_trace = time.perf_counter() - t
  hvps_trace = -(-n_probes // chunk) * chunk
  out["lj_trace"] = {"mean": tr.mean, "stderr": tr.stderr, "s": t_trace, "hvps": hvps_trace}
  print(f"lj.hessian_trace({n_probes} probes): {tr.mean:.4g} +- {tr.stderr:.2g} in "
        f"{t_trace:.2f} s (first call {t_trace_first:.1f} s)", flush=True)

  def frac(n_products, seconds, per_product, once=0.0):
    return (once + n_products * per_product) / 1e9 / seconds / peak

  f_grad = flops["gradient"] or float("nan")
  t_loop = med[loop_key(loop)] / loop
  t_more = marginal_product(med, loop)
  rows = [["one HVP", "lj.hvp, a call of its own (primal and tangent passes)", "-", 1, t_hvp,
           t_hvp, frac(1, t_hvp, f_hvp), "-"],
          ["one HVP", f"lj, inside a compiled loop ({loop} products / {loop}; XLA computes the "
           "primal pass once)", "-", 1, t_loop, t_loop, frac(loop, med[loop_key(loop)], f_tangent,
                                                             f_grad) * 1.0, "-"],
          ["one HVP", f"lj, one more product in a compiled loop (({3 * loop} products - {loop}) "
           f"/ {2 * loop}: the tangent pass alone, as PyHessian's products)", "-", 1, t_more,
           t_more, frac(1, t_more, f_tangent), "-"]]
  out["hvp_s"] = {"own_call": t_hvp, "in_loop": t_loop, "marginal": t_more}
  if ph:
    t_ph = ph["eig_s"] / ph["eig_hvps"]
    out["hvp_s"]["pyhessian"] = t_ph
    rows.append(["one HVP", "PyHessian (its eigenvalue run's s / HVPs; graph built once "
                 "outside)", "-", 1, t_ph, t_ph, frac(1, t_ph, f_tangent),
                 f"lj / PyHessian time {t_hvp / t_ph:.2f} (own call), {t_loop / t_ph:.2f} "
                 f"(in a loop), {t_more / t_ph:.2f} (one more product)"])
  if pairs:
    ratios = [theirs / ours for ours, theirs in pairs]
    out["hvp_pairs"] = {"pairs": pairs, "median_speedup": float(np.median(ratios))}
    t_ours = float(np.median([o for o, _ in pairs]))
    rows.append(["one HVP", f"paired rounds ({len(pairs)}: one more product of ours, then "
                 f"{3 * loop} of PyHessian's in its own process, in turn)", "-", 1, t_ours,
                 t_ours, "-", "PyHessian / lj per round " + ", ".join(f"{r:.2f}" for r in ratios)
                 + f"; median {np.median(ratios):.2f}"])
  top = np.asarray(e0[0])
  for lin in lins:
    (vals, steps), t_e, _ = eig[lin]
    rows.append([f"top-{args.top_k} eigenvalues",
                 f"lj Lanczos (tol={args.tol} on the top {args.top_k}, linearize={lin})",
                 ", ".join(f"{x:.5g}" for x in vals), steps, t_e, t_e / steps,
                 frac(steps, t_e, f_tangent, f_grad), "-"])
  if ph:
    pv = np.sort(np.asarray(ph["eigenvalues"]))[::-1]
    rel = np.abs(pv - top) / np.abs(top)
    out["ph_eig"] = {"top": pv.tolist(), "s": ph["eig_s"], "hvps": ph["eig_hvps"],
                     "max_rel_diff": float(rel.max())}
    rows.append([f"top-{args.top_k} eigenvalues", "PyHessian (power iteration, deflation)",
                 ", ".join(f"{v:.5g}" for v in pv), ph["eig_hvps"], ph["eig_s"],
                 ph["eig_s"] / ph["eig_hvps"], frac(ph["eig_hvps"], ph["eig_s"], f_tangent),
                 f"max rel diff to lj {rel.max():.2g}; lj / PyHessian time "
                 f"{eig[False][1] / ph['eig_s']:.2f}"
                 + (f" ({eig[True][1] / ph['eig_s']:.2f} linearised)" if True in eig else "")])
  f_fwd = flops["forward"] or float("nan")
  f_quad = (flops.get("quadratic") or float("nan")) - f_fwd  # per sample, primal once
  rows.append(["trace", f"lj.hessian_trace ({n_probes} probes, {chunk} per call; each sample "
               "z^T H z forward over forward, no HVP)", f"{tr.mean:.5g} +- {tr.stderr:.2g}",
               hvps_trace, t_trace, t_trace / hvps_trace,
               frac(hvps_trace, t_trace, f_quad, f_fwd * -(-n_probes // chunk)), "-"])
  if ph:
    s = np.asarray(ph["trace_samples"])
    se = float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else float("nan")
    z = abs(s.mean() - tr.mean) / np.hypot(se, tr.stderr)
    out["ph_trace"] = {"mean": float(s.mean()), "stderr": se, "s": ph["trace_s"],
                       "hvps": ph["trace_hvps"], "z": float(z)}
    rows.append(["trace", "PyHessian (Hutchinson)", f"{s.mean():.5g} +- {se:.2g}",
                 ph["trace_hvps"], ph["trace_s"], ph["trace_s"] / ph["trace_hvps"],
                 frac(ph["trace_hvps"], ph["trace_s"], f_tangent),
                 f"difference {z:.2f} combined standard errors; lj / PyHessian time "
                 f"{t_trace / ph['trace_s']:.2f}"])
  part_rows = []
  for k in keys:
    n = (3 * loop if k == loop_key(3 * loop) else loop if "loop" in k
         else 2 if "vmap" in k else 1)
    fl = {"forward": flops["forward"], "gradient": flops["gradient"]}.get(k, f_hvp)
    if "forward-over-forward" in k:  # the primal forward once, n second-order passes
      fl = (f_fwd + n * f_quad) / n
    elif "loop" in k:  # the primal pass once (hoisted out of the loop), n tangent passes
      fl = (f_grad + n * f_tangent) / n
    part_rows.append([k, med[k], med[k] / n, med[k] / n / t_hvp, frac(1, med[k] / n, fl),
                      parts["compile"][k],
                      f"{parts['diffs'][k]:.1e}" if k in parts["diffs"] else "-"])
  lines = [
    C.format_info(info), "",
    f"{args.model} (width {args.width}, random init), one batch of {args.batch} synthetic "
    f"{args.image_size}x{args.image_size}x3 images, mean cross-entropy in inference mode "
    f"(loss {loss0:.5f}; lj's make_loss_fn fold_batchnorm={args.fold_batchnorm}), Hessian over "
    f"all {dim} parameters; lj's convolutions "
    f"cpu_convolutions={args.cpu_convolutions!r} (oneDNN's need AVX-512 for these figures: "
    f"brgconv:avx512_core); tolerance {args.tol} for both libraries (PyHessian maxIter "
    f"{args.max_iter}; lj's Lanczos capped at {args.max_steps} steps). float32 GEMM peak "
    f"{peak:.1f} GFLOP/s measured in this run; XLA's FLOPs (XLA convolutions, BatchNorm "
    f"unfolded): forward "
    f"{flops['forward']:.3g}, gradient {flops['gradient']:.3g}, forward-over-reverse HVP "
    f"{f_hvp:.3g}, its tangent pass {f_tangent:.3g} (the work of a linearised or PyHessian "
    f"product), forward-over-forward z^T H z {f_quad + f_fwd:.3g} ({f_quad:.3g} without its "
    f"primal forward). In a compiled loop (Lanczos, a chunk of Hutchinson probes) the primal pass "
    f"is loop-invariant and XLA computes it once: those rows count F_grad + n F_tangent. "
    f"lj compile (not in the times): eigenvalues {eig[False][2]:.1f} s (with a "
    f"3-step run), trace {t_trace_first:.1f} s (with one chunk of {max(2, chunk)} probes).",
    "",
    C.markdown_table(["quantity", "method", "value", "HVPs", "s", "s/HVP", "frac. of peak",
                      "agreement"], rows),
    "",
    f"Where one HVP's time goes (medians of {args.repeats} interleaved rounds; the products "
    "checked against lj.hvp, the linearised loop against the forward-over-reverse loop):",
    "",
    C.markdown_table(["computation", "s per call", "s per product", "x one HVP",
                      "frac. of peak", "first call s", "max rel diff"], part_rows),
    "", *[f"- {n}" for n in notes],
    C.total_line(t_start),
  ]
  C.report(lines, title="bench_pyhessian.py: curvature vs PyHessian", info=info,
           record=args.record)
  return out


if __name__ == "__main__":
  main()
