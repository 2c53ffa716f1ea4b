"""Shared helpers of the plotting package: figures, axes, saving, masking, grids and levels.

Everything here works on numpy arrays and `matplotlib.figure.Figure` objects created directly
(no `pyplot`, no global figure state, no display): it works on headless machines and in tests.
The figures the plot functions make are `InlineFigure`s, which a Jupyter notebook shows inline
without `%matplotlib inline`; `save` writes any Figure through the atomic file writer.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from landscape_jax.core import fileio

__all__ = [
  "as_float",
  "check_surface",
  "contour_levels",
  "DEFAULT_DPI",
  "DEFAULT_FORMATS",
  "EMPTY_MESSAGE",
  "empty_message",
  "finish",
  "figure_and_axes",
  "finite_range",
  "has_finite",
  "InlineFigure",
  "KNOWN_EXTENSIONS",
  "mask_nonpositive",
  "masked",
  "mesh",
  "new_figure",
  "output_paths",
  "plane_xy",
  "REFERENCE_LEVELS",
  "root_figure",
  "save",
]

DEFAULT_FORMATS = ("png", "pdf")
DEFAULT_DPI = 150
KNOWN_EXTENSIONS = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff")
# Contour levels of the reference code of Li et al. 2018 (plot_2D.py): arange(0.1, 10, 0.5).
REFERENCE_LEVELS = np.arange(0.1, 10, 0.5)
EMPTY_MESSAGE = "no finite values to plot\n(every value is NaN or inf)"


class InlineFigure(Figure):
  """A `matplotlib.figure.Figure` that shows itself as a PNG in Jupyter (`_repr_png_`).

  A Figure made without pyplot displays only as text ("<Figure size ... with 1 Axes>") in a fresh
  kernel until `%matplotlib inline` registers matplotlib's formatter; this one needs nothing.
  Where that formatter is registered, IPython uses it instead (it looks types up first).
  """

  def _repr_png_(self) -> bytes:
    buf = io.BytesIO()
    self.savefig(buf, format="png")
    return buf.getvalue()


def new_figure(figsize: tuple[float, float] = (6.4, 4.8)) -> InlineFigure:
  """A backend-free figure with constrained layout (labels and colour bars never overlap)."""
  return InlineFigure(figsize=figsize, layout="constrained")


def root_figure(ax: Axes) -> Figure:
  """The top-level Figure of `ax` (the one to save, also when `ax` sits in a SubFigure)."""
  return ax.figure.figure  # Axes -> Figure or SubFigure -> its root Figure (a Figure's is itself)


def figure_and_axes(
  ax: Axes | None, figsize: tuple[float, float], *, projection: str | None = None
) -> tuple[Figure, Axes]:
  """(figure, axes) to draw on: `ax` and its root figure, or a new figure with one axes.

  Raises a clear error when `ax` is not a matplotlib Axes, or not a 3-D one where
  `projection="3d"` is asked for.
  """
  if ax is None:
    fig = new_figure(figsize)
    return fig, fig.add_subplot(projection=projection)
  if not isinstance(ax, Axes):
    raise TypeError(
      f"`ax` must be a matplotlib Axes (e.g. `fig.add_subplot()`), got {type(ax).__name__}."
    )
  if projection == "3d" and getattr(ax, "name", "") != "3d":
    raise ValueError(
      "`ax` must be a 3-D Axes for a surface plot: make it with"
      " `fig.add_subplot(projection='3d')`, or leave `ax=None`."
    )
  return root_figure(ax), ax


def output_paths(path: str | os.PathLike, formats: str | Sequence[str] | None) -> list[str]:
  """Files to write for `path`: `path.<fmt>` per format (a known extension on `path` is dropped).

  `formats=None` writes the extension given on `path` if it has one, else PNG and PDF.
  """
  path = os.fspath(path)
  stem, ext = os.path.splitext(path)
  if ext.lower() not in KNOWN_EXTENSIONS:
    stem, ext = path, ""
  if formats is None:
    formats = (ext[1:],) if ext else DEFAULT_FORMATS
  elif isinstance(formats, str):
    formats = (formats,)
  formats = tuple(f.lower().lstrip(".") for f in formats)
  if not formats:
    raise ValueError("`formats` is empty: give at least one file format, e.g. ('png', 'pdf').")
  supported = Figure().canvas.get_supported_filetypes()
  for f in formats:
    if f not in supported:
      raise ValueError(f"Unknown figure format {f!r}; use one of {sorted(supported)}.")
  return [f"{stem}.{f}" for f in formats]


def _check_figure(fig: Any, name: str) -> Figure:
  if not isinstance(fig, Figure):
    raise TypeError(
      f"`{name}` must be a matplotlib Figure (what the plot functions return) or a"
      f" {{name: Figure}} mapping, got {type(fig).__name__}."
    )
  return fig


def _write(fig: Figure, files: list[str], dpi: float) -> list[str]:
  for f in files:
    parent = os.path.dirname(f)
    if parent:
      os.makedirs(parent, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(f)[1][1:], dpi=dpi)
    fileio.atomic_write_bytes(f, buf.getvalue())  # a killed save never leaves a torn figure
  return files


def save(
  fig: Figure | Mapping[str, Figure],
  path: str | os.PathLike,
  formats: str | Sequence[str] | None = None,
  *,
  dpi: float = DEFAULT_DPI,
) -> list[str]:
  """Writes a figure once per format and returns the written paths.

  Every file goes through `core.fileio.atomic_write_bytes` (a killed save never leaves a torn
  figure); the parent folder is created.

  Args:
    fig: a Figure (what every `plot_*` returns), or {name: Figure} (what `plot_2d_all` returns),
      written as `<path>_<name>.<fmt>`.
    path: output path, with or without extension.
    formats: file formats, e.g. ("png", "pdf") or "svg". None: the extension of `path` if it has
      a figure extension, else PNG and PDF.
    dpi: raster resolution (PNG, JPEG, TIFF).

  Returns:
    The list of written files.
  """
  files = output_paths(path, formats)
  if not isinstance(fig, Mapping):
    return _write(_check_figure(fig, "fig"), files, dpi)
  if not fig:
    raise ValueError("`fig` is an empty mapping: nothing to save.")
  figs = {key: _check_figure(f, f"fig[{key!r}]") for key, f in fig.items()}  # all, before writing
  out = []
  for key, f in figs.items():
    out += _write(f, [f"{stem}_{key}{ext}" for stem, ext in map(os.path.splitext, files)], dpi)
  return out


def as_float(name: str, x: Any, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
  """`x` as a float64 numpy array (lists, numpy or JAX arrays, ...), checking its dimensions.

  Raises an error naming the argument for non-numeric input and for a wrong number of dimensions.
  """
  try:
    a = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise TypeError(f"`{name}` must be a numeric array, got {type(x).__name__}: {e}") from e
  if ndim is not None:
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if a.ndim not in allowed:
      raise ValueError(
        f"`{name}` must have {' or '.join(map(str, allowed))} dimension(s), got shape {a.shape}."
      )
  return a


def plane_xy(name: str, a: Any, allow_single: bool = False) -> np.ndarray:
  """`a` as (k, 2) coordinates of points in a plane (one row per point; a single (2,) point
  with `allow_single`), checked, as float64."""
  a = as_float(name, a)
  if allow_single and a.ndim == 1:
    a = a[None, :]
  if a.ndim != 2 or a.shape[1] != 2:
    raise ValueError(f"`{name}` must be (k, 2) plane coordinates, one row per point, got shape "
                     f"{a.shape}.")
  return a


def masked(x: Any) -> np.ma.MaskedArray:
  """Float masked array with NaN and +-inf masked (diverged grid points are left blank)."""
  return np.ma.masked_invalid(np.ma.asarray(x, dtype=np.float64))


def mask_nonpositive(x: np.ma.MaskedArray) -> np.ma.MaskedArray:
  """Masks values <= 0 as well, for logarithmic axes and colour scales."""
  return np.ma.masked_where(np.ma.filled(x, 1.0) <= 0, x)


def has_finite(x: np.ma.MaskedArray) -> bool:
  return bool(np.ma.count(x) > 0)


def empty_message(ax, text: str = EMPTY_MESSAGE) -> None:
  """Writes a clear message in the middle of an axes that has nothing finite to show."""
  ax.text(
    0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.3", fontsize=11
  )


def check_surface(xs, ys, z, *, name: str = "z") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Validates a 2-D result: xs (n,), ys (m,) and z (n, m) with z[i, j] at (xs[i], ys[j]).

  Returns float arrays. The result arrays of `surface_grid` follow this [i, j] = (x_i, y_j)
  convention; matplotlib's contour(X, Y, Z) wants Z[j, i], so plots use z.T.
  """
  xs = as_float("xs", xs, 1)
  ys = as_float("ys", ys, 1)
  z = as_float(name, z)
  if z.ndim == 1:
    raise ValueError(
      f"`{name}` is 1-D (shape {z.shape}): this is a 1-D result; plot it with plot_1d."
    )
  if z.ndim != 2:
    raise ValueError(f"`{name}` must be 2-D with shape (len(xs), len(ys)), got shape {z.shape}.")
  if z.shape != (xs.size, ys.size):
    hint = ""
    if z.shape == (ys.size, xs.size):
      hint = (
        " It has shape (len(ys), len(xs)): results are indexed z[i, j] = (xs[i], ys[j]);"
        " pass z.T if your array is stored the other way round."
      )
    raise ValueError(
      f"`{name}` has shape {z.shape} but (len(xs), len(ys)) = ({xs.size}, {ys.size}).{hint}"
    )
  if xs.size < 2 or ys.size < 2:
    raise ValueError(
      f"A 2-D plot needs at least 2 points along each axis, got a {xs.size} x {ys.size} grid;"
      " plot a single row or column with plot_1d."
    )
  if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
    raise ValueError("`xs` and `ys` must be finite grid coordinates.")
  return xs, ys, z


