"""Character-level text for sequence models: a bundled text and next-character windows.

`load_text` reads a text shipped with the package (``"valley"``: a 4 KB English passage written
for this project and dedicated to the public domain). `char_splits` cuts a text into a training
and a test part (contiguous, so no window spans both) and each part into windows of ``context``
characters: ``inputs[i] = ids[s_i : s_i + context]``, ``targets[i] = ids[s_i + 1 : s_i + context +
1]`` (next-character prediction), as int32 ``(N, context)`` arrays, the ``(inputs, targets)``
pairs that `make_metric_fn` / `make_loss_fn` take with ``loss=TOKEN_CROSS_ENTROPY``.
"""

from __future__ import annotations

import importlib.resources

import numpy as np

__all__ = [
  "char_splits",
  "char_windows",
  "decode",
  "encode",
  "load_text",
  "TEXTS",
]

TEXTS = ("valley",)


def load_text(name: str = "valley") -> str:
  """The text `name` shipped with the package (one of `TEXTS`)."""
  if name not in TEXTS:
    raise ValueError(f"Unknown text {name!r}; the package ships {TEXTS}.")
  return (importlib.resources.files("landscape_jax.adapters") / "texts" / f"{name}.txt").read_text(
    encoding="utf-8")


def encode(text: str, vocabulary: str) -> np.ndarray:
  """int32 ids of the characters of `text` in `vocabulary` (a string of distinct characters)."""
  index = {c: i for i, c in enumerate(vocabulary)}
  missing = sorted(set(text) - set(index))
  if missing:
    raise ValueError(f"Characters {missing[:10]} of the text are not in the vocabulary.")
  return np.fromiter((index[c] for c in text), np.int32, len(text))


def decode(ids, vocabulary: str) -> str:
  """The string of the ids."""
  return "".join(vocabulary[int(i)] for i in np.asarray(ids).ravel())


def char_windows(ids: np.ndarray, *, context: int, stride: int | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
  """``(inputs, targets)``: windows of `context` ids starting every `stride` (default `context`)
  positions, and the same windows shifted by one (the next character at every position)."""
  ids = np.asarray(ids, np.int32)
  if context < 1:
    raise ValueError(f"context must be positive, got {context}.")
  stride = context if stride is None else int(stride)
  if stride < 1:
    raise ValueError(f"stride must be positive, got {stride}.")
  starts = np.arange(0, len(ids) - context, stride)
  if starts.size == 0:
    raise ValueError(f"The text ({len(ids)} characters) is shorter than context + 1 = "
                     f"{context + 1}.")
  offsets = np.arange(context)
  return ids[starts[:, None] + offsets], ids[starts[:, None] + offsets + 1]


def char_splits(text: str, *, context: int, stride: int | None = None,
                test_fraction: float = 0.1) -> tuple[dict[str, tuple], str]:
  """``({"train": (inputs, targets), "test": (inputs, targets)}, vocabulary)`` of a text.

  The vocabulary is the sorted set of the text's characters; the last `test_fraction` of the
  characters is the test part. Windows as in `char_windows` (training windows every `stride`
  characters, test windows side by side).
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}.")
  vocabulary = "".join(sorted(set(text)))
  ids = encode(text, vocabulary)
  cut = int(round(len(ids) * (1.0 - test_fraction)))
  return ({"train": char_windows(ids[:cut], context=context, stride=stride),
           "test": char_windows(ids[cut:], context=context)}, vocabulary)
