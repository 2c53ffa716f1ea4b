"""Garipov et al. 2018, CIFAR-10 curve between two preresnet164 models.

PreResNet164 (BN): max test error 4.75 -> 4.97 % (paper); statistics recomputed per t.
Endpoints: two runs of experiments/train.py with configs/cifar10_preresnet164.py (different seeds),
given as --config.endpoints=runs/a,runs/b (or as the config argument). Reference recipe: Bezier,
3 bends, 600 epochs, batch 128, SGD momentum 0.9, lr 0.03, wd 3e-4, crop + flip; evaluation at
61 points. Hours on one GPU.
Compute (estimate, A100/H100 class): two endpoints ~3 GPU-hours, the 600-epoch curve ~4, the
61-point evaluation with BN recomputation ~0.2: ~7 GPU-hours in all.
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.dataset = "cifar10"
  c.data_dir = None
  c.model = "preresnet164"
  c.model_kwargs = {}
  c.endpoints = arg or ""
  c.endpoint_seeds = (1, 2)
  c.endpoint_epochs = 200
  c.endpoint_lr = 0.05
  c.num_bends = 3
  c.kind = "bezier"
  c.epochs = 600
  c.lr = 0.03
  c.momentum = 0.9
  c.weight_decay = 3e-4
  c.batch_size = 128
  c.num_ts = 1
  c.augment = True
  c.seed = 0
  c.checkpoint_every = 5
  c.num_points = 61
  c.chunk_size = 1
  c.eval_batch_size = 1000
  c.bn_batch_size = 128
  c.plane_points = 21
  c.plane_min = -0.2
  c.plane_max = 1.2
  c.plane_metrics = ("train_loss", "test_loss")
  return c
