"""A split on the device in whole batches: the one type evaluation, curvature, error control and
training walk with `lax.scan`.

A `DeviceSplit` holds ``batches`` (a pytree whose leaves are ``(B, b, ...)``: what a model or a
loss receives batch by batch; an ``(inputs, targets)`` pair for the metric builders), a padding
``mask`` and at most one smaller ``rest`` batch. Two layouts, one for each kind of sum:

* `device_split`: padded to ``B`` balanced batches of ``b`` examples, the padding zero and masked
  out (``mask`` 1 for a real example, 0 for padding), for exact ratios of per-example sums
  (``sum_i m_i v_i / sum_i m_i w_i``, `adapters.evaluation.split_sums`);
* `make_batches`: ``N // batch_size`` full batches and the ``N mod batch_size`` last examples as
  ``rest``, nothing padded (``mask`` None), for per-batch mean losses weighted by batch size
  (``sum_b n_b L_b / N``, the curvature routines of `core.hessian` and `core.sharpness`, whose
  ``loss_fn(params, batch)`` averages over a batch and cannot skip padded examples).

The core knows only pytrees of arrays; the adapters turn a `Dataset` into one
(`adapters.data.Dataset.arrays`, `adapters.evaluation.named_splits`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from landscape_jax.core import sharding as shd

__all__ = [
  "batch_layout",
  "check_unpadded",
  "host_targets",
  "device_split",
  "DeviceSplit",
  "make_batches",
  "num_examples",
]

PyTree = Any


class DeviceSplit(NamedTuple):
  """A split in whole batches, on the device (or, for a streamed chunk, on the host).

  Attributes:
    batches: the examples, every leaf ``(B, b, ...)``: ``B`` batches of ``b`` examples (for the
      metric builders an ``(inputs, targets)`` pair; any pytree of arrays otherwise).
    mask: ``(B, b)`` float32, 1 for a real example and 0 for padding (`device_split`); None when
      nothing is padded (`make_batches`).
    rest: the last examples as one smaller, unpadded batch (leaves ``(r, ...)``, `make_batches`
      when ``batch_size`` does not divide the split), or None.
  """

  batches: PyTree
  mask: jax.Array | None = None
  rest: PyTree | None = None

  @property
  def num_examples(self) -> int:
    """The number of examples held, padding included (``B b + r``; call outside `jax.jit`)."""
    shape = jax.tree.leaves(self.batches)[0].shape
    n = shape[0] * shape[1]
    if self.rest is not None:
      n += jax.tree.leaves(self.rest)[0].shape[0]
    return int(n)


def check_unpadded(split: DeviceSplit, *, name: str) -> None:
  """Raises a ValueError if `split` has padded batches: a per-batch mean loss would count them."""
  if split.mask is not None:
    raise ValueError(
      f"{name} got a padded DeviceSplit (device_split): its loss_fn averages over each batch, "
      "padded examples included. Build the split with make_batches (full batches and one "
      "smaller last batch, nothing padded).")


def num_examples(inputs: PyTree, targets: PyTree = None, *, name: str = "data") -> int:
  """The shared leading (example) axis of every array in `inputs` and `targets`; a ValueError
  naming `name` if the arrays disagree or there are none."""
  leaves = jax.tree.leaves((inputs, targets))
  if not leaves:
    raise ValueError(f"{name} holds no arrays; give (inputs, targets) as arrays (or pytrees of "
                     "arrays) with a leading example axis.")
  shapes = [np.shape(x) for x in leaves]
  if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
    raise ValueError(f"Every array of {name} must have the same leading (example) axis; got "
                     f"shapes {shapes}.")
  return int(shapes[0][0])


def batch_layout(n: int, batch_size: int, multiple_of: int = 1) -> tuple[int, int]:
  """``(B, b)``: the balanced batches of `device_split` for `n` examples: ``B = ceil(n / b)``
  batches of ``b = ceil(n / ceil(n / batch_size))`` examples rounded up to `multiple_of`."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if multiple_of <= 0:
    raise ValueError(f"multiple_of must be positive, got {multiple_of}.")
  num_batches = -(-n // min(batch_size, n))
  batch_size = -(-n // num_batches)
  batch_size = -(-batch_size // multiple_of) * multiple_of
  return -(-n // batch_size), batch_size


def host_targets(a) -> np.ndarray:
  """Targets on the host: integer arrays as int32, others unchanged."""
  a = np.asarray(a)
  return a.astype(np.int32) if np.issubdtype(a.dtype, np.integer) else a


def device_split(inputs, targets, *, batch_size: int, sharding=None, multiple_of: int = 1,
                 ) -> DeviceSplit:
  """Pads a split to whole batches, reshapes it into batches and puts it on device.

  The batches are balanced: with ``B = ceil(N / batch_size)`` batches each holds
  ``b = ceil(N / B)`` examples (rounded up to `multiple_of`), so at most ``B * multiple_of - 1``
  padded examples are computed and masked, instead of up to ``batch_size - 1`` (1000 images in
  batches of at most 64: 16 batches of 63, 8 padded, rather than 16 of 64 with 24 padded).

  Args:
    inputs: an (N, ...) array (uint8 images stay uint8 on the device) or any pytree of such
      arrays.
    targets: an (N, ...) array or pytree of arrays (integer arrays become int32).
    batch_size: the largest number of examples per scanned batch.
    sharding: optional `jax.sharding.Sharding` for the arrays (default: replicated on device 0).
    multiple_of: every batch is a multiple of this (the number of devices a batch is split over).

  Returns:
    ``DeviceSplit(batches=(inputs, targets), mask)``, every leaf ``(B, b, ...)``.
  """
  inputs = jax.tree.map(np.asarray, inputs)
  targets = jax.tree.map(host_targets, targets)
  leaves = jax.tree.leaves((inputs, targets))
  if leaves and any(np.shape(x)[:1] == (0,) for x in leaves):
    raise ValueError("Cannot evaluate on an empty split.")
  n = num_examples(inputs, targets)
  num_batches, batch_size = batch_layout(n, batch_size, multiple_of)
  pad = num_batches * batch_size - n
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])

  def batched(a):
    a = np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)])
    return a.reshape(num_batches, batch_size, *a.shape[1:])

  put = (lambda a: shd.put(a, sharding)) if sharding is not None else jnp.asarray
  return DeviceSplit((jax.tree.map(lambda a: put(batched(a)), inputs),
                      jax.tree.map(lambda a: put(batched(a)), targets)),
                     put(mask.reshape(num_batches, batch_size)))


