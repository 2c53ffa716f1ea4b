"""Garipov et al.'s ConvFC on the embedded 8x8 digits.

ConvFC has no BatchNorm and pools 8x8 inputs down to 1x1; plain SGD barely moves it in a few
epochs on digits, so this fast config uses Adam (lr 1e-3, cosine). For CIFAR-10 use Garipov et
al.'s SGD recipe (momentum 0.9, lr 0.05, wd 5e-4, `schedule="garipov"`).
"""

from configs import defaults


def get_config(arg=None):
  return defaults.train(
    dataset="digits", model=arg or "convfc", num_epochs=12, batch_size=64,
    optimizer="adam", learning_rate=1e-3, weight_decay=0.0,
    schedule="cosine", augment=False, checkpoint_every_epochs=1, eval_batch_size=512,
    log_every_steps=10)
