"""BatchNorm folding is exact (landscape_jax.adapters.folding): for every family of the model zoo
and a user
model whose shortcut reads a pre-BatchNorm tensor, with random BatchNorm statistics, every
evaluation path that folds equals plain ``model.apply`` (loss and accuracy by hand from the
logits); BatchNorms whose layer output has other consumers are not folded, the safe ones still
are, and the build-time check refuses a wrong fold."""

import functools
import logging
import platform
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.adapters import folding as fused
from landscape_jax.adapters.data import normalize_images
from landscape_jax.core import hessian

RTOL = 1e-5
_ONEDNN = pytest.param("onednn", marks=pytest.mark.skipif(
  platform.system() != "Linux" or platform.machine() != "x86_64",
  reason="oneDNN wheels exist for Linux x86-64 only (there it must build, see test_onednn)"))


class PreBNShortcut(nn.Module):
  """A user block whose shortcut adds the conv output *before* its BatchNorm:
  ``z = conv(x); y = bn2(conv2(relu(bn(z)))) + z``. ``conv2 -> bn2`` can be folded, ``conv -> bn``
  cannot (folding would change the ``z`` that the shortcut adds)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    z = nn.Conv(6, (3, 3), use_bias=False, name="conv")(x)
    y = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(z))
    y = nn.Conv(6, (3, 3), name="conv2")(y)
    y = nn.BatchNorm(use_running_average=not train, name="bn2")(y) + z
    y = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn_out")(y))
    return nn.Dense(10, name="linear")(jnp.mean(y, (1, 2)))


# name -> (model factory, (folded pairs, skipped pairs)); the smallest configurations.
FAMILIES = {
  "resnet8": (lambda: lj.get_model("resnet8", num_classes=10), (9, 0)),
  "preresnet8": (lambda: lj.get_model("preresnet8", num_classes=10), (3, 1)),
  "wrn10_1": (lambda: lj.get_model("wrn10_1", num_classes=10), (3, 1)),
  "densenet_bc_10_4": (lambda: lj.get_model("densenet_bc_10_4", num_classes=10), (3, 1)),
  "vgg9_bn": (lambda: lj.get_model("vgg9_bn", num_classes=10, width=0.125), (8, 0)),
  "convfc": (lambda: lj.get_model("convfc", num_classes=10, width=0.125), (0, 0)),
  "mlp_small": (lambda: lj.get_model("mlp_small", num_classes=10), (0, 0)),
  "user_prebn_shortcut": (PreBNShortcut, (1, 1)),
}
BN_FAMILIES = [k for k, (_, (folded, skipped)) in FAMILIES.items() if folded + skipped]
# The bug: folding the stem convolution, whose output is also the first shortcut/concatenation.
UNSAFE = ["preresnet8", "wrn10_1", "densenet_bc_10_4", "user_prebn_shortcut"]


def random_variables(seed, shapes):
  """Random variables of the given shapes (NumPy, no compilation): He-normal kernels and
  non-trivial BatchNorm statistics and affine parameters (init would give mean 0, var 1, scale 1,
  bias 0, under which a wrong fold is invisible): var U(0.3, 2), mean N(0, 0.5^2), scale
  1 + N(0, 0.3^2), biases N(0, 0.3^2)."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = path[-1].key
    if path[0].key == "batch_stats":
      v = rng.uniform(0.3, 2.0, a.shape) if name == "var" else 0.5 * rng.standard_normal(a.shape)
    elif name == "scale":
      v = 1 + 0.3 * rng.standard_normal(a.shape)
    elif name == "kernel":
      v = rng.standard_normal(a.shape) * np.sqrt(2 / np.prod(a.shape[:-1]))
    else:
      v = 0.3 * rng.standard_normal(a.shape)
    return jnp.asarray(v, a.dtype)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def by_hand(model, variables, data):
  """Mean cross-entropy and accuracy from the logits of plain ``model.apply`` (float64)."""
  x = normalize_images(data.images, data.mean, data.std)
  logits = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, x),
                      np.float64)
  return loss_accuracy(logits, np.asarray(data.labels))


def log_softmax(logits):
  m = logits.max(-1, keepdims=True)
  return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def loss_accuracy(logits, labels):
  logp = log_softmax(logits)
  return (-np.mean(logp[np.arange(len(labels)), labels]),
          np.mean(np.argmax(logits, -1) == labels))


def assert_matches(out, ref):
  np.testing.assert_allclose(float(out["loss"]), ref[0], rtol=RTOL)
  np.testing.assert_allclose(float(out["accuracy"]), ref[1], rtol=0, atol=1e-7)


