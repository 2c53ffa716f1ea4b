"""Model zoo: parameter counts against published numbers (via `jax.eval_shape`, no allocation),
hand-computed layer shapes, forward passes on 8x8x1 and 32x32x3 inputs, BatchNorm state, block
semantics, name resolution and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.core import trees
from landscape_jax.models import layers
from landscape_jax.models.resnet import BasicBlock


def shapes_of(name, shape=(1, 32, 32, 3), num_classes=10, **overrides):
  model = lj.get_model(name, num_classes=num_classes, **overrides)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape, jnp.float32))


def count(name, shape=(1, 32, 32, 3), num_classes=10, **overrides):
  return trees.num_params(shapes_of(name, shape, num_classes, **overrides)["params"])


# Published counts. He et al. 2016 (Table 6, option-A shortcuts): ResNet-20/32/44/56/110 have
# 0.27M/0.46M/0.66M/0.85M/1.7M; He et al. 2016b: PreResNet-164 1.7M; Zagoruyko & Komodakis 2016:
# WRN-28-10 36.5M, WRN-16-4 2.7M; Huang et al. 2017: DenseNet-BC-100-12 0.8M.
@pytest.mark.parametrize("name,published", [
  ("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet44", 0.66e6), ("resnet56", 0.85e6),
  ("resnet110", 1.7e6),
])
def test_resnet_param_counts(name, published):
  assert count(name, shortcut="pad") == pytest.approx(published, rel=0.03)
  # 1x1-conv shortcuts (Li et al.'s code) add two small projections.
  assert 0 < count(name) - count(name, shortcut="pad") < 0.02 * published


@pytest.mark.parametrize("name,published", [
  ("preresnet164", 1.7e6), ("wrn28_10", 36.5e6), ("wrn16_4", 2.7e6),
  ("densenet_bc_100_12", 0.8e6),
])
def test_published_param_counts(name, published):
  assert count(name) == pytest.approx(published, rel=0.04)


def test_resnet20_exact_count():
  # Stem 3*3*3*16; per stage 2n 3x3 convs; BN scale+bias; projections 16*32 + 32*64 (+BN);
  # classifier 64*10 + 10.
  n = 3
  convs = 27 * 16 + sum(9 * cin * c + (2 * n - 1) * 9 * c * c
                        for cin, c in ((16, 16), (16, 32), (32, 64)))
  bns = 2 * (16 + 2 * n * (16 + 32 + 64))
  proj = 16 * 32 + 32 * 64 + 2 * (32 + 64)
  assert count("resnet20") == convs + bns + proj + 64 * 10 + 10
  assert count("resnet20_noshort") == convs + bns + 64 * 10 + 10


def test_vgg16_and_convfc_exact_counts():
  widths = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  convs = sum(9 * a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
  head = 512 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
  assert count("vgg16") == convs + head
  assert count("vgg16_bn") == convs + head + 2 * sum(widths[1:])
  # ConvFC: 5x5 convs, then 1152 = 3*3*128 features at 32x32 as in Garipov et al.'s code.
  convfc = (25 * 3 * 32 + 32 + 25 * 32 * 64 + 64 + 25 * 64 * 128 + 128
            + 1152 * 1000 + 1000 + 1000 * 1000 + 1000 + 1000 * 10 + 10)
  assert count("convfc") == convfc


@pytest.mark.parametrize("name,shape,fc_in", [
  ("vgg9_bn", (1, 32, 32, 3), 4 * 4 * 256),  # Li et al.: n_maps * 4 * 4 at 32x32
  ("vgg9_bn", (1, 8, 8, 1), 256),
  ("vgg9", (1, 28, 28, 1), 4 * 4 * 256),  # ceil mode: 28 -> 14 -> 7 -> 4
  ("vgg16", (1, 8, 8, 1), 512),  # two pools skipped at 1x1
  ("convfc", (1, 32, 32, 3), 1152),
  ("convfc", (1, 8, 8, 1), 128),
])
def test_flattened_feature_sizes(name, shape, fc_in):
  assert shapes_of(name, shape)["params"]["fc_0"]["kernel"].shape[0] == fc_in


def test_densenet_channel_bookkeeping():
  # DenseNet-BC-100-12: 24 + 16*12 = 216 -> 108; 108 + 192 = 300 -> 150; 150 + 192 = 342.
  params = shapes_of("densenet_bc_40_12", (1, 8, 8, 1))["params"]  # n = 6
  c = 24 + 6 * 12
  assert params["trans1_conv"]["kernel"].shape == (1, 1, c, c // 2)
  c = c // 2 + 6 * 12
  assert params["trans2_conv"]["kernel"].shape == (1, 1, c, c // 2)
  assert params["bn"]["scale"].shape == (c // 2 + 6 * 12,)
  assert "trans3_conv" not in params


def test_preresnet_structure():
  params = shapes_of("preresnet164", (1, 8, 8, 1))["params"]
  assert params["layer1_0"]["conv3"]["kernel"].shape == (1, 1, 16, 64)
  assert params["layer1_0"]["downsample"]["kernel"].shape == (1, 1, 16, 64)
  assert "downsample" not in params["layer1_1"]
  assert params["layer3_17"]["conv3"]["kernel"].shape == (1, 1, 64, 256)
  assert "layer3_18" not in params
  basic = shapes_of("preresnet20", (1, 8, 8, 1))["params"]
  assert "downsample" not in basic["layer1_0"] and "conv3" not in basic["layer1_0"]


def test_noshort_has_no_shortcut_params():
  params = shapes_of("resnet8_noshort", (1, 8, 8, 1))["params"]
  assert not any("shortcut" in p for p in trees.leaf_paths(params))


def test_width_and_wrn_names():
  assert count("resnet20", width=2.0) == count("wrn20_2")  # Li et al.'s WRN: widened ResNet
  assert count("wrn56_2") == count("resnet56", width=2.0)
  assert count("resnet20", width=2.0) > 3.5 * count("resnet20")
  assert count("wrn28_10") == count("wrn28_2", widen_factor=10)  # Zagoruyko WRN, depth 6n + 4


def abstract_forward(model, shape, *, train):
  """Shapes of (variables, logits, updated state) by tracing only (no compilation)."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  if train:
    logits, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
    return variables, logits, state
  return variables, jax.eval_shape(lambda v, x: model.apply(v, x), variables, x), None


