"""Permutation symmetry: specs, automatic spec tracing, weight matching and swap saddles.

`specs` holds `PermutationSpec` and the algebra of permutations, `tracing` derives specs from a
model by tracing it, `matching` aligns two networks (Ainsworth et al. 2023) and `saddles` follows
the continuous swap of two units (Brea et al. 2019).
"""

from landscape_jax.core.permutations.matching import WeightMatchingResult, weight_matching
from landscape_jax.core.permutations.saddles import swap_path, swap_path_metrics, swap_units
from landscape_jax.core.permutations.specs import (
  PermAxis,
  Permutation,
  PermutationSpec,
  apply_permutation,
  check_spec,
  compose_permutations,
  identity_permutation,
  invert_permutation,
  mlp_spec,
  random_permutation,
)
from landscape_jax.core.permutations.tracing import spec_from_model

__all__ = [
  "PermAxis",
  "Permutation",
  "PermutationSpec",
  "WeightMatchingResult",
  "apply_permutation",
  "check_spec",
  "compose_permutations",
  "identity_permutation",
  "invert_permutation",
  "mlp_spec",
  "random_permutation",
  "spec_from_model",
  "swap_path",
  "swap_path_metrics",
  "swap_units",
  "weight_matching",
]
