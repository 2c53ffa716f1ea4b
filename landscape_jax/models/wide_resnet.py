"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis 2016) as ported by Garipov et al. 2018.

Depth ``d = 6n + 4``: a 3x3 stem convolution with 16 channels, three stages of ``n`` pre-activation
blocks with 16k, 32k and 64k channels (strides 1, 2, 2), BN-ReLU, global average pooling and a
linear classifier. A block computes

    y = conv2(relu(bn2(dropout(conv1(relu(bn1(x))))))) + shortcut(x)

with the stride on ``conv2`` and a 1x1 convolution as shortcut where the shape changes (identity
otherwise), following the reference port (meliketoy/wide-resnet.pytorch), whose convolutions have
biases. WRN-28-10 has about 36.5M parameters.

For Li et al.'s "Wide-ResNet-56-k" (a widened post-activation CIFAR ResNet, depth 6n + 2) use
``ResNet(depth=56, width=k)`` (``get_model("wrn56_4")``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from landscape_jax.models.layers import batch_norm, conv, global_avg_pool

__all__ = [
  "check_config",
  "WideBasic",
  "WideResNet",
]


def check_config(depth: int) -> None:
  """Raises ValueError unless depth = 6n + 4 with n >= 1."""
  if depth < 10 or (depth - 4) % 6:
    raise ValueError(f"Wide-ResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40), got "
                     f"{depth}.")


class WideBasic(nn.Module):
  """Pre-activation wide block.

  Parameters: ``bn1``, ``conv1`` (3x3, stride 1), ``bn2``, ``conv2`` (3x3, `strides`) and, where
  the shape changes, ``shortcut`` (1x1, `strides`); convolutions have ``kernel`` and ``bias``.

  Attributes:
    features: output channels.
    strides: stride of ``conv2`` and the shortcut.
    dropout_rate: dropout between the convolutions in training (needs ``rngs={"dropout": key}``).
    dtype: computation dtype.
  """

  features: int
  strides: int = 1
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(x))
    y = conv(self.features, 3, use_bias=True, name="conv1", dtype=self.dtype)(y)
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = nn.relu(batch_norm(train, name="bn2", dtype=self.dtype)(y))
    y = conv(self.features, 3, strides=self.strides, use_bias=True, name="conv2",
             dtype=self.dtype)(y)
    residual = x
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = conv(self.features, 1, strides=self.strides, use_bias=True, name="shortcut",
                      dtype=self.dtype)(x)
    return y + residual


class WideResNet(nn.Module):
  """WRN-d-k for CIFAR, any input from 8x8 up.

  Parameter naming:

    conv1/{kernel,bias}                                   stem, 16 channels
    layer{s}_{b}/{bn1,conv1,bn2,conv2[,shortcut]}         stage s in 1..3, block b in 0..n-1
    bn/{scale,bias}                                       final BN before pooling
    linear/{kernel,bias}                                  classifier

  Every ``layer{s}_0`` has a ``shortcut`` (the width changes from 16 to 16k in stage 1, unless
  k = 1). ``batch_stats`` mirrors the BN names.

  Attributes:
    depth: 6n + 4 (16, 22, 28, 40, ...).
    widen_factor: k, the width multiplier of the three stages.
    num_classes: number of logits.
    dropout_rate: dropout inside blocks in training (0 as Garipov et al.).
    dtype: computation dtype; logits are returned in float32.
  """

  depth: int = 28
  widen_factor: int = 10
  num_classes: int = 10
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_config(self.depth)
    n = (self.depth - 4) // 6
    k = self.widen_factor
    x = jnp.asarray(x, self.dtype)
    x = conv(16, 3, use_bias=True, name="conv1", dtype=self.dtype)(x)
    for s, channels in enumerate((16 * k, 32 * k, 64 * k)):
      for b in range(n):
        x = WideBasic(channels, strides=2 if (s > 0 and b == 0) else 1,
                      dropout_rate=self.dropout_rate, dtype=self.dtype,
                      name=f"layer{s + 1}_{b}")(x, train)
    x = nn.relu(batch_norm(train, name="bn", dtype=self.dtype)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="linear")(global_avg_pool(x))
    return x.astype(jnp.float32)
