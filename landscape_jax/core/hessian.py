"""Curvature of the loss: Hessian-vector products, Lanczos, eigenvalues, trace, spectral density.

Conventions follow PyHessian (Yao et al. 2020, "PyHessian: Neural networks through the lens of
the Hessian") and the Hessian maps of Li et al. 2018 ("Visualizing the loss landscape of neural
nets", Sec. 6):

* ``hvp(loss_fn, params, data, v) = H v`` by forward-over-reverse differentiation,
  ``jax.jvp(jax.grad(loss), (params,), (v,))[1]``; it costs a small multiple of one gradient
  (``benchmarks/bench_hvp.py`` prints the ratio).
* ``data`` is either one minibatch (whatever ``loss_fn(params, batch)`` takes) or a whole split
  prepared by `make_batches`. Over a split the batches are weighted by their size,
  ``H v = sum_b n_b H_b v / N`` with ``H_b`` the Hessian of the mean loss of batch ``b``, which is
  the Hessian of the mean loss over the ``N`` examples (the Li et al. code sums per-batch means;
  this module does not).
* ``mask`` (a pytree of Python bools with the structure of ``params``, e.g.
  ``trees.mask_by_ndim(params)`` for Li et al.'s "weights with ndim > 1") restricts the Hessian to
  the selected leaves: the operator is ``H_SS``, the other parameters stay fixed.
* Lanczos (`core.krylov`) with full reorthogonalisation runs inside `lax.fori_loop` on the
  flattened parameter vector (`jax.flatten_util.ravel_pytree`); memory is ``num_steps x P``. The
  Ritz values of the
  tridiagonal matrix give the extreme eigenvalues (top-k and the smallest, directly, without the
  shift ``H - 0.51 lambda_max I`` of the Li et al. code), and with the squared first components of
  its eigenvectors the stochastic Lanczos quadrature (SLQ) of the spectral density (Ghorbani et
  al. 2019; Lin, Saad & Yang 2016).
* Sharded parameters (`core.sharding`): the flat vectors (products, Lanczos vectors, probes)
  are held sharded over the mesh's model axis (`vector_sharding`) and `hvp` returns ``H v`` with
  the parameters' sharding; GSPMD partitions the products. Lanczos then holds
  ``(m + 1) P / n`` numbers per device on n model devices.
* Trace by Hutchinson's estimator with Rademacher probes, ``tr H ~ mean_i z_i^T H z_i``, with its
  standard error.

Every random routine takes a `jax.random` key and is deterministic for that key; step counts and
keys are keyword-only (the trace and density take the key first, as `jax.random` does).
`make_curvature_metric_fn` packages ``lambda_max``, ``lambda_min`` and ``|lambda_min/lambda_max|``
as a jit- and vmap-compatible ``metric_fn(params)`` so that `surface_grid` evaluates
eigenvalue-ratio maps with the same chunked, sharded, resumable machinery as loss surfaces.

Precision: every routine here (`hvp`, `lanczos`, `hessian_eigenvalues`, `hessian_trace`,
`spectral_density`, the metric of `make_curvature_metric_fn`) runs its dots and convolutions,
the model's included, at ``precision="highest"`` (full float32) unless told otherwise
(`core.precision`): by default TPUs multiply float32 in bfloat16 passes and recent GPUs in TF32,
and Lanczos and Hutchinson sum many such products. ``precision=None`` keeps JAX's setting. On
the CPU every choice gives the same numbers.

Non-finite input: `hessian_eigenvalues`, `hessian_trace` and `spectral_density` evaluate the loss
once first (one forward pass over ``data``) and raise FloatingPointError if it is NaN/inf (a NaN
cross-entropy, e.g. from labels beyond the model's classes, can have finite products and would
otherwise give finite, meaningless eigenvalues), and again if the Lanczos or Hutchinson outputs
are not finite. `hvp` and `lanczos` do not check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from landscape_jax.backends.cpu.convolutions import canonicalize_convolutions
from landscape_jax.backends.cpu.jaxpr import evaluate_once, rewritten
from landscape_jax.backends.cpu.onednn_autodiff import min_flops_for, with_onednn_derivatives
from landscape_jax.core import progress as progress_lib
from landscape_jax.core import sharding as shd
from landscape_jax.core.krylov import (
  CURVATURE_PRECISION,
  DensitySmoothing,
  check_tolerance,
  constrain,
  density_from_quadrature,
  extreme_ritz_pairs,
  gauss_quadrature,
  lanczos,
  lanczos_iteration,
  tridiagonal,
  tridiagonal_eigh,
)
from landscape_jax.core.precision import check_precision, matmul_precision
from landscape_jax.core.splits import DeviceSplit, check_unpadded
from landscape_jax.core.trees import as_partial, check_finite, check_same_structure

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]


# ----------------------------------------------------------------------------------------------
# Flattened, optionally masked, Hessian operator.


def _mask_tuple(params: PyTree, mask: PyTree | None) -> tuple[bool, ...] | None:
  """The mask as a hashable tuple of Python bools in leaf order (None = every leaf)."""
  if mask is None:
    return None
  p_def = jax.tree.structure(params)
  m_leaves, m_def = jax.tree.flatten(mask)
  if p_def != m_def:
    raise ValueError("mask must have the structure of params (e.g. trees.mask_by_ndim(params)); "
                     f"got {m_def} vs {p_def}.")
  try:
    out = tuple(bool(m) for m in m_leaves)
  except jax.errors.ConcretizationTypeError as e:
    raise ValueError("mask must hold Python bools (static), not traced arrays; build it with "
                     "trees.mask_by_ndim or trees.mask_by_path outside jit.") from e
  if not any(out):
    raise ValueError("mask selects no parameter; select at least one leaf.")
  return out


class FlatOperator(NamedTuple):
  """``matvec(x) = H_SS x`` on the flat vector ``x`` of the selected leaves."""

  matvec: Callable[[jax.Array], jax.Array]
  x0: jax.Array  # flat selected parameters (the point where H is taken)
  unravel: Callable[[jax.Array], PyTree]  # flat selection -> full pytree (zeros elsewhere)
  ravel: Callable[[PyTree], jax.Array]  # full pytree -> flat selection
  # quadratic(z) = z^T H_SS z by forward-over-forward differentiation (`flat_hvp_operator`)
  quadratic: Callable[[jax.Array], jax.Array]


def _split_leaves(params, mask):
  leaves, treedef = jax.tree.flatten(params)
  mask = mask or (True,) * len(leaves)
  if len(mask) != len(leaves):
    raise ValueError(f"mask has {len(mask)} leaves but params have {len(leaves)}.")
  active = [x for x, m in zip(leaves, mask, strict=True) if m]

  def merge(new_active, fill_rest):
    it = iter(new_active)
    return treedef.unflatten(
      [next(it) if m else fill_rest(x) for x, m in zip(leaves, mask, strict=True)])

  def select(tree):
    return [x for x, m in zip(jax.tree.leaves(tree), mask, strict=True) if m]

  return active, merge, select


def vector_sharding(params: PyTree) -> jax.sharding.NamedSharding | None:
  """The sharding of flat parameter vectors (Lanczos vectors, probes) for sharded `params`.

  When a leaf of `params` is sharded over a mesh, the flat vectors of length P are sharded over
  the mesh's model axis (`sharding.mesh_roles`; for a mesh without role names, the axes the
  leaves are sharded over), so that ``m`` Lanczos vectors hold ``m P / model size`` numbers per
  device instead of ``m P``. None for unsharded parameters (the default device).
  """
  for x in jax.tree.leaves(params):
    s = getattr(x, "sharding", None)
    if not isinstance(s, jax.sharding.NamedSharding) or s.mesh.devices.size == 1:
      continue
    used = tuple(a for e in s.spec if e is not None for a in (e if isinstance(e, tuple) else (e,)))
    if not used:
      continue
    names = s.mesh.axis_names
    axes = ("model",) if "model" in names else used
    return jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec(axes))
  return None


def forward_over_forward_loss(loss_fn: LossFn) -> LossFn:
  """The loss whose second derivative along a direction `flat_hvp_operator`'s ``quadratic``
  takes: ``loss_fn`` itself, or the twin it names.

  A `jax.tree_util.Partial` whose function has a ``forward_over_forward`` attribute names a twin:
  a function of the same arguments with the same value up to float32 rounding, cheaper to
  differentiate forward over forward. `make_loss_fn` with BatchNorm folded into the weights names
  its unfolded loss: the folded weight ``W a(gamma)`` has a second derivative along a direction
  (``2 dW da``), which costs a convolution per layer, where BatchNorm after the convolution costs
  a pass over the activations.
  """
  target = getattr(loss_fn, "func", None)
  target = getattr(target, "fun", target)  # how a Partial holds a functools.partial
  twin = getattr(target, "forward_over_forward", None)
  if twin is None or not isinstance(loss_fn, jax.tree_util.Partial):
    return loss_fn
  return jax.tree_util.Partial(twin, *loss_fn.args, **loss_fn.keywords)


def flat_hvp_operator(loss_fn: LossFn, params: PyTree, data: Any, mask: tuple | None,
              linearize: bool = False, sharding=None,
              onednn: float | None = None) -> FlatOperator:
  """``H v`` on flat vectors. With `linearize`, the gradient is linearised once at ``x0``
  (`jax.linearize`): each product then re-runs only the tangent pass, reusing the stored forward
  and backward residuals of every batch (memory: those residuals; about 1.5x fewer FLOPs per
  product, benchmarks/bench_hvp.py). `sharding` (`vector_sharding`) keeps ``x0`` and every
  product sharded over the model axis. With `onednn` (a number of FLOPs, `min_flops_for`), the
  loss's convolutions of at least that size and all their derivatives run on oneDNN
  (`backends.cpu.onednn_autodiff.with_onednn_derivatives`).

  The operator's ``quadratic(z)`` is ``z^T H z = d^2/de^2 L(x0 + e z) |_{e=0}`` by
  forward-over-forward differentiation (``jax.jvp`` of a ``jax.jvp``, its repeated first-order
  pass computed once, `backends.cpu.jaxpr.evaluate_once`) of `forward_over_forward_loss`: no
  backward pass, and only forward convolutions, where ``vdot(z, matvec(z))`` runs the
  forward-over-reverse product.
  """
  active, merge, select = _split_leaves(params, mask)
  x0, unravel_active = ravel_pytree(active)
  x0 = constrain(x0, sharding)

  def flat(loss):
    def loss_flat(x, batch):
      return loss(merge(unravel_active(x), lambda leaf: leaf), batch)
    if onednn is not None:  # the minimum FLOPs of a convolution sent to oneDNN
      return with_onednn_derivatives(loss_flat, min_flops=onednn)
    return loss_flat

  loss_flat, twin_flat = flat(loss_fn), flat(forward_over_forward_loss(loss_fn))

  # canonical convolutions: the products run inside loops (Lanczos, probes, batches), where
  # XLA:CPU's backward convolutions are otherwise much slower (backends.cpu.convolutions)
  grad_flat = canonicalize_convolutions(jax.grad(loss_flat))

  def hvp_batch(x, batch):
    return jax.jvp(lambda y: grad_flat(y, batch), (x0,), (x,))[1]

  @functools.partial(rewritten, evaluate=evaluate_once)
  def quadratic_batch(z, batch):
    def directional(y):  # the first derivative of L along z at y
      return jax.jvp(lambda u: twin_flat(u, batch), (y,), (z,))[1]
    return jax.jvp(directional, (x0,), (z,))[1]

  if isinstance(data, DeviceSplit):
    check_unpadded(data, name="The Hessian")
    total = data.num_examples
    if total == 0:
      raise ValueError("The DeviceSplit holds no example.")

    def weighted(per_batch, scalar=False):  # sum_b n_b f(batch_b) / N
      def f(x):
        out = jnp.zeros((), x0.dtype) if scalar else jnp.zeros_like(x0)
        if data.batches is not None:
          size = jax.tree.leaves(data.batches)[0].shape[1]
          acc, _ = jax.lax.scan(lambda c, b: (c + per_batch(x, b), None), out, data.batches)
          out = out + size * acc
        if data.rest is not None:
          out = out + jax.tree.leaves(data.rest)[0].shape[0] * per_batch(x, data.rest)
        return out / total
      return f

    matvec = (jax.linearize(weighted(grad_flat), x0)[1] if linearize
              else weighted(hvp_batch))
    quadratic = weighted(quadratic_batch, scalar=True)
  else:
    if linearize:
      matvec = jax.linearize(functools.partial(grad_flat, batch=data), x0)[1]
    else:
      matvec = functools.partial(hvp_batch, batch=data)
    quadratic = functools.partial(quadratic_batch, batch=data)
  if sharding is not None:
    matvec = _sharded_matvec(matvec, sharding)
    quadratic = functools.partial(_sharded_quadratic, quadratic, sharding)

  def unravel(x):
    return merge(unravel_active(x), jnp.zeros_like)

  def ravel(tree):
    return ravel_pytree(select(tree))[0]

  return FlatOperator(matvec, x0, unravel, ravel, quadratic)


def _sharded_quadratic(quadratic, sharding, z):
  return quadratic(constrain(z, sharding))


def _sharded_matvec(matvec, sharding):
  def sharded(x):
    return constrain(matvec(constrain(x, sharding)), sharding)
  return sharded


def num_curvature_params(params: PyTree, *, mask: PyTree | None = None) -> int:
  """Dimension P of the (masked) Hessian: the number of selected scalar parameters."""
  m = _mask_tuple(params, mask)
  leaves = jax.tree.leaves(params)
  return int(sum(np.size(x) for i, x in enumerate(leaves) if m is None or m[i]))


def hvp(loss_fn: LossFn, params: PyTree, data: Any, v: PyTree, *,
        mask: PyTree | None = None, precision=CURVATURE_PRECISION,
        cpu_convolutions: str = "auto") -> PyTree:
  """Hessian-vector product ``H v`` by forward-over-reverse differentiation (jitted).

  ``H v = d/de grad L(params + e v) |_{e=0} = jax.jvp(jax.grad(L), (params,), (v,))[1]``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (mean loss over the batch).
    params: the point where the Hessian is taken.
    data: one batch, or a `DeviceSplit` (whole split; batches weighted by their size:
      ``H v = sum_b n_b H_b v / N``).
    v: a pytree with the structure of ``params``.
    mask: optional pytree of Python bools: restricts to the selected leaves (``H_SS v_S``);
      unselected leaves of the result are zero and those of ``v`` are ignored.
    precision: matmul precision of every dot and convolution (`core.precision`): ``"highest"``
      (default, full float32 on every backend), ``"high"``, ``"default"``, a
      `jax.lax.Precision`, or None (JAX's current setting).
    cpu_convolutions: who computes the convolutions and their derivatives on the CPU:
      ``"auto"`` (default: oneDNN where it is available, `onednn_build.resolve`, for
      convolutions of at least `onednn_autodiff.AUTO_MIN_FLOPS`), ``"onednn"`` (all) or
      ``"xla"``. Both are exact float32; oneDNN is faster for large convolutions, slower for tiny
      ones (benchmarks/bench_conv_grads.py). Grouped and non-float32 convolutions always run on XLA.

  Returns:
    ``H v`` with the structure of ``params`` (and, for sharded ``params``, their sharding; the
    flat products stay sharded over the mesh's model axis, `vector_sharding`).

  References:
    Pearlmutter 1994, "Fast Exact Multiplication by the Hessian".
  """
  check_same_structure(params, v, names=("params", "v"), check_dtype=False)
  sharding = vector_sharding(params)
  leaf_shardings = None if sharding is None else tuple(
    getattr(x, "sharding", None) for x in jax.tree.leaves(params))
  with matmul_precision(precision):
    return _hvp_jit(as_partial(loss_fn, name="loss_fn"), params, data, v,
                    _mask_tuple(params, mask), sharding,
                    leaf_shardings, _onednn(cpu_convolutions, sharding))


def _onednn(cpu_convolutions: str, sharding) -> float | None:
  """The FLOPs threshold of the oneDNN derivatives, or None: oneDNN's FFI calls have no sharding
  rule, so vectors sharded over several devices keep XLA's convolutions."""
  return min_flops_for(cpu_convolutions) if sharding is None else None


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _hvp_jit(loss_fn, params, data, v, mask, sharding=None, leaf_shardings=None, onednn=None):
  op = flat_hvp_operator(loss_fn, params, data, mask, sharding=sharding, onednn=onednn)
  out = op.unravel(op.matvec(op.ravel(v).astype(op.x0.dtype)))
  if leaf_shardings is None:
    return out
  leaves, treedef = jax.tree.flatten(out)  # H v with the parameters' sharding
  return treedef.unflatten([x if s is None else jax.lax.with_sharding_constraint(x, s)
                            for x, s in zip(leaves, leaf_shardings, strict=True)])


# ----------------------------------------------------------------------------------------------
# Lanczos.


def _check_products(name: str, outputs) -> None:
  check_finite(
    outputs, name=f"{name}: the Hessian-vector products", error=FloatingPointError,
    hint="the loss is finite, so it is not twice differentiable at these parameters (e.g. sqrt "
         "or log of 0) or overflows in the products. Check loss_fn and the parameters "
         "(lj.trees.check_finite(params)), and that the data are normalised.")


def mean_loss(loss_fn: LossFn, params: PyTree, data: Any) -> jax.Array:
  """The loss at `params` over `data` in float32 (traceable): ``loss_fn(params, data)`` for one
  batch; for a `DeviceSplit` (`make_batches`), the mean over its examples,
  ``sum_b n_b loss_fn(params, b) / N`` (each batch's mean loss weighted by its size)."""
  if not isinstance(data, DeviceSplit):
    return jnp.asarray(loss_fn(params, data), jnp.float32)
  check_unpadded(data, name="The loss over a split")
  total = jnp.zeros((), jnp.float32)
  if data.batches is not None:
    size = jax.tree.leaves(data.batches)[0].shape[1]
    per_batch = jax.lax.map(lambda b: jnp.asarray(loss_fn(params, b), jnp.float32), data.batches)
    total = total + size * jnp.sum(per_batch)
  if data.rest is not None:
    total = total + (jax.tree.leaves(data.rest)[0].shape[0]
                     * jnp.asarray(loss_fn(params, data.rest), jnp.float32))
  return total / data.num_examples


_mean_loss = jax.jit(mean_loss)


def _check_loss(name: str, loss_fn, params, data) -> None:
  """Raises FloatingPointError if the loss at `params` is not finite (one forward pass).

  A NaN loss can have finite Hessian-vector products (e.g. cross-entropy of labels the model has
  no logit for: the gather's gradient is zero), so the products alone would give finite, wrong
  eigenvalues.
  """
  loss = np.asarray(_mean_loss(loss_fn, params, data))
  if not np.all(np.isfinite(loss)):
    raise FloatingPointError(
      f"{name}: the loss at these parameters is {loss.ravel()[0]} (not finite), so its Hessian "
      "means nothing. Common causes: a model with fewer classes than the labels (build it with "
      "num_classes = the dataset's num_classes), NaN/inf parameters (lj.trees.check_finite("
      "params)), or unnormalised data. Evaluate loss_fn(params, batch) to find out.")


def _start_vector(key, dim, dtype):
  return jax.random.normal(key, (dim,), dtype)


def _check_steps(num_steps: int, dim: int) -> int:
  if num_steps < 1:
    raise ValueError(f"num_steps must be at least 1, got {num_steps}.")
  return min(int(num_steps), dim)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7, 8, 9))
