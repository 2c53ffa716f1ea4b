"""Any model, any data: plain apply functions, NNX and Equinox models, (inputs, targets) splits and
the losses of `adapters.losses`, each checked against an independent computation (numpy
formulas, the model called directly, a dense Hessian, a planted permutation)."""

import functools
import json
import os
import runpy
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import landscape_jax as lj
from landscape_jax.adapters import batchnorm, evaluation, frameworks

N_TRAIN = 300


@pytest.fixture(scope="module")
def train(digits_train):
  return digits_train.subset(slice(0, N_TRAIN))


@pytest.fixture(scope="module")
def test(digits_test):
  return digits_test.subset(slice(0, 200))


def _x(ds):
  return np.asarray(lj.data.normalize_images(ds.images, ds.mean, ds.std))


def _ce_acc(logits, labels):
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  rows = np.arange(len(labels))
  return -logp[rows, labels].mean(), (logits.argmax(-1) == labels).mean()


def _close(a, b, rtol=2e-5, atol=2e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------ models


class NNXCNN(nnx.Module):
  """conv 3x3 (4 channels) -> BatchNorm -> relu -> global average pool -> dense (10)."""

  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.fc = nnx.Linear(4, 10, rngs=rngs)

  def __call__(self, x):
    return self.fc(jnp.mean(nnx.relu(self.bn(self.conv(x))), (1, 2)))


@functools.cache  # one class per mode: the params of two instances have the same structure
def _eqx_cnn(mode):
  class EqxCNN(eqx.Module):
    """The same network the Equinox way: one (H, W, C) example, (C, H, W) convolutions."""

    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    fc: eqx.nn.Linear

    def __init__(self, key):
      k1, k2 = jax.random.split(key)
      self.conv = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1)
      self.bn = eqx.nn.BatchNorm(4, axis_name="batch", mode=mode, momentum=0.9)
      self.fc = eqx.nn.Linear(4, 10, key=k2)

    def __call__(self, x, state):
      x, state = self.bn(self.conv(jnp.transpose(x, (2, 0, 1))), state)
      return self.fc(jnp.mean(jax.nn.relu(x), (1, 2))), state

  return EqxCNN


def _nnx_model(seed=0):
  return NNXCNN(nnx.Rngs(seed))


def _eqx_model(seed=0, mode="batch"):
  return eqx.nn.make_with_state(_eqx_cnn(mode))(jax.random.key(seed))


def _nnx_direct(module, params, state, x, train=False):
  """The NNX model called directly (independent of the adapter)."""
  m = nnx.merge(nnx.graphdef(module), params, state, copy=True)
  m.train() if train else m.eval()
  return m(x)


def _eqx_direct(model, params, state, x, train=False):
  """The Equinox model called directly, vmapped (on a copy of the state: `State.set` in training
  mode invalidates the object it is called on)."""
  state = jax.tree.map(lambda a: a, state)
  m = eqx.combine(params, eqx.partition(model, eqx.is_inexact_array)[1])
  m = eqx.nn.inference_mode(m, value=not train)
  return jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)[0]


def _nnx_setup():
  """(module, Model, params, state): the state's running statistics are moved away from a fresh
  model's (mean 0, var 1), so that a wrong state shows."""
  module = _nnx_model()
  model, params = lj.from_nnx(module)
  state = jax.tree.map(lambda v: v + 0.3, model.state)
  return module, model._replace(state=state), params, state


def _eqx_setup(mode="batch"):
  """As `_nnx_setup`; in "batch" mode the counter is 3 (inference divides by 1 - m^3)."""
  module, state = _eqx_model(mode=mode)
  model, params = lj.from_equinox(module, state)
  bn = module.bn
  index = bn.batch_state_index if mode == "batch" else bn.ema_state_index
  mean, var = state.get(index)
  state = state.set(index, (mean + 0.2, var + 0.5))
  if mode == "batch":
    state = state.set(bn.batch_counter, state.get(bn.batch_counter) + 3)
  else:
    state = state.set(bn.ema_first_time_index, jnp.array(False))
  return module, model._replace(state=state), params, state


