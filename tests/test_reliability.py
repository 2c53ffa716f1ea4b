"""Reliability (issue #9): faults, bad input, determinism, security, property tests.

Every fault and bad input tried here (and in the module tests it complements) is listed with its
outcome in docs/reliability.md. The SIGKILL tests start worker processes
(tests/reliability_worker.py) on a tiny problem, kill them at random moments while work remains,
resume in this process and compare with an uninterrupted run.
"""

import errno
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.tree_util import Partial

import landscape_jax as lj
from landscape_jax.core import curves, trees
from landscape_jax.core import engine as engine_lib
from landscape_jax.core import store as store_lib
from landscape_jax.methods import (
  checkpoints,
  curve_training,
)
from tests import reliability_worker as rw

pytestmark = pytest.mark.reliability
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _snapshot(*paths):
  out = {}
  for p in paths:
    for root, _, files in os.walk(p) if os.path.isdir(p) else [(os.path.dirname(p), None,
                                                                 [os.path.basename(p)])]:
      for f in files:
        with open(os.path.join(root, f), "rb") as fh:
          out[os.path.join(root, f)] = fh.read()
  return out


@pytest.fixture(scope="module")
def problem():
  return rw.problem()


# =============================================================================== faults: SIGKILL


def _start_worker(kind, path, delay):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "reliability_worker.py"),
                           kind, path, str(delay)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _kill_at_random(procs_and_files, rng):
  """Waits until each worker's first result file exists, then SIGKILLs it after a random delay.

  Returns ``{kind: last reported number saved}`` (what the worker knew was on disk).
  """
  reported = {}
  deadline = time.monotonic() + 420
  pending = dict(procs_and_files)
  while pending:
    for kind, (proc, marker) in list(pending.items()):
      if os.path.exists(marker) or proc.poll() is not None:
        if proc.poll() is None:
          time.sleep(rng.uniform(0.0, 0.8))
          proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (
          f"{kind}: the worker ended with {proc.returncode} before it could be killed:\n"
          f"{err[-3000:]}")
        saved = [int(line.split()[1]) for line in out.splitlines() if line.startswith("saved")]
        reported[kind] = saved[-1] if saved else None
        del pending[kind]
    assert time.monotonic() < deadline, f"no result file appeared for {sorted(pending)}"
    time.sleep(0.01)
  return reported


@pytest.mark.slow
def test_sigkill_surface_curve_eval_curve_train_then_resume_equals_uninterrupted(problem,
                                                                                 tmp_path):
  """Kill -9 a surface computation, a curve evaluation and a curve training run (three worker
  processes) at random moments; each resumes here, loses at most the chunk or epoch in flight, and
  ends with results equal to an uninterrupted run. (Training runs: test_training.py.)"""
  seed = int.from_bytes(os.urandom(4), "little")
  rng = random.Random(seed)
  model, data, a, b, metric_fn, loss_fn = problem
  paths = {"surface": str(tmp_path / "surface"), "curve_eval": str(tmp_path / "curve_eval"),
           "curve_train": str(tmp_path / "curve_train")}
  markers = {"surface": os.path.join(paths["surface"], "meta.json"),
             "curve_eval": os.path.join(paths["curve_eval"], "meta.json"),
             "curve_train": os.path.join(paths["curve_train"], "curve_history.json")}
  procs = {k: (_start_worker(k, paths[k], 0.5), markers[k]) for k in paths}
  outcome = {}

  def killer():
    try:
      outcome["reported"] = _kill_at_random(procs, rng)
    except BaseException as e:  # re-raised in the test's thread
      outcome["error"] = e

  thread = threading.Thread(target=killer, daemon=True)
  thread.start()
  try:
    # The uninterrupted references, computed here while the workers start and get killed.
    ref_surface = rw.run_surface(None, metric_fn, a)
    ref_eval = rw.run_curve_eval(None, metric_fn, a, b)
    ref_curve, ref_hist = rw.run_curve_train(None, loss_fn, a, b, data)
    thread.join(timeout=600)
    if "error" in outcome:
      raise outcome["error"]
    reported = outcome["reported"]
  finally:
    for proc, _ in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  msg = f"(random seed {seed}, reported {reported})"

  # Surface: the store holds at least every chunk the worker saw written; the resume evaluates only
  # the missing points.
  state = store_lib.read(paths["surface"])
  assert state.num_done >= (reported["surface"] or 0), msg
  seen = []
  original = engine_lib.evaluate_missing

  def spy(metric_fn, point_fn, coords, missing, *args, **kwargs):
    seen.append(missing.size)
    return original(metric_fn, point_fn, coords, missing, *args, **kwargs)

  engine_lib.evaluate_missing = spy
  try:
    resumed = rw.run_surface(paths["surface"], metric_fn, a)
  finally:
    engine_lib.evaluate_missing = original
  assert sum(seen) == 9 - state.num_done, msg
  for k in ref_surface:
    np.testing.assert_array_equal(resumed[k], ref_surface[k], err_msg=msg)

  # Curve evaluation: the store's "done" is at least the last block reported.
  done = store_lib.read(paths["curve_eval"]).num_done
  assert done >= (reported["curve_eval"] or 0), msg
  resumed = rw.run_curve_eval(paths["curve_eval"], metric_fn, a, b)
  for part in ("curve", "line"):
    for k in ref_eval[part]:
      np.testing.assert_array_equal(resumed[part][k], ref_eval[part][k], err_msg=msg)

  # Curve training: the latest checkpoint is at least the last epoch reported; resuming gives the
  # bit-identical curve and the same history.
  ckpt = os.path.join(paths["curve_train"], "curve_ckpt")
  last = max([int(n) for n in os.listdir(ckpt) if n.isdigit()], default=0)
  assert last >= (reported["curve_train"] or 0), msg
  curve, hist = rw.run_curve_train(paths["curve_train"], loss_fn, a, b, data)
  _equal(curve, ref_curve)
  assert [h["epoch"] for h in hist] == list(range(rw.TRAIN_EPOCHS)), msg
  assert [h["loss"] for h in hist] == [h["loss"] for h in ref_hist], msg


