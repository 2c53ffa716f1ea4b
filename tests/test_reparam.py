"""Every sharpness measure before and after function-preserving reparametrisations of zoo models.

Adaptive measures (eta = 0), the Fisher-Rao norm and, for whole-layer rescalings, the filter-
normalised rise are unchanged (to a relative 1e-3); standard measures move (by more than 5%,
fifty times that tolerance). docs/sharpness.md
has the table these tests check.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.core import reparam

RTOL = 1e-3
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def batch(digits_train):
  return (jnp.asarray(digits_train.images[:32]), jnp.asarray(digits_train.labels[:32]))


def _model(name, digits_train, **kw):
  model = lj.get_model(name, num_classes=10, **kw)
  variables = model.init(jax.random.key(1), digits_train.images[:2].astype("float32"))
  return model, variables


def _loss_fn(model, digits_train, variables):
  return lj.make_loss_fn(model, mean=digits_train.mean, std=digits_train.std,
                         batch_stats=variables.get("batch_stats"), train=False)


MEASURES = {
  "worst l2 adaptive": lambda f, p, b: lj.worst_case_sharpness(
    KEY, f, p, b, rho=0.05, norm="l2", adaptive=True,
    ascent=lj.Ascent(restarts=1, steps=8, patience=8)),
  "worst linf adaptive": lambda f, p, b: lj.worst_case_sharpness(
    KEY, f, p, b, rho=0.01, norm="linf", adaptive=True,
    ascent=lj.Ascent(restarts=1, steps=8, patience=8)),
  "average adaptive": lambda f, p, b: lj.average_sharpness(KEY, f, p, b, rho=0.05,
                                                           adaptive=True, num_samples=8),
  "hessian top adaptive": lambda f, p, b: lj.hessian_sharpness(f, p, b, adaptive=True,
                                                               num_steps=8),
  "fisher-rao": lambda f, p, b: lj.fisher_rao_norm(f, p, b),
  "worst l2 standard": lambda f, p, b: lj.worst_case_sharpness(
    KEY, f, p, b, rho=0.05, norm="l2", ascent=lj.Ascent(restarts=1, steps=8, patience=8)),
  "average standard": lambda f, p, b: lj.average_sharpness(KEY, f, p, b, rho=0.05,
                                                           num_samples=8),
  "hessian top standard": lambda f, p, b: lj.hessian_sharpness(f, p, b, num_steps=8),
}
# the conv families check a subset (compilation dominates the test time)
CONV = ("worst l2 adaptive", "average adaptive", "fisher-rao", "worst l2 standard")


def _measures(loss_fn, params, batch, names=tuple(MEASURES)):
  """name -> value (restarts=1: the deterministic ascent from u = 0)."""
  return {k: MEASURES[k](loss_fn, params, batch).value for k in names}


def _outputs(model, variables, batch, digits_train):
  x = (batch[0].astype(jnp.float32) - digits_train.mean) / digits_train.std
  return np.asarray(model.apply(variables, x, train=False))


def _check(before, after, moved=("worst l2 standard", "average standard",
                                 "hessian top standard")):
  for k in before:
    if k in moved:
      assert abs(after[k] - before[k]) > 0.05 * abs(before[k]), (k, before[k], after[k])
    else:
      np.testing.assert_allclose(after[k], before[k], rtol=RTOL, atol=1e-7, err_msg=k)


def test_relu_rescaling_mlp_per_unit(digits_train, batch):
  model, variables = _model("mlp", digits_train, features=(8, 6))
  params = variables["params"]
  scaled = reparam.random_rescaling(KEY, params, ["Dense_0", "Dense_1", "Dense_2"], low=0.2,
                                    high=5.0)
  new = {"params": scaled}
  np.testing.assert_allclose(_outputs(model, new, batch, digits_train),
                             _outputs(model, variables, batch, digits_train),
                             rtol=1e-4, atol=1e-5)
  loss_fn = _loss_fn(model, digits_train, variables)
  before, after = _measures(loss_fn, params, batch), _measures(loss_fn, scaled, batch)
  _check(before, after)
  # Jiang et al.'s sigma search, adaptive: the same sigma
  kw = dict(target=0.05, adaptive=True, num_samples=8,
            bracket=lj.Bracket(num_iters=6, lower=1e-3, upper=10.0))
  s0 = lj.sigma_search(KEY, loss_fn, params, batch, **kw)
  s1 = lj.sigma_search(KEY, loss_fn, scaled, batch, **kw)
  np.testing.assert_allclose(s1.value, s0.value, rtol=RTOL)


@pytest.mark.slow
def test_relu_rescaling_convnets_layer_wise_keeps_the_filter_rise(digits_train, batch):
  model, variables = _model("convfc", digits_train, width=0.1)
  params = variables["params"]
  scaled = reparam.rescale_relu_layers(params, first="conv_2", second="fc_0", alpha=0.1)
  scaled = reparam.rescale_relu_layers(scaled, first="fc_0", second="fc_1",
                                       alpha=np.linspace(0.3, 3.0, 100))
  new = {"params": scaled}
  np.testing.assert_allclose(_outputs(model, new, batch, digits_train),
                             _outputs(model, variables, batch, digits_train),
                             rtol=1e-4, atol=1e-5)
  loss_fn = _loss_fn(model, digits_train, variables)
  _check(_measures(loss_fn, params, batch, CONV), _measures(loss_fn, scaled, batch, CONV))
  # whole-layer rescaling only: filter normalisation cancels it for the same directions
  only_layer = reparam.rescale_relu_layers(params, first="conv_1", second="conv_2", alpha=4.0)
  r0 = lj.filter_normalized_rise(KEY, loss_fn, params, batch, num_directions=2)
  r1 = lj.filter_normalized_rise(KEY, loss_fn, only_layer, batch, num_directions=2)
  np.testing.assert_allclose(r1.samples, r0.samples, rtol=RTOL, atol=1e-7)


@pytest.mark.slow
def test_rescaling_before_batchnorm_resnet(digits_train, batch):
  model, variables = _model("resnet8", digits_train, width=0.25)
  stats = lj.recompute_batch_stats(model, variables["params"], variables["batch_stats"],
                                   digits_train.subset(slice(0, 128)), batch_size=64)
  variables = {"params": variables["params"], "batch_stats": stats}
  alpha = np.array([1.5, 2.0, 3.0, 4.0])  # up: BatchNorm's epsilon matters less
  new = reparam.rescale_before_batchnorm(variables, layer="layer1_0/conv1",
                                         batch_norm="layer1_0/bn1", alpha=alpha)
  new = reparam.rescale_before_batchnorm(new, layer="layer2_0/conv1", batch_norm="layer2_0/bn1",
                                         alpha=5.0)
  ref = _outputs(model, variables, batch, digits_train)  # logits of a few hundred at init
  np.testing.assert_allclose(_outputs(model, new, batch, digits_train), ref, rtol=1e-3,
                             atol=1e-5 * np.abs(ref).max())
  before = _measures(_loss_fn(model, digits_train, variables), variables["params"], batch, CONV)
  after = _measures(_loss_fn(model, digits_train, new), new["params"], batch, CONV)
  _check(before, after)


def test_permutation_mlp(digits_train, batch):
  model, variables = _model("mlp", digits_train, features=(8, 6))
  spec = lj.spec_for("mlp", variables, num_classes=10, input_shape=digits_train.image_shape,
                     features=(8, 6))
  perm = lj.random_permutation(jax.random.key(3), spec)
  new = lj.apply_permutation(spec, perm, variables)
  loss_fn = _loss_fn(model, digits_train, variables)
  names = ("worst l2 adaptive", "worst linf adaptive", "fisher-rao", "worst l2 standard")
  before = _measures(loss_fn, variables["params"], batch, names)
  after = _measures(loss_fn, new["params"], batch, names)
  # the deterministic measures are unchanged (the sampled ones only in distribution)
  for k in before:
    np.testing.assert_allclose(after[k], before[k], rtol=RTOL, atol=1e-7, err_msg=k)


def test_bad_rescalings_are_refused(digits_train):
  _, variables = _model("mlp", digits_train, features=(8, 6))
  with pytest.raises(ValueError, match="positive"):
    reparam.rescale_relu_layers(variables["params"], first="Dense_0", second="Dense_1",
                                alpha=-1.0)
  with pytest.raises(ValueError, match="names no layer"):
    reparam.rescale_relu_layers(variables["params"], first="conv_0", second="Dense_1", alpha=2.0)
  with pytest.raises(ValueError, match="output units"):
    reparam.rescale_relu_layers(variables["params"], first="Dense_0", second="Dense_1",
                                alpha=np.ones(3))
