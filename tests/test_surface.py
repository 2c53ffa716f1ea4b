"""surface_grid against direct evaluation of metric_fn at plane points (Li et al. 2018)."""

import chex
import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import landscape_jax as lj

# One compiled direct evaluation of metric_fn(params) (the independent computation to compare to).
direct_eval = jax.jit(lambda f, p: f(p))


@pytest.fixture(scope="module")
def setup(tiny_mlp, digits_train, digits_test):
  model, variables = tiny_mlp
  params = variables["params"]
  small_tr = digits_train.subset(slice(0, 120))
  small_te = digits_test.subset(slice(0, 60))
  metric_fn = lj.make_metric_fn(model, {"train": small_tr, "test": small_te}, batch_size=64)
  d1, d2 = lj.random_directions(jax.random.key(1), params)
  return metric_fn, params, d1, d2


def test_2d_grid_equals_direct_evaluation_non_square(setup):
  metric_fn, params, d1, d2 = setup
  xs = np.linspace(-1.0, 1.0, 5)
  ys = np.array([-0.5, 0.0, 0.25])
  res = lj.surface_grid(metric_fn, params, (d1, d2), xs, ys,
                        engine=lj.EngineOptions(chunk_size=4, progress=False))
  assert set(res) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
  assert res["train_loss"].shape == (5, 3)  # [i, j] = (xs[i], ys[j]), not transposed
  for i, j in [(0, 0), (4, 0), (1, 2), (3, 1), (2, 1)]:
    direct = direct_eval(metric_fn, lj.plane_point(params, d1, d2, xs[i], ys[j]))
    for k in res:
      np.testing.assert_allclose(res[k][i, j], direct[k], rtol=2e-5, atol=1e-6, err_msg=k)
  # at (0, 0) the point is the centre itself
  np.testing.assert_allclose(res["test_loss"][2, 1], direct_eval(metric_fn, params)["test_loss"],
                             rtol=1e-6)


def test_1d_and_modes_agree(setup):
  metric_fn, params, d1, _ = setup
  xs = np.linspace(-0.5, 0.5, 5)
  res = lj.surface_grid(metric_fn, params, d1, xs, engine=lj.EngineOptions(progress=False))
  assert res["train_loss"].shape == (5,)
  for i in (0, 3):
    direct = direct_eval(metric_fn, lj.plane_point(params, d1, None, xs[i]))
    np.testing.assert_allclose(res["train_loss"][i], direct["train_loss"], rtol=2e-5)
  vm = lj.surface_grid(metric_fn, params, (d1,), xs,
                       engine=lj.EngineOptions(map_mode="vmap", chunk_size=3, progress=False))
  mb = lj.surface_grid(metric_fn, params, (d1,), xs,
                       engine=lj.EngineOptions(map_mode="map", batch_size=2, chunk_size=4,
                                               progress=False))
  for k in res:
    np.testing.assert_allclose(vm[k], res[k], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(mb[k], res[k], rtol=2e-5, atol=1e-6)


def test_plain_callable_scalar_metric_and_nonfinite_recorded():
  """A plain function returning a scalar; overflow far away is recorded, not fatal."""
  center = {"w": jnp.zeros(3)}
  d = {"w": jnp.ones(3)}

  def fn(p):
    return jnp.exp(jnp.sum(p["w"]) * 100.0)  # inf for large x

  xs = np.array([-1.0, 0.0, 1.0, 2.0])
  res = lj.surface_grid(fn, center, d, xs, engine=lj.EngineOptions(progress=False))
  assert set(res) == {"loss"}
  assert res["loss"][1] == pytest.approx(1.0)
  assert np.isinf(res["loss"][2]) and np.isinf(res["loss"][3])


def test_no_recompilation_across_chunks(setup):
  """Several chunks with a padded last one compile once (chex.assert_max_traces)."""
  _, params, d1, d2 = setup

  # One trace for the metric keys (jax.eval_shape) and one for the compiled chunk function; a
  # recompilation for another chunk (e.g. an unpadded last chunk) would be a third.
  @chex.assert_max_traces(n=2)
  def traced(p):
    return {"loss": sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))}

  fn = Partial(traced)
  xs, ys = np.linspace(-1, 1, 4), np.linspace(-1, 1, 3)   # 12 points in chunks of 5: 5, 5, 2+pad
  res = lj.surface_grid(fn, params, (d1, d2), xs, ys,
                        engine=lj.EngineOptions(chunk_size=5, map_mode="vmap", progress=False))
  assert res["loss"].shape == (4, 3)
  sq = lambda p: sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(p))
  np.testing.assert_allclose(res["loss"][3, 2], sq(lj.plane_point(params, d1, d2, 1.0, 1.0)),
                             rtol=1e-5)


