"""landscape-jax: loss landscapes of neural networks as pure JAX functions over pytrees.

Implements Li et al. 2018 (filter-normalised surfaces), Garipov et al. 2018 (mode connectivity,
fast geometric ensembling), Brea et al. 2019 / Ainsworth et al. 2023 (permutation symmetry and
weight matching) and PyHessian-style curvature. The public API is re-exported here.
"""

from landscape_jax import data, models, trees
from landscape_jax.data import Dataset, load
from landscape_jax.evaluation import (
  cross_entropy,
  device_split,
  evaluate,
  evaluate_split,
  make_loss_fn,
  make_metric_fn,
)
from landscape_jax.models import get_model, model_names

__version__ = "0.1.0"

# Li et al. 2018 surfaces: directions, paths, grids, resumable stores, sharding helpers.
from landscape_jax import sharding, store
from landscape_jax.directions import (
  directions_from_models,
  normalize_directions,
  orthogonalize,
  random_direction,
  random_directions,
)
from landscape_jax.paths import barrier, barriers, interpolate, linear_path, plane_point
from landscape_jax.sharding import initialize_distributed, is_main_process, make_mesh
from landscape_jax.surface import surface_grid
# Training and checkpoints (training.py, checkpoints.py).
from landscape_jax import checkpoints, training
from landscape_jax.checkpoints import load_trajectory, load_variables
from landscape_jax.training import (
  TrainState,
  create_train_state,
  eval_step,
  garipov_schedule,
  make_optimizer,
  step_schedule,
  train,
  train_step,
)
