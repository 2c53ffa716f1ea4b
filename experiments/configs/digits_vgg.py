"""VGG-9 with BatchNorm (Li et al.) on the embedded 8x8 digits; ``digits_vgg.py:vgg16`` etc."""

from configs import defaults


def get_config(arg=None):
  return defaults.train(
    dataset="digits", model=arg or "vgg9_bn", num_epochs=12, batch_size=64,
    optimizer="sgd", learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="step", lr_boundaries=(6, 9, 11), lr_decay=0.1, augment=False,
    checkpoint_every_epochs=1, eval_batch_size=512, log_every_steps=10)
