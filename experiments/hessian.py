r"""Hessian of a trained checkpoint: top eigenvalues, trace, spectral density, eigenvalue-ratio map.

  # digits, end to end (trains a small MLP into <workdir>/train first if config.run is unset)
  python experiments/hessian.py --config=experiments/configs/hessian_digits.py --workdir=runs/hd
  # a checkpoint written by experiments/train.py
  python experiments/hessian.py --config=experiments/configs/hessian_cifar10.py \
      --config.run=runs/cifar10_resnet56 --workdir=runs/cifar10_resnet56_hessian

PyHessian conventions (`landscape_jax.core.hessian`): Lanczos with full reorthogonalisation for the
top-k and smallest eigenvalues, Hutchinson (Rademacher) for the trace with its standard error,
stochastic Lanczos quadrature for the density; the loss is the mean cross-entropy over
``config.split`` (batches weighted by size) in inference mode, restricted to weights with
ndim > 1 when ``config.weights_only`` (Li et al. 2018). The eigenvalue-ratio map
``|lambda_min / lambda_max|`` over a filter-normalised random plane (Li et al. 2018, Sec. 6) runs
through `surface_grid`, so it is chunked, sharded over every device and resumable (rerun the same
command). Writes ``summary.json``, ``spectrum.npz``, ``ratio_map/store`` and figures.
"""

import json
import os

import _common
from absl import flags, logging

_CONFIG, _WORKDIR, _PROGRESS = _common.define_flags("Hessian config file (.py).")
flags.FLAGS.set_default("verbosity", logging.WARNING)
_common.parse_flags()  # --help and bad flags are answered before JAX is imported

import jax
import numpy as np

import landscape_jax as lj


def main(argv):
  lj.sharding.initialize_distributed()
  config, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  model, variables, train_ds, _, run = _common.load_or_train(config, workdir,
                                                            progress=_PROGRESS.value)
  data = _common.load(train_ds.name, config.split, data_dir=config.get("data_dir")) \
    if config.split != "train" else train_ds
  if config.get("subset"):
    data = data.subset(slice(0, config.subset))
  params = variables["params"]
  loss_fn = lj.make_loss_fn(model, mean=train_ds.mean, std=train_ds.std,
                            batch_stats=variables.get("batch_stats"), train=False)
  batches = lj.make_batches(data.arrays, batch_size=config.batch_size)
  mask = lj.trees.mask_by_ndim(params) if config.weights_only else None
  key = jax.random.key(config.seed)
  k_eig, k_trace, k_density = jax.random.split(key, 3)
  dim = lj.hessian.num_curvature_params(params, mask=mask)
  print(f"Hessian of {run} over {len(data)} {config.split} examples, P = {dim} parameters")

  eig = lj.hessian_eigenvalues(loss_fn, params, batches, top_k=config.top_k,
                               num_steps=config.num_steps, key=k_eig, mask=mask,
                               progress=_PROGRESS.value)
  trace = lj.hessian_trace(k_trace, loss_fn, params, batches, num_probes=config.trace_probes,
                           mask=mask, chunk_size=10, progress=_PROGRESS.value)
  sd = lj.spectral_density(k_density, loss_fn, params, batches, num_probes=config.density_probes,
                           num_steps=config.density_steps, mask=mask, progress=_PROGRESS.value)
  summary = {"config": json.loads(config.to_json_best_effort()), "run": run,
             "num_params": dim, "num_examples": len(data),
             "top_eigenvalues": eig.top.tolist(), "smallest_eigenvalue": eig.smallest,
             "ratio": abs(eig.smallest / eig.top[0]),
             "trace": trace.mean, "trace_stderr": trace.stderr}
  main_process = lj.is_main_process()
  if main_process:
    np.savez(os.path.join(workdir, "spectrum.npz"), grid=sd.grid, density=sd.density,
             nodes=sd.nodes, weights=sd.weights, ritz_values=eig.ritz_values)
    _common.plot("plot_spectrum", os.path.join(workdir, "spectrum"), sd.grid, sd.density,
                 eigenvalues=sd.nodes, title=f"Hessian spectral density (P = {dim})")

  if config.ratio_map.enabled:
    rc = config.ratio_map
    map_data = data.subset(slice(0, rc.subset)) if rc.get("subset") else data
    metric_fn = lj.make_curvature_metric_fn(
      loss_fn, lj.make_batches(map_data.arrays, batch_size=config.batch_size),
      num_steps=rc.num_steps, mask=mask, params_like=params, key=jax.random.key(rc.seed))
    dirs = lj.random_directions(jax.random.key(rc.direction_seed), params, num=2,
                                norm=rc.norm or None, ignore=rc.ignore or None)
    xs, ys = (np.linspace(float(a), float(b), int(n)) for a, b, n in (rc.x, rc.y))
    meta = {"run": run, "step": config.get("step"), "split": config.split,
            "num_examples": len(map_data), "weights_only": config.weights_only,
            "num_steps": rc.num_steps, "seed": rc.seed, "direction_seed": rc.direction_seed,
            "norm": rc.norm, "ignore": rc.ignore}
    res = lj.surface_grid(metric_fn, params, dirs, xs, ys,
                          engine=lj.EngineOptions(mesh=lj.make_mesh(),
                                                  chunk_size=config.get("chunk_size"),
                                                  map_mode=config.get("map_mode"),
                                                  progress=_PROGRESS.value),
                          store=os.path.join(workdir, "ratio_map", "store"), metadata=meta)
    finite = res["ratio"][np.isfinite(res["ratio"])]
    summary["ratio_map"] = {"max": float(finite.max()) if finite.size else None,
                            "mean": float(finite.mean()) if finite.size else None,
                            "at_center": float(res["ratio"][len(xs) // 2, len(ys) // 2])}
    if main_process:
      np.savez(os.path.join(workdir, "ratio_map", "ratio_map.npz"), xs=xs, ys=ys, **res)
      _common.plot("plot_eigen_ratio", os.path.join(workdir, "ratio_map", "eigen_ratio"), xs, ys,
                   res["ratio"], title=r"$|\lambda_{min} / \lambda_{max}|$")
  if main_process:
    _common.write_summary(workdir, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))


if __name__ == "__main__":
  _common.run(main)