@pytest.mark.reliability
def test_bad_grids_and_arguments(setup):
  metric_fn, params, d1, d2 = setup
  good = np.linspace(-1, 1, 3)
  cases = [
    (dict(xs=[], ys=good), "no points"),
    (dict(xs=[1.0, 0.0, -1.0], ys=good), "strictly increasing"),
    (dict(xs=good, ys=[0.0, np.inf]), "non-finite"),
    (dict(xs=good, ys=None), "need ys"),
    (dict(xs=np.zeros((2, 2)), ys=good), "1-D"),
  ]
  for kwargs, msg in cases:
    with pytest.raises(ValueError, match=msg):
      lj.surface_grid(metric_fn, params, (d1, d2), engine=lj.EngineOptions(progress=False),
                      **kwargs)
  with pytest.raises(ValueError, match="only one direction"):
    lj.surface_grid(metric_fn, params, (d1,), good, good, engine=lj.EngineOptions(progress=False))
  with pytest.raises(ValueError, match="same pytree structure"):
    lj.surface_grid(metric_fn, params, ({"x": jnp.ones(2)},), good,
                    engine=lj.EngineOptions(progress=False))
  with pytest.raises(ValueError, match="map_mode"):
    lj.surface_grid(metric_fn, params, (d1,), good,
                    engine=lj.EngineOptions(map_mode="pmap", progress=False))
  with pytest.raises(ValueError, match="multiple of batch_size"):
    lj.surface_grid(metric_fn, params, (d1,), good,
                    engine=lj.EngineOptions(batch_size=2, chunk_size=3, progress=False))


def test_point_fn_hook_and_auto_map_mode():
  """point_fn maps each point to the metric's input (e.g. per-point BatchNorm statistics)."""
  center = {"w": jnp.linspace(0.0, 1.0, 6).reshape(2, 3)}
  d1, d2 = {"w": jnp.ones((2, 3))}, {"w": jnp.eye(2, 3)}

  def metric(v):
    return {"loss": jnp.sum(v["params"]["w"] ** 2) + v["stats"], "acc": v["stats"]}

  def point_fn(p):  # "recompute" statistics from the point itself
    return {"params": p, "stats": jnp.mean(p["w"])}

  xs, ys = np.linspace(-1, 1, 3), np.linspace(0, 1, 2)
  res = lj.surface_grid(metric, center, (d1, d2), xs, ys, point_fn=point_fn,
                        engine=lj.EngineOptions(map_mode="auto", progress=False))
  for i in range(3):
    for j in range(2):
      direct = metric(point_fn(lj.plane_point(center, d1, d2, xs[i], ys[j])))
      np.testing.assert_allclose(res["loss"][i, j], direct["loss"], rtol=1e-6)
      np.testing.assert_allclose(res["acc"][i, j], direct["acc"], rtol=1e-6, atol=1e-7)
  rates = lj.surface.benchmark_map_modes(metric, center, (d1, d2), chunk_size=2, repeats=1,
                                         point_fn=point_fn)
  assert set(rates) == {"map", "vmap"} and all(r > 0 for r in rates.values())


class _FakeDevice:
  platform = "gpu"

  def __init__(self, limit):
    self.limit = limit

  def memory_stats(self):
    return {"bytes_limit": self.limit, "bytes_in_use": 0}


def test_auto_chunk_size_from_device_memory(monkeypatch):
  center = {"w": jnp.zeros((64, 64))}
  d = ({"w": jnp.ones((64, 64))},)
  fn = Partial(lambda p: {"loss": jnp.sum(jnp.tanh(p["w"] @ p["w"]))})
  cpu = lj.surface.auto_chunk_size(fn, center, d, num_devices=8, map_mode="map")
  assert cpu == 16 * 8
  sizes = []
  for limit in (2_000_000, 8_000_000, 10**12):
    monkeypatch.setattr(jax, "local_devices", lambda limit=limit: [_FakeDevice(limit)])
    sizes.append(lj.surface.auto_chunk_size(fn, center, d, num_devices=4, map_mode="vmap"))
  assert all(s % 4 == 0 for s in sizes)
  assert sizes[0] < sizes[1] <= sizes[2] == 256 * 4  # grows with memory, capped per device
  assert lj.surface.auto_chunk_size(fn, center, d, num_devices=2, map_mode="vmap",
                                    batch_size=3) % 3 == 0


