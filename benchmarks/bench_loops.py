"""Gradients inside compiled loops: XLA's own convolution layouts vs canonical ones.

Lanczos iterations, Hutchinson probes, the batches of a split and the steps of an FGE or curve
epoch all run as `lax.scan` / `lax.fori_loop` bodies. On XLA:CPU the convolutions that
differentiation creates stay in their own dimension numbers there and take a slow generic path
(jax-ml/jax#12868); `landscape_jax.backends.cpu.convolutions.canonicalize_convolutions` (used by
`landscape_jax.core.hessian` and `loop.make_epoch_fn`) computes them as transposes around a
canonical NHWC x HWIO convolution. Side by side, in one run, on the same data:

1. Hessian-vector products over a split of ``--batches`` batches (`lax.scan` over batches): the
   plain ``jvp(grad)`` in the scan, the library's `lj.hvp` over `lj.make_batches` (the product
   every Lanczos step and Hutchinson probe uses), and the same batches as a Python loop of
   jitted single-batch products (no XLA loop at all);
2. one epoch of SGD (``--batches`` steps) as `lax.scan`: the plain step, the library's
   `loop.make_epoch_fn` (used by `ensembles.train_sgd`, FGE and curve training), and a Python
   loop of jitted steps.

Prints ms per product / per step and the ratios; appends them to benchmarks/RESULTS.md.

  PYTHONPATH=. python benchmarks/bench_loops.py            # ResNet-20, batch 128, 32x32x3
  PYTHONPATH=. python benchmarks/bench_loops.py --tiny     # seconds, not recorded
"""

from __future__ import annotations

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
import optax  # noqa: E402

import landscape_jax as lj  # noqa: E402
from landscape_jax.methods import loop, schedules, training  # noqa: E402


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--model", default="resnet20")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--batches", type=int, default=2, help="batches per split / steps per epoch")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  if args.tiny:
    args.model, args.batch, args.image_size, args.batches, args.repeats = "resnet8", 16, 8, 2, 1
  return C.finish_args(args)


