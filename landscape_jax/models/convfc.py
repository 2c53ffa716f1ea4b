"""ConvFC of Garipov et al. 2018: three 5x5 conv + 3x3/2 max-pool stages, three Dense layers.

    conv5x5(32) - relu - maxpool(3, 2) - conv5x5(64) - relu - maxpool(3, 2)
    - conv5x5(128) - relu - maxpool(3, 2) - flatten - Dense(1000) - relu - Dense(1000) - relu
    - Dense(num_classes)

At 32x32 the feature map is 3x3x128 (1152 inputs to the first Dense layer) and the network has
about 2.42M parameters. A pooling layer whose 3x3 window does not fit is skipped (8x8 inputs give
8 -> 3 -> 1 -> 1).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from landscape_jax.models.layers import conv, max_pool, scaled

__all__ = [
  "ConvFC",
]


class ConvFC(nn.Module):
  """Garipov et al.'s ConvFC, any input from 8x8 up.

  Parameter naming: ``conv_{0,1,2}/{kernel,bias}`` (5x5), ``fc_{0,1}/{kernel,bias}`` (hidden
  Dense layers) and ``linear/{kernel,bias}`` (classifier). No BatchNorm. ``fc_0/kernel`` has
  ``H * W * 128`` rows in NHWC flatten order (channel fastest): permuting ``conv_2``'s channels by
  ``perm`` permutes them as ``kernel.reshape(H * W, 128, -1)[:, perm]``.

  Attributes:
    num_classes: number of logits.
    channels: conv widths of the three stages.
    hidden: widths of the hidden Dense layers.
    width: multiplier of the conv and hidden widths.
    dtype: computation dtype; logits are returned in float32.
  """

  num_classes: int = 10
  channels: tuple[int, ...] = (32, 64, 128)
  hidden: tuple[int, ...] = (1000, 1000)
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm or dropout
    x = jnp.asarray(x, self.dtype)
    for i, c in enumerate(self.channels):
      x = conv(scaled(c, self.width), 5, use_bias=True, name=f"conv_{i}", dtype=self.dtype)(x)
      x = max_pool(nn.relu(x), window=3, stride=2)
    x = x.reshape((x.shape[0], -1))
    for j, units in enumerate(self.hidden):
      x = nn.relu(nn.Dense(scaled(units, self.width), dtype=self.dtype, name=f"fc_{j}")(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="linear")(x)
    return x.astype(jnp.float32)
