"""oneDNN convolutions (landscape_jax.backends.cpu.onednn): against a direct NumPy convolution,
against XLA's
for every supported configuration, under grad / vmap / jit, inside make_metric_fn and on a mesh."""

import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.backends.cpu import fusion, onednn, onednn_build
from tests.conv_reference import hlo_text, numpy_conv

# Where the wheels exist (Linux x86-64) the kernel must build: a failure to build fails the tests.
pytestmark = pytest.mark.skipif(
  platform.system() != "Linux" or platform.machine() != "x86_64",
  reason="oneDNN wheels exist for Linux x86-64 only")

_TARGET = "landscape_jax_onednn_conv"


def test_available():
  assert onednn_build.available(), onednn_build.unavailable_reason()
  assert onednn.implementation((8, 16, 16, 16), (3, 3, 16, 16), padding=1)  # e.g. brgconv:avx2


@pytest.mark.parametrize("strides,padding,dilation,kernel", [
  ((1, 1), (1, 1, 1, 1), (1, 1), (3, 3)),
  ((2, 2), (1, 1, 1, 1), (1, 1), (3, 3)),
  ((2, 1), (0, 2, 1, 0), (2, 1), (3, 2)),
  ((1, 2), (0, 0, 0, 0), (1, 1), (1, 1)),
  ((3, 3), (2, 2, 2, 2), (1, 2), (5, 3)),
])
def test_conv_matches_direct_numpy(strides, padding, dilation, kernel):
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (3, 11, 10, 5))
  w = jax.random.normal(kw, (*kernel, 5, 7))
  y = jax.jit(lambda x, w: onednn.conv(x, w, strides=strides, padding=padding,
                                       dilation=dilation))(x, w)
  ref = numpy_conv(x, w, strides, padding, dilation)
  assert y.shape == ref.shape
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-4)
  assert _TARGET in hlo_text(lambda x, w: onednn.conv(x, w, strides=strides, padding=padding,
                                                  dilation=dilation), x, w)


@pytest.mark.parametrize("bias,residual,relu", [(True, False, False), (False, True, False),
                                                 (False, False, True), (True, True, True)])
def test_conv_epilogue_matches_direct_numpy(bias, residual, relu):
  k = jax.random.split(jax.random.key(4), 4)
  x, w = jax.random.normal(k[0], (2, 7, 6, 4)), jax.random.normal(k[1], (3, 3, 4, 5))
  b = jax.random.normal(k[2], (5,)) if bias else None
  r = jax.random.normal(k[3], (2, 4, 3, 5)) if residual else None
  kw = dict(strides=2, padding=1, bias=b, residual=r, relu=relu)
  y = jax.jit(lambda x, w: onednn.conv(x, w, **kw))(x, w)
  ref = numpy_conv(x, w, (2, 2), (1, 1, 1, 1), (1, 1))
  ref = ref + (np.asarray(b) if bias else 0) + (np.asarray(r) if residual else 0)
  ref = np.maximum(ref, 0) if relu else ref
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-4)
  if relu:
    assert (np.asarray(y) == 0).mean() > 0.2  # the ReLU did cut
  # derivatives and vmap are XLA's: they agree with the unfused composition
  loss = lambda x, w: jnp.sum(jnp.sin(onednn.conv(x, w, **kw)))

  def unfused(x, w):
    z = jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    z = z + (b if bias else 0) + (r if residual else 0)
    return jnp.sum(jnp.sin(jax.nn.relu(z) if relu else z))

  for a, c in zip(jax.grad(loss, (0, 1))(x, w), jax.grad(unfused, (0, 1))(x, w), strict=True):
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(jax.vmap(lambda w: onednn.conv(x, w, **kw))(jnp.stack([w, -w])),
                             np.stack([y, onednn.conv(x, -w, **kw)]), rtol=1e-5, atol=1e-4)


