"""oneDNN derivatives of convolutions (backends.cpu.onednn_autodiff): the three products against a
direct NumPy convolution and its adjoint identities, every order of differentiation and vmap
against XLA's, whole models (zoo families, NNX, Equinox) against XLA's gradients and HVPs, and the
fallback to XLA for what oneDNN does not take (grouped convolutions, bfloat16).

Tolerances: float32, largest difference <= 2e-5 (products) / 1e-4 (models, whose gradients sum
many more terms) times the largest magnitude of XLA's result; bfloat16 models run XLA's own
program (fallback), so they match to 1e-6 relative."""

import json
import platform
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import landscape_jax as lj
from landscape_jax.backends.cpu import onednn_autodiff as ad
from landscape_jax.core import hessian as hs
from tests.conv_reference import hlo_text, numpy_conv

pytestmark = pytest.mark.skipif(
  platform.system() != "Linux" or platform.machine() != "x86_64",
  reason="oneDNN wheels exist for Linux x86-64 only")

CONFIGS = [  # strides, padding (t, b, l, r), dilation, kernel
  ((1, 1), (1, 1, 1, 1), (1, 1), (3, 3)),
  ((2, 2), (1, 1, 1, 1), (1, 1), (3, 3)),
  ((2, 1), (0, 2, 1, 0), (2, 1), (3, 2)),
  ((1, 2), (0, 0, 0, 0), (1, 1), (1, 1)),  # 1x1, strided
  ((2, 2), (0, 0, 0, 0), (1, 1), (1, 1)),  # ResNet's projection shortcut
]


def _close(got, want, tol):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    assert g.shape == w.shape
    err, scale = np.max(np.abs(g - w)), np.max(np.abs(w))
    assert err <= tol * scale + 1e-30, f"max difference {err:.3g} > {tol} x {scale:.3g}"


def _xla_conv(strides, padding, dilation):
  return lambda x, w: lax.conv_general_dilated(
    x, w, strides, ((padding[0], padding[1]), (padding[2], padding[3])), rhs_dilation=dilation,
    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _operands(kernel, key=0):
  k = jax.random.split(jax.random.key(key), 2)
  return jax.random.normal(k[0], (3, 11, 10, 5)), jax.random.normal(k[1], (*kernel, 5, 7))


@pytest.mark.parametrize("strides,padding,dilation,kernel", CONFIGS)
def test_three_products_match_numpy_and_are_adjoint(strides, padding, dilation, kernel):
  """F against a float64 NumPy convolution; D and W through the adjoint identities
  <F(x, w), dy> = <x, D(dy, w)> = <w, W(x, dy)> with NumPy's F, and exactly as the transposes
  that jax.vjp derives (the bwd_data / bwd_weights FFI calls)."""
  x, w = _operands(kernel)
  y = jax.jit(lambda x, w: ad.conv(x, w, strides=strides, padding=padding,
                                   dilation=dilation))(x, w)
  ref = numpy_conv(x, w, strides, padding, dilation)
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-4)
  dy = jax.random.normal(jax.random.key(5), y.shape)
  _, vjp = jax.vjp(lambda x, w: ad.conv(x, w, strides=strides, padding=padding,
                                        dilation=dilation), x, w)
  dx, dw = jax.jit(vjp)(dy)
  lhs = float(np.sum(ref * np.asarray(dy, np.float64)))
  for a, b in ((x, dx), (w, dw)):
    assert abs(float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64))) - lhs) <= (
      1e-5 * np.sum(np.abs(ref * np.asarray(dy))))
  text = hlo_text(lambda x, w: jax.vjp(lambda x, w: ad.conv(
    x, w, strides=strides, padding=padding, dilation=dilation), x, w)[1](dy), x, w)
  assert "landscape_jax_onednn_conv_bwd_data" in text
  assert "landscape_jax_onednn_conv_bwd_weights" in text
  assert "convolution" not in re.sub(r"custom_call @\w+", "", text)