TINY = {  # one small member of every family
  "mlp_small": {},
  "resnet8": {"width": 0.25},
  "resnet8_noshort": {"width": 0.25},
  "preresnet20": {"width": 0.25},
  "preresnet11": {"width": 0.25, "bottleneck": True},
  "vgg9_bn": {"width": 0.0625},
  "vgg16": {"width": 0.0625},
  "wrn10_1": {},
  "densenet_bc_10_4": {},
  "convfc": {"width": 0.0625},
}


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 32, 32, 3)])
@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_shapes_every_family(name, shape):
  model = lj.get_model(name, num_classes=7, **TINY[name])
  has_bn = name not in ("mlp_small", "convfc", "vgg16")
  variables, logits, state = abstract_forward(model, shape, train=has_bn)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert ("batch_stats" in variables) == has_bn
  if has_bn:
    trees.check_same_structure(variables["batch_stats"], state["batch_stats"])


@pytest.mark.parametrize("name", sorted(set(TINY) - {"mlp_small"}))
def test_bfloat16_compute_float32_params_and_logits(name):
  model = lj.get_model(name, num_classes=3, dtype=jnp.bfloat16, **TINY[name])
  variables, logits, _ = abstract_forward(model, (2, 8, 8, 1), train=False)
  assert logits.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


