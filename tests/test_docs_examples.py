"""Every Python block of the README and of docs/*.md runs: the README's API tour at tiny sizes
(its one sizes line replaced, as benchmarks/bench_timings.py --tiny does), and the pages' blocks
in order, each page in one namespace, in an empty folder. docs/adapters.md runs in
tests/test_adapters.py."""

import pathlib
import re
import runpy
import shutil
import sys

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FENCE = "`" * 3
SIZES = re.compile(r"^EPOCHS, GRID, CURVE_EPOCHS, POINTS, PROBES = .*$", re.M)
TINY_SIZES = "EPOCHS, GRID, CURVE_EPOCHS, POINTS, PROBES = 1, 3, 1, 3, 4"
TOUR_SPLIT = {"train": 192, "test": 64}  # examples of each digits split the tour test runs on
EXECUTED = {"README.md": "test_readme_api_tour_runs", "docs/adapters.md": "test_adapters.py",
            "docs/adaptive.md": "test_docs_pages_run", "docs/interop.md": "test_docs_pages_run",
            "docs/portability.md": "test_docs_pages_run", "docs/report.md": "test_docs_pages_run",
            "docs/scaling.md": "test_docs_pages_run", "docs/sharpness.md": "test_docs_pages_run"}


def python_blocks(page: str) -> list[str]:
  text = (ROOT / page).read_text(encoding="utf-8")
  return [b.split(FENCE, 1)[0] for b in text.split(FENCE + "python\n")[1:]]


def _run(code: str, tmp_path, name: str) -> dict:
  script = tmp_path / f"{name}.py"
  script.write_text(code, encoding="utf-8")
  return runpy.run_path(str(script))


def test_every_python_block_of_the_docs_is_executed():
  pages = ["README.md"] + [f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))]
  with_code = {p for p in pages if python_blocks(p)}
  assert with_code <= set(EXECUTED), sorted(with_code - set(EXECUTED))
  assert len(python_blocks("README.md")) == 1  # the tour: it defines everything it uses


@pytest.mark.slow
def test_readme_api_tour_runs(tmp_path, monkeypatch):
  (tour,) = python_blocks("README.md")
  assert len(SIZES.findall(tour)) == 1, "the tour's sizes line moved: update SIZES here"
  monkeypatch.chdir(tmp_path)
  import landscape_jax as lj

  # The tour's cost is running its steps over the whole splits (training, every surface and path
  # point on train + test, BatchNorm recomputed on train): the same code on the first TOUR_SPLIT
  # examples of each split (the Hessian's 512-example subset then holds all of them).
  load = lj.load
  monkeypatch.setattr(lj, "load", lambda name, split, **kw: load(name, split, **kw).subset(
    slice(0, TOUR_SPLIT[split])))
  ns = _run(SIZES.sub(TINY_SIZES, tour), tmp_path, "tour")
  assert len(ns["train"]) == TOUR_SPLIT["train"] and len(ns["test"]) == TOUR_SPLIT["test"]
  # The surface's centre is A itself: the same numbers as a direct evaluation.
  center = ns["metric_fn"](ns["params_a"])
  np.testing.assert_allclose(ns["surface"]["train_loss"][1, 1], center["train_loss"], rtol=1e-5)
  assert (tmp_path / "runs/tour/contour.png").exists()
  assert (tmp_path / "runs/tour/spectrum.png").exists()
  # The curve and the line meet at the endpoints; weight matching keeps B's function.
  path = ns["path"]
  np.testing.assert_allclose(path["curve"]["train_loss"][[0, -1]],
                             path["line"]["train_loss"][[0, -1]], rtol=1e-4)
  fn = lj.inference_fn(ns["model"])
  x = ns["train"].images[:8].astype(np.float32)
  np.testing.assert_allclose(fn(ns["aligned_b"], x), fn(ns["variables_b"], x), rtol=1e-4,
                             atol=1e-4)
  assert np.all(np.diff(ns["eig"].top) <= 0) and np.isfinite(ns["trace"].mean)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["docs/adaptive.md", "docs/interop.md", "docs/portability.md",
                                  "docs/report.md", "docs/scaling.md", "docs/sharpness.md"])
