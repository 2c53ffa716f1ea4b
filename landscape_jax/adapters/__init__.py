"""Adapters: what knows models and data, built on the core.

`data` (datasets as uint8 arrays with their normalisation), `frameworks` (any JAX model -- linen,
NNX, Equinox, a plain apply function -- as a pure function with state), `losses` (per-example losses
and their metrics), `evaluation` (metric and loss functions of a model on datasets or on any
(inputs, targets) arrays), `batchnorm` (BatchNorm statistics recomputed per point), `folding`
(BatchNorm folded into the preceding layer at inference, linen only), `li2018_h5` (Li et al.'s h5
direction and surface files), `error_control` (metrics estimated on growing subsets to a requested
standard error) and `text` (a bundled text as next-character windows). The bundled Flax models live
beside this package, in `landscape_jax.models`.
"""

__all__ = ["batchnorm", "data", "error_control", "evaluation", "folding", "frameworks", "li2018_h5",
           "losses", "text"]
