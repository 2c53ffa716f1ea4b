"""Training-mode BatchNorm with a backward pass of few memory passes (the zoo's BatchNorm).

In training mode BatchNorm normalises with the statistics of its batch (Ioffe and Szegedy 2015).
Per channel, over the ``M`` values of the other axes,

  ``mu = sum(x) / M``, ``var = max(0, sum(x^2) / M - mu^2)`` (flax's variance),
  ``r = 1 / sqrt(var + eps)``, ``xh = (x - mu) r``, ``y = gamma xh + beta``.

Its derivative is linear in the tangents ``(dx, dgamma, dbeta)``:

  ``dy = T(dx, dgamma, dbeta) = gamma r (dx - mean(dx) - xh mean(xh dx)) + dgamma xh + dbeta``,

and, since ``dx -> gamma r (dx - mean(dx) - xh mean(xh dx))`` is symmetric, its transpose (the
backward pass, for a cotangent ``g`` of ``y``) is

  ``d beta = sum(g)``, ``d gamma = sum(g xh) = r (sum(g x) - mu sum(g))``,
  ``dx = gamma r (g - d beta / M - xh d gamma / M)``:

two sums over ``(g, x)`` and one elementwise pass for ``dx``. Differentiated as written, the
same function's backward pass takes more passes over the activations (``xh`` is stored, the
sums run one by one, and the variance's and the mean's paths each add theirs):
benchmarks/bench_batchnorm.py times both, and a compiled training epoch of ResNet-20 or
PreResNet-20 on the CPU is faster with this one (docs/performance.md).

`batch_norm_train` gives ``T`` as a primitive that is linear in its tangents, whose transpose
rule is that backward pass. So `jax.grad`, `jax.vjp` and `jax.linearize` use it, and every other
order of differentiation still works: ``T``'s own derivative (forward over forward, or forward
over reverse through the backward pass) and `jax.vmap` of it are evaluated by differentiating
and batching the formula above. The forward values are flax's, operation for operation; the
derivatives are the same up to float32 rounding (the order of the sums differs). The clamp of
the variance at zero is not differentiated: it only acts on a channel whose values are all
equal, where ``x - mu`` (and with it the variance's term) vanishes.

`BatchNorm` is `flax.linen.BatchNorm` with this training-mode path: same parameters, running
statistics and their update, same class for every ``isinstance`` check
(`adapters.batchnorm` recomputes its statistics as flax's). It takes the path for float32
inputs normalised over every axis but the last, with scale and bias and no mask or
``axis_name``; any other configuration (and inference mode) runs flax's code.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.extend.core as jex
import jax.numpy as jnp
from jax.interpreters import ad, batching, mlir

__all__ = ["BatchNorm", "batch_norm_train", "batch_norm_tangent"]

_tangent_p = jex.Primitive("landscape_jax_batch_norm_tangent")


def _axes(x) -> tuple[int, ...]:
  return tuple(range(x.ndim - 1))


def batch_norm_tangent(x, mean, rstd, scale, dx, dscale, dbias):
  """``T(dx, dscale, dbias)``, the derivative of training-mode BatchNorm at ``x`` (module
  docstring), computed as written: ``scale rstd (dx - mean(dx) - xh mean(xh dx)) + dscale xh +
  dbias`` with ``xh = (x - mean) rstd``, means over every axis but the last."""
  axes = _axes(x)
  xh = (x - mean) * rstd
  k = scale * rstd
  return (k * (dx - jnp.mean(dx, axes) - xh * jnp.mean(xh * dx, axes)) + dscale * xh + dbias)


def _backward(g, x, mean, rstd, scale):
  """The transpose of `batch_norm_tangent` in its tangents: ``(dx, dscale, dbias)`` for a
  cotangent ``g`` (module docstring)."""
  axes = _axes(x)
  m = x.size // x.shape[-1]
  dbias = jnp.sum(g, axes)
  dscale = rstd * (jnp.sum(g * x, axes) - mean * dbias)
  k = scale * rstd
  dx = k * g - (k / m) * dbias - (k * rstd / m) * dscale * (x - mean)
  return dx, dscale, dbias


def _abstract_eval(x, mean, rstd, scale, dx, dscale, dbias):
  del mean, rstd, scale, dscale, dbias
  return jax.core.ShapedArray(x.shape, dx.dtype)


def _transpose(ct, x, mean, rstd, scale, dx, dscale, dbias):
  # x, mean, rstd and scale are the primal point (never linear here); dx, dscale and dbias
  # are the linear inputs (`UndefinedPrimal`) or constants (instantiated zero tangents)
  if type(ct) is ad.Zero:
    return [None] * 4 + [ad.Zero(v.aval) if ad.is_undefined_primal(v) else None
                         for v in (dx, dscale, dbias)]
  cts = _backward(ct, x, mean, rstd, scale)
  return [None] * 4 + [c if ad.is_undefined_primal(v) else None
                       for c, v in zip(cts, (dx, dscale, dbias), strict=True)]


def _jvp(primals, tangents):
  tangents = [ad.instantiate_zeros(t) for t in tangents]
  return (_tangent_p.bind(*primals),
          jax.jvp(batch_norm_tangent, tuple(primals), tuple(tangents))[1])


def _batch(args, dims):
  return jax.vmap(batch_norm_tangent, in_axes=tuple(dims))(*args), 0


_tangent_p.def_abstract_eval(_abstract_eval)
_tangent_p.def_impl(jax.jit(batch_norm_tangent))
mlir.register_lowering(_tangent_p, mlir.lower_fun(batch_norm_tangent, multiple_results=False))
ad.primitive_jvps[_tangent_p] = _jvp
ad.primitive_transposes[_tangent_p] = _transpose
batching.primitive_batchers[_tangent_p] = _batch


def _statistics(x):
  axes = _axes(x)
  mean, mean2 = jnp.mean(x, axes), jnp.mean(jnp.square(x), axes)
  return mean, jnp.maximum(0.0, mean2 - jnp.square(mean))


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
  """Training-mode BatchNorm over every axis of ``x`` but the last.

  Returns ``(y, mean, var)``: ``y = (x - mean) * (rsqrt(var + epsilon) * scale) + bias``, with
  the batch's ``mean`` and (biased) ``var`` per channel as flax computes them, for the running
  averages. Its derivatives are described in the module docstring (Ioffe and Szegedy 2015).
  """
  mean, var = _statistics(x)
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias, mean, var


@batch_norm_train.defjvp
def _batch_norm_train_jvp(epsilon, primals, tangents):
  x, scale, bias = primals
  dx, dscale, dbias = tangents
  y, mean, var = batch_norm_train(x, scale, bias, epsilon)
  rstd = jax.lax.rsqrt(var + epsilon)
  dy = _tangent_p.bind(x, mean, rstd, scale, dx, dscale, dbias)
  axes = _axes(x)
  dmean = jnp.mean(dx, axes)
  dvar = 2.0 * jnp.mean((x - mean) * dx, axes)
  return (y, mean, var), (dy, dmean, dvar)


_FLAX_CALL = nn.BatchNorm.__call__.__wrapped__


class BatchNorm(nn.BatchNorm):
  """`flax.linen.BatchNorm` whose training mode runs `batch_norm_train` (module docstring)."""

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    running = nn.merge_param("use_running_average", self.use_running_average,
                             use_running_average)
    axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
    fast = (not running and mask is None and self.axis_name is None
            and x.ndim >= 2 and tuple(a % x.ndim for a in axes) == (x.ndim - 1,)
            and self.use_bias and self.use_scale and self.use_fast_variance
            and self.force_float32_reductions and x.dtype == jnp.float32
            and self.param_dtype == jnp.float32 and self.dtype in (None, jnp.float32))
    if not fast:
      # flax's own code, unwrapped: called through the wrapper it would count as a second call
      # of this module for method interceptors (`adapters.folding` counts the calls)
      return _FLAX_CALL(self, x, use_running_average, mask=mask)
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
