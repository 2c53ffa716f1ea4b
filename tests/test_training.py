"""training: optimizer and schedules against hand computations, train_step against plain
gradients, data-parallel equivalence, the train loop (accuracy, resume, kill -9)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import conftest
import flax.linen as nn
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
  rundir,
  schedules,
  training,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyBN(nn.Module):
  """Conv-BN-ReLU-pool-Dense: the smallest net with BatchNorm statistics."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(10)(nn.relu(x).mean((1, 2)))


def _leaves_equal(a, b):
  lj.trees.check_same_structure(a, b)
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# ------------------------------------------------------------------------ optimizer, schedules


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_pytorch_update_rule(nesterov):
  """PyTorch SGD: g += wd w; m = mu m + g; w -= lr (g + mu m) (Nesterov) or lr m."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 5))
  a = a @ a.T + np.eye(5)
  b = rng.normal(size=5)
  w0 = {"w": rng.normal(size=5), "v": rng.normal(size=(2, 3))}
  lr, mu, wd = 0.05, 0.9, 5e-3
  grad = lambda w: {"w": a @ w["w"] - b, "v": 2.0 * w["v"]}

  w, m = {k: v.copy() for k, v in w0.items()}, {k: np.zeros_like(v) for k, v in w0.items()}
  for _ in range(5):
    g = {k: grad(w)[k] + wd * w[k] for k in w}
    m = {k: mu * m[k] + g[k] for k in w}
    w = {k: w[k] - lr * (g[k] + mu * m[k] if nesterov else m[k]) for k in w}

  tx = schedules.make_optimizer(learning_rate=lr, momentum=mu, nesterov=nesterov, weight_decay=wd)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), w0)
  opt_state = tx.init(params)
  for _ in range(5):
    g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32),
                     grad(jax.tree.map(np.asarray, params)))
    updates, opt_state = tx.update(g, opt_state, params)
    params = optax.apply_updates(params, updates)
  for k in w:
    np.testing.assert_allclose(params[k], w[k], rtol=1e-5, atol=1e-6)


def test_optimizer_errors():
  with pytest.raises(ValueError, match="Unknown optimizer 'rmsprop'"):
    schedules.make_optimizer(learning_rate=0.1, name="rmsprop")
  with pytest.raises(ValueError, match="Unknown schedule 'linear'"):
    training.make_schedule({"schedule": "linear"}, 10)


def _garipov_reference(base_lr, epoch, total_epochs):
  """learning_rate_schedule of Garipov et al.'s train.py (epochs counted from 1)."""
  alpha = epoch / total_epochs
  if alpha <= 0.5:
    factor = 1.0
  elif alpha <= 0.9:
    factor = 1.0 - (alpha - 0.5) / 0.4 * 0.99
  else:
    factor = 0.01
  return factor * base_lr


def test_schedules_match_the_references():
  spe, epochs = 7, 20
  # Li et al.: lr 0.1, /10 after epochs 150, 225, 275 (here scaled: 10, 15, 18).
  li = training.make_schedule(dict(
    schedule="step", learning_rate=0.1, lr_boundaries=(10, 15, 18), num_epochs=epochs), spe)
  for epoch in range(epochs):
    want = 0.1 * 0.1 ** sum(epoch >= e for e in (10, 15, 18))
    for s in (epoch * spe, epoch * spe + spe - 1):
      np.testing.assert_allclose(li(s), want, rtol=1e-6)
  # Garipov et al.: set once per epoch from (epoch + 1) / num_epochs.
  gar = training.make_schedule(dict(
    schedule="garipov", learning_rate=0.05, num_epochs=epochs), spe)
  for epoch in range(epochs):
    want = _garipov_reference(0.05, epoch + 1, epochs)
    for s in range(epoch * spe, (epoch + 1) * spe):
      np.testing.assert_allclose(gar(s), want, rtol=1e-5)
  per_step = schedules.garipov_schedule(1.0, 100)
  np.testing.assert_allclose([per_step(s) for s in (0, 50, 70, 90, 99)],
                             [1.0, 1.0, 1.0 - 0.2 / 0.4 * 0.99, 0.01, 0.01], rtol=1e-5)
  cos = schedules.cosine_schedule(0.2, 100)
  np.testing.assert_allclose([cos(0), cos(50), cos(100)], [0.2, 0.1, 0.0], atol=1e-7)
  warm = training.make_schedule(dict(
    schedule="step", learning_rate=0.4, lr_boundaries=(5,), warmup_epochs=2, num_epochs=10), 10)
  np.testing.assert_allclose([warm(0), warm(10), warm(20), warm(49), warm(50)],
                             [0.0, 0.2, 0.4, 0.4, 0.04], rtol=1e-6)


