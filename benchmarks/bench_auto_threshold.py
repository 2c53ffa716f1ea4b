"""Where ``cpu_convolutions="auto"`` should stop sending convolutions to oneDNN (its FLOPs floor).

``"auto"`` gives a convolution and its derivatives to oneDNN when it has at least
`onednn_autodiff.AUTO_MIN_FLOPS` FLOPs (2 N OH OW KH KW C O); smaller ones stay XLA's, whose
per-call overhead is lower. This times, for several floors, the two programs that the floor
decides: a training step (`training.train_step`'s body: BatchNorm in training mode, SGD with
momentum and weight decay) and a loop of four Hessian-vector products (`core.hessian`'s flat
operator, as Lanczos and Hutchinson run it), on two workloads at the two ends: ResNet-20 at batch
128 of 32x32 images (3x3 convolutions of 1.2-6e8 FLOPs, its two 1x1 stride-2 shortcuts 3.4e7) and
a ResNet-8 at half width, batch 16 of 16x16 images (all below 5e6). Every floor is compiled
once, then the floors are called in turn for ``--rounds`` rounds (medians); the results of each
floor are checked against XLA's.

Run: ``python benchmarks/bench_auto_threshold.py`` (a few minutes; appends to RESULTS.md),
``--tiny`` for a smoke run (not recorded).
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
from landscape_jax.backends.cpu import onednn_autodiff as ad  # noqa: E402
from landscape_jax.core import hessian as hs  # noqa: E402
from landscape_jax.methods import training  # noqa: E402

WORKLOADS = {  # name: (model, overrides, batch, image size)
  "resnet20, batch 128 of 32x32": ("resnet20", {}, 128, 32),
  "resnet8 (width 0.5), batch 16 of 16x16": ("resnet8", {"width": 0.5}, 16, 16),
}
FLOORS = {"0 (all oneDNN)": 0.0, "2e7": 2e7, "5e7": 5e7, "none (all XLA)": None}


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--products", type=int, default=4, help="HVPs per compiled loop")
  args = p.parse_args(argv)
  if args.tiny:
    args.rounds, args.products = 1, 2
  return C.finish_args(args)


def conv_flops(fn, *args) -> list[float]:
  """FLOPs of every convolution in ``fn``'s jaxpr (before any rewriting), in order."""
  eqns = jax.make_jaxpr(fn)(*args).jaxpr.eqns
  return [ad._flops(e) for e in eqns if e.primitive.name == "conv_general_dilated"]


def programs(name, overrides, batch, size, *, products):
  """Compiled training step and HVP loop for every floor, and their arguments."""
  model = lj.get_model(name, num_classes=10, **overrides)
  images = jax.random.randint(jax.random.key(0), (batch, size, size, 3), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(batch) % 10
  tx = lj.make_optimizer(learning_rate=0.05, momentum=0.9, weight_decay=5e-4)
  state = training.create_train_state(model, jax.random.key(1), images, tx)
  norm = (jnp.full(3, 120.0), jnp.full(3, 60.0))
  x = (images.astype(jnp.float32) - 120.0) / 60.0
  loss_fn = lj.make_loss_fn(model, batch_stats=state.batch_stats)
  v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), state.params)
  flops = conv_flops(lambda p: model.apply({"params": p, "batch_stats": state.batch_stats}, x,
                                           train=False), state.params)

  def hvp_loop(params, data, v0, onednn):
    op = hs.flat_hvp_operator(loss_fn, params, data, None, False, None, onednn)
    u = op.ravel(v0)
    return jax.lax.fori_loop(0, products, lambda i, u: op.matvec(u / jnp.linalg.norm(u)), u)

  out = {}
  for label, floor in FLOORS.items():
    conv = "xla" if floor is None else "onednn" if floor == 0 else "auto"
    old, ad.AUTO_MIN_FLOPS = ad.AUTO_MIN_FLOPS, (floor or 0.0)
    try:
      step = jax.jit(functools.partial(
        training._train_step, model=model, tx=tx, loss=lj.CROSS_ENTROPY, norm=norm,
        augment=False, pad=4, flip=True, cpu_convolutions=conv))
      step = step.lower(state, (images, labels), jax.random.key(3)).compile()
      hvp = jax.jit(functools.partial(hvp_loop, onednn=ad.min_flops_for(conv)))
      hvp = hvp.lower(state.params, (x, labels), v).compile()
    finally:
      ad.AUTO_MIN_FLOPS = old
    out[label] = {"step": functools.partial(step, state, (images, labels), jax.random.key(3)),
                  "hvp": functools.partial(hvp, state.params, (x, labels), v)}
  return out, flops


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t_start = time.perf_counter()
  rows, notes = [], []
  workloads = ({"resnet8 (width 0.25), batch 8 of 16x16": ("resnet8", {"width": 0.25}, 8, 16)}
               if args.tiny else WORKLOADS)
  for wname, (model, overrides, batch, size) in workloads.items():
    progs, flops = programs(model, overrides, batch, size, products=args.products)
    counts = {f"{f:.2g}": sum(1 for g in flops if f"{g:.2g}" == f"{f:.2g}") for f in flops}
    notes.append(f"{wname}: {len(flops)} convolutions, FLOPs (count): "
                 + ", ".join(f"{k} ({n})" for k, n in counts.items()))
    ref = {k: C.block(progs["none (all XLA)"][k]()) for k in ("step", "hvp")}
    diffs = {label: {k: C.max_rel_diff(C.block(p[k]()), ref[k]) for k in p}
             for label, p in progs.items()}
    times = {label: {k: [] for k in p} for label, p in progs.items()}
    for _ in range(args.rounds):
      for label, p in progs.items():
        for k, fn in p.items():
          t = time.perf_counter()
          C.block(fn())
          times[label][k].append(time.perf_counter() - t)
    base = {k: np.median(times["5e7"][k]) for k in ("step", "hvp")}
    for label in progs:
      st, hv = (float(np.median(times[label][k])) for k in ("step", "hvp"))
      rows.append([wname, label, 1e3 * st, f"{base['step'] / st:.2f}",
                   1e3 * hv / args.products, f"{base['hvp'] / hv:.2f}",
                   f"{diffs[label]['step']:.1e} / {diffs[label]['hvp']:.1e}"])
      print(rows[-1], flush=True)
  lines = [C.format_info(info), "",
           f"Medians of {args.rounds} rounds, floors called in turn in one process; the HVP "
           f"column is a loop of {args.products} products (one primal pass) per product. "
           "'speed vs 5e7': the previous default floor's time / this floor's. Last column: "
           "largest difference to XLA's program (params after the step / the products), "
           "relative to the largest value.", "",
           C.markdown_table(["workload", "oneDNN floor (FLOPs)", "train step ms",
                             "speed vs 5e7", "HVP ms per product", "speed vs 5e7",
                             "max rel diff to XLA (step / HVP)"], rows), "",
           *[f"- {n}" for n in notes],
           "- Command: `python benchmarks/bench_auto_threshold.py`.", "",
           C.total_line(t_start)]
  C.report(lines, title="bench_auto_threshold.py: the oneDNN FLOPs floor of "
           "cpu_convolutions='auto'", info=info, record=args.record)
  return rows


if __name__ == "__main__":
  main()
