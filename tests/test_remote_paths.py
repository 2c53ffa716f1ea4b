"""Remote paths: a result store, checkpoints and a training run directory round-trip through a
``gs://`` bucket.

The bucket is a local stand-in, no network: `FakeGCS`, an fsspec filesystem with object-store
semantics (no rename: renaming raises; no append; an object appears whole when its writer closes),
is what `etils.epath` opens for ``gs://``, and orbax's TensorStore writes the arrays of a
``gs://bucket/key`` into the same folder (its GCS kvstore spec is redirected to a file one). Any
``os`` call on a ``gs://`` string would create or look for a local ``gs:`` folder instead: the
fixture runs every test in an empty working directory and checks it stays empty."""

import io
import json
import os
import shutil

import fsspec
import jax
import numpy as np
import pytest
from etils.epath import backend as epath_backend
from jax.tree_util import Partial
from orbax.checkpoint._src.path import gcs_utils

import landscape_jax as lj
from landscape_jax.core import engine as engine_lib
from landscape_jax.core import fileio
from landscape_jax.core import store as store_lib
from landscape_jax.methods import checkpoints, rundir, training
from tests import surface_worker as w


class _Upload(io.BytesIO):
  """One object upload: the object appears, whole, when the writer closes."""

  def __init__(self, local):
    super().__init__()
    self._local = local

  def close(self):
    if not self.closed:
      os.makedirs(os.path.dirname(self._local), exist_ok=True)
      with open(self._local + ".uploading", "wb") as f:
        f.write(self.getvalue())
      os.replace(self._local + ".uploading", self._local)
    super().close()


class FakeGCS(fsspec.AbstractFileSystem):
  """``gs://bucket/key`` stored as ``<root>/bucket/key``, with object-store semantics."""

  protocol = ("gs", "gcs")
  root_marker = ""
  cachable = False

  def __init__(self, root, **kwargs):
    super().__init__()
    self.root = str(root)
    self.renames = 0
    self.appends = 0

  @classmethod
  def _strip_protocol(cls, path):
    path = os.fspath(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return path.rstrip("/")

  def _local(self, path):
    return os.path.join(self.root, self._strip_protocol(path))

  def info(self, path, **kwargs):
    name, local = self._strip_protocol(path), self._local(path)
    if os.path.isdir(local):
      return {"name": name, "type": "directory", "size": 0}
    if os.path.isfile(local):
      return {"name": name, "type": "file", "size": os.path.getsize(local)}
    raise FileNotFoundError(path)

  def ls(self, path, detail=True, **kwargs):
    name, local = self._strip_protocol(path), self._local(path)
    if os.path.isfile(local):
      out = [self.info(name)]
    elif os.path.isdir(local):
      out = [self.info(f"{name}/{n}") for n in sorted(os.listdir(local))
             if not n.endswith(".uploading")]
    else:
      raise FileNotFoundError(path)
    return out if detail else [e["name"] for e in out]

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode or "+" in mode:
      self.appends += 1
      raise NotImplementedError(f"gs:// objects cannot be appended to (mode {mode!r})")
    if "r" in mode:
      return open(self._local(path), "rb")
    return _Upload(self._local(path))

  def makedirs(self, path, exist_ok=False):
    os.makedirs(self._local(path), exist_ok=True)

  def mkdir(self, path, create_parents=True, **kwargs):
    os.makedirs(self._local(path), exist_ok=True)

  def rm_file(self, path):
    os.unlink(self._local(path))

  def rmdir(self, path):
    os.rmdir(self._local(path))

  def rm(self, path, recursive=False, maxdepth=None):
    for p in [path] if isinstance(path, str) else path:
      local = self._local(p)
      if os.path.isdir(local):
        shutil.rmtree(local) if recursive else os.rmdir(local)
      elif os.path.exists(local):
        os.unlink(local)
      else:
        raise FileNotFoundError(p)

  def mv(self, path1, path2, **kwargs):
    self.renames += 1
    raise OSError("an object store has no rename")

  rename = mv


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """The fake bucket root (``gs://bucket/x`` is ``root / "bucket" / "x"``) and its filesystem."""
  root = tmp_path / "gcs"
  root.mkdir()
  fake = FakeGCS(root)
  # etils.epath opens gs:// with tf.io.gfile when TensorFlow is installed (a choice it caches
  # for the process), with fsspec otherwise: both lead to the fake
  monkeypatch.setattr(epath_backend, "tf_backend", epath_backend.fsspec_backend)
  monkeypatch.setattr(epath_backend.fsspec_backend, "fs", lambda path: fake)

  def kvstore(path):
    bucket, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": os.path.join(root, bucket, key)}

  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield root, fake
  assert sorted(os.listdir(cwd)) == [], "a gs:// path was used as a local path"
  assert fake.renames == 0 and fake.appends == 0


def _files(folder):
  return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder)
                for n in names)


