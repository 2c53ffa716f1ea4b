"""Interactive figures (plotly) of the same results the matplotlib figures show: rotatable 3-D
surfaces, contour maps with hover values, the curve plane, metrics along a path or a curve, the
Hessian spectrum and the PCA trajectory.

Every `interactive_*` function takes numpy arrays (grids indexed z[i, j] = f(xs[i], ys[j]), as
`surface_grid` returns them) and returns a `plotly.graph_objects.Figure`, which Jupyter and Colab
show inline and `fig.write_html(path)` writes as a page. `save_interactive(fig, path)` writes the
figure's JSON (atomically) for `write_report`, which embeds plotly.js once and every figure after
it, so the report is one file that works offline. Landscapes span orders of magnitude, so surfaces
and contour maps open on log10(z) (or z clipped at a high quantile when some value is <= 0): the
low-loss basin stays visible; buttons above each figure switch to the linear (or clipped) view,
and hovering shows the value itself in every view.

Why plotly: its JavaScript (plotly.js, MIT) ships inside the Python wheel, so pages work without
a network; the same Figure renders in Jupyter, Colab and VS Code; WebGL 3-D surfaces rotate
smoothly; it is actively maintained (docs/report.md).

References:
  Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets"
  (surfaces, contours, PCA trajectories); Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018,
  "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs" (curve plane, metrics along t);
  Ghorbani, Krishnan and Xiao 2019, "An Investigation into Neural Net Optimization via Hessian
  Eigenvalue Density" (spectral density).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from landscape_jax.core import fileio
from landscape_jax.plotting import report
from landscape_jax.plotting.common import as_float, check_surface, plane_xy
from landscape_jax.plotting.surfaces import metric_kind

__all__ = [
  "INTERACTIVE_SUFFIX",
  "interactive_bars",
  "interactive_contour",
  "interactive_curve_metrics",
  "interactive_curve_plane",
  "interactive_lines",
  "interactive_spectrum",
  "interactive_surface",
  "interactive_trajectory",
  "load_interactive",
  "save_interactive",
  "z_views",
]

INTERACTIVE_SUFFIX = ".plotly.json"
_CURVE_COLOR, _LINE_COLOR = "#1f77b4", "#ff7f0e"
_LOSS_COLOR, _ACCURACY_COLOR = "#1f77b4", "#d62728"
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def _nan(z: np.ndarray) -> np.ndarray:
  """float64 copy with non-finite values as NaN (plotly leaves holes there)."""
  z = np.array(z, dtype=np.float64)
  z[~np.isfinite(z)] = np.nan
  return z


def z_views(z, *, label: str = "loss", zmax: float | None = None,
            quantile: float = 0.95) -> list[tuple[str, np.ndarray, str]]:
  """The height views of a surface, default first: [(button name, values, axis title), ...].

  * "log10": log10(z), when every finite value is > 0 (the default view then; its ticks are
    labelled with the values, its title says "log scale");
  * "clipped": min(z, zmax), with zmax given or the `quantile` of the finite values; the default
    when some value is <= 0, offered besides log10 when `zmax` is given;
  * "linear": z itself.
  Non-finite values are NaN in every view.
  """
  z = _nan(z)
  finite = z[np.isfinite(z)]
  views = []
  positive = finite.size > 0 and bool(np.all(finite > 0))
  if positive:
    with np.errstate(divide="ignore", invalid="ignore"):
      views.append(("log10", np.log10(z), f"{label} (log scale)"))
  if not positive or zmax is not None:
    top = zmax if zmax is not None else (float(np.quantile(finite, quantile)) if finite.size
                                         else np.nan)
    views.append(("clipped", np.minimum(z, top), f"{label}, clipped at {top:.3g}"))
  views.append(("linear", z, label))
  return views


def _ticks(name: str, values: np.ndarray) -> dict:
  """Axis/colour-bar tick settings of a view: the log10 view is labelled with the values
  themselves at whole powers of ten ("0.01", "1", "100"); other views keep plotly's ticks."""
  finite = values[np.isfinite(values)]
  if name != "log10" or not finite.size:
    return {"tickmode": "auto"}
  lo, hi = int(np.floor(finite.min())), int(np.ceil(finite.max()))
  if hi - lo < 1:
    return {"tickmode": "auto"}
  exps = list(range(lo, hi + 1))
  return {"tickmode": "array", "tickvals": exps, "ticktext": [f"{10.0 ** k:g}" for k in exps]}


