"""Glue shared by the experiment scripts: flags, runs, small trainers, summaries and figures.

Each script stays short and forkable: it defines its flags with `define_flags`, loads or trains
what it needs with `load_splits` / `load_or_train`, writes ``summary.json`` with `write_summary`,
prints Markdown tables with `print_table` and draws figures with `plot`, which never lets a
failing figure cost the computed results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import app, flags, logging
from ml_collections import config_flags

import landscape_jax as lj
from landscape_jax.methods import rundir, training


def define_flags(what: str = "Config file (.py).", *, progress_help: str = "Show progress bars."):
  """``(config, workdir, progress)`` flag holders: ``--config`` (a config file, with
  ``--config.<field>=`` overrides), ``--workdir`` (required) and ``--progress``."""
  config = config_flags.DEFINE_config_file("config", None, what)
  workdir = flags.DEFINE_string("workdir", None, "Output directory.")
  progress = flags.DEFINE_bool("progress", True, progress_help)
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir, progress


def check_argv(argv: Sequence[str]) -> None:
  """Refuses positional arguments (a forgotten ``--``, a misspelt flag)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")


def load_splits(config, splits: Sequence[str] = ("train", "test")) -> list[lj.data.Dataset]:
  """The named splits of ``config.dataset`` (from ``config.data_dir`` when set)."""
  return [lj.load(config.dataset, split, data_dir=config.get("data_dir")) for split in splits]


def build_model(config, num_classes: int):
  """``lj.get_model(config.model, num_classes=..., **config.model_kwargs)``."""
  return lj.get_model(config.model, num_classes=num_classes,
                      **dict(config.get("model_kwargs") or {}))


def load_or_train(config, workdir: str, *, progress: bool):
  """``(model, variables, train split, run config, run dir)`` of ``config.run``, or of a run of
  ``config.train`` trained (or resumed) into ``<workdir>/train`` when ``config.run`` is empty."""
  run = config.get("run")
  if not run:
    run = os.path.join(workdir, "train")
    train_ds, test_ds = load_splits(config.train)
    training.train(build_model(config.train, train_ds.num_classes), train_ds, test_ds,
                   config=config.train, workdir=run, progress=progress)
  model, variables, train_ds, run_config = rundir.load_run(run, step=config.get("step"),
                                                           data_dir=config.get("data_dir"))
  return model, variables, train_ds, run_config, run


def train_adam(loss_fn: Callable, params, images, labels, *, learning_rate: float,
               batch_size: int, steps: int, seed: int):
  """Adam on random minibatches (drawn without replacement within a batch), one compiled
  `lax.scan` over `steps`; the keys depend on `seed` only. Returns the trained params."""
  opt = optax.adam(learning_rate)
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  n = images.shape[0]
  b = min(batch_size, n)

  @jax.jit
  def run(params, key):
    def step(carry, k):
      p, s = carry
      idx = jax.random.choice(k, n, (b,), replace=False)
      u, s = opt.update(jax.grad(loss_fn)(p, (images[idx], labels[idx])), s, p)
      return (optax.apply_updates(p, u), s), None
    keys = jax.random.split(key, steps)
    return jax.lax.scan(step, (params, opt.init(params)), keys)[0][0]

  return run(params, jax.random.key(1000 + seed))


def write_summary(workdir: str, summary: dict[str, Any]) -> str:
  """Writes ``<workdir>/summary.json`` atomically; returns its path."""
  path = os.path.join(workdir, "summary.json")
  lj.fileio.atomic_write_text(path, json.dumps(summary, indent=1, default=str))
  return path


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, fmt: str = ".4f") -> None:
  """Prints a Markdown table; floats formatted with `fmt`."""
  cell = lambda v: format(v, fmt) if isinstance(v, float) else str(v)
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(cell(v) for v in row) + " |")


def plot(name: str, path: str, *args, **kwargs):
  """``lj.plotting.save(lj.plotting.<name>(*args, **kwargs), path)``: the figure as `path`.png and
  `path`.pdf. A failure is logged, never raised (a figure must never cost the computed results).
  Returns the written files, or None."""
  try:
    return lj.plotting.save(getattr(lj.plotting, name)(*args, **kwargs), path)
  except Exception as e:
    logging.warning("Plot %s failed: %s", name, e)
    return None
