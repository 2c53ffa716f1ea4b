"""Trajectory of a CIFAR-10 network in its PCA plane (Li et al. 2018, Sec. 7, Fig. 9), full scale.

  python experiments/trajectory.py --config=experiments/configs/trajectory_cifar10.py \
      --workdir=runs/cifar10_resnet56_trajectory   # trains 300 epochs first (GPU/TPU)
  python experiments/trajectory.py --config=experiments/configs/trajectory_cifar10.py \
      --config.run=runs/cifar10_resnet56 --workdir=...   # reuse a run with per-epoch snapshots

Li et al.'s recipe (SGD Nesterov 0.9, lr 0.1 / 10 at epochs 150, 225, 275 of 300, batch 128,
weight decay 5e-4, crop + flip), a checkpoint every epoch (301 snapshots of ResNet-56: about
1 GB), ``ignore="biasbn"``, and a 51 x 51 grid of the training loss over the PCA plane.
``:<model>`` picks another model (e.g. ``:resnet20``).
Compute (estimate, one A100/H100-class GPU, ResNet-56): the 300-epoch training ~1 GPU-hour, the
51 x 51 grid over 50,000 training images ~30 PFLOP (~0.5 GPU-hour), 1 GB of checkpoints.
"""

import ml_collections
from ml_collections import config_dict

from configs import defaults


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.run = config_dict.placeholder(str)
  c.train = defaults.train(
    dataset="cifar10", model=arg or "resnet56", num_epochs=300, batch_size=128,
    learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="step",
    lr_boundaries=(150, 225, 275), augment=True, checkpoint_every_epochs=1,
    eval_batch_size=1000)
  c.data_dir = config_dict.placeholder(str)
  c.ignore = "biasbn"
  c.num_points = 51
  c.log_contours = False  # Li et al.: levels 0.1, 0.6, ...
  c.margin = 0.2
  c.splits = ("train",)
  c.eval_subset = config_dict.placeholder(int)
  c.eval_batch_size = 1000
  c.chunk_size = config_dict.placeholder(int)
  c.map_mode = config_dict.placeholder(str)
  return c
