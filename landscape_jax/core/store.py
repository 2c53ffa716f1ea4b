"""Resumable result files: arrays with a done-mask plus JSON metadata, written atomically.

The one store format of the library: every point evaluation (`core.engine`: surfaces,
lines, curves, planes, swap paths) writes its results here. A store is a directory::

  meta.json              {"format", "config", "shape", "keys", "arrays_file", "sha256", ...}
  arrays-000012.npz      "done" (bool, shape) and one float array per metric ("m:<key>")

``config`` holds the exact identity of what computed the results (digests of the coordinates, of
the parameters and directions or curve, of the metric function's code and of the arrays it holds;
`core.identity`) and the caller's metadata.

Writing is crash-safe: the arrays go to a new generation file (`fileio.atomic_write_bytes`: temp
file, fsync, `os.replace`, the user's umask), then ``meta.json`` (which names that file and its
sha256) is replaced the same way; only then are older generations deleted. A kill at any moment
leaves either the previous or the new state, never a mix; its temporary files are removed by the
next successful write. Reading checks the structure and the checksum: a truncated or corrupt
store raises `StoreCorruptError` and is never written to, and so does a folder whose arrays are
there without their ``meta.json`` (nothing is deleted). A rerun with a different configuration
raises `StoreMismatchError` (a ValueError) that lists what differs, and never overwrites; the
resumable training runs and the tour check their JSON configuration files the same way
(`check_or_write_config`). A failing write (full disk, read-only directory) raises
`StoreWriteError` and leaves the previous state intact.

A store may live on a remote filesystem (``gs://bucket/run/surface``; `fileio.is_remote`),
opened through `etils.epath`. There each file is one object, written whole (object stores have
no rename and need none: an object appears only once complete), and ``meta.json``, written after
the arrays file it names and checksums, is the commit record: a reader sees the previous
generation until it is replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from landscape_jax.core import fileio
from landscape_jax.core.fileio import atomic_write_bytes, atomic_write_json
from landscape_jax.core.identity import describe_differences

FORMAT = "landscape_jax.store/1"
META = "meta.json"
_ARRAYS_RE = re.compile(r"^arrays-(\d{6,})\.npz$")
_log = logging.getLogger(__name__)


class StoreCorruptError(RuntimeError):
  """The store on disk is truncated, corrupt or not a landscape-jax store."""


class StoreWriteError(OSError):
  """Writing the store failed; the previous state on disk is intact."""


StoreBusyError = fileio.BusyError  # another process writes the store (`fileio.exclusive`)


class StoreMismatchError(ValueError):
  """The store holds results of another computation (other inputs, functions or data)."""


def os_error_advice(e: OSError) -> str:
  """What to do about an OS error on a result path, by what it is."""
  import errno

  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    return "free disk space (or raise the quota) or choose another directory"
  if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    return "choose a writable directory (the file system is read-only or not yours)"
  if e.errno in (errno.ENOTDIR, errno.EEXIST):
    return "a component of the path is a file, not a directory: choose another path"
  if e.errno == errno.EISDIR:
    return "a directory stands where a file is expected: move it away or choose another path"
  if e.errno == errno.ENAMETOOLONG:
    return "choose a shorter path"
  return "free disk space or choose a writable directory"


def read_json(path: str, *, remedy: str) -> Any:
  """The JSON value in `path`; a damaged file raises `StoreCorruptError` naming it and `remedy`.

  For the small side files that runs write atomically and read back (configurations, histories,
  finished steps): a kill cannot tear them, so a damaged one was edited or broken by other means,
  and the caller's `remedy` says what to do. The file is never modified.

  Raises:
    FileNotFoundError: `path` does not exist.
    StoreCorruptError: `path` is not valid UTF-8 JSON.
  """
  try:
    return json.loads(fileio.read_bytes(path).decode("utf-8"))
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
    raise StoreCorruptError(f"{path} is damaged: it is not valid JSON ({e}). The file was not "
                            f"modified. {remedy}") from e


@dataclasses.dataclass
class StoreState:
  """The content of a store: `values[key]` and the `done` mask share the grid `shape`."""

  config: dict
  values: dict[str, np.ndarray]
  done: np.ndarray
  generation: int = 0

  @property
  def num_done(self) -> int:
    return int(np.sum(self.done))


def jsonable(obj: Any) -> Any:
  """Converts numpy scalars/arrays, tuples and nested dicts into plain JSON types."""
  if isinstance(obj, dict):
    return {str(k): jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray) or hasattr(obj, "__array__") and hasattr(obj, "shape"):
    return jsonable(np.asarray(obj).tolist())
  if isinstance(obj, np.generic):
    return obj.item()
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  return str(obj)


def normalize_config(config: dict) -> dict:
  """The configuration as it reads back from JSON (so that comparisons are exact)."""
  return json.loads(json.dumps(jsonable(config), sort_keys=True, allow_nan=True))


def config_differences(old: dict, new: dict) -> list[str]:
  """Keys (dotted for nested dicts) whose values differ between two configurations."""
  out = []
  for k in sorted(set(old) | set(new)):
    if k not in old or k not in new:
      out.append(f"{k} (only in {'stored' if k in old else 'new'} configuration)")
    elif isinstance(old[k], dict) and isinstance(new[k], dict):
      out.extend(f"{k}.{d}" for d in config_differences(old[k], new[k]))
    elif old[k] != new[k] and not (_is_nan(old[k]) and _is_nan(new[k])):
      out.append(k)
  return out


def _is_nan(x) -> bool:
  return isinstance(x, float) and x != x


def _lookup(config: dict, dotted: str) -> Any:
  value: Any = config
  for part in dotted.split("."):
    if not isinstance(value, dict) or part not in value:
      return None
    value = value[part]
  return value


def _short(value: Any) -> bool:
  return value is None or isinstance(value, (bool, int, float)) or (
    isinstance(value, str) and len(value) <= 40)


def explain_differences(old: dict, new: dict, differences: list[str]) -> str:
  """What differs, for an error message: ``key: old -> new`` for short values, else the reason.

  Digests and function identities (long strings) are named with `identity.describe_differences`
  (e.g. ``end_sha256 (has other bytes)``, ``loss_fn.arrays (holds other arrays ...)``).
  """
  out = []
  for d in differences:
    if " (only in " not in d:
      a, b = _lookup(old, d), _lookup(new, d)
      if _short(a) and _short(b):
        out.append(f"{d}: {a!r} -> {b!r}")
        continue
    out.append(describe_differences([d]))
  return ", ".join(out)


VERSIONS = "versions"


def significant_differences(old: dict, new: dict) -> list[str]:
  """`config_differences` without the recorded library versions (`identity.versions`).

  Versions are recorded to explain a refusal, not compared by themselves: an upgrade that leaves
  every traced program and digest as it was resumes (and is logged); one that changes a traced
  program is refused by that program's digest, and `versions_note` names the versions.
  """
  diffs = config_differences(old, new)
  out = [d for d in diffs if d.split(".", 1)[0].split(" ", 1)[0] != VERSIONS]
  if len(out) < len(diffs) and not out:
    _log.warning("Resuming results written with other library versions (%s); every recorded "
                 "identity, traced programs included, is unchanged.",
                 _versions_change(old.get(VERSIONS), new.get(VERSIONS)))
  return out


def _versions_change(old, new) -> str:
  old, new = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
  return ", ".join(f"{k} {old.get(k, '?')} -> {new.get(k, '?')}"
                   for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def versions_note(old: dict, new: dict) -> str:
  """A sentence naming the library versions of a refused result when they differ from now."""
  if VERSIONS not in new or old.get(VERSIONS) == new.get(VERSIONS):
    return ""
  if VERSIONS not in old:
    return (" The stored results record no library versions: they were written by a landscape-jax "
            "before traced identities existed, so what computed them cannot be confirmed; "
            "recompute them.")
  return (f" The results were written with other library versions "
          f"({_versions_change(old[VERSIONS], new[VERSIONS])}): an upgrade can change the traced "
          "program, so they are not reused; recompute them, or rerun with the old versions.")


def mismatch_error(path: str, what: str, old: dict, new: dict, differences: list[str],
                   remedy: str) -> StoreMismatchError:
  """The one refusal of every resumable result whose recorded configuration differs."""
  return StoreMismatchError(
    f"{path} describes {what} computed with a different configuration; what differs: "
    f"{explain_differences(old, new, differences)}. Refusing to resume or reuse it (that would "
    f"mix two computations).{versions_note(old, new)} {remedy}")


def check_or_write_config(path: str | os.PathLike, config: dict, *, what: str, remedy: str,
                          ignore: Sequence[str] = (), compare: bool = True, write: bool = True,
                          rewrite: bool = False) -> dict:
  """Refuses a configuration other than the one recorded in the JSON file `path`, or records it.

  The one configuration check of the library's resumable runs (curve training, SGD / FGE,
  `training.train`, the tour): both sides are compared as they read back from JSON
  (`normalize_config`), key by key (`config_differences`), so exact identities (digests,
  `identity.callable_identity`) recorded in `config` make a rerun on other inputs fail here.

  Args:
    path: the configuration file (written with `fileio.atomic_write_json`).
    config: the run's configuration (JSON-able, or converted by `jsonable`).
    what: what the results beside the file are, for the message (e.g. "curve training
      checkpoints").
    remedy: how to start fresh (e.g. "To start fresh, use another workdir or move this one away;
      to resume, rerun with exactly the inputs that computed it.").
    ignore: top-level keys allowed to differ (settings that do not change the results).
    compare: False skips the comparison (a fresh run that may replace a stale file).
    write: False never writes (e.g. processes other than the first).
    rewrite: write `config` even when the file exists (after a successful comparison).

  Returns:
    The normalised configuration.

  Raises:
    StoreMismatchError: the recorded configuration differs (a ValueError; the message lists what
      differs and `remedy`). The file is left as it is.
    StoreCorruptError: the file is damaged (left as it is).
  """
  path = os.fspath(path)
  config = normalize_config(config)
  present = fileio.as_path(path).exists()
  if present and compare:
    old = read_json(path, remedy=f"Restore it (it must match the results beside it), or start "
                    f"fresh. {remedy}")
    if not isinstance(old, dict):
      raise StoreCorruptError(f"{path} holds a JSON {type(old).__name__}, not a configuration. "
                              f"The file was not modified. {remedy}")
    diffs = [d for d in significant_differences(old, config)
             if d.split(".", 1)[0].split(" ", 1)[0] not in set(ignore)]
    if diffs:
      raise mismatch_error(path, what, old, config, diffs, remedy)
  if write and (rewrite or not present):
    atomic_write_json(path, config)
  return config


def lock(path: str | os.PathLike):
  """The write lock of the store at `path` (`fileio.exclusive`): one writer at a time, a second
  one gets `StoreBusyError` at once; readers are never blocked."""
  return fileio.exclusive(path, what="result stores")


def ensure_dir(path: str | os.PathLike) -> None:
  """Creates the store directory; an OS error says what it is (`StoreWriteError`)."""
  try:
    fileio.makedirs(path)
  except OSError as e:
    raise StoreWriteError(f"Could not write results to {os.fspath(path)}: its directory cannot "
                          f"be created ({e}); {os_error_advice(e)}.") from e


def exists(path: str | os.PathLike) -> bool:
  """True if `path` holds a store (or something that claims to be one)."""
  return fileio.as_path(fileio.join(path, META)).exists()


def _orphaned_arrays(path: str) -> list[str]:
  """Arrays files of a store whose meta.json is missing (e.g. after a partial copy)."""
  root = fileio.as_path(path)
  if not root.is_dir():
    return []
  return sorted(p.name for p in root.iterdir() if _ARRAYS_RE.match(p.name))


def _key_name(key: str) -> str:
  return "m:" + key


def read(path: str | os.PathLike) -> StoreState:
  """Reads and validates a store (structure, shapes, checksum).

  Raises:
    FileNotFoundError: no store at `path`.
    StoreCorruptError: the store is truncated or corrupt (it is left untouched).
  """
  path = os.fspath(path)
  meta_path = fileio.join(path, META)
  if not fileio.as_path(meta_path).exists():
    raise FileNotFoundError(f"No result store at {path} (missing {META}).")
  for _ in range(50):
    meta_bytes = _read_meta_bytes(meta_path)
    try:
      return _parse(path, meta_path, meta_bytes)
    except StoreCorruptError:
      # a writer committed a new generation (and removed the one we were reading) meanwhile:
      # read the new one; only a store that stays inconsistent is corrupt
      try:
        if _read_meta_bytes(meta_path) != meta_bytes:
          continue
      except (OSError, StoreCorruptError):
        pass
      raise
  raise StoreCorruptError(f"{path} kept changing while it was read (50 generations); another "
                          "process writes it very often. Read it again when it is finished.")


def _read_meta_bytes(meta_path: str) -> bytes:
  try:
    return fileio.read_bytes(meta_path)
  except (IsADirectoryError, PermissionError, NotADirectoryError) as e:
    raise StoreCorruptError(
      f"{meta_path} cannot be read as a store's description: {type(e).__name__}: "
      f"{e.strerror or e}. A store's {META} must be a readable regular file; nothing was "
      "modified. Fix or move it (or pass another path).") from e


def _parse(path: str, meta_path: str, meta_bytes: bytes) -> StoreState:
  hint = (f"The store at {path} was not modified. Move it away (or pass another path) to start "
          "over, or restore it from a backup.")
  try:
    meta = json.loads(meta_bytes.decode("utf-8"))
    if not isinstance(meta, dict):
      raise StoreCorruptError(f"{meta_path} holds a JSON {type(meta).__name__}, not a store's "
                              f"description. {hint}")
    if meta.get("format") != FORMAT:
      raise StoreCorruptError(f"{meta_path} is not a landscape-jax store (format "
                              f"{meta.get('format')!r}, expected {FORMAT!r}). {hint}")
    shape = tuple(int(s) for s in meta["shape"])
    keys = list(meta["keys"])
    arrays_file = str(meta["arrays_file"])
    digest = str(meta["sha256"])
    generation = int(meta["generation"])
    config = meta["config"]
  except StoreCorruptError:
    raise
  except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    raise StoreCorruptError(f"{meta_path} is truncated or corrupt ({e!r}). {hint}") from e
  if not _ARRAYS_RE.match(arrays_file):
    raise StoreCorruptError(f"{meta_path} names an invalid arrays file {arrays_file!r}. {hint}")
  arrays_path = fileio.join(path, arrays_file)
  try:
    data = fileio.read_bytes(arrays_path)
  except OSError as e:
    raise StoreCorruptError(f"{arrays_path} cannot be read ({e}). {hint}") from e
  if hashlib.sha256(data).hexdigest() != digest:
    raise StoreCorruptError(f"{arrays_path} is truncated or corrupt (sha256 mismatch). {hint}")
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      done = np.asarray(npz["done"], bool)
      values = {k: np.asarray(npz[_key_name(k)]) for k in keys}
  except (ValueError, KeyError, OSError) as e:
    raise StoreCorruptError(f"{arrays_path} has a bad structure ({e!r}). {hint}") from e
  if done.shape != shape or any(v.shape != shape for v in values.values()):
    raise StoreCorruptError(f"{arrays_path}: array shapes do not match {shape}. {hint}")
  return StoreState(config=config, values=values, done=done, generation=generation)


def write(path: str | os.PathLike, state: StoreState) -> StoreState:
  """Writes a new generation of the store atomically and returns the state with it recorded.

  Raises:
    StoreWriteError: the write failed (full disk, read-only directory, ...); the previous state on
      disk is intact.
  """
  path = os.fspath(path)
  generation = state.generation + 1
  arrays_file = f"arrays-{generation:06d}.npz"
  shape = state.done.shape
  try:
    fileio.makedirs(path)
    buf = io.BytesIO()
    np.savez(buf, done=np.asarray(state.done, bool),
             **{_key_name(k): np.asarray(v) for k, v in state.values.items()})
    data = buf.getvalue()
    atomic_write_bytes(fileio.join(path, arrays_file), data)
    meta = {
      "format": FORMAT,
      "shape": list(shape),
      "keys": list(state.values),
      "arrays_file": arrays_file,
      "sha256": hashlib.sha256(data).hexdigest(),
      "generation": generation,
      "num_done": int(np.sum(state.done)),
      "num_points": int(np.prod(shape)),
      "config": normalize_config(state.config),
    }
    text = json.dumps(meta, indent=1, sort_keys=True, allow_nan=True).encode("utf-8")
    atomic_write_bytes(fileio.join(path, META), text)
  except OSError as e:
    raise StoreWriteError(
      f"Could not write results to {path}: {e}. The previous state on disk is intact; "
      f"{os_error_advice(e)}, then rerun to resume.") from e
  # only the generation this state was read from (named by the previous meta.json) is provably
  # ours and replaced; any other file, a user's of a similar name included, is left alone (the
  # arrays of a write killed before its meta.json carry the next generation's name and are
  # replaced by it)
  if state.generation > 0:
    previous = f"arrays-{state.generation:06d}.npz"
    try:
      fileio.as_path(fileio.join(path, previous)).unlink()
    except (OSError, FileNotFoundError):
      pass
  return dataclasses.replace(state, generation=generation)


def open_or_create(path: str | os.PathLike, *, config: dict, shape: tuple[int, ...],
                   keys: dict[str, Any], create: bool = True) -> StoreState:
  """Opens the store at `path` for resuming, or creates an empty one.

  Args:
    path: the store directory.
    config: everything that defines the result (grid, directions, normalisation, checkpoint,
      dataset, ...). It must equal the stored configuration.
    shape: grid shape of every array.
    keys: metric name -> dtype.
    create: write the empty store now (False on processes that must not write).

  Raises:
    StoreMismatchError: the stored configuration differs (the message lists what differs).
    StoreCorruptError: the store is corrupt, or its arrays are there without their meta.json
      (nothing is deleted).
  """
  config = normalize_config(config)
  path = os.fspath(path)
  if not exists(path) and _orphaned_arrays(path):
    raise StoreCorruptError(
      f"{path} holds computed results ({', '.join(_orphaned_arrays(path))}) but no {META} "
      "(a partial copy, or the file was removed), so they cannot be checked or resumed. Nothing "
      f"was modified or deleted. Copy {META} back from where the store came from to resume, or "
      "move the folder away (or pass another path) to start over.")
  if exists(path):
    state = read(path)
    diffs = significant_differences(state.config, config)
    if diffs:
      raise StoreMismatchError(
        f"The result store at {path} was computed by something else; what differs: "
        f"{describe_differences(diffs)}. Refusing to mix or reuse results."
        f"{versions_note(state.config, config)} To start fresh, pass "
        "another store path (workdir) or move this one away; to resume it, call again with "
        "exactly the inputs that computed it.")
    if state.done.shape != tuple(shape) or set(state.values) != set(keys):
      raise StoreMismatchError(
        f"The result store at {os.fspath(path)} has shape {state.done.shape} and metrics "
        f"{sorted(state.values)}, expected {tuple(shape)} and {sorted(keys)}. Use another path.")
    return state
  values = {k: np.full(shape, np.nan, dtype=np.dtype(dt)) for k, dt in keys.items()}
  state = StoreState(config=config, values=values, done=np.zeros(shape, bool))
  return write(path, state) if create else state


__all__ = [
  "StoreBusyError",
  "StoreCorruptError",
  "StoreMismatchError",
  "StoreState",
  "StoreWriteError",
  "check_or_write_config",
  "config_differences",
  "explain_differences",
  "ensure_dir",
  "exists",
  "lock",
  "open_or_create",
  "read",
  "write",
]
