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

# Submodules (plotting and report use matplotlib's Figure API only: no pyplot, no display).
from landscape_jax import (
  adaptive,
  autotune,
  batchnorm,
  checkpoints,
  curves,
  engine,
  ensembles,
  fileio,
  fused,
  hessian,
  identity,
  pca,
  permutations,
  plotting,
  report,
  sharding,
  store,
  training,
)

# Adaptive surfaces and paths: quadtree / bisection refinement where the interpolation error is.
from landscape_jax.adaptive import (
  AdaptiveResult,
  adaptive_path,
  adaptive_surface,
  refine_path,
  refine_surface,
)

# Inference-time speed-ups: BatchNorm folded into convolutions, batch-size selection.
from landscape_jax.autotune import choose_batch_size

# Garipov et al. 2018: BatchNorm along curves, curves and planes, ensembles.
from landscape_jax.batchnorm import make_recompute_metric_fn, recompute_batch_stats
from landscape_jax.checkpoints import load_trajectory, load_variables
from landscape_jax.curves import (
  CurveTrainState,
  Plane,
  bend_count,
  bezier_coefficients,
  curve_coefficients,
  curve_in_plane,
  curve_loss,
  curve_lr_schedule,
  curve_point,
  curve_summary,
  curve_train_step,
  evaluate_curve,
  evaluate_plane,
  init_curve,
  join_curve,
  plane_basis,
  plane_grid_point,
  polychain_coefficients,
  project_to_plane,
  split_curve,
  train_curve,
)

# Li et al. 2018: directions, paths and surfaces.
from landscape_jax.directions import (
  directions_from_models,
  normalize_directions,
  orthogonalize,
  random_direction,
  random_directions,
)

# The point-evaluation engine behind every surface, path and curve, and exact identities.
from landscape_jax.engine import evaluate_points
from landscape_jax.ensembles import (
  cyclic_schedule,
  evaluate_ensemble,
  fast_geometric_ensemble,
  fge_snapshot_epochs,
  stack_members,
  swa_average,
  train_sgd,
)

# Error-controlled surfaces (opt-in): growing subsets, anchored control variates.
from landscape_jax.error_control import anchor_plane, make_error_controlled_metric_fn

# BatchNorm folding at inference (make_metric_fn folds by default).
from landscape_jax.fused import fuse_batchnorm

# Curvature (PyHessian conventions) and trajectory PCA.
from landscape_jax.hessian import (
  HessianEigenvalues,
  SpectralDensity,
  SplitBatches,
  TraceEstimate,
  density_from_quadrature,
  hessian_eigenvalues,
  hessian_trace,
  hvp,
  lanczos,
  make_batches,
  make_curvature_metric_fn,
  spectral_density,
)
from landscape_jax.identity import IdentityError, callable_identity, tree_digest
from landscape_jax.paths import (
  barrier,
  barriers,
  interpolate,
  linear_path,
  plane_point,
  plane_point_fn,
)
from landscape_jax.pca import PCADirections, pca_directions, project_trajectory

# Permutation symmetry (Brea et al. 2019; Ainsworth et al. 2023).
from landscape_jax.permutations import (
  PermAxis,
  PermutationSpec,
  WeightMatchingResult,
  apply_permutation,
  compose_permutations,
  identity_permutation,
  invert_permutation,
  mlp_spec,
  random_permutation,
  spec_for,
  spec_from_model,
  swap_path,
  swap_path_metrics,
  swap_units,
  weight_matching,
)
from landscape_jax.report import write_report
from landscape_jax.sharding import initialize_distributed, is_main_process, make_mesh
from landscape_jax.surface import benchmark_map_modes, surface_grid, surface_points

# Training and checkpoints.
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
