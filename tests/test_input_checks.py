"""Silent input cases of issue 27: each now fails (or warns) naming what is wrong."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj


@pytest.fixture(scope="module")
def mlp():
  model = lj.get_model("mlp", num_classes=3, features=(4,))
  params = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))["params"]
  return model, params


def test_negative_labels_are_refused_by_every_builder(mlp):
  model, params = mlp
  x = np.random.default_rng(0).normal(size=(6, 2, 2, 1)).astype(np.float32)
  y = np.array([0, 1, 2, -1, 0, 1])
  with pytest.raises(ValueError, match=r"negative class labels \(-1 at index 3"):
    lj.make_metric_fn(model, (x, y))
  loss_fn = lj.make_loss_fn(model)
  with pytest.raises(ValueError, match=r"negative class labels \(-1 at index 3"):
    loss_fn(params, (x, y))
  # the documented way to leave targets out: TOKEN_CROSS_ENTROPY's mask
  tokens = np.array([[1, 2, -1], [0, -1, -1]])
  mask = (tokens >= 0).astype(np.float32)
  seq = lambda p, x: jnp.zeros((x.shape[0], 3, 4)) + p["b"]
  ok = lj.make_metric_fn(seq, (np.zeros((2, 3)), (tokens, mask)), loss=lj.TOKEN_CROSS_ENTROPY)
  np.testing.assert_allclose(ok({"b": jnp.zeros(4)})["loss"], np.log(4.0), rtol=1e-6)
  with pytest.raises(ValueError, match="negative class labels"):
    lj.make_metric_fn(seq, (np.zeros((2, 3)), tokens), loss=lj.TOKEN_CROSS_ENTROPY)


def test_uint8_images_in_pairs_are_refused_alike(mlp):
  model, params = mlp
  x = np.zeros((4, 2, 2, 1), np.uint8)
  y = np.array([0, 1, 2, 0])
  with pytest.raises(ValueError, match="uint8"):
    lj.make_metric_fn(model, (x, y))
  with pytest.raises(ValueError, match="uint8"):
    lj.make_loss_fn(model)(params, (x, y))


def test_coordinate_width_and_zero_directions(mlp):
  _, params = mlp
  metric = lambda p: {"loss": sum(jnp.sum(v ** 2) for v in jax.tree.leaves(p))}
  d = jax.tree.map(jnp.ones_like, params)
  with pytest.raises(ValueError, match="coords has 3 columns but 2 direction"):
    lj.surface_points(metric, params, (d, d), np.zeros((2, 3)),
                      engine=lj.EngineOptions(progress=False))
  zero = jax.tree.map(jnp.zeros_like, params)
  with pytest.raises(ValueError, match="direction 2 is zero"):
    lj.surface_grid(metric, params, (d, zero), np.linspace(-1, 1, 2), np.linspace(-1, 1, 2),
                    engine=lj.EngineOptions(progress=False))


def test_evaluate_points_refuses_extra_columns_for_library_point_fns(mlp):
  _, params = mlp
  metric = lambda p: {"loss": sum(jnp.sum(v ** 2) for v in jax.tree.leaves(p))}
  d = jax.tree.map(jnp.ones_like, params)
  plane = lj.plane_point_fn(params, (d, d))
  with pytest.raises(ValueError, match=r"coords has 3 column\(s\) but point_fn reads 2 "
                                       r"coordinate\(s\); pass coordinates of shape \(N, 2\)"):
    lj.evaluate_points(metric, plane, np.zeros((2, 3)), engine=lj.EngineOptions(progress=False))
  with pytest.raises(ValueError, match="point_fn reads 1 coordinate"):
    lj.evaluate_points(metric, lj.plane_point_fn(params, d), np.zeros((2, 2)),
                       engine=lj.EngineOptions(progress=False))
  # the right width is evaluated, and equals a direct evaluation
  c = np.array([[0.5, -1.0], [0.0, 2.0]])
  got = lj.evaluate_points(metric, plane, c, engine=lj.EngineOptions(progress=False))["loss"]
  # d1 = d2 = ones: the point is params + (c0 + c1) * ones
  want = [float(metric(jax.tree.map(lambda x, u=u: x + u, params))["loss"]) for u in (-0.5, 2.0)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_evaluate_points_does_not_check_an_undeclared_point_fn():
  # a user's own point_fn declares nothing: it may read any columns it likes (documented)
  point_fn = lambda c: {"w": c[0] + 10.0 * c[2]}
  got = lj.evaluate_points(lambda p: {"v": p["w"]}, point_fn,
                           np.array([[1.0, 5.0, 2.0], [0.0, 0.0, 1.0]]),
                           engine=lj.EngineOptions(progress=False))["v"]
  np.testing.assert_allclose(got, [21.0, 10.0])


def test_filter_normalisation_names_zero_leaves(mlp):
  _, params = mlp
  d = jax.tree.map(jnp.ones_like, params)
  d["Dense_0"]["kernel"] = jnp.zeros_like(d["Dense_0"]["kernel"])
  with pytest.warns(UserWarning, match="direction is zero at Dense_0/kernel"):
    lj.normalize_directions(d, params)
  p = dict(params, Dense_1=dict(params["Dense_1"], kernel=jnp.zeros_like(
    params["Dense_1"]["kernel"])))
  with pytest.warns(UserWarning, match="parameters are zero at Dense_1/kernel"):
    out = lj.normalize_directions(jax.tree.map(jnp.ones_like, params), p)
  assert not np.any(np.asarray(out["Dense_1"]["kernel"]))
