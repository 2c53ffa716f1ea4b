"""Garipov et al. 2018, CIFAR-10 curve between two preresnet164 models.

PreResNet164 (BN): max test error 4.75 -> 4.97 % (paper); statistics recomputed per t.
Endpoints: two runs of experiments/train.py with configs/cifar10_preresnet164.py (different seeds),
given as --config.endpoints=runs/a,runs/b (or as the config argument). Reference recipe: Bezier,
3 bends, 600 epochs, batch 128, SGD momentum 0.9, lr 0.03, wd 3e-4, crop + flip; evaluation at
61 points. Hours on one GPU.
Compute (estimate, A100/H100 class): two endpoints ~3 GPU-hours, the 600-epoch curve ~4, the
61-point evaluation with BN recomputation ~0.2: ~7 GPU-hours in all.
"""

from configs import defaults


def get_config(arg=None):
  return defaults.connect(
    dataset="cifar10", model="preresnet164", model_kwargs={}, endpoints=arg or "",
    endpoint_epochs=200, epochs=600, learning_rate=0.03, weight_decay=3e-4, batch_size=128,
        augment=True,
    checkpoint_every=5, chunk_size=1, eval_batch_size=1000)