# ======================================================================= faults: corrupt files


def _store_files(store):
  return sorted(os.path.join(store, n) for n in os.listdir(store))


def test_curve_store_corruption_detected_and_never_overwritten(problem, tmp_path):
  _, _, a, b, metric_fn, _ = problem
  store = str(tmp_path / "eval")
  c = rw.curve_of(a, b)
  kw = dict(num_points=3, line=False, store=store,
            engine=lj.EngineOptions(chunk_size=1, progress=False))
  good = curves.evaluate_curve(metric_fn, c, **kw)
  meta = os.path.join(store, "meta.json")
  (npz,) = [p for p in _store_files(store) if p.endswith(".npz")]
  full = open(npz, "rb").read()
  m = len(full) // 2
  cases = {
    "truncated arrays": (npz, full[: len(full) // 2]),
    "flipped byte in arrays": (npz, full[:m] + bytes([full[m] ^ 0xFF]) + full[m + 1:]),
    "truncated meta": (meta, open(meta, "rb").read()[:20]),
    "meta holding null": (meta, b"null"),
  }
  original = {p: open(p, "rb").read() for p in (npz, meta)}
  for name, (path, data) in cases.items():
    with open(path, "wb") as f:
      f.write(data)
    before = _snapshot(*_store_files(store))
    with pytest.raises(store_lib.StoreCorruptError, match="not modified") as e:
      curves.evaluate_curve(metric_fn, c, **kw)
    assert os.path.basename(path) in str(e.value), name
    assert _snapshot(*_store_files(store)) == before, f"{name}: the store was modified"
    with open(path, "wb") as f:
      f.write(original[path])
  # meta.json missing (a partial copy): the computed arrays are reported and never deleted
  os.rename(meta, meta + ".away")
  with pytest.raises(store_lib.StoreCorruptError, match="no meta.json") as e:
    curves.evaluate_curve(metric_fn, c, **kw)
  assert os.path.basename(npz) in str(e.value) and os.path.exists(npz)
  assert open(npz, "rb").read() == original[npz]
  os.rename(meta + ".away", meta)
  again = curves.evaluate_curve(metric_fn, c, **kw)  # the good state still resumes (no work)
  np.testing.assert_array_equal(again["curve"]["train_loss"], good["curve"]["train_loss"])


def test_curve_store_failing_write_keeps_previous_state(problem, tmp_path, monkeypatch):
  _, _, a, b, metric_fn, _ = problem
  store = str(tmp_path / "eval")
  c = rw.curve_of(a, b)
  curves.evaluate_curve(metric_fn, c, num_points=3, line=False,
                        engine=lj.EngineOptions(chunk_size=1, progress=False), store=store)
  before = _snapshot(*_store_files(store))
  real_replace = os.replace

  def full_disk(src, dst):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "replace", full_disk)
  with pytest.raises(store_lib.StoreWriteError, match="previous state on disk is intact"):
    curves.evaluate_curve(metric_fn, c, num_points=5, line=False,
                          engine=lj.EngineOptions(chunk_size=1, progress=False),
                          store=str(tmp_path / "other"))
  with pytest.raises(store_lib.StoreWriteError, match="No space left"):
    store_lib.write(store, store_lib.read(store))
  monkeypatch.setattr(os, "replace", real_replace)
  assert _snapshot(*_store_files(store)) == before
  leftovers = [n for d in (store, str(tmp_path / "other")) if os.path.isdir(d)
               for n in os.listdir(d) if n.endswith(".tmp")]
  assert not leftovers
  # a store under a regular file cannot be created: a clear error, nothing half-written
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(store_lib.StoreWriteError, match="Could not write"):
    curves.evaluate_curve(metric_fn, c, num_points=3, line=False, store=str(blocker / "e"),
                          engine=lj.EngineOptions(progress=False))


def test_read_only_directory_is_a_clear_error(tmp_path, monkeypatch):
  """A read-only results directory (simulated: tests may run as root) -> StoreWriteError."""
  from tests import surface_worker as w

  real_mkstemp = lj.fileio.tempfile.mkstemp

  def read_only(*args, **kwargs):
    raise PermissionError(errno.EROFS, "Read-only file system")

  monkeypatch.setattr(lj.fileio.tempfile, "mkstemp", read_only)
  center, dirs = w.toy_problem()
  with pytest.raises(store_lib.StoreWriteError, match="Read-only file system.*intact"):
    lj.surface_grid(Partial(w.toy_metric), center, dirs[0], w.TOY_XS, store=str(tmp_path / "s"),
                    engine=lj.EngineOptions(progress=False))
  monkeypatch.setattr(lj.fileio.tempfile, "mkstemp", real_mkstemp)


def test_corrupt_checkpoint_detected_never_overwritten_previous_kept(tmp_path, problem):
  """A complete checkpoint whose largest data file has a flipped byte (orbax would restore wrong
  numbers silently: its compression has no checksum) or is truncated: restore raises
  CheckpointCorruptError naming the leaf or file; nothing is modified; the earlier step restores."""
  import shutil

  _, _, a, b, _, _ = problem
  good = tmp_path / "good"
  checkpoints.save(good, 1, {"params": a})
  checkpoints.save(good, 2, {"params": b})
  assert checkpoints.list_steps(good) == [1, 2]
  for damage in ("flip", "truncate"):
    d = tmp_path / damage
    shutil.copytree(good, d)
    files = [os.path.join(r, f) for r, _, fs in os.walk(d / "2") for f in fs
             if os.path.basename(r) == "d"]
    largest = max(files, key=os.path.getsize)
    data = bytearray(open(largest, "rb").read())
    if damage == "flip":
      data[len(data) // 2] ^= 0xFF
    else:
      del data[len(data) // 3:]
    open(largest, "wb").write(bytes(data))
    before = _snapshot(str(d))
    with pytest.raises(checkpoints.CheckpointCorruptError, match="not modified"):
      checkpoints.restore(d, {"params": a}, step=2)
    with pytest.raises(checkpoints.CheckpointCorruptError):
      checkpoints.restore(d)  # the latest step, without a target
    assert _snapshot(str(d)) == before
    _equal(checkpoints.restore(d, {"params": a}, step=1), {"params": a})
  # a damaged checksum file is reported too
  open(good / "2" / "sha256.json", "w").write("{")
  with pytest.raises(checkpoints.CheckpointCorruptError, match="unreadable"):
    checkpoints.restore(good, step=2)


def test_corrupt_curve_checkpoint_is_detected(problem, tmp_path):
  """A flipped byte in the latest curve-training checkpoint: the rerun raises
  CheckpointCorruptError instead of continuing from wrong bends; nothing is modified."""
  _, data, a, b, _, loss_fn = problem
  kw = rw.train_kw(epochs=2)
  work = str(tmp_path / "curve")
  curve_training.train_curve(loss_fn, a, b, data, workdir=work, **kw)
  step = os.path.join(work, "curve_ckpt", "2")
  assert os.path.exists(os.path.join(step, checkpoints.CHECKSUM_FILE))
  files = [os.path.join(r, f) for r, _, fs in os.walk(step) for f in fs
           if os.path.basename(r) == "d"]
  largest = max(files, key=os.path.getsize)
  data_bytes = bytearray(open(largest, "rb").read())
  data_bytes[len(data_bytes) // 2] ^= 0xFF
  open(largest, "wb").write(bytes(data_bytes))
  before = _snapshot(work)
  with pytest.raises(checkpoints.CheckpointCorruptError, match="curve_ckpt/2"):
    curve_training.train_curve(loss_fn, a, b, data, workdir=work, **kw)
  assert _snapshot(work) == before


def test_damaged_json_side_files_are_named_with_the_remedy(problem, tmp_path):
  """The small JSON files a run reads back (here curve training's configuration and history):
  damaged by hand, the rerun stops with StoreCorruptError naming the file and what to do, and
  changes nothing; following the remedy resumes."""
  _, data, a, b, _, loss_fn = problem
  kw = rw.train_kw(epochs=1)
  work = str(tmp_path / "curve")
  bends, history = curve_training.train_curve(loss_fn, a, b, data, workdir=work, **kw)
  for name, remedy in (("curve_config.json", "Restore it"), ("curve_history.json", "Move it away")):
    path = os.path.join(work, name)
    good = open(path, "rb").read()
    open(path, "wb").write(good[:-3])
    before = _snapshot(work)
    with pytest.raises(store_lib.StoreCorruptError, match=f"{name} is damaged.*{remedy}"):
      curve_training.train_curve(loss_fn, a, b, data, workdir=work, **kw)
    assert _snapshot(work) == before
    if name == "curve_config.json":
      open(path, "wb").write(good)
  os.remove(os.path.join(work, "curve_history.json"))  # the remedy: resumes, loses the records
  resumed, resumed_history = curve_training.train_curve(loss_fn, a, b, data, workdir=work, **kw)
  _equal(resumed, bends)
  assert resumed_history == []
  with pytest.raises(FileNotFoundError):
    store_lib.read_json(os.path.join(work, "missing.json"), remedy="")


# =============================================================================== bad input


def _params():
  return {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
          "Dense_1": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}


@pytest.mark.parametrize("change, message", [
  (lambda p: {**p, "Dense_1": {**p["Dense_1"], "kernel": jnp.ones((3, 5))}},
   r"Dense_1/kernel: shape \((3, 2|3, 5)\) vs \((3, 5|3, 2)\)"),
  (lambda p: {**p, "Dense_0": {**p["Dense_0"], "bias": jnp.zeros(3, jnp.float16)}},
   r"Dense_0/bias: dtype (float32|float16) vs (float16|float32)"),
  (lambda p: {"Dense_0": p["Dense_0"]},
   r"only in (first|second): \['Dense_1/bias', 'Dense_1/kernel'\]"),
  (lambda p: {**p, "Dense_2": {"kernel": jnp.ones((2, 2))}},
   r"only in (first|second): \['Dense_2/kernel'"),
])
def test_mismatched_pytrees_name_the_first_differing_path(change, message):
  p = _params()
  q = change(p)
  calls = {
    "check_same_structure": lambda: trees.check_same_structure(p, q),
    "normalize_directions": lambda: lj.normalize_directions(q, p),
    "surface_grid": lambda: lj.surface_grid(lambda x: {"loss": 0.0}, p, q, [0.0],
                                            engine=lj.EngineOptions(progress=False)),
    "init_curve": lambda: curves.init_curve(p, q),
    "directions_from_models": lambda: lj.directions_from_models(p, q),
    "stack": lambda: trees.stack([p, q]),
  }
  for name, call in calls.items():
    with pytest.raises(ValueError, match=message):
      call()
    assert name


def test_unknown_names_list_the_known_ones():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet7x'.*Known models: .*mlp_small"):
    lj.get_model("resnet7x", num_classes=10)
  with pytest.raises(ValueError, match=r"Unknown dataset 'imagenet'.*digits, mnist"):
    lj.load("imagenet")
  with pytest.raises(ValueError, match=r"Unknown norm 'filters'; choose one of"):
    lj.normalize_directions(_params(), _params(), norm="filters")
  with pytest.raises(ValueError, match=r"Unknown curve kind 'spline'"):
    curves.evaluate_curve(lambda p: {"loss": 0.0}, curves.init_curve(_params(), _params()),
                          kind="spline")


def test_bad_grids_and_curve_points():
  center, d = _params(), _params()
  f = lambda p: {"loss": 0.0}
  for xs, msg in [([], "no points"), ([1.0, 0.0], "strictly increasing"),
                  ([0.0, np.nan], "non-finite"), ([-np.inf, 1.0], "non-finite"),
                  ([0.0, 0.0], "strictly increasing")]:
    with pytest.raises(ValueError, match=msg):
      lj.surface_grid(f, center, d, xs, engine=lj.EngineOptions(progress=False))
  c = curves.init_curve(center, d)
  with pytest.raises(ValueError, match="non-empty 1-D"):
    curves.evaluate_curve(f, c, ts=[], engine=lj.EngineOptions(progress=False))
  with pytest.raises(ValueError, match="ts contains non-finite"):
    curves.evaluate_curve(f, c, ts=[0.0, np.nan], engine=lj.EngineOptions(progress=False))
  with pytest.raises(ValueError, match="ts must be strictly increasing"):
    curves.evaluate_curve(f, c, ts=[1.0, 0.0], engine=lj.EngineOptions(progress=False))
  plane = curves.plane_basis(center, jax.tree.map(lambda x: x + 1.0, d),
                             jax.tree.map(lambda x: x * 0.0 + 3.0, d))
  with pytest.raises(ValueError, match="alphas must be strictly increasing"):
    curves.evaluate_plane(f, plane, alphas=[1.0, -1.0], engine=lj.EngineOptions(progress=False))
  with pytest.raises(ValueError, match="betas has no points"):
    curves.evaluate_plane(f, plane, betas=[], engine=lj.EngineOptions(progress=False))


def test_zero_direction_under_layer_normalisation():
  p = _params()
  zero = jax.tree.map(jnp.zeros_like, p)
  for norm in ("layer", "dlayer"):
    with pytest.raises(ValueError, match="direction is zero at Dense_0/kernel"):
      lj.normalize_directions(zero, p, norm=norm)
  z = lj.normalize_directions(zero, p, norm="filter")  # epsilon: stays zero, no NaN
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(z))


def test_images_that_do_not_fit_the_model(digits_train):
  """A model built for 16x16x3 images given 8x8x1 digits: a clear error where the metric, the
  loss or the training run is first used (checked while tracing, nothing compiled)."""
  model = lj.get_model("mlp_small", num_classes=10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  data = digits_train.subset(slice(0, 64))
  metric_fn = lj.make_metric_fn(model, data, batch_size=32)
  with pytest.raises(ValueError, match=r"images of shape \(8, 8, 1\).*number of channels"):
    metric_fn(params)
  loss_fn = lj.make_loss_fn(model, mean=data.mean, std=data.std)
  with pytest.raises(ValueError, match=r"do not fit MLP"):
    loss_fn(params, (data.images[:4], data.labels[:4]))
  with pytest.raises(ValueError, match="do not fit"):
    lj.surface_grid(metric_fn, params, lj.random_directions(jax.random.key(0), params, num=1),
                    [0.0], engine=lj.EngineOptions(progress=False))
  with pytest.raises(ValueError, match="do not fit"):
    lj.evaluation.check_model_fits(model, {"params": params}, data)


def test_labels_out_of_range_and_empty_splits(digits_train, tmp_path):
  data = digits_train.subset(slice(0, 64))
  # a dataset whose labels exceed its classes
  with pytest.raises(ValueError, match=r"labels of .* must lie in \[0, 5\)"):
    lj.data.Dataset(images=data.images, labels=data.labels, num_classes=5, mean=data.mean,
                    std=data.std, name="digits", split="train")
  with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
    lj.data.Dataset(images=data.images, labels=data.labels - 1, num_classes=10, mean=data.mean,
                    std=data.std)
  # a model with fewer outputs than the dataset has classes (the loss would be a silent NaN)
  small = lj.get_model("mlp_small", num_classes=5)
  params = small.init(jax.random.key(0), data.images[:1].astype(np.float32))["params"]
  with pytest.raises(ValueError, match=r"outputs 5 logits .* labels 0..9.*num_classes=10"):
    lj.make_metric_fn(small, data, batch_size=32)(params)
  with pytest.raises(ValueError, match="outputs 5 logits"):
    lj.training.train(small, data, config={"num_epochs": 1, "batch_size": 32},
                      workdir=str(tmp_path / "t"), mesh=lj.make_mesh(1), progress=False)
  # empty splits
  with pytest.raises(ValueError, match="is empty"):
    data.subset(slice(0, 0))
  with pytest.raises(ValueError, match="subset must be positive"):
    lj.load("digits", "train", subset=0)
  with pytest.raises(ValueError, match="empty split"):
    lj.device_split(data.images[:0], data.labels[:0], batch_size=8)


def test_checkpoint_of_another_model(tmp_path, digits_train):
  small = lj.get_model("mlp_small", num_classes=10)
  big = lj.get_model("mlp", num_classes=10)
  x = digits_train.images[:1].astype(np.float32)
  small_vars = small.init(jax.random.key(0), x)
  big_vars = big.init(jax.random.key(0), x)
  checkpoints.save(tmp_path, 0, big_vars)
  # restoring against the expected structure names the path and the checkpoint
  with pytest.raises(ValueError,
                     match=r"Checkpoint .*/0 does not match the target: .*params/Dense_2/bias"):
    checkpoints.restore(tmp_path, small_vars)
  # loaded without a target and evaluated with the wrong model: a clear error, not a crash
  loaded = checkpoints.load_variables(tmp_path)
  metric_fn = lj.make_metric_fn(small, digits_train.subset(slice(0, 32)), batch_size=32)
  with pytest.raises(ValueError, match="parameters come from another model"):
    metric_fn(loaded["params"])


def test_nan_parameters_are_errors_but_nan_losses_far_out_are_values(problem):
  _, data, a, b, metric_fn, loss_fn = problem
  bad = jax.tree.map(lambda x: x, a)
  bad["Dense_1"]["kernel"] = bad["Dense_1"]["kernel"].at[0, 0].set(jnp.nan)
  (d,) = lj.random_directions(jax.random.key(0), a, num=1)
  with pytest.raises(ValueError, match="center parameters contain non-finite values at "
                                       "Dense_1/kernel"):
    lj.surface_grid(metric_fn, bad, d, [0.0, 1.0], engine=lj.EngineOptions(progress=False))
  with pytest.raises(ValueError, match="direction 1 contain non-finite values"):
    lj.surface_grid(metric_fn, a, jax.tree.map(lambda x: x * jnp.inf, d), [0.0],
                    engine=lj.EngineOptions(progress=False))
  with pytest.raises(ValueError, match="curve control points contain non-finite"):
    curves.evaluate_curve(metric_fn, curves.init_curve(bad, b), num_points=3,
                          engine=lj.EngineOptions(progress=False))
  with pytest.raises(ValueError, match="non-finite values at Dense_1/kernel"):
    curve_training.train_curve(loss_fn, bad, b, data, settings=lj.CurveSettings(epochs=1),
                               progress=False)
  # Far grid points: the loss overflows to inf/NaN and is recorded as a value, not an error.
  res = lj.surface_grid(metric_fn, a, d, [0.0, 1e30],
                        engine=lj.EngineOptions(chunk_size=1, progress=False))
  assert np.isfinite(res["train_loss"][0])
  assert not np.isfinite(res["train_loss"][1])


def test_paths_are_used_literally_never_by_a_shell(tmp_path, monkeypatch):
  """Store paths with shell syntax are created literally: nothing is expanded or executed."""
  from tests import surface_worker as w

  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  weird = str(tmp_path / "~ $HOME $(touch pwned) `touch pwned2`; *")
  center, dirs = w.toy_problem()
  lj.surface_grid(Partial(w.toy_metric), center, dirs[0], w.TOY_XS[:2], store=weird,
                  engine=lj.EngineOptions(progress=False))
  assert os.path.isdir(weird) and store_lib.read(weird).done.all()
  assert not os.path.exists(tmp_path / "pwned") and not os.path.exists(tmp_path / "pwned2")
  assert not os.path.exists(tmp_path / "home")


# ================================================================================== security

_SOURCES = [os.path.join(r, f) for d in ("landscape_jax", "experiments", "tests", "benchmarks",
                                         "notebooks")
            for r, _, fs in os.walk(os.path.join(ROOT, d)) for f in fs
            if f.endswith((".py", ".ipynb"))]
_FORBIDDEN = {
  "pickle": r"\b(c?pickle|dill|cloudpickle|joblib|shelve|marshal)\b",
  "allow_pickle=True": r"allow_pickle\s*=\s*True",
  "shell=True": r"shell\s*=\s*True",
  "os.system / os.popen": r"\bos\.(system|popen|exec\w*|spawn\w*)\s*\(",
  "eval / exec": r"(?<![\w.])(eval|exec)\s*\(",
  # torch.load only as its restricted reader of tensors (weights_only=True, no code executed)
  "yaml.load / torch.load": r"\byaml\.load\s*\(|\btorch\.load\s*\((?![^)]*weights_only\s*=\s*True)",
  "path expansion": r"\b(expandvars|expanduser)\s*\(",
}


@pytest.mark.parametrize("what", sorted(_FORBIDDEN))
def test_no_pickle_shell_or_expansion_in_sources(what):
  """No pickle (or other code-executing readers) for files we read; no shell, eval or path
  expansion anywhere (paths from configs are used as given)."""
  pattern = re.compile(_FORBIDDEN[what])
  hits = []
  for path in _SOURCES:
    if os.path.basename(path) == "test_reliability.py":
      continue
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f, 1):
        code = line.split("#")[0]
        if pattern.search(code):
          hits.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
  assert not hits, f"{what} found:\n" + "\n".join(hits)
  assert len(_SOURCES) > 20


# ============================================================================== determinism


@pytest.mark.multidevice
def test_directions_bit_identical_across_reruns_and_device_counts(problem):
  _, _, a, _, _, _ = problem
  d1 = lj.random_directions(jax.random.key(42), a)
  d2 = lj.random_directions(jax.random.key(42), a)
  _equal(d1, d2)
  mesh = lj.make_mesh(8)  # fails (does not skip) without the 8 devices of tests/conftest.py
  replicated = jax.device_put(a, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  _equal(lj.random_directions(jax.random.key(42), replicated), d1)
  d3 = lj.random_directions(jax.random.key(43), a)
  assert not np.array_equal(np.asarray(d3[0]["Dense_0"]["kernel"]),
                            np.asarray(d1[0]["Dense_0"]["kernel"]))


@pytest.mark.multidevice
def test_surfaces_and_curves_identical_across_reruns_and_device_counts(problem):
  """Same seed -> bit-identical surfaces and curves on rerun. 1 vs 8 simulated devices: with
  `lax.map` (the CPU default) every point runs the same program, bit-identical; with `vmap` (the
  GPU/TPU default, and within a curve chunk) the per-device batch shape differs, so XLA may round
  differently: documented tolerance rtol 1e-6 (measured 8e-8)."""
  _, _, a, b, metric_fn, _ = problem
  dirs = lj.random_directions(jax.random.key(1), a)
  for map_mode in ("map", "vmap"):
    kw = dict(chunk_size=8, progress=False, map_mode=map_mode)
    one = lj.surface_grid(metric_fn, a, dirs, rw.XS, rw.YS,
                          engine=lj.EngineOptions(mesh=lj.make_mesh(1), **kw))
    again = lj.surface_grid(metric_fn, a, dirs, rw.XS, rw.YS,
                            engine=lj.EngineOptions(mesh=lj.make_mesh(1), **kw))
    eight = lj.surface_grid(metric_fn, a, dirs, rw.XS, rw.YS,
                            engine=lj.EngineOptions(mesh=lj.make_mesh(8), **kw))
    for k in one:
      np.testing.assert_array_equal(again[k], one[k])
      if map_mode == "map":
        np.testing.assert_array_equal(eight[k], one[k], err_msg=k)
      else:
        np.testing.assert_allclose(eight[k], one[k], rtol=1e-6, atol=0, err_msg=k)
  c = rw.curve_of(a, b)
  ckw = dict(num_points=8, line=False)
  ekw = dict(chunk_size=8, progress=False)
  c1 = curves.evaluate_curve(metric_fn, c, engine=lj.EngineOptions(mesh=lj.make_mesh(1), **ekw),
                             **ckw)
  c1b = curves.evaluate_curve(metric_fn, c, engine=lj.EngineOptions(mesh=lj.make_mesh(1), **ekw),
                              **ckw)
  c8 = curves.evaluate_curve(metric_fn, c, engine=lj.EngineOptions(mesh=lj.make_mesh(8), **ekw),
                             **ckw)
  for k in c1["curve"]:
    np.testing.assert_array_equal(c1b["curve"][k], c1["curve"][k])
    np.testing.assert_allclose(c8["curve"][k], c1["curve"][k], rtol=1e-6, atol=0, err_msg=k)


def test_curve_training_bit_identical_across_reruns(problem):
  _, data, a, b, _, loss_fn = problem
  kw = rw.train_kw(epochs=2)
  c1, h1 = curve_training.train_curve(loss_fn, a, b, data, **kw)
  c2, h2 = curve_training.train_curve(loss_fn, a, b, data, **kw)
  _equal(c1, c2)
  assert h1 == h2


# ======================================================================= property-based tests

_leaf_shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4)
_names = st.text("abcdefgh_", min_size=1, max_size=4)


@st.composite
def _pytrees(draw, max_leaves=6):
  """Nested dicts (depth <= 2) of float32 arrays of random shapes."""
  n = draw(st.integers(1, max_leaves))
  keys = draw(st.lists(st.tuples(_names, st.sampled_from(["", "kernel", "bias"])),
                       min_size=n, max_size=n, unique_by=lambda k: k[0]))
  tree = {}
  for outer, inner in keys:
    shape = draw(_leaf_shapes)
    leaf = draw(hnp.arrays(np.float32, shape, elements=st.floats(-3, 3, width=32)))
    tree[outer] = {inner: leaf} if inner else leaf
  return tree


@settings(max_examples=25, deadline=None)
@given(tree=_pytrees(), data=st.data())
def test_property_first_difference_names_the_first_differing_leaf(tree, data):
  assert trees.first_difference(tree, tree) is None
  paths = trees.leaf_paths(tree)
  leaves = jax.tree.leaves(tree)
  i = data.draw(st.integers(0, len(leaves) - 1))
  kind = data.draw(st.sampled_from(["shape", "dtype"]))
  j = data.draw(st.integers(i, len(leaves) - 1))  # a later leaf may change too

  def changed(x, idx):
    if idx not in (i, j):
      return x
    return np.zeros(x.shape + (2,), x.dtype) if kind == "shape" else x.astype(np.float16)

  flat, treedef = jax.tree.flatten(tree)
  other = jax.tree.unflatten(treedef, [changed(x, k) for k, x in enumerate(flat)])
  diff = trees.first_difference(tree, other)
  assert diff is not None and diff.startswith(f"{paths[i]}: {kind}")
  if kind == "dtype":
    assert trees.first_difference(tree, other, check_dtype=False) is None
  else:
    assert trees.first_difference(tree, other, check_dtype=False) == diff
  with pytest.raises(ValueError, match=re.escape(paths[i])):
    trees.check_same_structure(tree, other)
  # a missing leaf is named as "only in first"
  if len(tree) > 1:
    first_key = sorted(tree)[0]
    smaller = {k: v for k, v in tree.items() if k != first_key}
    assert "only in first" in trees.first_difference(tree, smaller)
    assert first_key in trees.first_difference(tree, smaller)


@settings(max_examples=12, deadline=None)
@given(tree=_pytrees(max_leaves=4), n=st.integers(1, 4), data=st.data())
def test_property_stack_unstack_roundtrip(tree, n, data):
  scales = data.draw(st.lists(st.floats(-2, 2, width=32), min_size=n, max_size=n))
  members = [jax.tree.map(lambda x, s=s: x * np.float32(s), tree) for s in scales]
  stacked = trees.stack(members)
  for leaf, ref in zip(jax.tree.leaves(stacked), jax.tree.leaves(tree), strict=True):
    assert leaf.shape == (n, *np.shape(ref)) and leaf.dtype == ref.dtype
  back = trees.unstack(stacked)
  assert len(back) == n
  for got, want in zip(back, members, strict=True):
    _equal(got, want)
    assert jax.tree.structure(got) == jax.tree.structure(want)
  for i in range(n):
    _equal(trees.index(stacked, i), members[i])


@settings(max_examples=25, deadline=None)
@given(tree=_pytrees(), min_ndim=st.integers(0, 4))
def test_property_mask_by_ndim(tree, min_ndim):
  mask = trees.mask_by_ndim(tree, min_ndim=min_ndim)
  assert jax.tree.structure(mask) == jax.tree.structure(tree)
  for m, x in zip(jax.tree.leaves(mask), jax.tree.leaves(tree), strict=True):
    assert bool(m) == (np.ndim(x) >= min_ndim)
  masked = trees.apply_mask(tree, mask)
  for m, x, y in zip(jax.tree.leaves(mask), jax.tree.leaves(tree), jax.tree.leaves(masked),
                     strict=True):
    np.testing.assert_array_equal(y, x if m else np.zeros_like(x))


@settings(max_examples=10, deadline=None)
@given(tree=_pytrees(max_leaves=3), seed=st.integers(0, 2 ** 16), scale=st.floats(0.01, 100.0))
def test_property_normalize_directions(tree, seed, scale):
  """Filter norm of every kernel filter equals w's; normalize(c d) == normalize(d); biasbn zeroes
  exactly the leaves with ndim <= 1; layer norm matches w's norm."""
  # w with no zero filters (a zero filter gets a zero direction filter by construction)
  w = jax.tree.map(lambda x: np.where(np.abs(x) < 0.1, 0.5, x).astype(np.float32), tree)
  rng = np.random.default_rng(seed)
  d = jax.tree.map(lambda x: rng.standard_normal(np.shape(x)).astype(np.float32), w)
  n = lj.normalize_directions(d, w, norm="filter", ignore="biasbn")
  nc = lj.normalize_directions(jax.tree.map(lambda x: x * np.float32(scale), d), w,
                               norm="filter", ignore="biasbn")
  nl = lj.normalize_directions(d, w, norm="layer", ignore=None)
  for x, y, yc, yl in zip(jax.tree.leaves(w), jax.tree.leaves(n), jax.tree.leaves(nc),
                          jax.tree.leaves(nl), strict=True):
    x, y, yc, yl = (np.asarray(v, np.float64) for v in (x, y, yc, yl))
    if x.ndim <= 1:
      assert np.all(y == 0)                       # biasbn: exactly the 1-D (and 0-D) leaves
      np.testing.assert_array_equal(yl, x)        # ignore=None copies w there
      continue
    axes = tuple(range(x.ndim - 1))
    np.testing.assert_allclose(np.sqrt((y ** 2).sum(axes)), np.sqrt((x ** 2).sum(axes)),
                               rtol=1e-4)
    np.testing.assert_allclose(yc, y, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(yl), np.linalg.norm(x), rtol=1e-4)
    assert np.any(y != 0)