def _timed(fn, repeats):
  """(first call s, best of `repeats` later calls s, result); one later call if the first one
  took over 20 s (XLA's layouts in a loop: tens of seconds per ResNet-20 batch)."""
  t = time.perf_counter()
  out = C.block(fn())
  first = time.perf_counter() - t
  return first, C.best_time(fn, repeats=1 if first > 20 else repeats), out


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  rng = np.random.default_rng(0)
  n = args.batch * args.batches
  shape = (n, args.image_size, args.image_size, 3)
  data = lj.data.Dataset(images=rng.integers(0, 256, shape, dtype=np.uint8),
                         labels=rng.integers(0, 10, n).astype(np.int32), num_classes=10,
                         mean=np.full((3,), 0.5, np.float32), std=np.full((3,), 0.25, np.float32),
                         name="synthetic")
  model = lj.get_model(args.model, num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, *shape[1:])))
  params, stats = variables["params"], variables.get("batch_stats")
  split = lj.make_batches(data.arrays, batch_size=args.batch)
  v = optax.tree.random_like(jax.random.key(1), params)
  rows, results = [], {}

  # 1. Hessian-vector products over the split.
  eval_loss = lj.make_loss_fn(model, mean=data.mean, std=data.std, batch_stats=stats)

  @jax.jit
  def plain_hvp(f, p, u, full):
    def one(c, b):
      h = jax.jvp(lambda q: jax.grad(f)(q, b), (p,), (u,))[1]
      return jax.tree.map(jnp.add, c, h), None
    return jax.lax.scan(one, jax.tree.map(jnp.zeros_like, p), full)[0]

  single = jax.jit(lambda f, p, u, b: jax.jvp(lambda q: jax.grad(f)(q, b), (p,), (u,))[1])
  batches = [jax.tree.map(lambda x, i=i: x[i], split.batches) for i in range(args.batches)]

  def python_loop_hvp():
    out = [single(eval_loss, params, v, b) for b in batches]
    return jax.tree.map(lambda *xs: sum(xs), *out)

  variants = [  # (name, fn, factor that makes the result the mean over batches)
    ("HVP over the split, XLA layouts in the scan",
     lambda: plain_hvp(eval_loss, params, v, split.batches), 1 / args.batches),
    ("HVP over the split, lj.hvp (canonical)", lambda: lj.hvp(eval_loss, params, split, v), 1.0),
    ("HVP, Python loop of jitted batches", python_loop_hvp, 1 / args.batches),
  ]
  ref = None
  for name, fn, factor in variants:
    first, best, out = _timed(fn, args.repeats)
    flat = factor * np.concatenate([np.ravel(x) for x in jax.tree.leaves(out)])
    if ref is None:
      ref = flat
    err = float(np.max(np.abs(flat - ref)) / (np.max(np.abs(ref)) + 1e-30))
    if err > 1e-3:
      raise AssertionError(f"{name} differs from the first variant by {err:.1e} (relative).")
    results[name] = best / args.batches
    rows.append([name, best / args.batches * 1e3, first, err])
    print(f"  {name:<50} {best / args.batches * 1e3:9.1f} ms/batch  first call {first:.1f} s  "
          f"rel. diff {err:.1e}", flush=True)

  # 2. One SGD epoch (the loop of ensembles.train_sgd / FGE / curve training).
  train_loss = lj.make_loss_fn(model, mean=data.mean, std=data.std, batch_stats=stats,
                               train=stats is not None)
  opt = schedules.make_optimizer(learning_rate=0.01, momentum=0.9, weight_decay=5e-4)

  def step_fn(lf, st, batch, key):
    del key
    loss, grads = jax.value_and_grad(lf)(st.params, batch)
    updates, opt_state = opt.update(grads, st.opt_state, st.params)
    return st._replace(step=st.step + 1, params=optax.apply_updates(st.params, updates),
                       opt_state=opt_state), loss

  @jax.jit
  def plain_epoch(lf, st, images, labels, idx, key):
    def body(s, i):
      return step_fn(lf, s, (images[i], labels[i]), key)
    st, losses = jax.lax.scan(body, st, idx)
    return st, jnp.mean(losses)

  library_epoch = loop.make_epoch_fn(step_fn)
  jit_step = jax.jit(step_fn)
  state = training.TrainState(jnp.zeros((), jnp.int32), params, {}, opt.init(params))
  images, labels = jnp.asarray(data.images), jnp.asarray(data.labels)
  idx = jnp.arange(n).reshape(args.batches, args.batch)
  key = jax.random.key(0)
  lf = jax.tree_util.Partial(train_loss)

  def python_loop_epoch():
    st, losses = state, []
    for i in idx:
      st, loss = jit_step(lf, st, (images[i], labels[i]), key)
      losses.append(loss)
    return st, jnp.mean(jnp.stack(losses))

  epochs = [
    ("SGD epoch, XLA layouts in the scan",
     lambda: plain_epoch(lf, state, images, labels, idx, key)),
    ("SGD epoch, loop.make_epoch_fn (canonical)",
     lambda: library_epoch(lf, state, images, labels, idx, key)),
    ("SGD epoch, Python loop of jitted steps", python_loop_epoch),
  ]
  ref_params = None
  for name, fn in epochs:
    first, best, (st, _) = _timed(fn, args.repeats)
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(st.params)])
    if ref_params is None:
      ref_params = flat
    err = float(np.max(np.abs(flat - ref_params)))
    if err > 1e-4 * max(1.0, float(np.max(np.abs(ref_params)))):
      raise AssertionError(f"{name}: parameters differ from the first variant by {err:.1e}.")
    results[name] = best / args.batches
    rows.append([name, best / args.batches * 1e3, first, err])
    print(f"  {name:<50} {best / args.batches * 1e3:9.1f} ms/step   first call {first:.1f} s  "
          f"max |dparam| {err:.1e}", flush=True)

  hvp_gain = (results["HVP over the split, XLA layouts in the scan"]
              / results["HVP over the split, lj.hvp (canonical)"])
  sgd_gain = (results["SGD epoch, XLA layouts in the scan"]
              / results["SGD epoch, loop.make_epoch_fn (canonical)"])
  hvp_vs_loop = (results["HVP over the split, lj.hvp (canonical)"]
                 / results["HVP, Python loop of jitted batches"])
  sgd_vs_loop = (results["SGD epoch, loop.make_epoch_fn (canonical)"]
                 / results["SGD epoch, Python loop of jitted steps"])
  summary = (f"canonical convolutions in loops: HVP over a split {hvp_gain:.1f}x faster, SGD "
             f"epoch {sgd_gain:.1f}x faster; vs Python loops of jitted calls: "
             f"{hvp_vs_loop:.2f}x / {sgd_vs_loop:.2f}x the time")
  print(summary)
  if args.record:
    table = C.markdown_table(["variant", "ms per batch or step", "first call s",
                              "difference to the first row"], rows)
    C.append_results(
      "bench_loops: gradients inside compiled loops",
      "\n".join([C.format_info(info), "",
                 f"{args.model}, batch {args.batch} of {args.image_size}x{args.image_size}x3, "
                 f"{args.batches} batches per split / steps per epoch, best of {args.repeats}:",
                 "", table, "", summary]))
  return results


if __name__ == "__main__":
  main()
