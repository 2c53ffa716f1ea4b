"""Datasets as uint8 NHWC arrays, JAX-side augmentation, and a seeded epoch iterator.

`load(name, split)` returns a `Dataset`: the whole split in host memory as uint8 images and int32
labels, with the number of classes and the per-channel mean/std of the *training* split (in [0, 1]
units) used for normalisation. Normalisation happens inside compiled functions
(`normalize_images`), so evaluation data can live on the device as uint8.

Sources:
  * ``digits``: the 8x8 grey digits that scikit-learn also bundles (1797 images, 16 grey levels
    scaled to 0..255), shipped inside this package as ``datasets/digits.npz`` (no scikit-learn
    needed at run time) and split deterministically into 1348 train / 449 test images. No
    network needed.
  * ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn_cropped``: through
    `tensorflow_datasets` (``tfds.load(name, split=..., batch_size=-1)``), which downloads on a
    connected machine or reads a prepared copy from ``data_dir``. TensorFlow is imported lazily and
    never sees an accelerator.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "augment",
  "channel_stats",
  "check_normalization",
  "Dataset",
  "DatasetNotPreparedError",
  "EMBEDDED",
  "epoch_batches",
  "iterate_epoch",
  "KNOWN",
  "load",
  "normalize_images",
  "TFDS_DATASETS",
]

EMBEDDED = ("digits",)
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped")
KNOWN = EMBEDDED + TFDS_DATASETS
_DIGITS_TEST_FRACTION = 0.25
_DIGITS_SEED = 0


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset that is not prepared where `load` looks, and `download` is off.

  Attributes:
    name: the dataset's name.
    where: the directory searched (``data_dir``, ``$TFDS_DATA_DIR`` or TFDS's default).
  """

  def __init__(self, message: str, *, name: str, where: str):
    super().__init__(message)
    self.name, self.where = name, where


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One split held in host memory.

  Attributes:
    images: uint8 array of shape (N, H, W, C).
    labels: int32 array of shape (N,).
    num_classes: number of classes.
    mean: float32 per-channel mean of the training split, in [0, 1] units, shape (C,).
    std: float32 per-channel standard deviation of the training split, shape (C,); must be
      finite and > 0 (`check_normalization`, checked on construction).
    name: dataset name, e.g. ``"digits"``.
    split: split name, e.g. ``"train"``.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  mean: np.ndarray
  std: np.ndarray
  name: str = ""
  split: str = ""

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(
        f"Dataset images must be uint8 NHWC, got {self.images.dtype} {self.images.shape}.")
    if self.labels.shape != (self.images.shape[0],):
      raise ValueError(
        f"labels shape {self.labels.shape} does not match {self.images.shape[0]} images.")
    if self.images.shape[0] == 0:
      raise ValueError(f"Split {self.name}:{self.split} is empty; choose a non-empty split/subset.")
    if self.labels.min() < 0 or self.labels.max() >= self.num_classes:
      raise ValueError(
        f"labels of {self.name}:{self.split} must lie in [0, {self.num_classes}); found "
        f"[{self.labels.min()}, {self.labels.max()}].")
    check_normalization(self.mean, self.std, channels=self.images.shape[-1],
                        where=f"Dataset {self.name}:{self.split}")

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: the split as the ``(inputs, targets)`` pair of arrays that the core
    takes (`splits.make_batches`); the uint8 images are not normalised (a loss from
    `make_loss_fn(..., mean=, std=)` normalises them)."""
    return self.images, self.labels

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def subset(self, indices) -> Dataset:
    """Returns the examples at `indices` (an index array or slice), same metadata."""
    return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])


def _digits() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  # scikit-learn's load_digits() as shipped uint8 arrays (scripts/make_digits.py wrote the file).
  import importlib.resources

  path = importlib.resources.files("landscape_jax") / "datasets" / "digits.npz"
  with path.open("rb") as f, np.load(f, allow_pickle=False) as raw:
    grey, target = raw["images"], raw["target"]  # grey levels 0..16, digits 0..9
  images = np.round(grey * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
  labels = target.astype(np.int32)
  perm = np.random.default_rng(_DIGITS_SEED).permutation(len(labels))
  n_test = int(round(_DIGITS_TEST_FRACTION * len(labels)))
  test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
  return ({"train": images[train_idx], "test": images[test_idx]},
          {"train": labels[train_idx], "test": labels[test_idx]})


def _hide_accelerators_from_tf(tf) -> None:
  """TensorFlow only reads files here: keep it off GPUs/TPUs so that JAX owns them."""
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):  # already initialised or no such device type
    pass


def _tfds_arrays(name: str, split: str, data_dir: str | None, download: bool):
  try:
    import tensorflow as tf
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
      f"Loading '{name}' needs TensorFlow to read TFDS files: pip install 'landscape-jax[tf]' "
      "(or tensorflow-cpu)."
    ) from e
  _hide_accelerators_from_tf(tf)
  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    if not download:
      where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
      raise DatasetNotPreparedError(
        f"TFDS dataset '{name}' is not prepared under {where}. Prepare it on a machine with network"
        f" access (tfds.builder('{name}').download_and_prepare()) and pass data_dir=..., or call "
        "load(..., download=True) where the network is reachable.", name=name, where=where)
    builder.download_and_prepare()
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
  images, labels = data
  return np.asarray(images, np.uint8), np.asarray(labels, np.int32), builder.info


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 images in [0, 1] units (float64 accumulation)."""
  x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
  return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32)