def _view_buttons(names: Sequence[str], traces_per_view: int, extra: int,
                  relayouts: Sequence[Mapping]) -> list[dict]:
  """updatemenus buttons that show one view's traces (plus `extra` always-visible ones)."""
  buttons = []
  for k, name in enumerate(names):
    visible = [j // traces_per_view == k for j in range(traces_per_view * len(names))]
    buttons.append(dict(label=f"{name} z" if name != "linear" else "linear z", method="update",
                        args=[{"visible": visible + [True] * extra}, dict(relayouts[k])]))
  return [dict(type="buttons", direction="right", x=0.0, y=1.12, xanchor="left", yanchor="bottom",
               showactive=True, active=0, buttons=buttons, pad=dict(r=4, t=2))]


def _layout(fig: go.Figure, title: str | None, height: int = 480, **kw) -> go.Figure:
  fig.update_layout(title=dict(text=title or "", x=0.5, xanchor="center", y=0.98), height=height,
                    margin=dict(l=60, r=20, t=90, b=55), template="plotly_white",
                    legend=dict(orientation="h", y=-0.18), **kw)
  return fig


def interactive_surface(xs, ys, z, *, label: str = "loss", zmax: float | None = None,
                        title: str | None = None, xlabel: str = "x", ylabel: str = "y",
                        colorscale: str = "RdBu_r") -> go.Figure:
  """A rotatable 3-D surface of a 2-D landscape (Li et al. 2018, Fig. 1), with hover values.

  Opens on log10(z) (clipped z when some value is <= 0; `z_views`), with buttons for the other
  views; hovering shows (x, y) and the value of z itself.

  Args:
    xs, ys, z: the grid, z[i, j] = f(xs[i], ys[j]); NaN / inf leave holes.
    label: name of the value (axis titles, hover).
    zmax: clipping height of the "clipped" view (default: the 95 % quantile).
    title, xlabel, ylabel: text.
    colorscale: a plotly colour scale name.

  Returns:
    A plotly Figure.
  """
  xs, ys, z = check_surface(xs, ys, z)
  raw = _nan(z).T  # plotly: rows are y
  views = z_views(z, label=label, zmax=zmax)
  fig = go.Figure()
  for k, (vname, values, ztitle) in enumerate(views):
    fig.add_trace(go.Surface(
      x=xs, y=ys, z=values.T, customdata=raw, colorscale=colorscale, visible=k == 0,
      colorbar=dict(title=dict(text=ztitle, side="right"), len=0.75, **_ticks(vname, values)),
      hovertemplate=(f"{xlabel} = %{{x:.3f}}<br>{ylabel} = %{{y:.3f}}<br>{label} = "
                     "%{customdata:.4g}<extra></extra>")))
  relayouts = []
  for vname, values, t in views:
    ticks = _ticks(vname, values)
    relayouts.append({"scene.zaxis.title.text": t,
                      **{f"scene.zaxis.{k}": v for k, v in ticks.items()}})
  fig.update_layout(scene=dict(xaxis_title=xlabel, yaxis_title=ylabel,
                               zaxis=dict(title=views[0][2], **_ticks(*views[0][:2])),
                               aspectmode="manual", aspectratio=dict(x=1, y=1, z=0.7),
                               camera=dict(eye=dict(x=1.35, y=-1.35, z=0.85))),
                    updatemenus=_view_buttons([n for n, _, _ in views], 1, 0, relayouts))
  return _layout(fig, title, height=560)


def interactive_contour(xs, ys, z, *, label: str = "loss", zmax: float | None = None,
                        points: Mapping[str, Sequence[float]] | None = None,
                        title: str | None = None, xlabel: str = "x", ylabel: str = "y",
                        colorscale: str = "Viridis") -> go.Figure:
  """A filled contour map of a 2-D landscape with hover values (Li et al. 2018, Fig. 5).

  Colours follow log10(z) by default (`z_views`); buttons switch to the other views; hovering
  shows the value itself. The axes have equal scales.

  Args:
    xs, ys, z: the grid, z[i, j] = f(xs[i], ys[j]).
    points: optional {name: (x, y)} markers (e.g. {"A": (0, 0)}).
    Others as in `interactive_surface`.

  Returns:
    A plotly Figure.
  """
  xs, ys, z = check_surface(xs, ys, z)
  fig = go.Figure()
  _add_contours(fig, xs, ys, z, label=label, zmax=zmax, xlabel=xlabel, ylabel=ylabel,
                colorscale=colorscale)
  extra = _add_points(fig, points)
  _contour_menu(fig, z, label=label, zmax=zmax, extra=extra)
  fig.update_xaxes(title_text=xlabel, constrain="domain")
  fig.update_yaxes(title_text=ylabel, scaleanchor="x", scaleratio=1, constrain="domain")
  return _layout(fig, title)


def _add_contours(fig, xs, ys, z, *, label, zmax, xlabel, ylabel, colorscale, **trace_kw):
  raw = _nan(z).T
  for k, (vname, values, ztitle) in enumerate(z_views(z, label=label, zmax=zmax)):
    fig.add_trace(go.Contour(
      x=xs, y=ys, z=values.T, customdata=raw, colorscale=colorscale, visible=k == 0,
      ncontours=20, contours=dict(coloring="fill", showlines=True),
      line=dict(width=0.5, color="rgba(0,0,0,0.35)"),
      colorbar=dict(title=dict(text=ztitle, side="right"), **_ticks(vname, values)), name=ztitle,
      hovertemplate=(f"{xlabel} = %{{x:.3f}}<br>{ylabel} = %{{y:.3f}}<br>{label} = "
                     "%{customdata:.4g}<extra></extra>"), **trace_kw))


def _contour_menu(fig, z, *, label, zmax, extra):
  views = z_views(z, label=label, zmax=zmax)
  fig.update_layout(updatemenus=_view_buttons([n for n, _, _ in views], 1, extra,
                                              [{} for _ in views]))


def _add_points(fig, points) -> int:
  if not points:
    return 0
  names = list(points)
  xy = np.array([as_float(f"points[{n!r}]", points[n], 1) for n in names])
  fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers+text", text=names,
                           textposition="top center", name="points",
                           marker=dict(color="white", size=10, line=dict(color="black", width=2)),
                           hovertemplate="%{text}: (%{x:.3f}, %{y:.3f})<extra></extra>"))
  return 1


