"""Methods on sharded parameters and splits beyond the device (docs/scaling.md): Ritz vectors
assembled on the devices, weight matching and BatchNorm recompute on sharded parameters, splits
streamed from the host, and the scale_gpt2 experiment at its tiniest."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import landscape_jax as lj
from landscape_jax.core import hessian
from landscape_jax.core import sharding as shd


def _tiny_mlp():
  """A 2-layer MLP of 8 x 16 + 16 x 8 weights (every weight divisible by a model axis of 8)."""
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"w1": jax.random.normal(k1, (8, 16)) / 3, "w2": jax.random.normal(k2, (16, 8)) / 4,
            "b": jnp.full((3,), 0.1)}
  x = jax.random.normal(jax.random.key(1), (24, 8))
  y = jax.random.normal(jax.random.key(2), (24, 8))
  return params, (x, y)


def _mlp_loss(p, batch):
  x, y = batch
  return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] + jnp.sum(p["b"]) - y) ** 2)


def _flat(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def test_ritz_vectors_equal_the_host_assembly():
  """`hessian.ritz_vectors` against the float64 host formula Q^T y / |Q^T y| (one device)."""
  params, _ = _tiny_mlp()
  dim = sum(x.size for x in jax.tree.leaves(params))
  rng = np.random.default_rng(0)
  q = rng.standard_normal((5, dim)).astype(np.float32)
  y = rng.standard_normal((5, 2))
  out = hessian.ritz_vectors(jnp.asarray(q), y, params)
  expect = q.astype(np.float64).T @ y
  expect /= np.linalg.norm(expect, axis=0)
  for i in range(2):
    np.testing.assert_allclose(_flat(out[i]), expect[:, i], rtol=1e-5, atol=1e-6)
  masked = hessian.ritz_vectors(jnp.asarray(q[:, :dim - 3]), y, params, mask=(False, True, True))
  assert not np.any(np.asarray(masked[0]["b"]))  # leaves outside the mask are zero


@pytest.mark.multidevice
def test_sharded_ritz_vectors_keep_the_sharding_and_equal_one_device():
  """Parameters sharded 8 ways: the top Ritz vectors come back with the parameters' sharding and
  equal the one-device vectors, which are eigenvectors of the dense Hessian (Lanczos run to the
  full dimension, so exact)."""
  params, batch = _tiny_mlp()
  sharded = shd.shard_params(params, lj.make_mesh(model=8))
  assert sharded["w1"].sharding.spec != P()
  dim = sum(x.size for x in jax.tree.leaves(params))
  kw = dict(top_k=2, num_steps=dim, key=jax.random.key(3), vectors=True, progress=False)
  ref = lj.hessian_eigenvalues(_mlp_loss, params, batch, **kw)
  out = lj.hessian_eigenvalues(_mlp_loss, sharded, batch, **kw)
  np.testing.assert_allclose(out.top, ref.top, rtol=1e-4)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  dense = np.asarray(jax.hessian(lambda f: _mlp_loss(unravel(f), batch))(flat), np.float64)
  evals, evecs = np.linalg.eigh(dense)
  for i in range(2):
    for a, p in zip(jax.tree.leaves(out.top_vectors[i]), jax.tree.leaves(sharded), strict=True):
      assert a.sharding == p.sharding
    u, u_ref = _flat(out.top_vectors[i]), _flat(ref.top_vectors[i])
    np.testing.assert_allclose(u, u_ref, atol=2e-4)
    assert abs(u @ evecs[:, -1 - i]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.multidevice
def test_weight_matching_on_sharded_parameters(monkeypatch):
  """Two MLPs sharded 8 ways: weight matching finds the one-device permutation and objectives
  exactly, reads the parameters one leaf at a time (never more than the two models' copies of
  one leaf alive on the host), and `apply_permutation` keeps every leaf's sharding."""
  import weakref

  from landscape_jax.core.permutations import matching

  tr = lj.load("digits", "train").subset(slice(0, 8))
  model = lj.get_model("mlp_small", num_classes=10)
  a, b = (model.init(jax.random.key(s), tr.images[:2].astype(np.float32))["params"]
          for s in (0, 1))
  spec = lj.permutations.mlp_spec(a)
  ref = lj.weight_matching(jax.random.key(4), spec, a, b)
  sa, sb = shd.shard_params((a, b), lj.make_mesh(model=8))
  live, most = [], [0]
  read = matching.host_leaf

  def watched(x):
    alive = [r for r in live if r() is not None]
    most[0] = max(most[0], len(alive) + 1)
    out = read(x)
    live[:] = [*alive, weakref.ref(out)]
    return out

  monkeypatch.setattr(matching, "host_leaf", watched)
  out = lj.weight_matching(jax.random.key(4), spec, sa, sb)
  num_leaves = len(jax.tree.leaves(a))
  assert len(live) and most[0] <= 2 < 2 * num_leaves, most
  for k in ref.perm:
    np.testing.assert_array_equal(np.asarray(out.perm[k]), np.asarray(ref.perm[k]))
  np.testing.assert_array_equal(out.objectives, ref.objectives)
  assert out.num_sweeps == ref.num_sweeps
  assert not np.array_equal(np.asarray(ref.perm["Dense_0"]), np.arange(64))  # a real matching
  permuted = lj.apply_permutation(spec, out.perm, sb)
  expect = lj.apply_permutation(spec, ref.perm, b)
  for x, e, s in zip(jax.tree.leaves(permuted), jax.tree.leaves(expect), jax.tree.leaves(sb),
                     strict=True):
    assert x.sharding == s.sharding
    np.testing.assert_array_equal(np.asarray(x), np.asarray(e))


class _ConvBN(nn.Module):
  """Conv-BN-ReLU-Dense-BN-ReLU-Dense, channels divisible by a model axis of 8."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x)))
    x = nn.Dense(16)(x.reshape((x.shape[0], -1)))
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(10)(x)


@pytest.mark.multidevice
def test_recompute_batch_stats_on_sharded_parameters():
  """Parameters and statistics sharded 8 ways: the recomputed statistics keep the statistics'
  sharding and equal the one-device ones (float reassociation of the sums over the split)."""
  tr = lj.load("digits", "train").subset(slice(0, 40))
  model = _ConvBN()
  variables = model.init(jax.random.key(0), tr.images[:2].astype(np.float32))
  ref = lj.recompute_batch_stats(model, variables["params"], variables["batch_stats"], tr,
                                 batch_size=16)
  sv = shd.shard_params(variables, lj.make_mesh(model=8))
  assert sv["params"]["Conv_0"]["kernel"].sharding.spec != P()
  out = lj.recompute_batch_stats(model, sv["params"], sv["batch_stats"], tr, batch_size=16)
  for a, e, s in zip(jax.tree.leaves(out), jax.tree.leaves(ref), jax.tree.leaves(
      sv["batch_stats"]), strict=True):
    assert a.sharding == s.sharding
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-6)
