"""Tests of the curves of Garipov et al. 2018: bases, points, loss, training, evaluation, plane."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.core import curves
from landscape_jax.methods import curve_training, ensembles, schedules, training


def _tree(key, scale=1.0):
  k1, k2 = jax.random.split(key)
  return {"a": {"kernel": scale * jax.random.normal(k1, (3, 4))},
          "b": scale * jax.random.normal(k2, (5,))}


@pytest.mark.parametrize("kind", curves.KINDS)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_endpoints_exact(kind, n):
  start, end = _tree(jax.random.key(0)), _tree(jax.random.key(1))
  bends = [_tree(jax.random.key(10 + i)) for i in range(n - 2)]
  c = curves.init_curve(start, end, n, bends=bends if n > 2 else None)
  for t, ref in ((0.0, start), (1.0, end)):
    p = curves.curve_point(c, t, kind)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), p, ref)


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_bezier_coefficients_sum_to_one_and_match_formula(n):
  ts = np.linspace(0, 1, 23)
  c = np.asarray(curves.bezier_coefficients(ts, n))
  np.testing.assert_allclose(c.sum(-1), 1.0, atol=1e-6)
  ref = np.array([[math.comb(n - 1, k) * t ** k * (1 - t) ** (n - 1 - k) for k in range(n)]
                  for t in ts])
  np.testing.assert_allclose(c, ref, atol=1e-6)
  pc = np.asarray(curves.polychain_coefficients(ts, n))
  np.testing.assert_allclose(pc.sum(-1), 1.0, atol=1e-6)


def test_one_bend_bezier_is_quadratic():
  start, bend, end = (_tree(jax.random.key(i)) for i in range(3))
  c = curves.init_curve(start, end, 3, bends=bend)
  t = 0.3
  p = curves.curve_point(c, t, "bezier")
  ref = jax.tree.map(lambda a, b, e: (1 - t) ** 2 * a + 2 * t * (1 - t) * b + t ** 2 * e,
                     start, bend, end)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), p, ref)


def test_polychain_passes_through_bends_and_is_linear_between():
  n = 4
  pts = [_tree(jax.random.key(i)) for i in range(n)]
  c = curves.init_curve(pts[0], pts[-1], n, bends=pts[1:-1])
  for k in range(n):
    p = curves.curve_point(c, k / (n - 1), "polychain")
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), p, pts[k])
  mid = curves.curve_point(c, 0.5 / 3, "polychain")
  ref = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, pts[0], pts[1])
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), mid, ref)


def test_init_curve_on_straight_line():
  start, end = _tree(jax.random.key(0)), _tree(jax.random.key(1))
  c = curves.init_curve(start, end, 5)
  assert c["a"]["kernel"].shape == (5, 3, 4)
  for j in range(5):
    ref = jax.tree.map(lambda a, b, j=j: (1 - j / 4) * a + (j / 4) * b, start, end)
    jax.tree.map(lambda x, y, j=j: np.testing.assert_allclose(x[j], y, atol=1e-6), c, ref)
  # every point of a straight-line Bezier curve lies on the chord (the basis reproduces lines)
  p = curves.curve_point(c, 0.37, "bezier")
  ref = jax.tree.map(lambda a, b: 0.63 * a + 0.37 * b, start, end)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), p, ref)


def test_bad_inputs_raise():
  start, end = _tree(jax.random.key(0)), _tree(jax.random.key(1))
  with pytest.raises(ValueError, match="num_bends"):
    curves.init_curve(start, end, 1)
  with pytest.raises(ValueError, match="same pytree structure"):
    curves.init_curve(start, {"a": start["a"]}, 3)
  with pytest.raises(ValueError, match="Unknown curve kind"):
    curves.curve_point(curves.init_curve(start, end, 3), 0.5, "spline")
  with pytest.raises(ValueError, match="num_bends - 2"):
    curves.init_curve(start, end, 4, bends=[start])


def _quadratic_loss(params, batch):
  return sum(jnp.sum((x - batch) ** 2) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("kind", curves.KINDS)
def test_gradients_reach_only_interior_bends(kind):
  start, end = _tree(jax.random.key(0)), _tree(jax.random.key(1))
  c = curves.init_curve(start, end, 4, bends=[_tree(jax.random.key(2)), _tree(jax.random.key(3))])
  g = jax.grad(curves.curve_loss, argnums=1)(_quadratic_loss, c, 0.5, jnp.array([0.2, 0.7]), kind,
                                             weight_decay=1e-2)
  for leaf in jax.tree.leaves(g):
    assert np.all(np.asarray(leaf[0]) == 0) and np.all(np.asarray(leaf[-1]) == 0)
    assert np.any(np.asarray(leaf[1]) != 0) and np.any(np.asarray(leaf[2]) != 0)


def test_curve_loss_is_mean_over_ts_with_l2():
  start, end = _tree(jax.random.key(0)), _tree(jax.random.key(1))
  c = curves.init_curve(start, end, 3, bends=_tree(jax.random.key(2)))
  ts = jnp.array([0.1, 0.5, 0.9])
  wd = 3e-2
  got = curves.curve_loss(_quadratic_loss, c, 0.25, ts, "bezier", weight_decay=wd)
  ref = np.mean([
    _quadratic_loss(p, 0.25) + 0.5 * wd * sum(np.sum(np.square(x)) for x in jax.tree.leaves(p))
    for p in (curves.curve_point(c, t, "bezier") for t in ts)])
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  one = curves.curve_loss(_quadratic_loss, c, 0.25, 0.5, "bezier")
  np.testing.assert_allclose(one, _quadratic_loss(curves.curve_point(c, 0.5), 0.25), rtol=1e-6)


# learning_rate_schedule(base_lr, epoch, total) of timgaripov/dnn-mode-connectivity's train.py,
# called with epoch = 1..total (alpha = epoch / total), written out by hand for total = 10:
# alpha 0.1..0.5 -> 1; 0.6 -> 1 - 0.1/0.4*0.99; 0.7 -> 1 - 0.2/0.4*0.99; 0.8 -> 1 - 0.3/0.4*0.99;
# 0.9 and 1.0 -> 0.01. Index i is the 0-based epoch i (the reference's epoch i + 1).
_REFERENCE_FACTORS_10 = [1.0, 1.0, 1.0, 1.0, 1.0, 0.7525, 0.505, 0.2575, 0.01, 0.01]


def test_curve_lr_schedule_matches_reference():
  spe = 7
  sched = schedules.curve_lr_schedule(0.03, total_epochs=10, steps_per_epoch=spe)
  for epoch, factor in enumerate(_REFERENCE_FACTORS_10):
    for step in (epoch * spe, epoch * spe + spe - 1):  # set once per epoch
      np.testing.assert_allclose(sched(step), 0.03 * factor, rtol=1e-5, err_msg=f"epoch {epoch}")
  # one implementation: the same function as the training schedule of a garipov config
  gar = training.make_schedule(dict(
    schedule="garipov", learning_rate=0.03, num_epochs=10), spe)
  steps = np.arange(10 * spe)
  np.testing.assert_array_equal(jax.vmap(sched)(steps), jax.vmap(gar)(steps))
  with pytest.raises(ValueError, match="total_epochs and steps_per_epoch"):
    schedules.curve_lr_schedule(0.03, total_epochs=0, steps_per_epoch=spe)


# ----------------------------------------------------------------------------- training on digits


@pytest.fixture(scope="module")
def mlp_setup(digits_train, digits_test):
  model = lj.get_model("mlp", num_classes=10, features=(32,))
  loss_fn = lj.make_loss_fn(model, mean=digits_train.mean, std=digits_train.std)
  metric_fn = lj.make_metric_fn(model, {"train": digits_train, "test": digits_test})
  return model, loss_fn, metric_fn


@pytest.fixture(scope="module")
def endpoints(mlp_setup, digits_train):
  """Two independently trained MLPs (different initialisations and data orders)."""
  model, loss_fn, _ = mlp_setup
  out = []
  for seed in (1, 2):
    p = model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 1)))["params"]
    settings = lj.TrainSettings(epochs=20, batch_size=64, learning_rate=0.05, weight_decay=1e-4,
                                seed=seed)
    p, _, _ = ensembles.train_sgd(loss_fn, p, digits_train, settings=settings, progress=False)
    out.append(p)
  return out


@pytest.fixture(scope="module")
def trained_curve(mlp_setup, endpoints, digits_train):
  _, loss_fn, _ = mlp_setup
  c, hist = curve_training.train_curve(loss_fn, endpoints[0], endpoints[1], digits_train,
                                       settings=lj.CurveSettings(epochs=20, batch_size=64,
                                                                 learning_rate=0.05,
                                                                 weight_decay=1e-4),
                                       progress=False)
  return c, hist


@pytest.mark.slow
def test_trained_bezier_curve_halves_the_barrier(mlp_setup, endpoints, trained_curve):
  _, _, metric_fn = mlp_setup
  c, hist = trained_curve
  for leaf, a, b in zip(jax.tree.leaves(c), jax.tree.leaves(endpoints[0]),
                        jax.tree.leaves(endpoints[1]), strict=True):
    np.testing.assert_array_equal(leaf[0], a)  # endpoints untouched by training
    np.testing.assert_array_equal(leaf[-1], b)
  assert hist[-1]["loss"] < hist[0]["loss"]
  res = curves.evaluate_curve(metric_fn, c, num_points=21,
                              engine=lj.EngineOptions(chunk_size=7, progress=False))
  curve_barrier = res["summary"]["curve"]["train_loss"]["barrier"]
  line_barrier = res["summary"]["line"]["train_loss"]["barrier"]
  assert line_barrier > 0.1
  assert curve_barrier < 0.5 * line_barrier, (curve_barrier, line_barrier)
  assert res["summary"]["curve"]["test_loss"]["max"] < res["summary"]["line"]["test_loss"]["max"]
  # every evaluated point equals a direct evaluation of metric_fn at phi(t)
  for i in (0, 8, 20):
    ref = jax.jit(lambda f, p: f(p))(metric_fn, curves.curve_point(c, res["t"][i]))
    for k in ref:
      np.testing.assert_allclose(res["curve"][k][i], ref[k], rtol=1e-5, atol=1e-6)
  ref = metric_fn(lj.trees.index(c, 0))
  np.testing.assert_allclose(res["line"]["train_loss"][0], ref["train_loss"], rtol=1e-5)
  mid = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, endpoints[0], endpoints[1])
  np.testing.assert_allclose(res["line"]["test_loss"][10], metric_fn(mid)["test_loss"], rtol=1e-4)


@pytest.mark.slow
def test_curve_training_resumes_exactly(mlp_setup, endpoints, digits_train, tmp_path):
  _, loss_fn, _ = mlp_setup
  kw = dict(settings=lj.CurveSettings(epochs=4, batch_size=128, learning_rate=0.05,
                                      weight_decay=1e-4, num_bends=4, seed=3), progress=False)
  ref, ref_hist = curve_training.train_curve(loss_fn, endpoints[0], endpoints[1], digits_train,
      **kw)

  class Killed(Exception):
    pass

  def kill(epoch, curve, record):
    if epoch == 1:
      raise Killed

  with pytest.raises(Killed):
    curve_training.train_curve(loss_fn, endpoints[0], endpoints[1], digits_train,
        workdir=str(tmp_path),
                       callback=kill, **kw)
  got, hist = curve_training.train_curve(loss_fn, endpoints[0], endpoints[1], digits_train,
                                 workdir=str(tmp_path), **kw)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), got, ref)
  assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
  np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in ref_hist])
  with pytest.raises(ValueError, match="different configuration"):
    curve_training.train_curve(loss_fn, endpoints[0], endpoints[1], digits_train,
        workdir=str(tmp_path),
                       **{**kw, "settings": kw["settings"].replace(learning_rate=0.1)})


def test_evaluate_curve_store_resumes_and_refuses_mixing(mlp_setup, trained_curve, tmp_path,
                                                         digits_test):
  model, _, metric_fn = mlp_setup
  c, _ = trained_curve
  store = str(tmp_path / "curve_eval")
  kw = dict(num_points=9, store=store, engine=lj.EngineOptions(chunk_size=2, progress=False))
  full = curves.evaluate_curve(metric_fn, c, **kw)
  # pretend the run stopped after the first 8 points (of 9 curve + 9 line points)
  state = lj.store.read(store)
  state.done[8:] = False
  for v in state.values.values():
    v[8:] = np.nan
  lj.store.write(store, state)
  again = curves.evaluate_curve(metric_fn, c, **kw)
  for k in full["curve"]:
    np.testing.assert_allclose(again["curve"][k], full["curve"][k], rtol=1e-6)
    np.testing.assert_allclose(again["line"][k], full["line"][k], rtol=1e-6)
  before = lj.store.read(store)
  # anything else than what computed the store is refused, and the store is left as it was
  swapped = jax.tree.map(lambda w: w[::-1], c)  # the same curve walked backwards
  with pytest.raises(lj.store.StoreMismatchError, match="point_fn.arrays"):
    curves.evaluate_curve(metric_fn, swapped, **kw)
  other_data = lj.make_metric_fn(model, {"train": digits_test.subset(slice(0, 100)),
                                         "test": digits_test})
  with pytest.raises(lj.store.StoreMismatchError, match="metric_fn"):
    curves.evaluate_curve(other_data, c, **kw)
  with pytest.raises(lj.store.StoreMismatchError, match="coords_sha256"):
    curves.evaluate_curve(metric_fn, c, **{**kw, "num_points": 5})
  after = lj.store.read(store)
  assert after.generation == before.generation
  np.testing.assert_array_equal(after.values["train_loss"], before.values["train_loss"])


def test_sharded_evaluation_matches(mlp_setup, trained_curve):
  _, _, metric_fn = mlp_setup
  c, _ = trained_curve
  mesh = jax.make_mesh((4,), ("points",), devices=jax.devices()[:4])
  a = curves.evaluate_curve(metric_fn, c, num_points=5,
                            engine=lj.EngineOptions(chunk_size=4, mesh=mesh, progress=False),
                            line=False)
  b = curves.evaluate_curve(metric_fn, c, num_points=5,
                            engine=lj.EngineOptions(chunk_size=1, progress=False), line=False)
  for k in a["curve"]:
    np.testing.assert_allclose(a["curve"][k], b["curve"][k], rtol=1e-5)


def test_plane_through_three_points(mlp_setup, trained_curve):
  _, _, metric_fn = mlp_setup
  c, _ = trained_curve
  w0, w1, w2 = (lj.trees.index(c, i) for i in range(3))
  plane = curves.plane_basis(w0, w1, w2)
  unorm = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(plane.u)))
  np.testing.assert_allclose(unorm, 1.0, rtol=1e-5)
  vdot = sum(np.sum(np.asarray(a) * np.asarray(b)) for a, b in
             zip(jax.tree.leaves(plane.u), jax.tree.leaves(plane.v), strict=True))
  assert abs(vdot) < 1e-5
  np.testing.assert_allclose(curves.project_to_plane(plane, w0), [0, 0], atol=1e-4)
  np.testing.assert_allclose(curves.project_to_plane(plane, w2), [plane.scale_u, 0], atol=1e-3,
                             rtol=1e-5)
  np.testing.assert_allclose(curves.project_to_plane(plane, w1)[1], plane.scale_v, rtol=1e-5)
  # the grid point (a, b) = (0, 1) + projection of w1 rebuilds w1 exactly (w1 lies in the plane)
  a1 = float(curves.project_to_plane(plane, w1)[0] / plane.scale_u)
  rebuilt = curves.plane_grid_point(plane, a1, 1.0)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-4), rebuilt, w1)
  # a 3-point Bezier curve lies in the plane of its control points
  xy = curves.curve_in_plane(plane, c, num_points=5)
  p = curves.curve_point(c, 0.25)
  back = curves.plane_grid_point(plane, xy[1, 0] / plane.scale_u, xy[1, 1] / plane.scale_v)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-4), back, p)
  alphas, betas = np.linspace(-0.2, 1.2, 4), np.linspace(-0.2, 1.2, 3)
  res = curves.evaluate_plane(metric_fn, plane, alphas=alphas, betas=betas,
                              engine=lj.EngineOptions(chunk_size=4, progress=False))
  assert res["train_loss"].shape == (4, 3)
  direct = metric_fn(curves.plane_grid_point(plane, alphas[2], betas[1]))
  np.testing.assert_allclose(res["train_loss"][2, 1], direct["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(res["x"], alphas * float(plane.scale_u), rtol=1e-6)
  with pytest.raises(ValueError, match="collinear"):
    curves.plane_basis(w0, w0, w2)


class _ConvBN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), strides=2)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


@pytest.mark.slow
def test_curve_with_batchnorm_model(digits_train, digits_test):
  model = _ConvBN()
  v = [model.init(jax.random.key(s), jnp.zeros((1, 8, 8, 1))) for s in (0, 1)]
  loss_fn = lj.make_loss_fn(model, mean=digits_train.mean, std=digits_train.std,
                            batch_stats=v[0]["batch_stats"], train=True)
  c, hist = curve_training.train_curve(loss_fn, v[0]["params"], v[1]["params"], digits_train,
                                       settings=lj.CurveSettings(epochs=2, batch_size=128,
                                                                 learning_rate=0.05),
                                       progress=False)
  assert np.isfinite(hist[-1]["loss"])
  metric_fn = lj.make_recompute_metric_fn(model, {"test": digits_test}, train_data=digits_train,
                                          batch_stats=v[0]["batch_stats"], bn_batch_size=128)
  res = curves.evaluate_curve(metric_fn, c, num_points=3, line=False,
                              engine=lj.EngineOptions(progress=False))
  p = curves.curve_point(c, 0.5)
  stats = lj.recompute_batch_stats(model, p, v[0]["batch_stats"], digits_train, batch_size=128)
  ref = lj.evaluate(lj.evaluation.inference_apply(model), {"params": p, "batch_stats": stats},
                    digits_test.images, digits_test.labels, mean=digits_test.mean,
                    std=digits_test.std)
  np.testing.assert_allclose(res["curve"]["test_loss"][1], ref["loss"], rtol=1e-5)


_KILL_SCRIPT = """
import os, signal, sys
import jax, numpy as np
import landscape_jax as lj
from landscape_jax.core import curves
from landscape_jax.methods import curve_training  # noqa: E402
from landscape_jax.methods import schedules  # noqa: E402
z = np.load(sys.argv[1])
ends = [{k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{i}/")} for i in (0, 1)]
ends = [{"Dense_0": {"kernel": e["Dense_0/kernel"], "bias": e["Dense_0/bias"]},
         "Dense_1": {"kernel": e["Dense_1/kernel"], "bias": e["Dense_1/bias"]}} for e in ends]
tr = lj.load("digits", "train")
model = lj.get_model("mlp", num_classes=10, features=(32,))
loss_fn = lj.make_loss_fn(model, mean=tr.mean, std=tr.std)
def kill(epoch, curve, record):
  if epoch == 1:
    os.kill(os.getpid(), signal.SIGKILL)
settings = lj.CurveSettings(epochs=3, batch_size=128, learning_rate=0.05, weight_decay=1e-4, seed=5)
curve_training.train_curve(loss_fn, ends[0], ends[1], tr, settings=settings, progress=False,
                           workdir=sys.argv[2], callback=kill)
"""


@pytest.mark.slow
@pytest.mark.reliability
def test_curve_training_resumes_after_sigkill(mlp_setup, endpoints, digits_train, tmp_path):
  import os
  import subprocess
  import sys

  _, loss_fn, _ = mlp_setup
  flat = {f"{i}/{lj.trees.path_str(p)}": np.asarray(x) for i, e in enumerate(endpoints)
          for p, x in jax.tree_util.tree_flatten_with_path(e)[0]}
  np.savez(tmp_path / "ends.npz", **flat)
  script = tmp_path / "kill.py"
  script.write_text(_KILL_SCRIPT)
  env = {**os.environ, "PYTHONPATH": os.getcwd(), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, str(script), str(tmp_path / "ends.npz"),
                         str(tmp_path / "run")], env=env, capture_output=True, timeout=300)
  assert proc.returncode == -9, proc.stderr.decode()[-2000:]
  kw = dict(settings=lj.CurveSettings(epochs=3, batch_size=128, learning_rate=0.05,
                                      weight_decay=1e-4, seed=5), progress=False)
  got, hist = curve_training.train_curve(loss_fn, endpoints[0], endpoints[1], digits_train,
                                 workdir=str(tmp_path / "run"), **kw)
  ref, ref_hist = curve_training.train_curve(loss_fn, endpoints[0], endpoints[1], digits_train,
      **kw)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), got, ref)
  assert [h["epoch"] for h in hist] == [0, 1, 2]


@pytest.mark.parametrize("num_ts", [1, 3])
def test_curve_train_step_matches_gradient_of_curve_loss(num_ts):
  import optax

  start, end = _tree(jax.random.key(0)), _tree(jax.random.key(1))
  c = curves.init_curve(start, end, 4, bends=[_tree(jax.random.key(2)), _tree(jax.random.key(3))])
  ends, interior = curves.split_curve(c)
  opt = optax.sgd(0.1)
  state = curve_training.CurveTrainState(jnp.zeros((), jnp.int32), interior, opt.init(interior))
  key = jax.random.key(7)
  new, loss = curve_training.curve_train_step(_quadratic_loss, opt, state, ends, 0.5, key,
                                      kind="polychain", weight_decay=1e-2, num_ts=num_ts)
  ts = jax.random.uniform(key, () if num_ts == 1 else (num_ts,))
  g = jax.grad(curves.curve_loss, argnums=1)(_quadratic_loss, c, 0.5, ts, "polychain",
                                             weight_decay=1e-2)
  expected = jax.tree.map(lambda w, gw: w - 0.1 * gw[1:-1], interior, g)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), new.interior,
               expected)
  np.testing.assert_allclose(loss, curves.curve_loss(_quadratic_loss, c, 0.5, ts, "polychain"),
                             rtol=1e-5)
  assert int(new.step) == 1

