"""Adaptive loss surfaces and paths: the points go where the interpolation error is.

A 51 x 51 surface costs 2,601 passes over the data, yet most of a loss surface is smooth: the
detail lives near minima, along valleys and where contour levels bend. `refine_surface` and
`refine_path` start from a coarse regular grid and refine, quadtree style (bisection in 1-D), only
the cells whose estimated interpolation error exceeds a tolerance in loss units.

Lattice. Every point lies on a dyadic sub-lattice of the box: with ``initial = n`` points per axis
and ``max_level = L``, point ``i`` of an axis is ``lo + (hi - lo) * i / ((n - 1) 2^L)``. Points
are identified by their integer lattice indices, so a run is exactly reproducible and its samples
are a subset of the regular ``((n - 1) 2^L + 1)``-point grid of the box.

Cells. A cell of level ``l`` spans ``2^(L - l)`` lattice steps per axis; level 0 is the initial
grid. Splitting a 2-D cell adds its four edge midpoints and its centre (five points, fewer where a
neighbour already added them) and makes four children; a 1-D interval adds its midpoint.

Error estimate. The interpolant on a leaf cell is multilinear in its corners. At the points its
split would add (edge midpoints and centre; the midpoint in 1-D) we compare that interpolant with

* the measured value, where the point was already evaluated (a neighbour's split put it there), or
* a higher-order interpolant of all samples so far: Clough-Tocher (piecewise cubic, C1; Clough &
  Tocher 1965, scipy's `CloughTocher2DInterpolator`) in 2-D, a not-a-knot cubic spline in 1-D.

The cell's estimate is the largest absolute difference, ``e_c = max_p |f_lin(p) - f_ref(p)|``.
For smooth f the multilinear error is ``O(h^2)`` and the cubic's ``O(h^3)``, so their difference
estimates the multilinear error; the cubic interpolant returned by `AdaptiveResult.to_grid` (the
default) is normally more accurate still.

Refinement rule. A leaf is split when ``e_c > tol + noise_k * se_c``, or ``e_c > level_tol +
noise_k * se_c`` when one of the requested contour `levels` lies between the smallest and largest
of its corner and test values, where ``se_c`` is the largest standard error (``se_key``, e.g.
``"loss_sem"`` of `adapters.error_control`) among its corners (0 without one). Cells with a
non-finite corner are never split (diverged far-away points are recorded, not chased); with
`max_value`, neither are cells whose corner and test values all exceed it. Each round splits the
qualifying cells in order of decreasing ``e_c`` until `max_points` would be exceeded.

How the tolerances compose. With per-point estimates of standard error ``se`` (error-controlled
metrics) the measured values are ``f + eps`` with ``|eps| <~ k se`` (``k = 2-3``). The refinement
stops where the interpolation error estimate is below ``tol + k se``, so the returned surface is
within about ``tol + k se`` of the sampled estimates and within ``tol + 2 k se`` of the exact
loss (the estimate of a cell is itself a difference of noisy values). Without the ``k se`` term,
refinement would chase the noise: differences of ``~se`` between neighbours never vanish with h.

Evaluation. `refine_surface` and `refine_path` take ``evaluate(coords, round_index) -> {metric:
(N,)}``, so any backend fits (tests use analytic numpy functions). `adaptive_surface` and
`adaptive_path` evaluate each round's points with the library's compiled, chunked, sharded,
resumable point-evaluation engine (`surface.surface_points`), one store per round
(``<store>/round-000``, ``round-001``, ...): a rerun recomputes nothing already stored and
continues where it stopped, with identical results.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from landscape_jax.core import fileio, surface, trees
from landscape_jax.core.engine import EngineOptions
from landscape_jax.core.store import jsonable

PyTree = Any
_log = logging.getLogger(__name__)
METHODS = ("cubic", "linear")


# ------------------------------------------------------------------------------------ helpers
def select_key(keys: Sequence[str], key: str | None = None) -> str:
  """The metric refined on: `key` if given, else ``"loss"``, else the first key with "loss"."""
  keys = list(keys)
  if key is not None:
    if key not in keys:
      raise ValueError(f"key={key!r} is not a metric of metric_fn; it returns {keys}. Pass one "
                       "of these as key=.")
    return key
  if "loss" in keys:
    return "loss"
  for k in keys:
    if "loss" in k:
      return k
  raise ValueError(f"No metric named like 'loss' among {keys}; name the one to refine on with "
                   "key=.")


def _check_range(r, name: str) -> tuple[float, float]:
  try:
    lo, hi = (float(v) for v in r)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a pair (lo, hi) of numbers, got {r!r}.") from e
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
    raise ValueError(f"{name} must be finite with lo < hi, got {r!r}; e.g. (-1.0, 1.0).")
  return lo, hi


def _check_positive_int(v, name: str, minimum: int) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}.")
  return int(v)


def _corner_bits(d: int) -> np.ndarray:
  """(2^d, d) 0/1 offsets of a cell's corners, first axis slowest."""
  return np.array(np.meshgrid(*[[0, 1]] * d, indexing="ij")).reshape(d, -1).T