def _lanczos_jit(loss_fn, params, data, key, num_steps, mask, linearize=False, sharding=None,
                 tick=False, onednn=None):
  op = flat_hvp_operator(loss_fn, params, data, mask, linearize, sharding, onednn)
  k_start, k_restart = jax.random.split(key)
  v0 = constrain(_start_vector(k_start, op.x0.shape[0], op.x0.dtype), sharding)
  # precision: the caller's
  return lanczos_iteration(op.matvec, v0, num_steps, k_restart, sharding, 1 if tick else None)


# ----------------------------------------------------------------------------------------------
# Extreme eigenvalues.


class HessianEigenvalues(NamedTuple):
  """Extreme eigenvalues of the Hessian from Lanczos.

  Attributes:
    top: (k,) largest eigenvalues, descending.
    smallest: the smallest (most negative) eigenvalue.
    ritz_values: (m,) all Ritz values, ascending (m = number of Lanczos steps).
    top_vectors: list of k unit-norm eigenvector pytrees (structure of params; zero outside the
      mask), or None unless ``vectors=True``.
  """

  top: np.ndarray
  smallest: float
  ritz_values: np.ndarray
  top_vectors: list | None = None


def hessian_eigenvalues(loss_fn: LossFn, params: PyTree, data: Any, *, top_k: int = 1,
                        num_steps: int = 100, key: jax.Array | None = None,
                        mask: PyTree | None = None, vectors: bool = False,
                        linearize: bool = False, progress: bool = True,
                        precision=CURVATURE_PRECISION,
                        cpu_convolutions: str = "auto") -> HessianEigenvalues:
  """Top-k and smallest eigenvalues of the loss Hessian by Lanczos (PyHessian / Li et al.).

  Runs `lanczos` with full reorthogonalisation for ``num_steps`` steps from a Gaussian start
  vector (deterministic for ``key``) and diagonalises the tridiagonal matrix in float64 on the
  host. The extreme Ritz values converge first; both ends come from the same run (Li et al.
  shift by ``0.51 lambda_max`` instead). With ``num_steps >= P`` the result is exact.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the point (e.g. a trained checkpoint's ``variables["params"]``).
    data: one batch or a `DeviceSplit` (whole split, batch-size weighted).
    top_k: number of largest eigenvalues returned.
    num_steps: Lanczos steps m (clipped to P); memory ``m x P``.
    key: start-vector key (default ``jax.random.key(0)``).
    mask: optional pytree of bools restricting to the selected leaves (Li et al.: ndim > 1).
    vectors: also return the top-k Ritz vectors as pytrees.
    linearize: linearise the gradient once (`jax.linearize`) and reuse it for every Lanczos
      product: same values, cheaper products, but the forward and backward residuals of all
      of `data` stay in memory (fine for a Hessian batch of a few thousand examples).
    progress: one progress bar over the Lanczos steps (`core.progress`: a terminal bar, a
      notebook widget, nothing in logs); the result does not depend on it.
    precision: matmul precision (`core.precision`; default ``"highest"``, None: JAX's setting).
    cpu_convolutions: as in `hvp` (oneDNN or XLA for the convolutions and their derivatives).

  Returns:
    A `HessianEigenvalues`.

  Raises:
    FloatingPointError: the loss at `params` over `data` is not finite (checked first, one
      forward pass), or the Lanczos / Hutchinson outputs are not.

  References:
    Yao, Gholami, Keutzer and Mahoney 2020, "PyHessian: Neural Networks Through the Lens of the
    Hessian".
  """
  loss_fn = as_partial(loss_fn, name="loss_fn")
  mask_t = _mask_tuple(params, mask)
  dim = num_curvature_params(params, mask=mask)
  m = _check_steps(num_steps, dim)
  if not 1 <= top_k <= m:
    raise ValueError(f"top_k must lie in [1, num_steps={m}], got {top_k}; raise num_steps.")
  key = jax.random.key(0) if key is None else key
  with matmul_precision(precision):
    _check_loss("hessian_eigenvalues", loss_fn, params, data)
    bar = progress_lib.progress_bar(total=m, desc="Hessian eigenvalues", unit="HVP",
                                    enabled=progress)
    sharding = vector_sharding(params)
    with progress_lib.active(bar):
      res = _lanczos_jit(loss_fn, params, data, key, m, mask_t, bool(linearize), sharding,
                         not bar.disable, _onednn(cpu_convolutions, sharding))
      res = jax.block_until_ready(res)
  _check_products("hessian_eigenvalues", {"alphas": res.alphas, "betas": res.betas})
  evals, evecs = tridiagonal_eigh(res.alphas, res.betas)
  top = evals[::-1][:top_k]
  vecs = None
  if vectors:
    vecs = ritz_vectors(res.vectors, evecs[:, ::-1][:, :top_k], params, mask=mask_t)
  return HessianEigenvalues(top=top, smallest=float(evals[0]), ritz_values=evals, top_vectors=vecs)


