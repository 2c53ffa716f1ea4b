"""Wide-ResNet-16-4 on the embedded 8x8 digits with Garipov et al.'s schedule (scaled)."""

from configs import defaults


def get_config(arg=None):
  return defaults.train(
    dataset="digits", model=arg or "wrn16_4", num_epochs=10, batch_size=64,
    optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
    schedule="garipov", augment=False, checkpoint_every_epochs=1, eval_batch_size=512,
    log_every_steps=10)
