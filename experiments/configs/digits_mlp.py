"""MLP (64-64) on the embedded 8x8 digits: seconds on a laptop CPU, about 97 % test accuracy."""

from configs import defaults


def get_config(arg=None):
  return defaults.train(
    dataset="digits", model=arg or "mlp", num_epochs=20, batch_size=64,
    optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="cosine", augment=False, checkpoint_every_epochs=1, eval_batch_size=512,
    log_every_steps=10)
