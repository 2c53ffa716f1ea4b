"""landscape-jax: loss landscapes of neural networks as pure JAX functions over pytrees.

Implements Li et al. 2018 (filter-normalised surfaces), Garipov et al. 2018 (mode connectivity,
fast geometric ensembling), Brea et al. 2019 / Ainsworth et al. 2023 (permutation symmetry and
weight matching), PyHessian-style curvature (Yao et al. 2020) and sharpness measures checked
against function-preserving reparametrisations (Keskar et al. 2017; Dinh et al. 2017; Jiang et al.
2020; Andriushchenko et al. 2023).

The package is layered; each layer imports only the layers below it:

* ``backends``: optional speed-ups for one platform (``backends.cpu``: oneDNN convolutions,
  convolution canonicalisation, the jaxpr rewriter, batch-size autotuning);
* ``core``: framework-agnostic maths over parameter pytrees (trees, directions, paths, the
  point-evaluation engine and its store, surfaces, curves, curvature, PCA, permutations);
* ``adapters`` and ``models``: what knows models and data (metric and loss functions, BatchNorm
  recompute and folding, error control, datasets, the bundled Flax zoo);
* ``methods``: what trains (optimisers and schedules, the training loop, run directories,
  checkpoints, curve training, ensembles);
* ``plotting``: figures and the HTML report.

Everything listed in ``__all__`` is importable from here, and ``landscape_jax.<module>`` reaches
each module by its short name (``lj.store``, ``lj.training``, ...). Both are imported on first
use, so ``import landscape_jax`` itself loads neither matplotlib nor orbax nor scipy.
"""

from __future__ import annotations

import importlib
from typing import Any

from landscape_jax.backends.cpu.malloc import apply_from_environment as _malloc_from_environment

__version__ = "0.1.0"

# With LANDSCAPE_JAX_KEEP_FREED_MEMORY=1, freed XLA:CPU buffers stay in the heap for the next
# call (glibc; `backends.cpu.malloc`): set before JAX's threads first allocate.
_malloc_from_environment()