def interactive_lines(xs, values: Mapping[str, Sequence[float]], *, title: str | None = None,
                      xlabel: str = "x", ylabel: str | None = None,
                      marks: Mapping[str, float] | None = None,
                      log: bool = False) -> go.Figure:
  """Metrics along a 1-D path (Li et al. 2018, Fig. 2 and 3): losses on the left axis, accuracies
  and errors on the right one (in [0, 1] or %, as given), with hover values.

  Args:
    xs: (n,) positions along the path (a step along a direction, an interpolation weight).
    values: {name: (n,) array}, e.g. a `surface_grid` or `linear_path` result; names follow
      "<split>_<metric>" (train solid, test dashed).
    title, xlabel: text.
    ylabel: title of the left axis (default "loss", or "accuracy / error" without losses).
    marks: optional {name: x} vertical markers (e.g. {"A": 0, "B": 1}).
    log: logarithmic loss axis.

  Returns:
    A plotly Figure.
  """
  xs = as_float("xs", xs, 1)
  if not isinstance(values, Mapping) or not values:
    raise ValueError("`values` must be a non-empty {name: array} mapping.")
  kinds = {k: metric_kind(k) for k in values}
  two_axes = any(v != "loss" for v in kinds.values()) and any(v == "loss" for v in kinds.values())
  fig = make_subplots(specs=[[{"secondary_y": two_axes}]])
  # "<split>_<metric>" names: loss blue, accuracy red, train solid, test dashed (as the static
  # figures); other names (runs, variants) one colour each.
  split_names = all(k.split("_")[0] in ("train", "test", "val") for k in values)
  for n, (name, v) in enumerate(values.items()):
    v = _nan(as_float(f"values[{name!r}]", v, 1))
    if v.shape != xs.shape:
      raise ValueError(f"values[{name!r}] has {v.size} values for {xs.size} positions.")
    secondary = two_axes and kinds[name] != "loss"
    color = ((_LOSS_COLOR if kinds[name] == "loss" else _ACCURACY_COLOR) if split_names
             else _PALETTE[n % len(_PALETTE)])
    fig.add_trace(go.Scatter(
      x=xs, y=v, mode="lines+markers", name=name.replace("_", " "),
      line=dict(color=color, dash="dash" if name.startswith("test") else "solid"),
      marker=dict(size=4),
      hovertemplate=f"{xlabel} = %{{x:.3f}}<br>{name} = %{{y:.4g}}<extra></extra>"),
      secondary_y=secondary if two_axes else None)
  for name, x in (marks or {}).items():
    fig.add_vline(x=float(x), line=dict(color="grey", dash="dot"), annotation_text=str(name))
  fig.update_xaxes(title_text=xlabel)
  has_loss = any(v == "loss" for v in kinds.values())
  loss_title = ylabel or ("loss" if has_loss else "accuracy / error")
  fig.update_yaxes(title_text=loss_title, type="log" if log and has_loss else None,
                   secondary_y=False)
  if two_axes:  # own ticks (not synced to the loss axis), the whole [0, 1] when fractions
    right = np.concatenate([np.ravel(values[k]) for k in values if kinds[k] != "loss"])
    right = right[np.isfinite(right)]
    whole = right.size and right.min() >= 0 and right.max() <= 1
    fig.update_yaxes(title_text="accuracy / error", secondary_y=True, showgrid=False,
                     tickmode="auto", range=[-0.02, 1.02] if whole else None)
  return _layout(fig, title, height=440)


