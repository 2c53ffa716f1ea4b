"""The framework-agnostic core: pure functions over parameter pytrees.

Nothing here knows a model library or a dataset: a model enters only as a ``metric_fn(params) ->
{name: scalar}`` or a ``loss_fn(params, batch) -> scalar``. Modules: `trees` (pytree helpers),
`identity` (exact digests of arrays and functions), `fileio` (atomic writes), `store` (the one
store format), `sharding` (meshes and multi-host helpers), `engine` (the point-evaluation engine),
`directions` (filter-normalised directions), `paths` (lines, planes, barriers), `surface`
(surfaces on grids), `adaptive` (refinement where the interpolation error is), `curves` (Bezier
and polygonal-chain curves and their planes), `hessian` (curvature), `sharpness` (sharpness and
flatness measures), `reparam` (function-preserving rescalings), `pca` (trajectory PCA) and
the `permutations` package (specs, tracing, weight matching, swap saddles).
"""

__all__ = ["adaptive", "curves", "directions", "engine", "fileio", "hessian", "identity", "paths",
           "pca", "permutations", "reparam", "sharding", "sharpness", "store", "surface", "trees"]
