"""FGE on the embedded 8x8 digits with a small MLP: about a minute on a CPU.

A budget is 20 epochs; FGE adds 4-epoch cycles (lr 0.2 -> 1e-3 -> 0.2) to one trained model.
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.data_dir = None
  c.model = arg or "mlp"
  c.model_kwargs = {"features": (32,)} if c.model == "mlp" else {}
  c.start = ""  # a training workdir to start from; empty: train the first model here
  c.budget_epochs = 20
  c.lr = 0.05
  c.weight_decay = 5e-4
  c.batch_size = 64
  c.augment = False
  c.seeds = (0, 1, 2, 3)
  c.num_independent = 3
  c.cycles = 6
  c.cycle_epochs = 4
  c.lr1 = 0.2
  c.lr2 = 1e-3
  c.eval_batch_size = 512
  c.bn_batch_size = 128
  return c