def ritz_vectors(lanczos_vectors: jax.Array, coefficients, params: PyTree, *,
                 mask: tuple[bool, ...] | None = None) -> list[PyTree]:
  """Ritz vectors ``u_i = Q^T y_i / |Q^T y_i|`` as pytrees like `params`, built on the devices.

  ``Q`` (m, P) holds the Lanczos vectors as rows (sharded over the model axis for sharded
  parameters, `vector_sharding`) and ``y_i`` the columns of `coefficients` (m, k), eigenvectors
  of the tridiagonal matrix (host, float64). The products run where ``Q`` lives (float32 at
  ``"highest"`` precision, after casting `coefficients`), and every leaf of every vector is
  created with the sharding of its leaf of `params` (`sharding.sharded_like`): neither ``Q`` nor
  a vector is gathered on the host or on one device. Leaves outside `mask` are zero.

  References:
    Golub and Van Loan 2013, "Matrix Computations" (4th ed.), section 10.1.4 (Ritz vectors).
  """
  coefficients = np.asarray(coefficients, np.float64)
  k = coefficients.shape[1]
  active, merge, _ = _split_leaves(params, mask)
  unravel_active = ravel_pytree(active)[1]

  def assemble(q, y):
    ritz = jnp.einsum("mp,mk->kp", q, y, precision=jax.lax.Precision.HIGHEST)
    ritz = ritz / jnp.linalg.norm(ritz, axis=1, keepdims=True)
    return [merge(unravel_active(ritz[i]), jnp.zeros_like) for i in range(k)]

  fn = shd.sharded_like(assemble, [params] * k)
  return fn(lanczos_vectors, jnp.asarray(coefficients, lanczos_vectors.dtype))


