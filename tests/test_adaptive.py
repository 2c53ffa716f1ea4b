"""Adaptive surfaces and paths: analytic functions recovered to the tolerance on dense reference
grids with far fewer points, determinism, resume after a kill, noise handling, and one small run
through the compiled point evaluator checked against `surface_grid` / `linear_path`."""

import jax
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.core import adaptive

BOX = (-1.5, 1.5)
XS = np.linspace(*BOX, 201)
DENSE = XS.size ** 2


class Killed(Exception):
  """Stands for a kill (the process dies mid-run)."""


def _grid(xs, ys):
  return np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)


def bowl(c):
  x, y = c[:, 0], c[:, 1]
  return 2 * x ** 2 + 0.5 * y ** 2 + x * y


def valley(c):
  """A narrow curved valley (depth 1, width ~0.2 around y = x^2) on a flat plateau."""
  x, y = c[:, 0], c[:, 1]
  r = (y - x ** 2) ** 2
  return r / (0.04 + r) + 0.05 * x ** 2


def saddle(c):
  x, y = c[:, 0], c[:, 1]
  return x ** 2 - y ** 2 + 0.3 * np.sin(3 * x) * np.cos(2 * y)


def _evaluate(fn, calls=None):
  def evaluate(coords, r):
    if calls is not None:
      calls.append((r, coords.shape[0]))
    v = fn(coords)
    return {"loss": v, "accuracy": 1.0 / (1.0 + v ** 2)}
  return evaluate


@pytest.mark.parametrize("fn, tol, max_frac, max_level", [(bowl, 0.01, 0.03, 4),
                                                          (valley, 0.01, 0.1, 5),
                                                          (saddle, 0.01, 0.05, 5)])
def test_surfaces_recovered_to_tolerance_with_few_points(fn, tol, max_frac, max_level):
  res = adaptive.refine_surface(_evaluate(fn), BOX, BOX,
                                refinement=lj.Refinement(tol=tol, initial=9, max_level=max_level))
  assert res.converged
  truth = fn(_grid(XS, XS)).reshape(XS.size, XS.size)
  grid = res.to_grid(XS, XS)
  lin = res.to_grid(XS, XS, method="linear")
  assert grid["loss"].shape == (XS.size, XS.size)
  assert res.num_points <= max_frac * DENSE, res.num_points
  # the controlled (multilinear) interpolant: within the tolerance up to the estimate's slack
  assert np.max(np.abs(lin["loss"] - truth)) <= 1.5 * tol
  # the default cubic interpolant: within the tolerance
  assert np.max(np.abs(grid["loss"] - truth)) <= tol
  # every sample holds the exact value, and lies on the dyadic lattice
  np.testing.assert_array_equal(res.values["loss"], fn(res.coords))
  lattice_x = res.lattice_axes()[0]
  np.testing.assert_array_equal(res.coords[:, 0], lattice_x[res.lattice[:, 0]])
  # the second metric is interpolated too
  acc = 1.0 / (1.0 + truth ** 2)
  assert np.max(np.abs(grid["accuracy"] - acc)) < 0.05


def test_points_concentrate_in_the_valley():
  res = adaptive.refine_surface(_evaluate(valley), BOX, BOX,
                                refinement=lj.Refinement(tol=0.01, initial=9, max_level=5))
  assert res.converged
  x, y = res.coords[:, 0], res.coords[:, 1]
  near = np.abs(y - x ** 2) < 0.3
  area = np.mean(np.abs(_grid(XS, XS)[:, 1] - _grid(XS, XS)[:, 0] ** 2) < 0.3)
  # the valley band holds a few times more samples than its share of the area
  assert near.mean() > 2.5 * area, (near.mean(), area)
  # the error estimate there is what refinement drove below tol
  assert np.nanmax(res.cell_error) <= 0.01
  # against a uniform grid with the finest spacing the run reached (the fair dense grid)
  finest = int(res.cells[:, 0].max())
  uniform = (8 * 2 ** finest + 1) ** 2
  assert res.num_points < 0.1 * uniform, (res.num_points, uniform)


