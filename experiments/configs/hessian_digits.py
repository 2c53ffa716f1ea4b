"""Hessian of a small MLP trained on digits: spectrum, top eigenvalues, trace, ratio map.

Runs on a laptop CPU in a few minutes. Without ``--config.run`` the MLP is first trained into
``<workdir>/train`` (10 epochs, SGD); ``:quick`` shrinks every count for a smoke test.
"""

import ml_collections
from ml_collections import config_dict

from configs import defaults


def get_config(arg=None):
  quick = arg == "quick"
  if arg not in (None, "", "quick"):
    raise ValueError(f"Unknown hessian_digits option {arg!r}; use 'quick' or nothing.")
  c = ml_collections.ConfigDict()
  c.run = config_dict.placeholder(str)  # a training workdir (config.json + checkpoints/)
  c.train = defaults.train(dataset="digits", model="mlp",
                                    num_epochs=2 if quick else 10, batch_size=64,
                                    learning_rate=0.05, momentum=0.9)
  c.step = config_dict.placeholder(int)  # None: the latest checkpoint
  c.data_dir = config_dict.placeholder(str)
  c.split = "train"
  c.subset = config_dict.placeholder(int)  # None: the whole split
  c.batch_size = 512
  c.weights_only = True  # Li et al.: parameters with ndim > 1
  c.seed = 0
  c.top_k = 5
  c.num_steps = 30 if quick else 100
  c.trace_probes = 10 if quick else 100
  c.density_probes = 1 if quick else 3
  c.density_steps = 30 if quick else 100
  c.chunk_size = config_dict.placeholder(int)
  c.map_mode = config_dict.placeholder(str)
  c.ratio_map = ml_collections.ConfigDict()
  c.ratio_map.enabled = True
  c.ratio_map.x = (-1.0, 1.0, 5 if quick else 21)
  c.ratio_map.y = (-1.0, 1.0, 5 if quick else 21)
  c.ratio_map.num_steps = 10 if quick else 20
  c.ratio_map.subset = 256  # examples per point (Li et al. use a fixed subset too)
  c.ratio_map.seed = 0
  c.ratio_map.direction_seed = 0
  c.ratio_map.norm = "filter"
  c.ratio_map.ignore = "biasbn"
  return c
