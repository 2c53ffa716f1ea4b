"""Curve training step time relative to a plain training step (issue #8).

Plain step: `lj.training.train_step` (SGD momentum 0.9, BatchNorm in training mode, batch 128)
on ResNet-20.
Curve step: `lj.curve_training.curve_train_step` on a 3-bend Bezier curve between two ResNet-20s
(one
t ~ U(0, 1) per minibatch as Garipov et al.; phi(t) is one weighted sum over the bend axis, then
one forward/backward pass), and with 4 ts per minibatch (evaluated in turn, unrolled). Also
each step with its state buffers donated (``donate_argnums``: the update is written in place of
the old state).
Timings are the median of `--steps` steps after compiling; the batch is fixed and on the device.

Run: ``python benchmarks/bench_curve_step.py`` (about a minute on 2 CPU cores; appends to
benchmarks/RESULTS.md), ``--tiny`` for a seconds-long smoke run.
"""

from __future__ import annotations

import functools
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import _common as C  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import landscape_jax as lj  # noqa: E402
from landscape_jax.methods import curve_training, training  # noqa: E402


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--model", default="resnet20")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--num_bends", type=int, default=3)
  args = p.parse_args(argv)
  if args.tiny:
    args.model, args.width, args.batch, args.image_size, args.steps = "resnet8", 0.5, 16, 8, 3
  return C.finish_args(args)


def time_steps(step, state, steps: int):
  """Compiles (first call), then returns (compile s, median s per step, final state)."""
  t = time.perf_counter()
  state = C.block(step(state))
  first = time.perf_counter() - t
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state = C.block(step(state))
    times.append(time.perf_counter() - t)
  med = float(np.median(times))
  return first - med, med, state


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  rng = np.random.default_rng(0)
  shape = (args.batch, args.image_size, args.image_size, 3)
  images = jnp.asarray(rng.integers(0, 256, shape, dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, args.batch).astype(np.int32))
  mean, std = jnp.full((3,), 0.5), jnp.full((3,), 0.25)
  batch = (images, labels)
  model = lj.get_model(args.model, num_classes=10, width=args.width)
  tx = lj.make_optimizer(learning_rate=0.05, momentum=0.9, weight_decay=5e-4)
  key = jax.random.key(0)
  s0 = lj.create_train_state(model, jax.random.key(1), images, tx)
  s1 = lj.create_train_state(model, jax.random.key(2), images, tx)
  flops = C.model_flops_per_example(lj.evaluation.inference_apply(model),
                                    s0.variables, jnp.zeros((2, *shape[1:])))
  rows = []

  def plain_xla(s):  # the same step with XLA's convolutions and derivatives
    return lj.training.train_step(s, batch, key, model=model, tx=tx, mean=mean, std=std,
                         cpu_convolutions="xla")[0]

  def plain(donate):
    fn = jax.jit(functools.partial(training.train_step.__wrapped__, model=model, tx=tx, mean=mean,
                                   std=std, augment=False, pad=4, flip=True),
                 donate_argnums=(0,) if donate else ())
    if not donate:  # the library's own jitted step
      return lambda s: lj.training.train_step(s, batch, key, model=model, tx=tx, mean=mean,
                                              std=std)[0]
    return lambda s: fn(s, batch, key)[0]

  # Curve: Bezier between two networks; the loss uses training-mode BatchNorm (Garipov et al.).
  loss_fn = lj.make_loss_fn(model, mean=mean, std=std, batch_stats=s0.batch_stats, train=True)
  curve = lj.init_curve(s0.params, s1.params, num_bends=args.num_bends)
  ends, interior = lj.split_curve(curve)
  ctx = lj.make_optimizer(learning_rate=0.03, momentum=0.9)
  cstate = curve_training.CurveTrainState(jnp.zeros((), jnp.int32), interior, ctx.init(interior))

  def curve_step(num_ts, donate, cpu_convolutions="auto"):
    fn = jax.jit(functools.partial(curve_training.curve_train_step, optimizer=ctx, kind="bezier",
                                   weight_decay=5e-4, num_ts=num_ts,
                                   cpu_convolutions=cpu_convolutions),
                 donate_argnames=("state",) if donate else ())
    return lambda s: fn(loss_fn, state=s, ends=ends, batch=batch, key=key)[0]

  def copy(tree):
    return jax.tree.map(jnp.copy, tree)

  results = {}
  for name, step, state in [
    ("plain train_step", plain(False), s0),
    ("plain, XLA convolutions", plain_xla, s0),
    ("plain, state donated", plain(True), copy(s0)),
    (f"curve step ({args.num_bends} bends, 1 t)", curve_step(1, False), cstate),
    ("curve step, XLA convolutions", curve_step(1, False, "xla"), cstate),
    ("curve step, state donated", curve_step(1, True), copy(cstate)),
    ("curve step, 4 ts per batch", curve_step(4, False), cstate),
  ]:
    compile_s, sec, _ = time_steps(step, state, args.steps)
    results[name] = sec
    print(f"  {name:<34} {sec * 1e3:8.1f} ms/step  compile {compile_s:.1f} s", flush=True)
    rows.append([name, sec * 1e3, args.batch / sec, compile_s])
  base = results["plain train_step"]
  table = C.markdown_table(
    ["step", "ms/step", "images/s", "compile s", "x plain step time"],
    [r + [r[1] / 1e3 / base] for r in rows])
  curve_1t = results[f"curve step ({args.num_bends} bends, 1 t)"]
  ratio = curve_1t / base
  lines = [C.format_info(info), "",
           f"{args.model} (width {args.width}, {flops / 1e6:.1f} MFLOP per image forward), batch "
           f"{args.batch} of {args.image_size}x{args.image_size}x3, median of {args.steps} steps:",
           "", table, "",
           f"Curve step / plain step: {ratio:.2f}x. XLA / oneDNN convolution derivatives "
           f"(cpu_convolutions='xla' vs the default 'auto', same process): plain step "
           f"{results['plain, XLA convolutions'] / base:.2f}x, curve step "
           f"{results['curve step, XLA convolutions'] / curve_1t:.2f}x; "
           f"load average at the end {' '.join(f'{a:.2f}' for a in os.getloadavg())}."]
  print(f"curve step / plain step: {ratio:.2f}x", flush=True)
  if args.record:
    C.append_results(f"bench_curve_step.py ({info['date']})", "\n".join(lines))
    print(f"appended to {C.RESULTS}")
  return results


if __name__ == "__main__":
  main()
