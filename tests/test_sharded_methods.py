"""Methods on sharded parameters and splits beyond the device (docs/scaling.md): Ritz vectors
assembled on the devices, weight matching and BatchNorm recompute on sharded parameters, splits
streamed from the host, and the scale_gpt2 experiment at its tiniest."""

import dataclasses

import conftest
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
  """A 2-layer MLP of 8 x 8 + 8 x 8 weights (every weight divisible by a model axis of 8)."""
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"w1": jax.random.normal(k1, (8, 8)) / 3, "w2": jax.random.normal(k2, (8, 8)) / 3,
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


STREAM_RTOL, STREAM_ATOL = 1e-6, 1e-7  # the chunks' sums added in float64 (reassociation only)


@pytest.fixture(scope="module")
def stream_problem():
  """An MLP on 150 + 70 digits (batches of 32: the last batch padded), its on-device metric and
  a 3 x 3 surface of it on one device."""
  tr = lj.load("digits", "train").subset(slice(0, 150))
  te = lj.load("digits", "test").subset(slice(0, 70))
  model = lj.get_model("mlp_small", num_classes=10)
  params = model.init(jax.random.key(0), tr.images[:2].astype(np.float32))["params"]
  data = {"train": tr, "test": te}
  dirs = lj.random_directions(jax.random.key(1), params)
  metric_fn = lj.make_metric_fn(model, data, batch_size=32, cpu_convolutions="xla")
  xs = ys = np.linspace(-1.0, 1.0, 3)
  ref = lj.surface_grid(metric_fn, params, dirs, xs, ys,
                        engine=lj.EngineOptions(chunk_size=4, progress=False))
  return model, data, params, dirs, metric_fn, ref


def test_streamed_split_equals_the_device_split(stream_problem, tmp_path):
  """A split streamed from the host two batches at a time: the on-device metric at one point
  and over a surface and a line, and a store keyed on the host split's bytes."""
  from landscape_jax.adapters.data import normalize_images
  from landscape_jax.core import streaming

  model, data, params, dirs, metric_fn, ref = stream_problem
  streamed = lj.make_metric_fn(model, data, batch_size=32, cpu_convolutions="xla",
                               stream_batches=2)
  assert isinstance(streamed, streaming.StreamedMetric)
  assert streamed.streams["train"].num_chunks == 3  # 5 batches of 30, 2 per chunk
  one, one_ref = streamed(params), metric_fn(params)
  assert set(one) == set(one_ref)
  for k in one_ref:
    np.testing.assert_allclose(one[k], one_ref[k], rtol=STREAM_RTOL, atol=STREAM_ATOL)
  engine = lj.EngineOptions(chunk_size=4, progress=False)
  store = tmp_path / "surface"
  res = lj.surface_grid(streamed, params, dirs, *(np.linspace(-1.0, 1.0, 3),) * 2, store=store,
                        engine=engine)
  for k in ref:
    np.testing.assert_allclose(res[k], ref[k], rtol=STREAM_RTOL, atol=STREAM_ATOL, err_msg=k)
  line = lj.linear_path(streamed, params, dirs[0], [0.0, 1.0], engine=engine)
  line_ref = lj.linear_path(metric_fn, params, dirs[0], [0.0, 1.0], engine=engine)
  np.testing.assert_allclose(line["test_loss"], line_ref["test_loss"], rtol=STREAM_RTOL)
  rebuilt = lj.make_metric_fn(model, data, batch_size=32, cpu_convolutions="xla",
                              stream_batches=2)  # another object, the same identity

  def nothing_left(*args, **kwargs):
    raise AssertionError("a finished store was computed again")

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(lj.engine, "evaluate_missing", nothing_left)
    again = lj.surface_grid(rebuilt, params, dirs, *(np.linspace(-1.0, 1.0, 3),) * 2,
                            store=store, engine=engine)
  np.testing.assert_array_equal(again["train_loss"], res["train_loss"])
  images = data["train"].images.copy()
  images[-1, 0, 0, 0] ^= 1  # one bit of the last example, which the last chunk holds
  changed = {**data, "train": dataclasses.replace(data["train"], images=images)}
  other = lj.make_metric_fn(model, changed, batch_size=32, cpu_convolutions="xla", stream_batches=2)
  with pytest.raises(lj.store.StoreMismatchError, match="metric_fn"):
    lj.surface_grid(other, params, dirs, *(np.linspace(-1.0, 1.0, 3),) * 2, store=store,
                    engine=engine)
  with pytest.raises(TypeError, match="cannot be traced"):
    jax.jit(streamed)(params)
  te = data["test"]  # a memory-mapped split: read only where a chunk is cut
  np.save(tmp_path / "x.npy", np.asarray(normalize_images(te.images, te.mean, te.std)))
  mapped = (np.load(tmp_path / "x.npy", mmap_mode="r"), te.labels)
  on_host = lj.make_metric_fn(model, mapped, batch_size=32, cpu_convolutions="xla",
                              stream_batches=1)(params)
  np.testing.assert_allclose(on_host["loss"], one_ref["test_loss"], rtol=1e-5)


