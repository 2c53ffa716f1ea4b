"""Garipov et al. 2018 FGE on CIFAR-100 with preresnet164.

Reference: fge.py of timgaripov/dnn-mode-connectivity.

Paper test accuracy (%) for 1/2/3 budgets of 200 epochs:
independent 78.4/80.5/81.6 vs FGE 80.3/81.3/81.7.
Start from a 200-epoch model of experiments/train.py (--config.start=runs/...), FGE with 4-epoch
cycles, lr_1 = 0.05, lr_2 = 1e-4 (REFERENCES.md), wd 3e-4, batch 128, crop + flip. Hours on one GPU.
Compute (estimate, A100/H100 class): three independent budgets ~5 GPU-hours plus the FGE cycles
~3: ~8 GPU-hours in all.
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.dataset = "cifar100"
  c.data_dir = None
  c.model = "preresnet164"
  c.model_kwargs = {}
  c.start = arg or ""
  c.budget_epochs = 200
  c.lr = 0.1
  c.weight_decay = 3e-4
  c.batch_size = 128
  c.augment = True
  c.seeds = (0, 1, 2)
  c.num_independent = 3
  c.cycles = 10  # 40 epochs of FGE, as the reference run
  c.cycle_epochs = 4
  c.lr1 = 0.05
  c.lr2 = 1e-4
  c.eval_batch_size = 1000
  c.bn_batch_size = 128
  return c
