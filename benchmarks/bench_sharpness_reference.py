"""Sharpness parity and speed against tml-epfl/sharpness-vs-generalization's own code.

Workload: a one-hidden-layer MLP (``--hidden`` units, biases) trained briefly on digits, and
``--batches`` batches of 128 normalised training images; the same float32 weights and batches go
to the reference through an ``.npz`` (``sharpness_reference_worker.py``, run by
``--torch_python`` with ``--reference`` on its path: their ``sharpness.py`` is run, never copied).
For each setting both sides compute the same quantity:

* worst case ``max_{||delta / c||_p <= rho} L(w + delta) - L(w)`` per batch, averaged over the
  batches (their ``eval_APGD_sharpness``: zero init, one restart, ``n_iters`` steps of their
  momentum ascent, first step 2 rho; ours: `worst_case_sharpness` with ``restarts=1``,
  ``step_size=2``, the same number of steps). Both values are lower bounds of the same maximum
  found by different ascents, so parity means agreement within the ascents' tolerance; ours is
  also run to convergence (100 steps, 4 restarts) as the reference value of the maximum.
* average case ``E_{delta ~ N(0, rho^2 diag(c^2))} L(w + delta) - L(w)`` (their
  ``eval_average_sharpness(norm="l2")``, ``n_iters`` samples per batch; ours
  `average_sharpness` over the same batches, with its standard error): agreement within the
  Monte Carlo error.

Also, for every worst-case setting: ours with Croce & Hein's checkpoint step rule
(``Ascent(schedule="checkpoints")``, one restart, the same steps); with ``--reference_steps=N``
the reference again with N steps. A second table checks the points themselves: the worker
returns the best point their ascent found for every batch; ours is the maximiser of our ascent.
For both: the mean loss increase at the points under our loss (theirs must equal their reported
value), the constraint ``max_b ||delta_b / c||_p / rho`` (c = 1 or |w|, eta = 0, all parameters:
their constraint and ours), and for l2 the first-order optimality of the point (KKT): the
cosine between ``c * grad L(w + delta)`` and ``u = delta / c``, which is 1 at a maximiser on the
boundary (mean over batches).

Time to the same value: the reference's wall time for its ``n_iters`` steps, and ours for the
fewest steps (of 5, 10, 20, 40) whose value reaches the reference's within 0.1 %; both after
warm-up (our compile time is printed apart). Run: ``python benchmarks/bench_sharpness_reference.py
--reference=DIR --torch_python=PY`` (DIR: a checkout of the reference; PY: a Python with
PyTorch); ``--tiny`` for a smoke run (not recorded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import landscape_jax as lj  # noqa: E402
from landscape_jax.core import sharpness as sharp_lib  # noqa: E402

SETTINGS = [
  dict(kind="worst", norm="l2", adaptive=False, rho=0.1),
  dict(kind="worst", norm="l2", adaptive=True, rho=0.5),
  dict(kind="worst", norm="linf", adaptive=False, rho=0.002),
  dict(kind="worst", norm="linf", adaptive=True, rho=0.01),
  dict(kind="average", norm="l2", adaptive=False, rho=0.02),
  dict(kind="average", norm="l2", adaptive=True, rho=0.1),
]


def _trained_mlp(hidden: int, steps: int):
  train = lj.load("digits", "train")
  model = lj.get_model("mlp", num_classes=10, features=(hidden,))
  x = ((train.images.astype(np.float32) / 255.0 - train.mean) / train.std)
  x = x.reshape(len(x), -1).astype(np.float32)
  params = model.init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
  loss_fn = lj.make_loss_fn(model)
  opt = optax.sgd(0.1, momentum=0.9)
  xs, ys = jnp.asarray(x), jnp.asarray(train.labels)

  @jax.jit
  def run(p):
    def step(c, k):
      p, s = c
      idx = jax.random.permutation(k, xs.shape[0])[:64]
      u, s = opt.update(jax.grad(loss_fn)(p, (xs[idx], ys[idx])), s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(step, (p, opt.init(p)), jax.random.split(jax.random.key(1), steps))[0][0]

  return model, run(params), x, np.asarray(train.labels)


def _ours(s, loss_fn, params, data, steps, restarts=1):
  key = jax.random.key(0)
  if s["kind"] == "worst":
    return lj.worst_case_sharpness(key, loss_fn, params, data, rho=s["rho"], norm=s["norm"],
                                   adaptive=s["adaptive"],
                                   ascent=lj.Ascent(restarts=restarts, steps=steps, step_size=2.0,
                                                    patience=steps))
  return lj.average_sharpness(key, loss_fn, params, data, rho=s["rho"], adaptive=s["adaptive"],
                              num_samples=steps * data.num_examples // 128)


def _our_points(s, loss_fn, params, data, steps):
  """The maximiser (per batch) of our one-restart ascent with the settings of `_ours`."""
  c = lj.perturbation_scale(params, adaptive=s["adaptive"])
  out = []
  with sharp_lib.matmul_precision("highest"):
    for b in range(data.num_examples // 128):
      batch = jax.tree.map(lambda x, b=b: x[b], data.batches)
      out.append(sharp_lib._ascent(
        sharp_lib.as_partial(loss_fn), params, c, batch, jax.random.fold_in(jax.random.key(0), b),
        s["rho"], norm=s["norm"], restarts=1, steps=steps, patience=steps, halve_every=5,
        momentum=0.75, step_size=2.0, rtol=1e-3)[4])
  return out


def _point_checks(s, loss_fn, params, data, deltas):
  """Mean loss increase at the points, max ||delta / c||_p / rho, mean KKT cosine (l2)."""
  w = ravel_pytree(params)[0]
  c = np.abs(np.asarray(w, np.float64)) if s["adaptive"] else np.ones(w.shape)
  rises, ratios, cosines = [], [], []
  with sharp_lib.matmul_precision("highest"):
    for b, delta in enumerate(deltas):
      batch = jax.tree.map(lambda x, b=b: x[b], data.batches)
      moved = jax.tree.map(lambda a, d: a + d, params, delta)
      rises.append(float(loss_fn(moved, batch) - loss_fn(params, batch)))
      u = np.asarray(ravel_pytree(moved)[0], np.float64) - np.asarray(w, np.float64)
      u = u / c
      ratios.append((np.abs(u).max() if s["norm"] == "linf" else np.linalg.norm(u)) / s["rho"])
      g = c * np.asarray(ravel_pytree(jax.grad(loss_fn)(moved, batch))[0], np.float64)
      cosines.append(g @ u / (np.linalg.norm(g) * np.linalg.norm(u)))
  kkt = f"{np.min(cosines):.4f}-{np.max(cosines):.4f}" if s["norm"] == "l2" else "-"
  return rises, f"{np.min(ratios):.5f}-{np.max(ratios):.5f}", kkt


def _their_points(dump, i, params, batches):
  return [{"Dense_0": {"kernel": dump[f"s{i}_b{b}_w1"] - params["Dense_0"]["kernel"],
                       "bias": dump[f"s{i}_b{b}_b1"] - params["Dense_0"]["bias"]},
           "Dense_1": {"kernel": dump[f"s{i}_b{b}_w2"] - params["Dense_1"]["kernel"],
                       "bias": dump[f"s{i}_b{b}_b2"] - params["Dense_1"]["bias"]}}
          for b in range(batches)]


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def main():
  p = _common.run_parser(__doc__)
  p.add_argument("--reference", required=True,
                 help="checkout of tml-epfl/sharpness-vs-generalization (has sharpness.py)")
  p.add_argument("--torch_python", default=sys.executable, help="a Python with PyTorch")
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--batches", type=int, default=4)
  p.add_argument("--n_iters", type=int, default=20, help="ascent steps / samples per batch")
  p.add_argument("--reference_steps", type=int, default=0,
                 help="also run the reference's worst case with this many steps (0: no)")
  p.add_argument("--torch_threads", type=int, default=1,
                 help="PyTorch threads of the reference (1: fastest on a shared 2-core CPU)")
  args = _common.finish_args(p.parse_args())
  if args.tiny:
    args.hidden, args.batches, args.n_iters = 16, 1, 5
    args.reference_steps = min(args.reference_steps, 10)
  info = _common.announce_machine()
  model, params, x, y = _trained_mlp(args.hidden, 50 if args.tiny else 1500)
  n = 128 * args.batches
  data = lj.make_batches((x[:n], y[:n]), batch_size=128)
  loss_fn = lj.make_loss_fn(model)
  settings = [dict(s, n_iters=args.n_iters) for s in SETTINGS]
  extra = ([dict(s, n_iters=args.reference_steps) for s in settings if s["kind"] == "worst"]
           if args.reference_steps else [])
  with tempfile.TemporaryDirectory() as tmp:
    npz = _common.save_npz(os.path.join(tmp, "mlp.npz"), {
      "w1": params["Dense_0"]["kernel"], "b1": params["Dense_0"]["bias"],
      "w2": params["Dense_1"]["kernel"], "b2": params["Dense_1"]["bias"],
      "x": x[:n].reshape(args.batches, 128, -1), "y": y[:n].reshape(args.batches, 128)})
    proc = subprocess.run([args.torch_python, os.path.join(_HERE,
                                                           "sharpness_reference_worker.py"),
                           "--npz", npz, "--reference", args.reference, "--settings",
                           json.dumps(settings + extra), "--threads", str(args.torch_threads),
                           "--dump", os.path.join(tmp, "points.npz")],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode == 0:
      with np.load(os.path.join(tmp, "points.npz"), allow_pickle=False) as f:
        dump = {k: jnp.asarray(f[k]) for k in f.files}
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode != 0 or not lines:
    raise SystemExit(f"The reference worker failed (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")
  ref = json.loads(lines[-1])
  longer = {(r["norm"], r["adaptive"]): r["value"] for r in ref["results"][len(settings):]}
  rows, checks = [], []  # values as strings: 5 digits
  for i, (s, r) in enumerate(zip(settings, ref["results"][:len(settings)], strict=True)):
    name = f"{s['kind']} {s['norm']} {'adaptive' if s['adaptive'] else 'standard'} rho={s['rho']}"
    _, compile_s = _timed(lambda s=s: _ours(s, loss_fn, params, data, args.n_iters))
    ours, t_ours = _timed(lambda s=s: _ours(s, loss_fn, params, data, args.n_iters))
    if s["kind"] == "worst":
      best = _ours(s, loss_fn, params, data, 100, restarts=4).value
      t_same, k_same = float("nan"), "-"
      for k in (5, 10, 20, 40):
        _ours(s, loss_fn, params, data, k)  # compile
        got, t = _timed(lambda s=s, k=k: _ours(s, loss_fn, params, data, k))
        if got.value >= r["value"] * (1 - 1e-3):
          t_same, k_same = t, str(k)
          break
      cps = lj.worst_case_sharpness(
        jax.random.key(0), loss_fn, params, data, rho=s["rho"], norm=s["norm"],
        adaptive=s["adaptive"], ascent=lj.Ascent(restarts=1, steps=args.n_iters, step_size=2.0,
                                                 schedule="checkpoints")).value
      rows.append([name, f"{r['value']:.5g}",
                   f"{longer[(s['norm'], s['adaptive'])]:.5g}" if longer else "-",
                   f"{ours.value:.5g}", f"{cps:.5g}", f"{best:.5g}", ours.value / r["value"] - 1,
                   r["seconds"], t_ours,
                   f"{t_same:.3g} ({k_same} steps)", compile_s - t_ours])
      theirs_pt = _point_checks(s, loss_fn, params, data,
                                _their_points(dump, i, params, args.batches))
      ours_pt = _point_checks(s, loss_fn, params, data,
                              _our_points(s, loss_fn, params, data, args.n_iters))
      t, o = np.asarray(theirs_pt[0]), np.asarray(ours_pt[0])
      higher = f"{np.sum(t > o * (1 + 1e-4))} / {np.sum(o > t * (1 + 1e-4))} of {len(t)}"
      checks.append([name, f"{r['value']:.5g}", f"{t.mean():.5g}", t.mean() / r["value"] - 1,
                     f"{o.mean():.5g}", higher, theirs_pt[1], ours_pt[1], theirs_pt[2],
                     ours_pt[2]])
    else:
      z = (ours.value - r["value"]) / ours.stderr
      rows.append([name, f"{r['value']:.5g}", "-", f"{ours.value:.5g}", "-",
                   f"+- {ours.stderr:.2g} (z = {z:+.1f})", ours.value / r["value"] - 1,
                   r["seconds"], t_ours, "-", compile_s - t_ours])
  steps_col = f"reference ({args.reference_steps} steps)" if args.reference_steps else "-"
  header = ["setting", "reference", steps_col, f"ours ({args.n_iters} steps/samples)",
            "ours, checkpoint rule", "ours: 100 steps x 4 restarts / stderr", "rel. diff",
            "reference s", "ours s", "ours: time to reference value", "our compile s"]
  table = _common.markdown_table(header, rows)
  table += "\n\nThe points (one restart each, per batch):\n\n" + _common.markdown_table(
    ["setting", "reference value", "their points, our loss", "rel. diff", "our points, our loss",
     "batches: theirs / ours higher (1e-4)",
     "their ‖δ/c‖/ρ (min-max over batches)", "our ‖δ/c‖/ρ", "their KKT cosine (min-max)",
     "our KKT cosine"], checks)
  print(table)
  if args.record:
    load = os.getloadavg()[0]
    body = (f"{_common.format_info(info)}; torch {ref['torch']} ({ref['threads']} threads); "
            f"load average {load:.1f} while running (other jobs on the machine: timings noisy). "
            f"MLP 64-{args.hidden}-10 on digits, {args.batches} batches of 128, "
            f"{args.n_iters} ascent steps / samples per batch.\n\nCommand: `python "
            f"benchmarks/bench_sharpness_reference.py --reference=DIR --torch_python=PY "
            f"--n_iters {args.n_iters} --batches {args.batches} --reference_steps "
            f"{args.reference_steps} --torch_threads {args.torch_threads}` (DIR: a checkout of "
            f"the reference, PY: a Python with PyTorch).\n\n{table}\n")
    _common.append_results("Sharpness against tml-epfl/sharpness-vs-generalization "
                           "(bench_sharpness_reference.py)", body)


if __name__ == "__main__":
  main()
