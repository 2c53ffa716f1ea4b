r"""Aligning two independently trained networks by weight matching (Ainsworth et al. 2023).

  python experiments/align.py --config=experiments/configs/align_digits.py --workdir=runs/align
  python experiments/align.py --config=experiments/configs/align_digits.py:quick \
      --workdir=/tmp/align

Trains two models on the same data from different seeds, evaluates loss and accuracy (train and
test, whole splits) along the straight line theta(alpha) = (1 - alpha) theta_a + alpha theta_b
before and after permuting theta_b onto theta_a with `weight_matching`, and writes
``<workdir>/summary.json`` (barrier table: Frankle and Entezari barriers of the train and test
loss, accuracies of the endpoints, matching objective per sweep), ``path.npz`` (all curves),
``align_loss.png/pdf`` (the four loss curves, barriers in the legend) and
``align_accuracy.png/pdf``. The barrier table is also printed as Markdown.
"""

import os

import _common
from absl import logging

_CONFIG, _WORKDIR, _PROGRESS = _common.define_flags("Alignment config file (.py).")
_common.parse_flags()  # --help and bad flags are answered before JAX is imported

import jax
import numpy as np

import landscape_jax as lj
from landscape_jax.core import permutations as P


def train(model, ds, seed, config):
  """Adam from the initialisation of `seed` (`_common.train_adam`); returns params."""
  variables = model.init(jax.random.key(seed), ds.images[:2].astype(np.float32))
  if "batch_stats" in variables:
    raise ValueError(f"align.py interpolates parameters only; model '{config.model}' has "
                     "BatchNorm. Use a model without BatchNorm (mlp, vgg9, convfc).")
  return _common.train_adam(lj.make_loss_fn(model, mean=ds.mean, std=ds.std),
                            variables["params"], ds.images, ds.labels,
                            learning_rate=config.learning_rate, batch_size=config.batch_size,
                            steps=config.steps, seed=seed)


def main(argv):
  config, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  ds_train, ds_test = _common.load_splits(config)
  model = _common.build_model(config, ds_train.num_classes)
  a, b = (train(model, ds_train, s, config) for s in config.seeds)
  metric_fn = lj.make_metric_fn(model, {"train": ds_train, "test": ds_test})
  x = ds_train.images[:2].astype(np.float32)
  spec = P.spec_from_model(model, {"params": a}, x)
  logging.info("%s", spec)
  res = P.weight_matching(jax.random.key(config.matching_seed), spec, a, b,
                          max_iter=config.max_iter, progress=_PROGRESS.value)
  b_aligned = P.apply_permutation(spec, res.perm, b)
  alphas = np.linspace(0.0, 1.0, config.num_alphas)
  paths = {name: lj.linear_path(metric_fn, a, end, alphas,
                                engine=lj.EngineOptions(progress=_PROGRESS.value))
           for name, end in (("naive", b), ("aligned", b_aligned))}
  table = {}
  for name, path in paths.items():
    for split in ("train", "test"):
      bar = lj.barriers(path[f"{split}_loss"], alphas)
      table[f"{name}/{split}"] = {
        "frankle": bar["frankle"], "entezari": bar["entezari"],
        "max_loss": float(np.max(path[f"{split}_loss"])),
        "min_accuracy": float(np.min(path[f"{split}_accuracy"])),
        "endpoint_accuracy": [float(path[f"{split}_accuracy"][0]),
                              float(path[f"{split}_accuracy"][-1])]}
  summary = {"config": config.to_dict(), "num_alphas": len(alphas), "barriers": table,
             "matching": {"objectives": res.objectives.tolist(), "sweeps": res.num_sweeps,
                          "converged": res.converged,
                          "moved_units": {k: int(np.sum(np.asarray(v) != np.arange(v.size)))
                                          for k, v in res.perm.items()}}}
  _common.write_summary(workdir, summary)
  np.savez(os.path.join(workdir, "path.npz"), alphas=alphas,
           **{f"{n}_{k}": v for n, p in paths.items() for k, v in p.items()})
  print(f"Barriers along the straight line ({len(alphas)} alphas):")
  _common.print_table(["path / split", "barrier (Frankle)", "barrier (Entezari)", "max loss",
                       "min acc"],
                      [[k, v["frankle"], v["entezari"], v["max_loss"], v["min_accuracy"]]
                       for k, v in table.items()])
  for metric in ("loss", "accuracy"):
    runs = {f"{name}, {split}": paths[name][f"{split}_{metric}"]
            for split in ("train", "test") for name in ("naive", "aligned")}
    _common.plot("plot_barriers", os.path.join(workdir, f"align_{metric}"), alphas, runs,
                 ylabel=metric, show_barrier=metric == "loss",
                 title=f"{config.model}: B as trained (naive) vs permuted onto A")


if __name__ == "__main__":
  _common.run(main)
