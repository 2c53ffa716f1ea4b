"""Adapters: what knows models and data, built on the core.

`data` (datasets as uint8 arrays with their normalisation), `evaluation` (metric and loss
functions of a model on datasets), `batchnorm` (BatchNorm statistics recomputed per point),
`folding` (BatchNorm folded into the preceding layer at inference), `li2018_h5` (Li et al.'s h5
direction and surface files) and `error_control` (metrics
estimated on growing subsets to a requested standard error). The bundled Flax models live beside
this package, in `landscape_jax.models`.
"""

__all__ = ["batchnorm", "data", "error_control", "evaluation", "folding", "li2018_h5"]
