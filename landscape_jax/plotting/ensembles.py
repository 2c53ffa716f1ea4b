"""Figures for permutation alignment and ensembles: loss barriers along linear interpolation before
and after aligning hidden units (Ainsworth et al. 2023, Fig. 2; Entezari et al. 2022), and bar
charts such as fast geometric ensembling vs its members, and ensembles against their training
budget (Garipov et al. 2018, Table 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from landscape_jax.core import paths
from landscape_jax.plotting.common import (
  as_float,
  empty_message,
  figure_and_axes,
  finish,
  has_finite,
  masked,
)

__all__ = [
  "draw_budget",
  "plot_barriers",
  "plot_bars",
  "plot_budget",
]


def plot_barriers(
  alphas,
  runs,
  *,
  ax=None,
  ylabel: str = "loss",
  show_barrier: bool = True,
  title: str | None = None,
  xlabel: str = r"$\alpha$ in $(1-\alpha)\,\theta_A + \alpha\,\pi(\theta_B)$",
  figsize: tuple[float, float] = (6.0, 4.2),
) -> Figure:
  """Metric along linear interpolation between two models, one line per variant (e.g. "naive" vs
  "weight matching"), with the endpoints marked and the barrier in the legend.

  Args:
    alphas: (n,) interpolation coefficients.
    runs: {name: values}, values of shape (n,) or (k, n) for k repeats (drawn as the mean with a
      min-max band); NaN / inf are masked.
    ax: a matplotlib Axes to draw on, or None for a new figure of `figsize` inches.
    ylabel: what the values are ("loss", "test accuracy", ...).
    show_barrier: append the barrier max_[0,1] - mean(endpoints) of the (mean) curve to each label
      (`core.paths.barrier`, Frankle et al. 2020); "barrier n/a" when the alphas lack 0
      or 1, or a value in [0, 1] is NaN / inf.
    title, xlabel, figsize: as in `plot_1d`.

  Returns:
    The Figure drawn on (`ax`'s figure when `ax` is given); write it with `plotting.save`.
  """
  alphas = as_float("alphas", alphas, 1)
  if not runs:
    raise ValueError("`runs` is empty: give {name: values along alphas}.")
  fig, ax = figure_and_axes(ax, figsize)
  any_finite = False
  for k, (name, values) in enumerate(runs.items()):
    v = as_float(f"runs[{name!r}]", values, (1, 2))
    if v.shape[-1] != alphas.size:
      raise ValueError(
        f"runs[{name!r}] has {v.shape[-1]} values along alpha but alphas has {alphas.size}."
      )
    color = f"C{k}"
    if v.ndim == 2:
      vm = masked(v)
      mean = vm.mean(axis=0)
      ax.fill_between(alphas, vm.min(axis=0).filled(np.nan), vm.max(axis=0).filled(np.nan),
                      color=color, alpha=0.2, linewidth=0)
    else:
      mean = masked(v)
    any_finite |= has_finite(mean)
    label = str(name)
    if show_barrier:
      b = (paths.barrier(np.ma.filled(mean, np.nan), alphas)
           if paths.endpoint_indices(alphas) is not None else np.nan)
      label += f" (barrier {b:.3g})" if np.isfinite(b) else " (barrier n/a)"
    ax.plot(alphas, mean, "-", color=color, linewidth=1.8, label=label)
  for a in (0.0, 1.0):
    if alphas.min() <= a <= alphas.max():
      ax.axvline(a, color="0.5", linestyle=":", linewidth=1)
  if alphas.size >= 2 and np.ptp(alphas) > 0:
    ax.set_xlim(float(alphas.min()), float(alphas.max()))
  if any_finite:
    ax.legend(fontsize=8)
  else:
    empty_message(ax)
  finish(ax, title=title, xlabel=xlabel, ylabel=ylabel)
  return fig


def plot_bars(
  names: Sequence[str],
  values,
  *,
  ylabel: str,
  ax=None,
  errors=None,
  highlight: Sequence[str] | None = None,
  ylim: tuple[float, float] | None = None,
  value_format: str = "{:.4g}",
  style: str = "auto",
  title: str | None = None,
  figsize: tuple[float, float] | None = None,
) -> Figure:
  """Values side by side with the value written on each, e.g. FGE ensemble vs member accuracies.

  A bar's length reads as a ratio, so bars always start at zero. Values too close together for
  bars from zero to show their differences (spread under 10 % of the largest) are drawn as points
  with error bars instead (`style="auto"`), on an axis around the values.

  Args:
    names: bar labels.
    values: one value per name; non-finite values leave an "n/a" gap.
    ylabel: axis label (say the unit: "test accuracy" in [0, 1], "error (%)").
    ax: a matplotlib Axes to draw on, or None for a new figure.
    errors: optional error-bar half-widths, one per name.
    highlight: names drawn in a contrasting colour (e.g. ["FGE ensemble"]).
    ylim: y range (default: from 0 for bars, around the values for points).
    value_format: format of the numbers written on the bars.
    style: "bar" (from zero), "points" (markers with error bars) or "auto" (points when the
      values are close together, above).
    title: text.
    figsize: size in inches of the new figure (default: wide enough for the bars).

  Returns:
    The Figure drawn on; write it with `plotting.save`.
  """
  names = [str(n) for n in names]
  v = as_float("values", values, 1)
  if v.size != len(names):
    raise ValueError(f"{len(names)} names but {v.size} values: give one value per name.")
  if not names:
    raise ValueError("`names` is empty: nothing to plot.")
  err = None if errors is None else as_float("errors", errors, 1)
  if err is not None and err.size != v.size:
    raise ValueError(f"{err.size} errors for {v.size} values: give one error per value.")
  hl = set(highlight or ())
  unknown = hl - set(names)
  if unknown:
    raise ValueError(f"highlight names {sorted(unknown)} are not among the bar names {names}.")
  if figsize is None:
    figsize = (max(4.0, 0.7 * len(names) + 2.0), 4.0)
  if style not in ("auto", "bar", "points"):
    raise ValueError(f"`style` must be 'auto', 'bar' or 'points', got {style!r}.")
  fig, ax = figure_and_axes(ax, figsize)
  vm = masked(v)
  colors = ["tab:orange" if n in hl else "tab:blue" for n in names]
  x = np.arange(len(names))
  close = False
  if has_finite(vm):
    lo, hi = float(vm.min()), float(vm.max())
    close = lo > 0 and (hi - lo) < 0.1 * hi
  if style == "points" or (style == "auto" and close):
    _draw_points(ax, x, v, vm, err, colors, value_format, ylim)
  else:
    _draw_bars(ax, x, v, vm, err, colors, value_format, ylim)
  ax.set_xticks(x, names, rotation=30 if max(len(n) for n in names) > 8 else 0, ha="right"
                if max(len(n) for n in names) > 8 else "center")
  finish(ax, title=title, ylabel=ylabel)
  return fig


def _draw_bars(ax, x, v, vm, err, colors, value_format, ylim):
  bars = ax.bar(x, vm.filled(0.0), color=colors, yerr=None if err is None else err, capsize=3)
  for rect, val, ok in zip(bars, v, ~np.ma.getmaskarray(vm), strict=True):
    if not ok:
      rect.set_visible(False)
      if not has_finite(vm):
        continue  # the axes-wide message says it all
    text = value_format.format(val) if ok else "n/a"
    ax.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height() if ok else 0.0),
                xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=8)
  if ylim is not None:
    ax.set_ylim(*ylim)
  elif has_finite(vm):
    lo, hi = float(vm.min()), float(vm.max())
    top, bottom = max(0.0, hi) * 1.12, min(0.0, lo) * 1.12
    ax.set_ylim(bottom, top if top > bottom else bottom + 1.0)
  else:
    empty_message(ax)


def _draw_points(ax, x, v, vm, err, colors, value_format, ylim):
  ok = ~np.ma.getmaskarray(vm)
  if not ok.any():
    empty_message(ax)
    return
  for xi, val, c, e in zip(x[ok], v[ok], np.asarray(colors)[ok],
                           (err[ok] if err is not None else [None] * int(ok.sum())), strict=True):
    ax.errorbar([xi], [val], yerr=None if e is None else [e], fmt="o", color=c, markersize=8,
                capsize=4, elinewidth=1.5)
    ax.annotate(value_format.format(val), (xi, val), xytext=(8, 0), textcoords="offset points",
                ha="left", va="center", fontsize=8)
  ax.set_xlim(-0.6, len(x) - 0.1)  # room for the last value label
  if ylim is not None:
    ax.set_ylim(*ylim)
  else:
    e = np.zeros(int(ok.sum())) if err is None else np.nan_to_num(err[ok])
    lo, hi = float((v[ok] - e).min()), float((v[ok] + e).max())
    pad = max(hi - lo, 0.01 * abs(hi)) * 0.3
    ax.set_ylim(lo - pad, hi + pad)
  ax.grid(axis="y", alpha=0.3)


def draw_budget(ax, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                annotate: bool = True) -> None:
  """Draws one line per method of (training epochs, value), e.g. test error of ensembles.

  A method with one point (SWA) is a star. With `annotate`, each point of a multi-point series is
  labelled with its number of members (1, 2, ...), as Garipov et al. 2018 compare ensembles of
  FGE snapshots and of independently trained networks at equal training budget (Table 2).
  """
  markers = iter(["o", "s", "^", "D", "v", "P"])
  drawn = False
  for name, (epochs, values) in series.items():
    x = as_float(f"{name} epochs", epochs, 1)
    y = masked(as_float(f"{name} values", values, 1))
    if x.size != y.size:
      raise ValueError(f"{name}: {x.size} epochs but {y.size} values: give one value per epoch.")
    if x.size == 0:
      raise ValueError(f"{name}: no points to plot.")
    if not has_finite(y):
      continue
    drawn = True
    if x.size == 1:
      ax.plot(x, y, "*", markersize=14, label=name)
      continue
    (line,) = ax.plot(x, y, marker=next(markers, "o"), label=name)
    if annotate:
      for k, (xi, yi) in enumerate(zip(x, y.filled(np.nan), strict=True)):
        if np.isfinite(yi):
          ax.annotate(str(k + 1), (xi, yi), xytext=(3, 3), textcoords="offset points",
                      fontsize=7, color=line.get_color())
  if drawn:
    ax.legend()
  else:
    empty_message(ax)


def plot_budget(
  series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
  *,
  ax=None,
  ylabel: str = "test error (%)",
  xlabel: str = "training epochs",
  title: str | None = None,
  annotate: bool = True,
  figsize: tuple[float, float] = (6.0, 4.2),
) -> Figure:
  """A metric against training cost for several ensembling methods (`draw_budget`).

  Args:
    series: ``{method: (epochs, values)}``, e.g. ``{"independent": ([200, 400], [7.1, 6.0]),
      "FGE": ([204, 208], [6.9, 6.2]), "SWA": ([240], [6.4])}``; non-finite values are gaps.
    ylabel, xlabel, title: axis labels (say the unit) and title.
    annotate: label the points with their number of members.
    ax: a matplotlib Axes to draw on, or None for a new figure of `figsize` inches.

  Returns:
    The Figure drawn on; write it with `plotting.save`.
  """
  if not series:
    raise ValueError("`series` is empty: nothing to plot.")
  fig, ax = figure_and_axes(ax, figsize)
  draw_budget(ax, series, annotate=annotate)
  ax.grid(alpha=0.3)
  finish(ax, title=title, xlabel=xlabel, ylabel=ylabel)
  return fig
