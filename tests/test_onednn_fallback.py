"""oneDNN is the optional `cpu` extra: without its wheels (or with a kernel that does not build)
make_metric_fn falls back to XLA's convolutions with one warning that names the extra, and the
failure is remembered instead of being retried for each metric function."""

import importlib.metadata
import platform
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.backends.cpu import onednn_build as onednn

pytestmark = pytest.mark.skipif(
  platform.system() != "Linux" or platform.machine() != "x86_64",
  reason="oneDNN wheels exist for Linux x86-64 only")

_TARGET = "landscape_jax_onednn_conv"


@pytest.fixture
def fresh_onednn(monkeypatch):
  """Forgets the kernel (and the warnings given) before and after the test."""
  monkeypatch.delenv("LANDSCAPE_JAX_ONEDNN", raising=False)
  monkeypatch.delenv("LANDSCAPE_JAX_ONEDNN_ROOT", raising=False)
  onednn.library.cache_clear()
  onednn.warn_once.cache_clear()
  yield
  onednn.library.cache_clear()
  onednn.warn_once.cache_clear()


@pytest.fixture
def without_wheels(monkeypatch, fresh_onednn):
  """The environment of a default install: the onednn wheels' metadata cannot be found."""
  real = importlib.metadata.distribution

  def distribution(name):
    if name.startswith("onednn"):
      raise importlib.metadata.PackageNotFoundError(name)
    return real(name)

  monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def _counting(monkeypatch, name):
  calls = []
  fn = getattr(onednn, name)

  def counted(*args, **kwargs):
    calls.append(args)
    return fn(*args, **kwargs)

  monkeypatch.setattr(onednn, name, counted)
  return calls


def test_without_the_extra_metric_fn_uses_xla_with_one_warning(without_wheels, monkeypatch,
                                                                digits_train):
  lookups = _counting(monkeypatch, "_find_onednn")
  reason = onednn.unavailable_reason()
  assert reason is not None and "pip install 'landscape-jax[cpu]'" in reason
  assert not onednn.available()
  with pytest.raises(onednn.OnednnUnavailable, match=r"landscape-jax\[cpu\]"):
    onednn.resolve("onednn")

  model = lj.get_model("resnet8", num_classes=10, width=0.5)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  data = digits_train.subset(slice(0, 64))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fns = [lj.make_metric_fn(model, data, batch_stats=variables["batch_stats"]) for _ in range(3)]
  messages = [str(w.message) for w in caught
              if "landscape_jax.backends.cpu.onednn" in str(w.message)]
  assert len(messages) == 1, messages
  assert "XLA's CPU convolutions" in messages[0] and "landscape-jax[cpu]" in messages[0]
  assert len(lookups) == 1  # the failed lookup is remembered, not retried per metric function

  xla_fn = lj.make_metric_fn(model, data, batch_stats=variables["batch_stats"],
                             cpu_convolutions="xla")
  run = jax.jit(lambda f, p: f(p))
  assert _TARGET not in run.lower(fns[0], variables["params"]).as_text()
  got, want = run(fns[0], variables["params"]), run(xla_fn, variables["params"])
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))


def test_failed_build_is_cached_with_its_reason(fresh_onednn, monkeypatch, tmp_path):
  monkeypatch.setenv("LANDSCAPE_JAX_CACHE_DIR", str(tmp_path))
  monkeypatch.setenv("CXX", shutil.which("false"))  # a "compiler" that always fails
  compiles = _counting(monkeypatch, "_compile")
  reasons = [onednn.unavailable_reason() for _ in range(3)]
  assert reasons[0] is not None and "Compiling onednn_conv.cc failed" in reasons[0]
  assert reasons == [reasons[0]] * 3
  with pytest.raises(onednn.OnednnUnavailable, match="Compiling onednn_conv.cc failed"):
    onednn.resolve("onednn")
  assert len(compiles) == 1
  onednn.library.cache_clear()  # forgetting the failure retries the build
  assert "Compiling onednn_conv.cc failed" in onednn.unavailable_reason()
  assert len(compiles) == 2


def test_with_the_extra_auto_uses_onednn(fresh_onednn):
  """The `cpu` extra is installed here (make install): "auto" must pick oneDNN up by itself."""
  assert onednn.available(), onednn.unavailable_reason()
  assert onednn.resolve("auto") is True
