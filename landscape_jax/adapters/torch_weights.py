"""PyTorch checkpoints into the bundled zoo: a state_dict of Li et al.'s loss-landscape models or
Garipov et al.'s mode-connectivity models becomes the flax variables of the matching zoo model.

    variables = lj.load_torch_weights("resnet56", "model_300.safetensors", num_classes=10)
    logits = lj.get_model("resnet56", num_classes=10).apply(variables, images_nhwc)

Files: ``.safetensors`` is read here with numpy (an 8-byte little-endian header length, a JSON
header naming each tensor's dtype, shape and byte range, then the raw bytes; nothing is executed).
Any other file (``.pt``, ``.t7``, ``.pth``) goes through ``torch.load(weights_only=True)`` when
PyTorch is installed (``pip install landscape-jax[torch]``); a dict holding a ``"state_dict"``
(Li et al.'s ``.t7`` files) or ``"model_state"`` (Garipov et al.'s checkpoints) is unwrapped.
Convert such a checkpoint once to safetensors (``safetensors.torch.save_file``) to read it
without PyTorch.

Conversion, for every tensor of the state_dict (`torch_to_flax`):

* the module path is renamed to the zoo's (a rule per architecture, `torch_name_map`), e.g.
  ``layer2.0.shortcut.0`` -> ``layer2_0/shortcut_conv``, ``layer_blocks.1.0`` -> ``conv_2``;
* ``Conv2d.weight`` (O, I, kh, kw) -> ``kernel`` (kh, kw, I, O); ``Linear.weight`` (out, in) ->
  ``kernel`` (in, out) (a Linear after a flatten of C x H x W features also has its rows
  reordered from PyTorch's (C, H, W) to flax's (H, W, C) order); biases unchanged;
* ``BatchNorm.weight`` / ``bias`` -> ``params`` ``scale`` / ``bias``, ``running_mean`` /
  ``running_var`` -> ``batch_stats`` ``mean`` / ``var``; ``num_batches_tracked`` is dropped
  (PyTorch's eps 1e-5 and momentum 0.1 are the zoo's).

Every zoo leaf must receive exactly one tensor of its shape, and every tensor must find a leaf:
otherwise the error names the keys and shapes (a wrong ``width``, ``num_classes`` or depth shows
up here rather than as wrong logits). Images are NHWC for the zoo (``x.transpose(0, 2, 3, 1)``
for an NCHW batch). Tested by equal logits against the PyTorch models (tests/test_torch_weights.py).

Supported (zoo name: PyTorch model):

  resnet{d}[_noshort], wrn56_{k}   Li et al. ``ResNet_cifar`` (BasicBlock, post-activation)
  vgg9, vgg9_bn                    Li et al. ``VGG9`` (BN after every conv and the hidden Linear)
  densenet_cifar                   Li et al. ``densenet_cifar``
  vgg16                            Garipov et al. ``VGG16`` (not VGG16BN: `torch_name_map`)
  preresnet{d}                     Garipov et al. ``PreResNet{d}``
  wrn{d}_{k} (d = 6n + 4)          Garipov et al. ``WideResNet{d}x{k}``

References:
  Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets"
  (github.com/tomgoldstein/loss-landscape); Garipov, Izmailov, Podoprikhin, Vetrov and Wilson
  2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs"
  (github.com/timgaripov/dnn-mode-connectivity); the safetensors format
  (github.com/huggingface/safetensors).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from landscape_jax.core import fileio
from landscape_jax.models import get_model
from landscape_jax.models.densenet import DenseNet
from landscape_jax.models.preresnet import PreResNet
from landscape_jax.models.resnet import ResNet
from landscape_jax.models.vgg import VGG
from landscape_jax.models.wide_resnet import WideResNet

__all__ = [
  "load_torch_weights",
  "read_safetensors",
  "read_torch_state_dict",
  "torch_name_map",
  "torch_to_flax",
  "write_safetensors",
]

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
           "I8": "i1", "U8": "u1", "BOOL": "?"}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_safetensors(path) -> dict[str, np.ndarray]:
  """{name: numpy array} of a ``.safetensors`` file (BF16 tensors become float32 exactly).

  Format: an unsigned 64-bit little-endian header size N, N bytes of JSON
  ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
  tensors' bytes (offsets relative to the end of the header), little-endian, C order.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    raw = f.read()
  if len(raw) < 8:
    raise ValueError(f"{path}: {len(raw)} bytes is too short for a safetensors file.")
  (n,) = struct.unpack("<Q", raw[:8])
  if n > len(raw) - 8:
    raise ValueError(f"{path}: header length {n} exceeds the file ({len(raw)} bytes); the file is "
                     "truncated or not safetensors (a torch.save file? use read_torch_state_dict).")
  try:
    header = json.loads(raw[8:8 + n].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: the safetensors header is not valid JSON ({e}).") from e
  data = memoryview(raw)[8 + n:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    begin, end = info["data_offsets"]
    shape = tuple(int(s) for s in info["shape"])
    dtype = info["dtype"]
    if not 0 <= begin <= end <= len(data):
      raise ValueError(f"{path}: tensor {name!r} has byte range [{begin}, {end}) outside the "
                       f"{len(data)} data bytes; the file is truncated or corrupt.")
    chunk = data[begin:end]
    if dtype == "BF16":  # the upper half of a float32
      bits = np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16
      arr = bits.view(np.float32)
    elif dtype in _DTYPES:
      arr = np.frombuffer(chunk, dtype=_DTYPES[dtype])
    else:
      raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, which this reader does not "
                       f"handle ({', '.join([*_DTYPES, 'BF16'])}).")
    if arr.size != math.prod(shape):
      raise ValueError(f"{path}: tensor {name!r} has {arr.size} values for shape {shape}.")
    out[name] = arr.reshape(shape).copy()
  return out


def write_safetensors(path, tensors: Mapping[str, Any],
                      metadata: Mapping[str, str] | None = None) -> str:
  """Writes {name: array} as a ``.safetensors`` file (atomically); returns the path.

  The layout `read_safetensors` describes, tensors in sorted name order, the header padded with
  spaces to a multiple of 8 bytes (as the reference implementation); PyTorch's
  ``safetensors.torch.load_file`` reads it.
  """
  header: dict[str, Any] = {}
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  chunks, offset = [], 0
  for name in sorted(tensors):
    a = np.ascontiguousarray(np.asarray(tensors[name]))
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    if np.dtype(dt) not in _NAMES:
      raise ValueError(f"tensor {name!r}: dtype {a.dtype} has no safetensors name here.")
    b = a.astype(dt, copy=False).tobytes()
    header[name] = {"dtype": _NAMES[np.dtype(dt)], "shape": list(a.shape),
                    "data_offsets": [offset, offset + len(b)]}
    chunks.append(b)
    offset += len(b)
  text = json.dumps(header, separators=(",", ":")).encode("utf-8")
  text += b" " * (-len(text) % 8)
  fileio.atomic_write_bytes(os.fspath(path), struct.pack("<Q", len(text)) + text + b"".join(chunks))
  return os.fspath(path)


def _unwrap(obj: Any, path: str) -> dict[str, np.ndarray]:
  for key in ("state_dict", "model_state", "model_state_dict"):
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
      break
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state_dict (a dict of tensors), got "
                     f"{type(obj).__name__}.")
  out = {}
  for k, v in obj.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
    if isinstance(v, np.ndarray):
      out[str(k)] = v
  return out


