"""How far float32 Hessian-vector products are from the float64 product, folded or not.

`make_loss_fn` folds inference-mode BatchNorm into the convolutions by default, and the
convolutions' derivatives run on oneDNN: both change the float32 rounding of a product. This
computes one product ``H v`` of the mean cross-entropy of ``--model`` (random init, BatchNorm
statistics of one training-mode pass, as ``bench_pyhessian.py``) on one batch of ``--batch``
synthetic images in float32 six ways: BatchNorm folded or not, times `lj.hvp` with oneDNN's
derivatives (``cpu_convolutions="auto"``), with XLA's (``"xla"``), and the flat operator that
Lanczos runs (`hessian.flat_hvp_operator`, oneDNN); and once in float64 (``jax.enable_x64``,
the model and its variables cast to float64, BatchNorm unfolded, XLA's convolutions): the
reference. Each row gives the largest absolute difference to the reference over the reference's
largest entry, and the relative l2 distance.

Run: ``python benchmarks/bench_hvp_accuracy.py`` (about a minute on 2 cores; appends to
RESULTS.md); ``--tiny``: ResNet-8 at width 0.5, batch 16 of 16x16 images, not recorded.
"""

from __future__ import annotations

import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import _common as C  # noqa: E402
import bench_pyhessian  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import landscape_jax as lj  # noqa: E402
from landscape_jax.core import hessian as hs  # noqa: E402


def parse_args(argv=None):
  p = C.run_parser(__doc__)
  bench_pyhessian.add_workload_args(p)
  args = p.parse_args(argv)
  if args.tiny:
    bench_pyhessian.tiny_workload(args)
  return C.finish_args(args)


def distances(a: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
  """``(max |a - ref| / max |ref|, |a - ref|_2 / |ref|_2)``."""
  a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
  return C.max_rel_diff(a, ref), float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def main(argv=None):
  args = parse_args(argv)
  info = C.announce_machine()
  t_start = time.perf_counter()
  model, data, params, bs, batch = bench_pyhessian.workload(args)
  x0, unravel = ravel_pytree(params)
  v = jax.random.normal(jax.random.key(11), x0.shape, jnp.float32)

  products = {}
  for fold in (True, False):
    loss_fn = lj.make_loss_fn(model, mean=data.mean, std=data.std, batch_stats=bs,
                              fold_batchnorm=fold)
    name = "folded" if fold else "unfolded"
    for conv in ("auto", "xla"):
      out = lj.hvp(loss_fn, params, batch, unravel(v), cpu_convolutions=conv)
      products[f"lj.hvp, BatchNorm {name}, cpu_convolutions={conv!r}"] = ravel_pytree(out)[0]
    op = hs.flat_hvp_operator(loss_fn, params, batch, None, False, None,
                              hs.min_flops_for("auto"))
    products[f"flat operator (Lanczos), BatchNorm {name}, oneDNN"] = jax.jit(op.matvec)(v)
  products = {k: np.asarray(a, np.float64) for k, a in products.items()}

  with jax.enable_x64(True):
    to64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    params64, bs64 = to64(params), to64(bs)
    loss64 = lj.make_loss_fn(model.clone(dtype=jnp.float64), mean=data.mean, std=data.std,
                             batch_stats=bs64, fold_batchnorm=False)
    ref = lj.hvp(loss64, params64, batch, to64(unravel(v)), cpu_convolutions="xla")
    ref = np.asarray(ravel_pytree(ref)[0], np.float64)
    assert ref.dtype == np.float64

  rows = [[k, *distances(a, ref)] for k, a in products.items()]
  lines = [C.format_info(info), "",
           f"{args.model} (width {args.width}, random init), one batch of {args.batch} synthetic "
           f"{args.image_size}x{args.image_size}x3 images, mean cross-entropy in inference mode, "
           f"one product H v over all {x0.size} parameters (v standard normal); the reference "
           f"is the float64 product (BatchNorm unfolded, XLA's convolutions; its largest entry "
           f"{np.abs(ref).max():.4g}).", "",
           C.markdown_table(["float32 product", "max abs diff / max abs ref", "relative l2"],
                            rows),
           "", C.total_line(t_start)]
  C.report(lines, title="bench_hvp_accuracy.py: float32 HVPs against float64", info=info,
           record=args.record)
  return {k: dict(zip(("max", "l2"), r[1:], strict=True)) for k, r in
          zip(products, rows, strict=True)}


if __name__ == "__main__":
  main()
