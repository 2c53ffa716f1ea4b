"""Curvature and trajectory figures: the Hessian spectral density (stochastic Lanczos quadrature,
Ghorbani et al. 2019 / PyHessian), the map of |lambda_min / lambda_max| over a 2-D landscape and the
PCA projection of an optimisation trajectory over loss contours (Li et al. 2018, §6 and §7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import transforms
from matplotlib.figure import Figure

from landscape_jax.plotting.common import (
  as_float,
  empty_message,
  figure_and_axes,
  finish,
  has_finite,
  mask_nonpositive,
  masked,
)
from landscape_jax.plotting.surfaces import draw_contour, draw_heatmap

__all__ = [
  "eigen_ratio",
  "plot_eigen_ratio",
  "plot_spectrum",
  "plot_trajectory",
]


def eigen_ratio(lambda_min, lambda_max) -> np.ndarray:
  """|lambda_min / lambda_max| elementwise (NaN where lambda_max is 0 or a value is non-finite).

  Li et al. 2018 (§7) map this ratio: near 0 the surface is locally convex (the negative curvature
  is negligible), large values flag pronounced non-convexity.
  """
  lo = np.asarray(lambda_min, dtype=np.float64)
  hi = np.asarray(lambda_max, dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    r = np.abs(lo / hi)
  return np.where(np.isfinite(r), r, np.nan)


def plot_spectrum(
  grid,
  density,
  *,
  ax=None,
  eigenvalues=None,
  dynamic_range: float = 1e-8,
  title: str | None = None,
  xlabel: str = r"eigenvalue $\lambda$",
  ylabel: str = "density (log scale)",
  figsize: tuple[float, float] = (6.0, 4.2),
) -> Figure:
  """Hessian eigenvalue spectral density on a log y axis (PyHessian, Ghorbani et al. 2019, Fig. 1).

  Args:
    grid: (n,) eigenvalue grid.
    density: (n,) density values on the grid (e.g. stochastic Lanczos quadrature smoothed with a
      Gaussian kernel of variance 1e-5), a (runs, n) array (averaged over runs), or
      {label: density} to overlay several. Values <= 0 and non-finite values are masked (the log
      axis cannot show them).
    ax: a matplotlib Axes to draw on, or None for a new figure of `figsize` inches.
    eigenvalues: optional Ritz values (any shape, flattened), shown as ticks along the x axis.
    dynamic_range: the y axis shows at most [dynamic_range * max, max] (the Gaussian tails of a
      smoothed density reach 1e-100 and below, which would squash the peaks).
    title, xlabel, ylabel, figsize: as in `plot_1d`.

  Returns:
    The Figure drawn on (`ax`'s figure when `ax` is given); write it with `plotting.save`.
  """
  grid = as_float("grid", grid, 1)
  curves = density if isinstance(density, Mapping) else {"": density}
  fig, ax = figure_and_axes(ax, figsize)
  drawn = []  # the finite densities drawn (an `ax` given may hold other lines)
  for name, d in curves.items():
    d = as_float(f"density[{name!r}]" if name else "density", d, (1, 2))
    if d.ndim == 2:  # several SLQ runs: their average is the density estimate
      d = np.ma.masked_invalid(d).mean(axis=0).filled(np.nan)
    d = mask_nonpositive(masked(d))
    if d.shape != grid.shape:
      raise ValueError(f"density has {d.size} values but grid has {grid.size}: one per grid point.")
    if has_finite(d):
      drawn.append(d)
    ax.plot(grid, d, linewidth=1.5, label=name or None)
  if drawn:
    ax.set_yscale("log")
    top = max(float(d.max()) for d in drawn)
    bottom = min(float(d.min()) for d in drawn)
    ax.set_ylim(max(bottom, top * dynamic_range) * 0.5, top * 2.0)
  else:
    empty_message(ax, "no positive finite density values")
  if eigenvalues is not None:
    ev = np.asarray(eigenvalues, dtype=np.float64).ravel()
    ev = ev[np.isfinite(ev)]
    if ev.size:
      trans = transforms.blended_transform_factory(ax.transData, ax.transAxes)
      ax.plot(ev, np.full_like(ev, 0.02), "|", color="tab:red", markersize=12, transform=trans,
              label=f"Ritz values ({ev.size})")
  if np.ptp(grid) > 0:
    ax.set_xlim(float(grid.min()), float(grid.max()))
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  finish(ax, title=title, xlabel=xlabel, ylabel=ylabel)
  return fig


def plot_eigen_ratio(
  xs,
  ys,
  ratio,
  *,
  ax=None,
  vmax: float | None = None,
  cmap: str = "viridis",
  points: Mapping[str, Sequence[float]] | None = None,
  title: str | None = None,
  xlabel: str = "x (direction 1)",
  ylabel: str = "y (direction 2)",
  figsize: tuple[float, float] = (5.6, 4.6),
) -> Figure:
  """Map of |lambda_min / lambda_max| of the loss Hessian over a 2-D grid (Li et al. 2018, Fig. 7).

  Args:
    xs, ys: (n,) and (m,) grid coordinates.
    ratio: (n, m) ratios lambda_min / lambda_max (or already |.|; see `eigen_ratio`), ratio[i, j]
      at (xs[i], ys[j]); the absolute value is plotted, non-finite cells are grey.
    vmax: top of the colour scale (default: the largest finite ratio).
    points: optional {name: (x, y)} points to mark.
    ax, title, xlabel, ylabel, figsize: as in `plot_contour`.

  Returns:
    The Figure drawn on; write it with `plotting.save`.
  """
  r = np.abs(as_float("ratio", ratio))
  fig, ax = figure_and_axes(ax, figsize)
  draw_heatmap(ax, xs, ys, r, vmin=0.0, vmax=vmax, cmap=cmap,
               label=r"$|\lambda_{min} / \lambda_{max}|$", points=points)
  finish(ax, title=title, xlabel=xlabel, ylabel=ylabel)
  return fig


def _ordinal(k: int) -> str:
  return {1: "1st", 2: "2nd", 3: "3rd"}.get(k, f"{k}th")


def plot_trajectory(
  xs,
  ys,
  z,
  path_xy,
  *,
  ax=None,
  explained_variance: Sequence[float] | None = None,
  levels=None,
  log: bool = False,
  label: str = "loss",
  title: str | None = None,
  figsize: tuple[float, float] = (5.8, 4.8),
) -> Figure:
  """An optimisation trajectory projected onto its top-2 PCA directions, over the loss contours of
  that plane (Li et al. 2018, §7, Fig. 9).

  Args:
    xs, ys, z: the loss grid over the PCA plane centred at the final point, z[i, j] at
      (xs[i], ys[j]).
    path_xy: (T, 2) coordinates of the saved epochs, x = <t_epoch - t_final, pc1> (first row = the
      first saved epoch, last row = the final point).
    explained_variance: (r1, r2) explained-variance ratios in [0, 1] of the two components; the axes
      are labelled "1st PC: 62.31 %" and "2nd PC: ...".
    ax: a matplotlib Axes to draw on, or None for a new figure of `figsize` inches.
    levels, log, label: contour options as in `plot_contour`.
    title, figsize: as in `plot_contour`.

  Returns:
    The Figure drawn on; write it with `plotting.save`.
  """
  p = as_float("path_xy", path_xy, 2)
  if p.shape[1] != 2:
    raise ValueError(f"`path_xy` must have shape (T, 2), got {p.shape}.")
  labels = [f"{_ordinal(k)} PC" for k in (1, 2)]
  if explained_variance is not None:
    ev = as_float("explained_variance", explained_variance, 1)
    if ev.size != 2 or not np.all((ev >= 0) & (ev <= 1)):
      raise ValueError(
        f"`explained_variance` must be two ratios in [0, 1] (e.g. sklearn's"
        f" explained_variance_ratio_), got {ev}."
      )
    labels = [f"{lab}: {100 * r:.2f} %" for lab, r in zip(labels, ev, strict=True)]
  fig, ax = figure_and_axes(ax, figsize)
  draw_contour(ax, xs, ys, z, levels=levels, log=log, label=label, cmap="viridis")
  ok = np.all(np.isfinite(p), axis=1)
  q = p[ok]
  if q.shape[0]:
    ax.plot(q[:, 0], q[:, 1], "-o", color="tab:red", markersize=3, linewidth=1.5,
            label="trajectory", zorder=3)
    ax.plot(q[0, 0], q[0, 1], "s", color="tab:red", markeredgecolor="k", markersize=7,
            label="start", zorder=4)
    ax.plot(q[-1, 0], q[-1, 1], "*", color="gold", markeredgecolor="k", markersize=13,
            label="final", zorder=4)
    ax.legend(fontsize=8, loc="best")
  else:
    empty_message(ax, "trajectory has no finite points")
  finish(ax, title=title, xlabel=labels[0], ylabel=labels[1])
  return fig


