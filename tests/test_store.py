"""Resumable stores: kill and resume, refusal of a different configuration, corruption, failing
writes (issue #3 and #9)."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest
from jax.tree_util import Partial

import landscape_jax as lj
from landscape_jax.core import engine as engine_lib
from landscape_jax.core import store as store_lib
from tests import surface_worker as w

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_toy(path, **kwargs):
  center, dirs = w.toy_problem()
  kw = dict(store=path, metadata=w.TOY_META,
            engine=lj.EngineOptions(chunk_size=w.TOY_CHUNK, progress=False))
  kw.update(kwargs)
  return lj.surface_grid(Partial(w.toy_metric), center, dirs, w.TOY_XS, w.TOY_YS, **kw)


def _snapshot(path):
  return {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted toy surface (7 x 4 = 28 points) and its store."""
  path = str(tmp_path_factory.mktemp("ref") / "surface")
  return _run_toy(path), path


def test_store_roundtrip_and_resume_without_work(reference, monkeypatch):
  res, path = reference
  state = store_lib.read(path)
  assert state.done.all() and state.done.shape == (7, 4)
  np.testing.assert_array_equal(state.values["loss"], res["loss"])
  assert {k: state.config["metadata"][k] for k in w.TOY_META} == w.TOY_META
  coords = lj.surface.grid_coordinates(w.TOY_XS, w.TOY_YS)
  assert state.config["coords_sha256"] == lj.identity.tree_digest(coords)
  center, dirs = w.toy_problem()
  assert state.config["metadata"]["center_sha256"] == lj.identity.tree_digest(center)
  center, (d1, d2) = w.toy_problem()
  direct = w.toy_metric(lj.plane_point(center, d1, d2, w.TOY_XS[5], w.TOY_YS[2]))
  np.testing.assert_allclose(res["loss"][5, 2], direct["loss"], rtol=1e-6)
  # a complete store: a rerun evaluates nothing and writes nothing
  monkeypatch.setattr(engine_lib, "evaluate_missing",
                      lambda *a, **k: pytest.fail("nothing should be recomputed"))
  before = _snapshot(path)
  again = _run_toy(path)
  np.testing.assert_array_equal(again["acc"], res["acc"])
  assert _snapshot(path) == before


def test_killed_run_resumes_only_missing_points(reference, tmp_path, monkeypatch):
  res, _ = reference
  path = str(tmp_path / "surface")
  # writes: 1-2 create the store, 3-4 chunk 1, 5 = arrays of chunk 2 -> SIGKILL before its meta
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "surface_worker.py"),
                         "interrupt", path, "5"], capture_output=True, text=True, timeout=300,
                        cwd=ROOT)
  assert proc.returncode == -9, proc.stderr[-2000:]
  state = store_lib.read(path)  # the previous good state: chunk 1 only
  assert state.num_done == w.TOY_CHUNK
  seen = []
  original = engine_lib.evaluate_missing

  def spy(metric_fn, point_fn, coords, missing, *args, **kwargs):
    seen.append(np.array(missing))
    return original(metric_fn, point_fn, coords, missing, *args, **kwargs)

  monkeypatch.setattr(engine_lib, "evaluate_missing", spy)
  resumed = _run_toy(path)
  assert len(seen) == 1
  np.testing.assert_array_equal(seen[0], np.flatnonzero(~state.done.ravel()))
  assert seen[0].size == 28 - w.TOY_CHUNK
  for k in res:
    np.testing.assert_array_equal(resumed[k], res[k])
  assert store_lib.read(path).done.all()
  # 1 + ceil(23 / 5) = 6 generations after the creation; older ones and the orphan are gone
  assert [n for n in os.listdir(path) if n.endswith(".npz")] == ["arrays-000007.npz"]


def test_mismatched_configuration_is_refused(reference):
  _, path = reference
  before = _snapshot(path)
  with pytest.raises(ValueError, match=r"what differs: .*metadata\.norm"):
    _run_toy(path, metadata={**w.TOY_META, "norm": "filter"})
  center, dirs = w.toy_problem()
  with pytest.raises(ValueError, match=r"grid\.xs"):
    lj.surface_grid(Partial(w.toy_metric), center, dirs, w.TOY_XS[:-1], w.TOY_YS, store=path,
                    metadata=w.TOY_META, engine=lj.EngineOptions(progress=False))
  other = ({"w": dirs[0]["w"] * 2, "b": dirs[0]["b"]}, dirs[1])
  with pytest.raises(ValueError, match="directions_sha256"):
    lj.surface_grid(Partial(w.toy_metric), center, other, w.TOY_XS, w.TOY_YS, store=path,
                    metadata=w.TOY_META, engine=lj.EngineOptions(progress=False))
  assert _snapshot(path) == before


@pytest.mark.reliability
def test_corrupt_store_detected_and_never_overwritten(reference, tmp_path):
  _, good = reference
  path = str(tmp_path / "surface")
  os.makedirs(path)
  for name, data in _snapshot(good).items():
    open(os.path.join(path, name), "wb").write(data)
  arrays = [n for n in os.listdir(path) if n.endswith(".npz")][0]
  full = open(os.path.join(path, arrays), "rb").read()
  open(os.path.join(path, arrays), "wb").write(full[: len(full) // 2])  # truncated
  before = _snapshot(path)
  with pytest.raises(store_lib.StoreCorruptError, match="truncated or corrupt"):
    _run_toy(path)
  assert _snapshot(path) == before
  open(os.path.join(path, "meta.json"), "w").write('{"format": "landscape_jax.sto')
  before = _snapshot(path)
  with pytest.raises(store_lib.StoreCorruptError, match="not modified"):
    _run_toy(path)
  assert _snapshot(path) == before


@pytest.mark.reliability
def test_failing_write_raises_and_keeps_previous_state(tmp_path, monkeypatch):
  path = str(tmp_path / "surface")
  center, dirs = w.toy_problem()
  xs = w.TOY_XS[:3]
  lj.surface_grid(Partial(w.toy_metric), center, (dirs[0],), xs,
                  engine=lj.EngineOptions(chunk_size=1, progress=False, map_mode="vmap"),
                  store=path)
  before = _snapshot(path)
  real_replace = os.replace

  def full_disk(src, dst):
    if dst.endswith("meta.json"):
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", full_disk)
  state = store_lib.read(path)
  state.done[:] = False
  with pytest.raises(store_lib.StoreWriteError, match="previous state on disk is intact"):
    store_lib.write(path, state)
  monkeypatch.setattr(os, "replace", real_replace)
  after = store_lib.read(path)
  assert after.done.all() and after.generation == store_lib.read(path).generation
  assert _snapshot(path).keys() >= {"meta.json"}
  assert open(os.path.join(path, "meta.json"), "rb").read() == before["meta.json"]
  assert not [n for n in os.listdir(path) if n.endswith(".tmp")]
  # a store path under a regular file cannot be created: a clear error
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(store_lib.StoreWriteError, match="Could not write"):
    lj.surface_grid(Partial(w.toy_metric), center, (dirs[0],), xs, store=str(blocker / "s"),
                    engine=lj.EngineOptions(progress=False))
