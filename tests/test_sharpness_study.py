"""experiments/sharpness_study.py at --tiny size: trains, measures, correlates, draws, resumes."""

import json
import os
import subprocess
import sys

import conftest
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(workdir):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
  env["XLA_FLAGS"] = conftest.child_xla_flags()  # one CPU device
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "experiments", "sharpness_study.py"),
     f"--config={os.path.join(ROOT, 'experiments', 'configs', 'sharpness_digits.py')}",
     f"--workdir={workdir}", "--tiny", "--noprogress"],
    capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_sharpness_study_tiny(tmp_path):
  out = _run(tmp_path)
  assert out.returncode == 0, out.stderr[-4000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert len(summary["models"]) == 2
  for r in summary["models"]:
    assert set(r["measures"]) >= {"worst l2 adaptive", "fisher-rao", "1/sigma^2 standard"}
    assert abs(r["gap"] - (r["test_error"] - r["train_error"])) < 1e-12
  # two models differing only in batch size: every tau is +-1 or NaN (a tie)
  for t in summary["tau"].values():
    assert t["batch_size"] in (-1.0, 1.0) or t["batch_size"] != t["batch_size"]
  for fig in ("scatter.png", "tau.png"):
    assert (tmp_path / fig).stat().st_size > 1000
  again = _run(tmp_path)  # finished models are reused
  assert again.returncode == 0, again.stderr[-4000:]
  assert "steps, train loss" not in again.stdout
