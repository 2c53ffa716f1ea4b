"""experiments/sharpness_study.py on digits: 24 small models trained to the same train loss.

One-hidden-layer MLPs on the full grid batch size x learning rate x weight decay x width (16), the
deeper MLPs (``depths[1:]``) at the first width and weight decay for every batch size and learning
rate (4), and ResNet-8 with and without shortcuts at two batch sizes (4); every one trained by SGD
(momentum 0.9) until its train cross-entropy is <= ``target_loss``. Every hyperparameter thus
varies within groups of models that agree on all the others (Jiang et al.'s granulated tau).
Locked: a misspelt field is refused.
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.batch_sizes = (32, 2048)              # 2048 > 1348 train images: full-batch GD
  c.learning_rates = (0.03, 0.1)
  c.weight_decays = (0.0, 5e-4)
  c.widths = (32, 128)                    # hidden units per MLP layer
  c.depths = (1, 2)                       # hidden layers
  c.resnet_width = 0.25                   # ResNet-8 with / without shortcuts (BatchNorm)
  c.resnet_batch_sizes = (32, 2048)
  c.resnet_learning_rate = 0.05
  c.target_loss = 0.1                     # every model stops at this train loss
  c.max_steps = 20_000
  c.check_every = 25
  c.seed = 0
  c.measure_examples = 256                # first examples of the train split
  c.measure_batch_size = 128              # worst case: per batch, then averaged
  c.tiny = False                          # smoke-test sizes (see sharpness_study.py --tiny)
  c.lock()
  return c