SETUPS = {"nnx": _nnx_setup, "equinox": _eqx_setup}
DIRECT = {"nnx": _nnx_direct, "equinox": _eqx_direct}


# ------------------------------------------------------------------------------------ losses


def test_losses_match_numpy_formulas_over_padded_splits():
  """Exact ratio-of-sums metrics over a split padded to whole batches (61 examples in batches
  of at most 8), for every provided loss, against numpy over the whole split at once."""
  rng = np.random.default_rng(0)
  n, t, v = 61, 5, 7
  logits = rng.normal(size=(n, t, v)).astype(np.float32)
  tokens = rng.integers(0, v, (n, t)).astype(np.int32)
  mask = (rng.random((n, t)) < 0.7).astype(np.float32)
  mask[3] = 0.0  # an example without scored tokens weighs nothing
  ident = lambda params, x: x * params  # outputs = inputs

  def run(loss, inputs, targets):
    fn = lj.make_metric_fn(ident, (inputs, targets), loss=loss, batch_size=8)
    return {k: float(x) for k, x in fn(jnp.float32(1.0)).items()}

  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
  hit = logits.argmax(-1) == tokens
  got = run(lj.TOKEN_CROSS_ENTROPY, logits, (tokens, mask))
  np.testing.assert_allclose(got["loss"], (ce * mask).sum() / mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], (hit * mask).sum() / mask.sum(), rtol=1e-6)
  got = run(lj.TOKEN_CROSS_ENTROPY, logits, tokens)  # no mask: every token scored
  np.testing.assert_allclose(got["loss"], ce.mean(), rtol=1e-5)

  got = run(None, logits[:, 0], tokens[:, 0])  # CROSS_ENTROPY, the default
  np.testing.assert_allclose(got["loss"], ce[:, 0].mean(), rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], hit[:, 0].mean(), rtol=1e-6)

  y = rng.normal(size=(n, 3, 2)).astype(np.float32)
  pred = {"a": rng.normal(size=(n, 3, 2)).astype(np.float32)}
  fn = lj.make_metric_fn(lambda p, x: x["a"] * p, (pred, y), loss=lj.MSE, batch_size=8)
  assert set(fn(1.0)) == {"loss"}  # no accuracy for regression
  np.testing.assert_allclose(fn(1.0)["loss"], ((pred["a"] - y) ** 2).mean(), rtol=1e-5)

  # the minibatch objective: token mean over the batch, not a mean of per-example means
  lf = lj.make_loss_fn(ident, loss=lj.TOKEN_CROSS_ENTROPY)
  np.testing.assert_allclose(lf(1.0, (logits, (tokens, mask))), (ce * mask).sum() / mask.sum(),
                             rtol=1e-5)


def test_losses_refuse_mismatched_outputs():
  ident = lambda params, x: x
  with pytest.raises(ValueError, match="TOKEN_CROSS_ENTROPY"):
    lj.make_metric_fn(ident, (np.zeros((4, 3, 5), np.float32), np.zeros((4, 3), np.int32)))(0.0)
  with pytest.raises(ValueError, match="same shape"):
    lj.make_metric_fn(ident, (np.zeros((4, 3)), np.zeros((4, 2))), loss=lj.MSE)(0.0)
  with pytest.raises(ValueError, match="3 logits.*5 classes"):
    lj.make_metric_fn(ident, (np.zeros((4, 3), np.float32), np.array([0, 1, 2, 4])))(0.0)
  with pytest.raises(ValueError, match="first metric is 'loss'"):
    lj.make_metric_fn(ident, (np.zeros((4, 3)), np.zeros(4, np.int32)), loss="mse")
  with pytest.raises(ValueError, match="same leading"):
    lj.make_metric_fn(ident, (np.zeros((4, 3)), np.zeros(5, np.int32)))
  with pytest.raises(TypeError, match=r"data\['test'\] must be a Dataset"):
    lj.make_metric_fn(ident, {"test": np.zeros((4, 3))})
  with pytest.raises(ValueError, match="uint8 .*mean= and std="):
    lj.make_loss_fn(ident)(0.0, (np.zeros((2, 8, 8, 1), np.uint8), np.zeros(2, np.int32)))
  with pytest.raises(ValueError, match="no state"):
    lj.make_metric_fn(ident, (np.zeros((4, 3)), np.zeros(4, np.int32)), batch_stats={"a": 1.0})
  with pytest.raises(TypeError, match="model must be"):
    lj.make_metric_fn(42, (np.zeros((4, 3)), np.zeros(4, np.int32)))


