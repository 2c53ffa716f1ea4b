"""Permutation specs of the bundled models, derived by tracing (`core.permutations.tracing`)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from landscape_jax.core import trees
from landscape_jax.core.permutations.specs import PermutationSpec, as_variables
from landscape_jax.core.permutations.tracing import spec_from_model
from landscape_jax.models import get_model

__all__ = ["spec_for"]

PyTree = Any


def spec_for(name: str, variables: PyTree, *, num_classes: int | None = None,
             input_shape: tuple[int, ...] | None = None, verify: bool = True,
             **overrides) -> PermutationSpec:
  """The `PermutationSpec` of a bundled model (``lj.get_model(name, ...)``), by tracing it.

  Works for every bundled family: MLP, VGG (with and without BatchNorm), CIFAR ResNet (one shared
  permutation per residual stream with conv shortcuts; with ``shortcut="pad"`` the streams are
  zero-padded, so only the inner block units are permuted), Wide-ResNet, ConvFC, PreResNet, and
  DenseNet (its concatenated feature maps are fixed; the bottleneck units inside each dense layer
  are permuted). See `spec_from_model` for any other linen model.

  Args:
    name: bundled model name, e.g. "mlp", "resnet20", "vgg16_bn", "wrn16_4", "convfc".
    variables: the model's variables (their shapes fix the widths).
    num_classes: defaults to the output width of the last layer.
    input_shape: (H, W, C) of the inputs the model was initialised with (it matters for heads
      that flatten a feature map, e.g. ConvFC); by default the first square size among 8, 32,
      28, 16 (with a channel count of a conv kernel) that the parameters accept.
    verify: check numerically that a random permutation leaves the outputs unchanged.
    **overrides: model overrides passed to `get_model` (e.g. ``width=0.5``).
  """


  variables = as_variables(variables)[0]
  kernels = [np.shape(x) for p, x in zip(trees.leaf_paths(variables["params"]),
                                         jax.tree.leaves(variables["params"]), strict=True)
             if p.endswith("kernel")]
  dense = [k for k in kernels if len(k) == 2]
  if num_classes is not None:
    class_options = [num_classes]
  else:  # the classifier is a Dense layer: try the output widths of the Dense kernels
    class_options = list(dict.fromkeys(k[-1] for k in reversed(dense))) or [10]
  if input_shape is not None:
    shapes = [tuple(input_shape)]
  elif len(dense) == len(kernels):  # an MLP: flattened inputs of one of the Dense input widths
    shapes = [(1, 1, d) for d in dict.fromkeys(k[0] for k in dense)]
  else:
    channels = dict.fromkeys(k[-2] for k in kernels if len(k) == 4)
    shapes = [(h, h, c) for c in channels for h in (8, 32, 28, 16)]
  err = None
  for classes in class_options:
    model = get_model(name, num_classes=classes, **overrides)
    for shape in shapes:
      x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
      try:
        jax.eval_shape(lambda v, x, m=model: m.apply(v, x, train=False), variables, x)
      except Exception as e:  # any shape error means: try the next candidate
        err = e
        continue
      return spec_from_model(model, variables, x, verify=verify)
  raise ValueError(f"Could not run model '{name}' with these variables (tried num_classes in "
                   f"{class_options}, inputs of shape {shapes}): {err}. Pass num_classes, "
                   "input_shape=(H, W, C) and the model overrides used.")


