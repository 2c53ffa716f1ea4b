r"""Li et al. (2018) loss-landscape plots around trained checkpoints: 1-D, 2-D, two-model
interpolation, plane through three models; resumable, sharded over every device.

  # train first (experiments/train.py writes <workdir>/config.json and <workdir>/checkpoints/)
  python experiments/train.py --config=experiments/configs/digits_mlp.py --workdir=runs/mlp
  # 2-D filter-normalised surface around it (51 x 51 on [-1, 1]^2), then a quick 11 x 11 one
  python experiments/surface.py --config=experiments/configs/surface_2d.py \
      --config.runs="('runs/mlp',)" --workdir=runs/mlp_surface2d
  python experiments/surface.py --config=experiments/configs/surface_2d.py:quick \
      --config.runs="('runs/mlp',)" --workdir=runs/mlp_surface2d_quick
  # no checkpoint at hand: "init:<model>" is a freshly initialised model (seed = its position)
  python experiments/surface.py --config=experiments/configs/surface_1d.py \
      --config.runs="('init:mlp_small',)" --workdir=/tmp/s1d

Modes (``config.mode``): ``random`` (one surface per run along seeded random directions, several
runs overlaid in the 1-D plot), ``interpolation`` (runs[0] -> runs[1], barriers in summary.json),
``plane`` (x = t2 - t1, y = t3 - t1). Writes ``<workdir>/<name>/store`` (resumable results: rerun
the same command after an interruption), ``summary.json`` and figures (when
`landscape_jax.plotting` is available). Multi-host: start the same command on every host; they
join through `jax.distributed` and process 0 writes.
"""

import json
import os
import re

import _common
from absl import logging

_CONFIG, _WORKDIR, _PROGRESS = _common.define_flags("Surface config file (.py).")
_common.parse_flags()  # --help and bad flags are answered before JAX is imported

import jax
import numpy as np

import landscape_jax as lj
from landscape_jax.methods import rundir


def load_run(spec: str, index: int, config):
  """``(model, variables, dataset name, data_dir, loaded splits)`` of a training workdir or of
  ``init:<model>`` (initialised with seed `index`); the splits loaded on the way (a dict) are
  reused by `make_metric`."""
  if spec.startswith("init:"):
    name, dataset = spec[5:], config.dataset
    ds = _common.load(dataset, "train", data_dir=config.get("data_dir"))
    model = _common.get_model(name, num_classes=ds.num_classes)
    variables = model.init(jax.random.key(index), ds.images[:2].astype(np.float32))
    return model, dict(variables), dataset, config.get("data_dir"), {"train": ds}
  split = config.splits[0]
  model, variables, ds, train_cfg = rundir.load_run(spec, step=config.get("step"), split=split,
                                                    data_dir=config.get("data_dir"))
  data_dir = config.get("data_dir") or train_cfg.get("data_dir")
  return model, variables, train_cfg["dataset"], data_dir, {split: ds}


def check_config(config) -> None:
  """Refuses settings that cannot be honoured, before anything is loaded or computed."""
  if config.bn not in ("center", "recompute"):
    raise ValueError(f"config.bn must be 'center' or 'recompute', got {config.bn!r}.")
  if config.bn == "recompute" and config.get("error_tol") is not None:
    raise ValueError("config.error_tol (error-controlled estimates) cannot be combined with "
                     "config.bn='recompute' (statistics recomputed per point on the whole "
                     "training split): set --config.error_tol=None for exact metrics with "
                     "recomputed statistics, or --config.bn=center.")


