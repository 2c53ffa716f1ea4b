"""Garipov et al. 2018 FGE on CIFAR-100 with vgg16.

Reference: fge.py of timgaripov/dnn-mode-connectivity.

Paper test accuracy (%) for 1/2/3 budgets of 200 epochs:
independent 72.5/74.8/75.6 vs FGE 74.6/76.1/76.6.
Start from a 200-epoch model of experiments/train.py (--config.start=runs/...), FGE with 4-epoch
cycles, lr_1 = 0.05, lr_2 = 1e-4, wd 5e-4, batch 128, crop + flip. Hours on one GPU.
Compute (estimate, A100/H100 class): three independent 200-epoch budgets ~1.5 GPU-hours plus the
FGE cycles (up to 400 more epochs) ~1: ~2.5 GPU-hours in all.
"""

from configs import defaults


def get_config(arg=None):
  return defaults.fge(
    dataset="cifar100", model="vgg16", model_kwargs={}, start=arg or "", budget_epochs=200,
    learning_rate=0.05, weight_decay=5e-4, batch_size=128, augment=True, seeds=(0, 1, 2),
    cycles=10,  # 40 epochs of FGE, as the reference run
    lr1=0.05, lr2=1e-4, eval_batch_size=1000)
