"""One writer at a time, readers never disturbed, and no file the library did not create removed.

Two processes write one surface store (`reliability_worker.py`, slowed writes): the second is
refused at once with `StoreBusyError` naming the first, which finishes normally; a reader polling
the store meanwhile never sees `StoreCorruptError`; a user's files inside the store folder whose
names look like the store's survive every write. Run directories (`train`, curve / SGD training)
take the same lock.
"""

import os
import subprocess
import sys
import time

import conftest
import numpy as np
import pytest

from landscape_jax.core import fileio
from landscape_jax.core import store as store_lib
from landscape_jax.methods.loop import RunDir

pytestmark = pytest.mark.reliability
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(path, delay):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=conftest.child_xla_flags())
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "reliability_worker.py"),
                           "surface", path, str(delay)], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_second_writer_refused_reader_undisturbed_user_files_kept(tmp_path):
  store = str(tmp_path / "surface")
  procs = [_start(store, 1.0), _start(store, 1.0)]  # two writers of one store at once
  meta = os.path.join(store, store_lib.META)
  while not os.path.exists(meta):  # the refused writer may exit before the other writes meta
    assert any(p.poll() is None for p in procs), [p.communicate() for p in procs]
    time.sleep(0.05)
  # files of the user's own, named like the store's, put in the folder while it is written
  users = {"arrays-000000.npz": b"my own file", "arrays-999999.npz": b"mine",
           ".meta.json.abc123.tmp": b"mine too", "notes.txt": b"keep"}
  for name, data in users.items():
    with open(os.path.join(store, name), "wb") as f:
      f.write(data)
  reads = 0
  while any(p.poll() is None for p in procs):  # a reader polling a store that is being written
    state = store_lib.read(store)
    assert state.done.shape == (3, 3) and state.values
    reads += 1
  outs = [p.communicate(timeout=300) for p in procs]
  codes = [p.returncode for p in procs]
  assert sorted(codes)[0] == 0 and sorted(codes)[1] != 0, (codes, outs)
  winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
  err = outs[loser][1]
  assert "BusyError" in err and "being written by another writer" in err, err[-2000:]
  assert f"pid {procs[winner].pid}" in err
  assert "finished" in outs[winner][0]
  assert reads > 0
  final = store_lib.read(store)
  assert final.done.all() and all(np.isfinite(v).all() for v in final.values.values())
  for name, data in users.items():
    assert open(os.path.join(store, name), "rb").read() == data, name


def test_run_directories_take_one_writer(tmp_path):
  work = str(tmp_path / "run")
  saver = RunDir(work, name="sgd", config={"a": 1})
  try:
    with pytest.raises(fileio.BusyError, match="being written by another writer"):
      RunDir(work, name="sgd", config={"a": 1})
  finally:
    saver.close()
  RunDir(work, name="sgd", config={"a": 1}).close()  # released
  with RunDir(work, name="train", config={"a": 1}, layout="trajectory"):
    with pytest.raises(fileio.BusyError, match="train training runs take one writer"):
      RunDir(work, name="train", config={"a": 1}, layout="trajectory")
  with RunDir(work, name="train", config={"a": 1}, layout="trajectory"):  # released
    pass
  # a symlink planted at a lock file's name is never followed
  victim = tmp_path / "victim"
  victim.write_text("keep")
  os.symlink(victim, os.path.join(work, ".other.lock"))
  with pytest.raises(OSError, match="symlink"):
    with fileio.exclusive(work, name=".other.lock"):
      pass
  assert victim.read_text() == "keep"


def test_meta_json_that_is_a_directory_is_named(tmp_path):
  store = tmp_path / "s"
  (store / "meta.json").mkdir(parents=True)
  with pytest.raises(store_lib.StoreCorruptError, match="IsADirectoryError.*regular file"):
    store_lib.read(str(store))