@functools.cache
def eval_data():
  """70 test examples (balanced batches of <= 32: three of 24, 2 padded) and 50 training
  examples to recompute statistics on."""
  return lj.load("digits", "test").subset(slice(0, 70)), lj.load("digits", "train").subset(
    slice(0, 50))


@functools.cache
def build_case(name):
  """(name, model, variables, batch_stats or None, by-hand loss/accuracy on the eval data), built
  once per process (a cache rather than a module fixture: pytest-xdist may interleave the
  families on a worker, which would rebuild a parametrized module fixture)."""
  model = FAMILIES[name][0]()
  variables = random_variables(0, jax.eval_shape(functools.partial(model.init, train=False),
                                                  jax.random.key(0), jnp.zeros((2, 8, 8, 1))))
  return (name, model, variables, variables.get("batch_stats"),
          by_hand(model, variables, eval_data()[0]))


@pytest.fixture
def data():
  return eval_data()


@pytest.fixture
def case(request):
  return build_case(request.param)


def families(names, *, slow_unless=()):
  """Indirect parameters of `case` (each family's tests share one worker, so its model, reference
  and folding check are built once); those not in `slow_unless` are marked slow if it is given."""
  return pytest.mark.parametrize("case", [
    pytest.param(n, marks=[pytest.mark.xdist_group(f"folding_{n}")]  # one worker per family
                 + ([pytest.mark.slow] if slow_unless and n not in slow_unless else []))
    for n in names], indirect=True)


def _call(metric_fn, params):
  return jax.jit(lambda f, p: f(p))(metric_fn, params)


@families(FAMILIES)
def test_plan_folds_only_sole_consumers(case):
  """Which pairs are folded: every pair of a post-activation ResNet / VGG; in the pre-activation
  nets, DenseNet and the user model not the one whose conv output also feeds a shortcut or a
  concatenation (with the reason)."""
  name, model, variables, _, _ = case
  plan = fused.folding_plan(model, variables, jnp.zeros((2, 8, 8, 1)))
  assert (len(plan.pairs), len(plan.skipped)) == FAMILIES[name][1], plan
  assert plan.check is None
  assert fused.batchnorm_pairs(model, variables, jnp.zeros((3, 8, 8, 1))) == plan.pairs
  expected_skip = {"preresnet8": ((("conv1",), ("layer1_0", "bn1")), "add"),
                   "wrn10_1": ((("conv1",), ("layer1_0", "bn1")), "add"),
                   "densenet_bc_10_4": ((("conv1",), ("dense1_0", "bn1")), "concatenate"),
                   "user_prebn_shortcut": (((("conv",), ("bn",))), "add")}
  if name in expected_skip:
    (lin, bn), op = expected_skip[name]
    assert plan.skipped[0][:2] == (lin, bn)
    assert op in plan.skipped[0][2]
  if name == "user_prebn_shortcut":
    assert plan.pairs == ((("conv2",), ("bn2",)),)


@families(FAMILIES, slow_unless=UNSAFE)
@pytest.mark.parametrize("conv", ["xla", _ONEDNN, "auto"])
def test_metric_fn_matches_apply(case, data, conv):
  """make_metric_fn (folding by default) == loss/accuracy by hand from model.apply's logits."""
  _, model, variables, stats, ref = case
  metric_fn = lj.make_metric_fn(model, data[0], batch_stats=stats, batch_size=32,
                                cpu_convolutions=conv)
  assert_matches(_call(metric_fn, variables["params"]), ref)


@families(BN_FAMILIES, slow_unless=UNSAFE)
def test_recompute_metric_fn_matches_apply(case, data):
  """make_recompute_metric_fn == model.apply with the statistics recomputed directly."""
  _, model, variables, stats, _ = case
  test, train = data
  metric_fn = lj.make_recompute_metric_fn(model, test, train_data=train, batch_stats=stats,
                                          batch_size=32, bn_batch_size=32)
  recomputed = lj.recompute_batch_stats(model, variables["params"], stats, train, batch_size=32)
  ref = by_hand(model, {"params": variables["params"], "batch_stats": recomputed}, test)
  assert_matches(_call(metric_fn, variables["params"]), ref)


