"""One device-resident split type (`core.splits.DeviceSplit`) for every consumer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.adapters import evaluation
from landscape_jax.adapters.losses import CROSS_ENTROPY


def _data(n=11):
  rng = np.random.default_rng(0)
  return rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 4, n).astype(np.int32)


def test_both_layouts_give_the_metrics_of_a_direct_evaluation():
  """Padded (device_split) and unpadded (make_batches, with a rest batch) splits of 11 examples
  give the mean cross-entropy and accuracy computed directly over the 11 examples."""
  x, y = _data()
  w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32)
  logits = np.asarray(x @ np.asarray(w), np.float64)
  ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(11), y]
  direct = {"loss": ce.mean(), "accuracy": (logits.argmax(1) == y).mean()}
  padded = lj.device_split(x, y, batch_size=4)
  assert padded.mask is not None and padded.rest is None and padded.num_examples == 12
  unpadded = lj.make_batches((x, y), batch_size=4)
  assert unpadded.mask is None and unpadded.num_examples == 11
  assert jax.tree.leaves(unpadded.rest)[0].shape[0] == 3
  for split in (padded, unpadded):
    got = evaluation.split_metrics(lambda inputs: inputs @ w, split, CROSS_ENTROPY)
    for k, v in direct.items():
      np.testing.assert_allclose(float(got[k]), v, rtol=1e-5)


def test_curvature_refuses_a_padded_split_and_the_core_refuses_a_dataset():
  x, y = _data()
  params = {"w": jnp.ones((3, 4))}

  def loss_fn(p, batch):
    return jnp.mean(lj.cross_entropy(batch[0] @ p["w"], batch[1]))

  with pytest.raises(ValueError, match="padded DeviceSplit"):
    lj.hvp(loss_fn, params, lj.device_split(x, y, batch_size=4), params)
  ds = lj.load("digits", "test").subset(slice(0, 8))
  with pytest.raises(TypeError, match=r"dataset\.arrays"):
    lj.make_batches(ds, batch_size=4)
  split = lj.make_batches(ds.arrays, batch_size=4)
  assert split.batches[0].dtype == np.uint8 and split.num_examples == 8
