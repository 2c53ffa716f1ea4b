"""evaluate / make_metric_fn against a plain numpy computation."""

import functools

import jax
import numpy as np
import pytest

import landscape_jax as lj


def _numpy_metrics(model, variables, ds):
  x = (ds.images.astype(np.float32) / 255.0 - ds.mean) / ds.std
  logits = np.asarray(model.apply(variables, x, train=False), np.float64)
  logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
  ce = logz - logits[np.arange(len(ds)), ds.labels]
  return ce.mean(), (logits.argmax(1) == ds.labels).mean()


@pytest.mark.parametrize("batch_size", [64, 97, 5000])
def test_evaluate_matches_numpy_for_any_batch_size(tiny_mlp, digits_test, batch_size):
  model, variables = tiny_mlp
  assert len(digits_test) % 64 != 0 and len(digits_test) % 97 != 0
  got = lj.evaluate(functools.partial(model.apply, train=False), variables, digits_test.images,
                    digits_test.labels, batch_size=batch_size, mean=digits_test.mean,
                    std=digits_test.std)
  loss, acc = _numpy_metrics(model, variables, digits_test)
  np.testing.assert_allclose(got["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], acc, rtol=1e-6)


def test_metric_fn_prefixes_and_jit_vmap(tiny_mlp, digits_train, digits_test):
  model, variables = tiny_mlp
  metric_fn = lj.make_metric_fn(model, {"train": digits_train, "test": digits_test},
                                batch_size=128)
  out = jax.jit(lambda f, p: f(p))(metric_fn, variables["params"])
  assert set(out) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
  loss, acc = _numpy_metrics(model, variables, digits_test)
  np.testing.assert_allclose(out["test_loss"], loss, rtol=1e-5)
  # vmap over two parameter sets gives each one's metrics.
  stacked = lj.trees.stack([variables["params"], jax.tree.map(lambda x: 0 * x,
                                                              variables["params"])])
  batched = jax.vmap(metric_fn)(stacked)
  np.testing.assert_allclose(batched["test_loss"][0], loss, rtol=1e-5)
  np.testing.assert_allclose(batched["test_loss"][1], np.log(10), rtol=1e-5)


def test_loss_fn_matches_metric(tiny_mlp, digits_test):
  model, variables = tiny_mlp
  loss_fn = lj.make_loss_fn(model, mean=digits_test.mean, std=digits_test.std)
  loss, _ = _numpy_metrics(model, variables, digits_test)
  got = jax.jit(loss_fn)(variables["params"], (digits_test.images, digits_test.labels))
  np.testing.assert_allclose(got, loss, rtol=1e-5)


def test_empty_split_is_an_error():
  with pytest.raises(ValueError, match="empty"):
    lj.device_split(np.zeros((0, 8, 8, 1), np.uint8), np.zeros((0,), np.int32), batch_size=4)