def interactive_curve_plane(grid_xs, grid_ys, z, *, curve_xy, endpoints_xy, chord_xy=None,
                            bend_xy=None, label: str = "train loss", zmax: float | None = None,
                            names: Sequence[str] = ("w0", "w1", "w2"),
                            title: str | None = None) -> go.Figure:
  """The loss over the plane through two endpoints and a bend, with the curve and the straight
  chord on top, at equal scales (Garipov et al. 2018, Fig. 1).

  Plane coordinates as `core.curves.plane_basis`: u along w2 - w0 (endpoint to endpoint), v
  orthogonal to it towards the bend w1, both in parameter-space distance. Colours on log10 of the
  loss by default (`z_views`).

  Args:
    grid_xs, grid_ys, z: the plane grid (`curves.evaluate_plane`'s "x", "y" and a metric).
    curve_xy: (T, 2) projections of the curve; endpoints_xy: (2, 2); chord_xy: optional (K, 2)
      (default the segment between the endpoints); bend_xy: optional (2,) or (k, 2).
    label: the metric's name; zmax: clipping height of the "clipped" view.
    names: names of the first endpoint, the bend and the second endpoint (hover and axis titles).
    title: text.

  Returns:
    A plotly Figure.
  """
  xs, ys, z = check_surface(grid_xs, grid_ys, z)
  curve = plane_xy("curve_xy", curve_xy)
  ends = plane_xy("endpoints_xy", endpoints_xy)
  chord = ends if chord_xy is None else plane_xy("chord_xy", chord_xy)
  w0, w1, w2 = names
  xlabel, ylabel = f"u: along {w2} - {w0}", f"v: towards {w1}"
  fig = go.Figure()
  _add_contours(fig, xs, ys, z, label=label, zmax=zmax, xlabel="u", ylabel="v",
                colorscale="Viridis")
  fig.add_trace(go.Scatter(x=chord[:, 0], y=chord[:, 1], mode="lines", name="straight line",
                           line=dict(color="black", dash="dash", width=2), hoverinfo="skip"))
  ts = np.linspace(0, 1, len(curve))
  fig.add_trace(go.Scatter(x=curve[:, 0], y=curve[:, 1], mode="lines+markers", name="curve",
                           customdata=ts, line=dict(color="black", width=3), marker=dict(size=4),
                           hovertemplate="curve t = %{customdata:.2f}<extra></extra>"))
  pts = [(w0, ends[0]), (w2, ends[-1])]
  if bend_xy is not None:
    pts += [(w1 if k == 0 else f"{w1}[{k}]", b)
            for k, b in enumerate(plane_xy("bend_xy", bend_xy, True))]
  extra = 2 + _add_points(fig, {n: p for n, p in pts})
  _contour_menu(fig, z, label=label, zmax=zmax, extra=extra)
  fig.update_xaxes(title_text=xlabel, range=[float(xs.min()), float(xs.max())],
                   constrain="domain")
  fig.update_yaxes(title_text=ylabel, range=[float(ys.min()), float(ys.max())],
                   scaleanchor="x", scaleratio=1, constrain="domain")
  ratio = float(np.ptp(ys) / np.ptp(xs))  # a flat plane gets a flat figure
  return _layout(fig, title, height=int(np.clip(760 * ratio + 230, 330, 620)))