# Public name -> the module (relative to this package) that defines it.
_NAMES: dict[str, str] = {
  # core.identity
  "callable_identity": "core.identity",
  "IdentityError": "core.identity",
  "tree_digest": "core.identity",
  # core.engine
  "EngineOptions": "core.engine",
  "StreamedMetric": "core.streaming",
  "evaluate_points": "core.engine",
  # core.directions
  "directions_from_models": "core.directions",
  "normalize_directions": "core.directions",
  "orthogonalize": "core.directions",
  "output_axes": "core.directions",
  "random_direction": "core.directions",
  "random_directions": "core.directions",
  # core.paths
  "barrier": "core.paths",
  "barriers": "core.paths",
  "interpolate": "core.paths",
  "linear_path": "core.paths",
  "plane_point": "core.paths",
  "plane_point_fn": "core.paths",
  # core.surface
  "benchmark_map_modes": "core.surface",
  "surface_grid": "core.surface",
  "surface_points": "core.surface",
  # core.adaptive
  "adaptive_path": "core.adaptive",
  "adaptive_surface": "core.adaptive",
  "AdaptiveResult": "core.adaptive",
  "Refinement": "core.adaptive",
  "refine_path": "core.adaptive",
  "refine_surface": "core.adaptive",
  # core.curves
  "bend_count": "core.curves",
  "bezier_coefficients": "core.curves",
  "curve_coefficients": "core.curves",
  "curve_in_plane": "core.curves",
  "curve_loss": "core.curves",
  "curve_point": "core.curves",
  "curve_summary": "core.curves",
  "evaluate_curve": "core.curves",
  "evaluate_plane": "core.curves",
  "init_curve": "core.curves",
  "join_curve": "core.curves",
  "Plane": "core.curves",
  "plane_basis": "core.curves",
  "plane_grid_point": "core.curves",
  "polychain_coefficients": "core.curves",
  "project_to_plane": "core.curves",
  "split_curve": "core.curves",
  # core.splits
  "device_split": "core.splits",
  "DeviceSplit": "core.splits",
  "make_batches": "core.splits",
  # core.precision
  "matmul_precision": "core.precision",
  # core.hessian
  "density_from_quadrature": "core.krylov",
  "DensitySmoothing": "core.krylov",
  "hessian_eigenvalues": "core.hessian",
  "hessian_trace": "core.hessian",
  "HessianEigenvalues": "core.hessian",
  "hvp": "core.hessian",
  "lanczos": "core.krylov",
  "make_curvature_metric_fn": "core.hessian",
  "spectral_density": "core.hessian",
  "SpectralDensity": "core.hessian",
  "TraceEstimate": "core.hessian",
  # core.sharpness
  "Ascent": "core.sharpness",
  "average_sharpness": "core.sharpness",
  "average_sharpness_metric": "core.sharpness",
  "Bracket": "core.sharpness",
  "filter_normalized_rise": "core.sharpness",
  "fisher_rao_norm": "core.sharpness",
  "hessian_sharpness": "core.sharpness",
  "perturbation_scale": "core.sharpness",
  "SharpnessResult": "core.sharpness",
  "sigma_search": "core.sharpness",
  "sigma_search_metric": "core.sharpness",
  "worst_case_sharpness": "core.sharpness",
  # core.reparam
  "random_rescaling": "core.reparam",
  "rescale_before_batchnorm": "core.reparam",
  "rescale_relu_layers": "core.reparam",
  # core.pca
  "pca_directions": "core.pca",
  "PCADirections": "core.pca",
  "project_trajectory": "core.pca",
  # core.permutations
  "apply_permutation": "core.permutations",
  "compose_permutations": "core.permutations",
  "identity_permutation": "core.permutations",
  "invert_permutation": "core.permutations",
  "mlp_spec": "core.permutations",
  "PermAxis": "core.permutations",
  "PermutationSpec": "core.permutations",
  "random_permutation": "core.permutations",
  "spec_from_model": "core.permutations",
  "swap_path": "core.permutations",
  "swap_path_metrics": "core.permutations",
  "swap_units": "core.permutations",
  "weight_matching": "core.permutations",
  "WeightMatchingResult": "core.permutations",
  # core.sharding
  "initialize_distributed": "core.sharding",
  "is_main_process": "core.sharding",
  "make_mesh": "core.sharding",
  "partitioned_params": "adapters.frameworks",
  "MeshRoles": "core.sharding",
  "shard_params": "core.sharding",
  # adapters.data
  "Dataset": "adapters.data",
  "load": "adapters.data",
  # adapters.evaluation
  "cross_entropy": "adapters.evaluation",
  "evaluate": "adapters.evaluation",
  "evaluate_split": "adapters.evaluation",
  "make_loss_fn": "adapters.evaluation",
  "make_metric_fn": "adapters.evaluation",
  # adapters.losses
  "CROSS_ENTROPY": "adapters.losses",
  "Loss": "adapters.losses",
  "MSE": "adapters.losses",
  "NORMALIZED_CROSS_ENTROPY": "adapters.losses",
  "TOKEN_CROSS_ENTROPY": "adapters.losses",
  # adapters.frameworks
  "BatchNormHooks": "adapters.frameworks",
  "from_equinox": "adapters.frameworks",
  "from_nnx": "adapters.frameworks",
  "inference_fn": "adapters.frameworks",
  "Model": "adapters.frameworks",
  # adapters.text
  "char_splits": "adapters.text",
  "load_text": "adapters.text",
  # models.char_transformer
  "char_transformer_apply": "models.char_transformer",
  "init_char_transformer": "models.char_transformer",
  # adapters.batchnorm
  "make_recompute_metric_fn": "adapters.batchnorm",
  "recompute_batch_stats": "adapters.batchnorm",
  # adapters.li2018_h5
  "read_directions_h5": "adapters.li2018_h5",
  "read_surface_h5": "adapters.li2018_h5",
  "write_directions_h5": "adapters.li2018_h5",
  "write_surface_h5": "adapters.li2018_h5",
  # adapters.torch_weights
  "load_torch_weights": "adapters.torch_weights",
  "read_safetensors": "adapters.torch_weights",
  "read_torch_state_dict": "adapters.torch_weights",
  "torch_to_flax": "adapters.torch_weights",
  "write_safetensors": "adapters.torch_weights",
  # adapters.folding
  "fuse_batchnorm": "adapters.folding",
  # adapters.error_control
  "anchor_plane": "adapters.error_control",
  "make_error_controlled_metric_fn": "adapters.error_control",
  # models
  "get_model": "models",
  "model_names": "models",
  # models.specs
  "spec_for": "models.specs",
  # backends.cpu.autotune
  "choose_batch_size": "backends.cpu.autotune",
  # methods.schedules
  "curve_lr_schedule": "methods.schedules",
  "cyclic_schedule": "methods.schedules",
  "garipov_schedule": "methods.schedules",
  "make_optimizer": "methods.schedules",
  "step_schedule": "methods.schedules",
  # methods.loop
  "RunDir": "methods.loop",
  "run_epochs": "methods.loop",
  "TrainSettings": "methods.loop",
  # methods.training
  "create_train_state": "methods.training",
  "evaluate_state": "methods.training",
  "train": "methods.training",
  "TrainState": "methods.training",
  # methods.rundir
  "load_run": "methods.rundir",
  "read_config": "methods.rundir",
  "read_metrics": "methods.rundir",
  # methods.checkpoints
  "load_trajectory": "methods.checkpoints",
  "load_variables": "methods.checkpoints",
  # methods.curve_training
  "CurveSettings": "methods.curve_training",
  "CurveTrainState": "methods.curve_training",
  "train_curve": "methods.curve_training",
  # methods.ensembles
  "evaluate_ensemble": "methods.ensembles",
  "fast_geometric_ensemble": "methods.ensembles",
  "fge_snapshot_epochs": "methods.ensembles",
  "FGESettings": "methods.ensembles",
  "stack_members": "methods.ensembles",
  "swa_average": "methods.ensembles",
  "train_sgd": "methods.ensembles",
  # plotting.report
  "write_report": "plotting.report",
}

