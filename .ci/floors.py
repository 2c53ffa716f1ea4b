"""The floors of pyproject.toml's dependencies, and whether an environment holds exactly them.

  python .ci/floors.py list  [--extras=test,cpu]   # one "name>=floor" per line
  python .ci/floors.py check [--extras=test,cpu]   # fails unless each is installed at its floor

`check` runs inside the environment that `.ci/lowest.sh` installs with
``uv pip install --resolution lowest-direct``: a floor that cannot be installed as written (no
such release, or one that conflicts with another floor, so the resolver took a higher version)
fails here instead of passing silently at a higher version. Requirements without a lower bound
(``==`` pins such as the oneDNN wheels) are compared with their pin; requirements whose
environment marker does not apply here are skipped.
"""

import argparse
import importlib.metadata
import pathlib
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parent.parent


def requirements(extras: list[str]) -> list[Requirement]:
  """The project's dependencies plus those of `extras`, whose markers apply here."""
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  optional = project.get("optional-dependencies", {})
  unknown = sorted(set(extras) - set(optional))
  if unknown:
    raise SystemExit(f"unknown extras {unknown}; pyproject.toml has {sorted(optional)}")
  reqs = [Requirement(r) for r in project["dependencies"]]
  reqs += [Requirement(r) for e in extras for r in optional[e]]
  out, seen = [], set()
  for r in reqs:
    key = canonicalize_name(r.name)
    if (r.marker is None or r.marker.evaluate()) and key not in seen:
      seen.add(key)
      out.append(r)
  return out


def floor(req: Requirement) -> Version | None:
  """The version a lowest resolution must pick: the ``>=`` (or ``==``) bound."""
  bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
  return max(bounds) if bounds else None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("command", choices=("list", "check"))
  parser.add_argument("--extras", default="", help="comma-separated extras, e.g. test,cpu")
  args = parser.parse_args(argv)
  reqs = requirements([e for e in args.extras.split(",") if e])
  if args.command == "list":
    for r in reqs:
      print(f"{r.name}>={floor(r)}" if floor(r) else f"{r.name} (no lower bound)")
    return 0
  bad = []
  for r in reqs:
    want = floor(r)
    if want is None:
      bad.append(f"{r.name}: no lower bound in pyproject.toml (give it one)")
      continue
    try:
      have = Version(importlib.metadata.version(r.name))
    except importlib.metadata.PackageNotFoundError:
      bad.append(f"{r.name}: not installed")
      continue
    status = "ok" if have == want else "ABOVE FLOOR"
    print(f"  {r.name:24s} floor {want!s:12s} installed {have!s:12s} {status}")
    if have != want:
      bad.append(f"{r.name}: installed {have}, floor {want} (the floor is not installable as "
                 "written; raise it to the lowest version that installs)")
  if bad:
    print("Floors not met:\n  " + "\n  ".join(bad), file=sys.stderr)
    return 1
  print(f"all {len(reqs)} direct dependencies at their floors")
  return 0


if __name__ == "__main__":
  sys.exit(main())
