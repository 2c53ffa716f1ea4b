"""Krylov methods: Lanczos tridiagonalisation and Gauss quadrature, the generic linear algebra
behind the curvature routines of `core.hessian` (usable on any symmetric linear map).

* `lanczos` runs Lanczos with full reorthogonalisation inside `lax.fori_loop` on flat vectors;
  memory is ``num_steps x P``. Pure; works under jit and vmap, and with a `sharding` holds every
  vector sharded.
* `gauss_quadrature` turns the tridiagonal matrix into quadrature nodes (Ritz values) and weights
  (squared first components of its eigenvectors): ``v^T f(A) v ~ sum_i tau_i f(theta_i)``, the
  stochastic Lanczos quadrature (SLQ) of a spectral density (Lin, Saad & Yang 2016; Ghorbani et
  al. 2019).
* `density_from_quadrature` smooths nodes and weights into a density on a grid
  (`DensitySmoothing`, PyHessian's ``density_generate``).

References:
  Lin, Saad and Yang 2016, "Approximating Spectral Densities of Large Matrices".
  Ghorbani, Krishnan and Xiao 2019, "An Investigation into Neural Net Optimization via Hessian
  Eigenvalue Density".
  Yao, Gholami, Keutzer and Mahoney 2020, "PyHessian: Neural Networks Through the Lens of the
  Hessian".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from landscape_jax.core import progress as progress_lib
from landscape_jax.core.precision import matmul_precision

CURVATURE_PRECISION = "highest"


def constrain(x, sharding, leading: int = 0):
  """`x` constrained to `sharding` (the flat-vector sharding) on its last axis; identity without
  one."""
  if sharding is None:
    return x
  spec = jax.sharding.PartitionSpec(*([None] * leading), *sharding.spec)
  return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(sharding.mesh, spec))


class LanczosResult(NamedTuple):
  """Output of `lanczos`: ``T = tridiag(betas, alphas, betas)``, ``A V^T ~ V^T T``.

  Attributes:
    alphas: (m,) diagonal of the tridiagonal matrix T.
    betas: (m - 1,) off-diagonal of T (0 where the Krylov space was exhausted and the iteration
      restarted with a fresh random vector orthogonal to the previous ones).
    vectors: (m, P) orthonormal Lanczos vectors (rows).
  """

  alphas: jax.Array
  betas: jax.Array
  vectors: jax.Array


def lanczos(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, *, num_steps: int,
            key: jax.Array | None = None, precision=CURVATURE_PRECISION,
            sharding=None) -> LanczosResult:
  """Lanczos tridiagonalisation with full reorthogonalisation, inside `lax.fori_loop`.

  For symmetric ``A`` (``matvec(x) = A x``) and unit ``v_1 = v0 / |v0|``:
  ``w = A v_j - beta_{j-1} v_{j-1}``, ``alpha_j = <w, v_j>``, ``w -= alpha_j v_j``, then
  ``w -= V^T (V w)`` twice (classical Gram-Schmidt against every previous vector, "twice is
  enough"), ``beta_j = |w|``, ``v_{j+1} = w / beta_j``. If ``beta_j`` falls below float epsilon
  times the norm estimate (an invariant subspace was found), ``beta_j = 0`` and ``v_{j+1}`` is a
  fresh random unit vector orthogonal to the previous ones (drawn from ``key``), so that the Ritz
  values stay eigenvalues of ``A``. Pure; works under jit and vmap.

  Args:
    matvec: the linear map on flat vectors of shape (P,).
    v0: (P,) starting vector (need not be normalised).
    num_steps: number m of Lanczos vectors, ``1 <= m <= P``.
    key: key for restart vectors (default ``jax.random.key(0)``).
    precision: matmul precision of the products, `matvec`'s included, and of the
      reorthogonalisation (`core.precision`; default ``"highest"``, None: JAX's setting).
    sharding: optional `NamedSharding` of the (P,) vectors (`vector_sharding`): every Lanczos
      vector is then held sharded, ``(m + 1) P / n`` numbers per device over n devices.

  Returns:
    A `LanczosResult`.

  References:
    Ghorbani, Krishnan and Xiao 2019, "An Investigation into Neural Net Optimization via Hessian
    Eigenvalue Density".
  """
  (dim,) = v0.shape
  if not 1 <= num_steps <= dim:
    raise ValueError(f"num_steps must lie in [1, P={dim}], got {num_steps}.")
  with matmul_precision(precision):
    return lanczos_iteration(matvec, v0, num_steps, key, sharding)


def lanczos_iteration(matvec, v0, num_steps: int, key=None, sharding=None, tick=None
                      ) -> LanczosResult:
  """`lanczos` without its checks and precision context, for callers that trace it inside their
  own compiled function (`hessian`); `tick` advances the active progress bar by that amount
  after every step (`core.progress`; None: no bar)."""
  (dim,) = v0.shape
  key = jax.random.key(0) if key is None else key
  dtype = v0.dtype
  eps = jnp.finfo(dtype).eps
  v0 = constrain(v0 / jnp.linalg.norm(v0), sharding)
  vecs = constrain(jnp.zeros((num_steps + 1, dim), dtype).at[0].set(v0), sharding, 1)
  # row m: scratch for v_{m+1}
  alphas = jnp.zeros((num_steps,), dtype)
  betas = jnp.zeros((num_steps,), dtype)

  def orthogonalise(vecs, w):
    w = w - vecs.T @ (vecs @ w)
    return w - vecs.T @ (vecs @ w)

  def body(j, carry):
    vecs, alphas, betas, anorm = carry
    v = vecs[j]
    w = matvec(v)
    alpha = jnp.vdot(w, v)
    beta_prev = jnp.where(j > 0, betas[jnp.maximum(j - 1, 0)], 0.0)
    w = w - alpha * v - beta_prev * vecs[jnp.maximum(j - 1, 0)]
    w = orthogonalise(vecs, w)  # rows > j are still zero
    beta = jnp.linalg.norm(w)
    anorm = jnp.maximum(anorm, jnp.abs(alpha) + beta_prev + beta)
    breakdown = beta <= eps * anorm

    def restart(_):
      r = jax.random.normal(jax.random.fold_in(key, j), (dim,), dtype)
      r = orthogonalise(vecs, r)
      return r / jnp.maximum(jnp.linalg.norm(r), jnp.finfo(dtype).tiny), jnp.zeros((), dtype)

    def proceed(_):
      return w / beta, beta

    nxt, beta = jax.lax.cond(breakdown, restart, proceed, None)
    vecs = constrain(vecs.at[j + 1].set(constrain(nxt, sharding)), sharding, 1)
    if tick is not None:  # a step done: advance the progress bar by `tick` (0 for padding)
      progress_lib.tick(tick)
    return vecs, alphas.at[j].set(alpha), betas.at[j].set(beta), anorm

  init = (vecs, alphas, betas, jnp.zeros((), dtype))
  vecs, alphas, betas, _ = jax.lax.fori_loop(0, num_steps, body, init)
  return LanczosResult(alphas, betas[:-1], vecs[:num_steps])


def tridiagonal(alphas: jax.Array, betas: jax.Array) -> jax.Array:
  """The dense symmetric tridiagonal matrix with diagonal ``alphas`` and off-diagonal ``betas``."""
  return jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)


def tridiagonal_eigh(alphas, betas) -> tuple[np.ndarray, np.ndarray]:
  """Eigenvalues (ascending) and eigenvectors (columns) of ``tridiag(betas, alphas, betas)``,
  on the host in float64."""
  t = np.diag(np.asarray(alphas, np.float64))
  b = np.asarray(betas, np.float64)
  t += np.diag(b, 1) + np.diag(b, -1)
  return np.linalg.eigh(t)


def gauss_quadrature(alphas, betas) -> tuple[np.ndarray, np.ndarray]:
  """Gauss quadrature nodes and weights of a Lanczos run: the Ritz values ``theta_i`` and the
  squared first components ``tau_i = Y_{0i}^2`` of the eigenvectors of T, so that
  ``v^T f(A) v ~ sum_i tau_i f(theta_i)`` for the unit start vector ``v`` (Golub & Meurant 2010,
  "Matrices, Moments and Quadrature with Applications"; Lin, Saad & Yang 2016).

  Batched over leading axes: ``alphas`` (..., m), ``betas`` (..., m - 1) give nodes and weights
  of shape (..., m) (each row of weights sums to 1).
  """
  alphas = np.asarray(alphas, np.float64)
  betas = np.asarray(betas, np.float64)
  flat_a = alphas.reshape(-1, alphas.shape[-1])
  flat_b = betas.reshape(-1, betas.shape[-1])
  nodes, weights = [], []
  for a, b in zip(flat_a, flat_b, strict=True):
    evals, evecs = tridiagonal_eigh(a, b)
    nodes.append(evals)
    weights.append(evecs[0] ** 2)
  return (np.stack(nodes).reshape(alphas.shape), np.stack(weights).reshape(alphas.shape))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DensitySmoothing:
  """How `density_from_quadrature` (and `hessian.spectral_density`) smooths quadrature nodes into
  a density (PyHessian's ``density_generate``), validated on creation.

  Attributes:
    grid: optional (G,) increasing eigenvalue grid; default ``num_bins`` points over the nodes.
    num_bins: points of the default grid (>= 2).
    sigma2: Gaussian kernel variance (> 0; PyHessian: 1e-5, times the spectrum width if
      `scale_sigma`).
    overhead: padding of the default grid beyond the nodes (PyHessian's ``overhead``).
    scale_sigma: multiply `sigma2` by ``max(1, grid width)`` as PyHessian does.
  """

  grid: Any = None
  num_bins: int = 10000
  sigma2: float = 1e-5
  overhead: float = 0.01
  scale_sigma: bool = True

  def __post_init__(self):
    if not (isinstance(self.sigma2, (int, float, np.floating)) and self.sigma2 > 0):
      raise ValueError(f"sigma2 must be positive, got {self.sigma2}.")
    if isinstance(self.num_bins, bool) or not isinstance(self.num_bins, (int, np.integer)) or (
        self.num_bins < 2):
      raise ValueError(f"num_bins must be an integer >= 2, got {self.num_bins!r}.")
    if not (isinstance(self.overhead, (int, float, np.floating)) and self.overhead >= 0):
      raise ValueError(f"overhead must be a number >= 0, got {self.overhead!r}.")


def density_from_quadrature(nodes, weights, *, smoothing: DensitySmoothing | None = None
                            ) -> tuple[np.ndarray, np.ndarray, float]:
  """Smooths SLQ nodes and weights into a density on a grid (PyHessian's ``density_generate``).

  ``rho(t) = mean_probes sum_i w_i N(t; theta_i, s2)``, then normalised so that its trapezoid
  integral over the grid is one. As in PyHessian the variance is ``s2 = sigma2 * max(1, grid
  width)`` (``scale_sigma=False`` keeps ``sigma2`` as given). The default grid has ``num_bins``
  points over ``[min theta - pad, max theta + pad]`` with ``pad = overhead + 5 sqrt(s2)`` (PyHessian
  pads by ``overhead`` only, which cuts the outermost peaks in half). The settings are a
  `DensitySmoothing` (default ``DensitySmoothing()``).

  Returns:
    ``(grid, density, s2)``.
  """
  nodes = np.atleast_2d(np.asarray(nodes, np.float64))
  weights = np.atleast_2d(np.asarray(weights, np.float64))
  smoothing = DensitySmoothing() if smoothing is None else smoothing
  if not isinstance(smoothing, DensitySmoothing):
    raise TypeError(f"smoothing must be a DensitySmoothing (lj.DensitySmoothing(sigma2=..., "
                    f"num_bins=...)) or None, got {type(smoothing).__name__}.")
  grid, num_bins, sigma2 = smoothing.grid, smoothing.num_bins, smoothing.sigma2
  overhead, scale_sigma = smoothing.overhead, smoothing.scale_sigma
  if grid is None:
    width = nodes.max() - nodes.min() + 2 * overhead
    pad = overhead + 5 * np.sqrt(sigma2 * max(1.0, width) if scale_sigma else sigma2)
    grid = np.linspace(nodes.min() - pad, nodes.max() + pad, num_bins)
  grid = np.asarray(grid, np.float64)
  if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) <= 0):
    raise ValueError("grid must be a 1-D increasing array of at least two points.")
  s2 = sigma2 * max(1.0, grid[-1] - grid[0]) if scale_sigma else sigma2
  density = np.zeros_like(grid)
  for th, w in zip(nodes, weights, strict=True):  # probe by probe: memory G x m
    kern = np.exp(-(grid[:, None] - th[None, :]) ** 2 / (2 * s2)) / np.sqrt(2 * np.pi * s2)
    density += kern @ w
  density /= len(nodes)
  total = np.trapezoid(density, grid)
  if not total > 0:
    raise ValueError("The density has no mass on the grid; widen the grid to cover the "
                     f"Ritz values [{nodes.min():.4g}, {nodes.max():.4g}].")
  return grid, density / total, float(s2)

__all__ = [
  "CURVATURE_PRECISION",
  "DensitySmoothing",
  "LanczosResult",
  "constrain",
  "density_from_quadrature",
  "gauss_quadrature",
  "lanczos",
  "lanczos_iteration",
  "tridiagonal",
  "tridiagonal_eigh",
]
