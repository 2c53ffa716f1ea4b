"""Multi-layer perceptron (fully connected, ReLU), the smallest model of the zoo."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

__all__ = [
  "MLP",
]


class MLP(nn.Module):
  """Flattens NHWC images and applies Dense-ReLU layers, then a Dense classifier.

  Attributes:
    features: hidden widths, one per hidden layer (each layer is named ``Dense_i``).
    num_classes: number of output logits.
  """

  features: Sequence[int] = (64, 64)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm or dropout
    x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
    for width in self.features:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)
