"""Bad input that used to give silent wrong numbers now raises a clear error (each test failed
before its fix); the table "Bad input and silent errors" of docs/reliability.md lists the cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.core import curves
from landscape_jax.core import hessian as hs

pytestmark = pytest.mark.reliability


# ------------------------------------------------------------------------- Hessian of a NaN loss


@pytest.fixture(scope="module")
def nan_loss_problem(digits_train):
  """A 5-class MLP on the 10 digit classes: the cross-entropy is NaN, its gradient finite."""
  model = lj.get_model("mlp_small", num_classes=5)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  loss_fn = lj.make_loss_fn(model, mean=digits_train.mean, std=digits_train.std)
  batch = (digits_train.images[:48], digits_train.labels[:48])
  assert np.isnan(loss_fn(params, batch))
  # the trap: the products are finite, so nothing downstream of them sees the NaN
  hv = hs.hvp(loss_fn, params, batch, params)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(hv))
  return loss_fn, params, batch


def test_hessian_routines_refuse_a_nan_loss(nan_loss_problem):
  loss_fn, params, batch = nan_loss_problem
  msg = r"the loss at these parameters is nan.*fewer classes than the labels"
  with pytest.raises(FloatingPointError, match="hessian_eigenvalues: " + msg):
    hs.hessian_eigenvalues(loss_fn, params, batch, num_steps=4)
  with pytest.raises(FloatingPointError, match="hessian_trace: " + msg):
    hs.hessian_trace(jax.random.key(0), loss_fn, params, batch, num_probes=2)
  with pytest.raises(FloatingPointError, match="spectral_density: " + msg):
    hs.spectral_density(jax.random.key(0), loss_fn, params, batch, num_steps=4)
  # over a whole split too: only the last (remainder) batch holds a label the model lacks
  images, labels = batch
  labels = np.where(np.arange(len(labels)) < 40, labels % 5, labels).astype(np.int32)
  labels[-1] = 9
  split = lj.make_batches((images, labels), batch_size=20)
  assert split.rest is not None
  with pytest.raises(FloatingPointError, match="hessian_eigenvalues: " + msg):
    hs.hessian_eigenvalues(loss_fn, params, split, num_steps=4)
  ok = lj.make_batches((images[:40], labels[:40]), batch_size=20)
  assert np.isfinite(hs.hessian_eigenvalues(loss_fn, params, ok, num_steps=4).top[0])


def test_curvature_map_is_nan_where_the_loss_is(nan_loss_problem):
  loss_fn, params, batch = nan_loss_problem
  metric_fn = hs.make_curvature_metric_fn(loss_fn, batch, num_steps=3)
  out = jax.jit(metric_fn)(params)
  assert all(np.isnan(float(v)) for v in out.values()), out
  images, labels = batch
  good = hs.make_curvature_metric_fn(loss_fn, (images, labels % 5), num_steps=3)
  assert all(np.isfinite(float(v)) for v in jax.jit(good)(params).values())


def test_non_finite_products_of_a_finite_loss():
  """sqrt(|w|) at w = 0: the loss is finite (0), its second derivative NaN."""
  def loss_fn(p, batch):
    return jnp.sum(jnp.sqrt(jnp.abs(p["w"]))) + 0.0 * jnp.sum(batch)

  params, batch = {"w": jnp.zeros(4)}, jnp.ones(2)
  with pytest.raises(FloatingPointError,
                     match="products contain non-finite values.*loss is finite"):
    hs.hessian_eigenvalues(loss_fn, params, batch, num_steps=2)
  with pytest.raises(FloatingPointError, match="hessian_trace: the Hessian-vector products"):
    hs.hessian_trace(jax.random.key(0), loss_fn, params, batch, num_probes=2)


# ------------------------------------------------------------------------- curves and planes


def _tree(key, dtype=jnp.float32):
  k1, k2 = jax.random.split(key)
  return {"a": {"kernel": jax.random.normal(k1, (30, 20), dtype)},
          "b": jax.random.normal(k2, (20,), dtype)}


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_curve_point_refuses_t_outside_the_unit_interval(kind):
  c = curves.init_curve(_tree(jax.random.key(0)), _tree(jax.random.key(1)), 4)
  for bad in (-0.1, 1.0 + 1e-6, 2.0, np.nan, np.float32(-1.0), jnp.asarray(1.5),
              np.asarray(np.nan)):
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\].*got t = "):
      curves.curve_point(c, bad, kind)
  # the ends and interior points are fine, as Python, numpy and JAX scalars
  for t in (0.0, 1.0, 0.3, np.float32(0.7), jnp.asarray(0.5)):
    curves.curve_point(c, t, kind)
  # traced t is not checked (documented): under jit a polychain gives an all-zero network at t=2
  out = jax.jit(lambda t: curves.curve_point(c, t, kind))(2.0)
  if kind == "polychain":
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(out))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_plane_basis_refuses_exactly_collinear_points(dtype):
  with jax.enable_x64(dtype == jnp.float64):
    w0, w2 = _tree(jax.random.key(0), dtype), _tree(jax.random.key(1), dtype)
    w1 = jax.tree.map(lambda a, b: a + 0.3 * (b - a), w0, w2)  # on the line, up to rounding
    assert jax.tree.leaves(w1)[0].dtype == dtype
    with pytest.raises(ValueError, match=r"collinear.*below sqrt\(eps\)"):
      curves.plane_basis(w0, w1, w2)
    # a bend well off the line is accepted, and v is then orthogonal to u
    off = jax.tree.map(lambda x, d: x + 1e-2 * d, w1, _tree(jax.random.key(2), dtype))
    plane = curves.plane_basis(w0, off, w2)
    uv = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(plane.u),
                                                   jax.tree.leaves(plane.v), strict=True))
    assert abs(uv) < 1e-5


def test_plane_basis_refuses_coincident_and_non_finite_points():
  w0, w1 = _tree(jax.random.key(0)), _tree(jax.random.key(1))
  with pytest.raises(ValueError, match="w0 and w2 coincide"):
    curves.plane_basis(w0, w1, w0)
  bad = jax.tree.map(lambda x: x.at[0].set(jnp.nan), w1)
  with pytest.raises(ValueError, match="plane_basis: w2 contain non-finite values at a/kernel"):
    curves.plane_basis(w0, w1, bad)


def test_curve_summary_takes_the_endpoints_at_t0_and_t1():
  """The barrier of `paths.barrier`: endpoints at t = 0 and 1, maximum over [0, 1] only (the
  former inline formula took the first and last values and the maximum over all of them)."""
  ts = np.array([-0.25, 0.0, 0.5, 1.0, 1.25])
  loss = np.array([9.0, 1.0, 2.0, 3.0, 9.0])
  acc = np.array([0.1, 0.9, 0.5, 0.8, 0.1])
  s = curves.curve_summary({"train_loss": loss, "train_accuracy": acc}, ts)
  assert s["train_loss"]["barrier"] == pytest.approx(3.0 - 2.0)
  assert (s["train_loss"]["start"], s["train_loss"]["end"]) == (1.0, 3.0)
  assert s["train_loss"]["barrier"] == lj.barrier(loss, ts)
  assert s["train_error"]["barrier"] == pytest.approx(0.5 - 0.5 * (0.1 + 0.2))
  assert "barrier" not in s["train_accuracy"]
  assert (s["train_loss"]["min"], s["train_loss"]["max"]) == (1.0, 9.0)
  # default ts: linspace(0, 1, T)
  d = curves.curve_summary({"loss": [1.0, 4.0, 2.0]})
  assert d["loss"]["barrier"] == pytest.approx(4.0 - 1.5)
  # a NaN inside [0, 1] gives a NaN barrier (and min / max / mean); outside [0, 1] it is ignored
  n = curves.curve_summary({"loss": [1.0, np.nan, 2.0]})
  assert np.isnan(n["loss"]["barrier"]) and np.isnan(n["loss"]["max"])
  out = curves.curve_summary({"loss": [np.nan, 1.0, 4.0, 2.0]}, [-0.5, 0.0, 0.5, 1.0])
  assert out["loss"]["barrier"] == pytest.approx(4.0 - 1.5)
  with pytest.raises(ValueError, match="one value per t"):
    curves.curve_summary({"loss": [1.0, 2.0]}, [0.0, 0.5, 1.0])


def test_curve_summary_without_an_endpoint_has_no_barrier():
  with pytest.warns(UserWarning, match="do not include both t = 0 and t = 1"):
    s = curves.curve_summary({"loss": [1.0, 4.0, 2.0], "accuracy": [0.5, 0.4, 0.6]},
                             [0.0, 0.25, 0.5])
  for k in ("loss", "error"):
    assert not {"barrier", "start", "end"} & set(s[k]), s[k]
    assert set(s[k]) == {"min", "max", "mean"}
  # evaluate_curve passes its ts
  c = curves.init_curve(_tree(jax.random.key(0)), _tree(jax.random.key(1)), 3)
  f = lambda p: {"loss": jnp.sum(jnp.square(p["b"]))}
  with pytest.warns(UserWarning, match="no start, end or barrier"):
    res = curves.evaluate_curve(f, c, ts=[0.0, 0.25, 0.5], engine=lj.EngineOptions(progress=False))
  assert "barrier" not in res["summary"]["curve"]["loss"]
  full = curves.evaluate_curve(f, c, ts=[0.0, 0.5, 1.0], engine=lj.EngineOptions(progress=False))
  assert full["summary"]["line"]["loss"]["barrier"] == lj.barrier(full["line"]["loss"])


def test_barrier_alphas_must_be_finite_and_hit_the_endpoints():
  with pytest.raises(ValueError, match="alphas contain NaN/inf"):
    lj.barrier([1.0, 2.0, 1.0], [0.0, np.nan, 1.0])
  # an alpha 1e-6 short of 1 is not the endpoint (the tolerance is 1e-9, absolute)
  with pytest.raises(ValueError, match="alpha = 0 and alpha = 1"):
    lj.barrier([1.0, 2.0, 1.0], [0.0, 0.5, 1.0 - 1e-6])
  assert lj.barrier([1.0, 2.0, 1.0], [0.0, 0.5, 1.0 - 1e-12]) == pytest.approx(1.0)


# ------------------------------------------------------------------------- data normalisation


@pytest.mark.parametrize("std, msg", [(0.0, "std must be > 0"), (-0.2, "std must be > 0"),
                                      (np.nan, "std contains NaN"), (np.inf, "std contains NaN")])
def test_zero_or_non_finite_std_is_refused(digits_train, std, msg):
  data = digits_train.subset(slice(0, 16))
  with pytest.raises(ValueError, match=f"Dataset digits:train: {msg}"):
    lj.data.Dataset(images=data.images, labels=data.labels, num_classes=10, mean=data.mean,
                    std=np.array([std], np.float32), name="digits", split="train")
  with pytest.raises(ValueError, match=msg):
    lj.data.normalize_images(data.images, data.mean, np.float32(std))
  # a loss function built with it fails at its first (eager) call instead of returning NaN
  model = lj.get_model("mlp_small", num_classes=10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  loss_fn = lj.make_loss_fn(model, mean=data.mean, std=np.array([std], np.float32))
  with pytest.raises(ValueError, match=msg):
    loss_fn(params, (data.images, data.labels))


def test_mean_and_std_must_match_the_channels(digits_train):
  data = digits_train.subset(slice(0, 16))
  with pytest.raises(ValueError, match=r"std must be a scalar or have shape \(1,\)"):
    lj.data.Dataset(images=data.images, labels=data.labels, num_classes=10, mean=data.mean,
                    std=np.ones(3, np.float32))
  with pytest.raises(ValueError, match=r"mean must be a scalar or have shape \(1,\)"):
    lj.data.normalize_images(data.images, np.zeros(3), np.ones(1))
  # under jit the values are traced and cannot be checked (documented): NaN, not an error
  out = jax.jit(lj.data.normalize_images)(data.images, data.mean, np.zeros(1, np.float32))
  assert not np.all(np.isfinite(np.asarray(out)))


# ------------------------------------------------------------------------- models


@pytest.mark.parametrize("name, overrides, msg", [
  ("resnet7", {}, r"Invalid model 'resnet7': CIFAR ResNet depth must be 6n \+ 2.*got 7"),
  ("resnet21_noshort", {}, r"depth must be 6n \+ 2.*got 21"),
  ("resnet20", {"shortcut": "projection"}, r"shortcut must be one of"),
  ("resnet20", {"depth": 19}, r"depth must be 6n \+ 2.*got 19"),
  ("preresnet50", {}, r"bottleneck blocks.*9n \+ 2.*got 50"),
  ("wrn28_10", {"depth": 27}, r"Wide-ResNet depth must be 6n \+ 4.*got 27"),
  ("wrn12_2", {}, r"Invalid model name 'wrn12_2'.*6n \+ 4.*6n \+ 2"),
  ("densenet_bc_15_4", {}, r"Invalid model 'densenet_bc_15_4': DenseNet-BC depth must be 6n"),
  ("vgg11", {}, r"Unknown model 'vgg11'"),
])
def test_get_model_validates_names_and_depths_when_building(name, overrides, msg):
  with pytest.raises(ValueError, match=msg) as info:
    lj.get_model(name, num_classes=10, **overrides)
  assert "Known models: " in str(info.value) and "resnet20" in str(info.value)
  assert "resnet{6n+2}" in str(info.value)


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True, "10"])
def test_get_model_refuses_a_non_positive_number_of_classes(num_classes):
  with pytest.raises(ValueError, match=r"num_classes must be a positive integer"):
    lj.get_model("mlp_small", num_classes=num_classes)


def test_get_model_still_builds_the_valid_ones():
  assert lj.get_model("resnet8", num_classes=np.int64(3)).num_classes == 3
  assert lj.get_model("resnet14_noshort", num_classes=1).shortcut == "none"
  assert lj.get_model("preresnet47", num_classes=10).depth == 47
  assert lj.get_model("wrn10_1", num_classes=10).depth == 10


# ------------------------------------------------------------------------- permutations


def _mlp_params():
  model = lj.get_model("mlp", num_classes=10, features=(6, 5))
  return model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]


@pytest.mark.parametrize("bad, msg", [
  ([0, 1, 1, 3, 4, 5], r"repeated indices \[1\] and missing \[2\]"),
  ([0, 1, 2, 3, 4, 6], r"indices out of range \[0, 6\): \[6\]"),
  ([0, 1, 2, 3, 4, -1], r"indices out of range \[0, 6\): \[-1\]"),
  ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "must hold integer indices"),
  ([0, 1, 2, 3, 4], r"must have shape \(6,\), got \(5,\)"),
])
def test_apply_permutation_refuses_a_non_permutation(bad, msg):
  from landscape_jax.core import permutations as P

  params = _mlp_params()
  spec = P.mlp_spec(params)
  perm = P.identity_permutation(spec)
  perm["Dense_0"] = np.asarray(bad)
  acts = r"params/Dense_0/bias\[0\], params/Dense_0/kernel\[1\], params/Dense_1/kernel\[0\]"
  with pytest.raises(ValueError,
                     match=r"Permutation 'Dense_0' \(acting on " + acts + r"\).*" + msg):
    P.apply_permutation(spec, perm, params)
  with pytest.raises(ValueError, match="Permutation 'Dense_0'"):
    P.weight_matching(jax.random.key(0), spec, params, params, init_perm=perm)
  # a real permutation still goes through, also as a traced argument under jit
  good = P.random_permutation(jax.random.key(1), spec)
  eager = P.apply_permutation(spec, good, params)
  traced = jax.jit(lambda p: P.apply_permutation(spec, p, params))(good)
  jax.tree.map(np.testing.assert_array_equal, eager, traced)


@pytest.mark.parametrize("which", ["variables_a", "variables_b"])
def test_weight_matching_names_the_non_finite_leaf(which):
  from landscape_jax.core import permutations as P

  a = _mlp_params()
  b = jax.tree.map(lambda x: x + 0.1, a)
  bad = jax.tree.map(lambda x: x, a if which == "variables_a" else b)
  bad["Dense_1"]["kernel"] = bad["Dense_1"]["kernel"].at[2, 3].set(jnp.nan)
  args = (bad, b) if which == "variables_a" else (a, bad)
  with pytest.raises(ValueError, match=f"weight_matching: {which} has NaN/inf values at "
                                       r"params/Dense_1/kernel \(1 of 30 entries\)"):
    P.weight_matching(jax.random.key(0), P.mlp_spec(a), *args)
  # a leaf no permutation acts on (the classifier's bias): it used to give NaN objectives only
  inf = jax.tree.map(lambda x: x, a)
  inf["Dense_2"]["bias"] = inf["Dense_2"]["bias"].at[0].set(jnp.inf)
  with pytest.raises(ValueError, match="variables_b has NaN/inf values at params/Dense_2/bias"):
    P.weight_matching(jax.random.key(0), P.mlp_spec(a), {"params": a}, {"params": inf})
