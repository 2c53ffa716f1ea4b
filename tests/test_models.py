"""Model zoo: parameter counts against published numbers (via `jax.eval_shape`, no allocation),
forward passes on 8x8x1 and 32x32x3 inputs, BatchNorm state, name resolution and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax import trees


def count(name, shape=(1, 32, 32, 3), num_classes=10, **overrides):
  model = lj.get_model(name, num_classes=num_classes, **overrides)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape, jnp.float32))
  return trees.num_params(shapes["params"])


# Published counts: He et al. 2016 Table 6 (option-A ResNets: 0.27M/0.46M/0.66M/0.85M/1.7M).
@pytest.mark.parametrize("name,published", [
  ("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet44", 0.66e6), ("resnet56", 0.85e6),
  ("resnet110", 1.7e6),
])
def test_resnet_param_counts(name, published):
  assert count(name, shortcut="pad") == pytest.approx(published, rel=0.03)
  # 1x1-conv shortcuts (Li et al.'s code) add two small projections.
  assert 0 < count(name) - count(name, shortcut="pad") < 0.02 * published


def test_resnet20_exact_count():
  # Hand count: stem 3*3*3*16 + 2*16; per stage 2n convs + BN; projections 16*32 + 32*64 (+BN);
  # classifier 64*10 + 10.
  n = 3
  convs = 27 * 16 + sum(
    9 * cin * c + 9 * c * c + (2 * n - 2) * 9 * c * c
    for cin, c in ((16, 16), (16, 32), (32, 64)))
  bns = 2 * (16 + 2 * n * (16 + 32 + 64))
  proj = 16 * 32 + 32 * 64 + 2 * (32 + 64)
  assert count("resnet20") == convs + bns + proj + 64 * 10 + 10
  assert count("resnet20_noshort") == convs + bns + 64 * 10 + 10


def test_noshort_has_no_shortcut_params():
  model = lj.get_model("resnet8_noshort", num_classes=10)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  assert not any("shortcut" in p for p in trees.leaf_paths(shapes["params"]))


def test_width_multiplier():
  assert count("resnet20", width=2.0) == count("wrn20_2")
  assert count("resnet20", width=2.0) > 3.5 * count("resnet20")


def forward(model, shape, *, train):
  x = jax.random.normal(jax.random.key(1), shape)
  variables = model.init(jax.random.key(0), x)
  if train:
    logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return variables, logits, state
  return variables, model.apply(variables, x, train=False), None


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 32, 32, 3)])
@pytest.mark.parametrize("shortcut", ["conv", "pad", "none"])
def test_resnet_forward(shape, shortcut):
  model = lj.get_model("resnet8", num_classes=7, width=0.25, shortcut=shortcut)
  _, logits, _ = forward(model, shape, train=False)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_batchnorm_train_mode_updates_stats():
  model = lj.get_model("resnet8", num_classes=10, width=0.25)
  variables, logits, state = forward(model, (4, 8, 8, 1), train=True)
  assert logits.shape == (4, 10)
  old, new = variables["batch_stats"], state["batch_stats"]
  trees.check_same_structure(old, new)
  assert not np.allclose(old["bn1"]["mean"], new["bn1"]["mean"])


def test_unknown_name_lists_known():
  with pytest.raises(ValueError, match="resnet20"):
    lj.get_model("resnet21x", num_classes=10)
  with pytest.raises(ValueError, match="6n"):
    lj.get_model("resnet21", num_classes=10).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(TypeError, match="Bad overrides"):
    lj.get_model("resnet20", num_classes=10, nonsense=1)
