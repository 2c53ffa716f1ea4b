"""Exact identities (landscape_jax.core.identity) and the stores keyed on them (engine,
surfaces)."""

import functools
import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import landscape_jax as lj
from landscape_jax.core import fileio
from landscape_jax.core import identity as idl


def _tree():
  return {"a": {"kernel": jnp.arange(12.0).reshape(3, 4), "bias": jnp.ones(4)},
          "b": jnp.array([1.0, 2.0])}


def test_tree_digest_is_exact():
  t = _tree()
  d = idl.tree_digest(t)
  assert d == idl.tree_digest(jax.tree.map(lambda x: np.array(x), t))  # host or device: same
  # one ulp in one element
  bumped = jax.tree.map(lambda x: x, t)
  bumped["b"] = jnp.array([1.0, np.nextafter(np.float32(2.0), np.float32(3.0))])
  assert idl.tree_digest(bumped) != d
  # a permutation of units (columns of the kernel and entries of the bias): same sums of squares,
  # which the old rounded fingerprint could not tell apart
  perm = np.array([1, 0, 3, 2])
  permuted = {"a": {"kernel": t["a"]["kernel"][:, perm], "bias": t["a"]["bias"][perm]},
              "b": t["b"]}
  assert idl.tree_digest(permuted) != d
  # swapped leaves of equal shape
  assert idl.tree_digest({"x": jnp.zeros(2), "y": jnp.ones(2)}) != idl.tree_digest(
    {"x": jnp.ones(2), "y": jnp.zeros(2)})
  # dtype and shape are part of it
  assert idl.tree_digest(jnp.zeros(4)) != idl.tree_digest(jnp.zeros(4, jnp.int32))
  assert idl.tree_digest(jnp.zeros(4)) != idl.tree_digest(jnp.zeros((2, 2)))


def _loss(scale, data, p):
  return {"loss": scale * jnp.sum((p - data) ** 2)}


def test_callable_identity_sees_code_arrays_and_closures():
  data = jnp.arange(3.0)
  f = Partial(functools.partial(_loss, 2.0), data)
  base = idl.callable_identity(f)
  assert base == idl.callable_identity(Partial(functools.partial(_loss, 2.0), jnp.arange(3.0)))
  assert base["name"] == "_loss"
  other_data = idl.callable_identity(Partial(functools.partial(_loss, 2.0), data + 1))
  assert other_data["arrays"] != base["arrays"] and other_data["code"] == base["code"]
  other_scale = idl.callable_identity(Partial(functools.partial(_loss, 3.0), data))
  assert other_scale["code"] != base["code"]

  def make(x):
    def closure(p):
      return jnp.sum(p * x)
    return closure

  assert idl.callable_identity(make(data)) == idl.callable_identity(make(jnp.arange(3.0)))
  assert idl.callable_identity(make(data))["arrays"] != idl.callable_identity(
    make(data * 2))["arrays"]
  # other code with the same name is another identity
  g1 = lambda p: jnp.sum(p)
  g2 = lambda p: jnp.sum(p ** 2)
  assert idl.callable_identity(g1)["code"] != idl.callable_identity(g2)["code"]


def test_metric_fn_identity_distinguishes_data_and_statistics(digits_train, digits_test):
  model = lj.get_model("mlp_small", num_classes=10)
  v = model.init(jax.random.key(0), digits_train.images[:2].astype("float32"))
  ident = lambda f: idl.callable_identity(f, name="metric_fn")
  base = ident(lj.make_metric_fn(model, digits_test, batch_stats=v.get("batch_stats")))
  assert base == ident(lj.make_metric_fn(model, digits_test, batch_stats=v.get("batch_stats")))
  subset = ident(lj.make_metric_fn(model, digits_test.subset(slice(0, 100)),
                                   batch_stats=v.get("batch_stats")))
  assert subset != base
  other = ident(lj.make_metric_fn(model, digits_train, batch_stats=v.get("batch_stats")))
  assert other["arrays"] != base["arrays"]


def test_unidentifiable_objects_need_a_name():
  lock = threading.Lock()

  def metric(p):
    with lock:
      pass
    return jnp.sum(p)

  with pytest.raises(idl.IdentityError, match="closure variable 'lock'.*identity="):
    idl.callable_identity(metric, name="metric_fn")
  named = idl.callable_identity(metric, identity="my-metric-v1")
  assert named["identity"] == "my-metric-v1"
  assert named != idl.callable_identity(metric, identity="my-metric-v2")