def test_atomic_writer_and_helpers_on_a_remote_path(gcs):
  root, fake = gcs
  target = "gs://bucket/runs/a/config.json"
  assert fileio.is_remote(target) and not fileio.is_remote("runs/gs:/x")
  fileio.makedirs("gs://bucket/runs/a")
  fileio.atomic_write_json(target, {"a": 1})
  fileio.atomic_write_json(target, {"a": 2})
  assert json.loads((root / "bucket/runs/a/config.json").read_text()) == {"a": 2}
  assert json.loads(fileio.read_bytes(target)) == {"a": 2}
  fileio.append_text("gs://bucket/runs/a/log.txt", "one\n")
  fileio.append_text("gs://bucket/runs/a/log.txt", "two\n")
  assert fileio.read_bytes("gs://bucket/runs/a/log.txt") == b"one\ntwo\n"
  assert fileio.clean_stale_temps(target) == []
  assert _files(root) == ["bucket/runs/a/config.json", "bucket/runs/a/log.txt"]  # no temporaries
  assert fileio.join("gs://bucket/runs", "a", "b") == "gs://bucket/runs/a/b"
  assert os.fspath(fileio.absolute_path("gs://bucket/x")) == "gs://bucket/x"
  assert os.fspath(fileio.absolute_path("x")) == os.path.abspath("x")
  with pytest.raises(ValueError, match="does not know the scheme memory://"):
    fileio.atomic_write_text("memory://bucket/x", "would be a local folder 'memory:'")
  with pytest.raises(ValueError, match="does not know the scheme"):
    lj.store.read("memory://bucket/surface")


def _toy(path, **kwargs):
  center, dirs = w.toy_problem()
  kw = dict(store=path, metadata=w.TOY_META,
            engine=lj.EngineOptions(chunk_size=w.TOY_CHUNK, progress=False))
  return lj.surface_grid(Partial(w.toy_metric), center, dirs, w.TOY_XS, w.TOY_YS, **{**kw,
                                                                                       **kwargs})


class _Killed(Exception):
  pass


def test_surface_store_round_trips_and_resumes_through_gs(gcs, tmp_path, monkeypatch):
  root, _ = gcs
  local = _toy(str(tmp_path / "local"))
  remote = "gs://bucket/surfaces/toy"
  # killed after the first chunk was stored: writes are (1) the empty store, (2) chunk 1, ...
  real_write, writes = store_lib.write, []

  def dying_write(path, state):
    writes.append(os.fspath(path))
    if len(writes) == 3:
      raise _Killed
    return real_write(path, state)

  monkeypatch.setattr(store_lib, "write", dying_write)
  with pytest.raises(_Killed):
    _toy(remote)
  monkeypatch.setattr(store_lib, "write", real_write)
  assert writes[0] == remote
  partial = store_lib.read(remote)
  assert partial.num_done == w.TOY_CHUNK
  resumed = _toy(remote)
  for k in local:
    np.testing.assert_array_equal(resumed[k], local[k])
  state = store_lib.read(remote)
  assert state.done.all() and store_lib.exists(remote)
  assert _files(root / "bucket/surfaces/toy") == ["arrays-000007.npz", "meta.json"]
  # complete: a rerun computes nothing; another computation is refused
  monkeypatch.setattr(engine_lib, "evaluate_missing",
                      lambda *a, **k: pytest.fail("nothing should be recomputed"))
  np.testing.assert_array_equal(_toy(remote)["loss"], local["loss"])
  with pytest.raises(store_lib.StoreMismatchError, match="metadata"):
    _toy(remote, metadata={**w.TOY_META, "dataset": "other"})
  # a damaged remote store is detected, not overwritten
  arrays = root / "bucket/surfaces/toy/arrays-000007.npz"
  arrays.write_bytes(arrays.read_bytes()[:-10])
  with pytest.raises(store_lib.StoreCorruptError, match="sha256"):
    store_lib.read(remote)