def _error(name: str, v: np.ndarray) -> tuple[str, np.ndarray]:
  """(name, error in %) for an accuracy or error metric given as a fraction or in %."""
  finite = v[np.isfinite(v)]
  frac = finite.size == 0 or finite.max() <= 1.0
  if metric_kind(name) == "accuracy":
    return name.replace("accuracy", "error"), (1.0 - v) * 100.0 if frac else 100.0 - v
  return name, v * 100.0 if frac else v


def interactive_curve_metrics(ts, curve: Mapping[str, Sequence[float]],
                              line: Mapping[str, Sequence[float]], *, line_ts=None,
                              title: str | None = None) -> go.Figure:
  """Loss and error along t for a curve against the straight line (Garipov et al. 2018, Fig. 3):
  losses on the left panel, errors in % on the right; curve blue, line orange, train solid,
  test dashed; hover values.

  Args:
    ts: (T,) parameters of the curve values (and the line's unless `line_ts` is given).
    curve, line: {metric: (T,) array}, e.g. `curves.evaluate_curve`'s "curve" and "line".
    title: text.

  Returns:
    A plotly Figure.
  """
  ts = as_float("ts", ts, 1)
  lts = ts if line_ts is None else as_float("line_ts", line_ts, 1)
  fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "error (%)"),
                      horizontal_spacing=0.12)
  for gname, gts, metrics, color in (("curve", ts, curve, _CURVE_COLOR),
                                     ("straight line", lts, line, _LINE_COLOR)):
    for key, values in metrics.items():
      v = _nan(as_float(f"{gname}[{key!r}]", values, 1))
      if v.shape != gts.shape:
        raise ValueError(f"{gname}[{key!r}] has {v.size} values for {gts.size} t values.")
      col, shown = 1, key
      if metric_kind(key) != "loss":
        col = 2
        shown, v = _error(key, v)
      fig.add_trace(go.Scatter(
        x=gts, y=v, mode="lines+markers", marker=dict(size=4),
        name=f"{gname}: {shown.replace('_', ' ')}",
        line=dict(color=color, dash="dash" if key.startswith("test") else "solid"),
        hovertemplate=f"t = %{{x:.3f}}<br>{shown} = %{{y:.4g}}<extra>{gname}</extra>"),
        row=1, col=col)
  fig.update_xaxes(title_text="t", range=[0, 1] if ts.min() >= 0 and ts.max() <= 1 else None)
  fig.update_yaxes(title_text="loss", row=1, col=1)
  fig.update_yaxes(title_text="error (%)", row=1, col=2)
  return _layout(fig, title, height=440)


def interactive_spectrum(grid, density, *, eigenvalues=None, dynamic_range: float = 1e-8,
                         title: str | None = None) -> go.Figure:
  """The Hessian eigenvalue density on a log y axis (Ghorbani et al. 2019, Fig. 1), with the
  Lanczos nodes (Ritz values) as ticks along the bottom; hover values.

  Args:
    grid, density: (n,) eigenvalues and the density there (`hessian.spectral_density`).
    eigenvalues: optional Ritz values to mark.
    dynamic_range: densities below `dynamic_range * max` are not drawn (log axis).
    title: text.

  Returns:
    A plotly Figure.
  """
  g = as_float("grid", grid, 1)
  d = _nan(as_float("density", density, 1))
  if d.shape != g.shape:
    raise ValueError(f"`density` has {d.size} values for {g.size} grid points.")
  top = np.nanmax(d) if np.isfinite(d).any() else np.nan
  d = np.where(d >= dynamic_range * top, d, np.nan)
  fig = go.Figure(go.Scatter(x=g, y=d, mode="lines", name="density", line=dict(color="#1f77b4"),
                             hovertemplate="lambda = %{x:.4g}<br>density = %{y:.3g}"
                                           "<extra></extra>"))
  if eigenvalues is not None:
    ev = as_float("eigenvalues", eigenvalues).ravel()
    fig.add_trace(go.Scatter(x=ev, y=np.full(ev.shape, dynamic_range * top if np.isfinite(top)
                                              else 1.0), mode="markers", name="Lanczos nodes",
                             marker=dict(symbol="line-ns-open", size=12, color="#d62728"),
                             hovertemplate="node %{x:.4g}<extra></extra>"))
  fig.update_xaxes(title_text="eigenvalue lambda")
  fig.update_yaxes(title_text="density", type="log", exponentformat="power")
  return _layout(fig, title, height=420)