def _test_offsets(d: int) -> np.ndarray:
  """(3^d - 2^d, d) offsets in half-cells (0, 1, 2) of the points a split adds."""
  grid = np.array(np.meshgrid(*[[0, 1, 2]] * d, indexing="ij")).reshape(d, -1).T
  return grid[np.any(grid == 1, axis=1)]


class _Lookup:
  """Rows of lattice points (integer (n, d) arrays) among the samples; -1 where absent."""

  def __init__(self, lattice: np.ndarray, size: tuple[int, ...]):
    self.strides = np.cumprod([1, *[m + 1 for m in size[::-1]]])[:-1][::-1].astype(np.int64)
    codes = np.asarray(lattice, np.int64).reshape(-1, len(size)) @ self.strides
    self.order = np.argsort(codes, kind="stable")
    self.sorted = codes[self.order]

  def __call__(self, points) -> np.ndarray:
    pts = np.asarray(points, np.int64)
    codes = pts.reshape(-1, pts.shape[-1]) @ self.strides
    if not self.sorted.size:
      return np.full(pts.shape[:-1], -1, np.int64)
    pos = np.minimum(np.searchsorted(self.sorted, codes), self.sorted.size - 1)
    rows = np.where(self.sorted[pos] == codes, self.order[pos], -1)
    return rows.reshape(pts.shape[:-1])


# --------------------------------------------------------------------------------- settings
DEFAULT_INITIAL = {1: 17, 2: 9}  # points per axis of the initial grid: path, surface
DEFAULT_MAX_LEVEL = {1: 5, 2: 4}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Refinement:
  """The refinement settings of `refine`, `refine_surface`, `refine_path`, `adaptive_surface`
  and `adaptive_path` (the rule in the module docstring), validated on creation.

  Example::

    res = lj.adaptive_surface(metric_fn, params, (d1, d2), (-1, 1), (-1, 1),
                              refinement=lj.Refinement(tol=0.01, max_points=1500))

  Attributes:
    tol: interpolation tolerance in the units of the metric `key` (a finite number > 0).
    initial: points per axis of the initial regular grid (>= 2; an int or one per axis); default
      None: 9 for a surface, 17 for a path.
    max_level: the most times a cell may be halved (0 to 20); default None: 4 for a surface, 5
      for a path.
    max_points: the budget of evaluated points, initial grid included (None: no budget).
    key: the metric refined on (default ``"loss"`` or the first key containing "loss").
    levels: contour levels whose crossing cells are refined to `level_tol` (kept as a tuple).
    level_tol: tolerance for cells crossed by a level (default ``tol / 4``).
    se_key: a metric holding each value's standard error (default ``key + "_sem"`` if returned).
    noise_k: multiple of the standard error added to the tolerances (refinement must not chase
      noise; 2-3).
    max_value: cells whose corner and test values all exceed it are not refined (None: all).
    max_rounds: the most refinement rounds after the initial grid (None: until done).

  Raises:
    ValueError: on creation, a setting out of range (the message names it and says what to pass).
  """

  tol: float
  initial: int | tuple[int, ...] | None = None
  max_level: int | None = None
  max_points: int | None = None
  key: str | None = None
  levels: tuple[float, ...] | None = None
  level_tol: float | None = None
  se_key: str | None = None
  noise_k: float = 2.0
  max_value: float | None = None
  max_rounds: int | None = None

  def __post_init__(self):
    tol = self.tol
    if isinstance(tol, bool) or not (isinstance(tol, (int, float, np.floating))
                                     and math.isfinite(tol) and tol > 0):
      raise ValueError(f"tol must be a finite number > 0 (in loss units), got {tol!r}.")
    if self.initial is not None:
      initial = self.initial
      if isinstance(initial, (int, np.integer)) and not isinstance(initial, bool):
        initial = _check_positive_int(initial, "initial", 2)
      else:
        try:
          initial = tuple(_check_positive_int(n, "initial", 2) for n in initial)
        except TypeError as e:
          raise ValueError(f"initial must be an int >= 2 or one int per axis, got "
                           f"{initial!r}.") from e
      object.__setattr__(self, "initial", initial)
    if self.max_level is not None:
      max_level = _check_positive_int(self.max_level, "max_level", 0)
      if max_level > 20:
        raise ValueError(f"max_level must be <= 20 (a lattice step of cell / 2^20), got "
                         f"{max_level}.")
      object.__setattr__(self, "max_level", max_level)
    for name, minimum in (("max_points", 1), ("max_rounds", 0)):
      if getattr(self, name) is not None:
        object.__setattr__(self, name, _check_positive_int(getattr(self, name), name, minimum))
    if not (isinstance(self.noise_k, (int, float, np.floating)) and math.isfinite(self.noise_k)
            and self.noise_k >= 0):
      raise ValueError(f"noise_k must be a finite number >= 0, got {self.noise_k!r}.")
    if self.levels is not None:
      levels = np.asarray(self.levels, np.float64).ravel()
      if not np.all(np.isfinite(levels)):
        raise ValueError(f"levels must be finite numbers, got {self.levels!r}.")
      object.__setattr__(self, "levels", tuple(float(v) for v in levels))
    if self.level_tol is not None and not (math.isfinite(self.level_tol) and self.level_tol > 0):
      raise ValueError(f"level_tol must be a finite number > 0, got {self.level_tol!r}.")

  def settings(self, d: int) -> dict:
    """The settings with the defaults of a `d`-dimensional refinement filled in, as JSON-able
    values (what a store records; `max_rounds` is not recorded: it only stops early)."""
    return {"tol": self.tol,
            "initial": DEFAULT_INITIAL[d] if self.initial is None else self.initial,
            "max_level": DEFAULT_MAX_LEVEL[d] if self.max_level is None else self.max_level,
            "max_points": self.max_points, "key": self.key,
            "levels": None if self.levels is None else list(self.levels),
            "level_tol": self.level_tol, "se_key": self.se_key, "noise_k": self.noise_k,
            "max_value": self.max_value}


