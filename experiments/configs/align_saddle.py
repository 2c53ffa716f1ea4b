"""Permutation saddles of a small MLP on digits (Brea et al. 2019).

A one-hidden-layer MLP (16 units, about 1.2k parameters, so that the dense Hessian is cheap) is
trained with Adam; the loss is evaluated along the swap paths of several unit pairs, the gradient
and the smallest Hessian eigenvalues are computed at each permutation point (path midpoint), and a
quadratic Bezier curve between theta and its swapped copy is trained to find the low-loss valley.
``align_saddle.py:quick`` uses fewer steps and points.
"""

import ml_collections


def get_config(arg=None):
  quick = arg == "quick"
  c = ml_collections.ConfigDict()
  c.dataset = "digits"
  c.features = (16,)
  c.seed = 0
  c.steps = 1000 if quick else 4000
  c.batch_size = 256
  c.learning_rate = 3e-3
  c.layer = "Dense_0"
  c.pairs = ((0, 1), (2, 7), (3, 11), (5, 13))
  c.num_s = 21 if quick else 41
  c.num_eigenvalues = 5  # smallest eigenvalues of the dense Hessian at each permutation point
  c.lanczos_steps = 100
  # landscape_jax.core.hessian.hessian_eigenvalues, compared with the dense one
  c.curve_steps = 300 if quick else 1500  # Bezier valley between theta and its swapped copy
  c.curve_learning_rate = 1e-2
  c.curve_num_ts = 4
  return c