@pytest.mark.parametrize("strides,padding,dilation,kernel", [CONFIGS[2], CONFIGS[3]])
def test_every_order_of_differentiation_matches_xla(strides, padding, dilation, kernel):
  """grad, forward-over-reverse HVP, reverse-over-reverse, linearize and both vmaps against
  XLA's, and each runs on oneDNN only (no XLA convolution in the compiled program)."""
  x, w = _operands(kernel, 1)
  ours = lambda x, w: ad.conv(x, w, strides=strides, padding=padding, dilation=dilation)
  xla = _xla_conv(strides, padding, dilation)

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.tanh(conv(x, w)) ** 2)

  def hvp(conv):
    g = jax.grad(loss(conv), argnums=(0, 1))
    return lambda x, w: jax.jvp(g, (x, w), (0.3 * x, 0.7 * w))[1]

  def rev_rev(conv):
    g = jax.grad(loss(conv), argnums=1)
    return jax.grad(lambda x, w: jnp.sum(g(x, w) ** 2), argnums=(0, 1))

  def linearized(conv):
    return lambda x, w: jax.linearize(jax.grad(loss(conv), argnums=1), x, w)[1](x, w)

  for make in (lambda c: jax.grad(loss(c), argnums=(0, 1)), hvp, rev_rev, linearized):
    fn = make(ours)
    _close(jax.jit(fn)(x, w), make(xla)(x, w), 2e-5)
    text = hlo_text(fn, x, w)
    assert "convolution" not in re.sub(r"custom_call @\w+", "", text)
  xs, ws = jnp.stack([x, -0.5 * x]), jnp.stack([w, 2 * w])
  _close(jax.jit(jax.vmap(ours, (0, None)))(xs, w), jax.vmap(xla, (0, None))(xs, w), 2e-5)
  _close(jax.jit(jax.vmap(ours, (None, 0)))(x, ws), jax.vmap(xla, (None, 0))(x, ws), 2e-5)
  _close(jax.jit(jax.vmap(ours))(xs, ws), jax.vmap(xla)(xs, ws), 2e-5)
  # vmapped gradients and HVPs (e.g. several probes at once): every product batched
  g, gx = jax.grad(loss(ours), argnums=1), jax.grad(loss(xla), argnums=1)
  _close(jax.jit(jax.vmap(g, (0, None)))(xs, w), jax.vmap(gx, (0, None))(xs, w), 2e-5)
  vs = jnp.stack([w, -w * 0.1])
  hv = lambda gr: jax.vmap(lambda v: jax.jvp(lambda q: gr(x, q), (w,), (v,))[1])
  _close(jax.jit(hv(g))(vs), hv(gx)(vs), 2e-5)


def test_strided_1x1_backward_weights_skips_the_jit_1x1_kernel():
  """oneDNN 3.2's ``jit_1x1`` backward weights of a strided 1x1 convolution writes past its
  scratchpad (heap corruption) on AVX-512 and is wrong on AVX2: the kernel takes the next
  implementation (`KnownWrong` in csrc/onednn_conv.cc); unstrided 1x1 may keep it."""
  for strides in ((1, 2), (2, 1), (2, 2)):
    name = ad.implementation("bwd_weights", (3, 11, 10, 5), (1, 1, 5, 7), strides=strides)
    assert name and not name.startswith("jit_1x1"), (strides, name)
  x, w = _operands((1, 1))
  dy = jax.random.normal(jax.random.key(4), (3, 11, 5, 7))
  dw = jax.jit(jax.vjp(lambda w: ad.conv(x, w, strides=(1, 2)), w)[1])(dy)[0]
  _, vjp = jax.vjp(lambda w: _xla_conv((1, 2), (0, 0, 0, 0), (1, 1))(x, w), w)
  _close(dw, vjp(dy)[0], 2e-5)


def test_invalid_arguments_say_what_is_wrong():
  x, w = _operands((3, 3))
  with pytest.raises(ValueError, match="float32"):
    ad.conv(x.astype(jnp.bfloat16), w)
  with pytest.raises(ValueError, match="matching channels"):
    ad.conv(x, w[:, :, :3])
  with pytest.raises(ValueError, match="paddings >= 0"):
    ad.conv(x, w, padding=-1)