# ------------------------------------------------------------------------------- steps


def test_train_step_is_a_plain_gradient_step(digits_train):
  model = lj.get_model("mlp_small", num_classes=10)
  tx = optax.sgd(0.5)
  state = training.create_train_state(model, jax.random.key(0), digits_train.images[:1], tx)
  batch = (digits_train.images[:64], digits_train.labels[:64])
  loss_fn = lj.make_loss_fn(model, mean=digits_train.mean, std=digits_train.std)
  loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
  new, metrics = training.train_step(state, batch, jax.random.key(1), model=model, tx=tx,
                                     mean=digits_train.mean, std=digits_train.std)
  assert int(new.step) == 1
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
  expected = jax.tree.map(lambda p, g: p - 0.5 * g, state.params, grads)
  for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_train_step_updates_batch_stats(digits_train):
  model = TinyBN()
  tx = optax.sgd(0.1)
  state = training.create_train_state(model, jax.random.key(0), digits_train.images[:1], tx)
  assert set(state.variables) == {"params", "batch_stats"}
  images, labels = digits_train.images[:32], digits_train.labels[:32]
  new, metrics = training.train_step(state, (images, labels), jax.random.key(1), model=model,
                                     tx=tx, mean=digits_train.mean, std=digits_train.std)
  # Running statistics: 0.9 * old + 0.1 * batch statistics of the first activation.
  x = (images.astype(np.float32) / 255.0 - digits_train.mean) / digits_train.std
  conv = nn.Conv(4, (3, 3))
  h = np.asarray(conv.apply({"params": state.params["Conv_0"]}, x), np.float64)
  np.testing.assert_allclose(new.batch_stats["BatchNorm_0"]["mean"], 0.1 * h.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new.batch_stats["BatchNorm_0"]["var"],
                             0.9 + 0.1 * h.var((0, 1, 2)), rtol=1e-4)
  # The gradient is the one of the training-mode loss.
  loss_fn = lj.make_loss_fn(model, mean=digits_train.mean, std=digits_train.std,
                            batch_stats=state.batch_stats, train=True)
  loss, grads = jax.value_and_grad(loss_fn)(state.params, (images, labels))
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
  for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  ev = training.eval_step(new, (images, labels), model=model, mean=digits_train.mean,
                          std=digits_train.std)
  direct = lj.evaluate(lj.evaluation.inference_apply(model), new.variables, images, labels,
                       mean=digits_train.mean, std=digits_train.std)
  np.testing.assert_allclose(ev["loss"], direct["loss"], rtol=1e-6)
  np.testing.assert_allclose(ev["accuracy"], direct["accuracy"])


@pytest.mark.multidevice
def test_sharded_step_equals_single_device_step(digits_train):
  assert len(jax.devices()) >= 8
  model = TinyBN()
  tx = schedules.make_optimizer(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
  state = training.create_train_state(model, jax.random.key(0), digits_train.images[:1], tx)
  batch = (digits_train.images[:64], digits_train.labels[:64])
  kwargs = dict(model=model, tx=tx, mean=digits_train.mean, std=digits_train.std, augment=True,
                pad=1, flip=True)
  key = jax.random.key(3)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  s1, m1 = state, None
  for _ in range(2):
    s1, m1 = training.train_step(jax.device_put(s1, one), jax.device_put(batch, one), key,
                                 **kwargs)
  mesh = lj.make_mesh(devices=jax.devices()[:8], axis="data")
  s8 = jax.device_put(state, NamedSharding(mesh, P()))
  sharded_batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
  assert len(sharded_batch[0].sharding.device_set) == 8
  for _ in range(2):
    s8, m8 = training.train_step(s8, sharded_batch, key, **kwargs)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s8), jax.tree.leaves(s1), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


# -------------------------------------------------------------------------------- loop


