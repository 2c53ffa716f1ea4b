"""Tests of landscape_jax.plotting: every plot draws into a given Axes or a new Figure and returns
that Figure; `save` writes it as a valid PNG and PDF for ordinary, NaN-containing and all-NaN
inputs; grid orientation z[i, j] = (xs[i], ys[j]) on non-square grids; contour levels, barriers
and the VTK export against hand computations."""

import os
import xml.etree.ElementTree as ET

import matplotlib.figure
import numpy as np
import pytest

from landscape_jax import plotting as P
from landscape_jax.plotting import common, surfaces

DPI = 80
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF"}

# A non-square grid whose minimum (0.6, -0.4) is off-centre and asymmetric, so a transposed
# plot would put it at a visibly different place (and fail on the shape).
XS = np.linspace(-1.0, 1.0, 17)
YS = np.linspace(-1.0, 0.5, 11)
XX, YY = np.meshgrid(XS, YS, indexing="ij")
Z = 0.05 + 2.0 * (XX - 0.6) ** 2 + (YY + 0.4) ** 2
X_MIN, Y_MIN = 0.6, -0.4


def with_nan(z):
  z = z.copy()
  z[-2:, :3] = np.nan
  z[0, -1] = np.inf
  return z


def formats_for(kind):
  """PNG and PDF for ordinary inputs; edge cases (all NaN, constant, ...) as PNG only, to save time
  (every function's PDF output is checked by its ordinary case)."""
  return ("png", "pdf") if kind in ("plain", "nan", "metrics", "array", "runs") else ("png",)


def saved(fig, path, formats=("png", "pdf")):
  """`P.save(fig, path, formats)` at the tests' low resolution."""
  return P.save(fig, path, formats, dpi=DPI)


def check_files(files, exts=(".png", ".pdf")):
  if isinstance(exts, tuple) and exts and not exts[0].startswith("."):
    exts = ["." + f for f in exts]
  assert sorted(os.path.splitext(f)[1] for f in files) == sorted(exts)
  for f in files:
    assert os.path.getsize(f) > 1000, f
    with open(f, "rb") as fh:
      assert fh.read(8).startswith(MAGIC[os.path.splitext(f)[1]]), f


# ---------------------------------------------------------------------------------------------
# Paths and formats


def test_no_pyplot_import():
  """The plotting code never imports pyplot (global state, needs a backend): it builds
  matplotlib.figure.Figure objects directly, which works headless."""
  import ast

  import landscape_jax.plotting.report

  files = [os.path.join(os.path.dirname(P.__file__), f)
           for f in os.listdir(os.path.dirname(P.__file__)) if f.endswith(".py")]
  files.append(landscape_jax.plotting.report.__file__)
  for f in files:
    with open(f, encoding="utf-8") as fh:
      tree = ast.parse(fh.read())
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [f"{node.module}.{a.name}" for a in node.names]
      assert not any("pyplot" in n or n.endswith("pylab") for n in names), (f, names)


def test_output_paths(tmp_path):
  base = str(tmp_path / "a" / "fig")
  assert common.output_paths(base, ("png", "pdf")) == [base + ".png", base + ".pdf"]
  assert common.output_paths(base + ".png", ("png", "pdf")) == [base + ".png", base + ".pdf"]
  assert common.output_paths(base + ".pdf", None) == [base + ".pdf"]
  assert common.output_paths(base, None) == [base + ".png", base + ".pdf"]
  # A dot that is not a figure extension stays part of the name.
  assert common.output_paths(base + ".lr0.1", "png") == [base + ".lr0.1.png"]
  with pytest.raises(ValueError, match="Unknown figure format"):
    common.output_paths(base, ("bmpx",))


def test_formats_argument_and_folder_creation(tmp_path):
  fig = P.plot_1d(XS, Z[:, 0])
  files = saved(fig, tmp_path / "new" / "dir" / "one.pdf", "png")
  assert files == [str(tmp_path / "new" / "dir" / "one.png")]
  check_files(files, (".png",))
  # formats=None: the extension given, else PNG and PDF.
  assert P.save(fig, tmp_path / "two.pdf", dpi=DPI) == [str(tmp_path / "two.pdf")]
  check_files(P.save(fig, tmp_path / "three", dpi=DPI))


# ---------------------------------------------------------------------------------------------
# 1-D


def metrics_1d(a):
  return {
    "train_loss": 0.1 + a**2,
    "test_loss": 0.2 + a**2,
    "train_accuracy": 1 - 0.3 * np.abs(a),
    "test_accuracy": 0.9 - 0.3 * np.abs(a),
  }


