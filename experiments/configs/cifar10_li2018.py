"""Every CIFAR-10 network of Li et al. (2018), one name per run, with the paper's recipe.

  python experiments/train.py --config=experiments/configs/cifar10_li2018.py:wrn56_4 \
      --workdir=runs/cifar10_wrn56_4 --config.data_dir=/path/to/tensorflow_datasets

Recipe (their cifar10/main.py): SGD Nesterov momentum 0.9, lr 0.1 divided by 10
after epochs 150, 225, 275 of 300, batch 128 (8192 for ``vgg9_bs8192``), weight decay 5e-4 (0 for
the ``_wd0`` names), random crop (4-pixel zero padding) + horizontal flip, a checkpoint every 10
epochs (every epoch for VGG-9, whose trajectory figure uses every epoch).

Expected CIFAR-10 test error (paper) and compute of one training run. The compute is
an estimate, not a measurement: forward GFLOP per image from XLA's cost analysis of our models
(multiply-add = 2), training = 3 x forward x 300 epochs x 50,000 images at an assumed sustained
25 TFLOP/s on one A100/H100-class GPU, with a floor of about 8 s per epoch for the small models,
whose steps are bound by overheads rather than FLOPs.

  name                 paper test error      GFLOP/img   GPU-hours (estimate)
  vgg9_bs128           6.00 %                0.34        ~0.7
  vgg9_bs8192          10.19 %               0.34        ~0.5
  vgg9_bs128_wd0       7.37 %                0.34        ~0.7
  vgg9_bs8192_wd0      11.07 %               0.34        ~0.5
  resnet20             7.37 %                0.075       ~0.7
  resnet56             5.89 %                0.23        ~1
  resnet110            5.79 %                0.46        ~2
  resnet20_noshort     8.18 %                0.075       ~0.7
  resnet56_noshort     13.31 %               0.23        ~1
  resnet110_noshort    16.44 %               0.46        ~2
  wrn56_2              5.07 %                0.92        ~1
  wrn56_4              4.34 %                3.65        ~2
  wrn56_8              3.93 %                14.6        ~7
  densenet_cifar       (Fig. 5, no number in the paper)  0.25   ~2 (concatenation-bound)

Li et al.'s widths also come without shortcuts (``wrn56_4_noshort``, any ``wrn56_<k>[_noshort]``
is accepted). ``densenet_cifar`` is our DenseNet with Li et al.'s four blocks (6, 12, 24, 16
layers, growth 12); it is trained with the same recipe as the ResNets here. The surfaces of these
runs: experiments/configs/surface_cifar10.py (a 51 x 51 ResNet-56 surface is ~36 PFLOP of
evaluation, about 0.5-1 GPU-hour; WRN-56-8's is ~2.3 EFLOP, 6-25 GPU-hours).
"""

import re

from configs import defaults

_FIXED = ("vgg9_bs128", "vgg9_bs8192", "vgg9_bs128_wd0", "vgg9_bs8192_wd0", "densenet_cifar")
_PATTERN = re.compile(r"(resnet(20|56|110)|wrn56_\d+)(_noshort)?$")


def get_config(arg=None):
  name = arg or "resnet56"
  if name not in _FIXED and not _PATTERN.match(name):
    raise ValueError(f"Unknown Li et al. network {name!r}; use one of {', '.join(_FIXED)}, "
                     "resnet{20,56,110}[_noshort] or wrn56_<k>[_noshort].")
  vgg = name.startswith("vgg9")
  return defaults.train(
    dataset="cifar10", model="vgg9_bn" if vgg else name, num_epochs=300,
    batch_size=8192 if "bs8192" in name else 128,
    optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
    weight_decay=0.0 if name.endswith("_wd0") else 5e-4,
    schedule="step", lr_boundaries=(150, 225, 275), lr_decay=0.1,
    augment=True, augment_pad=4, augment_flip=True,
    checkpoint_every_epochs=1 if vgg else 10, eval_batch_size=1000, log_every_steps=50)