def refinement_settings(refinement) -> Refinement:
  """`refinement` itself; anything else is refused with what to pass."""
  if not isinstance(refinement, Refinement):
    raise TypeError(f"refinement must be a Refinement (lj.Refinement(tol=..., max_points=..., "
                    f"...)), got {type(refinement).__name__}.")
  return refinement


# ------------------------------------------------------------------------------------- result
@dataclasses.dataclass
class AdaptiveResult:
  """Samples of an adaptive surface (d = 2) or path (d = 1) and their interpolants.

  Attributes:
    ranges: ``((lo, hi),)`` or ``((x_lo, x_hi), (y_lo, y_hi))``: the box.
    initial: points per axis of the initial grid.
    max_level: refinement levels below the initial grid (lattice step: cell / 2^max_level).
    key: the metric refined on.
    lattice: (N, d) integer lattice indices of the samples, in evaluation order.
    coords: (N, d) their coordinates (see the module docstring).
    values: ``{metric: (N,)}`` at `coords`.
    rounds: (N,) the round that evaluated each sample (0: the initial grid).
    cells: (K, 1 + d) leaf cells ``(level, index_1, ..., index_d)``.
    cell_error: (K,) each leaf's error estimate (NaN where a corner is non-finite).
    tol: the interpolation tolerance.
    converged: True when every leaf's estimate is within its tolerance (False: stopped by the
      budget, by `max_rounds`, or leaves at the finest level still exceed it).
    history: one dict per round (``round``, ``points``, ``new_points``, ``split``,
      ``max_error``).
  """

  ranges: tuple[tuple[float, float], ...]
  initial: tuple[int, ...]
  max_level: int
  key: str
  lattice: np.ndarray
  coords: np.ndarray
  values: dict[str, np.ndarray]
  rounds: np.ndarray
  cells: np.ndarray
  cell_error: np.ndarray
  tol: float
  converged: bool
  history: list[dict]

  @property
  def num_points(self) -> int:
    return int(self.coords.shape[0])

  @property
  def dim(self) -> int:
    return len(self.ranges)

  @property
  def lattice_size(self) -> tuple[int, ...]:
    """Lattice steps per axis, ``(initial - 1) * 2^max_level``."""
    return tuple((n - 1) << self.max_level for n in self.initial)

  def lattice_axes(self) -> tuple[np.ndarray, ...]:
    """The coordinates of the full regular lattice that every sample lies on, per axis."""
    return tuple(_lattice_coords(np.arange(m + 1), r, m)
                 for r, m in zip(self.ranges, self.lattice_size, strict=True))

  def _unit(self, axes) -> np.ndarray:
    """Query points (Q, d) in lattice units, from per-axis coordinates (row-major grid)."""
    axes = [np.asarray(a, np.float64).ravel() for a in axes]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([(g.ravel() - r[0]) / (r[1] - r[0]) * m
                     for g, r, m in zip(mesh, self.ranges, self.lattice_size, strict=True)], 1)

  def _locate(self, q: np.ndarray) -> np.ndarray:
    """Index into `cells` of the leaf holding each query point (lattice units); -1 outside."""
    d, big = self.dim, max(self.lattice_size) + 1
    out = np.full(q.shape[0], -1, np.int64)
    inside = np.all((q >= 0) & (q <= np.array(self.lattice_size)), axis=1)
    levels = self.cells[:, 0]
    for lvl in range(self.max_level + 1):
      sel = np.flatnonzero(levels == lvl)
      if not sel.size:
        continue
      size = 1 << (self.max_level - lvl)
      top = np.array([(n - 1) << lvl for n in self.initial]) - 1
      idx = np.clip(np.floor(q / size).astype(np.int64), 0, top)
      codes = np.zeros(q.shape[0], np.int64)
      leaf_codes = np.zeros(sel.size, np.int64)
      for k in range(d):
        codes = codes * big + idx[:, k]
        leaf_codes = leaf_codes * big + self.cells[sel, 1 + k]
      order = np.argsort(leaf_codes)
      pos = np.searchsorted(leaf_codes[order], codes)
      pos = np.minimum(pos, sel.size - 1)
      hit = (leaf_codes[order][pos] == codes) & inside & (out < 0)
      out[hit] = sel[order[pos[hit]]]
    return out

  def _multilinear(self, q: np.ndarray, cell: np.ndarray, values: np.ndarray) -> np.ndarray:
    lookup = _Lookup(self.lattice, self.lattice_size)
    out = np.full(q.shape[0], np.nan)
    ok = cell >= 0
    lvl = self.cells[cell[ok], 0]
    size = (1 << (self.max_level - lvl)).astype(np.float64)
    lo = self.cells[cell[ok], 1:] * size[:, None]
    frac = np.clip((q[ok] - lo) / size[:, None], 0.0, 1.0)
    acc = np.zeros(frac.shape[0])
    for bits in _corner_bits(self.dim):
      corner = (lo + bits * size[:, None]).astype(np.int64)
      fv = values[lookup(corner)]
      w = np.prod(np.where(bits, frac, 1.0 - frac), axis=1)
      acc = acc + w * fv
    out[ok] = acc
    return out

  def interpolate(self, points, *, keys: Sequence[str] | None = None, method: str = "cubic"
                  ) -> dict[str, np.ndarray]:
    """Metric values at arbitrary points (P, d) of the box (NaN outside it).

    ``method="linear"``: the multilinear interpolant of the leaf cell holding the point (the
    interpolant whose error the refinement controls); ``"cubic"`` (default): Clough-Tocher in
    2-D, a not-a-knot cubic spline in 1-D, through all finite samples. Both give NaN in cells with
    a non-finite corner.
    """
    if method not in METHODS:
      raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    pts = np.asarray(points, np.float64).reshape(-1, self.dim)
    q = np.stack([(pts[:, k] - r[0]) / (r[1] - r[0]) * m for k, (r, m) in
                  enumerate(zip(self.ranges, self.lattice_size, strict=True))], 1)
    return self._interpolate_units(q, keys=keys, method=method)

  def _interpolate_units(self, q, *, keys, method):
    keys = list(self.values) if keys is None else list(keys)
    for k in keys:
      if k not in self.values:
        raise ValueError(f"keys: {k!r} is not one of the sampled metrics {list(self.values)}.")
    cell = self._locate(q)
    # queries on a sampled lattice point take its value (a hanging node on a coarser leaf's edge
    # would otherwise get that leaf's multilinear value)
    rq = np.round(q)
    on_lattice = np.all(np.abs(q - rq) < 1e-9, axis=1) & (cell >= 0)
    rows = np.full(q.shape[0], -1, np.int64)
    rows[on_lattice] = _Lookup(self.lattice, self.lattice_size)(rq[on_lattice].astype(np.int64))
    hit = rows >= 0
    out = {}
    for k in keys:
      v = np.asarray(self.values[k], np.float64)
      lin = self._multilinear(q, cell, v)
      lin[hit] = v[rows[hit]]
      if method == "linear":
        out[k] = lin
        continue
      pred = _predictor(self.lattice / np.array(self.lattice_size), v)
      cub = lin if pred is None else pred(q / np.array(self.lattice_size))
      out[k] = np.where(np.isfinite(lin), cub, np.nan)
    return out

  def to_grid(self, xs, ys=None, *, keys: Sequence[str] | None = None, method: str = "cubic"
              ) -> dict[str, np.ndarray]:
    """The metrics on a regular grid, shaped as `surface_grid` returns them.

    ``res[k][i, j]`` at ``(xs[i], ys[j])`` (2-D) or ``res[k][i]`` at ``xs[i]`` (1-D), so every
    plot, the VTK export and the report take the result unchanged. See `interpolate` for
    `method`; points outside the box are NaN.
    """
    if (ys is None) != (self.dim == 1):
      raise ValueError("to_grid takes xs and ys for a surface, xs only for a path.")
    axes = (xs,) if ys is None else (xs, ys)
    shape = tuple(np.asarray(a).size for a in axes)
    if method not in METHODS:
      raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    res = self._interpolate_units(self._unit(axes), keys=keys, method=method)
    return {k: v.reshape(shape) for k, v in res.items()}

  def error_grid(self, xs, ys=None) -> np.ndarray:
    """The error estimate of the leaf cell holding each grid point (shape as `to_grid`)."""
    axes = (xs,) if ys is None else (xs, ys)
    shape = tuple(np.asarray(a).size for a in axes)
    cell = self._locate(self._unit(axes))
    out = np.where(cell >= 0, self.cell_error[np.maximum(cell, 0)], np.nan)
    return out.reshape(shape)


