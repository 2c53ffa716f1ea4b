"""Building blocks shared by the model zoo: PyTorch-equivalent conv/BN settings and safe pooling.

Conventions (all models):
  * Convolutions use explicit symmetric padding ``k // 2`` as PyTorch does (not ``"SAME"``,
    which pads asymmetrically for stride 2), and He-normal fan-out initialisation
    (``kaiming_normal_(mode="fan_out")``, He et al. 2015) as the reference code.
  * BatchNorm follows PyTorch's defaults: running averages with momentum 0.1 (flax ``momentum=0.9``)
    and ``epsilon=1e-5``. Statistics live in the ``"batch_stats"`` collection. It is
    `models.normalization.BatchNorm`: flax's, with a training-mode backward pass of fewer memory
    passes (the same function; the derivatives equal up to float32 rounding).
  * Pooling never fails on tiny inputs: a pooling layer whose window does not fit is skipped, so
    8x8 inputs run through architectures designed for 32x32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from landscape_jax.models.normalization import BatchNorm

__all__ = [
  "avg_pool",
  "batch_norm",
  "conv",
  "global_avg_pool",
  "max_pool",
  "scaled",
]

he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, *, strides: int = 1, use_bias: bool = False,
         name: str | None = None, dtype: Any = jnp.float32) -> nn.Conv:
  """A ``kernel x kernel`` convolution with PyTorch padding ``kernel // 2``."""
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=kernel // 2,
                 use_bias=use_bias, kernel_init=he_normal_fan_out, dtype=dtype, name=name)


def batch_norm(train: bool, *, name: str | None = None, dtype: Any = jnp.float32) -> BatchNorm:
  """BatchNorm with PyTorch's momentum (0.1) and epsilon (1e-5) (`models.normalization`)."""
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                   name=name)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """Mean over the spatial axes of an NHWC batch: (N, H, W, C) -> (N, C)."""
  return jnp.mean(x, axis=(1, 2))


def max_pool(x: jnp.ndarray, *, window: int = 2, stride: int = 2,
             ceil_mode: bool = False) -> jnp.ndarray:
  """Max pooling without padding, PyTorch's ``MaxPool2d(window, stride, ceil_mode=...)``.

  With ``ceil_mode=True`` a partial window at the bottom/right edge is kept (padded with -inf).
  When the spatial size is smaller than the window (or already 1), pooling is skipped so that small
  inputs (8x8) pass through deep stacks of pools designed for 32x32.
  """
  h, w = x.shape[1], x.shape[2]
  if min(h, w) <= 1 or (not ceil_mode and min(h, w) < window):
    return x
  if ceil_mode:
    pad_h = (-(h - window)) % stride if h >= window else window - h
    pad_w = (-(w - window)) % stride if w >= window else window - w
    return nn.max_pool(x, (window, window), strides=(stride, stride),
                       padding=((0, pad_h), (0, pad_w)))
  return nn.max_pool(x, (window, window), strides=(stride, stride))


def avg_pool(x: jnp.ndarray, *, window: int = 2, stride: int = 2) -> jnp.ndarray:
  """Average pooling without padding; skipped when the spatial size is below the window."""
  if min(x.shape[1], x.shape[2]) < window:
    return x
  return nn.avg_pool(x, (window, window), strides=(stride, stride))


def scaled(channels: int, width: float) -> int:
  """Channel count times a width multiplier, rounded, at least 1."""
  return max(1, int(round(channels * width)))
