"""checkpoints: atomic orbax saves, structure-checked restores, trajectories."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import landscape_jax as lj
from landscape_jax.methods import (
  checkpoints,
  schedules,
  training,
)


def _assert_trees_equal(a, b):
  lj.trees.check_same_structure(a, b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def trained_state(digits_train):
  """An MLP state after a few Nesterov steps (non-trivial optimizer state), plus its model/tx."""
  model = lj.get_model("mlp_small", num_classes=10)
  tx = schedules.make_optimizer(learning_rate=optax.cosine_decay_schedule(0.1, 100), momentum=0.9,
                               nesterov=True, weight_decay=5e-4)
  state = training.create_train_state(model, jax.random.key(0), digits_train.images[:1], tx)
  for i in range(3):
    batch = (digits_train.images[i * 32:(i + 1) * 32], digits_train.labels[i * 32:(i + 1) * 32])
    state, _ = training.train_step(state, batch, jax.random.key(i), model=model, tx=tx,
                                   mean=digits_train.mean, std=digits_train.std)
  return model, tx, state


def test_restored_checkpoint_evaluates_bit_identically(tmp_path, trained_state, digits_test):
  model, tx, state = trained_state
  checkpoints.save(tmp_path, int(state.step), state)
  template = training.create_train_state(model, jax.random.key(42), digits_test.images[:1], tx)
  restored = checkpoints.restore(tmp_path, template)
  assert isinstance(restored, training.TrainState)
  assert type(restored.opt_state) is type(state.opt_state)
  _assert_trees_equal(restored, state)
  batch = (digits_test.images, digits_test.labels)
  a = training.eval_step(state, batch, model=model, mean=digits_test.mean, std=digits_test.std)
  b = training.eval_step(restored, batch, model=model, mean=digits_test.mean, std=digits_test.std)
  for k in a:
    assert np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes(), k
  # Training continues identically from the restored state.
  step = lambda s: training.train_step(s, batch, jax.random.key(7), model=model, tx=tx,
                                       mean=digits_test.mean, std=digits_test.std)[0]
  _assert_trees_equal(step(state), step(restored))


def test_restore_names_the_differing_leaf(tmp_path, trained_state, digits_train):
  model, tx, state = trained_state
  checkpoints.save(tmp_path, 3, state)
  wider = lj.get_model("mlp_small", num_classes=10, features=(48,))
  target = training.create_train_state(wider, jax.random.key(0), digits_train.images[:1], tx)
  with pytest.raises(ValueError, match=r"Dense_0/bias: shape \(32,\) vs \(48,\)"):
    checkpoints.restore(tmp_path, target)
  deeper = lj.get_model("mlp", num_classes=10)
  target = training.create_train_state(deeper, jax.random.key(0), digits_train.images[:1], tx)
  with pytest.raises(ValueError, match=r"only in second: \['opt_state/1/0/trace/Dense_2/bias'"):
    checkpoints.restore(tmp_path, target)
  # A missing entry is named too.
  with pytest.raises(ValueError, match="only in"):
    checkpoints.restore(tmp_path, {"params": state.params})
  # A dtype change as well.
  half = state._replace(params=jax.tree.map(lambda x: x.astype(jnp.float16), state.params))
  with pytest.raises(ValueError, match="dtype"):
    checkpoints.restore(tmp_path, half)


def test_incomplete_checkpoints_are_ignored(tmp_path, trained_state):
  _, _, state = trained_state
  checkpoints.save(tmp_path, 5, state)
  later = state._replace(step=state.step + 100)
  checkpoints.save(tmp_path, 10, later)
  # What a save killed half-way leaves: orbax's temporary directory, and a step directory without
  # the commit marker (e.g. a copy interrupted on a filesystem without atomic rename).
  os.makedirs(tmp_path / "20.orbax-checkpoint-tmp" / "default")
  (tmp_path / "20.orbax-checkpoint-tmp" / "default" / "junk").write_text("half written")
  os.makedirs(tmp_path / "30" / "default")
  (tmp_path / "30" / "default" / "junk").write_text("half written")
  assert checkpoints.list_steps(tmp_path) == [5, 10]
  assert checkpoints.latest_step(tmp_path) == 10
  restored = checkpoints.restore(tmp_path, state)
  assert int(restored.step) == int(later.step)
  # Saving a step whose earlier save was interrupted works; an existing complete step needs
  # overwrite=True.
  checkpoints.save(tmp_path, 20, state)
  checkpoints.save(tmp_path, 30, state)
  assert checkpoints.list_steps(tmp_path) == [5, 10, 20, 30]
  assert sorted(os.listdir(tmp_path)) == ["10", "20", "30", "5"]
  with pytest.raises(ValueError, match="already exists"):
    checkpoints.save(tmp_path, 30, state)
  checkpoints.save(tmp_path, 30, later, overwrite=True)
  assert int(checkpoints.restore(tmp_path, state, step=30).step) == int(later.step)


def test_missing_checkpoints_are_clear_errors(tmp_path, trained_state):
  _, _, state = trained_state
  with pytest.raises(FileNotFoundError, match="No complete checkpoint"):
    checkpoints.restore(tmp_path / "nothing", state)
  checkpoints.save(tmp_path, 1, state)
  with pytest.raises(FileNotFoundError, match="available steps: \\[1\\]"):
    checkpoints.restore(tmp_path, state, step=2)
  with pytest.raises(ValueError, match="non-negative"):
    checkpoints.save(tmp_path, -1, state)


def test_trajectory_and_variables(tmp_path, trained_state):
  _, _, state = trained_state
  points = [jax.tree.map(lambda x, i=i: x + i, state.params) for i in range(3)]
  for i, p in enumerate(points):
    checkpoints.save(tmp_path, 10 * i, state._replace(params=p))
  traj = checkpoints.load_trajectory(tmp_path)
  assert len(traj) == 3
  for got, want in zip(traj, points, strict=True):
    _assert_trees_equal(got, want)
  assert len(checkpoints.load_trajectory(tmp_path, steps=[0, 20])) == 2
  variables = checkpoints.load_variables(tmp_path)
  assert set(variables) == {"params"}  # the MLP has no batch_stats
  _assert_trees_equal(variables["params"], points[-1])
  with pytest.raises(ValueError, match="no entry 'curve'"):
    checkpoints.load_trajectory(tmp_path, key="curve")


@pytest.mark.multidevice
def test_restore_places_arrays_with_target_sharding(tmp_path, trained_state):
  _, _, state = trained_state
  checkpoints.save(tmp_path, 0, state)
  mesh = lj.make_mesh(devices=jax.devices()[:4])
  replicated = NamedSharding(mesh, P())
  target = jax.device_put(state, replicated)
  restored = checkpoints.restore(tmp_path, target)
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding.is_equivalent_to(replicated, leaf.ndim)
  _assert_trees_equal(restored, state)
