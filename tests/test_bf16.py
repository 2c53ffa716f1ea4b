"""bfloat16 evaluation (``compute_dtype="bfloat16"``): oneDNN's bf16 convolutions against a float64
convolution of the bf16-rounded operands, the XLA fallback, make_metric_fn against float32, the
default left bit-identical, and the messages on CPUs without bfloat16 instructions."""

import functools
import importlib.util
import os
import platform
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.adapters import evaluation
from landscape_jax.backends.cpu import fusion, onednn, onednn_build
from tests.conv_reference import hlo_text, numpy_conv

pytestmark = pytest.mark.skipif(
  platform.system() != "Linux" or platform.machine() != "x86_64",
  reason="oneDNN wheels exist for Linux x86-64 only")

_TARGET = "landscape_jax_onednn_conv"
_BF16_CPU = bool(onednn_build.cpu_bf16_flags())
needs_bf16_cpu = pytest.mark.skipif(not _BF16_CPU, reason="this CPU has no avx512_bf16 / amx_bf16")


def _bf16(a) -> np.ndarray:
  """a rounded to the nearest bfloat16 (ties to even), back in float64."""
  return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16), np.float64)


def _rel(a, b) -> float:
  """||a - b|| / ||b||."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@needs_bf16_cpu
def test_native_bf16_kernels_are_chosen():
  impl = onednn.implementation((8, 16, 16, 16), (3, 3, 16, 16), padding=1,
                               compute_dtype="bfloat16")
  assert ("amx" in impl or "bf16" in impl) and "ref" not in impl, impl


@needs_bf16_cpu
@pytest.mark.parametrize("strides,padding,dilation,kernel,epilogue", [
  ((1, 1), (1, 1, 1, 1), (1, 1), (3, 3), ""),
  ((2, 2), (1, 1, 1, 1), (1, 1), (3, 3), "bias relu"),
  ((2, 1), (0, 2, 1, 0), (2, 1), (3, 2), "bias residual relu"),
  ((1, 1), (0, 0, 0, 0), (1, 1), (1, 1), "residual"),
])
def test_bf16_conv_is_the_conv_of_the_rounded_operands(strides, padding, dilation, kernel,
                                                       epilogue):
  k = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(k[0], (3, 11, 10, 24))
  w = jax.random.normal(k[1], (*kernel, 24, 20)) / np.sqrt(24 * np.prod(kernel))
  exact = numpy_conv(x, w, strides, padding, dilation)
  b = jax.random.normal(k[2], (20,)) if "bias" in epilogue else None
  r = jax.random.normal(k[3], exact.shape) if "residual" in epilogue else None
  kw = dict(strides=strides, padding=padding, dilation=dilation, bias=b, residual=r,
            relu="relu" in epilogue)

  def epi(z):  # the float32 epilogue, in float64
    z = z + (0 if b is None else np.asarray(b)) + (0 if r is None else np.asarray(r))
    return np.maximum(z, 0) if kw["relu"] else z

  y = jax.jit(functools.partial(onednn.conv, compute_dtype="bfloat16", **kw))(x, w)
  assert y.dtype == jnp.float32
  assert _TARGET in hlo_text(functools.partial(onednn.conv, compute_dtype="bfloat16", **kw), x, w)
  ref = epi(numpy_conv(_bf16(x), _bf16(w), strides, padding, dilation))
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)  # float32 accumulation
  # against the float32 convolution: operands rounded to 8 bits, errors of order 2^-9 relative
  geometry = dict(strides=strides, padding=padding, dilation=dilation)
  dev = _rel(onednn.conv(x, w, compute_dtype="bfloat16", **geometry), exact)
  assert 3e-4 < dev < 1e-2, dev
  assert _rel(onednn.conv(x, w, **geometry), exact) < 1e-5  # float32: exact up to rounding
  # the bfloat16 output is the float32 one, rounded once
  yb = jax.jit(functools.partial(onednn.conv, compute_dtype="bfloat16", out_dtype=jnp.bfloat16,
                                 **kw))(x, w)
  assert yb.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(yb, np.float64), _bf16(y), rtol=2 ** -8, atol=1e-6)


@needs_bf16_cpu
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_bf16_conv_of_float32_images_in_chunks(out_dtype):
  """A float32 x is rounded inside the kernel a few images at a time (here 16 + 16 + 13 images of
  32x32x16): every chunk, with its residual and output offsets, equals the reference."""
  k = jax.random.split(jax.random.key(3), 4)
  x = jax.random.normal(k[0], (45, 32, 32, 16))
  w = jax.random.normal(k[1], (3, 3, 16, 8)) / 12
  b, r = jax.random.normal(k[2], (8,)), jax.random.normal(k[3], (45, 16, 16, 8))
  kw = dict(strides=2, padding=1, bias=b, residual=r, relu=True, compute_dtype="bfloat16",
            out_dtype=out_dtype)
  y = jax.jit(functools.partial(onednn.conv, **kw))(x, w)
  ref = np.maximum(numpy_conv(_bf16(x), _bf16(w), (2, 2), (1, 1, 1, 1), (1, 1))
                   + np.asarray(b) + np.asarray(r), 0)
  if out_dtype == jnp.bfloat16:
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=2 ** -8, atol=1e-5)
  else:
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)
  assert float(np.abs(np.asarray(y, np.float64) - ref)[-13:].max()) < 0.05  # the last chunk
  whole = jax.jit(functools.partial(onednn.conv, **kw))(x.astype(jnp.bfloat16), w)  # one call
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(whole, np.float32),
                             rtol=2 ** -8, atol=1e-5)


@needs_bf16_cpu
def test_bf16_conv_grad_and_vmap():
  kx, kw = jax.random.split(jax.random.key(1))
  x, w = jax.random.normal(kx, (2, 6, 6, 8)), jax.random.normal(kw, (3, 3, 8, 4))
  ours = lambda x, w: onednn.conv(x, w, strides=2, padding=1, compute_dtype="bfloat16")
  ref = lambda x, w: jax.lax.conv_general_dilated(
    x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (2, 2), ((1, 1), (1, 1)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
  ws = jnp.stack([w, -2 * w, 0.5 * w])
  np.testing.assert_allclose(jax.jit(jax.vmap(ours, (None, 0)))(x, ws),
                             jax.vmap(ref, (None, 0))(x, ws), rtol=1e-5, atol=1e-4)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _block(w1, w2, b, dense):
  """A residual block with a dense head: conv -> +b -> relu -> conv -> +b -> +x -> relu -> dense."""
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def f(x):
    h = jax.nn.relu(conv(x, w1) + b)
    z = jax.nn.relu(conv(h, w2) + b + x)
    return jnp.mean(z, (1, 2)) @ dense

  return f


@needs_bf16_cpu
def test_rewrite_onednn_bf16_equals_xla_bf16_and_rounds_only_conv_inputs():
  k = jax.random.split(jax.random.key(2), 5)
  x = jax.random.normal(k[0], (4, 8, 8, 16))
  w1, w2 = (jax.random.normal(kk, (3, 3, 16, 16)) / 12 for kk in k[1:3])
  f = _block(w1, w2, jax.random.normal(k[3], (16,)), jax.random.normal(k[4], (16, 10)))
  ours = fusion.with_onednn_convolutions(f, compute_dtype="bfloat16")
  xla = fusion.with_compute_dtype(f, jnp.bfloat16)
  got, want, exact = jax.jit(ours)(x), jax.jit(xla)(x), f(x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert 1e-4 < _rel(got, exact) < 1e-2
  hlo = hlo_text(ours, x)
  calls = [line for line in hlo.splitlines() if _TARGET in line]
  assert len(calls) == 2 and "relu = true" in calls[0] and "residual = true" in calls[1]
  # h only feeds the second convolution: written in bfloat16; z feeds a mean: float32
  assert re.search(r"-> tensor<4x8x8x16xbf16>", calls[0]), calls[0]
  assert re.search(r"-> tensor<4x8x8x16xf32>", calls[1]), calls[1]
  assert re.search(r"dot_general.*bf16.*bf16.*-> tensor<4x10xf32>", hlo_text(xla, x))
  assert "convolution" not in hlo and re.search(r"stablehlo.convolution.*bf16", hlo_text(xla, x))


def test_with_compute_dtype_float32_is_the_function():
  f = _block(jnp.ones((3, 3, 2, 2)), jnp.ones((3, 3, 2, 2)), jnp.ones(2), jnp.ones((2, 3)))
  assert fusion.with_compute_dtype(f, None) is f
  assert fusion.with_compute_dtype(f, "float32") is f
  with pytest.raises(ValueError, match="compute_dtype must be one of"):
    fusion.with_compute_dtype(f, jnp.float16)


@pytest.fixture(scope="module")
def resnet8_digits(digits_train):
  """A ResNet-8 at random initialisation with its data's BatchNorm statistics (live units, logits
  of order 1), a larger head so that the loss depends on every logit, and 300 digits."""
  model = lj.get_model("resnet8", num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  data = lj.data.Dataset(digits_train.images[:300], digits_train.labels[:300], 10,
                         digits_train.mean, digits_train.std)
  params = variables["params"]
  params = {**params, "linear": {**params["linear"], "kernel": 5 * params["linear"]["kernel"]}}
  stats = lj.recompute_batch_stats(model, params, variables["batch_stats"], data, batch_size=100)
  return model, params, stats, data


def _metric(resnet8_digits, **kw):
  model, _, stats, data = resnet8_digits
  return lj.make_metric_fn(model, data, batch_stats=stats, batch_size=64, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("convs", [
  pytest.param("onednn", marks=needs_bf16_cpu), "xla"])
def test_metric_fn_bf16_is_within_1e2_of_float32(resnet8_digits, convs):
  params = resnet8_digits[1]
  d1, _ = lj.random_directions(jax.random.key(4), params, num=2)
  points = [params, jax.tree.map(lambda p, d: p + 0.5 * d, params, d1)]
  f32 = _metric(resnet8_digits, cpu_convolutions=convs)
  bf16 = _metric(resnet8_digits, cpu_convolutions=convs, compute_dtype="bfloat16")
  hlo = hlo_text(bf16, params)
  assert (_TARGET in hlo) == (convs == "onednn") and "bf16" in hlo
  for p in points:
    a, b = jax.jit(f32)(p), jax.jit(bf16)(p)
    rel = abs(float(b["loss"]) - float(a["loss"])) / abs(float(a["loss"]))
    assert 1e-6 < rel < 1e-2, rel  # rounded (not the float32 function), but close
    assert abs(float(b["accuracy"]) - float(a["accuracy"])) <= 0.02


@pytest.mark.slow
def test_curve_and_surface_in_bf16_are_the_bf16_metric_at_their_points(resnet8_digits):
  params = resnet8_digits[1]
  d1, d2 = lj.random_directions(jax.random.key(5), params, num=2)
  end = jax.tree.map(lambda p, d: p + 0.4 * d, params, d1)
  fn = _metric(resnet8_digits, compute_dtype="bfloat16")
  one = jax.jit(lambda p: fn(p))
  curve = lj.curves.evaluate_curve(fn, lj.curves.init_curve(params, end, 3), num_points=3,
                                   engine=lj.EngineOptions(chunk_size=3, progress=False),
                                   line=False)["curve"]
  # 1e-4: the points' float32 weights (and their BatchNorm folds) are computed in other compiled
  # programs, and a last-bit difference can flip a weight's bfloat16 rounding; float32 against
  # bfloat16 differs by ~1e-3 (checked last)
  np.testing.assert_allclose(curve["loss"][[0, -1]],
                             [float(one(params)["loss"]), float(one(end)["loss"])], rtol=1e-4)
  surf = lj.surface_grid(fn, params, (d1, d2), np.array([0.0, 0.4]), np.array([0.0]),
                         engine=lj.EngineOptions(progress=False))
  np.testing.assert_allclose(surf["loss"][:, 0], curve["loss"][[0, -1]], rtol=1e-4)
  f32 = jax.jit(_metric(resnet8_digits))(end)["loss"]
  assert 3e-4 < abs(curve["loss"][-1] - f32) / f32 < 1e-2


@needs_bf16_cpu
def test_metric_fn_bf16_onednn_equals_xla_bf16(resnet8_digits):
  params = resnet8_digits[1]
  got = jax.jit(_metric(resnet8_digits, compute_dtype=jnp.bfloat16))(params)
  want = jax.jit(_metric(resnet8_digits, cpu_convolutions="xla", compute_dtype="bfloat16"))(params)
  # Both round x and w to bfloat16 alike and accumulate in float32, in other orders: AVX512-BF16's
  # vdpbf16ps sums pairs of products before adding them, and an AMD Zen 4 measured 1.4e-5 here.
  # 1e-4 still tells bfloat16 inputs from float32 ones (~1e-3 apart, test above).
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-4)


def test_off_by_default_bit_identical(resnet8_digits):
  model, params, stats, data = resnet8_digits
  default = jax.jit(_metric(resnet8_digits))(params)
  assert "bf16" not in hlo_text(_metric(resnet8_digits), params)
  for same in (None, "float32", jnp.float32):
    got = jax.jit(_metric(resnet8_digits, compute_dtype=same))(params)
    for k in default:
      np.testing.assert_array_equal(got[k], default[k])
  # the evaluation as composed before the option existed (no compute_dtype anywhere)
  apply_fn = functools.partial(evaluation.apply_checked, model, 10, fold_batchnorm=True,
                               onednn=onednn_build.resolve("auto"))
  split = lj.device_split(data.images, data.labels, batch_size=64)
  before = jax.jit(lambda p: evaluation.evaluate_split(
    apply_fn, evaluation.model_variables(p, stats), split, data.mean, data.std))(params)
  for k in default:
    np.testing.assert_array_equal(before[k], default[k])
  bf16 = jax.jit(_metric(resnet8_digits, compute_dtype="bfloat16"))(params)
  assert float(bf16["loss"]) != float(default["loss"])


def test_bad_compute_dtype_names_the_argument(resnet8_digits):
  for bad in ("float16", jnp.float16, "bf16x", 3):
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
      _metric(resnet8_digits, compute_dtype=bad)
  with pytest.raises(ValueError, match="compute_dtype must be one of"):
    onednn.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), compute_dtype="int8")
  with pytest.raises(ValueError, match="x and w may be bfloat16"):
    onednn.conv(jnp.ones((1, 4, 4, 2), jnp.bfloat16), jnp.ones((3, 3, 2, 2)))
  with pytest.raises(ValueError, match="out_dtype"):
    onednn.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), out_dtype=jnp.float16)


@pytest.fixture
def cpu_without_bf16(monkeypatch):
  """This CPU as one without avx512_bf16 / amx_bf16 (the one-time warning reset)."""
  monkeypatch.setattr(onednn_build, "cpu_bf16_flags", lambda: ())
  onednn_build._warn_bf16_once.cache_clear()
  yield
  onednn_build._warn_bf16_once.cache_clear()


def test_cpu_without_bf16_explicit_onednn_is_an_error(resnet8_digits, cpu_without_bf16):
  message = r"no bfloat16 instructions \(avx512_bf16 / amx_bf16.*compute_dtype=None"
  with pytest.raises(onednn_build.OnednnUnavailable, match=message):
    _metric(resnet8_digits, cpu_convolutions="onednn", compute_dtype="bfloat16")
  with pytest.raises(onednn_build.OnednnUnavailable, match="no bfloat16 instructions"):
    fusion.with_onednn_convolutions(lambda x: x, compute_dtype="bfloat16")


def test_cpu_without_bf16_auto_warns_once_and_uses_xla(resnet8_digits, cpu_without_bf16):
  params = resnet8_digits[1]
  with pytest.warns(UserWarning, match=r"no bfloat16 instructions.*slower on this CPU"):
    fn = _metric(resnet8_digits, compute_dtype="bfloat16")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    again = _metric(resnet8_digits, cpu_convolutions="xla", compute_dtype="bfloat16")  # once
    _metric(resnet8_digits)  # float32: nothing to say
  hlo = hlo_text(fn, params)
  assert _TARGET not in hlo and "bf16" in hlo  # XLA, in bfloat16
  np.testing.assert_array_equal(jax.jit(fn)(params)["loss"], jax.jit(again)(params)["loss"])


@pytest.mark.slow
def test_bench_bf16_tiny():
  """The benchmark runs end to end and measures what it says: a speed ratio and deviations of the
  order of bfloat16's rounding (not zero: the two surfaces were computed differently)."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                      "bench_bf16.py")
  spec = importlib.util.spec_from_file_location("bench_bf16", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  res = bench.main(["--tiny", "--no-record"])
  assert res["speed"]["speedup"] > 0
  for r in (res["speed"], res["trained"]):
    assert 1e-7 < r["max rel dev"] < 5e-2, r


# ------------------------------------------------------------------ compute_dtype="auto" and flags
_AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})  # e.g. an AMD EPYC (Zen 2/3)
_AVX512_NO_BF16 = _AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl"}  # e.g. a Skylake Xeon


