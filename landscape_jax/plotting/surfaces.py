"""Loss-surface figures of Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets"):
1-D curves f(a) = L(t* + a d) on twin loss / accuracy axes, two-model interpolation
L((1 - a) t_A + a t_B), 2-D contours, filled contours, heat maps and 3-D surfaces of
f(a, b) = L(t* + a d1 + b d2) (the VTK PolyData export for ParaView is `plotting.vtk`).

Grid results follow the library convention z[i, j] = f(xs[i], ys[j]) (shape (len(xs), len(ys)));
matplotlib's contour(X, Y, Z) indexes Z[j, i], so the figures draw z.T on a meshgrid(xs, ys).
NaN and inf values (diverged far-away grid points) are masked: they are left blank, never drawn
as zeros, and a figure with no finite value at all says so instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from landscape_jax.plotting import common
from landscape_jax.plotting.common import (
  as_float,
  check_surface,
  contour_levels,
  empty_message,
  figure_and_axes,
  finish,
  has_finite,
  mask_nonpositive,
  masked,
  mesh,
)

__all__ = [
  "ACC_COLOR",
  "ALPHA_LABEL",
  "draw_1d",
  "draw_contour",
  "draw_contourf",
  "draw_heatmap",
  "INTERP_LABEL",
  "LOSS_COLOR",
  "MAX_LABELLED_LEVELS",
  "metric_kind",
  "metric_style",
  "plot_1d",
  "plot_2d_all",
  "PLOT_2D_ALL_NAMES",
  "plot_contour",
  "plot_contourf",
  "plot_heatmap",
  "plot_interpolation",
  "plot_surface_3d",
]

ALPHA_LABEL = r"$\alpha$ (step along the direction)"
INTERP_LABEL = r"$\alpha$ in $(1-\alpha)\,\theta_A + \alpha\,\theta_B$"
LOSS_COLOR = "tab:blue"
ACC_COLOR = "tab:red"


# ---------------------------------------------------------------------------------------------
# 1-D curves


def _normalize_runs(curves: Any) -> dict[str, dict[str, Any]]:
  """{run: {metric: array}} from a dict of runs, a single {metric: array} dict, or one array."""
  if isinstance(curves, Mapping):
    if not curves:
      raise ValueError("`curves` is empty: give {metric: values} or {run: {metric: values}}.")
    nested = [isinstance(v, Mapping) for v in curves.values()]
    if all(nested):
      return {str(k): dict(v) for k, v in curves.items()}
    if any(nested):
      raise ValueError(
        "`curves` mixes runs (dicts) and metrics (arrays) at the same level; give either"
        " {metric: values} for one run or {run: {metric: values}} for several."
      )
    return {"": dict(curves)}
  return {"": {"loss": curves}}


def metric_kind(name: str) -> str:
  """'accuracy', 'error' (right axis) or 'loss' (left axis, anything else) from a metric name."""
  n = name.lower()
  if "acc" in n:
    return "accuracy"
  if "err" in n:
    return "error"
  return "loss"


def metric_style(name: str) -> str:
  n = name.lower()
  if "train" in n:
    return "-"
  if "test" in n or "val" in n:
    return "--"
  return "-."


def _left_label(names: list[str]) -> str:
  if all("loss" in n.lower() for n in names):
    return "loss"
  stripped = []
  for n in names:
    s = n
    for prefix in ("train_", "test_", "val_", "validation_"):
      if s.lower().startswith(prefix):
        s = s[len(prefix) :]
    if s not in stripped:
      stripped.append(s)
  return " / ".join(stripped)


def draw_1d(
  ax,
  xs,
  curves,
  *,
  log: bool = False,
  endpoints: tuple[float, float] | None = None,
  endpoint_labels: tuple[str, str] = ("A", "B"),
  legend: bool = True,
  outside_legend: bool = False,
):
  """Draws 1-D metric curves on `ax` (loss, left) and a twin axis (accuracy / error, right).

  The legend goes on the axes (the twin when there is one), or below them as a figure legend with
  `outside_legend` (for a figure with constrained layout that holds only this plot).
  Returns (ax_left, ax_right or None). See `plot_1d` for the accepted forms of `curves`.
  """
  xs = as_float("xs", xs, 1)
  runs = _normalize_runs(curves)
  many = len(runs) > 1
  left_names, right_names, any_finite = [], [], False
  right_values = []
  ax2 = None
  handles = []
  for r, (run, metrics) in enumerate(runs.items()):
    for name, values in metrics.items():
      v = masked(as_float(f"curves[{run!r}][{name!r}]" if run else f"curves[{name!r}]", values, 1))
      if v.shape != xs.shape:
        raise ValueError(
          f"Metric {name!r}{f' of run {run!r}' if run else ''} has {v.size} values but xs has"
          f" {xs.size}: give one value per x."
        )
      kind = metric_kind(name)
      if kind == "loss" and log:
        v = mask_nonpositive(v)
      any_finite |= has_finite(v)
      if kind == "loss":
        target, color = ax, (f"C{r}" if many else LOSS_COLOR)
        if name not in left_names:
          left_names.append(name)
        extra = {"linewidth": 1.8}
      else:
        if ax2 is None:
          ax2 = ax.twinx()
        target, color = ax2, (f"C{r}" if many else ACC_COLOR)
        if name not in right_names:
          right_names.append(name)
        right_values.append(v)
        extra = {"linewidth": 1.2}
        if many:
          extra.update(marker="o", markersize=3, markevery=max(1, xs.size // 12))
      label = f"{run}: {name.replace('_', ' ')}" if run else name.replace("_", " ")
      (h,) = target.plot(xs, v, metric_style(name), color=color, label=label, **extra)
      handles.append(h)
      if endpoints is not None:
        _mark_endpoints(target, xs, v, endpoints, color)
  if xs.size >= 2 and xs[0] != xs[-1]:
    ax.set_xlim(float(np.min(xs)), float(np.max(xs)))
  if left_names:
    ax.set_ylabel(_left_label(left_names), color="k" if many else LOSS_COLOR)
    if log and any_finite:
      ax.set_yscale("log")
  elif ax2 is not None:
    ax.set_yticks([])
  if ax2 is not None:
    kinds = sorted({metric_kind(n) for n in right_names})
    ax2.set_ylabel(" / ".join(kinds), color="k" if many else ACC_COLOR)
    finite = [np.ma.compressed(v) for v in right_values]
    finite = np.concatenate(finite) if finite else np.zeros(0)
    if finite.size and finite.min() >= 0 and finite.max() <= 1:
      ax2.set_ylim(-0.02, 1.02)  # accuracy / error in [0, 1] (the library's convention)
  if endpoints is not None:
    for a, lab in zip(endpoints, endpoint_labels, strict=True):
      ax.axvline(a, color="0.5", linestyle=":", linewidth=1)
      ax.annotate(
        lab, (a, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
        textcoords="offset points", ha="center", va="bottom", fontsize=9,
      )
  if not any_finite:
    empty_message(ax)
  if legend and handles and outside_legend:
    longest = max(len(h.get_label()) for h in handles)
    ncols = max(1, min(len(handles), 64 // (longest + 8)))
    ax.figure.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8,
                     frameon=False)
  elif legend and handles:  # on the twin when there is one: it is drawn above `ax`
    (ax2 or ax).legend(handles=handles, fontsize=8)
  return ax, ax2


def _mark_endpoints(ax, xs, v, endpoints, color):
  ok = ~np.ma.getmaskarray(v)
  if ok.sum() < 1:
    return
  xf, vf = xs[ok], np.ma.compressed(v)
  order = np.argsort(xf)
  xf, vf = xf[order], vf[order]
  pts = [a for a in endpoints if xf[0] <= a <= xf[-1]]
  if pts:
    ax.plot(pts, np.interp(pts, xf, vf), "o", color=color, markersize=5, markeredgecolor="k")


def plot_1d(
  xs,
  curves,
  *,
  ax=None,
  log: bool = False,
  title: str | None = None,
  xlabel: str = ALPHA_LABEL,
  figsize: tuple[float, float] = (6.4, 4.6),
) -> Figure:
  """Plots 1-D landscape curves f(a) = L(t* + a d) (Li et al. 2018, Fig. 2-3 style).

  Loss on the left axis, accuracy (or error) on a twin right axis; train metrics solid, test
  metrics dashed. Several runs are overlaid with one colour per run.

  Args:
    xs: (n,) step sizes a.
    curves: one of
      * an (n,) array: a single loss curve;
      * {metric: (n,) array}, e.g. the result of a 1-D `surface_grid` ({"train_loss": ...,
        "train_accuracy": ..., "test_loss": ..., "test_accuracy": ...});
      * {run: {metric: (n,) array}} to overlay several runs (e.g. batch sizes 128 vs 8192).
      Metric names containing "acc" or "err" go on the right axis, the others on the left.
    ax: a matplotlib Axes to draw on (a twin right axis is added to it for accuracies); None
      makes a new figure of `figsize` inches with the legend below the axes.
    log: logarithmic loss axis (non-positive values are masked).
    title, xlabel: text.
    figsize: size in inches of the new figure (ignored when `ax` is given).

  Returns:
    The Figure drawn on (`ax`'s figure when `ax` is given); write it with `plotting.save`.
  """
  fig, ax_ = figure_and_axes(ax, figsize)
  draw_1d(ax_, xs, curves, log=log, outside_legend=ax is None)
  finish(ax_, title=title, xlabel=xlabel)
  return fig


def plot_interpolation(
  alphas,
  metrics,
  *,
  ax=None,
  log: bool = False,
  labels: tuple[str, str] = (r"$\theta_A$", r"$\theta_B$"),
  title: str | None = None,
  xlabel: str = INTERP_LABEL,
  figsize: tuple[float, float] = (6.4, 4.6),
) -> Figure:
  """Plots metrics along the two-model interpolation L((1 - a) t_A + a t_B) (Li et al. 2018, §3;
  Goodfellow et al. 2015), with the endpoints a = 0 and a = 1 marked.

  Args:
    alphas: (n,) interpolation coefficients (the reference uses 401 points on [-0.5, 1.5]).
    metrics: {metric: (n,) array} (e.g. the result of `linear_path`), {run: {metric: array}}
      or a single (n,) loss array, as in `plot_1d`.
    ax: a matplotlib Axes to draw on, or None for a new figure (see `plot_1d`).
    log: logarithmic loss axis.
    labels: names of the two models, written above a = 0 and a = 1.
    title, xlabel, figsize: as in `plot_1d`.

  Returns:
    The Figure drawn on; write it with `plotting.save`.
  """
  fig, ax_ = figure_and_axes(ax, figsize)
  draw_1d(ax_, alphas, metrics, log=log, endpoints=(0.0, 1.0), endpoint_labels=labels,
          outside_legend=ax is None)
  finish(ax_, title=title, xlabel=xlabel)
  return fig


# ---------------------------------------------------------------------------------------------
# 2-D surfaces


def _grid_message(z: np.ma.MaskedArray, label: str) -> str:
  if not has_finite(z):
    return common.EMPTY_MESSAGE
  lo, hi = common.finite_range(z)
  if lo == hi:
    return f"constant {label} = {lo:.4g}:\nnothing to contour"
  return f"no positive {label} values\nfor a logarithmic scale"


def _prepare(xs, ys, z, *, log: bool):
  xs, ys, z = check_surface(xs, ys, z)
  zm = masked(z)
  if log:
    zm = mask_nonpositive(zm)
  return xs, ys, zm


def _set_limits(ax, xs, ys):
  ax.set_xlim(float(xs.min()), float(xs.max()))
  ax.set_ylim(float(ys.min()), float(ys.max()))


def _mark_points(ax, points: Mapping[str, Sequence[float]] | None):
  if not points:
    return
  for name, (px, py) in points.items():
    ax.plot([px], [py], marker="*", color="k", markersize=10, linestyle="none", zorder=5)
    ax.annotate(name, (px, py), xytext=(5, 5), textcoords="offset points", fontsize=9, zorder=5)


MAX_LABELLED_LEVELS = 8


def _norm_for(levels, log):
  if not log:
    return None
  import matplotlib.colors as mcolors

  return mcolors.LogNorm(vmin=float(levels[0]), vmax=float(levels[-1]))


def draw_contour(
  ax,
  xs,
  ys,
  z,
  *,
  levels=None,
  log: bool = False,
  cmap: str = "summer",
  label: str = "loss",
  colorbar: bool = True,
  clabel: bool = True,
  linewidths: float = 1.0,
  points=None,
  samples=None,
):
  """Draws contour lines of z (z[i, j] at (xs[i], ys[j])) on `ax`; returns the ContourSet/None.

  `samples`: optional (N, 2) coordinates of the evaluated points (e.g. `AdaptiveResult.coords`
  of an adaptive surface), drawn as small dots over the contours.
  """
  xs, ys, zm = _prepare(xs, ys, z, log=log)
  samples = _check_samples(samples)
  lv = contour_levels(zm, levels, log=log)
  _set_limits(ax, xs, ys)
  cs = None
  if lv is None:
    empty_message(ax, _grid_message(zm, label))
  else:
    x_mesh, y_mesh, z_t = mesh(xs, ys, zm)
    cs = ax.contour(
      x_mesh, y_mesh, z_t, levels=lv, cmap=cmap, norm=_norm_for(lv, log), linewidths=linewidths
    )
    if clabel and len(cs.levels):
      # every k-th level, at most MAX_LABELLED_LEVELS, in dark grey: dense levels (the steep rim
      # of a basin) otherwise print labels on top of each other, pale ones unreadable
      step = -(-len(cs.levels) // MAX_LABELLED_LEVELS)
      ax.clabel(cs, cs.levels[::step], inline=True, inline_spacing=3, fontsize=7, fmt="%.3g",
                colors="0.15")
    if colorbar:
      ax.figure.colorbar(cs, ax=ax, label=label, format="%.3g")
  if samples is not None and samples.shape[0]:
    ax.plot(samples[:, 0], samples[:, 1], ".", color="0.2", markersize=1.5, alpha=0.6,
            linestyle="none", zorder=4)
  _mark_points(ax, points)
  return cs


def _check_samples(samples):
  """`samples` as an (N, 2) float array (or None); anything else is a clear error."""
  if samples is None:
    return None
  arr = np.asarray(getattr(samples, "coords", samples), dtype=np.float64)
  if arr.ndim != 2 or arr.shape[1] != 2:
    raise ValueError(f"samples must be (N, 2) point coordinates (e.g. AdaptiveResult.coords), "
                     f"got shape {arr.shape}.")
  return arr


def _extend(zm, lv) -> str:
  lo, hi = common.finite_range(zm)
  below, above = lo < lv[0], hi > lv[-1]
  return {(False, False): "neither", (True, False): "min", (False, True): "max"}.get(
    (below, above), "both"
  )


def draw_contourf(
  ax, xs, ys, z, *, levels=None, log=False, cmap="viridis", label="loss", colorbar=True,
  points=None,
):
  """Draws filled contours of z on `ax`; values beyond the levels get the end colours."""
  xs, ys, zm = _prepare(xs, ys, z, log=log)
  lv = contour_levels(zm, levels, log=log, num=20)
  _set_limits(ax, xs, ys)
  cs = None
  if lv is not None and len(lv) < 2:
    lv = None
  if lv is None:
    empty_message(ax, _grid_message(zm, label))
  else:
    x_mesh, y_mesh, z_t = mesh(xs, ys, zm)
    cs = ax.contourf(
      x_mesh, y_mesh, z_t, levels=lv, cmap=cmap, norm=_norm_for(lv, log), extend=_extend(zm, lv)
    )
    if colorbar:
      ax.figure.colorbar(cs, ax=ax, label=label, format="%.3g")
  _mark_points(ax, points)
  return cs


def draw_heatmap(
  ax, xs, ys, z, *, log=False, vmin=None, vmax=None, cmap="viridis", label="loss",
  colorbar=True, points=None,
):
  """Draws z as cells centred on the grid points (masked cells show the grey background)."""
  xs, ys, zm = _prepare(xs, ys, z, log=log)
  ax.set_facecolor("0.85")
  if not has_finite(zm):
    _set_limits(ax, xs, ys)
    empty_message(ax, _grid_message(zm, label))
    _mark_points(ax, points)
    return None
  norm = None
  if log:
    import matplotlib.colors as mcolors

    lo, hi = common.finite_range(zm)
    norm = mcolors.LogNorm(vmin=vmin or lo, vmax=vmax or max(hi, lo * 1.0001))
    vmin = vmax = None
  x_mesh, y_mesh, z_t = mesh(xs, ys, zm)
  qm = ax.pcolormesh(
    x_mesh, y_mesh, z_t, shading="nearest", cmap=cmap, norm=norm, vmin=vmin, vmax=vmax
  )
  if colorbar:
    ax.figure.colorbar(qm, ax=ax, label=label, format="%.3g")
  _mark_points(ax, points)
  return qm


def _plot_2d(draw, xs, ys, z, *, ax, title, xlabel, ylabel, figsize, **kw):
  fig, ax = figure_and_axes(ax, figsize)
  draw(ax, xs, ys, z, **kw)
  finish(ax, title=title, xlabel=xlabel, ylabel=ylabel)
  return fig


def plot_contour(
  xs,
  ys,
  z,
  *,
  ax=None,
  levels=None,
  log: bool = False,
  label: str = "loss",
  cmap: str = "summer",
  points: Mapping[str, Sequence[float]] | None = None,
  samples=None,
  title: str | None = None,
  xlabel: str = "x (direction 1)",
  ylabel: str = "y (direction 2)",
  figsize: tuple[float, float] = (5.6, 4.6),
) -> Figure:
  """Contour lines, with labelled levels, of a 2-D landscape f(a, b) = L(t* + a d1 + b d2)
  (Li et al. 2018, Fig. 1, 5, 6).

  Args:
    xs, ys: (n,) and (m,) grid coordinates.
    z: (n, m) values with z[i, j] = f(xs[i], ys[j]) (the `surface_grid` convention); NaN / inf
      are masked.
    ax: a matplotlib Axes to draw on (its colour bar takes space from it), or None for a new
      figure of `figsize` inches.
    levels: contour levels (a sequence, or a count). Default: the reference levels
      arange(0.1, 10, 0.5) inside the data range, or 15 automatic levels when fewer than 3 of
      them fall inside it; with `log`, log-spaced levels.
    log: log-spaced levels and a logarithmic colour scale (non-positive values masked).
    label: colour-bar label (name of the metric).
    cmap: colour map (the reference uses "summer").
    points: optional {name: (x, y)} points to mark, e.g. {"minimum": (0, 0)}.
    samples: optional (N, 2) coordinates of the evaluated points, drawn as dots (e.g. the
      `AdaptiveResult.coords` of `core.adaptive.adaptive_surface`, whose `to_grid` gave
      `z`), or the `AdaptiveResult` itself.
    title, xlabel, ylabel, figsize: as in `plot_1d`.

  Returns:
    The Figure drawn on (`ax`'s figure when `ax` is given); write it with `plotting.save`.
  """
  return _plot_2d(
    draw_contour, xs, ys, z, ax=ax, levels=levels, log=log, label=label, cmap=cmap,
    points=points, samples=samples, title=title, xlabel=xlabel, ylabel=ylabel, figsize=figsize,
  )


def plot_contourf(
  xs,
  ys,
  z,
  *,
  ax=None,
  levels=None,
  log: bool = False,
  label: str = "loss",
  cmap: str = "viridis",
  points: Mapping[str, Sequence[float]] | None = None,
  title: str | None = None,
  xlabel: str = "x (direction 1)",
  ylabel: str = "y (direction 2)",
  figsize: tuple[float, float] = (5.6, 4.6),
) -> Figure:
  """Filled contours of a 2-D landscape (z[i, j] = f(xs[i], ys[j])), with a colour bar.

  Same arguments as `plot_contour` (and the same return value: the Figure drawn on); values
  outside the levels take the end colours (the colour bar shows arrows), masked (non-finite)
  values stay blank.
  """
  return _plot_2d(
    draw_contourf, xs, ys, z, ax=ax, levels=levels, log=log, label=label, cmap=cmap,
    points=points, title=title, xlabel=xlabel, ylabel=ylabel, figsize=figsize,
  )


def plot_heatmap(
  xs,
  ys,
  z,
  *,
  ax=None,
  log: bool = False,
  vmin: float | None = None,
  vmax: float | None = None,
  label: str = "loss",
  cmap: str = "viridis",
  points: Mapping[str, Sequence[float]] | None = None,
  title: str | None = None,
  xlabel: str = "x (direction 1)",
  ylabel: str = "y (direction 2)",
  figsize: tuple[float, float] = (5.6, 4.6),
) -> Figure:
  """Heat map of a 2-D landscape: one cell per grid point, centred on it (the reference draws a
  seaborn heat map with vmin=0.1, vmax=10). Non-finite cells are grey.

  Args:
    vmin, vmax: colour range (default: the finite data range).
    Others (`ax` included) as in `plot_contour`.

  Returns:
    The Figure drawn on; write it with `plotting.save`.
  """
  return _plot_2d(
    draw_heatmap, xs, ys, z, ax=ax, log=log, vmin=vmin, vmax=vmax, label=label, cmap=cmap,
    points=points, title=title, xlabel=xlabel, ylabel=ylabel, figsize=figsize,
  )


def plot_surface_3d(
  xs,
  ys,
  z,
  *,
  ax=None,
  log: bool | None = None,
  zmax: float | None = None,
  label: str = "loss",
  cmap: str = "coolwarm",
  elev: float = 30.0,
  azim: float = -60.0,
  title: str | None = None,
  xlabel: str = "x",
  ylabel: str = "y",
  figsize: tuple[float, float] = (6.4, 5.0),
) -> Figure:
  """3-D surface plot of a 2-D landscape (Li et al. 2018, Fig. 1 and 5), with a colour bar.

  Loss landscapes span orders of magnitude (a basin near 0.01 inside walls near 100): on a linear
  z axis the basin is a flat floor. By default (`log=None`) the heights are log10(z) when every
  finite value is positive and they span more than a factor of 10, labelled with the values
  themselves ("0.01", "1", "100") and the axis titled "<label> (log scale)"; otherwise linear.
  Each axis has at most 5 ticks in a small font, so the labels never overlap.

  Args:
    ax: a 3-D matplotlib Axes to draw on (`fig.add_subplot(projection="3d")`), or None for a new
      figure of `figsize` inches.
    log: True draws log10(z) (non-positive values masked), False z itself, None chooses (above).
    zmax: clip values above `zmax` first (tames diverged far points; the reference VTK export does
      the same).
    elev, azim: viewing angles in degrees.
    Others as in `plot_contour`. Non-finite values leave holes in the surface.

  Returns:
    The Figure drawn on; write it with `plotting.save`.
  """
  if log is None:
    finite = np.asarray(z, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if zmax is not None:
      finite = np.minimum(finite, zmax)
    log = bool(finite.size and finite.min() > 0 and finite.max() > 10 * finite.min())
  xs, ys, zm = _prepare(xs, ys, z, log=log)
  if zmax is not None:
    zm = np.ma.minimum(zm, zmax)
  zlabel = label
  value_format = ticker.FormatStrFormatter("%.3g")
  if log:
    zm = np.ma.log10(zm)
    zlabel = f"{label} (log scale)"
    value_format = ticker.FuncFormatter(lambda v, _: f"{10.0 ** v:.3g}")
  fig, ax = figure_and_axes(ax, figsize, projection="3d")
  x_mesh, y_mesh, z_t = mesh(xs, ys, zm)
  if has_finite(zm):
    lo, hi = common.finite_range(zm)
    surf = ax.plot_surface(
      x_mesh, y_mesh, np.ma.filled(z_t, np.nan), cmap=cmap, vmin=lo, vmax=hi, linewidth=0,
      antialiased=False, rstride=1, cstride=1,
    )
    cb = ax.figure.colorbar(surf, ax=ax, shrink=0.6, aspect=12, pad=0.12, label=zlabel,
                            format=value_format)
    if log:  # ticks at whole powers of ten when the range has two or more
      cb.locator = ticker.MaxNLocator(nbins=5, integer=bool(hi - lo >= 2))
      cb.update_ticks()
  else:
    ax.text2D(0.5, 0.5, common.EMPTY_MESSAGE, transform=ax.transAxes, ha="center", va="center")
  ax.view_init(elev=elev, azim=azim)
  whole = bool(log and has_finite(zm) and np.ptp(common.finite_range(zm)) >= 2)
  for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
    axis.set_major_locator(ticker.MaxNLocator(nbins=4, integer=whole and axis is ax.zaxis))
  ax.zaxis.set_major_formatter(value_format)
  ax.tick_params(labelsize=7, pad=1)
  ax.set_xlabel(xlabel, labelpad=2)
  ax.set_ylabel(ylabel, labelpad=2)
  ax.set_zlabel(zlabel, labelpad=6)
  if title:
    ax.set_title(title)
  return fig


PLOT_2D_ALL_NAMES = ("2dcontour", "2dcontourf", "2dheatmap", "3dsurface")


def plot_2d_all(
  xs,
  ys,
  z,
  *,
  levels=None,
  log: bool = False,
  label: str = "loss",
  zmax: float | None = None,
  title: str | None = None,
  xlabel: str = "x (direction 1)",
  ylabel: str = "y (direction 2)",
) -> dict[str, Figure]:
  """All the standard 2-D figures of one metric, as the reference plot_2D of Li et al. 2018 makes:
  contour lines, filled contours, heat map and 3-D surface.

  `plotting.save(figs, "run/surface")` writes them as `surface_2dcontour`, `surface_2dcontourf`,
  `surface_2dheatmap` and `surface_3dsurface` (PNG + PDF); `export_vtp` writes the ParaView file
  the reference also makes. To place the four plots yourself, call `plot_contour`,
  `plot_contourf`, `plot_heatmap` and `plot_surface_3d` with `ax=`.

  Args:
    xs, ys, z: the grid, z[i, j] = f(xs[i], ys[j]).
    levels, log, label, title, xlabel, ylabel: as in `plot_contour`; with log=False the 3-D
      surface still chooses log10 heights for a positive range wider than 10x
      (`plot_surface_3d(log=None)`).
    zmax: clipping for the 3-D surface.

  Returns:
    {"2dcontour": Figure, "2dcontourf": Figure, "2dheatmap": Figure, "3dsurface": Figure}
    (`PLOT_2D_ALL_NAMES`, in that order).
  """
  style = dict(label=label, title=title, xlabel=xlabel, ylabel=ylabel)
  figs = {
    "2dcontour": plot_contour(xs, ys, z, levels=levels, log=log, **style),
    "2dcontourf": plot_contourf(xs, ys, z, levels=levels, log=log, **style),
    "2dheatmap": plot_heatmap(xs, ys, z, log=log, **style),
  }
  style.update(xlabel=xlabel.split(" (")[0], ylabel=ylabel.split(" (")[0])
  # log=False leaves the 3-D surface's own choice (log10 heights for a wide positive range).
  figs["3dsurface"] = plot_surface_3d(xs, ys, z, log=log or None, zmax=zmax, **style)
  return figs
