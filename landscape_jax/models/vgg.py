"""VGG networks (Simonyan & Zisserman 2015) in the CIFAR forms of Li et al. 2018 and Garipov et al.

* VGG-9 (Li et al. 2018): convolution stages (64, 64), (128, 128), (256, 256, 256), each followed
  by 2x2 max pooling (ceil mode), then flatten, a hidden Dense layer of as many units as the last
  stage's channels (256) with BatchNorm and ReLU, and the classifier. About 2.8M parameters at
  32x32 with BatchNorm (the fully connected layer sees 4 * 4 * 256 inputs).
* VGG-16 (Garipov et al. 2018's ``VGG16`` / ``VGG16BN``): five stages (64, 64), (128, 128),
  (256, 256, 256), (512, 512, 512), (512, 512, 512) with 2x2 max pooling, flatten, two hidden
  Dense(512)-ReLU layers (with dropout in the reference) and the classifier; about 15.3M parameters
  at 32x32.

Every convolution has a bias; with ``batch_norm=True`` it is followed by BatchNorm (the conv bias is
kept, as in the reference code). A pooling layer whose window does not fit (inputs 8x8 or 16x16)
is skipped, so the flattened features are then 1x1 and the hidden layer is smaller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from landscape_jax.models.layers import batch_norm, conv, max_pool, scaled

__all__ = [
  "VGG",
  "vgg16",
  "VGG16_STAGES",
  "vgg9",
  "VGG9_STAGES",
]

VGG9_STAGES = ((64, 64), (128, 128), (256, 256, 256))
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG(nn.Module):
  """VGG with a fully connected head, any input from 8x8 up.

  Parameter naming (convolutions numbered over the whole feature stack, i = 0, 1, ...):

    conv_{i}/{kernel,bias}, bn_{i}/{scale,bias}     3x3 convolutions (bn_* only with batch_norm)
    fc_{j}/{kernel,bias}, fc_bn_{j}/{scale,bias}    hidden Dense layers (fc_bn_* with fc_batch_norm)
    linear/{kernel,bias}                            classifier

  ``batch_stats`` mirrors the ``bn_*`` and ``fc_bn_*`` names. ``fc_0/kernel`` has
  ``H * W * C`` rows in NHWC flatten order (channel fastest), so permuting the last conv's channels
  by ``perm`` permutes its rows as ``kernel.reshape(H * W, C, -1)[:, perm]``.

  Attributes:
    stages: conv channels per stage; a 2x2 max pooling follows each stage.
    num_classes: number of logits.
    hidden: widths of the hidden Dense layers; ``None`` means one layer as wide as the last stage
      (Li et al.'s VGG-9).
    batch_norm: BatchNorm after every convolution.
    fc_batch_norm: BatchNorm after every hidden Dense layer (Li et al.'s VGG-9 with BN).
    ceil_mode: keep partial pooling windows (PyTorch ``ceil_mode=True``, Li et al.).
    dropout_rate: dropout before each hidden Dense layer in training (Garipov et al. use 0.5; then
      ``apply`` needs ``rngs={"dropout": key}`` when ``train=True``).
    width: multiplier of every conv and hidden width.
    dtype: computation dtype; logits are returned in float32.
  """

  stages: Sequence[Sequence[int]] = VGG16_STAGES
  num_classes: int = 10
  hidden: Sequence[int] | None = (512, 512)
  batch_norm: bool = False
  fc_batch_norm: bool = False
  ceil_mode: bool = False
  dropout_rate: float = 0.0
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    i = 0
    for stage in self.stages:
      for channels in stage:
        x = conv(scaled(channels, self.width), 3, use_bias=True, name=f"conv_{i}",
                 dtype=self.dtype)(x)
        if self.batch_norm:
          x = batch_norm(train, name=f"bn_{i}", dtype=self.dtype)(x)
        x = nn.relu(x)
        i += 1
      x = max_pool(x, window=2, stride=2, ceil_mode=self.ceil_mode)
    x = x.reshape((x.shape[0], -1))
    hidden = (self.stages[-1][-1],) if self.hidden is None else self.hidden
    for j, units in enumerate(hidden):
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.Dense(scaled(units, self.width), dtype=self.dtype, name=f"fc_{j}")(x)
      if self.fc_batch_norm:
        x = batch_norm(train, name=f"fc_bn_{j}", dtype=self.dtype)(x)
      x = nn.relu(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="linear")(x)
    return x.astype(jnp.float32)


def vgg9(*, batch_norm: bool = False, **kwargs) -> VGG:
  """Li et al.'s VGG-9 (their code always uses BN; ``batch_norm=False`` removes all of it)."""
  return VGG(**{"stages": VGG9_STAGES, "hidden": None, "batch_norm": batch_norm,
                "fc_batch_norm": batch_norm, "ceil_mode": True, **kwargs})


def vgg16(*, batch_norm: bool = False, **kwargs) -> VGG:
  """Garipov et al.'s VGG16 / VGG16BN (dropout off by default; ``dropout_rate=0.5`` restores it)."""
  return VGG(**{"stages": VGG16_STAGES, "hidden": (512, 512), "batch_norm": batch_norm,
                "fc_batch_norm": False, "ceil_mode": False, **kwargs})