@pytest.fixture
def cpu_flags(monkeypatch):
  """Sets this CPU's /proc/cpuinfo flags (oneDNN taken as buildable; the warning reset)."""
  monkeypatch.setattr(onednn_build, "unavailable_reason", lambda: None)
  onednn_build._warn_bf16_once.cache_clear()
  yield lambda flags: monkeypatch.setattr(onednn_build, "cpu_flags", lambda: frozenset(flags))
  onednn_build._warn_bf16_once.cache_clear()


@pytest.mark.parametrize("flags,onednn,backend,want", [
  (_AVX2_ONLY, True, "cpu", None),
  (_AVX2_ONLY, False, "cpu", None),
  (_AVX512_NO_BF16, True, "cpu", None),
  (_AVX512_NO_BF16 | {"avx512_bf16"}, True, "cpu", "bfloat16"),
  (_AVX512_NO_BF16 | {"amx_tile", "amx_bf16"}, True, "cpu", "bfloat16"),
  (_AVX512_NO_BF16 | {"avx512_bf16"}, False, "cpu", None),  # XLA's CPU convolutions: float32
  (_AVX2_ONLY, False, "gpu", "bfloat16"),
  (_AVX2_ONLY, False, "tpu", "bfloat16"),
])
def test_auto_compute_dtype_is_bf16_only_where_native(cpu_flags, monkeypatch, flags, onednn,
                                                      backend, want):
  cpu_flags(flags)
  monkeypatch.setattr(onednn_build.jax, "default_backend", lambda: backend)
  assert onednn_build.auto_compute_dtype(onednn=onednn) == want
  assert onednn_build.is_auto("auto") and not onednn_build.is_auto(None)
  assert not onednn_build.is_auto(jnp.bfloat16)


