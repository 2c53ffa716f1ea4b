"""Atomic file writes: the one way the library writes a file that a later run reads back.

`atomic_write_bytes(path, data)` writes ``data`` to a fresh temporary file in the target's own
directory (`tempfile.mkstemp`: a new, unpredictable name, created with ``O_EXCL``, so it never
follows or truncates a symlink planted in a shared directory), flushes and fsyncs it, gives it the
permissions a plain ``open(path, "w")`` would have (``0o666`` less the process's umask; `mkstemp`
alone makes it ``0o600``), renames it over `path` with `os.replace` (atomic on POSIX: a reader
sees the old or the new content, never a mix; if `path` is a symlink the link itself is replaced,
its target is left alone) and fsyncs the directory. A kill at any moment leaves the previous file
intact plus at most one temporary file; `clean_stale_temps` (called after every successful write)
removes the temporaries that killed writers of the same target left behind, and only those it can
prove abandoned: temporary names are ``.<name>.<host>.<pid>.<random>.tmp`` beside the target, and
a temporary is removed only if its writer ran on this host and is dead. `exclusive` is the advisory
write lock of a store or run directory (one writer at a time, `BusyError` for a second one).

Remote paths (``gs://``, ``s3://``, any URI with a scheme: `is_remote`) are opened through
`etils.epath`, as orbax does (``gs://`` needs ``gcsfs`` or TensorFlow installed, ``s3://``
``s3fs``). Object stores have no rename, no fsync and no permission bits, and need none for
atomicity: an object becomes visible only once its upload is complete, so a reader sees the old
or the new object, never a part of one. `atomic_write_bytes` therefore writes a remote object
directly (no temporary, no rename; `mode` and the umask do not apply), and a writer killed
mid-upload leaves the previous object. Files that must change together are made consistent by a
commit record written last: a store's ``meta.json`` names its arrays file and that file's
sha256, an orbax checkpoint counts only once its ``commit_success.txt`` is there. A remote
filesystem that is not an object store gets the same direct write; its own guarantees apply.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import socket
import tempfile
import threading
from typing import Any

from etils import epath

_UMASK_LOCK = threading.Lock()
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str | os.PathLike) -> bool:
  """True for a URI with a scheme (``gs://bucket/x``, ``s3://...``): opened with `etils.epath`."""
  return bool(_SCHEME.match(os.fspath(path)))


def as_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an `etils.epath.Path` (local paths stay local; ``gs://`` etc. go to their backend).

  Raises:
    ValueError: a scheme `etils.epath` does not know.
  """
  try:
    out = epath.Path(path)
  except KeyError:  # etils looks the scheme up in its registry
    out = None
  if is_remote(path):
    scheme = _SCHEME.match(os.fspath(path)).group(0)
    if out is None or not os.fspath(out).startswith(scheme):
      raise ValueError(
        f"{os.fspath(path)}: etils.epath does not know the scheme {scheme} (it knows gs://, "
        "s3://, az://, hf://). Use one of those, a local path, or register a path class for it "
        "with etils.epath.register_path_cls.")
  return out


def absolute_path(path: str | os.PathLike) -> epath.Path:
  """`path` made absolute for orbax: ``os.path.abspath`` for a local path, unchanged if remote
  (``os.path.abspath("gs://b/x")`` would be a local ``<cwd>/gs:/b/x``)."""
  return as_path(path) if is_remote(path) else epath.Path(os.path.abspath(os.fspath(path)))


def join(path: str | os.PathLike, *names: str) -> str:
  """``path/name/...`` as a string: `os.path.join` locally, `etils.epath` for remote paths."""
  if is_remote(path):
    return os.fspath(as_path(path).joinpath(*names))
  return os.path.join(os.fspath(path), *names)


def makedirs(path: str | os.PathLike) -> None:
  """Creates the directory `path` and its parents (no error if it exists)."""
  if is_remote(path):
    as_path(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


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


def _host() -> str:
  return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:64]


def _temp_prefix(path: str) -> str:
  return f".{os.path.basename(path)}.{_host()}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # EPERM: a process of another user
    return True
  return True


def clean_stale_temps(path: str | os.PathLike) -> list[str]:
  """Removes the temporary files that killed writes of `path` left beside it.

  A temporary is removed only when it is provably abandoned: its name is exactly what
  `atomic_write_bytes` creates for `path` (``.<basename>.<host>.<pid>.<8 random>.tmp``), it was
  created on this host by a process that no longer runs (not this one), and it is a regular file
  (not a symlink). Live temporaries of another writer, temporaries of other hosts (a shared
  filesystem: left in place) and any other file, e.g. a user's file of a similar name, are never
  touched. Returns the removed paths. Remote writes leave no temporaries: nothing to do there.
  """
  path = os.fspath(path)
  if is_remote(path):
    return []
  directory = os.path.dirname(path) or "."
  base = os.path.basename(path)
  exact = re.compile("^" + re.escape(f".{base}.") + r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\."
                     r"[A-Za-z0-9_]{8}\.tmp$")
  removed = []
  host, me = _host(), os.getpid()
  pattern = os.path.join(glob.escape(directory), glob.escape(f".{base}.") + "*.tmp")
  for tmp in glob.glob(pattern):
    m = exact.match(os.path.basename(tmp))
    if not m or m["host"] != host or int(m["pid"]) == me or _pid_alive(int(m["pid"])):
      continue
    try:
      if os.path.islink(tmp) or not os.path.isfile(tmp):
        continue
      os.unlink(tmp)
      removed.append(tmp)
    except OSError:
      pass
  return removed


class BusyError(RuntimeError):
  """Another process holds the write lock of a store or run directory."""


LOCK_FILE = ".landscape_jax.lock"


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike, *, name: str = LOCK_FILE, what: str = "results"):
  """Holds an exclusive advisory lock on `directory` (``fcntl.flock`` of ``directory/name``).

  One writer at a time: a second process (or a second call in this process) that tries to write
  the same store or run directory gets `BusyError` at once, naming the holder's pid and host; it
  never waits (a wait could hang a preemptible job behind a dead one's NFS lock) and never writes.
  The lock is released when the block ends, by any exception too, and by the kernel when the
  process dies (a killed run leaves no stale lock). Readers take no lock: the commit record
  (``meta.json``) makes what they read consistent.

  Not locked: remote paths (``gs://``: object stores have no locks; one writer at a time is then
  the caller's responsibility, and the commit record still keeps readers consistent), platforms
  without ``fcntl`` (Windows), and directories where the lock file cannot be created because the
  filesystem is read-only or not writable (nothing can be written there either; a finished result
  is still read). The lock file is opened with ``O_NOFOLLOW``: a symlink planted at its name is an
  error, never followed.

  Raises:
    BusyError: another holder has the lock.
  """
  directory = os.fspath(directory)
  try:
    import fcntl
  except ImportError:  # Windows
    fcntl = None
  if is_remote(directory) or fcntl is None:
    yield
    return
  path = os.path.join(directory, name)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0), 0o666 & ~current_umask())
  except OSError as e:
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
      yield
      return
    if e.errno == errno.ELOOP:
      raise OSError(e.errno, f"{path} is a symlink; the lock file of {what} must be a plain "
                    "file. Remove the link and rerun.") from e
    raise
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      holder = os.pread(fd, 256, 0).decode("utf-8", errors="replace").strip() or "unknown"
      raise BusyError(
        f"{directory} is being written by another writer ({holder}); {what} take one writer at a "
        "time. Wait for it to finish (then rerun: finished work is reused), stop it, or use "
        "another path. Reading the results meanwhile is safe.") from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
  """Writes `data` to `path` atomically (see the module docstring).

  Args:
    path: the target file; its directory must exist. A remote path (`is_remote`) is written as
      one object through `etils.epath` (atomic on object stores, see the module docstring).
    data: the complete new content.
    mode: permission bits before the umask (default ``0o666``, as `open` uses); local files only.

  Raises:
    OSError: the write failed; `path` is unchanged and the temporary file is removed.
  """
  path = os.fspath(path)
  if is_remote(path):
    _write_object(path, data)
    return
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


def _write_object(path: str, data: bytes) -> None:
  target = as_path(path)
  try:
    target.write_bytes(data)
  except OSError:
    raise
  except Exception as e:  # backends (gfile, gcsfs) raise their own error types
    raise OSError(f"Could not write {path}: {e}") from e


def read_bytes(path: str | os.PathLike) -> bytes:
  """The content of the file `path`, local or remote (FileNotFoundError if it is missing)."""
  if is_remote(path):
    return as_path(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def append_text(path: str | os.PathLike, text: str) -> None:
  """Appends `text` to the file `path`: ``open(path, "a")``, flush and fsync for a local file.

  Object stores cannot append: a remote file is read and written again whole
  (`atomic_write_bytes`), so a reader sees it before or after the append, never torn. Meant for
  small logs (one JSON line per epoch).
  """
  if not is_remote(path):
    with open(path, "a") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    return
  p = as_path(path)
  old = p.read_bytes() if p.exists() else b""
  atomic_write_bytes(path, old + text.encode("utf-8"))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """`atomic_write_bytes` of UTF-8 text."""
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 1) -> None:
  """`atomic_write_bytes` of a JSON document (NaN written as ``NaN``, keys in their order)."""
  atomic_write_text(path, json.dumps(value, indent=indent, allow_nan=True))


__all__ = [
  "absolute_path",
  "append_text",
  "as_path",
  "atomic_write_bytes",
  "atomic_write_json",
  "atomic_write_text",
  "clean_stale_temps",
  "current_umask",
  "is_remote",
  "join",
  "makedirs",
  "read_bytes",
]