# ----------------------------------------------------------------------------------------------
# Trace.


class TraceEstimate(NamedTuple):
  """Hutchinson trace estimate: ``mean`` +- ``stderr`` (= std(samples, ddof=1) / sqrt(n))."""

  mean: float
  stderr: float
  samples: np.ndarray


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8, 9))
def _trace_chunk(loss_fn, params, data, keys, real, mask, probe_batch, sharding=None, tick=False,
                 onednn=None):
  op = flat_hvp_operator(loss_fn, params, data, mask, sharding=sharding, onednn=onednn)

  def one(k_real):
    k, r = k_real
    z = constrain(jax.random.rademacher(k, op.x0.shape, op.x0.dtype), sharding)
    out = op.quadratic(z)  # z^T H z, forward over forward
    if tick:
      progress_lib.tick(r)  # padding probes (r = 0) do not count
    return out

  return jax.lax.map(one, (keys, real), batch_size=probe_batch)


def _chunked_probes(fn, key, num_probes, chunk, stop=None):
  """Runs ``fn(keys, real)`` over ``split(key, num_probes)`` in chunks (padded to one compiled
  shape; ``real`` is 1 for a probe, 0 for padding); with `stop`, ends after the first chunk
  where ``stop(outputs so far)`` is true.

  Probe i always uses ``split(key, num_probes)[i]``: results do not depend on the chunk size
  (with `stop`, the number of probes may: it is checked at the end of every chunk).
  """
  keys = jax.random.split(key, num_probes)
  chunk = max(1, min(int(chunk), num_probes))
  starts = range(0, num_probes, chunk)
  outs = []
  for start in starts:
    part = keys[start:start + chunk]
    pad = chunk - part.shape[0]
    real = jnp.arange(chunk) < chunk - pad
    if pad:
      part = jnp.concatenate([part, keys[:pad]])
    out = jax.tree.map(np.asarray, fn(part, real.astype(jnp.int32)))
    outs.append(jax.tree.map(lambda x, n=chunk - pad: x[:n], out))
    if stop is not None and stop(jax.tree.map(lambda *xs: np.concatenate(xs), *outs)):
      break
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def hessian_trace(key: jax.Array, loss_fn: LossFn, params: PyTree, data: Any, *,
                  num_probes: int = 100, mask: PyTree | None = None,
                  probe_batch_size: int | None = None, chunk_size: int | None = None,
                  progress: bool = True, precision=CURVATURE_PRECISION,
                  cpu_convolutions: str = "auto", rtol: float | None = None) -> TraceEstimate:
  """Hutchinson's estimate of ``tr H`` with Rademacher probes (PyHessian), and its error bar.

  ``tr H = E[z^T H z]`` for ``z`` with i.i.d. +-1 entries; the estimate is the mean of
  ``num_probes`` samples ``z_i^T H z_i`` and its standard error ``std(samples) / sqrt(n)``.
  Each sample ``z^T H z = d^2/de^2 L(params + e z) |_{e=0}`` is a second directional derivative,
  computed by forward-over-forward differentiation (a ``jax.jvp`` of a ``jax.jvp``, its repeated
  first-order pass computed once): forward passes only, where PyHessian computes ``H z`` by a
  second backward pass and then ``z . (H z)`` (same value up to float rounding). The samples
  differentiate the twin a loss names for this (`forward_over_forward_loss`: `make_loss_fn`'s
  folded loss names its unfolded one, whose second derivatives need fewer convolutions).
  With ``rtol``, probes are drawn chunk by chunk until the standard error is at most
  ``rtol |mean|`` (``num_probes`` the cap): a stopping rule on the quantity the error bar
  reports, where PyHessian stops when the running mean moves by less than its tol.

  Args:
    key: `jax.random` key (deterministic for a key).
    loss_fn, params, data, mask: as in `hvp`.
    num_probes: number of probe vectors (at least 2 for a standard error).
    probe_batch_size: probes evaluated together with `vmap` (default 1: sequential, least
      memory; the probes of a compiled chunk share its primal forward pass either way).
    chunk_size: probes per compiled call (default: all in one call; the progress bar moves
      with every probe either way). The result does not depend on it.
    progress: one progress bar over the probes (`core.progress`: a terminal bar, a notebook
      widget, nothing in logs); the result does not depend on it.
    precision: matmul precision (`core.precision`; default ``"highest"``, None: JAX's setting).
    cpu_convolutions: as in `hvp` (oneDNN or XLA for the convolutions and their derivatives).
    rtol: None (default): exactly ``num_probes`` probes. A number: stop at the end of the first
      chunk (``chunk_size`` probes, default 10 here) after which ``stderr <= rtol |mean|`` with
      at least ``min(10, num_probes)`` probes (fewer make the standard error itself too
      uncertain to stop on); the samples are then a prefix of the fixed-count run's. Each
      compiled chunk computes the loss's primal forward pass once for all its probes, so small
      chunks cost more per probe.

  Returns:
    A `TraceEstimate` (mean, stderr, samples).

  Raises:
    FloatingPointError: the loss at `params` over `data` is not finite (checked first, one
      forward pass), or the Lanczos / Hutchinson outputs are not.

  References:
    Hutchinson 1989, "A stochastic estimator of the trace of the influence matrix for Laplacian
    smoothing splines".
    Yao, Gholami, Keutzer and Mahoney 2020, "PyHessian: Neural Networks Through the Lens of the
    Hessian".
  """
  if num_probes < 2:
    raise ValueError(f"num_probes must be at least 2 to give a standard error, got {num_probes}.")
  stop = None
  if rtol is not None:
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float, np.floating)) or not rtol > 0:
      raise ValueError(f"rtol must be a positive number (or None for num_probes probes), got "
                       f"{rtol!r}.")
    min_probes = min(10, int(num_probes))
    chunk_size = chunk_size or min_probes

    def stop(s):
      s = np.asarray(s, np.float64)
      return s.size >= min_probes and s.std(ddof=1) / np.sqrt(s.size) <= rtol * abs(s.mean())
  loss_fn, mask_t = as_partial(loss_fn, name="loss_fn"), _mask_tuple(params, mask)
  with matmul_precision(precision):
    _check_loss("hessian_trace", loss_fn, params, data)
    sharding = vector_sharding(params)
    onednn = _onednn(cpu_convolutions, sharding)
    bar = progress_lib.progress_bar(total=int(num_probes), desc="Hessian trace", unit="probe",
                                    enabled=progress)
    with progress_lib.active(bar):
      s = _chunked_probes(lambda keys, real: _trace_chunk(loss_fn, params, data, keys, real,
                                                          mask_t, probe_batch_size, sharding,
                                                          not bar.disable, onednn),
                          key, int(num_probes), chunk_size or num_probes, stop)
  s = np.asarray(s, np.float64)
  _check_products("hessian_trace", {"samples": s})
  return TraceEstimate(float(s.mean()), float(s.std(ddof=1) / np.sqrt(len(s))), s)