def _lattice_coords(idx, r, m):
  """``lo + (hi - lo) * idx / m`` (always this expression: identical floats in every run)."""
  return r[0] + (r[1] - r[0]) * (np.asarray(idx, np.float64) / m)


def _predictor(unit_points: np.ndarray, values: np.ndarray):
  """The higher-order interpolant of the finite samples (points in [0, 1]^d), or None."""
  ok = np.isfinite(values)
  pts, vals = unit_points[ok], values[ok]
  d = unit_points.shape[1]
  if d == 1:
    from scipy.interpolate import CubicSpline

    if pts.shape[0] < 2:
      return None
    order = np.argsort(pts[:, 0], kind="stable")
    spline = CubicSpline(pts[order, 0], vals[order], bc_type="not-a-knot")
    return lambda q: spline(np.asarray(q, np.float64)[:, 0])
  from scipy.interpolate import CloughTocher2DInterpolator
  from scipy.spatial import QhullError

  if pts.shape[0] < 4:
    return None
  order = np.lexsort(pts.T[::-1])
  try:
    ct = CloughTocher2DInterpolator(pts[order], vals[order])
  except (QhullError, ValueError):
    return None
  return lambda q: ct(np.asarray(q, np.float64))


# ----------------------------------------------------------------------------------- the core
def refine(evaluate: Callable[[np.ndarray, int], Mapping[str, Any]], ranges, *,
           refinement: Refinement) -> AdaptiveResult:
  """Adaptive sampling of a function on a 1-D interval or a 2-D box (see the module docstring).

  Args:
    evaluate: ``evaluate(coords, round_index) -> {metric: (N,)}`` for coords (N, d); called once
      per round with that round's new points (in row-major lattice order: increasing t in
      1-D, so an evaluator that needs sorted parameters, e.g. `curves.evaluate_curve`, fits).
    ranges: ``((lo, hi),)`` or ``((x_lo, x_hi), (y_lo, y_hi))``.
    refinement: the settings (`Refinement`: tolerance, initial grid, levels, budget, ...).

  Returns:
    An `AdaptiveResult`.
  """
  d = len(ranges)
  if d not in (1, 2):
    raise ValueError(f"ranges must hold one (path) or two (surface) (lo, hi) pairs, got {d}.")
  ranges = tuple(_check_range(r, f"ranges[{k}]") for k, r in enumerate(ranges))
  refinement = refinement_settings(refinement)
  settings = refinement.settings(d)
  tol = float(refinement.tol)
  initial, max_level = settings["initial"], settings["max_level"]
  initial = (initial,) * d if isinstance(initial, int) else tuple(initial)
  if len(initial) != d:
    raise ValueError(f"initial must be an int or {d} ints, got {initial!r}.")
  n_init = int(np.prod(initial))
  max_points, max_rounds = refinement.max_points, refinement.max_rounds
  if max_points is not None and max_points < n_init:
    raise ValueError(f"max_points={max_points} is below the initial grid's {n_init} points; "
                     "raise it or pass a smaller initial=.")
  key, se_key, noise_k = refinement.key, refinement.se_key, refinement.noise_k
  max_value = refinement.max_value
  level_arr = np.asarray(refinement.levels or (), np.float64)
  level_tol = tol / 4 if refinement.level_tol is None else float(refinement.level_tol)

  size = tuple((n - 1) << max_level for n in initial)
  top = 1 << max_level
  bits = _corner_bits(d)
  offsets = _test_offsets(d)

  lattice: list[np.ndarray] = []
  values: dict[str, list[np.ndarray]] = {}
  rounds: list[np.ndarray] = []

  def run(arr: np.ndarray, r: int):
    coords = np.stack([_lattice_coords(arr[:, k], ranges[k], size[k]) for k in range(d)], 1)
    out = evaluate(coords, r)
    if not isinstance(out, Mapping) or not out:
      raise ValueError("evaluate must return a non-empty dict {metric: (N,) values}.")
    if values and set(out) != set(values):
      raise ValueError(f"evaluate returned metrics {sorted(out)} in round {r}, "
                       f"{sorted(values)} before; it must return the same metrics every round.")
    for k, v in out.items():
      v = np.asarray(v).reshape(-1)
      if v.size != arr.shape[0]:
        raise ValueError(f"evaluate returned {v.size} values of {k!r} for {arr.shape[0]} points.")
      values.setdefault(k, []).append(v)
    lattice.append(arr)
    rounds.append(np.full(arr.shape[0], r, np.int64))

  # round 0: the initial grid, first axis slowest
  grid = np.array(np.meshgrid(*[np.arange(n) * top for n in initial], indexing="ij"))
  run(grid.reshape(d, -1).T.astype(np.int64), 0)
  key = select_key(list(values), key)
  if se_key is None and f"{key}_sem" in values:
    se_key = f"{key}_sem"
  if se_key is not None and se_key not in values:
    raise ValueError(f"se_key={se_key!r} is not a metric of evaluate ({sorted(values)}).")
  cells = np.array(np.meshgrid(*[np.arange(n - 1) for n in initial], indexing="ij"))
  cells = np.concatenate([np.zeros((1, cells[0].size), np.int64), cells.reshape(d, -1)]).T
  history: list[dict] = [{"round": 0, "points": n_init, "new_points": n_init, "split": 0,
                          "max_error": float("nan")}]
  r = 0
  converged = False
  while True:
    f = np.concatenate(values[key]).astype(np.float64)
    se = None if se_key is None else np.concatenate(values[se_key]).astype(np.float64)
    lat = np.concatenate(lattice)
    err, lo_v, hi_v, corner_se, tests, rows = _estimate(
      cells, f, se, lat, _Lookup(lat, size), size, max_level, bits, offsets)
    threshold = tol + noise_k * corner_se
    if level_arr.size:
      crossed = np.any((lo_v[:, None] <= level_arr) & (level_arr <= hi_v[:, None]), axis=1)
      threshold = np.where(crossed, level_tol + noise_k * corner_se, threshold)
    over = np.isfinite(err) & (err > threshold)
    if max_value is not None:
      over &= ~(lo_v > max_value)
    want = over & (cells[:, 0] < max_level)
    history[-1]["max_error"] = float(np.nanmax(err)) if np.isfinite(err).any() else float("nan")
    if not want.any():
      converged = not over.any()
      if not converged:
        _log.warning("%d cells at the finest level (max_level=%d) exceed the tolerance; raise "
                     "max_level for a finer lattice.", int(over.sum()), max_level)
      break
    if max_rounds is not None and r >= max_rounds:
      break
    cand = np.flatnonzero(want)
    order = np.lexsort((*[cells[cand, k] for k in range(d, -1, -1)], -err[cand]))
    new_points: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    split = []
    budget = None if max_points is None else max_points - lat.shape[0]
    for c in cand[order]:
      pts = [tuple(p) for p in tests[c][rows[c] < 0].tolist()]
      pts = [p for p in pts if p not in seen]
      if budget is not None and len(new_points) + len(pts) > budget:
        continue
      split.append(c)
      new_points.extend(pts)
      seen.update(pts)
    if not split:
      break
    r += 1
    if new_points:
      new = np.array(new_points, np.int64).reshape(-1, d)
      run(new[np.lexsort(new.T[::-1])], r)  # row-major (increasing t in 1-D)
    cells = _split(cells, np.array(sorted(split)), d)
    history.append({"round": r, "points": lat.shape[0] + len(new_points),
                    "new_points": len(new_points),
                    "split": len(split), "max_error": float("nan")})
  # final estimates on the final leaves
  f = np.concatenate(values[key]).astype(np.float64)
  se = None if se_key is None else np.concatenate(values[se_key]).astype(np.float64)
  lat = np.concatenate(lattice)
  err = _estimate(cells, f, se, lat, _Lookup(lat, size), size, max_level, bits, offsets)[0]
  history[-1]["max_error"] = float(np.nanmax(err)) if np.isfinite(err).any() else float("nan")
  coords = np.stack([_lattice_coords(lat[:, k], ranges[k], size[k]) for k in range(d)], 1)
  return AdaptiveResult(ranges=ranges, initial=initial, max_level=max_level, key=key,
                        lattice=lat, coords=coords,
                        values={k: np.concatenate(v) for k, v in values.items()},
                        rounds=np.concatenate(rounds), cells=cells, cell_error=err, tol=tol,
                        converged=converged, history=history)