@pytest.mark.multidevice
def test_streamed_split_on_a_mesh_with_a_data_axis(stream_problem):
  """Streamed chunks sharded over the data axis of a points=2 x data=2 x model=2 mesh, the
  parameters sharded over the model axis: the one-device surface."""
  model, data, params, dirs, _, ref = stream_problem
  mesh = lj.make_mesh(points=2, data=2, model=2)
  streamed = lj.make_metric_fn(model, data, batch_size=32, cpu_convolutions="xla",
                               stream_batches=2, mesh=mesh)
  assert streamed.sharding.spec == P(None, "data")
  center = shd.shard_params(params, mesh)
  sdirs = shd.shard_params(dirs, mesh)
  res = lj.surface_grid(streamed, center, sdirs, *(np.linspace(-1.0, 1.0, 3),) * 2,
                        engine=lj.EngineOptions(mesh=mesh, chunk_size=4, progress=False))
  for k in ref:
    np.testing.assert_allclose(res[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
  plain = lj.make_metric_fn(model, data, batch_size=32, cpu_convolutions="xla", stream_batches=2)
  points = lj.surface_grid(plain, params, dirs, *(np.linspace(-1.0, 1.0, 3),) * 2,
                           engine=lj.EngineOptions(mesh=lj.make_mesh(points=4), chunk_size=4,
                                                   progress=False))  # chunks replicated
  np.testing.assert_allclose(points["test_loss"], ref["test_loss"], rtol=STREAM_RTOL,
                             atol=STREAM_ATOL)


def test_stream_is_double_buffered():
  """`streaming.stream`: chunk i + 1 is cut and put after chunk i's computation is dispatched and
  before it is waited for; at most two chunks are on the devices; results in chunk order."""
  import weakref

  from landscape_jax.core import streaming

  class Box:
    def __init__(self, i):
      self.i = i

  events, live, most = [], [], [0]
  chunks = streaming.HostChunks(arrays=np.arange(5), constants=None, num_chunks=5,
                                cut=lambda a, i: int(a[i]))

  def put(i):
    events.append(f"put{i}")
    box = Box(i)
    live.append(weakref.ref(box))
    most[0] = max(most[0], sum(r() is not None for r in live))
    return box

  def compute(box):
    most[0] = max(most[0], sum(r() is not None for r in live))
    events.append(f"compute{box.i}")
    return jnp.asarray(box.i * 10)

  outs = streaming.stream(chunks, put, compute)
  assert [int(o) for o in outs] == [0, 10, 20, 30, 40]
  assert events[:5] == ["put0", "compute0", "put1", "compute1", "put2"]
  assert most[0] == 2


@pytest.mark.slow  # ~30 s cold (compiling two trainings, surface, path, Lanczos), 7 s cached
def test_scale_gpt2_script_at_its_tiniest(tmp_path):
  """experiments/scale_gpt2.py on 8 simulated devices (data 2 x model 4) at its `:quick`
  config, 2 Adam steps, a 2 x 2 surface, 2 alphas, 3 Lanczos steps: it runs, the parameters
  are sharded 4 ways, and the interpolation's ends are the two trained models' metrics."""
  import json
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, os.path.join(root, "experiments", "scale_gpt2.py"),
         "--config=" + os.path.join(root, "experiments", "configs", "scale_gpt2.py") + ":quick",
         f"--workdir={tmp_path}", "--noprogress", "--config.steps=2", "--config.num_steps=3"]
  env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
         "XLA_FLAGS": conftest.child_xla_flags("--xla_force_host_platform_device_count=8")}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["mesh"] == {"points": 1, "data": 2, "model": 4}
  assert summary["devices"] == "8 x cpu"
  assert 4 * summary["param_bytes_per_device"] == summary["param_bytes_total"]
  assert 4 * summary["direction_bytes_per_device"] == 2 * summary["param_bytes_total"]
  out = np.load(tmp_path / "landscape.npz")
  surface = out["surface_train_loss"]
  assert surface.shape == (2, 2) and np.all(np.isfinite(surface))
  for i, m in enumerate(summary["models"]):
    for k in ("train_loss", "test_loss"):
      np.testing.assert_allclose(out[f"interpolation_{k}"][i], m[k], rtol=1e-5)
  top = summary["hessian"]["top_eigenvalues"]
  assert len(top) == summary["config"]["top_k"] and np.all(np.isfinite(top))
  assert top == sorted(top, reverse=True) and top[-1] >= summary["hessian"]["smallest_eigenvalue"]