def test_docs_pages_run(page, tmp_path, monkeypatch):
  if page == "docs/interop.md":
    pytest.importorskip("h5py")
    # the page loads the tests' small PyTorch checkpoints by their path in a checkout
    shutil.copytree(ROOT / "tests" / "data" / "torch", tmp_path / "tests" / "data" / "torch")
  monkeypatch.chdir(tmp_path)
  ns = _run("\n".join(python_blocks(page)), tmp_path, pathlib.Path(page).stem)
  if page == "docs/adaptive.md":
    res = ns["res"]
    assert res.num_points <= 400
    # Every sampled point's value is the metric function's at that point of the plane.
    c = np.asarray(res.coords[0])
    import landscape_jax as lj

    direct = ns["metric_fn"](lj.plane_point(ns["params"], ns["d1"], ns["d2"], c[0], c[1]))
    np.testing.assert_allclose(res.values["train_loss"][0], direct["train_loss"], rtol=1e-5)
    assert ns["grid"]["train_loss"].shape == (65, 65)
    curve_res = ns["curve_res"]  # refine_path on the curve: its values are the curve's
    t = float(np.asarray(curve_res.coords)[-1, 0])
    ts = np.unique([0.0, t, 1.0])  # with the endpoints, as evaluate_curve's summary wants
    along = lj.evaluate_curve(ns["metric_fn"], ns["curve"], ts=ts, line=False)
    np.testing.assert_allclose(curve_res.values["train_loss"][-1],
                               along["curve"]["train_loss"][list(ts).index(t)], rtol=1e-5)
  elif page == "docs/interop.md":
    np.testing.assert_allclose(ns["values"]["train_loss"], ns["res"]["train_loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ns["d1"]), jax.tree.leaves(ns["d2"]), strict=True):
      assert a.shape == b.shape
  elif page == "docs/report.md":
    assert (tmp_path / "report.html").stat().st_size > 1000
  elif page == "docs/scaling.md":  # the sharded surface's centre is the model at params
    np.testing.assert_allclose(ns["res"]["train_loss"][1, 1],
                               ns["metric_fn"](ns["params"])["train_loss"], rtol=1e-5)
  elif page == "docs/sharpness.md":  # the rescaled MLP is the same function
    x = np.asarray(ns["train"].images[:4], np.float32)
    model = ns["model"]
    np.testing.assert_allclose(model.apply({"params": ns["p2"]}, x),
                               model.apply({"params": ns["params"]}, x), rtol=1e-4, atol=1e-4)
    # the engine's sharpness wrote its resumable stores: the base and one per sigma visited
    assert (tmp_path / "runs/sharpness/average/base/meta.json").exists()
    assert len(list((tmp_path / "runs/sharpness/sigma").glob("sigma-*"))) >= 2
    assert np.isfinite(ns["avg"].value) and ns["sigma"].value > 0
  else:
    w = np.asarray(ns["torch_params"]["conv"]["weight"])
    d = np.asarray(ns["per_leaf"]["conv"]["weight"])  # every output filter rescaled to w's norm
    np.testing.assert_allclose(np.linalg.norm(d.reshape(16, -1), axis=1),
                               np.linalg.norm(w.reshape(16, -1), axis=1), rtol=1e-5)
    np.testing.assert_allclose(ns["by_path"]["conv"]["weight"], d, rtol=1e-6)


def _commands() -> list[str]:
  """Every ``python experiments/...`` command of the README and docs (continuations joined)."""
  out = []
  for page in ["README.md"] + [str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")]:
    text = (ROOT / page).read_text(encoding="utf-8").replace("\\\n", " ")
    out += [m.strip() for m in re.findall(r"^\s*(python experiments/\S+\.py[^\n]*)", text, re.M)]
  return out


def test_the_docs_script_commands_name_real_scripts_configs_and_fields(monkeypatch):
  """The commands the docs give (too long to run in the tests) would parse: the script and the
  config exist, and every ``--config.<field>`` override names a field of that config."""
  monkeypatch.syspath_prepend(str(ROOT / "experiments"))
  monkeypatch.delitem(sys.modules, "_common", raising=False)  # benchmarks/ has one too
  import _common

  commands = _commands()
  assert len(commands) >= 10
  monkeypatch.chdir(ROOT)
  for cmd in commands:
    args = cmd.split()
    assert (ROOT / args[1]).is_file(), cmd
    spec = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
    if spec is None:
      continue
    fields = {name for name, _ in _common.config_fields(_common.load_config_file(spec))}
    prefixes = {f.rsplit(".", i)[0] for f in fields for i in range(f.count(".") + 1)}
    for a in args:
      if a.startswith("--config."):
        field = a[len("--config."):].split("=", 1)[0]
        assert field in fields | prefixes, (cmd, field)
