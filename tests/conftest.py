"""Shared fixtures. Eight simulated CPU devices are set up before JAX is imported, so that
sharding tests can build meshes of 1 to 8 devices in the same process."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

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