def test_rewrite_fuses_bias_residual_relu_of_a_resnet_block():
  k = jax.random.split(jax.random.key(5), 4)
  x = jax.random.normal(k[0], (2, 8, 8, 6))
  w1, w2 = jax.random.normal(k[1], (3, 3, 6, 6)), jax.random.normal(k[2], (3, 3, 6, 6))
  b = jax.random.normal(k[3], (6,))

  def block(x):
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(conv(x, w1) + b)
    h = conv(h, w2) + b.reshape(1, 1, 1, 6)
    z = jnp.maximum(h + x, 0.0)
    return z, conv(z, w1) * 2  # the last convolution is used twice: not fused

  wrapped = fusion.with_onednn_convolutions(block)
  plans, absorbed = fusion.plan_fusions(jax.make_jaxpr(block)(x).jaxpr)
  got = sorted((f.bias is not None, f.residual is not None, f.relu) for f in plans.values())
  assert got == [(True, False, True), (True, True, True)]
  assert hlo_text(wrapped, x).count(_TARGET) == 3
  unfused = fusion.with_onednn_convolutions(block, fuse_epilogues=False)
  assert hlo_text(unfused, x).count(_TARGET) == 3
  assert hlo_text(wrapped, x).count("relu = true") == 2
  assert "relu = true" not in hlo_text(unfused, x) and "residual = true" not in hlo_text(unfused, x)
  for a, c, d in zip(jax.jit(wrapped)(x), block(x), jax.jit(unfused)(x), strict=True):
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(d, c, rtol=1e-5, atol=1e-3)


def test_conv_grad_and_vmap_match_xla():
  kx, kw = jax.random.split(jax.random.key(1))
  x, w = jax.random.normal(kx, (2, 6, 6, 3)), jax.random.normal(kw, (3, 3, 3, 4))
  ours = lambda x, w: onednn.conv(x, w, strides=2, padding=(1, 0, 1, 0))
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 0), (1, 0)),
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  ws = jnp.stack([w, -2 * w])
  np.testing.assert_allclose(jax.jit(jax.vmap(ours, (None, 0)))(x, ws),
                             jax.vmap(ref, (None, 0))(x, ws), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [1, 3])
@pytest.mark.parametrize("batched", ["x", "w", "x w", "x w bias residual", "residual", "bias"])
def test_vmap_stays_on_onednn_and_matches_xla(size, batched):
  k = jax.random.split(jax.random.key(size), 4)
  args = {"x": jax.random.normal(k[0], (2, 6, 6, 3)), "w": jax.random.normal(k[1], (3, 3, 3, 4)),
          "bias": jax.random.normal(k[2], (4,)), "residual": jax.random.normal(k[3], (2, 3, 3, 4))}
  axes = {n: 0 if n in batched.split() else None for n in args}
  args = {n: jnp.stack([a * (1 + i) for i in range(size)]) if axes[n] == 0 else a
          for n, a in args.items()}
  kw = dict(strides=2, padding=(1, 0, 1, 0))
  ours = jax.vmap(lambda a: onednn.conv(a["x"], a["w"], bias=a["bias"], residual=a["residual"],
                                        relu=True, **kw), (axes,))
  ref = jax.vmap(lambda a: jax.nn.relu(jax.lax.conv_general_dilated(
    a["x"], a["w"], (2, 2), ((1, 0), (1, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    + a["bias"] + a["residual"]), (axes,))
  hlo = hlo_text(ours, args)
  assert _TARGET in hlo and "convolution" not in hlo  # no XLA (grouped) convolution
  np.testing.assert_allclose(jax.jit(ours)(args), ref(args), rtol=1e-5, atol=1e-4)


def test_nested_vmap_of_conv():
  kx, kw = jax.random.split(jax.random.key(3))
  xs, ws = jax.random.normal(kx, (2, 3, 2, 5, 5, 3)), jax.random.normal(kw, (3, 3, 3, 3, 4))
  conv = lambda x, w: onednn.conv(x, w, padding=1)
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  nest = lambda f: jax.vmap(jax.vmap(f, (0, 0)), (0, None))  # (2, 3) images x 3 kernels
  np.testing.assert_allclose(jax.jit(nest(conv))(xs, ws), nest(ref)(xs, ws), rtol=1e-5, atol=1e-4)


def test_with_onednn_convolutions_any_dimension_numbers_and_nested_jit():
  kx, kw = jax.random.split(jax.random.key(2))
  x = jax.random.normal(kx, (2, 3, 9, 8))  # NCHW
  w = jax.random.normal(kw, (4, 3, 3, 3))  # OIHW

  def net(x, w):
    y = jax.nn.relu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NCHW", "OIHW", "NCHW")))
    inner = jax.jit(lambda y: jax.lax.conv_general_dilated(
      y, jnp.ones((2, 2, 4, 5)), (2, 1), "VALID", dimension_numbers=("NCHW", "HWIO", "NHWC")))
    return {"out": inner(y), "sum": jnp.sum(y)}

  wrapped = fusion.with_onednn_convolutions(net)
  got, want = jax.jit(wrapped)(x, w), net(x, w)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-4)
  assert hlo_text(wrapped, x, w).count(_TARGET) == 2


def test_unsupported_convolutions_stay_with_xla():
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 4))

  def net(x):
    grouped = jax.lax.conv_general_dilated(x, jnp.ones((3, 3, 2, 4)), (1, 1), "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                           feature_group_count=2)
    bf16 = jnp.bfloat16
    half = jax.lax.conv_general_dilated(x.astype(bf16), jnp.ones((1, 1, 4, 2), bf16), (1, 1),
                                        "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    one_d = jax.lax.conv_general_dilated(x[:, 0], jnp.ones((3, 4, 2)), (1,), "SAME",
                                         dimension_numbers=("NWC", "WIO", "NWC"))
    return grouped, half, one_d

  wrapped = fusion.with_onednn_convolutions(net)
  assert _TARGET not in hlo_text(wrapped, x)
  for a, b in zip(jax.jit(wrapped)(x), net(x), strict=True):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_bad_input_and_options():
  with pytest.raises(ValueError, match="float32"):
    onednn.conv(jnp.ones((1, 4, 4, 2), jnp.bfloat16), jnp.ones((3, 3, 2, 2), jnp.bfloat16))
  with pytest.raises(ValueError, match="matching channels"):
    onednn.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 3, 2)))
  with pytest.raises(ValueError, match="paddings >= 0"):
    onednn.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), padding=-1)
  with pytest.raises(ValueError, match="cpu_convolutions must be one of"):
    onednn_build.resolve("mkl")
  assert onednn_build.resolve("xla") is False
  assert onednn_build.resolve("onednn") is True