def test_checkpoints_round_trip_through_gs(gcs, digits_train):
  root, _ = gcs
  model = lj.get_model("mlp_small", num_classes=10)
  tx = lj.schedules.make_optimizer(learning_rate=0.1, momentum=0.9)
  state = training.create_train_state(model, jax.random.key(0), digits_train.images[:1], tx)
  later = state._replace(step=state.step + 5,
                         params=jax.tree.map(lambda x: x + 1.0, state.params))
  directory = "gs://bucket/ckpt"
  assert checkpoints.list_steps(directory) == []
  assert checkpoints.save(directory, 0, state) == "gs://bucket/ckpt/0"
  checkpoints.save(directory, 5, later)
  assert checkpoints.list_steps(directory) == [0, 5]
  for name in ("commit_success.txt", "sha256.json"):
    assert (root / "bucket/ckpt/5" / name).is_file()
  restored = checkpoints.restore(directory, state)
  jax.tree.map(np.testing.assert_array_equal, restored, later)
  first = checkpoints.restore(directory, state, step=0)
  jax.tree.map(np.testing.assert_array_equal, first, state)
  assert len(checkpoints.load_trajectory(directory)) == 2
  with pytest.raises(ValueError, match="already exists"):
    checkpoints.save(directory, 5, state)
  checkpoints.save(directory, 5, state, overwrite=True)
  jax.tree.map(np.testing.assert_array_equal, checkpoints.restore(directory, state), state)
  # the run directory of curve training and SGD (an orbax manager keeping two)
  saver = lj.RunDir("gs://bucket/curve", name="curve", config={"seed": 0})
  for epoch in (1, 2, 3):
    saver.save(epoch, {"w": np.full(3, float(epoch))}, [{"epoch": e} for e in range(epoch)])
  saver.close()
  again = lj.RunDir("gs://bucket/curve", name="curve", config={"seed": 0})
  got, done, history = again.restore({"w": np.zeros(3)})
  again.close()
  assert done == 3 and history == [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}]
  np.testing.assert_array_equal(got["w"], np.full(3, 3.0))
  assert sorted(os.listdir(root / "bucket/curve/curve_ckpt")) == ["2", "3"]
  with pytest.raises(lj.store.StoreMismatchError, match="seed"):
    lj.RunDir("gs://bucket/curve", name="curve", config={"seed": 1})
  with pytest.raises(ValueError, match="local paths and gs:// only"):
    checkpoints.save("s3://bucket/ckpt", 0, state)


def test_training_run_directory_round_trips_through_gs(gcs, tmp_path, digits_train, digits_test):
  """A run interrupted after epoch 2 in a gs:// workdir resumes to the state and records of an
  uninterrupted local run; load_run reads it back."""
  root, _ = gcs
  model = lj.get_model("mlp_small", num_classes=10)
  config = dict(model="mlp_small", dataset="digits", num_epochs=3, batch_size=128,
                learning_rate=0.1, checkpoint_every_epochs=1)
  mesh = lj.make_mesh(devices=jax.devices()[:1])
  run = lambda workdir, **kw: training.train(model, digits_train, digits_test, config=config,
                                             workdir=workdir, mesh=mesh, progress=False, **kw)
  full_state, full_records = run(str(tmp_path / "local"))

  def interrupt(epoch, state, record):
    if epoch == 2:
      raise _Killed

  workdir = "gs://bucket/runs/mlp"
  with pytest.raises(_Killed):
    run(workdir, callback=interrupt)
  steps = checkpoints.list_steps(fileio.join(workdir, rundir.CHECKPOINT_DIR))
  assert len(steps) == 3 and steps[0] == 0
  assert [r["epoch"] for r in rundir.read_metrics(workdir)] == [1, 2]
  state, records = run(workdir)
  jax.tree.map(np.testing.assert_array_equal, state, full_state)
  strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "images_per_sec")}
                      for r in rs]
  assert strip(records) == strip(full_records)
  assert strip(rundir.read_metrics(workdir)) == strip(full_records)
  assert rundir.read_config(workdir)["train_data_sha256"] == rundir.data_digest(digits_train)
  _, variables, _, _ = rundir.load_run(workdir, split="test")
  jax.tree.map(np.testing.assert_array_equal, variables, full_state.variables)
  assert {"config.json", "metrics.jsonl"} <= set(os.listdir(root / "bucket/runs/mlp"))
