"""Interactive figures (landscape_jax.plotting.interactive) and the report that embeds them,
checked by hand-computed values and in a real browser (headless Chromium, tests/browser.py)."""

import base64
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.plotting import interactive as ia
from landscape_jax.plotting import report
from tests import browser

XS = np.linspace(-1, 1, 5)
YS = np.linspace(-2, 2, 7)  # non-square: catches a transposed grid
Z = 0.1 + 3 * XS[:, None] ** 2 + YS[None, :] ** 2
Z[0, 0] = np.nan


def _array(x):
  """A trace array as numpy, whether plotly stored it as a list or (plotly >= 6) typed-array
  data {"dtype", "bdata" (base64), "shape"}."""
  if isinstance(x, dict) and "bdata" in x:
    a = np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"])
    return a.reshape([int(n) for n in str(x.get("shape", a.size)).split(",")]).astype(float)
  return np.asarray(x, dtype=float)


def all_figures():
  t = np.linspace(0, 1, 11)
  return {
    "surface": ia.interactive_surface(XS, YS, Z, title="surface"),
    "contour": ia.interactive_contour(XS, YS, Z, points={"A": (0, 0)}),
    "lines": ia.interactive_lines(t, {"train_loss": t + .1, "test_accuracy": 1 - t / 3},
                                  marks={"A": 0, "B": 1}),
    "plane": ia.interactive_curve_plane(XS * 10, YS, Z, curve_xy=np.stack([5 + 5 * t, t], 1),
                                        endpoints_xy=[[5, 0], [10, 0]], bend_xy=[7, 1]),
    "metrics": ia.interactive_curve_metrics(t, {"train_loss": t + .1, "test_accuracy": 0 * t + .9},
                                            {"train_loss": 2 * t + .1}),
    "spectrum": ia.interactive_spectrum(np.linspace(0, 5, 20), np.exp(-np.linspace(0, 5, 20)),
                                        eigenvalues=[0.5, 4.0]),
    "trajectory": ia.interactive_trajectory(XS, YS, Z, np.stack([t - 1, t], 1),
                                            explained_variance=(0.7, 0.2)),
    "bars": ia.interactive_bars(["m1", "m2", "ensemble"], [0.03, 0.031, 0.029],
                                errors=[0.001, 0.001, 0.001], ylabel="test loss",
                                highlight=["ensemble"]),
  }


def test_z_views_by_hand():
  z = np.array([[1.0, 10.0], [100.0, np.inf]])
  views = ia.z_views(z, label="loss")
  assert [v[0] for v in views] == ["log10", "linear"]
  np.testing.assert_allclose(views[0][1], [[0, 1], [2, np.nan]])
  assert views[0][2] == "loss (log scale)"
  np.testing.assert_array_equal(views[1][1], [[1, 10], [100, np.nan]])
  # A value <= 0: no log view; clipped at the quantile (or zmax) first.
  z2 = np.array([[-1.0, 0.0], [1.0, 9.0]])
  (name, clipped, title), (lin, _, _) = ia.z_views(z2, zmax=2.0)
  assert (name, lin, title) == ("clipped", "linear", "loss, clipped at 2")
  np.testing.assert_array_equal(clipped, [[-1, 0], [1, 2]])
  assert [v[0] for v in ia.z_views(Z, zmax=5.0)] == ["log10", "clipped", "linear"]


def test_surface_hover_values_and_orientation():
  fig = ia.interactive_surface(XS, YS, Z, label="train loss")
  log_view, linear = fig.data
  # plotly's z[row][col] is at (x[col], y[row]): the transpose of z[i, j] at (xs[i], ys[j]).
  np.testing.assert_allclose(np.asarray(linear.z, float), Z.T)
  np.testing.assert_allclose(np.asarray(log_view.z, float), np.log10(Z.T))
  for trace in fig.data:  # hover shows the value itself in every view
    np.testing.assert_allclose(np.asarray(trace.customdata, float), Z.T)
    assert "train loss = %{customdata" in trace.hovertemplate
  assert (log_view.visible, linear.visible) == (True, False)
  (menu,) = fig.layout.updatemenus
  assert [b.label for b in menu.buttons] == ["log10 z", "linear z"]
  assert menu.buttons[1].args[0]["visible"] == [False, True]
  assert menu.buttons[1].args[1]["scene.zaxis.title.text"] == "train loss"
  # The log view is labelled with the values at whole powers of ten; the linear one by plotly.
  assert list(log_view.colorbar.ticktext) == ["0.1", "1", "10"]
  assert list(fig.layout.scene.zaxis.ticktext) == ["0.1", "1", "10"]
  assert menu.buttons[1].args[1]["scene.zaxis.tickmode"] == "auto"


def test_overlays_stay_visible_when_switching_views():
  fig = ia.interactive_curve_plane(XS * 10, YS, Z, curve_xy=[[0, 0], [5, 1], [10, 0]],
                                   endpoints_xy=[[0, 0], [10, 0]], bend_xy=[5, 1],
                                   names=("A", "theta", "B"))
  assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.scaleratio == 1
  assert fig.layout.xaxis.title.text == "u: along B - A"
  assert fig.layout.yaxis.title.text == "v: towards theta"
  n_views = len(ia.z_views(Z))
  for button in fig.layout.updatemenus[0].buttons:
    visible = button.args[0]["visible"]
    assert len(visible) == len(fig.data)
    assert all(visible[n_views:]) and sum(visible[:n_views]) == 1
  points = fig.data[-1]
  assert list(points.text) == ["A", "B", "theta"]


