"""CIFAR ResNets of He et al. 2016 as used by Li et al. 2018, with and without skip connections.

Depth ``6n + 2``: a 3x3 stem convolution, three stages of ``n`` basic blocks with 16, 32 and 64
channels (times `width`; strides 1, 2, 2), global average pooling and a linear classifier.
ResNet-20/32/44/56/110 have n = 3/5/7/9/18 (about 0.27M/0.47M/0.66M/0.86M/1.7M parameters).
A basic block computes (post-activation)

    y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))

and the ``_noshort`` variants of Li et al. drop ``shortcut(x)``. Li et al.'s Wide-ResNet-56-k is
``ResNet(depth=56, width=k)`` (every channel count, stem included, times k).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from landscape_jax.models.layers import batch_norm, conv, global_avg_pool, scaled

__all__ = [
  "BasicBlock",
  "check_config",
  "ResNet",
  "SHORTCUTS",
]

SHORTCUTS = ("conv", "pad", "none")


def check_config(depth: int, shortcut: str = "conv") -> None:
  """Raises ValueError unless depth = 6n + 2 (n >= 1) and `shortcut` is one of `SHORTCUTS`."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 26, 32, 44, 56, "
                     f"110, ...), got {depth}.")
  if shortcut not in SHORTCUTS:
    raise ValueError(f"shortcut must be one of {SHORTCUTS}, got '{shortcut}'.")


class BasicBlock(nn.Module):
  """Post-activation basic block (two 3x3 convolutions, BN after each).

  Parameters: ``conv1/kernel``, ``bn1/{scale,bias}``, ``conv2/kernel``, ``bn2/{scale,bias}`` and,
  where the shape changes and ``shortcut="conv"``, ``shortcut_conv/kernel`` (1x1, strided) and
  ``shortcut_bn/{scale,bias}``. Convolutions have no bias. Batch statistics mirror the BN names.

  Attributes:
    features: output channels.
    strides: stride of ``conv1`` (and of the projection shortcut).
    shortcut: ``"conv"`` (1x1 conv + BN projection when the shape changes, identity otherwise;
      Li et al.'s code), ``"pad"`` (He et al.'s option A: strided identity with zero-padded
      channels, parameter free) or ``"none"`` (no skip connection).
    dtype: computation dtype (parameters stay float32).
  """

  features: int
  strides: int = 1
  shortcut: str = "conv"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = conv(self.features, 3, strides=self.strides, name="conv1", dtype=self.dtype)(x)
    y = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(y))
    y = conv(self.features, 3, name="conv2", dtype=self.dtype)(y)
    y = batch_norm(train, name="bn2", dtype=self.dtype)(y)
    if self.shortcut == "none":
      return nn.relu(y)
    residual = x
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.shortcut == "conv":
        residual = conv(self.features, 1, strides=self.strides, name="shortcut_conv",
                        dtype=self.dtype)(x)
        residual = batch_norm(train, name="shortcut_bn", dtype=self.dtype)(residual)
      else:  # "pad": option A of He et al. 2016
        residual = x[:, ::self.strides, ::self.strides, :]
        extra = self.features - x.shape[-1]
        if extra < 0:
          raise ValueError(f"shortcut='pad' cannot reduce channels ({x.shape[-1]} -> "
                           f"{self.features}); use shortcut='conv'.")
        residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """CIFAR ResNet (He et al. 2016; Li et al. 2018's ``ResNet_cifar``), any input from 8x8 up.

  Parameter naming (flax linen, NHWC; ``kernel`` is (kh, kw, in, out) / (in, out)):

    conv1/kernel, bn1/{scale,bias}                       stem, 16*width channels
    layer{s}_{b}/{conv1,bn1,conv2,bn2[,shortcut_conv,shortcut_bn]}
                                                         stage s in 1..3, block b in 0..n-1
    linear/{kernel,bias}                                 classifier on globally pooled features

  ``batch_stats`` has ``{mean,var}`` under the same BN names. With ``shortcut="conv"`` only
  ``layer2_0`` and ``layer3_0`` carry a projection; ``"pad"`` and ``"none"`` have none.

  Attributes:
    depth: 6n + 2 (8, 20, 32, 44, 56, 110, ...).
    num_classes: number of logits.
    width: channel multiplier (16/32/64 times `width`, rounded).
    shortcut: ``"conv"`` (default, as Li et al.'s code), ``"pad"`` (option A) or ``"none"``.
    dtype: computation dtype; logits are returned in float32.
  """

  depth: int = 20
  num_classes: int = 10
  width: float = 1.0
  shortcut: str = "conv"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_config(self.depth, self.shortcut)
    n = (self.depth - 2) // 6
    x = jnp.asarray(x, self.dtype)
    x = conv(scaled(16, self.width), 3, name="conv1", dtype=self.dtype)(x)
    x = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(x))
    for s, channels in enumerate((16, 32, 64)):
      for b in range(n):
        x = BasicBlock(scaled(channels, self.width), strides=2 if (s > 0 and b == 0) else 1,
                       shortcut=self.shortcut, dtype=self.dtype, name=f"layer{s + 1}_{b}")(x, train)
    x = global_avg_pool(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="linear")(x)
    return x.astype(jnp.float32)
