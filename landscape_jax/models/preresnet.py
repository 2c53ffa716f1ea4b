"""Pre-activation ResNets (He et al. 2016b) for CIFAR as used by Garipov et al. 2018.

A 3x3 stem convolution (16 channels), three stages with 16, 32 and 64 planes (strides 1, 2, 2),
BN-ReLU, global average pooling and a linear classifier. Depth >= 44 uses bottleneck blocks
(depth ``9n + 2``, expansion 4):

    y = conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x))))))))) + downsample(x)

with ``conv1``/``conv3`` 1x1 and the stride on the 3x3 ``conv2``; smaller depths (``6n + 2``) use
basic blocks ``y = conv2(relu(bn2(conv1(relu(bn1(x)))))) + downsample(x)``. ``downsample`` is a
1x1 strided convolution (no BN, no bias) on the first block of a stage when the shape changes,
identity otherwise. PreResNet-164 (n = 18) has about 1.7M parameters, PreResNet-110 with
bottlenecks (n = 12, Garipov et al.'s ``PreResNet110``) about 1.15M.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from landscape_jax.models.layers import batch_norm, conv, global_avg_pool, scaled

__all__ = [
  "check_config",
  "PreActBlock",
  "PreResNet",
]


def check_config(depth: int, bottleneck: bool | None = None) -> bool:
  """Raises ValueError for a depth the block type cannot build; returns the block type.

  Bottleneck blocks (the default for depth >= 44) need depth 9n + 2, basic blocks 6n + 2.
  """
  bottleneck = depth >= 44 if bottleneck is None else bottleneck
  if bottleneck and (depth < 11 or (depth - 2) % 9):
    raise ValueError(f"PreResNet with bottleneck blocks (the default for depth >= 44) needs "
                     f"depth 9n + 2 (47, 56, 65, ..., 110, 164, ...), got {depth}.")
  if not bottleneck and (depth < 8 or (depth - 2) % 6):
    raise ValueError(f"PreResNet with basic blocks (the default for depth < 44) needs depth "
                     f"6n + 2 (8, 14, 20, 26, 32, 38), got {depth}.")
  return bottleneck


class PreActBlock(nn.Module):
  """Pre-activation basic (``bottleneck=False``) or bottleneck block.

  Parameters: ``bn1, conv1, bn2, conv2`` (+ ``bn3, conv3`` for bottlenecks) and ``downsample``
  (1x1) where the shape changes. Convolutions have only a ``kernel``.

  Attributes:
    planes: inner width; the output has ``4 * planes`` channels for bottlenecks.
    strides: stride of the 3x3 convolution (``conv1`` for basic, ``conv2`` for bottleneck blocks)
      and of ``downsample``.
    bottleneck: bottleneck (1x1, 3x3, 1x1) instead of basic (3x3, 3x3) block.
    dtype: computation dtype.
  """

  planes: int
  strides: int = 1
  bottleneck: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    d = self.dtype
    out_channels = 4 * self.planes if self.bottleneck else self.planes
    y = nn.relu(batch_norm(train, name="bn1", dtype=d)(x))
    if self.bottleneck:
      y = conv(self.planes, 1, name="conv1", dtype=d)(y)
      y = nn.relu(batch_norm(train, name="bn2", dtype=d)(y))
      y = conv(self.planes, 3, strides=self.strides, name="conv2", dtype=d)(y)
      y = nn.relu(batch_norm(train, name="bn3", dtype=d)(y))
      y = conv(out_channels, 1, name="conv3", dtype=d)(y)
    else:
      y = conv(self.planes, 3, strides=self.strides, name="conv1", dtype=d)(y)
      y = nn.relu(batch_norm(train, name="bn2", dtype=d)(y))
      y = conv(self.planes, 3, name="conv2", dtype=d)(y)
    residual = x
    if self.strides != 1 or x.shape[-1] != out_channels:
      residual = conv(out_channels, 1, strides=self.strides, name="downsample", dtype=d)(x)
    return y + residual


class PreResNet(nn.Module):
  """PreResNet for CIFAR (bearpaw's port used by Garipov et al.), any input from 8x8 up.

  Parameter naming:

    conv1/kernel                                          stem, 16*width channels
    layer{s}_{b}/{bn1,conv1,bn2,conv2[,bn3,conv3][,downsample]}
                                                          stage s in 1..3, block b in 0..n-1
    bn/{scale,bias}                                       final BN before pooling
    linear/{kernel,bias}                                  classifier

  ``batch_stats`` mirrors the BN names. With bottlenecks every ``layer{s}_0`` has a
  ``downsample``; with basic blocks only ``layer2_0`` and ``layer3_0``.

  Attributes:
    depth: 9n + 2 for bottleneck blocks (47, 56, 110, 164, ...), else 6n + 2 (8, 20, 32).
    num_classes: number of logits.
    bottleneck: block type; ``None`` (default) means bottleneck exactly when depth >= 44, as the
      reference code.
    width: channel multiplier.
    dtype: computation dtype; logits are returned in float32.
  """

  depth: int = 110
  num_classes: int = 10
  bottleneck: bool | None = None
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bottleneck = check_config(self.depth, self.bottleneck)
    n = (self.depth - 2) // (9 if bottleneck else 6)
    x = jnp.asarray(x, self.dtype)
    x = conv(scaled(16, self.width), 3, name="conv1", dtype=self.dtype)(x)
    for s, planes in enumerate((16, 32, 64)):
      for b in range(n):
        x = PreActBlock(scaled(planes, self.width), strides=2 if (s > 0 and b == 0) else 1,
                        bottleneck=bottleneck, dtype=self.dtype,
                        name=f"layer{s + 1}_{b}")(x, train)
    x = nn.relu(batch_norm(train, name="bn", dtype=self.dtype)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="linear")(global_avg_pool(x))
    return x.astype(jnp.float32)
