"""The one epoch loop (`methods.loop`): any (inputs, targets) data, checked against hand-written
optax loops; the settings objects; the divergence check; the trainers' small signatures."""

import dataclasses
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import landscape_jax as lj
from landscape_jax.methods import curve_training, ensembles, loop, training

N, BATCH, SEED = 48, 16, 3  # 3 steps per epoch


def _apply(params, inputs):
  """A tiny MLP on pytree inputs: two feature arrays of one example axis."""
  h = jnp.tanh(inputs["a"] @ params["w1"] + inputs["b"] @ params["v1"])
  return h @ params["w2"]


def _params(seed):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"w1": jax.random.normal(k[0], (3, 8)) / 2, "v1": jax.random.normal(k[1], (2, 8)) / 2,
          "w2": jax.random.normal(k[2], (8, 1)) / 3}


@pytest.fixture(scope="module")
def regression():
  rng = np.random.default_rng(0)
  inputs = {"a": rng.normal(size=(N, 3)).astype(np.float32),
            "b": rng.normal(size=(N, 2)).astype(np.float32)}
  targets = np.sin(inputs["a"][:, :1] - inputs["b"][:, 1:]).astype(np.float32)
  return inputs, targets


def _mse(params, batch):  # by hand: the mean squared error of the batch
  inputs, targets = batch
  return jnp.mean((_apply(params, inputs) - targets) ** 2)


def _batches(inputs, targets, epoch):
  perm = np.random.default_rng([SEED, epoch]).permutation(N)
  for i in range(N // BATCH):
    idx = perm[i * BATCH:(i + 1) * BATCH]
    yield jax.tree.map(lambda a, idx=idx: a[idx], inputs), targets[idx]


def _close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-6,
                                                       atol=1e-7), a, b)


def _optax_loop(loss_fn, tx, params, inputs, targets, *, epochs):
  """The reference: a hand-written optax loop over `_batches`; returns (params, epoch losses)."""
  state, losses = tx.init(params), []
  for epoch in range(epochs):
    epoch_losses = []
    for batch in _batches(inputs, targets, epoch):
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      epoch_losses.append(float(loss))
    losses.append(np.mean(epoch_losses))
  return params, losses

def test_train_sgd_on_pytree_regression_equals_a_hand_written_optax_loop(regression):
  inputs, targets = regression
  settings = lj.TrainSettings(epochs=2, batch_size=BATCH, seed=SEED)
  tx = optax.adam(1e-2)
  got, snaps, history = lj.train_sgd(lj.make_loss_fn(_apply, loss=lj.MSE), _params(0),
                                     (inputs, targets), settings=settings, optimizer=tx,
                                     snapshot_epochs=(0,), progress=False)
  after_epoch0, _ = _optax_loop(_mse, tx, _params(0), inputs, targets, epochs=1)
  _close(snaps[0], after_epoch0)
  params, losses = _optax_loop(_mse, tx, _params(0), inputs, targets, epochs=2)
  _close(got, params)
  np.testing.assert_allclose([h["loss"] for h in history], losses, rtol=1e-5)


