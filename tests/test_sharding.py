"""The same surface on 1 device, 8 simulated CPU devices, and two `jax.distributed` processes."""

import os
import socket
import subprocess
import sys

import conftest
import jax
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.methods import rundir
from tests import surface_worker as w

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mlp_reference():
  metric_fn, params, dirs = w.mlp_problem()
  res = lj.surface_grid(metric_fn, params, dirs, w.MLP_XS, w.MLP_YS,
                        engine=lj.EngineOptions(chunk_size=4, progress=False))
  return (metric_fn, params, dirs), res


def test_make_mesh_and_process_share():
  mesh = lj.make_mesh()
  assert mesh.axis_names == ("points",) and mesh.devices.size == len(jax.devices())
  assert lj.make_mesh(2, axis="grid").devices.size == 2
  with pytest.raises(ValueError, match="num_devices"):
    lj.make_mesh(len(jax.devices()) + 1)
  shares = [lj.sharding.process_share(10, process_index=i, process_count=3) for i in range(3)]
  assert [(s.start, s.stop) for s in shares] == [(0, 4), (4, 7), (7, 10)]
  assert lj.is_main_process()


@pytest.mark.multidevice
@pytest.mark.parametrize("map_mode", ["map", "vmap"])
def test_eight_devices_equal_one(mlp_reference, map_mode):
  (metric_fn, params, dirs), ref = mlp_reference
  mesh = lj.make_mesh(8)
  res = lj.surface_grid(metric_fn, params, dirs, w.MLP_XS, w.MLP_YS,
                        engine=lj.EngineOptions(mesh=mesh, chunk_size=8, map_mode=map_mode,
                                                progress=False))
  for k in ref:
    np.testing.assert_allclose(res[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
  with pytest.raises(ValueError, match="multiple of the number of devices"):
    lj.surface_grid(metric_fn, params, dirs, w.MLP_XS, w.MLP_YS,
                    engine=lj.EngineOptions(mesh=mesh, chunk_size=6, progress=False))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(mode, path, tmp_path):
  """Runs tests/surface_worker.py MODE in two `jax.distributed` processes; returns their outputs."""
  port = str(_free_port())
  script = os.path.join(ROOT, "tests", "surface_worker.py")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env["XLA_FLAGS"] = conftest.child_xla_flags()  # the worker sets its device count
  procs = [subprocess.Popen([sys.executable, script, mode, path, port, str(i),
                             str(tmp_path / f"out{i}.npz")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"distributed {mode} workers timed out")
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  outs = []
  for i in range(2):
    with np.load(tmp_path / f"out{i}.npz") as z:
      outs.append({k: z[k] for k in z.files})
  return outs


@pytest.mark.multidevice
@pytest.mark.slow
def test_two_process_distributed_equals_one_device(mlp_reference, tmp_path):
  """Two processes x 2 CPU devices on localhost (gloo collectives): process 0 writes the store."""
  _, ref = mlp_reference
  store = str(tmp_path / "surface")
  outs = _run_two_processes("distributed", store, tmp_path)
  stored = lj.store.read(store)
  assert stored.done.all()
  for i, out in enumerate(outs):
    for k in ref:
      np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=f"{i} {k}")
  for k in ref:
    np.testing.assert_allclose(stored.values[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.multidevice
@pytest.mark.slow
def test_two_process_training_equals_one_process(tmp_path):
  """`training.train` data parallel over two processes x 2 CPU devices: both processes end with
  the parameters of a one-process run on 4 devices, process 0 alone writes the metrics, and the
  checkpoints restore to the same state."""
  from landscape_jax.methods import checkpoints, training

  workdir = tmp_path / "distributed"
  outs = _run_two_processes("train", str(workdir), tmp_path)
  model, train_ds, test_ds = w.train_problem()
  state, records = training.train(model, train_ds, test_ds, workdir=str(tmp_path / "single"),
                                  mesh=lj.make_mesh(devices=jax.devices()[:4]),
                                  config=dict(**w.TRAIN_CONFIG),
                                  progress=False)
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  for i, out in enumerate(outs):
    assert set(out) - {"test_accuracy"} == set(flat)
    for k, v in flat.items():
      np.testing.assert_allclose(out[k], v, rtol=2e-5, atol=2e-6, err_msg=f"process {i} {k}")
    assert float(out["test_accuracy"]) == pytest.approx(records[-1]["test_accuracy"], abs=1e-6)
  written = rundir.read_metrics(workdir)
  assert [r["epoch"] for r in written] == [1, 2]  # one line per epoch: process 0 only
  assert checkpoints.list_steps(workdir / "checkpoints") == [0, 10, 20]
  restored = checkpoints.restore(workdir / "checkpoints")["params"]
  for k, v in jax.tree_util.tree_leaves_with_path(restored):
    np.testing.assert_allclose(np.asarray(v), flat[jax.tree_util.keystr(k)], rtol=2e-5,
                               atol=2e-6)


def test_device_count_flag_is_added_to_any_xla_flags():
  """tests/conftest.py keeps other XLA flags and adds the count (only a given count is kept), so
  the multi-device tests always have their 8 devices (they used to skip when XLA_FLAGS was set)."""
  import conftest

  flag = "--xla_force_host_platform_device_count"
  assert conftest.with_device_count("") == f"{flag}=8"
  assert conftest.with_device_count("--xla_cpu_enable_fast_math=false") == (
    f"--xla_cpu_enable_fast_math=false {flag}=8")
  assert conftest.with_device_count(f"--a=1 {flag}=2") == f"--a=1 {flag}=2"
  # the fast-compile flags are added unless the flags set them already
  opt = "--xla_backend_optimization_level"
  assert f"{opt}=0" in conftest.with_fast_compile("--a=1")
  assert conftest.with_fast_compile(f"{opt}=2").count(opt) == 1
  assert flag in os.environ["XLA_FLAGS"] and len(jax.devices()) == conftest.NUM_DEVICES


@pytest.mark.slow
def test_multidevice_tests_fail_without_the_devices():
  """With a device count of 2 given in XLA_FLAGS, a multidevice test fails (not skips)."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "PYTHONPATH": ROOT}
  test = "tests/test_training.py::test_sharded_step_equals_single_device_step"
  out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider",
                        "-q", test], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stdout + out.stderr  # a setup error fails the run
  assert "1 error" in out.stdout and "skipped" not in out.stdout, out.stdout
  assert "needs 8 devices, found 2" in out.stdout, out.stdout
