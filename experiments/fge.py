r"""Fast Geometric Ensembling vs independently trained ensembles vs SWA (Garipov et al. 2018).

  python experiments/fge.py --config=experiments/configs/fge_digits.py --workdir=runs/fge
  python experiments/fge.py --config=experiments/configs/fge_cifar100_vgg16.py \
      --workdir=runs/fge_vgg16 --config.start=runs/vgg16_a

Starts from a trained checkpoint (``config.start``, an experiments/train.py workdir) or trains one
here for ``config.budget_epochs`` epochs; runs FGE (cyclic learning rate, a snapshot at every
cycle's lowest rate); trains ``config.num_independent`` models from other seeds with the same
budget each; averages the FGE snapshots (SWA). BatchNorm statistics are recomputed for every
snapshot and for the SWA average. Every training run is checkpointed every epoch under
``<workdir>/model_seed<s>/`` and ``<workdir>/fge/``, so rerunning the command after an
interruption resumes where it stopped. Writes ``<workdir>/summary.json`` with the test loss /
accuracy of the ensembles of the first k members and their cost in training epochs (a budget is
``budget_epochs``), ``fge.png/pdf`` (test error against training epochs, as Garipov et al.
Table 2), and prints a table.
"""

import os

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from ml_collections import config_flags

import landscape_jax as lj
from landscape_jax import curves, ensembles

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flags_as_required(["config", "workdir"])


def _plot_budget(path, summary, c):
  """Test error against training epochs: independent ensembles, FGE, SWA (Garipov et al. Tab. 2)."""
  try:
    from landscape_jax import plotting

    series = {name: ([r["epochs"] for r in summary[key]],
                     [100 * (1 - r["accuracy"]) for r in summary[key]])
              for key, name in (("independent", "independent ensemble"), ("fge", "FGE"))}
    series["SWA"] = ([summary["swa"]["epochs"]], [100 * (1 - summary["swa"]["accuracy"])])
    plotting.plot_budget(path, series, title=f"{c.model} on {c.dataset}: ensembles at equal "
                         f"budget ({summary['budget_epochs']} epochs each)")
  except Exception as e:  # a figure must never cost the computed results
    logging.warning("Plot %s failed: %s", path, e)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # keep orbax's per-save INFO lines quiet
    logging.set_verbosity(logging.WARNING)
  c, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  train_ds = lj.load(c.dataset, "train", data_dir=c.get("data_dir"))
  test_ds = lj.load(c.dataset, "test", data_dir=c.get("data_dir"))
  model = lj.get_model(c.model, num_classes=train_ds.num_classes, **dict(c.model_kwargs or {}))
  steps = len(train_ds) // c.batch_size

  def init(seed):
    return model.init(jax.random.key(seed), jnp.zeros((1, *train_ds.image_shape)))

  template = init(0).get("batch_stats")
  loss_fn = lj.make_loss_fn(model, mean=train_ds.mean, std=train_ds.std, batch_stats=template,
                            train=template is not None)

  def train(seed):
    sched = curves.curve_lr_schedule(c.lr, total_epochs=c.budget_epochs, steps_per_epoch=steps)
    p, _, _ = ensembles.train_sgd(
      loss_fn, init(seed)["params"], train_ds, epochs=c.budget_epochs, batch_size=c.batch_size,
      lr=sched, weight_decay=c.weight_decay, seed=seed, augment_images=c.augment,
      progress=_PROGRESS.value, desc=f"model {seed}",
      workdir=os.path.join(workdir, f"model_seed{seed}"))
    return p

  if c.start:
    from landscape_jax import checkpoints
    start = checkpoints.load_variables(os.path.join(c.start, "checkpoints"))["params"]
  else:
    start = train(c.seeds[0])
  members, _ = ensembles.fast_geometric_ensemble(
    loss_fn, start, train_ds, cycles=c.cycles, cycle_epochs=c.cycle_epochs, lr1=c.lr1, lr2=c.lr2,
    batch_size=c.batch_size, weight_decay=c.weight_decay, seed=c.seeds[0],
    augment_images=c.augment, progress=_PROGRESS.value, workdir=os.path.join(workdir, "fge"))
  independent = ensembles.stack_members(
    [start] + [train(s) for s in c.seeds[1:c.num_independent]])

  def stats(stacked):
    if template is None:
      return None
    return ensembles.stack_members([
      lj.recompute_batch_stats(model, p, template, train_ds, batch_size=c.bn_batch_size)
      for p in lj.trees.unstack(stacked)])

  def evaluate(stacked):
    return ensembles.evaluate_ensemble(model, stacked, test_ds, batch_stats=stats(stacked),
                                       batch_size=c.eval_batch_size)

  fge, ind = evaluate(members), evaluate(independent)
  swa = evaluate(ensembles.stack_members([ensembles.swa_average(members)]))
  b = c.budget_epochs
  summary = {
    "budget_epochs": b,
    "fge": [{"members": k + 1, "epochs": b + (k + 1) * c.cycle_epochs,
             "loss": float(fge["size_loss"][k]), "accuracy": float(fge["size_accuracy"][k]),
             "member_accuracy": float(fge["member_accuracy"][k])} for k in range(c.cycles)],
    "independent": [{"members": k + 1, "epochs": (k + 1) * b, "loss": float(ind["size_loss"][k]),
                     "accuracy": float(ind["size_accuracy"][k])} for k in range(c.num_independent)],
    "swa": {"members": c.cycles, "epochs": b + c.cycles * c.cycle_epochs,
            "loss": float(swa["loss"]), "accuracy": float(swa["accuracy"])},
  }
  lj.fileio.atomic_write_json(os.path.join(workdir, "summary.json"), summary, indent=1)
  _plot_budget(os.path.join(workdir, "fge"), summary, c)
  print(f"{'method':12s} {'members':>7s} {'epochs':>7s} {'test loss':>9s} {'test acc':>8s}")
  for name in ("independent", "fge"):
    for r in summary[name]:
      print(f"{name:12s} {r['members']:7d} {r['epochs']:7d} {r['loss']:9.4f} "
            f"{100 * r['accuracy']:7.2f}%")
  s = summary["swa"]
  print(f"{'swa':12s} {s['members']:7d} {s['epochs']:7d} {s['loss']:9.4f} "
        f"{100 * s['accuracy']:7.2f}%")


if __name__ == "__main__":
  app.run(main)
