"""Meshes with roles (points, data, model): sharded parameters, directions and splits give the
numbers of one device, keep their sharding, resume across device counts, and hold about 1/8 of
the model per device (read from XLA's compiled memory analysis)."""

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.tree_util import Partial

import landscape_jax as lj
from landscape_jax.core import engine
from landscape_jax.core import sharding as shd
from landscape_jax.core import store as store_lib
from landscape_jax.core.paths import plane_point_fn
from tests import surface_worker as w

RTOL, ATOL = 1e-5, 1e-6  # float reassociation of sums split over devices


@pytest.fixture(scope="module")
def problem():
  """The MLP surface problem of tests/surface_worker.py and its one-device surface."""
  tr = lj.load("digits", "train").subset(slice(0, 160))
  te = lj.load("digits", "test").subset(slice(0, 80))
  model = lj.get_model("mlp_small", num_classes=10)
  params = model.init(jax.random.key(0), tr.images[:2].astype(np.float32))["params"]
  data = {"train": tr, "test": te}
  metric_fn = lj.make_metric_fn(model, data, batch_size=64)
  dirs = lj.random_directions(jax.random.key(1), params)
  ref = lj.surface_grid(metric_fn, params, dirs, w.MLP_XS, w.MLP_YS,
                        engine=lj.EngineOptions(chunk_size=4, progress=False))
  return model, data, params, dirs, ref


def test_make_mesh_roles_and_fsdp_rule():
  mesh = lj.make_mesh(points=2, data=2, model=2)
  assert mesh.axis_names == ("points", "data", "model") and mesh.devices.shape == (2, 2, 2)
  assert lj.make_mesh(model=-1, points=2).shape == {"points": 2, "model": 4}
  assert lj.make_mesh(model=4).devices.size == 4
  with pytest.raises(ValueError, match="needs 16 devices"):
    lj.make_mesh(points=4, model=4)
  with pytest.raises(ValueError, match="does not divide"):
    lj.make_mesh(points=3, model=-1)
  roles = shd.mesh_roles(mesh)
  assert (roles.points, roles.data, roles.model) == ("points", "data", "model")
  assert roles.size("model") == 2 and not roles.only_points
  one_d = shd.mesh_roles(lj.make_mesh(4, axis="grid"))  # a 1-D mesh of any name splits points
  assert one_d.points == "grid" and one_d.model is None and one_d.only_points
  custom = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 4), ("x", "fsdp"))
  with pytest.raises(ValueError, match="MeshRoles"):
    shd.mesh_roles(custom)
  assert shd.mesh_roles(shd.MeshRoles(custom, points="x", model="fsdp")).size("model") == 4
  with pytest.raises(ValueError, match="plays no role"):
    shd.MeshRoles(custom, points="x")
  # FSDP: the largest axis divisible by the model size (ties: the first), else replicated
  assert shd.fsdp_spec((64, 512), "model", 8) == P(None, "model")
  assert shd.fsdp_spec((512, 512), "model", 8) == P("model")
  assert shd.fsdp_spec((3, 3, 16, 12), "model", 4) == P(None, None, "model")
  assert shd.fsdp_spec((10,), "model", 4) == P()
  assert shd.fsdp_spec((), "model", 4) == P()
  assert shd.fsdp_spec((64,), "model", 1) == P()


@pytest.mark.multidevice
def test_placed_parameters_are_kept_and_directions_follow_them(problem):
  _, _, params, dirs, _ = problem
  mesh = lj.make_mesh(points=2, model=4)
  own = NamedSharding(mesh, P("model", None))  # a user's own choice for one leaf
  kernel = params["Dense_0"]["kernel"]
  placed = {**params, "Dense_0": {**params["Dense_0"],
                                  "kernel": jax.device_put(kernel, own)}}
  sharded = shd.shard_params(placed, mesh)
  assert sharded["Dense_0"]["kernel"].sharding == own
  for x in jax.tree.leaves(sharded):
    spec = x.sharding.spec
    assert spec == shd.fsdp_spec(x.shape, "model", 4) or x.sharding == own
  sdirs = lj.random_directions(jax.random.key(1), sharded)
  for d, p, d_ref in zip(jax.tree.leaves(sdirs), jax.tree.leaves((sharded, sharded)),
                         jax.tree.leaves(dirs), strict=True):
    assert d.sharding == p.sharding  # created with the parameters' sharding
    np.testing.assert_allclose(np.asarray(d), np.asarray(d_ref), rtol=1e-6, atol=1e-7)
  one = lj.random_direction(jax.random.key(3), sharded)
  assert all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(one),
                                                      jax.tree.leaves(sharded), strict=True))
  np.testing.assert_allclose(
    np.asarray(one["Dense_1"]["kernel"]),
    np.asarray(lj.random_direction(jax.random.key(3), params)["Dense_1"]["kernel"]))