def read_torch_state_dict(path) -> dict[str, np.ndarray]:
  """{name: numpy array} of a PyTorch state_dict file.

  ``.safetensors`` is read without PyTorch (`read_safetensors`); anything else needs PyTorch and
  is loaded with ``torch.load(path, map_location="cpu", weights_only=True)``, which refuses
  pickled code. A ``module.`` prefix (``DataParallel``) is removed.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No PyTorch checkpoint at {path!r}.")
  if path.endswith(".safetensors"):
    sd = read_safetensors(path)
  else:
    try:
      import torch  # optional: only for torch.save checkpoints
    except ImportError as e:
      raise ImportError(
        f"{path} is a torch.save checkpoint, which needs PyTorch to read (pip install "
        "'landscape-jax[torch]'); or convert it once to .safetensors where PyTorch is installed "
        "(safetensors.torch.save_file(state_dict, 'model.safetensors')) and read that.") from e
    sd = _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  return sd


# ---------------------------------------------------------------------------------------------
# Name maps: PyTorch module path -> zoo module path ("/"-separated).


def _li_resnet(name: str) -> str:
  m = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", name)
  if not m:
    return name  # conv1, bn1, linear
  rest = {"shortcut.0": "shortcut_conv", "shortcut.1": "shortcut_bn"}.get(m[3], m[3])
  return f"layer{m[1]}_{m[2]}/{rest}"


def _garipov_resnet(top_bn: str) -> Callable[[str], str]:
  def rename(name: str) -> str:
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", name)
    if m:
      rest = {"downsample.0": "downsample", "shortcut.0": "shortcut"}.get(m[3], m[3])
      return f"layer{m[1]}_{m[2]}/{rest}"
    return {"fc": "linear", top_bn: "bn"}.get(name, name)
  return rename


def _li_densenet(name: str) -> str:
  m = re.fullmatch(r"dense(\d+)\.(\d+)\.(.+)", name)
  if m:
    return f"dense{m[1]}_{m[2]}/{m[3]}"
  m = re.fullmatch(r"trans(\d+)\.(bn|conv)", name)
  return f"trans{m[1]}_{m[2]}" if m else name


def _li_vgg(model: VGG) -> Callable[[str], str]:
  """Li et al.'s VGG: features.{p} over [conv, bn, relu]* with 'M' pools; fc.0, fc.1; classifier."""
  table, p, i = {}, 0, 0
  for stage in model.stages:
    for _ in stage:
      table[f"features.{p}"] = f"conv_{i}"
      table[f"features.{p + 1}"] = f"bn_{i}"
      p, i = p + 3, i + 1
    p += 1  # the pooling
  table.update({"fc.0": "fc_0", "fc.1": "fc_bn_0", "classifier": "linear"})
  return lambda name: table.get(name, name)