def mesh(xs: np.ndarray, ys: np.ndarray, z: np.ndarray):
  """(X, Y, Z) in matplotlib's convention: arrays of shape (len(ys), len(xs)), Z = z.T."""
  x_mesh, y_mesh = np.meshgrid(xs, ys)  # 'xy' indexing: X[j, i] = xs[i], Y[j, i] = ys[j]
  return x_mesh, y_mesh, z.T


def finite_range(z: np.ma.MaskedArray) -> tuple[float, float]:
  return float(z.min()), float(z.max())


def contour_levels(
  z: np.ma.MaskedArray, levels=None, *, log: bool = False, num: int = 15
) -> np.ndarray | None:
  """Contour levels for `z` (already masked). Returns None when there is nothing to contour.

  * explicit `levels` (an int count or a sequence) are used as given (a count becomes that many
    evenly spaced, or log-spaced when `log`, levels over the finite range);
  * default, linear: the reference levels arange(0.1, 10, 0.5) of Li et al. 2018, restricted to the
    data range; when fewer than 3 of them fall inside (very flat or very low losses), `num` levels
    from matplotlib's MaxNLocator over the data range;
  * default, log: `num` log-spaced levels between the smallest positive and the largest value.
  """
  if not has_finite(z):
    return None
  lo, hi = finite_range(z)
  if levels is not None and not isinstance(levels, int | np.integer):
    lv = np.asarray(levels, dtype=np.float64).ravel()
    if lv.size == 0 or not np.all(np.isfinite(lv)):
      raise ValueError("`levels` must be a non-empty sequence of finite numbers.")
    return np.unique(lv)
  count = int(levels) if levels is not None else num
  if count < 1:
    raise ValueError(f"`levels` must be a positive count or a sequence, got {levels}.")
  if hi <= lo:
    return None
  if log:
    if hi <= 0:
      return None
    lo_pos = lo if lo > 0 else float(np.ma.masked_less_equal(z, 0).min())
    if not hi > lo_pos:
      return None
    return np.geomspace(lo_pos, hi, count)
  if levels is None:
    ref = REFERENCE_LEVELS[(REFERENCE_LEVELS >= lo) & (REFERENCE_LEVELS <= hi)]
    if ref.size >= 3:
      return ref
    return ticker.MaxNLocator(num).tick_values(lo, hi)
  return np.linspace(lo, hi, count)


def finish(ax, *, title=None, xlabel=None, ylabel=None) -> None:
  if title:
    ax.set_title(title)
  if xlabel is not None:
    ax.set_xlabel(xlabel)
  if ylabel is not None:
    ax.set_ylabel(ylabel)

