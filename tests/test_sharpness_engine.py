"""Average-case sharpness and Jiang et al.'s sigma search through the point-evaluation engine
(`average_sharpness_metric`, `sigma_search_metric`): the same samples as the direct path, on one
device and sharded over the 8 simulated devices, resumable, and keyed on exact identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import landscape_jax as lj
from landscape_jax.core import engine as engine_lib
from landscape_jax.core import sharpness as sh
from landscape_jax.core import store as store_lib
from landscape_jax.core.hessian import mean_loss

ENGINE = lj.EngineOptions(chunk_size=4, progress=False)


def _split_loss(loss_fn, data, params):
  return mean_loss(loss_fn, params, data)


@pytest.fixture(scope="module")
def mlp(tiny_mlp, digits_train):
  """The tiny MLP on 96 digits: its params, loss_fn, the split as `make_batches` holds it and
  the metric_fn of the same mean loss (a Partial over loss_fn and the split)."""
  model, variables = tiny_mlp
  train = digits_train.subset(slice(0, 96))
  loss_fn = lj.make_loss_fn(model, mean=train.mean, std=train.std)
  data = lj.make_batches((jnp.asarray(train.images), jnp.asarray(train.labels)), batch_size=32)
  return dict(model=model, params=variables["params"], loss_fn=loss_fn, data=data, train=train,
              metric_fn=Partial(_split_loss, loss_fn, data))


def test_perturbation_points_are_the_direct_paths_samples(mlp):
  """Point (sigma, s) is ``w + sigma c z_s`` with z_s drawn as `average_sharpness` draws it;
  sigma = 0 is w exactly."""
  params, key = mlp["params"], jax.random.key(3)
  c = lj.perturbation_scale(params, adaptive=True)
  point_fn = sh.perturbation_point_fn(key, params, num_samples=5, scale=c)
  assert point_fn.num_coordinates == 2
  for leaf, w in zip(jax.tree.leaves(point_fn(jnp.array([0.0, 3.0]))), jax.tree.leaves(params),
                     strict=True):
    np.testing.assert_array_equal(leaf, w)
  # by hand: sample 3's key, one normal draw per leaf from its split, in leaf order
  leaves, treedef = jax.tree.flatten(params)
  k3 = jax.random.split(jax.random.split(key, 5)[3], len(leaves))
  z = [np.asarray(jax.random.normal(k, x.shape), np.float64)
       for k, x in zip(k3, leaves, strict=True)]
  got = jax.tree.leaves(point_fn(jnp.array([0.25, 3.0])))
  for g, w, cc, zz in zip(got, leaves, jax.tree.leaves(c), z, strict=True):
    np.testing.assert_allclose(g, np.asarray(w) + 0.25 * np.asarray(cc) * zz, rtol=1e-6,
                               atol=1e-7)


def test_engine_path_equals_the_direct_path(mlp):
  """Same key, same samples: the engine's per-sample increases are the direct path's, bit for
  bit, for average-case sharpness and for every sigma of the bisection."""
  key, params = jax.random.key(7), mlp["params"]
  c = lj.perturbation_scale(params, adaptive=True)
  ref = lj.average_sharpness(key, mlp["loss_fn"], params, mlp["data"], rho=0.05, adaptive=True,
                             num_samples=6)
  res = lj.average_sharpness_metric(key, mlp["metric_fn"], params, rho=0.05, scale=c,
                                    num_samples=6, engine=ENGINE)
  np.testing.assert_array_equal(res.samples, ref.samples)
  assert (res.value, res.stderr) == (ref.value, ref.stderr)
  assert res.settings["scale"] == "given" and res.settings["num_samples"] == 6
  bracket = lj.Bracket(lower=1e-3, upper=1.0, num_iters=4)
  ref = lj.sigma_search(key, mlp["loss_fn"], params, mlp["data"], target=0.02, num_samples=4,
                        bracket=bracket)
  res = lj.sigma_search_metric(key, mlp["metric_fn"], params, target=0.02, num_samples=4,
                               bracket=bracket, engine=ENGINE)
  assert res.value == ref.value and res.settings["bracketed"]
  np.testing.assert_array_equal(res.samples, ref.samples)
  assert res.settings["increase"] == ref.settings["increase"] <= 0.02


@pytest.mark.multidevice
def test_sharded_and_streamed_equal_the_direct_path(mlp):
  """`make_metric_fn` over the same examples, points sharded over 8 devices and the split
  streamed from the host: the direct path's samples up to the float rounding of the two loss
  implementations."""
  key, params = jax.random.key(7), mlp["params"]
  ref = lj.average_sharpness(key, mlp["loss_fn"], params, mlp["data"], rho=0.05, num_samples=8)
  engine = lj.EngineOptions(mesh=lj.make_mesh(), chunk_size=8, progress=False)
  for stream in (None, 2):
    metric_fn = lj.make_metric_fn(mlp["model"], mlp["train"], batch_size=32,
                                  stream_batches=stream)
    res = lj.average_sharpness_metric(key, metric_fn, params, rho=0.05, num_samples=8,
                                      engine=engine)
    np.testing.assert_allclose(res.samples, ref.samples, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(res.value, ref.value, rtol=1e-3, atol=1e-6)


class Interrupted(Exception):
  pass


def test_interrupted_run_resumes_without_recomputing(mlp, tmp_path, monkeypatch):
  """Killed after the base and one chunk of 4 samples are on disk: the rerun computes only the
  other 8 samples, keeps the stored ones, and equals a run without a store; a finished store
  computes nothing."""
  key, params, metric_fn = jax.random.key(11), mlp["params"], mlp["metric_fn"]
  kw = dict(rho=0.05, num_samples=12, engine=ENGINE)
  fresh = lj.average_sharpness_metric(key, metric_fn, params, **kw)
  store = tmp_path / "avg"
  real_write = store_lib.write

  def dying_write(path, state):  # killed before samples 4-7 are written
    if str(path).endswith("sigma-0.05") and state.done.sum() > 4:
      raise Interrupted
    return real_write(path, state)

  monkeypatch.setattr(store_lib, "write", dying_write)
  with pytest.raises(Interrupted):
    lj.average_sharpness_metric(key, metric_fn, params, store=store, **kw)
  monkeypatch.undo()
  partial = store_lib.read(store / "sigma-0.05")
  np.testing.assert_array_equal(partial.done, np.arange(12) < 4)

  real_chunk_fn, evaluated = engine_lib.chunk_fn, []

  def counting_chunk_fn(*args):
    fn = real_chunk_fn(*args)

    def counted(metric_fn, point_fn, coords):
      evaluated.append(np.asarray(coords)[:, 1].astype(int))
      return fn(metric_fn, point_fn, coords)
    return counted

  monkeypatch.setattr(engine_lib, "chunk_fn", counting_chunk_fn)
  res = lj.average_sharpness_metric(key, metric_fn, params, store=store, **kw)
  assert sorted(np.concatenate(evaluated).tolist()) == list(range(4, 12))  # no base, no 0-3
  np.testing.assert_array_equal(res.samples, fresh.samples)
  assert res.value == fresh.value
  done = store_lib.read(store / "sigma-0.05")
  assert done.done.all()
  np.testing.assert_array_equal(done.values["loss"][:4], partial.values["loss"][:4])
  evaluated.clear()
  again = lj.average_sharpness_metric(key, metric_fn, params, store=store, **kw)
  assert not evaluated
  np.testing.assert_array_equal(again.samples, fresh.samples)
  # sigma search into a store: a rerun computes nothing, another target reuses every sigma
  # both visit (the bracket ends at least)
  bracket = lj.Bracket(lower=1e-3, upper=1.0, num_iters=3)
  first = lj.sigma_search_metric(key, metric_fn, params, target=0.02, num_samples=4,
                                 bracket=bracket, store=tmp_path / "sigma", engine=ENGINE)
  evaluated.clear()
  rerun = lj.sigma_search_metric(key, metric_fn, params, target=0.02, num_samples=4,
                                 bracket=bracket, store=tmp_path / "sigma", engine=ENGINE)
  assert not evaluated and rerun.value == first.value
  np.testing.assert_array_equal(rerun.samples, first.samples)


def test_a_store_of_anything_else_is_refused(mlp, tmp_path):
  """Another key, other parameters, other data or another number of samples into the same store
  are refused with what differs, and the stored results are left as they were."""
  key, params, metric_fn = jax.random.key(5), mlp["params"], mlp["metric_fn"]
  kw = dict(rho=0.05, num_samples=4, engine=ENGINE)
  store = tmp_path / "avg"
  lj.average_sharpness_metric(key, metric_fn, params, store=store, **kw)
  before = store_lib.read(store / "sigma-0.05").values["loss"].copy()
  moved = jax.tree.map(lambda w: w.at[(0,) * w.ndim].add(1e-3), params)
  images = np.array(mlp["train"].images)
  images[0, 0, 0, 0] ^= 1
  data = lj.make_batches((jnp.asarray(images), jnp.asarray(mlp["train"].labels)), batch_size=32)
  other_data = Partial(_split_loss, mlp["loss_fn"], data)
  for args, extra, what in [((jax.random.key(6), metric_fn, params), {}, "point_fn"),
                            ((key, metric_fn, moved), {}, "point_fn"),
                            ((key, other_data, params), {}, "metric_fn"),
                            ((key, metric_fn, params), dict(num_samples=5), "point_fn")]:
    with pytest.raises(store_lib.StoreMismatchError, match=what):
      lj.average_sharpness_metric(*args, store=store, **{**kw, **extra})
  np.testing.assert_array_equal(store_lib.read(store / "sigma-0.05").values["loss"], before)


def test_bad_arguments_are_refused(mlp, tmp_path):
  key, params, metric_fn = jax.random.key(0), mlp["params"], mlp["metric_fn"]
  with pytest.raises(ValueError, match="not one of metric_fn's metrics"):
    lj.average_sharpness_metric(key, metric_fn, params, rho=0.1, num_samples=2,
                                metric="accuracy", store=tmp_path / "s", engine=ENGINE)
  assert not (tmp_path / "s").exists()  # refused before anything was computed or written
  with pytest.raises(ValueError, match="num_samples must be an integer >= 2"):
    lj.average_sharpness_metric(key, metric_fn, params, rho=0.1, num_samples=1)
  with pytest.raises(ValueError, match="rho must be"):
    lj.average_sharpness_metric(key, metric_fn, params, rho=0.0)
  with pytest.raises(ValueError, match="target must be"):
    lj.sigma_search_metric(key, metric_fn, params, target=-1.0)
  with pytest.raises(ValueError, match="params and scale must have the same"):
    lj.average_sharpness_metric(key, metric_fn, params, rho=0.1,
                                scale=jax.tree.map(lambda w: w[..., :1], params))