@families(FAMILIES, slow_unless=UNSAFE)
def test_evaluate_ensemble_matches_apply(case, data):
  """evaluate_ensemble == -log of the mean softmax of the members' model.apply logits."""
  name, model, variables, stats, _ = case
  test = data[0]
  members = [variables, random_variables(1, variables)]
  out = lj.evaluate_ensemble(
    model, lj.stack_members([m["params"] for m in members]), test,
    batch_stats=None if stats is None else lj.stack_members(
      [m["batch_stats"] for m in members]), batch_size=32)
  x = normalize_images(test.images, test.mean, test.std)
  apply = jax.jit(functools.partial(model.apply, train=False))
  logits = np.stack([np.asarray(apply(m, x), np.float64) for m in members])
  mean_p = np.exp(log_softmax(logits)).mean(0)  # the ensemble's probabilities
  labels = np.asarray(test.labels)
  np.testing.assert_allclose(out["loss"], -np.mean(np.log(mean_p[np.arange(len(labels)), labels])),
                             rtol=RTOL)
  np.testing.assert_allclose(out["accuracy"], np.mean(mean_p.argmax(-1) == labels), atol=1e-7)
  for k, m in enumerate(members):
    np.testing.assert_allclose(out["member_loss"][k], by_hand(model, m, test)[0], rtol=RTOL)


@families(FAMILIES, slow_unless=UNSAFE)
def test_error_controlled_tol0_matches_apply(case, data):
  """make_error_controlled_metric_fn at tol=0 walks the whole split: exact, == model.apply."""
  _, model, variables, stats, ref = case
  metric_fn = lj.make_error_controlled_metric_fn(model, data[0], tol=0.0, batch_size=32,
                                                 batch_stats=stats, progress=False)
  out = _call(metric_fn, variables["params"])
  assert int(out["num_examples"]) == len(data[0])
  assert_matches(out, ref)


@families(BN_FAMILIES, slow_unless=("resnet8", "preresnet8"))
def test_loss_fn_folds_keeping_the_function_and_its_derivatives(case, data):
  """make_loss_fn (what the Hessian, sharpness and curvature code differentiates) folds the safe
  pairs by default: its value is the cross-entropy of model.apply's logits, its gradient and
  Hessian-vector product equal the unfolded loss's (fold_batchnorm=False), and where a pair is
  foldable its program scales fewer activations."""
  name, model, variables, stats, _ = case
  test = data[0].subset(slice(0, 16))
  batch = (test.images, test.labels)
  folded, plain = (lj.make_loss_fn(model, mean=test.mean, std=test.std, batch_stats=stats,
                                   fold_batchnorm=fold) for fold in (True, False))
  p = variables["params"]
  np.testing.assert_allclose(float(jax.jit(folded)(p, batch)),
                             by_hand(model, variables, test)[0], rtol=RTOL)
  v = random_variables(5, {"params": p})["params"]  # a random direction of the same shapes

  def derivatives(f):
    grad = jax.grad(lambda q: f(q, batch))
    return jax.jit(lambda q, t: (grad(q), jax.jvp(grad, (q,), (t,))[1]))(p, v)

  for ours, ref in zip(derivatives(folded), derivatives(plain), strict=True):
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(ref))
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(ours), strict=True):
      assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * scale

  def multiplies(f):
    text = jax.jit(f).lower(p, batch).as_text()
    return len(re.findall(r"stablehlo.multiply .*tensor<\d+x8x8x\d+xf32>", text))
  assert multiplies(folded) < multiplies(plain)


@families(["resnet8"])
def test_trace_differentiates_the_unfolded_twin(case, data):
  """A folded make_loss_fn names its unfolded loss as its forward-over-forward twin: the
  operator's z^T H z is then computed on it, equals the folded loss's own second directional
  derivative and vdot(z, H z) up to rounding, and its program has fewer convolutions (the folded
  weight W a(gamma) has a second derivative, 2 dW da: one more convolution per folded layer)."""
  _, model, variables, stats, _ = case
  test = data[0].subset(slice(0, 16))
  batch = (test.images, test.labels)
  folded = lj.make_loss_fn(model, mean=test.mean, std=test.std, batch_stats=stats)  # default
  twin = hessian.forward_over_forward_loss(folded)
  bare = jax.tree_util.Partial(folded)  # the same loss, naming no twin
  assert hessian.forward_over_forward_loss(bare) is bare and twin is not folded
  p = variables["params"]
  np.testing.assert_allclose(float(twin(p, batch)), float(folded(p, batch)), rtol=RTOL)
  ops = [hessian.flat_hvp_operator(f, p, batch, None) for f in (folded, bare)]
  z = jax.random.rademacher(jax.random.key(7), ops[0].x0.shape, jnp.float32)
  quad = [float(jax.jit(op.quadratic)(z)) for op in ops]
  ref = float(jnp.vdot(z, jax.jit(ops[0].matvec)(z)))
  np.testing.assert_allclose(quad, [ref, ref], rtol=1e-4)

  def convolutions(op):
    return jax.jit(op.quadratic).lower(z).as_text().count("stablehlo.convolution")
  assert convolutions(ops[0]) < convolutions(ops[1])


