r"""Time of ``import landscape_jax`` in a fresh interpreter, and what it loads.

  python benchmarks/bench_import.py              # appends a dated line to RESULTS.md
  python benchmarks/bench_import.py --no-record --repeats=3

Each measurement is a new ``python -c`` process (nothing cached in the interpreter; the files are
in the OS page cache after the first, discarded, run). It reports the median wall time, measured
inside the child around the statement (interpreter start-up not counted), of:

* ``import landscape_jax`` (the lazy facade: the library's names resolve on first use);
* ``import jax`` alone, for scale (what any JAX program pays);
* ``import landscape_jax; lj.surface_grid`` (first use of the core: jax, flax's tree utilities,
  optax and the engine load);
* ``import landscape_jax; lj.plotting.plot_contour`` (first plot: matplotlib too).

It also lists which heavy packages (jax, matplotlib, orbax, scipy, ml_collections, tensorflow)
are in ``sys.modules`` after the bare import: none of them should be.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

HEAVY = ("jax", "matplotlib", "orbax", "scipy", "ml_collections", "tensorflow")
CASES = {
  "landscape_jax": "import landscape_jax",
  "jax": "import jax",
  "first core use": "import landscape_jax as lj; lj.surface_grid",
  "first plot": "import landscape_jax as lj; lj.plotting.plot_contour",
}
_LOADED = ("import json, sys; import landscape_jax; "
           f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")


def run_time(code: str, env: dict[str, str]) -> float:
  """Wall seconds of `code` in a new ``python -c`` process, measured inside the child
  (perf_counter around the statement), so interpreter start-up and teardown are not counted."""
  wrapper = f"import time\nt = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)"
  out = subprocess.run([sys.executable, "-c", wrapper], check=True, capture_output=True,
                       text=True, env=env, cwd=ROOT)
  return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=7, help="processes per case (median)")
  parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
  args = parser.parse_args(argv)

  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  medians = {}
  for name, code in CASES.items():
    run_time(code, env)  # warm the page cache
    medians[name] = statistics.median(run_time(code, env) for _ in range(args.repeats))
    print(f"{name:>15}: {1e3 * medians[name]:7.1f} ms (median of {args.repeats})", flush=True)
  loaded = json.loads(subprocess.run([sys.executable, "-c", _LOADED], check=True,
                                     capture_output=True, text=True, env=env,
                                     cwd=ROOT).stdout)
  print(f"heavy packages loaded by `import landscape_jax`: {loaded or 'none'}")

  import jax
  try:
    load = os.getloadavg()[0]
  except OSError:
    load = float("nan")
  stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
  line = (f"{stamp} bench_import: `import landscape_jax` {1e3 * medians['landscape_jax']:.0f} ms "
          f"in a fresh interpreter (median of {args.repeats}; `import jax` alone "
          f"{1e3 * medians['jax']:.0f} ms; first use of the core, `lj.surface_grid`, "
          f"{1e3 * medians['first core use']:.0f} ms; first plot, `lj.plotting.plot_contour`, "
          f"{1e3 * medians['first plot']:.0f} ms); heavy packages loaded by the import: "
          f"{', '.join(loaded) if loaded else 'none'}; Python {platform.python_version()}, "
          f"jax {jax.__version__}, load {load:.1f}")
  print(line)
  if not args.no_record:
    import _common
    _common.append_results(f"bench_import.py ({stamp})", "> " + line)
  return {"medians": medians, "loaded": loaded}


if __name__ == "__main__":
  main()
