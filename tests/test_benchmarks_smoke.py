"""The benchmark scripts run end to end at tiny size (so that they cannot rot), and every surface
strategy they time computes the same values (JAX loop, PyTorch twin, surface_grid variants)."""

import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks",
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_bench_surface_tiny():
  rep = _load("bench_surface").main(["--tiny", "--no-record"])
  rows = {r["variant"]: r for r in rep.rows}
  assert any(v.startswith("surface_grid map") for v in rows)
  assert any(v.startswith("surface_grid vmap") for v in rows)
  assert any(v.startswith("JAX ref") for v in rows)
  for name, r in rows.items():
    assert r["points/s"] > 0, name
    # every strategy evaluates the same surface (float32 rounding only); NaN (no shared grid
    # point, or a NaN loss) fails too
    assert np.isfinite(r["max |dloss|"]) and r["max |dloss|"] < 1e-3, (name, r["max |dloss|"])


@pytest.mark.slow
def test_bench_curve_step_tiny():
  res = _load("bench_curve_step").main(["--tiny", "--no-record"])
  assert res["plain train_step"] > 0
  assert all(v > 0 for v in res.values())


@pytest.mark.slow
def test_bench_loops_tiny():
  """Every variant computes the same products and the same SGD epoch (float rounding only)."""
  res = _load("bench_loops").main(["--tiny", "--no-record"])
  assert len(res) == 6 and all(v > 0 for v in res.values())


def test_flop_count_matches_hand_count():
  common = _load("_common")
  import jax
  import jax.numpy as jnp

  def f(w, x):
    y = jax.lax.conv_general_dilated(x, w["k"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(x.shape[0], -1) @ w["d"]

  w = {"k": jnp.zeros((3, 3, 4, 8)), "d": jnp.zeros((6 * 6 * 8, 5))}
  x = jnp.zeros((2, 6, 6, 4))
  expected = 2 * (6 * 6 * 8 * 3 * 3 * 4) + 2 * (6 * 6 * 8 * 5)
  assert common.model_flops_per_example(f, w, x) == expected


@pytest.mark.slow
def test_bench_identity_tiny():
  """The identity/engine overhead benchmark runs; its hand-written loop evaluates the same grid."""
  res = _load("bench_identity").main(["--tiny", "--no-record", "--repeats", "1"])
  assert all(np.isfinite(v) and v > 0 for v in res.values()), res


@pytest.mark.slow
def test_bench_versus_commit_tiny():
  """Both trees compute the same surface (compared against HEAD itself: same code)."""
  res = _load("bench_versus_commit").main(["--tiny", "--no-record", "--rounds", "1",
                                           "--ref", "HEAD"])
  assert res["dloss"] == 0.0 and res["speed_ratio"] > 0


@pytest.mark.slow
def test_bench_adaptive_tiny():
  """The adaptive-vs-dense benchmark runs end to end at tiny size."""
  out = _load("bench_adaptive").main(["--tiny", "--no-record"])
  assert out is not None
