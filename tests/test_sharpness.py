"""Sharpness measures against closed forms: linear and quadratic losses, and Fisher-Rao by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.core import sharpness as sh

DIM = 6


def _quadratic(params, batch):
  h, b = batch
  w = params["w"]
  return 0.5 * w @ h @ w + b @ w


def _linear(params, batch):  # mean over examples of x_i . w
  return jnp.mean(batch @ params["w"])


def _problem(seed=0, at_minimum=False):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(DIM, DIM))
  h = (a @ a.T / DIM + 0.1 * np.eye(DIM)).astype(np.float32)
  w = rng.normal(size=DIM).astype(np.float32)
  b = np.zeros(DIM, np.float32) if at_minimum else rng.normal(size=DIM).astype(np.float32)
  if at_minimum:  # minimum of 0.5 (v - w)^T H (v - w): b = -H w, shift by a constant
    b = (-h @ w).astype(np.float32)
  return {"w": jnp.asarray(w)}, (jnp.asarray(h), jnp.asarray(b))


def _scale(w, adaptive, eta):
  return np.abs(w) + eta if adaptive else np.ones_like(w)


def _trust_region_max(g, a, rho):
  """max_{||u|| <= rho} g.u + u^T a u / 2 for a PSD `a`: u = (lam I - a)^-1 g, ||u|| = rho."""
  lam_max = np.linalg.eigvalsh(a)[-1]
  lo, hi = lam_max + 1e-12, lam_max + np.linalg.norm(g) / rho + 1.0
  for _ in range(200):
    lam = 0.5 * (lo + hi)
    u = np.linalg.solve(lam * np.eye(len(g)) - a, g)
    lo, hi = (lam, hi) if np.linalg.norm(u) > rho else (lo, lam)
  u = np.linalg.solve(hi * np.eye(len(g)) - a, g)
  return g @ u + 0.5 * u @ a @ u


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_worst_case_on_a_linear_loss_is_the_dual_norm(norm, adaptive):
  rng = np.random.default_rng(1)
  w = rng.normal(size=DIM).astype(np.float32)
  x = rng.normal(size=(5, DIM)).astype(np.float32)
  g = x.mean(0)
  c = _scale(w, adaptive, 0.1)
  rho = 0.05
  res = lj.worst_case_sharpness(jax.random.key(0), _linear, {"w": jnp.asarray(w)},
                                jnp.asarray(x), rho=rho, norm=norm, adaptive=adaptive, eta=0.1,
                                ascent=lj.Ascent(restarts=2, steps=20))
  want = rho * (np.abs(c * g).sum() if norm == "linf" else np.linalg.norm(c * g))
  np.testing.assert_allclose(res.value, want, rtol=1e-4)
  assert np.isnan(res.stderr) and res.settings["norm"] == norm


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_l2_on_a_quadratic_is_the_trust_region_solution(adaptive):
  params, (h, b) = _problem(2)
  w = np.asarray(params["w"], np.float64)
  c = _scale(w, adaptive, 0.0)
  g = np.asarray(h, np.float64) @ w + np.asarray(b, np.float64)
  rho = 0.3 if not adaptive else 0.3
  want = _trust_region_max(c * g, c[:, None] * np.asarray(h, np.float64) * c[None], rho)
  res = lj.worst_case_sharpness(jax.random.key(0), _quadratic, params, (h, b), rho=rho,
                                norm="l2", adaptive=adaptive,
                                ascent=lj.Ascent(restarts=3, steps=300, patience=60, rtol=1e-6))
  np.testing.assert_allclose(res.value, want, rtol=2e-3)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_checkpoint_schedule_reaches_the_known_maxima(norm):
  """Croce & Hein's checkpoint rule: the dual norm of a linear loss, and (l2) the trust-region
  maximum of a quadratic. Checkpoints for 100 steps: ceil(100 p_j) with p_3 = 0.57 computed in
  floating point as 0.5700000000000001, hence 58 (as in the reference code)."""
  np.testing.assert_array_equal(np.flatnonzero(sh._checkpoints(100)),
                                [22, 41, 58, 70, 80, 87, 93, 99])
  with pytest.raises(ValueError, match="schedule"):
    lj.Ascent(schedule="cosine")
  ascent = lj.Ascent(restarts=2, steps=60, schedule="checkpoints")
  rng = np.random.default_rng(1)
  w = rng.normal(size=DIM).astype(np.float32)
  x = rng.normal(size=(5, DIM)).astype(np.float32)
  c, g, rho = np.abs(w), x.mean(0), 0.05
  res = lj.worst_case_sharpness(jax.random.key(0), _linear, {"w": jnp.asarray(w)},
                                jnp.asarray(x), rho=rho, norm=norm, adaptive=True, ascent=ascent)
  want = rho * (np.abs(c * g).sum() if norm == "linf" else np.linalg.norm(c * g))
  np.testing.assert_allclose(res.value, want, rtol=1e-4)
  assert res.settings["schedule"] == "checkpoints" and res.settings["steps_run"] == [60]
  if norm == "l2":
    params, (h, b) = _problem(2)
    w = np.asarray(params["w"], np.float64)
    g = np.asarray(h, np.float64) @ w + np.asarray(b, np.float64)
    want = _trust_region_max(g, np.asarray(h, np.float64), 0.3)
    res = lj.worst_case_sharpness(jax.random.key(0), _quadratic, params, (h, b), rho=0.3,
                                  norm="l2", ascent=lj.Ascent(restarts=3, steps=300,
                                                              schedule="checkpoints"))
    np.testing.assert_allclose(res.value, want, rtol=2e-3)


def test_worst_case_at_a_minimum_is_half_rho_squared_lambda_max():
  params, (h, b) = _problem(3, at_minimum=True)
  rho = 0.2
  res = lj.worst_case_sharpness(jax.random.key(1), _quadratic, params, (h, b), rho=rho,
                                norm="l2",
                                ascent=lj.Ascent(restarts=4, steps=300, patience=60, rtol=1e-6))
  want = 0.5 * rho**2 * np.linalg.eigvalsh(np.asarray(h, np.float64))[-1]
  np.testing.assert_allclose(res.value, want, rtol=5e-3)
  # the maximum over a smaller set: the linf ball of radius rho / sqrt(d) lies in the l2 ball
  inner = lj.worst_case_sharpness(jax.random.key(1), _quadratic, params, (h, b),
                                  rho=rho / np.sqrt(DIM), norm="linf",
                                  ascent=lj.Ascent(restarts=4, steps=200))
  assert 0 < inner.value <= res.value * (1 + 1e-4)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_ascent_maximiser_is_feasible_and_attains_the_value(norm):
  """The ascent's best point delta = c u: ||delta / |w| ||_p <= rho (the constraint of
  Andriushchenko et al.'s adaptive sharpness, eta = 0) and L(w + delta) - L(w) is the value."""
  params, data = _problem(6)
  c = sh.perturbation_scale(params, adaptive=True)
  rho = 0.4
  base, best, _, _, delta = sh._ascent(
    sh.as_partial(_quadratic), params, c, data, jax.random.key(0), rho, norm=norm, restarts=2,
    steps=50, patience=50, halve_every=5, momentum=0.75, step_size=1.0, rtol=1e-3)
  w = np.asarray(params["w"], np.float64)
  d = np.asarray(delta["w"], np.float64)
  ratio = np.abs(d / np.abs(w)) if norm == "linf" else np.linalg.norm(d / np.abs(w))
  assert np.max(ratio) <= rho * (1 + 1e-6)
  assert np.max(ratio) > 0.5 * rho  # it moved: the loss is not flat
  moved = _quadratic({"w": params["w"] + delta["w"]}, data)
  np.testing.assert_allclose(float(moved - base), float(best - base), rtol=1e-5)


