"""The same surface on 1 device, 8 simulated CPU devices, and two `jax.distributed` processes."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import landscape_jax as lj
from tests import surface_worker as w

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mlp_reference():
  metric_fn, params, dirs = w.mlp_problem()
  res = lj.surface_grid(metric_fn, params, dirs, w.MLP_XS, w.MLP_YS, chunk_size=4,
                        progress=False)
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
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 simulated CPU devices (tests/conftest.py sets XLA_FLAGS)")
  (metric_fn, params, dirs), ref = mlp_reference
  mesh = lj.make_mesh(8)
  res = lj.surface_grid(metric_fn, params, dirs, w.MLP_XS, w.MLP_YS, mesh=mesh, chunk_size=8,
                        map_mode=map_mode, progress=False)
  for k in ref:
    np.testing.assert_allclose(res[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
  with pytest.raises(ValueError, match="multiple of the number of devices"):
    lj.surface_grid(metric_fn, params, dirs, w.MLP_XS, w.MLP_YS, mesh=mesh, chunk_size=6,
                    progress=False)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.multidevice
@pytest.mark.slow
def test_two_process_distributed_equals_one_device(mlp_reference, tmp_path):
  """Two processes x 2 CPU devices on localhost (gloo collectives): process 0 writes the store."""
  _, ref = mlp_reference
  store = str(tmp_path / "surface")
  port = str(_free_port())
  script = os.path.join(ROOT, "tests", "surface_worker.py")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  procs = [subprocess.Popen([sys.executable, script, "distributed", store, port, str(i),
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
      pytest.fail("distributed workers timed out")
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  stored = lj.store.read(store)
  assert stored.done.all()
  for i in range(2):
    with np.load(tmp_path / f"out{i}.npz") as out:
      for k in ref:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=f"{i} {k}")
  for k in ref:
    np.testing.assert_allclose(stored.values[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
