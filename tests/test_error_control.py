"""Error-controlled surfaces: the anchored control-variate estimator against direct computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.adapters import error_control as ec


@pytest.fixture(scope="module")
def setup(tiny_mlp, digits_test):
  model, variables = tiny_mlp
  params = variables["params"]
  data = digits_test.subset(slice(0, 200))
  dirs = tuple(lj.normalize_directions(d, params, norm="filter")
               for d in lj.random_directions(jax.random.key(1), params, num=2))
  return model, params, data, dirs


def _per_example(model, params, data, order):
  x = lj.data.normalize_images(data.images[order], data.mean, data.std)
  logits = model.apply({"params": params}, x)
  y = data.labels[order]
  return (np.asarray(lj.cross_entropy(logits, y), np.float64),
          np.asarray(jnp.argmax(logits, -1) == y, np.float64))


def test_lagrange_weights_reproduce_cubics_and_shift_at_the_ends():
  nodes = jnp.asarray([-1.0, -0.6, -0.1, 0.3, 0.8, 1.0])
  poly = np.polynomial.Polynomial([0.3, -1.2, 0.7, 2.0])
  for t in (-1.0, -0.95, -0.3, 0.31, 0.9, 1.0):
    start, w = ec.lagrange_weights(nodes, t)
    x = np.asarray(nodes)[int(start):int(start) + 4]
    assert abs(float(x.mean()) - t) < 0.8  # a stencil near t
    np.testing.assert_allclose(float(np.dot(np.asarray(w), poly(x))), poly(t), atol=1e-5)
  start, w = ec.lagrange_weights(jnp.asarray([0.0, 1.0]), 0.25)  # two nodes: linear
  np.testing.assert_allclose(np.asarray(w), [0.75, 0.25])


def test_anchor_axis_keeps_both_ends():
  np.testing.assert_allclose(ec.anchor_axis(np.linspace(-1, 1, 51), stride=4)[[0, -1]], [-1, 1])
  assert ec.anchor_axis(np.linspace(-1, 1, 51), stride=4).size == 14
  with pytest.raises(ValueError, match="stride"):
    ec.anchor_axis([0.0, 1.0], stride=0)


def _logits(model, params, data, order):
  x = lj.data.normalize_images(data.images[order], data.mean, data.std)
  return np.asarray(model.apply({"params": params}, x), np.float64)


def _ce_and_hits(z, y):
  z = z - z.max(-1, keepdims=True)
  ce = np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]
  return ce, (z.argmax(-1) == y).astype(np.float64)


@pytest.mark.parametrize("covariate", ["logits", "loss"])
def test_anchored_estimate_equals_hand_computed_control_variate(setup, covariate):
  """The estimate is ``mu_c + mean_n(l - c)`` with ``c`` from the 4 x 4 nearest anchors: the
  cross-entropy of the interpolated logits (``mu_c`` its mean over the whole split), or the
  interpolated per-example losses (``mu_c`` the interpolated means), computed here in NumPy."""
  model, params, data, dirs = setup
  xs = np.linspace(-1, 1, 9)
  # anchors at -1, -0.5, 0, 0.5, 1
  anchors = lj.anchor_plane(params, dirs, xs, xs, stride=2, covariate=covariate)
  fn = lj.make_error_controlled_metric_fn(model, data, tol=1e3, batch_size=50, seed=5,
                                          min_batches=2, anchors=anchors, progress=False)
  a, b = 0.3, -0.55
  est = jax.jit(lambda f, p: f(p))(fn, lj.plane_point(params, *dirs, a, b))
  assert float(est["num_examples"]) == 100
  order = np.random.default_rng(5).permutation(200)
  y = data.labels[order]
  ax = np.asarray(anchors.xs)
  sx, sy = ax[1:5], ax[0:4]  # the 4 anchors nearest to 0.3 and to -0.55

  def lagrange(nodes, t):
    return np.array([np.prod([(t - nodes[q]) / (nodes[m] - nodes[q]) for q in range(4) if q != m])
                     for m in range(4)])

  wx, wy = lagrange(sx, a), lagrange(sy, b)
  z = sum(wx[i] * wy[j] * _logits(model, lj.plane_point(params, *dirs, u, v), data, order)
          for i, u in enumerate(sx) for j, v in enumerate(sy))
  if covariate == "logits":
    cov_l, cov_h = _ce_and_hits(z, y)
    mu_l, mu_h = cov_l.mean(), cov_h.mean()
  else:
    cov_l, cov_h, mu_l, mu_h = (np.zeros(200), np.zeros(200), 0.0, 0.0)
    for i, u in enumerate(sx):
      for j, v in enumerate(sy):
        lo, hi = _per_example(model, lj.plane_point(params, *dirs, u, v), data, order)
        cov_l, cov_h = cov_l + wx[i] * wy[j] * lo, cov_h + wx[i] * wy[j] * hi
        mu_l, mu_h = mu_l + wx[i] * wy[j] * lo.mean(), mu_h + wx[i] * wy[j] * hi.mean()
  lo, hi = _per_example(model, lj.plane_point(params, *dirs, a, b), data, order)
  r = (lo - cov_l)[:100]
  np.testing.assert_allclose(est["loss"], mu_l + r.mean(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(est["accuracy"], mu_h + (hi - cov_h)[:100].mean(), atol=1e-5)
  sem = r.std(ddof=1) / 10.0 * np.sqrt(100 / 199)
  np.testing.assert_allclose(est["loss_sem"], sem, rtol=1e-3)
  # the control variate removes most of the spread: the plain estimator's SEM is larger
  plain = lj.make_error_controlled_metric_fn(model, data, tol=1e3, batch_size=50, seed=5,
                                             min_batches=2)(lj.plane_point(params, *dirs, a, b))
  assert float(plain["loss_sem"]) > 3 * float(est["loss_sem"])


def test_anchored_exact_at_tol_zero_and_at_anchors(setup):
  model, params, data, dirs = setup
  xs = np.linspace(-1, 1, 5)
  exact = lj.make_metric_fn(model, data, batch_size=50)
  anchors = lj.anchor_plane(params, dirs, xs, xs, stride=2)
  full = lj.make_error_controlled_metric_fn(model, data, tol=0.0, batch_size=50,
                                            anchors=anchors, progress=False)
  q = lj.plane_point(params, *dirs, 0.3, -0.55)
  np.testing.assert_allclose(full(q)["loss"], exact(q)["loss"], rtol=1e-5)
  assert float(full(q)["num_examples"]) == 200 and float(full(q)["loss_sem"]) == 0.0
  loose = lj.make_error_controlled_metric_fn(model, data, tol=1e-3, batch_size=50,
                                             anchors=anchors, progress=False)
  at = lj.plane_point(params, *dirs, 1.0, -1.0)  # an anchor: zero residual, one batch
  res = loose(at)
  assert float(res["num_examples"]) == 50
  np.testing.assert_allclose(res["loss"], exact(at)["loss"], rtol=1e-5)
  np.testing.assert_allclose(res["accuracy"], exact(at)["accuracy"], atol=1e-6)


def test_anchored_surface_within_its_standard_errors(setup):
  """On a grid the estimates stay within 4 standard errors of the exact surface, with fewer
  examples than the plain estimator at the same tolerance; 1-D anchors work the same way."""
  model, params, data, dirs = setup
  xs = np.linspace(-1, 1, 9)
  exact = lj.surface_grid(lj.make_metric_fn(model, data, batch_size=50), params, dirs, xs, xs,
                          engine=lj.EngineOptions(progress=False))
  tol = 0.02
  anchored = lj.make_error_controlled_metric_fn(
    model, data, tol=tol, batch_size=25, anchors=lj.anchor_plane(params, dirs, xs, xs, stride=4),
    progress=False)
  plain = lj.make_error_controlled_metric_fn(model, data, tol=tol, batch_size=25)
  est = lj.surface_grid(anchored, params, dirs, xs, xs, engine=lj.EngineOptions(progress=False))
  ref = lj.surface_grid(plain, params, dirs, xs, xs, engine=lj.EngineOptions(progress=False))
  dev = np.abs(est["loss"] - exact["loss"])
  assert np.all(dev <= 4 * np.maximum(est["loss_sem"], 1e-6) + 1e-5)
  assert np.all((est["loss_sem"] <= tol + 1e-7) | (est["num_examples"] == 200))
  assert est["num_examples"].sum() < ref["num_examples"].sum()
  one = lj.make_error_controlled_metric_fn(
    model, data, tol=0.0, batch_size=50, anchors=lj.anchor_plane(params, dirs[:1], xs, stride=3),
    progress=False)
  line = lj.surface_grid(one, params, dirs[:1], xs, engine=lj.EngineOptions(progress=False))
  np.testing.assert_allclose(line["loss"], exact["loss"][:, 4], rtol=1e-5)


def test_anchor_plane_checks_its_arguments(setup):
  _, params, _, dirs = setup
  with pytest.raises(ValueError, match="two directions"):
    lj.anchor_plane(params, dirs, [0.0, 1.0])
  with pytest.raises(ValueError, match="two directions"):
    lj.anchor_plane(params, dirs[:1], [0.0, 1.0], [0.0, 1.0])


def test_relative_tolerance_stops_where_a_hand_computed_rule_does(setup):
  """``sem <= tol + rtol |L|``, tested batch by batch on the shuffled per-example losses, stops at
  the same batch as the compiled loop; rtol changes the function's identity."""
  model, params, data, dirs = setup
  q = lj.plane_point(params, *dirs, 0.7, -0.4)
  tol, rtol, b = 0.01, 0.08, 20
  fn = lj.make_error_controlled_metric_fn(model, data, tol=tol, rtol=rtol, batch_size=b, seed=2)
  est = fn(q)
  losses, _ = _per_example(model, q, data, np.random.default_rng(2).permutation(200))
  stop = 200
  for n in range(b, 201, b):
    sem = losses[:n].std(ddof=1) / np.sqrt(n) * np.sqrt((200 - n) / 199)
    if sem <= tol + rtol * abs(losses[:n].mean()):
      stop = n
      break
  assert 20 < stop < 200  # the rule is exercised between its two ends
  assert float(est["num_examples"]) == stop
  np.testing.assert_allclose(est["loss"], losses[:stop].mean(), rtol=1e-5)
  absolute = lj.make_error_controlled_metric_fn(model, data, tol=tol, batch_size=b, seed=2)
  assert float(absolute(q)["num_examples"]) > stop
  assert (lj.identity.callable_identity(fn) != lj.identity.callable_identity(absolute))
  with pytest.raises(ValueError, match="rtol"):
    lj.make_error_controlled_metric_fn(model, data, tol=tol, rtol=float("nan"))
  with pytest.raises(ValueError, match="covariate"):
    lj.anchor_plane(q, (q,), [0.0, 1.0], covariate="probabilities")


