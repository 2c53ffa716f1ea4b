r"""Connects two trained models with a low-loss curve (Garipov et al. 2018) and evaluates it.

  python experiments/connect.py --config=experiments/configs/connect_digits.py --workdir=runs/conn
  python experiments/connect.py --config=experiments/configs/connect_cifar10_vgg16.py \
      --workdir=runs/conn_vgg16 --config.endpoints=runs/vgg16_a,runs/vgg16_b

Endpoints are two training checkpoints (``experiments/train.py`` workdirs) given in
``config.endpoints``; when it is empty (the digits config) two models are trained here from
different seeds (checkpointed under ``endpoint_seed<s>/``, resumable). Then the interior bends of
the curve are trained (checkpointed every epoch, resumable), the curve and the straight line are
evaluated at ``config.num_points`` points (BatchNorm statistics recomputed at every point;
resumable), and, for a 3-point curve, the loss on the plane through the endpoints and the bend is
computed and plotted. Writes into --workdir: ``summary.json`` (min / max / mean and barrier of
every metric along curve and line), the result stores ``curve_eval/`` (curve points, then line
points) and ``plane/`` (`landscape_jax.core.store`), ``plane_<metric>.png/pdf`` and
``curve_metrics.png/pdf``.
"""

import os

import _common
from absl import flags, logging

_CONFIG, _WORKDIR, _PROGRESS = _common.define_flags("Config file (.py).")
_common.parse_flags()  # --help and bad flags are answered before JAX is imported

import jax
import jax.numpy as jnp
import numpy as np

import landscape_jax as lj
from landscape_jax.adapters import batchnorm
from landscape_jax.core import curves
from landscape_jax.methods import checkpoints, curve_training, ensembles


def _endpoints(config, model, train_ds, loss_fn_train, workdir):
  """Loads the two endpoint checkpoints, or trains them when config.endpoints is empty."""
  if config.endpoints:
    dirs = [d.strip() for d in (config.endpoints.split(",") if isinstance(config.endpoints, str)
                                else config.endpoints)]
    if len(dirs) != 2:
      raise ValueError(f"config.endpoints needs two checkpoint directories, got {dirs}.")
    return [checkpoints.load_variables(os.path.join(d, "checkpoints")
                                       if os.path.isdir(os.path.join(d, "checkpoints")) else d)
            for d in dirs]
  out = []
  for seed in config.endpoint_seeds:
    v = model.init(jax.random.key(seed), jnp.zeros((1, *train_ds.image_shape)))
    settings = lj.TrainSettings(
      epochs=config.endpoint_epochs, batch_size=config.batch_size,
      learning_rate=config.endpoint_learning_rate, weight_decay=config.weight_decay, seed=seed,
      augment=config.augment)
    p, _, _ = ensembles.train_sgd(
      loss_fn_train(v.get("batch_stats")), v["params"], train_ds, settings=settings,
      progress=_PROGRESS.value, desc=f"endpoint {seed}",
      workdir=os.path.join(workdir, f"endpoint_seed{seed}"))
    out.append({**v, "params": p})
  return out


def main(argv):
  if not flags.FLAGS["verbosity"].present:  # keep orbax's per-save INFO lines quiet
    logging.set_verbosity(logging.WARNING)
  config, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  train_ds, test_ds = _common.load_splits(config)
  model = _common.build_model(config, train_ds.num_classes)

  def loss_fn_train(bs):
    return lj.make_loss_fn(model, mean=train_ds.mean, std=train_ds.std, batch_stats=bs,
                           train=bs is not None)

  ends = _endpoints(config, model, train_ds, loss_fn_train, workdir)
  bs = ends[0].get("batch_stats")
  settings = lj.CurveSettings(
    epochs=config.epochs, num_bends=config.num_bends, kind=config.kind,
    batch_size=config.batch_size, learning_rate=config.learning_rate, momentum=config.momentum,
    weight_decay=config.weight_decay, num_ts=config.num_ts, augment=config.augment,
    seed=config.seed, checkpoint_every=config.get("checkpoint_every", 1))
  curve, history = curve_training.train_curve(
    loss_fn_train(bs), ends[0]["params"], ends[1]["params"], train_ds, settings=settings,
    workdir=os.path.join(workdir, "curve"), progress=_PROGRESS.value)
  splits = {"train": train_ds, "test": test_ds}
  if bs is None:
    metric_fn = lj.make_metric_fn(model, splits, batch_size=config.eval_batch_size)
  else:
    metric_fn = batchnorm.make_recompute_metric_fn(
      model, splits, train_data=train_ds, batch_stats=bs, batch_size=config.eval_batch_size,
      bn_batch_size=config.bn_batch_size)
  res = curves.evaluate_curve(metric_fn, curve, kind=config.kind, num_points=config.num_points,
                              engine=lj.EngineOptions(chunk_size=config.get("chunk_size"),
                                                      progress=_PROGRESS.value),
                              store=os.path.join(workdir, "curve_eval"))
  summary = {"curve_training": history[-1] if history else None, **res["summary"]}
  for which in ("curve", "line"):
    s = res["summary"][which]
    print(f"{which:5s}: max train loss {s['train_loss']['max']:.4f} "
          f"(barrier {s['train_loss']['barrier']:.4f}), max test error "
          f"{100 * s['test_error']['max']:.2f} % (endpoints {100 * s['test_error']['start']:.2f} / "
          f"{100 * s['test_error']['end']:.2f} %)")
  _common.plot("plot_curve_metrics", os.path.join(workdir, "curve_metrics"), res["t"],
               dict(res["curve"]), dict(res["line"]))
  if config.num_bends == 3 and config.plane_points > 0:
    w0, w1, w2 = (lj.trees.index(curve, i) for i in range(3))
    plane = curves.plane_basis(w0, w1, w2)
    grid = np.linspace(config.plane_min, config.plane_max, config.plane_points)
    pres = curves.evaluate_plane(metric_fn, plane, alphas=grid, betas=grid,
                                 engine=lj.EngineOptions(chunk_size=config.get("chunk_size"),
                                                         progress=_PROGRESS.value),
                                 store=os.path.join(workdir, "plane"))
    proj = np.stack([np.asarray(curves.project_to_plane(plane, w)) for w in (w0, w1, w2)])
    xy = curves.curve_in_plane(plane, curve, kind=config.kind, num_points=config.num_points)
    for metric in config.plane_metrics:
      _common.plot("plot_curve_plane", os.path.join(workdir, f"plane_{metric}"), pres["x"],
                   pres["y"], pres[metric], curve_xy=xy, endpoints_xy=proj[[0, 2]],
                   bend_xy=proj[1], label=metric.replace("_", " "))
    summary["plane"] = {"scale_u": float(plane.scale_u), "scale_v": float(plane.scale_v)}
  _common.write_summary(workdir, summary)
  logging.info("Wrote %s", workdir)


if __name__ == "__main__":
  _common.run(main)
