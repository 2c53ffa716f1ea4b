r"""Time of each step of the README's API tour, as a user runs it (compilation included).

  PYTHONPATH=$PWD python benchmarks/bench_timings.py          # the CPU sizes, on a CPU
  PYTHONPATH=$PWD python benchmarks/bench_timings.py --tiny   # the tests' sizes (not recorded)

Reads the README's tour (the Python block that sets ``ON_GPU``), splits it at its numbered step
comments (``# 1. ...``) and runs the steps in order in one namespace (each step a file run with
`runpy`, as the tests run the docs' examples), in a temporary folder so that its ``runs/`` starts
empty, timing each one (wall clock, from a fresh process: the first call of each function
compiles, as it does for a user) with the load average before and after. Prints a Markdown table
for docs/timings.md and appends it to RESULTS.md. ``--tiny`` replaces the sizes line with
`TINY_SIZES`, as tests/test_docs_examples.py does.
"""

from __future__ import annotations

import os
import re
import runpy
import sys
import tempfile
import time

import _common as bc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = re.compile(r"^EPOCHS, GRID, CURVE_EPOCHS, POINTS, PROBES = .*$", re.M)
TINY_SIZES = "EPOCHS, GRID, CURVE_EPOCHS, POINTS, PROBES = 1, 3, 1, 3, 4"


def tour_block(readme: str) -> str:
  """The README's Python block that defines ``ON_GPU`` (the API tour)."""
  blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
  (tour,) = [b for b in blocks if "ON_GPU =" in b]
  return tour


def steps(block: str) -> list[tuple[str, str]]:
  """``(title, code)`` of the block's parts: the set-up, then each ``# n. ...`` step."""
  parts, title, lines = [], "0. imports and sizes", []
  for line in block.splitlines():
    m = re.match(r"^# (\d+\. .*)$", line)
    if m:
      parts.append((title, "\n".join(lines)))
      title, lines = m[1], []
    lines.append(line)
  parts.append((title, "\n".join(lines)))
  return parts


def main(argv=None) -> int:
  p = bc.run_parser(__doc__)
  args = bc.finish_args(p.parse_args(argv))
  info = bc.announce_machine()
  block = tour_block(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
  (sizes,) = SIZES.findall(block)
  if args.tiny:
    block = SIZES.sub(TINY_SIZES, block)
  rows, ns = [], {}
  start_all = time.monotonic()
  with tempfile.TemporaryDirectory(prefix="landscape-jax-tour.") as tmp:
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
      for i, (title, code) in enumerate(steps(block)):
        path = os.path.join(tmp, f"step{i}.py")
        with open(path, "w", encoding="utf-8") as f:
          f.write(code + "\n")
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        ns = runpy.run_path(path, init_globals=ns)
        seconds = time.monotonic() - t0
        load1 = os.getloadavg()[0]
        rows.append((title, seconds, f"{load0:.1f} / {load1:.1f}"))
        print(f"{title}: {seconds:.1f} s (load {load0:.1f} -> {load1:.1f})", flush=True)
    finally:
      os.chdir(cwd)
  total = time.monotonic() - start_all
  on_gpu = bool(ns.get("ON_GPU"))
  used = TINY_SIZES if args.tiny else sizes
  header = ["step of the README tour", f"{'GPU' if on_gpu else '2-core CPU'} s",
            "load average (1 min) before / after", "GPU s" if not on_gpu else "CPU s"]
  table = bc.markdown_table(header, [(t, s, ld, "not measured") for t, s, ld in rows]
                            + [("all", total, "", "not measured")])
  print(table)
  if args.record:
    bc.append_results(
      f"bench_timings.py: the README's API tour, step by step ({info['date']})",
      bc.format_info(info) + f"\n\nSizes: `{used}` ({'GPU' if on_gpu else 'CPU'} branch); "
      "wall-clock seconds of each step in a fresh process, compilation included.\n\n" + table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
