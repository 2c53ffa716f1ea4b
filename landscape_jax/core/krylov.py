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
    steps: None for a fixed number of steps; with a stopping tolerance (``tol``), the number of
      steps taken (an int32 scalar): only ``alphas[:steps]``, ``betas[:steps - 1]`` and
      ``vectors[:steps]`` are the run (the entries after them are zero, but for the next
      Lanczos vector, ``vectors[steps]``, when ``steps < m``).
  """

  alphas: jax.Array
  betas: jax.Array
  vectors: jax.Array
  steps: Any = None


def lanczos(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, *, num_steps: int,
            key: jax.Array | None = None, precision=CURVATURE_PRECISION,
            sharding=None, tol: float | None = None,
            tol_ends: tuple[int, int] = (1, 1)) -> LanczosResult:
  """Lanczos tridiagonalisation with full reorthogonalisation, inside `lax.fori_loop`.

  For symmetric ``A`` (``matvec(x) = A x``) and unit ``v_1 = v0 / |v0|``:
  ``w = A v_j - beta_{j-1} v_{j-1}``, ``alpha_j = <w, v_j>``, ``w -= alpha_j v_j``, then
  ``w -= V^T (V w)`` twice (classical Gram-Schmidt against every previous vector, "twice is
  enough"), ``beta_j = |w|``, ``v_{j+1} = w / beta_j``. If ``beta_j`` falls below float epsilon
  times the norm estimate (an invariant subspace was found), ``beta_j = 0`` and ``v_{j+1}`` is a
  fresh random unit vector orthogonal to the previous ones (drawn from ``key``), so that the Ritz
  values stay eigenvalues of ``A``. Pure; works under jit and vmap.

  With ``tol``, the steps stop early (`lax.while_loop`, ``num_steps`` the cap) at the first
  ``m`` where the Ritz pairs ``(theta_i, y_i)`` of ``T_m`` at both ends of the spectrum (the
  ``tol_ends[0]`` largest and the ``tol_ends[1]`` smallest) satisfy the residual bound
  ``|beta_m s_{m,i}| <= tol |theta_i|``, with ``s_{m,i}`` the last component of ``y_i``: the
  Ritz vector's residual is ``|A u_i - theta_i u_i| = |beta_m s_{m,i}|``, so ``A`` has an
  eigenvalue within that distance of ``theta_i`` (Parlett 1998, Thm. 11.4.1; within
  ``residual^2 / gap`` once the Ritz value is separated from the rest of the spectrum by
  ``gap``). The bound certifies the pairs found, not that they are the extreme eigenvalues of
  ``A``, which no Krylov method can certify. Under `vmap` the loop runs until every item has
  stopped; each item's steps and values stay its own (`steps`).

  Args:
    matvec: the linear map on flat vectors of shape (P,).
    v0: (P,) starting vector (need not be normalised).
    num_steps: number m of Lanczos vectors, ``1 <= m <= P``.
    key: key for restart vectors (default ``jax.random.key(0)``).
    precision: matmul precision of the products, `matvec`'s included, and of the
      reorthogonalisation (`core.precision`; default ``"highest"``, None: JAX's setting).
    sharding: optional `NamedSharding` of the (P,) vectors (`vector_sharding`): every Lanczos
      vector is then held sharded, ``(m + 1) P / n`` numbers per device over n devices.
    tol: relative residual bound of the stopping test (None, the default: exactly
      ``num_steps`` steps, `lax.fori_loop`).
    tol_ends: how many of the largest and of the smallest Ritz pairs the test checks
      (default one of each; ``(3, 0)``: the top three). The run takes at least
      ``sum(tol_ends)`` steps.

  Returns:
    A `LanczosResult` (``steps`` set when ``tol`` is).

  References:
    Ghorbani, Krishnan and Xiao 2019, "An Investigation into Neural Net Optimization via Hessian
    Eigenvalue Density".
    Parlett 1998, "The Symmetric Eigenvalue Problem", chapters 11 and 13 (residual bounds of
    Ritz pairs).
  """
  (dim,) = v0.shape
  if not 1 <= num_steps <= dim:
    raise ValueError(f"num_steps must lie in [1, P={dim}], got {num_steps}.")
  check_tolerance(tol, tol_ends, num_steps)
  with matmul_precision(precision):
    return lanczos_iteration(matvec, v0, num_steps, key, sharding, tol=tol,
                             tol_ends=tuple(tol_ends))


def check_tolerance(tol, tol_ends, num_steps: int) -> None:
  """Raises ValueError unless ``tol`` (None or > 0) and ``tol_ends`` (two counts >= 0, not both
  0, at most ``num_steps`` together) make a valid stopping test."""
  if tol is None:
    return
  if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not tol > 0:
    raise ValueError(f"tol must be a positive number (or None for a fixed number of steps), "
                     f"got {tol!r}.")
  ends = tuple(tol_ends)
  if (len(ends) != 2 or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0
                            for k in ends) or sum(ends) < 1):
    raise ValueError(f"tol_ends must be two counts >= 0 (largest, smallest), not both 0, "
                     f"got {tol_ends!r}.")
  if sum(ends) > num_steps:
    raise ValueError(f"tol_ends={ends} checks {sum(ends)} Ritz pairs but num_steps={num_steps}; "
                     "raise num_steps.")


def extreme_ritz_pairs(alphas, betas, steps, num_top: int, num_bottom: int):
  """Extreme Ritz values of ``T_m``, the leading ``m = steps`` block of the tridiagonal matrix,
  and their residual bounds ``|beta_m s_{m,i}|``; traceable (``steps`` may be traced).

  ``alphas`` (n,) and ``betas`` (n,) hold the run so far (``betas[m - 1] = beta_m``, the norm
  of the next residual; entries from ``m`` on are ignored). The trailing ``n - m`` diagonal
  entries are replaced by a value below the Gershgorin interval of ``T_m`` and decoupled, so one
  `eigh` of the n x n matrix gives ``T_m``'s eigenpairs above that padding cluster.

  Returns:
    ``(top, top_resid, bottom, bottom_resid)``: the `num_top` largest Ritz values (descending)
    and the `num_bottom` smallest (ascending), each with its residual bound.
  """
  n = alphas.shape[0]
  idx = jnp.arange(n)
  inside = idx < steps
  b = jnp.where(idx < steps - 1, betas, 0.0)  # couplings inside T_m
  b_prev = jnp.concatenate([jnp.zeros((1,), b.dtype), b[:-1]])
  radius = jnp.abs(b) + jnp.abs(b_prev)
  lo = jnp.min(jnp.where(inside, alphas - radius, jnp.inf))
  hi = jnp.max(jnp.where(inside, alphas + radius, -jnp.inf))
  pad = lo - (hi - lo) - 1.0
  t = jnp.diag(jnp.where(inside, alphas, pad)) + jnp.diag(b[:-1], 1) + jnp.diag(b[:-1], -1)
  theta, y = jnp.linalg.eigh(t)  # ascending; the n - m padding values come first
  beta_m = betas[jnp.maximum(steps - 1, 0)]
  last = y[jnp.maximum(steps - 1, 0)]  # last components s_{m,i} of every eigenvector
  resid = jnp.abs(beta_m * last)
  top_idx = n - 1 - jnp.arange(num_top)
  bottom_idx = n - steps + jnp.arange(num_bottom)
  return theta[top_idx], resid[top_idx], theta[bottom_idx], resid[bottom_idx]


def lanczos_iteration(matvec, v0, num_steps: int, key=None, sharding=None, tick=None, *,
                      tol=None, tol_ends=(1, 1)) -> LanczosResult:
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
  if tol is None:
    vecs, alphas, betas, _ = jax.lax.fori_loop(0, num_steps, body, init)
    return LanczosResult(alphas, betas[:-1], vecs[:num_steps])

  num_top, num_bottom = tol_ends
  min_steps = num_top + num_bottom

  def converged(steps, alphas, betas):
    top, top_r, bottom, bottom_r = extreme_ritz_pairs(alphas, betas, steps, num_top, num_bottom)
    ok = jnp.all(top_r <= tol * jnp.abs(top)) & jnp.all(bottom_r <= tol * jnp.abs(bottom))
    return ok & (steps >= min_steps)

  def cond(carry):
    j, done, _ = carry
    return (j < num_steps) & ~done

  def while_body(carry):
    j, _, inner = carry
    inner = body(j, inner)
    _, alphas, betas, _ = inner
    return j + 1, converged(j + 1, alphas, betas), inner

  steps, _, (vecs, alphas, betas, _) = jax.lax.while_loop(
    cond, while_body, (jnp.zeros((), jnp.int32), jnp.zeros((), bool), init))
  return LanczosResult(alphas, betas[:-1], vecs[:num_steps], steps)


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
  "check_tolerance",
  "constrain",
  "density_from_quadrature",
  "extreme_ritz_pairs",
  "gauss_quadrature",
  "lanczos",
  "lanczos_iteration",
  "tridiagonal",
  "tridiagonal_eigh",
]
