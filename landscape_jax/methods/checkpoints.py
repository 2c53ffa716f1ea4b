"""Checkpoints with orbax: atomic saves, structure-checked restores, and training trajectories.

A checkpoint directory holds one sub-directory per saved step, ``<directory>/<step>/``, written by
orbax's `StandardCheckpointHandler`. Orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames
the directory only once every file (and ``commit_success.txt``) is on disk, so a save interrupted at
any moment (even by SIGKILL) leaves either the previous set of complete steps or the new one; a
half-written directory is never listed by `list_steps` and never restored.

Any pytree can be saved (a `training.TrainState`, ``{"params": ..., "batch_stats": ...}``, a curve,
...). It is stored as its Flax state dict (`flax.serialization.to_state_dict`: NamedTuples and
dataclasses become dicts of their fields, sequences dicts keyed ``"0", "1", ...``), so a checkpoint
can be read back without the Python classes that wrote it. Restoring into a `target` checks the
saved structure, shapes and dtypes against the target first and raises a `ValueError` naming the
first differing leaf path (e.g. ``params/Dense_0/kernel: shape (64, 64) vs (64, 32)``).

Integrity: orbax compresses the arrays without a checksum, so a flipped bit in a data file would
restore silently wrong numbers. `save` therefore writes ``<directory>/<step>/sha256.json`` (the
sha256 of every leaf, written atomically once orbax has committed the step; a step without it,
e.g. one killed in between, is restored unverified) and `restore` verifies the restored arrays
against it; a mismatch, or metadata that orbax cannot read, raises
`CheckpointCorruptError` naming the leaf, and the files are left untouched (earlier steps still
restore). Checkpoints of arrays that span several processes are not checksummed.

Remote directories: a ``gs://`` directory works like a local one (paths go through
`etils.epath`, as in orbax). Orbax does not rename there (an object store has no rename):
it writes the step directory in place and ``commit_success.txt`` last, and `list_steps` counts
only the steps that have it. Orbax writes the arrays with TensorStore, which it opens for local
paths and ``gs://`` only, so other schemes (``s3://``, ...) are refused with a clear error.

Trajectories (Li et al. 2018, Sec. 7, PCA of the optimisation path): `training.train` saves the
initial point (step 0) and a checkpoint every k epochs; ``load_trajectory(dir)`` returns their
parameters in step order, ready for ``directions.pca_directions``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from landscape_jax.core import fileio, trees

__all__ = [
  "CheckpointCorruptError",
  "CHECKSUM_FILE",
  "COMMIT_FILE",
  "latest_step",
  "list_steps",
  "load_trajectory",
  "load_variables",
  "orbax_path",
  "restore",
  "save",
  "saved_structure",
  "verify_leaf_digests",
  "write_leaf_digests",
]

PyTree = Any
COMMIT_FILE = "commit_success.txt"
CHECKSUM_FILE = "sha256.json"
_STEP_RE = re.compile(r"^\d+$")


class CheckpointCorruptError(ValueError):
  """A complete checkpoint whose metadata or array data is truncated or corrupt."""


def _checksum_path(directory: str, step: int) -> str:
  return fileio.join(_step_dir(directory, step), CHECKSUM_FILE)


def _exists(path: str) -> bool:
  return fileio.as_path(path).exists()


def orbax_path(path: str):
  """The absolute path orbax is given; a remote scheme its TensorStore cannot open is refused."""
  if fileio.is_remote(path) and not os.fspath(path).startswith("gs://"):
    raise ValueError(
      f"Checkpoints cannot be written to {path}: orbax writes arrays with TensorStore, which it "
      "opens for local paths and gs:// only. Use a local directory or a gs:// bucket (results "
      "stores and run files accept any etils.epath path).")
  return fileio.absolute_path(path)


def _leaf_digests(state: PyTree) -> dict[str, str] | None:
  """sha256 of (dtype, shape, bytes) of every leaf by path; None if a leaf spans processes."""
  out = {}
  for p, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return None
    a = np.asarray(x)
    # as a restore places it (int64 -> int32 without jax_enable_x64)
    a = np.ascontiguousarray(a.astype(jax.dtypes.canonicalize_dtype(a.dtype)))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    out[trees.path_str(p)] = h.hexdigest()
  return out


def _write_checksums(directory: str, step: int, state: PyTree) -> None:
  if jax.process_index() != 0:
    return
  path = _checksum_path(directory, step)
  digests = _leaf_digests(state)
  if digests is None:
    if _exists(path):
      fileio.as_path(path).unlink()
    return
  fileio.atomic_write_text(path, json.dumps(digests, indent=0, sort_keys=True))


def _verify_checksums(directory: str, step: int, path: str, restored: PyTree) -> None:
  sidecar = _checksum_path(directory, step)
  if not _exists(sidecar):
    return  # written by an older version, or by several processes
  hint = (f"The files were not modified; restore an earlier step (complete steps: "
          f"{list_steps(directory)}) or retrain.")
  try:
    expected = json.loads(fileio.read_bytes(sidecar).decode("utf-8"))
  except (OSError, ValueError) as e:
    raise CheckpointCorruptError(f"Checksums {sidecar} of checkpoint {path} are unreadable "
                                 f"({e!r}). {hint}") from e
  got = _leaf_digests(restored)
  if got is None:
    return
  for leaf in sorted(set(expected) | set(got)):
    if expected.get(leaf) != got.get(leaf):
      raise CheckpointCorruptError(
        f"Checkpoint {path} is corrupt: the data of {leaf} does not match its checksum in "
        f"{sidecar} (a truncated or damaged file). {hint}")


def _handler() -> ocp.Checkpointer:
  # Synchronous: `save` returns once the step directory has been renamed into place.
  return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def _step_dir(directory: str, step: int) -> str:
  return fileio.join(directory, str(int(step)))


def _is_complete(path: str) -> bool:
  return fileio.as_path(path).is_dir() and _exists(fileio.join(path, COMMIT_FILE))


def list_steps(directory: str) -> list[int]:
  """Sorted steps of the *complete* checkpoints under `directory` ([] if there is none).

  Temporary directories of an interrupted save (``<step>.orbax-checkpoint-tmp-*``) and step
  directories without orbax's commit marker are ignored.
  """
  directory = os.fspath(directory)
  root = fileio.as_path(directory)
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir()
                if _STEP_RE.match(p.name) and _is_complete(fileio.join(directory, p.name)))


def latest_step(directory: str) -> int | None:
  """The largest complete step under `directory`, or None."""
  steps = list_steps(directory)
  return steps[-1] if steps else None


def save(directory: str, step: int, tree: PyTree, *, overwrite: bool = False) -> str:
  """Saves `tree` as ``<directory>/<step>`` atomically and returns that path.

  Args:
    directory: the checkpoint directory (created if missing).
    step: a non-negative integer (the optimizer step for training checkpoints).
    tree: any pytree of arrays; stored as its Flax state dict.
    overwrite: replace an existing complete checkpoint of the same step (otherwise a ValueError).

  An incomplete leftover directory of the same step (not written by a finished orbax save) is
  removed first.
  """
  step = int(step)
  if step < 0:
    raise ValueError(f"Checkpoint step must be non-negative, got {step}.")
  path = _step_dir(directory, step)
  target = orbax_path(path)
  if _exists(path):
    if _is_complete(path) and not overwrite:
      raise ValueError(
        f"A checkpoint for step {step} already exists at {path}; pass overwrite=True to replace it "
        "or use a fresh directory.")
    if jax.process_index() == 0:
      fileio.as_path(path).rmtree()
  fileio.makedirs(directory)
  state = flax.serialization.to_state_dict(tree)
  state = jax.tree.map(lambda x: np.asarray(x) if np.isscalar(x) else x, state)
  _handler().save(target, args=ocp.args.StandardSave(state))
  _write_checksums(directory, step, state)
  return path


def _resolve_step(directory: str, step: int | None) -> int:
  steps = list_steps(directory)
  if not steps:
    raise FileNotFoundError(
      f"No complete checkpoint under {directory}. Train first (experiments/train.py writes "
      "<workdir>/checkpoints) or check the path.")
  if step is None:
    return steps[-1]
  if int(step) not in steps:
    raise FileNotFoundError(f"No complete checkpoint for step {step} under {directory}; "
                            f"available steps: {steps}.")
  return int(step)


def saved_structure(directory: str, step: int | None = None) -> PyTree:
  """The saved state dict of a checkpoint as `jax.ShapeDtypeStruct` leaves (reads no arrays)."""
  path = _step_dir(directory, _resolve_step(directory, step))
  meta = _handler().metadata(orbax_path(path))
  meta = getattr(meta, "item_metadata", meta)
  meta = getattr(meta, "tree", meta)
  out = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype)), meta)
  if not jax.tree.leaves(out):
    raise CheckpointCorruptError(
      f"Checkpoint {path} has no readable metadata: it is truncated or corrupt. The files were not "
      f"modified; restore an earlier step (complete steps: {list_steps(directory)}) or retrain.")
  return out


def _abstract(x) -> jax.ShapeDtypeStruct:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  x = np.asarray(x)
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def restore(directory: str, target: PyTree | None = None, *, step: int | None = None) -> PyTree:
  """Restores a checkpoint (the latest complete one by default).

  Args:
    directory: the checkpoint directory given to `save`.
    target: a pytree of the expected structure (arrays or `jax.ShapeDtypeStruct`s). The saved
      structure, shapes and dtypes must match it exactly; arrays are placed with the target's
      shardings (jax.Array leaves), so a replicated or sharded target restores sharded. The result
      has the target's Python structure (NamedTuples, dataclasses). Without a target the saved
      state dict (nested dicts of arrays on the default device) is returned.
    step: which step to restore (default: the latest complete one).

  Raises:
    FileNotFoundError: no complete checkpoint (or not that step).
    ValueError: the checkpoint does not match `target`; the message names the first differing leaf.
    CheckpointCorruptError: the checkpoint's metadata is unreadable or an array does not match its
      checksum (a `ValueError` too).
  """
  step = _resolve_step(directory, step)
  path = orbax_path(_step_dir(directory, step))
  saved = saved_structure(directory, step)
  if target is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                            saved)
    restored = _read(directory, path, abstract)
    _verify_checksums(directory, step, path, restored)
    return restored
  wanted = flax.serialization.to_state_dict(target)
  abstract = jax.tree.map(_abstract, wanted)
  diff = trees.first_difference(saved, abstract)
  if diff is not None:
    raise ValueError(
      f"Checkpoint {path} does not match the target: {diff} (first is the checkpoint, second the "
      "target). Build the target from the same model/optimizer configuration that wrote the "
      "checkpoint, or restore without a target to inspect it.")
  restored = _read(directory, path, abstract)
  _verify_checksums(directory, step, path, restored)
  return flax.serialization.from_state_dict(target, restored)


def _read(directory: str, path: str, abstract: PyTree) -> PyTree:
  try:
    return _handler().restore(path, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # tensorstore/orbax raise plain Exceptions for unreadable data
    raise CheckpointCorruptError(
      f"Checkpoint {path} could not be read, it is truncated or corrupt ({str(e)[:300]}). The "
      f"files were not modified; restore an earlier step (complete steps: "
      f"{list_steps(directory)}) or retrain.") from e


def load_variables(directory: str, *, step: int | None = None) -> dict[str, PyTree]:
  """``{"params": ..., "batch_stats": ...}`` of a training checkpoint (model variables).

  ``batch_stats`` is omitted for models without BatchNorm, so the result can be passed straight
  to ``model.apply``.
  """
  state = restore(directory, step=step)
  if "params" not in state:
    raise ValueError(f"Checkpoint under {directory} has no 'params' entry (keys: {sorted(state)}); "
                     "it was not written by training.train.")
  out = {"params": state["params"]}
  if state.get("batch_stats"):
    out["batch_stats"] = state["batch_stats"]
  return out


def load_trajectory(directory: str, *, key: str = "params",
                    steps: list[int] | None = None) -> list[PyTree]:
  """The parameters saved along a training run, in step order (Li et al. 2018, Sec. 7).

  Args:
    directory: a checkpoint directory written by `training.train` (``<workdir>/checkpoints``),
      which holds the initial point (step 0) and a checkpoint every ``checkpoint_every_epochs``.
    key: which entry of each checkpoint to return (``"params"``; ``"batch_stats"`` also works).
    steps: restrict to these steps (default: every complete step; see `list_steps` for the steps).

  Returns:
    A list of pytrees (nested dicts of arrays), one per step; ``trajectory[-1]`` is the final
    point. For the PCA plot: rows ``t_i - t_final``, e.g.
    ``lj.pca_directions(trajectory[:-1], trajectory[-1])``.
  """
  steps = list_steps(directory) if steps is None else list(steps)
  if not steps:
    raise FileNotFoundError(f"No complete checkpoint under {directory} to build a trajectory from.")
  out = []
  for s in steps:
    state = restore(directory, step=s)
    if key not in state:
      raise ValueError(f"Checkpoint step {s} under {directory} has no entry '{key}' "
                       f"(keys: {sorted(state)}).")
    out.append(state[key])
  return out


def write_leaf_digests(step_dir: str, state: PyTree) -> None:
  """sha256 of every leaf (in leaf order) next to an orbax step: its compression has no checksum."""
  digests = _leaf_digests(state)
  if digests is not None and fileio.as_path(step_dir).is_dir():
    fileio.atomic_write_json(fileio.join(step_dir, CHECKSUM_FILE),
                             list(digests.values()), indent=None)


def verify_leaf_digests(step_dir: str, restored: PyTree) -> None:
  """Checks the arrays restored from an orbax step against its ``sha256.json`` (leaf order);
  `CheckpointCorruptError` names the first damaged leaf. A step without the file (killed between
  the orbax commit and the file) is restored unverified."""
  path = fileio.join(step_dir, CHECKSUM_FILE)
  if not _exists(path):
    return  # killed between the orbax commit and this file: restored unverified
  try:
    expected = json.loads(fileio.read_bytes(path).decode("utf-8"))
  except (OSError, ValueError) as e:
    raise CheckpointCorruptError(f"Checksums {path} are unreadable ({e!r}).") from e
  got = _leaf_digests(restored)
  if got is not None and list(got.values()) != expected:
    names = list(got)
    bad = next((i for i, (g, x) in enumerate(zip(got.values(), expected, strict=False)) if g != x),
               min(len(names), len(expected)))
    leaf = names[bad] if bad < len(names) else f"#{bad}"
    raise CheckpointCorruptError(
      f"Checkpoint {step_dir} is corrupt: leaf {leaf} does not match its checksum "
      "(a truncated or damaged file). The files were not modified; move this step away to resume "
      "from the previous epoch.")