def test_plain_apply_fn_matches_the_linen_path(tiny_mlp, test):
  """The same network as a plain function over its params, on the same Dataset, gives the
  linen path's numbers (images normalised inside, the split exact)."""
  model, variables = tiny_mlp
  apply_fn = lambda params, x: model.apply({"params": params}, x)
  ref = lj.make_metric_fn(model, {"test": test}, batch_size=64)(variables["params"])
  got = lj.make_metric_fn(apply_fn, {"test": test}, batch_size=64)(variables["params"])
  _close(got, ref)
  loss_ref = lj.make_loss_fn(model, mean=test.mean, std=test.std)
  loss_got = lj.make_loss_fn(apply_fn, mean=test.mean, std=test.std)
  batch = (test.images[:32], test.labels[:32])
  np.testing.assert_allclose(loss_got(variables["params"], batch),
                             loss_ref(variables["params"], batch), rtol=1e-6)


# ------------------------------------------------------------------------------------ NNX, Equinox


@pytest.mark.parametrize("kind", ["nnx", "equinox"])
@pytest.mark.parametrize("cpu", ["xla", "onednn"])
def test_metric_and_loss_fns_match_the_model_called_directly(kind, cpu, train, test):
  module, model, params, state = SETUPS[kind]()
  direct = functools.partial(DIRECT[kind], module, params, state)
  x, xt = _x(test), _x(train)[:64]
  ref_loss, ref_acc = _ce_acc(direct(x), test.labels)
  # the module itself, its state given as batch_stats (replacing the module's own)
  fn = lj.make_metric_fn(module, {"test": test}, batch_stats=state, batch_size=48,
                         cpu_convolutions=cpu)
  got = jax.jit(lambda f, p: f(p))(fn, params)
  np.testing.assert_allclose(got["test_loss"], ref_loss, rtol=2e-5)
  np.testing.assert_allclose(got["test_accuracy"], ref_acc, atol=1e-6)
  # the Model form (from_nnx / from_equinox) is the same function
  _close(lj.make_metric_fn(model, {"test": test}, batch_size=48, cpu_convolutions=cpu)(params),
         got)
  for train_mode in (False, True):  # training mode: BatchNorm on the batch's statistics
    loss_fn = lj.make_loss_fn(module, mean=train.mean, std=train.std, batch_stats=state,
                              train=train_mode)
    ref, _ = _ce_acc(DIRECT[kind](module, params, state, xt, train=train_mode),
                     train.labels[:64])
    np.testing.assert_allclose(loss_fn(params, (train.images[:64], train.labels[:64])), ref,
                               rtol=2e-5)
  # a wrong state gives another number (the state is really used)
  other = lj.make_metric_fn(module, {"test": test}, batch_size=48, cpu_convolutions=cpu,
                            batch_stats=None if kind == "nnx" else _eqx_model()[1])(params)
  assert abs(float(other["test_loss"]) - ref_loss) > 1e-3