def test_path_recovered_with_few_points():
  def f(c):
    t = c[:, 0]
    return np.sin(3 * t) + 2 * np.exp(-((t - 0.5) / 0.05) ** 2)

  ts = np.linspace(-0.5, 1.5, 4001)
  res = adaptive.refine_path(lambda c, r: {"loss": f(c)}, (-0.5, 1.5),
                             refinement=lj.Refinement(tol=0.01, initial=17, max_level=6))
  assert res.converged and res.dim == 1
  truth = f(ts[:, None])
  assert np.max(np.abs(res.to_grid(ts)["loss"] - truth)) <= 0.01
  assert np.max(np.abs(res.to_grid(ts, method="linear")["loss"] - truth)) <= 0.015
  uniform = 16 * 2 ** 6 + 1
  assert res.num_points <= 0.2 * uniform, res.num_points
  # the bump (1 % of the range ... 5 % with its shoulders) holds a third of the points or more
  assert np.mean(np.abs(res.coords[:, 0] - 0.5) < 0.15) > 0.3


def test_deterministic():
  a = adaptive.refine_surface(_evaluate(saddle), BOX, BOX,
                              refinement=lj.Refinement(tol=0.005, initial=9, max_level=4,
                                                       max_points=600, levels=[0.0]))
  b = adaptive.refine_surface(_evaluate(saddle), BOX, BOX,
                              refinement=lj.Refinement(tol=0.005, initial=9, max_level=4,
                                                       max_points=600, levels=[0.0]))
  for name in ("lattice", "coords", "rounds", "cells", "cell_error"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  for k in a.values:
    np.testing.assert_array_equal(a.values[k], b.values[k])
  assert a.history == b.history


def test_killed_run_resumes_to_the_identical_result():
  store = {}  # round -> values: what the point evaluator's per-round stores keep

  def stored(fn, calls, fail_at=None):
    def evaluate(coords, r):
      if r in store:
        return store[r]
      if fail_at is not None and r >= fail_at:
        raise Killed("killed")
      calls.append(r)
      store[r] = _evaluate(fn)(coords, r)
      return store[r]
    return evaluate

  kw = dict(refinement=lj.Refinement(tol=0.005, initial=9, max_level=4))
  first_calls, second_calls = [], []
  with pytest.raises(Killed):
    adaptive.refine_surface(stored(saddle, first_calls, fail_at=3), BOX, BOX, **kw)
  assert first_calls == [0, 1, 2]
  resumed = adaptive.refine_surface(stored(saddle, second_calls), BOX, BOX, **kw)
  assert second_calls and second_calls[0] == 3  # nothing already stored is recomputed
  fresh = adaptive.refine_surface(_evaluate(saddle), BOX, BOX, **kw)
  np.testing.assert_array_equal(resumed.coords, fresh.coords)
  np.testing.assert_array_equal(resumed.values["loss"], fresh.values["loss"])
  np.testing.assert_array_equal(resumed.cells, fresh.cells)


def test_budget_is_respected():
  calls = []
  res = adaptive.refine_surface(_evaluate(valley, calls), BOX, BOX,
                                refinement=lj.Refinement(tol=1e-4, initial=9, max_level=6,
                                                         max_points=400))
  assert res.num_points <= 400 and not res.converged
  assert sum(n for _, n in calls) == res.num_points
  with pytest.raises(ValueError, match="max_points"):
    adaptive.refine_surface(_evaluate(valley), BOX, BOX,
                            refinement=lj.Refinement(tol=0.01, initial=9, max_points=50))


def test_contour_levels_refine_crossing_cells():
  kw = dict(tol=0.05, initial=9, max_level=5)
  plain = adaptive.refine_surface(_evaluate(saddle), BOX, BOX, refinement=lj.Refinement(**kw))
  lev = adaptive.refine_surface(_evaluate(saddle), BOX, BOX,
                                refinement=lj.Refinement(levels=[0.0], level_tol=0.002, **kw))
  assert lev.num_points > plain.num_points
  truth = saddle(_grid(XS, XS)).reshape(XS.size, XS.size)
  near = np.abs(truth) < 0.002
  err_plain = np.abs(plain.to_grid(XS, XS, method="linear")["loss"] - truth)[near].max()
  err_lev = np.abs(lev.to_grid(XS, XS, method="linear")["loss"] - truth)[near].max()
  assert err_lev <= 0.004 < err_plain


def test_noise_is_not_chased():
  """With noisy values and their standard error, refinement stops at tol + k se."""
  se = 0.01

  def noisy(coords, r):
    rng = np.random.default_rng(r)
    v = 0.2 * bowl(coords)
    return {"loss": v + se * rng.standard_normal(v.size), "loss_sem": np.full(v.size, se)}

  chase = adaptive.refine_surface(noisy, BOX, BOX,
                                  refinement=lj.Refinement(tol=0.002, initial=9, max_level=5,
                                                           noise_k=0.0, max_points=3000))
  calm = adaptive.refine_surface(noisy, BOX, BOX,
                                 refinement=lj.Refinement(tol=0.002, initial=9, max_level=5))
  assert calm.converged
  assert calm.num_points < 0.5 * chase.num_points
  truth = 0.2 * bowl(_grid(XS, XS)).reshape(XS.size, XS.size)
  assert np.max(np.abs(calm.to_grid(XS, XS, method="linear")["loss"] - truth)) <= 0.002 + 5 * se


def test_non_finite_and_max_value_regions_are_not_refined():
  def f(c):
    v = bowl(c)
    return np.where(c[:, 0] > 1.0, np.nan, v)

  res = adaptive.refine_surface(lambda c, r: {"loss": f(c)}, BOX, BOX,
                                refinement=lj.Refinement(tol=0.005, initial=9, max_level=4))
  assert res.converged
  # next to the diverged region (x > 1) only the initial grid's points, nothing is chased
  assert np.all(res.rounds[res.coords[:, 0] > 0.75] == 0)
  assert np.any(res.rounds[res.coords[:, 0] < 0.75] > 0)
  assert np.all(np.isnan(res.to_grid(np.array([1.4]), np.array([0.0]))["loss"]))
  capped = adaptive.refine_surface(_evaluate(bowl), BOX, BOX,
                                   refinement=lj.Refinement(tol=0.005, initial=9, max_level=4,
                                                            max_value=1.0))
  full = adaptive.refine_surface(_evaluate(bowl), BOX, BOX,
                                 refinement=lj.Refinement(tol=0.005, initial=9, max_level=4))
  assert capped.num_points < full.num_points
  truth = bowl(_grid(XS, XS)).reshape(XS.size, XS.size)
  low = truth < 0.8
  assert np.max(np.abs(capped.to_grid(XS, XS)["loss"] - truth)[low]) <= 0.005


def test_to_grid_conventions_and_error_grid():
  res = adaptive.refine_surface(_evaluate(saddle), (-1.0, 2.0), (0.0, 1.0),
                                refinement=lj.Refinement(tol=0.02, initial=5, max_level=3))
  xs, ys = np.linspace(-1, 2, 7), np.linspace(0, 1, 4)
  g = res.to_grid(xs, ys)
  assert g["loss"].shape == (7, 4)
  np.testing.assert_allclose(g["loss"][2, 3], saddle(np.array([[xs[2], ys[3]]]))[0], atol=0.02)
  assert res.error_grid(xs, ys).shape == (7, 4)
  # lattice points that were sampled are reproduced exactly by both interpolants
  for method in ("linear", "cubic"):
    out = res.interpolate(res.coords, method=method)["loss"]
    np.testing.assert_allclose(out, res.values["loss"], atol=1e-12)
  assert np.isnan(res.to_grid(np.array([2.5]), np.array([0.5]))["loss"]).all()
  with pytest.raises(ValueError, match="method"):
    res.to_grid(xs, ys, method="quintic")
  with pytest.raises(ValueError, match="xs and ys"):
    res.to_grid(xs)


def test_select_key_and_bad_input():
  assert adaptive.select_key(["accuracy", "loss"]) == "loss"
  assert adaptive.select_key(["train_accuracy", "train_loss", "test_loss"]) == "train_loss"
  assert adaptive.select_key(["a", "b"], "b") == "b"
  with pytest.raises(ValueError, match="key="):
    adaptive.select_key(["accuracy"])
  with pytest.raises(ValueError, match="key="):
    adaptive.select_key(["loss"], "train_loss")
  ev = _evaluate(bowl)
  with pytest.raises(ValueError, match="tol"):
    adaptive.refine_surface(ev, BOX, BOX, refinement=lj.Refinement(tol=0.0))
  with pytest.raises(ValueError, match="ranges"):
    adaptive.refine_surface(ev, (1.0, -1.0), BOX, refinement=lj.Refinement(tol=0.1))
  with pytest.raises(ValueError, match="initial"):
    adaptive.refine_surface(ev, BOX, BOX, refinement=lj.Refinement(tol=0.1, initial=1))
  with pytest.raises(ValueError, match="same metrics"):
    adaptive.refine_surface(lambda c, r: {"loss": bowl(c)} if r == 0 else {"x": bowl(c)},
                            BOX, BOX, refinement=lj.Refinement(tol=1e-3))


def test_contour_overlay_of_samples(tmp_path):
  res = adaptive.refine_surface(_evaluate(saddle), BOX, BOX,
                                refinement=lj.Refinement(tol=0.05, initial=5, max_level=3))
  xs = np.linspace(*BOX, 41)
  fig = lj.plotting.plot_contour(xs, xs, res.to_grid(xs, xs)["loss"], samples=res.coords)
  dots = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "."]
  np.testing.assert_array_equal(dots[0].get_xydata(), res.coords)
  files = lj.plotting.save(fig, tmp_path / "c", "png")
  assert (tmp_path / "c.png").stat().st_size > 1000 and files
  with pytest.raises(ValueError, match="samples"):
    lj.plotting.plot_contour(xs, xs, res.to_grid(xs, xs)["loss"], samples=np.zeros((3, 3)))


