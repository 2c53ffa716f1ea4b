"""DenseNet-BC for CIFAR (Huang et al. 2017), also Li et al. 2018's ``densenet_cifar``.

A 3x3 stem convolution with ``2 * growth_rate`` channels, dense blocks of bottleneck layers

    y = concat([conv2(relu(bn2(conv1(relu(bn1(x)))))), x])     conv1: 1x1, 4k; conv2: 3x3, k

separated by transitions ``avgpool2(conv(relu(bn(x))))`` (1x1 conv to ``floor(reduction * C)``
channels), then BN-ReLU, global average pooling and a linear classifier. DenseNet-BC-L-k has three
blocks of ``(L - 4) / 6`` layers: DenseNet-BC-100-12 has about 0.8M parameters, DenseNet-BC-250-24
15.3M. Li et al.'s ``densenet_cifar`` has four blocks of (6, 12, 24, 16) layers with k = 12.
Average pooling is skipped when the feature map is already 1x1 (tiny inputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from landscape_jax.models.layers import avg_pool, batch_norm, conv, global_avg_pool

__all__ = [
  "DenseLayer",
  "DenseNet",
  "densenet_bc",
]


class DenseLayer(nn.Module):
  """Bottleneck layer of a dense block: parameters ``bn1, conv1 (1x1), bn2, conv2 (3x3)``."""

  growth_rate: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(x))
    y = conv(4 * self.growth_rate, 1, name="conv1", dtype=self.dtype)(y)
    y = nn.relu(batch_norm(train, name="bn2", dtype=self.dtype)(y))
    y = conv(self.growth_rate, 3, name="conv2", dtype=self.dtype)(y)
    return jnp.concatenate([y, x], axis=-1)


class DenseNet(nn.Module):
  """DenseNet-BC, any input from 8x8 up.

  Parameter naming:

    conv1/kernel                                    stem, 2k channels
    dense{s}_{i}/{bn1,conv1,bn2,conv2}              block s = 1.., layer i = 0..
    trans{s}_bn, trans{s}_conv                      transition after block s (all but the last)
    bn/{scale,bias}                                 final BN before pooling
    linear/{kernel,bias}                            classifier

  Convolutions have only a ``kernel``; ``batch_stats`` mirrors the BN names. The concatenation
  puts the new ``k`` channels first, then the input channels (as the reference code).

  Attributes:
    num_layers: bottleneck layers per dense block.
    growth_rate: k, channels added per layer.
    reduction: compression of the transitions (0.5 for DenseNet-BC).
    num_classes: number of logits.
    dtype: computation dtype; logits are returned in float32.
  """

  num_layers: Sequence[int] = (16, 16, 16)
  growth_rate: int = 12
  reduction: float = 0.5
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    x = conv(2 * self.growth_rate, 3, name="conv1", dtype=self.dtype)(x)
    for s, layers in enumerate(self.num_layers):
      for i in range(layers):
        x = DenseLayer(self.growth_rate, dtype=self.dtype, name=f"dense{s + 1}_{i}")(x, train)
      if s < len(self.num_layers) - 1:
        out = int(math.floor(x.shape[-1] * self.reduction))
        x = nn.relu(batch_norm(train, name=f"trans{s + 1}_bn", dtype=self.dtype)(x))
        x = conv(out, 1, name=f"trans{s + 1}_conv", dtype=self.dtype)(x)
        x = avg_pool(x, window=2, stride=2)
    x = nn.relu(batch_norm(train, name="bn", dtype=self.dtype)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="linear")(global_avg_pool(x))
    return x.astype(jnp.float32)


def densenet_bc(*, depth: int = 100, growth_rate: int = 12, **kwargs) -> DenseNet:
  """DenseNet-BC-depth-k with three blocks of (depth - 4) / 6 bottleneck layers."""
  if depth < 10 or (depth - 4) % 6:
    raise ValueError(f"DenseNet-BC depth must be 6n + 4 (40, 100, 190, 250), got {depth}.")
  n = (depth - 4) // 6
  return DenseNet(**{"num_layers": (n, n, n), "growth_rate": growth_rate, **kwargs})
