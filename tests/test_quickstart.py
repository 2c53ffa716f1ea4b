"""The README's main command, at tiny size: runs end to end, writes every figure and the report,
and a rerun reuses the finished steps."""

import json
import os
import subprocess
import sys

import conftest
import pytest

from tests import browser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("train", "line", "surface", "adaptive", "curve", "align", "hessian", "fge", "trajectory",
         "sharp_flat")


def _run(workdir):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
  env["XLA_FLAGS"] = conftest.child_xla_flags()  # one CPU device
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "experiments", "quickstart.py"), f"--workdir={workdir}",
     "--tiny", "--noprogress"], capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_quickstart_tiny_end_to_end(tmp_path):
  workdir = tmp_path / "qs"
  first = _run(workdir)
  assert first.returncode == 0, first.stderr[-4000:]
  report = (workdir / "report.html").read_text()
  for step in STEPS:
    result = json.loads((workdir / "results" / f"{step}.json").read_text())
    for fig, caption in result["figures"]:
      assert (workdir / fig).stat().st_size > 1000, fig
      if fig.endswith(".png"):  # interactive figures are embedded, static ones linked
        assert fig in report
      assert not caption or caption in report
    assert any(fig.endswith(".plotly.json") for fig, _ in result["figures"]) or step in (
      "train", "adaptive", "sharp_flat"), step
  for title in ("2-D filter-normalised surface", "Bezier curve", "weight matching",
                "Fast Geometric Ensembling", "PCA plane"):
    assert title in report
  # Every number of the tour is finite and in the report's table.
  adaptive = json.loads((workdir / "results" / "adaptive.json").read_text())["numbers"]
  assert 0 < adaptive["adaptive points"] <= adaptive["dense grid points"]
  numbers = json.loads((workdir / "results" / "hessian.json").read_text())["numbers"]
  assert numbers["top eigenvalue"] > 0
  assert numbers["top eigenvalue"] >= numbers["2nd eigenvalue"]

  # Every interactive figure rendered in a real browser, with no script error.
  out = browser.render(workdir / "report.html", tmp_path)
  assert out["errors"] == [], out["errors"]
  assert len(out["plots"]) == report.count('class="plotly-graph-div lj-plot"') >= 10
  assert all(p["laidOut"] and p["svg"] for p in out["plots"]), out["plots"]
  assert sum(p["gl"] >= 1 for p in out["plots"] if p["scene"]) == 1  # the 3-D surface

  second = _run(workdir)
  assert second.returncode == 0, second.stderr[-4000:]
  assert second.stdout.count("reusing finished results") == len(STEPS)


def test_quickstart_refuses_a_different_configuration(tmp_path):
  workdir = tmp_path / "qs"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"model": "other"}))
  out = _run(workdir)
  assert out.returncode != 0
  assert "different configuration" in out.stderr and "model: 'other' -> 'resnet8'" in out.stderr