@pytest.mark.parametrize("flags,widest", [(_AVX2_ONLY, "avx2"), (_AVX512_NO_BF16, "avx512f"),
                                          ((), None)])
def test_warning_and_error_name_the_missing_instructions(cpu_flags, flags, widest):
  cpu_flags(flags)
  reason = onednn_build.bf16_unsupported_reason()
  assert "avx512_bf16 / amx_bf16 are not in /proc/cpuinfo" in reason, reason
  assert (f"widest vector instructions are {widest}" in reason if widest
          else "lists no flags" in reason), reason
  with pytest.raises(onednn_build.OnednnUnavailable, match=re.escape(reason)):
    onednn_build.resolve("onednn", compute_dtype="bfloat16")
  with pytest.warns(UserWarning, match=re.escape(reason) + r".*slower on this CPU.*'auto'"):
    onednn_build.resolve("auto", compute_dtype="bfloat16")
  with warnings.catch_warnings():  # "auto": float32 there, and nothing to warn about
    warnings.simplefilter("error")
    assert onednn_build.resolve_compute_dtype("auto") is None
  assert onednn_build.resolve_compute_dtype("bfloat16") == "bfloat16"
  assert onednn_build.resolve_compute_dtype(jnp.float32) is None


def test_auto_on_an_avx2_only_cpu_is_the_float32_default(resnet8_digits, cpu_flags):
  cpu_flags(_AVX2_ONLY)
  params = resnet8_digits[1]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    auto = _metric(resnet8_digits, compute_dtype="auto")
  assert "bf16" not in hlo_text(auto, params)
  default = jax.jit(_metric(resnet8_digits))(params)
  got = jax.jit(auto)(params)
  for k in default:
    np.testing.assert_array_equal(got[k], default[k])


