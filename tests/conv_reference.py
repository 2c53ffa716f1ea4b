"""Independent references for the convolution tests (oneDNN, bfloat16): a direct NumPy
convolution and the lowered program text of a jitted function."""

import jax
import numpy as np

__all__ = ["hlo_text", "numpy_conv"]


def numpy_conv(x, w, strides, padding, dilation):
  """y[n,i,j,o] = sum_{a,b,c} xp[n, i s0 + a d0, j s1 + b d1, c] w[a,b,c,o], in float64."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  t, b, lft, r = padding
  xp = np.pad(x, ((0, 0), (t, b), (lft, r), (0, 0)))
  kh, kw = w.shape[:2]
  oh = (xp.shape[1] - (kh - 1) * dilation[0] - 1) // strides[0] + 1
  ow = (xp.shape[2] - (kw - 1) * dilation[1] - 1) // strides[1] + 1
  y = np.zeros((x.shape[0], oh, ow, w.shape[3]))
  for a in range(kh):
    for c in range(kw):
      win = xp[:, a * dilation[0]: a * dilation[0] + (oh - 1) * strides[0] + 1: strides[0],
               c * dilation[1]: c * dilation[1] + (ow - 1) * strides[1] + 1: strides[1], :]
      y += np.einsum("nhwc,co->nhwo", win, w[a, c])
  return y


def hlo_text(fn, *args) -> str:
  """The StableHLO text of ``jax.jit(fn)`` lowered for `args`."""
  return jax.jit(fn).lower(*args).as_text()
