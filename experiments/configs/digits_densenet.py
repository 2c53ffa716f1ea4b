"""DenseNet-BC (depth 40, growth 12) on the embedded 8x8 digits; ``digits_densenet.py:<name>``."""

from configs import defaults


def get_config(arg=None):
  return defaults.train(
    dataset="digits", model=arg or "densenet_bc_40_12", num_epochs=10, batch_size=64,
    optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
    schedule="cosine", augment=False, checkpoint_every_epochs=1, eval_batch_size=512,
    log_every_steps=10)
