"""The Garipov et al. experiment scripts (experiments/connect.py, experiments/fge.py) end to end
on tiny digits settings: outputs checked against their own summaries, and a rerun after a
finished or interrupted run resumes from the checkpoints instead of training again."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import landscape_jax as lj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _run(script, config, workdir, *overrides):
  cmd = [sys.executable, os.path.join(ROOT, "experiments", script),
         "--config=" + os.path.join(ROOT, "experiments", "configs", config),
         f"--workdir={workdir}", "--noprogress", *overrides]
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _mtimes(directory):
  """Modification times of the results (not of the write locks, which each run takes)."""
  return {os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
          for r, _, fs in os.walk(directory) for f in fs if not f.endswith(".lock")}


def test_connect_script_trains_evaluates_and_resumes(tmp_path):
  tiny = ["--config.endpoint_epochs=2", "--config.epochs=2", "--config.num_points=5",
          "--config.plane_points=5"]
  _run("connect.py", "connect_digits.py", tmp_path, *tiny)
  summary = json.load(open(tmp_path / "summary.json"))
  curve_eval = lj.store.read(tmp_path / "curve_eval").values
  # the store holds the 5 curve points, then the 5 line points; t = 0 and 1 are the endpoints of
  # both, so the curve and the straight line agree there
  curve, line = curve_eval["train_loss"][:5], curve_eval["train_loss"][5:]
  np.testing.assert_allclose([curve[0], curve[-1]], [line[0], line[-1]], rtol=1e-6)
  assert summary["curve"]["train_loss"]["max"] == pytest.approx(curve.max(), rel=1e-6)
  assert summary["line"]["train_loss"]["max"] == pytest.approx(line.max(), rel=1e-6)
  assert summary["curve"]["train_loss"]["barrier"] < summary["line"]["train_loss"]["barrier"]
  for name in ("curve_metrics.png", "plane_train_loss.png", "plane_test_loss.png"):
    assert os.path.getsize(tmp_path / name) > 1000, name
  for seed in (1, 2):
    assert lj.checkpoints.list_steps(tmp_path / f"endpoint_seed{seed}" / "sgd_ckpt") == [1, 2]
  before = _mtimes(tmp_path / "endpoint_seed1") | _mtimes(tmp_path / "curve")
  _run("connect.py", "connect_digits.py", tmp_path, *tiny)  # nothing is trained again
  assert (_mtimes(tmp_path / "endpoint_seed1") | _mtimes(tmp_path / "curve")) == before
  assert json.load(open(tmp_path / "summary.json")) == summary


def test_fge_script_compares_ensembles_and_resumes(tmp_path):
  tiny = ["--config.budget_epochs=2", "--config.cycles=2", "--config.cycle_epochs=2",
          "--config.seeds=(0, 1)", "--config.num_independent=2"]
  out = _run("fge.py", "fge_digits.py", tmp_path, *tiny)
  summary = json.load(open(tmp_path / "summary.json"))
  assert [r["epochs"] for r in summary["fge"]] == [4, 6]
  assert [r["epochs"] for r in summary["independent"]] == [2, 4]
  assert summary["swa"]["epochs"] == 6
  assert f"{100 * summary['fge'][-1]['accuracy']:.2f} %" in out  # the Markdown table
  assert os.path.getsize(tmp_path / "fge.png") > 1000
  # an FGE run stopped after its first cycle: the rerun trains only what is missing
  ckpt = tmp_path / "fge" / "sgd_ckpt"
  os.rename(ckpt / "4", tmp_path / "moved_away")
  kept = _mtimes(tmp_path / "model_seed0") | _mtimes(tmp_path / "model_seed1") | _mtimes(ckpt / "3")
  _run("fge.py", "fge_digits.py", tmp_path, *tiny)
  assert (_mtimes(tmp_path / "model_seed0") | _mtimes(tmp_path / "model_seed1")
          | _mtimes(ckpt / "3")) == kept
  assert lj.checkpoints.list_steps(ckpt) == [3, 4]
  assert json.load(open(tmp_path / "summary.json")) == summary


def test_align_script_lowers_the_barrier(tmp_path):
  """experiments/align.py (Ainsworth et al. Fig. 2) on its quick digits setting: the barriers in
  summary.json are those of the stored curves, permuting B leaves its function unchanged, and
  weight matching lowers the barrier."""
  out = _run("align.py", "align_digits.py:quick", tmp_path)
  summary = json.load(open(tmp_path / "summary.json"))
  table = summary["barriers"]
  with np.load(tmp_path / "path.npz") as z:
    paths = {k: z[k] for k in z.files}
  for key, row in table.items():
    name, split = key.split("/")
    loss = paths[f"{name}_{split}_loss"]
    assert row["frankle"] == pytest.approx(loss.max() - (loss[0] + loss[-1]) / 2, abs=1e-6)
    assert f"| {key} | {row['frankle']:.4f} |" in out
  for split in ("train", "test"):  # alpha = 1 is B, permuted or not: the same function
    np.testing.assert_allclose(paths[f"aligned_{split}_loss"][[0, -1]],
                               paths[f"naive_{split}_loss"][[0, -1]], rtol=1e-4, atol=1e-6)
  assert table["aligned/train"]["frankle"] < 0.5 * table["naive/train"]["frankle"]
  assert summary["matching"]["objectives"][-1] >= summary["matching"]["objectives"][0]
  for name in ("align_loss.png", "align_accuracy.png", "align_loss.pdf"):
    assert os.path.getsize(tmp_path / name) > 1000, name


def test_saddle_script_finds_permutation_saddles(tmp_path):
  """experiments/saddle.py (Brea et al. 2019), shortened: facts that hold whatever the training
  did. The swap path is symmetric about s = 1/2, the gradient at the permutation point has no
  antisymmetric part, the dense Hessian's smallest eigenvalue is at most the curvature along the
  swap direction (a Rayleigh quotient) and matches Lanczos, and the trained curve ends at theta."""
  _run("saddle.py", "align_saddle.py:quick", tmp_path, "--config.steps=300",
       "--config.curve_steps=100", "--config.num_s=11", "--config.pairs=((0, 1), (2, 7))",
       "--config.features=(8,)")  # 8 hidden units: a dense Hessian of 610 parameters, not 1210
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["config"]["features"] == [8]
  with np.load(tmp_path / "paths.npz") as z:
    paths = {k: z[k] for k in z.files}
  for info in summary["pairs"]:
    i, j = info["pair"]
    loss = paths[f"swap_{i}_{j}"]
    np.testing.assert_allclose(loss, loss[::-1], rtol=1e-5)
    assert loss[0] == pytest.approx(summary["theta"]["train_loss"], rel=1e-5)
    assert info["grad_antisymmetric_norm"] < 1e-5 * max(info["grad_norm"], 1.0)
    assert info["smallest_eigenvalues"][0] <= info["swap_curvature"] + 1e-6
    assert info["lanczos_smallest"] == pytest.approx(info["smallest_eigenvalues"][0], rel=1e-3,
                                                     abs=1e-5)
  curve = paths["curve_loss"]
  assert curve[0] == pytest.approx(summary["theta"]["train_loss"], rel=1e-4)
  assert curve[-1] == pytest.approx(summary["theta"]["train_loss"], rel=1e-4)
  for name in ("saddle_paths.png", "saddle_valley.png", "saddle_valley.pdf"):
    assert os.path.getsize(tmp_path / name) > 1000, name


def test_surface_script_refuses_error_tol_with_recomputed_batchnorm(tmp_path):
  """A setting the script cannot honour fails at once, before loading or computing anything
  (it used to ignore error_tol silently with bn="recompute")."""
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "surface.py"),
         "--config=" + os.path.join(ROOT, "experiments", "configs", "surface_2d.py") + ":quick",
         f"--workdir={tmp_path}", "--config.bn=recompute", "--config.error_tol=0.01"]
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
  assert proc.returncode != 0
  assert "error_tol" in proc.stderr and "bn='recompute'" in proc.stderr, proc.stderr[-2000:]
  assert not os.listdir(tmp_path)  # nothing written