def test_fge_on_pytree_regression_takes_its_snapshot_of_a_hand_written_loop(regression):
  """FGE (one cycle of 2 epochs): the member is the parameters after epoch 0, the cycle's lowest
  learning rate, of SGD with momentum, weight decay as an L2 gradient term and the cyclic rate."""
  inputs, targets = regression
  settings = lj.FGESettings(cycles=1, cycle_epochs=2, lr1=0.05, lr2=0.01, batch_size=BATCH,
                            seed=SEED)
  members, history = lj.fast_geometric_ensemble(lj.make_loss_fn(_apply, loss=lj.MSE), _params(0),
                                                (inputs, targets), settings=settings,
                                                progress=False)
  rate = lambda s: lj.schedules.cyclic_lr(s, lr1=0.05, lr2=0.01, cycle_epochs=2,
                                          steps_per_epoch=N // BATCH)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(rate, momentum=0.9))
  params = _params(0)
  state = tx.init(params)
  for batch in _batches(inputs, targets, 0):
    updates, state = tx.update(jax.grad(_mse)(params, batch), state, params)
    params = optax.apply_updates(params, updates)
  _close(jax.tree.map(lambda m: m[0], members), params)
  assert jax.tree.leaves(members)[0].shape[0] == 1 and len(history) == 2


def test_train_curve_on_pytree_regression_equals_a_hand_written_curve_loop(regression, tmp_path):
  """Two epochs of Bezier curve training (default optimiser: SGD with momentum and the reference
  schedule; the L2 term; one t per step from fold_in(key(seed), step)) against the same steps
  written out by hand; then the run directory resumes and refuses other targets."""
  inputs, targets = regression
  a, b = _params(1), _params(2)
  settings = lj.CurveSettings(epochs=2, batch_size=BATCH, seed=SEED, learning_rate=0.05,
                              weight_decay=1e-3)
  loss_fn = lj.make_loss_fn(_apply, loss=lj.MSE)
  work = str(tmp_path / "curve")
  curve, history = lj.train_curve(loss_fn, a, b, (inputs, targets), settings=settings,
                                  workdir=work, progress=False)

  steps = N // BATCH
  tx = optax.sgd(lj.curve_lr_schedule(0.05, total_epochs=2, steps_per_epoch=steps), momentum=0.9)
  mid = jax.tree.map(lambda x, y: 0.5 * (x + y), a, b)  # init_curve: the straight line's middle
  state, step = tx.init(mid), 0

  def objective(w1, batch, t):
    point = jax.tree.map(lambda p0, p1, p2: (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t ** 2 * p2,
                         a, w1, b)
    l2 = sum(jnp.sum(x ** 2) for x in jax.tree.leaves(point))
    return _mse(point, batch) + 0.5 * 1e-3 * l2

  for epoch in range(2):
    for batch in _batches(inputs, targets, epoch):
      k_step, _ = jax.random.split(jax.random.fold_in(jax.random.key(SEED), step))
      t = jax.random.uniform(k_step, ())
      grads = jax.grad(objective)(mid, batch, t)
      updates, state = tx.update(grads, state, mid)
      mid, step = optax.apply_updates(mid, updates), step + 1
  _close(jax.tree.map(lambda c: c[1], curve), mid)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda c: c[0], curve), a)
  assert [h["epoch"] for h in history] == [0, 1]
  # the rerun resumes (nothing left to train: the same curve); other targets are refused
  again, _ = lj.train_curve(loss_fn, a, b, (inputs, targets), settings=settings, workdir=work,
                            progress=False)
  jax.tree.map(np.testing.assert_array_equal, again, curve)
  with pytest.raises(lj.store.StoreMismatchError, match="data_sha256"):
    lj.train_curve(loss_fn, a, b, (inputs, targets + 1.0), settings=settings, workdir=work,
                   progress=False)


def test_settings_are_frozen_and_checked():
  s = lj.TrainSettings(epochs=2)
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.epochs = 3
  assert s.replace(batch_size=4).batch_size == 4 and s.batch_size == 128
  for bad, match in ((dict(epochs=0), "epochs"), (dict(epochs=1, batch_size=2.5), "batch_size"),
                     (dict(epochs=1, momentum=1.0), "momentum"),
                     (dict(epochs=1, weight_decay=-1.0), "weight_decay"),
                     (dict(epochs=1, checkpoint_every=0), "checkpoint_every")):
    with pytest.raises(ValueError, match=match):
      lj.TrainSettings(**bad)
  with pytest.raises(ValueError, match="'learning_rte' in CurveSettings; did you mean "
                     "'learning_rate'"):
    lj.CurveSettings(epochs=1, learning_rte=0.1)
  with pytest.raises(ValueError, match="did you mean 'cycles'"):
    lj.FGESettings(cycles=2).replace(cycle=3)
  with pytest.raises(ValueError, match="cycles must be a positive integer"):
    lj.FGESettings(cycles=2).replace(cycles=0)
  with pytest.raises(ValueError, match="kind"):
    lj.CurveSettings(epochs=1, kind="spline")
  with pytest.raises(ValueError, match="num_bends"):
    lj.CurveSettings(epochs=1, num_bends=2)
  for bad in (0, True, 1.0):
    with pytest.raises(ValueError, match="num_ts must be a positive integer"):
      lj.CurveSettings(epochs=1, num_ts=bad)
  with pytest.raises(ValueError, match="schedule through train_curve's optimizer"):
    lj.CurveSettings(epochs=1, learning_rate=optax.constant_schedule(0.1))
  with pytest.raises(ValueError, match="cycle_epochs must be even"):
    lj.FGESettings(cycles=2, cycle_epochs=3)
  with pytest.raises(TypeError, match="CurveSettings"):
    lj.train_curve(_mse, {"w": jnp.ones(2)}, {"w": jnp.zeros(2)}, (np.ones((4, 2)),) * 2,
                   settings=s, progress=False)
  with pytest.raises(TypeError, match=r"\(inputs, targets\) pair"):
    lj.train_sgd(_mse, {"w": jnp.ones(2)}, {"x": np.ones((4, 2))}, settings=s, progress=False)


def test_divergence_stops_the_loop_before_anything_of_the_epoch_is_saved(regression, tmp_path):
  inputs, targets = regression

  def exploding(params, batch):
    return _mse(params, batch) * jnp.inf

  work = str(tmp_path / "sgd")
  with pytest.raises(FloatingPointError, match="became (nan|inf) in epoch 1.*learning rate"):
    lj.train_sgd(exploding, _params(0), (inputs, targets), progress=False, workdir=work,
                 settings=lj.TrainSettings(epochs=2, batch_size=BATCH), identity="exploding-v1")
  assert lj.checkpoints.list_steps(f"{work}/sgd_ckpt") == []


