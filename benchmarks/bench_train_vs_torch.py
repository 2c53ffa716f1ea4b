"""Training side by side: a curve epoch against Garipov et al.'s code, an SGD epoch against PyTorch.

Both halves run in their own processes on the same CPU with the same model, weights and batches
(the PyTorch side is ``torch_training_worker.py``; data, batch order and weights go through an
``.npz`` file). An "epoch" is ``--steps`` minibatches of ``--batch`` synthetic 32x32x3 images
(uniform uint8 pixels, random labels of 10 classes; 30 x 128 = 3840 images by default, not
CIFAR-10's 50000, to keep a recorded run to a few minutes), in the order of
``loop.epoch_indices(n, batch, seed, 0)``; no augmentation on either side.

* ``--part curve``: one epoch of Bezier curve training (``--num_bends`` 3: fixed ends, one free
  middle bend on the straight line at the start) of PreResNet-``--depth`` (20), SGD with momentum
  0.9 at a constant rate ``--lr`` and the L2 term ``0.5 wd ||phi(t)||^2`` (wd ``--wd``), one
  ``t ~ U(0, 1)`` per minibatch, BatchNorm in training mode. The endpoints are two PreResNets
  initialised by Garipov et al.'s ``PreResNetBase`` (their ``--garipov_repo``, exported with
  ``git archive`` at run time, see the worker's docstring) and read into ``lj``'s
  ``preresnet{depth}`` with ``lj.torch_to_flax``. Garipov et al.: their ``curves.CurveNet`` and
  ``utils.train`` (as their ``train.py`` runs them; the DataLoader holds the normalised tensors).
  PyTorch's thread count: the faster of 1 and 2 over 2 steps, measured at its start-up (1 step
  with --tiny).
  landscape-jax: ``lj.train_curve(epochs=1)`` (wall time including compilation), and the same
  epoch compiled once and run again (``loop.make_epoch_fn`` over
  ``curve_training.curve_train_step``, what ``train_curve`` runs; its mean loss is checked equal
  to ``train_curve``'s). Agreement: the first ``--agree_steps`` steps from the same weights with
  the same ts (the ts ``train_curve`` draws: ``uniform(split(fold_in(key(seed), step))[0])``),
  their cross-entropies compared step by step.
* ``--part sgd``: one epoch of plain SGD (momentum 0.9, weight decay ``--wd`` as PyTorch's SGD)
  of ResNet-``--depth`` (the zoo's ``resnet20`` and its PyTorch twin ``torch_resnet``), BatchNorm
  in training mode, from the same random initialisation. landscape-jax: a Python loop over
  ``lj.training.train_step`` (the library's jitted step; batches gathered on the device before
  timing), and the library's compiled epoch over the same step (``loop.make_epoch_fn``, one
  ``lax.scan``, as ``train_curve`` and ``train_sgd`` run theirs; its mean loss checked equal to
  the loop's; the ratio is against this one). PyTorch: a
  plain loop (channels-last, ``torch.optim.SGD``) with the fastest thread count of 1 and 2 at the
  epoch's batch, measured at its start-up together with images/s at batches 64, 128 and 256.
  Agreement: the losses of the first ``--agree_steps`` steps.

Times: ``--rounds`` alternating rounds (JAX epoch, then a fresh PyTorch process), best of each
side reported with all values; the ratio is PyTorch's best over landscape-jax's best, and the
ratios of each round's pair of epochs are given with their median (the machine's load changes
between rounds; a pair run back to back shares more of it). Each
side's GFLOP/s counts ``3 x`` the forward FLOPs per image (forward, backward-data,
backward-weights; elementwise work not counted) and is also given as a fraction of the machine's
measured fp32 GEMM peak (the highest of JAX's, at the start and at the end, and PyTorch's with
2 threads, after each of its runs: ``(2048, 2048)`` products). Under load that peak is measured
low too, so a fraction can exceed 100 %.

Run: ``python benchmarks/bench_train_vs_torch.py --garipov_repo PATH`` (PATH: a clone, or a bare
git directory, of github.com/timgaripov/dnn-mode-connectivity; default
``$LANDSCAPE_JAX_GARIPOV_REPO``; PyTorch from ``$LANDSCAPE_JAX_TORCH_PYTHON`` or this
interpreter); a few minutes on 2 cores; appends to RESULTS.md. ``--tiny``: a seconds-long smoke
run (PreResNet-8 / ResNet-8, batch 8, 3 steps; not recorded).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
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
import optax  # noqa: E402

import landscape_jax as lj  # noqa: E402
from landscape_jax.adapters.evaluation import inference_apply  # noqa: E402
from landscape_jax.methods import curve_training, loop, training  # noqa: E402

WORKER = os.path.join(_HERE, "torch_training_worker.py")


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--part", default="both", choices=("curve", "sgd", "both"))
  p.add_argument("--garipov_repo", default=os.environ.get("LANDSCAPE_JAX_GARIPOV_REPO"),
                 help="clone or bare git dir of timgaripov/dnn-mode-connectivity "
                      "(default $LANDSCAPE_JAX_GARIPOV_REPO)")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--depth", type=int, default=20)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=30, help="minibatches per epoch")
  p.add_argument("--num_bends", type=int, default=3)
  p.add_argument("--lr", type=float, default=0.03, help="curve training's learning rate")
  p.add_argument("--sgd_lr", type=float, default=0.05)
  p.add_argument("--wd", type=float, default=5e-4)
  p.add_argument("--agree_steps", type=int, default=5)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--peak_n", type=int, default=2048)
  args = p.parse_args(argv)
  if args.tiny:
    args.depth, args.batch, args.steps, args.agree_steps, args.rounds = 8, 8, 3, 2, 1
    args.peak_n = 256
  return C.finish_args(args)


def run_worker(*args: str, timeout: float = 900) -> dict:
  """``torch_training_worker.py ARGS`` in its own process; its JSON answer."""
  proc = subprocess.run([C.torch_python(), WORKER, *args], capture_output=True, text=True,
                        timeout=timeout, check=False)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  out = json.loads(lines[-1]) if lines else {}
  if proc.returncode != 0 or not lines or "error" in out:
    raise RuntimeError(f"torch_training_worker.py {args[0]} failed (exit {proc.returncode}): "
                       f"{out.get('error', '')} {proc.stderr[-2000:]}")
  return out


def count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def data_arrays(data: lj.Dataset, order) -> dict:
  return {"images": data.images, "labels": data.labels.astype(np.int64), "mean": data.mean,
          "std": data.std, "order": order, "num_classes": data.num_classes}


def rel_diffs(a, b) -> list[float]:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (np.abs(a - b) / np.abs(b)).tolist()


# ------------------------------------------------------------------------------------- curve
def curve_part(args, data, order, tmp, notes) -> dict:
  name = f"preresnet{args.depth}"
  model = lj.get_model(name, num_classes=10)
  use_torch = args.torch and args.garipov_repo
  init = {}
  if args.torch and not args.garipov_repo:
    notes.append("curve: no --garipov_repo (or $LANDSCAPE_JAX_GARIPOV_REPO): Garipov et al.'s "
                 "side skipped, endpoints from lj's initialisation.")
  if use_torch:
    init = run_worker("garipov-init", "--garipov_repo", args.garipov_repo, "--depth",
                      str(args.depth), "--seed", str(args.seed), "--out",
                      os.path.join(tmp, "ends.npz"))
    with np.load(os.path.join(tmp, "ends.npz"), allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
    ends_vars = [lj.torch_to_flax(model, {k[len(p):]: v for k, v in arrays.items()
                                          if k.startswith(p)}) for p in ("start/", "end/")]
  else:
    x0 = jnp.zeros((1, 32, 32, 3))
    ends_vars = [model.init(jax.random.key(args.seed + i), x0) for i in (0, 1)]
  start, end = (v["params"] for v in ends_vars)
  loss_fn = lj.make_loss_fn(model, mean=data.mean, std=data.std,
                            batch_stats=ends_vars[0]["batch_stats"], train=True)
  curve = lj.init_curve(start, end, num_bends=args.num_bends)
  ends, interior = lj.split_curve(curve)
  opt = optax.sgd(args.lr, momentum=0.9)
  state0 = curve_training.CurveTrainState(jnp.zeros((), jnp.int32), interior,
                                          opt.init(interior))
  inputs, targets = jnp.asarray(data.images), jnp.asarray(data.labels)
  key = jax.random.key(args.seed)

  # agreement: the first steps, with train_curve's keys (fold_in(key, step), split: the first)
  step = jax.jit(functools.partial(curve_training.curve_train_step, kind="bezier",
                                   weight_decay=args.wd), static_argnums=(1,))
  st, lj_losses, ts = state0, [], []
  for i in range(args.agree_steps):
    k_step = jax.random.split(jax.random.fold_in(key, i))[0]
    ts.append(float(jax.random.uniform(k_step, ())))
    st, loss = step(loss_fn, opt, st, ends, (inputs[order[i]], targets[order[i]]), k_step)
    lj_losses.append(float(loss))
  print(f"curve: lj losses of the first steps {lj_losses} at ts {ts}", flush=True)

  # lj.train_curve, one epoch (wall time including compilation)
  settings = lj.CurveSettings(epochs=1, batch_size=args.batch, learning_rate=args.lr,
                              momentum=0.9, weight_decay=args.wd, seed=args.seed,
                              num_bends=args.num_bends)
  t = time.perf_counter()
  _, hist = lj.train_curve(loss_fn, start, end, data, settings=settings, optimizer=opt,
                           progress=False)
  t_train_curve = time.perf_counter() - t

  # the same epoch, compiled once: the epoch function train_curve runs
  def step_fn(fn_args, s, batch, k):
    lf, e = fn_args
    return curve_training.curve_train_step(lf, opt, s, e, batch, k, kind="bezier",
                                           weight_decay=args.wd)

  epoch = loop.make_epoch_fn(step_fn)
  idx = jnp.asarray(order)
  fn_args = (loss_fn, ends)
  t = time.perf_counter()
  _, mean_loss = C.block(epoch(fn_args, state0, inputs, targets, idx, key))
  t_compile = time.perf_counter() - t
  same = abs(float(mean_loss) - hist[0]["loss"]) <= 1e-5 * abs(hist[0]["loss"])
  print(f"curve: lj.train_curve epoch {t_train_curve:.1f} s incl. compile, mean loss "
        f"{hist[0]['loss']:.6f}; compiled epoch's mean loss {float(mean_loss):.6f} "
        f"({'equal' if same else 'DIFFERENT'})", flush=True)

  jax_times, torch_out = [], []
  npz = None
  if use_torch:
    arrays_out = {**data_arrays(data, order), "num_bends": args.num_bends, "depth": args.depth,
                  "lr": args.lr, "momentum": 0.9, "wd": args.wd}
    for k, v in arrays.items():
      arrays_out[k] = v
  for r in range(args.rounds):
    t = time.perf_counter()
    C.block(epoch(fn_args, state0, inputs, targets, idx, key))
    jax_times.append(time.perf_counter() - t)
    print(f"curve round {r}: lj epoch {jax_times[-1]:.2f} s", flush=True)
    if use_torch:
      npz = C.save_npz(os.path.join(tmp, "curve.npz"),
                       {**arrays_out, "ts": np.asarray(ts if r == 0 else [], np.float64)})
      out = run_worker("garipov-curve", "--garipov_repo", args.garipov_repo, "--npz", npz,
                       "--peak_n", str(args.peak_n), "--seed", str(args.seed),
                       "--probe_steps", "1" if args.tiny else "2")
      torch_out.append(out)
      print(f"curve round {r}: Garipov et al. epoch {out['epoch_s'][0]:.2f} s", flush=True)
  flops = C.model_flops_per_example(inference_apply(model), ends_vars[0],
                                    jnp.zeros((2, 32, 32, 3)))
  res = {"model": name, "params": count(start), "flops": flops, "lj_losses": lj_losses,
         "ts": ts, "lj_epoch_s": jax_times, "train_curve_s": t_train_curve,
         "compile_first_s": t_compile, "train_curve_loss": hist[0]["loss"],
         "epoch_equal_train_curve": bool(same)}
  if torch_out:
    res.update(torch_epoch_s=[o["epoch_s"][0] for o in torch_out],
               torch_losses=torch_out[0]["agreement_losses"], torch_base_params=init["params"],
               torch_trainable=torch_out[0]["trainable_params"],
               torch_gemm_peak=max(o["gemm_peak"] for o in torch_out),
               torch_threads=[o["threads"] for o in torch_out],
               torch_by_threads=[o["probe_by_threads"] for o in torch_out],
               torch_version=torch_out[0]["torch"],
               garipov_notes=torch_out[0]["notes"],
               loss_rel_diff=rel_diffs(lj_losses, torch_out[0]["agreement_losses"]))
  return res


# --------------------------------------------------------------------------------------- sgd
def sgd_part(args, data, order, tmp) -> dict:
  name = f"resnet{args.depth}"
  model = lj.get_model(name, num_classes=10)
  variables = model.init(jax.random.key(args.seed), jnp.zeros((1, 32, 32, 3)))
  params, bs = variables["params"], variables["batch_stats"]
  tx = lj.make_optimizer(learning_rate=args.sgd_lr, momentum=0.9, weight_decay=args.wd)
  state0 = training.TrainState(jnp.zeros((), jnp.int32), params, bs, tx.init(params))
  inputs, targets = jnp.asarray(data.images), jnp.asarray(data.labels)
  mean, std = jnp.asarray(data.mean), jnp.asarray(data.std)
  key = jax.random.key(args.seed)

  batches = [(inputs[idx], targets[idx]) for idx in order]  # on the device before timing

  def run(state, n_steps):
    losses = []
    for i in range(n_steps):
      state, m = lj.training.train_step(state, batches[i], jax.random.fold_in(key, i),
                                        model=model, tx=tx, mean=mean, std=std)
      losses.append(m["loss"])
    return state, [float(v) for v in C.block(losses)]

  # the library's compiled epoch (loop.make_epoch_fn: what train_curve and train_sgd run) over
  # the same step (train_step's body, unjitted)
  def step_fn(fn_args, st, batch, k):
    del fn_args
    st, m = training.train_step.__wrapped__(st, batch, k, model=model, tx=tx, mean=mean,
                                            std=std)
    return st, m["loss"]

  epoch = loop.make_epoch_fn(step_fn)
  idx = jnp.asarray(order)

  t = time.perf_counter()
  _, lj_losses = run(state0, args.agree_steps)
  t_first = time.perf_counter() - t
  print(f"sgd: lj losses of the first steps {lj_losses} ({t_first:.1f} s incl. compile)",
        flush=True)
  t = time.perf_counter()
  _, scan_loss = C.block(epoch(None, state0, inputs, targets, idx, key))
  t_scan_first = time.perf_counter() - t
  _, step_losses = run(state0, len(order))
  same = abs(float(scan_loss) - np.mean(step_losses)) <= 1e-4 * abs(float(scan_loss))
  print(f"sgd: compiled epoch's mean loss {float(scan_loss):.6f} vs the step loop's "
        f"{np.mean(step_losses):.6f} ({'equal' if same else 'DIFFERENT'})", flush=True)
  npz = None
  if args.torch:
    npz = C.save_npz(os.path.join(tmp, "sgd.npz"), {
      **data_arrays(data, order), "depth": args.depth, "width": 1.0, "lr": args.sgd_lr,
      "momentum": 0.9, "wd": args.wd, **{f"center/{k}": v for k, v in
                                         S.to_torch_state(params, bs).items()}})
  jax_times, torch_out = [], []
  batch_opts = "4,8,16" if args.tiny else "64,128,256"
  loop_times = []
  for r in range(args.rounds):
    t = time.perf_counter()
    C.block(epoch(None, state0, inputs, targets, idx, key))
    jax_times.append(time.perf_counter() - t)
    t = time.perf_counter()
    run(state0, len(order))
    loop_times.append(time.perf_counter() - t)
    print(f"sgd round {r}: lj compiled epoch {jax_times[-1]:.2f} s, train_step loop "
          f"{loop_times[-1]:.2f} s", flush=True)
    if args.torch:
      out = run_worker("sgd", "--npz", npz, "--peak_n", str(args.peak_n), "--agree_steps",
                       str(args.agree_steps), "--batch_options", batch_opts,
                       "--probe_steps", "1" if args.tiny else "2")
      torch_out.append(out)
      print(f"sgd round {r}: PyTorch epoch {out['epoch_s'][0]:.2f} s ({out['threads']} "
            f"threads; start-up probe {out['probe']})", flush=True)
  flops = C.model_flops_per_example(inference_apply(model), variables, jnp.zeros((2, 32, 32, 3)))
  res = {"model": name, "params": count(params), "flops": flops, "lj_losses": lj_losses,
         "lj_epoch_s": jax_times, "lj_loop_s": loop_times, "lj_first_s": t_first,
         "lj_scan_first_s": t_scan_first, "epoch_equal_loop": bool(same)}
  if torch_out:
    best = min(torch_out, key=lambda o: o["epoch_s"][0])
    res.update(torch_epoch_s=[o["epoch_s"][0] for o in torch_out],
               torch_losses=torch_out[0]["agreement_losses"], torch_params=best["params"],
               torch_threads=[o["threads"] for o in torch_out], torch_probe=best["probe"],
               torch_best_probe=best["best_probe"],
               torch_gemm_peak=max(o["gemm_peak"] for o in torch_out),
               torch_version=best["torch"],
               loss_rel_diff=rel_diffs(lj_losses, torch_out[0]["agreement_losses"]))
  return res


# -------------------------------------------------------------------------------------- main
def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t_start = time.perf_counter()
  have_torch, why = C.torch_installed()
  notes = []
  if args.torch and not have_torch:
    print(why, flush=True)
    notes.append(why + ".")
    args.torch = False
  n = args.steps * args.batch
  data = S.synthetic_dataset(n, (32, 32, 3), seed=args.seed)
  order = loop.epoch_indices(n, args.batch, args.seed, 0)
  peak_jax = C.matmul_peak(n=args.peak_n)
  out = {"peak_jax": peak_jax}
  with tempfile.TemporaryDirectory() as tmp:
    if args.part in ("curve", "both"):
      out["curve"] = curve_part(args, data, order, tmp, notes)
    if args.part in ("sgd", "both"):
      out["sgd"] = sgd_part(args, data, order, tmp)
  peak_jax = max(peak_jax, C.matmul_peak(n=args.peak_n))  # at the start and at the end
  out["peak_jax"] = peak_jax
  peaks = [peak_jax] + [p[k] for p in out.values() if isinstance(p, dict)
                        for k in ("torch_gemm_peak",) if k in p]
  peak = max(peaks)
  out["peak"] = peak

  def gflops(part, seconds):
    return 3 * part["flops"] * args.steps * args.batch / seconds / 1e9

  rows, lines_extra = [], []
  ratios = {}
  for key, label, theirs in (("curve", "curve epoch", "Garipov et al. utils.train"),
                             ("sgd", "SGD epoch", "plain PyTorch loop")):
    if key not in out:
      continue
    p = out[key]
    lj_best = min(p["lj_epoch_s"])
    rows.append([label, f"landscape-jax ({p['model']}, compiled epoch)",
                 C.spread(p["lj_epoch_s"]), lj_best, args.steps * args.batch / lj_best,
                 gflops(p, lj_best), f"{gflops(p, lj_best) / peak:.0%}"])
    if "lj_loop_s" in p:
      b = min(p["lj_loop_s"])
      rows.append([label, "landscape-jax, Python loop of lj.training.train_step",
                   C.spread(p["lj_loop_s"]), b, args.steps * args.batch / b, gflops(p, b),
                   f"{gflops(p, b) / peak:.0%}"])
    if "torch_epoch_s" in p:
      t_best = min(p["torch_epoch_s"])
      ratios[key] = t_best / lj_best
      rows.append([label, theirs, C.spread(p["torch_epoch_s"]), t_best,
                   args.steps * args.batch / t_best, gflops(p, t_best),
                   f"{gflops(p, t_best) / peak:.0%}"])
      diffs = p["loss_rel_diff"]
      paired = [t / j for j, t in zip(p["lj_epoch_s"], p["torch_epoch_s"], strict=True)]
      lines_extra.append(
        f"- {label}: PyTorch time / landscape-jax time = **{ratios[key]:.2f}x** (best epochs); "
        f"round by round (each JAX epoch against the PyTorch epoch run right after it) "
        + ", ".join(f"{r:.2f}" for r in paired) + f", median {np.median(paired):.2f}x. "
        f"Losses of the first {len(diffs)} steps from the same weights and batches: lj "
        + ", ".join(f"{v:.5f}" for v in p["lj_losses"]) + "; theirs "
        + ", ".join(f"{v:.5f}" for v in p["torch_losses"])
        + f" (max relative difference {max(diffs):.1e}).")
  c, s = out.get("curve"), out.get("sgd")
  if c:
    lines_extra.append(
      f"- curve: {c['model']}, {c['params']} parameters per network"
      + (f" (their PreResNetBase: {c['torch_base_params']}; their CurveNet trains "
         f"{c['torch_trainable']}: the middle bend)"
         if "torch_trainable" in c else "")
      + f", {c['flops'] / 1e6:.1f} MFLOP per image forward; ts of the agreement steps "
      + ", ".join(f"{t:.3f}" for t in c["ts"])
      + f". lj.train_curve(epochs=1) took {c['train_curve_s']:.1f} s including compilation "
      f"(first call of the compiled epoch {c['compile_first_s']:.1f} s); its mean loss "
      f"{c['train_curve_loss']:.5f} is "
      + ("equal to" if c["epoch_equal_train_curve"] else "DIFFERENT from")
      + " the timed epoch's."
      + (f" Their code: {'; '.join(c['garipov_notes'])}; torch {c['torch_version']}; "
         "start-up probe (2 steps after a warm-up) by thread count, per round: " + "; ".join(
           ", ".join(f"{k} threads {v:.2f} s" for k, v in r.items())
           for r in c["torch_by_threads"]) + "." if "garipov_notes" in c else ""))
  if s:
    lines_extra.append(
      f"- SGD: {s['model']}, {s['params']} parameters"
      + (f" (PyTorch twin {s['torch_params']})" if "torch_params" in s else "")
      + f", {s['flops'] / 1e6:.1f} MFLOP per image forward, lr {args.sgd_lr}, wd {args.wd}; "
      f"lj's first {args.agree_steps} steps incl. compilation {s['lj_first_s']:.1f} s, first "
      f"call of the compiled epoch {s['lj_scan_first_s']:.1f} s; its mean loss is "
      + ("equal to" if s["epoch_equal_loop"] else "DIFFERENT from")
      + " the step loop's (1e-4 relative); the ratio above is PyTorch's against the compiled "
      "epoch."
      + (f" PyTorch {s['torch_version']}: threads chosen per round {s['torch_threads']}; "
         f"start-up images/s (threads/batch): "
         + ", ".join(f"{k}: {v:.0f}" for k, v in s["torch_probe"].items())
         + f" (fastest {s['torch_best_probe']})." if "torch_probe" in s else ""))
  lines = [
    C.format_info(info), "",
    f"One epoch = {args.steps} steps of batch {args.batch} (synthetic 32x32x3 uint8 images, "
    f"10 random labels; the same order on both sides, no augmentation); {args.rounds} "
    f"alternating rounds, own processes. fp32 GEMM peak: JAX {peak_jax:.0f} GFLOP/s"
    + "".join(f", PyTorch ({k}) {out[k]['torch_gemm_peak']:.0f}" for k in ("curve", "sgd")
              if k in out and "torch_gemm_peak" in out[k])
    + f"; GFLOP/s = 3 x forward FLOPs x images/s, % of the highest peak ({peak:.0f}).",
    "",
    C.markdown_table(["workload", "code", "epoch s median (min-max)", "best s", "images/s",
                      "GFLOP/s", "% peak"], rows),
    "", *lines_extra, *[f"- {n_}" for n_ in notes],
    C.total_line(t_start, " (2 shared cores: other processes ran meanwhile, so the times are "
                 "noisy; the ratios come from alternating rounds)"),
  ]
  out["ratios"] = ratios
  C.report(lines, title="bench_train_vs_torch.py: curve epoch vs Garipov et al., SGD epoch "
           "vs PyTorch", info=info, record=args.record)
  return out


if __name__ == "__main__":
  main()
