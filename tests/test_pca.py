"""PCA of a trajectory against numpy's SVD of the same snapshots."""

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from landscape_jax.core import pca, trees


def _trajectory(num=8, seed=0):
  """A random walk of a small pytree that drifts towards its last point."""
  rng = np.random.default_rng(seed)
  shapes = {"Dense_0": {"kernel": (5, 4), "bias": (4,)}, "Dense_1": {"kernel": (4, 3),
                                                                    "bias": (3,)}}
  template = jax.tree.map(lambda s: np.zeros(s, np.float32), shapes,
                          is_leaf=lambda s: isinstance(s, tuple))
  snaps, cur = [], template
  drift = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), template)
  for _ in range(num):
    cur = jax.tree.map(lambda c, d: c + d + 0.3 * rng.normal(size=c.shape).astype(np.float32),
                       cur, drift)
    snaps.append(jax.tree.map(jnp.asarray, cur))
  return snaps


def _matrix(snaps, final, mask=None):
  rows = np.stack([np.asarray(ravel_pytree(s)[0], np.float64) for s in snaps])
  rows = rows - np.asarray(ravel_pytree(final)[0], np.float64)
  if mask is not None:
    keep = np.asarray(ravel_pytree(jax.tree.map(lambda x, m: jnp.full(x.shape, m), final,
                                                mask))[0], bool)
    rows = rows * keep
  return rows


def test_pca_directions_equal_numpy_svd():
  snaps = _trajectory()
  final = snaps[-1]
  res = pca.pca_directions(snaps, final, num_components=2)
  d = _matrix(snaps, final)
  _, s, vt = np.linalg.svd(d - d.mean(0), full_matrices=False)
  for k in range(2):
    got = np.asarray(ravel_pytree(res.directions[k])[0], np.float64)
    sign = np.sign(got @ vt[k])
    np.testing.assert_allclose(sign * got, vt[k], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got), 1.0, rtol=1e-6)
    np.testing.assert_allclose(res.coords[:, k], sign * d @ vt[k], atol=1e-4)
  np.testing.assert_allclose(res.singular_values, s[:2], rtol=1e-6)
  np.testing.assert_allclose(res.explained_variance_ratio, s[:2] ** 2 / np.sum(s**2), rtol=1e-6)
  # The final point projects to the origin.
  np.testing.assert_allclose(res.coords[-1], [0.0, 0.0], atol=1e-6)
  # Same structure and dtype as the parameters.
  trees.check_same_structure(final, res.directions[0])


def test_pca_with_mask_and_projection():
  snaps = _trajectory(num=6, seed=1)
  final = jax.tree.map(lambda x: x + 0.5, snaps[-1])  # final point not among the snapshots
  mask = trees.mask_by_ndim(final)
  res = pca.pca_directions(snaps, final, num_components=3, mask=mask)
  d = _matrix(snaps, final, mask)
  _, _, vt = np.linalg.svd(d - d.mean(0), full_matrices=False)
  for k in range(3):
    got = np.asarray(ravel_pytree(res.directions[k])[0], np.float64)
    np.testing.assert_allclose(abs(got @ vt[k]), 1.0, atol=1e-6)
  assert all(not np.any(np.asarray(b)) for b in
             [res.directions[0]["Dense_0"]["bias"], res.directions[1]["Dense_1"]["bias"]])
  np.testing.assert_allclose(pca.project_trajectory(snaps, final, res.directions), res.coords,
                             atol=1e-4)
  np.testing.assert_allclose(pca.project_trajectory([final], final, res.directions), [[0, 0, 0]])


def test_project_trajectory_on_general_directions():
  snaps = _trajectory(num=3, seed=2)
  final = snaps[0]
  d1 = jax.tree.map(lambda x: 2.0 * jnp.ones_like(x), final)
  coords = pca.project_trajectory(snaps, final, [d1])
  flat_d = np.asarray(ravel_pytree(d1)[0], np.float64)
  expect = _matrix(snaps, final) @ flat_d / (flat_d @ flat_d)
  np.testing.assert_allclose(coords[:, 0], expect, rtol=1e-6)


def test_pca_errors():
  snaps = _trajectory(num=3)
  with pytest.raises(ValueError, match="at least 2 snapshots"):
    pca.pca_directions(snaps[:1], snaps[0])
  with pytest.raises(ValueError, match="num_components"):
    pca.pca_directions(snaps, snaps[-1], num_components=3)
  with pytest.raises(ValueError, match="same pytree structure"):
    pca.pca_directions([snaps[0], snaps[1], {"a": jnp.zeros(2)}], snaps[0])
  line = [jax.tree.map(lambda x, t=t: x * t, snaps[0]) for t in (1.0, 2.0, 3.0, 4.0)]
  with pytest.raises(ValueError, match="non-degenerate"):
    pca.pca_directions(line, line[-1], num_components=2)
  with pytest.raises(ValueError, match="do not move"):
    pca.pca_directions([snaps[0], snaps[0]], snaps[0], num_components=1)


@pytest.mark.slow
def test_trajectory_experiment_script_runs(tmp_path):
  import json
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, os.path.join(root, "experiments", "trajectory.py"),
         "--config=" + os.path.join(root, "experiments", "configs", "trajectory_digits.py")
         + ":quick", "--config.train.num_epochs=3", "--config.num_points=3",
         "--config.eval_subset=128", f"--workdir={tmp_path}", "--noprogress"]
  env = {**os.environ, "PYTHONPATH": root,
         "XLA_FLAGS": conftest.child_xla_flags("--xla_force_host_platform_device_count=2")}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["num_snapshots"] == 4  # the initial point and three epochs
  assert summary["path_end"] == [0.0, 0.0]
  assert 0 < sum(summary["explained_variance_ratio"]) <= 1 + 1e-9
  pcs = np.load(tmp_path / "pca.npz")
  assert pcs["train_loss"].shape == (3, 3)
  assert (tmp_path / "trajectory.png").exists()
