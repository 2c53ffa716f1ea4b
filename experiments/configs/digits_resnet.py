"""ResNet-20 on the embedded 8x8 digits with Li et al.'s recipe scaled to 12 epochs.

SGD Nesterov 0.9, lr 0.1 divided by 10 at epochs 6, 9, 11 (Li et al.: 150, 225, 275 of 300),
batch 64, weight decay 5e-4, no augmentation (crops and flips do not suit 8x8 digits).
A model name after the colon picks another CIFAR ResNet, e.g. ``digits_resnet.py:resnet8`` or
``digits_resnet.py:resnet56_noshort``.
"""

from configs import defaults


def get_config(arg=None):
  return defaults.train(
    dataset="digits", model=arg or "resnet20", num_epochs=12, batch_size=64,
    optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="step", lr_boundaries=(6, 9, 11), lr_decay=0.1, augment=False,
    checkpoint_every_epochs=1, eval_batch_size=512, log_every_steps=10)