class _Opaque:
  def __init__(self, w):
    self.w = w

  def __call__(self, p):
    return {"loss": jnp.sum(p["x"] * self.w)}


class _Described(_Opaque):
  def __landscape_identity__(self):
    return {"w": self.w}


def test_store_refuses_other_metrics_and_needs_a_name_for_opaque_ones(tmp_path):
  center = {"x": jnp.ones(3)}
  d = {"x": jnp.arange(3.0)}
  xs = np.linspace(-1, 1, 3)
  store = str(tmp_path / "s")
  with pytest.raises(idl.IdentityError, match="identity="):
    lj.surface_grid(_Opaque(jnp.ones(3)), center, d, xs, store=store,
                    engine=lj.EngineOptions(progress=False))
  assert not os.path.exists(store)
  a = lj.surface_grid(_Opaque(jnp.ones(3)), center, d, xs, store=store, identity="w=ones",
                      engine=lj.EngineOptions(progress=False))
  np.testing.assert_allclose(a["loss"], [np.sum(1 + x * np.arange(3.0)) for x in xs], rtol=1e-6)
  with pytest.raises(lj.store.StoreMismatchError, match="identity"):
    lj.surface_grid(_Opaque(jnp.ones(3)), center, d, xs, store=store, identity="w=twos",
                    engine=lj.EngineOptions(progress=False))
  # an object that describes itself needs no name, and its arrays are part of the identity
  s2 = str(tmp_path / "s2")
  lj.surface_grid(_Described(jnp.ones(3)), center, d, xs, store=s2,
                  engine=lj.EngineOptions(progress=False))
  with pytest.raises(lj.store.StoreMismatchError, match="metric_fn.arrays"):
    lj.surface_grid(_Described(2 * jnp.ones(3)), center, d, xs, store=s2,
                    engine=lj.EngineOptions(progress=False))


@pytest.mark.slow
def test_surface_store_refuses_metric_of_other_data_or_batchnorm(digits_train, digits_test,
                                                                 tmp_path):
  """The defect: a rerun with another metric_fn of the same metric names returned stale points."""
  model = lj.get_model("resnet8", num_classes=10, width=0.25)
  v = model.init(jax.random.key(0), digits_train.images[:2].astype("float32"))
  params, bs = v["params"], v["batch_stats"]
  d = lj.normalize_directions(lj.random_direction(jax.random.key(1), params), params)
  xs = np.linspace(-0.5, 0.5, 2)
  test = digits_test.subset(slice(0, 64))
  store = str(tmp_path / "surface")
  kw = dict(store=store, engine=lj.EngineOptions(progress=False, chunk_size=2))
  fixed = lj.make_metric_fn(model, test, batch_stats=bs)
  first = lj.surface_grid(fixed, params, d, xs, **kw)
  others = {
    "other data": lj.make_metric_fn(model, digits_test.subset(slice(64, 128)), batch_stats=bs),
    "a subset": lj.make_metric_fn(model, test.subset(slice(0, 32)), batch_stats=bs),
    "other batch_stats": lj.make_metric_fn(model, test, batch_stats=jax.tree.map(
      lambda x: x + 0.5, bs)),
    "recomputed BatchNorm": lj.make_recompute_metric_fn(
      model, test, train_data=digits_train.subset(slice(0, 64)), batch_stats=bs),
  }
  before = lj.store.read(store)
  for name, fn in others.items():
    with pytest.raises(lj.store.StoreMismatchError, match="metric_fn"):
      lj.surface_grid(fn, params, d, xs, **kw)
    after = lj.store.read(store)
    assert after.generation == before.generation, name
  again = lj.surface_grid(fixed, params, d, xs, **kw)
  np.testing.assert_array_equal(again["loss"], first["loss"])


