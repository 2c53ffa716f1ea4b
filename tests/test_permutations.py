"""Permutation specs, weight matching and swap paths, checked against exact symmetries: a random
permutation must leave every model's outputs unchanged, a planted permutation must be recovered
exactly, and the swap path's midpoint must have two identical units."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import landscape_jax as lj
from landscape_jax.core import permutations as P
from landscape_jax.models.specs import spec_for

X = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))

# (model name, overrides); every one must be in the zoo (get_model errors fail the test). Most
# compile two forward passes each (slow on a shared CPU), so they are marked slow.
_SLOW = pytest.mark.slow
ZOO = [
  pytest.param("mlp", {}, id="mlp"),
  pytest.param("resnet8", {}, id="resnet8"),
  pytest.param("vgg9_bn", {"width": 0.125}, id="vgg9_bn"),
  pytest.param("resnet8_noshort", {}, id="resnet8_noshort", marks=_SLOW),
  pytest.param("resnet8", {"shortcut": "pad"}, id="resnet8_pad", marks=_SLOW),
  pytest.param("resnet20", {}, id="resnet20", marks=_SLOW),
  pytest.param("wrn10_1", {}, id="wrn10_1", marks=_SLOW),
  pytest.param("vgg9", {"width": 0.125}, id="vgg9", marks=_SLOW),
  pytest.param("vgg16_bn", {"width": 0.0625}, id="vgg16_bn", marks=_SLOW),
  pytest.param("convfc", {"width": 0.125}, id="convfc", marks=_SLOW),
  pytest.param("preresnet8", {}, id="preresnet8", marks=_SLOW),
  pytest.param("densenet_bc_16_4", {}, id="densenet_bc_16_4", marks=_SLOW),
]


def _get(name, overrides):
  return lj.get_model(name, num_classes=10, **overrides)  # a missing model fails the test


def _close(a, b, tol=2e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _equal(a, b):
  return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                          strict=True))


class _ConvBNHead(nn.Module):
  """Conv-BN-pool, conv, flatten, Dense, Dense: exercises BN and the conv-to-dense flatten."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    x = nn.relu(nn.Dense(7)(x.reshape((x.shape[0], -1))))
    return nn.Dense(3)(x)


class _Concat(nn.Module):
  """Every hidden axis reaches a concatenation with the input: no provable symmetry."""

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(3)(jnp.concatenate([x, nn.Dense(5)(x)], axis=-1))


