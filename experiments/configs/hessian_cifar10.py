"""Hessian of a CIFAR-10 checkpoint (e.g. ResNet-56 from configs/cifar10_resnet56.py), full scale.

  python experiments/hessian.py --config=experiments/configs/hessian_cifar10.py \
      --config.run=runs/cifar10_resnet56 --workdir=runs/cifar10_resnet56_hessian

Eigenvalues, trace and density over 5000 training images (PyHessian uses a few thousand; pass
``--config.subset=None`` for the whole split), weights with ndim > 1, inference-mode BatchNorm.
The ratio map is 21 x 21 on [-1, 1]^2 with 20 Lanczos steps per point over 1000 images (Li et al.
2018, Fig. 7 style; a GPU or TPU is needed: about 20 x 2 HVP passes per point).
Compute (estimate, one A100/H100-class GPU, ResNet-56): the ratio map is 441 x 20 HVPs over
1000 images (~12 PFLOP, 0.2-0.5 GPU-hour); eigenvalues, trace and density take minutes.
"""

import ml_collections
from ml_collections import config_dict

from configs import defaults


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.run = config_dict.placeholder(str)  # required for full scale: a training workdir
  # Used only without --config.run (Li et al.'s ResNet-56 recipe: 300 epochs, a GPU/TPU job).
  c.train = defaults.train(
    dataset="cifar10", model="resnet56", num_epochs=300, batch_size=128, learning_rate=0.1,
    momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="step",
    lr_boundaries=(150, 225, 275), augment=True)
  c.step = config_dict.placeholder(int)
  c.data_dir = config_dict.placeholder(str)
  c.split = "train"
  c.subset = 5000
  c.batch_size = 500
  c.weights_only = True
  c.seed = 0
  c.top_k = 5
  c.num_steps = 100
  c.trace_probes = 100
  c.density_probes = 3
  c.density_steps = 100
  c.chunk_size = config_dict.placeholder(int)
  c.map_mode = config_dict.placeholder(str)
  c.ratio_map = ml_collections.ConfigDict()
  c.ratio_map.enabled = True
  c.ratio_map.x = (-1.0, 1.0, 21)
  c.ratio_map.y = (-1.0, 1.0, 21)
  c.ratio_map.num_steps = 20
  c.ratio_map.subset = 1000
  c.ratio_map.seed = 0
  c.ratio_map.direction_seed = 0
  c.ratio_map.norm = "filter"
  c.ratio_map.ignore = "biasbn"
  return c
