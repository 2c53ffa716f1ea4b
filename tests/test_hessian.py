"""Curvature routines against the dense Hessian of a tiny MLP (163 parameters)."""

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import landscape_jax as lj
from landscape_jax.core import hessian as hs
from landscape_jax.core import trees
from landscape_jax.models.mlp import MLP


@pytest.fixture(scope="module")
def problem():
  """4x4 random uint8 images -> 8 hidden ReLU -> 3 classes; 64 examples; dense Hessian."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (64, 4, 4, 1)).astype(np.uint8)
  y = rng.integers(0, 3, 64).astype(np.int32)
  model = MLP(features=(8,), num_classes=3)
  params = model.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1)))["params"]
  loss_fn = lj.make_loss_fn(model, mean=0.5, std=0.25)
  flat, unravel = ravel_pytree(params)
  dense = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), (x, y))))(flat)
  dense = np.asarray(dense, np.float64)
  dense = (dense + dense.T) / 2
  return {"x": x, "y": y, "params": params, "loss_fn": loss_fn, "unravel": unravel,
          "dense": dense, "evals": np.linalg.eigvalsh(dense)}


def _flat(tree):
  return np.asarray(ravel_pytree(tree)[0], np.float64)


def _selected_indices(params, mask):
  idx = ravel_pytree(jax.tree.map(lambda p, m: jnp.full(p.shape, m, bool), params, mask))[0]
  return np.flatnonzero(np.asarray(idx))


def test_hvp_matches_dense_hessian(problem):
  p = problem
  v = p["unravel"](jax.random.normal(jax.random.key(3), (p["dense"].shape[0],)))
  hv = hs.hvp(p["loss_fn"], p["params"], (p["x"], p["y"]), v)
  np.testing.assert_allclose(_flat(hv), p["dense"] @ _flat(v), rtol=1e-4, atol=1e-5)
  assert jax.tree.structure(hv) == jax.tree.structure(p["params"])


def test_split_hvp_weights_batches_by_size(problem):
  """64 examples in batches of 24: two full batches and a remainder of 16."""
  p = problem
  v = p["unravel"](jax.random.normal(jax.random.key(4), (p["dense"].shape[0],)))
  batches = lj.make_batches((p["x"], p["y"]), batch_size=24)
  assert batches.num_examples == 64 and jax.tree.leaves(batches.rest)[0].shape[0] == 16
  hv = _flat(hs.hvp(p["loss_fn"], p["params"], batches, v))
  np.testing.assert_allclose(hv, p["dense"] @ _flat(v), rtol=1e-4, atol=1e-5)
  # The unweighted mean of per-batch means (Li et al.'s reference) is a different quantity.
  parts = [_flat(hs.hvp(p["loss_fn"], p["params"], (p["x"][s], p["y"][s]), v))
           for s in (slice(0, 24), slice(24, 48), slice(48, 64))]
  assert np.max(np.abs(np.mean(parts, 0) - hv)) > 1e-3
  # A split that fits in one batch is just that batch.
  one = lj.make_batches((p["x"], p["y"]), batch_size=1000)
  assert one.rest is None
  np.testing.assert_allclose(_flat(hs.hvp(p["loss_fn"], p["params"], one, v)), hv, atol=1e-5)


def test_masked_hvp_is_the_hessian_block(problem):
  p = problem
  mask = trees.mask_by_ndim(p["params"])
  sel = _selected_indices(p["params"], mask)
  v = p["unravel"](jax.random.normal(jax.random.key(5), (p["dense"].shape[0],)))
  hv = _flat(hs.hvp(p["loss_fn"], p["params"], (p["x"], p["y"]), v, mask=mask))
  expect = np.zeros_like(hv)
  expect[sel] = p["dense"][np.ix_(sel, sel)] @ _flat(v)[sel]
  np.testing.assert_allclose(hv, expect, rtol=1e-4, atol=1e-5)
  assert hs.num_curvature_params(p["params"], mask=mask) == len(sel) == 16 * 8 + 8 * 3


def test_eigenvalues_match_dense_eigvalsh(problem):
  p = problem
  res = hs.hessian_eigenvalues(p["loss_fn"], p["params"], (p["x"], p["y"]), top_k=3,
                               num_steps=40, key=jax.random.key(0), vectors=True)
  dense = p["evals"]
  np.testing.assert_allclose(res.top, dense[::-1][:3], rtol=1e-4)
  np.testing.assert_allclose(res.smallest, dense[0], rtol=1e-4)
  assert dense[0] < 0  # the test exercises a genuinely indefinite Hessian
  # Ritz vectors are eigenvectors: |H u - lambda u| small.
  u = _flat(res.top_vectors[0])
  np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-5)
  assert np.linalg.norm(p["dense"] @ u - res.top[0] * u) < 1e-3 * dense[-1]
  # Deterministic for a key.
  again = hs.hessian_eigenvalues(p["loss_fn"], p["params"], (p["x"], p["y"]), top_k=3,
                                 num_steps=40, key=jax.random.key(0))
  np.testing.assert_array_equal(res.top, again.top)


def test_masked_eigenvalues_and_whole_split(problem):
  p = problem
  mask = trees.mask_by_ndim(p["params"])
  sel = _selected_indices(p["params"], mask)
  dense = np.linalg.eigvalsh(p["dense"][np.ix_(sel, sel)])
  batches = lj.make_batches((p["x"], p["y"]), batch_size=24)
  res = hs.hessian_eigenvalues(p["loss_fn"], p["params"], batches, top_k=2, num_steps=40,
                               mask=mask)
  np.testing.assert_allclose(res.top, dense[::-1][:2], rtol=1e-4)
  np.testing.assert_allclose(res.smallest, dense[0], rtol=1e-4)


def test_lanczos_on_a_dense_matrix_with_repeated_eigenvalues():
  """Invariant subspaces (3 distinct eigenvalues in 12 dimensions) restart cleanly."""
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  lam = np.repeat([-1.0, 0.5, 2.0], 4)
  a = jnp.asarray(q @ np.diag(lam) @ q.T, jnp.float32)
  res = lj.lanczos(lambda v: a @ v, jnp.ones(12), num_steps=12, key=jax.random.key(1))
  vecs = np.asarray(res.vectors, np.float64)
  assert np.all(np.isfinite(vecs))
  np.testing.assert_allclose(vecs @ vecs.T, np.eye(12), atol=1e-5)
  t = np.asarray(lj.krylov.tridiagonal(res.alphas, res.betas), np.float64)
  np.testing.assert_allclose(vecs @ np.asarray(a, np.float64) @ vecs.T, t, atol=1e-5)
  np.testing.assert_allclose(np.linalg.eigvalsh(t), np.sort(lam), atol=1e-5)


def test_lanczos_quadrature_reproduces_moments():
  """Gauss quadrature from m steps is exact for v^T A^k v, k < 2m (the basis of SLQ)."""
  rng = np.random.default_rng(1)
  b = rng.normal(size=(50, 50))
  a = (b + b.T) / 10
  v = rng.normal(size=50)
  res = lj.lanczos(lambda x: jnp.asarray(a, jnp.float32) @ x, jnp.asarray(v, jnp.float32),
                   num_steps=4)
  theta, y = np.linalg.eigh(np.asarray(lj.krylov.tridiagonal(res.alphas, res.betas), np.float64))
  tau = y[0] ** 2
  u = v / np.linalg.norm(v)
  for k in range(0, 7):
    np.testing.assert_allclose(tau @ theta**k, u @ np.linalg.matrix_power(a, k) @ u,
                               rtol=1e-3, atol=1e-4)


def test_trace_agrees_within_its_error_bar(problem):
  p = problem
  est = hs.hessian_trace(jax.random.key(1), p["loss_fn"], p["params"], (p["x"], p["y"]),
                         num_probes=200, probe_batch_size=50)
  exact = np.trace(p["dense"])
  assert abs(est.mean - exact) < 3 * est.stderr
  # The standard error matches the theory for Rademacher probes: Var = 2 sum_{i != j} H_ij^2.
  off = p["dense"] - np.diag(np.diag(p["dense"]))
  theory = np.sqrt(2 * np.sum(off**2) / 200)
  assert 0.6 * theory < est.stderr < 1.5 * theory
  np.testing.assert_allclose(est.stderr, est.samples.std(ddof=1) / np.sqrt(200))
  # Chunking (for progress bars) does not change the probes.
  chunked = hs.hessian_trace(jax.random.key(1), p["loss_fn"], p["params"], (p["x"], p["y"]),
                             num_probes=200, chunk_size=64, probe_batch_size=8)
  np.testing.assert_allclose(chunked.samples, est.samples, rtol=1e-4, atol=1e-5)
  # rtol: stops at the first chunk where stderr <= rtol |mean| (a prefix of the same probes),
  # and the estimate agrees with the dense trace within its error bar
  rtol = 0.1
  early = hs.hessian_trace(jax.random.key(1), p["loss_fn"], p["params"], (p["x"], p["y"]),
                           num_probes=200, chunk_size=8, probe_batch_size=8, rtol=rtol)
  n = early.samples.size
  assert n % 8 == 0 and 10 <= n < 200, n
  np.testing.assert_allclose(early.samples, est.samples[:n], rtol=1e-4, atol=1e-5)
  assert early.stderr <= rtol * abs(early.mean)
  prev = est.samples[:n - 8]
  assert prev.size < 10 or prev.std(ddof=1) / np.sqrt(prev.size) > rtol * abs(prev.mean())
  assert abs(early.mean - exact) < 3 * early.stderr
  with pytest.raises(ValueError, match="rtol must be"):
    hs.hessian_trace(jax.random.key(1), p["loss_fn"], p["params"], (p["x"], p["y"]), rtol=0)


def test_trace_samples_are_quadratic_forms_of_the_dense_hessian(problem):
  """Each Hutchinson sample is ``z^T H z`` of its own probe (forward over forward): on one batch,
  on a split of unequal batches, vmapped, and under a mask (``z_S^T H_SS z_S``)."""
  p = problem
  key, n = jax.random.key(5), 6
  data = (p["x"], p["y"])

  def probes(dim):
    return np.stack([np.asarray(jax.random.rademacher(k, (dim,), jnp.float32), np.float64)
                     for k in jax.random.split(key, n)])

  z = probes(p["dense"].shape[0])
  want = np.einsum("pi,ij,pj->p", z, p["dense"], z)
  for d, batch in ((data, None), (lj.make_batches(data, batch_size=24), None), (data, 3)):
    est = hs.hessian_trace(key, p["loss_fn"], p["params"], d, num_probes=n, progress=False,
                           probe_batch_size=batch)
    np.testing.assert_allclose(est.samples, want, rtol=1e-4, atol=1e-4)
  mask = trees.mask_by_ndim(p["params"])
  idx = _selected_indices(p["params"], mask)
  z = probes(idx.size)
  block = p["dense"][np.ix_(idx, idx)]
  est = hs.hessian_trace(key, p["loss_fn"], p["params"], data, num_probes=n, mask=mask,
                         progress=False)
  np.testing.assert_allclose(est.samples, np.einsum("pi,ij,pj->p", z, block, z), rtol=1e-4,
                             atol=1e-4)


def _conv_net_loss(params, batch):
  x, y = batch
  dn = ("NHWC", "HWIO", "NHWC")
  h = jax.nn.relu(jax.lax.conv_general_dilated(x, params["w1"], (1, 1), "SAME",
                                               dimension_numbers=dn))
  h = jax.lax.conv_general_dilated(h, params["w2"], (1, 1), "SAME", dimension_numbers=dn)
  return jnp.mean((jnp.mean(h, (1, 2)) - y) ** 2)


def test_quadratic_form_computes_each_first_order_convolution_once():
  """jvp-of-jvp along one direction repeats its first-order pass (the inner tangents and the outer
  tangents of the primal); `evaluate_once` merges the repeats. A two-convolution net
  ``conv(relu(conv(x, w1)), w2)`` needs 2 + 4 convolutions: the first layer's primal and first
  order ``F(x, z1)``; the second's primal, first order ``F(h', w2) + F(h, z2)`` and second order
  ``2 F(h', z2)`` (``h'' = 0``: the first layer is linear in its weights and ReLU's second
  derivative vanishes), where the unmerged program has 10. Same value as ``z^T (H z)``."""
  from landscape_jax.backends.cpu.onednn_autodiff import conv_p, with_onednn_derivatives

  k = jax.random.split(jax.random.key(0), 4)
  params = {"w1": jax.random.normal(k[0], (3, 3, 3, 4)) / 3,
            "w2": jax.random.normal(k[1], (3, 3, 4, 5)) / 3}
  batch = (jax.random.normal(k[2], (2, 6, 6, 3)), jax.random.normal(k[3], (2, 5)))
  op = hs.flat_hvp_operator(_conv_net_loss, params, batch, None, onednn=0.0)
  z = jax.random.rademacher(jax.random.key(9), op.x0.shape, op.x0.dtype)

  def convs(fn):
    return sum(e.primitive is conv_p for e in jax.make_jaxpr(fn)(z).jaxpr.eqns)

  def repeated(z):  # the same derivative without merging
    loss = with_onednn_derivatives(_conv_net_loss, min_flops=0.0)
    d1 = lambda y: jax.jvp(lambda u: loss(op.unravel(u), batch), (y,), (z,))[1]
    return jax.jvp(d1, (op.x0,), (z,))[1]

  assert convs(op.quadratic) == 6
  assert convs(repeated) == 10  # without merging: both first-order passes, 2 + 2 x (1 + 2) + 2
  want = jnp.vdot(z, op.matvec(z))
  np.testing.assert_allclose(op.quadratic(z), want, rtol=1e-5)
  np.testing.assert_allclose(repeated(z), want, rtol=1e-5)


def test_evaluate_once_never_merges_effects():
  """Two identical callbacks both run; identical pure equations run once."""
  from landscape_jax.backends.cpu.jaxpr import evaluate_once, rewritten

  calls = []

  def f(x):
    jax.debug.callback(calls.append, 1)
    jax.debug.callback(calls.append, 1)
    return jnp.sin(x) + jnp.sin(x)

  g = rewritten(f, evaluate_once)
  assert sum(e.primitive.name == "sin" for e in jax.make_jaxpr(g)(1.0).jaxpr.eqns) == 1
  np.testing.assert_allclose(jax.jit(g)(0.5), 2 * np.sin(0.5), rtol=1e-6)
  jax.effects_barrier()
  assert len(calls) == 2


def test_spectral_density_is_normalised_and_sits_on_dense_eigenvalues(problem):
  p = problem
  dim = p["dense"].shape[0]
  sd = hs.spectral_density(jax.random.key(2), p["loss_fn"], p["params"], (p["x"], p["y"]),
                           num_probes=2, num_steps=dim)
  evals = p["evals"]
  assert sd.nodes.shape == sd.weights.shape == (2, dim)
  np.testing.assert_allclose(np.trapezoid(sd.density, sd.grid), 1.0, rtol=1e-6)
  np.testing.assert_allclose(sd.weights.sum(1), 1.0, rtol=1e-5)
  scale = np.abs(evals).max()
  # Every node that carries weight is a dense eigenvalue ...
  dist = np.abs(sd.nodes[..., None] - evals).min(-1)
  assert np.all(dist[sd.weights > 1e-6] < 1e-4 * scale)
  # ... and the smoothed density has its mass within 5 kernel widths of them.
  near = np.abs(sd.grid[:, None] - evals).min(-1) < 5 * np.sqrt(sd.sigma2)
  assert np.trapezoid(np.where(near, sd.density, 0.0), sd.grid) > 0.99
  # The quadrature's first moment estimates tr(H) / P.
  assert abs(np.mean(np.sum(sd.weights * sd.nodes, 1)) - evals.mean()) < 0.5 * np.std(evals)


def test_density_from_quadrature_on_a_given_grid():
  grid = np.linspace(-1, 3, 4001)
  g, dens, s2 = lj.density_from_quadrature([[0.0, 2.0]], [[0.25, 0.75]],
                                           smoothing=lj.DensitySmoothing(grid=grid, sigma2=1e-3,
                                                                         scale_sigma=False))
  assert s2 == 1e-3 and g is not None
  np.testing.assert_allclose(np.trapezoid(dens, g), 1.0, rtol=1e-9)
  np.testing.assert_allclose(np.trapezoid(np.where(g > 1, dens, 0), g), 0.75, atol=1e-3)
  with pytest.raises(ValueError, match="increasing"):
    lj.density_from_quadrature([[0.0]], [[1.0]], smoothing=lj.DensitySmoothing(grid=[1.0, 0.0]))


def test_curvature_metric_fn_matches_dense_at_the_centre(problem):
  p = problem
  metric_fn = hs.make_curvature_metric_fn(p["loss_fn"], (p["x"], p["y"]), num_steps=40)
  out = jax.jit(lambda f, q: f(q))(metric_fn, p["params"])
  evals = p["evals"]
  np.testing.assert_allclose(out["lambda_max"], evals[-1], rtol=1e-4)
  np.testing.assert_allclose(out["lambda_min"], evals[0], rtol=1e-4)
  np.testing.assert_allclose(out["ratio"], abs(evals[0] / evals[-1]), rtol=2e-4)


def test_bad_inputs_give_clear_errors(problem):
  p = problem
  none = jax.tree.map(lambda _: False, p["params"])
  with pytest.raises(ValueError, match="selects no parameter"):
    hs.hvp(p["loss_fn"], p["params"], (p["x"], p["y"]), p["params"], mask=none)
  with pytest.raises(ValueError, match="top_k"):
    hs.hessian_eigenvalues(p["loss_fn"], p["params"], (p["x"], p["y"]), top_k=5, num_steps=3)
  with pytest.raises(ValueError, match="num_probes"):
    hs.hessian_trace(jax.random.key(0), p["loss_fn"], p["params"], (p["x"], p["y"]),
                     num_probes=1)
  with pytest.raises(ValueError, match="same pytree structure"):
    hs.hvp(p["loss_fn"], p["params"], (p["x"], p["y"]), {"a": jnp.zeros(3)})
  bad = jax.tree.map(lambda w: w * jnp.nan, p["params"])
  with pytest.raises(FloatingPointError, match="not finite"):
    hs.hessian_eigenvalues(p["loss_fn"], bad, (p["x"], p["y"]), num_steps=3)
  with pytest.raises(ValueError, match="leading example axis"):
    lj.make_batches((p["x"], p["y"][:3]), batch_size=4)


@pytest.mark.multidevice
def test_split_hvp_sharded_over_devices(problem):
  """Batches split over a mesh of the (simulated) devices give the same H v."""
  p = problem
  devices = np.asarray(jax.devices()[:8])
  mesh = jax.sharding.Mesh(devices, ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
  k = devices.size
  batches = lj.make_batches((p["x"], p["y"]), batch_size=3 * k, sharding=sharding)
  assert jax.tree.leaves(batches.batches)[0].sharding.spec == sharding.spec
  v = p["unravel"](jax.random.normal(jax.random.key(6), (p["dense"].shape[0],)))
  assert batches.rest is None or batches.rest[0].shape[0] % k == 0  # 64 = 2 x 24 + 16
  hv = _flat(hs.hvp(p["loss_fn"], p["params"], batches, v))
  np.testing.assert_allclose(hv, p["dense"] @ _flat(v), rtol=1e-4, atol=1e-5)


def test_ratio_map_through_surface_grid(problem):
  """surface_grid (vmapped, chunked) evaluates the curvature metric_fn; an off-centre point
  against the dense Hessian there, and the centre against the dense Hessian at the centre."""
  p = problem
  metric_fn = hs.make_curvature_metric_fn(p["loss_fn"], (p["x"], p["y"]), num_steps=40)
  d1, d2 = lj.random_directions(jax.random.key(7), p["params"], num=2)
  xs, ys = np.array([0.0, 0.5]), np.array([-0.3, 0.0])
  res = lj.surface_grid(metric_fn, p["params"], (d1, d2), xs, ys,
                        engine=lj.EngineOptions(chunk_size=2, progress=False))
  assert res["ratio"].shape == (2, 2)
  point = lj.plane_point(p["params"], d1, d2, 0.5, -0.3)
  flat = ravel_pytree(point)[0]
  dense = jax.jit(jax.hessian(lambda f: p["loss_fn"](p["unravel"](f), (p["x"], p["y"]))))(flat)
  evals = np.linalg.eigvalsh(np.asarray(dense, np.float64))
  np.testing.assert_allclose(res["lambda_max"][1, 0], evals[-1], rtol=1e-4)
  np.testing.assert_allclose(res["lambda_min"][1, 0], evals[0], rtol=1e-4)
  np.testing.assert_allclose(res["ratio"][1, 0], abs(evals[0] / evals[-1]), rtol=2e-4)
  np.testing.assert_allclose(res["lambda_max"][0, 1], p["evals"][-1], rtol=1e-4)


def test_curvature_map_stops_on_the_residual_bound(problem):
  """``tol``: each point's Lanczos stops on the residual bound. At the centre both ends lie
  within the bound of the dense Hessian's extreme eigenvalues and equal the fixed-step metric
  run for that many steps; through surface_grid (vmapped chunk of 4) every point reports the
  steps it needs alone."""
  p = problem
  batch, tol = (p["x"], p["y"]), 1e-3
  metric_fn = hs.make_curvature_metric_fn(p["loss_fn"], batch, num_steps=40, tol=tol)
  call = jax.jit(lambda f, q: f(q))
  out = call(metric_fn, p["params"])
  m = int(out["lanczos_steps"])
  assert 2 <= m < 40
  evals = p["evals"]
  for key, ev in (("lambda_max", evals[-1]), ("lambda_min", evals[0])):
    # |theta - lambda| <= residual <= tol |theta| (plus float32 rounding)
    assert abs(float(out[key]) - ev) <= tol * abs(ev) + 1e-5
  fixed = call(hs.make_curvature_metric_fn(p["loss_fn"], batch, num_steps=m), p["params"])
  for key in ("lambda_max", "lambda_min", "ratio"):
    np.testing.assert_allclose(out[key], fixed[key], rtol=1e-5)
  d1, d2 = lj.random_directions(jax.random.key(7), p["params"], num=2)
  xs, ys = np.array([0.0, 0.5]), np.array([-0.3, 0.0])
  res = lj.surface_grid(metric_fn, p["params"], (d1, d2), xs, ys,
                        engine=lj.EngineOptions(chunk_size=4, progress=False))
  assert res["lanczos_steps"][0, 1] == m
  alone = call(metric_fn, lj.plane_point(p["params"], d1, d2, 0.5, -0.3))
  assert res["lanczos_steps"][1, 0] == int(alone["lanczos_steps"])
  np.testing.assert_allclose(res["lambda_max"][1, 0], alone["lambda_max"], rtol=1e-5)
  assert len(np.unique(res["lanczos_steps"])) > 1  # the points of the chunk stop apart
  with pytest.raises(ValueError, match="tol must be"):
    hs.make_curvature_metric_fn(p["loss_fn"], batch, tol=-1.0)


@pytest.mark.slow
def test_hessian_experiment_script_runs(tmp_path):
  import json
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, os.path.join(root, "experiments", "hessian.py"),
         "--config=" + os.path.join(root, "experiments", "configs", "hessian_digits.py") + ":quick",
         "--config.train.num_epochs=1", "--config.subset=256",
         "--config.ratio_map.x=(-1.0, 1.0, 2)", "--config.ratio_map.y=(-1.0, 1.0, 2)",
         "--config.ratio_map.subset=64",
         f"--workdir={tmp_path}", "--noprogress"]
  env = {**os.environ, "PYTHONPATH": root,
         "XLA_FLAGS": conftest.child_xla_flags("--xla_force_host_platform_device_count=2")}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(tmp_path / "summary.json"))
  top = summary["top_eigenvalues"]
  assert len(top) == 5 and top == sorted(top, reverse=True)
  assert summary["smallest_eigenvalue"] <= top[-1] and summary["trace_stderr"] > 0
  assert summary["ratio_map"]["max"] is not None
  spectrum = np.load(tmp_path / "spectrum.npz")
  np.testing.assert_allclose(np.trapezoid(spectrum["density"], spectrum["grid"]), 1.0, rtol=1e-6)
  assert (tmp_path / "spectrum.png").exists()
  assert (tmp_path / "ratio_map" / "eigen_ratio.png").exists()


@pytest.mark.parametrize("batched", [False, True], ids=["one batch", "split"])
def test_linearized_operator_matches_dense(problem, batched):
  """linearize=True: the gradient linearised once gives the same products and eigenvalues."""
  p = problem
  data = lj.make_batches((p["x"], p["y"]), batch_size=24) if batched else (p["x"], p["y"])
  v = jax.random.normal(jax.random.key(6), (p["dense"].shape[0],))
  op = hs.flat_hvp_operator(p["loss_fn"], p["params"], data, None, linearize=True)
  np.testing.assert_allclose(np.asarray(jax.jit(op.matvec)(v), np.float64),
                             p["dense"] @ np.asarray(v, np.float64), rtol=1e-4, atol=1e-5)
  res = hs.hessian_eigenvalues(p["loss_fn"], p["params"], data, top_k=2, num_steps=40,
                               linearize=True)
  np.testing.assert_allclose(res.top, p["evals"][::-1][:2], rtol=1e-4)
  np.testing.assert_allclose(res.smallest, p["evals"][0], rtol=1e-4)
