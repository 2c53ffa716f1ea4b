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

import landscape_jax as lj  # noqa: E402

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
  args = _common.finish_args(p.parse_args())
  if args.tiny:
    args.hidden, args.batches, args.n_iters = 16, 1, 5
  info = _common.announce_machine()
  model, params, x, y = _trained_mlp(args.hidden, 50 if args.tiny else 1500)
  n = 128 * args.batches
  data = lj.make_batches((x[:n], y[:n]), batch_size=128)
  loss_fn = lj.make_loss_fn(model)
  settings = [dict(s, n_iters=args.n_iters) for s in SETTINGS]
  with tempfile.TemporaryDirectory() as tmp:
    npz = _common.save_npz(os.path.join(tmp, "mlp.npz"), {
      "w1": params["Dense_0"]["kernel"], "b1": params["Dense_0"]["bias"],
      "w2": params["Dense_1"]["kernel"], "b2": params["Dense_1"]["bias"],
      "x": x[:n].reshape(args.batches, 128, -1), "y": y[:n].reshape(args.batches, 128)})
    proc = subprocess.run([args.torch_python, os.path.join(_HERE,
                                                           "sharpness_reference_worker.py"),
                           "--npz", npz, "--reference", args.reference, "--settings",
                           json.dumps(settings)], capture_output=True, text=True, timeout=3600)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode != 0 or not lines:
    raise SystemExit(f"The reference worker failed (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")
  ref = json.loads(lines[-1])
  rows = []
  for s, r in zip(settings, ref["results"], strict=True):
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
      rows.append([name, r["value"], ours.value, best, ours.value / r["value"] - 1,
                   r["seconds"], t_ours, f"{t_same:.3g} ({k_same} steps)",
                   compile_s - t_ours])
    else:
      z = (ours.value - r["value"]) / ours.stderr
      rows.append([name, r["value"], ours.value, f"+- {ours.stderr:.2g} (z = {z:+.1f})",
                   ours.value / r["value"] - 1, r["seconds"], t_ours, "-", compile_s - t_ours])
  header = ["setting", "reference", f"ours ({args.n_iters} steps/samples)",
            "ours: 100 steps x 4 restarts / stderr", "rel. diff", "reference s", "ours s",
            "ours: time to reference value", "our compile s"]
  table = _common.markdown_table(header, rows)
  print(table)
  if args.record:
    load = os.getloadavg()[0]
    body = (f"{_common.format_info(info)}; torch {ref['torch']} ({ref['threads']} threads); "
            f"load average {load:.1f} while running (other jobs on the machine: timings noisy). "
            f"MLP 64-{args.hidden}-10 on digits, {args.batches} batches of 128, "
            f"{args.n_iters} ascent steps / samples per batch.\n\n{table}\n")
    _common.append_results("Sharpness against tml-epfl/sharpness-vs-generalization "
                           "(bench_sharpness_reference.py)", body)


if __name__ == "__main__":
  main()