def test_trainers_take_at_most_twelve_parameters():
  for fn in (training.train, ensembles.train_sgd, ensembles.fast_geometric_ensemble,
             curve_training.train_curve, loop.run_epochs):
    assert len(inspect.signature(fn).parameters) <= 12, fn.__name__


def test_train_takes_any_optax_optimizer(digits_train, tmp_path):
  """`train(optimizer=)`: the loop's steps are `train_step` with that transformation, over the
  seeded permutation with the keys fold_in(base key, step); another optimiser in the same
  workdir is refused by its traced code."""
  data = digits_train.subset(slice(0, 256))
  model = lj.get_model("mlp_small", num_classes=10)
  config = {"num_epochs": 1, "batch_size": 64, "seed": 4}
  tx = optax.adam(3e-3)
  mesh = lj.make_mesh(devices=jax.devices()[:1])
  state, records = training.train(model, data, config=config, workdir=str(tmp_path), optimizer=tx,
                                  mesh=mesh, progress=False)
  assert records[0]["lr"] is None and lj.read_config(str(tmp_path))["custom_optimizer"]
  init_key, base_key = jax.random.split(jax.random.key(4))
  ref = training.create_train_state(model, init_key, data.images[:1], tx)
  order = np.random.default_rng([4, 0]).permutation(len(data))
  for i in range(4):
    idx = order[i * 64:(i + 1) * 64]
    ref, _ = training.train_step(ref, (data.images[idx], data.labels[idx]),
                                 jax.random.fold_in(base_key, ref.step), model=model, tx=tx,
                                 mean=data.mean, std=data.std)
  _close(state.params, ref.params)
  with pytest.raises(lj.store.StoreMismatchError, match="optimizer_code"):
    training.train(model, data, config=config, workdir=str(tmp_path), optimizer=optax.sgd(0.1),
                   mesh=mesh, progress=False)



class _Regressor(nn.Module):
  """A linen MLP on pytree inputs (``train`` is accepted, as `training.train` calls it)."""

  @nn.compact
  def __call__(self, inputs, train=False):
    h = jnp.tanh(nn.Dense(8)(inputs["a"]) + nn.Dense(8, use_bias=False)(inputs["b"]))
    return nn.Dense(1)(h)


def test_train_on_pytree_regression_with_mse_equals_a_hand_written_optax_loop(regression,
                                                                              tmp_path):
  """`train` with (inputs, targets) pairs and `MSE`: the default config's optimiser (SGD, lr 0.1,
  momentum 0.9) over the seeded batches, against the same steps by hand; exact test metrics; the
  loss is part of the run's identity."""
  inputs, targets = regression
  test = (jax.tree.map(lambda a: a[:20], inputs), targets[:20])
  model = _Regressor()
  config = {"num_epochs": 2, "batch_size": BATCH, "seed": SEED}
  mesh = lj.make_mesh(devices=jax.devices()[:1])
  state, records = training.train(model, (inputs, targets), test, config=config, loss=lj.MSE,
                                  workdir=str(tmp_path), mesh=mesh, progress=False)
  assert set(records[0]) == {"epoch", "step", "lr", "train_loss", "test_loss",
                             "examples_per_sec", "time"}
  init_key, _ = jax.random.split(jax.random.key(SEED))
  params = model.init(init_key, jax.tree.map(lambda a: jnp.zeros((1, a.shape[1])), inputs))
  params = params["params"]
  tx = optax.sgd(0.1, momentum=0.9)
  mse = lambda p, batch: jnp.mean((model.apply({"params": p}, batch[0]) - batch[1]) ** 2)
  params, losses = _optax_loop(mse, tx, params, inputs, targets, epochs=2)
  _close(state.params, params)
  np.testing.assert_allclose([r["train_loss"] for r in records], losses, rtol=1e-5)
  np.testing.assert_allclose(records[-1]["test_loss"], float(mse(params, test)), rtol=1e-5)
  with pytest.raises(lj.store.StoreMismatchError, match=r"what differs: loss\.classes.*loss\.sums"):
    training.train(model, (inputs, targets), test, config=config, workdir=str(tmp_path),
                   loss=lj.NORMALIZED_CROSS_ENTROPY, mesh=mesh, progress=False)
  with pytest.raises(ValueError, match="augment crops and flips images"):
    training.train(model, (inputs, targets), config={**config, "augment": True}, loss=lj.MSE,
                   workdir=str(tmp_path / "b"), mesh=mesh, progress=False)
