"""Data: the TFDS path on a tiny dataset written in TFDS format to disk by tfds's own writer,
fast failure when a dataset is absent, subsets and shards, augmentation and epoch iteration."""

import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.adapters import data


def write_tiny_tfds(name, data_dir, splits):
  """Prepares TFDS dataset `name` under `data_dir` from in-memory arrays, offline.

  The registered builder (real features, version and file layout) runs `download_and_prepare`
  with its download step replaced by the given examples, so the files on disk are exactly what
  TFDS writes for the real dataset, only smaller.
  """
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("tensorflow")
  builder_cls = type(tfds.builder(name, data_dir=data_dir))

  def split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, *arrays) for split, arrays in splits.items()}

  def generate_examples(self, split, images, labels):
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
      record = {"image": image, "label": int(label)}
      if "id" in self.info.features:
        record["id"] = f"{split}_{i:05d}"
      yield i, record

  with mock.patch.object(builder_cls, "_split_generators", split_generators), \
       mock.patch.object(builder_cls, "_generate_examples", generate_examples):
    tfds.builder(name, data_dir=data_dir).download_and_prepare(
      download_dir=str(data_dir / "downloads"))


def random_split(rng, n, shape):
  return rng.integers(0, 256, (n, *shape), dtype=np.uint8), (np.arange(n) * 7) % 10


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  """A data_dir with tiny 'mnist' (28x28x1) and 'cifar10' (32x32x3) in TFDS format."""
  root = tmp_path_factory.mktemp("tfds")
  rng = np.random.default_rng(0)
  arrays = {}
  for name, shape in (("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))):
    arrays[name] = {"train": random_split(rng, 12, shape), "test": random_split(rng, 5, shape)}
    write_tiny_tfds(name, root, arrays[name])
  return root, arrays


def sort_examples(images, labels):
  order = np.lexsort((labels, images.reshape(len(images), -1).sum(1), images[:, 0, 0, 0]))
  return images[order], labels[order]


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_load_tfds_from_disk(tiny_tfds, name):
  root, arrays = tiny_tfds
  train = lj.load(name, "train", data_dir=str(root))
  test = lj.load(name, "test", data_dir=str(root))
  for ds, split in ((train, "train"), (test, "test")):
    images, labels = arrays[name][split]
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    assert ds.images.shape == images.shape and ds.num_classes == 10
    assert (ds.name, ds.split) == (name, split)
    # TFDS stores examples in a hashed order: compare as sets of (image, label) pairs.
    got, want = sort_examples(ds.images, ds.labels), sort_examples(images, labels)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
  # Normalisation statistics come from the training split, per channel, in [0, 1] units.
  x = arrays[name]["train"][0].reshape(-1, train.images.shape[-1]) / 255.0
  for ds in (train, test):
    np.testing.assert_allclose(ds.mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.std, x.std(0), rtol=1e-5)
  # TFDS split slicing and our subsets work on the same path.
  np.testing.assert_array_equal(lj.load(name, "train[:4]", data_dir=str(root)).images,
                                train.images[:4])
  np.testing.assert_array_equal(lj.load(name, "train", data_dir=str(root), subset=3).labels,
                                train.labels[:3])


def test_missing_tfds_dataset_fails_fast(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  start = time.monotonic()
  with pytest.raises(FileNotFoundError, match="not prepared.*download=True"):
    lj.load("fashion_mnist", "train", data_dir=str(tmp_path))
  assert time.monotonic() - start < 60  # no download attempt, no network wait


def test_unknown_dataset_lists_known():
  with pytest.raises(ValueError, match="digits.*cifar10"):
    lj.load("cifar11", "train")
  with pytest.raises(ValueError, match="splits"):
    lj.load("digits", "validation")


def test_digits(digits_train, digits_test):
  assert digits_train.images.shape == (1348, 8, 8, 1) and len(digits_test) == 449
  assert digits_train.images.dtype == np.uint8 and digits_train.images.max() == 255
  assert set(np.unique(digits_train.labels)) == set(range(10))
  np.testing.assert_array_equal(digits_test.mean, digits_train.mean)
  x = digits_train.images.astype(np.float64) / 255.0
  np.testing.assert_allclose(digits_train.mean, [x.mean()], rtol=1e-6)
  np.testing.assert_allclose(digits_train.std, [x.std()], rtol=1e-6)
  # The split is deterministic.
  again = lj.load("digits", "test")
  np.testing.assert_array_equal(again.images, digits_test.images)


def test_subset_and_shards(digits_train):
  first = lj.load("digits", "train", subset=10)
  np.testing.assert_array_equal(first.images, digits_train.images[:10])
  shards = [lj.load("digits", "train", shard=(4, i)) for i in range(4)]
  assert sum(len(s) for s in shards) == len(digits_train)
  assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
  # Disjoint and covering: the shards' (image, label) rows together are the split's rows.
  rows = lambda ds: {(bytes(im), int(lb)) for im, lb in zip(ds.images, ds.labels, strict=True)}
  union = set().union(*(rows(s) for s in shards))
  assert union == rows(digits_train)
  np.testing.assert_array_equal(lj.load("digits", "train", shard=(4, 1)).images, shards[1].images)
  both = lj.load("digits", "train", shard=(4, 1), subset=5)
  np.testing.assert_array_equal(both.images, shards[1].images[:5])
  with pytest.raises(ValueError, match="shard"):
    lj.load("digits", "train", shard=(4, 4))
  with pytest.raises(ValueError, match="subset"):
    lj.load("digits", "train", subset=0)


def test_dataset_validation():
  images = np.zeros((3, 8, 8, 1), np.uint8)
  with pytest.raises(ValueError, match="uint8"):
    data.Dataset(images.astype(np.float32), np.zeros(3, np.int32), 10, np.zeros(1), np.ones(1))
  with pytest.raises(ValueError, match="labels"):
    data.Dataset(images, np.zeros(2, np.int32), 10, np.zeros(1), np.ones(1))
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    data.Dataset(images, np.full(3, 10, np.int32), 10, np.zeros(1), np.ones(1))


def test_normalize_images():
  images = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3) * 10
  mean, std = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.25, 2.0])
  out = data.normalize_images(jnp.asarray(images), mean, std)
  np.testing.assert_allclose(out, (images / 255.0 - mean) / std, rtol=1e-6)
  assert out.dtype == jnp.float32


