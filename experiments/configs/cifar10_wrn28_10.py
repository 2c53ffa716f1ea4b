"""Wide-ResNet-28-10 on CIFAR-10 with Garipov et al.'s (2018) endpoint recipe.

SGD momentum 0.9, lr 0.1, weight decay 5e-4, batch 128, 200 epochs, Garipov schedule (factor 1
until 50 %, linear to 0.01 at 90 %), crop + flip. Reference test error: about 3.7 %.
Compute (estimate, cifar10_li2018.py explains it): 10.9 GFLOP/image forward, 200 epochs ~330 PFLOP:
~4 GPU-hours per endpoint at 25 TFLOP/s sustained (A100/H100 class).
"""

from configs import defaults


def get_config(arg=None):
  return defaults.train(
    dataset="cifar10", model=arg or "wrn28_10", num_epochs=200, batch_size=128,
    optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
    schedule="garipov", augment=True, augment_pad=4, augment_flip=True,
    checkpoint_every_epochs=10, eval_batch_size=1000, log_every_steps=50)
