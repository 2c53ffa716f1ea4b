"""What exact identities cost, and what the engine costs, next to the work they guard.

Measured side by side in one run on a ResNet-20 with filter-normalised directions and the W1
evaluation (1000 images 32x32x3, loss + accuracy):

* the identity a store records (`engine.identity_config`: sha256 of the coordinates, of the centre
  and directions, of the metric function's code and of every array it holds, and the traced
  programs of the metric and point functions), against the time of one grid point's evaluation;
  the traced part alone, uncached (the first call in a process) and cached;
* a rerun of `surface_grid` on its finished store (what a resumed finished run costs);
* `surface_grid` with a store against the same grid without one (identity + store writes), and
  the engine's `surface_grid` against a hand-written jitted `lax.map` over the same points (what
  the engine adds around the compiled loop).

Prints the ratios and appends them to benchmarks/RESULTS.md (``--no-record`` to skip).
``--tiny`` runs a ResNet-8 on 100 images (a smoke test).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common as C

import landscape_jax as lj
from landscape_jax.core import identity as identity_lib


def _problem(tiny: bool):
  n, model_name = (100, "resnet8") if tiny else (1000, "resnet20")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  data = lj.Dataset(images=images, labels=labels, num_classes=10,
                    mean=np.full(3, 0.5, np.float32), std=np.full(3, 0.25, np.float32),
                    name="random", split="test")
  model = lj.get_model(model_name, num_classes=10)
  v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  params, bs = v["params"], v["batch_stats"]
  d1, d2 = lj.random_directions(jax.random.key(1), params, num=2)
  metric_fn = lj.make_metric_fn(model, data, batch_stats=bs)
  return model_name, n, metric_fn, params, (d1, d2)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--no-record", action="store_true")
  parser.add_argument("--grid", type=int, default=5, help="points per side of the timed grid")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  grid = 2 if args.tiny else args.grid
  name, n, metric_fn, params, dirs = _problem(args.tiny)
  xs = np.linspace(-1, 1, grid)
  coords = lj.surface.grid_coordinates(xs, xs)
  point_fn = lj.plane_point_fn(params, dirs)
  chunk = grid

  # one point's evaluation (compiled)
  one = jax.jit(lambda f, p: f(p))
  C.block(one(metric_fn, params))
  t_point = C.best_time(lambda: one(metric_fn, params), repeats=args.repeats)

  # the identity a store records
  def take_identity():
    return lj.engine.identity_config(metric_fn, point_fn, coords, identity=None, metadata=None)

  t_identity = C.best_time(take_identity, repeats=args.repeats)

  # its traced part alone (`identity.traced_identity` of the metric at the parameters' shapes):
  # the first trace in a process, and the cached one (per function object and shapes)
  shapes = jax.eval_shape(point_fn, jax.ShapeDtypeStruct((2,), jnp.float32))

  def traced(clear: bool):
    if clear:
      identity_lib._TRACE_CACHE.clear()
    return identity_lib.traced_identity(metric_fn, shapes, name="metric_fn")

  t_traced = C.best_time(lambda: traced(True), repeats=args.repeats)
  t_traced_cached = C.best_time(lambda: traced(False), repeats=args.repeats)

  # the engine against a hand-written compiled loop over the same points
  @jax.jit
  def hand(f, center, d, cs):
    return jax.lax.map(lambda c: f(lj.plane_point(center, d[0], d[1], c[0], c[1])), cs)

  cs = jnp.asarray(coords, jnp.float32)
  engine = lj.EngineOptions(chunk_size=chunk, progress=False, map_mode="map")
  C.block(hand(metric_fn, params, dirs, cs))
  lj.surface_grid(metric_fn, params, dirs, xs, xs, engine=engine)
  rows = {"hand-written lax.map": [], "surface_grid": [], "surface_grid + store": [],
          "rerun on the finished store": []}
  for _ in range(args.repeats):  # interleaved rounds
    t = time.perf_counter()
    C.block(hand(metric_fn, params, dirs, cs))
    rows["hand-written lax.map"].append(time.perf_counter() - t)
    t = time.perf_counter()
    lj.surface_grid(metric_fn, params, dirs, xs, xs, engine=engine)
    rows["surface_grid"].append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
      t = time.perf_counter()
      lj.surface_grid(metric_fn, params, dirs, xs, xs, store=os.path.join(tmp, "s"),
                      engine=engine)
      rows["surface_grid + store"].append(time.perf_counter() - t)
      t = time.perf_counter()
      lj.surface_grid(metric_fn, params, dirs, xs, xs, store=os.path.join(tmp, "s"),
                      engine=engine)
      rows["rerun on the finished store"].append(time.perf_counter() - t)
  med = {k: float(np.median(v)) for k, v in rows.items()}
  points = coords.shape[0]
  table = C.markdown_table(
    ["what", "seconds (median)", "per point", "vs hand-written loop"],
    [[k, v, v / points, v / med["hand-written lax.map"]] for k, v in med.items()])
  summary = (f"{name}, {n} images 32x32x3, {grid}x{grid} grid, {args.repeats} interleaved "
             f"rounds.\n\n- one point's evaluation: {t_point:.3g} s\n- the identity a store "
             f"records (coords, centre, directions, metric code and data): {t_identity:.3g} s = "
             f"{t_identity / t_point:.3g} of one point\n- of which the traced program of the "
             f"metric (jaxpr at the parameters' shapes): {t_traced:.3g} s uncached = "
             f"{t_traced / t_point:.3g} of one point, {t_traced_cached:.3g} s cached\n\n"
             f"{table}\n\n"
             f"{C.format_info(C.machine_info())}")
  print(summary)
  if not args.no_record:
    C.append_results("Identity and engine overhead (bench_identity.py)", summary)
  return {"point_s": t_point, "identity_s": t_identity, "traced_s": t_traced,
          "traced_cached_s": t_traced_cached, **med}


if __name__ == "__main__":
  main()
