"""Resumable training results are keyed on the exact identity of what computed them.

A rerun in the same workdir with swapped endpoints, a permuted (functionally identical) endpoint,
other data or another loss function is refused with a message naming what differs, never resumed
from the old results; every file is written through `fileio`, so symlinks planted at predictable
temporary names never redirect a write.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.core import curves, permutations, store
from landscape_jax.methods import (
  curve_training,
  ensembles,
  rundir,
  training,
)

KW = dict(settings=lj.CurveSettings(epochs=1, batch_size=64, learning_rate=0.05, weight_decay=1e-4,
                                    num_bends=3, seed=0), progress=False)


@pytest.fixture(scope="module")
def setup(digits_train):
  data = digits_train.subset(slice(0, 128))
  model = lj.get_model("mlp", num_classes=10, features=(16,))
  loss_fn = lj.make_loss_fn(model, mean=data.mean, std=data.std)
  a = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  b = model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))["params"]
  return model, data, loss_fn, a, b


@pytest.fixture(scope="module")
def curve_workdir(setup, tmp_path_factory):
  """A finished one-epoch curve training run: (workdir, its curve)."""
  _, data, loss_fn, a, b = setup
  work = str(tmp_path_factory.mktemp("curve"))
  curve, _ = curve_training.train_curve(loss_fn, a, b, data, workdir=work, **KW)
  return work, curve


def _refused(match, fn):
  with pytest.raises(store.StoreMismatchError, match=match) as e:
    fn()
  assert "another workdir" in str(e.value)  # how to start fresh
  return str(e.value)


def test_curve_rerun_with_the_same_inputs_resumes(setup, curve_workdir):
  _, data, loss_fn, a, b = setup
  work, curve = curve_workdir
  again, hist = curve_training.train_curve(loss_fn, a, b, data, workdir=work, **KW)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), again,
               curve)
  assert [h["epoch"] for h in hist] == [0]


def test_curve_swapped_endpoints_refused(setup, curve_workdir):
  _, data, loss_fn, a, b = setup
  msg = _refused("different configuration", lambda: curve_training.train_curve(
    loss_fn, b, a, data, workdir=curve_workdir[0], **KW))
  assert "start_sha256" in msg and "end_sha256" in msg and "other bytes" in msg


def test_curve_permuted_endpoint_refused(setup, curve_workdir):
  model, data, loss_fn, a, b = setup
  spec = permutations.mlp_spec(b)
  b_perm = permutations.apply_permutation(spec, permutations.random_permutation(
    jax.random.key(3), spec), b)
  x = jnp.asarray(data.images[:16], jnp.float32)
  # the same function, and the same per-leaf sums of squares, but other parameters
  np.testing.assert_allclose(model.apply({"params": b_perm}, x), model.apply({"params": b}, x),
                             rtol=1e-5, atol=1e-5)
  msg = _refused("end_sha256", lambda: curve_training.train_curve(
    loss_fn, a, b_perm, data, workdir=curve_workdir[0], **KW))
  assert "start_sha256" not in msg


def test_curve_other_data_or_loss_fn_or_init_refused(setup, curve_workdir, digits_train):
  model, data, loss_fn, a, b = setup
  work = curve_workdir[0]
  other = digits_train.subset(slice(128, 256))  # as many examples, other images and labels
  _refused("data_sha256", lambda: curve_training.train_curve(loss_fn, a, b, other, workdir=work,
      **KW))
  other_loss = lj.make_loss_fn(model, mean=data.mean, std=2.0 * np.asarray(data.std))
  _refused(r"loss_fn\.arrays \(holds other arrays", lambda: curve_training.train_curve(
    other_loss, a, b, data, workdir=work, **KW))
  init = curves.init_curve(a, b, 3, bends=jax.tree.map(lambda x, y: 0.5 * (x + y) + 0.01, a, b))
  _refused("init_sha256", lambda: curve_training.train_curve(loss_fn, a, b, data, init=init,
                                                     workdir=work, **KW))


def test_curve_uninspectable_loss_fn_needs_a_name(setup, tmp_path):
  _, data, loss_fn, a, b = setup

  class Opaque:
    pass

  handle = Opaque()

  def held_loss(params, batch, _h=handle):
    return loss_fn(params, batch)

  with pytest.raises(ValueError, match="identity="):
    curve_training.train_curve(held_loss, a, b, data, workdir=str(tmp_path), **KW)
  curve_training.train_curve(held_loss, a, b, data, workdir=str(tmp_path), identity="opaque-v1",
      **KW)
  cfg = store.read_json(os.path.join(tmp_path, "curve_config.json"), remedy="")
  assert cfg["loss_fn"]["identity"] == "opaque-v1"
  _refused("loss_fn.identity", lambda: curve_training.train_curve(
    held_loss, a, b, data, workdir=str(tmp_path), identity="opaque-v2", **KW))


def test_sgd_other_init_data_or_loss_fn_refused(setup, tmp_path, digits_train):
  model, data, loss_fn, a, b = setup
  kw = dict(settings=lj.TrainSettings(epochs=1, batch_size=64, learning_rate=0.05, seed=0),
            progress=False, workdir=str(tmp_path))
  p1, _, _ = ensembles.train_sgd(loss_fn, a, data, **kw)
  p2, _, _ = ensembles.train_sgd(loss_fn, a, data, **kw)  # resumes: the same result
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), p1, p2)
  spec = permutations.mlp_spec(a)
  a_perm = permutations.apply_permutation(spec, permutations.random_permutation(
    jax.random.key(4), spec), a)
  _refused("init_sha256", lambda: ensembles.train_sgd(loss_fn, a_perm, data, **kw))
  _refused("data_sha256", lambda: ensembles.train_sgd(
    loss_fn, a, digits_train.subset(slice(128, 256)), **kw))
  other_loss = lj.make_loss_fn(model, mean=data.mean, std=2.0 * np.asarray(data.std))
  _refused("loss_fn.arrays", lambda: ensembles.train_sgd(other_loss, a, data, **kw))


def test_training_on_other_data_refused(tmp_path, digits_train, digits_test):
  model = lj.get_model("mlp_small", num_classes=10)
  config = dict(model="mlp_small", dataset="digits", num_epochs=2, batch_size=64,
                                   checkpoint_every_epochs=1)
  mesh = lj.make_mesh(devices=jax.devices()[:1])
  data = digits_train.subset(slice(0, 128))

  class Stop(Exception):
    pass

  def stop(epoch, state, record):
    raise Stop

  with pytest.raises(Stop):
    training.train(model, data, config=config, workdir=str(tmp_path), mesh=mesh, progress=False,
                   callback=stop)
  other = digits_train.subset(slice(128, 256))
  _refused("train_data_sha256", lambda: training.train(
    model, other, config=config, workdir=str(tmp_path), mesh=mesh, progress=False))
  _refused("test_data_sha256", lambda: training.train(
    model, data, digits_test, config=config, workdir=str(tmp_path), mesh=mesh, progress=False))
  # the same data resumes
  state, records = training.train(model, data, config=config, workdir=str(tmp_path), mesh=mesh,
                                  progress=False)
  assert [r["epoch"] for r in records] == [1, 2]


def _plant(directory, names, victim):
  for name in names:
    os.symlink(victim, os.path.join(directory, name))


def test_symlinks_at_old_temp_names_never_redirect_writes(setup, tmp_path, digits_train):
  """The old writers used predictable temporary names and followed symlinks planted there."""
  model, data, loss_fn, a, b = setup
  victim = tmp_path / "victim.txt"
  victim.write_text("precious")
  pid = os.getpid()
  work = tmp_path / "curve"
  work.mkdir()
  _plant(work, [f"curve_config.json.tmp{pid}", f"curve_history.json.tmp{pid}",
                "curve_config.json.tmp", "curve_history.json.tmp"], victim)
  curve_training.train_curve(loss_fn, a, b, data, workdir=str(work), **KW)
  assert victim.read_text() == "precious"
  assert not os.path.islink(work / "curve_config.json")

  run = tmp_path / "train"
  run.mkdir()
  _plant(run, ["config.json.tmp", "metrics.jsonl.tmp", f"config.json.tmp{pid}"], victim)
  config = dict(model="mlp_small", dataset="digits", num_epochs=1, batch_size=64)
  training.train(lj.get_model("mlp_small", num_classes=10), data, config=config,
                 workdir=str(run), mesh=lj.make_mesh(devices=jax.devices()[:1]), progress=False)
  assert victim.read_text() == "precious"
  assert not os.path.islink(run / "config.json") and not os.path.islink(run / "metrics.jsonl")
  assert rundir.read_config(str(run))["num_epochs"] == 1