def _init(model, seed):
  """Random variables of the model's shapes (no compiled init): normal weights, BN scale, bias
  and running means, running variances in [0.5, 1.5], so that a wrong BN entry shows."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), X)
  rng = np.random.default_rng(seed)

  def draw(path, s):
    if path.endswith("var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
    fan_in = max(int(np.prod(s.shape[:-1])), 1) if len(s.shape) > 1 else 4
    return jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(fan_in), s.dtype)
  return lj.trees.map_with_path(draw, shapes)


def _check_invariance(model, variables, spec, key=1):
  perm = P.random_permutation(jax.random.key(key), spec)
  assert any(not bool(jnp.array_equal(p, jnp.arange(p.size))) for p in perm.values())
  permuted = P.apply_permutation(spec, perm, variables)
  assert not _equal(permuted["params"], variables["params"])
  infer = jax.jit(lambda v: model.apply(v, X, train=False))
  _close(infer(variables), infer(permuted), 1e-4)
  if "batch_stats" in variables:
    train = jax.jit(lambda v: model.apply(v, X, train=True, mutable=["batch_stats"]))
    y0, s0 = train(variables)
    y1, s1 = train(permuted)
    # Batch statistics of a few examples through up to 13 BatchNorm layers amplify the float
    # rounding of the permuted sums (2e-4 seen for VGG-16 with LLVM at -O0); a wrong permutation
    # is off by O(1).
    _close(y0, y1, 1e-3)
    # The updated running statistics are the permuted updated statistics.
    _close(P.apply_permutation(spec, perm, {"params": variables["params"], **s0})["batch_stats"],
           s1["batch_stats"], 1e-4)


@pytest.mark.parametrize("name,overrides", ZOO)
def test_random_permutation_leaves_outputs_unchanged(name, overrides):
  model = _get(name, overrides)
  variables = _init(model, 2)
  spec = spec_for(name, variables, verify=False, **overrides)
  assert len(spec.names) >= 1
  P.check_spec(spec, variables)
  _check_invariance(model, variables, spec)


def test_derived_specs_have_the_expected_structure():
  model = lj.get_model("mlp", num_classes=10)
  v = _init(model, 0)
  assert P.spec_from_model(model, v, X) == P.mlp_spec(v["params"])
  assert P.mlp_spec(v["params"]).sizes == {"Dense_0": 64, "Dense_1": 64}

  model = lj.get_model("resnet20", num_classes=10)
  v = _init(model, 0)
  spec = spec_for("resnet20", v, verify=False)
  # 3 residual streams (one per stage, shared by all blocks writing into it) + 9 inner units.
  assert len(spec.names) == 12
  widths = sorted(spec.sizes.values())
  assert widths == [16] * 4 + [32] * 4 + [64] * 4
  # Each stream ties the stem / shortcut and every block of its stage.
  streams = [n for n, e in spec.axes.items() if len(e) > 12]
  assert len(streams) == 3
  # Zero-padded shortcuts tie the streams to the padding: only the 9 inner units remain.
  pad = lj.get_model("resnet20", num_classes=10, shortcut="pad")
  assert len(spec_for("resnet20", _init(pad, 0), verify=False, shortcut="pad").names) == 9

  # Dropout masks (training mode) are random values tied to nothing: same spec as without.
  vgg = lj.get_model("vgg9_bn", num_classes=10, width=0.125)
  vgg_drop = lj.get_model("vgg9_bn", num_classes=10, width=0.125, dropout_rate=0.5)
  v = jax.eval_shape(vgg.init, jax.random.key(0), X)
  assert (P.spec_from_model(vgg_drop, v, X, verify=False)
          == P.spec_from_model(vgg, v, X, verify=False))

  # conv-to-dense flatten: the Dense input axis is (H * W, C) with C permuted.
  model = _ConvBNHead()
  v = _init(model, 0)
  spec = P.spec_from_model(model, v, X)
  assert spec.sizes == {"Conv_0": 4, "Conv_1": 6, "Dense_0": 7}
  assert P.PermAxis("params/Dense_0/kernel", 0, 16) in spec.axes["Conv_1"]
  assert P.PermAxis("batch_stats/BatchNorm_0/mean", 0) in spec.axes["Conv_0"]
  _check_invariance(model, v, spec)


def test_spec_from_a_plain_function_over_bare_params():
  """A plain apply_fn(params, x) is traced like the linen module it wraps (paths relative to the
  wrapped params, as apply_permutation addresses a bare tree); an (out, in) kernel layout (Equinox,
  PyTorch) is traced as well as Flax's (in, out), and a planted permutation is recovered."""
  model = lj.get_model("mlp", num_classes=10)
  v = _init(model, 0)
  fn = lambda params, x: model.apply({"params": params}, x, train=False)
  assert P.spec_from_model(fn, v["params"], X) == P.spec_from_model(model, v, X)

  rng = np.random.default_rng(0)
  params = {"w1": jnp.asarray(rng.normal(size=(5, 64)), jnp.float32),  # (out, in)
            "b1": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)}

  def torch_mlp(p, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"].T + p["b1"])
    return h @ p["w2"].T

  spec = P.spec_from_model(torch_mlp, params, X)
  assert list(spec.sizes.values()) == [5], spec
  (entries,) = spec.axes.values()
  assert set(entries) == {P.PermAxis("params/w1", 0), P.PermAxis("params/b1", 0),
                          P.PermAxis("params/w2", 1)}
  perm = P.random_permutation(jax.random.key(1), spec)
  permuted = P.apply_permutation(spec, perm, params)
  _close(torch_mlp(permuted, X), torch_mlp(params, X), 1e-5)
  res = P.weight_matching(jax.random.key(0), spec, params, permuted)
  assert _equal(P.apply_permutation(spec, res.perm, permuted), params)
  with pytest.raises(ValueError, match="apply_kwargs is for linen"):
    P.spec_from_model(torch_mlp, params, X, apply_kwargs={"train": False})
  with pytest.raises(TypeError, match="linen module or a function"):
    P.spec_from_model(42, params, X)


def test_no_symmetry_and_bad_input_errors():
  model = _Concat()
  v = _init(model, 0)
  with pytest.raises(ValueError, match="no permutation symmetry"):
    P.spec_from_model(model, v, X)
  mlp = lj.get_model("mlp", num_classes=10)
  v = _init(mlp, 0)
  spec = P.mlp_spec(v["params"])
  with pytest.raises(ValueError, match="missing"):
    P.apply_permutation(spec, {"Dense_0": jnp.arange(64)}, v)
  small = _init(lj.get_model("mlp_small", num_classes=10), 0)
  with pytest.raises(ValueError, match="length"):
    P.apply_permutation(spec, P.identity_permutation(spec), small)
  with pytest.raises(ValueError, match="Unknown layer"):
    P.swap_path(v, "Dense_7", 0, 1, 0.5, spec=spec)
  with pytest.raises(ValueError, match="different indices"):
    P.swap_path(v, "Dense_0", 3, 3, 0.5, spec=spec)


def test_compose_inverse_identity():
  model = lj.get_model("mlp", num_classes=10)
  v = _init(model, 0)["params"]  # bare params trees work too
  spec = P.mlp_spec(v)
  p = P.random_permutation(jax.random.key(1), spec)
  q = P.random_permutation(jax.random.key(2), spec)
  pq = P.apply_permutation(spec, P.compose_permutations(p, q), v)
  _close(pq, P.apply_permutation(spec, p, P.apply_permutation(spec, q, v)), 0)
  _close(P.apply_permutation(spec, P.invert_permutation(p), P.apply_permutation(spec, p, v)), v, 0)
  _close(P.apply_permutation(spec, P.identity_permutation(spec), v), v, 0)
  r = P.random_permutation(jax.random.key(1), spec)
  assert all(bool(jnp.array_equal(p[k], r[k])) for k in p)  # deterministic in the key


@pytest.mark.parametrize("name,overrides", [("mlp", {}), ("vgg9_bn", {"width": 0.125}),
                                            ("resnet20", {})])
def test_weight_matching_recovers_planted_permutation(name, overrides):
  model = _get(name, overrides)
  a = _init(model, 3)
  spec = spec_for(name, a, verify=False, **overrides)
  planted = P.random_permutation(jax.random.key(4), spec)
  b = P.apply_permutation(spec, planted, a)
  res = P.weight_matching(jax.random.key(5), spec, a, b)
  assert res.converged
  inverse = P.invert_permutation(planted)
  for k in spec.names:
    np.testing.assert_array_equal(np.asarray(res.perm[k]), np.asarray(inverse[k]), err_msg=k)
  assert _equal(P.apply_permutation(spec, res.perm, b), a)
  obj = res.objectives
  assert len(obj) == res.num_sweeps + 1 and np.all(np.diff(obj) >= -1e-9 * abs(obj[-1]))
  np.testing.assert_allclose(obj[-1], sum(float(jnp.vdot(x, x))
                                          for x in jax.tree.leaves(a["params"])), rtol=1e-6)
  again = P.weight_matching(jax.random.key(5), spec, a, b)
  np.testing.assert_array_equal(again.objectives, res.objectives)


# ------------------------------------------------------------------------------------------------
# Two independently trained MLPs on digits


def _train(seed, ds, *, steps=400, batch_size=128, lr=3e-3):
  model = lj.get_model("mlp", num_classes=10)
  loss_fn = lj.make_loss_fn(model, mean=ds.mean, std=ds.std)
  images, labels = jnp.asarray(ds.images), jnp.asarray(ds.labels)
  params = model.init(jax.random.key(seed), images[:2].astype(jnp.float32))["params"]
  opt = optax.adam(lr)

  @jax.jit
  def run(params, key):
    def step(carry, k):
      p, s = carry
      idx = jax.random.choice(k, images.shape[0], (batch_size,), replace=False)
      g = jax.grad(loss_fn)(p, (images[idx], labels[idx]))
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
    return p

  return model, run(params, jax.random.key(100 + seed))


@pytest.fixture(scope="module")
def two_mlps(digits_train, digits_test):
  model, a = _train(0, digits_train)
  _, b = _train(1, digits_train)
  metric_fn = lj.make_metric_fn(model, {"train": digits_train, "test": digits_test})
  return model, a, b, metric_fn


def _path(metric_fn, a, b, alphas):
  return lj.linear_path(metric_fn, a, b, alphas,
                        engine=lj.EngineOptions(progress=False))["train_loss"]


def test_alignment_lowers_the_barrier_and_permuted_copy_has_zero_barrier(two_mlps):
  model, a, b, metric_fn = two_mlps
  spec = P.mlp_spec(a)
  alphas = np.linspace(0, 1, 11)
  assert float(metric_fn(a)["train_accuracy"]) > 0.95
  # A permuted copy of a: after matching, the straight line is constant (barrier exactly 0).
  copy = P.apply_permutation(spec, P.random_permutation(jax.random.key(7), spec), a)
  raw = _path(metric_fn, a, copy, alphas)
  res = P.weight_matching(jax.random.key(0), spec, a, copy)
  aligned = _path(metric_fn, a, P.apply_permutation(spec, res.perm, copy), alphas)
  assert lj.barriers(raw, alphas)["frankle"] > 0.1
  b0 = lj.barriers(aligned, alphas)
  assert abs(b0["frankle"]) < 1e-6 and abs(b0["entezari"]) < 1e-6
  # Two independently trained models: alignment lowers the barrier.
  before = lj.barriers(_path(metric_fn, a, b, alphas), alphas)
  res = P.weight_matching(jax.random.key(0), spec, a, b)
  b_aligned = P.apply_permutation(spec, res.perm, b)
  after = lj.barriers(_path(metric_fn, a, b_aligned, alphas), alphas)
  assert after["frankle"] < 0.5 * before["frankle"], (before, after)
  assert after["entezari"] < before["entezari"]
  assert res.objectives[-1] > res.objectives[0]
  _close(metric_fn(b_aligned), metric_fn(b), 1e-4)  # same function


def test_swap_path_midpoint_is_a_permutation_point(two_mlps, digits_train):
  model, a, _, metric_fn = two_mlps
  spec = P.mlp_spec(a)
  i, j = 3, 11
  _close(P.swap_path(a, "Dense_1", i, j, 0.0, spec=spec), a, 0)
  swapped = P.swap_units(a, "Dense_1", i, j, spec=spec)
  _close(P.swap_path(a, "Dense_1", i, j, 1.0, spec=spec), swapped, 1e-6)
  # Exchanging two units is the permutation (i j) of that layer.
  tau = {k: jnp.arange(n) for k, n in spec.sizes.items()}
  tau["Dense_1"] = tau["Dense_1"].at[i].set(j).at[j].set(i)
  _close(swapped, P.apply_permutation(spec, tau, a), 0)
  mid = P.swap_path(a, "Dense_1", i, j, 0.5, spec=spec)
  k_in, k_out, bias = mid["Dense_1"]["kernel"], mid["Dense_2"]["kernel"], mid["Dense_1"]["bias"]
  np.testing.assert_array_equal(k_in[:, i], k_in[:, j])
  np.testing.assert_array_equal(k_out[i], k_out[j])
  assert bias[i] == bias[j]
  assert not np.allclose(a["Dense_1"]["kernel"][:, i], a["Dense_1"]["kernel"][:, j])
  # The gradient at the permutation point is symmetric in the two units.
  loss_fn = lj.make_loss_fn(model, mean=digits_train.mean, std=digits_train.std)
  g = jax.grad(loss_fn)(mid, (digits_train.images[:256], digits_train.labels[:256]))
  np.testing.assert_allclose(g["Dense_1"]["kernel"][:, i], g["Dense_1"]["kernel"][:, j],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g["Dense_2"]["kernel"][i], g["Dense_2"]["kernel"][j], rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(g["Dense_1"]["bias"][i], g["Dense_1"]["bias"][j], rtol=1e-5,
                             atol=1e-7)
  # Loss along the path: equal at both ends, symmetric about 1/2, matches direct evaluation.
  ss = np.linspace(0, 1, 9)
  res = P.swap_path_metrics(metric_fn, a, "Dense_1", i, j, ss, spec=spec)
  loss = res["train_loss"]
  np.testing.assert_allclose(loss, loss[::-1], rtol=1e-5)
  direct = float(metric_fn(P.swap_path(a, "Dense_1", i, j, ss[2], spec=spec))["train_loss"])
  assert loss[2] == pytest.approx(direct, rel=1e-5)
  assert loss[4] > loss[0]
