"""Helper process for the resume and multi-process tests of test_store.py / test_sharding.py.

Usage:
  python tests/surface_worker.py interrupt STORE KILL_AT_WRITE
      runs a toy surface with a store and SIGKILLs itself in the middle of the given file write
      (after the arrays file of a chunk, before its meta.json) to simulate a crash;
  python tests/surface_worker.py distributed STORE PORT PROCESS_ID OUT_NPZ
      one of two `jax.distributed` processes on localhost (2 simulated CPU devices each) computing
      the MLP surface of `mlp_problem` on a 4-device mesh; every process saves what it returned;
  python tests/surface_worker.py train WORKDIR PORT PROCESS_ID OUT_NPZ
      the same two processes running `training.train` (data parallel over the 4 devices, with
      checkpoints and metrics in WORKDIR); every process saves its final parameters;
  python tests/surface_worker.py sharded STORE PORT PROCESS_ID OUT_NPZ
      two processes with 4 simulated CPU devices each: the MLP surface and the top Hessian
      eigenvalues with the parameters sharded over a points=2 x model=4 mesh of the 8 devices.
"""

import os
import signal
import sys

if __name__ == "__main__":
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + (
    " --xla_force_host_platform_device_count=") + (
    "2" if sys.argv[1] in ("distributed", "train") else "4" if sys.argv[1] == "sharded" else "1")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

TOY_XS = np.linspace(-1.0, 1.0, 7)
TOY_YS = np.linspace(-0.5, 1.0, 4)
TOY_CHUNK = 5
TOY_META = {"direction_seed": 0, "norm": "none", "checkpoint": "toy", "dataset": "none"}


def toy_problem():
  center = {"w": jnp.arange(6.0).reshape(2, 3) / 6.0, "b": jnp.ones(3)}
  d1 = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
  d2 = {"w": jnp.eye(2, 3), "b": jnp.ones(3)}
  return center, (d1, d2)


def toy_metric(p):
  loss = jnp.sum(jnp.sin(p["w"]) ** 2) + jnp.sum((p["b"] - 2.0) ** 2)
  return {"loss": loss, "acc": jnp.tanh(loss)}


MLP_XS = np.linspace(-1.0, 1.0, 5)
MLP_YS = np.linspace(-1.0, 0.5, 3)


def mlp_hessian_problem():
  """``(loss_fn, batch)`` of the MLP of `mlp_problem` on 64 training images."""
  import landscape_jax as lj

  tr = lj.load("digits", "train").subset(slice(0, 64))
  model = lj.get_model("mlp_small", num_classes=10)
  return lj.make_loss_fn(model, mean=tr.mean, std=tr.std), (tr.images, tr.labels)


def mlp_problem():
  import landscape_jax as lj

  tr = lj.load("digits", "train").subset(slice(0, 160))
  te = lj.load("digits", "test").subset(slice(0, 80))
  model = lj.get_model("mlp_small", num_classes=10)
  params = model.init(jax.random.key(0), tr.images[:2].astype(np.float32))["params"]
  metric_fn = lj.make_metric_fn(model, {"train": tr, "test": te}, batch_size=64)
  dirs = lj.random_directions(jax.random.key(1), params)
  return metric_fn, params, dirs


def _interrupt(store, kill_at):
  from jax.tree_util import Partial

  import landscape_jax as lj
  from landscape_jax.core import store as store_lib

  original = store_lib.atomic_write_bytes
  calls = [0]

  def crashing(path, data):
    calls[0] += 1
    original(path, data)
    if calls[0] == kill_at:
      os.kill(os.getpid(), signal.SIGKILL)

  store_lib.atomic_write_bytes = crashing
  center, dirs = toy_problem()
  lj.surface_grid(Partial(toy_metric), center, dirs, TOY_XS, TOY_YS,
                  engine=lj.EngineOptions(chunk_size=TOY_CHUNK, progress=False),
                  store=store, metadata=TOY_META)


def _join(port, process_id, local=2):
  """Joins the two-process group on localhost; checks the 2 x `local` simulated devices."""
  import landscape_jax as lj

  lj.sharding.initialize_distributed(f"127.0.0.1:{port}", num_processes=2,
                                     process_id=process_id)
  assert len(jax.devices()) == 2 * local and len(jax.local_devices()) == local


def _distributed(store, port, process_id, out):
  import landscape_jax as lj

  _join(port, process_id)
  metric_fn, params, dirs = mlp_problem()
  mesh = lj.make_mesh()
  res = lj.surface_grid(metric_fn, params, dirs, MLP_XS, MLP_YS,
                        engine=lj.EngineOptions(mesh=mesh, chunk_size=8, progress=False),
                        store=store, metadata={"test": "distributed"})
  np.savez(out, **res)
  lj.sharding.sync("done")


def _sharded(store, port, process_id, out):
  import landscape_jax as lj
  from landscape_jax.core import sharding as shd

  _join(port, process_id, local=4)
  metric_fn, params, dirs = mlp_problem()
  mesh = lj.make_mesh(points=2, model=4)
  center, directions = shd.shard_params((params, jax.tree.map(np.asarray, dirs)), mesh)
  assert not center["Dense_0"]["kernel"].is_fully_addressable  # spread over both processes
  res = lj.surface_grid(metric_fn, center, directions, MLP_XS, MLP_YS,
                        engine=lj.EngineOptions(mesh=mesh, chunk_size=2, progress=False),
                        store=store, metadata={"test": "sharded"})
  loss_fn, batch = mlp_hessian_problem()
  ev = lj.hessian_eigenvalues(loss_fn, center, shd.replicate(batch, mesh), top_k=2, num_steps=10)
  np.savez(out, top=ev.top, **res)
  lj.sharding.sync("done")


TRAIN_CONFIG = dict(model="mlp_small", dataset="digits", num_epochs=2, batch_size=32,
                    learning_rate=0.1, nesterov=True, weight_decay=5e-4, schedule="cosine",
                    augment=True, augment_pad=1, augment_flip=False, checkpoint_every_epochs=1)


def train_problem():
  import landscape_jax as lj

  return (lj.get_model("mlp_small", num_classes=10), lj.load("digits", "train").subset(
    slice(0, 320)), lj.load("digits", "test").subset(slice(0, 96)))


def _train(workdir, port, process_id, out):
  import landscape_jax as lj
  from landscape_jax.methods import training

  _join(port, process_id)
  model, train_ds, test_ds = train_problem()
  mesh = lj.make_mesh()
  state, records = training.train(model, train_ds, test_ds, workdir=workdir, mesh=mesh,
                                  config=dict(**TRAIN_CONFIG), progress=False)
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  np.savez(out, test_accuracy=records[-1]["test_accuracy"], **flat)
  lj.sharding.sync("done")


if __name__ == "__main__":
  if sys.argv[1] == "interrupt":
    _interrupt(sys.argv[2], int(sys.argv[3]))
  elif sys.argv[1] == "train":
    _train(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
  elif sys.argv[1] == "sharded":
    _sharded(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
  else:
    _distributed(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