@needs_bf16_cpu
def test_auto_on_a_bf16_cpu_is_the_bf16_path(resnet8_digits):
  params = resnet8_digits[1]
  auto = _metric(resnet8_digits, compute_dtype="auto")
  hlo = hlo_text(auto, params)
  assert _TARGET in hlo and "bf16" in hlo
  want = jax.jit(_metric(resnet8_digits, compute_dtype="bfloat16"))(params)
  np.testing.assert_array_equal(jax.jit(auto)(params)["loss"], want["loss"])
  xla = _metric(resnet8_digits, cpu_convolutions="xla", compute_dtype="auto")
  assert "bf16" not in hlo_text(xla, params)  # XLA's CPU convolutions: float32


# --------------------------------------------- the residual as oneDNN's sum post-op (bf16 only)
_ZOO = [("resnet8", {"width": 0.25}), ("preresnet110", {"depth": 8, "width": 0.25}),
        ("wrn16_4", {"depth": 10, "widen_factor": 1}), ("vgg9_bn", {"width": 0.125}),
        ("densenet_bc_100_12", {"depth": 10, "growth_rate": 4}), ("convfc", {"width": 0.125})]


@needs_bf16_cpu
@pytest.mark.parametrize("name,overrides", [
  pytest.param(*z, marks=() if z[0] == "resnet8" else pytest.mark.slow) for z in _ZOO],
  ids=[z[0] for z in _ZOO])