@pytest.mark.multidevice
@pytest.mark.parametrize("sizes", [dict(points=2, data=2, model=2), dict(data=4, model=2)])
def test_role_meshes_equal_one_device(problem, sizes):
  """A surface, a line and a curve on meshes with data and model roles: the one-device values."""
  model, data, params, dirs, ref = problem
  mesh = lj.make_mesh(**sizes)
  metric_fn = lj.make_metric_fn(model, data, batch_size=64, mesh=mesh)
  split = metric_fn.args[0]["train"]
  assert split.mask.sharding.spec == P(None, "data")  # every batch spread over the data axis
  center = shd.shard_params(params, mesh)
  sdirs = lj.random_directions(jax.random.key(1), center)
  chunk = 2 * sizes.get("points", 1)
  res = lj.surface_grid(metric_fn, center, sdirs, w.MLP_XS, w.MLP_YS,
                        engine=lj.EngineOptions(mesh=mesh, chunk_size=chunk, progress=False))
  for k in ref:
    np.testing.assert_allclose(res[k], ref[k], rtol=RTOL, atol=ATOL, err_msg=k)
  if "points" not in sizes:
    return  # the line and the curve once, on the mesh with every role
  alphas = [0.0, 0.5, 1.0]
  line = lj.linear_path(metric_fn, center, sdirs[0], alphas,
                        engine=lj.EngineOptions(mesh=mesh, chunk_size=chunk, progress=False))
  line_ref = lj.linear_path(metric_fn, params, dirs[0], alphas,
                            engine=lj.EngineOptions(chunk_size=4, progress=False))
  curve = lj.init_curve(center, sdirs[1], num_bends=3)
  ts = [0.0, 0.5, 1.0]
  cv = lj.evaluate_curve(metric_fn, curve, ts=ts,
                         engine=lj.EngineOptions(mesh=mesh, chunk_size=chunk, progress=False))
  cv_ref = lj.evaluate_curve(metric_fn, lj.init_curve(params, dirs[1], num_bends=3), ts=ts,
                             engine=lj.EngineOptions(chunk_size=2, progress=False))
  for k in line_ref:
    np.testing.assert_allclose(line[k], line_ref[k], rtol=RTOL, atol=ATOL, err_msg=k)
    np.testing.assert_allclose(cv["curve"][k], cv_ref["curve"][k], rtol=RTOL, atol=ATOL,
                               err_msg=k)


@pytest.mark.multidevice
def test_store_resumes_across_device_counts(problem, tmp_path):
  """Computed on 8 devices, resumed on 4 and on 1: the store holds sharding-free values and the
  result equals the one-device surface to float reassociation (rtol 1e-5, atol 1e-6)."""
  model, data, params, dirs, ref = problem
  path = tmp_path / "surface"
  n = ref["train_loss"].size
  # the store keys on exact bytes: the directions are drawn once and saved (drawn again on
  # another mesh they agree only to rounding), and every run builds its metric with the same
  # convolution backend (a mesh with data / model roles needs XLA's)
  host_dirs = jax.tree.map(np.asarray, dirs)

  def run(mesh, chunk):
    mf = lj.make_metric_fn(model, data, batch_size=64, mesh=mesh, cpu_convolutions="xla")
    c, d = params, host_dirs
    if mesh is not None:
      c, d = shd.shard_params((c, d), mesh)
      assert d[0]["Dense_1"]["kernel"].sharding.spec == P("model")
    return lj.surface_grid(mf, c, d, w.MLP_XS, w.MLP_YS,
                           engine=lj.EngineOptions(mesh=mesh, chunk_size=chunk, progress=False),
                           store=path)

  def forget(rows):
    state = store_lib.read(path)
    done = state.done.reshape(-1)
    done[rows] = False
    for v in state.values.values():
      v.reshape(-1)[rows] = np.nan
    store_lib.write(path, state)

  run(lj.make_mesh(points=2, data=2, model=2), 2)
  forget(np.arange(0, n, 2))  # half the points, as if the run had stopped
  run(lj.make_mesh(points=2, model=2), 2)
  forget(np.arange(1, n, 3))
  res = run(None, 3)
  assert store_lib.read(path).done.all()
  for k in ref:
    np.testing.assert_allclose(res[k], ref[k], rtol=RTOL, atol=ATOL, err_msg=k)