def make_batches(data: PyTree, *, batch_size: int, sharding=None) -> DeviceSplit:
  """Cuts a split into device-resident batches for whole-split curvature.

  Args:
    data: any pytree of arrays sharing the leading (example) axis, such as
      ``(uint8 images, int labels)`` (a `Dataset`'s: ``dataset.arrays``); its batches are what
      ``loss_fn`` receives.
    batch_size: examples per batch (clipped to the split size).
    sharding: optional `jax.sharding.Sharding` for the stacked full batches, e.g.
      ``NamedSharding(mesh, P(None, "data"))`` to split every batch over the devices of a mesh
      (the HVPs then run data-parallel under `jax.jit`). For a `NamedSharding` the remainder
      batch gets the same spec without its leading entry; it must divide evenly too. Default:
      the default device.

  Returns:
    A `DeviceSplit` with ``N // batch_size`` full batches, no mask, and the remainder as
    ``rest`` when ``batch_size`` does not divide ``N``.
  """
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise ValueError("make_batches needs a non-empty pytree of arrays (e.g. (images, labels)).")
  odd = [type(x).__name__ for x in leaves if not hasattr(x, "shape")]
  if odd:
    raise TypeError(f"make_batches takes a pytree of arrays with a leading example axis; got a "
                    f"{odd[0]}. For a Dataset pass its arrays: make_batches(dataset.arrays, ...).")
  n = int(np.shape(leaves[0])[0])
  if any(np.shape(x)[:1] != (n,) for x in leaves):
    raise ValueError("All arrays given to make_batches must share the leading example axis; got "
                     f"shapes {[np.shape(x) for x in leaves]}.")
  if n == 0:
    raise ValueError("Cannot build batches of an empty split.")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  batch_size = min(int(batch_size), n)
  num_full = n // batch_size
  cut = num_full * batch_size
  rest_sharding = sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    rest_sharding = jax.sharding.NamedSharding(sharding.mesh,
                                               jax.sharding.PartitionSpec(*sharding.spec[1:]))

  def put(a, where):
    return jnp.asarray(a) if where is None else jax.device_put(a, where)

  full = jax.tree.map(lambda x: put(
    np.asarray(x)[:cut].reshape(num_full, batch_size, *np.shape(x)[1:]), sharding), data)
  rest = jax.tree.map(lambda x: put(np.asarray(x)[cut:], rest_sharding), data) if cut < n \
    else None
  return DeviceSplit(batches=full, rest=rest)
