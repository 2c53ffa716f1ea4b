"""Fast resume: rerunning the tour's finished 2-D surface in a fresh process.

The tour's surface (experiments/quickstart.py, full sizes): ResNet-8 of width 1 on `digits`, loss
and accuracy on the whole train and test splits, a 21 x 21 grid on [-1, 1]^2 along two
filter-normalised random directions (seed 1, biases and BatchNorm ignored), ``mesh=make_mesh()``,
the same metadata. The model is UNTRAINED (``model.init`` with seed 0): training changes the
parameters' values, not the work of a rerun. The script

1. computes the surface into a store (in this process, timed);
2. starts a FRESH Python process that builds the same inputs and reruns the same `surface_grid`
   call on the finished store, and times it end to end: process start to result (imports, data,
   model and directions included) and the `surface_grid` call alone (identity check and reading
   the store); the rerun's values must equal the first run's exactly.

Prints the times and appends them to benchmarks/RESULTS.md (``--no-record`` to skip). ``--tiny``:
a 3 x 3 grid on 64 images of each split (a smoke test, not recorded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

START = time.perf_counter()  # the fresh process's clock starts before its imports

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _surface(store: str, tiny: bool) -> tuple[dict, float, dict]:
  """The tour's `surface_grid` call on `store`: (results, seconds of the call alone, phases)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  import landscape_jax as lj

  t_inputs = time.perf_counter()
  train, test = lj.load("digits", "train"), lj.load("digits", "test")
  n = 64 if tiny else 0  # 0: whole splits, as the tour's eval_subset
  splits = {"train": train.subset(slice(0, n or None)), "test": test.subset(slice(0, n or None))}
  model = lj.get_model("resnet8", num_classes=10, width=1)
  variables = model.init(jax.random.key(0), jnp.zeros((1, *train.images.shape[1:])))
  params = variables["params"]
  d1, d2 = lj.random_directions(jax.random.key(1), params, num=2, norm="filter", ignore="biasbn")
  xs = ys = np.linspace(-1, 1, 3 if tiny else 21)
  metric_fn = lj.make_metric_fn(model, splits, batch_stats=variables["batch_stats"],
                                batch_size=256)
  t0 = time.perf_counter()
  res = lj.surface_grid(metric_fn, params, (d1, d2), xs, ys,
                        engine=lj.EngineOptions(mesh=lj.make_mesh(), progress=False), store=store,
                        metadata={"direction_seed": 1, "norm": "filter"})
  phases = {"imports_s": t_inputs - START,  # START: the process's start
            "inputs_s": t0 - t_inputs}
  return res, time.perf_counter() - t0, phases


def _rerun_child(store: str, tiny: bool) -> None:
  res, call, phases = _surface(store, tiny)
  import numpy as np
  digest = {k: np.asarray(v).tobytes().hex() for k, v in res.items()}
  print(json.dumps({"call_s": call, "process_s": time.perf_counter() - START, "values": digest,
                    **phases}))


def main(argv=None):
  import _common as C

  parser = C.run_parser(__doc__)
  parser.add_argument("--rerun-child", metavar="STORE", help=argparse_hidden())
  args = C.finish_args(parser.parse_args(argv))
  if args.rerun_child:
    _rerun_child(args.rerun_child, args.tiny)
    return None
  info = C.announce_machine()
  with tempfile.TemporaryDirectory() as tmp:
    store = os.path.join(tmp, "surface_2d")
    res, first, _ = _surface(store, args.tiny)
    print(f"first run (computes {res['train_loss'].size} points): {first:.1f} s", flush=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--rerun-child", store]
    cmd += ["--tiny"] if args.tiny else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    wall = time.perf_counter() - t0
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"the rerun process failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
  child = json.loads(lines[-1])
  same = all(child["values"][k] == res[k].tobytes().hex() for k in res)
  if not same:
    raise AssertionError("the rerun on the finished store returned other values")
  out = {"points": int(res["train_loss"].size), "first_s": first, "wall_s": wall,
         "process_s": child["process_s"], "call_s": child["call_s"],
         "imports_s": child["imports_s"], "inputs_s": child["inputs_s"]}
  print(f"rerun in a fresh process: {wall:.1f} s from start to result "
        f"({child['process_s']:.1f} s inside the interpreter), surface_grid call alone "
        f"{child['call_s']:.2f} s (imports {child['imports_s']:.1f} s, data + model + directions "
        f"{child['inputs_s']:.1f} s); values identical", flush=True)
  if args.record:
    body = (f"{C.format_info(info)}\n\n"
            "Tour surface (ResNet-8 width 1, untrained: model.init seed 0; whole digits splits, "
            f"train + test loss and accuracy; 21 x 21 grid): first run {first:.0f} s; rerun on "
            f"the finished store in a fresh process {wall:.1f} s from process start to result "
            f"(imports, data, model, directions), the `surface_grid` call alone "
            f"{child['call_s']:.2f} s (of the rest: imports {child['imports_s']:.1f} s, data, "
            f"model init and directions {child['inputs_s']:.1f} s); values identical. Times on "
            "a shared machine (see the load average above).")
    C.append_results("Fast resume of the tour's surface (bench_resume.py)", body)
  return out


def argparse_hidden():
  import argparse
  return argparse.SUPPRESS


if __name__ == "__main__":
  main()