def make_metric(model, variables, dataset, data_dir, config, loaded, plane=None):
  """metric_fn over the configured splits, with the centre's or recomputed BN statistics.

  With ``config.error_tol``: error-controlled estimates; with ``config.error_anchor_stride`` and
  ``plane = (center, directions, xs, ys)`` anchored on every k-th grid line of the surface.
  `loaded` holds splits already loaded (reused, not loaded again).
  """
  splits = {}
  for split in config.splits:
    ds = loaded[split] if split in loaded else _common.load(dataset, split, data_dir=data_dir)
    if config.get("eval_subset"):
      ds = ds.subset(slice(0, config.eval_subset))
    splits[split] = ds
  stats = variables.get("batch_stats")
  batch_size = config.get("eval_batch_size") or _fastest_batch_size(model, variables, splits)
  if stats is not None and config.bn == "recompute":
    from landscape_jax.adapters.batchnorm import make_recompute_metric_fn

    train = (loaded["train"] if "train" in loaded
             else _common.load(dataset, "train", data_dir=data_dir))
    return make_recompute_metric_fn(model, splits, train_data=train, batch_stats=stats,
                                    batch_size=batch_size)
  if config.get("error_tol") is not None:
    anchors = None
    if plane is not None and config.get("error_anchor_stride"):
      anchors = lj.anchor_plane(*plane, stride=config.error_anchor_stride)
    fns = {k: lj.make_error_controlled_metric_fn(
      model, ds, tol=config.error_tol, rtol=config.error_rtol, batch_size=batch_size,
      batch_stats=stats, anchors=anchors) for k, ds in splits.items()}
    return jax.tree_util.Partial(_prefixed, fns)
  return lj.make_metric_fn(model, splits, batch_stats=stats, batch_size=batch_size)


def _fastest_batch_size(model, variables, splits, *, max_examples: int = 2048) -> int:
  """`lj.choose_batch_size` on the first split's first `max_examples` examples (speed per example
  is what is compared; the batch size does not change the values)."""
  ds = next(iter(splits.values()))
  ds = ds.subset(slice(0, min(len(ds), max_examples)))
  cands = sorted({min(b, len(ds)) for b in (32, 64, 128, 256, 512)})
  best, times = lj.choose_batch_size(
    lambda b: lj.make_metric_fn(model, ds, batch_stats=variables.get("batch_stats"),
                                batch_size=b), variables["params"], candidates=cands, repeats=1)
  logging.info("eval_batch_size: %d (measured: %s)", best,
               ", ".join(f"{b}: {t * 1e3:.0f} ms" for b, t in times.items()))
  return best


def _prefixed(fns, params):
  return {f"{k}_{m}": v for k, fn in fns.items() for m, v in fn(params).items()}


def _axis(spec):
  lo, hi, num = spec
  return np.linspace(float(lo), float(hi), int(num))


def _plot_2d(path, xs, ys, res, title, points=None):
  for key in ("train_loss", "test_loss", "loss"):
    if key in res:
      z = res[key]
      extra = {"points": points} if points else {}
      _common.plot("plot_contour", f"{path}_{key}_contour", xs, ys, z, title=title, **extra)
      _common.plot("plot_contourf", f"{path}_{key}_contourf", xs, ys, z, title=title, **extra)
      _common.plot("plot_heatmap", f"{path}_{key}_heatmap", xs, ys, z, title=title, **extra)
      _common.plot("plot_surface_3d", f"{path}_{key}_3d", xs, ys, z, title=title)