@pytest.mark.slow
def test_resnet_reaches_95_percent_on_digits(tmp_path, digits_train, digits_test):
  model = lj.get_model("resnet8", num_classes=10)
  config = dict(
    model="resnet8", num_epochs=2, batch_size=64, learning_rate=0.1, momentum=0.9, nesterov=True,
    weight_decay=5e-4, schedule="cosine", checkpoint_every_epochs=1)
  state, records = training.train(model, digits_train, digits_test, config=config,
                                  workdir=str(tmp_path),
                                  mesh=lj.make_mesh(devices=jax.devices()[:1]),
                                  progress=False)
  assert [r["epoch"] for r in records] == [1, 2]
  assert records[-1]["test_accuracy"] >= 0.95, records
  # The recorded accuracy is the exact one of the final state (independent evaluation).
  direct = lj.evaluate(lj.evaluation.inference_apply(model), state.variables, digits_test.images,
                       digits_test.labels, mean=digits_test.mean, std=digits_test.std)
  np.testing.assert_allclose(records[-1]["test_accuracy"], direct["accuracy"])
  np.testing.assert_allclose(records[-1]["test_loss"], direct["loss"], rtol=1e-5)
  # The trajectory: initial point + one checkpoint per epoch; the last is the final state.
  ckpt = tmp_path / rundir.CHECKPOINT_DIR
  assert checkpoints.list_steps(ckpt) == [0, 21, 42]
  traj = checkpoints.load_trajectory(ckpt)
  assert _leaves_equal(traj[-1], state.params)
  assert set(checkpoints.load_variables(ckpt)) == {"params", "batch_stats"}
  with open(tmp_path / rundir.METRICS_FILE) as f:
    assert [json.loads(line)["step"] for line in f] == [21, 42]


class _Interrupt(Exception):
  pass


def test_interrupted_run_resumes_bit_identically(tmp_path, digits_train, digits_test):
  model = lj.get_model("mlp_small", num_classes=10)
  config = dict(
    model="mlp_small", num_epochs=4, batch_size=64, learning_rate=0.1, nesterov=True,
    weight_decay=5e-4, schedule="cosine", checkpoint_every_epochs=2, augment=True,
    augment_pad=1, augment_flip=False)
  mesh = lj.make_mesh(devices=jax.devices()[:2])
  run = lambda workdir, **kw: training.train(model, digits_train, digits_test, config=config,
                                             workdir=str(workdir), mesh=mesh, progress=False, **kw)
  full_state, full_records = run(tmp_path / "full")

  def interrupt(epoch, state, record):
    if epoch == 3:
      raise _Interrupt

  with pytest.raises(_Interrupt):
    run(tmp_path / "cut", callback=interrupt)
  # Epoch 3 was recorded but not checkpointed: resuming redoes it (and drops its record first).
  assert checkpoints.list_steps(tmp_path / "cut" / "checkpoints") == [0, 42]
  assert len(rundir.read_metrics(tmp_path / "cut")) == 3
  resumed_state, resumed_records = run(tmp_path / "cut")
  assert _leaves_equal(resumed_state, full_state)
  strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "images_per_sec")}
                      for r in rs]
  assert strip(resumed_records) == strip(full_records)
  # The recorded test metrics are those of an exact sharded evaluation of the final state.
  ev = training.evaluate_state(model, full_state, digits_test, batch_size=100, mesh=mesh)
  np.testing.assert_allclose(ev["accuracy"], full_records[-1]["test_accuracy"])
  np.testing.assert_allclose(ev["loss"], full_records[-1]["test_loss"], rtol=1e-6)
  # A different configuration refuses to resume in the same workdir.
  config["learning_rate"] = 0.2
  with pytest.raises(lj.store.StoreMismatchError, match="learning_rate: 0.1 -> 0.2"):
    run(tmp_path / "cut")


def test_torn_metrics_line_is_skipped(tmp_path):
  (tmp_path / rundir.METRICS_FILE).write_text('{"epoch": 1, "step": 21}\n{"epoch": 2, "st')
  assert rundir.read_metrics(tmp_path) == [{"epoch": 1, "step": 21}]
  assert rundir.read_metrics(tmp_path / "missing") == []