# Short module names -> their place in the layers.
_MODULES: dict[str, str] = {
  "core": "core",
  "adapters": "adapters",
  "methods": "methods",
  "backends": "backends",
  "models": "models",
  "plotting": "plotting",
  "trees": "core.trees",
  "identity": "core.identity",
  "fileio": "core.fileio",
  "store": "core.store",
  "sharding": "core.sharding",
  "engine": "core.engine",
  "directions": "core.directions",
  "paths": "core.paths",
  "surface": "core.surface",
  "adaptive": "core.adaptive",
  "curves": "core.curves",
  "hessian": "core.hessian",
  "krylov": "core.krylov",
  "precision": "core.precision",
  "progress": "core.progress",
  "pca": "core.pca",
  "sharpness": "core.sharpness",
  "reparam": "core.reparam",
  "permutations": "core.permutations",
  "streaming": "core.streaming",
  "splits": "core.splits",
  "data": "adapters.data",
  "evaluation": "adapters.evaluation",
  "batchnorm": "adapters.batchnorm",
  "folding": "adapters.folding",
  "frameworks": "adapters.frameworks",
  "li2018_h5": "adapters.li2018_h5",
  "torch_weights": "adapters.torch_weights",
  "error_control": "adapters.error_control",
  "losses": "adapters.losses",
  "text": "adapters.text",
  "schedules": "methods.schedules",
  "training": "methods.training",
  "loop": "methods.loop",
  "rundir": "methods.rundir",
  "checkpoints": "methods.checkpoints",
  "curve_training": "methods.curve_training",
  "ensembles": "methods.ensembles",
  "report": "plotting.report",
  "onednn": "backends.cpu.onednn",
  "autotune": "backends.cpu.autotune",
}

__all__ = sorted([*_NAMES, *_MODULES, "__version__"])


def __getattr__(name: str) -> Any:
  if name in _NAMES:
    value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
  elif name in _MODULES:
    value = importlib.import_module(f"{__name__}.{_MODULES[name]}")
  else:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__() -> list[str]:
  return __all__
