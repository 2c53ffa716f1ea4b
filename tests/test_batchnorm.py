"""recompute_batch_stats against statistics computed directly (Garipov et al.'s update_bn)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.adapters import batchnorm
from landscape_jax.adapters.data import normalize_images


class ConvBN(nn.Module):
  """Conv-BN-ReLU-Conv-BN-ReLU-Dropout-Dense: a tiny BatchNorm model for the tests."""

  momentum: float = 0.9
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x))
    x = nn.Conv(6, (3, 3), strides=2)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x.reshape((x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)


@pytest.fixture(scope="module")
def bn_model(digits_train):
  model = ConvBN()
  variables = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  return model, variables


def _per_batch_stats(params, bs, data, batch_size):
  """Batch statistics of each batch, read from flax's own update with momentum 0."""
  model0 = ConvBN(momentum=0.0)
  apply = jax.jit(lambda v, x: model0.apply(v, x, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": jax.random.key(1)}))
  out = []
  for start in range(0, len(data), batch_size):
    x = normalize_images(data.images[start:start + batch_size], data.mean, data.std)
    _, upd = apply({"params": params, "batch_stats": bs}, x)
    out.append((x.shape[0], upd["batch_stats"]))
  return out


def test_first_layer_equals_statistics_over_whole_split(bn_model, digits_train):
  model, variables = bn_model
  stats = lj.recompute_batch_stats(model, variables["params"], variables["batch_stats"],
                                   digits_train, batch_size=100)  # 13 full batches + 47
  x = normalize_images(digits_train.images, digits_train.mean, digits_train.std)
  h = nn.Conv(4, (3, 3)).apply({"params": variables["params"]["Conv_0"]}, x)
  h = np.asarray(h, np.float64)
  np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], h.mean((0, 1, 2)), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(stats["BatchNorm_0"]["var"], h.var((0, 1, 2)), rtol=1e-4)
  # the same as flax's own batch statistics of the whole split taken as one batch
  (_, whole), = _per_batch_stats(variables["params"], variables["batch_stats"], digits_train,
                                 len(digits_train))
  np.testing.assert_allclose(stats["BatchNorm_0"]["var"], whole["BatchNorm_0"]["var"], rtol=1e-4)


@pytest.mark.parametrize("variance", ["pooled", "reference"])
def test_deeper_layers_equal_cumulative_mean_of_batch_statistics(bn_model, digits_train,
                                                                 variance):
  model, variables = bn_model
  bsz = 256
  stats = lj.recompute_batch_stats(model, variables["params"], variables["batch_stats"],
                                   digits_train, batch_size=bsz, variance=variance)
  per = _per_batch_stats(variables["params"], variables["batch_stats"], digits_train, bsz)
  for layer, spatial in (("BatchNorm_0", 64), ("BatchNorm_1", 16)):
    n = np.array([b * spatial for b, _ in per], np.float64)[:, None]
    means = np.stack([np.asarray(s[layer]["mean"], np.float64) for _, s in per])
    varis = np.stack([np.asarray(s[layer]["var"], np.float64) for _, s in per])
    mu = (n * means).sum(0) / n.sum()
    if variance == "pooled":
      var = (n * (varis + (means - mu) ** 2)).sum(0) / n.sum()
    else:  # PyTorch's update_bn: cumulative mean of the unbiased per-batch variances
      var = (n * varis * n / (n - 1)).sum(0) / n.sum()
    np.testing.assert_allclose(stats[layer]["mean"], mu, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats[layer]["var"], var, rtol=1e-4, atol=1e-7)


def test_recompute_metric_fn_matches_metric_fn_with_recomputed_stats(bn_model, digits_train,
                                                                     digits_test):
  model, variables = bn_model
  params = variables["params"]
  stats = lj.recompute_batch_stats(model, params, variables["batch_stats"], digits_train,
                                   batch_size=128)
  ref = lj.make_metric_fn(model, {"test": digits_test}, batch_stats=stats)(params)
  fn = lj.make_recompute_metric_fn(model, {"test": digits_test}, train_data=digits_train,
                                   batch_stats=variables["batch_stats"], bn_batch_size=128)
  got = jax.jit(lambda f, p: f(p))(fn, params)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5)


def test_model_without_batchnorm_raises(tiny_mlp, digits_train):
  model, variables = tiny_mlp
  with pytest.raises(ValueError, match="No BatchNorm"):
    lj.recompute_batch_stats(model, variables["params"], {}, digits_train)
  with pytest.raises(ValueError, match="Unknown variance"):
    batchnorm.make_recompute_metric_fn(model, digits_train, train_data=digits_train,
                                       batch_stats={}, variance="biased")