@pytest.mark.parametrize("kind,mode", [("nnx", None), ("equinox", "batch"), ("equinox", "ema")])
def test_recomputed_batchnorm_statistics_are_the_split_statistics(kind, mode, train, test):
  """The only BatchNorm reads the convolution of the input, which does not depend on the batch
  composition: its recomputed statistics are the mean and (biased) variance of the conv output
  over the whole split, for any batch size; the recomputing metric_fn evaluates with them."""
  module, model, params, state = SETUPS[kind](*(() if mode is None else (mode,)))
  before = [np.asarray(a) for a in jax.tree.leaves(state)]
  new_state = lj.recompute_batch_stats(model, params, None, train, batch_size=70)
  x = jnp.asarray(_x(train))
  if kind == "nnx":
    conv = np.asarray(module.conv(x), np.float64)
    stats = (new_state["bn"]["mean"][...], new_state["bn"]["var"][...])
  else:
    conv = np.asarray(jax.vmap(module.conv)(jnp.transpose(x, (0, 3, 1, 2))), np.float64)
    conv = np.moveaxis(conv, 1, -1)
    idx = module.bn.batch_state_index if mode == "batch" else module.bn.ema_state_index
    stats = new_state.get(idx)
  flat = conv.reshape(-1, 4)
  np.testing.assert_allclose(stats[0], flat.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats[1], flat.var(0), rtol=1e-4, atol=1e-6)
  # the caller's state is untouched
  _close(jax.tree.leaves(state), before, rtol=0, atol=0)
  # inference with the recomputed state normalises with exactly these statistics
  out = DIRECT[kind](module, params, new_state, x[:5])
  bn_in = conv[:5]
  ref = (bn_in - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
  if kind == "nnx":
    m = nnx.merge(nnx.graphdef(module), params, new_state, copy=True)
    m.eval()
    bn_out = np.asarray(m.bn(m.conv(x[:5])))
  else:
    m = eqx.nn.inference_mode(module)
    bn_out = np.moveaxis(np.asarray(jax.vmap(m.bn, axis_name="batch", in_axes=(0, None),
                                             out_axes=(0, None))(
      jax.vmap(m.conv)(jnp.transpose(x[:5], (0, 3, 1, 2))), new_state)[0]), 1, -1)
  np.testing.assert_allclose(bn_out, ref, rtol=1e-3, atol=1e-4)
  assert out.shape == (5, 10)
  # make_recompute_metric_fn = make_metric_fn with the recomputed state
  fn = lj.make_recompute_metric_fn(model, {"test": test}, train_data=train, bn_batch_size=70)
  ref = lj.make_metric_fn(model, {"test": test}, batch_stats=new_state)(params)
  _close(fn(params), ref, rtol=1e-5)
  with pytest.raises(ValueError, match="linen"):
    lj.make_recompute_metric_fn(model, test, train_data=train, variance="reference")


def test_recompute_needs_batchnorm_hooks(train):
  with pytest.raises(ValueError, match="BatchNorm layers"):
    lj.recompute_batch_stats(lambda p, x: x, 1.0, None, train)
  module, _ = _eqx_model()
  with pytest.raises(ValueError, match="make_with_state"):
    lj.from_equinox(module)


@pytest.mark.parametrize("kind", ["nnx", "equinox"])
def test_surface_grid_point_is_the_model_at_that_point(kind, train, test):
  module, model, params, state = SETUPS[kind]()
  fn = lj.make_metric_fn(model, {"test": test}, batch_size=64)
  dirs = lj.random_directions(jax.random.key(1), params, num=2)
  xs, ys = np.array([-0.5, 0.0, 0.5]), np.array([-0.25, 0.75])
  res = lj.surface_grid(fn, params, dirs, xs, ys, engine=lj.EngineOptions(progress=False))
  assert res["test_loss"].shape == (3, 2)
  point = jax.tree.map(lambda c, a, b: c + 0.5 * a + 0.75 * b, params, *dirs)
  ref_loss, ref_acc = _ce_acc(DIRECT[kind](module, point, state, _x(test)), test.labels)
  np.testing.assert_allclose(res["test_loss"][2, 1], ref_loss, rtol=5e-5)
  np.testing.assert_allclose(res["test_accuracy"][2, 1], ref_acc, atol=1e-6)
  center, _ = _ce_acc(DIRECT[kind](module, params, state, _x(test)), test.labels)
  np.testing.assert_allclose(res["test_loss"][1, 0], _ce_acc(
    DIRECT[kind](module, jax.tree.map(lambda c, b: c - 0.25 * b, params, dirs[1]), state,
                 _x(test)), test.labels)[0], rtol=5e-5)
  assert not np.isclose(res["test_loss"][2, 1], center)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nnx", "equinox"])
def test_bezier_curve_trains_and_evaluates_with_recomputed_statistics(kind, train, test):
  module, model, start, state = SETUPS[kind]()
  if kind == "nnx":
    end = lj.from_nnx(_nnx_model(seed=1))[1]
  else:
    end = lj.from_equinox(*_eqx_model(seed=1))[1]
  loss_fn = lj.make_loss_fn(model, mean=train.mean, std=train.std, train=True)
  curve, hist = lj.train_curve(loss_fn, start, end, train,
                               settings=lj.CurveSettings(epochs=3, num_bends=3, batch_size=50,
                                                         learning_rate=0.05),
                               progress=False)
  assert len(hist) == 3 and all(np.isfinite(h["loss"]) for h in hist)
  init = lj.init_curve(start, end, 3)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a[1] - b[1]))), curve, init)
  assert max(jax.tree.leaves(moved)) > 1e-4  # the bend was trained
  _close(jax.tree.map(lambda c: c[0], curve), start, rtol=0, atol=0)  # the endpoints are fixed
  fn = lj.make_recompute_metric_fn(model, {"test": test}, train_data=train, bn_batch_size=100)
  res = lj.evaluate_curve(fn, curve, num_points=3, line=False,
                          engine=lj.EngineOptions(progress=False))
  for i, t in enumerate((0.0, 0.5, 1.0)):  # independently: recompute, then evaluate
    p = lj.curve_point(curve, t)
    st = lj.recompute_batch_stats(model, p, None, train, batch_size=100)
    ref = lj.make_metric_fn(model, {"test": test}, batch_stats=st)(p)
    np.testing.assert_allclose(res["curve"]["test_loss"][i], ref["test_loss"], rtol=1e-4)


