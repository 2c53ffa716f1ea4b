"""Garipov et al. 2018, CIFAR-10 curve between two vgg16 models.

VGG16 (no BN): max test error along the curve 6.94 -> 7.75 % (paper; endpoints -> curve).
Endpoints: two runs of experiments/train.py with configs/cifar10_vgg16.py (different seeds),
given as --config.endpoints=runs/a,runs/b (or as the config argument). Reference recipe: Bezier,
3 bends, 600 epochs, batch 128, SGD momentum 0.9, lr 0.015, wd 5e-4, crop + flip; evaluation at
61 points. Hours on one GPU.
Compute (estimate, A100/H100 class): two endpoints ~1 GPU-hour, the 600-epoch curve ~45 PFLOP
(~1.5 GPU-hours), the 61-point evaluation minutes: ~2.5 GPU-hours in all.
"""

from configs import defaults


def get_config(arg=None):
  return defaults.connect(
    dataset="cifar10", model="vgg16", model_kwargs={}, endpoints=arg or "",
    endpoint_epochs=200, epochs=600, learning_rate=0.015, weight_decay=5e-4, batch_size=128,
        augment=True,
    checkpoint_every=5, chunk_size=1, eval_batch_size=1000)
