"""Matplotlib figures of loss landscapes, mode-connecting curves, curvature and alignment.

Every function takes numpy arrays (never JAX state: pass `np.asarray(x)` or results of the
library), draws on a backend-free `matplotlib.figure.Figure` (no pyplot, no display needed),
masks NaN / inf values, labels its axes, adds colour bars, writes `path.png` and `path.pdf` (or the
`formats=` given) and returns the list of written files. Grid results are indexed
z[i, j] = f(xs[i], ys[j]) as `surface_grid` returns them.

  plot_1d, plot_interpolation                       Li et al. 2018, 1-D curves / two-model path
  plot_contour, plot_contourf, plot_heatmap,
  plot_surface_3d, export_vtp, plot_2d_all          Li et al. 2018, 2-D surfaces (+ ParaView)
  plot_curve_plane, plot_curve_metrics              Garipov et al. 2018, curves in a plane
  plot_spectrum, plot_eigen_ratio, plot_trajectory  Hessian density, |l_min/l_max|, PCA path
  plot_barriers, plot_bars, plot_budget             permutation alignment, ensembles
"""

from landscape_jax.plotting.common import contour_levels, output_paths
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
  export_vtp,
  plot_1d,
  plot_2d_all,
  plot_contour,
  plot_contourf,
  plot_heatmap,
  plot_interpolation,
  plot_surface_3d,
  vtp_values,
)

__all__ = [
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
  "vtp_values",
]