@pytest.mark.parametrize("kind", ["nnx", "equinox"])
def test_weight_matching_recovers_a_planted_permutation(kind, test):
  """The spec is traced from the inference function of the model with its state as an input:
  the conv channels (kernel, bias, BatchNorm scale/bias/statistics and the dense rows they feed)
  form one permutation; a random permutation of it leaves the outputs unchanged and weight
  matching undoes it exactly."""
  module, model, params, state = SETUPS[kind]()
  variables = {"params": params, "batch_stats": state}
  x = jnp.asarray(_x(test)[:8])
  fn = lj.inference_fn(model)
  spec = lj.spec_from_model(fn, variables, x)
  assert list(spec.sizes.values()) == [4], spec
  paths = {e.path.split("/")[0] for e in next(iter(spec.axes.values()))}
  assert paths == {"params", "batch_stats"}  # the running statistics move with their channels
  perm = lj.random_permutation(jax.random.key(3), spec)
  assert not np.array_equal(np.asarray(perm[spec.names[0]]), np.arange(4))
  permuted = lj.apply_permutation(spec, perm, variables)
  _close(fn(permuted, x), fn(variables, x), rtol=1e-5, atol=1e-5)
  res = lj.weight_matching(jax.random.key(0), spec, variables, permuted)
  aligned = lj.apply_permutation(spec, res.perm, permuted)
  _close(aligned, variables, rtol=0, atol=0)
  # a plain apply_fn over bare params: state held inside is constant, so only what does not
  # touch the BatchNorm (nothing here) could be permuted -- refused, not a wrong spec
  with pytest.raises(ValueError, match="no permutation symmetry"):
    lj.spec_from_model(lj.inference_fn(model), params, x)