def test_turned_off_by_environment(monkeypatch):
  monkeypatch.setenv("LANDSCAPE_JAX_ONEDNN", "0")
  onednn_build.library.cache_clear()
  try:
    assert "LANDSCAPE_JAX_ONEDNN=0" in onednn_build.unavailable_reason()
    assert onednn_build.resolve("auto") is False
    with pytest.raises(onednn_build.OnednnUnavailable, match="turned off"):
      onednn_build.resolve("onednn")
  finally:
    monkeypatch.delenv("LANDSCAPE_JAX_ONEDNN")
    onednn_build.library.cache_clear()
  assert onednn_build.available()


def _reason_with(monkeypatch, name: str, value: str) -> str | None:
  """`onednn_build.unavailable_reason()` with environment variable `name` set (the kernel
  rebuilt)."""
  monkeypatch.setenv(name, value)
  onednn_build.library.cache_clear()
  try:
    return onednn_build.unavailable_reason()
  finally:
    monkeypatch.delenv(name)
    onednn_build.library.cache_clear()


def test_missing_onednn_root_says_what_is_missing(monkeypatch, tmp_path):
  assert "include/oneapi/dnnl/dnnl.hpp" in _reason_with(monkeypatch, "LANDSCAPE_JAX_ONEDNN_ROOT",
                                                         str(tmp_path))


@pytest.fixture(scope="module")
def resnet8_digits(digits_train):
  model = lj.get_model("resnet8", num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  stats = jax.tree.map(lambda s: s + 0.1, variables["batch_stats"])
  data = lj.data.Dataset(digits_train.images[:300], digits_train.labels[:300], 10,
                         digits_train.mean, digits_train.std)
  return model, variables["params"], stats, data


def test_metric_fn_onednn_equals_xla(resnet8_digits):
  model, params, stats, data = resnet8_digits
  fns = {mode: lj.make_metric_fn(model, data, batch_stats=stats, batch_size=64,
                                 cpu_convolutions=mode) for mode in ("onednn", "xla")}
  assert _TARGET in hlo_text(fns["onednn"], params)
  assert _TARGET not in hlo_text(fns["xla"], params)
  got, want = jax.jit(fns["onednn"])(params), jax.jit(fns["xla"])(params)
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], want["accuracy"])


@pytest.mark.multidevice
def test_surface_on_a_mesh_onednn_equals_xla(resnet8_digits):
  model, params, stats, data = resnet8_digits
  d1, d2 = lj.random_directions(jax.random.key(1), params, num=2)
  xs, ys = np.linspace(-1, 1, 4), np.linspace(-1, 1, 2)
  out = {}
  for mode in ("onednn", "xla"):
    fn = lj.make_metric_fn(model, data, batch_stats=stats, batch_size=100, cpu_convolutions=mode)
    out[mode] = lj.surface_grid(fn, params, (d1, d2), xs, ys,
                                engine=lj.EngineOptions(mesh=lj.make_mesh(4), progress=False))
  np.testing.assert_allclose(out["onednn"]["loss"], out["xla"]["loss"], rtol=1e-5)
  vm = lj.surface_grid(lj.make_metric_fn(model, data, batch_stats=stats, batch_size=100,
                                         cpu_convolutions="onednn"),
                       params, (d1, d2), xs, ys,
                       engine=lj.EngineOptions(map_mode="vmap", progress=False))
  np.testing.assert_allclose(vm["loss"], out["xla"]["loss"], rtol=1e-5)


