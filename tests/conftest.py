"""Shared fixtures. Eight simulated CPU devices are set up before JAX is imported, so that
sharding tests can build meshes of 1 to 8 devices in the same process.

The device-count flag is appended to any XLA_FLAGS already set (other flags are kept); only an
XLA_FLAGS that already gives a device count is left as it is. Tests marked ``multidevice`` fail,
never skip, when fewer than `NUM_DEVICES` devices are there."""

import os
import tempfile

NUM_DEVICES = 8
_COUNT_FLAG = "--xla_force_host_platform_device_count"


def with_device_count(flags: str, count: int = NUM_DEVICES) -> str:
  """`flags` plus ``--xla_force_host_platform_device_count=count`` unless it gives a count."""
  if _COUNT_FLAG in flags:
    return flags
  return f"{flags} {_COUNT_FLAG}={count}".strip()


# Compiling dominates the suite (tiny models, thousands of small programs; about 80% of a test's
# time): LLVM at optimisation level 0 without its expensive passes compiles them in about 3/4 of
# the CPU time. The big products (matmuls, convolutions) are library calls either way, and these
# flags change no floating-point semantics (no fast-math, no reassociation), so the numbers are
# the same; .ci/lowest.sh sets LANDSCAPE_JAX_TEST_XLA_OPT=default to run its subset at XLA's
# default optimisation, as users get it.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true")


def with_fast_compile(flags: str) -> str:
  """`flags` plus `FAST_COMPILE_FLAGS` (those it does not set itself)."""
  extra = [f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in flags]
  return " ".join([flags, *extra]).strip()


def child_xla_flags(flags: str = "") -> str:
  """XLA_FLAGS for a process a test starts: `flags` (e.g. its own device count) plus the fast
  compile flags, unless LANDSCAPE_JAX_TEST_XLA_OPT=default."""
  if os.environ.get("LANDSCAPE_JAX_TEST_XLA_OPT", "fast") == "default":
    return flags
  return with_fast_compile(flags)


os.environ["XLA_FLAGS"] = child_xla_flags(with_device_count(os.environ.get("XLA_FLAGS", "")))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")
# One XLA compilation cache for the whole run: both xdist workers and every process the tests
# start (experiment scripts, resume workers, notebooks) compile the same tiny programs again and
# again. The cache is keyed by JAX on the program text, the compile options, the backend and the
# versions, so a hit is the program that would have been compiled; an explicit
# JAX_COMPILATION_CACHE_DIR (or an empty one, to turn it off) is kept.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
  tempfile.gettempdir(), f"landscape-jax-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax
import pytest

import landscape_jax as lj


@pytest.fixture(scope="session")
def digits_train():
  return lj.load("digits", "train")


@pytest.fixture(scope="session")
def digits_test():
  return lj.load("digits", "test")


@pytest.fixture(scope="session")
def tiny_mlp(digits_train):
  """A small untrained MLP on digits: (model, variables)."""
  model = lj.get_model("mlp_small", num_classes=10)
  variables = model.init(jax.random.key(0), digits_train.images[:2].astype("float32"))
  return model, variables


@pytest.fixture(autouse=True)
def _multidevice_tests_need_the_devices(request):
  """A ``multidevice`` test fails (not skips) without the simulated devices."""
  if request.node.get_closest_marker("multidevice") is not None:
    found = len(jax.devices())
    if found < NUM_DEVICES:
      pytest.fail(f"{request.node.nodeid} needs {NUM_DEVICES} devices, found {found} "
                  f"(XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}, JAX_PLATFORMS="
                  f"{os.environ.get('JAX_PLATFORMS')!r}). tests/conftest.py adds {_COUNT_FLAG}="
                  f"{NUM_DEVICES} to XLA_FLAGS unless it already gives a device count: remove "
                  "that count, or run on the CPU platform.", pytrace=False)
