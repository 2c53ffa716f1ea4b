"""Garipov et al. 2018 FGE on CIFAR-100 with preresnet164.

Reference: fge.py of timgaripov/dnn-mode-connectivity.

Paper test accuracy (%) for 1/2/3 budgets of 200 epochs:
independent 78.4/80.5/81.6 vs FGE 80.3/81.3/81.7.
Start from a 200-epoch model of experiments/train.py (--config.start=runs/...), FGE with 4-epoch
cycles, lr_1 = 0.05, lr_2 = 1e-4, wd 3e-4, batch 128, crop + flip. Hours on one GPU.
Compute (estimate, A100/H100 class): three independent budgets ~5 GPU-hours plus the FGE cycles
~3: ~8 GPU-hours in all.
"""

from configs import defaults


def get_config(arg=None):
  return defaults.fge(
    dataset="cifar100", model="preresnet164", model_kwargs={}, start=arg or "", budget_epochs=200,
    learning_rate=0.1, weight_decay=3e-4, batch_size=128, augment=True, seeds=(0, 1, 2),
    cycles=10,  # 40 epochs of FGE, as the reference run
    lr1=0.05, lr2=1e-4, eval_batch_size=1000)