# ------------------------------------------------------------------- through the point evaluator
@pytest.fixture(scope="module")
def mlp_metric(tiny_mlp, digits_train):
  model, variables = tiny_mlp
  metric_fn = lj.make_metric_fn(model, {"train": digits_train.subset(slice(0, 64))},
                                batch_size=64)
  d1, d2 = lj.random_directions(jax.random.key(3), variables["params"], num=2, norm="filter")
  return metric_fn, variables["params"], (d1, d2)


@pytest.mark.slow
def test_adaptive_surface_end_to_end_with_store(mlp_metric, tmp_path, monkeypatch):
  metric_fn, params, dirs = mlp_metric
  settings = dict(tol=0.002, initial=3, max_level=2, max_points=40, key="train_loss")
  kw = dict(refinement=lj.Refinement(**settings), engine=lj.EngineOptions(progress=False))
  store = tmp_path / "adaptive"
  # a run killed in round 2 ...
  real = lj.surface.surface_points
  calls = []

  def dying(*args, store=None, **kwargs):
    calls.append(store)
    if store.endswith("round-002"):
      raise Killed("killed")
    return real(*args, store=store, **kwargs)

  monkeypatch.setattr(lj.surface, "surface_points", dying)
  with pytest.raises(Killed):
    adaptive.adaptive_surface(metric_fn, params, dirs, (-1, 1), (-1, 1), store=store, **kw)
  monkeypatch.undo()
  assert (store / "round-000").is_dir() and (store / "round-001").is_dir()
  # ... resumes to the result of an uninterrupted run without a store
  res = adaptive.adaptive_surface(metric_fn, params, dirs, (-1, 1), (-1, 1), store=store, **kw)
  fresh = adaptive.adaptive_surface(metric_fn, params, dirs, (-1, 1), (-1, 1), **kw)
  np.testing.assert_array_equal(res.coords, fresh.coords)
  for k in res.values:
    np.testing.assert_array_equal(res.values[k], fresh.values[k])
  assert res.num_points <= 40 and len(res.history) == 3
  # independent truth: surface_grid on the full lattice holds every sample's value
  lx, ly = res.lattice_axes()
  dense = lj.surface_grid(metric_fn, params, dirs, lx, ly, engine=lj.EngineOptions(progress=False))
  for k in ("train_loss", "train_accuracy"):
    np.testing.assert_allclose(res.values[k], dense[k][res.lattice[:, 0], res.lattice[:, 1]],
                               rtol=1e-5, atol=1e-6)
  # another tolerance into the same store is refused, naming the difference
  with pytest.raises(ValueError, match="adaptive"):
    adaptive.adaptive_surface(metric_fn, params, dirs, (-1, 1), (-1, 1), store=store,
                              **{**kw, "refinement": lj.Refinement(**{**settings, "tol": 0.01})})


@pytest.mark.slow
def test_adaptive_path_end_to_end(mlp_metric):
  metric_fn, params, (d1, _) = mlp_metric
  b = jax.tree.map(lambda p, d: p + d, params, d1)
  res = adaptive.adaptive_path(metric_fn, params, b, (-0.5, 1.5),
                               refinement=lj.Refinement(tol=0.002, initial=5, max_level=3),
                               engine=lj.EngineOptions(progress=False))
  (ts,) = res.lattice_axes()
  dense = lj.linear_path(metric_fn, params, b, ts, engine=lj.EngineOptions(progress=False))
  np.testing.assert_allclose(res.values["train_loss"], dense["train_loss"][res.lattice[:, 0]],
                             rtol=1e-5, atol=1e-6)
  assert res.num_points < ts.size
