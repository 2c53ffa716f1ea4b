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

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

import landscape_jax as lj
from landscape_jax import permutations as P
from landscape_jax import plotting

_CONFIG = config_flags.DEFINE_config_file("config", None, "Alignment config file (.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flags_as_required(["config", "workdir"])


def train(model, ds, seed, config):
  """Adam on random minibatches (one compiled `lax.scan`); returns params."""
  loss_fn = lj.make_loss_fn(model, mean=ds.mean, std=ds.std)
  images, labels = jnp.asarray(ds.images), jnp.asarray(ds.labels)
  variables = model.init(jax.random.key(seed), images[:2].astype(jnp.float32))
  if "batch_stats" in variables:
    raise ValueError(f"align.py interpolates parameters only; model '{config.model}' has "
                     "BatchNorm. Use a model without BatchNorm (mlp, vgg9, convfc).")
  opt = optax.adam(config.learning_rate)
  n, b = images.shape[0], min(config.batch_size, images.shape[0])

  @jax.jit
  def run(params, key):
    def step(carry, k):
      p, s = carry
      idx = jax.random.choice(k, n, (b,), replace=False)
      u, s = opt.update(jax.grad(loss_fn)(p, (images[idx], labels[idx])), s, p)
      return (optax.apply_updates(p, u), s), None
    keys = jax.random.split(key, config.steps)
    return jax.lax.scan(step, (params, opt.init(params)), keys)[0][0]

  return run(variables["params"], jax.random.key(1000 + seed))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  ds_train, ds_test = (lj.load(config.dataset, split, data_dir=config.get("data_dir"))
                       for split in ("train", "test"))
  model = lj.get_model(config.model, num_classes=ds_train.num_classes, **dict(config.model_kwargs))
  a, b = (train(model, ds_train, s, config) for s in config.seeds)
  metric_fn = lj.make_metric_fn(model, {"train": ds_train, "test": ds_test})
  x = ds_train.images[:2].astype(np.float32)
  spec = P.spec_from_model(model, {"params": a}, x)
  logging.info("%s", spec)
  res = P.weight_matching(jax.random.key(config.matching_seed), spec, a, b,
                          max_iter=config.max_iter, progress=_PROGRESS.value)
  b_aligned = P.apply_permutation(spec, res.perm, b)
  alphas = np.linspace(0.0, 1.0, config.num_alphas)
  paths = {name: lj.linear_path(metric_fn, a, end, alphas, progress=_PROGRESS.value)
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
  lj.fileio.atomic_write_json(os.path.join(workdir, "summary.json"), summary, indent=2)
  np.savez(os.path.join(workdir, "path.npz"), alphas=alphas,
           **{f"{n}_{k}": v for n, p in paths.items() for k, v in p.items()})
  print(f"| path / split | barrier (Frankle) | barrier (Entezari) | max loss | min acc |  "
        f"({len(alphas)} alphas)")
  print("|---|---|---|---|---|")
  for k, v in table.items():
    print(f"| {k} | {v['frankle']:.4f} | {v['entezari']:.4f} | {v['max_loss']:.4f} | "
          f"{v['min_accuracy']:.4f} |")
  for metric in ("loss", "accuracy"):
    runs = {f"{name}, {split}": paths[name][f"{split}_{metric}"]
            for split in ("train", "test") for name in ("naive", "aligned")}
    plotting.plot_barriers(os.path.join(workdir, f"align_{metric}"), alphas, runs, ylabel=metric,
                           show_barrier=metric == "loss",
                           title=f"{config.model}: B as trained (naive) vs permuted onto A")


if __name__ == "__main__":
  app.run(main)
