"""Interpolation, plane points, linear paths and barriers against direct computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import landscape_jax as lj


def _quad(p):
  """A toy metric: loss = ||w - 1||^2 + b^2, plus a second key."""
  loss = jnp.sum((p["w"] - 1.0) ** 2) + jnp.sum(p["b"] ** 2)
  return {"loss": loss, "w0": p["w"][0, 0]}


A = {"w": jnp.zeros((2, 3)), "b": jnp.ones(3)}
B = {"w": jnp.full((2, 3), 2.0), "b": -jnp.ones(3)}


def test_interpolate_and_plane_point():
  m = lj.interpolate(A, B, 0.25)
  np.testing.assert_allclose(m["w"], 0.5)
  np.testing.assert_allclose(m["b"], 0.5)
  p = lj.plane_point(A, B, A, 2.0, -3.0)
  np.testing.assert_allclose(p["w"], 0 + 2 * 2.0 - 3 * 0.0)
  np.testing.assert_allclose(p["b"], 1 + 2 * -1.0 - 3 * 1.0)
  p1 = lj.plane_point(A, B, None, 0.5)
  np.testing.assert_allclose(p1["w"], 1.0)
  half = lj.interpolate({"w": jnp.zeros(2, jnp.bfloat16)}, {"w": jnp.ones(2, jnp.bfloat16)}, 0.5)
  assert half["w"].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="same pytree structure"):
    lj.interpolate(A, {"w": B["w"]}, 0.5)


def test_linear_path_matches_direct_evaluation():
  alphas = np.linspace(-0.5, 1.5, 9)
  res = lj.linear_path(Partial(_quad), A, B, alphas, engine=lj.EngineOptions(progress=False))
  assert res["loss"].shape == (9,)
  for i, a in enumerate(alphas):
    np.testing.assert_allclose(res["loss"][i], _quad(lj.interpolate(A, B, a))["loss"], rtol=1e-5)
  i0, i1 = np.flatnonzero(alphas == 0.0)[0], np.flatnonzero(alphas == 1.0)[0]
  np.testing.assert_allclose(res["loss"][i0], _quad(A)["loss"], rtol=1e-6)
  np.testing.assert_allclose(res["loss"][i1], _quad(B)["loss"], rtol=1e-6)


def test_barrier_definitions():
  alphas = np.linspace(0, 1, 5)
  values = np.array([1.0, 2.0, 4.0, 3.5, 3.0])
  # Frankle: max - mean of endpoints = 4 - 2
  assert lj.barrier(values) == pytest.approx(2.0)
  # Entezari: max of values - linear interpolation of the endpoints: 4 - 2 at alpha 0.5
  lin = 1.0 + 2.0 * alphas
  assert lj.barrier(values, alphas, kind="entezari") == pytest.approx(np.max(values - lin))
  both = lj.barriers(values, alphas)
  assert both == {"frankle": pytest.approx(2.0), "entezari": pytest.approx(2.0), "num_alphas": 5}
  # values outside [0, 1] are ignored (Li et al.'s [-0.5, 1.5] plots)
  wide = np.linspace(-0.5, 1.5, 9)
  vals = np.array([100.0, 100, 0, 1, 2, 1, 0, 50, 50])
  assert lj.barrier(vals, wide) == pytest.approx(2.0)
  assert lj.barriers(vals, wide)["num_alphas"] == 5
  with pytest.raises(ValueError, match="alpha = 0 and alpha = 1"):
    lj.barrier([1.0, 2.0], [0.1, 0.9])
  with pytest.raises(ValueError, match="Unknown barrier kind"):
    lj.barrier(values, kind="max")
  # a straight line has zero Entezari barrier but may have a Frankle barrier of 0 too
  assert lj.barrier(lin, alphas, kind="entezari") == pytest.approx(0.0, abs=1e-12)


def test_linear_path_barrier_of_planted_bump():
  """A 1-D loss with a known bump: the barrier equals the bump height."""
  fn = Partial(lambda p: {"loss": jnp.sum(p["w"]) * (1 - jnp.sum(p["w"])) * 4 + 1.0})
  a, b = {"w": jnp.zeros(1)}, {"w": jnp.ones(1)}
  alphas = np.linspace(0, 1, 11)
  res = lj.linear_path(fn, a, b, alphas, engine=lj.EngineOptions(progress=False))
  assert lj.barrier(res["loss"], alphas) == pytest.approx(1.0, abs=1e-5)
  assert jax.tree.leaves(res)  # plain dict of arrays
