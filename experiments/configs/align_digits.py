"""Weight matching of two independently trained MLPs on digits (Ainsworth et al. 2023, Fig. 2).

Two models from different seeds (initialisation and minibatch order), Adam; loss and accuracy
along the straight line before and after aligning the second to the first, 25 alphas.
``align_digits.py:quick`` trains for fewer steps and uses 11 alphas.
"""

import ml_collections


def get_config(arg=None):
  quick = arg == "quick"
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.model = "mlp"  # any bundled model without BatchNorm (mlp, mlp_small, vgg9, convfc)
  c.model_kwargs = {}
  c.seeds = (0, 1)
  c.steps = 400 if quick else 2000
  c.batch_size = 128
  c.learning_rate = 3e-3
  c.num_alphas = 11 if quick else 25
  c.matching_seed = 0
  c.max_iter = 100
  return c
