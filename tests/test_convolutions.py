"""landscape_jax.backends.cpu.convolutions: the same convolutions in XLA:CPU's canonical layout."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from landscape_jax.backends.cpu.convolutions import (
  canonical_dimension_numbers,
  canonicalize_convolutions,
)

CASES = [  # (lhs spec, rhs spec, out spec, strides, padding, lhs dilation, rhs dilation, groups)
  ("NHWC", "HWIO", "NHWC", (1, 1), "SAME", (1, 1), (1, 1), 1),
  ("NCHW", "OIHW", "NCHW", (2, 1), ((1, 2), (0, 1)), (1, 1), (1, 1), 1),
  ("NHWC", "HWIO", "NCHW", (2, 2), "VALID", (1, 1), (2, 1), 1),
  ("CHWN", "IOHW", "HWNC", (1, 2), ((2, 0), (1, 1)), (2, 1), (1, 1), 1),
  ("NHWC", "HWIO", "NHWC", (1, 1), "SAME", (1, 1), (1, 1), 2),  # grouped: left as it is
]


def _conv(spec, x, w):
  lhs, rhs, out, strides, padding, lhs_dil, rhs_dil, groups = spec
  return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dil,
                                  rhs_dilation=rhs_dil, dimension_numbers=(lhs, rhs, out),
                                  feature_group_count=groups)


def _operands(spec, key):
  lhs, rhs, *_, groups = spec
  dims = {"N": 3, "H": 9, "W": 7, "C": 4}
  kdims = {"H": 3, "W": 2, "I": 4 // groups, "O": 6}
  k1, k2 = jax.random.split(key)
  return (jax.random.normal(k1, tuple(dims[c] for c in lhs)),
          jax.random.normal(k2, tuple(kdims[c] for c in rhs)))


@pytest.mark.parametrize("spec", CASES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}-g{s[-1]}")
def test_same_values_and_gradients_as_xla(spec):
  """Forward values, the gradients (whose convolutions have non-canonical dimension numbers)
  and a Hessian-vector product agree with XLA's own to float rounding."""
  x, w = _operands(spec, jax.random.key(0))

  def loss(x, w):
    return jnp.sum(jnp.tanh(_conv(spec, x, w)) ** 2)

  grad = jax.grad(loss, argnums=(0, 1))
  canon = canonicalize_convolutions(grad, backend="cpu")
  forward = canonicalize_convolutions(functools.partial(_conv, spec), backend="cpu")
  np.testing.assert_allclose(forward(x, w), _conv(spec, x, w), rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.jit(canon)(x, w), grad(x, w), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  v = jax.random.normal(jax.random.key(1), w.shape)
  hvp = lambda g: jax.jvp(lambda w_: g(x, w_)[1], (w,), (v,))[1]
  np.testing.assert_allclose(jax.jit(lambda: hvp(canon))(), hvp(grad), rtol=1e-4, atol=1e-4)


def _conv_labels(fn, *args):
  text = jax.jit(fn).lower(*args).compile().as_text()
  return set(re.findall(r"convolution\(.*dim_labels=([^,]+),", text))


def test_gradients_inside_a_scan_become_canonical_convolutions():
  """The mechanism (not a timing): in a scan, XLA:CPU keeps the weight and input gradients'
  convolutions in their own layouts (its slow path, jax-ml/jax#12868); canonicalised, every
  convolution of the compiled loop is NHWC x HWIO -> NHWC."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 6, 6, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))

  def loss(w, xb):
    return jnp.sum(jnp.tanh(lax.conv_general_dilated(
      xb, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))))

  def in_scan(grad_fn):
    def f(w, x):
      return lax.scan(lambda c, xb: (c + grad_fn(w, xb), None), jnp.zeros_like(w), x)[0]
    return f

  plain = _conv_labels(in_scan(jax.grad(loss)), w, x)
  canon = _conv_labels(in_scan(canonicalize_convolutions(jax.grad(loss), backend="cpu")), w, x)
  if jax.default_backend() == "cpu":
    assert plain - {"b01f_01io->b01f"}, plain  # XLA leaves the gradient's layout
  assert canon == {"b01f_01io->b01f"}, canon
  np.testing.assert_allclose(jax.jit(in_scan(canonicalize_convolutions(
    jax.grad(loss), backend="cpu")))(w, x), jax.jit(in_scan(jax.grad(loss)))(w, x),
    rtol=1e-5, atol=1e-5)


def test_canonical_dimension_numbers_and_other_backends():
  assert canonical_dimension_numbers(2) == lax.conv_dimension_numbers(
    (1, 5, 5, 1), (3, 3, 1, 1), ("NHWC", "HWIO", "NHWC"))
  f = lambda x: x
  assert canonicalize_convolutions(f, backend="gpu") is f
  assert canonicalize_convolutions(f, backend="tpu") is f