# ------------------------------------------------------------------------------- whole models
ZOO = [("resnet8", {"width": 0.25}), ("preresnet110", {"depth": 8, "width": 0.25}),
       ("wrn16_4", {"depth": 10, "widen_factor": 1}), ("vgg9_bn", {"width": 0.125}),
       ("densenet_bc_100_12", {"depth": 10, "growth_rate": 4}), ("convfc", {"width": 0.125}),
       ("resnet8_noshort", {"width": 0.25})]


def _batch(n=6, size=8, channels=3, classes=10):
  k1, k2 = jax.random.split(jax.random.key(3))
  return (jax.random.normal(k1, (n, size, size, channels)),
          jax.random.randint(k2, (n,), 0, classes))


def _check_model(loss_fn, params, batch, *, tol=1e-4, expect_onednn=True):
  """Gradient and forward-over-reverse HVP of `loss_fn` with oneDNN derivatives against XLA's."""
  fast = ad.with_onednn_derivatives(loss_fn)
  v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(7), p.shape, p.dtype), params)

  def hvp(f):
    return lambda p, b, v: jax.jvp(lambda q: jax.grad(f)(q, b), (p,), (v,))[1]

  _close(jax.jit(jax.grad(fast))(params, batch), jax.jit(jax.grad(loss_fn))(params, batch), tol)
  _close(jax.jit(hvp(fast))(params, batch, v), jax.jit(hvp(loss_fn))(params, batch, v), tol)
  text = hlo_text(hvp(fast), params, batch, v)
  assert ("landscape_jax_onednn_conv_bwd_data" in text) == expect_onednn
  return text


def _check_quadratic(loss_fn, params, batch, *, tol=1e-4, onednn=0.0):
  """Hutchinson's sample ``z^T H z`` by forward over forward (`FlatOperator.quadratic`, what
  `hessian_trace` runs; oneDNN convolutions unless `onednn` is None) against ``vdot(z, H z)`` of
  XLA's forward-over-reverse product (what it ran before), to `tol` relative."""
  fast = hs.flat_hvp_operator(loss_fn, params, batch, None, onednn=onednn)
  ref = hs.flat_hvp_operator(loss_fn, params, batch, None)
  z = jax.random.rademacher(jax.random.key(8), ref.x0.shape, ref.x0.dtype)
  got = float(jax.jit(fast.quadratic)(z))
  want = float(jax.jit(lambda u: jnp.vdot(u, ref.matvec(u)))(z))
  assert abs(got - want) <= tol * abs(want), (got, want)


@pytest.mark.parametrize("name,overrides", [
  pytest.param(*z, marks=() if z[0] == "resnet8" else pytest.mark.slow) for z in ZOO],
  ids=[z[0] for z in ZOO])
def test_zoo_gradients_and_hvps_match_xla(name, overrides):
  model = lj.get_model(name, num_classes=10, **overrides)
  batch = _batch()
  variables = model.init(jax.random.key(0), batch[0][:1])
  loss_fn = lj.make_loss_fn(model, batch_stats=variables.get("batch_stats"))
  text = _check_model(loss_fn, variables["params"], batch, expect_onednn=True)
  assert "convolution" not in re.sub(r"custom_call @\w+", "", text)
  _check_quadratic(loss_fn, variables["params"], batch)


class _NNXNet(nnx.Module):
  """conv 3x3 stride 2 -> relu -> grouped conv (2 groups) -> dilated conv -> pool -> dense."""

  def __init__(self, rngs):
    self.c1 = nnx.Conv(3, 4, (3, 3), strides=2, rngs=rngs)
    self.c2 = nnx.Conv(4, 4, (3, 3), feature_group_count=2, rngs=rngs)
    self.c3 = nnx.Conv(4, 6, (3, 3), kernel_dilation=2, rngs=rngs)
    self.fc = nnx.Linear(6, 10, rngs=rngs)

  def __call__(self, x):
    x = self.c3(jax.nn.relu(self.c2(jax.nn.relu(self.c1(x)))))
    return self.fc(jnp.mean(jnp.tanh(x), (1, 2)))