def _wide_mlp():
  """An MLP whose parameters (1.2 MB) dwarf its data, for the memory analyses."""
  k = jax.random.key(0)
  params = {"w1": jax.random.normal(k, (64, 512)) / 8, "b1": jnp.zeros(512),
            "w2": jax.random.normal(k, (512, 512)) / 20,
            "w3": jax.random.normal(k, (512, 8)) / 20}
  x = jax.random.normal(jax.random.key(1), (32, 64))
  y = jax.random.normal(jax.random.key(2), (32, 8))
  return params, x, y


def _mlp_loss(p, batch):
  x, y = batch
  h = jnp.tanh(jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"])
  return jnp.mean((h @ p["w3"] - y) ** 2)


def _param_bytes(params):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


@pytest.mark.multidevice
def test_surface_chunk_memory_is_an_eighth_of_replicated():
  """Per-device bytes of a compiled surface chunk (centre, two directions, the perturbed point and
  the activations): with the model sharded 8 ways at most 1/8 of the one-device figure plus a
  constant of a quarter of the parameter bytes (the replicated biases, coordinates, data and
  per-layer gathers; measured 0.14 of the replicated total)."""
  params, x, y = _wide_mlp()
  metric_fn = Partial(lambda b, p: {"loss": _mlp_loss(p, b)}, (x, y))

  def chunk_memory(mesh):
    roles = shd.mesh_roles(mesh)
    center = params if roles is None else shd.shard_params(params, roles)
    point_fn = plane_point_fn(center, lj.random_directions(jax.random.key(1), center))
    m, p, coords = engine.place_inputs(metric_fn, point_fn, np.zeros((8, 2), np.float32), roles)
    fn = engine.chunk_fn(shd.as_mesh(roles), None if roles is None else roles.points, "map", None)
    return shd.memory_per_device(fn.lower(m, p, coords).compile())

  rep, sharded = chunk_memory(None), chunk_memory(lj.make_mesh(model=8))
  assert rep["arguments"] >= 3 * _param_bytes(params)  # centre + two directions
  assert sharded["total"] <= rep["total"] / 8 + _param_bytes(params) / 4, (rep, sharded)


@pytest.fixture(scope="module")
def wide_sharded():
  """The wide MLP, its batch, and its parameters sharded 8 ways over the model axis."""
  params, x, y = _wide_mlp()
  mesh = lj.make_mesh(model=8)
  return params, (x, y), shd.shard_params(params, mesh), mesh


@pytest.mark.multidevice
def test_sharded_hessian_equals_one_device(wide_sharded):
  """HVP, top eigenvalues and Hutchinson trace with parameters sharded 8 ways: the one-device
  numbers, the products returned with the parameters' sharding."""
  params, batch, sharded, mesh = wide_sharded
  from landscape_jax.core import hessian

  assert hessian.vector_sharding(sharded).spec == P("model")
  assert hessian.vector_sharding(params) is None
  v = lj.random_direction(jax.random.key(5), params)
  hv_ref = lj.hvp(_mlp_loss, params, batch, v)
  hv = lj.hvp(_mlp_loss, sharded, batch, shd.shard_params(v, mesh))
  for a, b, p in zip(jax.tree.leaves(hv), jax.tree.leaves(hv_ref), jax.tree.leaves(sharded),
                     strict=True):
    assert a.sharding == p.sharding
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  ev_ref = lj.hessian_eigenvalues(_mlp_loss, params, batch, top_k=2, num_steps=8)
  ev = lj.hessian_eigenvalues(_mlp_loss, sharded, batch, top_k=2, num_steps=8)
  np.testing.assert_allclose(ev.top, ev_ref.top, rtol=1e-4)
  tr_ref = lj.hessian_trace(jax.random.key(2), _mlp_loss, params, batch, num_probes=2)
  tr = lj.hessian_trace(jax.random.key(2), _mlp_loss, sharded, batch, num_probes=2)
  np.testing.assert_allclose(tr.samples, tr_ref.samples, rtol=1e-4)


@pytest.mark.multidevice
def test_lanczos_and_curve_step_memory_is_an_eighth_of_replicated(wide_sharded):
  """Per-device bytes of a compiled Lanczos run (8 vectors of P) and of a curve-training step
  (3 bends, SGD with momentum): with the model sharded 8 ways at most 1/8 of the one-device
  figure plus a quarter of the parameter bytes (replicated biases, batch, per-layer gathers) for
  the step, plus one copy of the parameters for Lanczos (the weights each product gathers;
  measured 0.155 of the replicated total with 8 vectors, tending to 1/8 with more)."""
  import optax

  from landscape_jax.core import hessian
  from landscape_jax.methods import curve_training

  params, batch, sharded, mesh = wide_sharded
  const = _param_bytes(params) / 4

  def lanczos_memory(p):
    fn = jax.jit(hessian._lanczos_jit.__wrapped__, static_argnums=(4, 5, 6, 7))
    args = (Partial(_mlp_loss), p, batch, jax.random.key(0), 8, None, False,
            hessian.vector_sharding(p))
    return shd.memory_per_device(fn.lower(*args).compile())

  rep, sh = lanczos_memory(params), lanczos_memory(sharded)
  assert rep["temporaries"] + rep["outputs"] >= 8 * _param_bytes(params)  # the 8 vectors
  assert sh["total"] <= rep["total"] / 8 + _param_bytes(params), (rep, sh)

  opt = optax.sgd(0.01, momentum=0.9)

  def step_memory(start, end):
    ends, interior = lj.split_curve(lj.init_curve(start, end, num_bends=3))
    state = curve_training.CurveTrainState(jnp.zeros((), jnp.int32), interior,
                                           opt.init(interior))
    step = jax.jit(lambda lf, s, e, b, k: curve_training.curve_train_step(lf, opt, s, e, b, k))
    lowered = step.lower(Partial(_mlp_loss), state, ends, batch, jax.random.key(0))
    return shd.memory_per_device(lowered.compile())

  end = jax.tree.map(lambda x: x + 0.1, params)
  rep = step_memory(params, end)
  sh = step_memory(sharded, shd.shard_params(end, mesh))
  assert rep["arguments"] >= 4 * _param_bytes(params)  # two ends, one bend, its momentum
  assert sh["total"] <= rep["total"] / 8 + const, (rep, sh)


def _free_port():
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.multidevice
@pytest.mark.slow
def test_two_processes_of_four_devices_with_sharded_parameters(problem, tmp_path):
  """Two `jax.distributed` processes on localhost with 4 simulated CPU devices each (gloo
  collectives): the surface and the top Hessian eigenvalues with the parameters sharded over a
  points=2 x model=4 mesh of the 8 devices equal the one-device numbers."""
  import os
  import subprocess
  import sys

  _, _, params, _, ref = problem
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  port, store = str(_free_port()), str(tmp_path / "surface")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env["XLA_FLAGS"] = conftest.child_xla_flags()  # the worker sets its device count
  procs = [subprocess.Popen([sys.executable, os.path.join(root, "tests", "surface_worker.py"),
                             "sharded", store, port, str(i), str(tmp_path / f"out{i}.npz")],
                            cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=400)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("the sharded distributed workers timed out")
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  loss_fn, batch = w.mlp_hessian_problem()
  top = lj.hessian_eigenvalues(loss_fn, params, batch, top_k=2, num_steps=10).top
  for i in range(2):
    with np.load(tmp_path / f"out{i}.npz") as out:
      for k in ref:
        np.testing.assert_allclose(out[k], ref[k], rtol=RTOL, atol=ATOL, err_msg=f"{i} {k}")
      np.testing.assert_allclose(out["top"], top, rtol=1e-4, err_msg=str(i))
  stored = store_lib.read(store)
  assert stored.done.all()


@pytest.mark.multidevice
def test_train_curve_keeps_the_endpoints_sharding():
  """`train_curve` between endpoints sharded 4 ways: the bends come back with the endpoints'
  sharding (stacked on a leading bend axis) and the values of the unsharded run."""
  tr = lj.load("digits", "train").subset(slice(0, 64))
  model = lj.get_model("mlp_small", num_classes=10)
  p0, p1 = (model.init(jax.random.key(s), tr.images[:2].astype(np.float32))["params"]
            for s in (0, 1))
  loss_fn = lj.make_loss_fn(model, mean=tr.mean, std=tr.std)
  ref, _ = lj.train_curve(loss_fn, p0, p1, tr, settings=lj.CurveSettings(epochs=1, batch_size=32),
                          progress=False)
  s0, s1 = shd.shard_params((p0, p1), lj.make_mesh(model=4))
  out, _ = lj.train_curve(loss_fn, s0, s1, tr, settings=lj.CurveSettings(epochs=1, batch_size=32),
                          progress=False)
  for a, b, p in zip(jax.tree.leaves(out), jax.tree.leaves(ref), jax.tree.leaves(s0),
                     strict=True):
    expected = P(None, *p.sharding.spec) if p.sharding.spec else P()
    assert a.sharding.spec == expected or (a.sharding.is_fully_replicated and not
                                           p.sharding.spec), (a.sharding, p.sharding)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.multidevice
def test_pca_directions_take_the_final_parameters_sharding():
  params, _, _ = _wide_mlp()
  traj = [jax.tree.map(lambda x, s=s: x + 0.01 * s * jnp.cos(x + s), params) for s in range(4)]
  ref = lj.pca_directions(traj, params)
  sharded = shd.shard_params(params, lj.make_mesh(model=8))
  out = lj.pca_directions(traj, sharded)
  np.testing.assert_allclose(out.coords, ref.coords, rtol=1e-6, atol=1e-9)
  for d, r in zip(out.directions, ref.directions, strict=True):
    for a, b, p in zip(jax.tree.leaves(d), jax.tree.leaves(r), jax.tree.leaves(sharded),
                       strict=True):
      assert a.sharding == p.sharding
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.multidevice
def test_plane_and_adaptive_path_on_sharded_parameters():
  """`plane_basis` keeps the sharding of three sharded models; `evaluate_plane` and
  `adaptive_path` on a points=2 x model=4 mesh give the one-device values."""
  tr = lj.load("digits", "train").subset(slice(0, 64))
  model = lj.get_model("mlp_small", num_classes=10)
  ps = [model.init(jax.random.key(s), tr.images[:2].astype(np.float32))["params"]
        for s in range(3)]
  metric_fn = lj.make_metric_fn(model, tr, batch_size=64)
  mesh = lj.make_mesh(points=2, model=4)
  sp = shd.shard_params(ps, mesh)
  ab = np.linspace(0.0, 1.0, 3)
  plane = lj.plane_basis(*sp)
  assert plane.u["Dense_0"]["kernel"].sharding == sp[0]["Dense_0"]["kernel"].sharding
  ref = lj.evaluate_plane(metric_fn, lj.plane_basis(*ps), alphas=ab, betas=ab,
                          engine=lj.EngineOptions(chunk_size=2, progress=False))
  out = lj.evaluate_plane(metric_fn, plane, alphas=ab, betas=ab,
                          engine=lj.EngineOptions(chunk_size=2, mesh=mesh, progress=False))
  np.testing.assert_allclose(out["loss"], ref["loss"], rtol=RTOL, atol=ATOL)
  refinement = lj.Refinement(tol=0.5, initial=5, max_level=1)
  a_ref = lj.adaptive_path(metric_fn, ps[0], ps[1], refinement=refinement,
                           engine=lj.EngineOptions(progress=False, chunk_size=2))
  a = lj.adaptive_path(metric_fn, sp[0], sp[1], refinement=refinement,
                       engine=lj.EngineOptions(mesh=mesh, progress=False, chunk_size=2))
  np.testing.assert_array_equal(a.coords, a_ref.coords)
  np.testing.assert_allclose(a.values["loss"], a_ref.values["loss"], rtol=RTOL, atol=ATOL)


@pytest.mark.multidevice
def test_fge_and_swa_keep_the_sharding():
  """FGE from parameters sharded 4 ways: the stacked members and their SWA average keep the
  parameters' sharding and equal the unsharded run."""
  from landscape_jax.methods import ensembles

  tr = lj.load("digits", "train").subset(slice(0, 64))
  model = lj.get_model("mlp_small", num_classes=10)
  params = model.init(jax.random.key(0), tr.images[:2].astype(np.float32))["params"]
  loss_fn = lj.make_loss_fn(model, mean=tr.mean, std=tr.std)
  sharded = shd.shard_params(params, lj.make_mesh(model=4))
  kw = dict(settings=ensembles.FGESettings(cycles=1, cycle_epochs=2, batch_size=32), progress=False)
  ref, _ = ensembles.fast_geometric_ensemble(loss_fn, params, tr, **kw)
  members, _ = ensembles.fast_geometric_ensemble(loss_fn, sharded, tr, **kw)
  swa = ensembles.swa_average(members)
  for m, r, s, p in zip(jax.tree.leaves(members), jax.tree.leaves(ref), jax.tree.leaves(swa),
                        jax.tree.leaves(sharded), strict=True):
    np.testing.assert_allclose(np.asarray(m), np.asarray(r), rtol=1e-5, atol=1e-6)
    assert s.sharding.spec == p.sharding.spec or (not p.sharding.spec and
                                                  s.sharding.is_fully_replicated)