@pytest.mark.parametrize("kind", ["nnx", "equinox"])
def test_hessian_eigenvalues_match_a_dense_hessian(kind, train):
  module, model, params, state = SETUPS[kind]()
  loss_fn = lj.make_loss_fn(model, mean=train.mean, std=train.std)
  batch = (train.images[:128], train.labels[:128])
  flat, unravel = ravel_pytree(params)
  dense = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat)
  evals = np.linalg.eigvalsh(np.asarray(dense, np.float64))
  res = lj.hessian_eigenvalues(loss_fn, params, batch, top_k=3, num_steps=flat.size)
  np.testing.assert_allclose(res.top, evals[::-1][:3], rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(res.smallest, evals[0], rtol=1e-3, atol=1e-4)


def test_ensemble_of_nnx_members_is_the_mean_probability(test):
  module, model, params, state = _nnx_setup()
  members = lj.stack_members([jax.tree.map(lambda p, k=k: p * (1 + 0.2 * k), params)
                              for k in range(3)])
  res = lj.evaluate_ensemble(model, members, test, batch_stats=None, batch_size=64)
  x = _x(test)
  probs = [np.asarray(jax.nn.softmax(_nnx_direct(module, p, model.state, x)), np.float64)
           for p in lj.trees.unstack(members)]
  y, rows = test.labels, np.arange(len(test.labels))
  mean_p = np.mean(probs, 0)
  np.testing.assert_allclose(res["loss"], -np.log(mean_p[rows, y]).mean(), rtol=1e-4)
  np.testing.assert_allclose(res["member_loss"],
                             [-np.log(p[rows, y]).mean() for p in probs], rtol=1e-4)
  np.testing.assert_allclose(res["size_accuracy"][1], (np.mean(probs[:2], 0).argmax(-1) == y)
                             .mean(), atol=1e-6)


def test_ensemble_regression_averages_the_outputs():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(23, 3)).astype(np.float32), rng.normal(size=(23, 2)).astype(np.float32)
  apply_fn = lambda w, x: x @ w
  members = jnp.asarray(rng.normal(size=(3, 3, 2)), jnp.float32)
  res = lj.evaluate_ensemble(apply_fn, members, (x, y), loss=lj.MSE, batch_size=5)
  preds = np.einsum("nd,kdo->kno", x, np.asarray(members))
  np.testing.assert_allclose(res["member_loss"], ((preds - y) ** 2).mean((1, 2)), rtol=1e-5)
  np.testing.assert_allclose(res["size_loss"][1], ((preds[:2].mean(0) - y) ** 2).mean(), rtol=1e-5)
  assert set(res) == {"loss", "member_loss", "size_loss"}


def test_metric_fns_have_an_identity_and_resume_from_a_store(tmp_path, test):
  """The NNX and Equinox metric functions can be identified (their graph definition / static
  module), so a stored surface resumes, and a metric_fn of another state is refused."""
  for kind in ("nnx", "equinox"):
    module, model, params, state = SETUPS[kind]()
    fn = lj.make_metric_fn(model, {"test": test})
    dirs = lj.random_directions(jax.random.key(0), params, num=1)
    store = tmp_path / kind
    first = lj.surface_grid(fn, params, dirs, np.array([-1.0, 0.0, 1.0]), store=str(store),
                            engine=lj.EngineOptions(progress=False))
    again = lj.surface_grid(fn, params, dirs, np.array([-1.0, 0.0, 1.0]), store=str(store),
                            engine=lj.EngineOptions(progress=False))
    _close(again, first, rtol=0, atol=0)
    other = lj.make_metric_fn(model._replace(state=jax.tree.map(lambda a: a * 0 + 1, state)),
                              {"test": test})
    with pytest.raises(lj.store.StoreMismatchError):
      lj.surface_grid(other, params, dirs, np.array([-1.0, 0.0, 1.0]), store=str(store),
                      engine=lj.EngineOptions(progress=False))


def test_inference_fn_and_as_model():
  module, model, params, state = _nnx_setup()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
  fn = lj.inference_fn(module, batch_stats=state)
  _close(fn(params, x), _nnx_direct(module, params, state, x))
  _close(fn({"params": params, "batch_stats": state}, x), _nnx_direct(module, params, state, x))
  assert frameworks.as_model(lj.get_model("mlp_small", num_classes=10)) is None  # linen path
  assert isinstance(frameworks.as_model(lambda p, x: x).apply, frameworks.Stateless)
  # the NNX adapter never mutates the state it is given (merge copies)
  before = [np.asarray(a) for a in jax.tree.leaves(state)]
  model.apply(params, state, x, True)
  _close(jax.tree.leaves(state), before, rtol=0, atol=0)
  assert evaluation.batch_objective(lj.CROSS_ENTROPY, jnp.zeros((2, 3)), jnp.array([0, 1])) \
    == pytest.approx(np.log(3.0))
  assert batchnorm.VARIANCES == ("pooled", "reference")


