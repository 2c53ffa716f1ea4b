"""Worker process for the SIGKILL tests of test_reliability.py.

Usage:
  python tests/reliability_worker.py KIND PATH DELAY

KIND is ``surface`` (a 3x3 MLP surface with a store, one point per chunk), ``curve_eval``
(`curves.evaluate_curve` with a store) or ``curve_train`` (`train_curve` with a workdir).
Every result write is slowed down by DELAY seconds (half before, half after the write) so that the
test can kill the process at a random moment while work remains; after each completed write the
worker prints ``saved <n>`` (points done, or epochs checkpointed) and flushes. The test resumes the
work in its own process with the same problem (`problem()`) and compares with an uninterrupted run.
The process uses the environment it is given (the tests pass their own XLA_FLAGS).
"""

import os
import sys
import time

if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

XS = np.linspace(-1.0, 1.0, 3)
YS = np.linspace(-1.0, 1.0, 3)
CURVE_POINTS = 13          # + the straight line: 26 points, blocks of 8 with chunk_size=1
TRAIN_EPOCHS = 5
TRAIN_SETTINGS = dict(epochs=TRAIN_EPOCHS, batch_size=64, learning_rate=0.05, momentum=0.9,
                      weight_decay=1e-4, num_bends=3, seed=0)


def train_kw(**changes) -> dict:
  """The keywords of the workers' curve training run (`CurveSettings` fields changed by
  `changes`)."""
  from landscape_jax.methods.curve_training import CurveSettings

  return dict(settings=CurveSettings(**{**TRAIN_SETTINGS, **changes}), progress=False)


def problem():
  """The tiny problem every kind works on: (model, data, params_a, params_b, metric, loss)."""
  import landscape_jax as lj

  data = lj.load("digits", "train").subset(slice(0, 256))
  model = lj.get_model("mlp_small", num_classes=10)
  sample = data.images[:2].astype(np.float32)
  a = model.init(jax.random.key(0), sample)["params"]
  b = model.init(jax.random.key(1), sample)["params"]
  metric_fn = lj.make_metric_fn(model, {"train": data}, batch_size=128)
  loss_fn = lj.make_loss_fn(model, mean=data.mean, std=data.std)
  return model, data, a, b, metric_fn, loss_fn


def run_surface(store, metric_fn, a, progress=False):
  import landscape_jax as lj

  dirs = lj.random_directions(jax.random.key(1), a)
  return lj.surface_grid(metric_fn, a, dirs, XS, YS,
                         engine=lj.EngineOptions(chunk_size=1, progress=progress), store=store,
                         metadata={"worker": "surface"})


def curve_of(a, b):
  from landscape_jax.core import curves

  bend = jax.tree.map(lambda x, y: 0.5 * (x + y) + 0.1, a, b)
  return curves.init_curve(a, b, 3, bends=bend)


def run_curve_eval(store, metric_fn, a, b):
  import landscape_jax as lj
  from landscape_jax.core import curves

  return curves.evaluate_curve(metric_fn, curve_of(a, b), num_points=CURVE_POINTS,
                               engine=lj.EngineOptions(chunk_size=1, progress=False),
                               store=store)


def run_curve_train(workdir, loss_fn, a, b, data, callback=None):
  from landscape_jax.methods import curve_training

  return curve_training.train_curve(loss_fn, a, b, data, workdir=workdir, callback=callback,
                                    **train_kw())


def _slow(fn, delay):
  def wrapped(*args, **kwargs):
    time.sleep(delay / 2)
    out = fn(*args, **kwargs)
    time.sleep(delay / 2)
    return out
  return wrapped


def main(kind, path, delay):
  from landscape_jax.core import store as store_lib

  _, data, a, b, metric_fn, loss_fn = problem()
  if kind in ("surface", "curve_eval"):
    write = _slow(store_lib.write, delay)

    def reporting(p, state):
      out = write(p, state)
      print(f"saved {state.num_done}", flush=True)
      return out

    store_lib.write = reporting
    if kind == "surface":
      run_surface(path, metric_fn, a)
    else:
      run_curve_eval(path, metric_fn, a, b)
  elif kind == "curve_train":
    # every file of a curve training run goes through fileio: slow down its per-epoch writes
    from landscape_jax.core import fileio

    fileio.atomic_write_json = _slow(fileio.atomic_write_json, delay)
    run_curve_train(path, loss_fn, a, b, data,
                    callback=lambda epoch, c, r: print(f"saved {epoch + 1}", flush=True))
  else:
    raise SystemExit(f"unknown kind {kind!r}")
  print("finished", flush=True)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
