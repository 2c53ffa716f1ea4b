r"""Writes landscape_jax/datasets/digits.npz: scikit-learn's 8x8 digits, so that the library
does not need scikit-learn at run time.

  python scripts/make_digits.py          # needs scikit-learn (the `test` extra)

The file holds exactly what ``sklearn.datasets.load_digits()`` returns, in small integer dtypes:

* ``images``: uint8, shape (1797, 8, 8), grey levels 0..16 (``load_digits().images``, which are
  whole numbers stored as float64);
* ``target``: uint8, shape (1797,), the digit 0..9 (``load_digits().target``).

It is written with ``np.savez_compressed`` (no pickled objects: read it with
``allow_pickle=False``). `landscape_jax.data.load("digits", ...)` scales the grey levels to
0..255 and makes the seeded train/test split. tests/test_digits_file.py checks that the file
equals ``load_digits()`` of the installed scikit-learn. The shipped file was generated with
scikit-learn 1.9.1 (whose bundled ``digits.csv.gz`` is the UCI optical-digits test set).
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "landscape_jax", "datasets", "digits.npz")


def digits_arrays() -> dict[str, np.ndarray]:
  """``load_digits()``'s images and targets as uint8 arrays; fails if a value would change."""
  from sklearn.datasets import load_digits

  raw = load_digits()
  images = raw.images.astype(np.uint8)
  target = raw.target.astype(np.uint8)
  if not (np.array_equal(images, raw.images) and np.array_equal(target, raw.target)):
    raise ValueError("load_digits() returned values that uint8 cannot hold exactly.")
  return {"images": images, "target": target}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=DEFAULT_OUT, help="where to write the .npz file")
  args = parser.parse_args(argv)
  import sklearn

  arrays = digits_arrays()
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes) from scikit-learn "
        f"{sklearn.__version__}: images {arrays['images'].shape}, target {arrays['target'].shape}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