def _garipov_vgg(model: VGG) -> Callable[[str], str]:
  """Garipov et al.'s VGG: layer_blocks.{s}.{k} (conv, or conv/bn pairs); classifier.{1,4,6}."""
  if model.batch_norm:
    raise ValueError(
      "Garipov et al.'s VGG16BN is not supported: its forward pass zips each stage's layers "
      "(conv, BN, conv, BN, ...) with one ReLU per convolution, so it runs only the first conv "
      "and BN of each stage, which the zoo's vgg16_bn does not reproduce. VGG16 (no BN) is.")
  table, i = {}, 0
  per = 1
  for s, stage in enumerate(model.stages):
    for c in range(len(stage)):
      table[f"layer_blocks.{s}.{per * c}"] = f"conv_{i}"
      i += 1
  table.update({"classifier.1": "fc_0", "classifier.4": "fc_1", "classifier.6": "linear"})
  return lambda name: table.get(name, name)


def torch_name_map(model: nn.Module) -> Callable[[str], str]:
  """The function renaming a PyTorch module path (``layer1.0.conv1``) to the zoo's
  (``layer1_0/conv1``) for `model`, by its class and configuration (see the module docstring).

  Raises:
    ValueError: for a model with no PyTorch counterpart here.
  """
  if isinstance(model, ResNet):
    return _li_resnet
  if isinstance(model, PreResNet):
    return _garipov_resnet("bn")
  if isinstance(model, WideResNet):
    return _garipov_resnet("bn1")
  if isinstance(model, DenseNet):
    return _li_densenet
  if isinstance(model, VGG):
    return _li_vgg(model) if model.hidden is None else _garipov_vgg(model)
  raise ValueError(
    f"No PyTorch name map for {type(model).__name__}: supported are the zoo's ResNet, PreResNet, "
    "WideResNet, DenseNet and VGG (Li et al.'s and Garipov et al.'s models). For another model, "
    "rename the state_dict's keys yourself and call torch_to_flax(..., name_map=fn).")


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _leaves(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_leaves(v, (*prefix, k)))
    else:
      out[(*prefix, k)] = v
  return out


def _chw_rows_to_hwc(kernel: np.ndarray, channels: int) -> np.ndarray:
  """(C*H*W, out) rows in PyTorch's flatten order -> flax's (H*W*C, out) order."""
  rows, out = kernel.shape
  hw = rows // channels
  return kernel.reshape(channels, hw, out).transpose(1, 0, 2).reshape(rows, out)


