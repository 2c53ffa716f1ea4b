"""Atomic file writes: the one way the library writes a file that a later run reads back.

`atomic_write_bytes(path, data)` writes ``data`` to a fresh temporary file in the target's own
directory (`tempfile.mkstemp`: a new, unpredictable name, created with ``O_EXCL``, so it never
follows or truncates a symlink planted in a shared directory), flushes and fsyncs it, gives it the
permissions a plain ``open(path, "w")`` would have (``0o666`` less the process's umask; `mkstemp`
alone makes it ``0o600``), renames it over `path` with `os.replace` (atomic on POSIX: a reader
sees the old or the new content, never a mix; if `path` is a symlink the link itself is replaced,
its target is left alone) and fsyncs the directory. A kill at any moment leaves the previous file
intact plus at most one temporary file; `clean_stale_temps` (called after every successful write)
removes the temporaries that killed writers of the same target left behind.

Temporary names are ``.<name>.<random>.tmp`` beside the target.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import threading
from typing import Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
  """The process's umask (read without changing it for longer than one call)."""
  with _UMASK_LOCK:
    mask = os.umask(0o022)
    os.umask(mask)
  return mask


def _fsync_dir(directory: str) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _temp_prefix(path: str) -> str:
  return "." + os.path.basename(path) + "."


def clean_stale_temps(path: str | os.PathLike) -> list[str]:
  """Removes the temporary files that interrupted writes of `path` left beside it.

  Returns the removed paths. Only names of the form ``.<basename>.<random>.tmp`` are touched.
  """
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  removed = []
  pattern = os.path.join(glob.escape(directory), glob.escape(_temp_prefix(path)) + "*.tmp")
  for tmp in glob.glob(pattern):
    try:
      if os.path.islink(tmp) or not os.path.isfile(tmp):
        continue
      os.unlink(tmp)
      removed.append(tmp)
    except OSError:
      pass
  return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
  """Writes `data` to `path` atomically (see the module docstring).

  Args:
    path: the target file; its directory must exist.
    data: the complete new content.
    mode: permission bits before the umask (default ``0o666``, as `open` uses).

  Raises:
    OSError: the write failed; `path` is unchanged and the temporary file is removed.
  """
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(path), suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      os.fchmod(f.fileno(), (0o666 if mode is None else mode) & ~current_umask())
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise
  _fsync_dir(directory)
  clean_stale_temps(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """`atomic_write_bytes` of UTF-8 text."""
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 1) -> None:
  """`atomic_write_bytes` of a JSON document (NaN written as ``NaN``, keys in their order)."""
  atomic_write_text(path, json.dumps(value, indent=indent, allow_nan=True))


__all__ = [
  "atomic_write_bytes",
  "atomic_write_json",
  "atomic_write_text",
  "clean_stale_temps",
  "current_umask",
]