def _estimate(cells, f, se, lattice, lookup, size, max_level, bits, offsets):
  """Per leaf: error estimate, min and max of corner/test values, corner s.e., test points.

  The test points (K, T, d) are the lattice points a split would add (fractional for leaves at
  the finest level, which are estimated but never split); `rows` (K, T) are their sample rows
  (-1: not evaluated yet).
  """
  lvl = cells[:, 0]
  step = 1 << (max_level - lvl)
  lo = cells[:, 1:] * step[:, None]
  corners = lo[:, None, :] + bits[None, :, :] * step[:, None, None]
  corner_idx = lookup(corners)
  fc = f[corner_idx]
  corner_se = np.zeros(len(cells)) if se is None else np.nanmax(np.abs(se[corner_idx]), axis=1)
  corner_se = np.where(np.isfinite(corner_se), corner_se, 0.0)
  finite = np.all(np.isfinite(fc), axis=1)
  # multilinear value at each test offset (half-cells 0, 1, 2)
  frac = offsets / 2.0
  w = np.prod(np.where(bits[None, :, :] == 1, frac[:, None, :], 1.0 - frac[:, None, :]), axis=2)
  lin = fc @ w.T  # (K, T)
  tests = lo[:, None, :] * 2 + offsets[None, :, :] * step[:, None, None]  # in half lattice steps
  splittable = lvl < max_level
  rows = np.full(lin.shape, -1, np.int64)
  rows[splittable] = lookup(tests[splittable] // 2)
  ref = np.where(rows >= 0, f[np.maximum(rows, 0)], np.nan)
  need = rows < 0
  if need.any():
    pred = _predictor(np.asarray(lattice, np.float64) / np.array(size, np.float64), f)
    q = tests[need] / (2.0 * np.array(size, np.float64))
    ref[need] = lin[need] if pred is None else pred(q)
  err = np.max(np.abs(lin - ref), axis=1)
  err = np.where(finite, err, np.nan)
  allv = np.concatenate([fc, ref], axis=1)
  with np.errstate(invalid="ignore"):
    allv = np.where(np.isfinite(allv), allv, np.nan)
    lo_v = np.nanmin(np.where(np.isnan(allv), np.inf, allv), axis=1)
    hi_v = np.nanmax(np.where(np.isnan(allv), -np.inf, allv), axis=1)
  return err, lo_v, hi_v, corner_se, tests // 2, rows


def _split(cells: np.ndarray, split: np.ndarray, d: int) -> np.ndarray:
  """Replaces the leaves `split` by their 2^d children (sorted: reproducible order)."""
  keep = np.ones(cells.shape[0], bool)
  keep[split] = False
  parents = cells[split]
  children = []
  for bit in _corner_bits(d):
    ch = parents.copy()
    ch[:, 0] += 1
    ch[:, 1:] = parents[:, 1:] * 2 + bit
    children.append(ch)
  out = np.concatenate([cells[keep], *children])
  return out[np.lexsort(out.T[::-1])]


def refine_surface(evaluate: Callable[[np.ndarray, int], Mapping[str, Any]], x_range, y_range,
                   *, refinement: Refinement) -> AdaptiveResult:
  """Adaptive 2-D sampling of ``evaluate`` on ``x_range x y_range`` (quadtree refinement).

  ``evaluate(coords (N, 2), round_index) -> {metric: (N,)}``; `refinement` as in `refine`
  (default initial grid 9 x 9, at most 4 halvings).
  """
  return refine(evaluate, (x_range, y_range), refinement=refinement)


def refine_path(evaluate: Callable[[np.ndarray, int], Mapping[str, Any]], t_range, *,
                refinement: Refinement) -> AdaptiveResult:
  """Adaptive 1-D sampling of ``evaluate`` on ``t_range`` (bisection of intervals).

  ``evaluate(coords (N, 1), round_index) -> {metric: (N,)}``; `refinement` as in `refine`
  (default initial grid 17 points, at most 5 halvings).
  """
  return refine(evaluate, (t_range,), refinement=refinement)


# ------------------------------------------------------------------------ engine-facing wrappers
def _round_store(store, r):
  return None if store is None else fileio.join(store, f"round-{r:03d}")


def adaptive_surface(metric_fn: Callable[[PyTree], dict], center: PyTree, directions, x_range,
                     y_range, *, refinement: Refinement,
                     store: str | os.PathLike | None = None, metadata: dict | None = None,
                     identity: str | None = None, point_fn=None,
                     engine: EngineOptions | None = None) -> AdaptiveResult:
  """An adaptive loss surface ``metric_fn(center + x d1 + y d2)`` on ``x_range x y_range``.

  Each round's new points are evaluated by `surface.surface_points` (the point-evaluation engine:
  compiled chunks, `mesh` sharding, `point_fn`, exact identities) with
  ``store=<store>/round-NNN``: a rerun with the same arguments recomputes nothing already stored
  and continues where it stopped, with an identical result. The refinement settings are part of
  every round's stored metadata, so a rerun with other settings into the same store is refused.
  `metadata`, `identity`, `point_fn`: as in `surface_points`; `engine`: how the points are
  computed (`engine.EngineOptions`); `refinement`: the settings (`Refinement`, see `refine`).

  Example::

    res = adaptive_surface(metric_fn, params, (d1, d2), (-1, 1), (-1, 1),
                           refinement=Refinement(tol=0.01, max_points=1500, key="train_loss"),
                           store="runs/adaptive")
    grid = res.to_grid(xs, ys)  # {metric: (len(xs), len(ys))}, as surface_grid returns
    fig = plotting.plot_contour(xs, ys, grid["train_loss"], samples=res.coords)

  Returns:
    An `AdaptiveResult` (samples, interpolants, per-cell error estimates).
  """
  refinement = refinement_settings(refinement)
  settings = {"x_range": list(_check_range(x_range, "x_range")),
              "y_range": list(_check_range(y_range, "y_range")), **refinement.settings(2)}
  evaluate = _engine_evaluate(metric_fn, center, directions, store=store, metadata=metadata,
                              settings=settings, identity=identity, point_fn=point_fn,
                              engine=engine, desc="adaptive surface")
  return refine(evaluate, (x_range, y_range), refinement=refinement)


def adaptive_path(metric_fn: Callable[[PyTree], dict], a: PyTree, b: PyTree,
                  t_range=(0.0, 1.0), *, refinement: Refinement,
                  store: str | os.PathLike | None = None, metadata: dict | None = None,
                  identity: str | None = None, point_fn=None,
                  engine: EngineOptions | None = None) -> AdaptiveResult:
  """Adaptive metrics along the line ``interpolate(a, b, t) = a + t (b - a)`` for t in `t_range`.

  As `linear_path` (Li et al. 2018 use t in [-0.5, 1.5]) with adaptive bisection of intervals;
  `refinement`, stores, `engine` and resume as `adaptive_surface`. For other 1-D paths (curves,
  swap paths) call `refine_path` with an `evaluate` that evaluates that path at given t.
  """

  trees.check_same_structure(a, b, names=("a", "b"))
  refinement = refinement_settings(refinement)
  direction = jax.tree.map(lambda x, y: y - x, a, b)
  settings = {"t_range": list(_check_range(t_range, "t_range")), **refinement.settings(1)}
  evaluate = _engine_evaluate(metric_fn, a, (direction,), store=store, metadata=metadata,
                              settings=settings, identity=identity, point_fn=point_fn,
                              engine=engine, desc="adaptive path")
  return refine(evaluate, (t_range,), refinement=refinement)


def _engine_evaluate(metric_fn, center, directions, *, store, metadata, settings, identity,
                     point_fn, engine, desc):
  meta = {**(metadata or {}), "adaptive": jsonable(settings)}

  def evaluate(coords, r):
    _log.info("%s: round %d, %d new points", desc, r, coords.shape[0])
    return surface.surface_points(metric_fn, center, directions, coords,
                                  store=_round_store(store, r), metadata=meta, identity=identity,
                                  point_fn=point_fn, engine=engine, desc=f"{desc} round {r}")

  return evaluate


__all__ = [
  "DEFAULT_INITIAL",
  "DEFAULT_MAX_LEVEL",
  "AdaptiveResult",
  "Refinement",
  "adaptive_path",
  "adaptive_surface",
  "refine",
  "refine_path",
  "refine_surface",
  "refinement_settings",
  "select_key",
]
