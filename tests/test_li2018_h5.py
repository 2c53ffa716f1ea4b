"""landscape_jax.li2018_h5 against h5 files laid out by hand as Li et al.'s loss-landscape code
lays them out (plot_surface.py + scheduler.py for surfaces, net_plotter.py + h5_util.py for
directions), and read back the way their plot_1D.py / plot_2D.py / load_directions read them."""

import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax import li2018_h5 as li


def _loss(x, y):  # asymmetric in x and y, so that a transposition cannot pass
  return 1.0 + x + 10.0 * y


def _acc_percent(x, y):
  return 50.0 + 10.0 * x - 3.0 * y


def _their_surface_file(path, xs, ys, unfilled=()):
  """A surface file as their plot_surface.py writes it: setup_surface_file, then crunch."""
  with h5py.File(path, "w") as f:
    f["dir_file"] = "model.t7_weights.h5"
    f["xcoordinates"] = xs
    f["ycoordinates"] = ys
    losses = -np.ones(shape=(len(xs), len(ys)))  # their allocation: (len(x), len(y))
    accs = -np.ones(shape=(len(xs), len(ys)))
    # scheduler.get_unplotted_indices: the points of np.meshgrid(x, y), raveled.
    xm, ym = np.meshgrid(xs, ys)
    coords = np.c_[xm.ravel(), ym.ravel()]
    for ind, (x, y) in enumerate(coords):
      if ind in unfilled:
        continue
      losses.ravel()[ind] = _loss(x, y)
      accs.ravel()[ind] = _acc_percent(x, y)
    f["train_loss"] = losses
    f["train_acc"] = accs


def test_reads_their_surface_file_with_x_on_the_first_axis(tmp_path):
  xs, ys = np.array([-1.0, 0.0, 0.5]), np.array([-2.0, -1.0, 1.0, 3.0])  # 3 x 4: not square
  path = tmp_path / "surface.h5"
  _their_surface_file(path, xs, ys, unfilled={5})
  got_xs, got_ys, values = li.read_surface_h5(path)
  np.testing.assert_array_equal(got_xs, xs)
  np.testing.assert_array_equal(got_ys, ys)
  assert sorted(values) == ["train_accuracy", "train_loss"]
  assert values["train_loss"].shape == (3, 4)
  for i, x in enumerate(xs):
    for j, y in enumerate(ys):
      if j * len(xs) + i == 5:  # their flat index of (x[i], y[j]); left at -1 above
        assert np.isnan(values["train_loss"][i, j]) and np.isnan(values["train_accuracy"][i, j])
        continue
      assert values["train_loss"][i, j] == _loss(x, y)
      assert values["train_accuracy"][i, j] == pytest.approx(_acc_percent(x, y) / 100, abs=1e-15)
  _, _, raw = li.read_surface_h5(path, unfilled_as_nan=False)
  assert raw["train_loss"][2, 1] == -1.0  # flat index 5 = 1 * 3 + 2


def test_written_surface_is_read_as_their_code_reads_it(tmp_path):
  # Square grid: their plot_2D.py contours Z = f['train_loss'] against np.meshgrid(x, y).
  xs = ys = np.linspace(-1.0, 1.0, 5)
  ours = {"train_loss": _loss(xs[:, None], ys[None, :]),  # ours[i, j] at (xs[i], ys[j])
          "train_accuracy": _acc_percent(xs[:, None], ys[None, :]) / 100}
  path = tmp_path / "square.h5"
  li.write_surface_h5(path, xs, ys, ours, dir_file="dirs.h5")
  with h5py.File(path, "r") as f:
    assert f["dir_file"][()].decode() == "dirs.h5"
    X, Y = np.meshgrid(f["xcoordinates"][:], f["ycoordinates"][:])
    np.testing.assert_array_equal(f["train_loss"][:], _loss(X, Y))
    np.testing.assert_allclose(f["train_acc"][:], _acc_percent(X, Y), rtol=1e-14)
    assert "train_accuracy" not in f
  # Non-square: the stored (nx, ny) array, raveled, follows their scheduler's meshgrid order.
  xs, ys = np.array([0.0, 1.0, 2.0]), np.array([-1.0, 1.0])
  path = tmp_path / "wide.h5"
  li.write_surface_h5(path, xs, ys, {"train_loss": _loss(xs[:, None], ys[None, :])})
  with h5py.File(path, "r") as f:
    stored = f["train_loss"][:]
  assert stored.shape == (3, 2)
  xm, ym = np.meshgrid(xs, ys)
  for k, (x, y) in enumerate(zip(xm.ravel(), ym.ravel(), strict=True)):
    assert stored.ravel()[k] == _loss(x, y)


