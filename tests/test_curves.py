"""Tests of the curves of Garipov et al. 2018: bases, points, loss, training, evaluation, plane."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landscape_jax import curves


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


def test_curve_lr_schedule_matches_reference():
  sched = curves.curve_lr_schedule(0.03, total_epochs=100, steps_per_epoch=10)

  def ref(epoch):
    a = epoch / 100
    f = 1.0 if a <= 0.5 else (1.0 - (a - 0.5) / 0.4 * 0.99 if a <= 0.9 else 0.01)
    return 0.03 * f

  for epoch in (0, 30, 50, 51, 70, 90, 91, 99):
    for i in (0, 9):
      np.testing.assert_allclose(sched(epoch * 10 + i), ref(epoch), rtol=1e-5)
