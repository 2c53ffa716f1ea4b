"""ResNet-56 on CIFAR-10 with Li et al.'s (2018) recipe (their cifar10/main.py).

SGD with Nesterov momentum 0.9, lr 0.1 divided by 10 after epochs 150, 225 and 275 of 300, batch
128, weight decay 5e-4 (L2 on every parameter), random crop (4-pixel zero padding) + horizontal
flip. Paper test errors: ResNet-20/56/110 7.37/5.89/5.79 %, without shortcuts 8.18/13.31/16.44 %,
Wide-ResNet-56 k=2/4/8 5.07/4.34/3.93 %.

Pick another network of the paper after the colon:
``cifar10_resnet56.py:resnet20``, ``:resnet110``, ``:resnet56_noshort``, ``:wrn56_4`` ...
Checkpoints every 10 epochs (Li et al.'s save_epoch) give the PCA trajectory.
Compute (estimate, one A100/H100-class GPU; table in cifar10_li2018.py): ResNet-56 (0.23
GFLOP/image) ~1 GPU-hour; ResNet-20 ~0.7, ResNet-110 ~2, WRN-56 k=2/4/8 ~1/2/7 GPU-hours.
"""

from configs import defaults


def get_config(arg=None):
  return defaults.train(
    dataset="cifar10", model=arg or "resnet56", num_epochs=300, batch_size=128,
    optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="step", lr_boundaries=(150, 225, 275), lr_decay=0.1,
    augment=True, augment_pad=4, augment_flip=True,
    checkpoint_every_epochs=10, eval_batch_size=1000, log_every_steps=50)
