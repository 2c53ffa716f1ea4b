"""Bad input that used to give silent wrong numbers now raises a clear error (each test failed
before its fix); the table "Bad input and silent errors" of docs/reliability.md lists the cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax import hessian as hs

pytestmark = pytest.mark.reliability


# ------------------------------------------------------------------------- Hessian of a NaN loss


@pytest.fixture(scope="module")
def nan_loss_problem(digits_train):
  """A 5-class MLP on the 10 digit classes: the cross-entropy is NaN, its gradient finite."""
  model = lj.get_model("mlp_small", num_classes=5)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  loss_fn = lj.make_loss_fn(model, mean=digits_train.mean, std=digits_train.std)
  batch = (digits_train.images[:48], digits_train.labels[:48])
  assert np.isnan(loss_fn(params, batch))
  # the trap: the products are finite, so nothing downstream of them sees the NaN
  hv = hs.hvp(loss_fn, params, batch, params)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(hv))
  return loss_fn, params, batch


def test_hessian_routines_refuse_a_nan_loss(nan_loss_problem):
  loss_fn, params, batch = nan_loss_problem
  msg = r"the loss at these parameters is nan.*fewer classes than the labels"
  with pytest.raises(FloatingPointError, match="hessian_eigenvalues: " + msg):
    hs.hessian_eigenvalues(loss_fn, params, batch, num_steps=4)
  with pytest.raises(FloatingPointError, match="hessian_trace: " + msg):
    hs.hessian_trace(jax.random.key(0), loss_fn, params, batch, num_probes=2)
  with pytest.raises(FloatingPointError, match="spectral_density: " + msg):
    hs.spectral_density(jax.random.key(0), loss_fn, params, batch, num_steps=4)
  # over a whole split too: only the last (remainder) batch holds a label the model lacks
  images, labels = batch
  labels = np.where(np.arange(len(labels)) < 40, labels % 5, labels).astype(np.int32)
  labels[-1] = 9
  split = hs.make_batches((images, labels), batch_size=20)
  assert split.rest is not None
  with pytest.raises(FloatingPointError, match="hessian_eigenvalues: " + msg):
    hs.hessian_eigenvalues(loss_fn, params, split, num_steps=4)
  ok = hs.make_batches((images[:40], labels[:40]), batch_size=20)
  assert np.isfinite(hs.hessian_eigenvalues(loss_fn, params, ok, num_steps=4).top[0])


def test_curvature_map_is_nan_where_the_loss_is(nan_loss_problem):
  loss_fn, params, batch = nan_loss_problem
  metric_fn = hs.make_curvature_metric_fn(loss_fn, batch, num_steps=3)
  out = jax.jit(metric_fn)(params)
  assert all(np.isnan(float(v)) for v in out.values()), out
  images, labels = batch
  good = hs.make_curvature_metric_fn(loss_fn, (images, labels % 5), num_steps=3)
  assert all(np.isfinite(float(v)) for v in jax.jit(good)(params).values())


def test_non_finite_products_of_a_finite_loss():
  """sqrt(|w|) at w = 0: the loss is finite (0), its second derivative NaN."""
  def loss_fn(p, batch):
    return jnp.sum(jnp.sqrt(jnp.abs(p["w"]))) + 0.0 * jnp.sum(batch)

  params, batch = {"w": jnp.zeros(4)}, jnp.ones(2)
  with pytest.raises(FloatingPointError, match="products are not finite.*loss is finite"):
    hs.hessian_eigenvalues(loss_fn, params, batch, num_steps=2)
  with pytest.raises(FloatingPointError, match="hessian_trace: the Hessian-vector products"):
    hs.hessian_trace(jax.random.key(0), loss_fn, params, batch, num_probes=2)