# ----------------------------------------------------------------------------------------------
# Spectral density (stochastic Lanczos quadrature).


class SpectralDensity(NamedTuple):
  """SLQ spectral density.

  Attributes:
    grid: (G,) eigenvalue grid.
    density: (G,) smoothed density on the grid, integrating to one (trapezoid rule).
    nodes: (num_probes, m) Ritz values of every probe (Gauss quadrature nodes).
    weights: (num_probes, m) squared first components of the Ritz vectors (each row sums to 1).
    sigma2: the Gaussian kernel variance that was used.
  """

  grid: np.ndarray
  density: np.ndarray
  nodes: np.ndarray
  weights: np.ndarray
  sigma2: float


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8, 9))
def _slq_chunk(loss_fn, params, data, keys, real, num_steps, mask, sharding=None, tick=False,
               onednn=None):
  op = flat_hvp_operator(loss_fn, params, data, mask, sharding=sharding, onednn=onednn)

  def one(k_real):
    k, r = k_real
    k_start, k_restart = jax.random.split(k)
    v0 = constrain(jax.random.rademacher(k_start, op.x0.shape, op.x0.dtype), sharding)
    # precision: the caller's; padding probes (r = 0) do not count on the bar
    res = lanczos_iteration(op.matvec, v0, num_steps, k_restart, sharding, r if tick else None)
    return res.alphas, res.betas

  return jax.lax.map(one, (keys, real))


