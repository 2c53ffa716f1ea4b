r"""Trains a model from a config file, checkpointing (and resuming) in --workdir.

  python experiments/train.py --config=experiments/configs/digits_resnet.py --workdir=runs/dr
  python experiments/train.py --config=experiments/configs/digits_resnet.py:resnet8 \
      --workdir=runs/dr8 --config.num_epochs=5
  python experiments/train.py --config=experiments/configs/cifar10_resnet56.py \
      --workdir=runs/cifar10_resnet56 --config.data_dir=/path/to/tensorflow_datasets

Writes <workdir>/config.json, <workdir>/metrics.jsonl (one JSON record per epoch) and
<workdir>/checkpoints/<step> (orbax; the initial point, every `checkpoint_every_epochs` epochs and
the last one). Rerunning the same command after an interruption resumes from the last checkpoint.
The batch is sharded over every visible device.
"""

import _common
from absl import flags, logging

_CONFIG, _WORKDIR, _PROGRESS = _common.define_flags(
  "Training config file (.py).", progress_help="Show a progress bar.")
_common.parse_flags()  # --help and bad flags answered before JAX is imported

import landscape_jax as lj
from landscape_jax.methods import training


def main(argv):
  if not flags.FLAGS["verbosity"].present:  # keep orbax's per-save INFO lines out of the bar
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  train_ds = _common.load(config.dataset, "train", data_dir=config.get("data_dir"),
                     subset=config.get("train_subset"))
  (test_ds,) = _common.load_splits(config, ("test",))
  model = _common.build_model(config, train_ds.num_classes)
  print(f"Training {config.model} on {config.dataset} ({len(train_ds)} images) with "
        f"{lj.make_mesh().size} device(s); workdir {_WORKDIR.value}.")
  _, records = training.train(model, train_ds, test_ds, config=config, workdir=_WORKDIR.value,
                              progress=_PROGRESS.value)
  if records:
    print(f"final test accuracy {records[-1].get('test_accuracy', float('nan')):.4f} "
          f"after {records[-1]['epoch']} epochs")


if __name__ == "__main__":
  _common.run(main)
