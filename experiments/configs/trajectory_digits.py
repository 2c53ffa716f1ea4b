"""Trajectory of an MLP trained on digits in its PCA plane (Li et al. 2018, Sec. 7), on a CPU.

Trains 20 epochs of SGD (a checkpoint every epoch) unless ``--config.run`` names a finished run,
then a 21 x 21 loss grid over the PCA plane. ``:quick`` shrinks it for a smoke test.
"""

import ml_collections
from ml_collections import config_dict

from configs import defaults


def get_config(arg=None):
  quick = arg == "quick"
  if arg not in (None, "", "quick"):
    raise ValueError(f"Unknown trajectory_digits option {arg!r}; use 'quick' or nothing.")
  c = ml_collections.ConfigDict()
  c.run = config_dict.placeholder(str)  # a training workdir with per-epoch checkpoints
  c.train = defaults.train(dataset="digits", model="mlp",
                                    num_epochs=4 if quick else 20, batch_size=64,
                                    learning_rate=0.05, momentum=0.9, checkpoint_every_epochs=1)
  c.data_dir = config_dict.placeholder(str)
  c.ignore = ""  # "biasbn": biases and BatchNorm parameters left out of the PCA (Li et al. option)
  c.num_points = 7 if quick else 21
  c.log_contours = True  # the loss spans three decades
  c.margin = 0.2  # grid extends the path's bounding box by this fraction on each side
  c.splits = ("train",)
  c.eval_subset = config_dict.placeholder(int)
  c.eval_batch_size = 1000
  c.chunk_size = config_dict.placeholder(int)
  c.map_mode = config_dict.placeholder(str)
  return c
