"""BatchNorm folding: the fused model computes the unfused model's logits and metrics."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.adapters import folding as fused


def _random_stats(key, variables):
  """Non-trivial BN statistics and affine parameters (init gives mean 0, var 1, scale 1)."""
  k1, k2, k3 = jax.random.split(key, 3)
  stats = jax.tree.map(lambda s: s, variables["batch_stats"])
  stats = jax.tree_util.tree_map_with_path(
    lambda p, s: (jax.random.uniform(k1, s.shape, minval=0.2, maxval=2.0)
                  if p[-1].key == "var" else 0.3 * jax.random.normal(k2, s.shape)), stats)
  params = jax.tree_util.tree_map_with_path(
    lambda p, w: (w + 0.2 * jax.random.normal(k3, w.shape)) if w.ndim == 1 else w,
    variables["params"])
  return {"params": params, "batch_stats": stats}


@pytest.fixture(scope="module")
def resnet8():
  model = lj.get_model("resnet8", num_classes=10)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  variables = _random_stats(jax.random.key(2), model.init(jax.random.key(0), x, train=False))
  return model, variables, x


def test_pairs_of_resnet(resnet8):
  model, variables, x = resnet8
  pairs = fused.batchnorm_pairs(model, variables, x)
  # stem + 3 stages x 1 block x 2 convs + 2 projection shortcuts
  assert len(pairs) == 9
  assert (("conv1",), ("bn1",)) in pairs
  assert (("layer2_0", "shortcut_conv"), ("layer2_0", "shortcut_bn")) in pairs


def test_fused_logits_match(resnet8):
  model, variables, x = resnet8
  apply_fn = fused.fuse_batchnorm(model, variables, x)
  ref = model.apply(variables, x, train=False)
  out = jax.jit(apply_fn)(variables, x)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  # Perturbed parameters (a grid point) are folded on the fly with the same statistics.
  moved = jax.tree.map(lambda w: w * 1.3 + 0.01, variables["params"])
  v2 = {"params": moved, "batch_stats": variables["batch_stats"]}
  np.testing.assert_allclose(apply_fn(v2, x), model.apply(v2, x, train=False), rtol=1e-4,
                             atol=1e-4)


def test_fold_with_own_bias_and_dense():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.Conv(5, (3, 3), use_bias=True)(x)
      x = nn.BatchNorm(use_running_average=not train, epsilon=1e-3)(x)
      x = nn.relu(x).reshape((x.shape[0], -1))
      x = nn.Dense(7)(x)
      x = nn.BatchNorm(use_running_average=not train, use_scale=False)(x)
      x = nn.BatchNorm(use_running_average=not train)(nn.relu(x))  # not foldable: relu between
      return nn.Dense(3)(x)

  model = Net()
  x = jax.random.normal(jax.random.key(1), (3, 4, 4, 2))
  variables = _random_stats(jax.random.key(3), model.init(jax.random.key(0), x))
  pairs = fused.batchnorm_pairs(model, variables, x)
  assert pairs == ((("Conv_0",), ("BatchNorm_0",)), (("Dense_0",), ("BatchNorm_1",)))
  apply_fn = fused.fuse_batchnorm(model, variables, x)
  np.testing.assert_allclose(apply_fn(variables, x), model.apply(variables, x), rtol=1e-5,
                             atol=1e-5)


def test_metric_fn_folds_batchnorm_by_default(resnet8, digits_test):
  """make_metric_fn's folded default equals unfolded inference, also inside vmap over points."""
  model, _, _ = resnet8
  data = digits_test.subset(slice(0, 100))
  x = jnp.zeros((2, 8, 8, 1))
  variables = _random_stats(jax.random.key(4), model.init(jax.random.key(0), x, train=False))
  ref = lj.make_metric_fn(model, data, batch_stats=variables["batch_stats"], batch_size=32,
                          fold_batchnorm=False)
  new = lj.make_metric_fn(model, data, batch_stats=variables["batch_stats"], batch_size=32)
  a = jax.jit(lambda f, p: f(p))(ref, variables["params"])
  b = jax.jit(lambda f, p: f(p))(new, variables["params"])
  np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
  np.testing.assert_allclose(b["accuracy"], a["accuracy"])
  # the folded program scales no activations: no multiply of a (batch, 8, 8, C) tensor left
  def activation_multiplies(f):
    text = jax.jit(lambda f, p: f(p)).lower(f, variables["params"]).as_text()
    return len(re.findall(r"stablehlo.multiply .*tensor<\d+x8x8x\d+xf32>", text))

  assert activation_multiplies(ref) > 0
  assert activation_multiplies(new) == 0
  stacked = jax.tree.map(lambda a: jnp.stack([a, 1.1 * a]), variables["params"])
  v = jax.jit(jax.vmap(lambda p: new(p)))(stacked)
  np.testing.assert_allclose(v["loss"][0], b["loss"], rtol=1e-5)