def spectral_density(key: jax.Array, loss_fn: LossFn, params: PyTree, data: Any, *,
                     num_probes: int = 1, num_steps: int = 100,
                     smoothing: DensitySmoothing | None = None,
                     mask: PyTree | None = None, progress: bool = True,
                     precision=CURVATURE_PRECISION, cpu_convolutions: str = "auto"
                     ) -> SpectralDensity:
  """Spectral density of the Hessian by stochastic Lanczos quadrature (PyHessian, Ghorbani 2019).

  For each of ``num_probes`` Rademacher start vectors ``v`` (unit-normalised), ``num_steps``
  Lanczos steps give ``T = Y diag(theta) Y^T``; ``v^T f(H) v ~ sum_i tau_i f(theta_i)`` with
  ``tau_i = Y_{0i}^2``. The density ``mean_v sum_i tau_i N(t; theta_i, s2)`` is evaluated on
  ``grid`` and normalised to integrate to one (see `density_from_quadrature`).

  Args:
    key: `jax.random` key (deterministic for a key).
    loss_fn, params, data, mask: as in `hvp`.
    num_probes: number of start vectors (PyHessian's ``n_v``).
    num_steps: Lanczos steps per probe (PyHessian's ``iter``; clipped to P).
    smoothing: the grid and Gaussian kernel of the density (`krylov.DensitySmoothing`; default
      ``DensitySmoothing()``: 10,000 points over the Ritz values, PyHessian's variance 1e-5
      times the spectrum width).
    progress: one progress bar over the Lanczos steps of all probes (`core.progress`: a
      terminal bar, a notebook widget, nothing in logs); the result does not depend on it.
    precision: matmul precision (`core.precision`; default ``"highest"``, None: JAX's setting).
    cpu_convolutions: as in `hvp` (oneDNN or XLA for the convolutions and their derivatives).

  Returns:
    A `SpectralDensity`.

  Raises:
    FloatingPointError: the loss at `params` over `data` is not finite (checked first, one
      forward pass), or the Lanczos / Hutchinson outputs are not.

  References:
    Ghorbani, Krishnan and Xiao 2019, "An Investigation into Neural Net Optimization via Hessian
    Eigenvalue Density".
    Yao, Gholami, Keutzer and Mahoney 2020, "PyHessian: Neural Networks Through the Lens of the
    Hessian".
  """
  if num_probes < 1:
    raise ValueError(f"num_probes must be at least 1, got {num_probes}.")
  mask_t = _mask_tuple(params, mask)
  m = _check_steps(num_steps, num_curvature_params(params, mask=mask))
  loss_fn = as_partial(loss_fn, name="loss_fn")
  with matmul_precision(precision):
    _check_loss("spectral_density", loss_fn, params, data)
    sharding = vector_sharding(params)
    onednn = _onednn(cpu_convolutions, sharding)
    bar = progress_lib.progress_bar(total=int(num_probes) * m, desc="Hessian density",
                                    unit="HVP", enabled=progress)
    with progress_lib.active(bar):
      alphas, betas = _chunked_probes(
        lambda keys, real: _slq_chunk(loss_fn, params, data, keys, real, m, mask_t,
                                      sharding, not bar.disable, onednn),
        key, int(num_probes), num_probes)
  _check_products("spectral_density", {"alphas": alphas, "betas": betas})
  nodes, weights = gauss_quadrature(alphas, betas)
  grid, density, s2 = density_from_quadrature(nodes, weights, smoothing=smoothing)
  return SpectralDensity(grid, density, nodes, weights, s2)