def test_worst_case_per_batch_against_whole_split():
  rng = np.random.default_rng(4)
  w = rng.normal(size=DIM).astype(np.float32)
  x = rng.normal(size=(10, DIM)).astype(np.float32)
  data = lj.make_batches(x, batch_size=4)  # batches of 4, 4 and 2
  rho = 0.1
  kw = dict(rho=rho, norm="linf", ascent=lj.Ascent(restarts=1, steps=10))
  per = lj.worst_case_sharpness(jax.random.key(0), _linear, {"w": jnp.asarray(w)}, data, **kw)
  split = lj.worst_case_sharpness(jax.random.key(0), _linear, {"w": jnp.asarray(w)}, data,
                                  per_batch=False, **kw)
  parts = [x[:4], x[4:8], x[8:]]
  want_batches = [rho * np.abs(p.mean(0)).sum() for p in parts]
  np.testing.assert_allclose(per.samples, want_batches, rtol=1e-4)
  np.testing.assert_allclose(per.value, np.average(want_batches, weights=[4, 4, 2]), rtol=1e-4)
  np.testing.assert_allclose(split.value, rho * np.abs(x.mean(0)).sum(), rtol=1e-4)
  assert per.value > split.value  # the per-batch maxima exceed the maximum of the mean


def test_mask_keeps_leaves_fixed():
  def loss(params, batch):
    return jnp.sum(params["a"]) + 3.0 * jnp.sum(params["b"])

  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  res = lj.worst_case_sharpness(jax.random.key(0), loss, params, None, rho=0.5, norm="linf",
                                mask={"a": True, "b": False}, ascent=lj.Ascent(restarts=1, steps=5))
  np.testing.assert_allclose(res.value, 1.5, rtol=1e-5)