def test_augment_is_pad_crop_flip():
  """Every output is one of the 9x9 crops of the 4-padded image, possibly mirrored."""
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (16, 6, 5, 2), dtype=np.uint8)
  out = np.asarray(jax.jit(data.augment)(jax.random.key(0), jnp.asarray(images)))
  assert out.shape == images.shape and out.dtype == np.uint8
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  flips, shifts = 0, 0
  for img, pad, res in zip(images, padded, out, strict=True):
    candidates = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                  if np.array_equal(res, (lambda c: c[:, ::-1] if f else c)(
                    pad[dy:dy + 6, dx:dx + 5]))]
    assert candidates, "augmented image is not a padded crop (or its mirror)"
    flips += all(f for _, _, f in candidates)
    shifts += all((dy, dx) != (4, 4) for dy, dx, _ in candidates)
    del img
  assert 0 < flips < 16 and shifts > 8  # both flip states occur; most crops are shifted
  same = np.asarray(data.augment(jax.random.key(0), jnp.asarray(images)))
  np.testing.assert_array_equal(same, out)  # deterministic given the key
  ident = data.augment(jax.random.key(1), jnp.asarray(images), pad=0, flip=False)
  np.testing.assert_array_equal(ident, images)


def test_epoch_iteration_is_seeded_permutation(digits_train):
  small = digits_train.subset(slice(0, 50))
  epoch0 = list(data.iterate_epoch(small, batch_size=8, seed=3, epoch=0))
  assert len(epoch0) == 6 and all(x.shape == (8, 8, 8, 1) for x, _ in epoch0)
  again = list(data.iterate_epoch(small, batch_size=8, seed=3, epoch=0))
  for (x0, y0), (x1, y1) in zip(epoch0, again, strict=True):
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(y0, y1)
  idx = np.concatenate(list(data.epoch_batches(np.random.default_rng([3, 0]), 50, 8)))
  assert len(np.unique(idx)) == 48  # no repeats; the remainder of 2 is dropped
  full = np.concatenate(list(data.epoch_batches(7, 50, 8, drop_last=False)))
  np.testing.assert_array_equal(np.sort(full), np.arange(50))
  other = np.concatenate([y for _, y in data.iterate_epoch(small, batch_size=8, seed=3, epoch=1)])
  assert not np.array_equal(other, np.concatenate([y for _, y in epoch0]))
  with pytest.raises(ValueError, match="larger than"):
    list(data.epoch_batches(0, 5, 8))
