"""Matmul precision: curvature compiles at HIGHEST by default, surfaces and curves at the option
given; the precision is read off the StableHLO that JAX hands to the compiler (jax_dump_ir_to),
so every compiled function of a call is inspected, the model's dots and convolutions included.
On the CPU every precision gives the same numbers."""

import contextlib
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import landscape_jax as lj
from landscape_jax.core import precision as precision_lib

_DOT = re.compile(r"stablehlo\.dot_general .*?precision = \[(\w+), (\w+)\]")
_CONV = re.compile(r"stablehlo\.convolution.*?precision_config = \[#stablehlo<precision (\w+)>, "
                   r"#stablehlo<precision (\w+)>\]")


def _model(params, x):
  y = jax.lax.conv_general_dilated(x, params["conv"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.tanh(y).reshape(x.shape[0], -1) @ params["dense"]


def _loss(params, batch):
  x, y = batch
  return jnp.mean((_model(params, x) - y) ** 2)


def _metrics(batch, params):
  return {"loss": _loss(params, batch)}


@pytest.fixture(scope="module")
def problem():
  k = jax.random.split(jax.random.key(0), 4)
  params = {"conv": 0.3 * jax.random.normal(k[0], (3, 3, 2, 3)),
            "dense": 0.2 * jax.random.normal(k[1], (75, 2))}
  batch = (jax.random.normal(k[2], (6, 5, 5, 2)), jax.random.normal(k[3], (6, 2)))
  return params, batch


@contextlib.contextmanager
def _compiled_ops(tmp_path: pathlib.Path):
  """Yields a list filled, on exit, with the (kind, precision) of every dot_general and
  convolution that JAX compiled inside the block (jit caches are cleared first)."""
  ops: list[tuple[str, str]] = []
  old = jax.config.values["jax_dump_ir_to"]
  jax.clear_caches()
  jax.config.update("jax_dump_ir_to", str(tmp_path))
  try:
    yield ops
  finally:
    jax.config.update("jax_dump_ir_to", old)
  for path in sorted(tmp_path.glob("*.mlir")):
    for line in path.read_text().splitlines():
      for kind, regex in (("dot", _DOT), ("conv", _CONV)):
        if f"stablehlo.{'dot_general' if kind == 'dot' else 'convolution'}" in line:
          m = regex.search(line)
          assert m is not None, f"no precision found in {path.name}: {line[:200]}"
          assert m.group(1) == m.group(2), line[:200]
          ops.append((kind, m.group(1)))


def _precisions(ops, kind):
  return {p for k, p in ops if k == kind}


def test_check_precision_names_and_bad_values():
  assert precision_lib.check_precision(None) is None
  assert precision_lib.check_precision("HIGHEST") == "highest"
  assert precision_lib.check_precision(jax.lax.Precision.HIGH) == "high"
  assert precision_lib.check_precision("tensorfloat32") == "tensorfloat32"
  with pytest.raises(ValueError, match=r"precision must be None, one of"):
    precision_lib.check_precision("fp64")
  with pytest.raises(ValueError, match=r"precision must be None"):
    lj.surface_grid(lambda p: jnp.sum(p["x"]), {"x": jnp.ones(2)}, {"x": jnp.ones(2)}, [0.0],
                    engine=lj.EngineOptions(precision="full", progress=False))
  with pytest.raises(ValueError, match=r"precision must be None"):
    lj.make_curvature_metric_fn(_loss, None, precision=3)


def _curvature_call(name, params, batch, **kw):
  v = jax.tree.map(jnp.ones_like, params)
  key = jax.random.key(1)
  if name == "hvp":
    return lj.hvp(_loss, params, batch, v, **kw)
  if name == "hessian_eigenvalues":
    return lj.hessian_eigenvalues(_loss, params, batch, num_steps=6, **kw).ritz_values
  if name == "hessian_trace":
    return lj.hessian_trace(key, _loss, params, batch, num_probes=2, **kw).samples
  if name == "spectral_density":
    return lj.spectral_density(key, _loss, params, batch, num_steps=5,
                               smoothing=lj.DensitySmoothing(num_bins=50), **kw).nodes
  # the curvature metric keeps its precision inside a surface evaluated at the default one
  assert name == "make_curvature_metric_fn"
  return lj.surface_grid(lj.make_curvature_metric_fn(_loss, batch, num_steps=4, **kw), params, v,
                         [0.0, 0.1], engine=lj.EngineOptions(chunk_size=2, progress=False))


CURVATURE = ["hvp", "hessian_eigenvalues", "hessian_trace", "spectral_density",
             "make_curvature_metric_fn"]


@pytest.mark.parametrize("name", CURVATURE)
def test_curvature_compiles_every_dot_and_convolution_at_highest(problem, tmp_path, name):
  params, batch = problem
  with _compiled_ops(tmp_path) as ops:
    jax.block_until_ready(_curvature_call(name, params, batch))
  assert _precisions(ops, "dot") == {"HIGHEST"}, ops
  assert _precisions(ops, "conv") == {"HIGHEST"}, ops


def test_curvature_precision_option_and_lanczos(problem, tmp_path):
  params, batch = problem
  # precision=None leaves JAX's default: the check above can fail
  with _compiled_ops(tmp_path / "none") as ops:
    _curvature_call("hessian_eigenvalues", params, batch, precision=None)
  assert _precisions(ops, "dot") == {"DEFAULT"} and _precisions(ops, "conv") == {"DEFAULT"}
  with _compiled_ops(tmp_path / "high") as ops:
    _curvature_call("hvp", params, batch, precision=jax.lax.Precision.HIGH)
  assert _precisions(ops, "dot") == {"HIGH"} and _precisions(ops, "conv") == {"HIGH"}
  # lanczos on any matvec: its products and its reorthogonalisation
  a = jnp.arange(16.0).reshape(4, 4)
  with _compiled_ops(tmp_path / "lanczos") as ops:
    jax.block_until_ready(lj.lanczos(lambda x: (a + a.T) @ x, jnp.ones(4).at[0].set(2.0),
                                     num_steps=3))
  assert _precisions(ops, "dot") == {"HIGHEST"}, ops


SURFACES = ["surface_grid", "surface_points", "evaluate_curve", "evaluate_plane"]


@pytest.mark.parametrize("name", SURFACES)
@pytest.mark.parametrize("precision,want", [(None, "DEFAULT"), ("highest", "HIGHEST")])
def test_surfaces_and_curves_compile_at_the_given_precision(problem, tmp_path, name, precision,
                                                            want):
  params, batch = problem
  metric_fn = Partial(_metrics, batch)
  d1, d2 = lj.random_directions(jax.random.key(2), params, num=2)
  other = jax.tree.map(lambda a, b: a + b, params, d1)
  kw = dict(engine=lj.EngineOptions(precision=precision, progress=False))
  if name == "evaluate_plane":
    plane = lj.plane_basis(params, jax.tree.map(lambda a, b: a + b, params, d2), other)
  elif name == "evaluate_curve":
    curve = lj.init_curve(params, other, 3)
  with _compiled_ops(tmp_path) as ops:
    if name == "surface_grid":
      lj.surface_grid(metric_fn, params, (d1, d2), [0.0, 0.5], [0.0, 1.0], **kw)
    elif name == "surface_points":
      lj.surface_points(metric_fn, params, d1, [[0.2]], **kw)
    elif name == "evaluate_curve":
      lj.evaluate_curve(metric_fn, curve, num_points=3, **kw)
    else:
      lj.evaluate_plane(metric_fn, plane, alphas=[0.0, 1.0], betas=[0.0, 1.0], **kw)
  assert _precisions(ops, "dot") == {want}, ops
  assert _precisions(ops, "conv") == {want}, ops


def test_cpu_surface_numbers_do_not_depend_on_the_precision(problem):
  assert jax.default_backend() == "cpu"
  params, batch = problem
  metric_fn = Partial(_metrics, batch)
  d1, d2 = lj.random_directions(jax.random.key(3), params, num=2)
  xs = np.linspace(-1, 1, 3)
  grids = [lj.surface_grid(metric_fn, params, (d1, d2), xs, xs,
                           engine=lj.EngineOptions(precision=p, progress=False))
           for p in (None, "highest")]
  np.testing.assert_array_equal(grids[1]["loss"], grids[0]["loss"])


@pytest.mark.parametrize("name", ["hvp", "hessian_eigenvalues"])
def test_cpu_curvature_numbers_do_not_depend_on_the_precision(problem, name):
  assert jax.default_backend() == "cpu"
  params, batch = problem
  out = [_curvature_call(name, params, batch, precision=p) for p in (None, "highest")]
  jax.tree.map(np.testing.assert_array_equal, out[0], out[1])


def test_store_records_an_explicit_precision(problem, tmp_path):
  params, batch = problem
  metric_fn = Partial(_metrics, batch)
  (d,) = lj.random_directions(jax.random.key(4), params, num=1)
  kw = dict(store=str(tmp_path / "s"))
  first = lj.surface_grid(metric_fn, params, d, [0.0, 1.0],
                          engine=lj.EngineOptions(precision="highest", progress=False), **kw)
  assert lj.store.read(tmp_path / "s").config["precision"] == "highest"
  with pytest.raises(lj.store.StoreMismatchError, match="precision"):
    lj.surface_grid(metric_fn, params, d, [0.0, 1.0],
                    engine=lj.EngineOptions(precision="default", progress=False), **kw)
  again = lj.surface_grid(metric_fn, params, d, [0.0, 1.0],
                          engine=lj.EngineOptions(precision=jax.lax.Precision.HIGHEST,
                                                  progress=False), **kw)
  np.testing.assert_array_equal(again["loss"], first["loss"])
  # no precision: nothing recorded, as before the option existed
  lj.surface_grid(metric_fn, params, d, [0.0, 1.0], engine=lj.EngineOptions(progress=False),
                  store=str(tmp_path / "t"))
  assert "precision" not in lj.store.read(tmp_path / "t").config
