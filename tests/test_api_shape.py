"""The shape of the public API: no public function takes more than `MAX_PARAMETERS` parameters.

Options that travel together are one object (`lj.EngineOptions` for every function that
evaluates points, `lj.Refinement` for the adaptive ones), as in optax and equinox; docs/design.md
records the counts. Plotting functions are exempt: their styling keywords follow matplotlib.
"""

import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import landscape_jax as lj

MAX_PARAMETERS = 12
EXEMPT_PACKAGES = ("landscape_jax.plotting",)


def public_functions() -> dict[str, int]:
  """``{module.qualname: number of parameters}`` of every public function: the facade's
  `__all__` and the `__all__` of every module of the package."""
  found = {}

  def add(obj):
    if inspect.isfunction(obj) and obj.__module__.startswith("landscape_jax"):
      found[f"{obj.__module__}.{obj.__qualname__}"] = len(inspect.signature(obj).parameters)

  for name in lj.__all__:
    add(getattr(lj, name))
  for info in pkgutil.walk_packages(lj.__path__, "landscape_jax."):
    module = importlib.import_module(info.name)
    for name in getattr(module, "__all__", ()):
      add(getattr(module, name, None))
  return found


def test_no_public_function_takes_more_than_twelve_parameters():
  counts = public_functions()
  assert len(counts) > 300, len(counts)  # the walk found the package
  over = {name: n for name, n in counts.items() if n > MAX_PARAMETERS
          and not name.startswith(EXEMPT_PACKAGES)}
  assert not over, (f"public functions above {MAX_PARAMETERS} parameters: {over}; group options "
                    "that travel together into one frozen settings object (see docs/design.md)")


def test_the_counter_counts():
  """The counter sees a function over the limit and the exemptions are real names."""
  def wide(a, b, c, d, e, f, g, h, i, j, k, l, m):  # noqa: E741
    return a

  assert len(inspect.signature(wide).parameters) == 13
  counts = public_functions()
  assert counts["landscape_jax.core.engine.evaluate_points"] <= MAX_PARAMETERS
  assert counts["landscape_jax.methods.curve_training.train_curve"] <= MAX_PARAMETERS


def test_options_are_validated_on_creation_and_frozen():
  for bad, match in [(dict(chunk_size=0), "chunk_size must be a positive integer"),
                     (dict(batch_size=2.5), "batch_size must be a positive integer"),
                     (dict(map_mode="bogus"), "map_mode must be one of"),
                     (dict(map_mode="vmap", batch_size=2), "use it with map_mode='map'"),
                     (dict(precision="fast"), "precision must be None")]:
    with pytest.raises(ValueError, match=match):
      lj.EngineOptions(**bad)
  with pytest.raises(TypeError, match="mesh must be"):
    lj.EngineOptions(mesh="cpu")
  with pytest.raises(TypeError, match="positional"):
    lj.EngineOptions(16)  # keyword-only: lj.EngineOptions(chunk_size=16)
  options = lj.EngineOptions(chunk_size=4, precision=jax.lax.Precision.HIGHEST)
  assert options.precision == "highest"  # normalised, as a store records it
  with pytest.raises(dataclasses.FrozenInstanceError):
    options.chunk_size = 8
  assert dataclasses.replace(options, chunk_size=8).chunk_size == 8
  with pytest.raises(TypeError, match="engine must be an EngineOptions"):
    lj.surface_grid(lambda p: p["w"].sum(), {"w": np.zeros(2)}, {"w": np.ones(2)}, [0.0, 1.0],
                    engine={"chunk_size": 2})

  for bad, match in [(dict(tol=0.0), "tol must be a finite number > 0"),
                     (dict(tol=0.1, initial=1), "initial must be an integer >= 2"),
                     (dict(tol=0.1, max_level=21), "max_level must be <= 20"),
                     (dict(tol=0.1, levels=[np.nan]), "levels must be finite"),
                     (dict(tol=0.1, noise_k=-1.0), "noise_k must be")]:
    with pytest.raises(ValueError, match=match):
      lj.Refinement(**bad)
  r = lj.Refinement(tol=0.1, levels=np.array([0.5, 1.0]))
  assert r.levels == (0.5, 1.0)
  assert r.settings(1)["initial"] == 17 and r.settings(2)["initial"] == 9
  with pytest.raises(TypeError, match="refinement must be a Refinement"):
    lj.refine_path(lambda c, r: {"loss": c[:, 0]}, (0.0, 1.0), refinement={"tol": 0.1})

  with pytest.raises(ValueError, match="momentum"):
    lj.Ascent(momentum=0.0)
  with pytest.raises(ValueError, match="restarts"):
    lj.Ascent(restarts=0)
  with pytest.raises(ValueError, match="0 < lower < upper"):
    lj.Bracket(lower=1.0, upper=0.5)
  with pytest.raises(ValueError, match="sigma2 must be positive"):
    lj.DensitySmoothing(sigma2=0.0)


def documented_public_api() -> dict[str, str]:
  """``{name: defining module}`` of the facade as docs/design.md ("Two tiers") lists it; the
  short module names under the key ``"modules"``."""
  text = (Path(__file__).parents[1] / "docs" / "design.md").read_text()
  block = re.search(r"<!-- public-api -->\n```text\n(.*?)```\n<!-- /public-api -->", text, re.S)
  assert block, "docs/design.md lost its <!-- public-api --> list of the facade's names"
  listed, module = {}, None
  for line in block.group(1).splitlines():
    if not line.startswith(" "):
      module, line = line.split(":", 1)
    for name in line.split():
      assert name not in listed, f"{name} is listed twice in docs/design.md"
      listed[name] = module
  return listed


def test_the_facade_is_exactly_the_documented_list():
  """Adding or removing a public name is a deliberate act: the facade (`lj.__all__`) must equal
  the list in docs/design.md, each name under the module that defines it."""
  listed = documented_public_api()
  expected = {n: m for n, m in lj._NAMES.items()} | {m: "modules" for m in lj._MODULES}
  assert set(lj.__all__) == set(expected) | {"__version__"}
  missing = sorted(set(expected) - set(listed))
  extra = sorted(set(listed) - set(expected))
  moved = sorted(n for n in set(listed) & set(expected) if listed[n] != expected[n])
  assert not (missing or extra or moved), (
    f"The facade and docs/design.md's public-API list differ: not listed {missing}, listed but "
    f"not public {extra}, listed under another module {moved}. Edit both deliberately (and "
    "CHANGELOG.md).")
  for name, module in lj._NAMES.items():
    assert getattr(importlib.import_module(f"landscape_jax.{module}"), name) is getattr(lj, name)


def test_training_internals_are_not_public():
  for name in ("train_step", "eval_step", "curve_train_step", "make_schedule",
               "optimizer_from_config"):
    assert name not in lj.__all__
    with pytest.raises(AttributeError):
      getattr(lj, name)
  assert callable(lj.training.train_step) and callable(lj.curve_training.curve_train_step)
