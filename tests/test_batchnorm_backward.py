"""models.normalization: the zoo's training-mode BatchNorm against flax's, in every order of
differentiation, and its backward pass against the transpose JAX derives from the formula."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.models import layers, normalization

X = 2.0 * jax.random.normal(jax.random.key(0), (6, 5, 4, 3)) + 0.3
CT = jax.random.normal(jax.random.key(1), X.shape)
PARAMS = {"scale": jnp.array([1.2, 0.8, -0.5]), "bias": jnp.array([0.1, -0.2, 0.3])}


def _rel(a, b) -> float:
  return max(float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(u)))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _loss(cls):
  """``sum(sin(relu(BN(x))) * CT)`` of a training-mode BatchNorm of class `cls`, and its new
  running statistics."""
  module = cls(use_running_average=False, momentum=0.9, epsilon=1e-5)
  stats = module.init(jax.random.key(0), X)["batch_stats"]

  def f(params, x):
    y, new = module.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(jax.nn.relu(y)) * CT), new["batch_stats"]
  return f


FLAX, OURS = _loss(nn.BatchNorm), _loss(normalization.BatchNorm)


def test_same_variables_values_and_running_statistics_as_flax():
  ref = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), X)
  ours = normalization.BatchNorm(use_running_average=False).init(jax.random.key(0), X)
  assert jax.tree.map(jnp.shape, ref) == jax.tree.map(jnp.shape, ours)
  assert isinstance(normalization.BatchNorm(use_running_average=False), nn.BatchNorm)
  (a, sa), (b, sb) = FLAX(PARAMS, X), OURS(PARAMS, X)
  assert float(a) == float(b)  # the forward pass is flax's, operation for operation
  for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
    np.testing.assert_array_equal(u, v)


def test_gradients_match_flax_in_every_order():
  def loss(f):
    return lambda p, x: f(p, x)[0]
  grad = lambda f: jax.grad(loss(f), (0, 1))
  assert _rel(grad(FLAX)(PARAMS, X), grad(OURS)(PARAMS, X)) < 1e-5
  tangents = (jax.tree.map(lambda a: 0.3 * jnp.ones_like(a), PARAMS), CT[::-1])
  # forward over reverse (the Hessian-vector product)
  hvp = lambda f: jax.jvp(grad(f), (PARAMS, X), tangents)[1]
  assert _rel(hvp(FLAX), hvp(OURS)) < 1e-5
  # reverse over reverse

  def rr(f):
    return jax.grad(lambda p: jnp.vdot(jax.grad(loss(f))(p, X)["scale"], jnp.arange(3.0)))(PARAMS)
  assert _rel(rr(FLAX), rr(OURS)) < 1e-5

  # forward over forward (z^T H z along the scale)
  def ff(f):
    g = lambda e: loss(f)({**PARAMS, "scale": PARAMS["scale"] + e}, X)
    return jax.jvp(lambda e: jax.jvp(g, (e,), (jnp.ones(3),))[1], (jnp.zeros(3),),
                   (jnp.ones(3),))[1]
  np.testing.assert_allclose(ff(OURS), ff(FLAX), rtol=1e-5)
  # vmap of the gradient, and vmap of a linearised function (the primitive's batching rule)
  xs = jnp.stack([X, 0.5 * X - 1.0])
  vg = lambda f: jax.vmap(lambda x: jax.grad(loss(f))(PARAMS, x))(xs)
  assert _rel(vg(FLAX), vg(OURS)) < 1e-5
  lin = lambda f: jax.linearize(lambda x: loss(f)(PARAMS, x), X)[1]
  dirs = jnp.stack([CT, jnp.cos(CT)])  # (x itself is a direction BatchNorm hardly moves along)
  np.testing.assert_allclose(jax.vmap(lin(OURS))(dirs), jax.vmap(lin(FLAX))(dirs), rtol=1e-5)


def test_backward_pass_is_the_transpose_of_the_tangent_map():
  """The hand-written backward (the primitive's transpose rule) against the transpose JAX
  derives from `batch_norm_tangent` written in jnp, and against a dense Jacobian."""
  x = X[:, :2, :2]
  mean, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
  rstd = jax.lax.rsqrt(var + 1e-5)
  scale = PARAMS["scale"]
  tangent = lambda dx, ds, db: normalization.batch_norm_tangent(x, mean, rstd, scale, dx,
                                                            ds, db)
  primals = (x, scale, scale)
  g = CT[:, :2, :2]
  ref = jax.linear_transpose(tangent, *primals)(g)
  ours = jax.vjp(lambda *a: jax.jvp(  # the transpose rule, reached through jax.vjp of T
    lambda xx: normalization.batch_norm_train(xx, scale, PARAMS["bias"], 1e-5)[0], (x,),
    (a[0],))[1], x)[1](g)
  # vjp of the x-tangent map alone: the x-part of the transpose
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-6)
  # dense: row i of `cols` is T(e_i), column i of the x-part of T, so T^T g = cols @ g
  n = x.size
  cols = jax.vmap(lambda e: tangent(e.reshape(x.shape), jnp.zeros(3), jnp.zeros(3)).ravel())(
    jnp.eye(n))
  np.testing.assert_allclose(cols @ g.ravel(), ref[0].ravel(), rtol=1e-4, atol=1e-5)
  # T's x-part is symmetric (its own transpose)
  np.testing.assert_allclose(cols, cols.T, rtol=1e-4, atol=1e-5)
  # scale and bias cotangents: sum(g xh) and sum(g)
  xh = (x - mean) * rstd
  np.testing.assert_allclose(ref[1], jnp.sum(g * xh, (0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(ref[2], jnp.sum(g, (0, 1, 2)), rtol=1e-5)
  _, vjp = jax.vjp(lambda xx, s, b: normalization.batch_norm_train(xx, s, b, 1e-5)[0], *primals)
  full = vjp(g)
  for u, v in zip(full, ref, strict=True):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


def test_other_configurations_run_flax_code():
  """Inference mode, a mask, an axis name or another dtype take flax's own path (same
  values as nn.BatchNorm)."""
  v = nn.BatchNorm(use_running_average=True).init(jax.random.key(0), X)
  a = nn.BatchNorm(use_running_average=True).apply(v, X)
  b = normalization.BatchNorm(use_running_average=True).apply(v, X)
  np.testing.assert_array_equal(a, b)
  mask = X > 0
  a = nn.BatchNorm(use_running_average=False).apply(v, X, mask=mask, mutable=True)[0]
  b = normalization.BatchNorm(use_running_average=False).apply(v, X, mask=mask, mutable=True)[0]
  np.testing.assert_array_equal(a, b)
  xb = X.astype(jnp.bfloat16)
  a = nn.BatchNorm(use_running_average=False, dtype=jnp.bfloat16).apply(v, xb, mutable=True)[0]
  b = normalization.BatchNorm(use_running_average=False, dtype=jnp.bfloat16).apply(
    v, xb, mutable=True)[0]
  assert b.dtype == jnp.bfloat16
  np.testing.assert_array_equal(a, b)
  # the call-time argument still works (and is not passed twice to flax)
  m = normalization.BatchNorm()
  np.testing.assert_array_equal(m.apply(v, X, use_running_average=True),
                                nn.BatchNorm().apply(v, X, use_running_average=True))


ZOO_WITH_BATCHNORM = ("resnet8", "resnet8_noshort", "preresnet20", "vgg9_bn", "wrn10_1",
                      "densenet_bc_10_4")


@pytest.mark.parametrize("name", ZOO_WITH_BATCHNORM)
def test_zoo_training_gradients_match_flax_batchnorm(name, monkeypatch):
  """Every zoo family with BatchNorm: the training-mode loss and its gradient with the zoo's
  BatchNorm against the same model built with flax's (small widths and 8x8 images)."""
  kwargs = {"width": 0.25} if name.startswith(("resnet", "preresnet")) else {}
  model = lj.get_model(name, num_classes=10, **kwargs)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  y = jnp.arange(4) % 10
  variables = model.init(jax.random.key(1), x)
  assert "batch_stats" in variables

  def loss(p):
    logits, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                            train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.sum(-jax.nn.log_softmax(logits) * jax.nn.one_hot(y, 10), -1))

  ours = jax.value_and_grad(loss)(variables["params"])
  monkeypatch.setattr(layers, "BatchNorm", nn.BatchNorm)
  ref = jax.value_and_grad(loss)(variables["params"])
  assert float(ours[0]) == pytest.approx(float(ref[0]), rel=1e-6)
  # against the largest gradient: a bias just before a BatchNorm has a zero gradient, which
  # both compute as rounding noise
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref[1]))
  for u, v in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(ours[1]), strict=True):
    assert float(jnp.max(jnp.abs(u - v))) <= 1e-5 * scale
