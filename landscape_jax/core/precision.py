"""Matmul precision: one option for surfaces, curves and curvature, the same on every backend.

JAX runs a float32 ``dot_general`` or convolution at the backend's default precision unless told
otherwise: TPUs multiply in bfloat16 passes, recent NVIDIA GPUs in TensorFloat-32 (a 10-bit
mantissa), CPUs in full float32. `matmul_precision(precision)` sets
`jax.default_matmul_precision` for the code it wraps, so every dot and convolution traced inside
it, the user's model included, carries that precision in its StableHLO
(``precision = [HIGHEST, HIGHEST]``, ``precision_config = [#stablehlo<precision HIGHEST>, ...]``).
An operation that names its own precision (``jnp.dot(a, b, precision=...)``) keeps it.

Values: None (leave JAX's setting as it is), ``"default"`` / ``"bfloat16"`` (the fastest),
``"high"`` / ``"tensorfloat32"`` (bfloat16_3x on TPU, TF32 on GPU), ``"highest"`` / ``"float32"``
(full float32), or a `jax.lax.Precision`. On the CPU all of them compute the same numbers.

Curvature (`core.hessian`) defaults to ``"highest"``: Lanczos and Hutchinson estimates are sums
of many products, and bfloat16 or TF32 rounding of every product would set their error floor.
Surfaces and curves default to None (the backend's default, the fast choice for loss values).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

__all__ = ["PRECISIONS", "check_precision", "matmul_precision"]

PRECISIONS = ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")


def check_precision(precision, *, name: str = "precision") -> str | None:
  """`precision` as the lower-case name `jax.default_matmul_precision` takes, or None.

  Args:
    precision: None, one of `PRECISIONS` (any case), or a `jax.lax.Precision`.
    name: the argument's name, for the error message.

  Raises:
    ValueError: anything else.
  """
  if precision is None:
    return None
  if isinstance(precision, jax.lax.Precision):
    return precision.name.lower()
  if isinstance(precision, str) and precision.lower() in PRECISIONS:
    return precision.lower()
  raise ValueError(f"{name} must be None, one of {PRECISIONS} or a jax.lax.Precision, got "
                   f"{precision!r}; e.g. {name}='highest' for full float32 products on TPU/GPU.")


@contextlib.contextmanager
def matmul_precision(precision) -> Iterator[None]:
  """Context: `jax.default_matmul_precision` set to `precision` (None: unchanged).

  Wrap the code that *traces* the computation (a call of a jitted function that compiles in it,
  or the body of a traced function): the precision is recorded on every ``dot_general`` and
  convolution traced inside, and a jitted function compiles separately for each precision.
  """
  name = check_precision(precision)
  if name is None:
    yield
    return
  with jax.default_matmul_precision(name):
    yield
