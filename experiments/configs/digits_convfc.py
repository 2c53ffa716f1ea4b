"""Garipov et al.'s ConvFC on the embedded 8x8 digits with their schedule (scaled)."""

from landscape_jax.training import default_config


def get_config(arg=None):
  return default_config(
    dataset="digits", model=arg or "convfc", num_epochs=12, batch_size=64,
    optimizer="sgd", learning_rate=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
    schedule="garipov", augment=False, checkpoint_every_epochs=1, eval_batch_size=512,
    log_every_steps=10)