# ----------------------------------------------------------------------------------------------
# Eigenvalue-ratio maps (Li et al. 2018, Sec. 6).


def _curvature_metrics(num_steps, mask, precision, onednn, tol, loss_fn, data, key, params):
  with matmul_precision(precision):
    return _curvature_metrics_impl(num_steps, mask, loss_fn, data, key, params, onednn, tol)


def _curvature_metrics_impl(num_steps, mask, loss_fn, data, key, params, onednn=None, tol=None):
  op = flat_hvp_operator(loss_fn, params, data, mask, onednn=onednn)
  k_start, k_restart = jax.random.split(key)
  v0 = _start_vector(k_start, op.x0.shape[0], op.x0.dtype)
  m = min(num_steps, op.x0.shape[0])
  res = lanczos(op.matvec, v0, num_steps=m, key=k_restart, precision=None, tol=tol)
  if tol is None:
    evals = jnp.linalg.eigvalsh(tridiagonal(res.alphas, res.betas))
    top, bottom = evals[-1], evals[0]
  else:  # the Ritz values of T_steps (the leading block of the padded run)
    betas = jnp.concatenate([res.betas, jnp.zeros((1,), res.betas.dtype)])
    top, _, bottom, _ = extreme_ritz_pairs(res.alphas, betas, res.steps, 1, 1)
    top, bottom = top[0], bottom[0]
  # a NaN loss can have finite products (see `_check_loss`): such points map to NaN
  finite = jnp.all(jnp.isfinite(mean_loss(loss_fn, params, data)))
  lmax, lmin = (jnp.where(finite, e, jnp.nan) for e in (top, bottom))
  out = {"lambda_max": lmax, "lambda_min": lmin, "ratio": jnp.abs(lmin / lmax)}
  if tol is not None:
    out["lanczos_steps"] = res.steps
  return out