def test_nnx_model_with_a_grouped_convolution_falls_back_for_it():
  model, params = lj.from_nnx(_NNXNet(nnx.Rngs(0)))
  loss_fn = lj.make_loss_fn(model)
  batch = _batch(size=12)
  text = _check_model(loss_fn, params, batch)
  # the grouped convolution and its derivatives stay XLA's; the other two run on oneDNN
  assert "feature_group_count = 2" in text
  _check_quadratic(loss_fn, params, batch)


class _EqxNet(eqx.Module):
  """Equinox: one (H, W, C) example, (C, H, W) convolutions (vmapped by the adapter)."""

  c1: eqx.nn.Conv2d
  c2: eqx.nn.Conv2d
  fc: eqx.nn.Linear

  def __init__(self, key):
    k = jax.random.split(key, 3)
    self.c1 = eqx.nn.Conv2d(3, 4, 3, padding=1, key=k[0])
    self.c2 = eqx.nn.Conv2d(4, 5, 1, stride=2, key=k[1])
    self.fc = eqx.nn.Linear(5, 10, key=k[2])

  def __call__(self, x):
    x = self.c2(jax.nn.relu(self.c1(jnp.transpose(x, (2, 0, 1)))))
    return self.fc(jnp.mean(x, (1, 2)))


def test_equinox_model_gradients_and_hvps_match_xla():
  model, params = lj.from_equinox(_EqxNet(jax.random.key(0)))
  loss_fn = lj.make_loss_fn(model)
  _check_model(loss_fn, params, _batch())
  _check_quadratic(loss_fn, params, _batch())
  _check_quadratic(loss_fn, params, _batch(), onednn=None)  # XLA's convolutions


def test_bfloat16_model_falls_back_to_xla():
  """bfloat16 convolutions are not taken: the program is XLA's own, values to bf16 rounding."""
  model = lj.get_model("resnet8", num_classes=10, width=0.25, dtype=jnp.bfloat16)
  batch = _batch()
  variables = model.init(jax.random.key(0), batch[0][:1])
  loss_fn = lj.make_loss_fn(model, batch_stats=variables.get("batch_stats"))
  _check_model(loss_fn, variables["params"], batch, tol=1e-6, expect_onednn=False)
  # forward over forward rounds differently from forward over reverse in bfloat16
  _check_quadratic(loss_fn, variables["params"], batch, tol=5e-2)


def test_hvp_with_onednn_derivatives_matches_xla():
  """`lj.hvp` with ``cpu_convolutions="onednn"`` against ``"xla"`` (and, slow, Lanczos
  eigenvalues, Hutchinson samples and the curvature map vmapped over points)."""
  model = lj.get_model("resnet8", num_classes=10, width=0.125)
  batch = _batch(n=4, size=6)
  variables = model.init(jax.random.key(0), batch[0][:1])
  params = variables["params"]
  loss_fn = lj.make_loss_fn(model, batch_stats=variables["batch_stats"])
  v = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
  runs = {c: lj.hvp(loss_fn, params, batch, v, cpu_convolutions=c) for c in ("onednn", "xla")}
  _close(runs["onednn"], runs["xla"], 1e-4)
  with pytest.raises(ValueError, match="cpu_convolutions"):
    lj.hvp(loss_fn, params, batch, v, cpu_convolutions="fast")


@pytest.mark.slow
def test_lanczos_trace_and_curvature_map_with_onednn_match_xla():
  model = lj.get_model("resnet8", num_classes=10, width=0.125)
  batch = _batch(n=4, size=6)
  variables = model.init(jax.random.key(0), batch[0][:1])
  params = variables["params"]
  loss_fn = lj.make_loss_fn(model, batch_stats=variables["batch_stats"])
  eigs = [lj.hessian_eigenvalues(loss_fn, params, batch, top_k=2, num_steps=8,
                                 cpu_convolutions=c).top for c in ("onednn", "xla")]
  np.testing.assert_allclose(eigs[0], eigs[1], rtol=1e-3)
  traces = [lj.hessian_trace(jax.random.key(1), loss_fn, params, batch, num_probes=4,
                             cpu_convolutions=c).samples for c in ("onednn", "xla")]
  np.testing.assert_allclose(traces[0], traces[1], rtol=1e-3, atol=1e-3)
  maps = [lj.make_curvature_metric_fn(loss_fn, batch, num_steps=6, cpu_convolutions=c)
          for c in ("onednn", "xla")]
  points = jax.tree.map(lambda p: jnp.stack([p, 1.1 * p]), params)
  got, want = (jax.jit(jax.vmap(m))(points) for m in maps)
  _close(got["lambda_max"], want["lambda_max"], 1e-3)


