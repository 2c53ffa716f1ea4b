"""Flax linen model zoo (NHWC inputs, any size from 8x8 to 32x32) and `get_model`.

Every model is called as ``model.apply(variables, x, train=...)`` on normalised float images;
models with BatchNorm keep running statistics in the ``"batch_stats"`` collection and need
``mutable=["batch_stats"]`` when ``train=True``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn

from landscape_jax.models.mlp import MLP

# name -> factory(num_classes=..., **overrides) -> nn.Module
_REGISTRY: dict[str, Callable[..., nn.Module]] = {
  "mlp": functools.partial(MLP, features=(64, 64)),
  "mlp_small": functools.partial(MLP, features=(32,)),
}


def register(name: str, factory: Callable[..., nn.Module]) -> None:
  """Adds a model factory under `name` (it must accept ``num_classes=`` and overrides)."""
  _REGISTRY[name] = factory


def model_names() -> list[str]:
  """The names `get_model` accepts."""
  return sorted(_REGISTRY)


def get_model(name: str, *, num_classes: int, **overrides) -> nn.Module:
  """Builds a bundled model by name, e.g. ``get_model("resnet20", num_classes=10, width=2)``."""
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model '{name}'. Known models: {', '.join(model_names())}.")
  try:
    return _REGISTRY[name](num_classes=num_classes, **overrides)
  except TypeError as e:
    raise TypeError(f"Bad overrides {sorted(overrides)} for model '{name}': {e}") from e


__all__ = ["MLP", "get_model", "model_names", "register"]