def test_curve_metrics_errors_in_percent():
  t = np.linspace(0, 1, 3)
  fig = ia.interactive_curve_metrics(t, {"train_loss": t, "test_accuracy": [0.9, 0.8, 0.9]},
                                     {"test_error": [0.1, 0.3, 0.1]})
  by_name = {tr.name: tr for tr in fig.data}
  np.testing.assert_allclose(by_name["curve: test error"].y, [10, 20, 10])
  np.testing.assert_allclose(by_name["straight line: test error"].y, [10, 30, 10])
  assert by_name["curve: test error"].xaxis == "x2"


def test_save_and_load_round_trip(tmp_path):
  fig = all_figures()["contour"]
  path = ia.save_interactive(fig, tmp_path / "c")
  assert path.endswith("c.plotly.json")
  back = ia.load_interactive(path)
  np.testing.assert_allclose(_array(back.data[1].z), Z.T)
  with pytest.raises(TypeError, match="plotly Figure"):
    ia.save_interactive({"data": []}, tmp_path / "d")


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="curve_xy"):
    ia.interactive_curve_plane(XS, YS, Z, curve_xy=[1, 2, 3], endpoints_xy=[[0, 0], [1, 0]])
  with pytest.raises(ValueError, match="values"):
    ia.interactive_lines(XS, {})
  with pytest.raises(ValueError, match="one value per name"):
    ia.interactive_bars(["a"], [1, 2], ylabel="x")


def test_plotly_is_imported_only_on_use():
  code = ("import sys, landscape_jax as lj\n"
          "lj.plotting.plot_contour\n"
          "print('plotly' in sys.modules)\n"
          "lj.plotting.interactive_surface\n"
          "print('plotly' in sys.modules)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
  assert out.stdout.split() == ["False", "True"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
  """A report with every interactive figure kind, one static figure and captions."""
  d = tmp_path_factory.mktemp("interactive_report")
  figs = all_figures()
  static = lj.plotting.save(lj.plotting.plot_contour(XS, YS, Z), d / "contour", formats="png")
  saved = ia.save_interactive(figs.pop("contour"), d / "contour")
  sections = [{"title": "Everything",
               "figures": [(f, f"The {name} figure.") for name, f in figs.items()]},
              {"title": "From files", "text": "A saved figure and its static twin.",
               "figures": [{"path": os.path.basename(saved), "caption": "Saved contour."},
                           {"path": os.path.basename(static[0]),
                            "caption": "The same contour, static."}]}]
  path = lj.write_report(d / "report.html", title="interactive", sections=sections)
  return d, path


def test_report_is_self_contained(page):
  _, path = page
  text = open(path, encoding="utf-8").read()
  assert text.count("plotly.js v") == 1 or text.count("* plotly.js") == 1
  assert len(re.findall(r"<script[^>]*\bsrc=", text)) == 0  # nothing loaded from anywhere
  assert "cdn.plot.ly" not in text.replace("https://cdn.plot.ly/", "")  # never as a source
  assert text.count('class="plotly-graph-div lj-plot"') == 8
  assert "<figcaption>The surface figure.</figcaption>" in text
  # The static twin is folded below the interactive figure, captioned with a sentence + links.
  details = text.split("<details>")[1].split("</details>")[0]
  assert "The same contour, static." in details and 'href="contour.png">PNG</a>' in details


def test_report_without_interactive_figures_has_no_script(tmp_path):
  lj.plotting.save(lj.plotting.plot_contour(XS, YS, Z), tmp_path / "c", formats="png")
  path = report.write_report(tmp_path / "r.html", title="t",
                             sections=[{"title": "s", "figures": [("c.png", "A contour.")]}])
  text = open(path, encoding="utf-8").read()
  assert "<script" not in text and "<details>" not in text and "A contour. (" in text
  with pytest.raises(FileNotFoundError, match="save_interactive"):
    report.write_report(tmp_path / "r.html", title="t",
                        sections=[{"title": "s", "figures": ["missing.plotly.json"]}])
  with pytest.raises(ValueError, match="caption"):
    report.write_report(tmp_path / "r.html", title="t",
                        sections=[{"title": "s", "figures": [{"file": "c.png"}]}])


def test_report_renders_in_chromium(page, tmp_path):
  d, path = page
  out = browser.render(path, tmp_path)
  assert out["errors"] == [], out["errors"]
  assert "Uncaught" not in out["stderr"], out["stderr"][-2000:]
  assert out["plotly"] == "object"
  plots = {p["id"]: p for p in out["plots"]}
  assert len(plots) == 8, plots
  for p in plots.values():
    assert p["laidOut"] and p["svg"] and p["traces"] >= 1, p
    assert "WebGL is not supported" not in p["text"], p
  scenes = [p for p in plots.values() if p["scene"]]
  assert len(scenes) == 1 and scenes[0]["gl"] >= 1, scenes  # the 3-D surface drew on WebGL
