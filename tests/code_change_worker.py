"""Worker process for `test_code_identity.py`: runs a user's resumable computations.

Usage:
  python tests/code_change_worker.py DIR

Imports every ``case_*.py`` in DIR (code a user wrote; the test rewrites it between runs, as one
edits a script) and calls its ``run(path)`` with ``path = DIR/out_<case>``; prints one JSON line per
case: ``{"case", "status": "ok" | "refused" | "error", "type", "message"}``. Everything runs in this
one process (one JAX start for all cases).
"""

import glob
import importlib
import json
import os
import sys

if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(directory):
  sys.path.insert(0, directory)
  for file in sorted(glob.glob(os.path.join(directory, "case_*.py"))):
    name = os.path.basename(file)[:-3]
    try:
      importlib.import_module(name).run(os.path.join(directory, "out_" + name[5:]))
      out = {"status": "ok", "type": "", "message": ""}
    except Exception as e:  # reported to the test, which decides
      from landscape_jax.core.store import StoreMismatchError

      status = "refused" if isinstance(e, StoreMismatchError) else "error"
      out = {"status": status, "type": type(e).__name__, "message": str(e)}
    print(json.dumps({"case": name[5:], **out}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
