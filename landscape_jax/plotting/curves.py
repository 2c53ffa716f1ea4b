"""Mode-connectivity figures of Garipov et al. 2018 ("Loss Surfaces, Mode Connectivity, and Fast
Ensembling of DNNs"): the loss over the plane through the two endpoints and a bend, with the curve
and the straight chord projected onto it, and the metrics along t for the curve vs the line.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from landscape_jax.plotting import common
from landscape_jax.plotting.common import (
  as_float,
  check_surface,
  empty_message,
  figure_and_axes,
  finish,
  has_finite,
  masked,
  mesh,
  new_figure,
  plane_xy,
  root_figure,
)
from landscape_jax.plotting.surfaces import metric_kind, metric_style

__all__ = [
  "CURVE_COLOR",
  "curve_levels",
  "LINE_COLOR",
  "plot_curve_metrics",
  "plot_curve_plane",
]

CURVE_COLOR = "tab:blue"
LINE_COLOR = "tab:orange"


def curve_levels(
  z, *, num: int = 7, log_alpha: float = -5.0, vmax: float | None = None
) -> np.ndarray | None:
  """Log-spaced contour levels above the minimum (Garipov et al. 2018, plane figures).

  With m = min z and M = max z (after clipping at `vmax`): levels = m + exp(log_alpha + k g) for
  k = 0..num, g = (log(M - m) - log_alpha) / num, then the first level is set to m and the last to
  M. Levels crowd near the minimum, where the low-loss valley is. Returns None when z has fewer
  than two distinct finite values.
  """
  zm = masked(z)
  if vmax is not None:
    zm = np.ma.minimum(zm, vmax)
  if not has_finite(zm):
    return None
  lo, hi = common.finite_range(zm)
  if not hi > lo:
    return None
  span = hi - lo
  if np.log(span) <= log_alpha:
    return np.linspace(lo, hi, num + 1)
  levels = lo + np.exp(np.linspace(log_alpha, np.log(span), num + 1))
  levels[0], levels[-1] = lo, hi
  return np.unique(levels)


def plot_curve_plane(
  grid_xs,
  grid_ys,
  z,
  *,
  curve_xy,
  ax=None,
  endpoints_xy,
  chord_xy=None,
  bend_xy=None,
  levels=None,
  num_levels: int = 7,
  vmax: float | None = None,
  label: str = "train loss",
  cmap: str = "viridis",
  title: str | None = None,
  names: Sequence[str] = ("w_0", "w_1", "w_2"),
  xlabel: str | None = None,
  ylabel: str | None = None,
  figsize: tuple[float, float] | None = None,
) -> Figure:
  """The loss over the plane through the endpoints and the bend, with the curve on top
  (Garipov et al. 2018, Fig. 1 and 2).

  Filled and line contours on log-spaced levels (`curve_levels`), one colour per band; the
  endpoints are circles, the bend(s) diamonds, the curve a solid line and the straight chord
  between the endpoints a dashed line. The plane coordinates are those of
  `core.curves.plane_basis`: u is the distance along w2 - w0 (endpoint to endpoint), v the
  distance orthogonal to it towards the bend w1; both axes have the same scale, so the picture
  shows the plane's true geometry (a bend close to the chord gives a wide, flat plane).

  Args:
    grid_xs, grid_ys: (n,) and (m,) plane coordinates of the grid (the reference uses
      linspace(-0.2, 1.2, 21) times the lengths of the plane's axes).
    z: (n, m) values, z[i, j] at (grid_xs[i], grid_ys[j]); NaN / inf are masked.
    curve_xy: (T, 2) projections of curve points phi(t) onto the plane.
    endpoints_xy: (2, 2) projections of the two endpoints.
    ax: a matplotlib Axes to draw on (its colour bar takes space from it; the legend goes inside
      it), or None for a new figure (the legend below the axes).
    chord_xy: optional (K, 2) projections of the straight line; default: the segment between the
      endpoints.
    bend_xy: optional (2,) or (k, 2) projections of the bend(s).
    levels: explicit contour levels (default: `curve_levels(z, num=num_levels, vmax=vmax)`).
    vmax: clip values above it before choosing levels (values above get the top colour).
    label: colour-bar label.
    names: the names of the first endpoint, the bend and the second endpoint in the text around
      the figure (e.g. ("A", "theta", "B"); TeX such as "w_1" is set in math mode), used in the
      axis labels and the legend.
    xlabel, ylabel: override the axis labels (default "u: along w_2 - w_0", "v: towards w_1";
      both are distances in parameter space).
    figsize: size of the new figure; default fits the plane's aspect ratio.

  Returns:
    The Figure drawn on (`ax`'s figure when `ax` is given); write it with `plotting.save`.
  """
  xs, ys, z = check_surface(grid_xs, grid_ys, z)
  curve = plane_xy("curve_xy", curve_xy)
  ends = plane_xy("endpoints_xy", endpoints_xy)
  chord = ends if chord_xy is None else plane_xy("chord_xy", chord_xy)
  bends = None if bend_xy is None else plane_xy("bend_xy", bend_xy, allow_single=True)
  zm = masked(z)
  lv = curve_levels(zm, num=num_levels, vmax=vmax) if levels is None else np.unique(
    as_float("levels", levels, 1)
  )

  if len(names) != 3:
    raise ValueError(f"`names` must name (first endpoint, bend, second endpoint), got {names!r}.")
  w0, w1, w2 = (f"${n}$" if "\\" in n or "_" in n else n for n in map(str, names))
  xlabel = xlabel if xlabel is not None else f"u: along {w2} $-$ {w0}"
  ylabel = ylabel if ylabel is not None else f"v: towards {w1}"
  # Equal scales show the plane's true geometry; a wide, flat plane gets a horizontal colour bar.
  ratio = float(np.ptp(ys) / np.ptp(xs))
  flat = ratio < 0.5
  if figsize is None:  # size the figure to the plane so the colour bar and legend fit it
    width = 8.2 if flat else 4.8
    height = float(np.clip(width * ratio, 0.8, 6.0))
    figsize = (width + (0.8 if flat else 1.7), height + (2.0 if flat else 1.9))
  own = ax is None
  fig, ax = figure_and_axes(ax, figsize)
  ax.set_xlim(float(xs.min()), float(xs.max()))
  ax.set_ylim(float(ys.min()), float(ys.max()))
  if lv is None or len(lv) < 2:
    empty_message(ax,
        common.EMPTY_MESSAGE if not has_finite(zm) else "constant values: no contours")
  else:
    cm = matplotlib.colormaps[cmap]
    # One colour per band; values above the top level (beyond `vmax`) take the "over" colour.
    norm = mcolors.BoundaryNorm(lv, cm.N, extend="max")
    x_mesh, y_mesh, z_t = mesh(xs, ys, zm)
    cf = ax.contourf(
      x_mesh, y_mesh, z_t, levels=lv, cmap=cm, norm=norm, alpha=0.65, zorder=0, extend="max"
    )
    ax.contour(x_mesh, y_mesh, z_t, levels=lv, cmap=cm, norm=norm, linewidths=1.5, zorder=1)
    cb = ax.figure.colorbar(cf, ax=ax, label=label, format="%.3g", ticks=lv,
                            orientation="horizontal" if flat else "vertical",
                            location="top" if flat else None, shrink=0.8 if flat else 1.0)
    cb.ax.tick_params(labelsize=7)
    if flat:
      for t in cb.ax.get_xticklabels():
        t.set_rotation(45)
  ax.plot(chord[:, 0], chord[:, 1], "--", color="k", linewidth=1.8, dashes=(4, 3),
          label="straight line", zorder=3)
  ax.plot(curve[:, 0], curve[:, 1], "-", color="k", linewidth=2.5, label="curve", zorder=3)
  ax.plot(ends[:, 0], ends[:, 1], "o", color="k", markersize=9, markeredgecolor="w",
          label=f"endpoints {w0}, {w2}", zorder=4, linestyle="none")
  if bends is not None:
    ax.plot(bends[:, 0], bends[:, 1], "D", color="k", markersize=8, markeredgecolor="w",
            label=f"bend {w1}", zorder=4, linestyle="none")
  ax.set_aspect("equal", adjustable="box")
  if own:  # below the axes; inside a given Axes, whose neighbours it must not cover
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=8,
               frameon=False)
    if flat and title:  # above the colour bar, which sits on top of a flat plane
      fig.suptitle(title)
      title = None
  else:
    ax.legend(loc="best", fontsize=7)
  finish(ax, title=title, xlabel=xlabel, ylabel=ylabel)
  return fig


def _as_metrics(name, x) -> dict:
  if isinstance(x, dict):
    return dict(x)
  return {"loss": x}


def _readable(key: str) -> str:
  """A metric key as legend text: "test_error" -> "test error"."""
  return str(key).replace("_", " ")


def _error_percent(name: str, v: np.ma.MaskedArray) -> np.ma.MaskedArray:
  """Error in % from an accuracy or error metric, either as a fraction in [0, 1] or in %."""
  finite = np.ma.compressed(v)
  frac = finite.size == 0 or finite.max() <= 1.0
  if metric_kind(name) == "accuracy":
    return (1.0 - v) * 100.0 if frac else 100.0 - v
  return v * 100.0 if frac else v


def _metric_axes(ax, has_err: bool, figsize) -> tuple[Figure, Axes, Axes | None, bool]:
  """(figure, loss axes, error axes or None, whether the error axes is a twin of the loss one)."""
  if ax is None:
    fig = new_figure(figsize if has_err else (figsize[0] * 0.55, figsize[1]))
    ax_loss = fig.add_subplot(1, 2 if has_err else 1, 1)
    return fig, ax_loss, fig.add_subplot(1, 2, 2) if has_err else None, False
  if isinstance(ax, Sequence) and not isinstance(ax, str):
    if len(ax) != 2:
      raise ValueError(f"`ax` must be one Axes or a pair (loss axes, error axes), got {len(ax)}.")
    _, ax_loss = figure_and_axes(ax[0], figsize)
    _, ax_err = figure_and_axes(ax[1], figsize)
    return root_figure(ax_loss), ax_loss, ax_err, False
  fig, ax_loss = figure_and_axes(ax, figsize)
  return fig, ax_loss, ax_loss.twinx() if has_err else None, True


def plot_curve_metrics(
  ts,
  curve,
  line,
  *,
  ax=None,
  line_ts=None,
  log: bool = False,
  title: str | None = None,
  xlabel: str = "t",
  figsize: tuple[float, float] = (9.0, 3.8),
) -> Figure:
  """Loss and error along t for the curve phi(t) vs the straight line (1 - t) w_0 + t w_1
  (Garipov et al. 2018, Fig. 3).

  Left panel: losses; right panel: error in % (accuracies a are shown as 100 (1 - a) when they are
  fractions). Curve in blue, straight line in orange; train solid, test dashed; legend entries
  read "curve: train loss", "straight line: test error".

  Args:
    ts: (T,) curve parameters in [0, 1] for `curve` (and `line` unless `line_ts` is given).
    curve, line: {metric: (T,) array} (e.g. "train_loss", "test_accuracy"), or one loss array.
    ax: where to draw: None makes a new figure (two panels, losses and errors, or one panel when
      there are only losses); a pair of Axes (loss axes, error axes) draws one panel on each; a
      single Axes takes the losses, and the errors go on a twin right axis of it.
    line_ts: optional parameters of the line values if they differ from `ts`.
    log: logarithmic loss axis.
    title: figure title (the title of the loss axes when `ax` is given).
    xlabel: text.
    figsize: size in inches of the new figure (ignored when `ax` is given).

  Returns:
    The Figure drawn on; write it with `plotting.save`.
  """
  ts = as_float("ts", ts, 1)
  lts = ts if line_ts is None else as_float("line_ts", line_ts, 1)
  groups = [("curve", ts, _as_metrics("curve", curve), CURVE_COLOR),
            ("straight line", lts, _as_metrics("line", line), LINE_COLOR)]
  has_err = any(metric_kind(k) != "loss" for _, _, m, _ in groups for k in m)
  fig, ax_loss, ax_err, twin = _metric_axes(ax, has_err, figsize)
  any_loss = any_err = False
  for gname, gts, metrics, color in groups:
    for key, values in metrics.items():
      v = masked(as_float(f"{gname}[{key!r}]", values, 1))
      if v.shape != gts.shape:
        raise ValueError(
          f"{gname}[{key!r}] has {v.size} values but its t values have {gts.size};"
          f" pass line_ts= when the line is sampled at other t."
        )
      style = metric_style(key)
      if metric_kind(key) == "loss":
        if log:
          v = common.mask_nonpositive(v)
        any_loss |= has_finite(v)
        ax_loss.plot(gts, v, style, color=color, label=f"{gname}: {_readable(key)}",
                     linewidth=1.8)
      else:
        v = _error_percent(key, v)
        any_err |= has_finite(v)
        label = f"{gname}: {_readable(key.replace('accuracy', 'error'))}"
        ax_err.plot(gts, v, style, color=color, label=label, linewidth=1.8)
  for a, ok, ylabel in ((ax_loss, any_loss, "loss"), (ax_err, any_err, "error (%)")):
    if a is None:
      continue
    if not ok:
      if not (twin and a is ax_err and not any_loss):  # a twin shares the loss axes' message
        empty_message(a)
    elif ylabel == "loss" and log:
      a.set_yscale("log")
    if ts.min() >= 0 and ts.max() <= 1:
      a.set_xlim(0.0, 1.0)
    finish(a, xlabel=None if twin and a is ax_err else xlabel, ylabel=ylabel)
  if twin:  # one legend for both y axes, on top of the twin (which is drawn above the loss axes)
    handles = [h for a in (ax_loss, ax_err) for h in a.get_legend_handles_labels()[0]]
    if handles:
      ax_err.legend(handles=handles, fontsize=8)
  else:
    for a in (ax_loss, ax_err):
      if a is not None and a.get_legend_handles_labels()[0]:
        a.legend(fontsize=8)
  if title and ax is None:
    fig.suptitle(title)
  elif title:
    ax_loss.set_title(title)
  return fig
