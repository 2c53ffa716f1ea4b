"""choose_batch_size times every candidate and returns the fastest; values do not depend on it."""

import jax
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.backends.cpu.autotune import choose_batch_size


def test_choose_batch_size(tiny_mlp, digits_test):
  model, variables = tiny_mlp
  made = {}

  def make(b):
    made[b] = lj.make_metric_fn(model, digits_test, batch_size=b)
    return made[b]

  best, times = choose_batch_size(make, variables["params"], candidates=(16, 64), repeats=1)
  assert set(times) == {16, 64} and best == min(times, key=times.get)
  vals = [jax.jit(lambda f, p: f(p))(made[b], variables["params"])["loss"] for b in (16, 64)]
  np.testing.assert_allclose(vals[0], vals[1], rtol=1e-5)


def test_choose_batch_size_plain_function(tiny_mlp):
  _, variables = tiny_mlp
  best, _ = choose_batch_size(lambda b: (lambda p: {"loss": b * 1.0}), variables["params"],
                              candidates=(8,), repeats=1)
  assert best == 8
  with pytest.raises(ValueError, match="positive"):
    choose_batch_size(lambda b: None, variables["params"], candidates=(0,))
