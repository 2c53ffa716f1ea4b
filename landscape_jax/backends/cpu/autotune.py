"""Choosing the evaluation batch size by measurement.

The batch of images that `make_metric_fn` scans over changes the speed of a surface several-fold
on CPUs (small batches under-use the matrix units, large ones spill the caches) and the best value
depends on the model and the machine. `choose_batch_size` times one full evaluation per candidate
and returns the fastest; the values it computes are the same for every batch size (exact
evaluation), so the choice only affects speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

PyTree = Any


def _call(metric_fn, params):
  return metric_fn(params)


_jit_call = jax.jit(_call)


def choose_batch_size(make_metric: Callable[[int], Callable[[PyTree], dict]], params: PyTree, *,
                      candidates: Sequence[int] = (32, 64, 128, 256), repeats: int = 2,
                      ) -> tuple[int, dict[int, float]]:
  """Times ``make_metric(b)(params)`` for each candidate `b` and returns the fastest.

  Args:
    make_metric: builds a metric_fn for a batch size, e.g.
      ``lambda b: lj.make_metric_fn(model, data, batch_stats=bs, batch_size=b)``.
    params: the parameters to evaluate at (e.g. the centre of the surface).
    candidates: batch sizes to try (positive integers).
    repeats: timed evaluations per candidate after compiling, in rounds over the candidates (the
      minimum is kept).

  The candidates' metric functions are alive together (each holds its copy of the data): time a
  subset of a large split (speed per example is what is compared).

  Returns:
    ``(best batch size, {batch size: seconds per evaluation})``.
  """
  candidates = [int(b) for b in candidates]
  if not candidates or min(candidates) < 1:
    raise ValueError(f"candidates must be positive batch sizes, got {candidates}.")
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}.")
  fns = {}
  for b in candidates:
    metric_fn = make_metric(b)
    if not isinstance(metric_fn, jax.tree_util.Partial):
      metric_fn = jax.tree_util.Partial(metric_fn)
    jax.block_until_ready(_jit_call(metric_fn, params))  # compile
    fns[b] = metric_fn
  times = {b: float("inf") for b in fns}
  for _ in range(repeats):  # round robin: a change of machine load hits every candidate alike
    for b, metric_fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(_jit_call(metric_fn, params))
      times[b] = min(times[b], time.perf_counter() - t)
  return min(times, key=times.get), times


__all__ = ["choose_batch_size"]