def test_one_dimensional_surface(tmp_path):
  xs = np.linspace(-1, 1, 7)
  path = tmp_path / "line.h5"
  li.write_surface_h5(path, xs, None, {"train_loss": _loss(xs, 0.0), "test_accuracy": xs / 4})
  with h5py.File(path, "r") as f:  # what their plot_1D.py reads
    assert "ycoordinates" not in f
    np.testing.assert_array_equal(f["train_loss"][:], _loss(xs, 0.0))
    np.testing.assert_allclose(f["test_acc"][:], 25 * xs, rtol=1e-14)
  got_xs, got_ys, values = li.read_surface_h5(path)
  assert got_ys is None and values["train_loss"].shape == (7,)
  np.testing.assert_array_equal(got_xs, xs)
  np.testing.assert_allclose(values["test_accuracy"], xs / 4, rtol=1e-14)


def test_surface_grid_round_trip(tmp_path, tiny_mlp, digits_train, digits_test):
  model, variables = tiny_mlp
  params = variables["params"]
  d1, d2 = lj.random_directions(jax.random.key(0), params, num=2)
  metric_fn = lj.make_metric_fn(model, {"train": digits_train.subset(slice(0, 64)),
                                        "test": digits_test.subset(slice(0, 64))})
  xs, ys = np.linspace(-1, 1, 3), np.linspace(-0.5, 0.5, 2)
  res = lj.surface_grid(metric_fn, params, (d1, d2), xs, ys,
                        engine=lj.EngineOptions(progress=False))
  li.write_surface_h5(tmp_path / "s.h5", xs, ys, res)
  got_xs, got_ys, values = li.read_surface_h5(tmp_path / "s.h5")
  assert sorted(values) == sorted(res)
  for k in res:
    np.testing.assert_allclose(values[k], res[k], rtol=1e-12, atol=0)
  np.testing.assert_array_equal(got_xs, xs)
  np.testing.assert_array_equal(got_ys, ys)


def test_surface_bad_input(tmp_path):
  xs, ys = np.linspace(0, 1, 3), np.linspace(0, 1, 2)
  with pytest.raises(ValueError, match=r"values\['train_loss'\] has shape \(2, 3\)"):
    li.write_surface_h5(tmp_path / "a.h5", xs, ys, {"train_loss": np.zeros((2, 3))})
  with pytest.raises(ValueError, match="already taken"):
    li.write_surface_h5(tmp_path / "a.h5", xs, ys, {"train_accuracy": np.zeros((3, 2)),
                                                      "train_acc": np.zeros((3, 2))})
  with pytest.raises(ValueError, match="xs must be a non-empty 1-D"):
    li.write_surface_h5(tmp_path / "a.h5", [], ys, {"train_loss": np.zeros((0, 2))})
  li.write_surface_h5(tmp_path / "a.h5", xs, ys, {"train_loss": np.zeros((3, 2))})
  with pytest.raises(FileExistsError, match="overwrite=True"):
    li.write_surface_h5(tmp_path / "a.h5", xs, ys, {"train_loss": np.ones((3, 2))})
  li.write_surface_h5(tmp_path / "a.h5", xs, ys, {"train_loss": np.ones((3, 2))}, overwrite=True)
  assert li.read_surface_h5(tmp_path / "a.h5")[2]["train_loss"].min() == 1.0
  with h5py.File(tmp_path / "b.h5", "w") as f:
    f["train_loss"] = np.zeros(3)
  with pytest.raises(ValueError, match="no 'xcoordinates'"):
    li.read_surface_h5(tmp_path / "b.h5")


def test_reads_their_direction_file(tmp_path):
  rng = np.random.default_rng(0)
  # Their h5_util.write_list: one dataset per tensor of net.parameters(), named "0", "1", ...
  x_dir = [rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
  y_dir = [rng.normal(size=(4, 3, 3, 3)).astype(np.float32), np.zeros(4, np.float32)]
  path = tmp_path / "dirs.h5"
  with h5py.File(path, "w") as f:
    for name, direction in (("xdirection", x_dir), ("ydirection", y_dir)):
      grp = f.create_group(name)
      for i, a in enumerate(direction):
        grp.create_dataset(str(i), data=a)
  got = li.read_directions_h5(path)
  assert len(got) == 2
  for ours, theirs in zip(got, (x_dir, y_dir), strict=True):
    assert len(ours) == 2
    for a, b in zip(ours, theirs, strict=True):
      np.testing.assert_array_equal(a, b)
  like = {"conv": {"bias": np.zeros(4, np.float32), "kernel": np.zeros((4, 3, 3, 3), np.float32)}}
  with pytest.raises(ValueError, match=r"has shape \(4, 3, 3, 3\) but `like`'s leaf 'conv/bias'"):
    li.read_directions_h5(path, like=like)  # leaves order: bias, kernel
  like = [np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, jnp.bfloat16)]
  d1, d2 = li.read_directions_h5(path, like=like)
  np.testing.assert_array_equal(d1[0], x_dir[0])
  assert d2[1].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="holds 2 arrays but `like` has 1 leaves"):
    li.read_directions_h5(path, like=[np.zeros(4)])


