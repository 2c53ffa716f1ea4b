"""`surface_grid` of this checkout against the same call at an earlier git commit, side by side.

A refactor of the evaluation path must not slow it down. This script checks out `--ref` (default
``HEAD~1``) into a temporary git worktree and times, in fresh processes that alternate between
the two trees (``--rounds`` each; with ``--devices N`` on a 1-D mesh of N simulated CPU
devices), the exact-surface workload W1: a ResNet-20 at random
initialisation with filter-normalised directions, 1000 images 32x32x3, loss + accuracy, a
``--grid`` x ``--grid`` grid, default chunk size and map mode. Each process compiles, then reports
the best of two timed runs. Prints the medians, their ratio and the per-round spread, and appends
them to benchmarks/RESULTS.md (``--no-record`` to skip). ``--tiny``: ResNet-8, 100 images, 2x2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
import landscape_jax as lj
tiny = sys.argv[2] == "1"
grid = int(sys.argv[3])
n, name = (100, "resnet8") if tiny else (1000, "resnet20")
rng = np.random.default_rng(0)
data = lj.Dataset(images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                  labels=rng.integers(0, 10, n).astype(np.int32), num_classes=10,
                  mean=np.full(3, 0.5, np.float32), std=np.full(3, 0.25, np.float32),
                  name="random", split="test")
model = lj.get_model(name, num_classes=10)
v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
d = lj.random_directions(jax.random.key(1), v["params"], num=2)
f = lj.make_metric_fn(model, data, batch_stats=v["batch_stats"])
xs = np.linspace(-1, 1, grid)
devices = int(sys.argv[4])
mesh = lj.make_mesh(devices) if devices > 1 else None
if hasattr(lj, "EngineOptions"):  # the options object; older commits spelt the keywords out
  kw = {"engine": lj.EngineOptions(mesh=mesh, progress=False)}
else:
  kw = {"mesh": mesh, "progress": False}
run = lambda: lj.surface_grid(f, v["params"], d, xs, xs, **kw)
run()
times = []
for _ in range(2):
  t = time.perf_counter(); r = run(); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": min(times), "loss00": float(r["loss"][0, 0]),
                  "file": lj.__file__}))
"""


def _time(tree: str, tiny: bool, grid: int, devices: int = 1) -> dict:
  env = dict(os.environ)
  if devices > 1:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={devices}").strip()
  out = subprocess.run([sys.executable, "-c", _CHILD, tree, "1" if tiny else "0", str(grid),
                        str(devices)], capture_output=True, text=True, check=True, cwd=tree,
                       env=env)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ref", default="HEAD~1", help="the earlier commit to compare with")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--grid", type=int, default=5)
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--no-record", action="store_true")
  parser.add_argument("--devices", type=int, default=1,
                      help="a 1-D mesh of this many simulated CPU devices (1: no mesh)")
  args = parser.parse_args(argv)
  grid = 2 if args.tiny else args.grid
  sha = subprocess.run(["git", "rev-parse", "--short", args.ref], capture_output=True, text=True,
                       check=True, cwd=ROOT).stdout.strip()
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                        check=True, cwd=ROOT).stdout.strip()
  with tempfile.TemporaryDirectory() as tmp:
    old = os.path.join(tmp, "ref")
    subprocess.run(["git", "worktree", "add", "--detach", "-q", old, sha], check=True, cwd=ROOT)
    try:
      runs = {"this checkout": [], f"commit {sha}": []}
      for _ in range(args.rounds):
        for label, tree in (("this checkout", ROOT), (f"commit {sha}", old)):
          r = _time(tree, args.tiny, grid, args.devices)
          assert os.path.realpath(r["file"]).startswith(os.path.realpath(tree)), r["file"]
          runs[label].append(r)
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", old], check=False, cwd=ROOT)

  sys.path.insert(0, HERE)
  import _common as C
  import numpy as np

  med = {k: float(np.median([r["seconds"] for r in v])) for k, v in runs.items()}
  new, ref = med["this checkout"], med[f"commit {sha}"]
  points = grid * grid
  rows = [[k, v, points / v, f"{min(r['seconds'] for r in runs[k]):.3g}-"
           f"{max(r['seconds'] for r in runs[k]):.3g}"] for k, v in med.items()]
  dloss = abs(runs["this checkout"][0]["loss00"] - runs[f"commit {sha}"][0]["loss00"])
  body = (f"W1 ({'ResNet-8, 100 images' if args.tiny else 'ResNet-20, 1000 images'} 32x32x3), "
          f"{grid}x{grid} grid, surface_grid defaults"
          f"{f' on a 1-D mesh of {args.devices} devices' if args.devices > 1 else ''}, "
          f"{args.rounds} alternating rounds of fresh "
          f"processes; this checkout is {head} (plus uncommitted changes, if any).\n\n"
          + C.markdown_table(["tree", "seconds (median)", "points/s", "range"], rows)
          + f"\n\n- this checkout / commit {sha}: **{ref / new:.3f}x** the speed\n"
          f"- |loss(0, 0) difference|: {dloss:.3g}\n\n{C.format_info(C.machine_info())}")
  print(body)
  if not args.no_record:
    C.append_results(f"surface_grid against commit {sha} (bench_versus_commit.py)", body)
  return {"speed_ratio": ref / new, "dloss": dloss}


if __name__ == "__main__":
  main()