def test_an_inputs_targets_pair_estimates_as_its_dataset(setup):
  """A normalised (inputs, targets) pair gives the numbers of the Dataset it was made from (the
  same shuffled walk), exact at tol=0 as `make_metric_fn` on the same pair."""
  model, params, data, dirs = setup
  pair = (np.asarray(lj.data.normalize_images(data.images, data.mean, data.std)), data.labels)
  anchors = lj.anchor_plane(params, dirs, np.linspace(-1, 1, 5), np.linspace(-1, 1, 5), stride=2)
  kw = dict(tol=0.05, batch_size=32, seed=3, anchors=anchors, progress=False)
  from_data = lj.make_error_controlled_metric_fn(model, data, **kw)
  from_pair = lj.make_error_controlled_metric_fn(model, pair, **kw)
  p = lj.plane_point(params, *dirs, 0.3, -0.2)
  a, b = from_data(p), from_pair(p)
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7)
  exact = lj.make_metric_fn(model, pair, batch_size=50)(p)
  full = lj.make_error_controlled_metric_fn(model, pair, tol=0.0, batch_size=50)(p)
  assert float(full["num_examples"]) == 200
  np.testing.assert_allclose(full["loss"], exact["loss"], rtol=1e-5)
  np.testing.assert_allclose(full["accuracy"], exact["accuracy"], rtol=1e-6)
  with pytest.raises(ValueError, match="one split"):
    lj.make_error_controlled_metric_fn(model, {"test": pair}, tol=0.1)