def torch_to_flax(model: nn.Module, state_dict: Mapping[str, Any], *,
                  input_shape: tuple[int, int, int] = (32, 32, 3),
                  name_map: Callable[[str], str] | None = None) -> dict:
  """The flax variables ``{"params", "batch_stats"}`` of `model` from a PyTorch state_dict.

  Args:
    model: a zoo model (`get_model`) of the same architecture, width and `num_classes`.
    state_dict: {PyTorch key: array} (`read_torch_state_dict`).
    input_shape: (H, W, C) of one input image; fixes the flattened size of VGG's first Linear.
    name_map: PyTorch module path -> zoo module path (default `torch_name_map(model)`).

  Returns:
    The variables, float32 numpy arrays, ready for ``model.apply(variables, x)``.

  Raises:
    ValueError: naming the unmatched, missing or mis-shaped keys.
  """
  rename = name_map or torch_name_map(model)
  x = jnp.zeros((1, *input_shape), jnp.float32)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  want = {(col, *path): leaf.shape for col in template
          for path, leaf in _leaves(template[col]).items()}
  got: dict[tuple[str, ...], np.ndarray] = {}
  unused = []
  modules = {k.rpartition(".")[0] for k in state_dict}
  bn_modules = {m for m in modules if f"{m}.running_mean" in state_dict}
  for key, value in state_dict.items():
    module, _, leaf = key.rpartition(".")
    if leaf == "num_batches_tracked":
      continue
    target = tuple(rename(module).split("/"))
    a = np.asarray(value, dtype=np.float32)
    if module in bn_modules:
      col, name = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                   "running_mean": ("batch_stats", "mean"),
                   "running_var": ("batch_stats", "var")}.get(leaf, (None, None))
    elif leaf == "weight" and a.ndim == 4:
      col, name, a = "params", "kernel", a.transpose(2, 3, 1, 0)
    elif leaf == "weight" and a.ndim == 2:
      col, name, a = "params", "kernel", a.T
    elif leaf == "bias":
      col, name = "params", "bias"
    else:
      col, name = None, None
    path = (col, *target, name) if col else None
    if path is None or path not in want:
      unused.append(f"{key} {tuple(a.shape)}" + (f" -> {'/'.join(path)}" if path else ""))
      continue
    if isinstance(model, VGG) and path == ("params", "fc_0", "kernel"):
      last_conv = sum(len(stage) for stage in model.stages) - 1
      channels = want[("params", f"conv_{last_conv}", "kernel")][-1]
      if a.shape == want[path] and a.shape[0] % channels == 0:
        a = _chw_rows_to_hwc(a, channels)  # identity when the features are 1 x 1
    if a.shape != want[path]:
      raise ValueError(
        f"{key}: shape {tuple(a.shape)} after conversion, but {'/'.join(path)} of "
        f"{type(model).__name__} has {want[path]}; build the zoo model with the checkpoint's "
        "width, depth and num_classes (and input_shape for VGG).")
    if path in got:
      raise ValueError(f"{key}: a second tensor for {'/'.join(path)}; the name map is ambiguous.")
    got[path] = a
  missing = sorted("/".join(p) for p in want if p not in got)
  if unused or missing:
    raise ValueError(
      f"The state_dict does not match {type(model).__name__}: "
      + (f"{len(unused)} PyTorch keys found no place ({'; '.join(unused[:6])}"
         f"{' ...' if len(unused) > 6 else ''})" if unused else "")
      + ("; " if unused and missing else "")
      + (f"{len(missing)} zoo leaves got no tensor ({', '.join(missing[:6])}"
         f"{' ...' if len(missing) > 6 else ''})" if missing else "")
      + ". Is it the same architecture (see landscape_jax.adapters.torch_weights)?")
  variables: dict = {}
  for path, a in got.items():
    _set(variables, path, a)
  return variables


def load_torch_weights(name: str, path, *, num_classes: int,
                       input_shape: tuple[int, int, int] = (32, 32, 3), **overrides) -> dict:
  """Reads a PyTorch checkpoint into the zoo model `name` (`get_model(name, num_classes=...,
  **overrides)`) and returns its variables (`read_torch_state_dict`, then `torch_to_flax`)."""
  model = get_model(name, num_classes=num_classes, **overrides)
  return torch_to_flax(model, read_torch_state_dict(path), input_shape=input_shape)
