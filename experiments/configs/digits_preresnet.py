"""Pre-activation ResNet-20 on the embedded 8x8 digits with Garipov et al.'s schedule (scaled).

SGD momentum 0.9, lr 0.1 (factor 1 until half of training, linear to 0.01 at 90 %), weight decay
3e-4 as Garipov et al. use for PreResNet. ``digits_preresnet.py:preresnet110`` picks another.
"""

from configs import defaults


def get_config(arg=None):
  return defaults.train(
    dataset="digits", model=arg or "preresnet20", num_epochs=12, batch_size=64,
    optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=False, weight_decay=3e-4,
    schedule="garipov", augment=False, checkpoint_every_epochs=1, eval_batch_size=512,
    log_every_steps=10)