def test_training_steps_with_onednn_match_xla():
  """One SGD step (BatchNorm in training mode) and one Bezier-curve step with
  ``cpu_convolutions="onednn"`` against ``"xla"``: same loss, same updated weights."""
  import optax

  from landscape_jax.core.curves import init_curve, split_curve
  from landscape_jax.methods.curve_training import CurveTrainState, curve_train_step
  from landscape_jax.methods.training import create_train_state, train_step

  model = lj.get_model("resnet8", num_classes=10, width=0.125)
  images = jax.random.randint(jax.random.key(2), (4, 6, 6, 3), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(4) % 10
  tx = optax.sgd(0.1, momentum=0.9)
  state = create_train_state(model, jax.random.key(0), images, tx)
  kw = dict(model=model, tx=tx, mean=jnp.zeros(3), std=jnp.full(3, 60.0))
  runs = [train_step(state, (images, labels), jax.random.key(1), cpu_convolutions=c, **kw)
          for c in ("onednn", "xla")]
  _close(runs[0][1]["loss"], runs[1][1]["loss"], 1e-5)
  _close(runs[0][0].params, runs[1][0].params, 1e-5)

  end = jax.tree.map(lambda p: -p, state.params)
  loss_fn = lj.make_loss_fn(model, batch_stats=state.batch_stats)
  ends, interior = split_curve(init_curve(state.params, end, 3))
  cstate = CurveTrainState(jnp.zeros((), jnp.int32), interior, tx.init(interior))
  batch = (images.astype(jnp.float32) / 255.0, labels)
  steps = [jax.jit(lambda s, c=c: curve_train_step(loss_fn, tx, s, ends, batch, jax.random.key(3),
                                                   weight_decay=5e-4, cpu_convolutions=c))(cstate)
           for c in ("onednn", "xla")]
  _close(steps[0][1], steps[1][1], 1e-5)
  _close(steps[0][0].interior, steps[1][0].interior, 1e-5)


def test_train_sgd_and_fge_with_onednn_match_xla(monkeypatch):
  """`train_sgd` (two SGD steps, BatchNorm in training mode) and `fast_geometric_ensemble` (one
  cycle of two one-step epochs) with ``cpu_convolutions="onednn"`` against ``"xla"``: the same
  parameters within 1e-5 of their largest magnitude (float32, different order of the sums); the
  oneDNN run does wrap the loss in `with_onednn_derivatives` and the XLA run does not."""
  from landscape_jax.methods import ensembles

  model = lj.get_model("resnet8", num_classes=10, width=0.125)
  images = jax.random.randint(jax.random.key(2), (8, 6, 6, 3), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(8) % 10
  variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)), train=False)
  loss_fn = lj.make_loss_fn(model, mean=jnp.zeros(3), std=jnp.full(3, 60.0), train=True,
                            batch_stats=variables["batch_stats"])
  wrapped = []
  real = ensembles.with_onednn_derivatives
  monkeypatch.setattr(ensembles, "with_onednn_derivatives",
                      lambda f, **kw: wrapped.append(kw) or real(f, **kw))
  sgd = lj.TrainSettings(epochs=1, batch_size=4, learning_rate=0.1, momentum=0.9,
                         weight_decay=5e-4)
  got = {}
  for c in ("onednn", "xla"):
    n = len(wrapped)
    params, _, history = ensembles.train_sgd(loss_fn, variables["params"], (images, labels),
                                             settings=sgd, progress=False, cpu_convolutions=c)
    members, _ = ensembles.fast_geometric_ensemble(
      loss_fn, params, (images[:4], labels[:4]), progress=False, cpu_convolutions=c,
      settings=ensembles.FGESettings(cycles=1, cycle_epochs=2, batch_size=4, lr1=0.05,
                                     lr2=0.01))
    assert (len(wrapped) > n) == (c == "onednn")
    got[c] = (params, history[0]["loss"], members)
  assert wrapped and all(kw == {"min_flops": 0.0} for kw in wrapped)
  _close(got["onednn"], got["xla"], 1e-5)


