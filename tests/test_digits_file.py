"""The digits shipped as landscape_jax/datasets/digits.npz: exactly scikit-learn's load_digits(),
read as plain arrays (allow_pickle=False), and `lj.load("digits")` computed from it as it was
from scikit-learn."""

import importlib.resources
import zipfile

import numpy as np
from sklearn.datasets import load_digits

import landscape_jax as lj


def _shipped():
  return importlib.resources.files("landscape_jax") / "datasets" / "digits.npz"


def test_file_equals_sklearn_load_digits():
  raw = load_digits()
  with _shipped().open("rb") as f, np.load(f, allow_pickle=False) as shipped:
    assert sorted(shipped.files) == ["images", "target"]
    images, target = shipped["images"], shipped["target"]
  assert images.dtype == np.uint8 and target.dtype == np.uint8
  assert images.shape == raw.images.shape == (1797, 8, 8)
  np.testing.assert_array_equal(images.astype(np.float64), raw.images)
  np.testing.assert_array_equal(target.astype(raw.target.dtype), raw.target)


def test_file_is_compressed_and_holds_no_objects():
  with _shipped().open("rb") as f, zipfile.ZipFile(f) as z:
    infos = z.infolist()
  assert {i.filename for i in infos} == {"images.npy", "target.npy"}
  assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
  assert sum(i.compress_size for i in infos) < 100_000


def test_load_matches_the_sklearn_computation():
  """The loader's images, labels and split, recomputed here from scikit-learn's arrays."""
  raw = load_digits()
  images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  perm = np.random.default_rng(0).permutation(1797)
  test_idx, train_idx = np.sort(perm[:449]), np.sort(perm[449:])
  for split, idx in (("train", train_idx), ("test", test_idx)):
    ds = lj.load("digits", split)
    np.testing.assert_array_equal(ds.images, images[idx])
    np.testing.assert_array_equal(ds.labels, raw.target[idx].astype(np.int32))
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10
