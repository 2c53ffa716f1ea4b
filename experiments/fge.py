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

import _common
from absl import flags, logging

_CONFIG, _WORKDIR, _PROGRESS = _common.define_flags("Config file (.py).")
_common.parse_flags()  # --help and bad flags are answered before JAX is imported

import jax
import jax.numpy as jnp

import landscape_jax as lj
from landscape_jax.methods import checkpoints, ensembles, schedules


def _plot_budget(path, summary, c):
  """Test error against training epochs: independent ensembles, FGE, SWA (Garipov et al. Tab. 2)."""
  series = {name: ([r["epochs"] for r in summary[key]],
                   [100 * (1 - r["accuracy"]) for r in summary[key]])
            for key, name in (("independent", "independent ensemble"), ("fge", "FGE"))}
  series["SWA"] = ([summary["swa"]["epochs"]], [100 * (1 - summary["swa"]["accuracy"])])
  _common.plot("plot_budget", path, series, title=f"{c.model} on {c.dataset}: ensembles at equal "
               f"budget ({summary['budget_epochs']} epochs each)")


def main(argv):
  if not flags.FLAGS["verbosity"].present:  # keep orbax's per-save INFO lines quiet
    logging.set_verbosity(logging.WARNING)
  c, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  train_ds, test_ds = _common.load_splits(c)
  model = _common.build_model(c, train_ds.num_classes)
  steps = len(train_ds) // c.batch_size

  def init(seed):
    return model.init(jax.random.key(seed), jnp.zeros((1, *train_ds.image_shape)))

  template = init(0).get("batch_stats")
  loss_fn = lj.make_loss_fn(model, mean=train_ds.mean, std=train_ds.std, batch_stats=template,
                            train=template is not None)

  def train(seed):
    sched = schedules.curve_lr_schedule(c.learning_rate, total_epochs=c.budget_epochs,
                                        steps_per_epoch=steps)
    settings = lj.TrainSettings(epochs=c.budget_epochs, batch_size=c.batch_size,
                                learning_rate=sched, weight_decay=c.weight_decay, seed=seed,
                                augment=c.augment)
    p, _, _ = ensembles.train_sgd(
      loss_fn, init(seed)["params"], train_ds, settings=settings, progress=_PROGRESS.value,
      desc=f"model {seed}", workdir=os.path.join(workdir, f"model_seed{seed}"))
    return p

  if c.start:
    start = checkpoints.load_variables(os.path.join(c.start, "checkpoints"))["params"]
  else:
    start = train(c.seeds[0])
  settings = lj.FGESettings(cycles=c.cycles, cycle_epochs=c.cycle_epochs, lr1=c.lr1, lr2=c.lr2,
                            batch_size=c.batch_size, weight_decay=c.weight_decay,
                            seed=c.seeds[0], augment=c.augment)
  members, _ = ensembles.fast_geometric_ensemble(
    loss_fn, start, train_ds, settings=settings, progress=_PROGRESS.value,
    workdir=os.path.join(workdir, "fge"))
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
  _common.write_summary(workdir, summary)
  _plot_budget(os.path.join(workdir, "fge"), summary, c)
  rows = [[name, r["members"], r["epochs"], r["loss"], f"{100 * r['accuracy']:.2f} %"]
          for name in ("independent", "fge", "swa")
          for r in (summary[name] if name != "swa" else [summary["swa"]])]
  _common.print_table(["method", "members", "epochs", "test loss", "test accuracy"], rows)


if __name__ == "__main__":
  _common.run(main)