@pytest.mark.parametrize(
  "kind,log",
  [("array", False), ("metrics", False), ("runs", True), ("nan", True), ("all_nan", False),
   ("all_nan", True)],
)
def test_plot_1d(tmp_path, kind, log):
  a = np.linspace(-1, 1, 21)
  if kind == "array":
    curves = 0.1 + a**2
  elif kind == "metrics":
    curves = metrics_1d(a)
  elif kind == "runs":
    curves = {"bs 128": metrics_1d(a), "bs 8192": metrics_1d(2 * a)}
  elif kind == "nan":
    curves = metrics_1d(a)
    curves["train_loss"][[0, 5]] = [np.nan, np.inf]
    curves["test_accuracy"][-3:] = np.nan
  else:
    curves = {k: np.full_like(a, np.nan) for k in metrics_1d(a)}
  fig = P.plot_1d(a, curves, log=log, title="t")
  check_files(saved(fig, tmp_path / "f", formats_for(kind)), formats_for(kind))


def test_plot_1d_twin_axes_and_styles():
  fig = common.new_figure()
  ax = fig.add_subplot()
  a = np.linspace(-1, 1, 11)
  ax1, ax2 = surfaces.draw_1d(ax, a, metrics_1d(a))
  left = {line.get_label(): line.get_linestyle() for line in ax1.get_lines()}
  right = {line.get_label(): line.get_linestyle() for line in ax2.get_lines()}
  assert left == {"train loss": "-", "test loss": "--"}  # readable legend names
  assert right == {"train accuracy": "-", "test accuracy": "--"}
  assert ax1.get_ylabel() == "loss" and ax2.get_ylabel() == "accuracy"
  assert ax2.get_ylim()[0] <= 0 and ax2.get_ylim()[1] >= 1


def test_plot_1d_bad_input():
  a = np.linspace(-1, 1, 5)
  with pytest.raises(ValueError, match="one value per x"):
    P.plot_1d(a, {"loss": np.ones(4)})
  with pytest.raises(ValueError, match="mixes runs"):
    P.plot_1d(a, {"loss": np.ones(5), "run": {"loss": np.ones(5)}})


@pytest.mark.parametrize("nan", [False, True])
def test_plot_interpolation(tmp_path, nan):
  al = np.linspace(-0.5, 1.5, 21)
  m = {"train_loss": 0.2 + np.sin(np.pi * al) ** 2, "test_accuracy": 0.9 - 0.2 * al**2}
  if nan:
    m["train_loss"][:3] = np.nan
  check_files(saved(P.plot_interpolation(al, m), tmp_path / "i"))


# ---------------------------------------------------------------------------------------------
# 2-D


def plot_eigen_ratio(xs, ys, z, **kw):
  return P.plot_eigen_ratio(xs, ys, z / np.nanmax(np.where(np.isfinite(z), z, 0)), **kw)


PLOTS_2D = [P.plot_contour, P.plot_contourf, P.plot_heatmap, P.plot_surface_3d, plot_eigen_ratio]