@pytest.mark.parametrize("adaptive", [False, True])
def test_average_case_of_a_quadratic_is_half_rho_squared_trace(adaptive):
  params, (h, b) = _problem(5, at_minimum=True)
  c = _scale(np.asarray(params["w"]), adaptive, 0.0)
  rho = 0.1
  res = lj.average_sharpness(jax.random.key(0), _quadratic, params, (h, b), rho=rho,
                             adaptive=adaptive, num_samples=4000, sample_batch_size=500)
  want = 0.5 * rho**2 * np.trace(np.diag(c**2) @ np.asarray(h, np.float64))
  assert abs(res.value - want) < 4 * res.stderr
  assert res.stderr < 0.05 * want
  assert res.samples.shape == (4000,)


def test_sigma_search_finds_the_analytic_sigma():
  params, (h, b) = _problem(6, at_minimum=True)
  target = 0.05
  res = lj.sigma_search(jax.random.key(0), _quadratic, params, (h, b), target=target,
                        num_samples=2000, bracket=lj.Bracket(lower=1e-3, upper=10.0, num_iters=30))
  want = np.sqrt(2 * target / np.trace(np.asarray(h, np.float64)))
  assert res.settings["bracketed"]
  np.testing.assert_allclose(res.value, want, rtol=0.05)
  assert res.settings["increase"] <= target
  # the bracket is reported when the target is never reached
  far = lj.sigma_search(jax.random.key(0), _quadratic, params, (h, b), target=1e6,
                        num_samples=4, bracket=lj.Bracket(upper=1.0))
  assert far.value == 1.0 and not far.settings["bracketed"]


def _softmax_ce(logits, labels):
  return -jax.nn.log_softmax(logits)[jnp.arange(labels.shape[0]), labels].mean()