# ------------------------------------------------------------------------------------ text


def test_char_splits_are_next_character_windows():
  text = lj.load_text()
  assert len(text) > 3000 and text == lj.load_text("valley")
  splits, vocab = lj.char_splits(text, context=8, stride=5, test_fraction=0.25)
  x, y = splits["train"]
  assert x.dtype == np.int32 and x.shape[1] == 8
  assert lj.text.decode(x[3], vocab) == text[15:23] and lj.text.decode(y[3], vocab) == text[16:24]
  cut = int(round(len(text) * 0.75))
  assert lj.text.decode(splits["test"][0][0], vocab) == text[cut:cut + 8]
  with pytest.raises(ValueError, match="Unknown text"):
    lj.load_text("nope")
  with pytest.raises(ValueError, match="shorter"):
    lj.char_splits("abc", context=8)


@functools.partial(jax.jit, static_argnums=4)
def _adam(loss_fn, params, data, key, steps):
  """Adam (lr 3e-3) on random batches of 32 windows; compiled once for every seed."""
  opt = optax.adam(3e-3)
  x, y = data

  def step(carry, k):
    p, s = carry
    idx = jax.random.choice(k, x.shape[0], (32,), replace=False)
    u, s = opt.update(jax.grad(loss_fn)(p, (x[idx], y[idx])), s, p)
    return (optax.apply_updates(p, u), s), None

  return jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))[0][0]


def _token_ce(params, data, apply_fn):
  x, y = data
  logits = np.asarray(apply_fn(params, jnp.asarray(x)), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, y[..., None], -1).mean()


@pytest.mark.slow
def test_char_transformer_landscape():
  """A 2-layer, width-16 character transformer trained twice on the bundled text: its surface,
  the interpolation between the trainings and its Hessian, each checked against the model
  evaluated directly (numpy token cross-entropy) or an independent Hessian-vector product."""
  splits, vocab = lj.char_splits(lj.load_text(), context=16, stride=8)
  apply_fn = functools.partial(lj.char_transformer_apply, heads=2)
  loss_fn = lj.make_loss_fn(apply_fn, loss=lj.TOKEN_CROSS_ENTROPY)
  metric_fn = lj.make_metric_fn(apply_fn, splits, loss=lj.TOKEN_CROSS_ENTROPY, batch_size=100)
  runs = []
  for seed in (0, 1):
    init = lj.init_char_transformer(jax.random.key(seed), vocab_size=len(vocab), context=16,
                                    width=16, depth=2, heads=2)
    runs.append(_adam(loss_fn, init, splits["train"], jax.random.key(seed), 150))
  a, b = runs
  res_a = metric_fn(a)
  assert float(res_a["train_loss"]) < np.log(len(vocab)) - 1.0  # it learnt something
  np.testing.assert_allclose(res_a["train_loss"], _token_ce(a, splits["train"], apply_fn),
                             rtol=1e-5)

  dirs = lj.random_directions(jax.random.key(2), a, num=2)
  xs, ys = np.array([-0.5, 0.0, 0.5]), np.array([0.0, 0.5])
  surface = lj.surface_grid(metric_fn, a, dirs, xs, ys,
                            engine=lj.EngineOptions(chunk_size=6, progress=False))
  point = jax.tree.map(lambda c, d1, d2: c - 0.5 * d1 + 0.5 * d2, a, *dirs)
  np.testing.assert_allclose(surface["test_loss"][0, 1], _token_ce(point, splits["test"],
                                                                   apply_fn), rtol=5e-5)
  np.testing.assert_allclose(surface["train_loss"][1, 0], res_a["train_loss"], rtol=1e-5)

  alphas = np.array([0.0, 0.5, 1.0])
  path = lj.linear_path(metric_fn, a, b, alphas,
                        engine=lj.EngineOptions(chunk_size=3, progress=False))
  mid = jax.tree.map(lambda u, v: 0.5 * (u + v), a, b)
  np.testing.assert_allclose(path["train_loss"][1], _token_ce(mid, splits["train"], apply_fn),
                             rtol=5e-5)
  np.testing.assert_allclose(path["train_loss"][[0, 2]],
                             [res_a["train_loss"], metric_fn(b)["train_loss"]], rtol=1e-5)

  # the Hessian of the mean token loss over 128 windows: Lanczos' top Ritz pair against an
  # independent Hessian-vector product (forward-over-reverse of jax.grad)
  batch = tuple(a_[:128] for a_ in splits["train"])
  eig = lj.hessian_eigenvalues(loss_fn, a, batch, top_k=1, num_steps=20, vectors=True)
  v = eig.top_vectors[0]
  hv = jax.jvp(jax.grad(lambda p: loss_fn(p, batch)), (a,), (v,))[1]
  dot = lambda u, w: float(sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(u),
                                                               jax.tree.leaves(w), strict=True)))
  np.testing.assert_allclose(dot(v, hv), eig.top[0], rtol=2e-3)
  assert eig.top[0] > 0 and eig.smallest < eig.top[0]