@pytest.mark.parametrize("name", ["resnet8", "vgg9_bn"])
def test_forward_numbers(name):
  """Real forward passes (one compilation each): finite logits, train/eval modes differ, and the
  stem's BN running mean moves by PyTorch's momentum 0.1 towards an independently computed mean."""
  model = lj.get_model(name, num_classes=5, width=0.25)
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))

  @jax.jit
  def run(x):
    variables = model.init(jax.random.key(0), x)
    train_logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return variables, state, train_logits, model.apply(variables, x, train=False)

  variables, state, train_logits, eval_logits = run(x)
  assert train_logits.shape == eval_logits.shape == (3, 5)
  assert np.all(np.isfinite(train_logits)) and np.all(np.isfinite(eval_logits))
  assert not np.allclose(train_logits, eval_logits)  # batch vs running statistics
  first_conv, first_bn = ("conv1", "bn1") if name == "resnet8" else ("conv_0", "bn_0")
  conv = variables["params"][first_conv]
  stem = jax.lax.conv_general_dilated(  # 3x3, padding 1 as PyTorch
    x, conv["kernel"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  stem = np.asarray(stem) + (np.asarray(conv["bias"]) if "bias" in conv else 0.0)
  expected = 0.9 * 0.0 + 0.1 * stem.mean(axis=(0, 1, 2))
  np.testing.assert_allclose(state["batch_stats"][first_bn]["mean"], expected, rtol=1e-4,
                             atol=1e-6)


@pytest.mark.parametrize("shortcut", ["pad", "conv", "none"])
def test_basic_block_residual_path(shortcut):
  """With zero 3x3 kernels the block reduces to relu(shortcut(x)) (eval mode, fresh BN)."""
  block = BasicBlock(8, strides=2, shortcut=shortcut)
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  variables = block.init(jax.random.key(1), x)
  params = dict(variables["params"])
  for k in ("conv1", "conv2"):
    params[k] = {"kernel": jnp.zeros_like(params[k]["kernel"])}
  out = np.asarray(block.apply({**variables, "params": params}, x))
  xs = np.asarray(x)[:, ::2, ::2, :]
  if shortcut == "pad":
    expected = np.maximum(np.pad(xs, ((0, 0), (0, 0), (0, 0), (2, 2))), 0)
  elif shortcut == "conv":
    w = np.asarray(params["shortcut_conv"]["kernel"])[0, 0]  # (4, 8)
    expected = np.maximum(xs @ w / np.sqrt(1 + 1e-5), 0)
  else:
    expected = np.zeros_like(out)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_dropout_needs_rng_only_when_enabled():
  model = lj.models.VGG(stages=((4,),), hidden=(16,), dropout_rate=0.5, num_classes=3)
  x = jnp.ones((2, 8, 8, 1))
  variables = model.init(jax.random.key(0), x)
  a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, b)
  np.testing.assert_allclose(model.apply(variables, x), model.apply(variables, x))


def reference_max_pool(x, window, stride, ceil_mode):
  n, h, w, c = x.shape
  size = lambda s: (-(-(s - window) // stride) if ceil_mode else (s - window) // stride) + 1
  out = np.empty((n, size(h), size(w), c), x.dtype)
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      rows, cols = slice(i * stride, i * stride + window), slice(j * stride, j * stride + window)
      out[:, i, j] = x[:, rows, cols].max((1, 2))
  return out


@pytest.mark.parametrize("size,ceil_mode", [(7, True), (8, True), (7, False), (15, False)])
def test_max_pool_matches_pytorch_semantics(size, ceil_mode):
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  for window, stride in ((2, 2), (3, 2)):
    if window == 3 and ceil_mode:
      continue
    out = layers.max_pool(jnp.asarray(x), window=window, stride=stride, ceil_mode=ceil_mode)
    np.testing.assert_allclose(out, reference_max_pool(x, window, stride, ceil_mode))
  one = jnp.ones((1, 1, 1, 2))
  assert layers.max_pool(one, ceil_mode=ceil_mode).shape == (1, 1, 1, 2)


def test_unknown_names_and_bad_depths():
  with pytest.raises(ValueError, match="resnet20.*vgg16"):
    lj.get_model("resnet21x", num_classes=10)
  x = jnp.zeros((1, 8, 8, 1))
  for name in ("resnet21", "wrn27_2", "preresnet50", "densenet_bc_99_12"):
    with pytest.raises(ValueError, match="6n|9n"):
      jax.eval_shape(lj.get_model(name, num_classes=10).init, jax.random.key(0), x)
  with pytest.raises(TypeError, match="Bad overrides"):
    lj.get_model("resnet20", num_classes=10, nonsense=1)
  with pytest.raises(ValueError, match="shortcut"):
    jax.eval_shape(lj.get_model("resnet8", num_classes=10, shortcut="A").init,
                   jax.random.key(0), x)


@pytest.mark.slow
def test_every_registered_model_accepts_8x8_inputs():
  from landscape_jax.models import LANGUAGE_MODELS

  for name in sorted(set(lj.model_names()) - set(LANGUAGE_MODELS)):  # token models: test_gpt.py
    shapes = jax.eval_shape(lj.get_model(name, num_classes=10).apply,
                            shapes_of(name, (2, 8, 8, 1)), jnp.zeros((2, 8, 8, 1)))
    assert shapes.shape == (2, 10), name
