"""Krylov methods (`core.krylov`): Gauss quadrature from a Lanczos run, checked against a dense
eigendecomposition."""

import jax
import jax.numpy as jnp
import numpy as np

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