@pytest.mark.slow
def test_charlm_script_runs_and_resumes(tmp_path):
  """experiments/charlm.py end to end on its quick config: the summary matches the stored
  landscape, and a rerun trains nothing again and writes the same summary."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, os.path.join(root, "experiments", "charlm.py"),
         "--config=" + os.path.join(root, "experiments", "configs", "charlm.py") + ":quick",
         f"--workdir={tmp_path}", "--noprogress", "--config.steps=30"]
  env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(tmp_path / "summary.json"))
  stored = np.load(tmp_path / "landscape.npz")
  assert summary["surface"]["train_loss"]["max"] == pytest.approx(
    float(stored["surface_train_loss"].max()), rel=1e-6)
  assert summary["models"][0]["train_loss"] == pytest.approx(
    float(stored["interpolation_train_loss"][0]), rel=1e-5)
  assert len(summary["hessian"]["top_eigenvalues"]) == 2
  ckpt = tmp_path / "seed0"
  before = {p: p.stat().st_mtime for p in ckpt.rglob("*")}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert {p: p.stat().st_mtime for p in ckpt.rglob("*")} == before
  assert json.load(open(tmp_path / "summary.json")) == summary


@pytest.mark.slow
def test_docs_adapters_examples_run(tmp_path):
  """The Python blocks of docs/adapters.md, run in order in one namespace, compute what the page
  says they do."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  page = open(os.path.join(root, "docs", "adapters.md"), encoding="utf-8").read()
  blocks = [b.split("```", 1)[0] for b in page.split("```python\n")[1:]]
  assert len(blocks) == 4
  script = tmp_path / "adapters_page.py"  # the page's own code, as one script
  script.write_text("\n".join(blocks), encoding="utf-8")
  ns = runpy.run_path(str(script))
  # the regression curve: (inputs, targets) data, the endpoints kept, its loss along the curve
  np.testing.assert_array_equal(ns["rcurve"]["w1"][0], ns["ra"]["w1"])
  np.testing.assert_array_equal(ns["rcurve"]["w1"][-1], ns["rb"]["w1"])
  assert len(ns["rhistory"]) == 3 and ns["ralong"]["curve"]["train_loss"].shape == (5,)
  center = ns["metric_fn"](ns["a"])
  np.testing.assert_allclose(ns["surface"]["test_loss"][2, 2], center["test_loss"], rtol=1e-5)
  assert ns["along"]["curve"]["test_loss"].shape == (5,)
  assert np.all(np.diff(ns["matched"].objectives) >= -1e-6)
  aligned = ns["vb_aligned"]  # the aligned b is the same function as b
  fn = lj.inference_fn(ns["model"])
  x = ns["x"]
  _close(fn(aligned, x), fn(ns["vb"], x), rtol=1e-4, atol=1e-5)
  assert np.all(np.diff(ns["eig"].top) <= 0) and ns["esurface"]["test_loss"].shape == (5, 5)
  assert ns["lm_path"]["train_loss"].shape == (5,) and len(ns["lm_eig"].top) == 2