def test_unwritable_cache_dir_says_what_to_do(monkeypatch, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  assert "LANDSCAPE_JAX_CACHE_DIR" in _reason_with(monkeypatch, "LANDSCAPE_JAX_CACHE_DIR",
                                                    str(blocker / "cache"))
  assert onednn_build.available()


def test_vmapped_metric_and_curve_on_a_mesh_use_onednn(resnet8_digits):
  model, params, stats, data = resnet8_digits
  d1, _ = lj.random_directions(jax.random.key(2), params, num=2)
  end = jax.tree.map(lambda p, e: p + 0.5 * e, params, d1)
  fns = {mode: lj.make_metric_fn(model, data, batch_stats=stats, batch_size=100,
                                 cpu_convolutions=mode) for mode in ("onednn", "xla")}
  two = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, end)
  hlo = jax.jit(jax.vmap(fns["onednn"])).lower(two).as_text()
  assert _TARGET in hlo and "convolution" not in hlo  # per-point weights: no grouped XLA conv
  c = lj.curves.init_curve(params, end, 3)
  out = {mode: lj.curves.evaluate_curve(fn, c, num_points=5,
                                        engine=lj.EngineOptions(chunk_size=4, mesh=lj.make_mesh(2),
                                                                progress=False),
                                        line=False)["curve"]
         for mode, fn in fns.items()}
  for k in out["xla"]:
    np.testing.assert_allclose(out["onednn"][k], out["xla"][k], rtol=1e-5, atol=1e-6)
  direct = jax.vmap(fns["xla"])(two)
  np.testing.assert_allclose(out["onednn"]["loss"][[0, -1]], direct["loss"], rtol=1e-5)


def test_ensemble_onednn_equals_xla_and_per_member_metrics(resnet8_digits):
  model, params, stats, data = resnet8_digits
  d1, _ = lj.random_directions(jax.random.key(3), params, num=2)
  end = jax.tree.map(lambda p, e: p + 0.3 * e, params, d1)
  members = lj.ensembles.stack_members([params, end])
  bstats = lj.ensembles.stack_members([stats, jax.tree.map(lambda s: 1.5 * s, stats)])
  res = {mode: lj.ensembles.evaluate_ensemble(model, members, data, batch_stats=bstats,
                                              batch_size=128, cpu_convolutions=mode)
         for mode in ("onednn", "xla")}
  for k in res["xla"]:
    np.testing.assert_allclose(res["onednn"][k], res["xla"][k], rtol=1e-5, atol=1e-6)
  for i, (p, s) in enumerate([(params, stats), (end, jax.tree.map(lambda s: 1.5 * s, stats))]):
    one = lj.make_metric_fn(model, data, batch_stats=s, cpu_convolutions="xla",
                            fold_batchnorm=False)(p)
    np.testing.assert_allclose(res["onednn"]["member_loss"][i], one["loss"], rtol=1e-5)


def test_recomputed_batchnorm_onednn_equals_xla(resnet8_digits):
  model, params, stats, data = resnet8_digits
  got = {mode: lj.recompute_batch_stats(model, params, stats, data, batch_size=64,
                                        cpu_convolutions=mode) for mode in ("onednn", "xla")}
  for a, b in zip(jax.tree.leaves(got["onednn"]), jax.tree.leaves(got["xla"]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  fns = {mode: lj.make_recompute_metric_fn(model, data, train_data=data, batch_stats=stats,
                                           bn_batch_size=64, cpu_convolutions=mode)
         for mode in ("onednn", "xla")}
  hlo = hlo_text(fns["onednn"], params)
  assert _TARGET in hlo and "convolution" not in hlo  # the statistics pass too
  direct = lj.make_metric_fn(model, data, batch_stats=got["xla"], cpu_convolutions="xla",
                             fold_batchnorm=False)(params)
  for k, v in direct.items():
    np.testing.assert_allclose(jax.jit(fns["onednn"])(params)[k], v, rtol=1e-4, atol=1e-6)
