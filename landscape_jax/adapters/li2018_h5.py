"""Li et al. 2018's h5 files: surfaces and directions move both ways between their code and ours.

Li, Xu, Taylor, Studer, Goldstein, *Visualizing the Loss Landscape of Neural Nets* (NeurIPS
2018) compute surfaces with github.com/tomgoldstein/loss-landscape, which keeps them in HDF5
files. This module reads and writes the same layout (h5py, the ``h5`` extra:
``pip install 'landscape-jax[h5]'``; imported only when a function here is called).

**Surface file** (their ``plot_surface.py``; read by their ``plot_1D.py``, ``plot_2D.py`` and
``h52vtp.py``):

* ``xcoordinates``: float64 ``(nx,)``; ``ycoordinates``: float64 ``(ny,)``, 2-D surfaces only;
* ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` (and any other value): ``(nx,)``
  in 1-D; in 2-D an array *allocated* as ``(nx, ny)`` whose flat (C-order) element
  ``k = j * nx + i`` holds the value at ``(xcoordinates[i], ycoordinates[j])``: their scheduler
  enumerates the points of ``np.meshgrid(x, y)`` (shape ``(ny, nx)``) and writes point ``k``
  to ``values.ravel()[k]``. For a square grid that is ``values[j, i] = f(x[i], y[j])`` (the
  first axis is y, as their plots assume with ``np.meshgrid(x, y)``): the transpose of
  landscape_jax's ``surface[i, j] = f(xs[i], ys[j])`` (`surface_grid`). Points not yet computed
  hold -1.
* accuracies in percent (their ``evaluation.eval_loss`` returns ``100 * correct / total``);
  landscape_jax's ``*_accuracy`` metrics are fractions;
* ``dir_file``: the path of the direction file, a string (optional).

**Direction file** (their ``net_plotter.setup_direction`` / ``h5_util.write_list``): a group
``xdirection`` (and ``ydirection`` for 2-D plots) holding one dataset per parameter tensor,
named ``"0"``, ``"1"``, ... in the order of the model's parameter list (PyTorch's
``net.parameters()``, or ``state_dict()`` for their ``dir_type="states"``, in PyTorch layouts:
convolution kernels ``(out, in, h, w)``). We write a pytree's leaves in `jax.tree.leaves` order
and also record their paths in the group attribute ``landscape_jax_paths`` (their reader ignores
attributes), so that a file read back with ``like=`` is checked leaf by leaf. Mapping a PyTorch
model's parameter list onto a Flax parameter tree (order and layouts) is left to the caller:
`read_directions_h5` without ``like`` returns the arrays as stored.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from landscape_jax.core import fileio, trees

PyTree = Any

__all__ = ["read_directions_h5", "read_surface_h5", "write_directions_h5", "write_surface_h5"]

_COORDINATES = ("xcoordinates", "ycoordinates")
_DIRECTIONS = ("xdirection", "ydirection")
_PATHS_ATTR = "landscape_jax_paths"
_UNFILLED = -1.0  # their initial value of a point not yet computed


def _h5py():
  try:
    import h5py
  except ImportError as e:
    raise ImportError("landscape_jax.adapters.li2018_h5 needs h5py: pip install "
                      "'landscape-jax[h5]' "
                      "(or pip install h5py).") from e
  return h5py


def _coordinates(v, name: str) -> np.ndarray:
  a = np.asarray(v, dtype=np.float64)
  if a.ndim != 1 or a.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array of coordinates, got shape {a.shape}.")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} must be finite.")
  return a


def _write_atomically(path, fill) -> None:
  """Builds the h5 file in memory with ``fill(h5_file)`` and writes it in one atomic step, so
  that an interrupted write never leaves a half-written file that their code would resume."""
  buf = io.BytesIO()
  with _h5py().File(buf, "w") as f:
    fill(f)
  fileio.atomic_write_bytes(path, buf.getvalue())


def _check_new(path, overwrite: bool) -> None:
  if not overwrite and os.path.exists(path):
    raise FileExistsError(f"{os.fspath(path)} exists; pass overwrite=True to replace it.")


def _li_name(key: str) -> tuple[str, float]:
  """Our metric name -> (their dataset name, factor): ``*_accuracy`` fractions -> ``*_acc`` %."""
  if key.endswith("_accuracy"):
    return key[: -len("accuracy")] + "acc", 100.0
  if key == "accuracy":
    return "acc", 100.0
  return key, 1.0


def _our_name(key: str) -> tuple[str, float]:
  if key.endswith("_acc"):
    return key + "uracy", 0.01
  if key == "acc":
    return "accuracy", 0.01
  return key, 1.0


def write_surface_h5(path: str | os.PathLike, xs, ys, values: Mapping[str, Any], *,
                     dir_file: str | None = None, overwrite: bool = False) -> None:
  """Writes a surface as Li et al.'s code writes its surface files (see the module docstring).

  Args:
    path: the .h5 file to write (atomically: written in full, then renamed into place).
    xs: the x coordinates (along the first direction), shape ``(nx,)``.
    ys: the y coordinates, shape ``(ny,)``; None for a 1-D surface (no ``ycoordinates``).
    values: ``{name: array}`` in landscape_jax's layout, ``values[name][i, j]`` at
      ``(xs[i], ys[j])`` (shape ``(nx, ny)``; ``(nx,)`` in 1-D), e.g. `surface_grid`'s result.
      ``*_accuracy`` fractions are written as their ``*_acc`` percentages; every other name
      (``train_loss``, ...) is written as it is. NaN (a point not computed) is written as -1,
      their marker for a point to compute.
    dir_file: the direction file's path, stored as their ``dir_file`` string.
    overwrite: replace an existing file (default: refuse).

  Raises:
    ValueError: coordinates that are not finite non-empty 1-D arrays, a value of another shape,
      or two names that map to the same dataset (``train_accuracy`` and ``train_acc``).
    FileExistsError: `path` exists and not `overwrite`.
  """
  xs = _coordinates(xs, "xs")
  ys = None if ys is None else _coordinates(ys, "ys")
  if not values:
    raise ValueError("values is empty; pass e.g. the dict surface_grid returns.")
  shape = (xs.size,) if ys is None else (xs.size, ys.size)
  out: dict[str, np.ndarray] = {}
  for key, v in values.items():
    a = np.asarray(v, dtype=np.float64)
    if a.shape != shape:
      raise ValueError(f"values[{key!r}] has shape {a.shape}; expected {shape} "
                       "(len(xs), len(ys)) as surface_grid returns it.")
    name, factor = _li_name(str(key))
    if name in _COORDINATES or name == "dir_file" or name in out:
      raise ValueError(f"values[{key!r}] would be written as {name!r}, which is already taken; "
                       "rename it.")
    a = np.where(np.isnan(a), _UNFILLED, a * factor)
    # Theirs: flat element j * nx + i of an (nx, ny) array holds the value at (x[i], y[j]).
    out[name] = a if ys is None else np.ascontiguousarray(a.T).reshape(shape)
  _check_new(path, overwrite)

  def fill(f):
    if dir_file is not None:
      f["dir_file"] = str(dir_file)
    f["xcoordinates"] = xs
    if ys is not None:
      f["ycoordinates"] = ys
    for name, a in out.items():
      f[name] = a

  _write_atomically(path, fill)


def _checked(group, key: str, path, h5py, where: str = ""):
  """``group[key]`` after refusing what would read outside the file: an external link, a dataset
  with external storage (raw bytes of another file) or a virtual dataset (a view of other
  files). A downloaded file is read as data only."""
  name = f"{where}{key}"
  link = group.get(key, getlink=True)
  if isinstance(link, h5py.ExternalLink):
    raise ValueError(f"{name!r} in {os.fspath(path)} is an external link (to {link.filename!r}, "
                     f"{link.path!r}); refusing to follow it: files are read as data only. Copy "
                     "the data into the file itself.")
  obj = group.get(key)
  if isinstance(obj, h5py.Dataset):
    if obj.external:
      raise ValueError(f"{name!r} in {os.fspath(path)} keeps its bytes in external files "
                       f"({[e[0] for e in obj.external]}); refusing to read them: files are read "
                       "as data only. Store the data in the file itself.")
    if obj.is_virtual:
      raise ValueError(f"{name!r} in {os.fspath(path)} is a virtual dataset (a view of other "
                       "files); refusing to read it: files are read as data only.")
  return obj


def read_surface_h5(path: str | os.PathLike, *, unfilled_as_nan: bool = True
                    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
  """Reads a surface file of Li et al.'s code into landscape_jax's layout.

  Args:
    path: the .h5 surface file.
    unfilled_as_nan: their ``*_loss`` / ``*_acc`` points still at -1 (not computed yet) become
      NaN; False keeps -1 (as -0.01 for accuracies).

  Returns:
    ``(xs, ys, values)``: ``ys`` is None for a 1-D file; ``values[name][i, j]`` is the value at
    ``(xs[i], ys[j])`` (shape ``(len(xs), len(ys))``, or ``(len(xs),)``) for every dataset with
    one value per grid point; ``*_acc`` percentages come back as ``*_accuracy`` fractions, other
    names unchanged (``train_loss``, ...).

  Raises:
    ValueError: no ``xcoordinates``, or a dataset with as many values as the grid has points
      but another shape.
  """
  h5py = _h5py()
  with h5py.File(path, "r") as f:
    names = sorted(f.keys())
    if "xcoordinates" not in names:
      raise ValueError(f"{os.fspath(path)} has no 'xcoordinates' dataset: not a surface file of "
                       f"Li et al.'s plot_surface.py (found {names}).")
    items = {k: _checked(f, k, path, h5py) for k in names}
    for k in ("xcoordinates", "ycoordinates"):
      if k in items and not isinstance(items[k], h5py.Dataset):
        raise ValueError(f"{k!r} in {os.fspath(path)} is a {type(items[k]).__name__}, not a "
                         "dataset of coordinates.")
    xs = np.asarray(items["xcoordinates"][()], dtype=np.float64).reshape(-1)
    ys = (np.asarray(items["ycoordinates"][()], dtype=np.float64).reshape(-1)
          if "ycoordinates" in items else None)
    nx, ny = xs.size, (None if ys is None else ys.size)
    raw = {k: np.asarray(d[()]) for k, d in items.items()
           if isinstance(d, h5py.Dataset) and k not in _COORDINATES and k != "dir_file"
           and d.dtype.kind in "fiu" and d.size == (nx if ny is None else nx * ny)}
  values = {}
  for key, a in raw.items():
    a = a.astype(np.float64)
    if ny is None:
      a = a.reshape(nx)
    else:
      if a.shape not in ((nx, ny), (ny, nx)):
        raise ValueError(f"{key!r} in {os.fspath(path)} has shape {a.shape}; expected ({nx}, "
                         f"{ny}) for {nx} x-coordinates and {ny} y-coordinates.")
      a = a.reshape(ny, nx).T  # flat element j * nx + i is the value at (x[i], y[j])
    name, factor = _our_name(key)
    if unfilled_as_nan and (key.endswith("_loss") or key.endswith("_acc")):
      a = np.where(a == _UNFILLED, np.nan, a)
    values[name] = np.ascontiguousarray(a * factor)
  return xs, ys, values


def _as_direction_list(directions) -> tuple[PyTree, ...]:
  """A tuple is always the sequence of directions; anything else is one direction."""
  if not isinstance(directions, tuple):
    return (directions,)
  if len(directions) not in (1, 2):
    raise ValueError(f"directions: a file holds one or two directions (xdirection, ydirection), "
                     f"got a tuple of {len(directions)}; wrap one direction that is itself a "
                     "tuple as (d,).")
  if len(directions) == 2:
    trees.check_same_structure(*directions, names=("xdirection", "ydirection"))
  return directions


def _storable(leaf) -> np.ndarray:
  a = np.asarray(leaf)
  if a.dtype.kind == "b" or a.dtype in (np.float16, np.float32, np.float64) or (
      a.dtype.kind in "iu"):
    return a
  return a.astype(np.float32)  # e.g. bfloat16, which HDF5 cannot store


def write_directions_h5(path: str | os.PathLike, directions: PyTree | Sequence[PyTree], *,
                        overwrite: bool = False) -> None:
  """Writes one or two directions as Li et al.'s ``xdirection`` / ``ydirection`` groups.

  Args:
    path: the .h5 file to write (atomically).
    directions: a tuple ``(d1,)`` or ``(d1, d2)`` of pytrees of the same structure, or one
      pytree that is not a tuple (a 1-D direction file; a tuple is always read as the sequence
      of directions, so wrap a direction that is itself a tuple as ``(d,)``). Leaves are
      written in `jax.tree.leaves` order as datasets ``"0"``, ``"1"``, ...; bfloat16 leaves as
      float32 (HDF5 has no bfloat16). The leaf paths are recorded in the group attribute
      ``landscape_jax_paths``.
    overwrite: replace an existing file (default: refuse).

  Raises:
    ValueError: a tuple of more than two directions, two directions of different structures,
      or a direction without leaves.
    FileExistsError: `path` exists and not `overwrite`.
  """
  dirs = _as_direction_list(directions)
  stored = []
  for name, d in zip(_DIRECTIONS, dirs, strict=False):
    leaves = jax.tree.leaves(d)
    if not leaves:
      raise ValueError(f"directions: the {name} has no array leaves.")
    stored.append((name, [_storable(x) for x in leaves], trees.leaf_paths(d)))
  _check_new(path, overwrite)

  def fill(f):
    for name, arrays, paths in stored:
      grp = f.create_group(name)
      for i, a in enumerate(arrays):
        grp.create_dataset(str(i), data=a)
      grp.attrs[_PATHS_ATTR] = paths

  _write_atomically(path, fill)


def _dtype(leaf) -> np.dtype:
  return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype


def read_directions_h5(path: str | os.PathLike, *, like: PyTree | None = None
                       ) -> list[PyTree] | list[list[np.ndarray]]:
  """Reads the directions of a Li et al. direction file.

  Args:
    path: the .h5 direction file (``xdirection`` and, for 2-D plots, ``ydirection``).
    like: a pytree (e.g. the parameters) to rebuild each direction in: the file must hold one
      array per leaf, in `jax.tree.leaves` order, of the leaf's shape; arrays are cast to the
      leaf's dtype. When the file records leaf paths (written by `write_directions_h5`), they
      must equal `like`'s. None: the arrays as stored.

  Returns:
    ``[d1]`` or ``[d1, d2]``: pytrees like `like`, or (without `like`) lists of NumPy arrays in
    the file's order (their ``net_plotter.load_directions`` layout).

  Raises:
    ValueError: no ``xdirection`` group, or a file that does not fit `like` (the message names
      the first leaf that differs).
  """
  h5py = _h5py()
  out = []
  with h5py.File(path, "r") as f:
    if "xdirection" not in f:
      raise ValueError(f"{os.fspath(path)} has no 'xdirection' group: not a direction file of "
                       f"Li et al.'s net_plotter.py (found {sorted(f.keys())}).")
    for name in _DIRECTIONS if "ydirection" in f else _DIRECTIONS[:1]:
      grp = _checked(f, name, path, h5py)
      if not isinstance(grp, h5py.Group):
        raise ValueError(f"{name!r} in {os.fspath(path)} is a {type(grp).__name__}, not a group "
                         "of datasets '0', '1', ... (one per parameter array).")
      keys = list(grp.keys())
      expected = [str(i) for i in range(len(keys))]
      if sorted(keys, key=lambda k: (len(k), k)) != expected:
        odd = sorted(set(keys) - set(expected))
        raise ValueError(f"{name} in {os.fspath(path)} holds datasets {odd[:5]} that are not "
                         f"named '0'..'{len(keys) - 1}' (one per parameter array, in leaf "
                         "order); not a direction file of net_plotter.py or write_directions_h5.")
      items = [_checked(grp, k, path, h5py, where=f"{name}/") for k in expected]
      for k, d in zip(expected, items, strict=True):
        if not isinstance(d, h5py.Dataset):
          raise ValueError(f"{name}/{k} in {os.fspath(path)} is a {type(d).__name__}, not a "
                           "dataset.")
      arrays = [np.asarray(d[()]) for d in items]
      paths = grp.attrs.get(_PATHS_ATTR)
      if like is None:
        out.append(arrays)
        continue
      leaves, treedef = jax.tree.flatten(like)
      like_paths = trees.leaf_paths(like)
      if len(arrays) != len(leaves):
        raise ValueError(f"{name} in {os.fspath(path)} holds {len(arrays)} arrays but `like` has "
                         f"{len(leaves)} leaves; read it without like= and map the arrays "
                         "yourself.")
      if paths is not None:
        paths = [p.decode() if isinstance(p, bytes) else str(p) for p in paths]
        if paths != like_paths:
          k = next(i for i, (a, b) in enumerate(zip(paths, like_paths, strict=True)) if a != b)
          raise ValueError(f"{name} in {os.fspath(path)} was written for another tree: its leaf "
                           f"{k} is {paths[k]!r}, `like`'s is {like_paths[k]!r}.")
      for k, (a, leaf) in enumerate(zip(arrays, leaves, strict=True)):
        if a.shape != np.shape(leaf):
          raise ValueError(f"{name}/{k} in {os.fspath(path)} has shape {a.shape} but `like`'s "
                           f"leaf {like_paths[k]!r} has {np.shape(leaf)}.")
      out.append(jax.tree.unflatten(treedef, [
        a.astype(_dtype(leaf)) for a, leaf in zip(arrays, leaves, strict=True)]))
  return out
