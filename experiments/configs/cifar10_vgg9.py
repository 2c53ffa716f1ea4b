"""VGG-9 (with BatchNorm) on CIFAR-10: Li et al.'s (2018) small- vs large-batch experiment.

Their recipe for both batch sizes: SGD Nesterov 0.9, lr 0.1 divided by 10 after epochs 150, 225,
275 of 300, crop + flip, weight decay 5e-4 or 0, a checkpoint every epoch (their trajectories use
save_epoch=1). Options after the colon, comma-separated: ``bs8192`` (large batch), ``wd0`` (no
weight decay), ``nobn`` (VGG-9 without BatchNorm), e.g. ``cifar10_vgg9.py:bs8192,wd0``.
Paper test errors, batch 128 vs 8192: 7.37 % vs 11.07 % (wd 0), 6.00 % vs 10.19 % (wd 5e-4).
The last incomplete batch of each epoch is dropped (the reference keeps it).
Compute (estimate, one A100/H100-class GPU; cifar10_li2018.py explains it): VGG-9 is 0.34
GFLOP/image forward; ~0.7 GPU-hour per batch-128 run, ~0.5 per batch-8192 run, ~2.5 for the four.
"""

from configs import defaults


def get_config(arg=None):
  opts = {o.strip() for o in (arg or "").split(",") if o.strip()}
  unknown = opts - {"bs128", "bs8192", "wd0", "nobn"}
  if unknown:
    raise ValueError(f"Unknown cifar10_vgg9 options {sorted(unknown)}; use bs128, bs8192, wd0, "
                     "nobn.")
  return defaults.train(
    dataset="cifar10", model="vgg9" if "nobn" in opts else "vgg9_bn", num_epochs=300,
    batch_size=8192 if "bs8192" in opts else 128,
    optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
    weight_decay=0.0 if "wd0" in opts else 5e-4,
    schedule="step", lr_boundaries=(150, 225, 275), lr_decay=0.1,
    augment=True, augment_pad=4, augment_flip=True,
    checkpoint_every_epochs=1, eval_batch_size=1000, log_every_steps=50)
