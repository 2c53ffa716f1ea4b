r"""A tiny character-level transformer language model: its loss surface, the interpolation between
two trainings and its Hessian spectrum, on a text that ships with the package.

  python experiments/charlm.py --config=experiments/configs/charlm.py --workdir=runs/charlm
  python experiments/charlm.py --config=experiments/configs/charlm.py:quick --workdir=runs/cq

The model is plain JAX (`lj.init_char_transformer` / `lj.char_transformer_apply`: a function of a
params dict, no model library) and the data ``(inputs, targets)`` windows of characters
(`lj.char_splits`), scored by `lj.TOKEN_CROSS_ENTROPY` (the mean cross-entropy over every
predicted character; its accuracy is the next-character accuracy). Everything below is the same
library code as for images: `make_loss_fn` / `make_metric_fn` build the functions, `surface_grid`
and `linear_path` evaluate them (chunked, resumable: rerun the same command), and
`hessian_eigenvalues` / `spectral_density` (Lanczos, PyHessian conventions) the curvature of the
mean training loss. Two models are trained with Adam from ``config.seeds`` (checkpointed in
``<workdir>/seed<k>``). Writes ``summary.json``, ``spectrum.npz`` and figures.
"""

import functools
import json
import os

import _common
from absl import flags, logging

_CONFIG, _WORKDIR, _PROGRESS = _common.define_flags("charlm config file (.py).")
flags.FLAGS.set_default("verbosity", logging.WARNING)
_common.parse_flags()  # --help and bad flags are answered before JAX is imported

import jax
import numpy as np

import landscape_jax as lj


def _grid(spec):
  lo, hi, n = spec
  return np.linspace(float(lo), float(hi), int(n))


def _train(config, workdir, seed, loss_fn, data, init):
  """The params trained from `seed` (restored from ``<workdir>/seed<k>`` when already trained)."""
  directory = os.path.join(workdir, f"seed{seed}")
  settings = {k: config[k] for k in ("text", "context", "stride", "test_fraction", "width",
                                     "depth", "heads", "steps", "batch_size", "learning_rate")}
  lj.store.check_or_write_config(
    os.path.join(workdir, f"seed{seed}_config.json"), {**settings, "seed": seed},
    what="a charlm training", remedy="Use another workdir, or rerun with the same settings.")
  if lj.checkpoints.list_steps(directory):
    return lj.checkpoints.restore(directory, init)
  params = _common.train_adam(loss_fn, init, *data, learning_rate=config.learning_rate,
                              batch_size=config.batch_size, steps=config.steps, seed=seed)
  lj.checkpoints.save(directory, config.steps, params)
  return params


def main(argv):
  config, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  splits, vocabulary = lj.char_splits(lj.load_text(config.text), context=config.context,
                                      stride=config.stride, test_fraction=config.test_fraction)
  apply_fn = functools.partial(lj.char_transformer_apply, heads=config.heads)
  loss_fn = lj.make_loss_fn(apply_fn, loss=lj.TOKEN_CROSS_ENTROPY)
  metric_fn = lj.make_metric_fn(apply_fn, splits, loss=lj.TOKEN_CROSS_ENTROPY,
                                batch_size=config.eval_batch_size)
  runs = []
  for seed in config.seeds:
    init = lj.init_char_transformer(jax.random.key(seed), vocab_size=len(vocabulary),
                                    context=config.context, width=config.width,
                                    depth=config.depth, heads=config.heads)
    runs.append(_train(config, workdir, seed, loss_fn, splits["train"], init))
  a, b = runs[:2]
  engine = lj.EngineOptions(chunk_size=config.get("chunk_size"),
                            map_mode=config.get("map_mode"), progress=_PROGRESS.value)
  summary = {"config": json.loads(config.to_json_best_effort()),
             "vocabulary_size": len(vocabulary), "num_params": lj.trees.num_params(a),
             "examples": {k: int(v[0].shape[0]) for k, v in splits.items()},
             "models": [{k: float(v) for k, v in metric_fn(p).items()} for p in runs]}
  print(f"{len(vocabulary)} characters, {summary['num_params']} parameters; trained:",
        summary["models"])

  xs, ys = _grid(config.x), _grid(config.y)
  dirs = lj.random_directions(jax.random.key(config.direction_seed), a, num=2,
                              norm=config.norm or None, ignore=config.ignore or None)
  surface = lj.surface_grid(metric_fn, a, dirs, xs, ys, store=os.path.join(workdir, "surface"),
                            metadata={"direction_seed": config.direction_seed,
                                      "norm": config.norm, "ignore": config.ignore}, engine=engine)
  alphas = _grid(config.alphas)
  path = lj.linear_path(metric_fn, a, b, alphas, store=os.path.join(workdir, "interpolation"),
                        engine=engine)
  summary["surface"] = {k: {"min": float(np.min(v)), "max": float(np.max(v))}
                        for k, v in surface.items()}
  summary["interpolation"] = {k: lj.barriers(v, alphas) for k, v in path.items() if "loss" in k}

  batches = lj.make_batches(splits["train"], batch_size=config.hessian_batch_size)
  k_eig, k_density = jax.random.split(jax.random.key(config.direction_seed))
  eig = lj.hessian_eigenvalues(loss_fn, a, batches, top_k=config.top_k,
                               num_steps=config.num_steps, key=k_eig)
  sd = lj.spectral_density(k_density, loss_fn, a, batches, num_probes=config.density_probes,
                           num_steps=config.density_steps, progress=_PROGRESS.value)
  summary["hessian"] = {"top_eigenvalues": eig.top.tolist(), "smallest_eigenvalue": eig.smallest}
  np.savez(os.path.join(workdir, "spectrum.npz"), grid=sd.grid, density=sd.density,
           nodes=sd.nodes, weights=sd.weights, ritz_values=eig.ritz_values)
  np.savez(os.path.join(workdir, "landscape.npz"), xs=xs, ys=ys, alphas=alphas,
           **{f"surface_{k}": v for k, v in surface.items()},
           **{f"interpolation_{k}": v for k, v in path.items()})

  for key in ("train_loss", "test_loss"):
    _common.plot("plot_contour", os.path.join(workdir, f"surface_{key}"), xs, ys, surface[key],
                 title=f"char transformer: {key} ({config.norm}-normalised)")
  _common.plot("plot_interpolation", os.path.join(workdir, "interpolation"), alphas, path,
               labels=tuple(f"seed {s}" for s in config.seeds[:2]), title="linear interpolation")
  _common.plot("plot_spectrum", os.path.join(workdir, "spectrum"), sd.grid, sd.density,
               eigenvalues=sd.nodes,
               title=f"Hessian spectral density (P = {summary['num_params']})")
  _common.write_summary(workdir, summary)
  print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))


if __name__ == "__main__":
  _common.run(main)