def _activation_multiplies(metric_fn, params) -> int:
  """Multiplies of a (batch, 8, 8, C) tensor in the lowered program: BatchNorm's scale."""
  text = jax.jit(lambda f, p: f(p)).lower(metric_fn, params).as_text()
  return len(re.findall(r"stablehlo.multiply .*tensor<\d+x8x8x\d+xf32>", text))


@pytest.mark.xdist_group("folding_user_prebn_shortcut")
def test_folding_still_happens_where_safe():
  """The safe pair is folded: the user model's folded program scales one activation fewer than
  the unfolded one (bn2 is folded into conv2; bn and bn_out are not). ResNet-8 keeps no BatchNorm
  multiply at all: test_fused.test_metric_fn_folds_batchnorm_by_default."""
  _, model, variables, stats, _ = build_case("user_prebn_shortcut")
  data = eval_data()[0].subset(slice(0, 16))
  unfolded, folded = (_activation_multiplies(lj.make_metric_fn(
    model, data, batch_stats=stats, fold_batchnorm=fold, cpu_convolutions="xla"),
    variables["params"]) for fold in (False, True))
  assert 0 < folded < unfolded


@pytest.fixture
def fresh_plans(monkeypatch):
  """Empty folding caches during a test that changes how plans are made (restored after it)."""
  monkeypatch.setattr(fused, "_plans", {})
  monkeypatch.setattr(fused, "_structures", {})


@pytest.mark.xdist_group("folding_preresnet8")
def test_check_refuses_a_wrong_fold(monkeypatch, caplog, fresh_plans):
  """If the structural analysis were wrong (simulated: it also folds the skipped pairs, as the
  old code did), the build-time check on random statistics refuses to fold, logs why, and the
  metric equals unfolded inference."""
  original = fused.trace_structure

  def defective(model, spec):
    pairs, epsilons, skipped, rtol = original(model, spec)
    return (pairs + tuple((lin, bn) for lin, bn, _ in skipped),
            epsilons + tuple((bn, 1e-5) for _, bn, _ in skipped), (), rtol)

  monkeypatch.setattr(fused, "trace_structure", defective)
  _, model, variables, stats, ref = build_case("preresnet8")
  data = eval_data()[0]
  x = jnp.zeros((2, 8, 8, 1))
  with caplog.at_level(logging.WARNING, logger="landscape_jax.adapters.folding"):
    plan = fused.folding_plan(model, variables, x)
    assert len(plan.pairs) == 4 and plan.check is not None
    assert "differ from the unfolded ones" in plan.check
    assert any("BatchNorm folding refused for PreResNet" in r.getMessage() for r in caplog.records)
    assert fused.fuse_batchnorm(model, variables, x).func == model.apply  # plain inference
    metric_fn = lj.make_metric_fn(model, data, batch_stats=stats, batch_size=32,
                                  cpu_convolutions="xla")
    assert_matches(_call(metric_fn, variables["params"]), ref)
  # without the check the defective plan would have been used: the check is what caught it
  wrong = jax.jit(fused.fuse_batchnorm(model, variables, x, check=False))
  images = normalize_images(data.images[:8], data.mean, data.std)
  assert not np.allclose(wrong(variables, images), model.apply(variables, images, train=False),
                         rtol=1e-3)


@pytest.mark.xdist_group("folding_user_prebn_shortcut")
def test_check_runs_once_per_model_and_shape(monkeypatch, fresh_plans):
  """The build-time check is cached: two metric functions, traced under jit and under vmap over
  points, one check."""
  calls = []
  original = fused.numerical_check
  monkeypatch.setattr(fused, "numerical_check",
                      lambda *a, **k: calls.append(1) or original(*a, **k))
  _, model, variables, stats, _ = build_case("user_prebn_shortcut")
  data = eval_data()[0].subset(slice(0, 16))
  stacked = jax.tree.map(lambda a: jnp.stack([a, 1.1 * a]), variables["params"])
  for _ in range(2):
    metric_fn = lj.make_metric_fn(model, data, batch_stats=stats, cpu_convolutions="xla")
    jax.jit(lambda f, p: f(p)).lower(metric_fn, variables["params"])
    jax.jit(jax.vmap(lambda p, f=metric_fn: f(p))).lower(stacked)
  assert len(calls) == 1


def test_bfloat16_model_still_folds():
  """A bfloat16 computation passes the check (its tolerance follows the computation's
  precision), so it keeps the folding."""
  model = lj.get_model("resnet8", num_classes=10, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 8, 8, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  plan = fused.folding_plan(model, variables, x)
  assert len(plan.pairs) == 9 and plan.check is None
