"""PCA directions of an optimisation trajectory (Li et al. 2018, Sec. 7).

Li et al. plot the path of training in the plane of the top two principal components of the
matrix whose rows are ``t_i - t_final`` over saved checkpoints ``t_i``: random directions are
nearly orthogonal to the trajectory and show nothing of it. This module computes those
directions and the projection of the trajectory. It lives apart from `directions.py` (random and
normalised directions, maintained separately) and re-exports through ``landscape_jax`` as
`pca_directions` and `project_trajectory`.

Memory: the snapshots are only ever combined leaf by leaf. The ``T x T`` Gram matrix of the
centred differences, ``G = M_c M_c^T`` with ``M_c = M - 1 mean(M)``, has the same non-zero
spectrum as the ``P x P`` covariance ``M_c^T M_c``; with ``G = U S^2 U^T`` the principal
components are ``pc_k = M_c^T u_k / s_k`` (the right singular vectors of ``M_c``). No dense
``P x P`` matrix, and no ``T x P`` matrix of the whole model, is formed: the largest temporary is
``T x (size of one leaf)``. Accumulation is in float64 on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from landscape_jax.core import sharding as shd
from landscape_jax.core.trees import check_same_structure

PyTree = Any


class PCADirections(NamedTuple):
  """Result of `pca_directions`.

  Attributes:
    directions: list of ``num_components`` unit-norm pytrees (structure and dtypes of ``final``;
      zero outside ``mask``), the principal components in decreasing order of variance.
    explained_variance_ratio: (num_components,) fraction of the variance of the centred
      differences that each component explains (sklearn's ``explained_variance_ratio_``).
    coords: (T, num_components) projection of every snapshot, ``<t_i - t_final, pc_k>``; the
      final point is (0, 0).
    singular_values: (num_components,) singular values of the centred difference matrix.
  """

  directions: list
  explained_variance_ratio: np.ndarray
  coords: np.ndarray
  singular_values: np.ndarray


def _selected(final, mask):
  leaves = jax.tree.leaves(final)
  if mask is None:
    return [True] * len(leaves)
  if jax.tree.structure(final) != jax.tree.structure(mask):
    raise ValueError("mask must have the pytree structure of final (e.g. "
                     f"trees.mask_by_ndim(final)); got {jax.tree.structure(mask)}.")
  return [bool(m) for m in jax.tree.leaves(mask)]


def _leaf_rows(traj_leaves, final_leaves, i):
  """(T, size of leaf i) float64 rows ``t_j[i] - final[i]``."""
  f = np.asarray(final_leaves[i], np.float64).ravel()
  return np.stack([np.asarray(t[i], np.float64).ravel() - f for t in traj_leaves])


def pca_directions(trajectory: Sequence[PyTree], final: PyTree, *, num_components: int = 2,
                   mask: PyTree | None = None) -> PCADirections:
  """Top principal components of ``t_i - t_final`` over saved snapshots (Li et al. 2018).

  Rows ``d_i = t_i - t_final`` (``i = 1..T``) are centred, ``c_i = d_i - mean_j d_j`` (PCA as in
  sklearn, as the Li et al. code does), and the components are the top right singular vectors of
  ``C = [c_1; ...; c_T]``, found through the ``T x T`` Gram matrix ``C C^T`` (see the module
  docstring). The coordinates of the trajectory are the projections of the *uncentred*
  differences, ``x_i = <d_i, pc_1>``, ``y_i = <d_i, pc_2>``, so the final point sits at (0, 0).
  Directions are unit-norm and not filter-normalised; they are computed on the host one leaf at
  a time (in float64) and, for `final` sharded over a mesh, placed with its sharding. Signs
  follow numpy's SVD convention made deterministic: each component's largest-magnitude Gram
  coefficient is positive.

  Args:
    trajectory: sequence of T parameter pytrees (e.g. one per epoch; the final point may or may
      not be among them), each with the structure of ``final``.
    final: the final parameters ``t_final`` (the centre of later surface plots).
    num_components: number of components (default 2 for a plane).
    mask: optional pytree of Python bools: leaves left out (e.g. biases and BatchNorm under Li et
      al.'s ``ignore="biasbn"``) are zero in the differences and in the directions.

  Returns:
    A `PCADirections`.

  References:
    Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets".
  """
  trajectory = list(trajectory)
  t = len(trajectory)
  if t < 2:
    raise ValueError(f"pca_directions needs at least 2 snapshots, got {t}; save more checkpoints.")
  for j, snap in enumerate(trajectory):
    check_same_structure(final, snap, names=("final", f"trajectory[{j}]"), check_dtype=False)
  if not 1 <= num_components <= t - 1:
    raise ValueError(f"num_components must lie in [1, T-1={t - 1}] for T={t} snapshots, got "
                     f"{num_components}.")
  selected = _selected(final, mask)
  traj_leaves = [jax.tree.leaves(snap) for snap in trajectory]
  final_leaves = jax.tree.leaves(final)

  # Uncentred Gram matrix of the differences, leaf by leaf.
  gram = np.zeros((t, t))
  for i, sel in enumerate(selected):
    if sel:
      rows = _leaf_rows(traj_leaves, final_leaves, i)
      gram += rows @ rows.T
  centre = np.eye(t) - np.full((t, t), 1.0 / t)
  gram_c = centre @ gram @ centre
  evals, evecs = np.linalg.eigh((gram_c + gram_c.T) / 2)
  order = np.argsort(evals)[::-1]
  evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
  total = evals.sum()
  if not total > 0:
    raise ValueError("The snapshots do not move (zero variance): check that the trajectory holds "
                     "different parameters.")
  svals = np.sqrt(evals[:num_components])
  if np.any(svals <= np.sqrt(total) * 1e-7):
    raise ValueError(f"Only {int(np.sum(evals > total * 1e-14))} non-degenerate components exist; "
                     f"ask for fewer than {num_components}.")
  u = evecs[:, :num_components]
  signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(num_components)])
  u = u * signs
  coef = centre @ u / svals  # pc_k = sum_j coef[j, k] d_j  (since C = centre @ D)

  leaves, treedef = jax.tree.flatten(final)
  comps: list[list] = [[] for _ in range(num_components)]
  for i, (leaf, sel) in enumerate(zip(leaves, selected, strict=True)):
    if sel:
      comb = coef.T @ _leaf_rows(traj_leaves, final_leaves, i)  # (k, leaf size)
    else:
      comb = np.zeros((num_components, np.size(leaf)))
    for k in range(num_components):
      comp = np.asarray(comb[k].reshape(np.shape(leaf)), jnp.result_type(leaf))
      sharding = getattr(leaf, "sharding", None)
      # one leaf at a time on the host; placed with the final parameters' sharding when they
      # are spread over a mesh (never assembled on one device)
      comps[k].append(shd.put(comp, sharding) if isinstance(sharding, NamedSharding)
                      and sharding.mesh.devices.size > 1 else jnp.asarray(comp))
  directions = [treedef.unflatten(c) for c in comps]
  coords = gram @ coef  # <d_i, pc_k> = sum_j G_ij coef_jk
  return PCADirections(directions=directions,
                       explained_variance_ratio=evals[:num_components] / total,
                       coords=coords, singular_values=svals)


def project_trajectory(trajectory: Sequence[PyTree], final: PyTree,
                       directions: Sequence[PyTree]) -> np.ndarray:
  """Coordinates ``<t_i - t_final, d_k> / |d_k|^2`` of every snapshot in the given directions.

  For orthonormal directions (as from `pca_directions`) this is ``<t_i - t_final, d_k>``, the
  Li et al. projection; for general (e.g. filter-normalised) directions it is the coordinate of
  the projection onto each direction alone. The final point maps to zero.

  Returns:
    (T, len(directions)) float64 array.

  References:
    Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets".
  """
  directions = list(directions)
  for k, d in enumerate(directions):
    check_same_structure(final, d, names=("final", f"directions[{k}]"), check_dtype=False)
  out = np.zeros((len(trajectory), len(directions)))
  norms2 = np.zeros(len(directions))
  dir_leaves = [jax.tree.leaves(d) for d in directions]
  traj_leaves = [jax.tree.leaves(snap) for snap in trajectory]
  for i, f in enumerate(jax.tree.leaves(final)):
    f = np.asarray(f, np.float64).ravel()
    dl = np.stack([np.asarray(d[i], np.float64).ravel() for d in dir_leaves])
    norms2 += np.sum(dl * dl, axis=1)
    rows = np.stack([np.asarray(t[i], np.float64).ravel() - f for t in traj_leaves])
    out += rows @ dl.T
  if np.any(norms2 == 0):
    raise ValueError("A direction is zero; cannot project onto it.")
  return out / norms2


__all__ = ["PCADirections", "pca_directions", "project_trajectory"]