def test_load_run_rebuilds_the_run_and_damaged_configs_are_named(tmp_path, digits_train):
  model = lj.get_model("mlp_small", num_classes=10)
  config = dict(model="mlp_small", dataset="digits", num_epochs=1, batch_size=64,
                                   checkpoint_every_epochs=1)
  mesh = lj.make_mesh(devices=jax.devices()[:1])
  state, _ = training.train(model, digits_train, config=config, workdir=str(tmp_path), mesh=mesh,
                            progress=False)
  loaded, variables, data, cfg = rundir.load_run(str(tmp_path), split="test")
  assert _leaves_equal(variables, state.variables)
  assert (cfg["model"], data.name, data.num_classes) == ("mlp_small", "digits", 10)
  x = jnp.asarray(data.images[:8], jnp.float32)
  np.testing.assert_array_equal(loaded.apply(variables, x), model.apply(state.variables, x))
  first = rundir.load_run(str(tmp_path), step=0)[1]
  assert not _leaves_equal(first, state.variables)

  with pytest.raises(FileNotFoundError, match="holds no training run.*experiments/train.py"):
    rundir.load_run(str(tmp_path / "elsewhere"))
  path = tmp_path / rundir.CONFIG_FILE
  good = path.read_bytes()
  path.write_bytes(good[: len(good) // 2])  # damaged by hand: neither loading nor resuming use it
  for attempt in (lambda: rundir.load_run(str(tmp_path)),
                  lambda: training.train(model, digits_train, config=config, workdir=str(tmp_path),
                                         mesh=mesh, progress=False)):
    with pytest.raises(lj.store.StoreCorruptError, match="config.json is damaged.*not modified"
                       ".*Restore it"):
      attempt()
    assert path.read_bytes() == good[: len(good) // 2]
  path.write_text(json.dumps({k: v for k, v in json.loads(good).items() if k != "dataset"}))
  with pytest.raises(ValueError, match="names no dataset.*checkpoints.load_variables"):
    rundir.load_run(str(tmp_path))


def test_train_errors(tmp_path, digits_train):
  model = lj.get_model("mlp_small", num_classes=10)
  mesh = lj.make_mesh(devices=jax.devices()[:4])
  with pytest.raises(ValueError, match="not divisible by the 4 devices"):
    training.train(model, digits_train, config={"batch_size": 66}, workdir=str(tmp_path / "a"),
                   mesh=mesh, progress=False)
  with pytest.raises(ValueError, match="larger than the training split"):
    training.train(model, digits_train, config={"batch_size": 4096},
                   workdir=str(tmp_path / "b"), mesh=mesh, progress=False)
  with pytest.raises(FloatingPointError, match="lower the learning rate"):
    training.train(model, digits_train, config={"batch_size": 64, "learning_rate": 1e30,
                                                "num_epochs": 2},
                   workdir=str(tmp_path / "c"), mesh=mesh, progress=False)


# ------------------------------------------------------------------------ fault injection


def _train_cmd(workdir):
  return [sys.executable, os.path.join(REPO, "experiments", "train.py"),
          "--config=" + os.path.join(REPO, "experiments", "configs", "digits_mlp.py"),
          f"--workdir={workdir}", "--noprogress", "--config.model=mlp_small",
          "--config.num_epochs=12", "--config.checkpoint_every_epochs=1", "--config.augment=True",
          "--config.augment_pad=1"]


def _env():
  env = dict(os.environ)
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=conftest.child_xla_flags("--xla_force_host_platform_device_count=2"))
  return env


@pytest.mark.slow
@pytest.mark.reliability
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
  """Kill -9 the training script at random moments after it has started checkpointing; rerunning
  it resumes, loses at most the epoch in flight, and ends bit-identical to an uninterrupted run."""
  rng = random.Random(0)
  full = tmp_path / "full"
  subprocess.run(_train_cmd(full), env=_env(), check=True, capture_output=True, timeout=600)

  cut = tmp_path / "cut"
  ckpt = cut / "checkpoints"
  proc = subprocess.Popen(_train_cmd(cut), env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  while not checkpoints.latest_step(ckpt) and proc.poll() is None:  # the first epoch's checkpoint
    assert time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.005)
  time.sleep(rng.uniform(0.0, 0.3))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  # At most the epoch in flight is lost: the records run at most one epoch past the checkpoint.
  done = len(rundir.read_metrics(cut))
  assert 0 <= done - checkpoints.latest_step(ckpt) // 21 <= 1
  subprocess.run(_train_cmd(cut), env=_env(), check=True, capture_output=True, timeout=600)

  steps = checkpoints.list_steps(full / "checkpoints")
  assert steps == checkpoints.list_steps(ckpt) == list(range(0, 253, 21))
  a = checkpoints.restore(full / "checkpoints")
  b = checkpoints.restore(ckpt)
  assert _leaves_equal(a, b)
  strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "images_per_sec")}
                      for r in rs]
  assert strip(rundir.read_metrics(cut)) == strip(rundir.read_metrics(full))
  assert len(rundir.read_metrics(full)) == 12


# ------------------------------------------------------------------------------ configs

CONFIG_DIR = os.path.join(REPO, "experiments", "configs")
TRAIN_CONFIGS = sorted(f for f in os.listdir(CONFIG_DIR)
                       if f.startswith(("digits_", "cifar10_")) and f.endswith(".py"))


