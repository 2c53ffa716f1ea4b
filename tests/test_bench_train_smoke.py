"""benchmarks/bench_train_vs_torch.py runs end to end at tiny size, and both sides of each
comparison train the same way: from the same weights and batches, landscape-jax's curve steps
give Garipov et al.'s losses (their own code, with the same ts) and its SGD steps a plain
PyTorch loop's."""

import importlib.util
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks",
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_BENCH_COMMON = _load("_common")


@pytest.fixture(autouse=True)
def _benchmarks_common():
  """benchmarks/_common.py is `_common` during the test (the script imports it by that name):
  experiments/ has a `_common` too, which another test may have imported first."""
  saved = sys.modules.get("_common")
  sys.modules["_common"] = _BENCH_COMMON
  yield
  if saved is None:
    sys.modules.pop("_common", None)
  else:
    sys.modules["_common"] = saved


@pytest.mark.slow
def test_bench_train_vs_torch_tiny():
  """Same losses step by step (float32 rounding only), every epoch timed; Garipov et al.'s half
  needs their repository ($LANDSCAPE_JAX_GARIPOV_REPO) and is skipped without it."""
  have_torch, why = _BENCH_COMMON.torch_installed()
  if not have_torch:  # both comparisons are against PyTorch: nothing to check without it
    pytest.skip(why)
  out = _load("bench_train_vs_torch").main(["--tiny", "--no-record"])
  sgd = out["sgd"]
  assert len(sgd["lj_losses"]) == len(sgd["torch_losses"]) == 2
  assert np.all(np.isfinite(sgd["lj_losses"])) and max(sgd["loss_rel_diff"]) < 1e-4, sgd
  assert sgd["params"] == sgd["torch_params"]
  assert sgd["epoch_equal_loop"]  # the compiled epoch trains as the loop of train_step
  assert min(sgd["lj_epoch_s"]) > 0 and min(sgd["lj_loop_s"]) > 0
  assert min(sgd["torch_epoch_s"]) > 0
  curve = out["curve"]
  assert curve["epoch_equal_train_curve"] and min(curve["lj_epoch_s"]) > 0
  assert np.all(np.isfinite(curve["lj_losses"]))
  if "torch_losses" not in curve:
    pytest.skip("JAX and SGD halves passed; Garipov et al.'s half skipped: set "
                "LANDSCAPE_JAX_GARIPOV_REPO to a clone of timgaripov/dnn-mode-connectivity")
  assert max(curve["loss_rel_diff"]) < 1e-4, curve
  assert curve["params"] == curve["torch_trainable"] == curve["torch_base_params"]
  assert min(curve["torch_epoch_s"]) > 0