def _safe(label: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def _summary(res):
  out = {}
  for k, v in res.items():
    finite = v[np.isfinite(v)]
    out[k] = {"min": float(finite.min()) if finite.size else None,
              "max": float(finite.max()) if finite.size else None,
              "num_nonfinite": int(v.size - finite.size)}
  return out


def main(argv):
  lj.sharding.initialize_distributed()
  config, workdir = _CONFIG.value, _WORKDIR.value
  check_config(config)
  runs = list(config.runs)
  labels = list(config.get("labels") or [os.path.basename(r.rstrip("/")) or r for r in runs])
  if len(set(labels)) < len(labels):
    labels = [f"{label} {i}" for i, label in enumerate(labels)]
  need = {"interpolation": 2, "plane": 3}.get(config.mode)
  if not runs or (need and len(runs) != need):
    raise ValueError(f"mode {config.mode!r} needs {need or 'at least 1'} runs in config.runs; "
                     f"got {runs}.")
  main_process = lj.is_main_process()
  os.makedirs(workdir, exist_ok=True)
  mesh = lj.make_mesh()
  engine = lj.EngineOptions(mesh=mesh, chunk_size=config.get("chunk_size"),
                            map_mode=config.get("map_mode"), progress=_PROGRESS.value)
  loaded = [load_run(r, i, config) for i, r in enumerate(runs)]
  base_meta = {"mode": config.mode, "runs": runs, "step": config.get("step"), "bn": config.bn,
               "error_tol": config.get("error_tol"),
               "error_rtol": config.get("error_rtol"),
               "error_anchor_stride": config.get("error_anchor_stride"),
               "splits": list(config.splits), "eval_subset": config.get("eval_subset")}
  xs = _axis(config.x)
  ys = _axis(config.y) if config.mode != "interpolation" and config.dim == 2 else None
  summary = {"config": json.loads(config.to_json_best_effort()), "results": {}}
  curves = {}

  if config.mode == "random":
    for label, (model, variables, dataset, data_dir, splits), run in zip(labels, loaded, runs,
                                                                 strict=True):
      params = variables["params"]
      dirs = lj.random_directions(jax.random.key(config.seed), params, num=config.dim,
                                  norm=config.norm or None, ignore=config.ignore or None,
                                  same_direction=config.same_direction,
                                  orthogonal=config.orthogonal)
      metric_fn = make_metric(model, variables, dataset, data_dir, config, splits,
                              plane=(params, dirs, xs, ys))
      meta = {**base_meta, "run": run, "dataset": dataset, "seed": config.seed,
              "norm": config.norm, "ignore": config.ignore,
              "same_direction": config.same_direction, "orthogonal": config.orthogonal}
      res = lj.surface_grid(metric_fn, params, dirs, xs, ys,
                            store=os.path.join(workdir, _safe(label), "store"), metadata=meta,
                            engine=engine)
      summary["results"][label] = _summary(res)
      curves[label] = res
      if main_process and ys is not None:
        _plot_2d(os.path.join(workdir, _safe(label), "surface"), xs, ys, res,
                 f"{label}: {config.norm}-normalised")
    if main_process and ys is None:
      _common.plot("plot_1d", os.path.join(workdir, "surface_1d"), xs,
            curves if len(curves) > 1 else curves[labels[0]], title=f"{config.norm}-normalised")
  else:
    model, variables, dataset, data_dir, splits = loaded[0]
    params = [v[1]["params"] for v in loaded]
    dirs = lj.directions_from_models(*params)  # checks that the models have the same structure
    metric_fn = make_metric(model, variables, dataset, data_dir, config, splits,
                            plane=(params[0], dirs[:1] if ys is None else dirs, xs, ys))
    meta = {**base_meta, "dataset": dataset, "directions": "models (x = t2 - t1, y = t3 - t1)"}
    store = os.path.join(workdir, config.mode, "store")
    if config.mode == "interpolation":
      res = lj.linear_path(metric_fn, params[0], params[1], xs, store=store, metadata=meta,
                           engine=engine)
      summary["results"]["interpolation"] = _summary(res)
      summary["barriers"] = {k: lj.barriers(v, xs) for k, v in res.items() if "loss" in k}
      if main_process:
        _common.plot("plot_interpolation", os.path.join(workdir, "interpolation"), xs, res,
              labels=tuple(labels), title="linear interpolation")
    else:
      res = lj.surface_grid(metric_fn, params[0], dirs, xs, ys, store=store, metadata=meta,
                            engine=engine)
      summary["results"]["plane"] = _summary(res)
      if main_process:
        points = {labels[0]: (0.0, 0.0), labels[1]: (1.0, 0.0), labels[2]: (0.0, 1.0)}
        _plot_2d(os.path.join(workdir, "plane"), xs, ys, res, "plane through three models",
                 points=points)
  if main_process:
    _common.write_summary(workdir, summary)
    print(json.dumps(summary["results"], indent=1))
    if "barriers" in summary:
      print(json.dumps(summary["barriers"], indent=1))


if __name__ == "__main__":
  _common.run(main)