def test_zoo_bf16_sum_post_op_is_the_binary_add_and_float32_is_untouched(monkeypatch, name,
                                                                          overrides):
  """A float32 residual added by a bf16 convolution is passed as the output buffer (aliased) and
  added by oneDNN's sum post-op instead of a binary add (faster there): on every zoo family
  (tiny widths, BatchNorm statistics of the batch) the bf16 metrics equal the binary-add path's
  to 1e-6 relative (they were bit-identical when written: the same float32 additions), stay
  within 1e-2 of float32, and float32 programs carry no aliasing (the default is unchanged)."""
  k1, k2 = jax.random.split(jax.random.key(9))
  images = jax.random.normal(k1, (10, 8, 8, 3))
  labels = jax.random.randint(k2, (10,), 0, 10)
  model = lj.get_model(name, num_classes=10, **overrides)
  variables = model.init(jax.random.key(0), images[:1])
  if "batch_stats" in variables:  # live units: the statistics of this batch
    _, upd = model.apply(variables, images, train=True, mutable=["batch_stats"])
    variables = {**variables, **upd}

  def metric(dtype, variables=variables, model=model):
    return lj.make_metric_fn(model, (images, labels), batch_stats=variables.get("batch_stats"),
                             batch_size=5, compute_dtype=dtype)

  params = variables["params"]
  out = {}
  for label, dtype, sum_op in (("f32", None, True), ("sum", "bfloat16", True),
                               ("binary", "bfloat16", False)):
    monkeypatch.setattr(onednn, "_SUM_RESIDUAL", sum_op)
    onednn._conv_fn.cache_clear()
    fn = metric(dtype)
    text = hlo_text(fn, params)
    aliased = "output_operand_aliases" in text or "tf.aliasing_output" in text
    assert aliased == (label == "sum" and name in ("resnet8", "preresnet110", "wrn16_4")), (
      name, label)
    out[label] = {k: float(v) for k, v in jax.jit(fn)(params).items()}
  onednn._conv_fn.cache_clear()
  for k in out["f32"]:
    np.testing.assert_allclose(out["sum"][k], out["binary"][k], rtol=1e-6, err_msg=name)
    assert abs(out["sum"][k] - out["f32"][k]) <= 1e-2 * max(abs(out["f32"][k]), 1), (name, k)


@needs_bf16_cpu
def test_bf16_aliased_residual_that_is_also_the_input_and_used_later():
  """The residual buffer becomes the output (aliased): XLA must copy it where the same array is
  also the convolution's input and is read again afterwards; the results say it does."""
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 16))
  w = jax.random.normal(jax.random.key(1), (3, 3, 16, 16)) / 12
  ours = jax.jit(lambda x: onednn.conv(x, w, padding=1, residual=x, relu=True,
                                       compute_dtype="bfloat16") + x)
  ref = np.maximum(numpy_conv(_bf16(x), _bf16(w), (1, 1), (1, 1, 1, 1), (1, 1))
                   + np.asarray(x), 0) + np.asarray(x)
  assert "output_operand_aliases" in hlo_text(ours, x)
  np.testing.assert_allclose(np.asarray(ours(x)), ref, rtol=1e-5, atol=1e-5)