def make_curvature_metric_fn(loss_fn: LossFn, data: Any, *, num_steps: int = 20,
                             mask: PyTree | None = None, params_like: PyTree | None = None,
                             key: jax.Array | None = None, precision=CURVATURE_PRECISION,
                             cpu_convolutions: str = "auto", tol: float | None = None
                             ) -> Callable[[PyTree], dict]:
  """Builds ``metric_fn(params) -> {"lambda_max", "lambda_min", "ratio"}`` for eigenvalue maps.

  Li et al. 2018 (Sec. 6) map ``|lambda_min / lambda_max|`` of the Hessian over a 2-D plane:
  ``ratio`` near 0 means locally convex, large means strongly non-convex. Both ends come from
  one Lanczos run of ``num_steps`` steps (fixed start vector from ``key``), diagonalised with
  `jnp.linalg.eigvalsh`; the function is pure, jit- and vmap-compatible, and a
  `jax.tree_util.Partial` whose data (batches, loss_fn's leaves) are pytree leaves, so
  ``surface_grid(metric_fn, center, (d1, d2), xs, ys)`` evaluates it at every grid point. It
  cannot raise inside a compiled map: at a point whose loss is not finite (one extra forward
  pass checks it) or whose products are not, all three values are NaN.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (inference mode, as Li et al.).
    data: one batch or a `DeviceSplit`.
    num_steps: Lanczos steps per point (clipped to P).
    mask: optional pytree of Python bools (Li et al.: ``trees.mask_by_ndim(params)``); needs
      ``params_like`` only if you pass a mask whose structure you want checked early.
    params_like: optional params pytree used to validate ``mask`` now instead of at first call.
    key: start-vector key (default ``jax.random.key(0)``).
    precision: matmul precision of the Lanczos run at every point (`core.precision`; default
      ``"highest"``, kept inside a surface evaluated at another precision; None: the
      surrounding setting). Part of the function's identity in a store.
    cpu_convolutions: as in `hvp`, resolved when the function is built.
    tol: None (default): exactly ``num_steps`` Lanczos steps at every point. A number: each
      point's Lanczos stops at the first step ``m`` where the largest and the smallest Ritz
      pairs satisfy the residual bound ``|beta_m s_{m,i}| <= tol |theta_i|`` (`lanczos`'s
      ``tol``; ``num_steps`` is the cap), and the metric also returns ``"lanczos_steps"``, the
      ``m`` of that point. Under the engine's `vmap` a chunk's loop runs until its last point
      stops (the chunk costs its slowest point's steps; each point's values are its own).

  References:
    Li, Xu, Taylor, Studer and Goldstein 2018, "Visualizing the Loss Landscape of Neural Nets",
    Sec. 6.
    Parlett 1998, "The Symmetric Eigenvalue Problem" (residual bounds of Ritz pairs).
  """
  precision = check_precision(precision)
  if num_steps < 2:
    raise ValueError(
      f"num_steps must be at least 2 for both ends of the spectrum, got {num_steps}.")
  check_tolerance(tol, (1, 1), num_steps)
  if mask is not None:
    mask_t = _mask_tuple(params_like if params_like is not None else mask, mask)
  else:
    mask_t = None
  key = jax.random.key(0) if key is None else key
  return jax.tree_util.Partial(
    functools.partial(_curvature_metrics, int(num_steps), mask_t, precision,
                      min_flops_for(cpu_convolutions), None if tol is None else float(tol)),
    as_partial(loss_fn, name="loss_fn"), data, key)


__all__ = [
  "HessianEigenvalues",
  "SpectralDensity",
  "TraceEstimate",
  "forward_over_forward_loss",
  "hessian_eigenvalues",
  "hessian_trace",
  "hvp",
  "make_curvature_metric_fn",
  "mean_loss",
  "num_curvature_params",
  "ritz_vectors",
  "spectral_density",
  "vector_sharding",
]