def load(name: str, split: str = "train", *, data_dir: str | None = None,
         subset: int | None = None, shard: tuple[int, int] | None = None,
         download: bool = False) -> Dataset:
  """Loads one split of a dataset as uint8 NHWC images and int32 labels.

  Args:
    name: one of `KNOWN` (``digits`` is embedded; the others go through TFDS).
    split: ``"train"`` or ``"test"`` (TFDS split strings such as ``"train[:10%]"`` also work).
    data_dir: directory holding a prepared TFDS copy (default: TFDS's own default).
    subset: keep only the first `subset` examples (after loading, deterministic).
    shard: ``(k, i)`` keeps the i-th of k seeded, disjoint, equal parts of the split, as Li et al.
      evaluate surfaces on a fixed 1/k of the data.
    download: allow TFDS to download and prepare the dataset when it is missing. Off by default so
      that an offline machine fails at once with a message instead of hanging.

  Returns:
    A `Dataset`; `mean` and `std` are those of the full training split.
  """
  if name not in KNOWN:
    raise ValueError(f"Unknown dataset '{name}'. Known datasets: {', '.join(KNOWN)}.")
  if name == "digits":
    if split not in ("train", "test"):
      raise ValueError(f"digits has splits 'train' and 'test', not '{split}'.")
    images, labels = _digits()
    mean, std = channel_stats(images["train"])
    x, y, num_classes = images[split], labels[split], 10
  else:
    x, y, info = _tfds_arrays(name, split, data_dir, download)
    num_classes = int(info.features["label"].num_classes)
    base = split.split("[")[0]
    if base == "train" and "[" not in split:
      mean, std = channel_stats(x)
    else:
      mean, std = channel_stats(_tfds_arrays(name, "train", data_dir, download)[0])
  if shard is not None:
    k, i = shard
    if not 0 <= i < k:
      raise ValueError(f"shard=(k, i) needs 0 <= i < k, got {shard}.")
    perm = np.random.default_rng(1234).permutation(len(y))
    idx = np.sort(perm[i::k])
    x, y = x[idx], y[idx]
  if subset is not None:
    if subset <= 0:
      raise ValueError(f"subset must be positive, got {subset}.")
    x, y = x[:subset], y[:subset]
  return Dataset(images=np.ascontiguousarray(x), labels=y.astype(np.int32),
                 num_classes=num_classes, mean=mean, std=std, name=name, split=split)


def check_normalization(mean, std, *, channels: int | None = None,
                        where: str = "normalisation") -> None:
  """Raises ValueError unless `std` is finite and > 0 and `mean` finite (concrete values only).

  A zero std divides by zero: every normalised pixel, hence every loss, is NaN or inf. `mean` and
  `std` must be scalars or per-channel vectors of shape ``(channels,)`` (a vector of another length
  would broadcast the images to the wrong number of channels). Traced values (inside `jax.jit`)
  cannot be checked and pass.
  """
  if any(isinstance(x, jax.core.Tracer)
         or (isinstance(x, jax.Array) and not x.is_fully_addressable) for x in (mean, std)):
    return
  for name, value in (("mean", mean), ("std", std)):
    arr = np.asarray(value, np.float64)
    if channels is not None and arr.shape not in ((), (1,), (channels,)):
      raise ValueError(f"{where}: {name} must be a scalar or have shape ({channels},) (one value "
                       f"per image channel), got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"{where}: {name} contains NaN/inf ({arr.tolist()}); use the per-channel "
                       "statistics of the training split (data.channel_stats(images)).")
  std_arr = np.asarray(std, np.float64)
  if np.any(std_arr <= 0):
    raise ValueError(f"{where}: std must be > 0 in every channel, got {std_arr.tolist()}; a zero "
                     "std makes every normalised pixel and loss NaN/inf. Use "
                     "data.channel_stats(images) (which floors a constant channel's std at 1e-6) "
                     "or std=1 for no scaling.")


def normalize_images(images: jax.Array, mean, std) -> jax.Array:
  """(uint8 / 255 - mean) / std in float32; runs inside compiled functions.

  Concrete `mean` / `std` are checked (`check_normalization`: std > 0, both finite); traced ones
  (under `jax.jit`) cannot be.
  """
  check_normalization(mean, std, channels=images.shape[-1])
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def augment(key: jax.Array, images: jax.Array, *, pad: int = 4, flip: bool = True) -> jax.Array:
  """Random crop after zero padding by `pad` pixels, and random horizontal flip (on device).

  The standard CIFAR augmentation of Li et al. and Garipov et al. Works on any NHWC batch and
  dtype; each image gets its own offsets and flip.
  """
  n, h, w, _ = images.shape
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

  out = jax.vmap(crop)(padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(k_flip, 0.5, (n,))
    out = jnp.where(do_flip[:, None, None, None], out[:, :, ::-1, :], out)
  return out


def epoch_batches(rng: np.random.Generator | int, n: int, batch_size: int, *,
                  drop_last: bool = True) -> Iterator[np.ndarray]:
  """Yields index arrays of one shuffled epoch (seeded; identical for the same seed)."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  rng = np.random.default_rng(rng)
  perm = rng.permutation(n)
  stop = n - n % batch_size if drop_last else n
  if stop == 0:
    raise ValueError(f"batch_size {batch_size} is larger than the split ({n} examples).")
  for start in range(0, stop, batch_size):
    yield perm[start:start + batch_size]


def iterate_epoch(data: Dataset, *, batch_size: int, seed: int, epoch: int,
                  drop_last: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (uint8 images, labels) batches of one epoch, shuffled with ``(seed, epoch)``."""
  rng = np.random.default_rng([seed, epoch])
  for idx in epoch_batches(rng, len(data), batch_size, drop_last=drop_last):
    yield data.images[idx], data.labels[idx]