def test_written_directions_read_back_and_as_their_code_reads_them(tmp_path, tiny_mlp):
  params = tiny_mlp[1]["params"]
  d1, d2 = lj.random_directions(jax.random.key(1), params, num=2)
  path = tmp_path / "dirs.h5"
  li.write_directions_h5(path, (d1, d2))
  with h5py.File(path, "r") as f:  # their net_plotter.load_directions + h5_util.read_list
    assert set(f.keys()) == {"xdirection", "ydirection"}
    for name, d in (("xdirection", d1), ("ydirection", d2)):
      grp = f[name]
      theirs = [grp[str(i)][:] for i in range(len(grp))]
      for a, b in zip(theirs, jax.tree.leaves(d), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
  r1, r2 = li.read_directions_h5(path, like=params)
  for got, want in ((r1, d1), (r2, d2)):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(a, np.asarray(b))
  # One direction: a 1-D file without ydirection; bfloat16 stored as float32.
  half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), d1)
  li.write_directions_h5(tmp_path / "one.h5", half)
  with h5py.File(tmp_path / "one.h5", "r") as f:
    assert list(f.keys()) == ["xdirection"] and f["xdirection"]["0"].dtype == np.float32
  (back,) = li.read_directions_h5(tmp_path / "one.h5", like=half)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(half), strict=True):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_directions_bad_input(tmp_path):
  a = {"a": np.ones(3), "b": np.ones(2)}
  li.write_directions_h5(tmp_path / "d.h5", (a,))
  with pytest.raises(ValueError, match="another tree: its leaf 0 is 'a', `like`'s is 'c'"):
    li.read_directions_h5(tmp_path / "d.h5", like={"c": np.ones(3), "d": np.ones(2)})
  with pytest.raises(FileExistsError):
    li.write_directions_h5(tmp_path / "d.h5", (a,))
  with pytest.raises(ValueError, match="got a tuple of 3"):
    li.write_directions_h5(tmp_path / "e.h5", (a, a, a))
  with pytest.raises(ValueError, match="same pytree structure"):
    li.write_directions_h5(tmp_path / "e.h5", (a, {"a": np.ones(3)}))
  with pytest.raises(ValueError, match="no array leaves"):
    li.write_directions_h5(tmp_path / "e.h5", {})
  with h5py.File(tmp_path / "s.h5", "w") as f:
    f["xcoordinates"] = np.zeros(3)
  with pytest.raises(ValueError, match="no 'xdirection' group"):
    li.read_directions_h5(tmp_path / "s.h5")


def test_missing_h5py_says_which_extra(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` raises ImportError
  with pytest.raises(ImportError, match=r"pip install 'landscape-jax\[h5\]'"):
    li.read_surface_h5(tmp_path / "x.h5")
  with pytest.raises(ImportError, match=r"landscape-jax\[h5\]"):
    li.write_directions_h5(tmp_path / "x.h5", {"a": np.ones(2)})


def test_untrusted_files_are_read_as_data_only(tmp_path):
  """A downloaded .h5 must not make the reader return the bytes of another (local) file."""
  secret = tmp_path / "secret.bin"
  secret.write_bytes(np.arange(9, dtype=np.float64).tobytes())
  other = tmp_path / "other.h5"
  with h5py.File(other, "w") as f:
    f["data"] = np.arange(9.0)
  xs = np.linspace(-1, 1, 3)

  def surface(path, add):
    with h5py.File(path, "w") as f:
      f["xcoordinates"] = xs
      f["ycoordinates"] = xs
      add(f)
    return path

  cases = {
    "external storage": (lambda f: f.create_dataset(
      "train_loss", shape=(3, 3), dtype="f8", external=[(str(secret), 0, 72)]),
      "external files"),
    "external link": (lambda f: f.__setitem__("train_loss", h5py.ExternalLink(str(other),
                                                                              "/data")),
                      "external link"),
    "virtual dataset": (lambda f: f.create_virtual_dataset("train_loss", _layout(other)),
                        "virtual dataset"),
  }
  for case, (add, message) in cases.items():
    path = surface(tmp_path / f"{case}.h5", add)
    with pytest.raises(ValueError, match=f"'train_loss'.*{message}"):
      li.read_surface_h5(path)
  # the same in a direction file, and datasets not named 0..n-1 are named in the error
  d = tmp_path / "dir.h5"
  with h5py.File(d, "w") as f:
    g = f.create_group("xdirection")
    g["0"] = np.zeros(3)
    g.create_dataset("1", shape=(9,), dtype="f8", external=[(str(secret), 0, 72)])
  with pytest.raises(ValueError, match="'xdirection/1'.*external files"):
    li.read_directions_h5(d)
  with h5py.File(d, "w") as f:
    f["xdirection"] = h5py.ExternalLink(str(other), "/")
  with pytest.raises(ValueError, match="'xdirection'.*external link"):
    li.read_directions_h5(d)
  with h5py.File(d, "w") as f:
    g = f.create_group("xdirection")
    g["0"] = np.zeros(3)
    g["weights"] = np.zeros(3)
  with pytest.raises(ValueError, match=r"\['weights'\].*not named '0'..'1'"):
    li.read_directions_h5(d)


def _layout(source):
  layout = h5py.VirtualLayout(shape=(9,), dtype="f8")
  layout[:] = h5py.VirtualSource(str(source), "data", shape=(9,))
  return layout