@pytest.mark.parametrize("plot", PLOTS_2D, ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind", ["plain", "nan", "all_nan", "constant"])
def test_plots_2d(tmp_path, plot, kind):
  z = {"plain": Z, "nan": with_nan(Z), "all_nan": np.full_like(Z, np.nan),
       "constant": np.full_like(Z, 0.7)}[kind]
  check_files(saved(plot(XS, YS, z), tmp_path / "s", formats_for(kind)), formats_for(kind))


@pytest.mark.parametrize("plot", [P.plot_contour, P.plot_contourf, P.plot_heatmap,
                                  P.plot_surface_3d], ids=lambda f: f.__name__)
def test_plots_2d_log(tmp_path, plot):
  z = with_nan(Z)
  z[0, 0] = 0.0  # non-positive: masked on a log scale
  check_files(saved(plot(XS, YS, z, log=True), tmp_path / "s", "png"), [".png"])


def test_contour_orientation_non_square_grid():
  """The innermost contour surrounds the true minimum (x=0.6, y=-0.4), not its transpose."""
  fig = common.new_figure()
  ax = fig.add_subplot()
  cs = surfaces.draw_contour(ax, XS, YS, Z, levels=[0.06, 0.1, 0.3, 0.6])
  inner = cs.get_paths()[0].vertices
  assert inner.shape[0] > 3
  cx, cy = inner.mean(axis=0)
  assert abs(cx - X_MIN) < 0.05 and abs(cy - Y_MIN) < 0.05, (cx, cy)
  assert ax.get_xlim() == (XS[0], XS[-1]) and ax.get_ylim() == (YS[0], YS[-1])


def test_heatmap_and_contourf_orientation():
  fig = common.new_figure()
  ax = fig.add_subplot()
  qm = surfaces.draw_heatmap(ax, XS, YS, Z)
  shown = np.asarray(qm.get_array()).reshape(YS.size, XS.size)  # rows = y, columns = x
  np.testing.assert_allclose(shown, Z.T)
  j, i = np.unravel_index(np.argmin(shown), shown.shape)
  assert (XS[i], YS[j]) == (X_MIN, Y_MIN) or (abs(XS[i] - X_MIN) < 0.07 and
                                              abs(YS[j] - Y_MIN) < 0.08)
  fig = common.new_figure()
  ax = fig.add_subplot()
  cs = surfaces.draw_contourf(ax, XS, YS, Z, levels=[0.05, 0.1, 0.5, 1, 5])
  lowest = cs.get_paths()[0].vertices
  assert abs(lowest[:, 0].mean() - X_MIN) < 0.05 and abs(lowest[:, 1].mean() - Y_MIN) < 0.05


def test_grid_shape_errors():
  with pytest.raises(ValueError, match=r"pass z\.T"):
    P.plot_contour(XS, YS, Z.T)
  with pytest.raises(ValueError, match="plot_1d"):
    P.plot_contour(XS, YS, Z[:, 0])
  with pytest.raises(ValueError, match="at least 2 points"):
    P.plot_heatmap(XS, YS[:1], Z[:, :1])


def test_contour_levels():
  # Reference levels arange(0.1, 10, 0.5) inside the data range.
  z = np.ma.masked_invalid(np.array([[0.0, 2.0], [np.nan, 3.0]]))
  np.testing.assert_allclose(common.contour_levels(z), [0.1, 0.6, 1.1, 1.6, 2.1, 2.6])
  # Flat low losses: fewer than 3 reference levels inside, so automatic levels.
  flat = np.ma.masked_invalid(np.array([[0.010, 0.020], [0.030, 0.040]]))
  lv = common.contour_levels(flat)
  assert lv.size >= 3 and lv.min() <= 0.02 and lv.max() >= 0.03
  # Log-spaced.
  np.testing.assert_allclose(common.contour_levels(z, 3, log=True), [2.0, np.sqrt(6.0), 3.0])
  assert common.contour_levels(np.ma.masked_invalid(np.full((2, 2), np.nan))) is None
  np.testing.assert_allclose(common.contour_levels(z, [1.0, 0.5]), [0.5, 1.0])


def test_plot_2d_all(tmp_path):
  figs = P.plot_2d_all(XS, YS, with_nan(Z), label="train loss")
  assert list(figs) == list(surfaces.PLOT_2D_ALL_NAMES)
  assert len({id(f) for f in figs.values()}) == 4
  assert figs["3dsurface"].axes[0].name == "3d"
  assert not os.listdir(tmp_path)  # plotting writes nothing; `save` does
  files = P.save(figs, tmp_path / "res_train_loss.png", dpi=DPI)  # the extension picks PNG
  names = [os.path.basename(f) for f in files]
  assert names == ["res_train_loss_2dcontour.png", "res_train_loss_2dcontourf.png",
                   "res_train_loss_2dheatmap.png", "res_train_loss_3dsurface.png"]
  check_files(files[:1], ("png",))
  for f in files:
    assert os.path.getsize(f) > 1000
  # All NaN: figures with a message.
  files = saved(P.plot_2d_all(XS, YS, np.full_like(Z, np.nan)), tmp_path / "nan", ("png", "pdf"))
  assert len(files) == 8 and all(os.path.getsize(f) > 1000 for f in files)


def test_points_are_marked(tmp_path):
  fig = P.plot_contour(XS, YS, Z, points={"min": (X_MIN, Y_MIN)})
  ax = fig.axes[0]
  stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
  assert len(stars) == 1 and (stars[0].get_xdata()[0], stars[0].get_ydata()[0]) == (X_MIN, Y_MIN)
  assert "min" in [t.get_text() for t in ax.texts]
  check_files(saved(fig, tmp_path / "c", "png"), [".png"])


# ---------------------------------------------------------------------------------------------
# VTK


def test_export_vtp(tmp_path):
  z = with_nan(Z) * 10
  (path,) = P.export_vtp(tmp_path / "surf", XS, YS, z, log=True, zmax=8.0)
  assert path.endswith("surf.vtp")
  root = ET.parse(path).getroot()
  assert root.tag == "VTKFile" and root.get("type") == "PolyData"
  piece = root.find("PolyData/Piece")
  n, m = z.shape
  assert int(piece.get("NumberOfPoints")) == n * m
  assert int(piece.get("NumberOfPolys")) == (n - 1) * (m - 1)
  pts = np.array(piece.find("Points/DataArray").text.split(), float).reshape(-1, 3)
  assert pts.shape == (n * m, 3)
  conn = np.array(piece.find("Polys/DataArray[@Name='connectivity']").text.split(), int)
  offs = np.array(piece.find("Polys/DataArray[@Name='offsets']").text.split(), int)
  assert conn.size == 4 * (n - 1) * (m - 1) and offs[-1] == conn.size and conn.max() == n * m - 1
  scal = np.array(piece.find("PointData/DataArray").text.split(), float)
  np.testing.assert_allclose(scal, pts[:, 2])
  # Point i * m + j is (xs[i], ys[j], log(min(z, zmax) + 0.1)); non-finite -> the top value.
  i, j = 3, 7
  k = i * m + j
  np.testing.assert_allclose(pts[k], [XS[i], YS[j], np.log(min(z[i, j], 8.0) + 0.1)], rtol=1e-7)
  top = np.log(8.0 + 0.1)
  np.testing.assert_allclose(pts[(n - 1) * m + 0, 2], top, rtol=1e-7)  # a NaN point
  assert np.all(np.isfinite(pts))
  # First quad: (0,0), (1,0), (1,1), (0,1).
  np.testing.assert_array_equal(conn[:4], [0, m, m + 1, 1])


def test_export_vtp_plain_values_and_errors(tmp_path):
  (path,) = P.export_vtp(tmp_path / "plain.vtp", XS, YS, Z)
  piece = ET.parse(path).getroot().find("PolyData/Piece")
  pts = np.array(piece.find("Points/DataArray").text.split(), float).reshape(-1, 3)
  np.testing.assert_allclose(pts[:, 2], Z.ravel(), rtol=1e-8)
  with pytest.raises(ValueError, match="every value is NaN"):
    P.export_vtp(tmp_path / "x", XS, YS, np.full_like(Z, np.nan))


# ---------------------------------------------------------------------------------------------
# Curves (Garipov et al. 2018)


def test_curve_levels_by_hand():
  z = np.array([[1.0, 2.0], [1.5, 1.0 + np.e**2]])
  lv = P.curve_levels(z, num=4, log_alpha=-2.0)
  # levels = min + exp(-2 + k g), g = (log(e^2) + 2) / 4 = 1; first = min, last = max.
  expected = 1.0 + np.exp(-2.0 + np.arange(5))
  expected[0], expected[-1] = 1.0, 1.0 + np.e**2
  np.testing.assert_allclose(lv, expected)
  assert np.all(np.diff(np.log(lv[1:] - 1.0)) > 0)
  assert P.curve_levels(np.full((2, 2), np.nan)) is None
  np.testing.assert_allclose(P.curve_levels(z, num=4, log_alpha=-2.0, vmax=3.0)[-1], 3.0)


def plane_data():
  gx = np.linspace(-0.2, 1.2, 11) * 3.0
  gy = np.linspace(-0.2, 1.2, 9) * 2.0
  ts = np.linspace(0, 1, 21)
  curve = np.stack([3 * ts, 4 * ts * (1 - ts)], 1)
  gxx, gyy = np.meshgrid(gx, gy, indexing="ij")
  d2 = (gxx[..., None] - curve[:, 0]) ** 2 + (gyy[..., None] - curve[:, 1]) ** 2
  return gx, gy, 0.02 + d2.min(-1), ts, curve


@pytest.mark.parametrize("kind", ["plain", "nan", "all_nan"])
def test_plot_curve_plane(tmp_path, kind):
  gx, gy, z, _, curve = plane_data()
  z = {"plain": z, "nan": with_nan(z), "all_nan": np.full_like(z, np.nan)}[kind]
  fig = P.plot_curve_plane(
    gx, gy, z, curve_xy=curve, endpoints_xy=[[0, 0], [3, 0]], bend_xy=[1.5, 2.0],
  )
  check_files(saved(fig, tmp_path / "plane", formats_for(kind)), formats_for(kind))


def test_plot_curve_plane_bad_points():
  gx, gy, z, _, curve = plane_data()
  with pytest.raises(ValueError, match=r"\(k, 2\)"):
    P.plot_curve_plane(gx, gy, z, curve_xy=curve[:, 0], endpoints_xy=[[0, 0]])


@pytest.mark.parametrize("kind", ["metrics", "arrays", "nan"])
def test_plot_curve_metrics(tmp_path, kind):
  ts = np.linspace(0, 1, 11)
  bump = np.sin(np.pi * ts)
  if kind == "arrays":
    curve, line = 0.1 + 0.05 * bump, 0.1 + 2 * bump
  else:
    curve = {"train_loss": 0.1 + 0.05 * bump, "test_accuracy": 0.93 - 0.01 * bump}
    line = {"train_loss": 0.1 + 2 * bump, "test_error": 0.07 + 0.5 * bump}
    if kind == "nan":
      line["train_loss"][4:6] = np.nan
  check_files(saved(P.plot_curve_metrics(ts, curve, line), tmp_path / "cm"))


# ---------------------------------------------------------------------------------------------
# Curvature and trajectories


@pytest.mark.parametrize("kind", ["plain", "several", "runs", "nan", "all_nan"])
def test_plot_spectrum(tmp_path, kind):
  grid = np.linspace(-2, 20, 200)
  dens = np.exp(-(grid - 1) ** 2 / 0.1) + 1e-3 * np.exp(-(grid - 15) ** 2)
  dens = {"plain": dens, "several": {"epoch 1": dens, "epoch 2": dens[::-1]},
          "runs": np.stack([dens, np.where(grid > 10, np.nan, dens)]),
          "nan": np.where(grid > 18, np.nan, dens), "all_nan": np.full_like(grid, np.nan)}[kind]
  fig = P.plot_spectrum(grid, dens, eigenvalues=[0.9, 1.1, 15.0])
  check_files(saved(fig, tmp_path / "sp", formats_for(kind)), formats_for(kind))


def test_eigen_ratio():
  r = P.eigen_ratio([-1.0, 2.0, -3.0, 1.0], [4.0, 4.0, 0.0, np.nan])
  np.testing.assert_allclose(r, [0.25, 0.5, np.nan, np.nan])


@pytest.mark.parametrize("kind", ["plain", "nan"])
def test_plot_trajectory_labels(tmp_path, kind):
  traj = np.stack([np.linspace(-0.9, 0.0, 8), np.linspace(0.3, 0.0, 8)], 1)
  z = Z if kind == "plain" else with_nan(Z)
  if kind == "nan":
    traj[2] = np.nan
  fig = P.plot_trajectory(XS, YS, z, traj, explained_variance=(0.62314, 0.1502))
  check_files(saved(fig, tmp_path / "tr"))
  ax = fig.axes[0]
  assert ax.get_xlabel() == "1st PC: 62.31 %"
  assert ax.get_ylabel() == "2nd PC: 15.02 %"
  path = [ln for ln in ax.get_lines() if ln.get_label() == "trajectory"][0]
  np.testing.assert_array_equal(path.get_xdata(), traj[np.isfinite(traj).all(1), 0])
  with pytest.raises(ValueError, match="ratios in"):
    P.plot_trajectory(XS, YS, Z, traj, explained_variance=(62.3, 15.0))


def test_plot_trajectory_all_nan(tmp_path):
  traj = np.full((5, 2), np.nan)
  z = np.full_like(Z, np.nan)
  check_files(saved(P.plot_trajectory(XS, YS, z, traj), tmp_path / "tr", "png"), ("png",))


# ---------------------------------------------------------------------------------------------
# Alignment and ensembles


def _barrier_legend(alphas, runs):
  """The legend texts plot_barriers draws."""
  legend = P.plot_barriers(alphas, runs).axes[0].get_legend()
  return [t.get_text() for t in legend.get_texts()] if legend else []


def test_barrier_legend_is_paths_barrier():
  """The legend shows landscape_jax.core.paths.barrier (one implementation): endpoints at alpha =
  0 and
  1, maximum over [0, 1] only, and "n/a" for a NaN inside [0, 1] (the former figure-only formula
  skipped it, showing the barrier of the remaining points) or alphas without 0 or 1."""
  from landscape_jax.core import paths

  al = np.array([-0.5, 0.0, 0.5, 1.0, 1.5])
  runs = {"a": [9.0, 1.0, 2.0, 3.0, 9.0], "b": [np.nan, 1.0, 5.0, 1.0, np.nan],
          "nan inside": [0.0, 1.0, np.nan, 1.0, 0.0]}
  assert paths.barrier(runs["a"], al) == pytest.approx(3.0 - 2.0)
  assert paths.barrier(runs["b"], al) == pytest.approx(4.0)
  assert np.isnan(paths.barrier(runs["nan inside"], al))
  assert _barrier_legend(al, runs) == [
    "a (barrier 1)", "b (barrier 4)", "nan inside (barrier n/a)"]
  no_end = np.array([0.0, 0.25, 0.5])
  assert _barrier_legend(no_end, {"c": [1.0, 2.0, 1.0]}) == ["c (barrier n/a)"]
  # repeats: the barrier of the mean curve (NaN members are masked out of the mean)
  rep = np.array([[1.0, 3.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, np.nan, 1.0]])
  al2 = np.linspace(0.0, 1.0, 5)
  assert _barrier_legend(al2, {"r": rep}) == [
    f"r (barrier {paths.barrier(np.array([1.0, 2.0, 1.0, 1.0, 1.0]), al2):.3g})"]


@pytest.mark.parametrize("kind", ["plain", "repeats", "nan", "all_nan"])
def test_plot_barriers(tmp_path, kind):
  al = np.linspace(0, 1, 11)
  bump = np.sin(np.pi * al)
  runs = {"naive": 0.2 + bump, "weight matching": 0.2 + 0.1 * bump}
  if kind == "repeats":
    runs["weight matching"] = np.stack([0.2 + 0.1 * bump, 0.25 + 0.05 * bump])
  elif kind == "nan":
    runs["naive"][3] = np.nan
  elif kind == "all_nan":
    runs = {"naive": np.full_like(al, np.nan)}
  check_files(saved(P.plot_barriers(al, runs), tmp_path / "b", formats_for(kind)),
              formats_for(kind))


@pytest.mark.parametrize("values", [[0.91, 0.915, 0.93], [0.5, np.nan, 0.9], [np.nan] * 3,
                                    [0.0, 0.0, 0.0]])
def test_plot_bars(tmp_path, values):
  fig = P.plot_bars(["member 1", "member 2", "FGE ensemble"], values, ylabel="test accuracy",
                    highlight=["FGE ensemble"], style="bar")
  bars = fig.axes[0].patches
  assert fig.axes[0].get_ylim()[0] <= 0  # bars start at zero
  assert [b.get_visible() for b in bars] == list(np.isfinite(values))
  np.testing.assert_allclose([b.get_height() for b in bars if b.get_visible()],
                             np.asarray(values)[np.isfinite(values)])
  check_files(saved(fig, tmp_path / "bars"))


def test_close_values_are_points_with_error_bars_not_cut_bars():
  """Bars from zero hide differences of 1 %; cutting the axis would exaggerate them: close
  values become points with error bars (issue: an FGE bar chart starting at 0.028)."""
  fig = P.plot_bars(["m1", "m2", "ensemble"], [0.030, 0.031, 0.029], errors=[1e-3] * 3,
                    ylabel="test loss")
  ax = fig.axes[0]
  assert not ax.patches  # no bars
  ys = [float(line.get_ydata()[0]) for line in ax.lines if line.get_marker() == "o"]
  np.testing.assert_allclose(ys, [0.030, 0.031, 0.029])
  lo, hi = ax.get_ylim()
  assert lo < 0.028 and hi > 0.032  # the error bars fit
  far = P.plot_bars(["a", "b"], [0.2, 0.9], ylabel="accuracy")  # far apart: bars from zero
  assert len(far.axes[0].patches) == 2 and far.axes[0].get_ylim()[0] == 0
  with pytest.raises(ValueError, match="style"):
    P.plot_bars(["a"], [1.0], ylabel="x", style="pie")


def test_surface_3d_log_heights_by_default_and_few_ticks():
  z = 0.01 + 100 * (XS[:, None] ** 2 + YS[None, :] ** 2)
  ax = P.plot_surface_3d(XS, YS, z, label="train loss").axes[0]
  assert ax.get_zlabel() == "train loss (log scale)"
  lo, hi = ax.get_zlim()
  assert hi < np.log10(z.max()) + 1 and lo > np.log10(z.min()) - 1  # log10 heights
  assert len(ax.get_zticks()) <= 6 and len(ax.get_xticks()) <= 6
  narrow = P.plot_surface_3d(XS, YS, 1 + 0 * z + XS[:, None] / 10).axes[0]
  assert narrow.get_zlabel() == "loss"  # within a factor of 10: linear


def test_curve_plane_has_equal_scales_and_the_texts_names():
  gx, gy = np.linspace(-5, 35, 9), np.linspace(-1, 3, 5)  # u spans 10x v
  z = 1 + gx[:, None] ** 2 / 100 + gy[None, :] ** 2
  fig = P.plot_curve_plane(gx, gy, z, curve_xy=[[0, 0], [15, 2], [30, 0]],
                           endpoints_xy=[[0, 0], [30, 0]], bend_xy=[15, 2],
                           names=("A", "theta", "B"))
  ax = fig.axes[0]
  assert ax.get_aspect() == 1.0
  assert ax.get_xlabel() == "u: along B $-$ A"
  assert ax.get_ylabel() == "v: towards theta"
  assert "endpoints A, B" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_plot_bars_errors():
  with pytest.raises(ValueError, match="one value per name"):
    P.plot_bars(["a", "b"], [1.0], ylabel="x")
  with pytest.raises(ValueError, match="not among the bar names"):
    P.plot_bars(["a"], [1.0], ylabel="x", highlight=["c"])


def test_plot_budget_draws_the_given_points(tmp_path):
  series = {"independent": ([20, 40, 60], [6.1, 5.2, 4.9]), "FGE": ([24, 28], [5.5, np.nan]),
            "SWA": ([28], [5.0]), "broken": ([10], [np.nan])}
  ax = matplotlib.figure.Figure().add_subplot()
  P.draw_budget(ax, series)
  lines = {ln.get_label(): ln for ln in ax.get_lines()}
  assert sorted(lines) == ["FGE", "SWA", "independent"]  # an all-NaN series is left out
  np.testing.assert_array_equal(lines["independent"].get_xdata(), [20, 40, 60])
  np.testing.assert_array_equal(lines["independent"].get_ydata(), [6.1, 5.2, 4.9])
  assert lines["SWA"].get_marker() == "*"
  assert [t.get_text() for t in ax.texts] == ["1", "2", "3", "1"]  # members; the NaN unlabelled
  check_files(saved(P.plot_budget(series), tmp_path / "budget"))
  with pytest.raises(ValueError, match="FGE: 2 epochs but 1 values"):
    P.plot_budget({"FGE": ([1, 2], [3.0])})
  with pytest.raises(ValueError, match="nothing to plot"):
    P.plot_budget({})


def test_contour_labels_every_kth_level_in_a_readable_colour():
  """Dense levels (a basin's steep rim) get at most MAX_LABELLED_LEVELS labelled levels, every
  k-th one, in dark grey (pale level colours were unreadable and labels printed over each other)."""
  fig = common.new_figure()
  ax = fig.add_subplot()
  levels = np.linspace(0.05, 1.5, 30)
  cs = surfaces.draw_contour(ax, XS, YS, Z, levels=levels)
  labelled = sorted({float(t.get_text()) for t in ax.texts})
  k = -(-len(cs.levels) // surfaces.MAX_LABELLED_LEVELS)
  allowed = {float(f"{v:.3g}") for v in cs.levels[::k]}
  assert 2 <= len(labelled) <= surfaces.MAX_LABELLED_LEVELS and set(labelled) <= allowed
  import matplotlib.colors

  assert {matplotlib.colors.to_hex(t.get_color()) for t in ax.texts} == {
    matplotlib.colors.to_hex("0.15")}


# ---------------------------------------------------------------------------------------------
# Axes, figures and saving


def _plane_plot(ax):
  gx, gy, z, _, curve = plane_data()
  return P.plot_curve_plane(gx, gy, z, curve_xy=curve, endpoints_xy=[[0, 0], [3, 0]], ax=ax)


def _curve_metrics():
  ts = np.linspace(0, 1, 11)
  bump = np.sin(np.pi * ts)
  curve = {"train_loss": 0.1 + 0.05 * bump, "test_accuracy": 0.93 - 0.01 * bump}
  line = {"train_loss": 0.1 + 2 * bump, "test_accuracy": 0.93 - 0.5 * bump}
  return ts, curve, line


_A = np.linspace(-1, 1, 11)
_GRID = np.linspace(-2, 20, 50)
_TRAJ = np.stack([np.linspace(-0.9, 0.0, 6), np.linspace(0.3, 0.0, 6)], 1)
# Every plot function, called with ax=<given>.
PLOT_CALLS = {
  "plot_1d": lambda ax: P.plot_1d(_A, metrics_1d(_A), ax=ax),
  "plot_interpolation": lambda ax: P.plot_interpolation(_A, metrics_1d(_A), ax=ax),
  "plot_contour": lambda ax: P.plot_contour(XS, YS, Z, ax=ax, points={"min": (X_MIN, Y_MIN)}),
  "plot_contourf": lambda ax: P.plot_contourf(XS, YS, Z, ax=ax),
  "plot_heatmap": lambda ax: P.plot_heatmap(XS, YS, Z, ax=ax),
  "plot_surface_3d": lambda ax: P.plot_surface_3d(XS, YS, Z, ax=ax),
  "plot_eigen_ratio": lambda ax: P.plot_eigen_ratio(XS, YS, Z / Z.max(), ax=ax),
  "plot_curve_plane": _plane_plot,
  "plot_curve_metrics": lambda ax: P.plot_curve_metrics(*_curve_metrics(), ax=ax),
  "plot_spectrum": lambda ax: P.plot_spectrum(_GRID, np.exp(-(_GRID - 1) ** 2), ax=ax),
  "plot_trajectory": lambda ax: P.plot_trajectory(XS, YS, Z, _TRAJ, ax=ax),
  "plot_barriers": lambda ax: P.plot_barriers(_A, {"naive": 1 - _A**2}, ax=ax),
  "plot_bars": lambda ax: P.plot_bars(["a", "b"], [0.5, 0.7], ylabel="accuracy", ax=ax),
  "plot_budget": lambda ax: P.plot_budget({"FGE": ([1, 2], [5.0, 4.0])}, ax=ax),
}


def n_artists(ax):
  return len(ax.lines) + len(ax.collections) + len(ax.patches) + len(ax.texts) + len(ax.images)


def test_every_plot_function_is_covered():
  names = {n for n in P.__all__ if n.startswith("plot_")} - {"plot_2d_all"}
  assert names == set(PLOT_CALLS)


@pytest.mark.parametrize("name", sorted(PLOT_CALLS))
def test_plot_draws_into_the_given_axes(tmp_path, name):
  """With ax=, the plot draws on that Axes (colour bars and twin axes beside it), leaves the other
  Axes of the figure alone and returns ax.figure, which `save` writes."""
  fig = matplotlib.figure.Figure(figsize=(10, 4), layout="constrained")
  other = fig.add_subplot(1, 2, 1)
  ax = fig.add_subplot(1, 2, 2, projection="3d" if name == "plot_surface_3d" else None)
  out = PLOT_CALLS[name](ax)
  assert out is fig and out is ax.figure
  assert n_artists(ax) > 0
  assert n_artists(other) == 0 and other.get_title() == "" and other.get_legend() is None
  assert fig.legends == []  # a figure-wide legend only on a figure the plot made itself
  check_files(saved(out, tmp_path / name, "png"), ("png",))


@pytest.mark.parametrize("name", sorted(PLOT_CALLS))
def test_plot_without_axes_returns_a_new_figure_and_writes_nothing(tmp_path, monkeypatch, name):
  monkeypatch.chdir(tmp_path)
  fig, again = PLOT_CALLS[name](None), PLOT_CALLS[name](None)
  assert isinstance(fig, matplotlib.figure.Figure) and fig is not again
  assert any(n_artists(a) for a in fig.axes)
  assert os.listdir(tmp_path) == []


def test_axes_in_a_subfigure_returns_the_root_figure(tmp_path):
  fig = matplotlib.figure.Figure(layout="constrained")
  ax = fig.subfigures(1, 2)[1].add_subplot()
  assert P.plot_heatmap(XS, YS, Z, ax=ax) is fig
  check_files(saved(fig, tmp_path / "sub", "png"), ("png",))


def test_bad_axes_are_refused():
  flat = matplotlib.figure.Figure().add_subplot()
  with pytest.raises(ValueError, match=r"3-D Axes.*projection='3d'"):
    P.plot_surface_3d(XS, YS, Z, ax=flat)
  with pytest.raises(TypeError, match="`ax` must be a matplotlib Axes"):
    P.plot_contour(XS, YS, Z, ax=flat.figure)
  with pytest.raises(ValueError, match="pair"):
    P.plot_curve_metrics(*_curve_metrics(), ax=[flat])


def test_plot_curve_metrics_into_two_axes_or_one():
  ts, curve, line = _curve_metrics()
  fig = matplotlib.figure.Figure()
  a_loss, a_err = fig.subplots(1, 2)
  assert P.plot_curve_metrics(ts, curve, line, ax=(a_loss, a_err)) is fig
  assert [ln.get_label() for ln in a_loss.lines] == ["curve: train loss",
                                                     "straight line: train loss"]
  assert [ln.get_label() for ln in a_err.lines] == ["curve: test error",
                                                    "straight line: test error"]
  assert (a_loss.get_ylabel(), a_err.get_ylabel()) == ("loss", "error (%)")
  np.testing.assert_allclose(a_err.lines[0].get_ydata(), 100 * (1 - curve["test_accuracy"]))
  # One Axes: the errors go on a twin right axis; one legend lists all four lines.
  fig = matplotlib.figure.Figure()
  ax = fig.add_subplot()
  P.plot_curve_metrics(ts, curve, line, ax=ax, title="t")
  (twin,) = [a for a in fig.axes if a is not ax]
  assert (ax.get_ylabel(), twin.get_ylabel(), ax.get_title()) == ("loss", "error (%)", "t")
  np.testing.assert_allclose(twin.lines[1].get_ydata(), 100 * (1 - line["test_accuracy"]))
  assert len(twin.get_legend().get_texts()) == 4


def test_save_writes_figures_and_refuses_anything_else(tmp_path):
  fig = P.plot_1d(XS, XS**2)
  files = P.save({"a": fig, "b": P.plot_1d(XS, XS)}, tmp_path / "two", "png", dpi=DPI)
  assert files == [str(tmp_path / "two_a.png"), str(tmp_path / "two_b.png")]
  check_files(files[1:], ("png",))
  with pytest.raises(TypeError, match="matplotlib Figure"):
    P.save([str(tmp_path / "a.png")], tmp_path / "x")  # what the plot functions used to return
  with pytest.raises(TypeError, match=r"fig\['b'\]"):
    P.save({"a": fig, "b": fig.axes[0]}, tmp_path / "y")
  assert not (tmp_path / "y_a.png").exists()  # nothing written when one entry is bad
  with pytest.raises(ValueError, match="empty"):
    P.save({}, tmp_path / "z")


def test_new_figures_display_inline_in_jupyter():
  """A new figure carries its own PNG repr, which IPython's display formatter uses (a bare
  matplotlib Figure shows only as text until `%matplotlib inline` registers one)."""
  fig = P.plot_contour(XS, YS, Z)
  assert fig._repr_png_().startswith(MAGIC[".png"])
  formatters = pytest.importorskip("IPython.core.formatters")
  assert formatters.PNGFormatter()(fig).startswith(MAGIC[".png"])
  assert formatters.PNGFormatter()(matplotlib.figure.Figure()) is None
