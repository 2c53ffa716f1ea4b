"""Flax linen model zoo (NHWC inputs, any size from 8x8 to 32x32) and `get_model`.

Every model is called as ``model.apply(variables, x, train=...)`` on normalised float images;
models with BatchNorm keep running statistics in the ``"batch_stats"`` collection and need
``mutable=["batch_stats"]`` when ``train=True``.

Names (see `model_names`; every model takes ``num_classes=`` and its attributes as overrides):
  * ``mlp``, ``mlp_small``: fully connected nets.
  * ``resnet{d}`` / ``resnet{d}_noshort``: CIFAR ResNet of depth d = 6n + 2 (Li et al. 2018),
    e.g. ``resnet20``, ``resnet56_noshort``; ``resnet8`` is a tiny one for tests. Overrides:
    ``width``, ``shortcut`` (``"conv"`` default, ``"pad"``, ``"none"``), ``dtype``.
  * ``wrn{d}_{k}``: Wide-ResNet. Depth 6n + 4 (``wrn28_10``, ``wrn16_4``): Zagoruyko & Komodakis's
    pre-activation WRN as in Garipov et al.; depth 6n + 2 (``wrn56_2``, ``wrn56_4_noshort``):
    Li et al.'s widened CIFAR ResNet, i.e. ``resnet{d}`` with ``width=k``.
  * ``preresnet{d}``: pre-activation ResNet of Garipov et al. (``preresnet110``, ``preresnet164``;
    bottleneck blocks for depth >= 44).
  * ``vgg9``, ``vgg9_bn`` (Li et al.), ``vgg16``, ``vgg16_bn`` (Garipov et al.); override
    ``width``, ``dropout_rate``.
  * ``densenet_bc_{L}_{k}`` (``densenet_bc_100_12``), ``densenet_cifar`` (Li et al.'s 4 blocks).
  * ``convfc`` (Garipov et al.).
  * ``gpt2_small`` (GPT-2 small's shape, 124 M parameters with ``num_classes=50257``) and
    ``gpt_tiny``: decoder-only language models on int tokens (`models.gpt`; in
    `LANGUAGE_MODELS`), their kernels annotated for a mesh with a ``model`` axis.

Parameter names are explicit and stable (each model's docstring lists them): the classifier is
always ``linear``; residual nets name blocks ``layer{stage}_{block}`` (stages from 1, blocks from
0) with ``conv1, bn1, conv2, bn2, ...`` inside; plain stacks number layers ``conv_{i}``,
``bn_{i}``, ``fc_{j}``. Convolution kernels are HWIO, Dense kernels (in, out). Every model
accepts ``dtype=`` (computation dtype, e.g. ``jnp.bfloat16``; parameters stay float32, logits are
float32).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import flax.linen as nn
import numpy as np

from landscape_jax.models import preresnet as _preresnet
from landscape_jax.models import resnet as _resnet
from landscape_jax.models import wide_resnet as _wide_resnet
from landscape_jax.models.convfc import ConvFC
from landscape_jax.models.densenet import DenseNet, densenet_bc
from landscape_jax.models.gpt import GPT, GPT2_SMALL, GPT_TINY
from landscape_jax.models.mlp import MLP
from landscape_jax.models.preresnet import PreActBlock, PreResNet
from landscape_jax.models.resnet import BasicBlock, ResNet
from landscape_jax.models.vgg import VGG, vgg9, vgg16
from landscape_jax.models.wide_resnet import WideBasic, WideResNet

# name -> factory(num_classes=..., **overrides) -> nn.Module
_REGISTRY: dict[str, Callable[..., nn.Module]] = {
  "mlp": functools.partial(MLP, features=(64, 64)),
  "mlp_small": functools.partial(MLP, features=(32,)),
  "vgg9": functools.partial(vgg9, batch_norm=False),
  "vgg9_bn": functools.partial(vgg9, batch_norm=True),
  "vgg16": functools.partial(vgg16, batch_norm=False),
  "vgg16_bn": functools.partial(vgg16, batch_norm=True),
  "convfc": ConvFC,
  "preresnet110": functools.partial(PreResNet, depth=110),
  "preresnet164": functools.partial(PreResNet, depth=164),
  "wrn28_10": functools.partial(WideResNet, depth=28, widen_factor=10),
  "wrn16_4": functools.partial(WideResNet, depth=16, widen_factor=4),
  "densenet_bc_100_12": functools.partial(densenet_bc, depth=100, growth_rate=12),
  "densenet_cifar": functools.partial(DenseNet, num_layers=(6, 12, 24, 16), growth_rate=12),
  "gpt2_small": functools.partial(GPT, **GPT2_SMALL),
  "gpt_tiny": functools.partial(GPT, **GPT_TINY),
}
# token models (int tokens (b, T) -> logits (b, T, vocabulary = num_classes)), not image models
LANGUAGE_MODELS = ("gpt2_small", "gpt_tiny")
for _d in (8, 20, 32, 44, 56, 110):
  _REGISTRY[f"resnet{_d}"] = functools.partial(ResNet, depth=_d)
  _REGISTRY[f"resnet{_d}_noshort"] = functools.partial(ResNet, depth=_d, shortcut="none")
for _k in (2, 4, 8):
  _REGISTRY[f"wrn56_{_k}"] = functools.partial(ResNet, depth=56, width=float(_k))
  _REGISTRY[f"wrn56_{_k}_noshort"] = functools.partial(ResNet, depth=56, width=float(_k),
                                                       shortcut="none")


def _resnet_pattern(m: re.Match) -> Callable[..., nn.Module]:
  return functools.partial(ResNet, depth=int(m[1]), shortcut="none" if m[2] else "conv")


def _wrn_pattern(m: re.Match) -> Callable[..., nn.Module]:
  depth, k, noshort = int(m[1]), int(m[2]), bool(m[3])
  if (depth - 4) % 6 == 0 and not noshort:
    return functools.partial(WideResNet, depth=depth, widen_factor=k)
  if (depth - 2) % 6 == 0:
    return functools.partial(ResNet, depth=depth, width=float(k),
                             shortcut="none" if noshort else "conv")
  raise ValueError(f"Wide-ResNet depth must be 6n + 4 (Zagoruyko & Komodakis) or 6n + 2 (Li et "
                   f"al.'s widened ResNet), got {depth}.")


# Parametric names: regex -> factory builder; tried after the explicit registry.
_PATTERNS: list[tuple[str, Callable[[re.Match], Callable[..., nn.Module]]]] = [
  (r"resnet(\d+)(_noshort)?", _resnet_pattern),
  (r"wrn(\d+)_(\d+)(_noshort)?", _wrn_pattern),
  (r"preresnet(\d+)", lambda m: functools.partial(PreResNet, depth=int(m[1]))),
  (r"densenet_bc_(\d+)_(\d+)",
   lambda m: functools.partial(densenet_bc, depth=int(m[1]), growth_rate=int(m[2]))),
]


def register(name: str, factory: Callable[..., nn.Module]) -> None:
  """Adds a model factory under `name` (it must accept ``num_classes=`` and overrides)."""
  _REGISTRY[name] = factory


def model_names() -> list[str]:
  """The explicit names `get_model` accepts (parametric names like ``wrn40_4`` work too)."""
  return sorted(_REGISTRY)


_PARAMETRIC = ("resnet{6n+2}[_noshort], wrn{6n+4}_{k} or wrn{6n+2}_{k}[_noshort], "
               "preresnet{9n+2 or 6n+2}, densenet_bc_{6n+4}_{k}")


def _known() -> str:
  return f"Known models: {', '.join(model_names())}; parametric names: {_PARAMETRIC}."


def _factory(name: str) -> Callable[..., nn.Module]:
  if name in _REGISTRY:
    return _REGISTRY[name]
  for pattern, build in _PATTERNS:
    m = re.fullmatch(pattern, name)
    if m:
      try:
        return build(m)
      except ValueError as e:
        raise ValueError(f"Invalid model name '{name}': {e} {_known()}") from e
  raise ValueError(f"Unknown model '{name}'. {_known()}")


def _check_module(name: str, model: nn.Module) -> None:
  """The depth/shortcut checks the models run when first called, run when they are built."""
  try:
    if isinstance(model, ResNet):
      _resnet.check_config(model.depth, model.shortcut)
    elif isinstance(model, PreResNet):
      _preresnet.check_config(model.depth, model.bottleneck)
    elif isinstance(model, WideResNet):
      _wide_resnet.check_config(model.depth)
  except ValueError as e:
    raise ValueError(f"Invalid model '{name}': {e} {_known()}") from e


def get_model(name: str, *, num_classes: int, **overrides) -> nn.Module:
  """Builds a bundled model by name, e.g. ``get_model("resnet20", num_classes=10, width=2)``.

  Args:
    name: a name from `model_names` or a parametric one (``resnet{d}``, ``wrn{d}_{k}``, ...).
    num_classes: number of output logits, a positive integer.
    **overrides: model attributes to change (``width``, ``shortcut``, ``dtype``, ...).

  Returns:
    An unbound flax linen module; ``model.init(key, x)`` and ``model.apply(variables, x,
    train=...)``.

  Raises:
    ValueError: an unknown name, a depth the architecture cannot build (``resnet7``: CIFAR ResNets
      have depth 6n + 2), an invalid ``shortcut``, or ``num_classes`` not a positive integer; the
      message lists the valid names and depths. Checked here, not at ``model.init``.
    TypeError: overrides the model does not have.
  """
  if (isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer)
      or num_classes < 1):
    raise ValueError(f"get_model('{name}'): num_classes must be a positive integer (the number "
                     f"of logits, e.g. the dataset's num_classes), got {num_classes!r}.")
  factory = _factory(name)
  try:
    model = factory(num_classes=int(num_classes), **overrides)
  except TypeError as e:
    raise TypeError(f"Bad overrides {sorted(overrides)} for model '{name}': {e}") from e
  except ValueError as e:  # factories that check their arguments (densenet_bc's depth)
    raise ValueError(f"Invalid model '{name}': {e} {_known()}") from e
  _check_module(name, model)
  return model


__all__ = [
  "GPT", "GPT2_SMALL", "GPT_TINY", "LANGUAGE_MODELS",
  "MLP", "VGG", "BasicBlock", "ConvFC", "DenseNet", "PreActBlock", "PreResNet", "ResNet",
  "WideBasic", "WideResNet", "densenet_bc", "get_model", "model_names", "register", "vgg9", "vgg16",
]