def _load_config(name, arg=None):
  import importlib.util

  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIG_DIR, name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_training_configs_are_complete(name):
  config = _load_config(name)
  assert set(training.DEFAULTS) <= set(config), sorted(set(training.DEFAULTS) - set(config))
  assert config.schedule in schedules.SCHEDULES and config.optimizer in schedules.OPTIMIZERS
  tx, schedule = training.optimizer_from_config(config, 10)
  assert float(schedule(0)) == pytest.approx(config.learning_rate)
  shape = (1, 8, 8, 1) if config.dataset == "digits" else (1, 32, 32, 3)
  model = lj.get_model(config.model, num_classes=10, **config.model_kwargs)  # errors fail
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape),
                                                train=False))
  jax.eval_shape(tx.init, variables["params"])


def test_cifar10_configs_follow_the_papers():
  li = _load_config("cifar10_resnet56.py")
  assert (li.model, li.num_epochs, li.batch_size, li.learning_rate, li.momentum, li.nesterov,
          li.weight_decay, tuple(li.lr_boundaries), li.lr_decay, li.augment) == (
    "resnet56", 300, 128, 0.1, 0.9, True, 5e-4, (150, 225, 275), 0.1, True)
  assert _load_config("cifar10_resnet56.py", "resnet110_noshort").model == "resnet110_noshort"
  big = _load_config("cifar10_vgg9.py", "bs8192,wd0")
  assert (big.batch_size, big.weight_decay, big.learning_rate) == (8192, 0.0, 0.1)
  with pytest.raises(ValueError, match="Unknown cifar10_vgg9 options"):
    _load_config("cifar10_vgg9.py", "bs4096")
  for name, lr, wd, epochs in [("cifar10_vgg16.py", 0.05, 5e-4, 200),
                               ("cifar10_preresnet164.py", 0.1, 3e-4, 150),
                               ("cifar10_wrn28_10.py", 0.1, 5e-4, 200)]:
    c = _load_config(name)
    assert (c.schedule, c.learning_rate, c.weight_decay, c.num_epochs, c.momentum, c.nesterov,
            c.batch_size) == ("garipov", lr, wd, epochs, 0.9, False, 128), name


def test_connect_and_fge_configs_follow_garipov_et_al():
  """The recipes of Garipov et al. 2018 (and timgaripov/dnn-mode-connectivity's README)."""
  for name, lr, wd in [("vgg16", 0.015, 5e-4), ("preresnet164", 0.03, 3e-4),
                       ("wrn28_10", 0.03, 5e-4)]:
    c = _load_config(f"connect_cifar10_{name}.py", "runs/a,runs/b")
    assert (c.dataset, c.model, c.kind, c.num_bends, c.epochs, c.learning_rate, c.weight_decay,
            c.momentum,
            c.batch_size, c.augment, c.num_points, c.endpoints) == (
      "cifar10", name, "bezier", 3, 600, lr, wd, 0.9, 128, True, 61, "runs/a,runs/b"), name
  for name, lr, wd in [("vgg16", 0.05, 5e-4), ("preresnet164", 0.1, 3e-4)]:
    c = _load_config(f"fge_cifar100_{name}.py")
    assert (c.dataset, c.model, c.budget_epochs, c.learning_rate, c.weight_decay, c.cycle_epochs,
            c.lr1,
            c.lr2, c.batch_size, c.augment) == (
      "cifar100", name, 200, lr, wd, 4, 0.05, 1e-4, 128, True), name
  digits = _load_config("connect_digits.py", "resnet8")
  assert (digits.model, dict(digits.model_kwargs)) == ("resnet8", {})
  assert dict(_load_config("fge_digits.py").model_kwargs) == {"features": (32,)}


def test_experiment_defaults_are_locked():
  """A misspelt field is refused by ml_collections itself, in every defaults function."""
  from configs import defaults

  for make, typo, near in [(defaults.train, "learning_rat", "learning_rate"),
                           (defaults.surface, "chunksize", "chunk_size"),
                           (defaults.connect, "epoch", "epochs"),
                           (defaults.fge, "cycle", "cycles")]:
    with pytest.raises(AttributeError, match=f'"{typo}" does not exist.*{near}'):
      make(**{typo: 3})
    c = make()
    with pytest.raises(AttributeError, match="locked"):
      setattr(c, typo, 3)
  assert defaults.train(model_kwargs={"width": 2}).model_kwargs.width == 2  # free-form
