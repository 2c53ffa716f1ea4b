"""Evaluation splits kept in host memory and streamed to the devices in prefetched chunks.

A split larger than the devices' memory cannot be a leaf of a compiled ``metric_fn``. A
`StreamedMetric` keeps it on the host instead, cut into chunks of equal shape (whole batches,
the last chunk padded with masked examples), and evaluates every metric as the same ratio of
sums over the whole split as an on-device metric does: for each chunk, a compiled ``sums_fn``
gives the chunk's per-metric sums (float32, batch by batch), the host adds the chunks' sums in
float64, and ``finish`` takes the ratios. A host loop cannot run inside `jax.jit`, so the loop
sits outside the compiled code, around it:

* called directly, ``metric(params)`` evaluates one point chunk by chunk (outside `jit`; a
  traced call is refused);
* the point-evaluation engine (`core.engine`: `surface_grid`, `linear_path`, curves, planes,
  swap paths, adaptive refinement) runs the loop once per chunk of points: every data chunk is
  evaluated at all the chunk's points by the engine's ordinary compiled evaluator
  (``metric_fn = chunk_metric(chunk)``, a `jax.tree_util.Partial` over the chunk on the
  devices), so the points stay on the devices, the mesh's points / data / model roles apply as
  for an on-device split (each chunk is sharded over the data axis), and the engine's store and
  resume work unchanged.

Chunks are double-buffered (`stream`): chunk ``i + 1`` is cut on the host and its transfer
(`jax.device_put`, asynchronous) started while chunk ``i`` is computed, and chunk ``i`` is
released before chunk ``i + 2`` is cut, so the devices hold at most two chunks of data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.tree_util import Partial

from landscape_jax.core import sharding as shd

__all__ = [
  "HostChunks",
  "StreamedMetric",
  "stream",
]

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class HostChunks:
  """One split on the host, read in chunks of equal shape.

  Attributes:
    arrays: the split's host arrays (numpy; what a store's identity digests, byte for byte).
    constants: small arrays every chunk is evaluated with (e.g. an input normalisation), put on
      the devices with the chunks (the engine: once per chunk of points).
    num_chunks: the number of chunks.
    cut: ``cut(arrays, i) -> chunk`` (a host pytree, the same shapes for every i): a plain,
      module-level function (it is part of the identity).
  """

  arrays: PyTree
  constants: PyTree
  num_chunks: int
  cut: Callable[[PyTree, int], PyTree]

  def chunk(self, i: int) -> PyTree:
    if not 0 <= i < self.num_chunks:
      raise IndexError(f"chunk {i} of {self.num_chunks}")
    return self.cut(self.arrays, i)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class StreamedMetric:
  """``metric_fn(params) -> {metric: value}`` over splits held on the host (module docstring).

  Attributes:
    sums_fn: ``sums_fn(constants, chunk, params) -> {sum name: float32 scalar}`` (a
      `jax.tree_util.Partial`, jit-able and vmappable over params): the sums of one chunk.
    streams: ``{name: HostChunks}``; the sums of stream ``name`` are returned under ``name``.
    finish: ``finish({name: {sum name: float64 array}}) -> {metric: array}`` on the host
      (elementwise: the arrays hold one value per point).
    metric_names: the names `finish` returns, in order.
    sharding: where each chunk goes: a `jax.sharding.Sharding` for every chunk leaf (e.g.
      ``NamedSharding(mesh, P(None, "data"))`` for chunks of shape (batches, batch, ...)), or
      None: replicated over the engine's mesh, or the default device without one.
  """

  sums_fn: Partial
  streams: Mapping[str, HostChunks]
  finish: Callable[[dict], dict]
  metric_names: tuple[str, ...]
  sharding: Any = None

  def __landscape_identity__(self):
    """What a store's identity digests: the code and arrays of `sums_fn`, every host array
    (`HostChunks.arrays`, byte for byte) and constant, the chunk cutters and `finish`. The
    sharding is not part of it (a result does not depend on it)."""
    return {"sums_fn": self.sums_fn, "finish": self.finish, "names": self.metric_names,
            "streams": {k: (s.arrays, s.constants, int(s.num_chunks), s.cut)
                        for k, s in self.streams.items()}}

  def chunk_metric(self, name: str, chunk: PyTree, constants: PyTree | None = None) -> Partial:
    """``metric_fn(params) -> {sum name: sum}`` of one chunk, a `jax.tree_util.Partial` whose
    leaves are the chunk (and the stream's constants): what the engine compiles once per
    shape."""
    s = self.streams[name]
    constants = s.constants if constants is None else constants
    return Partial(self.sums_fn.func, *self.sums_fn.args, constants, chunk,
                   **self.sums_fn.keywords)

  def put(self, chunk: PyTree, mesh=None) -> PyTree:
    """A host chunk on the devices: with `sharding`, or replicated on `mesh`, or on the default
    device (asynchronous: the transfer overlaps whatever runs)."""
    if self.sharding is not None:
      return jax.tree.map(lambda x: shd.put(x, self.sharding), chunk)
    if mesh is not None:
      return shd.replicate(chunk, mesh)
    return jax.device_put(chunk)

  def __call__(self, params: PyTree) -> dict[str, np.ndarray]:
    """The metrics at one point: every chunk of every stream, then the ratios (float64)."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params)):
      raise TypeError(
        "A StreamedMetric (make_metric_fn(..., stream_batches=...)) streams its splits from the "
        "host in a Python loop and cannot be traced by jax.jit / vmap / grad: pass it to "
        "surface_grid, linear_path, evaluate_curve, ... (the engine runs the loop around its "
        "compiled evaluator), call it on concrete parameters, or build an on-device metric "
        "(make_metric_fn without stream_batches).")
    sums = {}
    for name, s in self.streams.items():
      outs = stream(s, self.put, lambda chunk, name=name: _call_jit(
        self.chunk_metric(name, chunk), params))
      sums[name] = add_sums(outs)
    return {k: np.asarray(v) for k, v in self.finish(sums).items()}


@jax.jit
def _call_jit(metric_fn, params):
  return metric_fn(params)


def add_sums(outs: list[dict]) -> dict[str, np.ndarray]:
  """``{sum name: sum over the chunks}`` in float64 on the host, chunk after chunk."""
  total: dict[str, np.ndarray] = {}
  for out in outs:
    for k, v in out.items():
      v = shd.to_host(v).astype(np.float64)
      total[k] = v if k not in total else total[k] + v
  return total


def stream(chunks: HostChunks, put: Callable[[PyTree], PyTree],
           compute: Callable[[PyTree], PyTree]) -> list:
  """``[compute(put(chunks.chunk(i))) for every i]``, double-buffered.

  Chunk ``i + 1`` is cut and its (asynchronous) transfer started right after chunk ``i``'s
  computation is dispatched, then chunk ``i``'s result is waited for and the chunk released:
  the host work and the transfer of the next chunk overlap the computation of the current one,
  and at most two chunks are on the devices at any time.
  """
  outs = []
  nxt = put(chunks.chunk(0))
  for i in range(chunks.num_chunks):
    cur = nxt
    out = compute(cur)
    nxt = put(chunks.chunk(i + 1)) if i + 1 < chunks.num_chunks else None
    outs.append(jax.block_until_ready(out))
    del cur
  return outs
