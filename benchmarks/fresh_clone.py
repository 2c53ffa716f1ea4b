r"""The README's first command on a fresh clone: time and size of `make quickstart`.

  python benchmarks/fresh_clone.py            # appends a dated block to RESULTS.md
  python benchmarks/fresh_clone.py --no-record

Clones this checkout's HEAD into a temporary folder and runs, there, ``make .venv/.installed``
(the install `make quickstart` does: a new venv with ``.[cpu]``), timed, then ``make quickstart``
(the tour, now that the venv exists), timed; reports the venv's size (``du``), the tour's own
time, the load average before and after (the machine may be shared) and the CPU time of each
step (user + system of the children, which a shared machine does not inflate as it does the
wall-clock time). Whether pip's cache was warm is recorded too (a cold cache downloads about
1 GB). Uses only the standard library; needs PyPI (or a warm pip cache).
"""

import argparse
import datetime
import os
import pathlib
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

from install_sizes import disk_usage  # benchmarks/: the same du -s count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")


def timed(cmd: list[str], cwd: str, log: str) -> tuple[float, float]:
  """(wall s, CPU s of the children) of `cmd`, its output appended to `log`."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.monotonic()
  with open(log, "a") as f:
    proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
  wall = time.monotonic() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode != 0:
    raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return wall, cpu


def load() -> str:
  return "{:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--python", default="python3", help="the Python make's venv is made with")
  parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
  args = parser.parse_args(argv)
  pip_cache = os.path.join(pathlib.Path.home(), ".cache", "pip")
  cache_mb = disk_usage(pip_cache) / 2**20 if os.path.isdir(pip_cache) else 0.0
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                        capture_output=True, text=True).stdout.strip()
  with tempfile.TemporaryDirectory(prefix="landscape-jax-fresh.") as tmp:
    clone, log = os.path.join(tmp, "clone"), os.path.join(tmp, "make.log")
    subprocess.run(["git", "clone", "-q", ROOT, clone], check=True)
    subprocess.run(["git", "checkout", "-q", head], cwd=clone, check=True)
    make = ["make", f"PYTHON={args.python}"]
    load0 = load()
    install_s, install_cpu = timed(make + [".venv/.installed"], clone, log)
    size = disk_usage(os.path.join(clone, ".venv"))
    load1 = load()
    tour_s, tour_cpu = timed(make + ["quickstart"], clone, log)
    load2 = load()
    text = open(log).read()
    tour_line = re.findall(r"Tour finished in (\d+) s", text)
    report = os.path.exists(os.path.join(clone, "runs", "quickstart", "report.html"))
  date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
  line = (f"- {date} fresh_clone (commit {head}): `make quickstart` on a fresh clone: install "
          f"(new .venv, pip install -e '.[cpu]') {install_s:.0f} s wall, {install_cpu:.0f} s CPU, "
          f"venv {size / 2**20:.0f} MB; tour {tour_s:.0f} s wall "
          f"({tour_line[-1] if tour_line else '?'} s by its own clock), {tour_cpu:.0f} s CPU, "
          f"report.html written: {report}; load "
          f"average (1/5/15 min) {load0} at the start, {load1} after the install, {load2} at the "
          f"end; pip cache {'warm' if cache_mb > 500 else 'cold'} ({cache_mb:.0f} MB); "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}")
  print(line)
  if not args.no_record:
    with open(RESULTS, "a") as f:
      f.write("\n## fresh_clone.py: `make quickstart` from a fresh clone\n\n" + line + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