_AVX2_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from landscape_jax.backends.cpu import onednn_autodiff as ad
from landscape_jax.core import hessian as hs
configs = [tuple(map(tuple, c)) for c in json.loads(sys.argv[1])]
shapes = [((3, 11, 10, 5), 7), ((4, 9, 9, 8), 16)]
names = set()
for (strides, padding, dilation, kernel), ((n, h, w_, c), o) in [
    (cfg, s) for cfg in configs for s in shapes]:
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(k1, (n, h, w_, c)), jax.random.normal(k2, (*kernel, c, o))
  kw = dict(strides=strides, padding=padding, dilation=dilation)
  names |= {ad.implementation(k, x.shape, w.shape, **kw) for k in ad.KINDS}
  xla = lambda x, w: jax.lax.conv_general_dilated(
    x, w, strides, ((padding[0], padding[1]), (padding[2], padding[3])), rhs_dilation=dilation,
    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = lambda x, w: ad.conv(x, w, **kw)
  y, vjp = jax.vjp(ours, x, w)
  dy = jax.random.normal(k3, y.shape)
  want_y, want_vjp = jax.vjp(xla, x, w)
  for name, a, b in zip(("F", "D", "W"), (y, *jax.jit(vjp)(dy)), (want_y, *want_vjp(dy))):
    err, scale = np.max(np.abs(a - b)), np.max(np.abs(b))
    assert err <= 2e-5 * scale, (name, strides, padding, dilation, kernel, n, c, o, err, scale)
assert all("avx512" not in n and n for n in names), names
print("OK", sorted(names))
"""


def test_avx2_only_code_path_in_a_subprocess():
  """The three products on oneDNN's AVX2 kernels (``ONEDNN_MAX_CPU_ISA=AVX2``, XLA limited the
  same way with ``--xla_cpu_max_isa=AVX2``), as on a CPU without AVX-512: forward, backward data
  and backward weights of every `CONFIGS` case at two shapes against XLA's. oneDNN 3.2's
  ``jit_1x1:avx2`` backward weights of a strided 1x1 convolution is wrong (92% off for strides
  (1, 2), 5 -> 7 channels): the kernel skips it (`KnownWrong` in csrc/onednn_conv.cc), which
  this test would catch failing."""
  import os
  import subprocess
  import sys

  env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", XLA_FLAGS="--xla_cpu_max_isa=AVX2",
             PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run([sys.executable, "-c", _AVX2_SCRIPT, json.dumps(CONFIGS)], env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
  assert "avx2" in proc.stdout


def test_auto_leaves_small_convolutions_to_xla():
  """``min_flops``: a convolution below it stays XLA's; ``"auto"`` uses `AUTO_MIN_FLOPS`,
  ``"onednn"`` none, ``"xla"`` no oneDNN at all."""
  x, w = _operands((3, 3))
  f = lambda x, w: jnp.sum(_xla_conv((1, 1), (1, 1, 1, 1), (1, 1))(x, w) ** 2)
  flops = 2 * 3 * 11 * 10 * 7 * 3 * 3 * 5
  for min_flops, on in ((flops, True), (flops + 1, False)):
    text = hlo_text(jax.grad(ad.with_onednn_derivatives(f, min_flops=min_flops)), x, w)
    assert ("landscape_jax_onednn_conv" in text) == on
  assert ad.min_flops_for("onednn") == 0 and ad.min_flops_for("xla") is None
  assert ad.min_flops_for("auto") == ad.AUTO_MIN_FLOPS
