"""Matplotlib figures of loss landscapes, mode-connecting curves, curvature and alignment.

Every `plot_*` function takes numpy arrays (never JAX state: pass `np.asarray(x)` or results of
the library), masks NaN / inf values, labels its axes, adds colour bars and returns the
`matplotlib.figure.Figure` it drew on; it writes nothing. With `ax=` (a matplotlib Axes, a 3-D one
for `plot_surface_3d`) it draws into that Axes and returns its figure; without, it makes a new
backend-free Figure (no pyplot, no global state, no display needed) that a Jupyter notebook shows
inline. Saving is a separate step: `save(fig, path)` writes `path.png` and `path.pdf` (or the
`formats=` given) atomically and returns the written files. The `draw_*` helpers draw on a given
Axes and return the matplotlib artist; `export_vtp` writes a ParaView file. Grid results are
indexed z[i, j] = f(xs[i], ys[j]) as `surface_grid` returns them.

  fig = plot_contour(xs, ys, res["train_loss"])           # a new Figure
  plot_contour(xs, ys, res["test_loss"], ax=axes[1])      # into an Axes of your own figure
  save(fig, "runs/r/surface")                             # runs/r/surface.png, .pdf
  save(plot_2d_all(xs, ys, z), "runs/r/surface")          # surface_2dcontour.png, ... (a dict)

  plot_1d, plot_interpolation                       Li et al. 2018, 1-D curves / two-model path
  plot_contour, plot_contourf, plot_heatmap,
  plot_surface_3d, export_vtp, plot_2d_all          Li et al. 2018, 2-D surfaces (+ ParaView)
  plot_curve_plane, plot_curve_metrics              Garipov et al. 2018, curves in a plane
  plot_spectrum, plot_eigen_ratio, plot_trajectory  Hessian density, |l_min/l_max|, PCA path
  plot_barriers, plot_bars, plot_budget             permutation alignment, ensembles

The same results as interactive plotly figures (rotatable 3-D surfaces, hover values; imported
on first use, so matplotlib users never load plotly): `interactive_surface`,
`interactive_contour`, `interactive_lines`, `interactive_curve_plane`,
`interactive_curve_metrics`, `interactive_spectrum`, `interactive_trajectory`, `interactive_bars`,
and `save_interactive` for `write_report` (plotting.interactive).
"""

import importlib
from typing import Any

from landscape_jax.plotting.common import contour_levels, output_paths, save
from landscape_jax.plotting.curvature import (
  eigen_ratio,
  plot_eigen_ratio,
  plot_spectrum,
  plot_trajectory,
)
from landscape_jax.plotting.curves import curve_levels, plot_curve_metrics, plot_curve_plane
from landscape_jax.plotting.ensembles import (
  draw_budget,
  plot_barriers,
  plot_bars,
  plot_budget,
)
from landscape_jax.plotting.surfaces import (
  plot_1d,
  plot_2d_all,
  plot_contour,
  plot_contourf,
  plot_heatmap,
  plot_interpolation,
  plot_surface_3d,
)
from landscape_jax.plotting.vtk import export_vtp, vtp_values

# plotting.interactive's public names, imported (with plotly) on first use.
_INTERACTIVE = (
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
)

__all__ = [
  *_INTERACTIVE,
  "contour_levels",
  "draw_budget",
  "curve_levels",
  "eigen_ratio",
  "export_vtp",
  "output_paths",
  "plot_1d",
  "plot_2d_all",
  "plot_bars",
  "plot_barriers",
  "plot_budget",
  "plot_contour",
  "plot_contourf",
  "plot_curve_metrics",
  "plot_curve_plane",
  "plot_eigen_ratio",
  "plot_heatmap",
  "plot_interpolation",
  "plot_spectrum",
  "plot_surface_3d",
  "plot_trajectory",
  "save",
  "vtp_values",
]


def __getattr__(name: str) -> Any:
  if name in _INTERACTIVE:
    value = getattr(importlib.import_module(f"{__name__}.interactive"), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
