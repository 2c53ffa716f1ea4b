"""surface_grid against direct evaluation of metric_fn at plane points (Li et al. 2018)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import landscape_jax as lj


@pytest.fixture(scope="module")
def setup(tiny_mlp, digits_train, digits_test):
  model, variables = tiny_mlp
  params = variables["params"]
  small_tr = digits_train.subset(slice(0, 200))
  small_te = digits_test.subset(slice(0, 100))
  metric_fn = lj.make_metric_fn(model, {"train": small_tr, "test": small_te}, batch_size=128)
  d1, d2 = lj.random_directions(jax.random.key(1), params)
  return metric_fn, params, d1, d2


def test_2d_grid_equals_direct_evaluation_non_square(setup):
  metric_fn, params, d1, d2 = setup
  xs = np.linspace(-1.0, 1.0, 5)
  ys = np.array([-0.5, 0.0, 0.25])
  res = lj.surface_grid(metric_fn, params, (d1, d2), xs, ys, chunk_size=4, progress=False)
  assert set(res) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
  assert res["train_loss"].shape == (5, 3)  # [i, j] = (xs[i], ys[j]), not transposed
  for i, j in [(0, 0), (4, 0), (1, 2), (3, 1), (2, 1)]:
    direct = metric_fn(lj.plane_point(params, d1, d2, xs[i], ys[j]))
    for k in res:
      np.testing.assert_allclose(res[k][i, j], direct[k], rtol=2e-5, atol=1e-6, err_msg=k)
  # at (0, 0) the point is the centre itself
  np.testing.assert_allclose(res["test_loss"][2, 1], metric_fn(params)["test_loss"], rtol=1e-6)


def test_1d_and_modes_agree(setup):
  metric_fn, params, d1, _ = setup
  xs = np.linspace(-0.5, 0.5, 5)
  res = lj.surface_grid(metric_fn, params, d1, xs, progress=False)
  assert res["train_loss"].shape == (5,)
  for i in (0, 3):
    direct = metric_fn(lj.plane_point(params, d1, None, xs[i]))
    np.testing.assert_allclose(res["train_loss"][i], direct["train_loss"], rtol=2e-5)
  vm = lj.surface_grid(metric_fn, params, (d1,), xs, map_mode="vmap", chunk_size=3,
                       progress=False)
  mb = lj.surface_grid(metric_fn, params, (d1,), xs, map_mode="map", batch_size=2, chunk_size=4,
                       progress=False)
  for k in res:
    np.testing.assert_allclose(vm[k], res[k], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(mb[k], res[k], rtol=2e-5, atol=1e-6)


def test_plain_callable_scalar_metric_and_nonfinite_recorded():
  """A plain function returning a scalar; overflow far away is recorded, not fatal."""
  center = {"w": jnp.zeros(3)}
  d = {"w": jnp.ones(3)}

  def fn(p):
    return jnp.exp(jnp.sum(p["w"]) * 100.0)  # inf for large x

  xs = np.array([-1.0, 0.0, 1.0, 2.0])
  res = lj.surface_grid(fn, center, d, xs, progress=False)
  assert set(res) == {"loss"}
  assert res["loss"][1] == pytest.approx(1.0)
  assert np.isinf(res["loss"][2]) and np.isinf(res["loss"][3])


def test_no_recompilation_across_chunks(setup):
  """Several chunks with a padded last one compile once (chex.assert_max_traces)."""
  _, params, d1, d2 = setup

  # One trace for the metric keys (jax.eval_shape) and one for the compiled chunk function; a
  # recompilation for another chunk (e.g. an unpadded last chunk) would be a third.
  @chex.assert_max_traces(n=2)
  def traced(p):
    return {"loss": sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))}

  fn = Partial(traced)
  xs, ys = np.linspace(-1, 1, 4), np.linspace(-1, 1, 3)   # 12 points in chunks of 5: 5, 5, 2+pad
  res = lj.surface_grid(fn, params, (d1, d2), xs, ys, chunk_size=5, map_mode="vmap",
                        progress=False)
  assert res["loss"].shape == (4, 3)
  sq = lambda p: sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(p))
  np.testing.assert_allclose(res["loss"][3, 2], sq(lj.plane_point(params, d1, d2, 1.0, 1.0)),
                             rtol=1e-5)


@pytest.mark.reliability
def test_bad_grids_and_arguments(setup):
  metric_fn, params, d1, d2 = setup
  good = np.linspace(-1, 1, 3)
  cases = [
    (dict(xs=[], ys=good), "no points"),
    (dict(xs=[1.0, 0.0, -1.0], ys=good), "strictly increasing"),
    (dict(xs=good, ys=[0.0, np.inf]), "non-finite"),
    (dict(xs=good, ys=None), "need ys"),
    (dict(xs=np.zeros((2, 2)), ys=good), "1-D"),
  ]
  for kwargs, msg in cases:
    with pytest.raises(ValueError, match=msg):
      lj.surface_grid(metric_fn, params, (d1, d2), progress=False, **kwargs)
  with pytest.raises(ValueError, match="only one direction"):
    lj.surface_grid(metric_fn, params, (d1,), good, good, progress=False)
  with pytest.raises(ValueError, match="same pytree structure"):
    lj.surface_grid(metric_fn, params, ({"x": jnp.ones(2)},), good, progress=False)
  with pytest.raises(ValueError, match="map_mode"):
    lj.surface_grid(metric_fn, params, (d1,), good, map_mode="pmap", progress=False)
  with pytest.raises(ValueError, match="multiple of batch_size"):
    lj.surface_grid(metric_fn, params, (d1,), good, batch_size=2, chunk_size=3, progress=False)
