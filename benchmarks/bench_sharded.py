"""Per-device memory and time per point of a GPT-2-shaped surface with sharded parameters.

Two measurements on the devices JAX sees (8 simulated CPU devices by default; real ones on a
TPU or GPU host):

1. **Memory per device** of one compiled surface chunk (centre, two directions, the perturbed
   point, the evaluation split and the activations), read from XLA's memory analysis of the
   compiled program (`sharding.memory_per_device`; compiled only, nothing is allocated, so the
   124 M-parameter GPT-2 small is measured on a laptop): replicated on one device, and on meshes
   ``model=8`` and ``data=2 x model=4``.
2. **Time per point** of a reduced GPT (width 128, 4 blocks, context 32; the default of
   experiments/configs/scale_gpt2.py) on a 2-D surface chunk of 8 points: one device, the 1-D
   points mesh of 8 devices (the model replicated), ``model=8`` and ``data=2 x model=4``
   (medians of interleaved rounds). Simulated CPU devices share the host's cores, so on a CPU
   these times show the cost of the collectives, not a speed-up.

  PYTHONPATH=. python benchmarks/bench_sharded.py           # records to RESULTS.md
  PYTHONPATH=. python benchmarks/bench_sharded.py --tiny    # gpt_tiny shapes only, seconds
"""

from __future__ import annotations

import os
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import time  # noqa: E402

import _common as C  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import landscape_jax as lj  # noqa: E402
from landscape_jax.core import engine  # noqa: E402
from landscape_jax.core import sharding as shd  # noqa: E402
from landscape_jax.core.paths import plane_point_fn  # noqa: E402

REDUCED = {"context": 32, "width": 128, "depth": 4, "heads": 4}
MESHES = {"1 device": None, "model=8": {"model": 8}, "data=2 x model=4": {"data": 2, "model": 4}}


def _text_split(context: int, windows: int):
  splits, vocab = lj.char_splits(lj.load_text("valley"), context=context, stride=context)
  return tuple(a[:windows] for a in splits["train"]), len(vocab)


def _abstract_params(model, context, mesh):
  """ShapeDtypeStructs of the parameters with the GPT's partitioning on `mesh` (no arrays)."""
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, context), jnp.int32))
  specs = nn.get_partition_spec(boxed["params"])
  shapes = nn.meta.unbox(boxed["params"])
  if mesh is None:
    return shapes
  names = set(mesh.axis_names)

  def one(x, spec):
    spec = P(*(n if n in names else None for n in spec))
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))
  return jax.tree.map(one, shapes, specs)


def chunk_memory(name: str, shape: dict, vocab: int, split, sizes, *, chunk: int = 8):
  """Per-device bytes of the compiled surface chunk of model `name` on the mesh `sizes`."""
  model = lj.get_model(name, num_classes=vocab, **shape)
  mesh = None if sizes is None else lj.make_mesh(**sizes)
  metric_fn = lj.make_metric_fn(model, {"train": split}, loss=lj.TOKEN_CROSS_ENTROPY,
                                batch_size=16, mesh=mesh, cpu_convolutions="xla")
  center = _abstract_params(model, model.context, mesh)
  point_fn = plane_point_fn(center, (center, center))
  roles = shd.mesh_roles(mesh)
  if roles is not None:
    metric_fn = shd.place(metric_fn, roles)
  coords = jax.ShapeDtypeStruct((chunk, 2), jnp.float32, sharding=None if mesh is None else
                                NamedSharding(mesh, P()))
  fn = engine.chunk_fn(mesh, None, "map", None)
  stats = shd.memory_per_device(fn.lower(metric_fn, point_fn, coords).compile())
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(center))
  return params, stats


def time_per_point(split, vocab, sizes, *, chunk: int = 8, rounds: int = 3):
  """(compiled chunk call, seconds per point of its best call)."""
  model = lj.get_model("gpt_tiny", num_classes=vocab, **REDUCED)
  params = model.init(jax.random.key(0), jnp.asarray(split[0][:1]))["params"]
  mesh = None if sizes is None else lj.make_mesh(**sizes)
  roles = shd.mesh_roles(mesh)
  metric_fn = lj.make_metric_fn(model, {"train": split}, loss=lj.TOKEN_CROSS_ENTROPY,
                                batch_size=16, mesh=mesh, cpu_convolutions="xla")
  center = params if mesh is None else lj.partitioned_params(params, mesh)
  dirs = lj.random_directions(jax.random.key(1), center)
  coords = np.linspace(-1, 1, 2 * chunk, dtype=np.float32).reshape(chunk, 2)
  m, p, c = engine.place_inputs(lj.trees.as_partial(metric_fn), plane_point_fn(center, dirs),
                                coords, roles)
  fn = engine.chunk_fn(shd.as_mesh(roles), None if roles is None else roles.points, "map", None)
  jax.block_until_ready(fn(m, p, c))
  return lambda: jax.block_until_ready(fn(m, p, c)), chunk


def main():
  args = C.finish_args(C.run_parser(__doc__).parse_args())
  info = C.announce_machine()
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}", flush=True)
  split, vocab = _text_split(16 if args.tiny else 64, 32)
  models = [("gpt_tiny", {"context": 16, "width": 32, "depth": 2, "heads": 4}, vocab)]
  if not args.tiny:
    models = [("gpt_tiny", REDUCED, vocab), ("gpt2_small", {}, 50257)]
  rows = []
  for name, shape, v in models:
    split_m = _text_split(min(shape.get("context", 64), 64), 32)[0]
    base = None
    for label, sizes in MESHES.items():
      params, stats = chunk_memory(name, shape, v, split_m, sizes)
      base = base or stats["total"]
      rows.append([f"{name} ({params / 1e6:.1f} M)", label,
                   round(stats["arguments"] / 2**20, 2), round(stats["temporaries"] / 2**20, 2),
                   round(stats["total"] / 2**20, 2), round(stats["total"] / base, 3)])
      print(rows[-1], flush=True)
  mem_table = C.markdown_table(["model", "mesh", "arguments MiB", "temporaries MiB",
                                "total MiB / device", "vs 1 device"], rows)
  tsplit, tvocab = _text_split(REDUCED["context"], 8 if args.tiny else 64)
  runners = {label: time_per_point(tsplit, tvocab, sizes)
             for label, sizes in {**MESHES, "points=8 (1-D)": {"points": 8}}.items()}
  times = {k: [] for k in runners}
  for _ in range(1 if args.tiny else 3):
    for k, (call, n) in runners.items():
      t0 = time.perf_counter()
      call()
      times[k].append((time.perf_counter() - t0) / n)
  trows = [[k, float(np.median(v)), float(np.median(v) / np.median(times["1 device"]))]
           for k, v in times.items()]
  time_table = C.markdown_table(["mesh", "s / point (median)", "vs 1 device"], trows)
  load = os.getloadavg()
  body = (f"{C.format_info(info)}\n\nPer-device memory of one compiled surface chunk (8 points, "
          "lax.map; XLA memory analysis, compiled only):\n\n" + mem_table
          + f"\n\nTime per point, reduced GPT ({REDUCED}), {jax.device_count()} simulated "
          "devices sharing the host's cores (collectives cost, no speed-up expected on a CPU):"
          f"\n\n{time_table}\n\nLoad average at the end {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} (other jobs were running: times are noisy).")
  print(body)
  if args.record:
    C.append_results("bench_sharded: GPT-2-shaped surface, per-device memory and time per point",
                     body)


if __name__ == "__main__":
  main()