@pytest.mark.slow
@pytest.mark.parametrize(
  "extra", [[], ["--config.error_tol=0.05", "--config.error_anchor_stride=2"]],
  ids=["exact", "error-controlled"])
def test_experiment_script_runs(tmp_path, extra, digits_train):
  import json
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  runs = "'init:mlp_small'"
  if not extra:  # also a run of experiments/train.py, read back with rundir.load_run
    train_dir = tmp_path / "runs" / "mlp_run"
    lj.training.train(lj.get_model("mlp_small", num_classes=10), digits_train,
                      config=dict(model="mlp_small", dataset="digits", num_epochs=1,
                                  batch_size=64),
                      workdir=str(train_dir), mesh=lj.make_mesh(devices=jax.devices()[:1]),
                      progress=False)
    runs += f", '{train_dir}'"
  cmd = [sys.executable, os.path.join(root, "experiments", "surface.py"),
         "--config=" + os.path.join(root, "experiments", "configs", "surface_2d.py") + ":quick",
         f"--config.runs=({runs},)", "--config.x=(-1.0, 1.0, 3)",
         "--config.y=(-1.0, 1.0, 2)", "--config.eval_subset=64", f"--workdir={tmp_path}",
         "--noprogress", *extra]
  env = {**os.environ, "PYTHONPATH": root,
         "XLA_FLAGS": conftest.child_xla_flags("--xla_force_host_platform_device_count=2")}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=root)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["results"]["init:mlp_small"]["train_loss"]["num_nonfinite"] == 0
  state = lj.store.read(tmp_path / "init_mlp_small" / "store")
  assert state.done.shape == (3, 2) and state.done.all()
  assert state.config["metadata"]["norm"] == "filter"
  if extra:  # the standard error and the examples used are stored next to every estimate
    assert "train_loss_sem" in state.values and "test_num_examples" in state.values
  else:
    assert summary["results"]["mlp_run"]["train_loss"]["num_nonfinite"] == 0
    trained = lj.store.read(tmp_path / "mlp_run" / "store")
    assert trained.done.all() and trained.config["metadata"]["run"] == str(train_dir)


def test_error_controlled_metric(tiny_mlp, digits_test):
  model, variables = tiny_mlp
  params = variables["params"]
  data = digits_test.subset(slice(0, 200))
  exact = lj.make_metric_fn(model, data, batch_size=50)(params)
  make = lj.error_control.make_error_controlled_metric_fn
  full = make(model, data, tol=0.0, batch_size=50)(params)
  assert float(full["num_examples"]) == 200
  np.testing.assert_allclose(full["loss"], exact["loss"], rtol=1e-5)
  np.testing.assert_allclose(full["accuracy"], exact["accuracy"], rtol=1e-6)
  # a loose tolerance stops after min_batches: the estimate is the first shuffled batch's mean
  fn = lj.error_control.make_error_controlled_metric_fn(model, data, tol=1e3, batch_size=50, seed=3,
                                                  min_batches=2)
  est = fn(params)
  assert float(est["num_examples"]) == 100
  order = np.random.default_rng(3).permutation(200)[:100]
  logits = model.apply(variables, lj.data.normalize_images(data.images[order], data.mean,
                                                            data.std))
  losses = np.asarray(lj.cross_entropy(logits, data.labels[order]), np.float64)
  np.testing.assert_allclose(est["loss"], losses.mean(), rtol=1e-5)
  fpc = np.sqrt((200 - 100) / (200 - 1))  # sampling without replacement
  np.testing.assert_allclose(est["loss_sem"], losses.std(ddof=1) / 10.0 * fpc, rtol=1e-3)
  # on a grid, the standard error and the subset size are stored next to the loss
  d = lj.random_directions(jax.random.key(0), params, num=1)
  res = lj.surface_grid(fn, params, d, [-1.0, 0.0], engine=lj.EngineOptions(progress=False))
  assert set(res) == {"loss", "loss_sem", "accuracy", "num_examples"}
  np.testing.assert_allclose(res["loss"][1], est["loss"], rtol=1e-5)
  with pytest.raises(ValueError, match="tol"):
    lj.error_control.make_error_controlled_metric_fn(model, data, tol=-1.0)
