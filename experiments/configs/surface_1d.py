"""1-D filter-normalised plot f(a) = L(t* + a d) around a checkpoint (Li et al. 2018, Fig. 4).

51 points on [-1, 1], train and test loss/accuracy over the whole splits, BatchNorm with the
centre's statistics. Several runs overlay in one figure. ``surface_1d.py:quick`` uses 11 points.
"""

from configs import defaults


def get_config(arg=None):
  return defaults.surface(mode="random", dim=1, x=(-1.0, 1.0, 11 if arg == "quick" else 51))
