"""Krylov methods (`core.krylov`): Gauss quadrature from a Lanczos run, checked against a dense
eigendecomposition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj


def test_gauss_quadrature_matches_dense_eigendecomposition():
  """Nodes are the eigenvalues of T and weights the squared first components of its
  eigenvectors; with m = n steps the quadrature is exact: ``sum_i tau_i theta_i^k = v^T A^k v``
  for the unit start vector v (Golub & Meurant)."""
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  a = (q * np.array([-2.0, -0.5, 0.1, 1.0, 3.0, 7.0])) @ q.T
  v = rng.normal(size=6)
  res = lj.lanczos(lambda x: jnp.asarray(a, jnp.float32) @ x, jnp.asarray(v, jnp.float32),
                   num_steps=6, key=jax.random.key(0))
  nodes, weights = lj.krylov.gauss_quadrature(res.alphas, res.betas)
  t = np.asarray(lj.krylov.tridiagonal(res.alphas, res.betas), np.float64)
  evals, evecs = np.linalg.eigh(t)
  np.testing.assert_allclose(nodes, evals, rtol=1e-12)
  np.testing.assert_allclose(weights, evecs[0] ** 2, rtol=1e-12)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-12)
  u = v / np.linalg.norm(v)
  for k in (1, 2, 3):
    np.testing.assert_allclose(np.sum(weights * nodes ** k), u @ np.linalg.matrix_power(a, k) @ u,
                               rtol=1e-4)
  # batched over probes: the rows are the single runs
  batched_nodes, batched_weights = lj.krylov.gauss_quadrature(
    np.stack([res.alphas, res.alphas]), np.stack([res.betas, res.betas]))
  np.testing.assert_array_equal(batched_nodes[1], nodes)
  np.testing.assert_array_equal(batched_weights[0], weights)


def _residual_test(alphas, betas, m, top, bottom, tol):
  """The stopping test at step m on the host in float64: (passes, Ritz values, bounds)."""
  t = np.diag(np.asarray(alphas[:m], np.float64))
  b = np.asarray(betas[:m - 1], np.float64)
  theta, y = np.linalg.eigh(t + np.diag(b, 1) + np.diag(b, -1))
  beta_m = float(betas[m - 1])
  idx = list(range(m - top, m)) + list(range(bottom))
  resid = np.abs(beta_m * y[-1, idx])
  return bool(np.all(resid <= tol * np.abs(theta[idx]))), theta[idx], resid


def test_lanczos_stops_on_the_residual_bound():
  """With ``tol``, Lanczos stops at the first step whose extreme Ritz pairs satisfy
  ``|beta_m s_{m,i}| <= tol |theta_i|`` (checked in float64 on the host from a fixed-step run);
  its steps are the fixed-step run's prefix, each reported Ritz value is within its bound of an
  eigenvalue of the dense matrix, and under vmap every item keeps its own steps."""
  rng = np.random.default_rng(0)
  n = 48
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  evals = np.concatenate([[-3.0, -2.5], np.linspace(-1.0, 1.0, n - 5), [4.0, 5.0, 6.0]])
  a = jnp.asarray((q * evals) @ q.T, jnp.float32)
  v0 = jnp.asarray(rng.normal(size=n), jnp.float32)
  key = jax.random.key(1)
  fixed = lj.lanczos(lambda x: a @ x, v0, num_steps=40, key=key)
  assert fixed.steps is None
  tol = 1e-3
  for ends in ((1, 1), (3, 0)):
    res = lj.lanczos(lambda x: a @ x, v0, num_steps=40, key=key, tol=tol, tol_ends=ends)
    m = int(res.steps)
    assert sum(ends) <= m < 40
    np.testing.assert_array_equal(res.alphas[:m], fixed.alphas[:m])
    np.testing.assert_array_equal(res.betas[:m - 1], fixed.betas[:m - 1])
    assert not np.any(res.alphas[m:]) and not np.any(res.vectors[m + 1:])
    passes, theta, resid = _residual_test(fixed.alphas, fixed.betas, m, *ends, tol * 1.01)
    assert passes
    assert not _residual_test(fixed.alphas, fixed.betas, m - 1, *ends, tol * 0.99)[0]
    for t, r in zip(theta, resid, strict=True):  # an eigenvalue within the residual bound
      assert np.min(np.abs(evals - t)) <= r * 1.01 + 1e-5
    if ends == (1, 1):
      first = res
  # vmapped over an unchanged and a shifted operator: each item stops at its own step
  shifts = jnp.array([0.0, 2.0])
  batched = jax.vmap(lambda c: lj.lanczos(lambda x: a @ x + c * x, v0, num_steps=40, key=key,
                                          tol=tol))(shifts)
  shifted = lj.lanczos(lambda x: a @ x + 2.0 * x, v0, num_steps=40, key=key, tol=tol)
  for i, alone in enumerate((first, shifted)):
    assert int(batched.steps[i]) == int(alone.steps)
    np.testing.assert_allclose(batched.alphas[i], alone.alphas, rtol=1e-5, atol=1e-5)
  assert int(batched.steps[1]) != int(batched.steps[0])


def test_lanczos_tolerance_is_checked():
  a = jnp.eye(4)
  for bad, match in (({"tol": 0.0}, "tol must be"), ({"tol": 1e-3, "tol_ends": (0, 0)},
                                                      "tol_ends"),
                     ({"tol": 1e-3, "tol_ends": (3, 2)}, "raise num_steps")):
    with pytest.raises(ValueError, match=match):
      lj.lanczos(lambda x: a @ x, jnp.ones(4), num_steps=4, **bad)