def interactive_trajectory(xs, ys, z, path_xy, *, explained_variance=None,
                           label: str = "train loss", zmax: float | None = None,
                           title: str | None = None) -> go.Figure:
  """An optimisation trajectory in its top-2 PCA plane over the loss contours of that plane
  (Li et al. 2018, §7, Fig. 9); hover shows each snapshot's index and coordinates.

  Args:
    xs, ys, z: the loss grid of the plane, z[i, j] at (xs[i], ys[j]).
    path_xy: (T, 2) coordinates of the snapshots (last row the final point).
    explained_variance: optional (r1, r2) ratios in [0, 1] for the axis titles.
    label, zmax, title: as in `interactive_contour`.

  Returns:
    A plotly Figure.
  """
  p = plane_xy("path_xy", path_xy)
  names = ["1st PC", "2nd PC"]
  if explained_variance is not None:
    ev = as_float("explained_variance", explained_variance, 1)
    if ev.size != 2:
      raise ValueError(f"`explained_variance` must hold two ratios, got {ev.size}.")
    names = [f"{n}: {100 * r:.2f} %" for n, r in zip(names, ev, strict=True)]
  xs, ys, z = check_surface(xs, ys, z)
  fig = go.Figure()
  _add_contours(fig, xs, ys, z, label=label, zmax=zmax, xlabel="PC1", ylabel="PC2",
                colorscale="Viridis")
  fig.add_trace(go.Scatter(x=p[:, 0], y=p[:, 1], mode="lines+markers", name="trajectory",
                           customdata=np.arange(len(p)), line=dict(color="#d62728", width=2),
                           marker=dict(size=6),
                           hovertemplate="snapshot %{customdata}<br>(%{x:.3g}, %{y:.3g})"
                                         "<extra></extra>"))
  extra = 1 + _add_points(fig, {"start": p[0], "final": p[-1]})
  _contour_menu(fig, z, label=label, zmax=zmax, extra=extra)
  fig.update_xaxes(title_text=names[0])
  fig.update_yaxes(title_text=names[1])
  return _layout(fig, title, height=500)


def interactive_bars(names: Sequence[str], values, *, errors=None, ylabel: str,
                     highlight: Sequence[str] | None = None,
                     title: str | None = None) -> go.Figure:
  """Values as points with optional error bars (e.g. FGE members against the ensemble), on an
  axis that need not start at zero, since no bar length suggests a ratio; hover values.

  Args:
    names: one label per value; values: the values; errors: optional half-widths.
    ylabel: the axis title (say the unit); highlight: names drawn in orange; title: text.

  Returns:
    A plotly Figure.
  """
  names = [str(n) for n in names]
  v = _nan(as_float("values", values, 1))
  if v.size != len(names):
    raise ValueError(f"{len(names)} names but {v.size} values: give one value per name.")
  err = None if errors is None else as_float("errors", errors, 1)
  hl = set(highlight or ())
  colors = ["#ff7f0e" if n in hl else "#1f77b4" for n in names]
  fig = go.Figure(go.Scatter(
    x=names, y=v, mode="markers", marker=dict(size=12, color=colors),
    error_y=None if err is None else dict(type="data", array=err, visible=True),
    hovertemplate=f"%{{x}}<br>{ylabel} = %{{y:.4g}}<extra></extra>", name=ylabel))
  fig.update_yaxes(title_text=ylabel)
  return _layout(fig, title, height=400, showlegend=False)


def save_interactive(fig: go.Figure, path) -> str:
  """Writes `fig` as plotly JSON to `path` (+ ".plotly.json" unless it ends with ".json"),
  atomically; `write_report` embeds such files. Returns the written path."""
  if not isinstance(fig, go.Figure):
    raise TypeError(f"save_interactive expects a plotly Figure, got {type(fig).__name__}.")
  path = os.fspath(path)
  if not path.endswith(".json"):
    path += INTERACTIVE_SUFFIX
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fileio.atomic_write_text(path, pio.to_json(fig, validate=False))
  return path


def load_interactive(path) -> go.Figure:
  """Reads a figure written by `save_interactive`, as data only: a regular file of at most
  `report.MAX_PLOTLY_JSON_BYTES`, a JSON object with a "data" list (JSON, never executed)."""
  path = os.fspath(path)
  report.read_plotly_json(path, path)  # the checks; plotly then decodes its typed arrays
  with open(path, encoding="utf-8") as f:
    return pio.from_json(f.read())