def test_fisher_rao_norm_by_hand_for_relu_nets_without_biases():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(9, 4)).astype(np.float32)
  y = rng.integers(0, 3, size=9)
  params = {"w1": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}

  def loss(p, batch):
    xb, yb = batch
    return _softmax_ce(jax.nn.relu(xb @ p["w1"]) @ p["w2"], yb)

  res = lj.fisher_rao_norm(loss, params, (jnp.asarray(x), jnp.asarray(y)))
  # by hand: <w, grad l> = D <dl/df, f> with D = 2 layers, dl/df = softmax(f) - onehot(y)
  f = np.maximum(x @ np.asarray(params["w1"]), 0) @ np.asarray(params["w2"])
  p = np.exp(f - f.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  inner = 2 * ((p - np.eye(3)[y]) * f).sum(1)
  np.testing.assert_allclose(res.samples, inner, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(res.value, np.mean(inner**2), rtol=1e-4)
  # a split in batches gives the same per-example terms
  split = lj.fisher_rao_norm(loss, params, lj.make_batches((x, y), batch_size=4))
  np.testing.assert_allclose(split.samples, inner, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("adaptive", [False, True])
def test_hessian_sharpness_against_the_dense_hessian(adaptive):
  params, (h, b) = _problem(8)
  c = _scale(np.asarray(params["w"], np.float64), adaptive, 0.0)
  a = c[:, None] * np.asarray(h, np.float64) * c[None]
  top = lj.hessian_sharpness(_quadratic, params, (h, b), kind="top", adaptive=adaptive,
                             num_steps=DIM)
  np.testing.assert_allclose(top.value, np.linalg.eigvalsh(a)[-1], rtol=1e-4)
  tr = lj.hessian_sharpness(_quadratic, params, (h, b), kind="trace", adaptive=adaptive,
                            num_probes=400)
  assert abs(tr.value - np.trace(a)) < 5 * tr.stderr + 1e-6


def test_filter_normalized_rise_of_a_quadratic():
  rng = np.random.default_rng(9)
  a = rng.normal(size=(DIM, DIM))
  h = jnp.asarray(a @ a.T, jnp.float32)
  params = {"kernel": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)}

  def loss(p, batch):
    v = p["kernel"].reshape(-1)
    return 0.5 * v @ batch @ v

  alpha = 0.3
  res = lj.filter_normalized_rise(jax.random.key(2), loss, params, h, alpha=alpha,
                                  num_directions=5)
  want = []
  for k in range(5):
    (d,) = lj.random_directions(jax.random.fold_in(jax.random.key(2), k), params, num=1,
                                norm="filter")
    v = np.asarray(d["kernel"], np.float64).reshape(-1)
    want.append(0.5 * alpha**2 * v @ np.asarray(h, np.float64) @ v)
  np.testing.assert_allclose(res.samples, want, rtol=1e-4)
  # filter normalisation: every filter (column) of d has the norm of the same filter of w
  (d,) = lj.random_directions(jax.random.fold_in(jax.random.key(2), 0), params, num=1,
                              norm="filter")
  np.testing.assert_allclose(np.linalg.norm(np.asarray(d["kernel"]), axis=0),
                             np.linalg.norm(np.asarray(params["kernel"]), axis=0), rtol=1e-5)


def test_bad_arguments_are_refused():
  params, data = _problem(0)
  with pytest.raises(ValueError, match="rho"):
    lj.worst_case_sharpness(jax.random.key(0), _quadratic, params, data, rho=0.0)
  with pytest.raises(ValueError, match="norm"):
    lj.worst_case_sharpness(jax.random.key(0), _quadratic, params, data, rho=0.1, norm="l1")
  with pytest.raises(ValueError, match="eta"):
    sh.perturbation_scale(params, adaptive=True, eta=-1.0)
  with pytest.raises(ValueError, match="num_samples"):
    lj.average_sharpness(jax.random.key(0), _quadratic, params, data, rho=0.1, num_samples=1)


def test_logit_normalisation_removes_the_scale_of_the_logits():
  from landscape_jax.adapters.losses import normalize_logits

  rng = np.random.default_rng(10)
  logits = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  labels = jnp.asarray([0, 2, 1, 1])
  z = np.asarray(normalize_logits(logits), np.float64)
  f = np.asarray(logits, np.float64) - np.asarray(logits, np.float64).mean(1, keepdims=True)
  np.testing.assert_allclose(z, f / np.linalg.norm(f, axis=1, keepdims=True), rtol=1e-5)
  loss = lj.NORMALIZED_CROSS_ENTROPY
  a, _ = loss.sums(logits, labels)
  b, _ = loss.sums(7.0 * logits + 3.0, labels)
  np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
  np.testing.assert_allclose(a["accuracy"], lj.CROSS_ENTROPY.sums(logits, labels)[0]["accuracy"])