def test_atomic_write_respects_umask_symlinks_and_cleans_temps(tmp_path):
  target = tmp_path / "out.json"
  old = os.umask(0o027)
  try:
    fileio.atomic_write_json(target, {"a": 1})
  finally:
    os.umask(old)
  assert os.stat(target).st_mode & 0o777 == 0o640
  # a symlink planted at the target is replaced, the file it points to is untouched
  victim = tmp_path / "victim"
  victim.write_text("keep")
  link = tmp_path / "link.json"
  os.symlink(victim, link)
  fileio.atomic_write_text(link, "new")
  assert victim.read_text() == "keep" and not os.path.islink(link) and link.read_text() == "new"
  # temporaries of killed writes (this host, a dead pid) are removed by the next successful
  # write of the same file; a live writer's temporary, another host's and a user's file of a
  # similar name are not
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  host = fileio._host()
  stale = tmp_path / f".out.json.{host}.{dead.pid}.abcd1234.tmp"
  live = tmp_path / f".out.json.{host}.{os.getppid()}.abcd1234.tmp"
  remote = tmp_path / f".out.json.otherhost.{dead.pid}.abcd1234.tmp"
  users = [tmp_path / ".out.json.abc123.tmp", tmp_path / ".other.json.abc.tmp"]
  for f in (stale, live, remote, *users):
    f.write_text("half")
  fileio.atomic_write_json(target, {"a": 2})
  assert not stale.exists() and live.exists() and remote.exists()
  assert all(f.read_text() == "half" for f in users)
  for f in (live, remote, *users):
    f.unlink()
  # a failing write leaves the old content and no temporary
  real = os.replace

  def boom(src, dst):
    raise OSError("disk full")

  os.replace = boom
  try:
    with pytest.raises(OSError, match="disk full"):
      fileio.atomic_write_json(target, {"a": 3})
  finally:
    os.replace = real
  assert target.read_text().strip().endswith("}") and '"a": 2' in target.read_text()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.json")] == []


def test_engine_rejects_bad_metric_outputs_and_chunk_sizes():
  center = {"x": jnp.ones(3)}
  d = {"x": jnp.ones(3)}
  xs = np.linspace(-1, 1, 3)
  with pytest.raises(ValueError, match="tuple of 2 values.*dict of"):
    lj.surface_grid(lambda p: (jnp.sum(p["x"]), 1.0), center, d, xs,
                    engine=lj.EngineOptions(progress=False))
  with pytest.raises(ValueError, match="'loss' has shape \\(3,\\)"):
    lj.surface_grid(lambda p: {"loss": p["x"]}, center, d, xs,
                    engine=lj.EngineOptions(progress=False))
  for bad in (0, -2, 1.5, True):
    with pytest.raises(ValueError, match="chunk_size"):
      lj.surface_grid(lambda p: jnp.sum(p["x"]), center, d, xs,
                      engine=lj.EngineOptions(chunk_size=bad, progress=False))
  c = lj.init_curve(center, {"x": jnp.zeros(3)}, 3)
  with pytest.raises(ValueError, match="chunk_size"):
    lj.evaluate_curve(lambda p: jnp.sum(p["x"]), c, num_points=3,
                      engine=lj.EngineOptions(chunk_size=0, progress=False))
  for ts in ([-0.1, 0.5], [0.5, 1.2], [0.0, np.nan]):
    with pytest.raises(ValueError, match="ts"):
      lj.evaluate_curve(lambda p: jnp.sum(p["x"]), c, ts=ts,
                        engine=lj.EngineOptions(progress=False))


def test_surface_points_equal_grid_and_direct_evaluation():
  center = {"w": jnp.arange(6.0).reshape(2, 3) / 6.0}
  d1, d2 = {"w": jnp.ones((2, 3))}, {"w": jnp.eye(2, 3)}
  f = lambda p: {"loss": jnp.sum(jnp.sin(p["w"]) ** 2)}
  xs, ys = np.linspace(-1, 1, 3), np.linspace(0, 1, 2)
  grid = lj.surface_grid(f, center, (d1, d2), xs, ys, engine=lj.EngineOptions(progress=False))
  coords = lj.surface.grid_coordinates(xs, ys)[::-1]
  pts = lj.surface_points(f, center, (d1, d2), coords, engine=lj.EngineOptions(progress=False))
  np.testing.assert_array_equal(pts["loss"], grid["loss"].ravel()[::-1])
  direct = f(lj.plane_point(center, d1, d2, xs[2], ys[1]))["loss"]
  np.testing.assert_allclose(grid["loss"][2, 1], direct, rtol=1e-6)
