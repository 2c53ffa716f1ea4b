r"""Installed size of landscape-jax (default, ``[cpu]``, ``[tf]``), each in a fresh venv.

  python benchmarks/install_sizes.py                     # appends a dated line to RESULTS.md
  python benchmarks/install_sizes.py --no-record --variants=default

For each variant, a new venv (``python -m venv``, in a temporary folder) gets
``pip install '<this checkout>[extra]'`` (a regular, non-editable install, as from PyPI or git);
the size is the disk usage of the whole venv (``du``: allocated blocks; site-packages plus the
``lib/`` and ``include/`` folders where the oneDNN wheels put their files) less that of the fresh
venv (pip alone), so it counts landscape-jax and everything it brings. Each venv then imports the
package from a folder outside the checkout, loads the ``digits`` splits (the .npz shipped as
package data) and reports whether oneDNN convolutions are available (with ``[cpu]`` on Linux
x86-64 they must be; without, the reason must name the extra). Uses only the standard library,
so it runs with any Python >= 3.11; needs PyPI (or a pip cache).
"""

import argparse
import datetime
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
# "test": what `make test` installs (the test extra with cpu); "cpu" is what `make quickstart` does.
EXTRAS = {"default": "", "cpu": "[cpu]", "tf": "[tf]", "test": "[test,cpu]"}

_CHECK = r"""
import importlib.metadata, json
import landscape_jax as lj
from landscape_jax.backends.cpu import onednn_build as onednn
assert not lj.__file__.startswith({root!r}), lj.__file__
reason = onednn.unavailable_reason()
print(json.dumps({{
  "digits": len(lj.load("digits", "train")) + len(lj.load("digits", "test")),
  "onednn": "available" if reason is None else reason,
  "versions": {{p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "numpy")}},
}}))
"""


def disk_usage(path: str) -> int:
  """Bytes allocated to the files under `path` (what ``du -s`` reports; hard links once)."""
  seen, total = set(), 0
  for dirpath, dirnames, filenames in os.walk(path):
    for name in dirnames + filenames:
      st = os.lstat(os.path.join(dirpath, name))
      if (st.st_dev, st.st_ino) not in seen:
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
  return total


def site_packages(venv: str) -> str:
  out = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                        "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       check=True, capture_output=True, text=True)
  return out.stdout.strip()


def largest(sp: str, n: int = 3) -> list[tuple[str, int]]:
  """The `n` largest top-level entries of site-packages (folders of the big packages)."""
  sizes = [(e.name, disk_usage(e.path) if e.is_dir(follow_symlinks=False) else 0)
           for e in os.scandir(sp) if not e.name.endswith((".dist-info", ".pth"))]
  return sorted(sizes, key=lambda t: -t[1])[:n]


def measure(variant: str, python: str, tmp: str) -> dict:
  venv = os.path.join(tmp, variant)
  subprocess.run([python, "-m", "venv", venv], check=True)
  sp = site_packages(venv)
  empty = disk_usage(venv)
  py = os.path.join(venv, "bin", "python")
  start = time.monotonic()
  pip = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        ROOT + EXTRAS[variant]], capture_output=True, text=True)
  seconds = time.monotonic() - start
  if pip.returncode != 0:
    raise SystemExit(f"pip install of {variant} failed:\n{pip.stderr[-3000:]}")
  size = disk_usage(venv) - empty
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  env.update(JAX_PLATFORMS="cpu", LANDSCAPE_JAX_CACHE_DIR=os.path.join(tmp, "kernels"))
  out = subprocess.run([py, "-c", _CHECK.format(root=ROOT)], check=True, capture_output=True,
                       text=True, cwd=tmp, env=env)
  check = __import__("json").loads(out.stdout.strip().splitlines()[-1])
  if check["digits"] != 1797:
    raise SystemExit(f"{variant}: digits has {check['digits']} images, expected 1797")
  on_linux_x86 = platform.system() == "Linux" and platform.machine() == "x86_64"
  with_cpu = variant in ("cpu", "test")  # the test variant installs [test,cpu]
  if with_cpu and on_linux_x86 and check["onednn"] != "available":
    raise SystemExit(f"[cpu] install: oneDNN not available: {check['onednn']}")
  if not with_cpu and "landscape-jax[cpu]" not in check["onednn"] and on_linux_x86:
    raise SystemExit(f"{variant} install: oneDNN's reason does not name the extra: "
                     f"{check['onednn']}")
  return {"variant": variant, "bytes": size, "seconds": seconds, "largest": largest(sp), **check}


def mb(n: int) -> str:
  return f"{n / 2**20:.0f} MB"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default="default,cpu,tf",
                      help="comma-separated: " + ", ".join(EXTRAS))
  parser.add_argument("--python", default=sys.executable, help="the Python of the new venvs")
  parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
  args = parser.parse_args(argv)
  variants = args.variants.split(",")
  if unknown := sorted(set(variants) - set(EXTRAS)):
    raise SystemExit(f"unknown variants {unknown}; choose from {sorted(EXTRAS)}")
  with tempfile.TemporaryDirectory(prefix="landscape-jax-sizes.") as tmp:
    rows = []
    for v in variants:
      rows.append(measure(v, args.python, tmp))
      r = rows[-1]
      big = ", ".join(f"{n} {mb(s)}" for n, s in r["largest"])
      print(f"{v}: {mb(r['bytes'])} in {r['seconds']:.0f} s ({big}); "
            f"oneDNN: {r['onednn'][:60]}", flush=True)
  base = next((r["bytes"] for r in rows if r["variant"] == "default"), None)
  parts = []
  for r in rows:
    name = "default" if r["variant"] == "default" else f"[{r['variant']}]"
    extra = f" (+{mb(r['bytes'] - base)})" if base is not None and r["variant"] != "default" else ""
    parts.append(f"{name} {mb(r['bytes'])}{extra} in {r['seconds']:.0f} s")
  py_version = subprocess.run([args.python, "--version"], capture_output=True,
                              text=True).stdout.strip()
  versions = ", ".join(f"{k} {v}" for k, v in rows[0]["versions"].items())
  cache = os.path.join(pathlib.Path.home(), ".cache", "pip")
  cache_mb = disk_usage(cache) / 2**20 if os.path.isdir(cache) else 0.0
  line = (f"- {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')} install_sizes: "
          f"fresh venv after pip install, du less the empty venv's (pip's wall time; pip cache "
          f"{cache_mb:.0f} MB at the end, load average {os.getloadavg()[0]:.1f}): "
          f"{', '.join(parts)}; "
          f"largest in the {rows[0]['variant']} install: "
          f"{', '.join(f'{n} {mb(s)}' for n, s in rows[0]['largest'])}; {py_version}, "
          f"{platform.system()} {platform.machine()}; {versions}")
  print(line)
  if not args.no_record:
    with open(RESULTS, "a+") as f:
      f.seek(0)
      text = f.read()
      f.write(("" if text.endswith("\n\n") or not text else "\n") + line + "\n")
    print(f"appended to {RESULTS}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
